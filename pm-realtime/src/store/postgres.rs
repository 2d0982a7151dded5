//! PostgreSQL adapter (feature `postgres`).
//!
//! Owns pm-realtime's tables (`migrations/postgres`, tracked in `_pm_realtime_migrations` so
//! pm-core's and pm-permissions' migrators coexist in the same database) over one [`PgPool`].
//! Writes are single statements except a document's append, init, compaction and external-change
//! claim (one transaction each; an append holds the document's head row lock until commit); idempotency of notifications comes from the
//! `UNIQUE (user_id, event_id)` constraint (`INSERT … ON CONFLICT DO NOTHING`), so concurrent
//! consumers on several instances store each notification once.
//!
//! Row structs are private; conversion into domain types happens in `TryFrom` impls so corrupt
//! rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{TaskId, UserId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::notification::{Notification, NotificationId, NotificationKind};
use crate::store::*;
use crate::{Error, Result};

/// The PostgreSQL realtime store. Cheap to clone (the pool is reference-counted).
#[derive(Debug, Clone)]
pub struct PostgresRealtimeStore {
    pool: PgPool,
}

impl PostgresRealtimeStore {
    /// Connects to `url` with a pool of 5 connections. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(st)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (e.g. the one pm-core's store uses).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    event_id: Uuid,
    seq: i64,
    actor_type: String,
    actor_id: Option<Uuid>,
    org_id: Option<Uuid>,
    project_id: Option<Uuid>,
    task_id: Option<Uuid>,
    summary: String,
    created_at: OffsetDateTime,
    read_at: Option<OffsetDateTime>,
}

impl TryFrom<NotificationRow> for Notification {
    type Error = Error;
    fn try_from(r: NotificationRow) -> Result<Self> {
        Ok(Notification {
            id: NotificationId(r.id),
            user_id: UserId(r.user_id),
            kind: NotificationKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            event_id: r.event_id.into(),
            seq: r.seq,
            actor: Actor::from_parts(&r.actor_type, r.actor_id).map_err(|e| corrupt("actor", e))?,
            org_id: r.org_id.map(Into::into),
            project_id: r.project_id.map(Into::into),
            task_id: r.task_id.map(Into::into),
            summary: r.summary,
            created_at: r.created_at,
            read_at: r.read_at,
        })
    }
}

#[async_trait]
impl PresenceStore for PostgresRealtimeStore {
    async fn touch_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<()> {
        sqlx::query(
            "INSERT INTO rt_last_seen (user_id, last_seen) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE \
             SET last_seen = GREATEST(rt_last_seen.last_seen, excluded.last_seen)",
        )
        .bind(user.0)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn touch_last_seen_many(&self, seen: &[(UserId, OffsetDateTime)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement for the batch; one row per user (an upsert may not touch a row twice).
        let (users, times): (Vec<Uuid>, Vec<OffsetDateTime>) =
            latest_per_user(seen).into_iter().map(|(u, at)| (u.0, at)).unzip();
        sqlx::query(
            "INSERT INTO rt_last_seen (user_id, last_seen) \
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) \
             ON CONFLICT (user_id) DO UPDATE \
             SET last_seen = GREATEST(rt_last_seen.last_seen, excluded.last_seen)",
        )
        .bind(users)
        .bind(times)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<OffsetDateTime>> {
        sqlx::query_scalar("SELECT last_seen FROM rt_last_seen WHERE user_id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)
    }
}

#[async_trait]
impl NotificationStore for PostgresRealtimeStore {
    async fn create_notification(&self, n: &Notification) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO rt_notifications (id, user_id, kind, event_id, seq, actor_type, actor_id, \
             org_id, project_id, task_id, summary, created_at, read_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (user_id, event_id) DO NOTHING",
        )
        .bind(n.id.0)
        .bind(n.user_id.0)
        .bind(n.kind.as_str())
        .bind(n.event_id.0)
        .bind(n.seq)
        .bind(n.actor.kind())
        .bind(n.actor.id())
        .bind(n.org_id.map(|i| i.0))
        .bind(n.project_id.map(|i| i.0))
        .bind(n.task_id.map(|i| i.0))
        .bind(&n.summary)
        .bind(n.created_at)
        .bind(n.read_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation => {
                Error::invalid("id", "a notification with this id already exists")
            }
            _ => st(e),
        })?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_notifications(
        &self,
        user: UserId,
        q: &NotificationQuery,
    ) -> Result<NotificationPage> {
        q.validate()?;
        let rows: Vec<NotificationRow> = sqlx::query_as(
            "SELECT * FROM rt_notifications \
             WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL) \
               AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(user.0)
        .bind(q.unread_only)
        .bind(q.before.map(|b| b.0))
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        let rows = rows.into_iter().map(Notification::try_from).collect::<Result<Vec<_>>>()?;
        Ok(NotificationPage::from_rows(rows, q.limit))
    }

    async fn set_read(
        &self,
        user: UserId,
        id: NotificationId,
        at: Option<OffsetDateTime>,
    ) -> Result<Notification> {
        let row: Option<NotificationRow> = sqlx::query_as(
            "UPDATE rt_notifications SET read_at = $1 WHERE id = $2 AND user_id = $3 RETURNING *",
        )
        .bind(at)
        .bind(id.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("notification"))?.try_into()
    }

    async fn mark_all_read(&self, user: UserId, at: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE rt_notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL",
        )
        .bind(at)
        .bind(user.0)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(done.rows_affected())
    }

    async fn unread_count(&self, user: UserId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rt_notifications WHERE user_id = $1 AND read_at IS NULL",
        )
        .bind(user.0)
        .fetch_one(&self.pool)
        .await
        .map_err(st)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[async_trait]
impl DocStore for PostgresRealtimeStore {
    async fn init_doc(
        &self,
        task: TaskId,
        state: &[u8],
        digest: &str,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        // A head row may exist without content (an external change was claimed first).
        let done = sqlx::query(
            "INSERT INTO rt_docs (task_id, last_seq) VALUES ($1, 1) ON CONFLICT (task_id) \
             DO UPDATE SET last_seq = 1 WHERE rt_docs.last_seq = 0 AND rt_docs.snapshot IS NULL",
        )
        .bind(task.0)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO rt_doc_updates (task_id, seq, update_bytes, at) VALUES ($1, 1, $2, $3)",
        )
        .bind(task.0)
        .bind(state)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        // The seed text is the document's own: never claimed as an external change.
        remember_text(&mut tx, task, digest, at).await?;
        tx.commit().await.map_err(st)?;
        Ok(true)
    }

    async fn append_doc_update(
        &self,
        task: TaskId,
        update: &[u8],
        at: OffsetDateTime,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        // The upsert locks the head row until commit: appends to one document commit in order.
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO rt_docs (task_id, last_seq) VALUES ($1, 1) \
             ON CONFLICT (task_id) DO UPDATE SET last_seq = rt_docs.last_seq + 1 \
             RETURNING last_seq",
        )
        .bind(task.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(st)?;
        sqlx::query(
            "INSERT INTO rt_doc_updates (task_id, seq, update_bytes, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(task.0)
        .bind(seq)
        .bind(update)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(seq)
    }

    async fn load_doc(&self, task: TaskId) -> Result<StoredDoc> {
        // REPEATABLE READ: the snapshot and the updates after it come from one state, even if a
        // compaction commits between the two queries.
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        let head: Option<(Option<Vec<u8>>, i64)> =
            sqlx::query_as("SELECT snapshot, snapshot_seq FROM rt_docs WHERE task_id = $1")
                .bind(task.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let (snapshot, snapshot_seq) = head.unwrap_or((None, 0));
        let updates: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, update_bytes FROM rt_doc_updates WHERE task_id = $1 AND seq > $2 \
             ORDER BY seq",
        )
        .bind(task.0)
        .bind(snapshot_seq)
        .fetch_all(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(StoredDoc { snapshot, snapshot_seq, updates })
    }

    async fn compact_doc(&self, task: TaskId, state: &[u8], upto: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let done = sqlx::query(
            "UPDATE rt_docs SET snapshot = $1, snapshot_seq = $2 \
             WHERE task_id = $3 AND snapshot_seq < $2 AND last_seq >= $2",
        )
        .bind(state)
        .bind(upto)
        .bind(task.0)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM rt_doc_updates WHERE task_id = $1 AND seq <= $2")
            .bind(task.0)
            .bind(upto)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(true)
    }

    async fn record_write_back(
        &self,
        task: TaskId,
        digest: &str,
        at: OffsetDateTime,
        before: OffsetDateTime,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query("DELETE FROM rt_doc_write_backs WHERE task_id = $1 AND at < $2")
            .bind(task.0)
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        remember_text(&mut tx, task, digest, at).await?;
        tx.commit().await.map_err(st)?;
        Ok(())
    }

    async fn claim_external_change(
        &self,
        task: TaskId,
        version: i64,
        digest: &str,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let done = sqlx::query(
            "INSERT INTO rt_docs (task_id, external_version) \
             SELECT $1, $2 WHERE NOT EXISTS \
               (SELECT 1 FROM rt_doc_write_backs WHERE task_id = $1 AND digest = $3) \
             ON CONFLICT (task_id) DO UPDATE SET external_version = excluded.external_version \
             WHERE rt_docs.external_version < excluded.external_version",
        )
        .bind(task.0)
        .bind(version)
        .bind(digest)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // The claimed text is now the only one the document knows (see the trait). The head row
        // stays locked until commit, so claims of one document do not interleave here.
        sqlx::query("DELETE FROM rt_doc_write_backs WHERE task_id = $1")
            .bind(task.0)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        remember_text(&mut tx, task, digest, at).await?;
        tx.commit().await.map_err(st)?;
        Ok(true)
    }
}

#[async_trait]
impl RealtimeAdmin for PostgresRealtimeStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_realtime_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

/// Records that the document knows the description text with `digest` (as of `at`): such a text
/// is never taken for an outside change (see `DocStore::claim_external_change`).
async fn remember_text(
    conn: &mut sqlx::PgConnection,
    task: TaskId,
    digest: &str,
    at: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rt_doc_write_backs (task_id, digest, at) VALUES ($1, $2, $3) \
         ON CONFLICT (task_id, digest) DO UPDATE SET at = excluded.at",
    )
    .bind(task.0)
    .bind(digest)
    .bind(at)
    .execute(conn)
    .await
    .map_err(st)?;
    Ok(())
}

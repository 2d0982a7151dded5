//! SQLite adapter (feature `sqlite`): the embedded default.
//!
//! One writer connection plus a read pool over a WAL database — normally the same file as
//! pm-core's store. Writes are single statements except a document's append, init, compaction
//! and external-change claim, each one transaction on the writer; idempotency of notifications comes from the `UNIQUE (user_id, event_id)` constraint
//! (`INSERT … ON CONFLICT DO NOTHING`).
//!
//! Storage conventions (see `migrations/sqlite`): ids are hyphenated UUID text, timestamps are
//! integer microseconds. Row structs are private; conversion into domain types happens in
//! `TryFrom` impls so corrupt rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{TaskId, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::notification::{Notification, NotificationId, NotificationKind};
use crate::store::*;
use crate::{Error, Result};

/// The SQLite realtime store. Cheap to clone (pools are reference-counted).
#[derive(Debug, Clone)]
pub struct SqliteRealtimeStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteRealtimeStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Normal);
        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database lives as long as its one connection: pin it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await
                .map_err(st)?;
            return Ok(Self::from_pools(pool.clone(), pool));
        }
        let opts = opts.journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(st)?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .map_err(st)?;
        Ok(Self::from_pools(writer, reader))
    }

    /// Wraps existing pools (a writer with one connection, and a reader pool; may be the same).
    pub fn from_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        Self { writer, reader }
    }
}

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn parse_id<T: From<Uuid>>(s: &str) -> Result<T> {
    Uuid::parse_str(s).map(T::from).map_err(|e| corrupt("id", e))
}

fn parse_opt<T: From<Uuid>>(s: Option<&str>) -> Result<Option<T>> {
    s.map(parse_id).transpose()
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: String,
    user_id: String,
    kind: String,
    event_id: String,
    seq: i64,
    actor_type: String,
    actor_id: Option<String>,
    org_id: Option<String>,
    project_id: Option<String>,
    task_id: Option<String>,
    summary: String,
    created_at: i64,
    read_at: Option<i64>,
}

impl TryFrom<NotificationRow> for Notification {
    type Error = Error;
    fn try_from(r: NotificationRow) -> Result<Self> {
        let actor_id: Option<Uuid> = parse_opt(r.actor_id.as_deref())?;
        Ok(Notification {
            id: parse_id(&r.id)?,
            user_id: parse_id(&r.user_id)?,
            kind: NotificationKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            event_id: parse_id(&r.event_id)?,
            seq: r.seq,
            actor: Actor::from_parts(&r.actor_type, actor_id).map_err(|e| corrupt("actor", e))?,
            org_id: parse_opt(r.org_id.as_deref())?,
            project_id: parse_opt(r.project_id.as_deref())?,
            task_id: parse_opt(r.task_id.as_deref())?,
            summary: r.summary,
            created_at: from_micros(r.created_at)?,
            read_at: r.read_at.map(from_micros).transpose()?,
        })
    }
}

#[async_trait]
impl PresenceStore for SqliteRealtimeStore {
    async fn touch_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<()> {
        sqlx::query(
            "INSERT INTO rt_last_seen (user_id, last_seen) VALUES (?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
        )
        .bind(id_text(user))
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn touch_last_seen_many(&self, seen: &[(UserId, OffsetDateTime)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch: the rows travel as one JSON array of
        // `[user_id, micros]` pairs (no bound-parameter limit, one prepared statement).
        let rows: Vec<(String, i64)> =
            latest_per_user(seen).into_iter().map(|(u, at)| (id_text(u), micros(at))).collect();
        let json = serde_json::to_string(&rows).map_err(Error::storage)?;
        sqlx::query(
            "INSERT INTO rt_last_seen (user_id, last_seen) \
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?) \
             WHERE true \
             ON CONFLICT (user_id) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
        )
        .bind(json)
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<OffsetDateTime>> {
        let us: Option<i64> =
            sqlx::query_scalar("SELECT last_seen FROM rt_last_seen WHERE user_id = ?")
                .bind(id_text(user))
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        us.map(from_micros).transpose()
    }
}

#[async_trait]
impl NotificationStore for SqliteRealtimeStore {
    async fn create_notification(&self, n: &Notification) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO rt_notifications (id, user_id, kind, event_id, seq, actor_type, actor_id, \
             org_id, project_id, task_id, summary, created_at, read_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (user_id, event_id) DO NOTHING",
        )
        .bind(id_text(n.id))
        .bind(id_text(n.user_id))
        .bind(n.kind.as_str())
        .bind(id_text(n.event_id))
        .bind(n.seq)
        .bind(n.actor.kind())
        .bind(n.actor.id().map(id_text))
        .bind(n.org_id.map(id_text))
        .bind(n.project_id.map(id_text))
        .bind(n.task_id.map(id_text))
        .bind(&n.summary)
        .bind(micros(n.created_at))
        .bind(n.read_at.map(micros))
        .execute(&self.writer)
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
             WHERE user_id = ? AND (? = 0 OR read_at IS NULL) AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(id_text(user))
        .bind(q.unread_only)
        .bind(q.before.map(id_text))
        .bind(q.before.map(id_text))
        .bind(i64::from(q.limit) + 1)
        .fetch_all(&self.reader)
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
            "UPDATE rt_notifications SET read_at = ? WHERE id = ? AND user_id = ? RETURNING *",
        )
        .bind(at.map(micros))
        .bind(id_text(id))
        .bind(id_text(user))
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("notification"))?.try_into()
    }

    async fn mark_all_read(&self, user: UserId, at: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE rt_notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL",
        )
        .bind(micros(at))
        .bind(id_text(user))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(done.rows_affected())
    }

    async fn unread_count(&self, user: UserId) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rt_notifications WHERE user_id = ? AND read_at IS NULL",
        )
        .bind(id_text(user))
        .fetch_one(&self.reader)
        .await
        .map_err(st)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[async_trait]
impl DocStore for SqliteRealtimeStore {
    async fn init_doc(
        &self,
        task: TaskId,
        state: &[u8],
        digest: &str,
        at: OffsetDateTime,
    ) -> Result<bool> {
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout); a deferred
        // transaction that read first fails at once when another process wrote meanwhile.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        // A head row may exist without content (an external change was claimed first).
        let done = sqlx::query(
            "INSERT INTO rt_docs (task_id, last_seq) VALUES (?, 1) ON CONFLICT (task_id) \
             DO UPDATE SET last_seq = 1 WHERE rt_docs.last_seq = 0 AND rt_docs.snapshot IS NULL",
        )
        .bind(id_text(task))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO rt_doc_updates (task_id, seq, update_bytes, at) VALUES (?, 1, ?, ?)",
        )
        .bind(id_text(task))
        .bind(state)
        .bind(micros(at))
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO rt_docs (task_id, last_seq) VALUES (?, 1) \
             ON CONFLICT (task_id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )
        .bind(id_text(task))
        .fetch_one(&mut *tx)
        .await
        .map_err(st)?;
        sqlx::query(
            "INSERT INTO rt_doc_updates (task_id, seq, update_bytes, at) VALUES (?, ?, ?, ?)",
        )
        .bind(id_text(task))
        .bind(seq)
        .bind(update)
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(seq)
    }

    async fn load_doc(&self, task: TaskId) -> Result<StoredDoc> {
        // One read transaction: the snapshot and the updates after it come from the same state.
        let mut tx = self.reader.begin().await.map_err(st)?;
        let head: Option<(Option<Vec<u8>>, i64)> =
            sqlx::query_as("SELECT snapshot, snapshot_seq FROM rt_docs WHERE task_id = ?")
                .bind(id_text(task))
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let (snapshot, snapshot_seq) = head.unwrap_or((None, 0));
        let updates: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, update_bytes FROM rt_doc_updates WHERE task_id = ? AND seq > ? \
             ORDER BY seq",
        )
        .bind(id_text(task))
        .bind(snapshot_seq)
        .fetch_all(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(StoredDoc { snapshot, snapshot_seq, updates })
    }

    async fn compact_doc(&self, task: TaskId, state: &[u8], upto: i64) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let done = sqlx::query(
            "UPDATE rt_docs SET snapshot = ?, snapshot_seq = ? \
             WHERE task_id = ? AND snapshot_seq < ? AND last_seq >= ?",
        )
        .bind(state)
        .bind(upto)
        .bind(id_text(task))
        .bind(upto)
        .bind(upto)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM rt_doc_updates WHERE task_id = ? AND seq <= ?")
            .bind(id_text(task))
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query("DELETE FROM rt_doc_write_backs WHERE task_id = ? AND at < ?")
            .bind(id_text(task))
            .bind(micros(before))
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let done = sqlx::query(
            "INSERT INTO rt_docs (task_id, external_version) \
             SELECT ?1, ?2 WHERE NOT EXISTS \
               (SELECT 1 FROM rt_doc_write_backs WHERE task_id = ?1 AND digest = ?3) \
             ON CONFLICT (task_id) DO UPDATE SET external_version = excluded.external_version \
             WHERE rt_docs.external_version < excluded.external_version",
        )
        .bind(id_text(task))
        .bind(version)
        .bind(digest)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        // The claimed text is now the only one the document knows (see the trait).
        sqlx::query("DELETE FROM rt_doc_write_backs WHERE task_id = ?")
            .bind(id_text(task))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        remember_text(&mut tx, task, digest, at).await?;
        tx.commit().await.map_err(st)?;
        Ok(true)
    }
}

#[async_trait]
impl RealtimeAdmin for SqliteRealtimeStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_realtime_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// Records that the document knows the description text with `digest` (as of `at`): such a text
/// is never taken for an outside change (see `DocStore::claim_external_change`).
async fn remember_text(
    conn: &mut sqlx::SqliteConnection,
    task: TaskId,
    digest: &str,
    at: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO rt_doc_write_backs (task_id, digest, at) VALUES (?, ?, ?) \
         ON CONFLICT (task_id, digest) DO UPDATE SET at = excluded.at",
    )
    .bind(id_text(task))
    .bind(digest)
    .bind(micros(at))
    .execute(conn)
    .await
    .map_err(st)?;
    Ok(())
}

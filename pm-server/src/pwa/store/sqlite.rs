//! SQLite adapter of the PWA stores (feature `sqlite`), over the same database file as pm-core's
//! store: one writer connection plus a small read pool, WAL, `busy_timeout` — the conventions of
//! the auth store's adapter (hyphenated UUID text, integer-microsecond timestamps).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::query::{from_micros, micros};
use pm_core::{Error, Result};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PushStore, PushSubscription, SyncOpStore};

/// The SQLite PWA store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlitePwaStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqlitePwaStore {
    /// Opens (creating if missing) the database file at `url`. In-memory URLs are refused (see
    /// [`super::open`]).
    pub async fn connect(url: &str) -> Result<Self> {
        if crate::auth::store::is_sqlite_memory(url) {
            return Err(Error::invalid(
                "database_url",
                "an in-memory SQLite database cannot be shared with pm-core's store",
            ));
        }
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Normal)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(st)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .map_err(st)?;
        Ok(Self { writer, reader })
    }

    /// Wraps existing pools on the pm-core database file (e.g. pm-core's own writer and
    /// readers, shared so the process has one writer). `writer` must allow writes.
    pub fn from_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        Self { writer, reader }
    }
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(Error::storage)
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(Error::storage)
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: String,
    user_id: String,
    endpoint: String,
    p256dh: String,
    auth: String,
    expiration_time: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SubscriptionRow> for PushSubscription {
    type Error = Error;
    fn try_from(r: SubscriptionRow) -> Result<Self> {
        Ok(PushSubscription {
            id: parse_id(&r.id)?,
            user_id: UserId(parse_id(&r.user_id)?),
            endpoint: r.endpoint,
            p256dh: r.p256dh,
            auth: r.auth,
            expiration_time: r.expiration_time,
            created_at: from_micros(r.created_at)?,
            updated_at: from_micros(r.updated_at)?,
        })
    }
}

#[async_trait]
impl SyncOpStore for SqlitePwaStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_server_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    async fn find_op(&self, user: UserId, op_id: Uuid) -> Result<Option<Value>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT result FROM sync_ops WHERE user_id = ? AND op_id = ?")
                .bind(id_text(user))
                .bind(id_text(op_id))
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        row.as_deref().map(parse_json).transpose()
    }

    async fn record_op(
        &self,
        user: UserId,
        op_id: Uuid,
        result: &Value,
        at: OffsetDateTime,
    ) -> Result<Value> {
        // The insert comes first so the transaction holds the write lock from the start.
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout); a deferred
        // transaction that read first fails at once when another process wrote meanwhile.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query(
            "INSERT INTO sync_ops (user_id, op_id, result, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id, op_id) DO NOTHING",
        )
        .bind(id_text(user))
        .bind(id_text(op_id))
        .bind(result.to_string())
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        let stored: String =
            sqlx::query_scalar("SELECT result FROM sync_ops WHERE user_id = ? AND op_id = ?")
                .bind(id_text(user))
                .bind(id_text(op_id))
                .fetch_one(&mut *tx)
                .await
                .map_err(st)?;
        tx.commit().await.map_err(st)?;
        parse_json(&stored)
    }

    async fn prune_ops(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sync_ops WHERE created_at < ?")
            .bind(micros(before))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl PushStore for SqlitePwaStore {
    async fn upsert_subscription(&self, sub: &PushSubscription) -> Result<PushSubscription> {
        let row: SubscriptionRow = sqlx::query_as(
            "INSERT INTO push_subscriptions \
             (id, user_id, endpoint, p256dh, auth, expiration_time, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id, \
             p256dh = excluded.p256dh, auth = excluded.auth, \
             expiration_time = excluded.expiration_time, updated_at = excluded.updated_at \
             RETURNING *",
        )
        .bind(id_text(sub.id))
        .bind(id_text(sub.user_id))
        .bind(&sub.endpoint)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .bind(sub.expiration_time)
        .bind(micros(sub.created_at))
        .bind(micros(sub.updated_at))
        .fetch_one(&self.writer)
        .await
        .map_err(|e| {
            let unknown_user = matches!(&e, sqlx::Error::Database(d)
                if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation);
            if unknown_user {
                Error::invalid("user_id", "refers to a user that does not exist")
            } else {
                st(e)
            }
        })?;
        row.try_into()
    }

    async fn delete_subscription(&self, user: UserId, endpoint: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM push_subscriptions WHERE user_id = ? AND endpoint = ?")
            .bind(id_text(user))
            .bind(endpoint)
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn remove_endpoint(&self, endpoint: &str) -> Result<()> {
        sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = ?")
            .bind(endpoint)
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn list_subscriptions(&self, user: UserId) -> Result<Vec<PushSubscription>> {
        let rows: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT * FROM push_subscriptions WHERE user_id = ? ORDER BY created_at, id",
        )
        .bind(id_text(user))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

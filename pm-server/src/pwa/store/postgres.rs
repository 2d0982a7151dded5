//! PostgreSQL adapter of the PWA stores (feature `postgres`): native UUID and `timestamptz`
//! columns; op results kept as text so a replay answers byte for byte what was first sent.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::{Error, Result};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PushStore, PushSubscription, SyncOpStore};

const POOL_SIZE: u32 = 4;

/// The PostgreSQL PWA store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresPwaStore {
    pool: PgPool,
}

impl PostgresPwaStore {
    /// Connects to `url`. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(st)?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

fn parse_json(s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(Error::storage)
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    id: Uuid,
    user_id: Uuid,
    endpoint: String,
    p256dh: String,
    auth: String,
    expiration_time: Option<i64>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<SubscriptionRow> for PushSubscription {
    fn from(r: SubscriptionRow) -> Self {
        PushSubscription {
            id: r.id,
            user_id: UserId(r.user_id),
            endpoint: r.endpoint,
            p256dh: r.p256dh,
            auth: r.auth,
            expiration_time: r.expiration_time,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[async_trait]
impl SyncOpStore for PostgresPwaStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_server_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    async fn find_op(&self, user: UserId, op_id: Uuid) -> Result<Option<Value>> {
        let row: Option<String> =
            sqlx::query_scalar("SELECT result FROM sync_ops WHERE user_id = $1 AND op_id = $2")
                .bind(user.0)
                .bind(op_id)
                .fetch_optional(&self.pool)
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
        // Insert-if-absent, then read what is there: under READ COMMITTED a concurrent insert of
        // the same key makes ours wait and do nothing, and the read then sees the winner's row.
        sqlx::query(
            "INSERT INTO sync_ops (user_id, op_id, result, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, op_id) DO NOTHING",
        )
        .bind(user.0)
        .bind(op_id)
        .bind(result.to_string())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        let stored: String =
            sqlx::query_scalar("SELECT result FROM sync_ops WHERE user_id = $1 AND op_id = $2")
                .bind(user.0)
                .bind(op_id)
                .fetch_one(&self.pool)
                .await
                .map_err(st)?;
        parse_json(&stored)
    }

    async fn prune_ops(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sync_ops WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl PushStore for PostgresPwaStore {
    async fn upsert_subscription(&self, sub: &PushSubscription) -> Result<PushSubscription> {
        let row: SubscriptionRow = sqlx::query_as(
            "INSERT INTO push_subscriptions \
             (id, user_id, endpoint, p256dh, auth, expiration_time, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, \
             p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, \
             expiration_time = EXCLUDED.expiration_time, updated_at = EXCLUDED.updated_at \
             RETURNING *",
        )
        .bind(sub.id)
        .bind(sub.user_id.0)
        .bind(&sub.endpoint)
        .bind(&sub.p256dh)
        .bind(&sub.auth)
        .bind(sub.expiration_time)
        .bind(sub.created_at)
        .bind(sub.updated_at)
        .fetch_one(&self.pool)
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
        Ok(row.into())
    }

    async fn delete_subscription(&self, user: UserId, endpoint: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM push_subscriptions WHERE user_id = $1 AND endpoint = $2")
                .bind(user.0)
                .bind(endpoint)
                .execute(&self.pool)
                .await
                .map_err(st)?;
        Ok(done.rows_affected() > 0)
    }

    async fn remove_endpoint(&self, endpoint: &str) -> Result<()> {
        sqlx::query("DELETE FROM push_subscriptions WHERE endpoint = $1")
            .bind(endpoint)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn list_subscriptions(&self, user: UserId) -> Result<Vec<PushSubscription>> {
        let rows: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT * FROM push_subscriptions WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

//! PostgreSQL adapter of [`AuthStore`] (feature `postgres`), over the same database as pm-core's
//! store, with its own small pool.
//!
//! Semantics are the SQLite adapter's. Rotation relies on row locks under READ COMMITTED: a
//! concurrent `UPDATE … WHERE used_at IS NULL` on the same token waits for the first to commit,
//! re-checks the condition, matches nothing, and so takes the reuse path that revokes the family
//! (including the successor the first transaction just committed).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ApiToken, AuthStore, Invite, NewRefreshToken, Rotation, Successor, TokenHash};
use crate::auth::Scope;

/// Connections of the pool [`PostgresAuthStore::connect`] opens.
const POOL_SIZE: u32 = 5;

/// The PostgreSQL auth store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresAuthStore {
    pool: PgPool,
}

impl PostgresAuthStore {
    /// Connects to `url` (`postgres://user@host/db`). Does not migrate.
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

    /// Wraps an existing pool (e.g. the one a host shares with pm-core's store).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

/// Maps a sqlx error: a unique violation is `AlreadyExists`, a foreign-key violation names the
/// user field.
fn db_err(e: sqlx::Error, entity: &'static str, unique_field: &'static str) -> Error {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return Error::AlreadyExists { entity, field: unique_field };
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return Error::invalid("user_id", "refers to a user that does not exist");
            }
            _ => {}
        }
    }
    Error::storage(e)
}

fn hash_of(v: Vec<u8>) -> Result<TokenHash> {
    v.try_into().map_err(|_| Error::Storage("stored token hash is not 32 bytes".into()))
}

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    token_hash: Vec<u8>,
    scope: String,
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    last_used_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
}

impl TryFrom<ApiTokenRow> for ApiToken {
    type Error = Error;
    fn try_from(r: ApiTokenRow) -> Result<Self> {
        Ok(ApiToken {
            id: r.id,
            user_id: UserId(r.user_id),
            name: r.name,
            token_hash: hash_of(r.token_hash)?,
            scope: Scope::parse(&r.scope)
                .ok_or_else(|| Error::Storage(format!("stored scope {:?}", r.scope).into()))?,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: Uuid,
    user_id: Uuid,
    used_at: Option<OffsetDateTime>,
}

/// `SELECT <every api_tokens column> FROM api_tokens <rest>`, as a `&'static str`.
macro_rules! select_api_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, name, token_hash, scope, expires_at, revoked_at, last_used_at, ",
            "created_at FROM api_tokens ",
            $rest
        )
    };
}

#[async_trait]
impl AuthStore for PostgresAuthStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_server_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    async fn password_hash(&self, user: UserId) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)
    }

    async fn create_credential(
        &self,
        user: UserId,
        password_hash: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (user_id, password_hash, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(user.0)
        .bind(password_hash)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err(e, "credential", "user_id"))?;
        Ok(())
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep_family: Option<Uuid>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let done = sqlx::query(
            "UPDATE credentials SET password_hash = $1, updated_at = $2 WHERE user_id = $3",
        )
        .bind(password_hash)
        .bind(at)
        .bind(user.0)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("credential"));
        }
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 \
             WHERE user_id = $2 AND revoked_at IS NULL AND family_id <> $3",
        )
        .bind(at)
        .bind(user.0)
        .bind(keep_family.unwrap_or(Uuid::nil()))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)
    }

    async fn insert_refresh(&self, t: &NewRefreshToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.id)
        .bind(t.family_id)
        .bind(t.user_id.0)
        .bind(&t.token_hash[..])
        .bind(t.expires_at)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err(e, "refresh token", "token_hash"))?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        next: &Successor,
        now: OffsetDateTime,
    ) -> Result<Rotation> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        let claimed: Option<(Uuid, Uuid)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1 \
             RETURNING family_id, user_id",
        )
        .bind(now)
        .bind(&presented[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        if let Some((family_id, user)) = claimed {
            sqlx::query(
                "INSERT INTO refresh_tokens \
                 (id, family_id, user_id, token_hash, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(next.id)
            .bind(family_id)
            .bind(user)
            .bind(&next.token_hash[..])
            .bind(next.expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "refresh token", "token_hash"))?;
            tx.commit().await.map_err(st)?;
            return Ok(Rotation::Rotated { user_id: UserId(user), family_id });
        }
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT family_id, user_id, used_at FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(&presented[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let Some(row) = row.filter(|r| r.used_at.is_some()) else {
            return Ok(Rotation::Invalid);
        };
        // Reuse of a rotated token: someone else holds the family. Revoke it all.
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(row.family_id)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(Rotation::Reused { user_id: UserId(row.user_id), family_id: row.family_id })
    }

    async fn revoke_refresh_family(
        &self,
        presented: &TokenHash,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = $2)",
        )
        .bind(at)
        .bind(&presented[..])
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        let known: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM refresh_tokens WHERE token_hash = $1")
                .bind(&presented[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(known.is_some())
    }

    async fn create_api_token(&self, t: &ApiToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens \
             (id, user_id, name, token_hash, scope, expires_at, revoked_at, last_used_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.id)
        .bind(t.user_id.0)
        .bind(&t.name)
        .bind(&t.token_hash[..])
        .bind(t.scope.as_str())
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(t.last_used_at)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err(e, "api token", "token_hash"))?;
        Ok(())
    }

    async fn find_api_token(&self, hash: &TokenHash) -> Result<Option<ApiToken>> {
        let row: Option<ApiTokenRow> = sqlx::query_as(select_api_tokens!("WHERE token_hash = $1"))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.map(ApiToken::try_from).transpose()
    }

    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>> {
        let rows: Vec<ApiTokenRow> = sqlx::query_as(select_api_tokens!(
            "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    async fn revoke_api_token(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 \
             WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .bind(user.0)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("api token"));
        }
        Ok(())
    }

    async fn touch_api_token(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn create_invite(&self, i: &Invite) -> Result<()> {
        sqlx::query(
            "INSERT INTO invites (id, token_hash, created_by, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(i.id)
        .bind(&i.token_hash[..])
        .bind(i.created_by.0)
        .bind(i.expires_at)
        .bind(i.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err(e, "invite", "token_hash"))?;
        Ok(())
    }

    async fn consume_invite(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<Option<Uuid>> {
        sqlx::query_scalar(
            "UPDATE invites SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING id",
        )
        .bind(now)
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(st)
    }

    async fn release_invite(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE invites SET used_at = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn load_or_store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        // Under READ COMMITTED a concurrent insert of the same name waits for the first to commit
        // and then does nothing; the SELECT (a new snapshot) sees the winner's value.
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(pm_core::model::now())
        .execute(&self.pool)
        .await
        .map_err(st)?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(st)
    }
}

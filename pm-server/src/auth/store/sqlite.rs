//! SQLite adapter of [`AuthStore`] (feature `sqlite`), over the same database file as pm-core's
//! store: one writer connection plus a read pool, WAL, `busy_timeout` (pm-core's writer is a
//! different connection; the two wait for each other).
//!
//! Conventions follow pm-core's SQLite adapter: hyphenated UUID text ids, integer-microsecond
//! timestamps, private `FromRow` rows converted with `TryFrom`. Transactions whose outcome
//! depends on a read start with their write (`UPDATE … RETURNING`), so the write lock is taken
//! up front and a deferred transaction never has to upgrade (which fails with `SQLITE_BUSY`
//! instead of waiting).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::id::UserId;
use pm_core::query::{from_micros, micros};
use pm_core::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ApiToken, AuthStore, Invite, NewRefreshToken, Rotation, Successor, TokenHash};
use crate::auth::Scope;

/// The SQLite auth store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteAuthStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteAuthStore {
    /// Opens (creating if missing) the database file at `url` (`sqlite://path.db`). In-memory
    /// URLs are refused: use [`super::memory::MemoryAuthStore`] (see [`super::open`]).
    pub async fn connect(url: &str) -> Result<Self> {
        if super::is_sqlite_memory(url) {
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
            .max_connections(4)
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

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(Error::storage)
}

fn opt_ts(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(micros)
}

fn from_opt_ts(t: Option<i64>) -> Result<Option<OffsetDateTime>> {
    t.map(from_micros).transpose()
}

fn hash_of(v: Vec<u8>) -> Result<TokenHash> {
    v.try_into().map_err(|_| Error::Storage("stored token hash is not 32 bytes".into()))
}

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    id: String,
    user_id: String,
    name: String,
    token_hash: Vec<u8>,
    scope: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<ApiTokenRow> for ApiToken {
    type Error = Error;
    fn try_from(r: ApiTokenRow) -> Result<Self> {
        Ok(ApiToken {
            id: parse_id(&r.id)?,
            user_id: UserId(parse_id(&r.user_id)?),
            name: r.name,
            token_hash: hash_of(r.token_hash)?,
            scope: Scope::parse(&r.scope)
                .ok_or_else(|| Error::Storage(format!("stored scope {:?}", r.scope).into()))?,
            expires_at: from_opt_ts(r.expires_at)?,
            revoked_at: from_opt_ts(r.revoked_at)?,
            last_used_at: from_opt_ts(r.last_used_at)?,
            created_at: from_micros(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: String,
    user_id: String,
    used_at: Option<i64>,
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
impl AuthStore for SqliteAuthStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_server_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    async fn password_hash(&self, user: UserId) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = ?")
            .bind(id_text(user))
            .fetch_optional(&self.reader)
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
            "INSERT INTO credentials (user_id, password_hash, updated_at) VALUES (?, ?, ?)",
        )
        .bind(id_text(user))
        .bind(password_hash)
        .bind(micros(at))
        .execute(&self.writer)
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
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout); a deferred
        // transaction that read first fails at once when another process wrote meanwhile.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let done = sqlx::query(
            "UPDATE credentials SET password_hash = ?, updated_at = ? WHERE user_id = ?",
        )
        .bind(password_hash)
        .bind(micros(at))
        .bind(id_text(user))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("credential"));
        }
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? \
             WHERE user_id = ? AND revoked_at IS NULL AND family_id <> ?",
        )
        .bind(micros(at))
        .bind(id_text(user))
        .bind(id_text(keep_family.unwrap_or(Uuid::nil())))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)
    }

    async fn insert_refresh(&self, t: &NewRefreshToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(t.id))
        .bind(id_text(t.family_id))
        .bind(id_text(t.user_id))
        .bind(&t.token_hash[..])
        .bind(micros(t.expires_at))
        .bind(micros(t.created_at))
        .execute(&self.writer)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        // The conditional update is the claim: of two concurrent presentations only one
        // matches `used_at IS NULL`.
        let claimed: Option<(String, String)> = sqlx::query_as(
            "UPDATE refresh_tokens SET used_at = ? \
             WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ? \
             RETURNING family_id, user_id",
        )
        .bind(micros(now))
        .bind(&presented[..])
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        if let Some((family, user)) = claimed {
            sqlx::query(
                "INSERT INTO refresh_tokens \
                 (id, family_id, user_id, token_hash, expires_at, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id_text(next.id))
            .bind(&family)
            .bind(&user)
            .bind(&next.token_hash[..])
            .bind(micros(next.expires_at))
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "refresh token", "token_hash"))?;
            tx.commit().await.map_err(st)?;
            return Ok(Rotation::Rotated {
                user_id: UserId(parse_id(&user)?),
                family_id: parse_id(&family)?,
            });
        }
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT family_id, user_id, used_at FROM refresh_tokens WHERE token_hash = ?",
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
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
        )
        .bind(micros(now))
        .bind(&row.family_id)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(Rotation::Reused {
            user_id: UserId(parse_id(&row.user_id)?),
            family_id: parse_id(&row.family_id)?,
        })
    }

    async fn revoke_refresh_family(
        &self,
        presented: &TokenHash,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        // Write first (see the module docs), then tell whether the token existed.
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE revoked_at IS NULL AND family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
        )
        .bind(micros(at))
        .bind(&presented[..])
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM refresh_tokens WHERE token_hash = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(t.id))
        .bind(id_text(t.user_id))
        .bind(&t.name)
        .bind(&t.token_hash[..])
        .bind(t.scope.as_str())
        .bind(opt_ts(t.expires_at))
        .bind(opt_ts(t.revoked_at))
        .bind(opt_ts(t.last_used_at))
        .bind(micros(t.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| db_err(e, "api token", "token_hash"))?;
        Ok(())
    }

    async fn find_api_token(&self, hash: &TokenHash) -> Result<Option<ApiToken>> {
        let row: Option<ApiTokenRow> = sqlx::query_as(select_api_tokens!("WHERE token_hash = ?"))
            .bind(&hash[..])
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.map(ApiToken::try_from).transpose()
    }

    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>> {
        let rows: Vec<ApiTokenRow> = sqlx::query_as(select_api_tokens!(
            "WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at, id"
        ))
        .bind(id_text(user))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        rows.into_iter().map(ApiToken::try_from).collect()
    }

    async fn revoke_api_token(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = ? \
             WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
        )
        .bind(micros(at))
        .bind(id_text(id))
        .bind(id_text(user))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("api token"));
        }
        Ok(())
    }

    async fn touch_api_token(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
            .bind(micros(at))
            .bind(id_text(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn create_invite(&self, i: &Invite) -> Result<()> {
        sqlx::query(
            "INSERT INTO invites (id, token_hash, created_by, expires_at, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id_text(i.id))
        .bind(&i.token_hash[..])
        .bind(id_text(i.created_by))
        .bind(micros(i.expires_at))
        .bind(micros(i.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| db_err(e, "invite", "token_hash"))?;
        Ok(())
    }

    async fn consume_invite(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<Option<Uuid>> {
        let id: Option<String> = sqlx::query_scalar(
            "UPDATE invites SET used_at = ? \
             WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING id",
        )
        .bind(micros(now))
        .bind(&hash[..])
        .bind(micros(now))
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        id.as_deref().map(parse_id).transpose()
    }

    async fn release_invite(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE invites SET used_at = NULL WHERE id = ?")
            .bind(id_text(id))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(())
    }

    async fn load_or_store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(micros(pm_core::model::now()))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?;
        tx.commit().await.map_err(st)?;
        Ok(value)
    }
}

//! Storage of pm-server's authentication state: password credentials, refresh-token families,
//! personal API tokens, registration invites and server-generated secrets.
//!
//! [`AuthStore`] is object-safe (`#[async_trait]`) so the server holds an `Arc<dyn AuthStore>`;
//! adapters: `sqlite` and `postgres` (features of the same names; tables in `pm-server/migrations`, tracked in
//! `_pm_server_migrations` so they coexist with pm-core's migrator in one database) and
//! [`memory`] (for tests, quick embedding and `sqlite::memory:` databases). [`open`] picks one
//! from a database URL.
//!
//! Invariants every adapter keeps (checked by `testing::run_all`, feature `testing`):
//!
//! - only hashes are stored: SHA-256 of refresh/API/invite tokens, argon2id PHC strings of
//!   passwords;
//! - [`AuthStore::rotate_refresh`] is atomic: the presented token is marked used by a conditional
//!   update (`… WHERE used_at IS NULL`) and its successor inserted in the same transaction, so of
//!   two concurrent uses of one token exactly one rotates and the other is detected as reuse,
//!   which revokes the whole family;
//! - every multi-statement write is one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::Result;
use pm_core::id::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Scope;

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// SHA-256 of a token: what the store keeps instead of the token.
pub type TokenHash = [u8; 32];

/// A refresh token to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefreshToken {
    /// Row id.
    pub id: Uuid,
    /// The login session the token belongs to.
    pub family_id: Uuid,
    /// Owner.
    pub user_id: UserId,
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// When it was issued.
    pub created_at: OffsetDateTime,
}

/// The successor of a rotated refresh token (its family and owner come from the presented one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Successor {
    /// Row id.
    pub id: Uuid,
    /// SHA-256 of the new token.
    pub token_hash: TokenHash,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The token was valid: it is now used and its successor is stored.
    Rotated {
        /// Owner.
        user_id: UserId,
        /// The family (login session).
        family_id: Uuid,
    },
    /// The token had already been used: the whole family is now revoked.
    Reused {
        /// Owner.
        user_id: UserId,
        /// The revoked family.
        family_id: Uuid,
    },
    /// Unknown, expired or revoked token; nothing changed.
    Invalid,
}

/// A personal API token as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Identity.
    pub id: Uuid,
    /// Owner.
    pub user_id: UserId,
    /// The owner's label for it.
    pub name: String,
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// What it may do.
    pub scope: Scope,
    /// When it stops being accepted (`None`: never).
    pub expires_at: Option<OffsetDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// When it last authenticated a request (updated at most about once a minute).
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

impl ApiToken {
    /// Whether it authenticates requests at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// A registration invite as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Identity.
    pub id: Uuid,
    /// SHA-256 of the invite token.
    pub token_hash: TokenHash,
    /// Who created it.
    pub created_by: UserId,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// pm-server's authentication tables. See the module docs for the invariants.
#[async_trait]
pub trait AuthStore: Send + Sync + std::fmt::Debug {
    /// Applies pending migrations of pm-server's tables (pm-core's must have run first: the
    /// tables refer to its `users`).
    async fn migrate(&self) -> Result<()>;

    /// The user's password hash, if they have a password.
    async fn password_hash(&self, user: UserId) -> Result<Option<String>>;
    /// Stores a first password; `AlreadyExists { entity: "credential" }` if the user has one.
    async fn create_credential(
        &self,
        user: UserId,
        password_hash: &str,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Replaces the user's password (`NotFound` if they have none) and, in the same transaction,
    /// revokes every refresh family of the user except `keep_family`.
    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep_family: Option<Uuid>,
        at: OffsetDateTime,
    ) -> Result<()>;

    /// Stores the first token of a new family (a login).
    async fn insert_refresh(&self, token: &NewRefreshToken) -> Result<()>;
    /// Presents a refresh token: see [`Rotation`]. A token is valid while unused, unrevoked and
    /// `expires_at > now`.
    async fn rotate_refresh(
        &self,
        presented: &TokenHash,
        successor: &Successor,
        now: OffsetDateTime,
    ) -> Result<Rotation>;
    /// Revokes the family of the given token (logout); returns whether the token was known.
    async fn revoke_refresh_family(
        &self,
        presented: &TokenHash,
        at: OffsetDateTime,
    ) -> Result<bool>;

    /// Stores a new API token.
    async fn create_api_token(&self, token: &ApiToken) -> Result<()>;
    /// Looks a token up by hash, whatever its state.
    async fn find_api_token(&self, hash: &TokenHash) -> Result<Option<ApiToken>>;
    /// The user's unrevoked API tokens, oldest first.
    async fn list_api_tokens(&self, user: UserId) -> Result<Vec<ApiToken>>;
    /// Revokes one of the user's tokens; `NotFound { entity: "api token" }` when the user has no
    /// unrevoked token with this id.
    async fn revoke_api_token(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<()>;
    /// Records that the token authenticated a request at `at`.
    async fn touch_api_token(&self, id: Uuid, at: OffsetDateTime) -> Result<()>;

    /// Stores a new invite.
    async fn create_invite(&self, invite: &Invite) -> Result<()>;
    /// Marks an unused, unexpired invite used; returns its id, or `None` if there is none.
    async fn consume_invite(&self, hash: &TokenHash, now: OffsetDateTime) -> Result<Option<Uuid>>;
    /// Makes a consumed invite usable again (when the registration it admitted failed).
    async fn release_invite(&self, id: Uuid) -> Result<()>;

    /// The secret stored under `name`; when there is none, stores `candidate` first. Concurrent
    /// callers all get the same (first stored) value.
    async fn load_or_store_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;
}

/// Whether a `sqlite:` URL names an in-memory database.
pub fn is_sqlite_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"))
}

/// Opens the auth store for the pm-core database at `url`. Does not migrate.
///
/// An in-memory SQLite URL gets a [`memory::MemoryAuthStore`]: a second in-memory connection
/// would be a different database, without pm-core's `users` table to refer to.
pub async fn open(url: &str) -> Result<Arc<dyn AuthStore>> {
    if is_sqlite_memory(url) {
        return Ok(Arc::new(memory::MemoryAuthStore::default()));
    }
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(sqlite::SqliteAuthStore::connect(url).await?));
        #[cfg(not(feature = "sqlite"))]
        return Err(pm_core::Error::invalid(
            "database_url",
            "pm-server was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(postgres::PostgresAuthStore::connect(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(pm_core::Error::invalid(
            "database_url",
            "pm-server was built without the `postgres` feature",
        ));
    }
    Err(pm_core::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

//! Storage of the PWA features: offline-sync op results ([`SyncOpStore`]) and Web Push
//! subscriptions ([`PushStore`]).
//!
//! Both are object-safe (`#[async_trait]`); adapters `sqlite` and `postgres` (features of the same
//! names; tables `sync_ops` and `push_subscriptions` in `pm-server/migrations`, tracked in
//! `_pm_server_migrations` with the auth tables) and [`memory`] (tests, quick embedding and
//! in-memory SQLite URLs). One adapter struct implements both traits; [`open`] picks it from a
//! database URL.
//!
//! Invariants: [`SyncOpStore::record_op`] keeps the *first* result of an op (insert-if-absent),
//! so two concurrent replays of one op agree on its outcome; a subscription belongs to one user
//! and is unique by endpoint (re-registering an endpoint moves it to the caller).

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::Result;
use pm_core::id::UserId;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Results of offline-sync ops, per (user, op id): the exactly-once record.
#[async_trait]
pub trait SyncOpStore: Send + Sync + std::fmt::Debug {
    /// Applies pending migrations of pm-server's tables (the same migrator as
    /// [`crate::auth::store::AuthStore::migrate`]; running both is harmless).
    async fn migrate(&self) -> Result<()>;
    /// The recorded result of the user's op, if any.
    async fn find_op(&self, user: UserId, op_id: Uuid) -> Result<Option<Value>>;
    /// Records the op's result unless one is recorded already; returns the recorded (first) one.
    async fn record_op(
        &self,
        user: UserId,
        op_id: Uuid,
        result: &Value,
        at: OffsetDateTime,
    ) -> Result<Value>;
    /// Forgets results recorded before `before`; returns how many.
    async fn prune_ops(&self, before: OffsetDateTime) -> Result<u64>;
}

/// A browser's push subscription, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// Identity.
    pub id: Uuid,
    /// Whose notifications go there.
    pub user_id: UserId,
    /// The push service URL.
    pub endpoint: String,
    /// The browser's P-256 public key, base64url (65-byte uncompressed point).
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
    /// When the push service expires it (ms since the epoch), as the browser said.
    pub expiration_time: Option<i64>,
    /// First registered.
    pub created_at: OffsetDateTime,
    /// Last registered.
    pub updated_at: OffsetDateTime,
}

/// Web Push subscriptions.
#[async_trait]
pub trait PushStore: Send + Sync + std::fmt::Debug {
    /// Inserts the subscription, or replaces the one with the same endpoint (keeping its id and
    /// `created_at`, taking the new owner and keys); returns what is stored.
    async fn upsert_subscription(&self, sub: &PushSubscription) -> Result<PushSubscription>;
    /// Removes the user's subscription to `endpoint`; whether there was one.
    async fn delete_subscription(&self, user: UserId, endpoint: &str) -> Result<bool>;
    /// Removes the subscription to `endpoint` whoever owns it (the push service said it is gone).
    async fn remove_endpoint(&self, endpoint: &str) -> Result<()>;
    /// The user's subscriptions, oldest first.
    async fn list_subscriptions(&self, user: UserId) -> Result<Vec<PushSubscription>>;
}

/// The PWA stores over one backend.
#[derive(Clone, Debug)]
pub struct PwaStores {
    /// Offline-sync op results.
    pub sync_ops: Arc<dyn SyncOpStore>,
    /// Push subscriptions.
    pub push: Arc<dyn PushStore>,
}

impl PwaStores {
    /// Both stores in memory (lost on exit).
    pub fn memory() -> Self {
        let m = Arc::new(memory::MemoryPwaStore::default());
        Self { sync_ops: m.clone(), push: m }
    }

    /// Applies pending migrations of pm-server's tables.
    pub async fn migrate(&self) -> Result<()> {
        self.sync_ops.migrate().await
    }
}

/// Opens the PWA stores for the pm-core database at `url` (in memory for in-memory SQLite URLs,
/// like the auth store). Does not migrate.
pub async fn open(url: &str) -> Result<PwaStores> {
    if crate::auth::store::is_sqlite_memory(url) {
        return Ok(PwaStores::memory());
    }
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let s = Arc::new(sqlite::SqlitePwaStore::connect(url).await?);
            return Ok(PwaStores { sync_ops: s.clone(), push: s });
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(pm_core::Error::invalid(
            "database_url",
            "pm-server was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let s = Arc::new(postgres::PostgresPwaStore::connect(url).await?);
            return Ok(PwaStores { sync_ops: s.clone(), push: s });
        }
        #[cfg(not(feature = "postgres"))]
        return Err(pm_core::Error::invalid(
            "database_url",
            "pm-server was built without the `postgres` feature",
        ));
    }
    Err(pm_core::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

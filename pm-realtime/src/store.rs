//! Store traits: what pm-realtime persists, one trait per role.
//!
//! Traits are object-safe (`#[async_trait]`) so hosts hold `Arc<dyn NotificationStore>` and can
//! plug their own adapter; the `pm_realtime::testing` suite (feature `testing`) tells an adapter
//! author whether theirs behaves. Rules every adapter follows:
//!
//! - a notification is unique per (user, event): creating it twice stores it once and reports
//!   the second call as not created, which is what makes the notification consumer idempotent
//!   (several instances may run it);
//! - notifications list newest first with a keyset cursor (the notification id, a UUIDv7), so
//!   concurrent inserts never cause duplicates or skips of older rows;
//! - a user only ever sees and changes their own notifications (`NotFound` otherwise);
//! - last-seen times only move forward.
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`) and [`postgres`] (feature `postgres`). Their
//! tables live in the same database as pm-core's, prefixed `rt_`, with their own migrations table
//! `_pm_realtime_migrations` (migrations in `pm-realtime/migrations/{sqlite,postgres}`).

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::id::UserId;
use time::OffsetDateTime;

use crate::Result;
use crate::notification::{Notification, NotificationId};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Default page size of [`NotificationQuery`].
pub const DEFAULT_LIMIT: u32 = 25;
/// Largest page size of [`NotificationQuery`].
pub const MAX_LIMIT: u32 = 100;

/// When users were last seen online.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Records that `user` was seen at `at` (a no-op when a later time is already stored).
    async fn touch_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<()>;
    /// When `user` was last seen, if ever.
    async fn last_seen(&self, user: UserId) -> Result<Option<OffsetDateTime>>;
}

/// Which notifications to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationQuery {
    /// Only unread ones.
    pub unread_only: bool,
    /// Rows per page, 1..=[`MAX_LIMIT`].
    pub limit: u32,
    /// Continue after this notification (from [`NotificationPage::next_cursor`]); the first page
    /// when `None`.
    pub before: Option<NotificationId>,
}

impl Default for NotificationQuery {
    fn default() -> Self {
        Self { unread_only: false, limit: DEFAULT_LIMIT, before: None }
    }
}

impl NotificationQuery {
    /// Checks the limit (`limit` field).
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(crate::Error::invalid("limit", format!("must be 1..={MAX_LIMIT}")));
        }
        Ok(())
    }
}

/// One page of notifications, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationPage {
    /// The rows.
    pub items: Vec<Notification>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<NotificationId>,
}

impl NotificationPage {
    /// Builds a page from up to `limit + 1` rows fetched by a store: the extra row only signals
    /// that another page exists.
    pub fn from_rows(mut rows: Vec<Notification>, limit: u32) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(|n| n.id) } else { None };
        Self { items: rows, next_cursor }
    }
}

/// Per-user notifications.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores a notification unless one exists for the same user and event; returns whether it
    /// was created.
    async fn create_notification(&self, notification: &Notification) -> Result<bool>;
    /// A page of the user's notifications, newest first.
    async fn list_notifications(
        &self,
        user: UserId,
        query: &NotificationQuery,
    ) -> Result<NotificationPage>;
    /// Marks one of the user's notifications read (`read_at = at`) or unread (`at = None`);
    /// returns it as stored.
    async fn set_read(
        &self,
        user: UserId,
        id: NotificationId,
        at: Option<OffsetDateTime>,
    ) -> Result<Notification>;
    /// Marks every unread notification of the user read; returns how many changed.
    async fn mark_all_read(&self, user: UserId, at: OffsetDateTime) -> Result<u64>;
    /// How many of the user's notifications are unread.
    async fn unread_count(&self, user: UserId) -> Result<u64>;
}

/// Backend administration.
#[async_trait]
pub trait RealtimeAdmin: Send + Sync {
    /// Applies pending migrations of this crate's tables.
    async fn migrate(&self) -> Result<()>;
    /// `sqlite` or `postgres` (or a host adapter's name).
    fn backend(&self) -> &'static str;
}

/// Every realtime store, as trait objects. Cheap to clone.
#[derive(Clone)]
pub struct RealtimeStores {
    /// Last-seen times.
    pub presence: Arc<dyn PresenceStore>,
    /// Notifications.
    pub notifications: Arc<dyn NotificationStore>,
    /// Administration.
    pub admin: Arc<dyn RealtimeAdmin>,
}

impl RealtimeStores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: PresenceStore + NotificationStore + RealtimeAdmin + 'static,
    {
        Self { presence: s.clone(), notifications: s.clone(), admin: s }
    }
}

impl std::fmt::Debug for RealtimeStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeStores")
            .field("backend", &self.admin.backend())
            .finish_non_exhaustive()
    }
}

/// Opens the built-in adapter named by a URL (`sqlite://…` or `postgres://…`), the same URL as
/// pm-core's store. Does not migrate; call `stores.admin.migrate()`.
pub async fn open(url: &str) -> Result<RealtimeStores> {
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let s = sqlite::SqliteRealtimeStore::connect(url).await?;
            return Ok(RealtimeStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-realtime was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let s = postgres::PostgresRealtimeStore::connect(url).await?;
            return Ok(RealtimeStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-realtime was built without the `postgres` feature",
        ));
    }
    Err(crate::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

/// Adapter plumbing shared by the built-in stores.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod shared {
    use crate::Error;

    pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Storage(format!("stored {what} is invalid: {e}").into())
    }

    pub(crate) fn st(e: sqlx::Error) -> Error {
        Error::storage(e)
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn micros(t: time::OffsetDateTime) -> i64 {
        pm_core::query::micros(t)
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn from_micros(us: i64) -> crate::Result<time::OffsetDateTime> {
        pm_core::query::from_micros(us).map_err(|e| corrupt("timestamp", e))
    }
}

/// An in-memory store for hosts that need no persistence (and for tests of other components).
pub mod memory {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Keeps everything in process memory; lost on restart.
    #[derive(Debug, Default)]
    pub struct MemoryRealtimeStore {
        last_seen: Mutex<BTreeMap<UserId, OffsetDateTime>>,
        notifications: Mutex<BTreeMap<NotificationId, Notification>>,
    }

    impl MemoryRealtimeStore {
        /// An empty store.
        pub fn new() -> Self {
            Self::default()
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[async_trait]
    impl PresenceStore for MemoryRealtimeStore {
        async fn touch_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<()> {
            let mut m = lock(&self.last_seen);
            let e = m.entry(user).or_insert(at);
            if *e < at {
                *e = at;
            }
            Ok(())
        }

        async fn last_seen(&self, user: UserId) -> Result<Option<OffsetDateTime>> {
            Ok(lock(&self.last_seen).get(&user).copied())
        }
    }

    #[async_trait]
    impl NotificationStore for MemoryRealtimeStore {
        async fn create_notification(&self, n: &Notification) -> Result<bool> {
            let mut m = lock(&self.notifications);
            if m.values().any(|o| o.user_id == n.user_id && o.event_id == n.event_id) {
                return Ok(false);
            }
            m.insert(n.id, n.clone());
            Ok(true)
        }

        async fn list_notifications(
            &self,
            user: UserId,
            q: &NotificationQuery,
        ) -> Result<NotificationPage> {
            q.validate()?;
            let m = lock(&self.notifications);
            let rows = m
                .values()
                .rev()
                .filter(|n| n.user_id == user)
                .filter(|n| !q.unread_only || n.read_at.is_none())
                .filter(|n| q.before.is_none_or(|b| n.id < b))
                .take(q.limit as usize + 1)
                .cloned()
                .collect();
            Ok(NotificationPage::from_rows(rows, q.limit))
        }

        async fn set_read(
            &self,
            user: UserId,
            id: NotificationId,
            at: Option<OffsetDateTime>,
        ) -> Result<Notification> {
            let mut m = lock(&self.notifications);
            let n = m
                .get_mut(&id)
                .filter(|n| n.user_id == user)
                .ok_or_else(|| crate::Error::not_found("notification"))?;
            n.read_at = at;
            Ok(n.clone())
        }

        async fn mark_all_read(&self, user: UserId, at: OffsetDateTime) -> Result<u64> {
            let mut m = lock(&self.notifications);
            let mut changed = 0;
            for n in m.values_mut().filter(|n| n.user_id == user && n.read_at.is_none()) {
                n.read_at = Some(at);
                changed += 1;
            }
            Ok(changed)
        }

        async fn unread_count(&self, user: UserId) -> Result<u64> {
            let m = lock(&self.notifications);
            Ok(m.values().filter(|n| n.user_id == user && n.read_at.is_none()).count() as u64)
        }
    }

    #[async_trait]
    impl RealtimeAdmin for MemoryRealtimeStore {
        async fn migrate(&self) -> Result<()> {
            Ok(())
        }

        fn backend(&self) -> &'static str {
            "memory"
        }
    }
}

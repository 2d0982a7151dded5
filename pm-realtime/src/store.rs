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
//! - last-seen times only move forward;
//! - a collaborative document's update log is numbered per document without gaps, and an append
//!   commits before any later-numbered one of the same document (the document's head row is
//!   locked until commit), so a reader that sees `seq = n` sees every `seq < n` too — which is
//!   what makes compaction (snapshot up to `n`, delete the covered updates) lose nothing;
//! - a document is initialised at most once ([`DocStore::init_doc`]), and an external change
//!   (a task version) is claimed by at most one caller ([`DocStore::claim_external_change`]);
//! - the description texts a document *knows* — the one it was seeded from, the latest claimed
//!   external change, and its recorded write-backs — are never claimed as external changes: a
//!   task's version also moves when another instance's edits are still awaiting write-back or
//!   when other fields change, so a known text at a newer version is not news to the document.
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`) and [`postgres`] (feature `postgres`). Their
//! tables live in the same database as pm-core's, prefixed `rt_`, with their own migrations table
//! `_pm_realtime_migrations` (migrations in `pm-realtime/migrations/{sqlite,postgres}`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pm_core::id::{TaskId, UserId};
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
    /// Records several users at once, with [`PresenceStore::touch_last_seen`]'s rule for each
    /// (a user may appear more than once; the latest time counts). The hub calls this once per
    /// sweep; the built-in adapters write the batch with one statement. The default calls
    /// `touch_last_seen` per user.
    async fn touch_last_seen_many(&self, seen: &[(UserId, OffsetDateTime)]) -> Result<()> {
        for (user, at) in latest_per_user(seen) {
            self.touch_last_seen(user, at).await?;
        }
        Ok(())
    }
}

/// The latest time of each user in `seen`, ordered by user (a batch upsert may not touch a row
/// twice).
pub fn latest_per_user(seen: &[(UserId, OffsetDateTime)]) -> Vec<(UserId, OffsetDateTime)> {
    let mut latest: BTreeMap<UserId, OffsetDateTime> = BTreeMap::new();
    for (user, at) in seen {
        latest.entry(*user).and_modify(|t| *t = (*t).max(*at)).or_insert(*at);
    }
    latest.into_iter().collect()
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

/// A collaborative document as stored: the latest snapshot (if any) and the updates logged after
/// it, in order. Applying the snapshot then every update (in any order: Yjs updates commute)
/// rebuilds the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    /// The compacted state (a Yjs v1 update of the whole document), if compacted yet.
    pub snapshot: Option<Vec<u8>>,
    /// The last update `seq` the snapshot covers (0 without a snapshot).
    pub snapshot_seq: i64,
    /// `(seq, update)` logged after the snapshot, ascending.
    pub updates: Vec<(i64, Vec<u8>)>,
}

impl StoredDoc {
    /// Whether nothing is stored for the document (it was never initialised).
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }

    /// The highest `seq` this read covers.
    pub fn last_seq(&self) -> i64 {
        self.updates.last().map_or(self.snapshot_seq, |(seq, _)| *seq)
    }
}

/// Collaborative documents (one per task description): an append-only update log per document
/// with snapshot compaction, plus the bookkeeping that keeps several instances from duplicating
/// content (initialisation and external changes are claimed once) and lets them recognise their
/// own write-backs in the event log.
#[async_trait]
pub trait DocStore: Send + Sync {
    /// Stores the first state of a document unless it already has one; returns whether this call
    /// initialised it. Two instances opening a new document concurrently must not both seed it
    /// (their seeds would be different Yjs items and the text would appear twice).
    ///
    /// `digest` identifies the description text the state was seeded from; it is recorded in the
    /// same transaction like a write-back, so that text is never claimed as an external change
    /// (an instance opening the document while another's edits await write-back sees the seed
    /// text in the description and a longer text in the store: that is not a change to apply).
    async fn init_doc(
        &self,
        task: TaskId,
        state: &[u8],
        digest: &str,
        at: OffsetDateTime,
    ) -> Result<bool>;
    /// Appends an update to the document's log; returns its `seq` (per document, from 1).
    async fn append_doc_update(
        &self,
        task: TaskId,
        update: &[u8],
        at: OffsetDateTime,
    ) -> Result<i64>;
    /// The latest snapshot and the updates after it.
    async fn load_doc(&self, task: TaskId) -> Result<StoredDoc>;
    /// Replaces the snapshot with `state` covering updates up to `upto` and deletes those
    /// updates, in one transaction; a no-op (returning `false`) when the stored snapshot already
    /// covers `upto`. `state` must include every update with `seq <= upto`.
    async fn compact_doc(&self, task: TaskId, state: &[u8], upto: i64) -> Result<bool>;
    /// Records that the text with this digest is being written back into the task description
    /// (before the write), so any instance reading the resulting event recognises it; records
    /// older than `before` are pruned.
    async fn record_write_back(
        &self,
        task: TaskId,
        digest: &str,
        at: OffsetDateTime,
        before: OffsetDateTime,
    ) -> Result<()>;
    /// Claims applying the task's description at `version` (changed outside the document, e.g.
    /// through REST) into the document: `true` for exactly one caller per version, and never when
    /// `digest` is a text the document knows (a recorded write-back, its seed, or the latest
    /// claimed change: no change to the document). A successful claim makes `digest` the only
    /// known text (recorded at `at`; earlier records are dropped, so changing the description
    /// back to an older text later is still recognised as a change), in one transaction.
    async fn claim_external_change(
        &self,
        task: TaskId,
        version: i64,
        digest: &str,
        at: OffsetDateTime,
    ) -> Result<bool>;
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
    /// Collaborative documents.
    pub docs: Arc<dyn DocStore>,
    /// Administration.
    pub admin: Arc<dyn RealtimeAdmin>,
}

impl RealtimeStores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: PresenceStore + NotificationStore + DocStore + RealtimeAdmin + 'static,
    {
        Self { presence: s.clone(), notifications: s.clone(), docs: s.clone(), admin: s }
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

/// pm-realtime's PostgreSQL stores over an existing pool, for a host that shares one pool between all
/// the crates on one database (pm-server does: one pool per process, see its `db` module) rather
/// than letting each [`open`] its own. Does not migrate; call `stores.admin.migrate()`.
#[cfg(feature = "postgres")]
pub fn postgres_stores(pool: sqlx::postgres::PgPool) -> RealtimeStores {
    RealtimeStores::from_adapter(Arc::new(postgres::PostgresRealtimeStore::from_pool(pool)))
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
        docs: Mutex<BTreeMap<TaskId, MemoryDoc>>,
    }

    #[derive(Debug, Default)]
    struct MemoryDoc {
        last_seq: i64,
        snapshot: Option<Vec<u8>>,
        snapshot_seq: i64,
        updates: BTreeMap<i64, Vec<u8>>,
        external_version: i64,
        write_backs: BTreeMap<String, OffsetDateTime>,
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
    impl DocStore for MemoryRealtimeStore {
        async fn init_doc(
            &self,
            task: TaskId,
            state: &[u8],
            digest: &str,
            at: OffsetDateTime,
        ) -> Result<bool> {
            let mut m = lock(&self.docs);
            let d = m.entry(task).or_default();
            if d.last_seq > 0 || d.snapshot.is_some() {
                return Ok(false);
            }
            d.last_seq = 1;
            d.updates.insert(1, state.to_vec());
            d.write_backs.insert(digest.to_owned(), at);
            Ok(true)
        }

        async fn append_doc_update(
            &self,
            task: TaskId,
            update: &[u8],
            _at: OffsetDateTime,
        ) -> Result<i64> {
            let mut m = lock(&self.docs);
            let d = m.entry(task).or_default();
            d.last_seq += 1;
            d.updates.insert(d.last_seq, update.to_vec());
            Ok(d.last_seq)
        }

        async fn load_doc(&self, task: TaskId) -> Result<StoredDoc> {
            let m = lock(&self.docs);
            Ok(m.get(&task).map_or_else(StoredDoc::default, |d| StoredDoc {
                snapshot: d.snapshot.clone(),
                snapshot_seq: d.snapshot_seq,
                updates: d.updates.iter().map(|(s, u)| (*s, u.clone())).collect(),
            }))
        }

        async fn compact_doc(&self, task: TaskId, state: &[u8], upto: i64) -> Result<bool> {
            let mut m = lock(&self.docs);
            let d = m.entry(task).or_default();
            if d.snapshot_seq >= upto || d.last_seq < upto {
                return Ok(false);
            }
            d.snapshot = Some(state.to_vec());
            d.snapshot_seq = upto;
            d.updates.retain(|seq, _| *seq > upto);
            Ok(true)
        }

        async fn record_write_back(
            &self,
            task: TaskId,
            digest: &str,
            at: OffsetDateTime,
            before: OffsetDateTime,
        ) -> Result<()> {
            let mut m = lock(&self.docs);
            let d = m.entry(task).or_default();
            d.write_backs.retain(|_, t| *t >= before);
            d.write_backs.insert(digest.to_owned(), at);
            Ok(())
        }

        async fn claim_external_change(
            &self,
            task: TaskId,
            version: i64,
            digest: &str,
            at: OffsetDateTime,
        ) -> Result<bool> {
            let mut m = lock(&self.docs);
            let d = m.entry(task).or_default();
            if d.write_backs.contains_key(digest) || d.external_version >= version {
                return Ok(false);
            }
            d.external_version = version;
            d.write_backs.clear();
            d.write_backs.insert(digest.to_owned(), at);
            Ok(true)
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

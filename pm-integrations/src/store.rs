//! Store traits: what pm-integrations persists, one trait per aggregate or role.
//!
//! Traits are object-safe (`#[async_trait]`) so hosts hold `Arc<dyn InboundStore>` and can plug
//! their own adapter; the `pm_integrations::testing` suite (feature `testing`) tells an adapter
//! author whether theirs behaves. Rules every adapter follows:
//!
//! - an inbound delivery is unique per (provider, delivery id): ingesting it twice stores it
//!   once and reports the second as [`Ingested::Duplicate`] — the replay protection;
//! - queues ([`InboundStore::claim_inbound`], [`WebhookStore::claim_outbound`]) hand out due
//!   items oldest first and lease them (`available_at` moves to the lease end), so a worker that
//!   dies mid-way leaves them to be claimed again after the lease — at-least-once;
//! - credentials are stored sealed only ([`Sealed`]); a replacement happens only at the version
//!   the caller read (single-flight refresh across instances); the same holds for OAuth tokens
//!   ([`OAuthStore`]), and a pending OAuth state is taken at most once;
//! - a mapping is unique per (integration, external id) and per (integration, task); creating
//!   the same link twice returns the existing one (idempotent creates); a sync commits the new
//!   base and its conflicts in one transaction, at the expected version;
//! - enqueueing outbound deliveries advances the consumer's cursor in the same transaction and
//!   is idempotent per (subscription, event);
//! - a failed outbound attempt increments the subscription's failure streak and disables it at
//!   the threshold, in the same transaction; a success resets the streak;
//! - a comment link is unique per (integration, pm comment) and per (integration, provider
//!   comment); linking the same pm comment twice returns the existing link;
//! - an intent is unique per key: [`SyncStateStore::begin_intent`] claims it for exactly one of
//!   concurrent callers, reports a done one with its result, and lets a pending one be taken
//!   over only once it is older than the caller's lease;
//! - a parked push is unique per (integration, event); of one (integration, task) only the
//!   oldest parked event is ever claimed, so pushes of a task are retried in event order;
//!   giving up on one records its failure in the same transaction, and re-queueing a failure
//!   deletes it in the same transaction as it parks the push;
//! - lists are newest first with a keyset cursor (the row's UUIDv7 id) — except the retry
//!   queue ([`SyncStateStore::list_parked_pushes`]), read from its head, oldest first.
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`) and [`postgres`] (feature `postgres`). Their
//! tables are prefixed `int_` and tracked in their own migrations table
//! `_pm_integrations_migrations` (migrations in `pm-integrations/migrations/{sqlite,postgres}`).

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::id::{CommentId, IntegrationId, OrgId, TaskId};
use time::OffsetDateTime;

use crate::Result;
use crate::crypto::Sealed;
use crate::model::*;
use crate::provider::ProviderKey;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Known providers.
#[async_trait]
pub trait ProviderStore: Send + Sync {
    /// Inserts a provider unless its key exists; `true` when inserted (seeding is idempotent).
    async fn ensure_provider(&self, p: &ProviderRecord) -> Result<bool>;
    /// Every provider, by key.
    async fn list_providers(&self) -> Result<Vec<ProviderRecord>>;
}

/// Project integrations.
#[async_trait]
pub trait IntegrationStore: Send + Sync {
    /// Stores a new integration.
    async fn create_integration(&self, i: &Integration) -> Result<()>;
    /// One integration.
    async fn get_integration(&self, id: IntegrationId) -> Result<Integration>;
    /// An organization's integrations, oldest first.
    async fn list_integrations(&self, org: OrgId) -> Result<Vec<Integration>>;
    /// Every enabled integration of `provider`, across organizations, oldest first (the
    /// calendar channel renewal job's set).
    async fn enabled_integrations_of(&self, provider: &ProviderKey) -> Result<Vec<Integration>>;
    /// Applies `patch` at `expected_version` (else `Conflict`).
    async fn update_integration(
        &self,
        id: IntegrationId,
        expected_version: i64,
        patch: &IntegrationPatch,
        at: OffsetDateTime,
    ) -> Result<Integration>;
    /// Deletes it with its credentials, mappings, conflicts and deliveries.
    async fn delete_integration(&self, id: IntegrationId) -> Result<()>;
}

/// Sealed credentials.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Stores (or overwrites) the integration's credential of `kind`; the version increments.
    async fn put_credential(
        &self,
        integration: IntegrationId,
        kind: CredentialKind,
        sealed: &Sealed,
        expires_at: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) -> Result<Credential>;
    /// The integration's credential of `kind`, if any.
    async fn get_credential(
        &self,
        integration: IntegrationId,
        kind: CredentialKind,
    ) -> Result<Option<Credential>>;
    /// Replaces a credential only if it is still at `expected_version` (`Conflict` otherwise).
    async fn replace_credential(
        &self,
        id: CredentialId,
        expected_version: i64,
        sealed: &Sealed,
        expires_at: Option<OffsetDateTime>,
        at: OffsetDateTime,
    ) -> Result<Credential>;
    /// Deletes every credential of the integration; returns how many.
    async fn delete_credentials(&self, integration: IntegrationId) -> Result<u64>;
}

/// OAuth connections: pending authorizations and sealed tokens.
#[async_trait]
pub trait OAuthStore: Send + Sync {
    /// Stores a pending authorization (and drops any that expired before its `created_at`).
    /// `NotFound` (`integration`) if the integration does not exist.
    async fn put_oauth_state(&self, s: &OAuthState) -> Result<()>;
    /// Removes and returns the pending authorization with this hash, expired or not (the caller
    /// checks); of concurrent callers exactly one gets it.
    async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthState>>;
    /// Stores an integration's tokens (a first connection, or a reconnect that replaces them):
    /// the version becomes the previous one plus one (1 when new); `created_at` of a replaced
    /// row stays. `NotFound` (`integration`) if the integration does not exist.
    async fn put_oauth_token(&self, t: &OAuthToken) -> Result<OAuthToken>;
    /// An integration's tokens, if connected.
    async fn get_oauth_token(&self, integration: IntegrationId) -> Result<Option<OAuthToken>>;
    /// Writes `t` (tokens, expiry, scopes, status, reason, `updated_at`) only if the stored row
    /// is still at `expected_version`; the version increments. `Conflict` with the current
    /// version otherwise, `NotFound` (`oauth connection`) when there is none.
    async fn update_oauth_token(&self, t: &OAuthToken, expected_version: i64)
    -> Result<OAuthToken>;
    /// Deletes an integration's tokens; `true` if there were any.
    async fn delete_oauth_token(&self, integration: IntegrationId) -> Result<bool>;
}

/// The inbound delivery queue.
#[async_trait]
pub trait InboundStore: Send + Sync {
    /// Persists a verified delivery unless (provider, delivery id) is known.
    async fn ingest(&self, d: &InboundDelivery) -> Result<Ingested>;
    /// One delivery.
    async fn get_inbound(&self, id: DeliveryId) -> Result<InboundDelivery>;
    /// Leases up to `limit` pending deliveries due at `now`, oldest first, until `lease_until`;
    /// increments their attempt counts.
    async fn claim_inbound(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<InboundDelivery>>;
    /// Records the outcome of an attempt.
    async fn finish_inbound(&self, id: DeliveryId, outcome: &Attempt) -> Result<()>;
}

/// External mappings and sync conflicts.
#[async_trait]
pub trait MappingStore: Send + Sync {
    /// Creates a mapping; if (integration, external id) is mapped already, returns that one and
    /// `false`. `AlreadyExists` if the task is mapped to another item of the integration.
    async fn create_mapping(&self, m: &ExternalMapping) -> Result<(ExternalMapping, bool)>;
    /// The mapping of an external item.
    async fn mapping_by_external(
        &self,
        integration: IntegrationId,
        external_id: &str,
    ) -> Result<Option<ExternalMapping>>;
    /// The mapping of a task.
    async fn mapping_by_task(
        &self,
        integration: IntegrationId,
        task: TaskId,
    ) -> Result<Option<ExternalMapping>>;
    /// Deletes a mapping (and its conflicts): the external item is gone (a calendar event
    /// deleted with the task's due date). `NotFound` (`mapping`) when there is none.
    async fn delete_mapping(&self, id: MappingId) -> Result<()>;
    /// An integration's mappings, newest first.
    async fn list_mappings(
        &self,
        integration: IntegrationId,
        limit: u32,
        before: Option<MappingId>,
    ) -> Result<Page<ExternalMapping>>;
    /// Stores a sync's new base and its conflicts in one transaction, at `expected_version`.
    async fn commit_sync(
        &self,
        id: MappingId,
        expected_version: i64,
        base: &SyncedBase,
        conflicts: &[SyncConflict],
    ) -> Result<ExternalMapping>;
    /// An integration's conflicts, newest first.
    async fn list_conflicts(
        &self,
        integration: IntegrationId,
        unresolved_only: bool,
        limit: u32,
        before: Option<ConflictId>,
    ) -> Result<Page<SyncConflict>>;
    /// One conflict.
    async fn get_conflict(&self, id: ConflictId) -> Result<SyncConflict>;
    /// Marks a conflict acknowledged.
    async fn resolve_conflict(&self, id: ConflictId, at: OffsetDateTime) -> Result<SyncConflict>;
}

/// Sync state beside the mappings: comment links, intents (outbound side effects recorded
/// before they are attempted), the pushes waiting for a retry and those given up on.
#[async_trait]
pub trait SyncStateStore: Send + Sync {
    /// Stores a link unless the pm comment is linked already (then returns that link and
    /// `false`). `AlreadyExists` if the provider comment is linked to another pm comment.
    async fn link_comment(&self, l: &CommentLink) -> Result<(CommentLink, bool)>;
    /// The link of a pm comment.
    async fn comment_link(
        &self,
        integration: IntegrationId,
        comment: CommentId,
    ) -> Result<Option<CommentLink>>;
    /// The link of a provider comment.
    async fn comment_link_by_external(
        &self,
        integration: IntegrationId,
        external_comment_id: &str,
    ) -> Result<Option<CommentLink>>;
    /// Records the bodies both sides hold after a sync of the comment. `NotFound` (`comment
    /// link`) when it is gone.
    async fn update_comment_link(
        &self,
        id: CommentLinkId,
        local_fingerprint: &str,
        remote_fingerprint: &str,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Deletes a link; `true` if it existed.
    async fn delete_comment_link(&self, id: CommentLinkId) -> Result<bool>;
    /// Records `intent` as pending unless its key is known: a done intent comes back as
    /// [`IntentClaim::Done`], a pending one started after `stale_before` as
    /// [`IntentClaim::InFlight`]; an older pending one is taken over (its start becomes
    /// `intent.started_at`) and claimed. `NotFound` (`integration`) if the integration is gone.
    async fn begin_intent(
        &self,
        intent: &Intent,
        stale_before: OffsetDateTime,
    ) -> Result<IntentClaim>;
    /// Marks a claimed intent done with its result.
    async fn finish_intent(
        &self,
        key: &str,
        result: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Forgets a pending intent whose attempt failed for certain (nothing happened remotely),
    /// so a retry may claim it again.
    async fn abandon_intent(&self, key: &str) -> Result<()>;
    /// How many intents of `kind` of the integration are pending and started after `since`.
    async fn intents_in_flight(
        &self,
        integration: IntegrationId,
        kind: &str,
        since: OffsetDateTime,
    ) -> Result<u64>;
    /// Records a push given up on; a second record of the same (integration, event) replaces
    /// the first (its attempts and error are the latest).
    async fn record_sync_failure(&self, f: &SyncFailure) -> Result<()>;
    /// An integration's push failures, newest first.
    async fn list_sync_failures(
        &self,
        integration: IntegrationId,
        limit: u32,
        before: Option<SyncFailureId>,
    ) -> Result<Page<SyncFailure>>;
    /// One push failure. `NotFound` (`sync failure`).
    async fn get_sync_failure(&self, id: SyncFailureId) -> Result<SyncFailure>;
    /// Dismisses a push failure; `true` if it existed.
    async fn delete_sync_failure(&self, id: SyncFailureId) -> Result<bool>;
    /// Takes push failure `id` back into the retry queue as `push`, in one transaction: the
    /// failure is deleted and the push parked (unless that event is parked for the integration
    /// already). `NotFound` (`sync failure`) when the failure is gone — so of two concurrent
    /// re-queues one wins.
    async fn requeue_sync_failure(&self, id: SyncFailureId, push: &ParkedPush) -> Result<()>;

    /// Parks a push in the retry queue; `false` (nothing changed) when the same event is parked
    /// for the integration already — re-reading the event log after a restart parks nothing
    /// twice. `NotFound` (`integration`) if the integration is gone.
    async fn park_push(&self, push: &ParkedPush) -> Result<bool>;
    /// Whether pushes of the task to the integration are parked (a new event of the task then
    /// queues behind them instead of overtaking them).
    async fn has_parked_pushes(&self, integration: IntegrationId, task: TaskId) -> Result<bool>;
    /// Claims up to `limit` due pushes, each the oldest parked event (by `event_seq`) of its
    /// (integration, task) — a later event waits until the earlier one is gone — soonest due
    /// first; each is leased by moving `next_attempt_at` to `lease_until`, so a worker that dies
    /// leaves it to be claimed again.
    async fn claim_parked_pushes(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<ParkedPush>>;
    /// Records a failed attempt of a parked push: its attempts, error and next due time.
    /// `NotFound` (`parked push`) when it is gone.
    async fn reschedule_push(
        &self,
        id: ParkedPushId,
        attempts: i32,
        error: &str,
        next_attempt_at: OffsetDateTime,
    ) -> Result<()>;
    /// Removes a parked push (pushed, or nothing left to push); `true` if it existed.
    async fn drop_parked_push(&self, id: ParkedPushId) -> Result<bool>;
    /// Gives up on a parked push: removes it and records `failure`, in one transaction.
    /// `NotFound` (`parked push`) when it is gone.
    async fn fail_parked_push(&self, id: ParkedPushId, failure: &SyncFailure) -> Result<()>;
    /// An integration's parked pushes, oldest parked first (by id: a queue is read from its
    /// head), a page of `limit` after `after` (the previous page's `next`). Of one task the
    /// lowest `event_seq` is attempted first, whatever its place here.
    async fn list_parked_pushes(
        &self,
        integration: IntegrationId,
        limit: u32,
        after: Option<ParkedPushId>,
    ) -> Result<Page<ParkedPush>>;
    /// The retry queue per provider (of the integrations the pushes go to), by provider key;
    /// a provider with nothing parked is absent. For monitoring: one aggregate query.
    async fn parked_push_stats(&self) -> Result<Vec<ParkedPushStats>>;
}

/// The exchange log.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends an entry.
    async fn append_log(&self, e: &LogEntry) -> Result<()>;
    /// Entries (of one integration, or all), newest first.
    async fn list_logs(
        &self,
        integration: Option<IntegrationId>,
        limit: u32,
        before: Option<LogId>,
    ) -> Result<Page<LogEntry>>;
}

/// Outbound webhook subscriptions and deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new subscription.
    async fn create_subscription(&self, s: &Subscription) -> Result<()>;
    /// One subscription.
    async fn get_subscription(&self, id: SubscriptionId) -> Result<Subscription>;
    /// An organization's subscriptions, oldest first.
    async fn list_subscriptions(&self, org: OrgId) -> Result<Vec<Subscription>>;
    /// Every enabled subscription (the delivery worker's fan-out set).
    async fn enabled_subscriptions(&self) -> Result<Vec<Subscription>>;
    /// Applies `patch` at `expected_version`; enabling clears the failure streak and reason.
    async fn update_subscription(
        &self,
        id: SubscriptionId,
        expected_version: i64,
        patch: &SubscriptionPatch,
        at: OffsetDateTime,
    ) -> Result<Subscription>;
    /// Deletes it and its deliveries.
    async fn delete_subscription(&self, id: SubscriptionId) -> Result<()>;
    /// The event-log position consumer `name` has enqueued up to (0 if never).
    async fn cursor(&self, name: &str) -> Result<i64>;
    /// Inserts deliveries (skipping any (subscription, event) already present) and moves the
    /// cursor to `upto` in one transaction; returns how many were inserted.
    async fn enqueue_outbound(
        &self,
        consumer: &str,
        upto: i64,
        deliveries: &[OutboundDelivery],
    ) -> Result<u64>;
    /// Leases up to `limit` pending deliveries due at `now` (oldest first) until `lease_until`.
    async fn claim_outbound(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<OutboundDelivery>>;
    /// Records an attempt on the delivery and the subscription's failure streak (disabling it
    /// at `attempt.disable_after`), in one transaction.
    async fn finish_outbound(
        &self,
        id: OutboundId,
        attempt: &OutboundAttempt,
    ) -> Result<(OutboundDelivery, Subscription)>;
    /// One delivery.
    async fn get_outbound(&self, id: OutboundId) -> Result<OutboundDelivery>;
    /// A subscription's deliveries, newest first.
    async fn list_outbound(
        &self,
        subscription: SubscriptionId,
        limit: u32,
        before: Option<OutboundId>,
    ) -> Result<Page<OutboundDelivery>>;
    /// Makes a delivery pending again, due at `at` (manual redelivery).
    async fn redeliver(&self, id: OutboundId, at: OffsetDateTime) -> Result<OutboundDelivery>;
}

/// Backend administration.
#[async_trait]
pub trait IntegrationAdmin: Send + Sync {
    /// Applies pending migrations of this crate's tables.
    async fn migrate(&self) -> Result<()>;
    /// `sqlite` or `postgres` (or a host adapter's name).
    fn backend(&self) -> &'static str;
}

/// Every integration store, as trait objects. Cheap to clone.
#[derive(Clone)]
pub struct IntegrationStores {
    /// Providers.
    pub providers: Arc<dyn ProviderStore>,
    /// Integrations.
    pub integrations: Arc<dyn IntegrationStore>,
    /// Credentials.
    pub credentials: Arc<dyn CredentialStore>,
    /// OAuth connections.
    pub oauth: Arc<dyn OAuthStore>,
    /// Inbound queue.
    pub inbound: Arc<dyn InboundStore>,
    /// Mappings and conflicts.
    pub mappings: Arc<dyn MappingStore>,
    /// Comment links, intents and push failures.
    pub sync_state: Arc<dyn SyncStateStore>,
    /// Logs.
    pub logs: Arc<dyn LogStore>,
    /// Outbound webhooks.
    pub webhooks: Arc<dyn WebhookStore>,
    /// Administration.
    pub admin: Arc<dyn IntegrationAdmin>,
}

impl IntegrationStores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: ProviderStore
            + IntegrationStore
            + CredentialStore
            + OAuthStore
            + InboundStore
            + MappingStore
            + SyncStateStore
            + LogStore
            + WebhookStore
            + IntegrationAdmin
            + 'static,
    {
        Self {
            providers: s.clone(),
            integrations: s.clone(),
            credentials: s.clone(),
            oauth: s.clone(),
            inbound: s.clone(),
            mappings: s.clone(),
            sync_state: s.clone(),
            logs: s.clone(),
            webhooks: s.clone(),
            admin: s,
        }
    }
}

impl std::fmt::Debug for IntegrationStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationStores")
            .field("backend", &self.admin.backend())
            .finish_non_exhaustive()
    }
}

/// Opens the built-in adapter named by a URL (`sqlite://…` or `postgres://…`), the same URL as
/// pm-core's store. Does not migrate; call `stores.admin.migrate()`.
pub async fn open(url: &str) -> Result<IntegrationStores> {
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let s = sqlite::SqliteIntegrationStore::connect(url).await?;
            return Ok(IntegrationStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-integrations was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let s = postgres::PostgresIntegrationStore::connect(url).await?;
            return Ok(IntegrationStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-integrations was built without the `postgres` feature",
        ));
    }
    Err(crate::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

/// pm-integrations' PostgreSQL stores over an existing pool, for a host that shares one pool between all
/// the crates on one database (pm-server does: one pool per process, see its `db` module) rather
/// than letting each [`open`] its own. Does not migrate; call `stores.admin.migrate()`.
#[cfg(feature = "postgres")]
pub fn postgres_stores(pool: sqlx::postgres::PgPool) -> IntegrationStores {
    IntegrationStores::from_adapter(Arc::new(postgres::PostgresIntegrationStore::from_pool(pool)))
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

    pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("domain values serialise to JSON")
    }

    pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
        what: &str,
        s: &str,
    ) -> crate::Result<T> {
        serde_json::from_str(s).map_err(|e| corrupt(what, e))
    }

    /// Whether a sqlx error is a unique-constraint violation.
    pub(crate) fn is_unique(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
    }

    use crate::model::{OutboundAttempt, QueueStatus, Subscription, SubscriptionPatch};

    /// The delivery state after an attempt.
    pub(crate) fn outbound_status(a: &OutboundAttempt) -> QueueStatus {
        match (a.succeeded(), a.retry_at) {
            (true, _) => QueueStatus::Done,
            (false, Some(_)) => QueueStatus::Pending,
            (false, None) => QueueStatus::Failed,
        }
    }

    /// Why a subscription was switched off by the worker.
    pub(crate) fn auto_disabled_reason(after: i32) -> String {
        format!("disabled automatically after {after} consecutive failed attempts")
    }

    /// Applies a patch in memory (the adapters write the result at the next version).
    pub(crate) fn apply_subscription_patch(
        cur: &mut Subscription,
        patch: &SubscriptionPatch,
        at: time::OffsetDateTime,
    ) {
        if let Some(u) = &patch.url {
            cur.url = u.clone();
        }
        if let Some(e) = &patch.events {
            cur.events = e.clone();
        }
        if let Some(d) = &patch.description {
            cur.description = d.clone();
        }
        if let Some(s) = &patch.secrets {
            cur.secrets = s.clone();
        }
        match patch.enabled {
            Some(true) => {
                // Re-enabling is a fresh start: the streak that disabled it is forgiven.
                cur.enabled = true;
                cur.disabled_reason = None;
                cur.consecutive_failures = 0;
            }
            Some(false) => cur.enabled = false,
            None => {}
        }
        cur.version += 1;
        cur.updated_at = at;
    }
}

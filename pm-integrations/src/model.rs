//! What pm-integrations persists: providers, project integrations, inbound deliveries (the
//! ingest queue), credentials (sealed), external mappings with their base snapshots, sync
//! conflicts, exchange logs (redacted), outbound webhook subscriptions and their deliveries.
//!
//! Domain types only: no sqlx derives (adapters convert private row structs). Inputs are parsed
//! into newtypes where a rule applies ([`EventFilter`], [`Redacted`]), so a stored value always
//! satisfies it.

use std::fmt;

use pm_core::id::{CommentId, EventId, IntegrationId, OrgId, ProjectId, TaskId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::provider::{Capability, Mappings, ProviderKey};
use crate::sync::{FieldPolicy, Side, Snapshot};
use crate::{Error, Result};

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    )*};
}

typed_id! {
    /// Identifies an [`InboundDelivery`].
    DeliveryId,
    /// Identifies a [`Credential`].
    CredentialId,
    /// Identifies an [`ExternalMapping`].
    MappingId,
    /// Identifies a [`SyncConflict`].
    ConflictId,
    /// Identifies a [`LogEntry`].
    LogId,
    /// Identifies a [`CommentLink`].
    CommentLinkId,
    /// Identifies a [`SyncFailure`].
    SyncFailureId,
    /// Identifies a [`ParkedPush`].
    ParkedPushId,
    /// Identifies a [`Subscription`].
    SubscriptionId,
    /// Identifies an [`OutboundDelivery`].
    OutboundId,
}

/// A provider known to this installation (seeded by `pm-server init-integrations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// Stable key.
    pub key: ProviderKey,
    /// Display name.
    pub name: String,
    /// What it can do.
    pub capabilities: Vec<Capability>,
    /// Whether new integrations may use it.
    pub enabled: bool,
    /// When it was registered.
    pub created_at: OffsetDateTime,
}

/// A project's connection to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    /// Id (also the `Actor::Integration` of changes it makes).
    pub id: IntegrationId,
    /// Owning organization.
    pub org_id: OrgId,
    /// The project it syncs.
    pub project_id: ProjectId,
    /// The provider.
    pub provider: ProviderKey,
    /// Display name.
    pub name: String,
    /// Provider-specific settings (repository, project key, calendar id, base URL).
    pub config: Value,
    /// Field/state mappings and merge policies.
    pub mappings: Mappings,
    /// Whether it processes deliveries and syncs.
    pub enabled: bool,
    /// Optimistic-concurrency version (starts at 1).
    pub version: i64,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last changed.
    pub updated_at: OffsetDateTime,
}

/// Changes to an [`Integration`]; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntegrationPatch {
    /// New name.
    pub name: Option<String>,
    /// New config.
    pub config: Option<Value>,
    /// New mappings.
    pub mappings: Option<Mappings>,
    /// Enable/disable.
    pub enabled: Option<bool>,
}

/// Checks an integration name (`name` field): 1–200 characters after trimming.
pub fn parse_name(field: &str, s: &str) -> Result<String> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > 200 {
        return Err(Error::invalid(field, "1-200 characters"));
    }
    Ok(t.to_owned())
}

/// Processing state of a queued item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Waiting (or leased to a worker until its lease ends).
    Pending,
    /// Done successfully.
    Done,
    /// Gave up (attempts exhausted, or permanently rejected).
    Failed,
}

impl QueueStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Pending => "pending",
            QueueStatus::Done => "done",
            QueueStatus::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(QueueStatus::Pending),
            "done" => Ok(QueueStatus::Done),
            "failed" => Ok(QueueStatus::Failed),
            _ => Err(Error::invalid("status", format!("unknown status {s:?}"))),
        }
    }
}

/// A verified inbound webhook, persisted before it is acknowledged. Persisting it *is* the
/// ingest: processing happens from this queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundDelivery {
    /// Id (time-ordered: the queue's order).
    pub id: DeliveryId,
    /// Provider that sent it.
    pub provider: ProviderKey,
    /// Integration it was addressed to.
    pub integration_id: IntegrationId,
    /// The provider's delivery id (unique per provider).
    pub delivery_id: String,
    /// Headers worth keeping (event names, ids) — never signatures or tokens.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// Processing state.
    pub status: QueueStatus,
    /// Processing attempts so far.
    pub attempts: i32,
    /// Not to be claimed before this (lease end or retry time).
    pub available_at: OffsetDateTime,
    /// Last processing error.
    pub last_error: Option<String>,
    /// When it arrived.
    pub received_at: OffsetDateTime,
}

impl InboundDelivery {
    /// A new pending delivery received `at`.
    pub fn new(
        provider: ProviderKey,
        integration_id: IntegrationId,
        delivery_id: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            id: DeliveryId::new(),
            provider,
            integration_id,
            delivery_id,
            headers,
            body,
            status: QueueStatus::Pending,
            attempts: 0,
            available_at: at,
            last_error: None,
            received_at: at,
        }
    }
}

/// Result of persisting an inbound delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Stored; to be processed.
    New(DeliveryId),
    /// The same (provider, delivery id) was already stored: a replay, nothing to do.
    Duplicate(DeliveryId),
}

/// How a processing attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Done.
    Succeeded,
    /// Failed; try again at `retry_at`, or give up when `None`.
    Failed {
        /// What went wrong (no secrets).
        error: String,
        /// Next attempt, if any.
        retry_at: Option<OffsetDateTime>,
    },
}

/// What a credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// OAuth access token.
    OAuthAccess,
    /// OAuth refresh token.
    OAuthRefresh,
    /// Inbound webhook secret (or Graph client state / Google channel token).
    WebhookSecret,
    /// A static API token.
    ApiToken,
}

impl CredentialKind {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OAuthAccess => "oauth_access",
            CredentialKind::OAuthRefresh => "oauth_refresh",
            CredentialKind::WebhookSecret => "webhook_secret",
            CredentialKind::ApiToken => "api_token",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "oauth_access" => Ok(CredentialKind::OAuthAccess),
            "oauth_refresh" => Ok(CredentialKind::OAuthRefresh),
            "webhook_secret" => Ok(CredentialKind::WebhookSecret),
            "api_token" => Ok(CredentialKind::ApiToken),
            _ => Err(Error::invalid("kind", format!("unknown credential kind {s:?}"))),
        }
    }

    /// The AEAD context a credential of this kind for `integration` is sealed under, so a
    /// ciphertext copied to another integration or kind does not open.
    pub fn context(self, integration: IntegrationId) -> String {
        format!("pm-integrations:credential:{integration}:{}", self.as_str())
    }
}

/// A secret of an integration, sealed (the store never sees plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Id.
    pub id: CredentialId,
    /// Owner.
    pub integration_id: IntegrationId,
    /// What it is (one per kind per integration).
    pub kind: CredentialKind,
    /// The sealed value.
    pub sealed: Sealed,
    /// When it expires, if known (access tokens).
    pub expires_at: Option<OffsetDateTime>,
    /// Version: a refresh replaces the token only at the version it read, so two concurrent
    /// refreshes cannot both win.
    pub version: i64,
    /// Last written.
    pub updated_at: OffsetDateTime,
}

/// A pending OAuth authorization: what `connect` remembers until the provider redirects back
/// with the `state`. Single use (the callback takes it) and short-lived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthState {
    /// SHA-256 (hex) of the `state` parameter; the state itself is never stored, so a leaked
    /// table cannot complete anyone's authorization.
    pub state_hash: String,
    /// The integration being connected.
    pub integration_id: IntegrationId,
    /// Who started it (recorded as the connection's owner).
    pub user_id: UserId,
    /// The PKCE `code_verifier`, sealed under [`OAuthState::verifier_context`].
    pub verifier: Sealed,
    /// The `redirect_uri` sent with the authorization request (the token request must repeat it).
    pub redirect_uri: String,
    /// When `connect` ran.
    pub created_at: OffsetDateTime,
    /// After this the state is refused.
    pub expires_at: OffsetDateTime,
}

impl OAuthState {
    /// The AEAD context of the verifier of the state with this hash.
    pub fn verifier_context(state_hash: &str) -> String {
        format!("pm-integrations:oauth-state:{state_hash}:verifier")
    }
}

/// Whether an OAuth connection can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthStatus {
    /// Tokens are usable (refreshed when they expire).
    Active,
    /// The provider refused the refresh token (`invalid_grant`: revoked, expired, rotated
    /// elsewhere): a user must connect again. Nothing retries until then.
    NeedsReconnect,
}

impl OAuthStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthStatus::Active => "active",
            OAuthStatus::NeedsReconnect => "needs_reconnect",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(OAuthStatus::Active),
            "needs_reconnect" => Ok(OAuthStatus::NeedsReconnect),
            _ => Err(Error::invalid("status", format!("unknown OAuth status {s:?}"))),
        }
    }
}

/// An integration's OAuth tokens, sealed (one connection per integration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthToken {
    /// The integration.
    pub integration_id: IntegrationId,
    /// The access token, sealed under [`OAuthToken::access_context`].
    pub access: Sealed,
    /// The refresh token, if the provider issued one, sealed under
    /// [`OAuthToken::refresh_context`].
    pub refresh: Option<Sealed>,
    /// `token_type` as the provider said (normally `bearer`).
    pub token_type: String,
    /// Scopes granted (as the provider reported them, else as requested).
    pub scopes: Vec<String>,
    /// When the access token expires, if the provider said.
    pub expires_at: Option<OffsetDateTime>,
    /// Usable, or waiting for a reconnect.
    pub status: OAuthStatus,
    /// Why it needs a reconnect (the provider's error, no secrets).
    pub status_reason: Option<String>,
    /// Who connected it.
    pub connected_by: UserId,
    /// Optimistic-concurrency version: a refresh writes only at the version it read, so two
    /// instances refreshing at once cannot both rotate the refresh token.
    pub version: i64,
    /// First connected.
    pub created_at: OffsetDateTime,
    /// Last written.
    pub updated_at: OffsetDateTime,
}

impl OAuthToken {
    /// The AEAD context of an integration's access token.
    pub fn access_context(integration: IntegrationId) -> String {
        format!("pm-integrations:oauth:{integration}:access")
    }

    /// The AEAD context of an integration's refresh token.
    pub fn refresh_context(integration: IntegrationId) -> String {
        format!("pm-integrations:oauth:{integration}:refresh")
    }

    /// The id of the key the tokens are sealed with (stored beside them for rotation).
    pub fn key_id(&self) -> &str {
        self.access.key_id().unwrap_or_default()
    }
}

/// The link between a pm task and an external item, with the field values both sides agreed
/// on at the last sync (the merge base).
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalMapping {
    /// Id.
    pub id: MappingId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// pm task.
    pub task_id: TaskId,
    /// Provider's item id (unique per integration).
    pub external_id: String,
    /// Item URL.
    pub external_url: Option<String>,
    /// The base snapshot per field.
    pub base: Snapshot,
    /// The provider's change time the base reflects.
    pub remote_updated_at: Option<OffsetDateTime>,
    /// Fingerprint of the fields we last pushed (echo suppression).
    pub pushed_fingerprint: Option<String>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last synced.
    pub updated_at: OffsetDateTime,
}

/// A new base after a sync of one mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncedBase {
    /// The merged snapshot.
    pub base: Snapshot,
    /// The provider's change time it reflects.
    pub remote_updated_at: Option<OffsetDateTime>,
    /// Fingerprint of what was pushed, if anything was.
    pub pushed_fingerprint: Option<String>,
    /// When.
    pub at: OffsetDateTime,
}

/// A field both sides changed, resolved by policy — kept visible until someone acknowledges it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConflict {
    /// Id.
    pub id: ConflictId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// Mapping.
    pub mapping_id: MappingId,
    /// Task.
    pub task_id: TaskId,
    /// Field.
    pub field: String,
    /// Base value.
    pub base: Value,
    /// Our value.
    pub local: Value,
    /// Their value.
    pub remote: Value,
    /// Value kept.
    pub resolved: Value,
    /// Winning side.
    pub winner: Side,
    /// Policy that decided.
    pub policy: FieldPolicy,
    /// When.
    pub detected_at: OffsetDateTime,
    /// When acknowledged.
    pub resolved_at: Option<OffsetDateTime>,
}

/// A pm comment and the provider comment it is synced with (a GitHub issue comment). Both
/// fingerprints are of the body as each side held it after the last sync — the provider's with
/// pm's marker stripped — so a change coming back that equals what we wrote is our echo.
#[derive(Debug, Clone, PartialEq)]
pub struct CommentLink {
    /// Id.
    pub id: CommentLinkId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// The task the comment is on.
    pub task_id: TaskId,
    /// pm's comment (unique per integration).
    pub comment_id: CommentId,
    /// The provider's item the comment is on (`octo/repo#7`).
    pub external_id: String,
    /// The provider's comment id (unique per integration).
    pub external_comment_id: String,
    /// Where the comment was written: [`Side::Local`] (in pm, pushed to the provider) or
    /// [`Side::Remote`] (on the provider, copied into pm). Only local comments are pushed back
    /// when edited or deleted in pm — the provider's comment belongs to its author there.
    pub origin: Side,
    /// Fingerprint of pm's body at the last sync.
    pub local_fingerprint: String,
    /// Fingerprint of the provider's body at the last sync.
    pub remote_fingerprint: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last synced.
    pub updated_at: OffsetDateTime,
}

/// An outbound side effect about to be attempted (an item create, a Slack message), recorded
/// first so a replay can tell "done" from "never tried" — providers without idempotency keys
/// give nothing else to go on.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// The caller's idempotency key (unique).
    pub key: String,
    /// Integration.
    pub integration_id: IntegrationId,
    /// What it is, e.g. `item.create`, `slack.message`.
    pub kind: String,
    /// When this attempt started.
    pub started_at: OffsetDateTime,
}

/// What [`begin_intent`](crate::store::SyncStateStore::begin_intent) found.
#[derive(Debug, Clone, PartialEq)]
pub enum IntentClaim {
    /// Ours to attempt: new, or taken over from a sender that stopped before its lease ended.
    Claimed,
    /// Done already; the recorded result.
    Done(Value),
    /// Another sender is attempting it now (pending, within its lease).
    InFlight,
}

/// A push the sync pusher gave up on: the event, the integration, how often it was tried and
/// the last error — kept visible (API) rather than dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncFailure {
    /// Id.
    pub id: SyncFailureId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// The task concerned, if any.
    pub task_id: Option<TaskId>,
    /// The pm event that was being pushed.
    pub event_id: EventId,
    /// Its log position.
    pub event_seq: i64,
    /// Its kind (`task.updated`).
    pub event_kind: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// When the pusher gave up.
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

/// A push of one pm event to one integration that failed with an error that may pass (a
/// provider outage or timeout, a rate limit, a concurrent write) and waits for its next attempt
/// in the durable retry queue, so the pusher can go on with other events. Pushes of one
/// (integration, task) are attempted oldest event first.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedPush {
    /// Id.
    pub id: ParkedPushId,
    /// Integration.
    pub integration_id: IntegrationId,
    /// The task the event concerns.
    pub task_id: TaskId,
    /// The pm event to push (kept whole: a retry after a restart needs nothing else).
    pub event: pm_core::event::Event,
    /// Attempts made so far (0 for an event queued behind an earlier parked one, or re-queued
    /// by hand).
    pub attempts: i32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it is due (while claimed: when the claim's lease ends).
    pub next_attempt_at: OffsetDateTime,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
}

impl ParkedPush {
    /// A push of `event` to `integration`, due at `due` after `attempts` attempts.
    /// `Invalid` (`event`) when the event concerns no task.
    pub fn new(
        integration: IntegrationId,
        event: &pm_core::event::Event,
        attempts: i32,
        last_error: Option<String>,
        due: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let task_id = event.task_id.ok_or_else(|| Error::invalid("event", "concerns no task"))?;
        Ok(Self {
            id: ParkedPushId::new(),
            integration_id: integration,
            task_id,
            event: event.clone(),
            attempts,
            last_error,
            next_attempt_at: due,
            parked_at: now,
        })
    }
}

/// The retry queue of one provider's integrations, as an operator watches it: how many pushes
/// wait and since when the oldest does (a provider that stays down shows as a growing age).
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedPushStats {
    /// The provider of the integrations the pushes go to.
    pub provider: ProviderKey,
    /// Parked pushes (attempted or queued behind one).
    pub count: u64,
    /// When the longest-waiting of them was parked.
    pub oldest_parked_at: OffsetDateTime,
}

/// Direction of a logged exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Provider → pm.
    Inbound,
    /// pm → provider or subscriber.
    Outbound,
}

impl Direction {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "inbound" => Ok(Direction::Inbound),
            "outbound" => Ok(Direction::Outbound),
            _ => Err(Error::invalid("direction", format!("unknown direction {s:?}"))),
        }
    }
}

/// JSON with secrets removed: the only way to build one is [`Redacted::new`], which replaces
/// the value of every key that names a secret (token, secret, password, authorization,
/// signature, code, cookie, client_state, key) at any depth with `"[redacted]"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Redacted(Value);

impl Redacted {
    /// Redacts `value`.
    pub fn new(mut value: Value) -> Self {
        redact(&mut value);
        Self(value)
    }

    /// Wraps a value read back from a store (it was redacted when written).
    pub fn from_stored(value: Value) -> Self {
        Self::new(value)
    }

    /// The JSON.
    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

const SECRET_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "authorization",
    "signature",
    "cookie",
    "client_state",
    "clientstate",
    "api_key",
    "apikey",
    "private_key",
];

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| k.contains(w)) || k == "code" || k == "key"
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if is_secret_key(k) && !val.is_null() {
                    *val = Value::String("[redacted]".into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// One logged exchange with a provider or subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Id (time-ordered).
    pub id: LogId,
    /// Integration, if any.
    pub integration_id: Option<IntegrationId>,
    /// Provider key (or `webhooks` for outbound subscriptions).
    pub provider: String,
    /// Direction.
    pub direction: Direction,
    /// What was done, e.g. `webhook.rejected`, `issue.update`.
    pub operation: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Details, secrets removed.
    pub detail: Redacted,
    /// When.
    pub at: OffsetDateTime,
}

/// Which pm events a subscription wants: `*` or a list of event kinds (`task.created`) and
/// entity wildcards (`task.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    /// Parses a list (`events` field): 1–50 patterns, each `*`, a known kind or `entity.*`.
    pub fn parse(patterns: Vec<String>) -> Result<Self> {
        if patterns.is_empty() || patterns.len() > 50 {
            return Err(Error::invalid("events", "1-50 event patterns"));
        }
        for (i, p) in patterns.iter().enumerate() {
            let ok = p == "*"
                || pm_core::event::EventKind::parse(p).is_ok()
                || p.strip_suffix(".*").is_some_and(|entity| {
                    pm_core::event::EventKind::ALL
                        .iter()
                        .any(|k| k.as_str().split('.').next() == Some(entity))
                });
            if !ok {
                return Err(Error::invalid(format!("events[{i}]"), format!("unknown event {p:?}")));
            }
        }
        let mut v = patterns;
        v.sort();
        v.dedup();
        Ok(Self(v))
    }

    /// Whether an event of `kind` (e.g. `task.updated`) matches.
    pub fn matches(&self, kind: &str) -> bool {
        self.0.iter().any(|p| {
            p == "*"
                || p == kind
                || p.strip_suffix(".*").is_some_and(|e| kind.split('.').next() == Some(e))
        })
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<Vec<String>> for EventFilter {
    type Error = Error;
    fn try_from(v: Vec<String>) -> Result<Self> {
        Self::parse(v)
    }
}

impl From<EventFilter> for Vec<String> {
    fn from(f: EventFilter) -> Self {
        f.0
    }
}

/// An outbound webhook subscription: pm events of an organization (optionally one project)
/// POSTed to `url`, signed with Standard Webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Id.
    pub id: SubscriptionId,
    /// Organization whose events are sent.
    pub org_id: OrgId,
    /// Only this project's events, if set.
    pub project_id: Option<ProjectId>,
    /// Target URL (checked by the SSRF guard on create and before every send).
    pub url: String,
    /// Which events.
    pub events: EventFilter,
    /// Free text.
    pub description: String,
    /// The signing secrets (a JSON list of `whsec_…`, sealed; several during rotation).
    pub secrets: Sealed,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled automatically, if it was.
    pub disabled_reason: Option<String>,
    /// Failed attempts in a row (reset by a success).
    pub consecutive_failures: i32,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last changed.
    pub updated_at: OffsetDateTime,
}

impl Subscription {
    /// The AEAD context of this subscription's secrets.
    pub fn secrets_context(id: SubscriptionId) -> String {
        format!("pm-integrations:subscription:{id}:secrets")
    }

    /// Whether an event concerns this subscription.
    pub fn wants(&self, e: &pm_core::event::Event) -> bool {
        self.enabled
            && e.org_id == Some(self.org_id)
            && self.project_id.is_none_or(|p| e.project_id == Some(p))
            && self.events.matches(e.kind.as_str())
    }
}

/// Changes to a [`Subscription`]; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionPatch {
    /// New URL (already checked).
    pub url: Option<String>,
    /// New filter.
    pub events: Option<EventFilter>,
    /// New description.
    pub description: Option<String>,
    /// New sealed secrets (rotation).
    pub secrets: Option<Sealed>,
    /// Enable (also clears failures and the reason) or disable.
    pub enabled: Option<bool>,
}

/// One event to send to one subscription, and its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundDelivery {
    /// Id; also the `webhook-id` header (stable across retries and redeliveries).
    pub id: OutboundId,
    /// Subscription.
    pub subscription_id: SubscriptionId,
    /// The event (unique per subscription).
    pub event_id: pm_core::id::EventId,
    /// Its position in the log.
    pub event_seq: i64,
    /// Its kind.
    pub event_kind: String,
    /// The body sent.
    pub payload: Value,
    /// State.
    pub status: QueueStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// Next attempt not before.
    pub available_at: OffsetDateTime,
    /// HTTP status of the last attempt.
    pub last_status: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last attempt (or creation).
    pub updated_at: OffsetDateTime,
}

impl OutboundDelivery {
    /// A pending delivery of `event` to `subscription`.
    pub fn new(
        subscription: SubscriptionId,
        event: &pm_core::event::Event,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            id: OutboundId::new(),
            subscription_id: subscription,
            event_id: event.id,
            event_seq: event.seq,
            event_kind: event.kind.as_str().to_owned(),
            payload: serde_json::json!({
                "type": event.kind.as_str(),
                "timestamp": event.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "data": event,
            }),
            status: QueueStatus::Pending,
            attempts: 0,
            available_at: at,
            last_status: None,
            last_error: None,
            created_at: at,
            updated_at: at,
        }
    }
}

/// The outcome of one HTTP attempt of an outbound delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttempt {
    /// HTTP status, if a response came.
    pub status: Option<i32>,
    /// Error text when it failed.
    pub error: Option<String>,
    /// Next attempt when it failed and retries remain; `None` with an error = give up.
    pub retry_at: Option<OffsetDateTime>,
    /// When it was made.
    pub at: OffsetDateTime,
    /// Disable the subscription after this many failures in a row.
    pub disable_after: i32,
}

impl OutboundAttempt {
    /// Whether it succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// A page of rows, newest first, with the cursor of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// Rows.
    pub items: Vec<T>,
    /// Pass as `before` for the next page; `None` at the end.
    pub next: Option<Uuid>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> Self {
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(&id)
        } else {
            None
        };
        Self { items: rows, next }
    }
}

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 25;
/// Largest page size.
pub const MAX_LIMIT: u32 = 100;

/// Checks a page size (`limit` field).
pub fn check_limit(limit: u32) -> Result<()> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid("limit", format!("must be 1..={MAX_LIMIT}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redaction_reaches_every_depth() {
        let r = Redacted::new(json!({
            "access_token": "gho_x", "nested": {"Authorization": "Bearer y", "ok": 1},
            "list": [{"client_secret": "z", "code": "c"}], "title": "visible"
        }));
        let s = r.as_value().to_string();
        for secret in ["gho_x", "Bearer y", "\"z\"", "\"c\""] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("visible"));
    }

    #[test]
    fn event_filters_parse_and_match() {
        let f = EventFilter::parse(vec!["task.*".into(), "comment.created".into()]).unwrap();
        assert!(f.matches("task.updated"));
        assert!(f.matches("comment.created"));
        assert!(!f.matches("comment.deleted"));
        assert!(EventFilter::parse(vec!["nope".into()]).is_err());
        assert!(EventFilter::parse(vec![]).is_err());
        assert!(EventFilter::parse(vec!["*".into()]).unwrap().matches("org.created"));
        let e = EventFilter::parse(vec!["bogus.*".into()]).unwrap_err();
        assert!(matches!(e, Error::Invalid { field, .. } if field == "events[0]"));
    }
}

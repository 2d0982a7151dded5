//! The sync engine: two-way sync of a project's tasks with a provider's items (GitHub issues,
//! Jira issues), applied through pm-core's services as `Actor::Integration(id)`.
//!
//! One sync of one mapping is always the same three steps, whichever side started it:
//! read our task (`local`), take the provider's item (`remote`, from the webhook or fetched),
//! [`merge`] both against the mapping's base snapshot; write the local side through
//! [`Pm::update_task`], push the remote side with [`Provider::push`], then commit the new base
//! and the conflicts the policies decided in one store transaction, at the mapping's version
//! (a concurrent sync makes the commit fail and the whole sync re-runs — re-running a sync is
//! idempotent, since a side already holding a value is not written again).
//!
//! - **Inbound** ([`SyncEngine::apply_inbound`]): a parsed webhook event. First sight of an item
//!   creates the task — idempotently: the mapping is created first, under a task id chosen
//!   then, so a retried delivery finds the mapping and creates (or finds) that same task.
//! - **Outbound** ([`SyncEngine::on_event`]): a pm event (`task.created`, `task.updated`,
//!   `comment.created`) from the log. Unmapped tasks of an integrated project are created
//!   remotely; mapped ones fetch the item and sync.
//! - **Echo suppression**, three ways: events whose actor is the integration itself are never
//!   pushed back (they are our applies); a webhook whose item equals what we last pushed (its
//!   [`fingerprint`]) is ignored; a webhook older than the last state we synced
//!   (`remote_updated_at`) is stale and ignored.
//!
//! - **Create races**: before creating an item for an unmapped task, the pusher records an
//!   [`Intent`] (`item.create`, keyed by integration and task); the mapping is stored when the
//!   provider answers, then the intent is dropped. A webhook for an item we do not know that
//!   arrives while a create of the integration is in flight — possibly the webhook of that very
//!   create, racing its response — is deferred (a retryable [`Error::Conflict`]) instead of
//!   creating a second task; once the mapping exists the retry is an ordinary (echo) sync. A
//!   second pusher finding the intent in flight is deferred the same way. An intent older than
//!   [`CREATE_LEASE`] belongs to a pusher that died and is taken over.
//! - **Comments** both ways (GitHub, Jira): see [`comments`].
//! - **Failed pushes** wait in a durable retry queue instead of holding the pusher: see
//!   [`retry`].
//!
//! Snapshots speak one vocabulary on both sides: `title`, `description` (markdown, empty =
//! `null`), `state` (the **provider's** state name: our task's category is mapped through the
//! integration's state mapping), `labels` (sorted names), `due` (`YYYY-MM-DD`). Only fields the
//! integration maps are synced.

use std::collections::BTreeSet;
use std::sync::Arc;

use pm_core::Pm;
use pm_core::event::{Actor, Event, EventKind, Origin};
use pm_core::id::{LabelId, StateId, TaskId, UserId};
use pm_core::model::{
    Color, Label, LabelName, Markdown, StateCategory, Task, TaskPatch, TaskTitle, WorkflowState,
};
use pm_core::service::CreateTask;
use serde_json::{Value, json};
use time::OffsetDateTime;

pub mod comments;
pub mod retry;

use super::{ChangeTimes, MergeOutcome, Snapshot, fingerprint, merge};
use crate::clock::Clock;
use crate::crypto::{Keyring, Secret};
use crate::model::*;
use crate::oauth::OAuth;
use crate::provider::{Capability, InboundEvent, Mappings, PinnedHost, Provider, ProviderContext};
use crate::providers::Registry;
use crate::ssrf::TargetPolicy;
use crate::store::IntegrationStores;
use crate::{Error, Result};

/// Fields the engine knows how to read and write on a task.
pub const SYNCED_FIELDS: [&str; 5] = ["title", "description", "state", "labels", "due"];

/// How long an item create may be in flight before another pusher takes it over (the first
/// died between recording its intent and storing the mapping).
pub const CREATE_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// The intent kind of item creates.
const CREATE_INTENT: &str = "item.create";

/// Colour of labels the sync creates for names the organization does not have yet.
const NEW_LABEL_COLOR: &str = "#6b7280";

/// What one sync did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A task (inbound) or an item (outbound) was created and mapped.
    Created {
        /// Our task.
        task_id: TaskId,
        /// The provider's item.
        external_id: String,
    },
    /// Both sides were brought together.
    Synced {
        /// Our task.
        task_id: TaskId,
        /// Fields written on our task.
        to_local: Vec<String>,
        /// Fields pushed to the provider.
        to_remote: Vec<String>,
        /// Conflicts recorded.
        conflicts: usize,
    },
    /// Nothing to do, and why (`echo`, `stale`, `unchanged`, `not mapped`, …).
    Skipped(&'static str),
}

/// The sync engine over pm-core's services and pm-integrations' stores. Cheap to clone.
#[derive(Clone)]
pub struct SyncEngine {
    pm: Pm,
    stores: IntegrationStores,
    registry: Arc<Registry>,
    keyring: Option<Arc<Keyring>>,
    oauth: Option<Arc<OAuth>>,
    targets: TargetPolicy,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine").field("stores", &self.stores).finish_non_exhaustive()
    }
}

/// A project's states and its organization's labels, read once per sync.
struct ProjectView {
    states: Vec<WorkflowState>,
    labels: Vec<Label>,
}

fn core(e: pm_core::Error) -> Error {
    match e {
        pm_core::Error::Invalid { field, message } => Error::Invalid { field, message },
        pm_core::Error::NotFound { entity } => Error::NotFound { entity },
        pm_core::Error::Conflict(c) => Error::Conflict {
            entity: "task",
            current: match *c {
                pm_core::Current::Task(t) => t.version,
                _ => 0,
            },
        },
        pm_core::Error::AlreadyExists { entity, .. } => Error::AlreadyExists { entity },
        pm_core::Error::Forbidden(reason) => {
            Error::invalid("integration", format!("not allowed to change tasks: {reason}"))
        }
        pm_core::Error::Storage(e) => Error::Storage(e),
    }
}

impl SyncEngine {
    /// An engine writing tasks through `pm`. Tokens come from an integration's API token
    /// credential (opened with `keyring`) or its OAuth connection (`oauth`); base URLs are
    /// checked with `targets`.
    pub fn new(
        pm: Pm,
        stores: IntegrationStores,
        registry: Arc<Registry>,
        keyring: Option<Arc<Keyring>>,
        oauth: Option<Arc<OAuth>>,
        targets: TargetPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { pm, stores, registry, keyring, oauth, targets, clock }
    }

    fn origin(i: &Integration) -> Origin {
        Origin { actor: Actor::Integration(i.id), cause: None }
    }

    fn provider(&self, i: &Integration) -> Result<Arc<dyn Provider>> {
        let p =
            self.registry.get(&i.provider).cloned().ok_or_else(|| Error::not_found("provider"))?;
        Ok(p)
    }

    /// Whether this engine syncs the provider's items with tasks: issue trackers that pull and
    /// push (GitHub, Jira, a host's Gitea). Calendars map due dates to events, not tasks to
    /// items, and are synced by their own module; Slack only messages.
    fn syncs(p: &dyn Provider) -> bool {
        let info = p.info();
        let calendar = matches!(info.key.as_str(), "google_calendar" | "outlook");
        !calendar
            && info.capabilities.contains(&Capability::Push)
            && info.capabilities.contains(&Capability::Pull)
    }

    /// The API base URL: `config.base_url`, else the provider's public API — checked with the
    /// SSRF policy (an integration manager must not make the server call internal hosts), with
    /// the approved addresses of its host to pin connections to.
    async fn base_url(&self, i: &Integration) -> Result<(String, Option<PinnedHost>)> {
        let raw = match (i.config["base_url"].as_str(), i.provider.as_str()) {
            (Some(u), _) => u,
            (None, "github") => "https://api.github.com",
            (None, _) => {
                return Err(Error::invalid(
                    "config.base_url",
                    format!(
                        "is required for {} (e.g. https://your-site.atlassian.net)",
                        i.provider
                    ),
                ));
            }
        };
        let url = self.targets.parse_url("config.base_url", raw)?;
        let addrs = self.targets.resolve(&url).await?;
        // An IP literal is connected to as is; a name is pinned to what was just checked.
        let pinned = match url.host() {
            Some(url::Host::Domain(host)) => Some(PinnedHost { host: host.to_owned(), addrs }),
            _ => None,
        };
        Ok((url.as_str().trim_end_matches('/').to_owned(), pinned))
    }

    /// The token to call the provider with: the integration's API token (a GitHub PAT, a Jira
    /// API token) if one is configured, else its OAuth access token (refreshed single-flight).
    async fn token(&self, i: &Integration) -> Result<Option<Secret>> {
        if let Some(c) =
            self.stores.credentials.get_credential(i.id, CredentialKind::ApiToken).await?
        {
            let keyring = self
                .keyring
                .as_ref()
                .ok_or_else(|| Error::Crypto("PM_ENCRYPTION_KEY is not configured".into()))?;
            return Ok(Some(
                keyring.open_secret(&c.sealed, &CredentialKind::ApiToken.context(i.id))?,
            ));
        }
        if let Some(oauth) = &self.oauth {
            match oauth.access_token(i.id).await {
                Ok(t) => return Ok(Some(t)),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// What the provider needs to call its API for `i`.
    pub async fn context(&self, i: &Integration) -> Result<ProviderContext> {
        let (base_url, pinned) = self.base_url(i).await?;
        Ok(ProviderContext {
            base_url,
            access_token: self.token(i).await?,
            config: i.config.clone(),
            pinned,
        })
    }

    async fn view(&self, i: &Integration) -> Result<ProjectView> {
        let origin = Self::origin(i);
        let states = self.pm.list_states(&origin, i.project_id).await.map_err(core)?;
        let labels = self.pm.list_labels(&origin, i.org_id).await.map_err(core)?;
        Ok(ProjectView { states, labels })
    }

    async fn log(&self, i: &Integration, direction: Direction, op: &str, ok: bool, detail: Value) {
        let entry = LogEntry {
            id: LogId::new(),
            integration_id: Some(i.id),
            provider: i.provider.to_string(),
            direction,
            operation: op.to_owned(),
            ok,
            detail: Redacted::new(detail),
            at: self.clock.now(),
        };
        if let Err(e) = self.stores.logs.append_log(&entry).await {
            tracing::warn!(error = %e, "cannot write integration log");
        }
    }

    // --- inbound ---------------------------------------------------------------------------

    /// Applies one parsed webhook event of integration `i`.
    pub async fn apply_inbound(&self, i: &Integration, ev: &InboundEvent) -> Result<Applied> {
        let provider = self.provider(i)?;
        if !i.enabled || !Self::syncs(provider.as_ref()) {
            return Ok(Applied::Skipped("integration does not sync"));
        }
        let Some(external_id) = ev.external_id.as_deref() else {
            return Ok(Applied::Skipped("no item"));
        };
        if let Some(api) = comments::CommentApi::of(i.provider.as_str())
            && let Some(action) = api.inbound_action(&ev.kind)
        {
            return self.apply_inbound_comment(i, api, action, external_id, ev).await;
        }
        if ev.kind.ends_with("deleted") || ev.kind.ends_with(".transferred") {
            return Ok(Applied::Skipped("item deleted"));
        }
        let remote = remote_snapshot(&ev.fields, &i.mappings);
        if remote.is_empty() {
            return Ok(Applied::Skipped("no synced fields"));
        }
        let Some(m) = self.stores.mappings.mapping_by_external(i.id, external_id).await? else {
            self.defer_if_creating(i).await?;
            let url = ev.raw["issue"]["html_url"].as_str().map(str::to_owned);
            return self.create_local(i, external_id, url, remote, ev.changed_at).await;
        };
        if let (Some(at), Some(synced)) = (ev.changed_at, m.remote_updated_at)
            && at < synced
        {
            return Ok(Applied::Skipped("stale"));
        }
        let remote = fill(&remote, &m.base);
        if m.pushed_fingerprint.as_deref() == Some(fingerprint(&remote).as_str()) {
            return Ok(Applied::Skipped("echo"));
        }
        let ctx = self.context(i).await?;
        self.sync_mapping(i, &ctx, provider.as_ref(), m, remote, ev.changed_at).await
    }

    /// Fails with a retryable `Conflict` while an item create of `i` is in flight: an item we
    /// do not know may be the one being created, whose mapping is not stored yet.
    async fn defer_if_creating(&self, i: &Integration) -> Result<()> {
        let since = self.clock.now() - CREATE_LEASE;
        if self.stores.sync_state.intents_in_flight(i.id, CREATE_INTENT, since).await? > 0 {
            return Err(Error::Conflict {
                entity: "external mapping (an item create is in flight)",
                current: 0,
            });
        }
        Ok(())
    }

    /// First sight of an item: the mapping, then the task under the mapping's task id.
    async fn create_local(
        &self,
        i: &Integration,
        external_id: &str,
        url: Option<String>,
        remote: Snapshot,
        remote_at: Option<OffsetDateTime>,
    ) -> Result<Applied> {
        let now = self.clock.now();
        let new = ExternalMapping {
            id: MappingId::new(),
            integration_id: i.id,
            task_id: TaskId::new(),
            external_id: external_id.to_owned(),
            external_url: url,
            base: remote.clone(),
            remote_updated_at: remote_at,
            pushed_fingerprint: None,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let (m, _) = self.stores.mappings.create_mapping(&new).await?;
        let origin = Self::origin(i);
        match self.pm.get_task(&origin, m.task_id).await {
            // A redelivery, or a mapping made meanwhile: an ordinary sync.
            Ok(_) => {
                let provider = self.provider(i)?;
                let ctx = self.context(i).await?;
                let remote = fill(&remote, &m.base);
                return self.sync_mapping(i, &ctx, provider.as_ref(), m, remote, remote_at).await;
            }
            Err(pm_core::Error::NotFound { .. }) if m.version == 1 => {}
            // Synced before and deleted here since: not resurrected.
            Err(pm_core::Error::NotFound { .. }) => return Ok(Applied::Skipped("task deleted")),
            Err(e) => return Err(core(e)),
        }
        let view = self.view(i).await?;
        let title = remote.get("title").and_then(Value::as_str).unwrap_or_default();
        let mut input = CreateTask::new(i.project_id, TaskTitle::parse(title).map_err(core)?);
        input.id = Some(m.task_id);
        input.reporter = Some(self.reporter(i).await?);
        let patch = self.local_patch(i, None, &view, &remote).await?;
        if let Some(d) = patch.description {
            input.description = d;
        }
        input.state_id = patch.state_id;
        input.labels = patch.labels.unwrap_or_default();
        input.due_date = patch.due_date.flatten();
        match self.pm.create_task(&origin, input).await {
            Ok(_) | Err(pm_core::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(core(e)),
        }
        self.log(
            i,
            Direction::Inbound,
            "sync.task_created",
            true,
            json!({"external_id": external_id, "task_id": m.task_id}),
        )
        .await;
        Ok(Applied::Created { task_id: m.task_id, external_id: external_id.to_owned() })
    }

    /// Who reports tasks created from provider items: `config.reporter_id`, else the user who
    /// connected the integration with OAuth.
    async fn reporter(&self, i: &Integration) -> Result<UserId> {
        if let Some(raw) = i.config["reporter_id"].as_str() {
            let id = uuid::Uuid::parse_str(raw)
                .map_err(|_| Error::invalid("config.reporter_id", "must be a user id"))?;
            return Ok(UserId(id));
        }
        if let Some(t) = self.stores.oauth.get_oauth_token(i.id).await? {
            return Ok(t.connected_by);
        }
        Err(Error::invalid(
            "config.reporter_id",
            "is required to create tasks from provider items (or connect with OAuth)",
        ))
    }

    // --- the sync of one mapping -----------------------------------------------------------

    /// Three-way sync of mapping `m` given the provider's current `remote` snapshot (complete:
    /// missing fields filled from the base).
    async fn sync_mapping(
        &self,
        i: &Integration,
        ctx: &ProviderContext,
        provider: &dyn Provider,
        mut m: ExternalMapping,
        remote: Snapshot,
        remote_at: Option<OffsetDateTime>,
    ) -> Result<Applied> {
        let origin = Self::origin(i);
        for attempt in 0..4 {
            if attempt > 0 {
                m = self
                    .stores
                    .mappings
                    .mapping_by_external(i.id, &m.external_id)
                    .await?
                    .ok_or_else(|| Error::not_found("mapping"))?;
            }
            let task = match self.pm.get_task(&origin, m.task_id).await {
                Ok(t) => t,
                Err(pm_core::Error::NotFound { .. }) => {
                    return Ok(Applied::Skipped("task deleted"));
                }
                Err(e) => return Err(core(e)),
            };
            let view = self.view(i).await?;
            let local = local_snapshot(&task, &view, &i.mappings);
            let times = ChangeTimes {
                local: task.updated_at,
                remote: remote_at.unwrap_or_else(|| self.clock.now()),
            };
            let out = normalized(merge(&m.base, &local, &remote, &i.mappings.policies, times));
            if out.is_noop() && out.conflicts.is_empty() && out.base == m.base {
                return Ok(Applied::Skipped("unchanged"));
            }
            // Ours first: a value our task refuses (too long a title) fails before anything is
            // pushed, and the delivery is retried/failed with nothing half-done remotely.
            if !out.to_local.is_empty() {
                let patch = self.local_patch(i, Some(&task), &view, &out.to_local).await?;
                if !patch.is_empty() {
                    match self.pm.update_task(&origin, task.id, task.version, patch).await {
                        Ok(_) => {}
                        Err(pm_core::Error::Conflict(_)) => continue,
                        Err(e) => return Err(core(e)),
                    }
                }
            }
            let (remote_updated_at, pushed) = if out.to_remote.is_empty() {
                (remote_at.or(m.remote_updated_at), m.pushed_fingerprint.clone())
            } else {
                let item = provider.push(ctx, Some(&m.external_id), &out.to_remote).await?;
                let after = fill(&remote_snapshot(&item.fields, &i.mappings), &out.base);
                (item.updated_at.or(remote_at), Some(fingerprint(&after)))
            };
            let now = self.clock.now();
            let conflicts: Vec<SyncConflict> = out
                .conflicts
                .iter()
                .map(|c| SyncConflict {
                    id: ConflictId::new(),
                    integration_id: i.id,
                    mapping_id: m.id,
                    task_id: m.task_id,
                    field: c.field.clone(),
                    base: c.base.clone(),
                    local: c.local.clone(),
                    remote: c.remote.clone(),
                    resolved: c.resolved.clone(),
                    winner: c.winner,
                    policy: c.policy,
                    detected_at: now,
                    resolved_at: None,
                })
                .collect();
            let base = SyncedBase {
                base: out.base.clone(),
                remote_updated_at,
                pushed_fingerprint: pushed,
                at: now,
            };
            match self.stores.mappings.commit_sync(m.id, m.version, &base, &conflicts).await {
                Ok(_) => {}
                // Another sync of this mapping committed first: merge again from its base.
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
            let to_local: Vec<String> = out.to_local.keys().cloned().collect();
            let to_remote: Vec<String> = out.to_remote.keys().cloned().collect();
            self.log(
                i,
                if to_remote.is_empty() { Direction::Inbound } else { Direction::Outbound },
                "sync.applied",
                true,
                json!({
                    "external_id": m.external_id, "task_id": m.task_id,
                    "to_local": to_local, "to_remote": to_remote,
                    "conflicts": conflicts.iter().map(|c| &c.field).collect::<Vec<_>>(),
                }),
            )
            .await;
            return Ok(Applied::Synced {
                task_id: m.task_id,
                to_local,
                to_remote,
                conflicts: conflicts.len(),
            });
        }
        Err(Error::Conflict { entity: "mapping", current: m.version })
    }

    // --- outbound --------------------------------------------------------------------------

    /// Reacts to one pm event: pushes task creations/updates and comment creations, edits and
    /// deletions of integrated projects to every enabled syncing integration of the project
    /// ([`SyncEngine::targets`]). Stops at the first failure; callers that want to retry or
    /// record failures per integration use [`SyncEngine::targets`] and
    /// [`SyncEngine::push_event`].
    pub async fn on_event(&self, e: &Event) -> Result<Vec<Applied>> {
        let mut done = Vec::new();
        for i in self.targets(e).await? {
            done.push(self.push_event(&i, e).await?);
        }
        Ok(done)
    }

    /// The integrations event `e` is to be pushed to: the enabled syncing integrations of its
    /// project created before it (no history replay on connect; use export for that), for the
    /// kinds the sync pushes.
    pub async fn targets(&self, e: &Event) -> Result<Vec<Integration>> {
        let (Some(org), Some(project), Some(_)) = (e.org_id, e.project_id, e.task_id) else {
            return Ok(Vec::new());
        };
        if !matches!(
            e.kind,
            EventKind::TaskCreated
                | EventKind::TaskUpdated
                | EventKind::CommentCreated
                | EventKind::CommentUpdated
                | EventKind::CommentDeleted
        ) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for i in self.stores.integrations.list_integrations(org).await? {
            if i.project_id != project || !i.enabled || e.at < i.created_at {
                continue;
            }
            if Self::syncs(self.provider(&i)?.as_ref()) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Pushes event `e` to integration `i` — except when the integration's own apply caused it
    /// (echo suppression by actor). A failure is logged (`sync.push_failed`) and returned.
    pub async fn push_event(&self, i: &Integration, e: &Event) -> Result<Applied> {
        let Some(task) = e.task_id else { return Ok(Applied::Skipped("no task")) };
        if e.actor == Actor::Integration(i.id) {
            return Ok(Applied::Skipped("echo"));
        }
        let provider = self.provider(i)?;
        let r = match e.kind {
            EventKind::CommentCreated | EventKind::CommentUpdated | EventKind::CommentDeleted => {
                self.push_comment_event(i, provider.as_ref(), task, e).await
            }
            _ => self.push_task(i, task).await,
        };
        if let Err(err) = &r {
            self.log(
                i,
                Direction::Outbound,
                "sync.push_failed",
                false,
                json!({"task_id": task, "event_seq": e.seq, "error": err.to_string()}),
            )
            .await;
        }
        r
    }

    /// Pushes one task of `i`'s project: creates the item when unmapped, else fetches it and
    /// syncs. Idempotent: a second call with nothing changed does nothing.
    pub async fn push_task(&self, i: &Integration, task_id: TaskId) -> Result<Applied> {
        let provider = self.provider(i)?;
        let origin = Self::origin(i);
        let task = match self.pm.get_task(&origin, task_id).await {
            Ok(t) => t,
            Err(pm_core::Error::NotFound { .. }) => return Ok(Applied::Skipped("task deleted")),
            Err(e) => return Err(core(e)),
        };
        if task.project_id != i.project_id {
            return Ok(Applied::Skipped("other project"));
        }
        let view = self.view(i).await?;
        let local = local_snapshot(&task, &view, &i.mappings);
        match self.stores.mappings.mapping_by_task(i.id, task.id).await? {
            Some(m) => {
                if local == m.base {
                    return Ok(Applied::Skipped("unchanged"));
                }
                let ctx = self.context(i).await?;
                let item = provider.fetch(&ctx, &m.external_id).await?;
                let remote = fill(&remote_snapshot(&item.fields, &i.mappings), &m.base);
                self.sync_mapping(i, &ctx, provider.as_ref(), m, remote, item.updated_at).await
            }
            None => {
                let ctx = self.context(i).await?;
                let now = self.clock.now();
                let intent = Intent {
                    key: format!("{CREATE_INTENT}:{}:{}", i.id.0, task.id.0),
                    integration_id: i.id,
                    kind: CREATE_INTENT.to_owned(),
                    started_at: now,
                };
                match self.stores.sync_state.begin_intent(&intent, now - CREATE_LEASE).await? {
                    IntentClaim::Claimed => {}
                    // Another pusher (an export, another instance) is creating it: once its
                    // mapping exists a retry syncs whatever this event changed.
                    IntentClaim::InFlight | IntentClaim::Done(_) => {
                        return Err(Error::Conflict {
                            entity: "external mapping (an item create is in flight)",
                            current: 0,
                        });
                    }
                }
                let created = self.create_remote(i, &ctx, provider.as_ref(), &task, &local).await;
                // The mapping answers from now on (or nothing was created): either way the
                // intent has done its job. Dropping it may fail without harm — it expires.
                if let Err(e) = self.stores.sync_state.abandon_intent(&intent.key).await {
                    tracing::warn!(error = %e, "cannot drop an item-create intent");
                }
                created
            }
        }
    }

    /// Creates the item for unmapped `task` and maps it (the caller holds the create intent).
    async fn create_remote(
        &self,
        i: &Integration,
        ctx: &ProviderContext,
        provider: &dyn Provider,
        task: &Task,
        local: &Snapshot,
    ) -> Result<Applied> {
        let item = provider.push(ctx, None, local).await?;
        let remote = fill(&remote_snapshot(&item.fields, &i.mappings), local);
        let now = self.clock.now();
        let new = ExternalMapping {
            id: MappingId::new(),
            integration_id: i.id,
            task_id: task.id,
            external_id: item.external_id.clone(),
            external_url: item.url.clone(),
            base: remote.clone(),
            remote_updated_at: item.updated_at,
            pushed_fingerprint: Some(fingerprint(&remote)),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let (m, _) = match self.stores.mappings.create_mapping(&new).await {
            Ok(r) => r,
            // Mapped concurrently (an export racing the pusher).
            Err(Error::AlreadyExists { .. }) => return Ok(Applied::Skipped("mapped")),
            Err(e) => return Err(e),
        };
        self.log(
            i,
            Direction::Outbound,
            "sync.item_created",
            true,
            json!({"external_id": item.external_id, "task_id": task.id}),
        )
        .await;
        // What the create could not set (GitHub opens every new issue) is pushed now.
        if &remote != local {
            self.sync_mapping(i, ctx, provider, m, remote, item.updated_at).await?;
        }
        Ok(Applied::Created { task_id: task.id, external_id: item.external_id })
    }

    /// Pushes every task of `i`'s project (Jira project export); idempotent — mapped tasks
    /// only sync, unmapped ones are created once. Returns (created, synced or unchanged).
    pub async fn export(&self, i: &Integration) -> Result<(u64, u64)> {
        let origin = Self::origin(i);
        let (mut created, mut other) = (0, 0);
        let mut page = pm_core::query::PageRequest { limit: 100, ..Default::default() };
        loop {
            let p = self
                .pm
                .list_project_tasks(&origin, i.project_id, &Default::default(), &page)
                .await
                .map_err(core)?;
            for t in &p.items {
                match self.push_task(i, t.id).await? {
                    Applied::Created { .. } => created += 1,
                    _ => other += 1,
                }
            }
            match p.next_cursor.as_deref() {
                Some(c) => page.after = Some(pm_core::query::Cursor::decode(c).map_err(core)?),
                None => break,
            }
        }
        self.log(
            i,
            Direction::Outbound,
            "sync.exported",
            true,
            json!({"created": created, "synced": other}),
        )
        .await;
        Ok((created, other))
    }

    /// Settles conflict `c` with `value` (the local, the remote, or another value): writes it
    /// on our task and on the item, makes it the base, and marks the conflict resolved.
    pub async fn resolve(
        &self,
        i: &Integration,
        c: &SyncConflict,
        value: Value,
    ) -> Result<SyncConflict> {
        if !SYNCED_FIELDS.contains(&c.field.as_str()) {
            return Err(Error::invalid("field", "not a synced field"));
        }
        let value = normalize(&c.field, &value);
        let provider = self.provider(i)?;
        let origin = Self::origin(i);
        let mut change = Snapshot::new();
        change.insert(c.field.clone(), value.clone());
        for _ in 0..4 {
            let m = self
                .stores
                .mappings
                .mapping_by_task(i.id, c.task_id)
                .await?
                .ok_or_else(|| Error::not_found("mapping"))?;
            let task = self.pm.get_task(&origin, m.task_id).await.map_err(core)?;
            let view = self.view(i).await?;
            let patch = self.local_patch(i, Some(&task), &view, &change).await?;
            if !patch.is_empty() {
                match self.pm.update_task(&origin, task.id, task.version, patch).await {
                    Ok(_) => {}
                    Err(pm_core::Error::Conflict(_)) => continue,
                    Err(e) => return Err(core(e)),
                }
            }
            let ctx = self.context(i).await?;
            let item = provider.push(&ctx, Some(&m.external_id), &change).await?;
            let mut base = m.base.clone();
            base.insert(c.field.clone(), value.clone());
            let after = fill(&remote_snapshot(&item.fields, &i.mappings), &base);
            let synced = SyncedBase {
                base,
                remote_updated_at: item.updated_at.or(m.remote_updated_at),
                pushed_fingerprint: Some(fingerprint(&after)),
                at: self.clock.now(),
            };
            match self.stores.mappings.commit_sync(m.id, m.version, &synced, &[]).await {
                Ok(_) => {}
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
            let resolved = self.stores.mappings.resolve_conflict(c.id, self.clock.now()).await?;
            self.log(
                i,
                Direction::Outbound,
                "sync.conflict_resolved",
                true,
                json!({"conflict_id": c.id, "field": c.field, "value": value}),
            )
            .await;
            return Ok(resolved);
        }
        Err(Error::Conflict { entity: "task", current: 0 })
    }

    // --- local side ------------------------------------------------------------------------

    /// The task patch writing `changes` (snapshot vocabulary) on `task` (`None`: a new task).
    async fn local_patch(
        &self,
        i: &Integration,
        task: Option<&Task>,
        view: &ProjectView,
        changes: &Snapshot,
    ) -> Result<TaskPatch> {
        let mut patch = TaskPatch::default();
        for (field, v) in changes {
            match field.as_str() {
                "title" => {
                    let t = v.as_str().unwrap_or_default();
                    patch.title = Some(TaskTitle::parse(t).map_err(core)?);
                }
                "description" => {
                    let d = v.as_str().unwrap_or_default();
                    patch.description =
                        Some(Markdown::parse_field("description", d).map_err(core)?);
                }
                "state" => {
                    if let Some(s) = v.as_str().and_then(|s| state_for(s, task, view, &i.mappings))
                    {
                        patch.state_id = Some(s);
                    }
                }
                "labels" => {
                    let names: Vec<&str> = v
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    patch.labels = Some(self.label_ids(i, view, &names).await?);
                }
                "due" => {
                    patch.due_date = Some(match v.as_str() {
                        None => None,
                        Some(s) => Some(parse_date(s)?),
                    });
                }
                _ => {}
            }
        }
        if let Some(t) = task {
            // Only what differs: an update that changes nothing would still bump the version
            // and emit an event.
            let mut next = t.clone();
            if !patch.apply(&mut next) {
                return Ok(TaskPatch::default());
            }
        }
        Ok(patch)
    }

    /// Label ids for names, creating the organization's missing labels.
    async fn label_ids(
        &self,
        i: &Integration,
        view: &ProjectView,
        names: &[&str],
    ) -> Result<BTreeSet<LabelId>> {
        let mut ids = BTreeSet::new();
        let origin = Self::origin(i);
        for name in names {
            if let Some(l) = view.labels.iter().find(|l| l.name.as_str().eq_ignore_ascii_case(name))
            {
                ids.insert(l.id);
                continue;
            }
            let parsed = LabelName::parse(name).map_err(|_| {
                Error::invalid("labels", format!("{name:?} is not a valid label name"))
            })?;
            let color = Color::parse(NEW_LABEL_COLOR).map_err(core)?;
            match self.pm.create_label(&origin, i.org_id, parsed, color).await {
                Ok(l) => {
                    ids.insert(l.id);
                }
                // Created concurrently: look it up again.
                Err(pm_core::Error::AlreadyExists { .. }) => {
                    let labels = self.pm.list_labels(&origin, i.org_id).await.map_err(core)?;
                    let l = labels
                        .iter()
                        .find(|l| l.name.as_str().eq_ignore_ascii_case(name))
                        .ok_or_else(|| Error::not_found("label"))?;
                    ids.insert(l.id);
                }
                Err(e) => return Err(core(e)),
            }
        }
        Ok(ids)
    }
}

fn parse_date(s: &str) -> Result<time::Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s.get(..10).unwrap_or(s), &fmt)
        .map_err(|_| Error::invalid("due", "must be a date YYYY-MM-DD"))
}

fn format_date(d: time::Date) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    d.format(&fmt).unwrap_or_default()
}

/// The fields `mappings` syncs.
fn synced(mappings: &Mappings) -> impl Iterator<Item = &'static str> + '_ {
    SYNCED_FIELDS.into_iter().filter(|f| mappings.fields.contains_key(*f))
}

/// One field's value in the shared vocabulary: empty descriptions are `null`, line ends are
/// `\n`, labels are sorted and unique.
pub fn normalize(field: &str, v: &Value) -> Value {
    match field {
        "description" => match v.as_str().map(|s| s.replace("\r\n", "\n").trim_end().to_owned()) {
            Some(s) if !s.is_empty() => Value::String(s),
            _ => Value::Null,
        },
        "labels" => {
            let set: BTreeSet<&str> = v
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            Value::Array(set.into_iter().map(|s| Value::String(s.to_owned())).collect())
        }
        "due" => match v.as_str() {
            Some(s) if !s.is_empty() => Value::String(s.get(..10).unwrap_or(s).to_owned()),
            _ => Value::Null,
        },
        _ => v.clone(),
    }
}

/// The provider's fields, restricted to the synced ones and normalized.
pub fn remote_snapshot(fields: &Snapshot, mappings: &Mappings) -> Snapshot {
    synced(mappings)
        .filter_map(|f| fields.get(f).map(|v| (f.to_owned(), normalize(f, v))))
        .collect()
}

/// `partial` completed with `base`'s values for the fields it lacks; `null`s dropped (absent
/// and `null` mean the same to the merge, and the fingerprint must not tell them apart).
fn fill(partial: &Snapshot, base: &Snapshot) -> Snapshot {
    let mut out = base.clone();
    out.extend(partial.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.retain(|_, v| !v.is_null());
    out
}

fn normalized(mut out: MergeOutcome) -> MergeOutcome {
    for s in [&mut out.to_local, &mut out.to_remote, &mut out.base] {
        if let Some(v) = s.get_mut("labels") {
            *v = normalize("labels", v);
        }
    }
    out
}

/// Our task in the shared vocabulary.
fn local_snapshot(task: &Task, view: &ProjectView, mappings: &Mappings) -> Snapshot {
    let mut out = Snapshot::new();
    for f in synced(mappings) {
        let v = match f {
            "title" => Value::String(task.title.as_str().to_owned()),
            "description" => normalize(f, &Value::String(task.description.as_str().to_owned())),
            "state" => {
                let category =
                    view.states.iter().find(|s| s.id == task.state_id).map(|s| s.category);
                match category.and_then(|c| remote_state(mappings, c)) {
                    Some(s) => Value::String(s),
                    None => continue,
                }
            }
            "labels" => {
                let names: Vec<Value> = view
                    .labels
                    .iter()
                    .filter(|l| task.labels.contains(&l.id))
                    .map(|l| Value::String(l.name.as_str().to_owned()))
                    .collect();
                normalize(f, &Value::Array(names))
            }
            "due" => task.due_date.map_or(Value::Null, |d| Value::String(format_date(d))),
            _ => continue,
        };
        if !v.is_null() {
            out.insert(f.to_owned(), v);
        }
    }
    out
}

/// The provider state for a category: the mapped one, else the nearest mapped category (a
/// `started` task is still "open" on GitHub, which knows only open and closed).
fn remote_state(mappings: &Mappings, c: StateCategory) -> Option<String> {
    use StateCategory::*;
    let order: &[StateCategory] = match c {
        Backlog => &[Backlog, Unstarted, Started],
        Unstarted => &[Unstarted, Backlog, Started],
        Started => &[Started, Unstarted, Backlog],
        Completed => &[Completed, Cancelled],
        Cancelled => &[Cancelled, Completed],
    };
    order.iter().find_map(|c| mappings.remote_state(c.as_str()).map(str::to_owned))
}

/// The state to move a task to for the provider's state `remote`: the task's own state when
/// it is already of the mapped category (no churn between, say, "started" and GitHub's "open"),
/// else the project's first state of that category. `None` when unmapped.
fn state_for(
    remote: &str,
    task: Option<&Task>,
    view: &ProjectView,
    mappings: &Mappings,
) -> Option<StateId> {
    let category = StateCategory::parse(mappings.local_state(remote)?).ok()?;
    if let Some(t) = task {
        let current = view.states.iter().find(|s| s.id == t.state_id)?;
        if remote_state(mappings, current.category).as_deref() == Some(remote) {
            return None;
        }
    }
    view.states.iter().filter(|s| s.category == category).min_by_key(|s| s.position).map(|s| s.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_normalize_to_one_vocabulary() {
        assert_eq!(normalize("description", &json!("a\r\nb  \n")), json!("a\nb"));
        assert_eq!(normalize("description", &json!("")), Value::Null);
        assert_eq!(normalize("labels", &json!(["b", "a", "b"])), json!(["a", "b"]));
        assert_eq!(normalize("labels", &Value::Null), json!([]));
        assert_eq!(normalize("due", &json!("2026-01-02T00:00:00Z")), json!("2026-01-02"));
    }

    #[test]
    fn unmapped_categories_fall_back_to_the_nearest_mapped_state() {
        let m = crate::providers::GitHub.default_mappings();
        assert_eq!(remote_state(&m, StateCategory::Started).as_deref(), Some("open"));
        assert_eq!(remote_state(&m, StateCategory::Backlog).as_deref(), Some("open"));
        assert_eq!(remote_state(&m, StateCategory::Cancelled).as_deref(), Some("closed"));
    }

    #[test]
    fn fill_completes_from_the_base_and_drops_nulls() {
        let base: Snapshot =
            serde_json::from_value(json!({"title": "a", "due": "2026-01-01"})).unwrap();
        let partial: Snapshot = serde_json::from_value(json!({"title": "b", "due": null})).unwrap();
        assert_eq!(
            fill(&partial, &base),
            serde_json::from_value::<Snapshot>(json!({"title": "b"})).unwrap()
        );
    }
}

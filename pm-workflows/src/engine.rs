//! The engine: consumes pm-core's event log, starts executions, and runs them durably.
//!
//! **Dispatch.** [`Engine::run`] tails the log from its durable cursor (consumer
//! [`CONSUMER`]); for each event it looks up the enabled workflows of the event's organization
//! (an in-memory index with every definition compiled once), matches the trigger, evaluates the
//! conditions against one [`Scope`] built for the event, and creates an execution keyed
//! `event:<event id>` — the store's uniqueness makes at-least-once reading start it once.
//!
//! **Guardrails.** An event caused by an automation triggers a workflow only if it opted in
//! (`options.allow_automation_events`). Every execution has a cascade depth (1 for a reaction
//! to a person, the causing event's depth + 1 otherwise); at [`EngineConfig::max_depth`] the
//! execution is stored with status `loop` and does nothing. Per-execution limits (items plus
//! actions, run time) fail the execution with a [`Error::LimitExceeded`].
//!
//! **Durability.** An execution's decisions are made on its stored `context` (event, task
//! snapshot, trigger input), and every step is recorded under its key: a branch decision once
//! made, an action's input, attempts and output. Driving an execution again — after a crash, a
//! timer, an approval — skips what is recorded, so each side effect runs once per key; the key
//! (`<execution>:<step key>`) also goes to the port as an idempotency key for the window between
//! "sent" and "recorded". Executions left `running` by a crash are resumed by
//! [`Engine::resume`] at start. Retries back off exponentially up to the workflow's cap.
//!
//! **Several instances.** Engines on one database share the work through leases (owner +
//! expiry, [`EngineConfig::lease`]): an execution is driven only by the engine holding its lease,
//! renewed while it drives, and a due timer is applied only by the engine that leased it. An
//! instance that dies stops renewing; after its leases expire the others' periodic `resume` and
//! timer loop take over, continuing from the recorded steps (same idempotency keys).
//!
//! **Dry-run and replay.** [`Engine::dry_run`] walks a definition against a task or event and
//! returns the plan without side effects or writes. [`Engine::replay`] walks a stored execution
//! again from its stored context and recorded outputs and compares every decision.
//!
//! Task actions go through pm-core's services as `Actor::Automation(workflow)` with a `Cause`
//! carrying the triggering event and the depth, so the events they append carry the cascade.
//! Comments are written through pm-core's comment store with the workflow's creator as author
//! (pm-core's service only lets users comment), under the same automation origin.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pm_core::Pm;
use pm_core::event::{Actor, Cause, Checkpoint, Event, EventKind, Origin, Tailer};
use pm_core::id::{EventId, OrgId, ProjectId, StateId, TaskId, UserId, WorkflowId};
use pm_core::model::{Comment, Markdown, Priority, Task, TaskPatch, TaskTitle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::compiled::CompiledWorkflow;
use crate::condition::{self, Scope};
use crate::definition::{self, *};
use crate::ports::{self, ApproverDirectory as _, Mail, OutboundRequest, Ports};
use crate::script::{Sandbox, ScriptLimits};
use crate::store::*;
use crate::template;
use crate::{Error, Result};

mod templates;
pub use templates::{InstantiateRequest, Instantiated, MAX_VALUES};

/// The consumer name under which the engine's cursor is saved in pm-core's event log.
pub const CONSUMER: &str = "pm-workflows.engine";

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Cascade depth at which an execution is stored as `loop` instead of running.
    pub max_depth: u32,
    /// Definition limits.
    pub limits: Limits,
    /// Script sandbox limits.
    pub script_limits: ScriptLimits,
    /// Events read per batch.
    pub batch: u32,
    /// How often timers are polled when none is due sooner.
    pub timer_poll: Duration,
    /// How long this engine's claim on driving an execution or applying a timer lasts without
    /// renewal (renewed every third of it while driving). Another instance takes over an
    /// execution whose owner died once its lease expired (`resume` runs every half lease), so a
    /// restarted single instance also picks up what it was driving within about one lease.
    pub lease: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_depth: 10,
            limits: Limits::default(),
            script_limits: ScriptLimits::default(),
            batch: 500,
            timer_poll: Duration::from_secs(1),
            lease: Duration::from_secs(10),
        }
    }
}

/// One enabled workflow, compiled.
struct Entry {
    workflow: Workflow,
    compiled: Arc<CompiledWorkflow>,
}

#[derive(Default)]
struct Index {
    by_org: HashMap<OrgId, OrgIndex>,
}

/// One organization's enabled workflows, indexed so that an event is only offered to the
/// workflows that could match it: by event kind, and for task updates by changed field and by
/// target state. Most events match nothing and cost a few hash look-ups.
#[derive(Default)]
struct OrgIndex {
    /// Candidates for every event of a kind (`task_created`, `task_updated`, `assigned`,
    /// `commented`, relative-time triggers, `state_changed` without `to`).
    by_kind: HashMap<EventKind, Vec<Arc<Entry>>>,
    /// `field_changed` by field name (`custom_fields.<id>` under `custom_fields`).
    by_field: HashMap<String, Vec<Arc<Entry>>>,
    /// `state_changed` with a `to` state, by that state.
    by_state: HashMap<StateId, Vec<Arc<Entry>>>,
}

impl OrgIndex {
    fn add(&mut self, e: Arc<Entry>) {
        let mut kind =
            |k: EventKind, e: &Arc<Entry>| self.by_kind.entry(k).or_default().push(e.clone());
        match &e.workflow.definition.trigger {
            Trigger::TaskCreated(_) => kind(EventKind::TaskCreated, &e),
            Trigger::TaskUpdated(_) => kind(EventKind::TaskUpdated, &e),
            Trigger::Assigned(_) | Trigger::DueDateReached(_) | Trigger::InStateFor(_) => {
                kind(EventKind::TaskCreated, &e);
                kind(EventKind::TaskUpdated, &e);
            }
            Trigger::Commented(_) => kind(EventKind::CommentCreated, &e),
            Trigger::StateChanged(sc) => match sc.to {
                Some(to) => self.by_state.entry(to).or_default().push(e.clone()),
                None => kind(EventKind::TaskUpdated, &e),
            },
            Trigger::FieldChanged(f) => {
                let field = match definition::custom_field(&f.field) {
                    Some(_) => "custom_fields".to_string(),
                    None => f.field.clone(),
                };
                self.by_field.entry(field).or_default().push(e.clone());
            }
            Trigger::Schedule(_) | Trigger::Webhook(_) | Trigger::Manual(_) => {}
        }
    }

    /// The workflows that could match `event`, each once, in creation order.
    fn candidates(&self, event: &Event) -> Vec<Arc<Entry>> {
        let mut out: Vec<Arc<Entry>> =
            self.by_kind.get(&event.kind).map(|v| v.to_vec()).unwrap_or_default();
        if event.kind == EventKind::TaskUpdated
            && let Some(Value::Object(changes)) = event.payload.get("changes")
        {
            for field in changes.keys() {
                if let Some(v) = self.by_field.get(field) {
                    out.extend(v.iter().cloned());
                }
            }
            if let Some(to) = changes
                .get("state_id")
                .and_then(|c| c.get("to"))
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<uuid::Uuid>().ok())
                .map(StateId)
                && let Some(v) = self.by_state.get(&to)
            {
                out.extend(v.iter().cloned());
            }
        }
        if out.len() > 1 {
            out.sort_by_key(|e| e.workflow.id);
            out.dedup_by_key(|e| e.workflow.id);
        }
        out
    }
}

struct Inner {
    pm: Pm,
    stores: WorkflowStores,
    ports: Ports,
    sandbox: Sandbox,
    config: EngineConfig,
    index: RwLock<Arc<Index>>,
    compiled: Mutex<HashMap<(WorkflowId, i64), Arc<CompiledWorkflow>>>,
    in_flight: Mutex<HashSet<ExecutionId>>,
    busy: AtomicUsize,
    idle: tokio::sync::Notify,
    wake_timers: tokio::sync::Notify,
    /// This engine's lease owner id (unique per `Engine::new`).
    owner: String,
}

/// The automation engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("ports", &self.inner.ports).finish_non_exhaustive()
    }
}

/// How one planned or executed step went, for dry-runs and replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Step key (`steps[1].then[0]`).
    pub key: String,
    /// `action:<type>`, `if`, `switch`, `for_each`, `approval`.
    pub kind: String,
    /// Rendered input (actions) or the decision (branches).
    pub detail: Value,
}

/// What a dry-run would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Whether the trigger matches and the conditions hold.
    pub would_run: bool,
    /// Why not, when it would not.
    pub reason: Option<String>,
    /// Steps in order (approvals are assumed approved; waits are not waited).
    pub steps: Vec<PlannedStep>,
}

/// One decision compared by a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayedDecision {
    /// Step key.
    pub key: String,
    /// What was recorded.
    pub recorded: Value,
    /// What the replay decided.
    pub replayed: Value,
}

/// The result of replaying a stored execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// Every decision was the same.
    pub identical: bool,
    /// The decisions compared.
    pub decisions: Vec<ReplayedDecision>,
}

/// An incoming webhook or manual start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// Unique per workflow: a delivery id (webhooks) or a fresh id (manual runs).
    pub key: String,
    /// Who starts it.
    pub actor: Actor,
    /// The task concerned, if any.
    pub task_id: Option<TaskId>,
    /// The payload, visible as `trigger`.
    pub input: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    DryRun,
    Replay,
}

enum Flow {
    Continue,
    Suspend,
}

impl Engine {
    /// An engine over pm-core (`pm`, whose event log it consumes and whose services its task
    /// actions use), its own stores, and the host's ports.
    pub fn new(pm: Pm, stores: WorkflowStores, ports: Ports, config: EngineConfig) -> Self {
        let sandbox = Sandbox::new(config.script_limits);
        Self {
            inner: Arc::new(Inner {
                pm,
                stores,
                ports,
                sandbox,
                config,
                index: RwLock::new(Arc::new(Index::default())),
                compiled: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashSet::new()),
                busy: AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                wake_timers: tokio::sync::Notify::new(),
                owner: format!("engine-{}", uuid::Uuid::now_v7()),
            }),
        }
    }

    /// The owner id this engine leases executions and timers under.
    pub fn lease_owner(&self) -> &str {
        &self.inner.owner
    }

    /// The stores.
    pub fn stores(&self) -> &WorkflowStores {
        &self.inner.stores
    }

    /// The definition limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    // --- workflows ------------------------------------------------------------------------

    /// Validates and stores a new workflow (enabled), then refreshes the dispatch index.
    pub async fn create_workflow(
        &self,
        org: OrgId,
        project: Option<ProjectId>,
        definition: Definition,
        created_by: Actor,
    ) -> Result<Workflow> {
        definition.validate(&self.inner.config.limits)?;
        let now = pm_core::model::now();
        let w = Workflow {
            id: WorkflowId::new(),
            org_id: org,
            project_id: project,
            enabled: true,
            definition_version: 1,
            definition,
            webhook_secret: new_secret(),
            created_by,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.inner.stores.workflows.create_workflow(&w).await?;
        self.reload().await?;
        Ok(w)
    }

    /// Saves a new definition version (at `expected_version` of the record).
    pub async fn update_workflow(
        &self,
        id: WorkflowId,
        expected_version: i64,
        definition: Definition,
    ) -> Result<Workflow> {
        definition.validate(&self.inner.config.limits)?;
        let w = self
            .inner
            .stores
            .workflows
            .update_definition(id, expected_version, &definition, pm_core::model::now())
            .await?;
        self.reload().await?;
        Ok(w)
    }

    /// Enables or disables a workflow.
    pub async fn set_enabled(
        &self,
        id: WorkflowId,
        expected_version: i64,
        enabled: bool,
    ) -> Result<Workflow> {
        let w = self
            .inner
            .stores
            .workflows
            .set_enabled(id, expected_version, enabled, pm_core::model::now())
            .await?;
        self.reload().await?;
        Ok(w)
    }

    /// Deletes a workflow (its executions stay as history).
    pub async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        self.inner.stores.workflows.delete_workflow(id).await?;
        self.reload().await
    }

    /// Rebuilds the dispatch index from the store (call after changes made elsewhere, e.g. on
    /// another instance; the engine's own changes do it themselves).
    pub async fn reload(&self) -> Result<()> {
        let enabled = self.inner.stores.workflows.list_enabled().await?;
        let mut index = Index::default();
        let now = pm_core::model::now();
        // Many schedules share a pattern and zone: compute each distinct next fire once.
        let schedules: Vec<(WorkflowId, crate::schedule::CronSchedule)> = enabled
            .iter()
            .filter_map(|w| match &w.definition.trigger {
                Trigger::Schedule(s) => crate::schedule::CronSchedule::parse(&s.cron, &s.timezone)
                    .ok()
                    .map(|c| (w.id, c)),
                _ => None,
            })
            .collect();
        let next: HashMap<WorkflowId, Option<OffsetDateTime>> = schedules
            .iter()
            .map(|(id, _)| *id)
            .zip(crate::schedule::next_fires(schedules.iter().map(|(_, c)| c), now))
            .collect();
        for w in enabled {
            let compiled = match self.compiled_for(&w.definition, w.id, w.definition_version) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(workflow = %w.id, error = %e, "pm-workflows: a stored workflow no longer compiles; skipped");
                    continue;
                }
            };
            if let Some(Some(at)) = next.get(&w.id) {
                self.arm_schedule_at(&w, *at).await?;
            }
            index
                .by_org
                .entry(w.org_id)
                .or_default()
                .add(Arc::new(Entry { workflow: w, compiled }));
        }
        *self.inner.index.write().expect("index lock") = Arc::new(index);
        self.inner.wake_timers.notify_one();
        Ok(())
    }

    /// Arms the next fire of a schedule after `after` (idempotent: the key holds the time).
    async fn arm_schedule(&self, w: &Workflow, s: &Schedule, after: OffsetDateTime) -> Result<()> {
        let cron = crate::schedule::CronSchedule::parse(&s.cron, &s.timezone)?;
        let Some(at) = cron.next_after(after) else { return Ok(()) };
        self.arm_schedule_at(w, at).await
    }

    /// Arms a schedule's fire at `at` (idempotent: the key holds the time).
    async fn arm_schedule_at(&self, w: &Workflow, at: OffsetDateTime) -> Result<()> {
        self.inner
            .stores
            .timers
            .arm_timer(&Timer {
                id: TimerId::new(),
                key: format!("schedule:{}:{}:{}", w.id, w.definition_version, at.unix_timestamp()),
                execution_id: None,
                workflow_id: w.id,
                fire_at: at,
                payload: json!({
                    "kind": "start",
                    "workflow": w.id,
                    "version": w.definition_version,
                    "trigger_key": format!("schedule:{}", at.unix_timestamp()),
                    "schedule": true,
                }),
            })
            .await?;
        Ok(())
    }

    /// Arms the durable timer of a relative-time trigger (due date, time in state) when an
    /// event sets one up. Checks at fire time make a stale timer harmless.
    async fn arm_relative(&self, w: &Workflow, event: &Event) -> Result<()> {
        let Some(task_id) = event.task_id else { return Ok(()) };
        let is_task_event = matches!(event.kind, EventKind::TaskCreated | EventKind::TaskUpdated);
        if !is_task_event {
            return Ok(());
        }
        let task = event.payload.get("task");
        let changed = |field: &str| {
            event.kind == EventKind::TaskCreated
                || event.payload.get("changes").and_then(|c| c.get(field)).is_some()
        };
        let timer = match &w.definition.trigger {
            Trigger::DueDateReached(d) if changed("due_date") => {
                let Some(due) = task.and_then(|t| t.get("due_date")).and_then(Value::as_str) else {
                    return Ok(());
                };
                let Ok(date) = time::Date::parse(due, DATE) else { return Ok(()) };
                let at = date.midnight().assume_utc() + time::Duration::minutes(d.offset_minutes);
                Some((
                    format!("due:{}:{}:{task_id}:{due}", w.id, w.definition_version),
                    at,
                    json!({"due_date": due}),
                    format!("due:{task_id}:{due}:{}", d.offset_minutes),
                ))
            }
            Trigger::InStateFor(s) if changed("state_id") => {
                let state = task.and_then(|t| t.get("state_id")).and_then(Value::as_str);
                if state != Some(&s.state.to_string()) {
                    return Ok(());
                }
                Some((
                    format!("sla:{}:{}:{task_id}:{}", w.id, w.definition_version, event.id),
                    event.at + time::Duration::minutes(s.minutes as i64),
                    json!({"state_id": s.state, "since_event": event.id}),
                    format!("sla:{task_id}:{}", event.id),
                ))
            }
            _ => None,
        };
        if let Some((key, fire_at, check, trigger_key)) = timer {
            self.inner
                .stores
                .timers
                .arm_timer(&Timer {
                    id: TimerId::new(),
                    key,
                    execution_id: None,
                    workflow_id: w.id,
                    fire_at,
                    payload: json!({
                        "kind": "start",
                        "workflow": w.id,
                        "version": w.definition_version,
                        "trigger_key": trigger_key,
                        "task": task_id,
                        "check": check,
                    }),
                })
                .await?;
            self.inner.wake_timers.notify_one();
        }
        Ok(())
    }

    /// A `start` timer fired: re-check it still applies, start the execution, re-arm schedules.
    async fn fire_start(&self, t: &Timer) -> Result<()> {
        let p = &t.payload;
        let w = match self.inner.stores.workflows.get_workflow(t.workflow_id).await {
            Ok(w) => w,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !w.enabled || p["version"].as_i64() != Some(w.definition_version) {
            return Ok(()); // disabled or changed since: the new version armed its own timers
        }
        let task_id = p["task"].as_str().and_then(|s| s.parse().ok()).map(TaskId);
        if let Some(id) = task_id {
            let task = match self.inner.pm.stores().tasks.get_task(id).await {
                Ok(t) => t,
                Err(pm_core::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let check = &p["check"];
            if let Some(due) = check["due_date"].as_str()
                && task.due_date.map(|d| d.to_string()).as_deref() != Some(due)
            {
                return Ok(()); // the due date moved: its own timer fires
            }
            // Known limit: a task that left the state and came back within the window is judged
            // by its current state only, so the first timer may fire early for the second stay.
            if let Some(state) = check["state_id"].as_str()
                && task.state_id.to_string() != state
            {
                return Ok(()); // left the state in time
            }
        }
        let key = p["trigger_key"].as_str().unwrap_or_default().to_string();
        let input = json!({"timer": t.key, "fire_at": t.fire_at.unix_timestamp()});
        match self.start(w.id, StartRequest { key, actor: Actor::System, task_id, input }).await {
            Ok(_) | Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        if p["schedule"].as_bool() == Some(true)
            && let Trigger::Schedule(s) = &w.definition.trigger
        {
            self.arm_schedule(&w, s, t.fire_at).await?;
        }
        Ok(())
    }

    fn compiled_for(
        &self,
        def: &Definition,
        id: WorkflowId,
        version: i64,
    ) -> Result<Arc<CompiledWorkflow>> {
        let mut cache = self.inner.compiled.lock().expect("cache lock");
        if let Some(c) = cache.get(&(id, version)) {
            return Ok(c.clone());
        }
        let c = Arc::new(CompiledWorkflow::new(def.clone(), &self.inner.sandbox)?);
        cache.insert((id, version), c.clone());
        Ok(c)
    }

    async fn compiled(&self, id: WorkflowId, version: i64) -> Result<Arc<CompiledWorkflow>> {
        if let Some(c) = self.inner.compiled.lock().expect("cache lock").get(&(id, version)) {
            return Ok(c.clone());
        }
        let v = self.inner.stores.workflows.get_version(id, version).await?;
        self.compiled_for(&v.definition, id, version)
    }

    // --- the log consumer -----------------------------------------------------------------

    /// Processes the log up to its current end (tests, benches); returns the executions
    /// started. Executions run in the background: see [`Engine::wait_idle`].
    pub async fn catch_up(&self) -> Result<usize> {
        let log = &self.inner.pm.stores().events;
        let mut after = log.load_cursor(CONSUMER).await?;
        let mut started = 0;
        loop {
            let events = log.read_after(after, self.inner.config.batch).await?;
            let Some(last) = events.last().map(|e| e.seq) else { return Ok(started) };
            for e in &events {
                started += self.dispatch(e).await?;
            }
            log.save_cursor(CONSUMER, last).await?;
            after = last;
        }
    }

    /// Runs forever: resumes interrupted executions, then tails the log from the durable
    /// cursor and fires timers. Errors are logged and retried after a second.
    pub async fn run(self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "pm-workflows: loading workflows failed");
        }
        if let Err(e) = self.resume().await {
            tracing::warn!(error = %e, "pm-workflows: resuming executions failed");
        }
        let timers = tokio::spawn(self.clone().run_timers());
        // Take over executions whose owner (another instance, or this process before a crash)
        // stopped renewing its lease.
        let resumer = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(resumer.inner.config.lease / 2).await;
                if let Err(e) = resumer.resume().await {
                    tracing::warn!(error = %e, "pm-workflows: resuming executions failed");
                }
            }
        });
        let log = self.inner.pm.stores().events.clone();
        loop {
            let start = match log.load_cursor(CONSUMER).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "pm-workflows: loading the cursor failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut tailer = Tailer::new(log.clone(), start);
            // Dispatch is idempotent (an execution's trigger key is unique), so the cursor may
            // trail the events already dispatched.
            let mut checkpoint = Checkpoint::new(start);
            let failed: Error = loop {
                let events = match tailer
                    .next_batch_or_idle(self.inner.config.batch, Checkpoint::IDLE)
                    .await
                {
                    Ok(e) => e,
                    Err(e) => break e.into(),
                };
                let mut err = None;
                let mut started = 0;
                for e in &events {
                    match self.dispatch(e).await {
                        Ok(n) => started += n,
                        Err(x) => {
                            err = Some(x);
                            break;
                        }
                    }
                }
                if let Some(e) = err {
                    break e;
                }
                let at = tailer.position();
                if checkpoint.due(at, started > 0, events.is_empty()) {
                    if let Err(e) = log.save_cursor(CONSUMER, at).await {
                        break e.into();
                    }
                    checkpoint.saved(at);
                }
            };
            if timers.is_finished() {
                tracing::error!("pm-workflows: the timer loop stopped");
            }
            tracing::warn!(error = %failed, "pm-workflows: the log consumer failed; restarting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Spawns [`Engine::run`] on the current runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Drives every execution left `running` (by a crash) again.
    /// Executions another live instance holds the lease on are left to it (`drive` does not get
    /// the lease); they are looked at again on the next call.
    pub async fn resume(&self) -> Result<usize> {
        let mut n = 0;
        let mut seen = HashSet::new();
        loop {
            let running = self.inner.stores.executions.list_running(200).await?;
            let fresh: Vec<_> = {
                let in_flight = self.inner.in_flight.lock().expect("in-flight lock");
                running
                    .into_iter()
                    .filter(|e| !in_flight.contains(&e.id) && !seen.contains(&e.id))
                    .collect()
            };
            if fresh.is_empty() {
                return Ok(n);
            }
            for e in fresh {
                seen.insert(e.id);
                n += 1;
                self.drive(e.id).await;
            }
        }
    }

    /// Waits until no execution is being driven in this process.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.busy.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Starts the executions an event triggers; returns how many were created.
    pub async fn dispatch(&self, event: &Event) -> Result<usize> {
        let Some(org) = event.org_id else { return Ok(0) };
        let entries = {
            let index = self.inner.index.read().expect("index lock").clone();
            match index.by_org.get(&org) {
                Some(o) => o.candidates(event),
                None => return Ok(0),
            }
        };
        if entries.is_empty() {
            return Ok(0);
        }
        let automated = !matches!(event.actor, Actor::User(_));
        let depth = event.cause.map_or(0, |c| c.depth) + 1;
        let mut scope: Option<(Scope, Value)> = None;
        let mut started = 0;
        for entry in entries {
            let w = &entry.workflow;
            if w.project_id.is_some() && w.project_id != event.project_id {
                continue;
            }
            // A new workflow reacts to what happens from now on, not to the log's history (a
            // fresh cursor starts at the beginning of the log).
            if event.at < w.created_at {
                continue;
            }
            if automated && !w.definition.options.allow_automation_events {
                continue;
            }
            if matches!(w.definition.trigger, Trigger::DueDateReached(_) | Trigger::InStateFor(_)) {
                self.arm_relative(w, event).await?;
                continue;
            }
            if !trigger_matches(&w.definition.trigger, event) {
                continue;
            }
            if scope.is_none() {
                let ctx = self.event_context(event).await?;
                let mut s = Scope::new();
                for key in ["event", "task", "trigger", "now"] {
                    s.set(key, ctx.get(key).unwrap_or(&Value::Null));
                }
                scope = Some((s, ctx));
            }
            let (s, ctx) = scope.as_ref().expect("scope was just built");
            match entry.compiled.conditions_hold(s) {
                Ok(true) => {}
                Ok(false) => continue,
                Err((i, e)) => {
                    tracing::debug!(workflow = %w.id, condition = i, error = %e, "pm-workflows: condition failed to evaluate; not started");
                    continue;
                }
            }
            let status = if depth >= self.inner.config.max_depth {
                ExecutionStatus::Loop
            } else {
                ExecutionStatus::Running
            };
            let now = pm_core::model::now();
            let execution = Execution {
                id: ExecutionId::new(),
                workflow_id: w.id,
                workflow_version: w.definition_version,
                org_id: org,
                task_id: event.task_id,
                status,
                trigger_key: format!("event:{}", event.id),
                actor: event.actor,
                depth,
                context: ctx.clone(),
                error: (status == ExecutionStatus::Loop).then(|| {
                    format!(
                        "cascade depth {depth} reached the limit of {}",
                        self.inner.config.max_depth
                    )
                }),
                created_at: now,
                updated_at: now,
            };
            if !self.inner.stores.executions.create_execution(&execution).await? {
                continue; // already started (the log is read at least once)
            }
            started += 1;
            if status == ExecutionStatus::Running {
                self.spawn_drive(execution.id);
            }
        }
        Ok(started)
    }

    /// Starts a workflow by hand or from its webhook (`trigger` = `input`).
    pub async fn start(&self, workflow: WorkflowId, request: StartRequest) -> Result<Execution> {
        let w = self.inner.stores.workflows.get_workflow(workflow).await?;
        if !w.enabled {
            return Err(Error::Conflict("the workflow is disabled".into()));
        }
        let task = match request.task_id {
            Some(t) => Some(self.inner.pm.stores().tasks.get_task(t).await?),
            None => None,
        };
        if let Some(t) = &task
            && t.org_id != w.org_id
        {
            return Err(Error::not_found("task"));
        }
        let now = pm_core::model::now();
        let context = json!({
            "event": Value::Null,
            "task": task.as_ref().map(task_json).unwrap_or(Value::Null),
            "trigger": request.input,
            "now": micros(now),
        });
        let compiled = self.compiled(w.id, w.definition_version).await?;
        let scope = scope_of(&context);
        match compiled.conditions_hold(&scope) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Conflict("the workflow's conditions do not hold".into()));
            }
            Err((i, e)) => return Err(Error::invalid(format!("conditions[{i}]"), e)),
        }
        let execution = Execution {
            id: ExecutionId::new(),
            workflow_id: w.id,
            workflow_version: w.definition_version,
            org_id: w.org_id,
            task_id: request.task_id,
            status: ExecutionStatus::Running,
            trigger_key: request.key,
            actor: request.actor,
            depth: 1,
            context,
            error: None,
            created_at: now,
            updated_at: now,
        };
        if !self.inner.stores.executions.create_execution(&execution).await? {
            return Err(Error::Conflict("this delivery already started an execution".into()));
        }
        self.spawn_drive(execution.id);
        Ok(execution)
    }

    /// Verifies a webhook secret in constant time and starts the workflow with `payload`.
    pub async fn webhook(
        &self,
        workflow: WorkflowId,
        secret: &str,
        delivery_id: &str,
        payload: Value,
    ) -> Result<Execution> {
        let w = self.inner.stores.workflows.get_workflow(workflow).await?;
        if !matches!(w.definition.trigger, Trigger::Webhook(_)) {
            return Err(Error::not_found("workflow"));
        }
        if !constant_time_eq(w.webhook_secret.as_bytes(), secret.as_bytes()) {
            return Err(Error::Forbidden("wrong webhook secret".into()));
        }
        if delivery_id.is_empty() || delivery_id.len() > 200 {
            return Err(Error::invalid("delivery_id", "must be 1-200 characters"));
        }
        let task_id = payload
            .get("task_id")
            .and_then(Value::as_str)
            .map(|s| s.parse::<uuid::Uuid>().map(TaskId))
            .transpose()
            .map_err(|_| Error::invalid("task_id", "is not a UUID"))?;
        self.start(
            workflow,
            StartRequest {
                key: format!("webhook:{delivery_id}"),
                actor: Actor::System,
                task_id,
                input: payload,
            },
        )
        .await
    }

    // --- executions -----------------------------------------------------------------------

    /// Cancels a running or waiting execution (pending approvals are closed).
    pub async fn cancel(&self, id: ExecutionId) -> Result<Execution> {
        use ExecutionStatus::*;
        let changed = self
            .inner
            .stores
            .executions
            .set_status(id, &[Running, Waiting], Cancelled, None, pm_core::model::now())
            .await?;
        if !changed {
            return Err(Error::Conflict("the execution is already finished".into()));
        }
        self.inner.stores.executions.get_execution(id).await
    }

    /// Retries a failed execution: its failed steps are forgotten and it runs again from its
    /// recorded state (finished steps are not repeated).
    pub async fn retry(&self, id: ExecutionId) -> Result<Execution> {
        use ExecutionStatus::*;
        let e = self.inner.stores.executions.get_execution(id).await?;
        if e.status != Failed {
            return Err(Error::Conflict(format!(
                "only failed executions can be retried (this one is {})",
                e.status.as_str()
            )));
        }
        self.inner.stores.executions.reset_failed_steps(id).await?;
        let now = pm_core::model::now();
        if !self.inner.stores.executions.set_status(id, &[Failed], Running, None, now).await? {
            return Err(Error::Conflict("the execution changed meanwhile".into()));
        }
        self.spawn_drive(id);
        self.inner.stores.executions.get_execution(id).await
    }

    /// Records a decision on an approval. The approver's right is checked now (not when the
    /// approval was requested); whoever caused the execution may not decide unless the step
    /// allows self-approval. When the decision settles the stage, the execution continues.
    pub async fn decide(
        &self,
        approval: ApprovalId,
        user: UserId,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval> {
        if comment.as_ref().is_some_and(|c| c.len() > 10_000) {
            return Err(Error::invalid("comment", "must be at most 10000 bytes"));
        }
        let a = self.inner.stores.approvals.get_approval(approval).await?;
        if a.status != ApprovalStatus::Pending {
            return Err(Error::Conflict(format!("the approval is already {}", a.status.as_str())));
        }
        if a.requester == Some(user) && !a.allow_self_approval {
            return Err(Error::Forbidden("self-approval is not allowed for this step".into()));
        }
        let project = match a.task_id {
            Some(t) => Some(self.inner.pm.stores().tasks.get_task(t).await?.project_id),
            None => None,
        };
        let allowed = match &self.inner.ports.approvers {
            Some(d) => d.may_decide(user, a.org_id, project, &a.approvers).await?,
            None => {
                ports::ExplicitApprovers.may_decide(user, a.org_id, project, &a.approvers).await?
            }
        };
        if !allowed {
            return Err(Error::Forbidden("you may not decide this approval".into()));
        }
        let decision =
            ApprovalDecision { user_id: user, approve, comment, at: pm_core::model::now() };
        let decided = self.inner.stores.approvals.decide(approval, &decision).await?;
        if decided.status != ApprovalStatus::Pending {
            self.inner.stores.timers.disarm_timer(&approval_timer_key(approval)).await?;
            self.wake(decided.execution_id).await?;
        }
        Ok(decided)
    }

    async fn wake(&self, id: ExecutionId) -> Result<()> {
        use ExecutionStatus::*;
        let now = pm_core::model::now();
        if self.inner.stores.executions.set_status(id, &[Waiting], Running, None, now).await? {
            self.spawn_drive(id);
        }
        Ok(())
    }

    // --- timers ---------------------------------------------------------------------------

    async fn run_timers(self) {
        loop {
            let fired = match self.fire_due_timers().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "pm-workflows: firing timers failed");
                    0
                }
            };
            let sleep = match self.inner.stores.timers.next_fire_at().await {
                Ok(Some(at)) => {
                    let d = at - pm_core::model::now();
                    d.try_into().unwrap_or(Duration::ZERO).min(self.inner.config.timer_poll)
                }
                _ => self.inner.config.timer_poll,
            };
            // A due timer another instance holds the lease on is not ours to fire: do not spin
            // on it.
            let sleep = if fired == 0 { sleep.max(Duration::from_millis(50)) } else { sleep };
            let _ = tokio::time::timeout(sleep, self.inner.wake_timers.notified()).await;
        }
    }

    /// Fires every timer due now; returns how many fired. The effect of a timer is applied
    /// before it is claimed, and applying it twice is harmless, so a crash in between costs a
    /// repeat, never a lost wake-up.
    pub async fn fire_due_timers(&self) -> Result<usize> {
        self.fire_due_timers_at(pm_core::model::now()).await
    }

    /// [`Engine::fire_due_timers`] as if it were `now` (tests, and hosts catching up).
    pub async fn fire_due_timers_at(&self, now: OffsetDateTime) -> Result<usize> {
        let until = now + self.inner.config.lease;
        let due =
            self.inner.stores.timers.lease_due_timers(now, &self.inner.owner, until, 100).await?;
        let mut fired = 0;
        for t in due {
            match t.payload.get("kind").and_then(Value::as_str) {
                Some("wait") => {
                    let (Some(exec), Some(step)) =
                        (t.execution_id, t.payload.get("step").and_then(Value::as_str))
                    else {
                        continue;
                    };
                    match self
                        .inner
                        .stores
                        .executions
                        .finish_step(
                            exec,
                            step,
                            StepStatus::Done,
                            &json!({"waited": true}),
                            None,
                            pm_core::model::now(),
                        )
                        .await
                    {
                        Ok(()) | Err(Error::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                    self.wake(exec).await?;
                }
                Some("approval_timeout") => {
                    let Some(id) = t
                        .payload
                        .get("approval")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        .map(ApprovalId)
                    else {
                        continue;
                    };
                    self.inner
                        .stores
                        .approvals
                        .close_approval(id, ApprovalStatus::TimedOut)
                        .await?;
                    if let Some(exec) = t.execution_id {
                        self.wake(exec).await?;
                    }
                }
                Some("start") => self.fire_start(&t).await?,
                other => {
                    tracing::warn!(timer = %t.key, kind = ?other, "pm-workflows: unknown timer kind; dropped");
                }
            }
            if self.inner.stores.timers.claim_timer(t.id).await? {
                fired += 1;
            }
        }
        Ok(fired)
    }

    // --- driving --------------------------------------------------------------------------

    fn spawn_drive(&self, id: ExecutionId) {
        let engine = self.clone();
        engine.inner.busy.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            engine.drive(id).await;
            if engine.inner.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
                engine.inner.idle.notify_waiters();
            }
        });
    }

    /// Drives one execution as far as it goes (to the end, a wait, or an approval).
    ///
    /// Only under this engine's lease: another instance driving it (or one that died less than a
    /// lease ago) keeps it. The lease is renewed while driving; if a renewal is refused (this
    /// process stalled past its lease and another instance took over), driving stops at once —
    /// the new owner continues from the recorded steps.
    async fn drive(&self, id: ExecutionId) {
        if !self.inner.in_flight.lock().expect("in-flight lock").insert(id) {
            return; // already being driven in this process
        }
        let lease = self.inner.config.lease;
        let executions = &self.inner.stores.executions;
        let owner = self.inner.owner.as_str();
        let now = pm_core::model::now();
        match executions.lease_execution(id, owner, now, now + lease).await {
            Ok(true) => {
                let renew = async {
                    loop {
                        tokio::time::sleep(lease / 3).await;
                        let now = pm_core::model::now();
                        match executions.lease_execution(id, owner, now, now + lease).await {
                            Ok(true) => {}
                            Ok(false) => return,
                            // A database hiccup: keep driving; the next renewal tries again.
                            Err(e) => {
                                tracing::warn!(execution = %id, error = %e, "pm-workflows: renewing a lease failed")
                            }
                        }
                    }
                };
                tokio::select! {
                    outcome = self.drive_inner(id) => {
                        if let Err(e) = outcome {
                            tracing::warn!(execution = %id, error = %e, "pm-workflows: driving an execution failed");
                        }
                    }
                    () = renew => {
                        tracing::warn!(execution = %id, "pm-workflows: lost the lease on an execution; another instance continues it");
                    }
                }
                if let Err(e) = executions.release_execution(id, owner).await {
                    tracing::debug!(execution = %id, error = %e, "pm-workflows: releasing a lease failed (it expires)");
                }
            }
            Ok(false) => {} // another instance drives it
            Err(e) => {
                tracing::warn!(execution = %id, error = %e, "pm-workflows: leasing an execution failed");
            }
        }
        self.inner.in_flight.lock().expect("in-flight lock").remove(&id);
        self.inner.wake_timers.notify_one();
    }

    async fn drive_inner(&self, id: ExecutionId) -> Result<()> {
        use ExecutionStatus::*;
        let stores = &self.inner.stores;
        let exec = stores.executions.get_execution(id).await?;
        if exec.status != Running {
            return Ok(());
        }
        let compiled = self.compiled(exec.workflow_id, exec.workflow_version).await?;
        let records = stores.executions.list_steps(id).await?;
        let mut run = Run::new(self, &exec, &compiled, Mode::Live, records);
        let steps = compiled.definition.steps.clone();
        let outcome = run.steps(&steps, "steps", "steps").await;
        let now = pm_core::model::now();
        match outcome {
            Ok(Flow::Continue) => {
                stores.executions.set_status(id, &[Running], Succeeded, None, now).await?;
            }
            Ok(Flow::Suspend) => {
                stores.executions.set_status(id, &[Running], Waiting, None, now).await?;
                // A decision or timer may have landed while we were suspending.
                self.recheck_suspended(&exec).await?;
            }
            Err(e) => {
                stores
                    .executions
                    .set_status(id, &[Running], Failed, Some(&e.to_string()), now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Closes the race between "suspend" and "the approval it waits on settled": the decider
    /// only wakes `waiting` executions, so look once more after suspending.
    async fn recheck_suspended(&self, exec: &Execution) -> Result<()> {
        let pending = self.inner.stores.approvals.list_approvals(exec.org_id, false, 50).await?;
        let settled = pending
            .iter()
            .any(|a| a.execution_id == exec.id && a.status != ApprovalStatus::Pending);
        if settled {
            let steps = self.inner.stores.executions.list_steps(exec.id).await?;
            // Settled approvals whose step is still waiting: wake.
            if steps.iter().any(|s| s.status == StepStatus::Waiting) {
                Box::pin(self.wake(exec.id)).await?;
            }
        }
        Ok(())
    }

    // --- dry-run and replay ---------------------------------------------------------------

    /// Plans `definition` against a task (as a manual start) or a recorded event, without side
    /// effects or writes. Scripts run (sandboxed); approvals are assumed approved.
    pub async fn dry_run(
        &self,
        definition: &Definition,
        org: OrgId,
        task: Option<TaskId>,
        event: Option<&Event>,
    ) -> Result<Plan> {
        definition.validate(&self.inner.config.limits)?;
        let compiled = CompiledWorkflow::new(definition.clone(), &self.inner.sandbox)?;
        let context = match event {
            Some(e) => {
                if !trigger_matches(&definition.trigger, e) {
                    return Ok(Plan {
                        would_run: false,
                        reason: Some(format!(
                            "the trigger {} does not match a {} event",
                            definition.trigger.type_name(),
                            e.kind.as_str()
                        )),
                        steps: vec![],
                    });
                }
                self.event_context(e).await?
            }
            None => {
                let t = match task {
                    Some(t) => Some(self.inner.pm.stores().tasks.get_task(t).await?),
                    None => None,
                };
                json!({
                    "event": Value::Null,
                    "task": t.as_ref().map(task_json).unwrap_or(Value::Null),
                    "trigger": {},
                    "now": micros(pm_core::model::now()),
                })
            }
        };
        match compiled.conditions_hold(&scope_of(&context)) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Plan {
                    would_run: false,
                    reason: Some("the conditions do not hold".into()),
                    steps: vec![],
                });
            }
            Err((i, e)) => {
                return Ok(Plan {
                    would_run: false,
                    reason: Some(format!("conditions[{i}] failed to evaluate: {e}")),
                    steps: vec![],
                });
            }
        }
        let exec = Execution {
            id: ExecutionId::new(),
            workflow_id: WorkflowId::new(),
            workflow_version: 0,
            org_id: org,
            task_id: task.or(event.and_then(|e| e.task_id)),
            status: ExecutionStatus::Running,
            trigger_key: "dry-run".into(),
            actor: event.map_or(Actor::System, |e| e.actor),
            depth: 1,
            context,
            error: None,
            created_at: pm_core::model::now(),
            updated_at: pm_core::model::now(),
        };
        let mut run = Run::new(self, &exec, &compiled, Mode::DryRun, vec![]);
        run.steps(&definition.steps, "steps", "steps").await?;
        Ok(Plan { would_run: true, reason: None, steps: run.plan })
    }

    /// Walks a stored execution again from its stored context and recorded outputs, and
    /// compares every decision (branches, switch cases, for-each items, script outputs).
    pub async fn replay(&self, id: ExecutionId) -> Result<Replay> {
        let exec = self.inner.stores.executions.get_execution(id).await?;
        let compiled = self.compiled(exec.workflow_id, exec.workflow_version).await?;
        let records = self.inner.stores.executions.list_steps(id).await?;
        let mut run = Run::new(self, &exec, &compiled, Mode::Replay, records);
        let steps = compiled.definition.steps.clone();
        run.steps(&steps, "steps", "steps").await?;
        let identical = run.replayed.iter().all(|d| d.recorded == d.replayed);
        Ok(Replay { identical, decisions: run.replayed })
    }

    // --- context --------------------------------------------------------------------------

    async fn event_context(&self, event: &Event) -> Result<Value> {
        // The task as of the event when the event carries it (task events do), so decisions do
        // not depend on how late the log is read; otherwise as it is now.
        let task = match (event.payload.get("task"), event.task_id) {
            (Some(t @ Value::Object(_)), _) => t.clone(),
            (_, Some(t)) => match self.inner.pm.stores().tasks.get_task(t).await {
                Ok(task) => task_json(&task),
                Err(pm_core::Error::NotFound { .. }) => {
                    event.payload.get("task").cloned().unwrap_or(Value::Null)
                }
                Err(e) => return Err(e.into()),
            },
            (_, None) => Value::Null,
        };
        Ok(json!({
            "event": {
                "id": event.id,
                "seq": event.seq,
                "kind": event.kind.as_str(),
                "actor": event.actor,
                "subject": event.subject,
                "payload": event.payload,
                "changes": event.payload.get("changes").cloned().unwrap_or(Value::Null),
                "depth": event.cause.map_or(0, |c| c.depth),
            },
            "task": task,
            "trigger": {},
            "now": micros(event.at),
        }))
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    pm_core::query::micros(t)
}

fn task_json(t: &Task) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn scope_of(ctx: &Value) -> Scope {
    let mut s = Scope::new();
    if let Value::Object(m) = ctx {
        for (k, v) in m {
            s.set(k, v);
        }
    }
    s
}

fn new_secret() -> String {
    use base64::Engine as _;
    // 32 bytes from the OS generator, in the Standard Webhooks `whsec_<base64>` form so the same
    // secret signs outbound requests.
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random generator is available");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

fn approval_timer_key(id: ApprovalId) -> String {
    format!("approval:{id}")
}

/// Whether an event matches a trigger (event-sourced triggers only; the others start by timer,
/// webhook or hand).
pub fn trigger_matches(trigger: &Trigger, event: &Event) -> bool {
    let changes = event.payload.get("changes");
    let change = |field: &str| changes.and_then(|c| c.get(field));
    match trigger {
        Trigger::TaskCreated(_) => event.kind == EventKind::TaskCreated,
        Trigger::TaskUpdated(_) => event.kind == EventKind::TaskUpdated,
        Trigger::FieldChanged(f) => {
            event.kind == EventKind::TaskUpdated
                && match definition::custom_field(&f.field) {
                    Some(id) => change("custom_fields").is_some_and(|c| {
                        let key = id.to_string();
                        c.get("from").and_then(|v| v.get(&key))
                            != c.get("to").and_then(|v| v.get(&key))
                    }),
                    None => change(&f.field).is_some(),
                }
        }
        Trigger::StateChanged(s) => {
            event.kind == EventKind::TaskUpdated
                && change("state_id").is_some_and(|c| {
                    let is = |v: Option<&Value>, want: Option<StateId>| {
                        want.is_none_or(|w| v.and_then(Value::as_str) == Some(&w.to_string()))
                    };
                    is(c.get("from"), s.from) && is(c.get("to"), s.to)
                })
        }
        Trigger::Assigned(_) => match event.kind {
            EventKind::TaskCreated => event
                .payload
                .get("task")
                .and_then(|t| t.get("assignees"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            EventKind::TaskUpdated => change("assignees").is_some_and(|c| {
                let set = |v: Option<&Value>| -> BTreeSet<String> {
                    v.and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                        .unwrap_or_default()
                };
                let (from, to) = (set(c.get("from")), set(c.get("to")));
                to.difference(&from).next().is_some()
            }),
            _ => false,
        },
        Trigger::Commented(_) => event.kind == EventKind::CommentCreated,
        Trigger::DueDateReached(_)
        | Trigger::InStateFor(_)
        | Trigger::Schedule(_)
        | Trigger::Webhook(_)
        | Trigger::Manual(_) => false,
    }
}

/// One walk over an execution's steps (live, dry-run or replay).
struct Run<'a> {
    engine: &'a Engine,
    exec: &'a Execution,
    compiled: &'a CompiledWorkflow,
    mode: Mode,
    records: HashMap<String, StepRecord>,
    ctx: Value,
    started: Instant,
    items: u32,
    plan: Vec<PlannedStep>,
    replayed: Vec<ReplayedDecision>,
}

impl<'a> Run<'a> {
    fn new(
        engine: &'a Engine,
        exec: &'a Execution,
        compiled: &'a CompiledWorkflow,
        mode: Mode,
        records: Vec<StepRecord>,
    ) -> Self {
        let mut ctx = exec.context.clone();
        if let Value::Object(m) = &mut ctx {
            m.insert("steps".into(), json!({}));
        }
        Self {
            engine,
            exec,
            compiled,
            mode,
            records: records.into_iter().map(|r| (r.key.clone(), r)).collect(),
            ctx,
            started: Instant::now(),
            items: 0,
            plan: Vec::new(),
            replayed: Vec::new(),
        }
    }

    fn options(&self) -> &Options {
        &self.compiled.definition.options
    }

    fn origin(&self) -> Origin {
        Origin {
            actor: Actor::Automation(self.exec.workflow_id),
            cause: Some(Cause {
                event_id: self
                    .exec
                    .context
                    .pointer("/event/id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .map(EventId)
                    // Manual and webhook starts have no event: the execution stands in for it.
                    .unwrap_or(EventId(self.exec.id.0)),
                depth: self.exec.depth,
            }),
        }
    }

    fn count_item(&mut self) -> Result<()> {
        self.items += 1;
        if self.items > self.options().max_items {
            return Err(Error::limit(
                "items_per_execution",
                format!("more than {} items and actions", self.options().max_items),
            ));
        }
        if self.mode == Mode::Live
            && self.started.elapsed() > Duration::from_secs(self.options().max_run_time_secs as u64)
        {
            return Err(Error::limit(
                "run_time",
                format!("ran longer than {} s", self.options().max_run_time_secs),
            ));
        }
        Ok(())
    }

    fn set_output(&mut self, id: Option<&str>, output: &Value) {
        if let (Some(id), Some(steps)) =
            (id, self.ctx.get_mut("steps").and_then(Value::as_object_mut))
        {
            steps.insert(id.to_string(), output.clone());
        }
    }

    fn scope(&self) -> Scope {
        scope_of(&self.ctx)
    }

    /// A decision (branch, case, items): recorded once when live, compared when replaying.
    async fn decision(&mut self, key: &str, kind: &str, computed: Result<Value>) -> Result<Value> {
        match self.mode {
            Mode::Live => {
                if let Some(r) = self.records.get(key).filter(|r| r.status == StepStatus::Done) {
                    return Ok(r.output.clone());
                }
                let v = computed?;
                self.engine
                    .inner
                    .stores
                    .executions
                    .finish_step(
                        self.exec.id,
                        key,
                        StepStatus::Done,
                        &v,
                        None,
                        pm_core::model::now(),
                    )
                    .await?;
                Ok(v)
            }
            Mode::DryRun => {
                let v = computed?;
                self.plan.push(PlannedStep {
                    key: key.into(),
                    kind: kind.into(),
                    detail: v.clone(),
                });
                Ok(v)
            }
            Mode::Replay => {
                let v = computed?;
                if let Some(r) = self.records.get(key) {
                    self.replayed.push(ReplayedDecision {
                        key: key.into(),
                        recorded: r.output.clone(),
                        replayed: v.clone(),
                    });
                    Ok(r.output.clone())
                } else {
                    Ok(v)
                }
            }
        }
    }

    fn steps<'s>(
        &'s mut self,
        steps: &'s [Step],
        spath: &'s str,
        kpath: &'s str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Flow>> + Send + 's>>
    where
        'a: 's,
    {
        Box::pin(async move {
            for (i, step) in steps.iter().enumerate() {
                let sp = format!("{spath}[{i}]");
                let kp = format!("{kpath}[{i}]");
                let flow = match step {
                    Step::Action(a) => self.action(a, &sp, &kp).await?,
                    Step::If(s) => {
                        let holds = self
                            .compiled
                            .program(&format!("{sp}.condition"))
                            .ok_or_else(|| Error::invalid(&sp, "condition not compiled"))
                            // Fail closed: an evaluation error takes the else branch.
                            .map(|p| {
                                let then = self.scope().holds(p).unwrap_or(false);
                                json!({"branch": if then { "then" } else { "else" }})
                            });
                        let d = self.decision(&kp, "if", holds).await?;
                        self.set_output(s.id.as_deref(), &d);
                        if d["branch"] == "then" {
                            self.steps(&s.then, &format!("{sp}.then"), &format!("{kp}.then"))
                                .await?
                        } else {
                            self.steps(&s.otherwise, &format!("{sp}.else"), &format!("{kp}.else"))
                                .await?
                        }
                    }
                    Step::Switch(s) => {
                        let value = self
                            .compiled
                            .program(&format!("{sp}.value"))
                            .ok_or_else(|| Error::invalid(&sp, "value not compiled"))
                            .map(|p| self.scope().value(p).unwrap_or(Value::Null));
                        let computed = value.map(|v| {
                            let case =
                                s.cases.iter().position(|c| condition::json_equals(&c.equals, &v));
                            json!({"value": v, "case": case})
                        });
                        let d = self.decision(&kp, "switch", computed).await?;
                        self.set_output(s.id.as_deref(), &d);
                        match d["case"].as_u64().map(|c| c as usize) {
                            Some(c) if c < s.cases.len() => {
                                self.steps(
                                    &s.cases[c].steps,
                                    &format!("{sp}.cases[{c}].steps"),
                                    &format!("{kp}.cases[{c}].steps"),
                                )
                                .await?
                            }
                            _ => {
                                self.steps(
                                    &s.default,
                                    &format!("{sp}.default"),
                                    &format!("{kp}.default"),
                                )
                                .await?
                            }
                        }
                    }
                    Step::ForEach(s) => {
                        let items = self.related(s.over).await;
                        let d = self
                            .decision(&kp, "for_each", items.map(|i| json!({"items": i})))
                            .await?;
                        self.set_output(s.id.as_deref(), &d);
                        let items = d["items"].as_array().cloned().unwrap_or_default();
                        let mut flow = Flow::Continue;
                        for (n, item) in items.iter().enumerate() {
                            self.count_item()?;
                            if let Value::Object(m) = &mut self.ctx {
                                m.insert("item".into(), item.clone());
                            }
                            flow = self
                                .steps(&s.steps, &format!("{sp}.steps"), &format!("{kp}#{n}.steps"))
                                .await?;
                            if matches!(flow, Flow::Suspend) {
                                break;
                            }
                        }
                        if let Value::Object(m) = &mut self.ctx {
                            m.remove("item");
                        }
                        flow
                    }
                    Step::Approval(s) => self.approval(s, &sp, &kp).await?,
                };
                if matches!(flow, Flow::Suspend) {
                    return Ok(Flow::Suspend);
                }
            }
            Ok(Flow::Continue)
        })
    }

    async fn related(&self, over: Related) -> Result<Value> {
        let Some(task) = self.exec.task_id else { return Ok(json!([])) };
        let stores = self.engine.inner.pm.stores();
        let max = self.options().max_items as usize;
        let tasks: Vec<Task> = match over {
            Related::Subtasks => {
                let filter =
                    pm_core::query::TaskFilter { parent: Some(Some(task)), ..Default::default() };
                let page = pm_core::query::PageRequest {
                    limit: (max as u32 + 1).min(500),
                    ..Default::default()
                };
                stores.tasks.list_tasks(self.exec.org_id, &filter, &page).await?.items
            }
            Related::RelatedTasks => {
                let mut out = Vec::new();
                for r in stores.tasks.list_relations(task).await?.into_iter().take(max + 1) {
                    let other = if r.from_task == task { r.to_task } else { r.from_task };
                    if let Ok(t) = stores.tasks.get_task(other).await {
                        out.push(t);
                    }
                }
                out
            }
        };
        if tasks.len() > max {
            return Err(Error::limit(
                "items_per_execution",
                format!("more than {max} related tasks to visit"),
            ));
        }
        Ok(Value::Array(tasks.iter().map(task_json).collect()))
    }

    async fn approval(&mut self, s: &ApprovalStep, sp: &str, kp: &str) -> Result<Flow> {
        let outcome = match self.mode {
            Mode::DryRun => {
                for (i, stage) in s.stages.iter().enumerate() {
                    self.plan.push(PlannedStep {
                        key: format!("{kp}/stage{i}"),
                        kind: "approval".into(),
                        detail: json!({"approvers": stage.approvers, "quorum": stage.quorum, "assumed": "approved"}),
                    });
                }
                "approved".to_string()
            }
            Mode::Replay => match self.records.get(kp).filter(|r| r.status == StepStatus::Done) {
                Some(r) => r.output["outcome"].as_str().unwrap_or("").to_string(),
                None => return Ok(Flow::Suspend),
            },
            Mode::Live => {
                if let Some(r) = self.records.get(kp).filter(|r| r.status == StepStatus::Done) {
                    r.output["outcome"].as_str().unwrap_or("").to_string()
                } else {
                    match self.live_approval(s, kp).await? {
                        Some(outcome) => {
                            let out = json!({"outcome": outcome});
                            self.engine
                                .inner
                                .stores
                                .executions
                                .finish_step(
                                    self.exec.id,
                                    kp,
                                    StepStatus::Done,
                                    &out,
                                    None,
                                    pm_core::model::now(),
                                )
                                .await?;
                            outcome
                        }
                        None => return Ok(Flow::Suspend),
                    }
                }
            }
        };
        self.set_output(s.id.as_deref(), &json!({"outcome": outcome}));
        let (branch, name) = match outcome.as_str() {
            "approved" => (&s.on_approved, "on_approved"),
            "rejected" => (&s.on_rejected, "on_rejected"),
            "timed_out" => (&s.on_timeout, "on_timeout"),
            _ => return Ok(Flow::Continue),
        };
        self.steps(branch, &format!("{sp}.{name}"), &format!("{kp}.{name}")).await
    }

    /// Requests the next undecided stage; `Some(outcome)` once settled, `None` while waiting.
    async fn live_approval(&mut self, s: &ApprovalStep, kp: &str) -> Result<Option<String>> {
        let inner = &self.engine.inner;
        let project = self
            .ctx
            .pointer("/task/project_id")
            .and_then(Value::as_str)
            .and_then(|p| p.parse().ok())
            .map(ProjectId);
        for (i, stage) in s.stages.iter().enumerate() {
            let existing = inner.stores.approvals.find_approval(self.exec.id, kp, i as u32).await?;
            let a = match existing {
                Some(a) => a,
                None => {
                    let mut eligible = match &inner.ports.approvers {
                        Some(d) => d.eligible(self.exec.org_id, project, &stage.approvers).await?,
                        None => {
                            ports::ExplicitApprovers
                                .eligible(self.exec.org_id, project, &stage.approvers)
                                .await?
                        }
                    };
                    let requester = self.exec.actor.user();
                    if !s.allow_self_approval {
                        eligible.retain(|u| Some(*u) != requester);
                    }
                    let needed = stage.quorum.needed(eligible.len()) as u32;
                    let now = pm_core::model::now();
                    let deadline =
                        s.timeout_minutes.map(|m| now + time::Duration::minutes(m as i64));
                    let status = if (eligible.len() as u32) < needed || eligible.is_empty() {
                        ApprovalStatus::Rejected // nobody can approve: say so now
                    } else {
                        ApprovalStatus::Pending
                    };
                    let approval = Approval {
                        id: ApprovalId::new(),
                        execution_id: self.exec.id,
                        workflow_id: self.exec.workflow_id,
                        org_id: self.exec.org_id,
                        task_id: self.exec.task_id,
                        step_key: kp.to_string(),
                        stage: i as u32,
                        status,
                        approvers: stage.approvers.clone(),
                        eligible: eligible.clone(),
                        needed,
                        requester,
                        allow_self_approval: s.allow_self_approval,
                        deadline,
                        decisions: vec![],
                        created_at: now,
                    };
                    inner
                        .stores
                        .executions
                        .begin_step(
                            self.exec.id,
                            kp,
                            StepStatus::Waiting,
                            &json!({"stage": i}),
                            now,
                        )
                        .await
                        .or_else(|e| match e {
                            Error::Conflict(_) => Ok(StepRecord {
                                execution_id: self.exec.id,
                                key: kp.into(),
                                status: StepStatus::Waiting,
                                input: Value::Null,
                                output: Value::Null,
                                attempts: 0,
                                error: None,
                                started_at: now,
                                finished_at: None,
                            }),
                            e => Err(e),
                        })?;
                    let stored = inner.stores.approvals.create_approval(&approval).await?;
                    if stored.status == ApprovalStatus::Pending {
                        if let Some(deadline) = deadline {
                            inner
                                .stores
                                .timers
                                .arm_timer(&Timer {
                                    id: TimerId::new(),
                                    key: approval_timer_key(stored.id),
                                    execution_id: Some(self.exec.id),
                                    workflow_id: self.exec.workflow_id,
                                    fire_at: deadline,
                                    payload: json!({"kind": "approval_timeout", "approval": stored.id}),
                                })
                                .await?;
                        }
                        if let Some(n) = &inner.ports.notifier {
                            let msg = format!(
                                "Approval requested: {}",
                                self.ctx
                                    .pointer("/task/reference")
                                    .and_then(Value::as_str)
                                    .unwrap_or("a workflow")
                            );
                            let key = format!("{}:{kp}/stage{i}/request", self.exec.id);
                            if let Err(e) =
                                n.notify(&stored.eligible, self.exec.task_id, &msg, &key).await
                            {
                                tracing::warn!(error = %e, "pm-workflows: notifying approvers failed");
                            }
                        }
                    }
                    stored
                }
            };
            match a.status {
                ApprovalStatus::Approved => continue,
                ApprovalStatus::Pending => return Ok(None),
                ApprovalStatus::Rejected => return Ok(Some("rejected".into())),
                ApprovalStatus::TimedOut => return Ok(Some("timed_out".into())),
                ApprovalStatus::Cancelled => return Ok(Some("cancelled".into())),
            }
        }
        Ok(Some("approved".into()))
    }

    async fn action(&mut self, step: &ActionStep, sp: &str, kp: &str) -> Result<Flow> {
        self.count_item()?;
        let action = &step.action;
        let kind = format!("action:{}", action.type_name());
        if let Action::Wait(w) = action {
            return self.wait(w, kp).await;
        }
        let input = self.render(action);
        match self.mode {
            Mode::DryRun => {
                let detail = if let Action::Script(_) = action {
                    let output =
                        self.script(sp).unwrap_or_else(|e| json!({"error": e.to_string()}));
                    self.set_output(step.id.as_deref(), &output);
                    json!({"input": input, "output": output})
                } else {
                    input
                };
                self.plan.push(PlannedStep { key: kp.into(), kind, detail });
                return Ok(Flow::Continue);
            }
            Mode::Replay => {
                if let Some(r) = self.records.get(kp).cloned() {
                    if let Action::Script(_) = action {
                        let replayed =
                            self.script(sp).unwrap_or_else(|e| json!({"error": e.to_string()}));
                        self.replayed.push(ReplayedDecision {
                            key: kp.into(),
                            recorded: r.output.clone(),
                            replayed,
                        });
                    }
                    self.set_output(step.id.as_deref(), &r.output);
                    return Ok(if r.status == StepStatus::Done {
                        Flow::Continue
                    } else {
                        Flow::Suspend
                    });
                }
                return Ok(Flow::Suspend);
            }
            Mode::Live => {}
        }
        if let Some(r) = self.records.get(kp) {
            match r.status {
                StepStatus::Done => {
                    let out = r.output.clone();
                    self.set_output(step.id.as_deref(), &out);
                    return Ok(Flow::Continue);
                }
                StepStatus::Failed => {
                    return Err(Error::Action(r.error.clone().unwrap_or_else(|| "failed".into())));
                }
                _ => {}
            }
        }
        let stores = &self.engine.inner.stores;
        let key = format!("{}:{kp}", self.exec.id);
        loop {
            let rec = stores
                .executions
                .begin_step(self.exec.id, kp, StepStatus::Running, &input, pm_core::model::now())
                .await?;
            let result = self.perform(action, sp, &input, &key).await;
            match result {
                Ok(out) => {
                    stores
                        .executions
                        .finish_step(
                            self.exec.id,
                            kp,
                            StepStatus::Done,
                            &out,
                            None,
                            pm_core::model::now(),
                        )
                        .await?;
                    self.set_output(step.id.as_deref(), &out);
                    return Ok(Flow::Continue);
                }
                Err(e) => {
                    let retryable = matches!(e, Error::Action(_) | Error::Storage(_));
                    if retryable && rec.attempts < self.options().max_attempts {
                        let delay = self.options().backoff(rec.attempts);
                        tracing::debug!(execution = %self.exec.id, step = kp, attempt = rec.attempts, ?delay, error = %e, "pm-workflows: step failed; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    stores
                        .executions
                        .finish_step(
                            self.exec.id,
                            kp,
                            StepStatus::Failed,
                            &Value::Null,
                            Some(&e.to_string()),
                            pm_core::model::now(),
                        )
                        .await?;
                    return Err(e);
                }
            }
        }
    }

    async fn wait(&mut self, w: &Wait, kp: &str) -> Result<Flow> {
        match self.mode {
            Mode::DryRun => {
                self.plan.push(PlannedStep {
                    key: kp.into(),
                    kind: "action:wait".into(),
                    detail: json!({"minutes": w.minutes}),
                });
                return Ok(Flow::Continue);
            }
            Mode::Replay => {
                return Ok(match self.records.get(kp) {
                    Some(r) if r.status == StepStatus::Done => Flow::Continue,
                    _ => Flow::Suspend,
                });
            }
            Mode::Live => {}
        }
        match self.records.get(kp).map(|r| r.status) {
            Some(StepStatus::Done) => return Ok(Flow::Continue),
            Some(StepStatus::Waiting) => return Ok(Flow::Suspend),
            _ => {}
        }
        let inner = &self.engine.inner;
        let now = pm_core::model::now();
        let until = now + time::Duration::minutes(w.minutes as i64);
        inner
            .stores
            .executions
            .begin_step(
                self.exec.id,
                kp,
                StepStatus::Waiting,
                &json!({"until": until.unix_timestamp()}),
                now,
            )
            .await?;
        inner
            .stores
            .timers
            .arm_timer(&Timer {
                id: TimerId::new(),
                key: format!("wait:{}:{kp}", self.exec.id),
                execution_id: Some(self.exec.id),
                workflow_id: self.exec.workflow_id,
                fire_at: until,
                payload: json!({"kind": "wait", "step": kp}),
            })
            .await?;
        Ok(Flow::Suspend)
    }

    fn render(&self, action: &Action) -> Value {
        let ctx = &self.ctx;
        let r = |s: &str| Value::String(template::render(s, ctx));
        match action {
            Action::SetFields(s) => {
                json!({"fields": template::render_json(&serde_json::to_value(&s.fields).unwrap_or_default(), ctx)})
            }
            Action::Transition(t) => json!({"to_state": t.to_state}),
            Action::Assign(a) => json!({"users": a.users, "mode": a.mode}),
            Action::Comment(c) => json!({"body": r(&c.body)}),
            Action::CreateTask(c) => json!({"template": c.template, "as_subtask": c.as_subtask}),
            Action::Notify(n) => json!({"to": n.to, "message": r(&n.message)}),
            Action::Email(e) => json!({"to": e.to, "subject": r(&e.subject), "body": r(&e.body)}),
            Action::Http(h) => json!({
                "url": h.url,
                "method": h.method,
                "body": h.body.as_ref().map(|b| template::render_json(b, ctx)).unwrap_or_else(|| ctx.clone()),
            }),
            Action::Message(m) => {
                json!({"provider": m.provider, "channel": m.channel, "text": r(&m.text)})
            }
            Action::Script(_) => Value::Null,
            Action::Wait(w) => json!({"minutes": w.minutes}),
        }
    }

    fn script(&self, sp: &str) -> Result<Value> {
        let script = self
            .compiled
            .script(&format!("{sp}.action.source"))
            .ok_or_else(|| Error::invalid(sp, "script not compiled"))?;
        let null = Value::Null;
        let get = |k: &str| self.ctx.get(k).unwrap_or(&null);
        let inputs: Vec<(&str, &Value)> =
            crate::script::INPUTS.iter().map(|k| (*k, get(k))).collect();
        self.engine.inner.sandbox.run(script, &inputs)
    }

    async fn current_task(&self) -> Result<Task> {
        let id = self
            .exec
            .task_id
            .ok_or_else(|| Error::invalid("action", "this execution has no task"))?;
        Ok(self.engine.inner.pm.stores().tasks.get_task(id).await?)
    }

    async fn recipients_users(&self, to: &[Recipient]) -> Result<Vec<UserId>> {
        let mut users = BTreeSet::new();
        let need_task = to
            .iter()
            .any(|r| matches!(r, Recipient::Reporter | Recipient::Assignees | Recipient::Watchers));
        let task = if need_task { Some(self.current_task().await?) } else { None };
        for r in to {
            match r {
                Recipient::Reporter => users.extend(task.as_ref().map(|t| t.reporter)),
                Recipient::Assignees => {
                    users.extend(task.iter().flat_map(|t| t.assignees.iter().copied()))
                }
                Recipient::Watchers => {
                    if let Some(t) = &task {
                        let w = self.engine.inner.pm.stores().tasks.list_watchers(t.id).await?;
                        users.extend(w.into_iter().map(|w| w.user_id));
                    }
                }
                Recipient::Actor => users.extend(self.exec.actor.user()),
                Recipient::User(u) => {
                    users.insert(*u);
                }
                Recipient::Email(_) => {}
            }
        }
        Ok(users.into_iter().collect())
    }

    /// Performs one action's side effect. Task changes go through pm-core as the automation.
    async fn perform(
        &mut self,
        action: &Action,
        sp: &str,
        input: &Value,
        key: &str,
    ) -> Result<Value> {
        let inner = &self.engine.inner;
        let origin = self.origin();
        match action {
            Action::SetFields(_) | Action::Transition(_) | Action::Assign(_) => {
                let task = self.current_task().await?;
                let patch = patch_for(action, input, &task)?;
                if patch == TaskPatch::default() {
                    return Ok(json!({"changed": false}));
                }
                let mut probe = task.clone();
                if !patch.apply(&mut probe) {
                    // Already in the wanted state (e.g. a retry after the change committed).
                    return Ok(json!({"changed": false, "version": task.version}));
                }
                let t = inner.pm.update_task(&origin, task.id, task.version, patch).await?;
                Ok(json!({"changed": true, "version": t.version}))
            }
            Action::Comment(_) => {
                let task = self.current_task().await?;
                let author = match self.exec.actor.user() {
                    Some(u) => u,
                    None => self.workflow_author().await?,
                };
                let body = input["body"].as_str().unwrap_or_default();
                let at = pm_core::model::now();
                let comment = Comment {
                    id: pm_core::id::CommentId::new(),
                    task_id: task.id,
                    author,
                    body: Markdown::parse(body)?,
                    version: 1,
                    created_at: at,
                    updated_at: at,
                };
                let c = inner.pm.stores().comments.create_comment(&origin, &comment).await?;
                Ok(json!({"comment_id": c.id}))
            }
            Action::CreateTask(c) => {
                let source = self.current_task().await?;
                let request = InstantiateRequest {
                    template: TaskTemplateId(c.template),
                    project: source.project_id,
                    parent: c.as_subtask.then_some(source.id),
                    values: Default::default(),
                    reporter: Some(source.reporter),
                    source_task: Some(source),
                    idempotency_key: Some(key.to_string()),
                };
                let done = self.engine.instantiate(&origin, request).await?;
                let root = &done.tasks[0];
                Ok(json!({
                    "task_id": root.id,
                    "reference": root.reference,
                    "tasks": done.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
                    "workflows": done.workflows.iter().map(|w| w.id).collect::<Vec<_>>(),
                }))
            }
            Action::Notify(n) => {
                let notifier =
                    inner.ports.notifier.as_ref().ok_or_else(|| ports::missing("notifier"))?;
                let users = self.recipients_users(&n.to).await?;
                notifier
                    .notify(
                        &users,
                        self.exec.task_id,
                        input["message"].as_str().unwrap_or_default(),
                        key,
                    )
                    .await?;
                Ok(json!({"notified": users}))
            }
            Action::Email(e) => {
                let mailer = inner.ports.mailer.as_ref().ok_or_else(|| ports::missing("mailer"))?;
                let mut to: BTreeSet<String> =
                    e.to.iter()
                        .filter_map(|r| match r {
                            Recipient::Email(a) => Some(a.clone()),
                            _ => None,
                        })
                        .collect();
                for u in self.recipients_users(&e.to).await? {
                    if let Ok(user) = inner.pm.stores().directory.get_user(u).await {
                        to.insert(user.email.as_str().to_string());
                    }
                }
                if to.is_empty() {
                    return Ok(json!({"sent": false, "reason": "no recipient has an address"}));
                }
                let mail = Mail {
                    idempotency_key: key.into(),
                    to: to.into_iter().collect(),
                    subject: input["subject"].as_str().unwrap_or_default().into(),
                    body: input["body"].as_str().unwrap_or_default().into(),
                };
                mailer.send(&mail).await?;
                Ok(json!({"sent": true, "to": mail.to}))
            }
            Action::Http(h) => {
                let http =
                    inner.ports.http.as_ref().ok_or_else(|| ports::missing("HTTP sender"))?;
                let body = if matches!(h.method, HttpMethod::Get | HttpMethod::Delete) {
                    Vec::new()
                } else {
                    serde_json::to_vec(&input["body"]).unwrap_or_default()
                };
                let secret = inner
                    .stores
                    .workflows
                    .get_workflow(self.exec.workflow_id)
                    .await
                    .map(|w| w.webhook_secret)
                    .unwrap_or_default();
                let ts = pm_core::model::now().unix_timestamp();
                let id = format!("msg_{}", key.replace([':', '[', ']', '.', '#'], "_"));
                let request = OutboundRequest {
                    method: h.method,
                    url: h.url.clone(),
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        (
                            "webhook-signature".into(),
                            ports::standard_webhooks_signature(&secret, &id, ts, &body),
                        ),
                        ("webhook-id".into(), id),
                        ("webhook-timestamp".into(), ts.to_string()),
                    ],
                    body,
                };
                let response = http.send(&request).await?;
                Ok(json!({"status": response.status, "body": response.body}))
            }
            Action::Message(m) => {
                let sender = inner
                    .ports
                    .messages
                    .as_ref()
                    .ok_or_else(|| ports::missing("message sender"))?;
                sender
                    .send(
                        self.exec.org_id,
                        &m.provider,
                        &m.channel,
                        input["text"].as_str().unwrap_or_default(),
                        key,
                    )
                    .await
            }
            Action::Script(_) => self.script(sp),
            Action::Wait(_) => Ok(Value::Null),
        }
    }

    async fn workflow_author(&self) -> Result<UserId> {
        let w = self.engine.inner.stores.workflows.get_workflow(self.exec.workflow_id).await?;
        w.created_by.user().ok_or_else(|| {
            Error::invalid("action", "comments need a user: the workflow has no user creator")
        })
    }
}

fn patch_for(action: &Action, input: &Value, task: &Task) -> Result<TaskPatch> {
    let mut patch = TaskPatch::default();
    match action {
        Action::Transition(t) => patch.state_id = Some(t.to_state),
        Action::Assign(a) => {
            let mut set = task.assignees.clone();
            match a.mode {
                AssignMode::Add => set.extend(a.users.iter().copied()),
                AssignMode::Replace => set = a.users.iter().copied().collect(),
                AssignMode::Remove => set.retain(|u| !a.users.contains(u)),
            }
            patch.assignees = Some(set);
        }
        Action::SetFields(_) => {
            let fields = input["fields"].as_object().cloned().unwrap_or_default();
            for (name, v) in fields {
                let bad = |m: &str| Error::invalid(format!("fields.{name}"), m.to_string());
                match name.as_str() {
                    "title" => {
                        patch.title = Some(TaskTitle::parse(
                            v.as_str().ok_or_else(|| bad("must be a string"))?,
                        )?)
                    }
                    "description" => {
                        patch.description = Some(Markdown::parse(
                            v.as_str().ok_or_else(|| bad("must be a string"))?,
                        )?)
                    }
                    "priority" => {
                        patch.priority = Some(Priority::parse(
                            v.as_str().ok_or_else(|| bad("must be a string"))?,
                        )?)
                    }
                    "archived" => {
                        patch.archived = Some(v.as_bool().ok_or_else(|| bad("must be a boolean"))?)
                    }
                    "estimate" => {
                        patch.estimate = Some(match v {
                            Value::Null => None,
                            v => Some(
                                v.as_u64()
                                    .and_then(|n| u32::try_from(n).ok())
                                    .ok_or_else(|| bad("must be a whole number"))?,
                            ),
                        })
                    }
                    "due_date" | "start_date" => {
                        let d = match v {
                            Value::Null => None,
                            Value::String(s) if s.is_empty() => None,
                            Value::String(s) => Some(
                                time::Date::parse(
                                    &s,
                                    time::macros::format_description!("[year]-[month]-[day]"),
                                )
                                .map_err(|_| bad("must be a YYYY-MM-DD date"))?,
                            ),
                            _ => return Err(bad("must be a date string or null")),
                        };
                        if name == "due_date" {
                            patch.due_date = Some(d);
                        } else {
                            patch.start_date = Some(d);
                        }
                    }
                    other => {
                        let Some(id) = definition::custom_field(other) else {
                            return Err(bad("unknown field"));
                        };
                        let value = if v.is_null() {
                            None
                        } else {
                            Some(serde_json::from_value(v).map_err(|e| bad(&e.to_string()))?)
                        };
                        patch.custom_fields.insert(pm_core::id::FieldId(id), value);
                    }
                }
            }
        }
        _ => {}
    }
    Ok(patch)
}

//! Store traits: what pm-workflows persists, one trait per role.
//!
//! - [`WorkflowStore`]: workflows and their immutable versions (every definition change is a new
//!   version; executions point at the version they started with);
//! - [`ExecutionStore`]: executions and their steps (input, output, attempts, error) — the
//!   durable state an engine resumes from after a crash;
//! - [`TimerStore`]: durable timers (waits, approval timeouts), each fired by exactly one caller;
//! - [`ApprovalStore`]: approvals and their decisions;
//! - [`TemplateStore`]: task templates with their automation ([`TaskTemplate`]).
//!
//! Rules every adapter follows (the `pm_workflows::testing` suite checks them):
//!
//! - one execution per (workflow, trigger key): creating a second returns `false` — this is what
//!   makes at-least-once reading of the event log start each execution once;
//! - a step is keyed by (execution, key); `begin_step` counts attempts across restarts and
//!   `finish_step` is final (a finished step is never begun again);
//! - a timer is claimed (`claim_timer`) by at most one caller; a due timer and an execution are
//!   leased (`lease_due_timers`, `lease_execution`) to at most one owner at a time until the
//!   lease expires — this is what lets several engine instances share one database;
//! - a user decides an approval at most once, and a decision on a closed approval is a
//!   `Conflict`; the decision and the approval's new tallies commit together;
//! - workflow and template updates are optimistic (`expected_version`), a mismatch is
//!   `Conflict`; a template name is unique in its organization (`Conflict` otherwise).
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`) and [`postgres`] (feature `postgres`), tables
//! prefixed `wf_` with their own migrations table `_pm_workflows_migrations`.

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, TaskId, UserId, WorkflowId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::definition::Definition;
use crate::{Error, Result};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// Identifies an [`Execution`].
    ExecutionId
);
id_type!(
    /// Identifies an [`Approval`].
    ApprovalId
);
id_type!(
    /// Identifies a [`Timer`].
    TimerId
);
id_type!(
    /// Identifies a [`TaskTemplate`].
    TaskTemplateId
);

/// A task template: a task tree and the workflows that come with it (see
/// [`task_template`](crate::task_template)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTemplate {
    /// Identity.
    pub id: TaskTemplateId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Only instantiable into this project, when set.
    pub project_id: Option<ProjectId>,
    /// Name, 1–200 characters, unique in the organization.
    pub name: String,
    /// The document.
    pub spec: crate::task_template::TemplateSpec,
    /// Who created it.
    pub created_by: Actor,
    /// Optimistic-concurrency version (bumped by every change).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A workflow: who owns it, whether it runs, and its current definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// Identity (also the `Actor::Automation` id of its changes).
    pub id: WorkflowId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Only events of this project trigger it (all of the organization's when absent).
    pub project_id: Option<ProjectId>,
    /// Whether triggers start executions.
    pub enabled: bool,
    /// Version of the current definition (1, 2, …).
    pub definition_version: i64,
    /// The current definition.
    pub definition: Definition,
    /// Secret an incoming webhook must present.
    pub webhook_secret: String,
    /// Who created it.
    pub created_by: Actor,
    /// Optimistic-concurrency version of the record (bumped by every change).
    pub version: i64,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One immutable version of a workflow's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersion {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// 1, 2, …
    pub version: i64,
    /// The definition as of that version.
    pub definition: Definition,
    /// When it was saved.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Running (or interrupted by a crash: resumed at start).
    Running,
    /// Waiting for a timer or an approval.
    Waiting,
    /// Finished successfully.
    Succeeded,
    /// A step failed after its retries, or a limit was exceeded.
    Failed,
    /// Cancelled through the API.
    Cancelled,
    /// Not run: the cascade depth limit was reached (a workflow triggering itself).
    Loop,
}

impl ExecutionStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Waiting => "waiting",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Loop => "loop",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => ExecutionStatus::Running,
            "waiting" => ExecutionStatus::Waiting,
            "succeeded" => ExecutionStatus::Succeeded,
            "failed" => ExecutionStatus::Failed,
            "cancelled" => ExecutionStatus::Cancelled,
            "loop" => ExecutionStatus::Loop,
            other => return Err(Error::invalid("status", format!("unknown status {other:?}"))),
        })
    }

    /// Whether the execution is over.
    pub fn is_final(self) -> bool {
        !matches!(self, ExecutionStatus::Running | ExecutionStatus::Waiting)
    }
}

/// One run of a workflow version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Identity.
    pub id: ExecutionId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The definition version it runs.
    pub workflow_version: i64,
    /// Organization (for listing and authorization).
    pub org_id: OrgId,
    /// The task it is about, if any.
    pub task_id: Option<TaskId>,
    /// Status.
    pub status: ExecutionStatus,
    /// What started it, unique per workflow (`event:<id>`, `webhook:<delivery>`, …).
    pub trigger_key: String,
    /// Who caused it (the triggering event's actor, the webhook, the manual caller).
    pub actor: Actor,
    /// Cascade depth: 1 for a reaction to a person's change, +1 per automated hop.
    pub depth: u32,
    /// The inputs decisions are made on (event, task snapshot, trigger payload, `now`):
    /// stored so a resume or a replay decides exactly as the first run did.
    pub context: Value,
    /// Why it failed, for `failed` and `loop`.
    pub error: Option<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Begun, not finished (an attempt is under way, or the process died during it).
    Running,
    /// Waiting for a timer or an approval.
    Waiting,
    /// Finished; `output` holds its result (or the branch decision).
    Done,
    /// Failed after its last attempt.
    Failed,
}

impl StepStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Waiting => "waiting",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => StepStatus::Running,
            "waiting" => StepStatus::Waiting,
            "done" => StepStatus::Done,
            "failed" => StepStatus::Failed,
            other => {
                return Err(Error::invalid("status", format!("unknown step status {other:?}")));
            }
        })
    }
}

/// The durable record of one step of one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The execution.
    pub execution_id: ExecutionId,
    /// The step's instance key: its JSON path, with `#n` after a for-each item
    /// (`steps[2]#1.steps[0]`). Also the side effect's idempotency key, prefixed with the
    /// execution id.
    pub key: String,
    /// Status.
    pub status: StepStatus,
    /// What the step was given (rendered action parameters).
    pub input: Value,
    /// What it produced (action result, branch decision, approval outcome).
    pub output: Value,
    /// Attempts so far (across restarts).
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When it was first begun.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it finished.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// A durable timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    /// Identity.
    pub id: TimerId,
    /// Unique purpose key (`wait:<execution>:<step>`, `approval:<id>:<stage>`): arming twice
    /// is a no-op.
    pub key: String,
    /// The execution it resumes, if any.
    pub execution_id: Option<ExecutionId>,
    /// The workflow it belongs to.
    pub workflow_id: WorkflowId,
    /// When it fires.
    #[serde(with = "time::serde::rfc3339")]
    pub fire_at: OffsetDateTime,
    /// What to do when it fires.
    pub payload: Value,
}

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for decisions.
    Pending,
    /// Reached its quorum.
    Approved,
    /// Can no longer reach its quorum.
    Rejected,
    /// Timed out (escalation runs).
    TimedOut,
    /// The execution was cancelled.
    Cancelled,
}

impl ApprovalStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::TimedOut => "timed_out",
            ApprovalStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => ApprovalStatus::Pending,
            "approved" => ApprovalStatus::Approved,
            "rejected" => ApprovalStatus::Rejected,
            "timed_out" => ApprovalStatus::TimedOut,
            "cancelled" => ApprovalStatus::Cancelled,
            other => {
                return Err(Error::invalid("status", format!("unknown approval status {other:?}")));
            }
        })
    }
}

/// One person's decision on an approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    /// Who decided.
    pub user_id: UserId,
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// Why.
    pub comment: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One stage of an approval step of one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Identity.
    pub id: ApprovalId,
    /// The execution waiting on it.
    pub execution_id: ExecutionId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// Organization.
    pub org_id: OrgId,
    /// The task concerned.
    pub task_id: Option<TaskId>,
    /// The approval step's instance key.
    pub step_key: String,
    /// Stage index (0-based).
    pub stage: u32,
    /// Status.
    pub status: ApprovalStatus,
    /// Who may decide (the stage's spec; rights are checked against it at decision time).
    pub approvers: crate::definition::Approvers,
    /// Who could decide when it was requested (M); rights are checked again at decision time.
    pub eligible: Vec<UserId>,
    /// Approvals needed (N).
    pub needed: u32,
    /// Whoever caused the execution, barred from deciding unless self-approval is allowed.
    pub requester: Option<UserId>,
    /// Whether the requester may decide.
    pub allow_self_approval: bool,
    /// When it times out.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deadline: Option<OffsetDateTime>,
    /// Decisions so far, oldest first.
    pub decisions: Vec<ApprovalDecision>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Approval {
    /// Approvals so far.
    pub fn approvals(&self) -> usize {
        self.decisions.iter().filter(|d| d.approve).count()
    }

    /// The status the decisions imply: approved at the quorum, rejected once the quorum is out
    /// of reach, pending otherwise.
    pub fn tally(&self) -> ApprovalStatus {
        let approvals = self.approvals();
        let rejections = self.decisions.len() - approvals;
        let eligible = self.eligible.len().max(self.needed as usize);
        if approvals >= self.needed as usize {
            ApprovalStatus::Approved
        } else if eligible.saturating_sub(rejections) < self.needed as usize {
            ApprovalStatus::Rejected
        } else {
            ApprovalStatus::Pending
        }
    }
}

/// Workflows and their versions.
#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Stores a new workflow and its version 1.
    async fn create_workflow(&self, workflow: &Workflow) -> Result<()>;
    /// One workflow.
    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow>;
    /// An organization's workflows, oldest first.
    async fn list_workflows(&self, org: OrgId) -> Result<Vec<Workflow>>;
    /// Every enabled workflow (the engine's dispatch index).
    async fn list_enabled(&self) -> Result<Vec<Workflow>>;
    /// Saves a new definition as the next version, at `expected_version` of the record.
    async fn update_definition(
        &self,
        id: WorkflowId,
        expected_version: i64,
        definition: &Definition,
        at: OffsetDateTime,
    ) -> Result<Workflow>;
    /// Enables or disables, at `expected_version` of the record.
    async fn set_enabled(
        &self,
        id: WorkflowId,
        expected_version: i64,
        enabled: bool,
        at: OffsetDateTime,
    ) -> Result<Workflow>;
    /// Deletes a workflow with its versions (executions stay as history).
    async fn delete_workflow(&self, id: WorkflowId) -> Result<()>;
    /// One version of the definition.
    async fn get_version(&self, id: WorkflowId, version: i64) -> Result<WorkflowVersion>;
    /// Every version, oldest first.
    async fn list_versions(&self, id: WorkflowId) -> Result<Vec<WorkflowVersion>>;
}

/// Executions and their steps.
#[async_trait]
pub trait ExecutionStore: Send + Sync {
    /// Stores a new execution unless one exists for the same (workflow, trigger key); returns
    /// whether it was created.
    async fn create_execution(&self, execution: &Execution) -> Result<bool>;
    /// One execution.
    async fn get_execution(&self, id: ExecutionId) -> Result<Execution>;
    /// Executions of an organization (optionally one workflow), newest first, up to `limit`.
    async fn list_executions(
        &self,
        org: OrgId,
        workflow: Option<WorkflowId>,
        limit: u32,
    ) -> Result<Vec<Execution>>;
    /// Executions with status `running` (to resume at start), oldest first.
    async fn list_running(&self, limit: u32) -> Result<Vec<Execution>>;
    /// Sets the status (and error); `expected` guards against racing transitions: the change
    /// applies only when the current status is one of them, and the result says whether it did.
    async fn set_status(
        &self,
        id: ExecutionId,
        expected: &[ExecutionStatus],
        status: ExecutionStatus,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<bool>;
    /// The steps recorded so far, by key order.
    async fn list_steps(&self, id: ExecutionId) -> Result<Vec<StepRecord>>;
    /// Begins an attempt of a step: creates the record (attempt 1) or counts one more attempt;
    /// records `input` and `status`. Returns the record. A finished step is `Conflict`.
    async fn begin_step(
        &self,
        id: ExecutionId,
        key: &str,
        status: StepStatus,
        input: &Value,
        at: OffsetDateTime,
    ) -> Result<StepRecord>;
    /// Finishes a step (`done` or `failed`) with its output and error; final.
    async fn finish_step(
        &self,
        id: ExecutionId,
        key: &str,
        status: StepStatus,
        output: &Value,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Forgets failed steps so a retried execution attempts them again.
    async fn reset_failed_steps(&self, id: ExecutionId) -> Result<u64>;
    /// Takes or renews the lease on driving an execution: granted to `owner` until `until` when
    /// nobody else holds an unexpired lease (at `now`); returns whether it was granted.
    async fn lease_execution(
        &self,
        id: ExecutionId,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool>;
    /// Gives up `owner`'s lease on an execution (nothing happens if another owner holds it).
    async fn release_execution(&self, id: ExecutionId, owner: &str) -> Result<()>;
}

/// Durable timers.
#[async_trait]
pub trait TimerStore: Send + Sync {
    /// Arms a timer unless one with the same key exists; returns whether it was armed.
    async fn arm_timer(&self, timer: &Timer) -> Result<bool>;
    /// Timers due at `now`, earliest first (leased or not: for monitoring).
    async fn due_timers(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Timer>>;
    /// Leases up to `limit` timers due at `now` to `owner` until `until` and returns them,
    /// earliest first: only timers nobody else holds an unexpired lease on, so concurrent callers
    /// get disjoint sets.
    async fn lease_due_timers(
        &self,
        now: OffsetDateTime,
        owner: &str,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Timer>>;
    /// The earliest fire time of any armed timer.
    async fn next_fire_at(&self) -> Result<Option<OffsetDateTime>>;
    /// Claims (deletes) a timer; only one caller gets `true`.
    async fn claim_timer(&self, id: TimerId) -> Result<bool>;
    /// Disarms a timer by key (e.g. an approval decided before its timeout).
    async fn disarm_timer(&self, key: &str) -> Result<bool>;
}

/// Approvals and decisions.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Stores a new approval unless one exists for the same (execution, step, stage); returns
    /// the stored one either way.
    async fn create_approval(&self, approval: &Approval) -> Result<Approval>;
    /// One approval.
    async fn get_approval(&self, id: ApprovalId) -> Result<Approval>;
    /// The approval of (execution, step, stage), if requested.
    async fn find_approval(
        &self,
        execution: ExecutionId,
        step_key: &str,
        stage: u32,
    ) -> Result<Option<Approval>>;
    /// Approvals of an organization, pending only if asked, newest first.
    async fn list_approvals(
        &self,
        org: OrgId,
        pending_only: bool,
        limit: u32,
    ) -> Result<Vec<Approval>>;
    /// Records a decision and the resulting status in one transaction. `Conflict` when the
    /// approval is no longer pending or the user already decided.
    async fn decide(&self, id: ApprovalId, decision: &ApprovalDecision) -> Result<Approval>;
    /// Closes a pending approval (`timed_out`, `cancelled`); returns whether it was pending.
    async fn close_approval(&self, id: ApprovalId, status: ApprovalStatus) -> Result<bool>;
}

/// Task templates.
#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// Stores a new template; `Conflict` when its organization has one of the same name.
    async fn create_template(&self, template: &TaskTemplate) -> Result<()>;
    /// One template.
    async fn get_template(&self, id: TaskTemplateId) -> Result<TaskTemplate>;
    /// An organization's templates, by name.
    async fn list_templates(&self, org: OrgId) -> Result<Vec<TaskTemplate>>;
    /// Replaces name, project and document at `expected_version` (`version` + 1 on success);
    /// `Conflict` on a stale version or a taken name.
    async fn update_template(
        &self,
        template: &TaskTemplate,
        expected_version: i64,
    ) -> Result<TaskTemplate>;
    /// Deletes a template.
    async fn delete_template(&self, id: TaskTemplateId) -> Result<()>;
}

/// Schema management.
#[async_trait]
pub trait WorkflowAdmin: Send + Sync {
    /// Applies pending migrations (tracked in `_pm_workflows_migrations`).
    async fn migrate(&self) -> Result<()>;
    /// `sqlite`, `postgres`, or a host's name.
    fn backend(&self) -> &'static str;
}

/// Every pm-workflows store, usually one adapter behind all of them.
#[derive(Clone)]
pub struct WorkflowStores {
    /// Workflows and versions.
    pub workflows: Arc<dyn WorkflowStore>,
    /// Executions and steps.
    pub executions: Arc<dyn ExecutionStore>,
    /// Timers.
    pub timers: Arc<dyn TimerStore>,
    /// Approvals.
    pub approvals: Arc<dyn ApprovalStore>,
    /// Task templates.
    pub templates: Arc<dyn TemplateStore>,
    /// Migrations.
    pub admin: Arc<dyn WorkflowAdmin>,
}

impl std::fmt::Debug for WorkflowStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowStores").field("backend", &self.admin.backend()).finish()
    }
}

impl WorkflowStores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: WorkflowStore
            + ExecutionStore
            + TimerStore
            + ApprovalStore
            + TemplateStore
            + WorkflowAdmin
            + 'static,
    {
        Self {
            workflows: s.clone(),
            executions: s.clone(),
            timers: s.clone(),
            approvals: s.clone(),
            templates: s.clone(),
            admin: s,
        }
    }
}

/// Opens the built-in adapter for `url` (`sqlite://…` or `postgres://…`). Does not migrate.
pub async fn open(url: &str) -> Result<WorkflowStores> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        return Ok(WorkflowStores::from_adapter(Arc::new(
            sqlite::SqliteWorkflowStore::connect(url).await?,
        )));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(WorkflowStores::from_adapter(Arc::new(
            postgres::PostgresWorkflowStore::connect(url).await?,
        )));
    }
    Err(Error::invalid("database_url", "no enabled workflow store adapter for this URL"))
}

/// pm-workflows' PostgreSQL stores over an existing pool, for a host that shares one pool between all
/// the crates on one database (pm-server does: one pool per process, see its `db` module) rather
/// than letting each [`open`] its own. Does not migrate; call `stores.admin.migrate()`.
#[cfg(feature = "postgres")]
pub fn postgres_stores(pool: sqlx::postgres::PgPool) -> WorkflowStores {
    WorkflowStores::from_adapter(Arc::new(postgres::PostgresWorkflowStore::from_pool(pool)))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod shared {
    use crate::Error;

    pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Storage(format!("stored {what} is invalid: {e}").into())
    }

    pub(crate) fn st(e: sqlx::Error) -> Error {
        Error::storage(e)
    }

    pub(crate) fn definition(json: &str) -> crate::Result<crate::Definition> {
        serde_json::from_str(json).map_err(|e| corrupt("definition", e))
    }

    pub(crate) fn json(text: &str) -> crate::Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| corrupt("json", e))
    }

    pub(crate) fn stale(entity: &str) -> Error {
        Error::Conflict(format!("{entity} changed since it was read"))
    }
}

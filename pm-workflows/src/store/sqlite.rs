//! SQLite adapter (feature `sqlite`): the embedded default.
//!
//! One writer connection plus a read pool over a WAL database — normally the same file as
//! pm-core's store. Multi-statement writes (a workflow with its first version, a definition
//! change with its new version, a decision with its approval's new status) are one transaction
//! on the writer; idempotency comes from unique keys (`INSERT … ON CONFLICT DO NOTHING`).
//!
//! Storage conventions (see `migrations/sqlite`): ids are hyphenated UUID text, timestamps are
//! integer microseconds, JSON is text. Row structs are private; conversion into domain types
//! happens in `TryFrom` impls so corrupt rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{OrgId, UserId, WorkflowId};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::definition::Definition;
use crate::store::*;
use crate::{Error, Result};

/// The SQLite workflow store. Cheap to clone (pools are reference-counted).
#[derive(Debug, Clone)]
pub struct SqliteWorkflowStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteWorkflowStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Normal);
        if url.contains(":memory:") || url.contains("mode=memory") {
            // An in-memory database lives as long as its one connection: pin it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await
                .map_err(st)?;
            return Ok(Self::from_pools(pool.clone(), pool));
        }
        let opts = opts.journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(st)?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(2)
            .connect_with(opts.read_only(true))
            .await
            .map_err(st)?;
        Ok(Self::from_pools(writer, reader))
    }

    /// Wraps existing pools (a writer with one connection, and a reader pool; may be the same).
    pub fn from_pools(writer: SqlitePool, reader: SqlitePool) -> Self {
        Self { writer, reader }
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    pm_core::query::micros(t)
}

fn from_micros(us: i64) -> Result<OffsetDateTime> {
    pm_core::query::from_micros(us).map_err(|e| corrupt("timestamp", e))
}

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn parse_id<T: From<Uuid>>(s: &str) -> Result<T> {
    Uuid::parse_str(s).map(T::from).map_err(|e| corrupt("id", e))
}

fn parse_opt<T: From<Uuid>>(s: Option<&str>) -> Result<Option<T>> {
    s.map(parse_id).transpose()
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: String,
    org_id: String,
    project_id: Option<String>,
    enabled: i64,
    definition_version: i64,
    definition: String,
    webhook_secret: String,
    created_by_type: String,
    created_by_id: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<WorkflowRow> for Workflow {
    type Error = Error;
    fn try_from(r: WorkflowRow) -> Result<Self> {
        let by: Option<Uuid> = parse_opt(r.created_by_id.as_deref())?;
        Ok(Workflow {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            project_id: parse_opt(r.project_id.as_deref())?,
            enabled: r.enabled != 0,
            definition_version: r.definition_version,
            definition: definition(&r.definition)?,
            webhook_secret: r.webhook_secret,
            created_by: Actor::from_parts(&r.created_by_type, by)
                .map_err(|e| corrupt("actor", e))?,
            version: r.version,
            created_at: from_micros(r.created_at)?,
            updated_at: from_micros(r.updated_at)?,
        })
    }
}

macro_rules! workflow_select {
    () => {
        "SELECT w.id, w.org_id, w.project_id, w.enabled, \
     w.definition_version, v.definition, w.webhook_secret, w.created_by_type, w.created_by_id, \
     w.version, w.created_at, w.updated_at \
     FROM wf_workflows w JOIN wf_workflow_versions v \
     ON v.workflow_id = w.id AND v.version = w.definition_version"
    };
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    workflow_id: String,
    version: i64,
    definition: String,
    created_at: i64,
}

impl TryFrom<VersionRow> for WorkflowVersion {
    type Error = Error;
    fn try_from(r: VersionRow) -> Result<Self> {
        Ok(WorkflowVersion {
            workflow_id: parse_id(&r.workflow_id)?,
            version: r.version,
            definition: definition(&r.definition)?,
            created_at: from_micros(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ExecutionRow {
    id: String,
    workflow_id: String,
    workflow_version: i64,
    org_id: String,
    task_id: Option<String>,
    status: String,
    trigger_key: String,
    actor_type: String,
    actor_id: Option<String>,
    depth: i64,
    context: String,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = Error;
    fn try_from(r: ExecutionRow) -> Result<Self> {
        let actor_id: Option<Uuid> = parse_opt(r.actor_id.as_deref())?;
        Ok(Execution {
            id: ExecutionId(parse_id(&r.id)?),
            workflow_id: parse_id(&r.workflow_id)?,
            workflow_version: r.workflow_version,
            org_id: parse_id(&r.org_id)?,
            task_id: parse_opt(r.task_id.as_deref())?,
            status: ExecutionStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            trigger_key: r.trigger_key,
            actor: Actor::from_parts(&r.actor_type, actor_id).map_err(|e| corrupt("actor", e))?,
            depth: u32::try_from(r.depth).map_err(|e| corrupt("depth", e))?,
            context: json(&r.context)?,
            error: r.error,
            created_at: from_micros(r.created_at)?,
            updated_at: from_micros(r.updated_at)?,
        })
    }
}

macro_rules! execution_select {
    () => {
        "SELECT id, workflow_id, workflow_version, org_id, task_id, \
     status, trigger_key, actor_type, actor_id, depth, context, error, created_at, updated_at \
     FROM wf_executions"
    };
}

#[derive(sqlx::FromRow)]
struct StepRow {
    execution_id: String,
    key: String,
    status: String,
    input: String,
    output: String,
    attempts: i64,
    error: Option<String>,
    started_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = Error;
    fn try_from(r: StepRow) -> Result<Self> {
        Ok(StepRecord {
            execution_id: ExecutionId(parse_id(&r.execution_id)?),
            key: r.key,
            status: StepStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            input: json(&r.input)?,
            output: json(&r.output)?,
            attempts: u32::try_from(r.attempts).map_err(|e| corrupt("attempts", e))?,
            error: r.error,
            started_at: from_micros(r.started_at)?,
            finished_at: r.finished_at.map(from_micros).transpose()?,
        })
    }
}

macro_rules! step_select {
    () => {
        "SELECT execution_id, key, status, input, output, attempts, error, \
     started_at, finished_at FROM wf_steps"
    };
}

#[derive(sqlx::FromRow)]
struct TimerRow {
    id: String,
    key: String,
    execution_id: Option<String>,
    workflow_id: String,
    fire_at: i64,
    payload: String,
}

impl TryFrom<TimerRow> for Timer {
    type Error = Error;
    fn try_from(r: TimerRow) -> Result<Self> {
        let execution: Option<Uuid> = parse_opt(r.execution_id.as_deref())?;
        Ok(Timer {
            id: TimerId(parse_id(&r.id)?),
            key: r.key,
            execution_id: execution.map(ExecutionId),
            workflow_id: parse_id(&r.workflow_id)?,
            fire_at: from_micros(r.fire_at)?,
            payload: json(&r.payload)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ApprovalRow {
    id: String,
    execution_id: String,
    workflow_id: String,
    org_id: String,
    task_id: Option<String>,
    step_key: String,
    stage: i64,
    status: String,
    approvers: String,
    eligible: String,
    needed: i64,
    requester: Option<String>,
    allow_self_approval: i64,
    deadline: Option<i64>,
    created_at: i64,
}

#[derive(sqlx::FromRow)]
struct DecisionRow {
    user_id: String,
    approve: i64,
    comment: Option<String>,
    at: i64,
}

impl ApprovalRow {
    fn into_approval(self, decisions: Vec<DecisionRow>) -> Result<Approval> {
        Ok(Approval {
            id: ApprovalId(parse_id(&self.id)?),
            execution_id: ExecutionId(parse_id(&self.execution_id)?),
            workflow_id: parse_id(&self.workflow_id)?,
            org_id: parse_id(&self.org_id)?,
            task_id: parse_opt(self.task_id.as_deref())?,
            step_key: self.step_key,
            stage: u32::try_from(self.stage).map_err(|e| corrupt("stage", e))?,
            status: ApprovalStatus::parse(&self.status).map_err(|e| corrupt("status", e))?,
            approvers: serde_json::from_str(&self.approvers)
                .map_err(|e| corrupt("approvers", e))?,
            eligible: serde_json::from_str(&self.eligible).map_err(|e| corrupt("eligible", e))?,
            needed: u32::try_from(self.needed).map_err(|e| corrupt("needed", e))?,
            requester: parse_opt(self.requester.as_deref())?,
            allow_self_approval: self.allow_self_approval != 0,
            deadline: self.deadline.map(from_micros).transpose()?,
            decisions: decisions
                .into_iter()
                .map(|d| {
                    Ok(ApprovalDecision {
                        user_id: parse_id::<UserId>(&d.user_id)?,
                        approve: d.approve != 0,
                        comment: d.comment,
                        at: from_micros(d.at)?,
                    })
                })
                .collect::<Result<_>>()?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

macro_rules! approval_select {
    () => {
        "SELECT id, execution_id, workflow_id, org_id, task_id, step_key, \
     stage, status, approvers, eligible, needed, requester, allow_self_approval, deadline, created_at \
     FROM wf_approvals"
    };
}

impl SqliteWorkflowStore {
    async fn approval_where<'e, E>(
        &self,
        exec: E,
        row: Option<ApprovalRow>,
    ) -> Result<Option<Approval>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let Some(row) = row else { return Ok(None) };
        let decisions: Vec<DecisionRow> = sqlx::query_as(
            "SELECT user_id, approve, comment, at FROM wf_approval_decisions \
             WHERE approval_id = ? ORDER BY at, user_id",
        )
        .bind(&row.id)
        .fetch_all(exec)
        .await
        .map_err(st)?;
        row.into_approval(decisions).map(Some)
    }
}

#[async_trait]
impl WorkflowStore for SqliteWorkflowStore {
    async fn create_workflow(&self, w: &Workflow) -> Result<()> {
        // IMMEDIATE: take the write lock up front (waiting up to the busy timeout); a deferred
        // transaction that read first fails at once when another writer on the file (pm-core's,
        // another crate's, another process's) committed meanwhile.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query(
            "INSERT INTO wf_workflows (id, org_id, project_id, enabled, definition_version, \
             webhook_secret, created_by_type, created_by_id, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(w.id))
        .bind(id_text(w.org_id))
        .bind(w.project_id.map(id_text))
        .bind(w.enabled as i64)
        .bind(w.definition_version)
        .bind(&w.webhook_secret)
        .bind(w.created_by.kind())
        .bind(w.created_by.id().map(id_text))
        .bind(w.version)
        .bind(micros(w.created_at))
        .bind(micros(w.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Error::Conflict("a workflow with this id already exists".into())
            }
            _ => st(e),
        })?;
        sqlx::query(
            "INSERT INTO wf_workflow_versions (workflow_id, version, definition, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(id_text(w.id))
        .bind(w.definition_version)
        .bind(json_text(&w.definition))
        .bind(micros(w.created_at))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        let row: Option<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.id = ?"))
                .bind(id_text(id))
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow"))?.try_into()
    }

    async fn list_workflows(&self, org: OrgId) -> Result<Vec<Workflow>> {
        let rows: Vec<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.org_id = ? ORDER BY w.id"))
                .bind(id_text(org))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn list_enabled(&self) -> Result<Vec<Workflow>> {
        let rows: Vec<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.enabled = 1 ORDER BY w.id"))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn update_definition(
        &self,
        id: WorkflowId,
        expected_version: i64,
        def: &Definition,
        at: OffsetDateTime,
    ) -> Result<Workflow> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let current: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, definition_version FROM wf_workflows WHERE id = ?")
                .bind(id_text(id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let (version, def_version) = current.ok_or_else(|| Error::not_found("workflow"))?;
        if version != expected_version {
            return Err(stale("workflow"));
        }
        sqlx::query(
            "INSERT INTO wf_workflow_versions (workflow_id, version, definition, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(id_text(id))
        .bind(def_version + 1)
        .bind(json_text(def))
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        sqlx::query(
            "UPDATE wf_workflows SET definition_version = ?, version = version + 1, \
             updated_at = ? WHERE id = ?",
        )
        .bind(def_version + 1)
        .bind(micros(at))
        .bind(id_text(id))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        self.get_workflow_on_writer(id).await
    }

    async fn set_enabled(
        &self,
        id: WorkflowId,
        expected_version: i64,
        enabled: bool,
        at: OffsetDateTime,
    ) -> Result<Workflow> {
        let done = sqlx::query(
            "UPDATE wf_workflows SET enabled = ?, version = version + 1, updated_at = ? \
             WHERE id = ? AND version = ?",
        )
        .bind(enabled as i64)
        .bind(micros(at))
        .bind(id_text(id))
        .bind(expected_version)
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            // Tell "missing" from "stale".
            self.get_workflow_on_writer(id).await?;
            return Err(stale("workflow"));
        }
        self.get_workflow_on_writer(id).await
    }

    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        sqlx::query("DELETE FROM wf_timers WHERE workflow_id = ? AND execution_id IS NULL")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        let done = sqlx::query("DELETE FROM wf_workflows WHERE id = ?")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("workflow"));
        }
        tx.commit().await.map_err(st)
    }

    async fn get_version(&self, id: WorkflowId, version: i64) -> Result<WorkflowVersion> {
        let row: Option<VersionRow> = sqlx::query_as(
            "SELECT workflow_id, version, definition, created_at FROM wf_workflow_versions \
             WHERE workflow_id = ? AND version = ?",
        )
        .bind(id_text(id))
        .bind(version)
        .fetch_optional(&self.reader)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow version"))?.try_into()
    }

    async fn list_versions(&self, id: WorkflowId) -> Result<Vec<WorkflowVersion>> {
        let rows: Vec<VersionRow> = sqlx::query_as(
            "SELECT workflow_id, version, definition, created_at FROM wf_workflow_versions \
             WHERE workflow_id = ? ORDER BY version",
        )
        .bind(id_text(id))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        if rows.is_empty() {
            return Err(Error::not_found("workflow"));
        }
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

impl SqliteWorkflowStore {
    /// Reads a workflow on the writer, so a caller sees its own write even before the WAL
    /// checkpoint reaches the read pool's snapshot.
    async fn get_workflow_on_writer(&self, id: WorkflowId) -> Result<Workflow> {
        let row: Option<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.id = ?"))
                .bind(id_text(id))
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow"))?.try_into()
    }
}

#[async_trait]
impl ExecutionStore for SqliteWorkflowStore {
    async fn create_execution(&self, e: &Execution) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO wf_executions (id, workflow_id, workflow_version, org_id, task_id, \
             status, trigger_key, actor_type, actor_id, depth, context, error, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (workflow_id, trigger_key) DO NOTHING",
        )
        .bind(id_text(e.id.0))
        .bind(id_text(e.workflow_id))
        .bind(e.workflow_version)
        .bind(id_text(e.org_id))
        .bind(e.task_id.map(id_text))
        .bind(e.status.as_str())
        .bind(&e.trigger_key)
        .bind(e.actor.kind())
        .bind(e.actor.id().map(id_text))
        .bind(e.depth as i64)
        .bind(json_text(&e.context))
        .bind(e.error.as_deref())
        .bind(micros(e.created_at))
        .bind(micros(e.updated_at))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_execution(&self, id: ExecutionId) -> Result<Execution> {
        // On the writer: the engine reads back what it has just written.
        let row: Option<ExecutionRow> =
            sqlx::query_as(concat!(execution_select!(), " WHERE id = ?"))
                .bind(id_text(id.0))
                .fetch_optional(&self.writer)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("execution"))?.try_into()
    }

    async fn list_executions(
        &self,
        org: OrgId,
        workflow: Option<WorkflowId>,
        limit: u32,
    ) -> Result<Vec<Execution>> {
        let rows: Vec<ExecutionRow> = match workflow {
            Some(w) => sqlx::query_as(concat!(
                execution_select!(),
                " WHERE org_id = ? AND workflow_id = ? ORDER BY id DESC LIMIT ?"
            ))
            .bind(id_text(org))
            .bind(id_text(w))
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await
            .map_err(st)?,
            None => sqlx::query_as(concat!(
                execution_select!(),
                " WHERE org_id = ? ORDER BY id DESC LIMIT ?"
            ))
            .bind(id_text(org))
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await
            .map_err(st)?,
        };
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn list_running(&self, limit: u32) -> Result<Vec<Execution>> {
        let rows: Vec<ExecutionRow> = sqlx::query_as(concat!(
            execution_select!(),
            " WHERE status = 'running' ORDER BY id LIMIT ?"
        ))
        .bind(limit as i64)
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn set_status(
        &self,
        id: ExecutionId,
        expected: &[ExecutionStatus],
        status: ExecutionStatus,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<bool> {
        // The expected set goes in as a JSON array so the SQL stays static.
        let allowed = json_text(&expected.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let done = sqlx::query(
            "UPDATE wf_executions SET status = ?, error = ?, updated_at = ? \
             WHERE id = ? AND status IN (SELECT value FROM json_each(?))",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(micros(at))
        .bind(id_text(id.0))
        .bind(allowed)
        .execute(&self.writer)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            self.get_execution(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn list_steps(&self, id: ExecutionId) -> Result<Vec<StepRecord>> {
        let rows: Vec<StepRow> =
            sqlx::query_as(concat!(step_select!(), " WHERE execution_id = ? ORDER BY key"))
                .bind(id_text(id.0))
                .fetch_all(&self.writer)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn begin_step(
        &self,
        id: ExecutionId,
        key: &str,
        status: StepStatus,
        input: &Value,
        at: OffsetDateTime,
    ) -> Result<StepRecord> {
        let row: Option<StepRow> = sqlx::query_as(
            "INSERT INTO wf_steps (execution_id, key, status, input, output, attempts, error, \
             started_at, finished_at) VALUES (?, ?, ?, ?, 'null', 1, NULL, ?, NULL) \
             ON CONFLICT (execution_id, key) DO UPDATE SET attempts = attempts + 1, \
             status = excluded.status, input = excluded.input \
             WHERE wf_steps.status IN ('running', 'waiting') \
             RETURNING execution_id, key, status, input, output, attempts, error, started_at, \
             finished_at",
        )
        .bind(id_text(id.0))
        .bind(key)
        .bind(status.as_str())
        .bind(json_text(input))
        .bind(micros(at))
        .fetch_optional(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                Error::not_found("execution")
            }
            _ => st(e),
        })?;
        row.ok_or_else(|| Error::Conflict(format!("step {key} is already finished")))?.try_into()
    }

    async fn finish_step(
        &self,
        id: ExecutionId,
        key: &str,
        status: StepStatus,
        output: &Value,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        // Upsert: a branch decision is recorded without a begin.
        let done = sqlx::query(
            "INSERT INTO wf_steps (execution_id, key, status, input, output, attempts, error, \
             started_at, finished_at) VALUES (?, ?, ?, 'null', ?, 0, ?, ?, ?) \
             ON CONFLICT (execution_id, key) DO UPDATE SET status = excluded.status, \
             output = excluded.output, error = excluded.error, finished_at = excluded.finished_at \
             WHERE wf_steps.status IN ('running', 'waiting')",
        )
        .bind(id_text(id.0))
        .bind(key)
        .bind(status.as_str())
        .bind(json_text(output))
        .bind(error)
        .bind(micros(at))
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                Error::not_found("execution")
            }
            _ => st(e),
        })?;
        if done.rows_affected() == 0 {
            return Err(Error::Conflict(format!("step {key} is already finished")));
        }
        Ok(())
    }

    async fn lease_execution(
        &self,
        id: ExecutionId,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE wf_executions SET lease_owner = ?, lease_until = ? WHERE id = ? \
             AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
        )
        .bind(owner)
        .bind(micros(until))
        .bind(id_text(id.0))
        .bind(owner)
        .bind(micros(now))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_execution(&self, id: ExecutionId, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE wf_executions SET lease_owner = NULL, lease_until = NULL \
             WHERE id = ? AND lease_owner = ?",
        )
        .bind(id_text(id.0))
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn reset_failed_steps(&self, id: ExecutionId) -> Result<u64> {
        let done = sqlx::query("DELETE FROM wf_steps WHERE execution_id = ? AND status = 'failed'")
            .bind(id_text(id.0))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl TimerStore for SqliteWorkflowStore {
    async fn arm_timer(&self, t: &Timer) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO wf_timers (id, key, execution_id, workflow_id, fire_at, payload) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(id_text(t.id.0))
        .bind(&t.key)
        .bind(t.execution_id.map(|e| id_text(e.0)))
        .bind(id_text(t.workflow_id))
        .bind(micros(t.fire_at))
        .bind(json_text(&t.payload))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn lease_due_timers(
        &self,
        now: OffsetDateTime,
        owner: &str,
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Timer>> {
        // Polled every second: read first, so an idle engine does not take the write lock (a
        // write there makes pm-core's transactions on the same file meet SQLITE_BUSY more often).
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM wf_timers WHERE fire_at <= ? \
             AND (lease_until IS NULL OR lease_until < ? OR lease_owner = ?) LIMIT 1",
        )
        .bind(micros(now))
        .bind(micros(now))
        .bind(owner)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        // One writer connection: the UPDATE … RETURNING is atomic against other callers.
        let rows: Vec<TimerRow> = sqlx::query_as(
            "UPDATE wf_timers SET lease_owner = ?, lease_until = ? WHERE id IN ( \
             SELECT id FROM wf_timers WHERE fire_at <= ? \
             AND (lease_until IS NULL OR lease_until < ? OR lease_owner = ?) \
             ORDER BY fire_at, id LIMIT ?) \
             RETURNING id, key, execution_id, workflow_id, fire_at, payload",
        )
        .bind(owner)
        .bind(micros(until))
        .bind(micros(now))
        .bind(micros(now))
        .bind(owner)
        .bind(limit as i64)
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        let mut timers: Vec<Timer> =
            rows.into_iter().map(TryInto::try_into).collect::<Result<_>>()?;
        timers.sort_by_key(|t| (t.fire_at, t.id));
        Ok(timers)
    }

    async fn due_timers(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Timer>> {
        let rows: Vec<TimerRow> = sqlx::query_as(
            "SELECT id, key, execution_id, workflow_id, fire_at, payload FROM wf_timers \
             WHERE fire_at <= ? ORDER BY fire_at, id LIMIT ?",
        )
        .bind(micros(now))
        .bind(limit as i64)
        .fetch_all(&self.writer)
        .await
        .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn next_fire_at(&self) -> Result<Option<OffsetDateTime>> {
        let at: Option<i64> = sqlx::query_scalar("SELECT MIN(fire_at) FROM wf_timers")
            .fetch_one(&self.writer)
            .await
            .map_err(st)?;
        at.map(from_micros).transpose()
    }

    async fn claim_timer(&self, id: TimerId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM wf_timers WHERE id = ?")
            .bind(id_text(id.0))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn disarm_timer(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM wf_timers WHERE key = ?")
            .bind(key)
            .execute(&self.writer)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl ApprovalStore for SqliteWorkflowStore {
    async fn create_approval(&self, a: &Approval) -> Result<Approval> {
        sqlx::query(
            "INSERT INTO wf_approvals (id, execution_id, workflow_id, org_id, task_id, step_key, \
             stage, status, approvers, eligible, needed, requester, allow_self_approval, \
             deadline, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (execution_id, step_key, stage) DO NOTHING",
        )
        .bind(id_text(a.id.0))
        .bind(id_text(a.execution_id.0))
        .bind(id_text(a.workflow_id))
        .bind(id_text(a.org_id))
        .bind(a.task_id.map(id_text))
        .bind(&a.step_key)
        .bind(a.stage as i64)
        .bind(a.status.as_str())
        .bind(json_text(&a.approvers))
        .bind(json_text(&a.eligible))
        .bind(a.needed as i64)
        .bind(a.requester.map(id_text))
        .bind(a.allow_self_approval as i64)
        .bind(a.deadline.map(micros))
        .bind(micros(a.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                Error::not_found("execution")
            }
            _ => st(e),
        })?;
        self.find_approval(a.execution_id, &a.step_key, a.stage)
            .await?
            .ok_or_else(|| Error::not_found("approval"))
    }

    async fn get_approval(&self, id: ApprovalId) -> Result<Approval> {
        let row: Option<ApprovalRow> = sqlx::query_as(concat!(approval_select!(), " WHERE id = ?"))
            .bind(id_text(id.0))
            .fetch_optional(&self.writer)
            .await
            .map_err(st)?;
        self.approval_where(&self.writer, row).await?.ok_or_else(|| Error::not_found("approval"))
    }

    async fn find_approval(
        &self,
        execution: ExecutionId,
        step_key: &str,
        stage: u32,
    ) -> Result<Option<Approval>> {
        let row: Option<ApprovalRow> = sqlx::query_as(concat!(
            approval_select!(),
            " WHERE execution_id = ? AND step_key = ? AND stage = ?"
        ))
        .bind(id_text(execution.0))
        .bind(step_key)
        .bind(stage as i64)
        .fetch_optional(&self.writer)
        .await
        .map_err(st)?;
        self.approval_where(&self.writer, row).await
    }

    async fn list_approvals(
        &self,
        org: OrgId,
        pending_only: bool,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        let rows: Vec<ApprovalRow> = sqlx::query_as(concat!(
            approval_select!(),
            " WHERE org_id = ? AND (? = 0 OR status = 'pending') \
             ORDER BY id DESC LIMIT ?"
        ))
        .bind(id_text(org))
        .bind(pending_only as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(self.approval_where(&self.reader, Some(row)).await?);
        }
        Ok(out)
    }

    async fn decide(&self, id: ApprovalId, d: &ApprovalDecision) -> Result<Approval> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(st)?;
        let row: Option<ApprovalRow> = sqlx::query_as(concat!(approval_select!(), " WHERE id = ?"))
            .bind(id_text(id.0))
            .fetch_optional(&mut *tx)
            .await
            .map_err(st)?;
        let row = row.ok_or_else(|| Error::not_found("approval"))?;
        if row.status != ApprovalStatus::Pending.as_str() {
            return Err(Error::Conflict(format!("the approval is already {}", row.status)));
        }
        let inserted = sqlx::query(
            "INSERT INTO wf_approval_decisions (approval_id, user_id, approve, comment, at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (approval_id, user_id) DO NOTHING",
        )
        .bind(id_text(id.0))
        .bind(id_text(d.user_id))
        .bind(d.approve as i64)
        .bind(d.comment.as_deref())
        .bind(micros(d.at))
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict("this user has already decided".into()));
        }
        let mut approval = self.approval_where(&mut *tx, Some(row)).await?.expect("row is present");
        let status = approval.tally();
        if status != ApprovalStatus::Pending {
            sqlx::query("UPDATE wf_approvals SET status = ? WHERE id = ?")
                .bind(status.as_str())
                .bind(id_text(id.0))
                .execute(&mut *tx)
                .await
                .map_err(st)?;
            approval.status = status;
        }
        tx.commit().await.map_err(st)?;
        Ok(approval)
    }

    async fn close_approval(&self, id: ApprovalId, status: ApprovalStatus) -> Result<bool> {
        let done =
            sqlx::query("UPDATE wf_approvals SET status = ? WHERE id = ? AND status = 'pending'")
                .bind(status.as_str())
                .bind(id_text(id.0))
                .execute(&self.writer)
                .await
                .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl WorkflowAdmin for SqliteWorkflowStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_workflows_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: String,
    org_id: String,
    project_id: Option<String>,
    name: String,
    spec: String,
    created_by_type: String,
    created_by_id: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<TemplateRow> for TaskTemplate {
    type Error = Error;
    fn try_from(r: TemplateRow) -> Result<Self> {
        let by: Option<Uuid> = parse_opt(r.created_by_id.as_deref())?;
        Ok(TaskTemplate {
            id: TaskTemplateId(parse_id(&r.id)?),
            org_id: parse_id(&r.org_id)?,
            project_id: parse_opt(r.project_id.as_deref())?,
            name: r.name,
            spec: serde_json::from_str(&r.spec).map_err(|e| corrupt("template", e))?,
            created_by: Actor::from_parts(&r.created_by_type, by)
                .map_err(|e| corrupt("actor", e))?,
            version: r.version,
            created_at: from_micros(r.created_at)?,
            updated_at: from_micros(r.updated_at)?,
        })
    }
}

macro_rules! template_select {
    () => {
        "SELECT id, org_id, project_id, name, spec, created_by_type, created_by_id, version, \
         created_at, updated_at FROM wf_task_templates"
    };
}

fn template_conflict(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            Error::Conflict("the organization already has a template with this name".into())
        }
        _ => st(e),
    }
}

impl SqliteWorkflowStore {
    async fn get_template_on(&self, pool: &SqlitePool, id: TaskTemplateId) -> Result<TaskTemplate> {
        let row: Option<TemplateRow> = sqlx::query_as(concat!(template_select!(), " WHERE id = ?"))
            .bind(id_text(id.0))
            .fetch_optional(pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("task template"))?.try_into()
    }
}

#[async_trait]
impl TemplateStore for SqliteWorkflowStore {
    async fn create_template(&self, t: &TaskTemplate) -> Result<()> {
        sqlx::query(
            "INSERT INTO wf_task_templates (id, org_id, project_id, name, spec, created_by_type, \
             created_by_id, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(t.id.0))
        .bind(id_text(t.org_id))
        .bind(t.project_id.map(id_text))
        .bind(&t.name)
        .bind(json_text(&t.spec))
        .bind(t.created_by.kind())
        .bind(t.created_by.id().map(id_text))
        .bind(t.version)
        .bind(micros(t.created_at))
        .bind(micros(t.updated_at))
        .execute(&self.writer)
        .await
        .map_err(template_conflict)?;
        Ok(())
    }

    async fn get_template(&self, id: TaskTemplateId) -> Result<TaskTemplate> {
        self.get_template_on(&self.reader, id).await
    }

    async fn list_templates(&self, org: OrgId) -> Result<Vec<TaskTemplate>> {
        let rows: Vec<TemplateRow> =
            sqlx::query_as(concat!(template_select!(), " WHERE org_id = ? ORDER BY name, id"))
                .bind(id_text(org))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn update_template(
        &self,
        t: &TaskTemplate,
        expected_version: i64,
    ) -> Result<TaskTemplate> {
        let done = sqlx::query(
            "UPDATE wf_task_templates SET project_id = ?, name = ?, spec = ?, \
             version = version + 1, updated_at = ? WHERE id = ? AND version = ?",
        )
        .bind(t.project_id.map(id_text))
        .bind(&t.name)
        .bind(json_text(&t.spec))
        .bind(micros(t.updated_at))
        .bind(id_text(t.id.0))
        .bind(expected_version)
        .execute(&self.writer)
        .await
        .map_err(template_conflict)?;
        if done.rows_affected() == 0 {
            self.get_template_on(&self.writer, t.id).await?;
            return Err(stale("task template"));
        }
        self.get_template_on(&self.writer, t.id).await
    }

    async fn delete_template(&self, id: TaskTemplateId) -> Result<()> {
        let done = sqlx::query("DELETE FROM wf_task_templates WHERE id = ?")
            .bind(id_text(id.0))
            .execute(&self.writer)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("task template"));
        }
        Ok(())
    }
}

//! PostgreSQL adapter (feature `postgres`).
//!
//! Owns pm-workflows' tables (`migrations/postgres`, tracked in `_pm_workflows_migrations` so
//! pm-core's and the other crates' migrators coexist in one database) over one [`PgPool`].
//! Multi-statement writes are one transaction each; a definition change and a decision lock
//! their row (`FOR UPDATE`) so concurrent instances serialize on it. Idempotency comes from
//! unique keys (`ON CONFLICT DO NOTHING`), so several engine instances can consume the same log.
//!
//! Row structs are private; conversion into domain types happens in `TryFrom` impls so corrupt
//! rows surface as errors, not panics.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::Actor;
use pm_core::id::{OrgId, UserId, WorkflowId};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use super::shared::*;
use crate::definition::Definition;
use crate::store::*;
use crate::{Error, Result};

/// The PostgreSQL workflow store. Cheap to clone (the pool is reference-counted).
#[derive(Debug, Clone)]
pub struct PostgresWorkflowStore {
    pool: PgPool,
}

impl PostgresWorkflowStore {
    /// Connects to `url` with a pool of 5 connections. Does not migrate.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(st)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (e.g. the one pm-core's store uses).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn u32_of(v: i32, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|e| corrupt(what, e))
}

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Option<Uuid>,
    enabled: bool,
    definition_version: i64,
    definition: Value,
    webhook_secret: String,
    created_by_type: String,
    created_by_id: Option<Uuid>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<WorkflowRow> for Workflow {
    type Error = Error;
    fn try_from(r: WorkflowRow) -> Result<Self> {
        Ok(Workflow {
            id: r.id.into(),
            org_id: r.org_id.into(),
            project_id: r.project_id.map(Into::into),
            enabled: r.enabled,
            definition_version: r.definition_version,
            definition: serde_json::from_value::<Definition>(r.definition)
                .map_err(|e| corrupt("definition", e))?,
            webhook_secret: r.webhook_secret,
            created_by: Actor::from_parts(&r.created_by_type, r.created_by_id)
                .map_err(|e| corrupt("actor", e))?,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! workflow_select {
    () => {
        "SELECT w.id, w.org_id, w.project_id, w.enabled, w.definition_version, v.definition, \
         w.webhook_secret, w.created_by_type, w.created_by_id, w.version, w.created_at, \
         w.updated_at FROM wf_workflows w JOIN wf_workflow_versions v \
         ON v.workflow_id = w.id AND v.version = w.definition_version"
    };
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    workflow_id: Uuid,
    version: i64,
    definition: Value,
    created_at: OffsetDateTime,
}

impl TryFrom<VersionRow> for WorkflowVersion {
    type Error = Error;
    fn try_from(r: VersionRow) -> Result<Self> {
        Ok(WorkflowVersion {
            workflow_id: r.workflow_id.into(),
            version: r.version,
            definition: serde_json::from_value(r.definition)
                .map_err(|e| corrupt("definition", e))?,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ExecutionRow {
    id: Uuid,
    workflow_id: Uuid,
    workflow_version: i64,
    org_id: Uuid,
    task_id: Option<Uuid>,
    status: String,
    trigger_key: String,
    actor_type: String,
    actor_id: Option<Uuid>,
    depth: i32,
    context: Value,
    error: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = Error;
    fn try_from(r: ExecutionRow) -> Result<Self> {
        Ok(Execution {
            id: ExecutionId(r.id),
            workflow_id: r.workflow_id.into(),
            workflow_version: r.workflow_version,
            org_id: r.org_id.into(),
            task_id: r.task_id.map(Into::into),
            status: ExecutionStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            trigger_key: r.trigger_key,
            actor: Actor::from_parts(&r.actor_type, r.actor_id).map_err(|e| corrupt("actor", e))?,
            depth: u32_of(r.depth, "depth")?,
            context: r.context,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

macro_rules! execution_select {
    () => {
        "SELECT id, workflow_id, workflow_version, org_id, task_id, status, trigger_key, \
         actor_type, actor_id, depth, context, error, created_at, updated_at FROM wf_executions"
    };
}

#[derive(sqlx::FromRow)]
struct StepRow {
    execution_id: Uuid,
    key: String,
    status: String,
    input: Value,
    output: Value,
    attempts: i32,
    error: Option<String>,
    started_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = Error;
    fn try_from(r: StepRow) -> Result<Self> {
        Ok(StepRecord {
            execution_id: ExecutionId(r.execution_id),
            key: r.key,
            status: StepStatus::parse(&r.status).map_err(|e| corrupt("status", e))?,
            input: r.input,
            output: r.output,
            attempts: u32_of(r.attempts, "attempts")?,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TimerRow {
    id: Uuid,
    key: String,
    execution_id: Option<Uuid>,
    workflow_id: Uuid,
    fire_at: OffsetDateTime,
    payload: Value,
}

impl From<TimerRow> for Timer {
    fn from(r: TimerRow) -> Self {
        Timer {
            id: TimerId(r.id),
            key: r.key,
            execution_id: r.execution_id.map(ExecutionId),
            workflow_id: r.workflow_id.into(),
            fire_at: r.fire_at,
            payload: r.payload,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ApprovalRow {
    id: Uuid,
    execution_id: Uuid,
    workflow_id: Uuid,
    org_id: Uuid,
    task_id: Option<Uuid>,
    step_key: String,
    stage: i32,
    status: String,
    approvers: Value,
    eligible: Value,
    needed: i32,
    requester: Option<Uuid>,
    allow_self_approval: bool,
    deadline: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct DecisionRow {
    user_id: Uuid,
    approve: bool,
    comment: Option<String>,
    at: OffsetDateTime,
}

impl ApprovalRow {
    fn into_approval(self, decisions: Vec<DecisionRow>) -> Result<Approval> {
        Ok(Approval {
            id: ApprovalId(self.id),
            execution_id: ExecutionId(self.execution_id),
            workflow_id: self.workflow_id.into(),
            org_id: self.org_id.into(),
            task_id: self.task_id.map(Into::into),
            step_key: self.step_key,
            stage: u32_of(self.stage, "stage")?,
            status: ApprovalStatus::parse(&self.status).map_err(|e| corrupt("status", e))?,
            approvers: serde_json::from_value(self.approvers)
                .map_err(|e| corrupt("approvers", e))?,
            eligible: serde_json::from_value(self.eligible).map_err(|e| corrupt("eligible", e))?,
            needed: u32_of(self.needed, "needed")?,
            requester: self.requester.map(UserId),
            allow_self_approval: self.allow_self_approval,
            deadline: self.deadline,
            decisions: decisions
                .into_iter()
                .map(|d| ApprovalDecision {
                    user_id: UserId(d.user_id),
                    approve: d.approve,
                    comment: d.comment,
                    at: d.at,
                })
                .collect(),
            created_at: self.created_at,
        })
    }
}

macro_rules! approval_select {
    () => {
        "SELECT id, execution_id, workflow_id, org_id, task_id, step_key, stage, status, \
         approvers, eligible, needed, requester, allow_self_approval, deadline, created_at FROM wf_approvals"
    };
}

async fn with_decisions<'e, E>(exec: E, row: ApprovalRow) -> Result<Approval>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let decisions: Vec<DecisionRow> = sqlx::query_as(
        "SELECT user_id, approve, comment, at FROM wf_approval_decisions \
         WHERE approval_id = $1 ORDER BY at, user_id",
    )
    .bind(row.id)
    .fetch_all(exec)
    .await
    .map_err(st)?;
    row.into_approval(decisions)
}

fn fk_to_not_found(e: sqlx::Error, entity: &'static str) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => Error::not_found(entity),
        _ => st(e),
    }
}

#[async_trait]
impl WorkflowStore for PostgresWorkflowStore {
    async fn create_workflow(&self, w: &Workflow) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query(
            "INSERT INTO wf_workflows (id, org_id, project_id, enabled, definition_version, \
             webhook_secret, created_by_type, created_by_id, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(w.id.0)
        .bind(w.org_id.0)
        .bind(w.project_id.map(|p| p.0))
        .bind(w.enabled)
        .bind(w.definition_version)
        .bind(&w.webhook_secret)
        .bind(w.created_by.kind())
        .bind(w.created_by.id())
        .bind(w.version)
        .bind(w.created_at)
        .bind(w.updated_at)
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
             VALUES ($1, $2, $3, $4)",
        )
        .bind(w.id.0)
        .bind(w.definition_version)
        .bind(to_json(&w.definition))
        .bind(w.created_at)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        let row: Option<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow"))?.try_into()
    }

    async fn list_workflows(&self, org: OrgId) -> Result<Vec<Workflow>> {
        let rows: Vec<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.org_id = $1 ORDER BY w.id"))
                .bind(org.0)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn list_enabled(&self) -> Result<Vec<Workflow>> {
        let rows: Vec<WorkflowRow> =
            sqlx::query_as(concat!(workflow_select!(), " WHERE w.enabled ORDER BY w.id"))
                .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(st)?;
        let current: Option<(i64, i64)> = sqlx::query_as(
            "SELECT version, definition_version FROM wf_workflows WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let (version, def_version) = current.ok_or_else(|| Error::not_found("workflow"))?;
        if version != expected_version {
            return Err(stale("workflow"));
        }
        sqlx::query(
            "INSERT INTO wf_workflow_versions (workflow_id, version, definition, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(def_version + 1)
        .bind(to_json(def))
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        sqlx::query(
            "UPDATE wf_workflows SET definition_version = $1, version = version + 1, \
             updated_at = $2 WHERE id = $3",
        )
        .bind(def_version + 1)
        .bind(at)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        tx.commit().await.map_err(st)?;
        self.get_workflow(id).await
    }

    async fn set_enabled(
        &self,
        id: WorkflowId,
        expected_version: i64,
        enabled: bool,
        at: OffsetDateTime,
    ) -> Result<Workflow> {
        let done = sqlx::query(
            "UPDATE wf_workflows SET enabled = $1, version = version + 1, updated_at = $2 \
             WHERE id = $3 AND version = $4",
        )
        .bind(enabled)
        .bind(at)
        .bind(id.0)
        .bind(expected_version)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            self.get_workflow(id).await?;
            return Err(stale("workflow"));
        }
        self.get_workflow(id).await
    }

    async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query("DELETE FROM wf_timers WHERE workflow_id = $1 AND execution_id IS NULL")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        let done = sqlx::query("DELETE FROM wf_workflows WHERE id = $1")
            .bind(id.0)
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
             WHERE workflow_id = $1 AND version = $2",
        )
        .bind(id.0)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow version"))?.try_into()
    }

    async fn list_versions(&self, id: WorkflowId) -> Result<Vec<WorkflowVersion>> {
        let rows: Vec<VersionRow> = sqlx::query_as(
            "SELECT workflow_id, version, definition, created_at FROM wf_workflow_versions \
             WHERE workflow_id = $1 ORDER BY version",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        if rows.is_empty() {
            return Err(Error::not_found("workflow"));
        }
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

#[async_trait]
impl ExecutionStore for PostgresWorkflowStore {
    async fn create_execution(&self, e: &Execution) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO wf_executions (id, workflow_id, workflow_version, org_id, task_id, \
             status, trigger_key, actor_type, actor_id, depth, context, error, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (workflow_id, trigger_key) DO NOTHING",
        )
        .bind(e.id.0)
        .bind(e.workflow_id.0)
        .bind(e.workflow_version)
        .bind(e.org_id.0)
        .bind(e.task_id.map(|t| t.0))
        .bind(e.status.as_str())
        .bind(&e.trigger_key)
        .bind(e.actor.kind())
        .bind(e.actor.id())
        .bind(i32::try_from(e.depth).unwrap_or(i32::MAX))
        .bind(&e.context)
        .bind(e.error.as_deref())
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_execution(&self, id: ExecutionId) -> Result<Execution> {
        let row: Option<ExecutionRow> =
            sqlx::query_as(concat!(execution_select!(), " WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
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
        let rows: Vec<ExecutionRow> = sqlx::query_as(concat!(
            execution_select!(),
            " WHERE org_id = $1 AND ($2::uuid IS NULL OR workflow_id = $2) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(org.0)
        .bind(workflow.map(|w| w.0))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn list_running(&self, limit: u32) -> Result<Vec<Execution>> {
        let rows: Vec<ExecutionRow> = sqlx::query_as(concat!(
            execution_select!(),
            " WHERE status = 'running' ORDER BY id LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
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
        let allowed: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
        let done = sqlx::query(
            "UPDATE wf_executions SET status = $1, error = $2, updated_at = $3 \
             WHERE id = $4 AND status = ANY($5)",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(at)
        .bind(id.0)
        .bind(&allowed)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        if done.rows_affected() == 0 {
            self.get_execution(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn list_steps(&self, id: ExecutionId) -> Result<Vec<StepRecord>> {
        let rows: Vec<StepRow> = sqlx::query_as(
            "SELECT execution_id, key, status, input, output, attempts, error, started_at, \
             finished_at FROM wf_steps WHERE execution_id = $1 ORDER BY key COLLATE \"C\"",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
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
             started_at, finished_at) VALUES ($1, $2, $3, $4, 'null'::jsonb, 1, NULL, $5, NULL) \
             ON CONFLICT (execution_id, key) DO UPDATE SET attempts = wf_steps.attempts + 1, \
             status = excluded.status, input = excluded.input \
             WHERE wf_steps.status IN ('running', 'waiting') \
             RETURNING execution_id, key, status, input, output, attempts, error, started_at, \
             finished_at",
        )
        .bind(id.0)
        .bind(key)
        .bind(status.as_str())
        .bind(input)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| fk_to_not_found(e, "execution"))?;
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
        let done = sqlx::query(
            "INSERT INTO wf_steps (execution_id, key, status, input, output, attempts, error, \
             started_at, finished_at) VALUES ($1, $2, $3, 'null'::jsonb, $4, 0, $5, $6, $6) \
             ON CONFLICT (execution_id, key) DO UPDATE SET status = excluded.status, \
             output = excluded.output, error = excluded.error, finished_at = excluded.finished_at \
             WHERE wf_steps.status IN ('running', 'waiting')",
        )
        .bind(id.0)
        .bind(key)
        .bind(status.as_str())
        .bind(output)
        .bind(error)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| fk_to_not_found(e, "execution"))?;
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
            "UPDATE wf_executions SET lease_owner = $1, lease_until = $2 WHERE id = $3 \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $4)",
        )
        .bind(owner)
        .bind(until)
        .bind(id.0)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_execution(&self, id: ExecutionId, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE wf_executions SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id.0)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(())
    }

    async fn reset_failed_steps(&self, id: ExecutionId) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM wf_steps WHERE execution_id = $1 AND status = 'failed'")
                .bind(id.0)
                .execute(&self.pool)
                .await
                .map_err(st)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl TimerStore for PostgresWorkflowStore {
    async fn arm_timer(&self, t: &Timer) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO wf_timers (id, key, execution_id, workflow_id, fire_at, payload) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
        )
        .bind(t.id.0)
        .bind(&t.key)
        .bind(t.execution_id.map(|e| e.0))
        .bind(t.workflow_id.0)
        .bind(t.fire_at)
        .bind(&t.payload)
        .execute(&self.pool)
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
        // SKIP LOCKED: concurrent instances lease disjoint sets without waiting on each other.
        let rows: Vec<TimerRow> = sqlx::query_as(
            "UPDATE wf_timers SET lease_owner = $1, lease_until = $2 WHERE id IN ( \
             SELECT id FROM wf_timers WHERE fire_at <= $3 \
             AND (lease_until IS NULL OR lease_until < $3 OR lease_owner = $1) \
             ORDER BY fire_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, key, execution_id, workflow_id, fire_at, payload",
        )
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        let mut timers: Vec<Timer> = rows.into_iter().map(Into::into).collect();
        timers.sort_by_key(|t| (t.fire_at, t.id));
        Ok(timers)
    }

    async fn due_timers(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Timer>> {
        let rows: Vec<TimerRow> = sqlx::query_as(
            "SELECT id, key, execution_id, workflow_id, fire_at, payload FROM wf_timers \
             WHERE fire_at <= $1 ORDER BY fire_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn next_fire_at(&self) -> Result<Option<OffsetDateTime>> {
        sqlx::query_scalar("SELECT MIN(fire_at) FROM wf_timers")
            .fetch_one(&self.pool)
            .await
            .map_err(st)
    }

    async fn claim_timer(&self, id: TimerId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM wf_timers WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }

    async fn disarm_timer(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM wf_timers WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl ApprovalStore for PostgresWorkflowStore {
    async fn create_approval(&self, a: &Approval) -> Result<Approval> {
        sqlx::query(
            "INSERT INTO wf_approvals (id, execution_id, workflow_id, org_id, task_id, step_key, \
             stage, status, approvers, eligible, needed, requester, allow_self_approval, \
             deadline, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15) \
             ON CONFLICT (execution_id, step_key, stage) DO NOTHING",
        )
        .bind(a.id.0)
        .bind(a.execution_id.0)
        .bind(a.workflow_id.0)
        .bind(a.org_id.0)
        .bind(a.task_id.map(|t| t.0))
        .bind(&a.step_key)
        .bind(a.stage as i32)
        .bind(a.status.as_str())
        .bind(to_json(&a.approvers))
        .bind(to_json(&a.eligible))
        .bind(a.needed as i32)
        .bind(a.requester.map(|u| u.0))
        .bind(a.allow_self_approval)
        .bind(a.deadline)
        .bind(a.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| fk_to_not_found(e, "execution"))?;
        self.find_approval(a.execution_id, &a.step_key, a.stage)
            .await?
            .ok_or_else(|| Error::not_found("approval"))
    }

    async fn get_approval(&self, id: ApprovalId) -> Result<Approval> {
        let row: Option<ApprovalRow> =
            sqlx::query_as(concat!(approval_select!(), " WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        with_decisions(&self.pool, row.ok_or_else(|| Error::not_found("approval"))?).await
    }

    async fn find_approval(
        &self,
        execution: ExecutionId,
        step_key: &str,
        stage: u32,
    ) -> Result<Option<Approval>> {
        let row: Option<ApprovalRow> = sqlx::query_as(concat!(
            approval_select!(),
            " WHERE execution_id = $1 AND step_key = $2 AND stage = $3"
        ))
        .bind(execution.0)
        .bind(step_key)
        .bind(stage as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(st)?;
        match row {
            Some(r) => with_decisions(&self.pool, r).await.map(Some),
            None => Ok(None),
        }
    }

    async fn list_approvals(
        &self,
        org: OrgId,
        pending_only: bool,
        limit: u32,
    ) -> Result<Vec<Approval>> {
        let rows: Vec<ApprovalRow> = sqlx::query_as(concat!(
            approval_select!(),
            " WHERE org_id = $1 AND (NOT $2 OR status = 'pending') ORDER BY id DESC LIMIT $3"
        ))
        .bind(org.0)
        .bind(pending_only)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(with_decisions(&self.pool, row).await?);
        }
        Ok(out)
    }

    async fn decide(&self, id: ApprovalId, d: &ApprovalDecision) -> Result<Approval> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        // The row lock serializes concurrent decisions, so the tally below sees all of them.
        let row: Option<ApprovalRow> =
            sqlx::query_as(concat!(approval_select!(), " WHERE id = $1 FOR UPDATE"))
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let row = row.ok_or_else(|| Error::not_found("approval"))?;
        if row.status != ApprovalStatus::Pending.as_str() {
            return Err(Error::Conflict(format!("the approval is already {}", row.status)));
        }
        let inserted = sqlx::query(
            "INSERT INTO wf_approval_decisions (approval_id, user_id, approve, comment, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (approval_id, user_id) DO NOTHING",
        )
        .bind(id.0)
        .bind(d.user_id.0)
        .bind(d.approve)
        .bind(d.comment.as_deref())
        .bind(d.at)
        .execute(&mut *tx)
        .await
        .map_err(st)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict("this user has already decided".into()));
        }
        let mut approval = with_decisions(&mut *tx, row).await?;
        let status = approval.tally();
        if status != ApprovalStatus::Pending {
            sqlx::query("UPDATE wf_approvals SET status = $1 WHERE id = $2")
                .bind(status.as_str())
                .bind(id.0)
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
            sqlx::query("UPDATE wf_approvals SET status = $1 WHERE id = $2 AND status = 'pending'")
                .bind(status.as_str())
                .bind(id.0)
                .execute(&self.pool)
                .await
                .map_err(st)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl WorkflowAdmin for PostgresWorkflowStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_workflows_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Option<Uuid>,
    name: String,
    spec: Value,
    created_by_type: String,
    created_by_id: Option<Uuid>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<TemplateRow> for TaskTemplate {
    type Error = Error;
    fn try_from(r: TemplateRow) -> Result<Self> {
        Ok(TaskTemplate {
            id: TaskTemplateId(r.id),
            org_id: r.org_id.into(),
            project_id: r.project_id.map(Into::into),
            name: r.name,
            spec: serde_json::from_value(r.spec).map_err(|e| corrupt("template", e))?,
            created_by: Actor::from_parts(&r.created_by_type, r.created_by_id)
                .map_err(|e| corrupt("actor", e))?,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
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

#[async_trait]
impl TemplateStore for PostgresWorkflowStore {
    async fn create_template(&self, t: &TaskTemplate) -> Result<()> {
        sqlx::query(
            "INSERT INTO wf_task_templates (id, org_id, project_id, name, spec, created_by_type, \
             created_by_id, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(t.id.0)
        .bind(t.org_id.0)
        .bind(t.project_id.map(|p| p.0))
        .bind(&t.name)
        .bind(to_json(&t.spec))
        .bind(t.created_by.kind())
        .bind(t.created_by.id())
        .bind(t.version)
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(&self.pool)
        .await
        .map_err(template_conflict)?;
        Ok(())
    }

    async fn get_template(&self, id: TaskTemplateId) -> Result<TaskTemplate> {
        let row: Option<TemplateRow> =
            sqlx::query_as(concat!(template_select!(), " WHERE id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("task template"))?.try_into()
    }

    async fn list_templates(&self, org: OrgId) -> Result<Vec<TaskTemplate>> {
        let rows: Vec<TemplateRow> =
            sqlx::query_as(concat!(template_select!(), " WHERE org_id = $1 ORDER BY name, id"))
                .bind(org.0)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn update_template(
        &self,
        t: &TaskTemplate,
        expected_version: i64,
    ) -> Result<TaskTemplate> {
        let row: Option<TemplateRow> = sqlx::query_as(
            "UPDATE wf_task_templates SET project_id = $1, name = $2, spec = $3, \
             version = version + 1, updated_at = $4 WHERE id = $5 AND version = $6 \
             RETURNING id, org_id, project_id, name, spec, created_by_type, created_by_id, \
             version, created_at, updated_at",
        )
        .bind(t.project_id.map(|p| p.0))
        .bind(&t.name)
        .bind(to_json(&t.spec))
        .bind(t.updated_at)
        .bind(t.id.0)
        .bind(expected_version)
        .fetch_optional(&self.pool)
        .await
        .map_err(template_conflict)?;
        match row {
            Some(r) => r.try_into(),
            None => {
                self.get_template(t.id).await?;
                Err(stale("task template"))
            }
        }
    }

    async fn delete_template(&self, id: TaskTemplateId) -> Result<()> {
        let done = sqlx::query("DELETE FROM wf_task_templates WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(st)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("task template"));
        }
        Ok(())
    }
}

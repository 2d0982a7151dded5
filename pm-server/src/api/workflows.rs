//! Workflows (pm-workflows): definitions with versions, enable/disable, dry-run and manual runs;
//! executions (list, get with steps, retry, cancel, replay); approvals (list, decide); the
//! built-in templates; and the incoming webhook endpoint (authenticated by the workflow's
//! secret, not a user).
//!
//! Rights: managing workflows and reading executions need `workflow.manage` in the workflow's
//! organization (or project); listing approvals needs `task.read` in the organization; deciding
//! is checked by the engine against the approval's approvers at decision time. When the server
//! runs without the engine (embedded states built without [`AppState::with_workflows`]) every
//! route answers 404 `workflows-disabled`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, TaskId, WorkflowId};
use pm_workflows::definition::Definition;
use pm_workflows::engine::{Engine, StartRequest};
use pm_workflows::store::{Approval, ApprovalId, Execution, ExecutionId, StepRecord, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::require;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workflow, list_workflows))
        .routes(routes!(get_workflow, update_workflow, delete_workflow))
        .routes(routes!(enable_workflow))
        .routes(routes!(disable_workflow))
        .routes(routes!(list_versions))
        .routes(routes!(dry_run))
        .routes(routes!(run_workflow))
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(retry_execution))
        .routes(routes!(cancel_execution))
        .routes(routes!(replay_execution))
        .routes(routes!(list_approvals))
        .routes(routes!(decide_approval))
        .routes(routes!(list_templates))
        .routes(routes!(webhook))
}

fn engine(s: &AppState) -> Result<&Engine, ApiError> {
    s.workflows.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "workflows-disabled",
            "Workflows are not enabled",
            "this server runs without the workflow engine",
        )
    })
}

fn parse_definition(v: &Value, s: &AppState) -> Result<Definition, ApiError> {
    let limits = *engine(s)?.limits();
    Definition::from_value(v, &limits).map_err(|e| match e {
        // Name the field inside the request body.
        pm_workflows::Error::Invalid { field, message } => {
            ApiError::invalid_field(format!("definition.{field}").replace(".$", ""), message)
        }
        other => other.into(),
    })
}

async fn require_manage(
    s: &AppState,
    who: &Authenticated,
    org: OrgId,
    project: Option<ProjectId>,
) -> Result<(), ApiError> {
    require(s, who, Action::Manage, &Resource::new(ResourceKind::Workflow, Some(org), project))
        .await
}

/// A workflow and its current definition.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Workflow)]
pub struct WorkflowBody {
    /// Identity (the `automation` actor id of its changes).
    pub id: Uuid,
    /// Organization.
    pub org_id: Uuid,
    /// Only this project's events trigger it, when set.
    pub project_id: Option<Uuid>,
    /// Whether triggers start executions.
    pub enabled: bool,
    /// Version of the current definition.
    pub definition_version: i64,
    /// The definition document (JSON Schema: `pm-workflows/schema/workflow.schema.json`).
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Secret of the webhook endpoint (`X-PM-Webhook-Secret`); also signs outbound requests.
    pub webhook_secret: String,
    /// Who created it.
    pub created_by: Actor,
    /// Record version (ETag); send it back to change the workflow.
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Workflow> for WorkflowBody {
    fn from(w: Workflow) -> Self {
        Self {
            id: w.id.0,
            org_id: w.org_id.0,
            project_id: w.project_id.map(|p| p.0),
            enabled: w.enabled,
            definition_version: w.definition_version,
            definition: serde_json::to_value(&w.definition).unwrap_or(Value::Null),
            webhook_secret: w.webhook_secret,
            created_by: w.created_by,
            version: w.version,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// One version of a definition.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WorkflowVersion)]
pub struct VersionBody {
    /// 1, 2, …
    pub version: i64,
    /// The definition.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Saved.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// One recorded step of an execution.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ExecutionStep)]
pub struct StepBody {
    /// Step key (`steps[0].on_approved[1]`).
    pub key: String,
    /// `running`, `waiting`, `done`, `failed`.
    pub status: String,
    /// Rendered input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Output or decision.
    #[schema(value_type = Object)]
    pub output: Value,
    /// Attempts.
    pub attempts: u32,
    /// Last error.
    pub error: Option<String>,
    /// First started.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    /// Finished.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
}

impl From<StepRecord> for StepBody {
    fn from(r: StepRecord) -> Self {
        Self {
            key: r.key,
            status: r.status.as_str().into(),
            input: r.input,
            output: r.output,
            attempts: r.attempts,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// An execution.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Execution)]
pub struct ExecutionBody {
    /// Identity.
    pub id: Uuid,
    /// Workflow.
    pub workflow_id: Uuid,
    /// Definition version it runs.
    pub workflow_version: i64,
    /// Organization.
    pub org_id: Uuid,
    /// Task concerned.
    pub task_id: Option<Uuid>,
    /// `running`, `waiting`, `succeeded`, `failed`, `cancelled`, `loop`.
    pub status: String,
    /// What started it (`event:<id>`, `webhook:<delivery>`, `manual:<id>`, …).
    pub trigger_key: String,
    /// Who caused it.
    pub actor: Actor,
    /// Cascade depth.
    pub depth: u32,
    /// Inputs its decisions are made on.
    #[schema(value_type = Object)]
    pub context: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// Recorded steps (on `GET /executions/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepBody>>,
}

impl From<Execution> for ExecutionBody {
    fn from(e: Execution) -> Self {
        Self {
            id: e.id.0,
            workflow_id: e.workflow_id.0,
            workflow_version: e.workflow_version,
            org_id: e.org_id.0,
            task_id: e.task_id.map(|t| t.0),
            status: e.status.as_str().into(),
            trigger_key: e.trigger_key,
            actor: e.actor,
            depth: e.depth,
            context: e.context,
            error: e.error,
            created_at: e.created_at,
            updated_at: e.updated_at,
            steps: None,
        }
    }
}

/// An approval (one stage of an approval step).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Approval)]
pub struct ApprovalBody {
    /// Identity.
    pub id: Uuid,
    /// Execution waiting on it.
    pub execution_id: Uuid,
    /// Workflow.
    pub workflow_id: Uuid,
    /// Organization.
    pub org_id: Uuid,
    /// Task concerned.
    pub task_id: Option<Uuid>,
    /// Stage (0-based).
    pub stage: u32,
    /// `pending`, `approved`, `rejected`, `timed_out`, `cancelled`.
    pub status: String,
    /// Who may decide (`{"role": …}` or `{"users": […]}`).
    #[schema(value_type = Object)]
    pub approvers: Value,
    /// Who could decide when it was requested (M).
    pub eligible: Vec<Uuid>,
    /// Approvals needed (N).
    pub needed: u32,
    /// Decisions so far.
    #[schema(value_type = Vec<Object>)]
    pub decisions: Vec<Value>,
    /// Deadline (then escalation).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<OffsetDateTime>,
    /// Requested.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<Approval> for ApprovalBody {
    fn from(a: Approval) -> Self {
        Self {
            id: a.id.0,
            execution_id: a.execution_id.0,
            workflow_id: a.workflow_id.0,
            org_id: a.org_id.0,
            task_id: a.task_id.map(|t| t.0),
            stage: a.stage,
            status: a.status.as_str().into(),
            approvers: serde_json::to_value(&a.approvers).unwrap_or(Value::Null),
            eligible: a.eligible.iter().map(|u| u.0).collect(),
            needed: a.needed,
            decisions: a
                .decisions
                .iter()
                .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
                .collect(),
            deadline: a.deadline,
            created_at: a.created_at,
        }
    }
}

/// A new workflow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkflowBody {
    /// Only this project's events trigger it.
    pub project_id: Option<Uuid>,
    /// The definition document.
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// A new definition version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWorkflowBody {
    /// The record version you read.
    pub version: i64,
    /// The new definition.
    #[schema(value_type = Object)]
    pub definition: Value,
}

/// The record version you read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionOnly {
    /// The record version.
    pub version: i64,
}

/// What to dry-run or run against.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    /// The task.
    pub task_id: Option<Uuid>,
    /// Trigger input (`trigger` in expressions).
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
}

/// A decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// Why.
    pub comment: Option<String>,
}

/// Execution list filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionQuery {
    /// Only this workflow's.
    pub workflow_id: Option<Uuid>,
    /// Newest first, 1-100 (default 50).
    pub limit: Option<u32>,
}

/// Approval list filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Only pending ones (default true).
    pub pending: Option<bool>,
    /// Newest first, 1-100 (default 50).
    pub limit: Option<u32>,
}

fn limit(l: Option<u32>) -> Result<u32, ApiError> {
    match l.unwrap_or(50) {
        n @ 1..=100 => Ok(n),
        _ => Err(ApiError::invalid_field("limit".into(), "must be 1-100")),
    }
}

async fn workflow_for(s: &AppState, who: &Authenticated, id: Uuid) -> Result<Workflow, ApiError> {
    let w = engine(s)?.stores().workflows.get_workflow(WorkflowId(id)).await?;
    require_manage(s, who, w.org_id, w.project_id).await?;
    Ok(w)
}

async fn execution_for(s: &AppState, who: &Authenticated, id: Uuid) -> Result<Execution, ApiError> {
    let e = engine(s)?.stores().executions.get_execution(ExecutionId(id)).await?;
    require_manage(s, who, e.org_id, None).await?;
    Ok(e)
}

const NOT_FOUND: &str = "No such workflow, execution or approval (or workflows are disabled)";

/// Creates a workflow (enabled) from a definition document.
#[utoipa::path(post, path = "/orgs/{org_id}/workflows", tag = "workflows", operation_id = "create_workflow",
    params(("org_id" = Uuid, Path, description = "Organization")),
    request_body = NewWorkflowBody,
    responses(
        (status = 201, description = "Created", body = WorkflowBody),
        (status = 400, description = "Invalid definition (`field` is its JSON path) or over a limit (`limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
    Json(body): Json<NewWorkflowBody>,
) -> Result<Response, ApiError> {
    let org = OrgId(org);
    let project = body.project_id.map(ProjectId);
    require_manage(&s, &who, org, project).await?;
    if let Some(p) = project {
        let p = s.stores.projects.get_project(p).await?;
        if p.org_id != org {
            return Err(ApiError::invalid_field(
                "project_id".into(),
                "is not a project of this organization",
            ));
        }
    }
    let def = parse_definition(&body.definition, &s)?;
    let w = engine(&s)?.create_workflow(org, project, def, Actor::User(who.user_id)).await?;
    Ok((StatusCode::CREATED, Json(WorkflowBody::from(w))).into_response())
}

/// Lists an organization's workflows.
#[utoipa::path(get, path = "/orgs/{org_id}/workflows", tag = "workflows", operation_id = "list_workflows",
    params(("org_id" = Uuid, Path, description = "Organization")),
    responses(
        (status = 200, description = "The workflows", body = Vec<WorkflowBody>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_workflows(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
) -> Result<Json<Vec<WorkflowBody>>, ApiError> {
    require_manage(&s, &who, OrgId(org), None).await?;
    let list = engine(&s)?.stores().workflows.list_workflows(OrgId(org)).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One workflow.
#[utoipa::path(get, path = "/workflows/{workflow_id}", tag = "workflows", operation_id = "get_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<WorkflowBody>, ApiError> {
    Ok(Json(workflow_for(&s, &who, id).await?.into()))
}

/// Saves a new definition version.
#[utoipa::path(put, path = "/workflows/{workflow_id}", tag = "workflows", operation_id = "update_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    request_body = UpdateWorkflowBody,
    responses(
        (status = 200, description = "The workflow at its new version", body = WorkflowBody),
        (status = 400, description = "Invalid definition (`field` is its JSON path) or over a limit (`limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed since you read it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateWorkflowBody>,
) -> Result<Json<WorkflowBody>, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    let def = parse_definition(&body.definition, &s)?;
    Ok(Json(engine(&s)?.update_workflow(w.id, body.version, def).await?.into()))
}

/// Deletes a workflow (its executions stay).
#[utoipa::path(delete, path = "/workflows/{workflow_id}", tag = "workflows", operation_id = "delete_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    engine(&s)?.delete_workflow(w.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(
    s: AppState,
    who: Authenticated,
    id: Uuid,
    version: i64,
    enabled: bool,
) -> Result<Json<WorkflowBody>, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    Ok(Json(engine(&s)?.set_enabled(w.id, version, enabled).await?.into()))
}

/// Enables a workflow.
#[utoipa::path(post, path = "/workflows/{workflow_id}/enable", tag = "workflows", operation_id = "enable_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    request_body = VersionOnly,
    responses(
        (status = 200, description = "The workflow", body = WorkflowBody),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed since you read it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn enable_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<VersionOnly>,
) -> Result<Json<WorkflowBody>, ApiError> {
    set_enabled(s, who, id, body.version, true).await
}

/// Disables a workflow (running executions continue).
#[utoipa::path(post, path = "/workflows/{workflow_id}/disable", tag = "workflows", operation_id = "disable_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    request_body = VersionOnly,
    responses(
        (status = 200, description = "The workflow", body = WorkflowBody),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed since you read it", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn disable_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<VersionOnly>,
) -> Result<Json<WorkflowBody>, ApiError> {
    set_enabled(s, who, id, body.version, false).await
}

/// Every version of a workflow's definition.
#[utoipa::path(get, path = "/workflows/{workflow_id}/versions", tag = "workflows", operation_id = "list_workflow_versions",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    responses(
        (status = 200, description = "Oldest first", body = Vec<VersionBody>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_versions(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<VersionBody>>, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    let versions = engine(&s)?.stores().workflows.list_versions(w.id).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|v| VersionBody {
                version: v.version,
                definition: serde_json::to_value(&v.definition).unwrap_or(Value::Null),
                created_at: v.created_at,
            })
            .collect(),
    ))
}

/// Plans the workflow's current definition against a task: what it would decide and do.
/// Changes nothing.
#[utoipa::path(post, path = "/workflows/{workflow_id}/dry-run", tag = "workflows", operation_id = "dry_run_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    request_body = RunBody,
    responses(
        (status = 200, description = "The plan", body = Object),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn dry_run(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<RunBody>,
) -> Result<Json<Value>, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    let task = task_in_org(&s, body.task_id, w.org_id).await?;
    let plan = engine(&s)?.dry_run(&w.definition, w.org_id, task, None).await?;
    Ok(Json(serde_json::to_value(plan).unwrap_or(Value::Null)))
}

async fn task_in_org(
    s: &AppState,
    task: Option<Uuid>,
    org: OrgId,
) -> Result<Option<TaskId>, ApiError> {
    let Some(t) = task else { return Ok(None) };
    let task = s.stores.tasks.get_task(TaskId(t)).await?;
    if task.org_id != org {
        return Err(ApiError::entity_not_found("task"));
    }
    Ok(Some(task.id))
}

/// Starts the workflow by hand.
#[utoipa::path(post, path = "/workflows/{workflow_id}/run", tag = "workflows", operation_id = "run_workflow",
    params(("workflow_id" = Uuid, Path, description = "Workflow")),
    request_body = RunBody,
    responses(
        (status = 202, description = "Started", body = ExecutionBody),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Disabled, or its conditions do not hold", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn run_workflow(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<RunBody>,
) -> Result<Response, ApiError> {
    let w = workflow_for(&s, &who, id).await?;
    let task_id = task_in_org(&s, body.task_id, w.org_id).await?;
    let e = engine(&s)?
        .start(
            w.id,
            StartRequest {
                key: format!("manual:{}", Uuid::now_v7()),
                actor: Actor::User(who.user_id),
                task_id,
                input: body.input.unwrap_or(Value::Object(Default::default())),
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(ExecutionBody::from(e))).into_response())
}

/// An organization's executions, newest first.
#[utoipa::path(get, path = "/orgs/{org_id}/executions", tag = "workflows", operation_id = "list_executions",
    params(("org_id" = Uuid, Path, description = "Organization"), ExecutionQuery),
    responses(
        (status = 200, description = "Executions", body = Vec<ExecutionBody>),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_executions(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
    Query(q): Query<ExecutionQuery>,
) -> Result<Json<Vec<ExecutionBody>>, ApiError> {
    let limit = limit(q.limit)?;
    require_manage(&s, &who, OrgId(org), None).await?;
    let list = engine(&s)?
        .stores()
        .executions
        .list_executions(OrgId(org), q.workflow_id.map(WorkflowId), limit)
        .await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// One execution with its recorded steps.
#[utoipa::path(get, path = "/executions/{execution_id}", tag = "workflows", operation_id = "get_execution",
    params(("execution_id" = Uuid, Path, description = "Execution")),
    responses(
        (status = 200, description = "The execution", body = ExecutionBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_execution(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<ExecutionBody>, ApiError> {
    let e = execution_for(&s, &who, id).await?;
    let steps = engine(&s)?.stores().executions.list_steps(e.id).await?;
    let mut body = ExecutionBody::from(e);
    body.steps = Some(steps.into_iter().map(Into::into).collect());
    Ok(Json(body))
}

/// Retries a failed execution from where it failed.
#[utoipa::path(post, path = "/executions/{execution_id}/retry", tag = "workflows", operation_id = "retry_execution",
    params(("execution_id" = Uuid, Path, description = "Execution")),
    responses(
        (status = 202, description = "Running again", body = ExecutionBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not failed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn retry_execution(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let e = execution_for(&s, &who, id).await?;
    let e = engine(&s)?.retry(e.id).await?;
    Ok((StatusCode::ACCEPTED, Json(ExecutionBody::from(e))).into_response())
}

/// Cancels a running or waiting execution.
#[utoipa::path(post, path = "/executions/{execution_id}/cancel", tag = "workflows", operation_id = "cancel_execution",
    params(("execution_id" = Uuid, Path, description = "Execution")),
    responses(
        (status = 200, description = "Cancelled", body = ExecutionBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn cancel_execution(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<ExecutionBody>, ApiError> {
    let e = execution_for(&s, &who, id).await?;
    Ok(Json(engine(&s)?.cancel(e.id).await?.into()))
}

/// Replays a stored execution and compares every decision with the recorded one.
#[utoipa::path(get, path = "/executions/{execution_id}/replay", tag = "workflows", operation_id = "replay_execution",
    params(("execution_id" = Uuid, Path, description = "Execution")),
    responses(
        (status = 200, description = "`identical` and the compared decisions", body = Object),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn replay_execution(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let e = execution_for(&s, &who, id).await?;
    let replay = engine(&s)?.replay(e.id).await?;
    Ok(Json(serde_json::to_value(replay).unwrap_or(Value::Null)))
}

/// An organization's approvals, newest first.
#[utoipa::path(get, path = "/orgs/{org_id}/approvals", tag = "workflows", operation_id = "list_approvals",
    params(("org_id" = Uuid, Path, description = "Organization"), ApprovalQuery),
    responses(
        (status = 200, description = "Approvals", body = Vec<ApprovalBody>),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs task.read in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_approvals(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
    Query(q): Query<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalBody>>, ApiError> {
    let limit = limit(q.limit)?;
    let org = OrgId(org);
    require(&s, &who, Action::Read, &Resource::new(ResourceKind::Task, Some(org), None)).await?;
    let list = engine(&s)?
        .stores()
        .approvals
        .list_approvals(org, q.pending.unwrap_or(true), limit)
        .await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Approves or rejects. Your right is checked now, against the approval's approvers; the
/// requester may not decide unless the step allows self-approval.
#[utoipa::path(post, path = "/approvals/{approval_id}/decision", tag = "workflows", operation_id = "decide_approval",
    params(("approval_id" = Uuid, Path, description = "Approval")),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The approval after your decision", body = ApprovalBody),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an approver (now), or self-approval", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already decided or closed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn decide_approval(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<DecisionBody>,
) -> Result<Json<ApprovalBody>, ApiError> {
    let a = engine(&s)?.decide(ApprovalId(id), who.user_id, body.approve, body.comment).await?;
    Ok(Json(a.into()))
}

/// Built-in workflow templates (definition documents to start from).
#[utoipa::path(get, path = "/workflow-templates", tag = "workflows", operation_id = "list_workflow_templates",
    responses(
        (status = 200, description = "Templates by name", body = Object),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_templates(_who: Authenticated) -> Json<Value> {
    Json(Value::Object(
        pm_workflows::definition::TEMPLATES
            .iter()
            .map(|(name, doc)| (name.to_string(), serde_json::from_str(doc).unwrap_or(Value::Null)))
            .collect(),
    ))
}

/// The incoming webhook of a workflow with a `webhook` trigger. Authenticated by the
/// workflow's secret (`X-PM-Webhook-Secret`), deduplicated by `webhook-id`; the JSON body is
/// `trigger` in expressions (a `task_id` in it selects the task).
#[utoipa::path(post, path = "/hooks/workflows/{workflow_id}", tag = "workflows", operation_id = "workflow_webhook",
    params(
        ("workflow_id" = Uuid, Path, description = "Workflow"),
        ("webhook-id" = Option<String>, Header, description = "Delivery id (deduplication)"),
    ),
    request_body = Object,
    responses(
        (status = 202, description = "Started", body = ExecutionBody),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing X-PM-Webhook-Secret", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong secret", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This delivery already started an execution", body = Problem, content_type = "application/problem+json"),
    ),
    security(("workflow_webhook_secret" = [])))]
async fn webhook(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let secret =
        headers.get("x-pm-webhook-secret").and_then(|v| v.to_str().ok()).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "send the workflow's secret in X-PM-Webhook-Secret",
            )
        })?;
    let delivery = match headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
        Some(d) => d.to_string(),
        None => Uuid::now_v7().to_string(),
    };
    let e = engine(&s)?.webhook(WorkflowId(id), secret, &delivery, body).await?;
    Ok((StatusCode::ACCEPTED, Json(ExecutionBody::from(e))).into_response())
}

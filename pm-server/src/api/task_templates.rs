//! Task templates (pm-workflows): CRUD and instantiation into a project.
//!
//! A template is a task tree (title, description, priority, labels, custom fields, estimate, due
//! date offset, checklist, default assignee rule, subtasks) plus workflow definitions created
//! with it; the document is described in `pm_workflows::task_template` and published as a JSON
//! Schema, `pm-workflows/schema/task-template.schema.json` (the `task` and `workflows` members of
//! the create/update bodies; not served over HTTP, like the workflow schema). Instantiating creates the
//! tasks through pm-core as the caller (their rights and field rules apply) and the workflows —
//! all or nothing: a failure halfway removes what was created.
//!
//! Rights: creating, changing and deleting templates needs `workflow.manage` in the organization
//! (a template carries automation); reading them needs `task.read` in the organization;
//! instantiating needs the right to create tasks in the target project (checked by pm-core for
//! every task). Without the workflow engine every route answers 404 `workflows-disabled`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, TaskId};
use pm_core::model::Task;
use pm_workflows::engine::{Engine, InstantiateRequest};
use pm_workflows::store::{TaskTemplate, TaskTemplateId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use super::workflows::WorkflowBody;
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::require;
use crate::error::ApiError;
use crate::extract::{Json, Path};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_template, list_templates))
        .routes(routes!(get_template, update_template, delete_template))
        .routes(routes!(instantiate_template))
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

/// A task template.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskTemplate)]
pub struct TemplateBody {
    /// Identity.
    pub id: Uuid,
    /// Organization.
    pub org_id: Uuid,
    /// Only instantiable into this project, when set.
    pub project_id: Option<Uuid>,
    /// Name, unique in the organization.
    pub name: String,
    /// The task tree: `title`, `description`, `priority`, `labels`, `custom_fields`,
    /// `estimate`, `due_in_days`, `checklist`, `assignee` (`nobody`, `instantiator`,
    /// `project_lead`, `{"users": [...]}`), `subtasks`. Texts take `{{values.x}}`,
    /// `{{project.key}}`, `{{parent.reference}}` placeholders.
    #[schema(value_type = Object)]
    pub task: Value,
    /// Workflows created with it: `[{"scope": "project"|"task", "enabled": true, "definition": {...}}]`.
    #[schema(value_type = Vec<Object>)]
    pub workflows: Value,
    /// Who created it.
    pub created_by: Actor,
    /// Record version; send it back to change the template.
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

impl From<TaskTemplate> for TemplateBody {
    fn from(t: TaskTemplate) -> Self {
        Self {
            id: t.id.0,
            org_id: t.org_id.0,
            project_id: t.project_id.map(|p| p.0),
            name: t.name,
            task: serde_json::to_value(&t.spec.task).unwrap_or(Value::Null),
            workflows: serde_json::to_value(&t.spec.workflows).unwrap_or(Value::Null),
            created_by: t.created_by,
            version: t.version,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A new template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplateBody {
    /// Name, 1–200 characters, unique in the organization.
    pub name: String,
    /// Restrict it to one project of the organization.
    pub project_id: Option<Uuid>,
    /// The task tree (see `TaskTemplate.task`; JSON Schema:
    /// `pm-workflows/schema/task-template.schema.json`, property `task`).
    #[schema(value_type = Object)]
    pub task: Value,
    /// Workflows created with it (see `TaskTemplate.workflows`; JSON Schema:
    /// `pm-workflows/schema/task-template.schema.json`, property `workflows`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub workflows: Option<Value>,
}

/// A template's new content.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTemplateBody {
    /// The record version you read.
    pub version: i64,
    /// Name.
    pub name: String,
    /// Project restriction (none = any project of the organization).
    pub project_id: Option<Uuid>,
    /// The task tree (JSON Schema: `pm-workflows/schema/task-template.schema.json`, property
    /// `task`).
    #[schema(value_type = Object)]
    pub task: Value,
    /// Workflows created with it (JSON Schema: `pm-workflows/schema/task-template.schema.json`,
    /// property `workflows`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub workflows: Option<Value>,
}

/// Where and with which values to instantiate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstantiateBody {
    /// Target project.
    pub project_id: Uuid,
    /// Create the root task as a subtask of this task (same project).
    pub parent_task_id: Option<Uuid>,
    /// Values of the `{{values.x}}` placeholders (every one the template uses is required).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// What an instantiation created.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstantiatedBody {
    /// The tasks, root first, parents before their subtasks.
    pub tasks: Vec<Task>,
    /// The workflows created for them.
    pub workflows: Vec<WorkflowBody>,
}

fn spec(task: Value, workflows: Option<Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("task".into(), task);
    if let Some(w) = workflows {
        m.insert("workflows".into(), w);
    }
    Value::Object(m)
}

async fn require_manage(s: &AppState, who: &Authenticated, org: OrgId) -> Result<(), ApiError> {
    require(s, who, Action::Manage, &Resource::new(ResourceKind::Workflow, Some(org), None)).await
}

async fn require_read(s: &AppState, who: &Authenticated, org: OrgId) -> Result<(), ApiError> {
    require(s, who, Action::Read, &Resource::new(ResourceKind::Task, Some(org), None)).await
}

const NOT_FOUND: &str = "No such organization or template (or workflows are disabled)";

/// Creates a task template.
///
/// `task` and `workflows` form the template document published as a JSON Schema (draft
/// 2020-12), `pm-workflows/schema/task-template.schema.json`: validate hand-written templates
/// against it (with format assertion on, so ids must be UUIDs) before sending them. The server
/// also enforces what a schema cannot state — at most 100 tasks nested at most 5 levels,
/// attached workflows whose CEL conditions and rhai scripts compile, and integers written
/// without a fraction (`5`, not `5.0`) — answering 400 with the JSON path in `field`.
#[utoipa::path(post, path = "/orgs/{org_id}/task-templates", tag = "workflows", operation_id = "create_task_template",
    params(("org_id" = Uuid, Path, description = "Organization")),
    request_body = NewTemplateBody,
    responses(
        (status = 201, description = "Created", body = TemplateBody),
        (status = 400, description = "Invalid template (`field` is its JSON path, e.g. `task.subtasks[1].title`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The organization has a template of this name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
    Json(body): Json<NewTemplateBody>,
) -> Result<Response, ApiError> {
    let org = OrgId(org);
    require_manage(&s, &who, org).await?;
    let t = engine(&s)?
        .create_template(
            org,
            body.project_id.map(ProjectId),
            &body.name,
            &spec(body.task, body.workflows),
            Actor::User(who.user_id),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(TemplateBody::from(t))).into_response())
}

/// Lists an organization's task templates, by name.
#[utoipa::path(get, path = "/orgs/{org_id}/task-templates", tag = "workflows", operation_id = "list_task_templates",
    params(("org_id" = Uuid, Path, description = "Organization")),
    responses(
        (status = 200, description = "The templates", body = Vec<TemplateBody>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs task.read in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_templates(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org): Path<Uuid>,
) -> Result<Json<Vec<TemplateBody>>, ApiError> {
    let org = OrgId(org);
    require_read(&s, &who, org).await?;
    let list = engine(&s)?.stores().templates.list_templates(org).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

async fn template_for(
    s: &AppState,
    who: &Authenticated,
    id: Uuid,
) -> Result<TaskTemplate, ApiError> {
    let t = engine(s)?.stores().templates.get_template(TaskTemplateId(id)).await?;
    require_read(s, who, t.org_id).await?;
    Ok(t)
}

/// One task template.
#[utoipa::path(get, path = "/task-templates/{template_id}", tag = "workflows", operation_id = "get_task_template",
    params(("template_id" = Uuid, Path, description = "Template")),
    responses(
        (status = 200, description = "The template", body = TemplateBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs task.read in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<TemplateBody>, ApiError> {
    Ok(Json(template_for(&s, &who, id).await?.into()))
}

/// Replaces a task template's content.
///
/// `task` and `workflows` form the template document published as a JSON Schema (draft
/// 2020-12), `pm-workflows/schema/task-template.schema.json`: validate hand-written templates
/// against it (with format assertion on, so ids must be UUIDs) before sending them. The server
/// also enforces what a schema cannot state — at most 100 tasks nested at most 5 levels,
/// attached workflows whose CEL conditions and rhai scripts compile, and integers written
/// without a fraction (`5`, not `5.0`) — answering 400 with the JSON path in `field`.
#[utoipa::path(put, path = "/task-templates/{template_id}", tag = "workflows", operation_id = "update_task_template",
    params(("template_id" = Uuid, Path, description = "Template")),
    request_body = UpdateTemplateBody,
    responses(
        (status = 200, description = "The template at its new version", body = TemplateBody),
        (status = 400, description = "Invalid template (`field` is its JSON path)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed since you read it, or the name is taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateTemplateBody>,
) -> Result<Json<TemplateBody>, ApiError> {
    let t = template_for(&s, &who, id).await?;
    require_manage(&s, &who, t.org_id).await?;
    let t = engine(&s)?
        .update_template(
            t.id,
            body.version,
            body.project_id.map(ProjectId),
            &body.name,
            &spec(body.task, body.workflows),
        )
        .await?;
    Ok(Json(t.into()))
}

/// Deletes a task template (what was instantiated from it stays).
#[utoipa::path(delete, path = "/task-templates/{template_id}", tag = "workflows", operation_id = "delete_task_template",
    params(("template_id" = Uuid, Path, description = "Template")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs workflow.manage", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let t = template_for(&s, &who, id).await?;
    require_manage(&s, &who, t.org_id).await?;
    engine(&s)?.stores().templates.delete_template(t.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Instantiates a template into a project: its tasks (as you) and its workflows, all or
/// nothing.
#[utoipa::path(post, path = "/task-templates/{template_id}/instantiate", tag = "workflows", operation_id = "instantiate_task_template",
    params(("template_id" = Uuid, Path, description = "Template")),
    request_body = InstantiateBody,
    responses(
        (status = 201, description = "What was created", body = InstantiatedBody),
        (status = 400, description = "Invalid input: a missing `values.x`, a project of another organization, or a task the template would create is invalid (`field` is its path, e.g. `task.subtasks[1].assignees`); nothing was created", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "May not create tasks in the project", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn instantiate_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(body): Json<InstantiateBody>,
) -> Result<Response, ApiError> {
    let t = template_for(&s, &who, id).await?;
    let request = InstantiateRequest {
        template: t.id,
        project: ProjectId(body.project_id),
        parent: body.parent_task_id.map(TaskId),
        values: body.values,
        reporter: None,
        source_task: None,
        idempotency_key: None,
    };
    let done = engine(&s)?.instantiate(&who.origin(), request).await?;
    let body = InstantiatedBody {
        tasks: done.tasks,
        workflows: done.workflows.into_iter().map(Into::into).collect(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

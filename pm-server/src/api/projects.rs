//! Projects and their configuration: workflow states, labels (organization-wide), milestones and
//! custom field definitions.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pm_core::id::{LabelId, MilestoneId, OrgId, ProjectId, UserId};
use pm_core::model::{
    Color, CustomField, FieldType, Label, LabelName, Markdown, Milestone, Name, Project,
    ProjectKey, ProjectPatch, StateCategory, WorkflowState,
};
use pm_core::service::{MilestonePatch, NewProject};
use serde::Deserialize;
use time::Date;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{Precondition, Problem, double_option, with_etag};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project))
        .routes(routes!(list_states, create_state))
        .routes(routes!(list_labels, create_label))
        .routes(routes!(delete_label))
        .routes(routes!(list_milestones, create_milestone))
        .routes(routes!(update_milestone))
        .routes(routes!(list_fields, create_field))
}

/// Whether to include archived projects.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProjectsQuery {
    /// Include archived projects (default false).
    pub archived: Option<bool>,
}

/// Lists an organization's projects.
#[utoipa::path(get, path = "/orgs/{org_id}/projects", tag = "projects", operation_id = "list_projects",
    params(("org_id" = Uuid, Path, description = "Organization id"), ListProjectsQuery),
    responses(
        (status = 200, description = "Projects by key", body = Vec<Project>),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_projects(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Query(q): Query<ListProjectsQuery>,
) -> Result<Json<Vec<Project>>, ApiError> {
    Ok(Json(s.pm.list_projects(&who.origin(), OrgId(org_id), q.archived.unwrap_or(false)).await?))
}

/// A new project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectBody {
    /// Key, 2-10 of A-Z and 0-9 starting with a letter; prefixes task numbers (`PM-42`).
    #[schema(value_type = String)]
    pub key: ProjectKey,
    /// Name.
    #[schema(value_type = String)]
    pub name: Name,
    /// Markdown description.
    #[serde(default)]
    #[schema(value_type = String)]
    pub description: Markdown,
    /// Project lead (a member).
    pub lead: Option<UserId>,
}

/// Creates a project with the default workflow states.
#[utoipa::path(post, path = "/orgs/{org_id}/projects", tag = "projects", operation_id = "create_project",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    request_body = CreateProjectBody,
    responses(
        (status = 201, description = "The project", body = Project),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_project(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Json(b): Json<CreateProjectBody>,
) -> Result<Response, ApiError> {
    let input = NewProject { key: b.key, name: b.name, description: b.description, lead: b.lead };
    let p = s.pm.create_project(&who.origin(), OrgId(org_id), input).await?;
    Ok(with_etag(StatusCode::CREATED, p.version, p))
}

/// Reads a project.
#[utoipa::path(get, path = "/projects/{project_id}", tag = "projects", operation_id = "get_project",
    params(("project_id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project; `ETag` is its version", body = Project),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_project(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let p = s.pm.get_project(&who.origin(), ProjectId(id)).await?;
    Ok(with_etag(StatusCode::OK, p.version, p))
}

/// Changes to a project; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectBody {
    /// Expected version, when not sent as `If-Match`.
    pub version: Option<i64>,
    /// New name.
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    /// New description.
    #[schema(value_type = Option<String>)]
    pub description: Option<Markdown>,
    /// New lead; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub lead: Option<Option<UserId>>,
    /// Archive or restore.
    pub archived: Option<bool>,
}

/// Updates a project (If-Match or body version required).
#[utoipa::path(patch, path = "/projects/{project_id}", tag = "projects", operation_id = "update_project",
    params(("project_id" = Uuid, Path, description = "Project id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = UpdateProjectBody,
    responses(
        (status = 200, description = "The updated project", body = Project),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict; `current` holds the project", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_project(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<UpdateProjectBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let patch = ProjectPatch {
        name: b.name,
        description: b.description,
        lead: b.lead,
        archived: b.archived,
    };
    let p =
        s.pm.update_project(&who.origin(), ProjectId(id), pre.version(), patch)
            .await
            .map_err(|e| pre.map_err(e))?;
    Ok(with_etag(StatusCode::OK, p.version, p))
}

/// Lists a project's workflow states (board columns).
#[utoipa::path(get, path = "/projects/{project_id}/states", tag = "projects", operation_id = "list_states",
    params(("project_id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "States by position", body = Vec<WorkflowState>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_states(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<WorkflowState>>, ApiError> {
    Ok(Json(s.pm.list_states(&who.origin(), ProjectId(id)).await?))
}

/// A new workflow state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStateBody {
    /// Name, unique in the project.
    #[schema(value_type = String)]
    pub name: Name,
    /// backlog, unstarted, started, completed or cancelled.
    pub category: StateCategory,
}

/// Adds a workflow state at the end of the board (project managers).
#[utoipa::path(post, path = "/projects/{project_id}/states", tag = "projects", operation_id = "create_state",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = CreateStateBody,
    responses(
        (status = 201, description = "The state", body = WorkflowState),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_state(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<CreateStateBody>,
) -> Result<Response, ApiError> {
    let st = s.pm.create_state(&who.origin(), ProjectId(id), b.name, b.category).await?;
    Ok((StatusCode::CREATED, Json(st)).into_response())
}

/// Lists an organization's labels.
#[utoipa::path(get, path = "/orgs/{org_id}/labels", tag = "projects", operation_id = "list_labels",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "Labels by name", body = Vec<Label>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_labels(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<Vec<Label>>, ApiError> {
    Ok(Json(s.pm.list_labels(&who.origin(), OrgId(org_id)).await?))
}

/// A new label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLabelBody {
    /// Name, unique in the organization (1-64 chars).
    #[schema(value_type = String)]
    pub name: LabelName,
    /// Colour, `#rrggbb`.
    #[schema(value_type = String, example = "#3b82f6")]
    pub color: Color,
}

/// Creates a label (owners and admins).
#[utoipa::path(post, path = "/orgs/{org_id}/labels", tag = "projects", operation_id = "create_label",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    request_body = CreateLabelBody,
    responses(
        (status = 201, description = "The label", body = Label),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_label(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Json(b): Json<CreateLabelBody>,
) -> Result<Response, ApiError> {
    let l = s.pm.create_label(&who.origin(), OrgId(org_id), b.name, b.color).await?;
    Ok((StatusCode::CREATED, Json(l)).into_response())
}

/// Deletes a label and removes it from every task (owners and admins).
#[utoipa::path(delete, path = "/orgs/{org_id}/labels/{label_id}", tag = "projects", operation_id = "delete_label",
    params(("org_id" = Uuid, Path, description = "Organization id"), ("label_id" = Uuid, Path, description = "Label id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such label", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_label(
    State(s): State<AppState>,
    who: Authenticated,
    Path((org_id, label_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    s.pm.delete_label(&who.origin(), OrgId(org_id), LabelId(label_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a project's milestones.
#[utoipa::path(get, path = "/projects/{project_id}/milestones", tag = "projects", operation_id = "list_milestones",
    params(("project_id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "Milestones by due date", body = Vec<Milestone>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_milestones(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Milestone>>, ApiError> {
    Ok(Json(s.pm.list_milestones(&who.origin(), ProjectId(id)).await?))
}

/// A new milestone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMilestoneBody {
    /// Name, unique in the project.
    #[schema(value_type = String)]
    pub name: Name,
    /// Markdown description.
    #[serde(default)]
    #[schema(value_type = String)]
    pub description: Markdown,
    /// Target date.
    pub due_on: Option<Date>,
}

/// Creates a milestone (project managers).
#[utoipa::path(post, path = "/projects/{project_id}/milestones", tag = "projects", operation_id = "create_milestone",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = CreateMilestoneBody,
    responses(
        (status = 201, description = "The milestone", body = Milestone),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_milestone(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<CreateMilestoneBody>,
) -> Result<Response, ApiError> {
    let m =
        s.pm.create_milestone(&who.origin(), ProjectId(id), b.name, b.description, b.due_on)
            .await?;
    Ok(with_etag(StatusCode::CREATED, m.version, m))
}

/// Changes to a milestone.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMilestoneBody {
    /// Expected version, when not sent as `If-Match`.
    pub version: Option<i64>,
    /// New name.
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    /// New description.
    #[schema(value_type = Option<String>)]
    pub description: Option<Markdown>,
    /// New target date; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Date>)]
    pub due_on: Option<Option<Date>>,
    /// Close or reopen.
    pub closed: Option<bool>,
}

/// Updates a milestone (If-Match or body version required).
#[utoipa::path(patch, path = "/milestones/{milestone_id}", tag = "projects", operation_id = "update_milestone",
    params(("milestone_id" = Uuid, Path, description = "Milestone id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = UpdateMilestoneBody,
    responses(
        (status = 200, description = "The milestone", body = Milestone),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such milestone", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict or name taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_milestone(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<UpdateMilestoneBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let patch = MilestonePatch {
        name: b.name,
        description: b.description,
        due_on: b.due_on,
        closed: b.closed,
    };
    let m =
        s.pm.update_milestone(&who.origin(), MilestoneId(id), pre.version(), patch)
            .await
            .map_err(|e| pre.map_err(e))?;
    Ok(with_etag(StatusCode::OK, m.version, m))
}

/// Lists a project's custom fields.
#[utoipa::path(get, path = "/projects/{project_id}/fields", tag = "projects", operation_id = "list_fields",
    params(("project_id" = Uuid, Path, description = "Project id")),
    responses(
        (status = 200, description = "Custom fields by name", body = Vec<CustomField>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_fields(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<CustomField>>, ApiError> {
    Ok(Json(s.pm.list_fields(&who.origin(), ProjectId(id)).await?))
}

/// A new custom field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFieldBody {
    /// Name, unique in the project.
    #[schema(value_type = String)]
    pub name: Name,
    /// Type, with options for select types, e.g. `{"type": "select", "options": ["a", "b"]}`.
    pub field_type: FieldType,
}

/// Defines a custom field (project managers).
#[utoipa::path(post, path = "/projects/{project_id}/fields", tag = "projects", operation_id = "create_field",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = CreateFieldBody,
    responses(
        (status = 201, description = "The field", body = CustomField),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_field(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<CreateFieldBody>,
) -> Result<Response, ApiError> {
    let f = s.pm.create_field(&who.origin(), ProjectId(id), b.name, b.field_type).await?;
    Ok((StatusCode::CREATED, Json(f)).into_response())
}

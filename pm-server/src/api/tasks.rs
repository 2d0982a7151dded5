//! Tasks: list (filter, search, sort, keyset pages), create, read, update (including state
//! transitions), delete, and bulk update.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use pm_core::id::{FieldId, LabelId, MilestoneId, OrgId, ProjectId, StateId, TaskId, UserId};
use pm_core::model::{
    Estimate, FieldValue, Markdown, Priority, StateCategory, Task, TaskPatch, TaskTitle,
};
use pm_core::query::{PageRequest, TaskFilter, TaskSort, TaskSortKey};
use pm_core::service::CreateTask;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{
    PageBody, Precondition, Problem, csv, double_option, page_response, with_etag,
};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_org_tasks))
        .routes(routes!(list_project_tasks, create_task))
        .routes(routes!(get_task, update_task, delete_task))
        .routes(routes!(transition_task))
        .routes(routes!(bulk_update_tasks))
}

/// Filters, search, sort and paging of a task list. List-valued filters take comma-separated
/// values and match any of them; different filters combine with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Project ids (org-wide lists only).
    pub project: Option<String>,
    /// Workflow state ids.
    pub state: Option<String>,
    /// State categories: backlog, unstarted, started, completed, cancelled.
    pub state_category: Option<String>,
    /// Assignee user ids (`me` for the caller).
    pub assignee: Option<String>,
    /// Reporter user ids (`me` for the caller).
    pub reporter: Option<String>,
    /// Label ids.
    pub label: Option<String>,
    /// Priorities: none, low, medium, high, urgent.
    pub priority: Option<String>,
    /// Due on or after (YYYY-MM-DD).
    pub due_from: Option<String>,
    /// Due on or before (YYYY-MM-DD).
    pub due_to: Option<String>,
    /// Parent task id, or `none` for top-level tasks only.
    pub parent: Option<String>,
    /// Milestone id.
    pub milestone: Option<String>,
    /// Changed at or after (RFC 3339).
    pub updated_since: Option<String>,
    /// `false` (default), `true`, or `all`.
    pub archived: Option<String>,
    /// Full-text search over title, description and comments.
    pub q: Option<String>,
    /// Sort key: created (default), updated, due, priority, rank, number; prefix `-` for
    /// descending.
    pub sort: Option<String>,
    /// Page size, 1-100 (default 25).
    pub limit: Option<String>,
    /// Cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

fn uuid_list<T: From<Uuid>>(
    field: &str,
    raw: Option<&str>,
    me: UserId,
) -> Result<Vec<T>, ApiError> {
    csv(field, raw, |s| {
        if s == "me" { Some(T::from(me.0)) } else { Uuid::parse_str(s).ok().map(T::from) }
    })
}

fn parse_date(field: &str, raw: Option<&str>) -> Result<Option<Date>, ApiError> {
    raw.map(|s| {
        Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
            .map_err(|_| pm_core::Error::invalid(field, "must be a date like 2030-01-31").into())
    })
    .transpose()
}

impl ListTasksQuery {
    fn parse(&self, me: UserId, org_wide: bool) -> Result<(TaskFilter, PageRequest), ApiError> {
        if !org_wide && self.project.is_some() {
            return Err(pm_core::Error::invalid(
                "project",
                "is only accepted on organization-wide lists",
            )
            .into());
        }
        let archived = match self.archived.as_deref() {
            None | Some("false") => Some(false),
            Some("true") => Some(true),
            Some("all") => None,
            Some(_) => {
                return Err(
                    pm_core::Error::invalid("archived", "must be true, false or all").into()
                );
            }
        };
        let parent =
            match self.parent.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(s) => Some(Some(TaskId(Uuid::parse_str(s).map_err(|_| {
                    pm_core::Error::invalid("parent", "must be a task id or `none`")
                })?))),
            };
        let filter = TaskFilter {
            project_ids: uuid_list("project", self.project.as_deref(), me)?,
            state_ids: uuid_list("state", self.state.as_deref(), me)?,
            state_categories: csv("state_category", self.state_category.as_deref(), |s| {
                StateCategory::parse(s).ok()
            })?,
            assignees: uuid_list("assignee", self.assignee.as_deref(), me)?,
            reporters: uuid_list("reporter", self.reporter.as_deref(), me)?,
            labels: uuid_list("label", self.label.as_deref(), me)?,
            priorities: csv("priority", self.priority.as_deref(), |s| Priority::parse(s).ok())?,
            due_from: parse_date("due_from", self.due_from.as_deref())?,
            due_to: parse_date("due_to", self.due_to.as_deref())?,
            parent,
            milestone_id: self
                .milestone
                .as_deref()
                .map(|s| {
                    Uuid::parse_str(s)
                        .map(MilestoneId)
                        .map_err(|_| pm_core::Error::invalid("milestone", "must be a milestone id"))
                })
                .transpose()?,
            updated_since: self
                .updated_since
                .as_deref()
                .map(|s| {
                    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            pm_core::Error::invalid(
                                "updated_since",
                                "must be an RFC 3339 timestamp",
                            )
                        })
                })
                .transpose()?,
            archived,
            text: self.q.clone(),
        };
        filter.validate()?;
        let sort = match self.sort.as_deref() {
            None => TaskSort::default(),
            Some(s) => {
                let (descending, key) = match s.strip_prefix('-') {
                    Some(k) => (true, k),
                    None => (false, s),
                };
                TaskSort { key: TaskSortKey::parse(key)?, descending }
            }
        };
        let limit = self
            .limit
            .as_deref()
            .map(|s| {
                s.parse::<u32>().map_err(|_| {
                    pm_core::Error::invalid("limit", "must be a number between 1 and 100")
                })
            })
            .transpose()?;
        let page = PageRequest::parse(sort, limit, self.cursor.as_deref())?;
        Ok((filter, page))
    }
}

/// Lists tasks across an organization's projects.
#[utoipa::path(get, path = "/orgs/{org_id}/tasks", tag = "tasks", operation_id = "list_org_tasks",
    params(("org_id" = Uuid, Path, description = "Organization id"), ListTasksQuery),
    responses(
        (status = 200, description = "A page of tasks; a `Link: rel=next` header points to the next page", body = PageBody<Task>),
        (status = 400, description = "Invalid filter, sort, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_org_tasks(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Query(q): Query<ListTasksQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (filter, page) = q.parse(who.user_id, true)?;
    let result = s.pm.list_tasks(&who.origin(), OrgId(org_id), &filter, &page).await?;
    Ok(page_response(result, &uri))
}

/// Lists a project's tasks.
#[utoipa::path(get, path = "/projects/{project_id}/tasks", tag = "tasks", operation_id = "list_project_tasks",
    params(("project_id" = Uuid, Path, description = "Project id"), ListTasksQuery),
    responses(
        (status = 200, description = "A page of tasks; a `Link: rel=next` header points to the next page", body = PageBody<Task>),
        (status = 400, description = "Invalid filter, sort, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_project_tasks(
    State(s): State<AppState>,
    who: Authenticated,
    Path(project_id): Path<Uuid>,
    Query(q): Query<ListTasksQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (filter, page) = q.parse(who.user_id, false)?;
    let result =
        s.pm.list_project_tasks(&who.origin(), ProjectId(project_id), &filter, &page).await?;
    Ok(page_response(result, &uri))
}

/// A new task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskBody {
    /// Title, 1-500 characters.
    #[schema(value_type = String, min_length = 1, max_length = 500)]
    pub title: TaskTitle,
    /// Markdown description.
    #[serde(default)]
    #[schema(value_type = String)]
    pub description: Markdown,
    /// Initial state (default: the project's first unstarted state).
    pub state_id: Option<StateId>,
    /// Priority (default none).
    #[serde(default)]
    pub priority: Priority,
    /// Assignees (organization members).
    #[serde(default)]
    pub assignees: BTreeSet<UserId>,
    /// Reporter (default: the caller).
    pub reporter: Option<UserId>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeSet<LabelId>,
    /// Planned start (YYYY-MM-DD).
    pub start_date: Option<Date>,
    /// Due date (YYYY-MM-DD).
    pub due_date: Option<Date>,
    /// Estimate in points, 0-1000.
    pub estimate: Option<Estimate>,
    /// Parent task (same project).
    pub parent_id: Option<TaskId>,
    /// Milestone (same project).
    pub milestone_id: Option<MilestoneId>,
    /// Custom field values by field id.
    #[serde(default)]
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
}

impl CreateTaskBody {
    /// The service input for this body in `project_id`, with a caller-chosen `id` if any (the
    /// offline sync's `task.create` reuses this).
    pub fn into_input(self, project_id: ProjectId, id: Option<TaskId>) -> CreateTask {
        CreateTask {
            id,
            project_id,
            title: self.title,
            description: self.description,
            state_id: self.state_id,
            priority: self.priority,
            assignees: self.assignees,
            reporter: self.reporter,
            labels: self.labels,
            start_date: self.start_date,
            due_date: self.due_date,
            estimate: self.estimate,
            parent_id: self.parent_id,
            milestone_id: self.milestone_id,
            custom_fields: self.custom_fields,
        }
    }
}

/// Creates a task in a project.
#[utoipa::path(post, path = "/projects/{project_id}/tasks", tag = "tasks", operation_id = "create_task",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = CreateTaskBody,
    responses(
        (status = 201, description = "The created task, with its ETag", body = Task),
        (status = 400, description = "Invalid body; `field` names the offending field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_task(
    State(s): State<AppState>,
    who: Authenticated,
    Path(project_id): Path<Uuid>,
    Json(b): Json<CreateTaskBody>,
) -> Result<Response, ApiError> {
    let input = b.into_input(ProjectId(project_id), None);
    let task = s.pm.create_task(&who.origin(), input).await?;
    Ok(with_etag(StatusCode::CREATED, task.version, task))
}

/// Reads a task.
#[utoipa::path(get, path = "/tasks/{task_id}", tag = "tasks", operation_id = "get_task",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task; `ETag` is its version", body = Task),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_task(
    State(s): State<AppState>,
    who: Authenticated,
    Path(task_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let task = s.pm.get_task(&who.origin(), TaskId(task_id)).await?;
    Ok(with_etag(StatusCode::OK, task.version, task))
}

/// Changes to a task: absent fields stay as they are, `null` clears an optional field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskBody {
    /// Expected version, when not sent as `If-Match`.
    pub version: Option<i64>,
    /// New title.
    #[schema(value_type = Option<String>)]
    pub title: Option<TaskTitle>,
    /// New description.
    #[schema(value_type = Option<String>)]
    pub description: Option<Markdown>,
    /// New state (a transition).
    pub state_id: Option<StateId>,
    /// New priority.
    pub priority: Option<Priority>,
    /// Replaces the assignees.
    pub assignees: Option<BTreeSet<UserId>>,
    /// Replaces the labels.
    pub labels: Option<BTreeSet<LabelId>>,
    /// New start date; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Date>)]
    pub start_date: Option<Option<Date>>,
    /// New due date; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Date>)]
    pub due_date: Option<Option<Date>>,
    /// New estimate; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u32>)]
    pub estimate: Option<Option<Estimate>>,
    /// New parent; null makes it top-level.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<TaskId>>,
    /// New milestone; null clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub milestone_id: Option<Option<MilestoneId>>,
    /// New manual rank.
    pub rank: Option<String>,
    /// Archive or restore.
    pub archived: Option<bool>,
    /// Custom field values to set; null clears one.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub custom_fields: BTreeMap<FieldId, Option<FieldValue>>,
}

impl UpdateTaskBody {
    /// The service patch for this body (its `version` is the caller's business); validates
    /// `rank`. The offline sync's `task.update` reuses this.
    pub fn into_patch(self) -> Result<TaskPatch, ApiError> {
        if let Some(r) = &self.rank
            && (r.is_empty()
                || r.len() > 64
                || !r.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
        {
            return Err(
                pm_core::Error::invalid("rank", "must be 1-64 characters of 0-9 and a-z").into()
            );
        }
        Ok(TaskPatch {
            title: self.title,
            description: self.description,
            state_id: self.state_id,
            priority: self.priority,
            assignees: self.assignees,
            labels: self.labels,
            start_date: self.start_date,
            due_date: self.due_date,
            estimate: self.estimate,
            parent_id: self.parent_id,
            milestone_id: self.milestone_id,
            rank: self.rank,
            archived: self.archived,
            custom_fields: self.custom_fields,
        })
    }
}

/// Updates a task. Send the ETag you read as `If-Match` (412 if the task changed since) or the
/// version in the body (409 with the current task if it changed).
#[utoipa::path(patch, path = "/tasks/{task_id}", tag = "tasks", operation_id = "update_task",
    params(("task_id" = Uuid, Path, description = "Task id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = UpdateTaskBody,
    responses(
        (status = 200, description = "The updated task", body = Task),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict; `current` holds the task", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match; `current` holds the task", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_task(
    State(s): State<AppState>,
    who: Authenticated,
    Path(task_id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<UpdateTaskBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let patch = b.into_patch()?;
    let task =
        s.pm.update_task(&who.origin(), TaskId(task_id), pre.version(), patch)
            .await
            .map_err(|e| pre.map_err(e))?;
    Ok(with_etag(StatusCode::OK, task.version, task))
}

/// Deletes a task (its comments, records and relations go with it; subtasks become top-level).
#[utoipa::path(delete, path = "/tasks/{task_id}", tag = "tasks", operation_id = "delete_task",
    params(("task_id" = Uuid, Path, description = "Task id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being deleted")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_task(
    State(s): State<AppState>,
    who: Authenticated,
    Path(task_id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let pre = Precondition::from_request(&headers, None)?;
    s.pm.delete_task(&who.origin(), TaskId(task_id), pre.version())
        .await
        .map_err(|e| pre.map_err(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A state transition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// Target workflow state (of the task's project).
    pub state_id: StateId,
    /// Expected version, when not sent as `If-Match`.
    pub version: Option<i64>,
}

/// Moves a task to another workflow state.
#[utoipa::path(post, path = "/tasks/{task_id}/transition", tag = "tasks", operation_id = "transition_task",
    params(("task_id" = Uuid, Path, description = "Task id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = TransitionBody,
    responses(
        (status = 200, description = "The task in its new state", body = Task),
        (status = 400, description = "Not a state of the task's project", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn transition_task(
    State(s): State<AppState>,
    who: Authenticated,
    Path(task_id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<TransitionBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let patch = TaskPatch { state_id: Some(b.state_id), ..Default::default() };
    let task =
        s.pm.update_task(&who.origin(), TaskId(task_id), pre.version(), patch)
            .await
            .map_err(|e| pre.map_err(e))?;
    Ok(with_etag(StatusCode::OK, task.version, task))
}

/// One item of a bulk update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkItem {
    /// The task.
    pub id: TaskId,
    /// Its expected version.
    pub version: i64,
    /// The changes (its own `version` is ignored).
    pub changes: UpdateTaskBody,
}

/// A bulk update: up to 100 tasks of one project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// The updates, applied in order, each atomically on its own.
    pub items: Vec<BulkItem>,
}

/// The outcome of one bulk item.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BulkOutcome {
    /// Applied; the task after the change.
    Applied {
        /// The task.
        task: Box<Task>,
    },
    /// Not applied; the problem explains why (a conflict carries `current`).
    Failed {
        /// The task id.
        id: TaskId,
        /// The problem.
        #[schema(value_type = Problem)]
        problem: serde_json::Value,
    },
}

/// Updates many tasks of a project; each item succeeds or fails on its own.
#[utoipa::path(post, path = "/projects/{project_id}/tasks/bulk", tag = "tasks", operation_id = "bulk_update_tasks",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = BulkBody,
    responses(
        (status = 200, description = "One outcome per item, in order", body = Vec<BulkOutcome>),
        (status = 400, description = "Invalid body or more than 100 items", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn bulk_update_tasks(
    State(s): State<AppState>,
    who: Authenticated,
    Path(project_id): Path<Uuid>,
    Json(b): Json<BulkBody>,
) -> Result<Response, ApiError> {
    if b.items.is_empty() || b.items.len() > 100 {
        return Err(pm_core::Error::invalid("items", "must hold 1 to 100 updates").into());
    }
    let project = s.pm.get_project(&who.origin(), ProjectId(project_id)).await?;
    let mut out = Vec::with_capacity(b.items.len());
    for item in b.items {
        let id = item.id;
        let result = async {
            let task = s.pm.get_task(&who.origin(), id).await?;
            if task.project_id != project.id {
                return Err(ApiError::from(pm_core::Error::not_found("task")));
            }
            let patch = item.changes.into_patch()?;
            Ok(s.pm.update_task(&who.origin(), id, item.version, patch).await?)
        }
        .await;
        out.push(match result {
            Ok(task) => BulkOutcome::Applied { task: Box::new(task) },
            Err(e) => BulkOutcome::Failed { id, problem: e.body() },
        });
    }
    Ok(Json(out).into_response())
}

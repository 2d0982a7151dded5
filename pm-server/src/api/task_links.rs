//! Task relations (blocks, relates, duplicates) and watchers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pm_core::id::{TaskId, UserId};
use pm_core::model::{RelationKind, TaskRelation, Watcher};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_relations, add_relation))
        .routes(routes!(remove_relation))
        .routes(routes!(list_watchers))
        .routes(routes!(add_watcher, remove_watcher))
}

/// Lists the relations a task takes part in (either end).
#[utoipa::path(get, path = "/tasks/{task_id}/relations", tag = "task-links", operation_id = "list_relations",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Relations", body = Vec<TaskRelation>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_relations(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<TaskRelation>>, ApiError> {
    Ok(Json(s.pm.list_relations(&who.origin(), TaskId(id)).await?))
}

/// A new relation from this task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRelationBody {
    /// The other task (same organization).
    pub to_task: TaskId,
    /// blocks, relates or duplicates.
    pub kind: RelationKind,
}

/// Relates this task to another; a `blocks` relation that would close a cycle is refused.
#[utoipa::path(post, path = "/tasks/{task_id}/relations", tag = "task-links", operation_id = "add_relation",
    params(("task_id" = Uuid, Path, description = "Task id")),
    request_body = AddRelationBody,
    responses(
        (status = 201, description = "The relation", body = TaskRelation),
        (status = 400, description = "Invalid body, unknown target or a blocking cycle", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The relation exists", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn add_relation(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<AddRelationBody>,
) -> Result<Response, ApiError> {
    let r = s.pm.add_relation(&who.origin(), TaskId(id), b.to_task, b.kind).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// Removes a relation.
#[utoipa::path(delete, path = "/tasks/{task_id}/relations/{kind}/{to_task}", tag = "task-links", operation_id = "remove_relation",
    params(("task_id" = Uuid, Path, description = "Source task id"),
           ("kind" = RelationKind, Path, description = "blocks, relates or duplicates"),
           ("to_task" = Uuid, Path, description = "Target task id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed id or kind", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such relation", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn remove_relation(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, kind, to)): Path<(Uuid, String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let kind = RelationKind::parse(&kind)?;
    s.pm.remove_relation(&who.origin(), TaskId(id), TaskId(to), kind).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a task's watchers.
#[utoipa::path(get, path = "/tasks/{task_id}/watchers", tag = "task-links", operation_id = "list_watchers",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Watchers", body = Vec<Watcher>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_watchers(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Watcher>>, ApiError> {
    Ok(Json(s.pm.list_watchers(&who.origin(), TaskId(id)).await?))
}

/// Makes a user (a member; yourself needs no update right) watch a task. Idempotent.
#[utoipa::path(put, path = "/tasks/{task_id}/watchers/{user_id}", tag = "task-links", operation_id = "add_watcher",
    params(("task_id" = Uuid, Path, description = "Task id"), ("user_id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The watcher", body = Watcher),
        (status = 400, description = "Malformed id or not a member", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn add_watcher(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, user)): Path<(Uuid, Uuid)>,
) -> Result<Json<Watcher>, ApiError> {
    Ok(Json(s.pm.add_watcher(&who.origin(), TaskId(id), UserId(user)).await?))
}

/// Stops a user watching a task.
#[utoipa::path(delete, path = "/tasks/{task_id}/watchers/{user_id}", tag = "task-links", operation_id = "remove_watcher",
    params(("task_id" = Uuid, Path, description = "Task id"), ("user_id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not watching", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn remove_watcher(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, user)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    s.pm.remove_watcher(&who.origin(), TaskId(id), UserId(user)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

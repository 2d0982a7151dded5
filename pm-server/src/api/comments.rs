//! Comments on tasks.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use pm_core::id::{CommentId, TaskId};
use pm_core::model::{Comment, comment_body};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{Precondition, Problem, with_etag};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_comments, create_comment))
        .routes(routes!(edit_comment, delete_comment))
}

/// Lists a task's comments, oldest first.
#[utoipa::path(get, path = "/tasks/{task_id}/comments", tag = "comments", operation_id = "list_comments",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Comments", body = Vec<Comment>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_comments(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Comment>>, ApiError> {
    Ok(Json(s.pm.list_comments(&who.origin(), TaskId(id)).await?))
}

/// A comment body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    /// Markdown, 1-100 000 characters.
    pub body: String,
    /// Expected version (edits only), when not sent as `If-Match`.
    pub version: Option<i64>,
}

/// Comments on a task as the caller.
#[utoipa::path(post, path = "/tasks/{task_id}/comments", tag = "comments", operation_id = "create_comment",
    params(("task_id" = Uuid, Path, description = "Task id")),
    request_body = CommentBody,
    responses(
        (status = 201, description = "The comment", body = Comment),
        (status = 400, description = "Empty or oversized body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_comment(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<CommentBody>,
) -> Result<Response, ApiError> {
    let body = comment_body(&b.body)?;
    let c = s.pm.add_comment(&who.origin(), TaskId(id), body).await?;
    Ok(with_etag(StatusCode::CREATED, c.version, c))
}

/// Edits a comment (its author or an admin; If-Match or body version required).
#[utoipa::path(patch, path = "/comments/{comment_id}", tag = "comments", operation_id = "edit_comment",
    params(("comment_id" = Uuid, Path, description = "Comment id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = CommentBody,
    responses(
        (status = 200, description = "The comment", body = Comment),
        (status = 400, description = "Empty or oversized body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the author", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such comment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict; `current` holds the comment", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn edit_comment(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<CommentBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let body = comment_body(&b.body)?;
    let c =
        s.pm.edit_comment(&who.origin(), CommentId(id), pre.version(), body)
            .await
            .map_err(|e| pre.map_err(e))?;
    Ok(with_etag(StatusCode::OK, c.version, c))
}

/// Deletes a comment (its author or an admin).
#[utoipa::path(delete, path = "/comments/{comment_id}", tag = "comments", operation_id = "delete_comment",
    params(("comment_id" = Uuid, Path, description = "Comment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the author", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such comment", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_comment(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.pm.delete_comment(&who.origin(), CommentId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

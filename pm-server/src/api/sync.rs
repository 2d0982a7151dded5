//! Offline sync for the PWA: `POST /sync` (a batch of ops, each applied exactly once, stale edits
//! rebased field by field) and `GET /sync/changes` (the delta feed from the event log). The
//! protocol is `docs/sync-protocol.md`; the rules live in [`crate::pwa::sync`], this module only
//! parses the envelope and answers.

use axum::extract::State;
use pm_core::model::{CheckIn, Comment, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use super::tasks::UpdateTaskBody;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::pwa::sync::{self as engine, Changes, FieldConflict, MAX_OPS};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync)).routes(routes!(sync_changes))
}

/// The envelope as parsed: each op is parsed on its own, so one bad op is rejected alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncEnvelope {
    ops: Option<Vec<Value>>,
}

/// A batch of offline ops, applied in order.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documentation only: the handler parses each op on its own
pub struct SyncRequest {
    /// 1-100 ops.
    ops: Vec<SyncOp>,
}

/// The kind of an op.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub enum SyncOpKind {
    /// Create a task (`project_id`, `task_id`, `data`).
    #[serde(rename = "task.create")]
    TaskCreate,
    /// Change a task (`task_id`, `base_version`, `base`, `changes`).
    #[serde(rename = "task.update")]
    TaskUpdate,
    /// Delete a task (`task_id`, `base_version`).
    #[serde(rename = "task.delete")]
    TaskDelete,
    /// Comment on a task (`task_id`, `comment_id`, `data`).
    #[serde(rename = "comment.create")]
    CommentCreate,
    /// Check in on a task (`task_id`, optional `checkin_id`, `data`).
    #[serde(rename = "checkin.create")]
    CheckinCreate,
}

/// One offline op; which fields it needs depends on `kind` (see `docs/sync-protocol.md`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SyncOp {
    /// Client-generated id; a replay of the same id returns the first result.
    op_id: Uuid,
    /// What the op does.
    kind: SyncOpKind,
    /// `task.create`: the project.
    project_id: Option<Uuid>,
    /// The task (client-generated for `task.create`).
    task_id: Option<Uuid>,
    /// `comment.create`: client-generated comment id.
    comment_id: Option<Uuid>,
    /// `checkin.create`: client-generated check-in id (default: `op_id`).
    checkin_id: Option<Uuid>,
    /// `task.update`/`task.delete`: the version the edit was made on.
    base_version: Option<i64>,
    /// `task.update`: the values the client saw, per changed field.
    #[schema(value_type = Option<Object>)]
    base: Option<Value>,
    /// `task.update`: the changes, as the body of `PATCH /tasks/{id}` without `version`.
    changes: Option<UpdateTaskBody>,
    /// Creates: the body of the REST create (`CreateTaskBody`, `CommentBody`, `CheckInBody`).
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// How an op ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum SyncStatus {
    /// Applied (or applied before: see `replayed`).
    Applied,
    /// A stale update collided with someone else's change; nothing applied.
    Conflict,
    /// Invalid, not allowed, or about something that does not exist; nothing applied.
    Rejected,
}

/// One op's result.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SyncResult {
    /// The op's id (null when it had none).
    op_id: Option<String>,
    /// How it ended.
    status: SyncStatus,
    /// `applied` task ops: the task after the op (null after `task.delete`).
    task: Option<Task>,
    /// `applied` `comment.create`: the comment.
    comment: Option<Comment>,
    /// `applied` `checkin.create`: the check-in.
    check_in: Option<CheckIn>,
    /// `conflict`: the task now.
    current: Option<Task>,
    /// `conflict`: every conflicting field.
    conflicts: Option<Vec<FieldConflict>>,
    /// `rejected`: the problem, its `field` naming the op's field (`ops[2].changes.priority`).
    error: Option<Problem>,
    /// The op was processed before; this is its first result and nothing changed now.
    replayed: Option<bool>,
    /// A stale update applied onto a newer version without conflicts.
    rebased: Option<bool>,
}

/// The results, one per op, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncResponse {
    /// Results.
    #[schema(value_type = Vec<SyncResult>)]
    results: Vec<Value>,
}

/// Applies a batch of offline ops in order, each exactly once (see `docs/sync-protocol.md`).
#[utoipa::path(post, path = "/sync", tag = "sync", operation_id = "sync",
    request_body = SyncRequest,
    responses(
        (status = 200, description = "One result per op, in order: applied, conflict or rejected", body = SyncResponse),
        (status = 400, description = "Malformed envelope: not JSON, `ops` missing or not an array, none or more than 100 ops", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn sync(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<SyncEnvelope>,
) -> Result<Json<SyncResponse>, ApiError> {
    let ops = b.ops.ok_or_else(|| pm_core::Error::invalid("ops", "is required"))?;
    if ops.is_empty() || ops.len() > MAX_OPS {
        return Err(pm_core::Error::invalid("ops", format!("must hold 1 to {MAX_OPS} ops")).into());
    }
    let results = engine::apply_ops(&s, who.user_id, &ops).await;
    Ok(Json(SyncResponse { results }))
}

/// Position and size of a delta-feed page.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The `next_since` of the previous page (default 0: from the beginning).
    pub since: Option<String>,
    /// Most changes to return, 1-500 (default 100).
    pub limit: Option<String>,
}

/// The delta feed: task, comment and record events after `since` that the caller may read, each
/// with the task as it is now.
#[utoipa::path(get, path = "/sync/changes", tag = "sync", operation_id = "sync_changes",
    params(ChangesQuery),
    responses(
        (status = 200, description = "Changes in log order", body = Changes),
        (status = 400, description = "Bad `since` or `limit`; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn sync_changes(
    State(s): State<AppState>,
    who: Authenticated,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<Changes>, ApiError> {
    let since = match q.since.as_deref() {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            pm_core::Error::invalid("since", "must be a non-negative integer (a `next_since`)")
        })?,
    };
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=500).contains(n)).ok_or_else(|| {
            pm_core::Error::invalid("limit", "must be a number between 1 and 500")
        })?,
    };
    Ok(Json(engine::changes(&s, who.user_id, since, limit).await?))
}

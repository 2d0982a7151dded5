//! Activity feeds of projects and tasks, read from the event log (newest first, paged by `seq`).

use axum::extract::State;
use pm_core::event::{ActivityScope, Event};
use pm_core::id::{ProjectId, TaskId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(project_activity)).routes(routes!(task_activity))
}

/// Paging of a feed.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Only events older than this `seq` (pass the previous page's `next_before`).
    pub before: Option<i64>,
    /// Page size, 1-100 (default 25).
    pub limit: Option<u32>,
}

/// A page of activity.
#[derive(Debug, Serialize, ToSchema)]
pub struct Feed {
    /// Events, newest first.
    pub items: Vec<Event>,
    /// Pass as `before` for older events; absent at the beginning of time.
    pub next_before: Option<i64>,
}

impl FeedQuery {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(25),
            Some(n @ 1..=100) => Ok(n),
            Some(_) => Err(pm_core::Error::invalid("limit", "must be between 1 and 100").into()),
        }
    }
}

async fn feed(
    s: &AppState,
    who: &Authenticated,
    scope: ActivityScope,
    q: &FeedQuery,
) -> Result<Json<Feed>, ApiError> {
    let limit = q.limit()?;
    let items = s.pm.activity(&who.origin(), scope, q.before, limit).await?;
    let next_before =
        if items.len() == limit as usize { items.last().map(|e| e.seq) } else { None };
    Ok(Json(Feed { items, next_before }))
}

/// The activity of a project.
#[utoipa::path(get, path = "/projects/{project_id}/activity", tag = "activity", operation_id = "project_activity",
    params(("project_id" = Uuid, Path, description = "Project id"), FeedQuery),
    responses(
        (status = 200, description = "Events, newest first", body = Feed),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn project_activity(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<Feed>, ApiError> {
    feed(&s, &who, ActivityScope::Project(ProjectId(id)), &q).await
}

/// The activity of a task (including comments, relations and records).
#[utoipa::path(get, path = "/tasks/{task_id}/activity", tag = "activity", operation_id = "task_activity",
    params(("task_id" = Uuid, Path, description = "Task id"), FeedQuery),
    responses(
        (status = 200, description = "Events, newest first", body = Feed),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn task_activity(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<Feed>, ApiError> {
    feed(&s, &who, ActivityScope::Task(TaskId(id)), &q).await
}

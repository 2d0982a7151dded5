//! The caller's notifications (`/me/notifications`), derived from the event log by pm-realtime's
//! notification consumer and stored per user: list (newest first, keyset-paged), unread count,
//! mark read/unread, mark all read. New ones are also pushed live on the WebSocket channel
//! `user:{id}`.
//!
//! Invariant: every operation is scoped to the authenticated user; another user's notification
//! is 404, exactly like one that does not exist.

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use pm_core::event::Actor;
use pm_realtime::notification::{Notification, NotificationId, NotificationKind};
use pm_realtime::store::{DEFAULT_LIMIT, NotificationQuery};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{PageBody, Problem, page_response};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_notifications))
        .routes(routes!(unread_count))
        .routes(routes!(mark_read))
        .routes(routes!(mark_unread))
        .routes(routes!(mark_all_read))
}

/// Why you are notified.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKindBody {
    /// You were assigned to a task.
    Assigned,
    /// A comment mentions you.
    Mentioned,
    /// Someone commented on a task you watch.
    Commented,
    /// A task you watch or are assigned to changed state.
    StateChanged,
    /// An automation rule addressed you (a workflow's notify action, an approval request).
    Automation,
}

impl From<NotificationKind> for NotificationKindBody {
    fn from(k: NotificationKind) -> Self {
        match k {
            NotificationKind::Assigned => Self::Assigned,
            NotificationKind::Mentioned => Self::Mentioned,
            NotificationKind::Commented => Self::Commented,
            NotificationKind::StateChanged => Self::StateChanged,
            NotificationKind::Automation => Self::Automation,
        }
    }
}

/// One notification (the same shape as in the WebSocket `notification` frame).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Notification)]
pub struct NotificationBody {
    /// Identity.
    pub id: Uuid,
    /// You.
    pub user_id: Uuid,
    /// Why.
    pub kind: NotificationKindBody,
    /// The event it was derived from.
    pub event_id: Uuid,
    /// That event's position in the log.
    pub seq: i64,
    /// Who caused it.
    pub actor: Actor,
    /// Organization concerned.
    pub org_id: Option<Uuid>,
    /// Project concerned.
    pub project_id: Option<Uuid>,
    /// Task concerned.
    pub task_id: Option<Uuid>,
    /// One line for humans, e.g. `Ada assigned you PM-42 "Fix login"`.
    pub summary: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When you read it; `null` while unread.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<OffsetDateTime>,
}

impl From<Notification> for NotificationBody {
    fn from(n: Notification) -> Self {
        Self {
            id: n.id.0,
            user_id: n.user_id.0,
            kind: n.kind.into(),
            event_id: n.event_id.0,
            seq: n.seq,
            actor: n.actor,
            org_id: n.org_id.map(|i| i.0),
            project_id: n.project_id.map(|i| i.0),
            task_id: n.task_id.map(|i| i.0),
            summary: n.summary,
            created_at: n.created_at,
            read_at: n.read_at,
        }
    }
}

/// Filters and paging of the list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only unread notifications.
    pub unread: Option<bool>,
    /// Page size, 1-100 (default 25).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// How many are unread.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCount {
    /// Unread notifications.
    pub count: u64,
}

/// How many changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarkedRead {
    /// Notifications that were unread and are now read.
    pub updated: u64,
}

/// Lists your notifications, newest first.
#[utoipa::path(get, path = "/me/notifications", tag = "notifications", operation_id = "list_notifications",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of notifications; `Link: <…>; rel=\"next\"` when there are more", body = PageBody<NotificationBody>),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_notifications(
    State(s): State<AppState>,
    who: Authenticated,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<NotificationId>().map_err(|_| {
            ApiError::invalid_field("cursor".into(), "not a cursor returned by this API")
        })?),
    };
    let query = NotificationQuery {
        unread_only: q.unread.unwrap_or(false),
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
        before,
    };
    query.validate()?;
    let page = s.realtime.notifications().await?.list_notifications(who.user_id, &query).await?;
    let page = pm_core::query::Page {
        items: page.items.into_iter().map(NotificationBody::from).collect::<Vec<_>>(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    };
    Ok(page_response(page, &uri))
}

/// Counts your unread notifications.
#[utoipa::path(get, path = "/me/notifications/unread-count", tag = "notifications", operation_id = "unread_notification_count",
    responses(
        (status = 200, description = "The count", body = UnreadCount),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn unread_count(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<UnreadCount>, ApiError> {
    let count = s.realtime.notifications().await?.unread_count(who.user_id).await?;
    Ok(Json(UnreadCount { count }))
}

/// Marks one of your notifications read (idempotent).
#[utoipa::path(post, path = "/me/notifications/{notification_id}/read", tag = "notifications", operation_id = "mark_notification_read",
    params(("notification_id" = Uuid, Path, description = "Notification id")),
    responses(
        (status = 200, description = "The notification", body = NotificationBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification of yours", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn mark_read(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<NotificationBody>, ApiError> {
    set_read(&s, &who, id, Some(pm_core::model::now())).await
}

/// Marks one of your notifications unread again (idempotent).
#[utoipa::path(post, path = "/me/notifications/{notification_id}/unread", tag = "notifications", operation_id = "mark_notification_unread",
    params(("notification_id" = Uuid, Path, description = "Notification id")),
    responses(
        (status = 200, description = "The notification", body = NotificationBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such notification of yours", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn mark_unread(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<NotificationBody>, ApiError> {
    set_read(&s, &who, id, None).await
}

async fn set_read(
    s: &AppState,
    who: &Authenticated,
    id: Uuid,
    at: Option<OffsetDateTime>,
) -> Result<Json<NotificationBody>, ApiError> {
    let n = s.realtime.notifications().await?.set_read(who.user_id, NotificationId(id), at).await?;
    Ok(Json(n.into()))
}

/// Marks all your notifications read.
#[utoipa::path(post, path = "/me/notifications/read-all", tag = "notifications", operation_id = "mark_all_notifications_read",
    responses(
        (status = 200, description = "How many changed", body = MarkedRead),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn mark_all_read(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<MarkedRead>, ApiError> {
    let updated =
        s.realtime.notifications().await?.mark_all_read(who.user_id, pm_core::model::now()).await?;
    Ok(Json(MarkedRead { updated }))
}

//! Web Push for the PWA: the server's VAPID public key and the caller's push subscriptions
//! (the browser's `PushSubscription.toJSON()`, validated, stored per user, upserted by endpoint).
//! Delivery is [`crate::pwa::push::PushSender`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::Json;
use crate::pwa::push::{SubscriptionBody, parse_subscription};
use crate::pwa::store::PushSubscription;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(vapid_public_key)).routes(routes!(
        list_push_subscriptions,
        subscribe_push,
        unsubscribe_push
    ))
}

/// The server's VAPID public key.
#[derive(Debug, Serialize, ToSchema)]
pub struct VapidKey {
    /// Base64url of the uncompressed P-256 point: the `applicationServerKey` for
    /// `pushManager.subscribe`.
    pub public_key: String,
}

/// The key browsers subscribe with.
#[utoipa::path(get, path = "/push/vapid-public-key", tag = "push", operation_id = "vapid_public_key",
    responses(
        (status = 200, description = "The VAPID public key", body = VapidKey),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn vapid_public_key(State(s): State<AppState>, _who: Authenticated) -> Json<VapidKey> {
    Json(VapidKey { public_key: s.web_push.vapid.public_key() })
}

/// A stored push subscription (its keys are not echoed).
#[derive(Debug, Serialize, ToSchema)]
pub struct PushSubscriptionView {
    /// Identity.
    pub id: Uuid,
    /// The push service URL.
    pub endpoint: String,
    /// When it expires (ms since the epoch), if known.
    #[serde(rename = "expirationTime")]
    pub expiration_time: Option<i64>,
    /// First registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last registered.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<PushSubscription> for PushSubscriptionView {
    fn from(s: PushSubscription) -> Self {
        Self {
            id: s.id,
            endpoint: s.endpoint,
            expiration_time: s.expiration_time,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The caller's push subscriptions, oldest first.
#[utoipa::path(get, path = "/push/subscriptions", tag = "push", operation_id = "list_push_subscriptions",
    responses(
        (status = 200, description = "Subscriptions", body = Vec<PushSubscriptionView>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_push_subscriptions(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<PushSubscriptionView>>, ApiError> {
    let subs = s.pwa.push.list_subscriptions(who.user_id).await?;
    Ok(Json(subs.into_iter().map(Into::into).collect()))
}

/// Registers the browser's subscription for the caller (the same endpoint again replaces its keys
/// and moves it to the caller).
#[utoipa::path(post, path = "/push/subscriptions", tag = "push", operation_id = "subscribe_push",
    request_body = SubscriptionBody,
    responses(
        (status = 201, description = "Stored", body = PushSubscriptionView),
        (status = 400, description = "Invalid endpoint or keys; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn subscribe_push(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<SubscriptionBody>,
) -> Result<Response, ApiError> {
    let sub = parse_subscription(b, who.user_id, &s.web_push.targets)?;
    let stored = s.pwa.push.upsert_subscription(&sub).await?;
    Ok((StatusCode::CREATED, Json(PushSubscriptionView::from(stored))).into_response())
}

/// Which subscription to remove.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UnsubscribeBody {
    /// The subscription's endpoint.
    pub endpoint: String,
}

/// Removes one of the caller's subscriptions.
#[utoipa::path(delete, path = "/push/subscriptions", tag = "push", operation_id = "unsubscribe_push",
    request_body = UnsubscribeBody,
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller has no subscription to this endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn unsubscribe_push(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<UnsubscribeBody>,
) -> Result<StatusCode, ApiError> {
    if s.pwa.push.delete_subscription(who.user_id, &b.endpoint).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(pm_core::Error::not_found("push subscription").into())
    }
}

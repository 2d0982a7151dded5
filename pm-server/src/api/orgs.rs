//! Organizations and their members. Each membership change is mirrored into the member's
//! grants ([`authz::sync_membership`]): the creator becomes the organization's `admin`, member
//! roles map to default roles, and removal revokes the member's assignments in the organization.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pm_core::id::{OrgId, UserId};
use pm_core::model::{MemberRole, Membership, Name, Organization, Slug};
use pm_core::service::NewOrg;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{Problem, with_etag};
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::{AppState, authz};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orgs, create_org))
        .routes(routes!(get_org))
        .routes(routes!(list_members))
        .routes(routes!(put_member, remove_member))
}

/// A new organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgBody {
    /// URL-safe handle: 1-64 of a-z, 0-9, '-'.
    #[schema(value_type = String)]
    pub slug: Slug,
    /// Display name.
    #[schema(value_type = String)]
    pub name: Name,
}

/// Lists the organizations the caller belongs to.
#[utoipa::path(get, path = "/orgs", tag = "orgs", operation_id = "list_orgs",
    responses(
        (status = 200, description = "The caller's organizations", body = Vec<Organization>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_orgs(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<Organization>>, ApiError> {
    Ok(Json(s.pm.list_orgs_for_user(who.user_id).await?))
}

/// Creates an organization; the caller becomes its owner, with the `admin` role there.
#[utoipa::path(post, path = "/orgs", tag = "orgs", operation_id = "create_org",
    request_body = CreateOrgBody,
    responses(
        (status = 201, description = "The organization", body = Organization),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The slug is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_org(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<CreateOrgBody>,
) -> Result<Response, ApiError> {
    let org = s.pm.create_org(&who.origin(), NewOrg { slug: b.slug, name: b.name }).await?;
    // The creator is the owner (pm-core's member list) and so the org's admin (a grant).
    authz::sync_membership(
        &s.permissions,
        org.id,
        who.user_id,
        Some(MemberRole::Owner),
        who.user_id,
    )
    .await?;
    Ok(with_etag(StatusCode::CREATED, org.version, org))
}

/// Reads an organization.
#[utoipa::path(get, path = "/orgs/{org_id}", tag = "orgs", operation_id = "get_org",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "The organization", body = Organization),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_org(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let org = s.pm.get_org(&who.origin(), OrgId(org_id)).await?;
    Ok(with_etag(StatusCode::OK, org.version, org))
}

/// Lists an organization's members.
#[utoipa::path(get, path = "/orgs/{org_id}/members", tag = "orgs", operation_id = "list_members",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "Members by join time", body = Vec<Membership>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_members(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<Vec<Membership>>, ApiError> {
    Ok(Json(s.pm.list_members(&who.origin(), OrgId(org_id)).await?))
}

/// A member's role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutMemberBody {
    /// owner, admin, member or guest.
    pub role: MemberRole,
}

/// Adds a user to an organization or changes their role (needs `member.manage`). The role maps
/// to a default role granted in the organization: owner/admin → admin, member → team_member,
/// guest → viewer.
#[utoipa::path(put, path = "/orgs/{org_id}/members/{user_id}", tag = "orgs", operation_id = "put_member",
    params(("org_id" = Uuid, Path, description = "Organization id"), ("user_id" = Uuid, Path, description = "User id")),
    request_body = PutMemberBody,
    responses(
        (status = 200, description = "The membership", body = Membership),
        (status = 400, description = "Invalid body or unknown user", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only owners and admins manage members", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn put_member(
    State(s): State<AppState>,
    who: Authenticated,
    Path((org_id, user_id)): Path<(Uuid, Uuid)>,
    Json(b): Json<PutMemberBody>,
) -> Result<Json<Membership>, ApiError> {
    let m = s.pm.put_member(&who.origin(), OrgId(org_id), UserId(user_id), b.role).await?;
    authz::sync_membership(&s.permissions, m.org_id, m.user_id, Some(m.role), who.user_id).await?;
    Ok(Json(m))
}

/// Removes a member (owners and admins only).
#[utoipa::path(delete, path = "/orgs/{org_id}/members/{user_id}", tag = "orgs", operation_id = "remove_member",
    params(("org_id" = Uuid, Path, description = "Organization id"), ("user_id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only owners and admins manage members", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such membership", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn remove_member(
    State(s): State<AppState>,
    who: Authenticated,
    Path((org_id, user_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    s.pm.remove_member(&who.origin(), OrgId(org_id), UserId(user_id)).await?;
    authz::sync_membership(&s.permissions, OrgId(org_id), UserId(user_id), None, who.user_id)
        .await?;
    // The grants are gone now: the member's open WebSockets here lose the organization's
    // channels at once (other instances react to the `member.removed` event).
    s.realtime.reauthorize_user(UserId(user_id)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

//! Authorization: the permission catalogue, roles (CRUD and templates), assignments (grant with
//! scope and validity, revoke, list), effective permissions, `check` / `explain`, and the audit
//! log with its hash-chain verification. Everything goes through pm-permissions'
//! [`PermissionService`](pm_permissions::PermissionService), which authorizes each call with the
//! same engine (reading roles and assignments needs `role.read`, changing them `role.manage`, in
//! the scope concerned).
//!
//! A project manager is granted per project: `POST /orgs/{org}/assignments` with the
//! `project_manager` role and `project_id`; they then manage that project and no other.
//! Assignments are only given to members of the organization (`PUT /orgs/{org}/members/{user}`
//! first), so the member list stays the list of people with access. Reads by non-members of the
//! organization are 404, as for every other organization resource; members lacking the
//! permission get 403.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pm_core::authz::{Action, Resource};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};
use pm_permissions::audit::ChainReport;
use pm_permissions::engine::{EffectivePermission, Explanation};
use pm_permissions::model::{
    Assignment, AssignmentFilter, AssignmentId, Grant, NewAssignment, NewRole, Permission,
    PermissionDef, Role, RoleId, RolePatch, RoleTemplate, Scope,
};
use pm_permissions::{AuditPage, Error as AuthzError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{Precondition, Problem, double_option, with_etag};
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::{AppState, authz};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_permissions))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(get_role, update_role, delete_role))
        .routes(routes!(list_templates))
        .routes(routes!(apply_template))
        .routes(routes!(list_assignments, grant))
        .routes(routes!(revoke))
        .routes(routes!(effective_permissions))
        .routes(routes!(check))
        .routes(routes!(explain))
        .routes(routes!(list_audit))
        .routes(routes!(verify_audit))
}

const MAX_REASON: usize = 1000;

fn actor(who: &Authenticated) -> Actor {
    Actor::User(who.user_id)
}

/// A denial for someone outside the organization looks like absence (404), as for every other
/// organization resource; members are told they lack the permission (403).
async fn hide_from_outsiders(
    s: &AppState,
    org: OrgId,
    who: &Authenticated,
    e: AuthzError,
) -> ApiError {
    if matches!(e, AuthzError::Forbidden(_)) {
        match s.stores.directory.get_membership(org, who.user_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return pm_core::Error::not_found("organization").into(),
            Err(storage) => return storage.into(),
        }
    }
    e.into()
}

/// Fails with 400 unless `user` is a member of `org`.
async fn require_member(s: &AppState, org: OrgId, user: UserId) -> Result<(), ApiError> {
    match s.stores.directory.get_membership(org, user).await? {
        Some(_) => Ok(()),
        None => Err(pm_core::Error::invalid(
            "user_id",
            "is not a member of the organization; add them with PUT /orgs/{org_id}/members/{user_id} first",
        )
        .into()),
    }
}

/// Fails with 400 unless `project` belongs to `org`.
async fn require_project_in(s: &AppState, org: OrgId, project: ProjectId) -> Result<(), ApiError> {
    match s.stores.projects.get_project(project).await {
        Ok(p) if p.org_id == org => Ok(()),
        Ok(_) | Err(pm_core::Error::NotFound { .. }) => {
            Err(pm_core::Error::invalid("project", "no such project in this organization").into())
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Catalogue and roles

/// Lists the permission catalogue: every `resource.action` roles can grant, with descriptions.
#[utoipa::path(get, path = "/permissions", tag = "authz", operation_id = "list_permissions",
    responses(
        (status = 200, description = "The registered permissions", body = Vec<PermissionDef>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_permissions(
    State(s): State<AppState>,
    _who: Authenticated,
) -> Result<Json<Vec<PermissionDef>>, ApiError> {
    Ok(Json(s.permissions.list_permissions().await?))
}

/// Lists the roles usable in an organization: the system roles and the organization's own
/// (needs `role.read` there).
#[utoipa::path(get, path = "/orgs/{org_id}/roles", tag = "authz", operation_id = "list_roles",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "System roles and the organization's roles", body = Vec<Role>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_roles(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<Vec<Role>>, ApiError> {
    let org = OrgId(org_id);
    match s.permissions.list_roles(&actor(&who), Some(org)).await {
        Ok(roles) => Ok(Json(roles)),
        Err(e) => Err(hide_from_outsiders(&s, org, &who, e).await),
    }
}

/// A new organization role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleBody {
    /// Name, unique in the organization: 1-100 characters, no surrounding spaces.
    pub name: String,
    /// What the role is for.
    #[serde(default)]
    pub description: String,
    /// A system role or a role of this organization to inherit grants and denies from.
    #[serde(default)]
    pub parent_id: Option<RoleId>,
    /// What the role allows (each optionally under a condition).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What the role forbids; a deny overrides any allow.
    #[serde(default)]
    pub denies: Vec<Permission>,
}

/// Creates an organization role (needs `role.manage` there).
#[utoipa::path(post, path = "/orgs/{org_id}/roles", tag = "authz", operation_id = "create_role",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    request_body = CreateRoleBody,
    responses(
        (status = 201, description = "The role", body = Role),
        (status = 400, description = "Invalid body, unknown parent, inheritance cycle or too deep", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A role with this name exists", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_role(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Json(b): Json<CreateRoleBody>,
) -> Result<Response, ApiError> {
    let role = s
        .permissions
        .create_role(
            &actor(&who),
            NewRole {
                org_id: Some(OrgId(org_id)),
                name: b.name,
                description: b.description,
                parent_id: b.parent_id,
                grants: b.grants,
                denies: b.denies,
            },
        )
        .await?;
    Ok(with_etag(StatusCode::CREATED, role.version, role))
}

/// Reads a role (system roles are visible to everyone; an organization's need `role.read`
/// there).
#[utoipa::path(get, path = "/roles/{role_id}", tag = "authz", operation_id = "get_role",
    params(("role_id" = Uuid, Path, description = "Role id")),
    responses(
        (status = 200, description = "The role", body = Role),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such role", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_role(
    State(s): State<AppState>,
    who: Authenticated,
    Path(role_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let role = s.permissions.get_role(&actor(&who), RoleId(role_id)).await?;
    Ok(with_etag(StatusCode::OK, role.version, role))
}

/// Changes to a role: absent fields stay as they are; `parent_id: null` removes the parent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoleBody {
    /// Expected version, when not sent as `If-Match`.
    pub version: Option<i64>,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New parent (`null` removes it).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<RoleId>>,
    /// New grants (replacing the old).
    pub grants: Option<Vec<Grant>>,
    /// New denies (replacing the old).
    pub denies: Option<Vec<Permission>>,
}

/// Updates a role (needs `role.manage` where it lives). Send the ETag as `If-Match` (412 if the
/// role changed since) or the version in the body (409 with the current role).
#[utoipa::path(patch, path = "/roles/{role_id}", tag = "authz", operation_id = "update_role",
    params(("role_id" = Uuid, Path, description = "Role id"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version being changed")),
    request_body = UpdateRoleBody,
    responses(
        (status = 200, description = "The updated role", body = Role),
        (status = 400, description = "Invalid body, unknown parent, inheritance cycle or too deep", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict (`current` holds the role) or name taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match; `current` holds the role", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "Neither If-Match nor version given", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_role(
    State(s): State<AppState>,
    who: Authenticated,
    Path(role_id): Path<Uuid>,
    headers: HeaderMap,
    Json(b): Json<UpdateRoleBody>,
) -> Result<Response, ApiError> {
    let pre = Precondition::from_request(&headers, b.version)?;
    let patch = RolePatch {
        name: b.name,
        description: b.description,
        parent_id: b.parent_id,
        grants: b.grants,
        denies: b.denies,
    };
    let role = s
        .permissions
        .update_role(&actor(&who), RoleId(role_id), pre.version(), patch)
        .await
        .map_err(|e| {
            let conflict = matches!(e, AuthzError::Conflict(_));
            let api = ApiError::from(e);
            if conflict && matches!(pre, Precondition::IfMatch(_)) {
                api.with_status(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition-failed",
                    "Precondition failed",
                )
            } else {
                api
            }
        })?;
    Ok(with_etag(StatusCode::OK, role.version, role))
}

/// Deletes a role nobody holds and no role inherits (needs `role.manage`).
#[utoipa::path(delete, path = "/roles/{role_id}", tag = "authz", operation_id = "delete_role",
    params(("role_id" = Uuid, Path, description = "Role id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The role is still assigned or inherited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_role(
    State(s): State<AppState>,
    who: Authenticated,
    Path(role_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let id = RoleId(role_id);
    // Hide other organizations' roles: only someone who may read a role learns it exists.
    s.permissions.get_role(&actor(&who), id).await?;
    s.permissions.delete_role(&actor(&who), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lists the role templates (blueprints an organization can copy into its own roles).
#[utoipa::path(get, path = "/role-templates", tag = "authz", operation_id = "list_role_templates",
    responses(
        (status = 200, description = "The templates", body = Vec<RoleTemplate>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_templates(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<Vec<RoleTemplate>>, ApiError> {
    Ok(Json(s.permissions.list_templates(&actor(&who)).await?))
}

/// Creates an organization role from a template, named like it (needs `role.manage` there).
#[utoipa::path(post, path = "/orgs/{org_id}/role-templates/{name}/apply", tag = "authz", operation_id = "apply_role_template",
    params(("org_id" = Uuid, Path, description = "Organization id"),
           ("name" = String, Path, description = "Template name")),
    responses(
        (status = 201, description = "The created role", body = Role),
        (status = 400, description = "Malformed id, or the template's parent role is missing", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The organization already has a role of this name", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn apply_template(
    State(s): State<AppState>,
    who: Authenticated,
    Path((org_id, name)): Path<(Uuid, String)>,
) -> Result<Response, ApiError> {
    let role = s.permissions.apply_template(&actor(&who), &name, OrgId(org_id)).await?;
    Ok(with_etag(StatusCode::CREATED, role.version, role))
}

// ---------------------------------------------------------------------------------------------
// Assignments

/// An assignment and whether it is in force now.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssignmentView {
    /// The assignment.
    #[serde(flatten)]
    pub assignment: Assignment,
    /// Whether now lies within `[valid_from, valid_until)`.
    pub active: bool,
}

impl AssignmentView {
    fn new(assignment: Assignment, now: OffsetDateTime) -> Self {
        let active = assignment.active_at(now);
        Self { assignment, active }
    }
}

/// Which assignments to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAssignmentsQuery {
    /// Only this user's.
    pub user: Option<Uuid>,
    /// Only of this role.
    pub role: Option<Uuid>,
    /// Only those scoped to this project.
    pub project: Option<Uuid>,
}

/// Lists the assignments inside an organization (scoped to it or its projects), with their
/// validity. One's own need nothing; others' need `role.read`.
#[utoipa::path(get, path = "/orgs/{org_id}/assignments", tag = "authz", operation_id = "list_assignments",
    params(("org_id" = Uuid, Path, description = "Organization id"), ListAssignmentsQuery),
    responses(
        (status = 200, description = "Assignments, oldest first", body = Vec<AssignmentView>),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_assignments(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Query(q): Query<ListAssignmentsQuery>,
) -> Result<Json<Vec<AssignmentView>>, ApiError> {
    let org = OrgId(org_id);
    let filter =
        AssignmentFilter { user_id: q.user.map(UserId), role_id: q.role.map(RoleId), scope: None };
    let project = q.project.map(ProjectId);
    let list = match s.permissions.list_org_assignments(&actor(&who), org, project, &filter).await {
        Ok(l) => l,
        Err(e) => return Err(hide_from_outsiders(&s, org, &who, e).await),
    };
    let now = s.permissions.engine().clock().now();
    Ok(Json(list.into_iter().map(|a| AssignmentView::new(a, now)).collect()))
}

/// A grant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The user (a member of the organization).
    pub user_id: UserId,
    /// A system role or a role of this organization.
    pub role_id: RoleId,
    /// Scope: this project of the organization; absent for the whole organization.
    pub project_id: Option<ProjectId>,
    /// In force from (inclusive, RFC 3339); absent for now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    /// In force until (exclusive, RFC 3339); absent until revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// Why (kept in the audit log), at most 1000 characters.
    #[serde(default)]
    pub reason: String,
}

/// Grants a role to a member of the organization, organization-wide or for one project,
/// optionally for a period (needs `role.manage` in that scope). Visible to the very next check.
#[utoipa::path(post, path = "/orgs/{org_id}/assignments", tag = "authz", operation_id = "grant_role",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    request_body = GrantBody,
    responses(
        (status = 201, description = "The assignment", body = AssignmentView),
        (status = 400, description = "Invalid body, unknown role or project, not a member, or an empty validity window", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage` in the scope", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The same assignment exists", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn grant(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Json(b): Json<GrantBody>,
) -> Result<Response, ApiError> {
    let org = OrgId(org_id);
    if b.reason.chars().count() > MAX_REASON {
        return Err(pm_core::Error::invalid(
            "reason",
            format!("must be at most {MAX_REASON} characters"),
        )
        .into());
    }
    let scope = match b.project_id {
        Some(project_id) => Scope::Project { org_id: org, project_id },
        None => Scope::Org { org_id: org },
    };
    // Authorize before looking anything up, so outsiders learn nothing about the organization.
    s.permissions.authorize(
        &actor(&who),
        Action::Manage,
        &Resource::new(pm_core::authz::ResourceKind::Role, Some(org), b.project_id),
    )?;
    if let Some(p) = b.project_id {
        require_project_in(&s, org, p).await?;
    }
    require_member(&s, org, b.user_id).await?;
    let a = s
        .permissions
        .grant(
            &actor(&who),
            NewAssignment {
                user_id: b.user_id,
                role_id: b.role_id,
                scope,
                valid_from: b.valid_from,
                valid_until: b.valid_until,
                reason: b.reason,
            },
        )
        .await?;
    let now = s.permissions.engine().clock().now();
    Ok((StatusCode::CREATED, Json(AssignmentView::new(a, now))).into_response())
}

/// Why an assignment is revoked.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Kept in the audit log, at most 1000 characters.
    pub reason: Option<String>,
}

/// Revokes an assignment (needs `role.manage` in its scope). Visible to the very next check.
#[utoipa::path(delete, path = "/assignments/{assignment_id}", tag = "authz", operation_id = "revoke_role",
    params(("assignment_id" = Uuid, Path, description = "Assignment id"), RevokeQuery),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Malformed id or reason", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage` in the assignment's scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such assignment", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn revoke(
    State(s): State<AppState>,
    who: Authenticated,
    Path(assignment_id): Path<Uuid>,
    Query(q): Query<RevokeQuery>,
) -> Result<Response, ApiError> {
    let reason = q.reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON {
        return Err(pm_core::Error::invalid(
            "reason",
            format!("must be at most {MAX_REASON} characters"),
        )
        .into());
    }
    let id = AssignmentId(assignment_id);
    match s.permissions.revoke(&actor(&who), id, &reason).await {
        Ok(revoked) => {
            // Open WebSockets of that user lose the channels the grant let them read.
            s.realtime.reauthorize_user(revoked.user_id).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        // Someone who may not even read roles there learns nothing about the assignment.
        Err(AuthzError::Forbidden(m)) => {
            let a = s.permissions.stores().assignments.get_assignment(id).await?;
            let readable = s
                .permissions
                .authorize(
                    &actor(&who),
                    Action::Read,
                    &Resource::new(
                        pm_core::authz::ResourceKind::Role,
                        a.scope.org_id(),
                        a.scope.project_id(),
                    ),
                )
                .is_ok();
            if readable {
                Err(AuthzError::Forbidden(m).into())
            } else {
                Err(pm_core::Error::not_found("assignment").into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// Where to compute effective permissions.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EffectiveQuery {
    /// A project of the organization; absent for the organization itself.
    pub project: Option<Uuid>,
}

/// What a user may do at a scope, and where each permission comes from.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectivePermissions {
    /// The user.
    pub user_id: UserId,
    /// The scope the permissions hold at.
    pub scope: Scope,
    /// The permissions (a `manage` grant expanded into its actions; denied ones left out).
    pub permissions: Vec<EffectivePermission>,
}

/// The effective permissions of a user in an organization or one of its projects (one's own
/// need nothing; others' need `role.read` there).
#[utoipa::path(get, path = "/orgs/{org_id}/users/{user_id}/permissions", tag = "authz", operation_id = "effective_permissions",
    params(("org_id" = Uuid, Path, description = "Organization id"),
           ("user_id" = Uuid, Path, description = "User id"), EffectiveQuery),
    responses(
        (status = 200, description = "The user's permissions at the scope", body = EffectivePermissions),
        (status = 400, description = "Malformed id, or the project is not in the organization", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.read`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn effective_permissions(
    State(s): State<AppState>,
    who: Authenticated,
    Path((org_id, user_id)): Path<(Uuid, Uuid)>,
    Query(q): Query<EffectiveQuery>,
) -> Result<Json<EffectivePermissions>, ApiError> {
    let org = OrgId(org_id);
    let user = UserId(user_id);
    let scope = match q.project {
        Some(p) => Scope::Project { org_id: org, project_id: ProjectId(p) },
        None => Scope::Org { org_id: org },
    };
    let permissions = match s.permissions.effective_permissions(&actor(&who), user, scope) {
        Ok(p) => p,
        Err(e) => return Err(hide_from_outsiders(&s, org, &who, e).await),
    };
    if let Some(p) = scope.project_id() {
        require_project_in(&s, org, p).await?;
    }
    Ok(Json(EffectivePermissions { user_id: user, scope, permissions }))
}

/// A question for the engine: may `user_id` (default: the caller) do `action` on `resource`?
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Whose decision (default: the caller's). Asking about someone else needs `role.read` in
    /// the resource's scope.
    pub user_id: Option<UserId>,
    /// The action.
    pub action: Action,
    /// The resource, with the context conditions look at (owner, assignees, watchers,
    /// attributes).
    pub resource: Resource,
}

/// The engine's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResult {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The permission asked for.
    pub permission: Permission,
    /// One sentence for people.
    pub reason: String,
}

/// The engine's explanation, or the server policy's allow (see [`authz::policy_allows`]), so
/// `check` and `explain` answer exactly as the server's authorizer decides.
fn explanation(s: &AppState, who: &Authenticated, b: CheckBody) -> Result<Explanation, ApiError> {
    let subject = Actor::User(b.user_id.unwrap_or(who.user_id));
    let mut ex = s.permissions.explain(&actor(who), &subject, b.action, &b.resource)?;
    if !ex.allowed && authz::policy_allows(&subject, b.action, &b.resource) {
        ex.allowed = true;
        ex.chain.clear();
        ex.missing = None;
        authz::POLICY_SUMMARY.clone_into(&mut ex.summary);
    }
    Ok(ex)
}

/// Asks the engine whether a user may do an action on a resource.
#[utoipa::path(post, path = "/authz/check", tag = "authz", operation_id = "authz_check",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The decision", body = CheckResult),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Asking about someone else without `role.read`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn check(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<CheckBody>,
) -> Result<Json<CheckResult>, ApiError> {
    let ex = explanation(&s, &who, b)?;
    Ok(Json(CheckResult { allowed: ex.allowed, permission: ex.permission, reason: ex.summary }))
}

/// Explains a decision: on allow the chain assignment → role → inherited roles → permission
/// (→ condition); on deny the nearest missing grant.
#[utoipa::path(post, path = "/authz/explain", tag = "authz", operation_id = "authz_explain",
    request_body = CheckBody,
    responses(
        (status = 200, description = "The decision and why", body = Explanation),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Asking about someone else without `role.read`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn explain(
    State(s): State<AppState>,
    who: Authenticated,
    Json(b): Json<CheckBody>,
) -> Result<Json<Explanation>, ApiError> {
    Ok(Json(explanation(&s, &who, b)?))
}

// ---------------------------------------------------------------------------------------------
// Audit

/// Paging of the audit log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records after this `seq` (pass the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

/// Lists the audit records about an organization — its roles and the assignments inside it —
/// oldest first (needs `role.manage` there).
#[utoipa::path(get, path = "/orgs/{org_id}/audit", tag = "authz", operation_id = "list_audit",
    params(("org_id" = Uuid, Path, description = "Organization id"), AuditQuery),
    responses(
        (status = 200, description = "A page of audit records", body = AuditPage),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_audit(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let org = OrgId(org_id);
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(pm_core::Error::invalid("limit", "must be between 1 and 1000").into());
    }
    let after = q.after.unwrap_or(0).max(0);
    match s.permissions.list_org_audit(&actor(&who), org, after, limit).await {
        Ok(page) => Ok(Json(page)),
        Err(e) => Err(hide_from_outsiders(&s, org, &who, e).await),
    }
}

/// Re-verifies the hash chain of the whole audit log (needs `role.manage` in the
/// organization; the report carries counts and hashes, no content).
#[utoipa::path(get, path = "/orgs/{org_id}/audit/verify", tag = "authz", operation_id = "verify_audit",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "The verification report", body = ChainReport),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing `role.manage`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such organization", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn verify_audit(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<ChainReport>, ApiError> {
    let org = OrgId(org_id);
    match s.permissions.verify_audit_chain_for_org(&actor(&who), org).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(hide_from_outsiders(&s, org, &who, e).await),
    }
}

//! Authorization in the server: pm-permissions' engine behind pm-core's `Authorizer`, the
//! organization-membership → role mapping, and [`require`], the guard for host routes.
//!
//! - [`ServerAuthorizer`] answers every pm-core service call (REST today; WebSocket, workflows
//!   and integrations tomorrow) from the [`PermissionService`]'s engine. The one rule it adds is
//!   the server's policy that any signed-in user may create an organization.
//! - Membership is both a pm-core fact (the member list, `GET /orgs`) and a grant. The two are
//!   kept in step by [`sync_membership`], which the org routes call after each membership
//!   change: creating an organization makes the creator its `admin`; `PUT .../members/{user}`
//!   maps the member role (owner/admin → `admin`, member → `team_member`, guest → `viewer`) to
//!   the one organization-scoped default-role assignment of that user; removing a member revokes
//!   every assignment they hold inside the organization. Other grants (a project-scoped
//!   `project_manager`, an org role, a grant with a validity window) go through
//!   `POST /orgs/{org}/assignments`, which only accepts members of the organization.
//! - Denials surface as pm-core's / pm-permissions' `Forbidden`, which [`ApiError`] turns into
//!   `403 application/problem+json`; reads a caller may not see are `404` (pm-core's rule).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::authz::{Action, Authorizer, Decision, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::id::{OrgId, UserId};
use pm_core::model::MemberRole;
use pm_permissions::model::{AssignmentFilter, NewAssignment, Scope};
use pm_permissions::store::AuthzStores;
use pm_permissions::{PermissionService, ServiceConfig};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

/// How often a check first looks for permission changes made by other server instances.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The server's [`Authorizer`]: pm-permissions' engine plus "any user may create an
/// organization" (the creator is then granted `admin` there, see [`sync_membership`]).
#[derive(Debug, Clone)]
pub struct ServerAuthorizer {
    permissions: Arc<PermissionService>,
}

impl ServerAuthorizer {
    /// Decides with `permissions`.
    pub fn new(permissions: Arc<PermissionService>) -> Self {
        Self { permissions }
    }
}

#[async_trait]
impl Authorizer for ServerAuthorizer {
    async fn check(
        &self,
        actor: &Actor,
        action: Action,
        resource: &Resource,
    ) -> pm_core::Result<Decision> {
        if policy_allows(actor, action, resource) {
            return Ok(Decision::Allow);
        }
        self.permissions.check(actor, action, resource).await
    }
}

/// Why [`policy_allows`] allowed a request, for explanations.
pub const POLICY_SUMMARY: &str = "org.create is allowed to every signed-in user by the server's policy (the creator becomes the organization's admin)";

/// The server's rule outside the engine: any signed-in user may create an organization.
pub fn policy_allows(actor: &Actor, action: Action, resource: &Resource) -> bool {
    matches!(actor, Actor::User(_))
        && resource.kind == ResourceKind::Org
        && action == Action::Create
        && resource.org_id.is_none()
}

/// Opens the permission tables in the database at `url` (the same URL as pm-core's), applies
/// their migrations, then [`start_permissions`].
pub async fn open_permissions(url: &str) -> pm_permissions::Result<Arc<PermissionService>> {
    let stores = pm_permissions::store::open(url).await?;
    stores.admin.migrate().await?;
    start_permissions(stores).await
}

/// The server's settings for the permission service: the engine defaults, and a look for other
/// instances' changes at most every [`REFRESH_EVERY`].
pub fn service_config() -> ServiceConfig {
    ServiceConfig { refresh_every: Some(REFRESH_EVERY), ..ServiceConfig::default() }
}

/// Loads the engine from migrated `stores` and seeds the default permissions and roles when
/// missing (idempotent, so every start may do it; `pm-server init-permissions` does it
/// explicitly and reports), because membership grants need the default roles.
pub async fn start_permissions(
    stores: AuthzStores,
) -> pm_permissions::Result<Arc<PermissionService>> {
    let service = PermissionService::open(stores, service_config()).await?;
    let seeded = service.seed_defaults(&Actor::System).await?;
    if !seeded.is_empty() {
        tracing::info!(
            permissions = seeded.permissions.len(),
            roles = ?seeded.roles,
            templates = ?seeded.templates,
            "seeded default permissions and roles"
        );
    }
    Ok(Arc::new(service))
}

/// The default role an organization member role maps to.
pub fn role_for_member(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Owner | MemberRole::Admin => "admin",
        MemberRole::Member => "team_member",
        MemberRole::Guest => "viewer",
    }
}

/// The default roles membership maps to (see [`role_for_member`]).
const MEMBERSHIP_ROLES: [&str; 3] = ["admin", "team_member", "viewer"];

/// Brings `user`'s grants in `org` in line with their membership: `Some(role)` leaves exactly one
/// permanent organization-scoped assignment among the membership roles, of
/// `role_for_member(role)` (grants with a validity window are left alone);
/// `None` (no longer a member) revokes every assignment inside the organization. Changes are made
/// by `Actor::System` (the caller was authorized by pm-core for the membership change) and their
/// audit reason names `by`.
pub async fn sync_membership(
    permissions: &PermissionService,
    org: OrgId,
    user: UserId,
    role: Option<MemberRole>,
    by: UserId,
) -> pm_permissions::Result<()> {
    let system = Actor::System;
    let held = permissions
        .list_assignments(&system, &AssignmentFilter { user_id: Some(user), ..Default::default() })
        .await?;
    let Some(role) = role else {
        for a in held.iter().filter(|a| a.scope.org_id() == Some(org)) {
            permissions
                .revoke(&system, a.id, &format!("removed from the organization by {by}"))
                .await?;
        }
        return Ok(());
    };
    let name = role_for_member(role);
    let target = permissions.system_role(name).await?.ok_or_else(|| {
        pm_permissions::Error::invalid(
            "role",
            format!("the default role `{name}` is missing; run `pm-server init-permissions`"),
        )
    })?;
    let roles = permissions.engine().roles();
    let is_membership_role = |id| {
        roles.iter().any(|r| {
            r.id == id && r.org_id.is_none() && MEMBERSHIP_ROLES.contains(&r.name.as_str())
        })
    };
    // Membership grants are the permanent org-scoped ones of the mapped roles; a grant with a
    // validity window was given deliberately through the assignments API and is left alone.
    let mut have_target = false;
    let membership_grants = held.iter().filter(|a| {
        a.scope == Scope::Org { org_id: org } && a.valid_from.is_none() && a.valid_until.is_none()
    });
    for a in membership_grants {
        if a.role_id == target.id && !have_target {
            have_target = true;
        } else if is_membership_role(a.role_id) {
            let reason = format!("organization role set to {} by {by}", role.as_str());
            permissions.revoke(&system, a.id, &reason).await?;
        }
    }
    if !have_target {
        permissions
            .grant(
                &system,
                NewAssignment {
                    user_id: user,
                    role_id: target.id,
                    scope: Scope::Org { org_id: org },
                    valid_from: None,
                    valid_until: None,
                    reason: format!("organization role {} set by {by}", role.as_str()),
                },
            )
            .await?;
    }
    Ok(())
}

/// The guard for host routes: succeeds when the authenticated caller may do `action` on
/// `resource`, else a `403 application/problem+json` saying which permission is missing.
/// Decisions come from the same engine as every pm-core call, so a host's own routes follow the
/// roles, assignments and conditions managed through `/api/v1/.../roles` and `.../assignments`.
///
/// ```
/// use axum::extract::State;
/// use pm_core::authz::{Action, Resource, ResourceKind};
/// use pm_core::id::OrgId;
/// use pm_server::AppState;
/// use pm_server::auth::Authenticated;
/// use pm_server::authz::require;
/// use pm_server::error::ApiError;
/// use pm_server::extract::Path;
///
/// /// A host's own route: exports an organization's data, for those who may manage it.
/// async fn export_org(
///     State(state): State<AppState>,
///     who: Authenticated,
///     Path(org): Path<uuid::Uuid>,
/// ) -> Result<String, ApiError> {
///     let org = OrgId(org);
///     require(&state, &who, Action::Manage, &Resource::new(ResourceKind::Org, Some(org), None))
///         .await?;
///     Ok(format!("export of {org}"))
/// }
///
/// let _host_routes: axum::Router<AppState> =
///     axum::Router::new().route("/host/orgs/{org}/export", axum::routing::get(export_org));
/// ```
pub async fn require(
    state: &AppState,
    who: &Authenticated,
    action: Action,
    resource: &Resource,
) -> Result<(), ApiError> {
    let actor = Actor::User(who.user_id);
    match ServerAuthorizer::new(state.permissions.clone()).check(&actor, action, resource).await? {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(pm_core::Error::Forbidden(reason).into()),
    }
}

//! [`PermissionService`]: the store-backed front of the crate. It validates and authorizes
//! changes to the permission model, writes them through the stores (each write one transaction
//! with its audit record), and keeps the [`Engine`] in step.
//!
//! Keeping the engine in step: every store write returns the store revision it produced. When
//! that is exactly one past the revision the engine reflects, the change is applied to the index
//! in place; otherwise (another instance wrote in between) the engine reloads a consistent
//! snapshot. Either way the very next check sees the change. Changes made by other instances are
//! picked up by [`PermissionService::refresh_if_stale`] (called by the `Authorizer` impl at most
//! every `refresh_every`) or on demand with [`PermissionService::ensure_revision`].
//!
//! Who may change what (checked with the engine itself, so the rules are data):
//! reading roles, templates, the catalogue and others' assignments needs `role.read` in the
//! scope; creating/updating/deleting roles, applying templates, granting and revoking needs
//! `role.manage` in the scope concerned (the role's organization, or the assignment's scope);
//! the audit log needs `role.manage` globally. Everyone may read their own assignments and
//! explain their own decisions.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pm_core::authz::{Authorizer, Decision};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};
use serde::{Deserialize, Serialize};

use crate::audit::{ChainReport, ChainVerifier};
use crate::clock::{Clock, SystemClock};
use crate::condition::CompiledCondition;
use crate::defaults;
use crate::engine::{Change, EffectivePermission, Engine, EngineConfig, Explanation};
use crate::model::*;
use crate::store::AuthzStores;
use crate::{Error, Result};

/// Service settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Engine settings.
    pub engine: EngineConfig,
    /// When set, checks through the `Authorizer` impl first look for changes made by other
    /// instances if this long has passed since the last look (one cheap revision query).
    pub refresh_every: Option<Duration>,
}

/// What [`PermissionService::seed_defaults`] created (empty lists on a second run).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeedReport {
    /// Permissions registered.
    pub permissions: Vec<String>,
    /// Templates stored.
    pub templates: Vec<String>,
    /// System roles created.
    pub roles: Vec<String>,
}

impl SeedReport {
    /// Whether nothing was created.
    pub fn is_empty(&self) -> bool {
        self.permissions.is_empty() && self.templates.is_empty() && self.roles.is_empty()
    }
}

/// A page of an organization's audit records ([`PermissionService::list_org_audit`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Matching records in `seq` order.
    pub records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent when the log was read to its end.
    pub next_after: Option<i64>,
}

/// The organization an audit record is about: a role's owner, or an assignment's scope.
fn audit_org(r: &AuditRecord) -> Option<OrgId> {
    let p = &r.payload;
    let org = p.pointer("/role/org_id").or_else(|| p.pointer("/assignment/scope/org_id"))?;
    serde_json::from_value(org.clone()).ok()
}

/// The store-backed permission service. Cheap to share (`Arc`).
pub struct PermissionService {
    stores: AuthzStores,
    engine: Arc<Engine>,
    config: ServiceConfig,
    reload: tokio::sync::Mutex<()>,
    last_refresh: Mutex<Instant>,
}

impl std::fmt::Debug for PermissionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermissionService")
            .field("stores", &self.stores)
            .field("revision", &self.engine.store_revision())
            .finish_non_exhaustive()
    }
}

fn role_resource(org: Option<OrgId>, project: Option<ProjectId>) -> Resource {
    Resource::new(ResourceKind::Role, org, project)
}

const MAX_NAME: usize = 100;

fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.trim() != name {
        return Err(Error::invalid(field, "must be non-empty without surrounding spaces"));
    }
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME} characters, no control characters"),
        ));
    }
    Ok(())
}

impl PermissionService {
    /// Loads the engine from `stores` (migrated) with the system clock.
    pub async fn open(stores: AuthzStores, config: ServiceConfig) -> Result<Self> {
        Self::open_with_clock(stores, config, Arc::new(SystemClock)).await
    }

    /// Loads the engine from `stores` with an injected clock.
    pub async fn open_with_clock(
        stores: AuthzStores,
        config: ServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let snapshot = stores.admin.load_snapshot().await?;
        let engine = Engine::with_clock(snapshot, config.engine, clock)?;
        Ok(Self {
            stores,
            engine: Arc::new(engine),
            config,
            reload: tokio::sync::Mutex::new(()),
            last_refresh: Mutex::new(Instant::now()),
        })
    }

    /// The engine (for checks on the hot path, explain, effective permissions).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The stores.
    pub fn stores(&self) -> &AuthzStores {
        &self.stores
    }

    /// The revision token of the state the engine reflects (see [`Engine::revision_token`]).
    pub fn revision_token(&self) -> String {
        self.engine.revision_token()
    }

    /// Reloads the engine if the store has changes it does not reflect (made by another
    /// instance). Returns whether it reloaded.
    pub async fn refresh_if_stale(&self) -> Result<bool> {
        *self.last_refresh.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let stored = self.stores.audit.revision().await?;
        if stored <= self.engine.store_revision() {
            return Ok(false);
        }
        self.reload_to(stored).await?;
        Ok(true)
    }

    /// Makes sure the engine reflects at least the state named by `token` (from
    /// [`PermissionService::revision_token`] on any instance), reloading if needed.
    pub async fn ensure_revision(&self, token: &str) -> Result<()> {
        let wanted: i64 = token
            .strip_prefix('r')
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error::invalid("revision", "not a revision token"))?;
        if wanted > self.engine.store_revision() {
            self.reload().await?;
        }
        Ok(())
    }

    async fn reload(&self) -> Result<()> {
        self.reload_to(i64::MAX).await
    }

    /// Reloads unless the engine already reflects `revision` by the time this caller's turn
    /// comes (concurrent callers that saw the same change load the snapshot once, not each).
    async fn reload_to(&self, revision: i64) -> Result<()> {
        let _guard = self.reload.lock().await;
        if self.engine.store_revision() >= revision {
            return Ok(());
        }
        let snapshot = self.stores.admin.load_snapshot().await?;
        if snapshot.revision > self.engine.store_revision() {
            self.engine.replace_if_newer(snapshot)?;
        }
        Ok(())
    }

    /// Brings the engine to `revision` after a local write of `change`.
    async fn applied(&self, change: Change, revision: i64) -> Result<()> {
        match self.engine.apply_at(change, revision) {
            Ok(true) => Ok(()),
            Ok(false) => self.reload().await,
            Err(e) => {
                tracing::warn!(error = %e, "pm-permissions: could not apply a change; reloading");
                self.reload().await
            }
        }
    }

    /// `Ok` when the engine allows `actor` to do `action` on `resource`, else
    /// [`Error::Forbidden`]: for hosts that guard their own steps around the service's calls.
    pub fn authorize(&self, actor: &Actor, action: Action, resource: &Resource) -> Result<()> {
        match self.engine.check(actor, action, resource) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(Error::Forbidden(why)),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Catalogue, roles, templates

    /// The registered permissions (the catalogue is public to every actor).
    pub async fn list_permissions(&self) -> Result<Vec<PermissionDef>> {
        self.stores.roles.list_permissions().await
    }

    async fn validate_role(&self, role: &Role) -> Result<()> {
        validate_name("name", &role.name)?;
        let registered = self.stores.roles.list_permissions().await?;
        for perm in role.grants.iter().map(|g| &g.permission).chain(role.denies.iter()) {
            if !registered.iter().any(|d| d.permission == *perm) {
                return Err(Error::invalid(
                    "grants",
                    format!("{perm} is not a registered permission"),
                ));
            }
        }
        for g in &role.grants {
            if let Some(c) = &g.condition {
                CompiledCondition::compile(c)?;
            }
        }
        if let Some(parent) = role.parent_id {
            let parent = match self.stores.roles.get_role(parent).await {
                Err(Error::NotFound { .. }) => {
                    return Err(Error::invalid("parent_id", "no such role"));
                }
                other => other?,
            };
            if parent.org_id.is_some() && parent.org_id != role.org_id {
                return Err(Error::invalid(
                    "parent_id",
                    "a role may only inherit from a system role or a role of its organization",
                ));
            }
            // The parent is in the store, but it may have been created by another instance
            // since this engine last refreshed; the engine's check below would then call it
            // unknown. (Seen when two instances start at once on an empty database: one seeds
            // `viewer`, the other seeds `team_member` on top of it and failed to start.)
            self.refresh_if_stale().await?;
        }
        self.engine.validate_role(role)
    }

    /// Creates a role (needs `role.manage` in the role's organization, or globally for a system
    /// role).
    pub async fn create_role(&self, actor: &Actor, input: NewRole) -> Result<Role> {
        self.authorize(actor, Action::Manage, &role_resource(input.org_id, None))?;
        let now = pm_core::model::now();
        let role = Role {
            id: RoleId::new(),
            org_id: input.org_id,
            name: input.name,
            description: input.description,
            parent_id: input.parent_id,
            grants: input.grants,
            denies: input.denies,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        self.validate_role(&role).await?;
        let w = self.stores.roles.create_role(actor, &role).await?;
        self.applied(Change::PutRole(w.value.clone()), w.revision).await?;
        Ok(w.value)
    }

    /// Loads a role (needs `role.read` in its organization).
    pub async fn get_role(&self, actor: &Actor, id: RoleId) -> Result<Role> {
        let role = self.stores.roles.get_role(id).await?;
        if role.org_id.is_some() {
            self.authorize(actor, Action::Read, &role_resource(role.org_id, None))
                .map_err(|_| Error::not_found("role"))?;
        }
        Ok(role)
    }

    /// System roles and, given an organization, that organization's roles (needs `role.read`
    /// there; system roles alone are visible to anyone).
    pub async fn list_roles(&self, actor: &Actor, org: Option<OrgId>) -> Result<Vec<Role>> {
        if org.is_some() {
            self.authorize(actor, Action::Read, &role_resource(org, None))?;
        }
        let mut roles = self.stores.roles.list_roles().await?;
        roles.retain(|r| r.org_id.is_none() || r.org_id == org);
        Ok(roles)
    }

    /// Changes a role at `expected_version` (needs `role.manage` where the role lives).
    pub async fn update_role(
        &self,
        actor: &Actor,
        id: RoleId,
        expected_version: i64,
        patch: RolePatch,
    ) -> Result<Role> {
        let current = self.stores.roles.get_role(id).await?;
        self.authorize(actor, Action::Manage, &role_resource(current.org_id, None))?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(current)));
        }
        let mut role = current;
        if let Some(n) = patch.name {
            role.name = n;
        }
        if let Some(d) = patch.description {
            role.description = d;
        }
        if let Some(p) = patch.parent_id {
            if p == Some(role.id) {
                return Err(Error::InheritanceCycle {
                    path: vec![role.name.clone(), role.name.clone()],
                });
            }
            role.parent_id = p;
        }
        if let Some(g) = patch.grants {
            role.grants = g;
        }
        if let Some(d) = patch.denies {
            role.denies = d;
        }
        role.updated_at = pm_core::model::now();
        self.validate_role(&role).await?;
        let w = self.stores.roles.update_role(actor, &role, expected_version).await?;
        self.applied(Change::PutRole(w.value.clone()), w.revision).await?;
        Ok(w.value)
    }

    /// Deletes a role nobody holds and no role inherits (needs `role.manage`).
    pub async fn delete_role(&self, actor: &Actor, id: RoleId) -> Result<()> {
        let current = self.stores.roles.get_role(id).await?;
        self.authorize(actor, Action::Manage, &role_resource(current.org_id, None))?;
        let w = self.stores.roles.delete_role(actor, id).await?;
        self.applied(Change::DeleteRole(id), w.revision).await
    }

    /// The role templates.
    pub async fn list_templates(&self, actor: &Actor) -> Result<Vec<RoleTemplate>> {
        let _ = actor;
        self.stores.roles.list_templates().await
    }

    /// Creates an org role from a template (needs `role.manage` in the organization). Its parent
    /// is the org's role named like the template's parent, else the system role of that name.
    pub async fn apply_template(&self, actor: &Actor, name: &str, org_id: OrgId) -> Result<Role> {
        self.authorize(actor, Action::Manage, &role_resource(Some(org_id), None))?;
        let templates = self.stores.roles.list_templates().await?;
        let t = templates
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::not_found("template"))?;
        let parent_id = match &t.parent {
            None => None,
            Some(p) => {
                let roles = self.stores.roles.list_roles().await?;
                let found = roles
                    .iter()
                    .find(|r| r.org_id == Some(org_id) && &r.name == p)
                    .or_else(|| roles.iter().find(|r| r.org_id.is_none() && &r.name == p));
                Some(
                    found
                        .ok_or_else(|| {
                            Error::invalid("parent", format!("no role named `{p}` to inherit"))
                        })?
                        .id,
                )
            }
        };
        self.create_role(
            actor,
            NewRole {
                org_id: Some(org_id),
                name: t.name,
                description: t.description,
                parent_id,
                grants: t.grants,
                denies: t.denies,
            },
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Assignments

    /// Grants a role to a user at a scope (needs `role.manage` in that scope).
    pub async fn grant(&self, actor: &Actor, input: NewAssignment) -> Result<Assignment> {
        self.authorize(
            actor,
            Action::Manage,
            &role_resource(input.scope.org_id(), input.scope.project_id()),
        )?;
        let role = match self.stores.roles.get_role(input.role_id).await {
            Err(Error::NotFound { .. }) => {
                return Err(Error::invalid("role_id", "no such role"));
            }
            other => other?,
        };
        if role.org_id.is_some() && role.org_id != input.scope.org_id() {
            return Err(Error::invalid(
                "scope",
                "an organization's role can only be assigned within that organization",
            ));
        }
        if let (Some(f), Some(u)) = (input.valid_from, input.valid_until)
            && u <= f
        {
            return Err(Error::invalid("valid_until", "must be after valid_from"));
        }
        let a = Assignment {
            id: AssignmentId::new(),
            user_id: input.user_id,
            role_id: input.role_id,
            scope: input.scope,
            valid_from: input.valid_from.map(pm_core::model::truncate_micros),
            valid_until: input.valid_until.map(pm_core::model::truncate_micros),
            granted_by: actor.user(),
            reason: input.reason,
            created_at: pm_core::model::now(),
        };
        let w = self.stores.assignments.grant(actor, &a).await?;
        self.applied(Change::Grant(w.value.clone()), w.revision).await?;
        Ok(w.value)
    }

    /// Revokes an assignment (needs `role.manage` in its scope).
    pub async fn revoke(
        &self,
        actor: &Actor,
        id: AssignmentId,
        reason: &str,
    ) -> Result<Assignment> {
        let a = self.stores.assignments.get_assignment(id).await?;
        self.authorize(
            actor,
            Action::Manage,
            &role_resource(a.scope.org_id(), a.scope.project_id()),
        )?;
        let w = self.stores.assignments.revoke(actor, id, reason).await?;
        self.applied(Change::Revoke(id), w.revision).await?;
        Ok(w.value)
    }

    /// Lists assignments (one's own always; others' need `role.read` at the filter's scope, or
    /// globally without one).
    pub async fn list_assignments(
        &self,
        actor: &Actor,
        filter: &AssignmentFilter,
    ) -> Result<Vec<Assignment>> {
        let own = filter.user_id.is_some() && filter.user_id == actor.user();
        if !own {
            let scope = filter.scope.unwrap_or(Scope::Global);
            self.authorize(
                actor,
                Action::Read,
                &role_resource(scope.org_id(), scope.project_id()),
            )?;
        }
        self.stores.assignments.list_assignments(filter).await
    }

    /// Assignments inside an organization — scoped to it or to one of its projects (only to
    /// `project` when given) — optionally narrowed by `filter`'s user and role (its scope is
    /// ignored). One's own always; others' need `role.read` in the organization (or the project).
    pub async fn list_org_assignments(
        &self,
        actor: &Actor,
        org: OrgId,
        project: Option<ProjectId>,
        filter: &AssignmentFilter,
    ) -> Result<Vec<Assignment>> {
        let own = filter.user_id.is_some() && filter.user_id == actor.user();
        if !own {
            self.authorize(actor, Action::Read, &role_resource(Some(org), project))?;
        }
        let filter = AssignmentFilter { scope: None, ..*filter };
        let mut all = self.stores.assignments.list_assignments(&filter).await?;
        all.retain(|a| {
            a.scope.org_id() == Some(org) && project.is_none_or(|p| a.scope.project_id() == Some(p))
        });
        Ok(all)
    }

    // -----------------------------------------------------------------------------------------
    // Decisions

    /// What `user` may do at `scope` (one's own always; others' need `role.read` there).
    pub fn effective_permissions(
        &self,
        actor: &Actor,
        user: UserId,
        scope: Scope,
    ) -> Result<Vec<EffectivePermission>> {
        if actor.user() != Some(user) {
            self.authorize(
                actor,
                Action::Read,
                &role_resource(scope.org_id(), scope.project_id()),
            )?;
        }
        Ok(self.engine.effective_permissions(user, scope))
    }

    /// Explains `subject`'s decision (one's own always; others' need `role.read` in the
    /// resource's scope).
    pub fn explain(
        &self,
        actor: &Actor,
        subject: &Actor,
        action: Action,
        resource: &Resource,
    ) -> Result<Explanation> {
        if actor != subject {
            self.authorize(
                actor,
                Action::Read,
                &role_resource(resource.org_id, resource.project_id),
            )?;
        }
        Ok(self.engine.explain(subject, action, resource))
    }

    // -----------------------------------------------------------------------------------------
    // Audit

    /// Audit records after `after` (needs `role.manage` globally).
    pub async fn list_audit(
        &self,
        actor: &Actor,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.authorize(actor, Action::Manage, &role_resource(None, None))?;
        self.stores.audit.list_audit(after, limit.min(1000)).await
    }

    /// Audit records about one organization — changes to its roles and to assignments scoped
    /// within it — after `after` (needs `role.manage` in the organization). Scans the log in
    /// `seq` order until `limit` (at most 1000) records matched or the log ends; the page's
    /// `next_after` continues the scan.
    pub async fn list_org_audit(
        &self,
        actor: &Actor,
        org: OrgId,
        after: i64,
        limit: u32,
    ) -> Result<AuditPage> {
        self.authorize(actor, Action::Manage, &role_resource(Some(org), None))?;
        let limit = limit.clamp(1, 1000) as usize;
        let mut records = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.stores.audit.list_audit(cursor, 1000).await?;
            if page.is_empty() {
                return Ok(AuditPage { records, next_after: None });
            }
            for r in page {
                cursor = r.seq;
                if audit_org(&r) == Some(org) {
                    records.push(r);
                    if records.len() == limit {
                        return Ok(AuditPage { records, next_after: Some(cursor) });
                    }
                }
            }
        }
    }

    /// Re-verifies the whole hash chain (needs `role.manage` globally).
    pub async fn verify_audit_chain(&self, actor: &Actor) -> Result<ChainReport> {
        self.authorize(actor, Action::Manage, &role_resource(None, None))?;
        self.verify_chain().await
    }

    /// Re-verifies the whole hash chain for an organization's administrators (needs
    /// `role.manage` in the organization). The chain is one log for every organization; the
    /// report carries counts and hashes only, no other organization's content.
    pub async fn verify_audit_chain_for_org(
        &self,
        actor: &Actor,
        org: OrgId,
    ) -> Result<ChainReport> {
        self.authorize(actor, Action::Manage, &role_resource(Some(org), None))?;
        self.verify_chain().await
    }

    async fn verify_chain(&self) -> Result<ChainReport> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let page = self.stores.audit.list_audit(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for r in &page {
                v.push(r);
            }
            if v.is_broken() {
                break;
            }
        }
        Ok(v.finish())
    }

    // -----------------------------------------------------------------------------------------
    // Seeding

    /// Registers the default permissions and templates and creates the default system roles,
    /// skipping whatever exists. Idempotent; returns what it created. Needs a trusted actor
    /// (`Actor::System`) or `role.manage` globally.
    pub async fn seed_defaults(&self, actor: &Actor) -> Result<SeedReport> {
        self.authorize(actor, Action::Manage, &role_resource(None, None))?;
        let mut report = SeedReport::default();
        let mut revision = None;
        for def in defaults::permissions() {
            if let Some(w) = self.stores.roles.put_permission(actor, &def).await? {
                report.permissions.push(def.permission.to_string());
                revision = Some(w.revision);
            }
        }
        if let Some(r) = revision {
            // The catalogue is not part of the index, but the revision moved.
            self.engine.note_revision(r);
        }
        let mut roles = self.stores.roles.list_roles().await?;
        for t in defaults::templates() {
            if self.stores.roles.put_template(actor, &t).await?.is_some() {
                report.templates.push(t.name.clone());
            }
            if roles.iter().any(|r| r.org_id.is_none() && r.name == t.name) {
                continue;
            }
            let parent_id = t.parent.as_ref().and_then(|p| {
                roles.iter().find(|r| r.org_id.is_none() && &r.name == p).map(|r| r.id)
            });
            let created = self
                .create_role(
                    actor,
                    NewRole {
                        org_id: None,
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parent_id,
                        grants: t.grants.clone(),
                        denies: t.denies.clone(),
                    },
                )
                .await;
            match created {
                Ok(role) => {
                    report.roles.push(role.name.clone());
                    roles.push(role);
                }
                // Another instance seeded it concurrently.
                Err(Error::AlreadyExists { .. }) => {
                    roles = self.stores.roles.list_roles().await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.refresh_if_stale().await?;
        Ok(report)
    }

    /// The system role named `name` (e.g. a default role), if any.
    pub async fn system_role(&self, name: &str) -> Result<Option<Role>> {
        Ok(self
            .stores
            .roles
            .list_roles()
            .await?
            .into_iter()
            .find(|r| r.org_id.is_none() && r.name == name))
    }
}

#[async_trait]
impl Authorizer for PermissionService {
    async fn check(
        &self,
        actor: &Actor,
        action: Action,
        resource: &Resource,
    ) -> pm_core::Result<Decision> {
        let Some(every) = self.config.refresh_every else {
            return Ok(self.engine.check(actor, action, resource));
        };
        let due =
            self.last_refresh.lock().unwrap_or_else(PoisonError::into_inner).elapsed() >= every;
        if due && let Err(e) = self.refresh_if_stale().await {
            // The periodic look only bounds how long a revoke may lag; failing it must not
            // fail the check (a refusal below looks again and reports its own failure).
            tracing::warn!(error = %e, "pm-permissions: looking for other instances' changes failed");
        }
        // The revision the decision is made on (or a newer one: reading it first is the safe
        // side, it can only cause one needless re-check).
        let decided_at = self.engine.store_revision();
        let decision = self.engine.check(actor, action, resource);
        // A grant made on another instance since the last look must not be refused here: before
        // answering "no", make sure the engine reflects the store as it is now (one revision
        // query; a reload only if something changed) and decide again if the engine moved past
        // the state the refusal was made on. "Moved" rather than "this call reloaded": a
        // concurrent check may have finished the reload between this refusal and the look, and
        // the look then finds nothing stale although the refusal came from the old state. So a
        // grant is honoured everywhere at once, and only a revoke can lag, by at most
        // `refresh_every`.
        if matches!(decision, Decision::Deny(_)) {
            self.refresh_if_stale().await?;
            if self.engine.store_revision() != decided_at {
                return Ok(self.engine.check(actor, action, resource));
            }
        }
        Ok(decision)
    }
}

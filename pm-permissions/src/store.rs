//! Store traits: the persistence contract of the permission model, one trait per aggregate.
//!
//! Traits are object-safe (`#[async_trait]`) so hosts hold `Arc<dyn RoleStore>` and can plug
//! their own adapter; the [`crate::testing`] suite (feature `testing`) tells an adapter author
//! whether theirs behaves. Rules every adapter follows:
//!
//! - every mutating method is one transaction that also appends its [`AuditRecord`] (hash-chained
//!   with [`crate::audit::record_hash`], appends serialized so the chain is linear) and returns
//!   the new store revision, which is that record's `seq`;
//! - the audit log is append-only: no method updates or deletes a record;
//! - a failed write leaves nothing behind: no row and no audit record;
//! - a missing entity is `NotFound`, a broken uniqueness rule `AlreadyExists`, an update at a
//!   stale version `Conflict` carrying the current role, deleting a role still assigned or
//!   inherited from `InUse`.
//!
//! Built-in adapters: [`sqlite`] (feature `sqlite`) and [`postgres`] (feature `postgres`). Their
//! tables live in the same database as pm-core's, prefixed `authz_`, with their own migrations
//! table `_pm_permissions_migrations`.

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::event::Actor;

use crate::Result;
use crate::engine::Snapshot;
use crate::model::*;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The permission catalogue, roles and role templates.
#[async_trait]
pub trait RoleStore: Send + Sync {
    /// Registers a permission unless it already is; `None` when it existed.
    async fn put_permission(
        &self,
        actor: &Actor,
        def: &PermissionDef,
    ) -> Result<Option<Written<PermissionDef>>>;
    /// The registered permissions, by resource and action name.
    async fn list_permissions(&self) -> Result<Vec<PermissionDef>>;
    /// Inserts a role (unique by organization and name).
    async fn create_role(&self, actor: &Actor, role: &Role) -> Result<Written<Role>>;
    /// Loads a role.
    async fn get_role(&self, id: RoleId) -> Result<Role>;
    /// Every role, oldest first.
    async fn list_roles(&self) -> Result<Vec<Role>>;
    /// Replaces a role's fields if it is still at `expected_version`; bumps the version and
    /// `updated_at` is taken from `role`.
    async fn update_role(
        &self,
        actor: &Actor,
        role: &Role,
        expected_version: i64,
    ) -> Result<Written<Role>>;
    /// Deletes a role that no assignment and no role refers to.
    async fn delete_role(&self, actor: &Actor, id: RoleId) -> Result<Written<Role>>;
    /// Stores a template unless one of that name exists; `None` when it existed.
    async fn put_template(
        &self,
        actor: &Actor,
        template: &RoleTemplate,
    ) -> Result<Option<Written<RoleTemplate>>>;
    /// Templates by name.
    async fn list_templates(&self) -> Result<Vec<RoleTemplate>>;
}

/// Assignments of roles to users.
#[async_trait]
pub trait AssignmentStore: Send + Sync {
    /// Inserts an assignment (its role must exist).
    async fn grant(&self, actor: &Actor, assignment: &Assignment) -> Result<Written<Assignment>>;
    /// Deletes an assignment, recording `reason` in the audit log; returns what was revoked.
    async fn revoke(
        &self,
        actor: &Actor,
        id: AssignmentId,
        reason: &str,
    ) -> Result<Written<Assignment>>;
    /// Loads an assignment.
    async fn get_assignment(&self, id: AssignmentId) -> Result<Assignment>;
    /// Assignments matching `filter`, oldest first.
    async fn list_assignments(&self, filter: &AssignmentFilter) -> Result<Vec<Assignment>>;
}

/// The audit log and the store revision.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Up to `limit` records with `seq > after`, in `seq` order.
    async fn list_audit(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>>;
    /// The store revision: the last audit `seq` (0 when empty). Every change bumps it.
    async fn revision(&self) -> Result<i64>;
}

/// Backend administration.
#[async_trait]
pub trait AuthzAdmin: Send + Sync {
    /// Applies pending migrations of this crate's tables.
    async fn migrate(&self) -> Result<()>;
    /// Every role and assignment, read in one consistent snapshot together with the revision
    /// they reflect (what the engine loads).
    async fn load_snapshot(&self) -> Result<Snapshot>;
    /// `sqlite` or `postgres` (or a host adapter's name).
    fn backend(&self) -> &'static str;
}

/// Every permission store, as trait objects. Cheap to clone.
#[derive(Clone)]
pub struct AuthzStores {
    /// Catalogue, roles, templates.
    pub roles: Arc<dyn RoleStore>,
    /// Assignments.
    pub assignments: Arc<dyn AssignmentStore>,
    /// Audit log and revision.
    pub audit: Arc<dyn AuditLog>,
    /// Administration.
    pub admin: Arc<dyn AuthzAdmin>,
}

impl AuthzStores {
    /// Bundles one adapter that implements every trait.
    pub fn from_adapter<S>(s: Arc<S>) -> Self
    where
        S: RoleStore + AssignmentStore + AuditLog + AuthzAdmin + 'static,
    {
        Self { roles: s.clone(), assignments: s.clone(), audit: s.clone(), admin: s }
    }
}

impl std::fmt::Debug for AuthzStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzStores")
            .field("backend", &self.admin.backend())
            .finish_non_exhaustive()
    }
}

/// Opens the built-in adapter named by a URL (`sqlite://…` or `postgres://…`), the same URL as
/// pm-core's store. Does not migrate; call `stores.admin.migrate()`.
pub async fn open(url: &str) -> Result<AuthzStores> {
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let s = sqlite::SqliteAuthzStore::connect(url).await?;
            return Ok(AuthzStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-permissions was built without the `sqlite` feature",
        ));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let s = postgres::PostgresAuthzStore::connect(url).await?;
            return Ok(AuthzStores::from_adapter(Arc::new(s)));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(crate::Error::invalid(
            "database_url",
            "pm-permissions was built without the `postgres` feature",
        ));
    }
    Err(crate::Error::invalid("database_url", "must start with sqlite: or postgres:"))
}

/// pm-permissions' PostgreSQL stores over an existing pool, for a host that shares one pool between all
/// the crates on one database (pm-server does: one pool per process, see its `db` module) rather
/// than letting each [`open`] its own. Does not migrate; call `stores.admin.migrate()`.
#[cfg(feature = "postgres")]
pub fn postgres_stores(pool: sqlx::postgres::PgPool) -> AuthzStores {
    AuthzStores::from_adapter(Arc::new(postgres::PostgresAuthzStore::from_pool(pool)))
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the built-in adapters.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod shared {
    use pm_core::event::Actor;

    use crate::model::*;
    use crate::{Error, Result};

    pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Storage(format!("stored {what} is invalid: {e}").into())
    }

    pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("model types serialize")
    }

    pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
        serde_json::from_str(s).map_err(|e| corrupt(what, e))
    }

    pub(crate) fn scope_kind(s: &Scope) -> &'static str {
        match s {
            Scope::Global => "global",
            Scope::Org { .. } => "org",
            Scope::Project { .. } => "project",
        }
    }

    pub(crate) fn scope_from(
        kind: &str,
        org: Option<uuid::Uuid>,
        project: Option<uuid::Uuid>,
    ) -> Result<Scope> {
        match (kind, org, project) {
            ("global", None, None) => Ok(Scope::Global),
            ("org", Some(o), None) => Ok(Scope::Org { org_id: o.into() }),
            ("project", Some(o), Some(p)) => {
                Ok(Scope::Project { org_id: o.into(), project_id: p.into() })
            }
            _ => Err(corrupt("scope", kind)),
        }
    }

    pub(crate) fn actor_json(a: &Actor) -> String {
        to_json(a)
    }

    pub(crate) fn role_payload(role: &Role) -> serde_json::Value {
        serde_json::json!({ "role": role })
    }

    pub(crate) fn assignment_payload(a: &Assignment, reason: Option<&str>) -> serde_json::Value {
        match reason {
            Some(r) => serde_json::json!({ "assignment": a, "reason": r }),
            None => serde_json::json!({ "assignment": a }),
        }
    }

    pub(crate) fn parse_resource(s: &str) -> Result<ResourceKind> {
        RESOURCES
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| corrupt("permission resource", s))
    }

    pub(crate) fn parse_action(s: &str) -> Result<Action> {
        ACTIONS
            .iter()
            .copied()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| corrupt("permission action", s))
    }
}

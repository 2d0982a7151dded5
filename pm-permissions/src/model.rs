//! The permission model: permissions `(resource, action)`, roles with a parent (inheritance),
//! explicit denies and conditional grants, role templates, scoped assignments with validity
//! windows, and audit records.
//!
//! Invariants the rest of the crate relies on:
//!
//! - a [`Permission`] whose action is [`Action::Manage`] implies every action on its resource
//!   (granting `task.manage` grants `task.update`; denying it denies every task action);
//! - an assignment is active at `t` iff `valid_from <= t < valid_until` (both optional):
//!   `valid_until` is exclusive, so a grant stops exactly at that instant;
//! - a role with an `org_id` only ever applies to resources of that organization, whatever the
//!   scope it was assigned at (scope isolation).

use std::fmt;
use std::str::FromStr;

use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use pm_core::authz::{Action, Resource, ResourceKind};

use crate::{Error, Result};

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid("id", e.to_string()))
            }
        }
    )*};
}

typed_id! {
    /// Identifies a [`Role`].
    RoleId,
    /// Identifies an [`Assignment`].
    AssignmentId,
}

/// Every resource kind, in bit order.
pub const RESOURCES: [ResourceKind; 8] = [
    ResourceKind::Org,
    ResourceKind::Member,
    ResourceKind::Project,
    ResourceKind::Task,
    ResourceKind::Comment,
    ResourceKind::Role,
    ResourceKind::Integration,
    ResourceKind::Workflow,
];

/// Every action, in bit order.
pub const ACTIONS: [Action; 5] =
    [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Manage];

fn resource_index(r: ResourceKind) -> u8 {
    match r {
        ResourceKind::Org => 0,
        ResourceKind::Member => 1,
        ResourceKind::Project => 2,
        ResourceKind::Task => 3,
        ResourceKind::Comment => 4,
        ResourceKind::Role => 5,
        ResourceKind::Integration => 6,
        ResourceKind::Workflow => 7,
    }
}

fn action_index(a: Action) -> u8 {
    match a {
        Action::Create => 0,
        Action::Read => 1,
        Action::Update => 2,
        Action::Delete => 3,
        Action::Manage => 4,
    }
}

/// A permission: an action on a kind of resource, written `resource.action` (`task.update`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    /// The kind of resource.
    pub resource: ResourceKind,
    /// The action.
    pub action: Action,
}

impl Permission {
    /// `action` on `resource`.
    pub const fn new(resource: ResourceKind, action: Action) -> Self {
        Self { resource, action }
    }

    /// The bit of this exact permission in a 40-bit set (resource × action).
    pub fn bit(self) -> u8 {
        resource_index(self.resource) * 5 + action_index(self.action)
    }

    /// The permissions this one grants (or denies): itself, and for `manage` every action on the
    /// resource. As a bit set over [`Permission::bit`].
    pub fn implied_mask(self) -> u64 {
        if self.action == Action::Manage {
            0b11111u64 << (resource_index(self.resource) * 5)
        } else {
            1u64 << self.bit()
        }
    }

    /// The permission with bit `bit` (inverse of [`Permission::bit`]).
    pub fn from_bit(bit: u8) -> Option<Self> {
        let r = RESOURCES.get(usize::from(bit / 5))?;
        let a = ACTIONS[usize::from(bit % 5)];
        Some(Self::new(*r, a))
    }

    /// Parses `resource.action`.
    pub fn parse(s: &str) -> Result<Self> {
        let (r, a) = s
            .split_once('.')
            .ok_or_else(|| Error::invalid("permission", "expected `resource.action`"))?;
        let resource = RESOURCES
            .iter()
            .copied()
            .find(|k| k.as_str() == r)
            .ok_or_else(|| Error::invalid("permission", format!("unknown resource `{r}`")))?;
        let action = ACTIONS
            .iter()
            .copied()
            .find(|k| k.as_str() == a)
            .ok_or_else(|| Error::invalid("permission", format!("unknown action `{a}`")))?;
        Ok(Self::new(resource, action))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.resource.as_str(), self.action.as_str())
    }
}

/// A registered permission with its description (the catalogue `GET /permissions` lists).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDef {
    /// The permission.
    pub permission: Permission,
    /// What it allows, for people.
    pub description: String,
}

/// A condition that must hold for a conditional grant to apply: a built-in relation between the
/// actor and the resource, or a CEL expression.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// The actor created/owns the resource (`Resource::owner`).
    Owner,
    /// The actor is among the resource's assignees.
    Assignee,
    /// The actor watches the resource.
    Watcher,
    /// The actor holds an active assignment scoped to the resource's project.
    ProjectMember,
    /// The actor holds an active assignment scoped to the resource's organization (or one of its
    /// projects).
    OrgMember,
    /// A CEL expression over `resource`, `actor`, `request` and `now` that must evaluate to
    /// `true` (see [`crate::condition`]).
    Expr {
        /// The CEL source.
        expr: String,
    },
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Owner => f.write_str("actor is the owner"),
            Condition::Assignee => f.write_str("actor is an assignee"),
            Condition::Watcher => f.write_str("actor is a watcher"),
            Condition::ProjectMember => f.write_str("actor is a project member"),
            Condition::OrgMember => f.write_str("actor is an organization member"),
            Condition::Expr { expr } => write!(f, "`{expr}`"),
        }
    }
}

/// One permission a role grants, unconditionally or under a condition.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The permission.
    pub permission: Permission,
    /// When present, the grant applies only where the condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

impl Grant {
    /// An unconditional grant.
    pub fn always(permission: Permission) -> Self {
        Self { permission, condition: None }
    }

    /// A grant under `condition`.
    pub fn when(permission: Permission, condition: Condition) -> Self {
        Self { permission, condition: Some(condition) }
    }
}

/// A named set of grants and denies, optionally inheriting a parent's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    /// Id.
    pub id: RoleId,
    /// The organization that owns the role; `None` for a system role usable everywhere.
    pub org_id: Option<OrgId>,
    /// Name, unique per organization (system roles share one namespace).
    pub name: String,
    /// What the role is for.
    pub description: String,
    /// The role whose grants and denies this one inherits.
    pub parent_id: Option<RoleId>,
    /// What the role allows.
    pub grants: Vec<Grant>,
    /// What the role forbids; a deny overrides any allow from any role.
    pub denies: Vec<Permission>,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Input for a new role.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NewRole {
    /// Owning organization (`None`: a system role).
    #[serde(default)]
    pub org_id: Option<OrgId>,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Parent role.
    #[serde(default)]
    pub parent_id: Option<RoleId>,
    /// Grants.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Denies.
    #[serde(default)]
    pub denies: Vec<Permission>,
}

/// Changes to a role; absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RolePatch {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New parent (`Some(None)` removes it).
    #[serde(default, with = "double_option")]
    pub parent_id: Option<Option<RoleId>>,
    /// New grants (replacing the old).
    #[serde(default)]
    pub grants: Option<Vec<Grant>>,
    /// New denies (replacing the old).
    #[serde(default)]
    pub denies: Option<Vec<Permission>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(inner) => inner.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A blueprint for roles: applying it to an organization creates an org role with its grants.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleTemplate {
    /// Name (unique); also the name of the roles made from it.
    pub name: String,
    /// Description.
    pub description: String,
    /// Name of the template (or system role) the created role inherits from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Grants.
    pub grants: Vec<Grant>,
    /// Denies.
    #[serde(default)]
    pub denies: Vec<Permission>,
}

/// Where an assignment applies.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = AssignmentScope))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Everywhere.
    Global,
    /// Resources of one organization (including all its projects).
    Org {
        /// The organization.
        org_id: OrgId,
    },
    /// Resources of one project.
    Project {
        /// The project's organization.
        org_id: OrgId,
        /// The project.
        project_id: ProjectId,
    },
}

impl Scope {
    /// The organization, unless global.
    pub fn org_id(&self) -> Option<OrgId> {
        match self {
            Scope::Global => None,
            Scope::Org { org_id } | Scope::Project { org_id, .. } => Some(*org_id),
        }
    }

    /// The project, for project scopes.
    pub fn project_id(&self) -> Option<ProjectId> {
        match self {
            Scope::Project { project_id, .. } => Some(*project_id),
            _ => None,
        }
    }

    /// Whether an assignment at this scope covers `resource`.
    pub fn covers(&self, resource: &Resource) -> bool {
        match self {
            Scope::Global => true,
            Scope::Org { org_id } => resource.org_id == Some(*org_id),
            Scope::Project { org_id, project_id } => {
                resource.org_id == Some(*org_id) && resource.project_id == Some(*project_id)
            }
        }
    }

    /// The narrowest scope covering `resource`.
    pub fn narrowest_for(resource: &Resource) -> Scope {
        match (resource.org_id, resource.project_id) {
            (Some(org_id), Some(project_id)) => Scope::Project { org_id, project_id },
            (Some(org_id), None) => Scope::Org { org_id },
            _ => Scope::Global,
        }
    }
}

/// A role given to a user at a scope, for a period.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Id.
    pub id: AssignmentId,
    /// The user.
    pub user_id: UserId,
    /// The role.
    pub role_id: RoleId,
    /// Where it applies.
    pub scope: Scope,
    /// Active from this instant (inclusive); `None`: always was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    /// Active until this instant (exclusive); `None`: until revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// Who granted it.
    pub granted_by: Option<UserId>,
    /// Why.
    pub reason: String,
    /// When it was granted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Assignment {
    /// Whether the assignment is active at `t`.
    pub fn active_at(&self, t: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|f| f <= t) && self.valid_until.is_none_or(|u| t < u)
    }
}

/// Input for a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAssignment {
    /// The user.
    pub user_id: UserId,
    /// The role.
    pub role_id: RoleId,
    /// Where it applies.
    pub scope: Scope,
    /// Active from (inclusive).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_from: Option<OffsetDateTime>,
    /// Active until (exclusive).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// Which assignments to list; absent fields match everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AssignmentFilter {
    /// Only this user's.
    #[serde(default)]
    pub user_id: Option<UserId>,
    /// Only of this role.
    #[serde(default)]
    pub role_id: Option<RoleId>,
    /// Only at exactly this scope.
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// One entry of the append-only, hash-chained audit log of changes to the permission model.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps. Also the store's revision after this change.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// What happened: `role.create`, `assignment.grant`, …
    pub action: String,
    /// The id (or key) of what it happened to.
    pub subject: String,
    /// The entity after the change (before it, for deletions), plus a `reason` when given.
    pub payload: serde_json::Value,
    /// Hash of the previous record ([`crate::audit::GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 over this record's fields and `prev_hash` (see [`crate::audit::record_hash`]).
    pub hash: String,
}

/// A store write's result and the store revision it produced (the `seq` of its audit record).
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    /// The written entity.
    pub value: T,
    /// The store revision after the write.
    pub revision: i64,
}

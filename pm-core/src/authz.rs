//! Authorization port: every service operation asks an [`Authorizer`] before it reads or writes,
//! so REST, WebSocket, workflows and integrations are held to the same rules.
//!
//! pm-core defines the question; pm-permissions answers it (RBAC + conditions). Hosts with their
//! own rules implement the trait, and [`AllowAll`] serves hosts (and tests) that authorize
//! elsewhere.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::event::Actor;
use crate::id::{OrgId, ProjectId, UserId};

/// The kind of resource a permission is about (the `resource` of `(resource, action)`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// An organization.
    Org,
    /// Organization membership.
    Member,
    /// A project and its configuration (states, labels, milestones, fields).
    Project,
    /// A task and its records (relations, watchers, time, attachments, check-ins).
    Task,
    /// A comment.
    Comment,
    /// A role (pm-permissions).
    Role,
    /// An integration (pm-integrations).
    Integration,
    /// A workflow (pm-workflows).
    Workflow,
}

impl ResourceKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Org => "org",
            ResourceKind::Member => "member",
            ResourceKind::Project => "project",
            ResourceKind::Task => "task",
            ResourceKind::Comment => "comment",
            ResourceKind::Role => "role",
            ResourceKind::Integration => "integration",
            ResourceKind::Workflow => "workflow",
        }
    }
}

/// What the actor wants to do (the `action` of `(resource, action)`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Create.
    Create,
    /// Read.
    Read,
    /// Change.
    Update,
    /// Delete.
    Delete,
    /// Administer (membership, configuration, roles).
    Manage,
}

impl Action {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Manage => "manage",
        }
    }
}

/// The resource an action targets, with the context conditions need (owner, assignees,
/// watchers, and free-form attributes for expression conditions). The context fields default to
/// empty, so older serialized resources still deserialize.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Kind.
    pub kind: ResourceKind,
    /// Organization (absent only for global resources such as a new organization).
    pub org_id: Option<OrgId>,
    /// Project, for project-scoped resources.
    pub project_id: Option<ProjectId>,
    /// The specific resource (absent for "create" and list checks).
    pub id: Option<uuid::Uuid>,
    /// Creator/owner/reporter, for "owner" conditions.
    pub owner: Option<UserId>,
    /// Assignees, for "assignee" conditions.
    pub assignees: Vec<UserId>,
    /// Watchers, for "watcher" conditions (empty when the caller did not load them).
    #[serde(default)]
    pub watchers: Vec<UserId>,
    /// Further facts about the resource or the request (e.g. `{"state": "done"}`,
    /// `{"request": {"ip": "…"}}`), for expression (CEL) conditions.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Resource {
    /// A resource of `kind` in an organization, optionally a project.
    pub fn new(kind: ResourceKind, org_id: Option<OrgId>, project_id: Option<ProjectId>) -> Self {
        Self {
            kind,
            org_id,
            project_id,
            id: None,
            owner: None,
            assignees: Vec::new(),
            watchers: Vec::new(),
            attributes: serde_json::Map::new(),
        }
    }

    /// Sets the specific id.
    pub fn with_id(mut self, id: impl Into<uuid::Uuid>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the owner.
    pub fn with_owner(mut self, owner: UserId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Sets the assignees.
    pub fn with_assignees(mut self, assignees: impl IntoIterator<Item = UserId>) -> Self {
        self.assignees = assignees.into_iter().collect();
        self
    }

    /// Sets the watchers.
    pub fn with_watchers(mut self, watchers: impl IntoIterator<Item = UserId>) -> Self {
        self.watchers = watchers.into_iter().collect();
        self
    }

    /// Sets one attribute (for expression conditions).
    pub fn with_attribute(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.attributes.insert(key.into(), value);
        self
    }
}

/// An authorization decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused, with a reason fit to show the caller.
    Deny(String),
}

/// Answers "may `actor` do `action` on `resource`?".
#[async_trait]
pub trait Authorizer: Send + Sync {
    /// Decides. Errors are infrastructure failures, not denials.
    async fn check(&self, actor: &Actor, action: Action, resource: &Resource) -> Result<Decision>;
}

/// Allows everything: for hosts that authorize before calling pm-core, and for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn check(&self, _: &Actor, _: Action, _: &Resource) -> Result<Decision> {
        Ok(Decision::Allow)
    }
}

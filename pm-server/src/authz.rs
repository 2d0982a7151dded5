//! The server's default [`Authorizer`]: organization membership.
//!
//! Until a host wires pm-permissions' engine, the server must still keep tenants apart: a user
//! may act inside an organization only as its member. Owners and admins manage (members, labels,
//! states, fields); members create, read and change work; guests read. Any user may create an
//! organization (and becomes its owner).

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::Result;
use pm_core::authz::{Action, Authorizer, Decision, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::model::MemberRole;
use pm_core::store::DirectoryStore;

/// Membership-based authorization (see the module docs).
#[derive(Clone)]
pub struct MembershipAuthorizer {
    directory: Arc<dyn DirectoryStore>,
}

impl MembershipAuthorizer {
    /// Decides from the memberships in `directory`.
    pub fn new(directory: Arc<dyn DirectoryStore>) -> Self {
        Self { directory }
    }
}

#[async_trait]
impl Authorizer for MembershipAuthorizer {
    async fn check(&self, actor: &Actor, action: Action, resource: &Resource) -> Result<Decision> {
        let user = match actor {
            Actor::User(u) => *u,
            // Automations and integrations are authorized by whoever configured them.
            Actor::Automation(_) | Actor::Integration(_) | Actor::System => {
                return Ok(Decision::Allow);
            }
        };
        let Some(org) = resource.org_id else {
            // Org-less resources: creating an organization, registering a user.
            return Ok(match (resource.kind, action) {
                (ResourceKind::Org, Action::Create) => Decision::Allow,
                _ => Decision::Deny("not allowed outside an organization".into()),
            });
        };
        let Some(m) = self.directory.get_membership(org, user).await? else {
            return Ok(Decision::Deny("you are not a member of this organization".into()));
        };
        let admin = matches!(m.role, MemberRole::Owner | MemberRole::Admin);
        let allowed = match action {
            Action::Read => true,
            Action::Manage => admin,
            Action::Create | Action::Update | Action::Delete => match resource.kind {
                ResourceKind::Org | ResourceKind::Member | ResourceKind::Role => admin,
                ResourceKind::Project => {
                    admin || (m.role == MemberRole::Member && action != Action::Delete)
                }
                ResourceKind::Comment if action != Action::Create => {
                    admin || resource.owner == Some(user)
                }
                _ => m.role != MemberRole::Guest,
            },
        };
        Ok(if allowed {
            Decision::Allow
        } else {
            Decision::Deny(format!("your role ({}) does not allow this", m.role.as_str()))
        })
    }
}

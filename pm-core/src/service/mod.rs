//! Services: the operations hosts call. Each one validates its input, asks the
//! [`Authorizer`], then writes through the stores (which append the
//! event in the same transaction).
//!
//! Checks that need other entities (a state belongs to the task's project, an assignee is a member
//! of the organization, a custom value fits its field) live here, once, so every store adapter
//! gets them for free. Reads return `NotFound` rather than `Forbidden` when the caller may not see
//! an entity, so ids cannot be probed.

mod directory;
mod project;
mod task;
mod worklog;

pub use directory::*;
pub use project::*;
pub use task::*;
pub use worklog::*;

use std::sync::Arc;

use crate::authz::{Action, Authorizer, Decision, Resource};
use crate::blob::BlobStore;
use crate::event::Origin;
use crate::id::{OrgId, ProjectId};
use crate::store::Stores;
use crate::{Error, Result};

/// The pm-core service facade: stores + authorizer + blob store.
#[derive(Clone)]
pub struct Pm {
    stores: Stores,
    authz: Arc<dyn Authorizer>,
    blobs: Arc<dyn BlobStore>,
    /// The organization of each project looked up so far. A project never moves to another
    /// organization and is never deleted (only archived), so entries never go stale, on any
    /// instance; the map is bounded and simply cleared when full. It saves a read per
    /// project-scoped list (see [`Pm::list_project_tasks`]).
    project_orgs: Arc<std::sync::Mutex<std::collections::HashMap<ProjectId, OrgId>>>,
}

/// Bound of [`Pm`]'s project → organization cache.
const PROJECT_ORGS_CAPACITY: usize = 65_536;

impl std::fmt::Debug for Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm").field("stores", &self.stores).finish_non_exhaustive()
    }
}

impl Pm {
    /// Composes the services.
    pub fn new(stores: Stores, authz: Arc<dyn Authorizer>, blobs: Arc<dyn BlobStore>) -> Self {
        Self { stores, authz, blobs, project_orgs: Arc::default() }
    }

    /// The organization a project belongs to (cached; see the `project_orgs` field). Not
    /// authorized: callers authorize against the organization they get.
    async fn project_org(&self, project: ProjectId) -> Result<OrgId> {
        let cached = self.project_orgs().get(&project).copied();
        if let Some(org) = cached {
            return Ok(org);
        }
        let org = self.stores.projects.get_project(project).await?.org_id;
        let mut map = self.project_orgs();
        if map.len() >= PROJECT_ORGS_CAPACITY {
            map.clear();
        }
        map.insert(project, org);
        Ok(org)
    }

    fn project_orgs(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<ProjectId, OrgId>> {
        // Plain values, never left half-updated: a poisoned lock is safe to reuse.
        self.project_orgs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The underlying stores (for hosts composing their own queries).
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Fails with `Forbidden` unless the authorizer allows the action.
    async fn authorize(&self, origin: &Origin, action: Action, resource: &Resource) -> Result<()> {
        match self.authz.check(&origin.actor, action, resource).await? {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(Error::Forbidden(reason)),
        }
    }

    /// Like [`Pm::authorize`] but for reads of one entity: a denial looks like absence.
    async fn authorize_read(
        &self,
        origin: &Origin,
        resource: &Resource,
        entity: &'static str,
    ) -> Result<()> {
        match self.authz.check(&origin.actor, Action::Read, resource).await? {
            Decision::Allow => Ok(()),
            Decision::Deny(_) => Err(Error::not_found(entity)),
        }
    }
}

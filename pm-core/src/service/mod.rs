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
use crate::store::Stores;
use crate::{Error, Result};

/// The pm-core service facade: stores + authorizer + blob store.
#[derive(Clone)]
pub struct Pm {
    stores: Stores,
    authz: Arc<dyn Authorizer>,
    blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for Pm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pm").field("stores", &self.stores).finish_non_exhaustive()
    }
}

impl Pm {
    /// Composes the services.
    pub fn new(stores: Stores, authz: Arc<dyn Authorizer>, blobs: Arc<dyn BlobStore>) -> Self {
        Self { stores, authz, blobs }
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

//! Role-based access control with conditions: the production implementation of pm-core's
//! [`Authorizer`](pm_core::authz::Authorizer) (`check(actor, action, resource) -> Decision`).
//!
//! - [`model`]: permissions `(resource, action)`; roles with a parent (inheritance, cycle
//!   rejection, depth limit), conditional grants and explicit denies; role templates;
//!   assignments scoped Global | Org | Project with `valid_from`/`valid_until`; audit records.
//! - [`condition`]: built-in relations (owner, assignee, watcher, project/org member) and CEL
//!   expressions, compiled once.
//! - [`engine`]: the in-memory [`Engine`] — indexed by (user, scope), deny overrides allow, a
//!   decision cache whose entries die at the earliest validity boundary they relied on and on
//!   every change, [`Engine::explain`], effective permissions, an injectable [`clock`].
//! - [`service`]: [`PermissionService`], the store-backed front: validated, authorized, audited
//!   changes that the engine sees on the very next check; multi-instance refresh by revision.
//! - [`audit`]: the hash chain of the append-only audit log and its verification.
//! - [`defaults`]: the 21 default permissions and roles admin, project_manager, team_member,
//!   viewer, seeded idempotently by [`PermissionService::seed_defaults`].
//! - [`store`]: the store traits, with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; tables prefixed `authz_`, migrations tracked in
//!   `_pm_permissions_migrations`.
//! - `testing` (feature `testing`): the store conformance suite.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate; builds without sqlx under `--no-default-features`; knows no HTTP framework.

pub mod audit;
pub mod clock;
pub mod condition;
pub mod defaults;
pub mod engine;
mod error;
pub mod model;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{Engine, EngineConfig, Explanation, Snapshot};
pub use error::{Error, Result};
pub use service::{AuditPage, PermissionService, SeedReport, ServiceConfig};

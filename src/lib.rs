//! `pm`: an embeddable project-management backend.
//!
//! This facade re-exports the workspace crates so a host application depends on one crate and
//! picks features:
//!
//! | feature        | brings in                                  |
//! |----------------|--------------------------------------------|
//! | `sqlite` (default) | pm-core's embedded SQLite store        |
//! | `postgres`     | pm-core's PostgreSQL store                 |
//! | `permissions`  | `pm::permissions` (RBAC + conditions)     |
//! | `integrations` | `pm::integrations` (GitHub, Slack, Jira, …) |
//! | `workflows`    | `pm::workflows` (automation)              |
//! | `realtime`     | `pm::realtime` (WebSocket hub, presence, Yjs) |
//! | `full`         | all of the above                           |
//!
//! ```no_run
//! # async fn demo() -> pm::core::Result<()> {
//! use std::sync::Arc;
//! use pm::core::{Pm, authz::AllowAll, blob::FsBlobStore, store};
//!
//! let stores = store::open("sqlite://pm.db").await?;
//! stores.admin.migrate().await?;
//! let pm = Pm::new(stores, Arc::new(AllowAll), Arc::new(FsBlobStore::new("blobs")));
//! # let _ = pm;
//! # Ok(())
//! # }
//! ```

pub use pm_core as core;
#[cfg(feature = "integrations")]
pub use pm_integrations as integrations;
#[cfg(feature = "permissions")]
pub use pm_permissions as permissions;
#[cfg(feature = "realtime")]
pub use pm_realtime as realtime;
#[cfg(feature = "workflows")]
pub use pm_workflows as workflows;

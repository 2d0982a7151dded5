//! pm-core: the domain of pm and the contracts every other crate builds on.
//!
//! - [`model`]: organizations, users, projects, workflow states, tasks and their satellites, with
//!   parse-don't-validate constructors;
//! - [`id`]: UUIDv7 typed ids;
//! - [`event`]: the event log every mutation appends to, and the [`Tailer`](event::Tailer) its
//!   consumers use;
//! - [`store`]: one `#[async_trait]` store trait per aggregate, with SQLite (feature `sqlite`,
//!   default) and PostgreSQL (feature `postgres`) adapters;
//! - [`query`]: filters, sorts, keyset cursors, full-text search terms;
//! - [`service`]: validating, authorizing operations over the stores ([`Pm`]);
//! - [`authz`]: the [`Authorizer`](authz::Authorizer) port (pm-permissions implements it);
//! - [`blob`]: the [`BlobStore`](blob::BlobStore) port for attachment bytes;
//! - `testing` (feature `testing`): the store conformance suite.
//!
//! Invariants: pm-core depends on no other pm crate; it builds without sqlx under
//! `--no-default-features`; a mutation and its event commit together or not at all.

pub mod authz;
pub mod blob;
mod error;
pub mod event;
pub mod id;
pub mod model;
pub mod query;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Current, Error, Result};
pub use service::Pm;

//! The one error type of pm-core.
//!
//! Store adapters translate backend errors (sqlx, io) into these variants at their boundary, so
//! callers match on domain meaning (`NotFound`, `Conflict`, `Invalid`, ...) and never on a
//! database driver's error type.

use crate::model::{Comment, Milestone, Project, Task};

/// Result alias used throughout pm-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pm-core operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation; `field` names the offending field (dotted path for nested input).
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field, e.g. `title` or `custom_fields.estimate`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entity does not exist (or is not visible to the caller).
    #[error("{entity} not found")]
    NotFound {
        /// The kind of entity, e.g. `task`.
        entity: &'static str,
    },
    /// The entity changed since the caller read it; carries the current state.
    #[error("version conflict: {0}")]
    Conflict(Box<Current>),
    /// A uniqueness rule was violated, e.g. a duplicate project key.
    #[error("{entity} with this {field} already exists")]
    AlreadyExists {
        /// The kind of entity.
        entity: &'static str,
        /// The unique field.
        field: &'static str,
    },
    /// The authorizer denied the operation.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The backing store failed (connection lost, disk full, ...). Not caused by the input.
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The current state of an entity whose update lost an optimistic-concurrency race.
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    /// A task at its current version.
    Task(Task),
    /// A project at its current version.
    Project(Project),
    /// A comment at its current version.
    Comment(Comment),
    /// A milestone at its current version.
    Milestone(Milestone),
}

impl std::fmt::Display for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Current::Task(t) => write!(f, "task is at version {}", t.version),
            Current::Project(p) => write!(f, "project is at version {}", p.version),
            Current::Comment(c) => write!(f, "comment is at version {}", c.version),
            Current::Milestone(m) => write!(f, "milestone is at version {}", m.version),
        }
    }
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(entity: &'static str) -> Self {
        Error::NotFound { entity }
    }

    /// Wraps a backend error as [`Error::Storage`].
    pub fn storage(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(err))
    }
}

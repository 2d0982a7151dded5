//! The one error type of pm-permissions.
//!
//! Store adapters translate sqlx errors into these variants at their boundary. Inheritance
//! problems have their own variants so callers (and HTTP problem documents) can say exactly what
//! is wrong: which roles form the cycle, how deep the chain got.

use crate::model::Role;

/// Result alias used throughout pm-permissions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pm-permissions operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entity does not exist.
    #[error("{entity} not found")]
    NotFound {
        /// The kind of entity, e.g. `role`.
        entity: &'static str,
    },
    /// The role changed since the caller read it; carries the current role.
    #[error("version conflict: role is at version {}", .0.version)]
    Conflict(Box<Role>),
    /// A uniqueness rule was violated.
    #[error("{entity} with this {field} already exists")]
    AlreadyExists {
        /// The kind of entity.
        entity: &'static str,
        /// The unique field.
        field: &'static str,
    },
    /// The entity is still referenced (a role with assignments or child roles).
    #[error("{entity} is still in use: {message}")]
    InUse {
        /// The kind of entity.
        entity: &'static str,
        /// By what.
        message: String,
    },
    /// Setting this parent would make a role inherit from itself.
    #[error("role inheritance cycle: {}", .path.join(" -> "))]
    InheritanceCycle {
        /// Role names along the cycle, starting and ending with the same role.
        path: Vec<String>,
    },
    /// The inheritance chain would be longer than the configured limit.
    #[error("role inheritance too deep: {} has {depth} levels, the limit is {limit}", .role)]
    InheritanceTooDeep {
        /// The role whose chain is too long.
        role: String,
        /// Its depth (1 = no parent).
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// The actor may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The backing store failed. Not caused by the input.
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
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

/// For the [`pm_core::authz::Authorizer`] impls, whose errors are pm-core's.
impl From<Error> for pm_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid { field, message } => pm_core::Error::Invalid { field, message },
            Error::NotFound { entity } => pm_core::Error::NotFound { entity },
            Error::AlreadyExists { entity, field } => {
                pm_core::Error::AlreadyExists { entity, field }
            }
            Error::Forbidden(m) => pm_core::Error::Forbidden(m),
            Error::Storage(s) => pm_core::Error::Storage(s),
            e @ (Error::Conflict(_)
            | Error::InUse { .. }
            | Error::InheritanceCycle { .. }
            | Error::InheritanceTooDeep { .. }) => {
                pm_core::Error::invalid("permissions", e.to_string())
            }
        }
    }
}

/// pm-core errors met by this crate (timestamps, ids) keep their meaning.
impl From<pm_core::Error> for Error {
    fn from(e: pm_core::Error) -> Self {
        match e {
            pm_core::Error::Invalid { field, message } => Error::Invalid { field, message },
            pm_core::Error::NotFound { entity } => Error::NotFound { entity },
            pm_core::Error::AlreadyExists { entity, field } => {
                Error::AlreadyExists { entity, field }
            }
            pm_core::Error::Forbidden(m) => Error::Forbidden(m),
            pm_core::Error::Storage(s) => Error::Storage(s),
            e @ pm_core::Error::Conflict(_) => Error::invalid("state", e.to_string()),
        }
    }
}

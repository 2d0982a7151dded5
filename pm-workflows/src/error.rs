//! The one error type of pm-workflows.
//!
//! Definitions are validated into [`Error::Invalid`] naming the JSON path of the offending value
//! (`steps[2].then[0].action.to_state`); limits have their own variant so hosts can tell "your
//! workflow is too big" from "your workflow is wrong". Store adapters translate sqlx errors into
//! [`Error::Storage`] at their boundary.

/// Result alias used throughout pm-workflows.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pm-workflows operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation; `field` is the JSON path of the offending value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// JSON path, e.g. `steps[2].then[0].action.to_state`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configured limit was exceeded (components per workflow, items per execution, run time,
    /// script budgets, cascade depth).
    #[error("limit exceeded: {limit} ({detail})")]
    LimitExceeded {
        /// Which limit, e.g. `components_per_workflow`.
        limit: &'static str,
        /// The observed value against the limit, for humans.
        detail: String,
    },
    /// The entity does not exist (or is not visible to the caller).
    #[error("{entity} not found")]
    NotFound {
        /// The kind of entity, e.g. `workflow`.
        entity: &'static str,
    },
    /// The entity changed since the caller read it (optimistic concurrency), or the operation
    /// does not fit its current state (e.g. deciding a closed approval).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The actor may not do this (including approving without the right, or self-approval).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A script failed or was stopped by the sandbox.
    #[error("script error: {0}")]
    Script(String),
    /// A side effect through a port failed (mail server, HTTP endpoint, message provider);
    /// retried with backoff by the engine.
    #[error("action failed: {0}")]
    Action(String),
    /// The backing store failed (connection lost, disk full, ...). Not caused by the input.
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

    /// Shorthand for [`Error::LimitExceeded`].
    pub fn limit(limit: &'static str, detail: impl Into<String>) -> Self {
        Error::LimitExceeded { limit, detail: detail.into() }
    }

    /// Wraps a backend error as [`Error::Storage`].
    pub fn storage(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(err))
    }
}

/// pm-core errors met by this crate (task actions, log reads) keep their meaning.
impl From<pm_core::Error> for Error {
    fn from(e: pm_core::Error) -> Self {
        match e {
            pm_core::Error::Invalid { field, message } => Error::Invalid { field, message },
            pm_core::Error::NotFound { entity } => Error::NotFound { entity },
            pm_core::Error::Forbidden(m) => Error::Forbidden(m),
            pm_core::Error::Storage(s) => Error::Storage(s),
            e @ (pm_core::Error::AlreadyExists { .. } | pm_core::Error::Conflict(_)) => {
                Error::Conflict(e.to_string())
            }
        }
    }
}

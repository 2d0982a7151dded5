//! The one error type of pm-realtime.
//!
//! Store adapters and brokers translate their backend errors (sqlx, Redis) into these variants at
//! their boundary, so callers match on meaning (`NotFound`, `Invalid`, `PayloadTooLarge`, ...)
//! and never on a driver's error type. Bad input arriving on a session is not an `Error` at all:
//! the hub answers it with an `error` frame (see [`crate::protocol::ErrorCode`]).

/// Result alias used throughout pm-realtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pm-realtime operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field, e.g. `channel` or `position`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entity does not exist (or is not the caller's).
    #[error("{entity} not found")]
    NotFound {
        /// The kind of entity, e.g. `notification`.
        entity: &'static str,
    },
    /// The authorizer denied the operation.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A broker message is larger than the transport allows (PostgreSQL `NOTIFY` payloads are
    /// capped below 8000 bytes); nothing was sent.
    #[error("broker payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// The broker failed (connection lost, protocol error). Not caused by the input.
    #[error("broker error: {0}")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
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

    /// Wraps a backend error as [`Error::Storage`].
    pub fn storage(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(err))
    }

    /// Wraps a broker failure as [`Error::Broker`].
    pub fn broker(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Broker(Box::new(err))
    }
}

/// pm-core errors met by this crate (store reads, authorization) keep their meaning.
impl From<pm_core::Error> for Error {
    fn from(e: pm_core::Error) -> Self {
        match e {
            pm_core::Error::Invalid { field, message } => Error::Invalid { field, message },
            pm_core::Error::NotFound { entity } => Error::NotFound { entity },
            pm_core::Error::Forbidden(m) => Error::Forbidden(m),
            pm_core::Error::Storage(s) => Error::Storage(s),
            e @ (pm_core::Error::AlreadyExists { .. } | pm_core::Error::Conflict(_)) => {
                Error::invalid("state", e.to_string())
            }
        }
    }
}

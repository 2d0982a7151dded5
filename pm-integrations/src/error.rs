//! The one error type of pm-integrations.
//!
//! Store adapters translate sqlx errors into these variants at their boundary; signature checks
//! have their own small [`SignatureError`](crate::webhook::SignatureError) (it is what an inbound
//! endpoint answers 401 with) which converts into [`Error::Unauthenticated`].

/// Result alias used throughout pm-integrations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pm-integrations operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input failed validation; `field` names the offending field.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field, e.g. `url` or `events`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The entity does not exist.
    #[error("{entity} not found")]
    NotFound {
        /// The kind of entity, e.g. `integration`.
        entity: &'static str,
    },
    /// An entity with the same natural key exists (e.g. a second mapping of one external item).
    #[error("{entity} already exists")]
    AlreadyExists {
        /// The kind of entity.
        entity: &'static str,
    },
    /// The stored version differs from the expected one (optimistic concurrency).
    #[error("{entity} was changed concurrently (current version {current})")]
    Conflict {
        /// The kind of entity.
        entity: &'static str,
        /// The stored version.
        current: i64,
    },
    /// An inbound request's authenticity could not be established (bad or missing signature,
    /// stale timestamp, wrong channel token).
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] crate::webhook::SignatureError),
    /// An outbound target is refused by the SSRF guard.
    #[error("target refused: {0}")]
    TargetRefused(String),
    /// A sealed secret could not be opened (unknown key id, wrong key, tampered ciphertext).
    #[error("secret cannot be decrypted: {0}")]
    Crypto(String),
    /// The external service failed or answered something unusable. Not caused by our input.
    #[error("provider {provider} failed: {message}")]
    Provider {
        /// The provider key, e.g. `github`.
        provider: String,
        /// What happened.
        message: String,
        /// Seconds the provider asked us to wait (`Retry-After`), if any.
        retry_after: Option<u64>,
    },
    /// The external service refused our request with a `4xx` that is not a rate limit (no
    /// permission, gone, invalid): the same request will fail again, so it is not retried.
    #[error("provider {provider} refused the request: {message}")]
    Rejected {
        /// The provider key, e.g. `github`.
        provider: String,
        /// The HTTP status (`403`, `404`, `422`, …).
        status: u16,
        /// What happened (`HTTP 403 on PATCH /repos/…`).
        message: String,
    },
    /// An OAuth connection cannot be used until a user connects again: the provider refused
    /// the refresh token (`invalid_grant`), or the access token expired without one.
    #[error("the {provider} connection must be reconnected: {reason}")]
    NeedsReconnect {
        /// The provider key.
        provider: String,
        /// What the provider said (no secrets).
        reason: String,
    },
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

    /// Whether the failure may pass by itself, so the same operation is worth retrying later:
    /// a provider outage, timeout or rate limit ([`Error::Provider`]), a storage error, a
    /// concurrent write. Invalid input, a missing entity, a refused request
    /// ([`Error::Rejected`]), an unusable credential or a refused target stay failed until
    /// someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Provider { .. } | Error::Storage(_) | Error::Conflict { .. } => true,
            Error::Invalid { .. }
            | Error::NotFound { .. }
            | Error::AlreadyExists { .. }
            | Error::Unauthenticated(_)
            | Error::TargetRefused(_)
            | Error::Crypto(_)
            | Error::Rejected { .. }
            | Error::NeedsReconnect { .. } => false,
        }
    }

    /// Wraps a backend error as [`Error::Storage`].
    pub fn storage(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(err))
    }
}

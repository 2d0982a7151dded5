//! The one HTTP error type, [`ApiError`]: every failure a handler, extractor or middleware
//! returns becomes an RFC 9457 `application/problem+json` response through it.
//!
//! Invariants: each crate error converts with an exhaustive `match` (a new variant upstream is a
//! compile error here, not a silent 500); 5xx bodies are generic and never carry internal error
//! text; the internal cause of a 5xx is logged exactly once, when the response is built.

use std::borrow::Cow;
use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Media type of problem details (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong, as the client is told it. Build one with the constructors or `From` a crate
/// error; respond with it via [`IntoResponse`].
///
/// The body is `{"type", "title", "status", "detail", ...extensions}`. `type` is a relative URI
/// (`/problems/<slug>`), stable per kind of problem, so clients can branch on it.
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: Cow<'static, str>,
    /// Boxed so `Result<T, ApiError>` stays small on the happy path.
    extra: Box<Extra>,
}

#[derive(Default)]
struct Extra {
    /// Extension members of the body.
    extensions: Map<String, Value>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, ...).
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Internal cause of a server-side failure: logged, never sent.
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ApiError {
    /// A problem with the given status, type slug, title and client-facing detail.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { status, slug, title, detail: detail.into(), extra: Box::default() }
    }

    /// Adds an extension member to the body (RFC 9457 §3.2). Reserved names are ignored.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        if !matches!(name, "type" | "title" | "status" | "detail" | "instance") {
            self.extra.extensions.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Adds a response header. Invalid header values are dropped (they come from our own code).
    pub fn with_header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.extra.headers.push((header::HeaderName::from_static(name), v));
        }
        self
    }

    /// The same problem under another status and kind (e.g. a conflict reported as 412).
    pub fn with_status(
        mut self,
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
    ) -> Self {
        self.status = status;
        self.slug = slug;
        self.title = title;
        self
    }

    /// 400 `invalid`, naming the offending field (shared by every crate error's `Invalid`).
    pub fn invalid_field(field: String, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Invalid input",
            format!("invalid {field}: {message}"),
        )
        .with("field", field)
    }

    /// 404 `not-found` for a missing entity (shared by every crate error's `NotFound`).
    pub fn entity_not_found(entity: &'static str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{entity} not found"))
            .with("entity", entity)
    }

    /// 400: the request is malformed or a field is invalid.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// 404: no route matches the request path.
    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no resource at this path")
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this resource does not support the request method",
        )
    }

    /// 503: the server gave up on the request after `timeout`.
    pub fn timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Request timed out",
            format!("the request did not complete within {} s", timeout.as_secs_f64()),
        )
    }

    /// 503: a dependency the server needs is not available. `cause` is logged, not sent.
    pub fn unavailable(
        detail: impl Into<Cow<'static, str>>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        e.extra.cause = Some(cause.into());
        e
    }

    /// A storage failure: 503 with `Retry-After` when the database is momentarily out of reach
    /// (no pooled connection within the pool's timeout, the connection lost, the server
    /// overloaded or restarting, a lock or serialization conflict that a retry resolves) — the
    /// request did nothing and may be sent again — else 500. Either way the cause is logged,
    /// not sent.
    pub fn storage(cause: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        if is_transient(&*cause) {
            Self::unavailable("the database is busy or unreachable; retry shortly", cause)
                .with_header("retry-after", "1")
        } else {
            Self::internal(cause)
        }
    }

    /// 500 with a generic body; `cause` is logged, not sent.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; it has been logged",
        );
        e.extra.cause = Some(cause.into());
        e
    }

    /// The HTTP status this error responds with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem body as JSON.
    pub fn body(&self) -> Value {
        let mut body = Map::with_capacity(4 + self.extra.extensions.len());
        body.insert("type".into(), json!(format!("/problems/{}", self.slug)));
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.extend(self.extra.extensions.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(body)
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("type", &self.slug)
            .field("detail", &self.detail)
            .field("cause", &self.extra.cause)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.title, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.extra.cause {
            // The one place a server-side cause is logged; the current span carries the request
            // id and path (see the trace layer in `lib.rs`).
            if self.status.is_server_error() {
                tracing::error!(status = self.status.as_u16(), error = %cause, source = ?cause.source(), "{}", self.title);
            } else {
                tracing::warn!(status = self.status.as_u16(), error = %cause, "{}", self.title);
            }
        }
        let mut res = (self.status, axum::Json(self.body())).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.extra.headers {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

/// Whether a storage error (or one of its sources) is a database condition that passes: see
/// [`ApiError::storage`].
fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(db) = e.downcast_ref::<sqlx::Error>() {
            return match db {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                sqlx::Error::Database(d) => matches!(
                    d.code().as_deref(),
                    // SQLite: SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT (after the busy timeout).
                    // PostgreSQL: serialization failure, deadlock, too many connections,
                    // administrator shutdown, cannot connect now.
                    Some("5" | "517" | "40001" | "40P01" | "53300" | "57P01" | "57P03")
                ),
                _ => false,
            };
        }
        next = e.source();
    }
    false
}

impl From<pm_core::Error> for ApiError {
    fn from(err: pm_core::Error) -> Self {
        use pm_core::Error as E;
        match err {
            E::Invalid { field, message } => ApiError::invalid_field(field, message),
            E::NotFound { entity } => ApiError::entity_not_found(entity),
            E::Conflict(current) => {
                let detail = format!("version conflict: {current}; reload and retry");
                let (entity, value) = current_json(*current);
                let e = ApiError::new(StatusCode::CONFLICT, "conflict", "Version conflict", detail)
                    .with("entity", entity);
                match value {
                    Ok(v) => e.with("current", v),
                    // Unreachable for the derived impls; still never a panic in a handler.
                    Err(ser) => ApiError::internal(ser),
                }
            }
            E::AlreadyExists { entity, field } => ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Already exists",
                format!("{entity} with this {field} already exists"),
            )
            .with("entity", entity)
            .with("field", field),
            E::Forbidden(reason) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", reason)
            }
            E::Storage(cause) => ApiError::storage(cause),
        }
    }
}

/// pm-realtime errors reach HTTP only from the notification routes (a broker never answers a
/// request), so broker failures are 503 and storage failures 500.
impl From<pm_realtime::Error> for ApiError {
    fn from(err: pm_realtime::Error) -> Self {
        use pm_realtime::Error as E;
        match err {
            E::Invalid { field, message } => ApiError::invalid_field(field, message),
            E::NotFound { entity } => ApiError::entity_not_found(entity),
            E::Forbidden(reason) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", reason)
            }
            e @ E::PayloadTooLarge { .. } => ApiError::internal(e),
            E::Broker(cause) => ApiError::unavailable("the realtime broker is unavailable", cause),
            E::Storage(cause) => ApiError::storage(cause),
        }
    }
}

/// pm-integrations errors: a rejected webhook signature is 401 (the reason is safe to tell: it
/// never contains the expected value), a refused outbound target is 400 naming `url`, an
/// unopenable secret is a server fault (500), a provider failure is 502 (with its `Retry-After`).
impl From<pm_integrations::Error> for ApiError {
    fn from(err: pm_integrations::Error) -> Self {
        use pm_integrations::Error as E;
        match err {
            E::Invalid { field, message } => ApiError::invalid_field(field, message),
            E::NotFound { entity } => ApiError::entity_not_found(entity),
            E::AlreadyExists { entity } => ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Already exists",
                format!("{entity} already exists"),
            )
            .with("entity", entity),
            E::Conflict { entity, current } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "Version conflict",
                format!("{entity} is at version {current}; reload and retry"),
            )
            .with("entity", entity)
            .with("current", json!({ "version": current })),
            E::Unauthenticated(reason) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid-signature",
                "Unauthenticated webhook",
                reason.to_string(),
            ),
            E::TargetRefused(reason) => ApiError::invalid_field("url".into(), reason),
            e @ E::Crypto(_) => ApiError::internal(e),
            E::Provider { provider, message, retry_after } => {
                let e = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider-failed",
                    "Provider failed",
                    format!("{provider} failed: {message}"),
                )
                .with("provider", provider);
                match retry_after {
                    Some(secs) => e.with_header("retry-after", secs.to_string()),
                    None => e,
                }
            }
            // Still a gateway failure to our caller (the provider said no, not the caller's
            // input), with the provider's status for the curious.
            E::Rejected { provider, status, message } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider-failed",
                "Provider failed",
                format!("{provider} refused the request: {message}"),
            )
            .with("provider", provider)
            .with("provider_status", status),
            E::NeedsReconnect { provider, reason } => ApiError::new(
                StatusCode::CONFLICT,
                "oauth-reconnect-required",
                "Reconnect required",
                format!("the {provider} connection must be connected again ({reason})"),
            )
            .with("provider", provider),
            E::Storage(cause) => ApiError::storage(cause),
        }
    }
}

/// pm-workflows errors: definition errors name their JSON path (`field`), limits are 400
/// `limit-exceeded` naming the limit; a failing side effect (mail server, endpoint) is 503.
impl From<pm_workflows::Error> for ApiError {
    fn from(err: pm_workflows::Error) -> Self {
        use pm_workflows::Error as E;
        match err {
            E::Invalid { field, message } => ApiError::invalid_field(field, message),
            E::LimitExceeded { limit, detail } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "limit-exceeded",
                "Limit exceeded",
                format!("limit exceeded: {limit} ({detail})"),
            )
            .with("limit", limit),
            E::NotFound { entity } => ApiError::entity_not_found(entity),
            E::Conflict(detail) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            E::Forbidden(reason) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", reason)
            }
            E::Script(detail) => {
                ApiError::new(StatusCode::BAD_REQUEST, "script-error", "Script error", detail)
            }
            e @ E::Action(_) => ApiError::unavailable("a workflow action failed", e),
            E::Storage(cause) => ApiError::storage(cause),
        }
    }
}

impl From<pm_permissions::Error> for ApiError {
    fn from(err: pm_permissions::Error) -> Self {
        use pm_permissions::Error as E;
        match err {
            E::Invalid { field, message } => ApiError::invalid_field(field, message),
            E::NotFound { entity } => ApiError::entity_not_found(entity),
            E::Conflict(current) => {
                let detail = format!(
                    "version conflict: role is at version {}; reload and retry",
                    current.version
                );
                let e = ApiError::new(StatusCode::CONFLICT, "conflict", "Version conflict", detail)
                    .with("entity", "role");
                match serde_json::to_value(*current) {
                    Ok(v) => e.with("current", v),
                    Err(ser) => ApiError::internal(ser),
                }
            }
            E::AlreadyExists { entity, field } => ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Already exists",
                format!("{entity} with this {field} already exists"),
            )
            .with("entity", entity)
            .with("field", field),
            E::InUse { entity, message } => ApiError::new(
                StatusCode::CONFLICT,
                "in-use",
                "Still in use",
                format!("{entity} is still in use: {message}"),
            )
            .with("entity", entity),
            E::InheritanceCycle { path } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "inheritance-cycle",
                "Role inheritance cycle",
                format!("role inheritance cycle: {}", path.join(" -> ")),
            )
            .with("field", "parent_id")
            .with("path", path),
            e @ E::InheritanceTooDeep { .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "inheritance-too-deep",
                "Role inheritance too deep",
                e.to_string(),
            )
            .with("field", "parent_id"),
            E::Forbidden(reason) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", reason)
            }
            E::Storage(cause) => ApiError::storage(cause),
        }
    }
}

/// The entity kind and serialized state carried by a conflict.
fn current_json(current: pm_core::Current) -> (&'static str, serde_json::Result<Value>) {
    use pm_core::Current as C;
    match current {
        C::Task(t) => ("task", serde_json::to_value(t)),
        C::Project(p) => ("project", serde_json::to_value(p)),
        C::Comment(c) => ("comment", serde_json::to_value(c)),
        C::Milestone(m) => ("milestone", serde_json::to_value(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_the_field() {
        let e = ApiError::from(pm_core::Error::invalid("title", "must not be empty"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body["field"], "title");
        assert_eq!(body["status"], 400);
        assert!(body["detail"].as_str().unwrap().contains("title"));
    }

    #[test]
    fn storage_detail_is_generic() {
        let cause = std::io::Error::other("disk on fire at /var/lib/secret");
        let e = ApiError::from(pm_core::Error::storage(cause));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body().to_string().contains("secret"));
    }

    #[test]
    fn a_database_out_of_reach_is_503_with_retry_after_and_other_storage_errors_500() {
        for transient in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let e = ApiError::from(pm_core::Error::storage(transient));
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            let res = e.into_response();
            assert_eq!(res.headers()["retry-after"], "1");
        }
        // Wrapped one level down (as pm-integrations and pm-workflows report theirs).
        let wrapped = pm_core::Error::storage(pm_core::Error::storage(sqlx::Error::PoolTimedOut));
        assert_eq!(ApiError::from(wrapped).status(), StatusCode::SERVICE_UNAVAILABLE);
        let row = sqlx::Error::RowNotFound;
        assert_eq!(
            ApiError::from(pm_core::Error::storage(row)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn already_exists_and_forbidden_map() {
        assert_eq!(
            ApiError::from(pm_core::Error::AlreadyExists { entity: "project", field: "key" })
                .status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(pm_core::Error::Forbidden("not a member".into())).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::from(pm_core::Error::not_found("task")).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn conflict_carries_the_current_entity() {
        use pm_core::model::{Markdown, Milestone, Name};
        let current = Milestone {
            id: Default::default(),
            project_id: Default::default(),
            name: Name::parse("v1").unwrap(),
            description: Markdown::parse("").unwrap(),
            due_on: None,
            closed: false,
            version: 7,
        };
        let e = ApiError::from(pm_core::Error::Conflict(Box::new(pm_core::Current::Milestone(
            current,
        ))));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let body = e.body();
        assert_eq!(body["entity"], "milestone");
        assert_eq!(body["current"]["version"], 7);
        assert_eq!(body["current"]["name"], "v1");
    }

    #[test]
    fn extensions_cannot_override_members() {
        let body = ApiError::bad_request("x").with("status", 200).with("hint", "y").body();
        assert_eq!(body["status"], 400);
        assert_eq!(body["hint"], "y");
    }
}

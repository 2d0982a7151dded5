//! pm-server: the reference HTTP server for pm, as a library so hosts and tests can build the
//! same [`app`] the `pm-server` binary serves.
//!
//! - [`config`]: [`Config`](config::Config) from `PM_*` environment variables / flags;
//! - [`db`]: the process's [`Database`](db::Database), whose connections every crate's stores
//!   share (one PostgreSQL pool; on a SQLite file pm-core's one writer and its readers);
//! - [`auth`]: credentials, sessions, API tokens and the `Authenticated` extractor;
//! - [`authz`]: pm-permissions' engine as pm-core's authorizer, membership → role grants, and
//!   the [`require`](authz::require) guard for host routes;
//! - [`error`]: [`ApiError`], the one RFC 9457 problem+json error type;
//! - [`extract`]: `Json`/`Path`/`Query` extractors that reject with `ApiError`;
//! - [`forwarded`]: the client's address behind trusted reverse proxies (`X-Forwarded-For`);
//! - [`health`]: `/healthz` and `/readyz`;
//! - [`metrics`]: `/metrics` (Prometheus text: request rates and latencies, WebSocket sessions,
//!   event-log lag per consumer, workflow queue depth);
//! - [`realtime`]: pm-realtime's hub, broker and notification consumer behind `/api/v1/ws`.
//! - [`chat`]: Slack commands, buttons and notifications, and task due dates as Google
//!   Calendar / Outlook events (both ways, with push channel renewal)
//! - [`integrations`]: pm-integrations' stores, keyring, SSRF policy and background workers
//!   (inbound processing, outbound webhook fan-out and delivery) behind the integration routes.
//! - [`collab`]: `GET /api/v1/collab/{task_id}`, collaborative editing of task descriptions
//!   (Yjs over WebSocket) on pm-realtime's document registry.
//! - [`workflows`]: pm-workflows' engine and the server's adapters for its ports (approver
//!   rights from pm-permissions, SMTP, HTTP); routes in `api::workflows`.
//! - [`web`]: the PWA (`web/dist`, embedded at build time) at `/`.
//! - [`pwa`]: the PWA's server side: offline sync (exactly-once ops, field-level rebase, the
//!   delta feed), Web Push (VAPID, RFC 8291 encryption, delivery of notifications) and their
//!   tables; routes in `api::sync` and `api::push`.
//!
//! Invariants: every response this server produces for an error, including unknown routes,
//! wrong methods and timeouts, is `application/problem+json`; every response carries an
//! `x-request-id` (the client's, or a fresh UUID) that also tags the request's log lines.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Request, State};
use axum::http::HeaderName;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use pm_core::Pm;
use pm_core::blob::{BlobStore, FsBlobStore};
use pm_core::store::Stores;
use pm_permissions::PermissionService;
use std::sync::Arc;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub mod api;
pub mod auth;
pub mod authz;
pub mod chat;
pub mod collab;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod forwarded;
pub mod health;
pub mod idempotency;
pub mod integrations;
pub mod metrics;
pub mod pwa;
pub mod ratelimit;
pub mod realtime;
pub mod web;
pub mod workflows;
pub mod ws;

use auth::Auth;
use error::ApiError;

/// Header carrying the request id, set when absent and echoed on the response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler: the services, stores and the limits the handlers enforce.
/// Cheap to clone (`Arc`s and `Copy` values).
#[derive(Clone, Debug)]
pub struct AppState {
    /// pm-core's stores, one backend behind trait objects.
    pub stores: Stores,
    /// pm-core's services (validation + authorization + writes), authorized by
    /// [`authz::ServerAuthorizer`] over `permissions`.
    pub pm: Pm,
    /// pm-permissions: roles, assignments, the engine every check goes through, the audit log.
    pub permissions: Arc<PermissionService>,
    /// Authentication.
    pub auth: Auth,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Rate limits.
    pub limiter: ratelimit::RateLimiter,
    /// Remembered POST outcomes for `Idempotency-Key`.
    pub idempotency: idempotency::IdempotencyCache,
    /// Origins allowed by CORS (`*` for any); empty disables CORS.
    pub cors_origins: Vec<String>,
    /// The realtime hub behind `/api/v1/ws`, and the notifications. The constructors give an
    /// in-process one started on first use; the binary replaces it (see [`realtime`]).
    pub realtime: realtime::Realtime,
    /// Collaborative documents (see [`collab`]); in memory unless replaced with
    /// [`AppState::with_collab`].
    pub collab: pm_realtime::doc::Collab,
    /// pm-integrations (integrations, inbound webhooks, outbound subscriptions); `None` until
    /// set with [`AppState::with_integrations`] (the binary always sets it), and then the
    /// integration routes answer 404.
    pub integrations: Option<integrations::Integrations>,
    /// The workflow engine (see [`workflows`]); `None` unless set with
    /// [`AppState::with_workflows`] (the binary does), and the workflow routes answer 404.
    pub workflows: Option<pm_workflows::engine::Engine>,
    /// Request counters and latency histograms behind `/metrics` (see [`metrics`]).
    pub metrics: metrics::Metrics,
    /// Reverse proxies whose `X-Forwarded-For` names the client (see [`forwarded`]).
    pub trusted_proxies: forwarded::TrustedProxies,
    /// The PWA's tables: offline-sync op results and push subscriptions (see [`pwa`]); in
    /// memory unless replaced with [`AppState::with_pwa`] (the binary does).
    pub pwa: pwa::store::PwaStores,
    /// Web Push settings (VAPID identity, endpoint policy, retries); an ephemeral VAPID key
    /// unless replaced with [`AppState::with_push`] (the binary does).
    pub web_push: pwa::push::WebPush,
}

impl AppState {
    /// State over `stores` and `permissions` (see [`authz::open_permissions`]) with
    /// [`Auth::ephemeral`] (random JWT secret, in-memory credentials), blobs in a fresh temporary
    /// directory and the default [`Timeouts`]: for tests and quick embedding.
    pub fn new(stores: Stores, permissions: Arc<PermissionService>) -> Self {
        Self::with_auth(stores, permissions, Auth::ephemeral(), temp_blobs())
    }

    /// State over `stores` and `permissions` with the given JWT secret, in-memory credentials
    /// (see [`auth::store::memory`]) and the given blob store.
    pub fn with(
        stores: Stores,
        permissions: Arc<PermissionService>,
        jwt_secret: &[u8],
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        let auth = Auth::new(
            jwt_secret,
            Arc::new(auth::store::memory::MemoryAuthStore::default()),
            auth::AuthSettings::default(),
        );
        Self::with_auth(stores, permissions, auth, blobs)
    }

    /// State over `stores` and `permissions` with the given authentication and blob store: what
    /// the `pm-server` binary builds, with the auth store over the same database as `stores`.
    /// Every pm-core call is authorized by `permissions`' engine ([`authz::ServerAuthorizer`]).
    /// Starts the collaborative-document registry, so it needs a Tokio runtime.
    pub fn with_auth(
        stores: Stores,
        permissions: Arc<PermissionService>,
        auth: Auth,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        let authz = Arc::new(authz::ServerAuthorizer::new(permissions.clone()));
        let pm = Pm::new(stores.clone(), authz.clone(), blobs);
        let realtime = realtime::Realtime::new(realtime::RealtimeSetup::in_process(
            stores.clone(),
            authz.clone(),
        ));
        let collab = collab::default_registry(pm.clone(), authz);
        Self {
            stores,
            pm,
            permissions,
            auth,
            timeouts: Timeouts::default(),
            limiter: ratelimit::RateLimiter::new(ratelimit::RateLimits::default()),
            idempotency: idempotency::IdempotencyCache::default(),
            cors_origins: Vec::new(),
            realtime,
            collab,
            integrations: None,
            workflows: None,
            metrics: metrics::Metrics::default(),
            trusted_proxies: forwarded::TrustedProxies::default(),
            pwa: pwa::store::PwaStores::memory(),
            web_push: pwa::push::WebPush::ephemeral(),
        }
    }

    /// The same state with these Web Push settings.
    pub fn with_push(mut self, settings: pwa::push::WebPush) -> Self {
        self.web_push = settings;
        self
    }

    /// The notification sink pushing to this state's subscriptions (give it to the realtime
    /// setup's `sinks`).
    pub fn push_sink(&self) -> Arc<dyn pm_realtime::notification::NotificationSink> {
        Arc::new(pwa::push::PushSender::new(self.web_push.clone(), self.pwa.push.clone()))
    }

    /// The same state with the PWA tables in `stores` (see [`pwa::store::open`]).
    pub fn with_pwa(mut self, stores: pwa::store::PwaStores) -> Self {
        self.pwa = stores;
        self
    }

    /// Enables the integration routes over `integrations` (start its workers with
    /// [`integrations::Integrations::start`]).
    pub fn with_integrations(mut self, integrations: integrations::Integrations) -> Self {
        // The sync writes tasks through this state's services unless told otherwise.
        let integrations = match integrations.pm {
            Some(_) => integrations,
            None => integrations.with_pm(self.pm.clone()),
        };
        self.integrations = Some(integrations);
        self
    }

    /// The same state with the workflow engine behind the workflow routes (see
    /// [`workflows::open_engine`]); the caller starts it (`Engine::spawn`).
    pub fn with_workflows(mut self, engine: pm_workflows::engine::Engine) -> Self {
        self.workflows = Some(engine);
        self
    }
}

/// A blob store in a fresh temporary directory.
pub fn temp_blobs() -> Arc<dyn BlobStore> {
    let dir = std::env::temp_dir().join(format!("pm-blobs-{}", uuid::Uuid::now_v7()));
    Arc::new(FsBlobStore::new(dir))
}

impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for Stores {
    fn from_ref(state: &AppState) -> Self {
        state.stores.clone()
    }
}

/// Time limits the server enforces per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest a request may take to produce its response head (default 30 s); then 503.
    pub request: Duration,
    /// Longest `/readyz` waits for the database to answer (default 2 s); then 503.
    pub readiness: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { request: Duration::from_secs(30), readiness: Duration::from_secs(2) }
    }
}

/// The whole HTTP application: routes, fallbacks and middleware.
///
/// Layers, outermost first: set `x-request-id` → trace span (tagged with the id) → echo
/// `x-request-id` → request timeout → routes.
pub fn app(state: AppState) -> Router {
    let request_timeout = state.timeouts.request;
    let limiter = state.limiter.clone();
    let idempotency = state.idempotency.clone();
    let cors = cors_layer(&state.cors_origins);
    let metrics = state.metrics.clone();
    let trusted_proxies = state.trusted_proxies.clone();
    Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(api::router(state.clone()))
        // The web app (and its 404s for everything else) below the API routes.
        .fallback(web::serve)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(request_timeout, timeout))
        .layer(middleware::from_fn_with_state(idempotency, idempotency::idempotent))
        .layer(middleware::from_fn_with_state(limiter, ratelimit::limit))
        // Outside the limiter and the timeout, so 429s and 503s are counted too.
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .layer(middleware::from_fn_with_state(trusted_proxies, forwarded::resolve))
        .layer(CompressionLayer::new())
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
}

/// CORS for the configured origins; no CORS headers at all when none are configured.
fn cors_layer(origins: &[String]) -> tower::util::Either<CorsLayer, tower::layer::util::Identity> {
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    tower::util::Either::Left(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                idempotency::IDEMPOTENCY_KEY,
            ])
            .expose_headers([
                header::ETAG,
                header::LINK,
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
                REQUEST_ID_HEADER,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Backlog of the listening socket: room for a burst of connections (thousands of WebSockets
/// reconnecting at once) while the accept loop catches up; the kernel caps it at `somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the server's listener on `addr`. With `reuse_port` the socket gets `SO_REUSEPORT`
/// (`PM_REUSE_PORT`), so several processes that all set it share the address and the kernel
/// spreads new connections over them; without it a taken address is an error as usual.
pub fn bind_listener(
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // What `TcpListener::bind` does too: a restart may rebind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
        socket.set_reuseport(true)?;
        #[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "PM_REUSE_PORT needs SO_REUSEPORT, which this platform does not have",
        ));
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for in-flight requests to finish (the caller bounds that wait if it needs to).
///
/// Requests carry the peer address (`ConnectInfo<SocketAddr>`), which login throttling uses.
/// On shutdown the realtime hub closes its WebSocket sessions first (upgraded connections are
/// not in-flight requests, so nothing else would end them).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let realtime = state.realtime.clone();
    let shutdown = async move {
        shutdown.await;
        realtime.shutdown().await;
    };
    axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let request_id =
        req.headers().get(&REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    // The path only: query strings may carry tokens.
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id)
}

async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::timeout(limit).into_response(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

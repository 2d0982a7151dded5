//! The WebSocket glue of collaborative editing: `GET /api/v1/collab/{task_id}` upgrades to a
//! binary WebSocket speaking the Yjs sync + awareness protocol (y-websocket's messages, one per
//! frame) to pm-realtime's [`Collab`] registry. The document logic lives in
//! [`pm_realtime::doc`]; this module owns authentication, the upgrade and the socket loop.
//!
//! - The caller authenticates **before** the upgrade, with `Authorization: Bearer` or — because
//!   browsers' WebSocket API cannot set headers and y-websocket puts its `params` in the URL —
//!   `?access_token=<token>`. Refusals are problem+json: 401 (no/invalid token), 404 (no such
//!   task, or not readable), 426 (not a WebSocket upgrade). A read-scoped token, or a user without
//!   task update permission, gets a read-only connection.
//! - y-websocket connects to `serverUrl + '/' + room`: with `serverUrl =
//!   ws://host/api/v1/collab` and the task id as the room, the path matches.
//! - Small socket buffers (tungstenite's defaults allocate 128 KiB per connection) and a maximum
//!   message size of [`CollabConfig::max_message_bytes`]; a large message (a document's state on
//!   sync) is written in fragments by [`crate::ws`], so it does not stay in the connection's
//!   write buffer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::StreamExt as _;
use pm_core::event::Actor;
use pm_core::id::TaskId;
use pm_realtime::broker::{Broker, InProcessBroker};
use pm_realtime::doc::{Collab, CollabConfig, DocAccess, DocConnection, DocOutbound, DocOutgoing};
use pm_realtime::store::DocStore;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::api::common::Problem;
use crate::auth::{Authenticated, Scope};
use crate::error::ApiError;
use crate::extract::Path;
use crate::ws::{self, CloseFrame, Message, Socket, Upgrade, UpgradeRejection};

/// Socket read buffer, and write buffer before a flush: y-protocol messages are mostly small.
const BUFFER: usize = 8 * 1024;
/// How often the server pings (as y-websocket's server does); a connection that sends nothing,
/// not even a pong, for [`IDLE_TIMEOUT`] is closed (half-open TCP connections would otherwise
/// hold their document open forever).
const PING_EVERY: Duration = Duration::from_secs(30);
/// See [`PING_EVERY`].
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The routes of this module (nested under `/api/v1`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(collab_document))
}

/// A registry with in-memory document storage and its own in-process broker: what
/// [`AppState`]'s constructors start with (enough for one process and for tests). The
/// `pm-server` binary replaces it with [`AppState::with_collab`] over the database.
pub fn default_registry(pm: pm_core::Pm, authz: Arc<dyn pm_core::authz::Authorizer>) -> Collab {
    let store = pm_realtime::store::RealtimeStores::from_adapter(Arc::new(
        pm_realtime::store::memory::MemoryRealtimeStore::new(),
    ));
    Collab::new(pm, authz, store.docs, Arc::new(InProcessBroker::new()), CollabConfig::default())
}

impl AppState {
    /// Replaces the collaborative-document registry with one over `store` (normally the realtime
    /// tables in the same database) and `broker` (shared with the other instances), authorized
    /// like every other route.
    pub fn with_collab(
        mut self,
        store: Arc<dyn DocStore>,
        broker: Arc<dyn Broker>,
        config: CollabConfig,
    ) -> Self {
        let authz = Arc::new(crate::authz::ServerAuthorizer::new(self.permissions.clone()));
        self.collab = Collab::new(self.pm.clone(), authz, store, broker, config);
        self
    }
}

/// Opens pm-realtime's document tables in the database at `url` (migrating them). Instances
/// over one database share documents through these tables plus the broker the caller passes to
/// [`AppState::with_collab`]: the binary passes the realtime hub's, the one `PM_REALTIME_BROKER`
/// chose (see [`crate::realtime::open_broker`]), so documents travel over Redis when that is
/// configured, not PostgreSQL `NOTIFY`.
pub async fn open_registry_store(url: &str) -> pm_realtime::Result<Arc<dyn DocStore>> {
    let stores = pm_realtime::store::open(url).await?;
    stores.admin.migrate().await?;
    Ok(stores.docs)
}

/// The caller, authenticated from `Authorization: Bearer` or, failing that, `?access_token=`.
struct CollabCaller(Authenticated);

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

impl FromRequestParts<AppState> for CollabCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            let token = axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|q| q.0.access_token);
            if let Some(value) =
                token.and_then(|t| axum::http::HeaderValue::from_str(&format!("Bearer {t}")).ok())
            {
                parts.headers.insert(AUTHORIZATION, value);
            }
        }
        Authenticated::from_request_parts(parts, state).await.map(CollabCaller)
    }
}

/// pm-realtime errors met before the upgrade.
fn refusal(e: pm_realtime::Error) -> ApiError {
    use pm_realtime::Error as E;
    match e {
        E::NotFound { entity } => ApiError::entity_not_found(entity),
        E::Invalid { field, message } => ApiError::invalid_field(field, message),
        E::Forbidden(_) => ApiError::entity_not_found("task"),
        e @ (E::PayloadTooLarge { .. } | E::Broker(_) | E::Storage(_)) => ApiError::internal(e),
    }
}

/// Collaborative editing of the task's description over WebSocket.
///
/// Binary frames, each one message of the Yjs sync + awareness protocol as y-websocket speaks it
/// (`0` sync step 1/2 and updates, `1` awareness, `3` auth). The server sends sync step 1 and the
/// awareness states on connect, answers step 1 with step 2, and relays updates and awareness.
/// The text is the root `YText` named `description` (`ydoc.getText('description')`); it is
/// persisted and written back into the task's description a moment after the last edit. Needs
/// task read; editing needs task update (read-scoped tokens are read-only).
#[utoipa::path(get, path = "/collab/{task_id}", tag = "collab", operation_id = "collab_document",
    params(
        ("task_id" = Uuid, Path, description = "Task id (the y-websocket room name)"),
        ("access_token" = Option<String>, Query, description = "Bearer token, for clients that cannot set headers (browsers, y-websocket `params`)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (binary y-protocol frames)"),
        (status = 400, description = "Malformed task id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn collab_document(
    State(s): State<AppState>,
    CollabCaller(who): CollabCaller,
    Path(task): Path<Uuid>,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Result<Response, ApiError> {
    let task = TaskId(task);
    let actor = Actor::User(who.user_id);
    let limit = match who.scope {
        Scope::Read => DocAccess::ReadOnly,
        Scope::Write => DocAccess::ReadWrite,
    };
    // Refuse before upgrading: a client gets a status and a problem, not a socket that closes.
    s.collab.authorize(&actor, task).await.map_err(refusal)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "WebSocket upgrade required",
            format!("this endpoint speaks WebSocket only: {e}"),
        )
        .with_header("upgrade", "websocket")
    })?;
    let max = s.collab.config().max_message_bytes;
    let collab = s.collab.clone();
    // One whole message may wait in the write buffer beyond the buffer itself.
    let config = ws::config(BUFFER, max, max);
    Ok(upgrade.on_upgrade(config, move |socket| async move {
        match collab.connect_as(actor, task, limit).await {
            Ok((connection, outbound)) => run(socket, connection, outbound).await,
            Err(e) => {
                // Authorized a moment ago; the task vanished or storage failed meanwhile.
                tracing::warn!(%task, error = %e, "collab connection refused after upgrade");
                close(socket, 1008, "not available").await;
            }
        }
    }))
}

/// Pumps frames both ways until either side closes.
async fn run(mut socket: Socket, connection: DocConnection, mut outbound: DocOutbound) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            incoming = socket.next() => {
                last_heard = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(Message::Binary(bytes))) => connection.receive(bytes).await,
                    Some(Ok(Message::Text(_))) => {
                        close(socket, 1003, "binary y-protocol frames only").await;
                        return;
                    }
                    // Pings are answered by the socket itself; reading yields whole messages.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    close(socket, 4000, "idle timeout").await;
                    return;
                }
                if ws::send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            },
            out = outbound.recv() => match out {
                Some(DocOutgoing::Message(bytes)) => {
                    if ws::send(&mut socket, Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Some(DocOutgoing::Close(code)) => {
                    close(socket, code.code, code.reason).await;
                    return;
                }
                None => {
                    close(socket, 1001, "document closed").await;
                    return;
                }
            },
        }
    }
}

async fn close(mut socket: Socket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code: code.into(), reason: reason.into() };
    let _ = ws::send(&mut socket, Message::Close(Some(frame))).await;
}

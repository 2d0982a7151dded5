//! `GET /api/v1/ws`: pm-realtime's protocol (`docs/realtime-protocol.md`) over a
//! WebSocket, one JSON text message per frame.
//!
//! **Authentication happens before the upgrade**: a missing or invalid credential is a 401
//! problem+json and no WebSocket exists. Browsers cannot set `Authorization` on a WebSocket, so
//! the access token (or a `pmat_…` API token) may come, in this order of precedence, from:
//!
//! 1. `Authorization: Bearer <token>` (non-browser clients);
//! 2. the subprotocol list: `new WebSocket(url, ["pm.v1", "bearer." + token])`. The server
//!    answers with `Sec-WebSocket-Protocol: pm.v1` only — the credential is never echoed;
//! 3. the query: `?access_token=<token>` (kept out of logs: request spans record the path only).
//!
//! The credential is checked at the upgrade and bounds the session's life: when it expires (an
//! access token's `exp`, an API token's `expires_at`) the connection is **closed with 4001**
//! (`token expired`) and the client reconnects with a fresh token, resuming with `last_seq`.
//! A read-scoped API token may subscribe and receive, but its `presence`, `typing` and `cursor`
//! frames are answered with an `error` frame (`read_only`). Each subscription is authorized when
//! it is made and re-checked when access may have been lost (see `pm_realtime::hub`): a channel
//! the user may no longer read ends with `unsubscribed`, reason `forbidden`.
//!
//! The transport around a hub session ([`drive`]):
//!
//! - text messages go to `SessionHandle::receive`; a **binary message** is answered with an
//!   `error` frame (`invalid_frame`, `field: "type"`) and the connection stays open;
//! - a message over `HubConfig::max_frame_bytes` is refused by the WebSocket layer itself
//!   (tungstenite's `max_message_size`/`max_frame_size`): the connection is **closed with 1009**
//!   (message too big); only that connection;
//! - WebSocket pings and pongs count as heartbeats; the server pings every
//!   `heartbeat_timeout / 3`, so a client that answers pings (every browser does) stays alive
//!   without sending `ping` frames; a connection silent for `idle_timeout` is closed with 4000;
//! - the hub's `Close(code)` (4008 slow consumer, 4000 heartbeat timeout, 4001 token expired,
//!   1001 shutdown) becomes a close frame with that code and reason;
//! - buffers are small (`BUFFER_BYTES` instead of tungstenite's 128 KiB each way) because the
//!   hub's per-session queue already bounds what waits for a slow client, and stay small: a
//!   large frame (a long presence list, an event with a long description) is written as
//!   fragments by [`crate::ws`], so it does not grow the connection's write buffer for good;
//! - **writes are coalesced**: when the writer wakes for one frame it also takes whatever else
//!   the session has ready (up to `HubConfig::write_batch`, `PM_WS_WRITE_BATCH`, and
//!   [`BATCH_BYTES`]), feeds them all and flushes once, so a burst costs a few `send` calls
//!   instead of one per frame. Order is the queue's; a close ends the batch and nothing follows
//!   it. The whole batch is written under the send timeout.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use pm_core::event::Actor;
use pm_realtime::hub::SessionOptions;
use pm_realtime::protocol::{ErrorCode, ServerFrame};
use pm_realtime::session::{Frame, Outgoing};
use pm_realtime::{Hub, SessionHandle};
use serde::Deserialize;
use tungstenite::Utf8Bytes;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::Problem;
use crate::AppState;
use crate::auth::{Scope, unauthorized};
use crate::error::ApiError;
use crate::extract::Query;
use crate::ws::{self, CloseFrame, Message, Socket, Upgrade, UpgradeRejection};

/// The subprotocol of this version of the realtime protocol.
pub const PROTOCOL: &str = "pm.v1";
/// Prefix of the subprotocol entry carrying the credential (`bearer.<token>`).
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// Read and write buffer of each WebSocket connection, in bytes.
pub const BUFFER_BYTES: usize = 4 * 1024;
/// Close code for a message over the size limit (RFC 6455 "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a connection silent past the idle timeout.
pub const CLOSE_IDLE: u16 = 4000;
/// Bytes after which a write batch takes no more frames. Frames taken into a batch have left
/// the hub's queue, so its slow-consumer budget no longer counts them: this bounds what a
/// stalled connection holds beyond that budget (the frames themselves are shared with every
/// other recipient; the bound matters for the budget's meaning, not for copies).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(websocket))
}

/// Query parameters of the upgrade request.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The access token (or API token), for clients that can set neither `Authorization` nor
    /// the subprotocol list. Prefer the subprotocol: URLs end up in proxy logs.
    pub access_token: Option<String>,
}

/// Opens a realtime session (WebSocket). The protocol is described in
/// `docs/realtime-protocol.md`: subscribe to `org:`, `project:`, `task:` and
/// `user:` channels, receive every durable event with its `seq` (resume with `last_seq`),
/// presence, typing, cursors and live notifications.
///
/// Authenticate before the upgrade with `Authorization: Bearer`, the subprotocols
/// `["pm.v1", "bearer.<token>"]` (the answer selects `pm.v1` only) or `?access_token=`. Binary
/// messages get an `error` frame; messages over 64 KiB close the connection with 1009; a slow
/// consumer is closed with 4008, a silent one with 4000, and a shutdown closes with 1001.
#[utoipa::path(get, path = "/ws", tag = "realtime", operation_id = "realtime_websocket",
    params(
        WsQuery,
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`pm.v1, bearer.<access token>`: the protocol version and, for browsers, the credential"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the connection now speaks the pm realtime protocol v1 (`Sec-WebSocket-Protocol: pm.v1` when offered)"),
        (status = 400, description = "Not a WebSocket upgrade request, or a malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token (no upgrade)", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "The connection cannot be upgraded (e.g. HTTP/1.0)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn websocket(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    upgrade: Result<Upgrade, UpgradeRejection>,
) -> Result<Response, ApiError> {
    let offered = offered_protocols(&headers);
    let token = credential(&headers, &offered, q.access_token.as_deref())?;
    // Before anything else: an unauthenticated client never gets a WebSocket.
    let who = s.auth.authenticate(&token).await?;
    let mut upgrade = upgrade.map_err(upgrade_rejection)?;
    let hub = s
        .realtime
        .hub()
        .await
        .map_err(|e| ApiError::unavailable("the realtime hub is not available", e))?
        .clone();
    let config = hub.config();
    // The hub's queue bounds what may wait for a client; a write buffer past it is a bug.
    let socket_config =
        ws::config(BUFFER_BYTES, config.max_frame_bytes, config.max_queue_bytes + BUFFER_BYTES);
    if offered.iter().any(|p| p == PROTOCOL) {
        upgrade = upgrade.protocol(PROTOCOL);
    }
    let actor = Actor::User(who.user_id);
    let options =
        SessionOptions { expires_at: who.expires_at, read_only: who.scope == Scope::Read };
    Ok(upgrade.on_upgrade(socket_config, move |socket| drive(socket, hub, actor, options)))
}

/// Every subprotocol the client offered (`Sec-WebSocket-Protocol` may repeat and holds a
/// comma-separated list).
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The presented credential, by the precedence in the module docs.
fn credential(
    headers: &HeaderMap,
    offered: &[String],
    query: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value =
            value.to_str().map_err(|_| unauthorized("the Authorization header is not valid"))?;
        return value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"));
    }
    if let Some(token) = offered.iter().find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX)) {
        return Ok(token.to_owned());
    }
    match query.map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => Ok(token.to_owned()),
        None => Err(unauthorized(
            "the realtime endpoint needs a token: the subprotocols `pm.v1, bearer.<token>`, \
             `?access_token=` or `Authorization: Bearer`",
        )),
    }
}

fn upgrade_rejection(r: UpgradeRejection) -> ApiError {
    r.into()
}

/// Why the reader stopped.
enum ReadEnd {
    /// The client closed, vanished or broke the protocol: nothing more to say.
    Gone,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

/// Runs one connection: a hub session fed by the reader half and drained by the writer half;
/// whichever ends first ends both, and dropping the session handle leaves every channel.
pub async fn drive(socket: Socket, hub: Hub, actor: Actor, options: SessionOptions) {
    let (handle, mut outbound) = hub.connect_with(actor, options);
    let config = hub.config();
    let idle = config.idle_timeout;
    let ping_every = (config.heartbeat_timeout / 3).max(Duration::from_millis(100));
    // A send blocked this long means the client stopped reading and its TCP window is shut: the
    // hub's queue then closes it as a slow consumer, which can only be delivered once the
    // client reads again; past this, give up on the connection.
    let send_timeout = config.heartbeat_timeout;
    let (mut sink, mut stream) = socket.split();
    // Frames the transport itself answers with (binary messages), ahead of the hub's queue.
    let (local_tx, mut local_rx) = tokio::sync::mpsc::channel::<Message>(4);

    let reader = read_loop(&mut stream, &handle, &local_tx, idle);
    let batch_cap = config.write_batch.max(1);
    let writer = async {
        let mut ping = tokio::time::interval(ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        // Grown on demand: most of a connection's life is idle, and 50k of them add up.
        let mut batch = Vec::new();
        loop {
            let closing = tokio::select! {
                out = outbound.recv() => match out {
                    Some(out) => push_outgoing(&mut batch, out),
                    None => return,
                },
                Some(msg) = local_rx.recv() => {
                    batch.push(msg);
                    false
                }
                _ = ping.tick() => {
                    batch.push(Message::Ping(Bytes::new()));
                    false
                }
            };
            // Whatever else is already queued goes out with it: each `feed` only appends to the
            // write buffer, and the one `flush` below writes the lot (a flush per frame was one
            // `send` syscall per frame, most of the server's CPU under fan-out).
            let closing = closing || fill_batch(&mut batch, batch_cap, || outbound.try_recv());
            let written = tokio::time::timeout(send_timeout, async {
                for msg in batch.drain(..) {
                    ws::feed(&mut sink, msg).await?;
                }
                sink.flush().await
            })
            .await;
            if batch.capacity() > 16 {
                batch = Vec::new(); // a burst's batch is not kept for the idle time after it
            }
            match written {
                Ok(Ok(())) if !closing => {}
                // Closed as the hub asked, or the connection is gone or stuck.
                _ => return,
            }
        }
    };
    let end = tokio::select! {
        end = reader => end,
        () = writer => ReadEnd::Gone,
    };
    match end {
        ReadEnd::Close(code, reason) => {
            let frame = CloseFrame { code: code.into(), reason: reason.into() };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
        ReadEnd::Gone => {
            // Flushes the automatic reply to a client's close, if any.
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
    }
    drop(handle); // leaves every channel, records last-seen
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<Socket>,
    handle: &SessionHandle,
    local: &tokio::sync::mpsc::Sender<Message>,
    idle: Duration,
) -> ReadEnd {
    loop {
        let msg = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return ReadEnd::Close(CLOSE_IDLE, "idle timeout"),
            Ok(None) => return ReadEnd::Gone,
            Ok(Some(Err(e))) => return read_error(e),
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => handle.receive(text.as_str()).await,
            Message::Binary(_) => {
                handle.heartbeat();
                let frame = ServerFrame::Error {
                    code: ErrorCode::InvalidFrame,
                    message: "binary messages are not supported: send JSON text frames".into(),
                    field: Some("type".into()),
                    channel: None,
                };
                // A client flooding binary messages loses some of these answers, not memory.
                let _ = local.try_send(Message::Text(frame.to_text().into()));
            }
            Message::Ping(_) | Message::Pong(_) => {
                handle.heartbeat();
            }
            Message::Close(_) => return ReadEnd::Gone,
            // Reading yields whole messages, never raw frames.
            Message::Frame(_) => {}
        }
    }
}

/// A read error: an oversize message is closed with 1009; anything else (a reset, a protocol
/// violation tungstenite already answered) just ends the connection.
fn read_error(e: tungstenite::Error) -> ReadEnd {
    match e {
        tungstenite::Error::Capacity(_) => ReadEnd::Close(CLOSE_TOO_BIG, "message too big"),
        _ => ReadEnd::Gone,
    }
}

/// Appends `out` to `batch`; `true` when it was the close, which ends the connection's output.
fn push_outgoing(batch: &mut Vec<Message>, out: Outgoing) -> bool {
    match out {
        Outgoing::Frame(frame) => {
            batch.push(Message::Text(shared_text(frame)));
            false
        }
        Outgoing::Close(code) => {
            batch.push(Message::Close(Some(CloseFrame {
                code: code.code.into(),
                reason: code.reason.into(),
            })));
            true
        }
    }
}

/// Appends what `ready` hands out, in order, until `batch` holds `cap` messages or
/// [`BATCH_BYTES`], `ready` has nothing more, or a close was appended (nothing may follow it:
/// returns `true`).
fn fill_batch(
    batch: &mut Vec<Message>,
    cap: usize,
    mut ready: impl FnMut() -> Option<Outgoing>,
) -> bool {
    let mut bytes: usize = batch.iter().map(message_len).sum();
    while batch.len() < cap && bytes < BATCH_BYTES {
        let Some(out) = ready() else { return false };
        if push_outgoing(batch, out) {
            return true;
        }
        bytes += batch.last().map_or(0, message_len);
    }
    false
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Frame(f) => f.len(),
        Message::Close(_) => 0,
    }
}

/// The hub's frame as WebSocket text without copying: one serialized frame is shared by every
/// session it fans out to.
fn shared_text(frame: Frame) -> Utf8Bytes {
    struct Shared(Frame);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    // Valid UTF-8 by construction (an `Arc<str>`); the check cannot fail.
    Utf8Bytes::try_from(Bytes::from_owner(Shared(frame.clone())))
        .unwrap_or_else(|_| Utf8Bytes::from(&*frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_credential_comes_from_header_then_subprotocol_then_query() {
        let mut h = HeaderMap::new();
        h.append(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("pm.v1, bearer.abc"));
        let offered = offered_protocols(&h);
        assert_eq!(offered, ["pm.v1", "bearer.abc"]);
        assert_eq!(credential(&h, &offered, Some("q")).unwrap(), "abc");
        assert_eq!(credential(&h, &[], Some("q")).unwrap(), "q");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer hdr"));
        assert_eq!(credential(&h, &offered, Some("q")).unwrap(), "hdr");
        assert_eq!(credential(&HeaderMap::new(), &[], None).unwrap_err().status(), 401);
    }

    fn frames(texts: &[&str]) -> std::collections::VecDeque<Outgoing> {
        texts.iter().map(|t| Outgoing::Frame(Frame::from(*t))).collect()
    }

    fn texts(batch: &[Message]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match m {
                Message::Text(t) => t.as_str().to_owned(),
                Message::Close(Some(c)) => format!("close {}", c.code),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_what_is_ready_in_order_up_to_the_cap() {
        let mut queue = frames(&["a", "b", "c", "d", "e"]);
        let mut batch = vec![Message::Ping(Bytes::new())];
        assert!(!fill_batch(&mut batch, 3, || queue.pop_front()));
        assert_eq!(texts(&batch), ["Ping(b\"\")", "a", "b"]);
        batch.clear();
        assert!(!fill_batch(&mut batch, 64, || queue.pop_front()));
        assert_eq!(texts(&batch), ["c", "d", "e"], "the rest, in order, in the next batch");
        batch.clear();
        assert!(!fill_batch(&mut batch, 1, || queue.pop_front()));
        assert!(batch.is_empty(), "nothing ready: nothing added");
    }

    #[test]
    fn a_batch_stops_taking_frames_past_its_byte_bound() {
        let big = "x".repeat(BATCH_BYTES / 2);
        let mut queue: std::collections::VecDeque<Outgoing> =
            (0..5).map(|_| Outgoing::Frame(Frame::from(big.as_str()))).collect();
        let mut batch = Vec::new();
        assert!(!fill_batch(&mut batch, 64, || queue.pop_front()));
        assert_eq!(batch.len(), 2, "two halves reach the bound");
        assert_eq!(queue.len(), 3, "the rest stays in the hub's queue, under its budget");
    }

    #[test]
    fn a_close_ends_the_batch_after_the_frames_queued_before_it() {
        let mut queue = frames(&["a", "b"]);
        queue.push_back(Outgoing::Close(pm_realtime::protocol::CloseCode::SLOW_CONSUMER));
        queue.push_back(Outgoing::Frame(Frame::from("after")));
        let mut batch = Vec::new();
        assert!(fill_batch(&mut batch, 64, || queue.pop_front()));
        assert_eq!(texts(&batch), ["a", "b", "close 4008"]);
        assert_eq!(queue.len(), 1, "nothing is taken after the close");
        let mut batch = Vec::new();
        let close = Outgoing::Close(pm_realtime::protocol::CloseCode::SLOW_CONSUMER);
        assert!(push_outgoing(&mut batch, close));
    }
}

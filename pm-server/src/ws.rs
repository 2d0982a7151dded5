//! The WebSocket transport under `/api/v1/ws` and `/api/v1/collab/{task_id}`: the upgrade, and
//! writes that keep each connection's buffer small however large a message it is sent.
//!
//! **Why not axum's `WebSocket`.** tungstenite formats every outgoing frame into one
//! per-connection `Vec<u8>` and never shrinks it: a connection keeps, for the rest of its life, a
//! write buffer as large as the largest message it was ever sent. One large frame fanned out to
//! every subscriber — a presence list of a busy channel, an event carrying a long description, a
//! document's full state — then costs its size on every connection, for good: measured with the
//! `ws_hold` harness, 200 users in one project (their presence list ≈ 12 KB) took the server
//! from 11.8 to 25.4 KB per held connection (14.5 KB with this module). Here a text or binary
//! message over [`FRAGMENT_BYTES`] goes out as a fragmented message (RFC 6455 §5.4: a first
//! frame and continuation frames), each fragment a zero-copy slice of the shared message
//! written out on its own, so the buffer never grows past what batches of small frames need. Every WebSocket client
//! (browsers, tungstenite, y-websocket's `ws`) reassembles fragments; control frames may come
//! between them. axum's `WebSocket` cannot send raw frames, so this module takes the upgraded
//! connection itself; axum's [`WebSocketUpgrade`] still validates the request, with its
//! rejections.

use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use bytes::Bytes;
use futures_util::{Sink, SinkExt as _};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::error::ApiError;

pub use tungstenite::Message;
pub use tungstenite::protocol::CloseFrame;

/// An upgraded WebSocket connection (server side).
pub type Socket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Largest data frame this transport writes; larger messages are fragmented.
pub const FRAGMENT_BYTES: usize = 2 * 1024;

/// A validated WebSocket upgrade request (the extractor): finish it with [`Upgrade::on_upgrade`].
#[derive(Debug)]
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Key` of an HTTP/1.1 upgrade; absent on HTTP/2 (extended CONNECT).
    key: Option<HeaderValue>,
    protocol: Option<HeaderValue>,
}

/// Why a request cannot become a WebSocket.
#[derive(Debug)]
pub enum UpgradeRejection {
    /// axum's validation refused the request (method, headers, version).
    Invalid(WebSocketUpgradeRejection),
    /// The connection itself cannot be taken over (e.g. HTTP/1.0).
    NotUpgradable,
}

impl UpgradeRejection {
    /// The HTTP status the refusal deserves.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(r) => r.status(),
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// A sentence saying why.
    pub fn body_text(&self) -> String {
        match self {
            Self::Invalid(r) => r.body_text(),
            Self::NotUpgradable => "the connection cannot be upgraded".to_owned(),
        }
    }
}

impl std::fmt::Display for UpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body_text())
    }
}

impl From<UpgradeRejection> for ApiError {
    fn from(r: UpgradeRejection) -> Self {
        let status = r.status();
        let (slug, title) = if status == StatusCode::UPGRADE_REQUIRED {
            ("upgrade-required", "Upgrade required")
        } else if status == StatusCode::METHOD_NOT_ALLOWED {
            ("method-not-allowed", "Method not allowed")
        } else {
            ("not-a-websocket", "Not a WebSocket request")
        };
        ApiError::new(status, slug, title, r.body_text())
    }
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Taken before axum's extractor, which removes it from the request.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        // Validation only: the upgrade is finished here, not by axum.
        let _validated = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(UpgradeRejection::Invalid)?;
        let on_upgrade = on_upgrade.ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self { on_upgrade, key, protocol: None })
    }
}

impl Upgrade {
    /// Answers with `protocol` as the selected subprotocol (`Sec-WebSocket-Protocol`); the caller
    /// checked that the client offered it.
    pub fn protocol(mut self, protocol: &'static str) -> Self {
        self.protocol = Some(HeaderValue::from_static(protocol));
        self
    }

    /// The switching response; once it is sent, `callback` runs with the connection, configured
    /// by `config`.
    pub fn on_upgrade<C, Fut>(self, config: WebSocketConfig, callback: C) -> Response
    where
        C: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    callback(socket).await;
                }
                // The client went away between the response and the switch.
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut response = Response::new(axum::body::Body::empty());
        if let Some(key) = &self.key {
            // HTTP/1.1 (RFC 6455 §4.2.2); HTTP/2's extended CONNECT is answered with a bare 200.
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            if let Ok(accept) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
        }
        if let Some(protocol) = self.protocol {
            response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

/// Buffers and limits of a connection: `buffer` bytes each way (tungstenite's default is 128 KiB
/// each), messages and frames of at most `max_message` bytes, and at most `max_queued` bytes
/// waiting in the write buffer beyond that.
pub fn config(buffer: usize, max_message: usize, max_queued: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_write_buffer_size(buffer + FRAGMENT_BYTES + max_queued)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Feeds `message` to `sink` without flushing; a text or binary message over
/// [`FRAGMENT_BYTES`] goes as fragments (see the module docs).
pub async fn feed<S>(sink: &mut S, message: Message) -> Result<(), tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    // The fan-out path: nearly every frame is small and goes as it is, without an allocation.
    if !is_large(&message) {
        return sink.feed(message).await;
    }
    // Each fragment is written out on its own: fed together they would still pile up in the
    // buffer to its write threshold plus a fragment, and the buffer keeps what it grew to.
    sink.flush().await?;
    for frame in fragments(message) {
        sink.feed(frame).await?;
        sink.flush().await?;
    }
    Ok(())
}

/// Whether `message` is sent as fragments.
fn is_large(message: &Message) -> bool {
    match message {
        Message::Text(text) => text.len() > FRAGMENT_BYTES,
        Message::Binary(data) => data.len() > FRAGMENT_BYTES,
        _ => false,
    }
}

/// Sends `message` (fragmented like [`feed`]) and flushes.
pub async fn send<S>(sink: &mut S, message: Message) -> Result<(), tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    feed(sink, message).await?;
    sink.flush().await
}

/// `message` as the messages to write: itself, or its fragments as raw frames.
fn fragments(message: Message) -> Vec<Message> {
    if !is_large(&message) {
        return vec![message];
    }
    let (mut rest, first) = match message {
        Message::Text(text) => (Bytes::from(text), Data::Text),
        Message::Binary(data) => (data, Data::Binary),
        other => return vec![other],
    };
    let mut frames = Vec::with_capacity(rest.len().div_ceil(FRAGMENT_BYTES));
    let mut opcode = OpCode::Data(first);
    while !rest.is_empty() {
        // A slice of the shared message, not a copy. A text fragment may end inside a UTF-8
        // sequence: RFC 6455 validates the reassembled message, not each fragment.
        let piece = rest.split_to(rest.len().min(FRAGMENT_BYTES));
        frames.push(Message::Frame(Frame::message(piece, opcode, rest.is_empty())));
        opcode = OpCode::Data(Data::Continue);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(frames: &[Message]) -> Vec<(OpCode, bool, usize)> {
        frames
            .iter()
            .map(|m| match m {
                Message::Frame(f) => (f.header().opcode, f.header().is_final, f.payload().len()),
                other => panic!("expected raw frames, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn small_messages_go_whole_and_large_ones_in_fragments_that_reassemble() {
        let small = Message::text("x".repeat(FRAGMENT_BYTES));
        assert_eq!(fragments(small.clone()), vec![small]);

        // Multi-byte characters across fragment boundaries: the bytes reassemble exactly.
        let text = "é€x".repeat(FRAGMENT_BYTES); // 6 bytes each
        let frames = fragments(Message::text(text.clone()));
        let meta = payloads(&frames);
        assert_eq!(meta.len(), (text.len()).div_ceil(FRAGMENT_BYTES));
        assert_eq!(meta[0].0, OpCode::Data(Data::Text));
        assert!(meta[1..].iter().all(|m| m.0 == OpCode::Data(Data::Continue)));
        assert!(meta.iter().rev().skip(1).all(|m| !m.1 && m.2 == FRAGMENT_BYTES));
        assert!(meta.last().is_some_and(|m| m.1));
        let joined: Vec<u8> = frames
            .into_iter()
            .flat_map(|m| match m {
                Message::Frame(f) => f.into_payload().to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(joined, text.as_bytes());

        let binary = fragments(Message::binary(vec![7u8; FRAGMENT_BYTES + 1]));
        assert_eq!(
            payloads(&binary),
            [
                (OpCode::Data(Data::Binary), false, FRAGMENT_BYTES),
                (OpCode::Data(Data::Continue), true, 1)
            ]
        );
    }
}

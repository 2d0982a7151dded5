//! The JSON wire protocol between a client and a session: client frames, server frames, error
//! codes and close codes. The repository's `docs/realtime-protocol.md` is the prose version of
//! this module; keep them in step.
//!
//! Every frame is one JSON object tagged by `type` (snake_case). Client frames are parsed with
//! [`ClientFrame::parse`], which rejects unknown types and unknown fields and names the failing
//! field (`channel`, `position.x`, ...), so the hub can answer with an `error` frame instead of
//! dropping the connection. Server frames are built once per message and shared by every
//! session that receives them (see [`crate::hub`]).

use pm_core::event::Event;
use pm_core::id::{TaskId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::channel::Channel;
use crate::notification::Notification;

/// Largest serialized `position` a `cursor` frame may carry, in bytes.
pub const MAX_CURSOR_BYTES: usize = 1024;

/// A frame sent by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Start receiving a channel, optionally resuming after `last_seq`.
    Subscribe(Subscribe),
    /// Stop receiving a channel.
    Unsubscribe(Unsubscribe),
    /// Heartbeat; answered with `pong`.
    Ping,
    /// Set the sender's presence status in a subscribed channel.
    Presence(SetPresence),
    /// The sender is typing in a subscribed channel.
    Typing(Typing),
    /// The sender's cursor moved in a subscribed channel.
    Cursor(Cursor),
}

/// Body of a `subscribe` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// The channel.
    pub channel: Channel,
    /// The `seq` of the last event the client received on this channel; events after it are
    /// replayed (or `resync` is sent when it is too old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
}

/// Body of an `unsubscribe` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    /// The channel.
    pub channel: Channel,
}

/// Body of a client `presence` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPresence {
    /// The channel.
    pub channel: Channel,
    /// The new status.
    pub status: PresenceStatus,
}

/// Body of a client `typing` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    /// The channel.
    pub channel: Channel,
    /// The task being commented on or edited, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
}

/// Body of a client `cursor` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The channel.
    pub channel: Channel,
    /// Client-defined position (e.g. `{"field": "description", "index": 42}`), at most
    /// [`MAX_CURSOR_BYTES`] serialized.
    pub position: Value,
}

/// A user's presence in a channel. Absence (offline) is expressed by `left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Active.
    Online,
    /// Connected but idle (the client decides when).
    Away,
}

/// A bad client frame: what is wrong and, when known, which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The failing field as a dotted path (`channel`, `position`, `type`), if known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl FrameError {
    fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        Self { field: field.map(str::to_owned), message: message.into() }
    }
}

const CLIENT_TYPES: &str = "subscribe, unsubscribe, ping, presence, typing, cursor";

impl ClientFrame {
    /// Parses one text frame. Never panics; every failure names the field when there is one.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| FrameError::new(None, format!("not a JSON object: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(FrameError::new(None, "a frame must be a JSON object"));
        };
        let kind = match map.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(FrameError::new(Some("type"), "must be a string")),
            None => return Err(FrameError::new(Some("type"), "is required")),
        };
        let body = Value::Object(map);
        Ok(match kind.as_str() {
            "subscribe" => ClientFrame::Subscribe(body_of(body)?),
            "unsubscribe" => ClientFrame::Unsubscribe(body_of(body)?),
            "ping" => {
                if let Some(field) = body.as_object().and_then(|m| m.keys().next()) {
                    return Err(FrameError::new(Some(field), "unknown field"));
                }
                ClientFrame::Ping
            }
            "presence" => ClientFrame::Presence(body_of(body)?),
            "typing" => ClientFrame::Typing(body_of(body)?),
            "cursor" => {
                let c: Cursor = body_of(body)?;
                let size = serde_json::to_string(&c.position).map_or(usize::MAX, |s| s.len());
                if size > MAX_CURSOR_BYTES {
                    return Err(FrameError::new(
                        Some("position"),
                        format!("is {size} bytes; at most {MAX_CURSOR_BYTES} are allowed"),
                    ));
                }
                ClientFrame::Cursor(c)
            }
            other => {
                return Err(FrameError::new(
                    Some("type"),
                    format!("unknown frame type {other:?}; expected one of {CLIENT_TYPES}"),
                ));
            }
        })
    }

    /// The channel the frame is about, if any.
    pub fn channel(&self) -> Option<Channel> {
        match self {
            ClientFrame::Subscribe(f) => Some(f.channel),
            ClientFrame::Unsubscribe(f) => Some(f.channel),
            ClientFrame::Ping => None,
            ClientFrame::Presence(f) => Some(f.channel),
            ClientFrame::Typing(f) => Some(f.channel),
            ClientFrame::Cursor(f) => Some(f.channel),
        }
    }
}

/// Deserializes a frame body, naming the failing field: serde reports unknown and missing fields
/// at their parent's path with the name only in the message, so the name is lifted from there.
fn body_of<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, FrameError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        // Unknown fields are reported at their own path, missing ones at their parent's.
        let field = match (path.as_str(), named) {
            ("." | "", Some(name)) => Some(name),
            ("." | "", None) => None,
            (p, Some(name)) if !p.ends_with(name.as_str()) => Some(format!("{p}.{name}")),
            (p, _) => Some(p.to_owned()),
        };
        FrameError { field, message }
    })
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The subscription is active: every event of the channel with a `seq` greater than `seq`
    /// follows, in order, without gaps or duplicates.
    Subscribed {
        /// The channel.
        channel: Channel,
        /// The position the subscription starts after.
        seq: i64,
    },
    /// The subscription ended: the answer to `unsubscribe` (no `reason`), or the server ended it
    /// (`reason` says why, e.g. `forbidden` when the user lost access to the channel).
    Unsubscribed {
        /// The channel.
        channel: Channel,
        /// Why the server ended the subscription; absent when the client asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<UnsubscribeReason>,
    },
    /// A durable event from the log.
    Event {
        /// The channel it was routed to.
        channel: Channel,
        /// Its position in the global log (also `event.seq`).
        seq: i64,
        /// The event.
        event: Box<Event>,
    },
    /// `last_seq` was too old to replay: reload the channel's state, then continue with the
    /// events that follow (after `latest_seq`).
    Resync {
        /// The channel.
        channel: Channel,
        /// The position live delivery continues after.
        latest_seq: i64,
    },
    /// Presence changes in a channel (a full list of `joined` members right after subscribing).
    Presence {
        /// The channel.
        channel: Channel,
        /// Members who came online (or are online, in the first frame after subscribing).
        #[serde(default)]
        joined: Vec<PresenceEntry>,
        /// Members who went offline.
        #[serde(default)]
        left: Vec<UserId>,
        /// Members whose status changed.
        #[serde(default)]
        changed: Vec<PresenceEntry>,
    },
    /// Someone is typing.
    Typing {
        /// The channel.
        channel: Channel,
        /// Who.
        user: UserId,
        /// Where, if the client said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<TaskId>,
    },
    /// Someone's cursor moved.
    Cursor {
        /// The channel.
        channel: Channel,
        /// Whose.
        user: UserId,
        /// The client-defined position.
        position: Value,
    },
    /// Answer to `ping`.
    Pong,
    /// A client frame was refused; the session stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The failing field, when one is to blame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// The channel the refused frame was about, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<Channel>,
    },
    /// A new notification for the subscribed user (on `user:{id}`).
    Notification {
        /// The user's channel.
        channel: Channel,
        /// The notification.
        notification: Box<Notification>,
    },
}

impl ServerFrame {
    /// Serializes the frame. Server frames contain only serializable data, so this cannot fail in
    /// practice; a failure becomes an `internal` error frame rather than a panic.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "pm-realtime: a server frame failed to serialize");
            r#"{"type":"error","code":"internal","message":"frame serialization failed"}"#
                .to_owned()
        })
    }
}

/// One member in a `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The member.
    pub user: UserId,
    /// Their status.
    pub status: PresenceStatus,
}

/// Why the server ended a subscription the client did not ask to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// The user may no longer read the channel (removed from the organization, a grant revoked,
    /// the resource deleted). Subscribing again is refused with the error `forbidden`.
    Forbidden,
}

/// Why a client frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown `type`, unknown or missing field, or a bad value (`field` says which).
    InvalidFrame,
    /// The frame exceeds the hub's maximum frame size.
    FrameTooLarge,
    /// The channel does not exist or the session may not subscribe to it (indistinguishable on
    /// purpose, so ids cannot be probed).
    Forbidden,
    /// The session is already subscribed to the channel.
    AlreadySubscribed,
    /// The frame needs a subscription to its channel first.
    NotSubscribed,
    /// The session holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// Presence, typing and cursors need a user behind the session.
    UserRequired,
    /// The session's credential is read-only (an API token with scope `read`): it may subscribe
    /// and receive, but not send presence, typing or cursors.
    ReadOnly,
    /// The server failed (store unavailable, ...); retrying later may succeed.
    Internal,
}

/// Why the server closes a session, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode {
    /// The WebSocket close code.
    pub code: u16,
    /// A short reason (fits a close frame's 123 bytes).
    pub reason: &'static str,
}

impl CloseCode {
    /// The session's outbound queue exceeded its byte budget: the client did not read fast
    /// enough. Reconnect and resume with `last_seq`.
    pub const SLOW_CONSUMER: CloseCode = CloseCode { code: 4008, reason: "slow consumer" };
    /// Nothing was received within the heartbeat timeout; the session is considered dead.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode { code: 4000, reason: "heartbeat timeout" };
    /// The hub is shutting down (WebSocket "going away"); reconnect to another instance.
    pub const GOING_AWAY: CloseCode = CloseCode { code: 1001, reason: "server shutting down" };
    /// The credential the session was opened with has expired: obtain a fresh one (refresh the
    /// access token) and reconnect, resuming with `last_seq`.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode { code: 4001, reason: "token expired" };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FrameError {
        ClientFrame::parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let ch = "task:0190c1e2-0000-7000-8000-000000000001";
        assert_eq!(err("nope").field, None);
        assert_eq!(err("[]").field, None);
        assert_eq!(err(r#"{"channel":"x"}"#).field.as_deref(), Some("type"));
        assert_eq!(err(r#"{"type":"dance"}"#).field.as_deref(), Some("type"));
        assert_eq!(err(r#"{"type":"subscribe"}"#).field.as_deref(), Some("channel"));
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"x:1"}"#).field.as_deref(),
            Some("channel")
        );
        let extra = format!(r#"{{"type":"subscribe","channel":"{ch}","colour":1}}"#);
        assert_eq!(err(&extra).field.as_deref(), Some("colour"));
        let bad_seq = format!(r#"{{"type":"subscribe","channel":"{ch}","last_seq":"x"}}"#);
        assert_eq!(err(&bad_seq).field.as_deref(), Some("last_seq"));
        let bad_status = format!(r#"{{"type":"presence","channel":"{ch}","status":"asleep"}}"#);
        assert_eq!(err(&bad_status).field.as_deref(), Some("status"));
        assert_eq!(err(r#"{"type":"ping","x":1}"#).field.as_deref(), Some("x"));
        let big = format!(
            r#"{{"type":"cursor","channel":"{ch}","position":"{}"}}"#,
            "x".repeat(MAX_CURSOR_BYTES)
        );
        assert_eq!(err(&big).field.as_deref(), Some("position"));
    }

    #[test]
    fn frames_parse_and_serialize_in_the_same_shape() {
        let ch = "project:0190c1e2-0000-7000-8000-000000000001";
        let text = format!(r#"{{"type":"subscribe","channel":"{ch}","last_seq":7}}"#);
        let frame = ClientFrame::parse(&text).unwrap();
        assert_eq!(serde_json::to_string(&frame).unwrap(), text);
        assert_eq!(ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping);
        assert_eq!(ServerFrame::Pong.to_text(), r#"{"type":"pong"}"#);
    }
}

//! The broker payload of document messages between instances, and topic parsing.
//!
//! A payload is `[kind][user: 16 bytes, nil when none][body]`:
//! - `u`: a Yjs v1 update the origin instance accepted (and already logged); `user` is the
//!   editor, so the receiving instance's write-back can be attributed;
//! - `a`: an encoded awareness update (`AwarenessUpdate::encode_v1`);
//! - `r`: "reload from the store" — sent instead of an update too large for the broker (the
//!   update is already in the shared log); the body is empty.
//!
//! Payloads from other instances are external input: decoding never panics, unknown kinds are
//! ignored.

use pm_core::id::{TaskId, UserId};
use uuid::Uuid;

const PREFIX: &str = "collab:";

/// What another instance sent about a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Remote {
    Update { user: Option<UserId>, update: Vec<u8> },
    Awareness { update: Vec<u8> },
    Reload,
}

/// The task of a `collab:{task_id}` topic.
pub(crate) fn task_of_topic(topic: &str) -> Option<TaskId> {
    let id = topic.strip_prefix(PREFIX)?;
    Uuid::parse_str(id).ok().map(TaskId)
}

fn encode(kind: u8, user: Option<UserId>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + body.len());
    out.push(kind);
    out.extend_from_slice(user.map_or(Uuid::nil(), |u| u.0).as_bytes());
    out.extend_from_slice(body);
    out
}

pub(crate) fn update(user: Option<UserId>, update: &[u8]) -> Vec<u8> {
    encode(b'u', user, update)
}

pub(crate) fn awareness(update: &[u8]) -> Vec<u8> {
    encode(b'a', None, update)
}

pub(crate) fn reload() -> Vec<u8> {
    encode(b'r', None, &[])
}

pub(crate) fn decode(payload: &[u8]) -> Option<Remote> {
    let (&kind, rest) = payload.split_first()?;
    let (user, body) = rest.split_at_checked(16)?;
    let user = Uuid::from_slice(user).ok().filter(|u| !u.is_nil()).map(UserId);
    match kind {
        b'u' => Some(Remote::Update { user, update: body.to_vec() }),
        b'a' => Some(Remote::Awareness { update: body.to_vec() }),
        b'r' => Some(Remote::Reload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let user = UserId(Uuid::now_v7());
        assert_eq!(
            decode(&update(Some(user), b"\x01\x02")),
            Some(Remote::Update { user: Some(user), update: vec![1, 2] })
        );
        assert_eq!(decode(&awareness(b"x")), Some(Remote::Awareness { update: b"x".to_vec() }));
        assert_eq!(decode(&reload()), Some(Remote::Reload));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"u\x00"), None);
        assert_eq!(decode(&encode(b'?', None, b"")), None);
        let task = TaskId(Uuid::now_v7());
        assert_eq!(task_of_topic(&crate::doc::topic(task)), Some(task));
        assert_eq!(task_of_topic("collab:nope"), None);
        assert_eq!(task_of_topic("rt.signal"), None);
    }
}

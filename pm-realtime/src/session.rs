//! One session's outbound side: the bounded queue between the hub and the transport.
//!
//! Three lanes, drained in this order by [`Outbound::recv`]:
//!
//! 1. **control** — answers to the client's own frames (`subscribed`, `error`, `pong`, ...);
//! 2. **ephemeral** — presence, typing and cursors, one slot per (channel, user, kind): a newer
//!    signal replaces the queued one (latest wins), so they never pile up and never wait behind
//!    durable events; typing and cursors are dropped outright while the session is under
//!    pressure (queue over half its budget);
//! 3. **durable** — events and notifications, in order.
//!
//! Control and durable frames count against one byte budget (`max_queue_bytes`). A push that
//! would exceed it closes the session with [`CloseCode::SLOW_CONSUMER`] and drops everything
//! queued: the client reconnects and resumes with `last_seq`, which is cheaper for everyone than
//! an unbounded queue. Frames are `Arc<str>`, serialized once and shared by every session they
//! fan out to.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use pm_core::id::UserId;
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::protocol::CloseCode;

/// A ready-to-send text frame, shared between the sessions it fans out to.
pub type Frame = Arc<str>;

/// Identifies a session within its hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What the transport should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Send this text frame.
    Frame(Frame),
    /// Close the connection with this code; nothing follows.
    Close(CloseCode),
}

/// The kinds of coalesced signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SignalKind {
    /// A presence change of one user (never dropped, only coalesced).
    Presence,
    /// The presence list sent right after subscribing (never dropped).
    PresenceSnapshot,
    /// Typing (dropped under pressure).
    Typing,
    /// Cursor (dropped under pressure).
    Cursor,
}

impl SignalKind {
    fn droppable(self) -> bool {
        matches!(self, SignalKind::Typing | SignalKind::Cursor)
    }
}

/// The coalescing key of an ephemeral slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    pub channel: Channel,
    pub user: Option<UserId>,
    pub kind: SignalKind,
}

/// Limits of one session's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub max_bytes: usize,
    pub max_slots: usize,
}

#[derive(Debug)]
struct Outbox {
    control: VecDeque<Frame>,
    durable: VecDeque<Frame>,
    queued_bytes: usize,
    slots: HashMap<SlotKey, Frame>,
    slot_order: VecDeque<SlotKey>,
    closed: Option<CloseCode>,
    close_taken: bool,
}

/// The queue shared by the hub (producer) and the transport's [`Outbound`] (consumer).
#[derive(Debug)]
pub(crate) struct SessionQueue {
    limits: QueueLimits,
    outbox: Mutex<Outbox>,
    /// Wakes the consumer after a push or close.
    ready: Notify,
    /// Wakes producers waiting for room (replays) after the consumer took a frame.
    room: Notify,
}

/// Where a control or durable frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Control,
    Durable,
}

impl SessionQueue {
    pub(crate) fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            outbox: Mutex::new(Outbox {
                control: VecDeque::new(),
                durable: VecDeque::new(),
                queued_bytes: 0,
                slots: HashMap::new(),
                slot_order: VecDeque::new(),
                closed: None,
                close_taken: false,
            }),
            ready: Notify::new(),
            room: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame; `false` when it did not fit (the session is then closed as a slow
    /// consumer) or the session was already closed.
    pub(crate) fn push(&self, lane: Lane, frame: Frame) -> bool {
        let mut o = self.lock();
        if o.closed.is_some() {
            return false;
        }
        if o.queued_bytes + frame.len() > self.limits.max_bytes {
            drop(o);
            self.close(CloseCode::SLOW_CONSUMER);
            return false;
        }
        o.queued_bytes += frame.len();
        match lane {
            Lane::Control => o.control.push_back(frame),
            Lane::Durable => o.durable.push_back(frame),
        }
        drop(o);
        self.ready.notify_one();
        true
    }

    /// Whether `bytes` more would fit in the budget right now.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        let o = self.lock();
        o.closed.is_none() && o.queued_bytes + bytes <= self.limits.max_bytes
    }

    /// Waits until the consumer takes a frame (or the session closes).
    pub(crate) async fn room_freed(&self) {
        self.room.notified().await;
    }

    /// Puts an ephemeral signal in its slot (latest wins); drops droppable signals under
    /// pressure.
    pub(crate) fn push_signal(&self, key: SlotKey, frame: Frame) {
        let mut o = self.lock();
        if o.closed.is_some() {
            return;
        }
        if let Some(slot) = o.slots.get_mut(&key) {
            *slot = frame;
        } else {
            let pressured = o.queued_bytes > self.limits.max_bytes / 2
                || o.slots.len() >= self.limits.max_slots;
            if key.kind.droppable() && pressured {
                return;
            }
            o.slots.insert(key, frame);
            o.slot_order.push_back(key);
        }
        drop(o);
        self.ready.notify_one();
    }

    /// Closes the session: everything queued is dropped, the consumer gets `Close(code)` next.
    /// The first close wins.
    pub(crate) fn close(&self, code: CloseCode) {
        let mut o = self.lock();
        if o.closed.is_some() {
            return;
        }
        o.closed = Some(code);
        o.control.clear();
        o.durable.clear();
        o.slots.clear();
        o.slot_order.clear();
        o.queued_bytes = 0;
        drop(o);
        self.ready.notify_one();
        self.room.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Bytes waiting in the control and durable lanes.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queued_bytes
    }

    /// `Some(None)` when finished (closed and the close was taken).
    fn take(&self) -> Option<Option<Outgoing>> {
        let mut o = self.lock();
        if let Some(code) = o.closed {
            if o.close_taken {
                return Some(None);
            }
            o.close_taken = true;
            return Some(Some(Outgoing::Close(code)));
        }
        let frame = if let Some(f) = o.control.pop_front() {
            o.queued_bytes -= f.len();
            f
        } else if let Some(key) = o.slot_order.pop_front() {
            // Keys and slots are inserted and removed together.
            o.slots.remove(&key)?
        } else if let Some(f) = o.durable.pop_front() {
            o.queued_bytes -= f.len();
            f
        } else {
            return None;
        };
        o.release_idle_capacity();
        drop(o);
        self.room.notify_waiters();
        Some(Some(Outgoing::Frame(frame)))
    }
}

/// Entries a drained lane or slot map may keep allocated (see
/// [`Outbox::release_idle_capacity`]).
const IDLE_CAPACITY: usize = 8;

impl Outbox {
    /// Frees what a burst grew, once it has drained. Collections keep their capacity when
    /// emptied, and a session spends most of its life idle: a replay of thousands of events, or
    /// the presence joins of a few hundred members (one slot each), would otherwise stay
    /// allocated on every connection that saw them: tens of KB each, times every connection.
    fn release_idle_capacity(&mut self) {
        if self.control.is_empty() && self.control.capacity() > IDLE_CAPACITY {
            self.control = VecDeque::new();
        }
        if self.durable.is_empty() && self.durable.capacity() > IDLE_CAPACITY {
            self.durable = VecDeque::new();
        }
        if self.slot_order.is_empty() && self.slot_order.capacity() > IDLE_CAPACITY {
            self.slot_order = VecDeque::new();
            self.slots = HashMap::new();
        }
    }
}

/// The transport's end of a session: frames to send, in order, then a close.
///
/// `recv` returns `None` once the session is over (after handing out [`Outgoing::Close`], or when
/// the [`SessionHandle`](crate::hub::SessionHandle) was dropped).
#[derive(Debug)]
pub struct Outbound {
    pub(crate) queue: Arc<SessionQueue>,
    pub(crate) id: SessionId,
}

impl Outbound {
    /// The session this belongs to.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// The next thing to send, waiting until there is one.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(next) = self.queue.take() {
                return next;
            }
            self.queue.ready.notified().await;
        }
    }

    /// The next thing to send, if one is ready now.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.queue.take().flatten()
    }

    /// Bytes of control and durable frames waiting (for metrics).
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_bytes: usize) -> Arc<SessionQueue> {
        SessionQueue::new(QueueLimits { max_bytes, max_slots: 4 })
    }

    fn key(kind: SignalKind) -> SlotKey {
        SlotKey { channel: Channel::User(UserId::new()), user: None, kind }
    }

    #[test]
    fn over_budget_closes_as_slow_consumer_and_drops_the_queue() {
        let q = queue(10);
        assert!(q.push(Lane::Durable, "12345".into()));
        assert!(q.push(Lane::Durable, "12345".into()));
        assert!(!q.push(Lane::Durable, "1".into()));
        assert_eq!(q.take(), Some(Some(Outgoing::Close(CloseCode::SLOW_CONSUMER))));
        assert_eq!(q.take(), Some(None));
    }

    #[test]
    fn signals_coalesce_and_jump_the_durable_lane() {
        let q = queue(1000);
        let k = key(SignalKind::Cursor);
        assert!(q.push(Lane::Durable, "event".into()));
        q.push_signal(k, "cursor 1".into());
        q.push_signal(k, "cursor 2".into());
        assert!(q.push(Lane::Control, "pong".into()));
        let order: Vec<_> = std::iter::from_fn(|| q.take().flatten()).collect();
        let texts: Vec<_> = order
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) => f.to_string(),
                Outgoing::Close(_) => "close".into(),
            })
            .collect();
        assert_eq!(texts, ["pong", "cursor 2", "event"]);
    }

    #[test]
    fn droppable_signals_are_dropped_under_pressure() {
        let q = queue(10);
        assert!(q.push(Lane::Durable, "123456".into()));
        q.push_signal(key(SignalKind::Typing), "typing".into());
        q.push_signal(key(SignalKind::Presence), "presence".into());
        let mut got = Vec::new();
        while let Some(Outgoing::Frame(f)) = q.take().flatten() {
            got.push(f.to_string());
        }
        assert_eq!(got, ["presence", "123456"]);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let q = SessionQueue::new(QueueLimits { max_bytes: 1 << 20, max_slots: 1024 });
        let channel = Channel::User(UserId::new());
        for _ in 0..300 {
            let key = SlotKey { channel, user: Some(UserId::new()), kind: SignalKind::Presence };
            q.push_signal(key, "joined".into());
            assert!(q.push(Lane::Durable, "event".into()));
            assert!(q.push(Lane::Control, "pong".into()));
        }
        let capacities = |q: &SessionQueue| {
            let o = q.lock();
            [
                o.control.capacity(),
                o.durable.capacity(),
                o.slots.capacity(),
                o.slot_order.capacity(),
            ]
        };
        assert!(capacities(&q).iter().all(|&c| c >= 300), "{:?}", capacities(&q));
        let mut taken = 0;
        while let Some(Outgoing::Frame(_)) = q.take().flatten() {
            taken += 1;
        }
        assert_eq!(taken, 900);
        assert!(capacities(&q).iter().all(|&c| c <= IDLE_CAPACITY), "{:?}", capacities(&q));
        // And the queue works as before afterwards.
        assert!(q.push(Lane::Durable, "after".into()));
        assert_eq!(q.take(), Some(Some(Outgoing::Frame("after".into()))));
    }
}

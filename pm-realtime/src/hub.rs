//! The hub: sessions, channels, fan-out of durable events and ephemeral signals, presence.
//!
//! A transport (pm-server's WebSocket glue) drives one session per connection:
//!
//! ```no_run
//! # async fn demo(hub: pm_realtime::Hub, actor: pm_core::event::Actor) {
//! use pm_realtime::session::Outgoing;
//! let (session, mut outbound) = hub.connect(actor);
//! // Concurrently: every inbound text frame goes to `session.receive(text).await` (WebSocket
//! // pings to `session.heartbeat()`), and this loop writes what the hub queues:
//! while let Some(out) = outbound.recv().await {
//!     match out {
//!         Outgoing::Frame(text) => { /* socket.send(Text(text)) */ }
//!         Outgoing::Close(code) => { /* socket.close(code.code, code.reason) */ break }
//!     }
//! }
//! drop(session); // leaves every channel (presence `left`), records last-seen
//! # }
//! ```
//!
//! Invariants:
//!
//! - **One tailer per hub.** A single [`Tailer`] reads the event log and routes each event to
//!   `org:`, `project:` and `task:` channels through a channel → subscribers index (no scan of
//!   all sessions). The event is serialized once; its frame is built once per channel and shared
//!   by every session (`Arc<str>`).
//! - **Gap-free, duplicate-free resumption.** A subscription records the tail position at the
//!   moment it is registered (under the same lock the tailer dispatches under). Everything after
//!   that position comes from the tailer; everything between the client's `last_seq` and that
//!   position is replayed from the log by a per-subscription task, while live events for the
//!   subscription are buffered and flushed after the replay. Every delivery also checks
//!   `seq > deliver_after`, so nothing is sent twice. A `last_seq` more than
//!   [`HubConfig::replay_window`] behind gets `resync` instead.
//! - **Bounded queues.** See [`crate::session`]: a session over its byte budget is closed with
//!   the slow-consumer code; other sessions are unaffected. A replay waits for room instead of
//!   overflowing (the client is reading), and its live buffer counts against the same budget.
//! - **Presence** is per channel and aggregated over this instance's sessions and other
//!   instances' reports (through the [`Broker`]); other instances' reports expire after the
//!   heartbeat timeout unless refreshed, so a crashed instance's users leave within it.
//! - **Access is re-checked on open sessions.** A subscription is authorized when it is made,
//!   and again when access may have been lost: at once and [`HubConfig::reauthorize_delay`]
//!   later when the log says the user was removed from an organization (`member.removed`; the
//!   second look catches grant revocations that commit or reach this instance's authorizer
//!   after the membership change), when the host calls [`Hub::reauthorize_user`] (pm-server does
//!   after revoking grants), and for every subscription every [`HubConfig::reauthorize_every`].
//!   A subscription no longer allowed is dropped with `unsubscribed` and reason `forbidden`; the
//!   session stays open.
//! - **Credentials expire.** A session opened with [`SessionOptions::expires_at`] is closed with
//!   [`CloseCode::TOKEN_EXPIRED`] once that time passes (at its next inbound frame or the next
//!   sweep, whichever comes first); the client re-authenticates and resumes with `last_seq`. A
//!   [`SessionOptions::read_only`] session may subscribe and receive but sends no presence,
//!   typing or cursors (`error` with code `read_only`) and is not shown as present.
//! - The hub never awaits I/O while holding its lock; broker publishes and last-seen writes are
//!   queued to a single background worker, which keeps their order; last-seen times are written
//!   in batches (one statement per sweep, however many users).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use pm_core::authz::{Action, Authorizer, Decision, Resource, ResourceKind};
use pm_core::event::{Actor, Event, EventKind, Tailer};
use pm_core::id::UserId;
use pm_core::service::task_resource;
use pm_core::store::Stores;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::Result;
use crate::broker::{Broker, BrokerMessage, InProcessBroker, InstanceId};
use crate::channel::Channel;
use crate::clock::{Clock, SystemClock};
use crate::notification::Notification;
use crate::protocol::{
    ClientFrame, CloseCode, ErrorCode, PresenceEntry, PresenceStatus, ServerFrame, Subscribe,
    UnsubscribeReason,
};
use crate::session::{
    Frame, Lane, Outbound, QueueLimits, SessionId, SessionQueue, SignalKind, SlotKey,
};
use crate::store::PresenceStore;
use crate::store::memory::MemoryRealtimeStore;

/// The broker topic of the hub's own signals (presence, typing, cursors, notifications).
pub const SIGNAL_TOPIC: &str = "rt.signal";

/// Limits and timeouts of a hub. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest accepted client frame, in bytes (larger ones get `frame_too_large`). The transport
    /// should also cap its message size at this.
    pub max_frame_bytes: usize,
    /// Byte budget of a session's control + durable queue; exceeding it closes the session with
    /// [`CloseCode::SLOW_CONSUMER`].
    pub max_queue_bytes: usize,
    /// Most ephemeral slots (distinct (channel, user, kind) signals) queued per session.
    pub max_signal_slots: usize,
    /// Most channels one session may subscribe to.
    pub max_subscriptions: usize,
    /// How far behind (in `seq`) a `last_seq` may be and still be replayed; older gets `resync`.
    pub replay_window: i64,
    /// Events read per query while replaying and tailing.
    pub read_batch: u32,
    /// A session that sends nothing (no frame, no heartbeat) for this long is closed with
    /// [`CloseCode::HEARTBEAT_TIMEOUT`]; other instances' presence reports expire after it too.
    pub heartbeat_timeout: Duration,
    /// For the transport: close a connection that has been silent this long (at least the
    /// heartbeat timeout; clients ping every `heartbeat_timeout / 3`).
    pub idle_timeout: Duration,
    /// How often the background sweep runs (timeouts, presence refresh, last-seen).
    pub sweep_interval: Duration,
    /// How often a connected user's last-seen time is written.
    pub last_seen_interval: Duration,
    /// After a `member.removed` event, the removed user's subscriptions are re-checked at once
    /// and again after this delay (grants are revoked after the membership row, and another
    /// instance's authorizer may learn of the revocation a moment later).
    pub reauthorize_delay: Duration,
    /// Every subscription is re-checked this often (`None`: never), which catches access lost
    /// without an event in the log (a role changed, a grant expired or revoked elsewhere).
    pub reauthorize_every: Option<Duration>,
    /// For the transport: most frames written to a connection before one flush (frames already
    /// queued when the writer wakes go out together, one `send` for many under fan-out load).
    /// At least 1; 1 flushes every frame on its own.
    pub write_batch: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_queue_bytes: 1024 * 1024,
            max_signal_slots: 256,
            max_subscriptions: 100,
            replay_window: 10_000,
            read_batch: 500,
            heartbeat_timeout: Duration::from_secs(45),
            idle_timeout: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(5),
            last_seen_interval: Duration::from_secs(60),
            reauthorize_delay: Duration::from_secs(2),
            reauthorize_every: Some(Duration::from_secs(60)),
            write_batch: 64,
        }
    }
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Open sessions.
    pub sessions: usize,
    /// Channels with at least one subscriber or present member.
    pub channels: usize,
    /// The last event `seq` dispatched by the tailer.
    pub tail_seq: i64,
}

/// What the transport knows about a session's credential (see [`Hub::connect_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// When the credential expires; the session is closed with [`CloseCode::TOKEN_EXPIRED`]
    /// then. `None`: it does not expire.
    pub expires_at: Option<OffsetDateTime>,
    /// A read-only credential: the session may subscribe and receive, but may not send
    /// presence, typing or cursors, and is not shown as present.
    pub read_only: bool,
}

/// Builds a [`Hub`].
pub struct HubBuilder {
    stores: Stores,
    authz: Arc<dyn Authorizer>,
    config: HubConfig,
    broker: Option<Arc<dyn Broker>>,
    presence_store: Option<Arc<dyn PresenceStore>>,
    clock: Arc<dyn Clock>,
}

impl HubBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// The broker for other instances (default: an [`InProcessBroker`] of its own).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Where last-seen times go (default: in memory).
    pub fn presence_store(mut self, store: Arc<dyn PresenceStore>) -> Self {
        self.presence_store = Some(store);
        self
    }

    /// The clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the hub: its tailer (from the log's current end), broker listener, sweeper and
    /// effects worker. Needs a Tokio runtime.
    pub async fn start(self) -> Result<Hub> {
        let broker = self.broker.unwrap_or_else(|| Arc::new(InProcessBroker::new()));
        let presence_store =
            self.presence_store.unwrap_or_else(|| Arc::new(MemoryRealtimeStore::new()));
        let start = self.stores.events.latest_seq().await?;
        let (effects, effects_rx) = mpsc::channel(EFFECTS_BUFFER);
        let inner = Arc::new(Inner {
            config: self.config,
            stores: self.stores,
            authz: self.authz,
            instance: broker.instance_id(),
            clock: self.clock,
            state: Mutex::new(State {
                tail_seq: start,
                sessions: HashMap::new(),
                channels: HashMap::new(),
                last_refresh: None,
            }),
            next_session: AtomicU64::new(1),
            next_subscription: AtomicU64::new(1),
            reauthorizing: AtomicBool::new(false),
            effects,
        });
        let broker_rx = broker.subscribe();
        let tasks = vec![
            tokio::spawn(run_effects(effects_rx, broker, presence_store)).abort_handle(),
            tokio::spawn(run_tailer(Arc::downgrade(&inner), start)).abort_handle(),
            tokio::spawn(run_broker(Arc::downgrade(&inner), broker_rx)).abort_handle(),
            tokio::spawn(run_sweeper(Arc::downgrade(&inner))).abort_handle(),
        ];
        Ok(Hub { inner, tasks: Arc::new(Tasks(tasks)) })
    }
}

/// The realtime hub. Cheap to clone; background tasks stop when the last clone is dropped (or on
/// [`Hub::shutdown`]).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("instance", &self.inner.instance).finish_non_exhaustive()
    }
}

struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Hub {
    /// A builder over pm-core's stores (for the event log and for loading the resources
    /// subscriptions are authorized against) and the authorizer.
    pub fn builder(stores: Stores, authz: Arc<dyn Authorizer>) -> HubBuilder {
        HubBuilder {
            stores,
            authz,
            config: HubConfig::default(),
            broker: None,
            presence_store: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Opens a session for an authenticated actor whose credential neither expires nor is
    /// read-only: the handle to feed inbound frames to, and the outbound side to send from.
    pub fn connect(&self, actor: Actor) -> (SessionHandle, Outbound) {
        self.connect_with(actor, SessionOptions::default())
    }

    /// Opens a session for an authenticated actor, with what is known about its credential.
    pub fn connect_with(&self, actor: Actor, options: SessionOptions) -> (SessionHandle, Outbound) {
        let id = SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed));
        let queue = SessionQueue::new(QueueLimits {
            max_bytes: self.inner.config.max_queue_bytes,
            max_slots: self.inner.config.max_signal_slots,
        });
        let now = self.inner.clock.now();
        self.inner.lock().sessions.insert(
            id,
            SessionEntry {
                queue: queue.clone(),
                actor,
                channels: HashSet::new(),
                last_inbound: now,
                last_seen_saved: None,
                options,
            },
        );
        let handle = SessionHandle { inner: self.inner.clone(), id, actor };
        (handle, Outbound { queue, id })
    }

    /// The configuration (the transport reads `idle_timeout` and `max_frame_bytes` from it).
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// This hub's instance id (as its broker knows it).
    pub fn instance_id(&self) -> InstanceId {
        self.inner.instance
    }

    /// Counts for metrics and tests.
    pub fn stats(&self) -> HubStats {
        let st = self.inner.lock();
        HubStats { sessions: st.sessions.len(), channels: st.channels.len(), tail_seq: st.tail_seq }
    }

    /// Who is present in a channel, on any instance.
    pub fn presence(&self, channel: Channel) -> Vec<PresenceEntry> {
        let st = self.inner.lock();
        st.channels.get(&channel).map(|c| c.presence_list()).unwrap_or_default()
    }

    /// Pushes a notification to its user's `user:{id}` subscribers on every instance.
    pub fn push_notification(&self, notification: &Notification) {
        let channel = Channel::User(notification.user_id);
        let frame: Frame =
            ServerFrame::Notification { channel, notification: Box::new(notification.clone()) }
                .to_text()
                .into();
        let mut fx = Effects::default();
        {
            let mut st = self.inner.lock();
            st.deliver_durable(channel, &frame, &mut fx);
        }
        fx.signal(Signal::Notification { user: notification.user_id, frame: frame.to_string() });
        self.inner.apply(fx);
    }

    /// Re-checks `user`'s subscriptions on this instance now, dropping those the user may no
    /// longer read (`unsubscribed`, reason `forbidden`). Hosts call it after revoking access;
    /// returns how many subscriptions were dropped.
    pub async fn reauthorize_user(&self, user: UserId) -> usize {
        self.inner.reauthorize(Recheck::User(user)).await
    }

    /// Re-checks every subscription on this instance now (the hub also does this every
    /// [`HubConfig::reauthorize_every`]); returns how many were dropped.
    pub async fn reauthorize_all(&self) -> usize {
        self.inner.reauthorize(Recheck::All).await
    }

    /// Runs one sweep now: closes sessions silent past the heartbeat timeout (and those whose
    /// credential expired), expires other
    /// instances' stale presence, refreshes this instance's presence for them, writes last-seen
    /// times. The hub runs it every [`HubConfig::sweep_interval`]; tests with a manual clock call
    /// it directly.
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    /// Closes every session with [`CloseCode::GOING_AWAY`], tells other instances this one's
    /// users left, and stops the background tasks once that is sent.
    pub async fn shutdown(&self) {
        let mut fx = Effects::default();
        {
            let mut st = self.inner.lock();
            let ids: Vec<SessionId> = st.sessions.keys().copied().collect();
            for id in &ids {
                if let Some(s) = st.sessions.get(id) {
                    s.queue.close(CloseCode::GOING_AWAY);
                }
            }
            let now = self.inner.clock.now();
            st.remove_sessions(ids, now, &mut fx);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        fx.effects.push(Effect::Done(done_tx));
        self.inner.apply(fx);
        let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        for t in &self.tasks.0 {
            t.abort();
        }
    }
}

/// The inbound side of one session, held by the transport. Dropping it ends the session.
#[derive(Debug)]
pub struct SessionHandle {
    inner: Arc<Inner>,
    id: SessionId,
    actor: Actor,
}

impl SessionHandle {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Who is connected.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// Handles one inbound text frame. Bad input never fails the session: it is answered with an
    /// `error` frame. Returns once the frame is handled (a `subscribe` after authorization; its
    /// replay continues in the background), never waiting for the client to read.
    pub async fn receive(&self, text: &str) {
        if !self.heartbeat() {
            return; // closed by the hub; the transport is about to see the close
        }
        let max = self.inner.config.max_frame_bytes;
        if text.len() > max {
            let msg = format!("frame is {} bytes; at most {max} are allowed", text.len());
            self.error(ErrorCode::FrameTooLarge, msg, None, None);
            return;
        }
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => return self.error(ErrorCode::InvalidFrame, e.message, e.field, None),
        };
        match frame {
            ClientFrame::Ping => self.control(ServerFrame::Pong),
            ClientFrame::Subscribe(s) => self.subscribe(s).await,
            ClientFrame::Unsubscribe(u) => self.unsubscribe(u.channel),
            ClientFrame::Presence(p) => {
                self.with_user(p.channel, |st, user, fx| {
                    st.set_local_presence(p.channel, self.id, user, Some(p.status), fx);
                });
            }
            ClientFrame::Typing(t) => {
                self.signal(t.channel, EphemeralKind::Typing, |user| ServerFrame::Typing {
                    channel: t.channel,
                    user,
                    task_id: t.task_id,
                });
            }
            ClientFrame::Cursor(c) => {
                let channel = c.channel;
                self.signal(channel, EphemeralKind::Cursor, |user| ServerFrame::Cursor {
                    channel,
                    user,
                    position: c.position,
                });
            }
        }
    }

    /// Records that the client is alive (a WebSocket ping or pong counts). Returns `false` when
    /// the session is already closed.
    pub fn heartbeat(&self) -> bool {
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        match st.sessions.get_mut(&self.id) {
            Some(s) if s.expired(now) => {
                // Dropping the handle (the transport does once it sees the close) removes it.
                s.queue.close(CloseCode::TOKEN_EXPIRED);
                false
            }
            Some(s) if !s.queue.is_closed() => {
                s.last_inbound = now;
                true
            }
            _ => false,
        }
    }

    fn control(&self, frame: ServerFrame) {
        let mut fx = Effects::default();
        {
            let mut st = self.inner.lock();
            st.push_to(self.id, Lane::Control, frame.to_text().into(), &mut fx);
            if !fx.dead.is_empty() {
                let now = self.inner.clock.now();
                st.reap(now, &mut fx);
            }
        }
        self.inner.apply(fx);
    }

    fn error(
        &self,
        code: ErrorCode,
        message: impl Into<String>,
        field: Option<String>,
        channel: Option<Channel>,
    ) {
        self.control(ServerFrame::Error { code, message: message.into(), field, channel });
    }

    /// Runs `f` for a frame that needs a user and a subscription to `channel`.
    fn with_user(
        &self,
        channel: Channel,
        f: impl FnOnce(&mut State, UserId, &mut Effects),
    ) -> bool {
        let Some(user) = self.actor.user() else {
            self.error(
                ErrorCode::UserRequired,
                "presence, typing and cursors need a user session",
                None,
                Some(channel),
            );
            return false;
        };
        let read_only =
            self.inner.lock().sessions.get(&self.id).is_some_and(|s| s.options.read_only);
        if read_only {
            self.error(
                ErrorCode::ReadOnly,
                "this session's credential is read-only (scope `read`): presence, typing and \
                 cursors need a write-scoped token",
                None,
                Some(channel),
            );
            return false;
        }
        let mut fx = Effects::default();
        let subscribed = {
            let mut st = self.inner.lock();
            let subscribed =
                st.sessions.get(&self.id).is_some_and(|s| s.channels.contains(&channel));
            if subscribed {
                f(&mut st, user, &mut fx);
                let now = self.inner.clock.now();
                st.reap(now, &mut fx);
            }
            subscribed
        };
        self.inner.apply(fx);
        if !subscribed {
            self.error(
                ErrorCode::NotSubscribed,
                format!("subscribe to {channel} first"),
                Some("channel".into()),
                Some(channel),
            );
        }
        subscribed
    }

    /// Fans a typing or cursor signal out to the channel's other sessions, here and elsewhere.
    fn signal(
        &self,
        channel: Channel,
        kind: EphemeralKind,
        frame: impl FnOnce(UserId) -> ServerFrame,
    ) {
        let id = self.id;
        self.with_user(channel, |st, user, fx| {
            let text: Frame = frame(user).to_text().into();
            st.deliver_signal(channel, user, kind.slot(), &text, Some(id));
            fx.signal(Signal::Ephemeral { channel, user, kind, frame: text.to_string() });
        });
    }

    async fn subscribe(&self, s: Subscribe) {
        let channel = s.channel;
        if s.last_seq.is_some_and(|q| q < 0) {
            return self.error(
                ErrorCode::InvalidFrame,
                "must not be negative",
                Some("last_seq".into()),
                Some(channel),
            );
        }
        // Bound first: the lock guard must be released before answering.
        let refusal = self.inner.lock().can_subscribe(self.id, channel, &self.inner.config);
        if let Some((code, message)) = refusal {
            return self.error(code, message, None, Some(channel));
        }
        match self.inner.authorize(&self.actor, channel).await {
            Ok(true) => {}
            Ok(false) => {
                return self.error(
                    ErrorCode::Forbidden,
                    format!("{channel} does not exist or may not be subscribed to"),
                    Some("channel".into()),
                    Some(channel),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, %channel, "pm-realtime: authorizing a subscription failed");
                return self.error(
                    ErrorCode::Internal,
                    "could not check access; try again",
                    None,
                    Some(channel),
                );
            }
        }
        let mut fx = Effects::default();
        let replay = {
            let mut st = self.inner.lock();
            // Re-check: another frame of this session may have subscribed meanwhile.
            if let Some(refusal) = st.can_subscribe(self.id, channel, &self.inner.config) {
                drop(st);
                return self.error(refusal.0, refusal.1, None, Some(channel));
            }
            let tail = st.tail_seq;
            let window = self.inner.config.replay_window;
            let (deliver_after, replay_from, resync) = match s.last_seq {
                _ if !channel.carries_events() => (tail, None, false),
                None => (tail, None, false),
                Some(last) if last >= tail => (last, None, false),
                Some(last) if tail - last > window => (tail, None, true),
                Some(last) => (last, Some(last), false),
            };
            let subscription = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
            // A read-only session watches without being shown as present.
            let read_only = st.sessions.get(&self.id).is_some_and(|s| s.options.read_only);
            let user = self.actor.user().filter(|_| !read_only);
            st.channels.entry(channel).or_default().subscribers.insert(
                self.id,
                Subscriber {
                    subscription,
                    deliver_after,
                    replay: replay_from.map(|_| ReplayBuffer::default()),
                },
            );
            if let Some(s) = st.sessions.get_mut(&self.id) {
                s.channels.insert(channel);
            }
            if resync {
                let f = ServerFrame::Resync { channel, latest_seq: tail };
                st.push_to(self.id, Lane::Control, f.to_text().into(), &mut fx);
            }
            let f = ServerFrame::Subscribed { channel, seq: deliver_after };
            st.push_to(self.id, Lane::Control, f.to_text().into(), &mut fx);
            // Presence is about who looks at shared things; a user channel has one reader.
            if channel.carries_events() {
                if let Some(user) = user {
                    let online = Some(PresenceStatus::Online);
                    st.set_local_presence(channel, self.id, user, online, &mut fx);
                }
                st.send_presence_snapshot(channel, self.id);
            }
            let now = self.inner.clock.now();
            st.reap(now, &mut fx);
            replay_from.map(|from| (from, tail, subscription))
        };
        self.inner.apply(fx);
        if let Some((from, until, subscription)) = replay {
            let inner = self.inner.clone();
            let id = self.id;
            tokio::spawn(async move {
                inner.replay(id, channel, subscription, from, until).await;
            });
        }
    }

    fn unsubscribe(&self, channel: Channel) {
        let mut fx = Effects::default();
        let was = {
            let mut st = self.inner.lock();
            let now = self.inner.clock.now();
            let was = st.drop_subscription(self.id, channel, &mut fx);
            if was {
                let f = ServerFrame::Unsubscribed { channel, reason: None };
                st.push_to(self.id, Lane::Control, f.to_text().into(), &mut fx);
            }
            st.reap(now, &mut fx);
            was
        };
        self.inner.apply(fx);
        if !was {
            self.error(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel}"),
                Some("channel".into()),
                Some(channel),
            );
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let mut fx = Effects::default();
        {
            let mut st = self.inner.lock();
            if let Some(s) = st.sessions.get(&self.id) {
                // The transport is gone: make the outbound side finish too.
                s.queue.close(CloseCode::GOING_AWAY);
            }
            let now = self.inner.clock.now();
            st.remove_sessions(vec![self.id], now, &mut fx);
            st.reap(now, &mut fx);
        }
        self.inner.apply(fx);
    }
}

// ---------------------------------------------------------------------------------------------
// Internals

/// Queued effects (broker publishes, last-seen writes) beyond this are dropped with a warning:
/// they are ephemeral, and a stalled broker must not grow memory without bound.
const EFFECTS_BUFFER: usize = 16 * 1024;

/// Presence updates per refresh message (keeps messages well under PostgreSQL's NOTIFY cap).
const PRESENCE_CHUNK: usize = 40;

struct Inner {
    config: HubConfig,
    stores: Stores,
    authz: Arc<dyn Authorizer>,
    instance: InstanceId,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    next_session: AtomicU64,
    next_subscription: AtomicU64,
    /// Set while a periodic re-authorization pass runs (passes never overlap).
    reauthorizing: AtomicBool,
    effects: mpsc::Sender<Effect>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("instance", &self.instance).finish_non_exhaustive()
    }
}

struct State {
    /// The last `seq` the tailer dispatched.
    tail_seq: i64,
    sessions: HashMap<SessionId, SessionEntry>,
    channels: HashMap<Channel, ChannelState>,
    last_refresh: Option<OffsetDateTime>,
}

struct SessionEntry {
    queue: Arc<SessionQueue>,
    actor: Actor,
    channels: HashSet<Channel>,
    last_inbound: OffsetDateTime,
    last_seen_saved: Option<OffsetDateTime>,
    options: SessionOptions,
}

impl SessionEntry {
    fn expired(&self, now: OffsetDateTime) -> bool {
        self.options.expires_at.is_some_and(|at| now >= at)
    }
}

/// Which subscriptions a re-authorization pass looks at.
#[derive(Debug, Clone, Copy)]
enum Recheck {
    /// Those of one user's sessions.
    User(UserId),
    /// All of them.
    All,
}

#[derive(Default)]
struct ChannelState {
    subscribers: HashMap<SessionId, Subscriber>,
    presence: HashMap<UserId, Member>,
}

struct Subscriber {
    /// Distinguishes this subscription from a later one of the same session and channel (a
    /// replay task must not touch its successor).
    subscription: u64,
    /// Only events with a greater `seq` are delivered.
    deliver_after: i64,
    /// Live events held back while the replay runs.
    replay: Option<ReplayBuffer>,
}

#[derive(Default)]
struct ReplayBuffer {
    frames: Vec<(i64, Frame)>,
    bytes: usize,
}

#[derive(Default)]
struct Member {
    /// This instance's sessions present in the channel.
    local: HashMap<SessionId, PresenceStatus>,
    /// Other instances' reports, until they expire.
    remote: HashMap<InstanceId, (PresenceStatus, OffsetDateTime)>,
}

fn combine(statuses: impl Iterator<Item = PresenceStatus>) -> Option<PresenceStatus> {
    let mut best = None;
    for s in statuses {
        match s {
            PresenceStatus::Online => return Some(PresenceStatus::Online),
            PresenceStatus::Away => best = Some(PresenceStatus::Away),
        }
    }
    best
}

impl Member {
    fn local_status(&self) -> Option<PresenceStatus> {
        combine(self.local.values().copied())
    }

    fn status(&self) -> Option<PresenceStatus> {
        combine(self.local.values().copied().chain(self.remote.values().map(|(s, _)| *s)))
    }
}

impl ChannelState {
    fn presence_list(&self) -> Vec<PresenceEntry> {
        let mut list: Vec<PresenceEntry> = self
            .presence
            .iter()
            .filter_map(|(user, m)| m.status().map(|status| PresenceEntry { user: *user, status }))
            .collect();
        list.sort_by_key(|e| e.user);
        list
    }

    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.presence.is_empty()
    }
}

/// What the hub exchanges with other instances on [`SIGNAL_TOPIC`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
enum Signal {
    /// Presence of users on the sending instance (`status: null` = gone from there).
    Presence { updates: Vec<PresenceUpdate> },
    /// A typing or cursor frame, ready to send.
    Ephemeral { channel: Channel, user: UserId, kind: EphemeralKind, frame: String },
    /// A notification frame, ready to send.
    Notification { user: UserId, frame: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct PresenceUpdate {
    channel: Channel,
    user: UserId,
    status: Option<PresenceStatus>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EphemeralKind {
    Typing,
    Cursor,
}

impl EphemeralKind {
    fn slot(self) -> SignalKind {
        match self {
            EphemeralKind::Typing => SignalKind::Typing,
            EphemeralKind::Cursor => SignalKind::Cursor,
        }
    }
}

enum Effect {
    Publish(Bytes),
    /// Last-seen times, written with one store call.
    TouchLastSeen(Vec<(UserId, OffsetDateTime)>),
    Done(tokio::sync::oneshot::Sender<()>),
}

/// Work gathered under the lock and carried out after it is released.
#[derive(Default)]
struct Effects {
    effects: Vec<Effect>,
    /// Sessions whose queue overflowed; removed by [`State::reap`].
    dead: Vec<SessionId>,
    presence: Vec<PresenceUpdate>,
    /// Last-seen times to record, as one batch.
    last_seen: Vec<(UserId, OffsetDateTime)>,
}

impl Effects {
    fn signal(&mut self, signal: Signal) {
        match serde_json::to_vec(&signal) {
            Ok(bytes) => self.effects.push(Effect::Publish(bytes.into())),
            Err(e) => tracing::error!(error = %e, "pm-realtime: a signal failed to serialize"),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands effects to the background worker, in order.
    fn apply(&self, mut fx: Effects) {
        if !fx.last_seen.is_empty() {
            fx.effects.push(Effect::TouchLastSeen(std::mem::take(&mut fx.last_seen)));
        }
        for chunk in std::mem::take(&mut fx.presence).chunks(PRESENCE_CHUNK) {
            let updates = chunk
                .iter()
                .map(|u| PresenceUpdate { channel: u.channel, user: u.user, status: u.status })
                .collect();
            fx.signal(Signal::Presence { updates });
        }
        for e in fx.effects {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.effects.try_send(e) {
                tracing::warn!("pm-realtime: effects queue full; dropping a broker message");
            }
        }
    }

    /// Whether `actor` may subscribe to `channel`. Missing resources are `false`, like denials,
    /// so ids cannot be probed.
    async fn authorize(&self, actor: &Actor, channel: Channel) -> Result<bool> {
        let resource = match self.resource_of(channel).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Ok(matches!(channel, Channel::User(u) if actor.user() == Some(u)));
            }
            Err(pm_core::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(matches!(self.authz.check(actor, Action::Read, &resource).await?, Decision::Allow))
    }

    /// The resource a subscription to `channel` reads, built like pm-core's services build it
    /// (tasks with assignees and watchers, so conditions can use them); `None` for user channels.
    async fn resource_of(&self, channel: Channel) -> pm_core::Result<Option<Resource>> {
        Ok(Some(match channel {
            Channel::User(_) => return Ok(None),
            Channel::Org(id) => {
                self.stores.directory.get_org(id).await?;
                Resource::new(ResourceKind::Org, Some(id), None).with_id(id)
            }
            Channel::Project(id) => {
                let p = self.stores.projects.get_project(id).await?;
                Resource::new(ResourceKind::Project, Some(p.org_id), Some(p.id)).with_id(p.id)
            }
            Channel::Task(id) => {
                let t = self.stores.tasks.get_task(id).await?;
                let watchers = self.stores.tasks.list_watchers(id).await?;
                task_resource(&t).with_watchers(watchers.into_iter().map(|w| w.user_id))
            }
        }))
    }

    /// Replays `(from, until]` of `channel` into the session, then flushes what the tailer
    /// buffered meanwhile and switches the subscription to live delivery.
    async fn replay(
        &self,
        id: SessionId,
        channel: Channel,
        subscription: u64,
        from: i64,
        until: i64,
    ) {
        let Some(queue) = self.lock().sessions.get(&id).map(|s| s.queue.clone()) else {
            return;
        };
        let mut pos = from;
        let mut failed = false;
        'read: while pos < until {
            let batch = match self.stores.events.read_after(pos, self.config.read_batch).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "pm-realtime: replay read failed; sending resync");
                    failed = true;
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for event in &batch {
                if event.seq > until {
                    break 'read;
                }
                pos = event.seq;
                if !Channel::for_event(event).any(|c| c == channel) {
                    continue;
                }
                let Some(json) = event_json(event) else { continue };
                let frame = event_frame(channel, event.seq, &json);
                // Wait for the client to read rather than overflow: a replay is bounded by the
                // window, but may well exceed the queue budget.
                let mut waited = Duration::ZERO;
                while !queue.has_room(frame.len()) {
                    if queue.is_closed() || waited >= self.config.heartbeat_timeout {
                        queue.close(CloseCode::SLOW_CONSUMER);
                        let mut fx = Effects::default();
                        {
                            let mut st = self.lock();
                            st.remove_sessions(vec![id], self.clock.now(), &mut fx);
                        }
                        self.apply(fx);
                        return;
                    }
                    let step = Duration::from_millis(50);
                    let _ = tokio::time::timeout(step, queue.room_freed()).await;
                    waited += step;
                }
                if !self.still_subscribed(id, channel, subscription) {
                    return;
                }
                if !queue.push(Lane::Durable, frame) {
                    // Live frames of other channels filled the room meanwhile: cut off.
                    let mut fx = Effects::default();
                    self.lock().remove_sessions(vec![id], self.clock.now(), &mut fx);
                    self.apply(fx);
                    return;
                }
            }
        }
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            let State { channels, sessions, .. } = &mut *st;
            let Some(sub) = channels
                .get_mut(&channel)
                .and_then(|c| c.subscribers.get_mut(&id))
                .filter(|s| s.subscription == subscription)
            else {
                return;
            };
            let buffered = sub.replay.take().unwrap_or_default();
            sub.deliver_after = sub.deliver_after.max(until);
            if failed {
                let f = ServerFrame::Resync { channel, latest_seq: until };
                if let Some(s) = sessions.get(&id)
                    && !s.queue.push(Lane::Durable, f.to_text().into())
                {
                    fx.dead.push(id);
                }
            }
            if let Some(s) = sessions.get(&id) {
                for (seq, frame) in buffered.frames {
                    if seq > until && !s.queue.push(Lane::Durable, frame) {
                        fx.dead.push(id);
                        break;
                    }
                }
            }
            st.reap(self.clock.now(), &mut fx);
        }
        self.apply(fx);
    }

    fn still_subscribed(&self, id: SessionId, channel: Channel, subscription: u64) -> bool {
        self.lock()
            .channels
            .get(&channel)
            .and_then(|c| c.subscribers.get(&id))
            .is_some_and(|s| s.subscription == subscription)
    }

    /// Re-checks the subscriptions `which` selects, dropping those no longer allowed with
    /// `unsubscribed` (reason `forbidden`); returns how many were dropped. Decisions are made
    /// outside the lock, once per (actor, channel); a subscription replaced meanwhile is left
    /// alone, and one whose check fails (store unavailable) is kept: an outage must not cut
    /// everyone off.
    async fn reauthorize(&self, which: Recheck) -> usize {
        let subscriptions: Vec<(SessionId, Actor, Channel, u64)> = {
            let st = self.lock();
            let mut v = Vec::new();
            for (id, s) in &st.sessions {
                if let Recheck::User(user) = which
                    && s.actor.user() != Some(user)
                {
                    continue;
                }
                for channel in &s.channels {
                    if matches!(channel, Channel::User(_)) {
                        continue; // by identity, which cannot change
                    }
                    if let Some(sub) = st.channels.get(channel).and_then(|c| c.subscribers.get(id))
                    {
                        v.push((*id, s.actor, *channel, sub.subscription));
                    }
                }
            }
            v
        };
        let mut decisions: HashMap<(Actor, Channel), bool> = HashMap::new();
        let mut denied = Vec::new();
        for (id, actor, channel, subscription) in subscriptions {
            let allowed = match decisions.get(&(actor, channel)) {
                Some(allowed) => *allowed,
                None => {
                    let allowed = self.authorize(&actor, channel).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, %channel, "pm-realtime: re-checking a subscription failed; kept");
                        true
                    });
                    decisions.insert((actor, channel), allowed);
                    allowed
                }
            };
            if !allowed {
                denied.push((id, channel, subscription));
            }
        }
        if denied.is_empty() {
            return 0;
        }
        let mut dropped = 0;
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            for (id, channel, subscription) in denied {
                let current = st
                    .channels
                    .get(&channel)
                    .and_then(|c| c.subscribers.get(&id))
                    .is_some_and(|s| s.subscription == subscription);
                if current && st.drop_subscription(id, channel, &mut fx) {
                    dropped += 1;
                    let reason = Some(UnsubscribeReason::Forbidden);
                    let f = ServerFrame::Unsubscribed { channel, reason };
                    st.push_to(id, Lane::Control, f.to_text().into(), &mut fx);
                }
            }
            st.reap(self.clock.now(), &mut fx);
        }
        self.apply(fx);
        if dropped > 0 {
            tracing::debug!(
                dropped,
                ?which,
                "pm-realtime: subscriptions dropped after access was lost"
            );
        }
        dropped
    }

    /// Routes a batch of events from the log to their channels' subscribers. Returns the users
    /// with sessions here whom an event may have cost access (removed from an organization).
    fn dispatch(&self, events: &[Event]) -> Vec<UserId> {
        let mut recheck = Vec::new();
        let mut fx = Effects::default();
        let mut st = self.lock();
        let budget = self.config.max_queue_bytes;
        for event in events {
            let State { channels, sessions, .. } = &mut *st;
            let mut json: Option<Option<String>> = None;
            for channel in Channel::for_event(event) {
                let Some(cs) = channels.get_mut(&channel) else { continue };
                if cs.subscribers.is_empty() {
                    continue;
                }
                let Some(json) = json.get_or_insert_with(|| event_json(event)) else { continue };
                let frame = event_frame(channel, event.seq, json);
                for (id, sub) in cs.subscribers.iter_mut() {
                    if event.seq <= sub.deliver_after {
                        continue;
                    }
                    if let Some(buf) = &mut sub.replay {
                        buf.bytes += frame.len();
                        buf.frames.push((event.seq, frame.clone()));
                        if buf.bytes > budget {
                            if let Some(s) = sessions.get(id) {
                                s.queue.close(CloseCode::SLOW_CONSUMER);
                            }
                            fx.dead.push(*id);
                        }
                        continue;
                    }
                    if let Some(s) = sessions.get(id)
                        && !s.queue.push(Lane::Durable, frame.clone())
                    {
                        fx.dead.push(*id);
                    }
                }
            }
            st.tail_seq = st.tail_seq.max(event.seq);
            if event.kind == EventKind::MemberRemoved {
                let user = UserId(event.subject);
                if !recheck.contains(&user)
                    && st.sessions.values().any(|s| s.actor.user() == Some(user))
                {
                    recheck.push(user);
                }
            }
        }
        st.reap(self.clock.now(), &mut fx);
        drop(st);
        self.apply(fx);
        recheck
    }

    /// Handles a message from another instance.
    fn on_broker_message(&self, msg: BrokerMessage) {
        if msg.topic != SIGNAL_TOPIC {
            return; // other topics (collaborative documents) are not the hub's
        }
        let signal: Signal = match serde_json::from_slice(&msg.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, origin = %msg.origin, "pm-realtime: bad signal from another instance");
                return;
            }
        };
        let mut fx = Effects::default();
        let now = self.clock.now();
        {
            let mut st = self.lock();
            match signal {
                Signal::Presence { updates } => {
                    let expires = now + self.config.heartbeat_timeout;
                    for u in updates {
                        st.set_remote_presence(u.channel, u.user, msg.origin, u.status, expires);
                    }
                }
                Signal::Ephemeral { channel, user, kind, frame } => {
                    st.deliver_signal(channel, user, kind.slot(), &frame.into(), None);
                }
                Signal::Notification { user, frame } => {
                    st.deliver_durable(Channel::User(user), &frame.into(), &mut fx);
                }
            }
            st.reap(now, &mut fx);
        }
        // Remote updates are not re-published: `fx.presence` stays empty for them.
        fx.presence.clear();
        self.apply(fx);
    }

    fn sweep(&self) {
        let now = self.clock.now();
        let cfg = &self.config;
        let mut fx = Effects::default();
        {
            let mut st = self.lock();
            // 1. Sessions silent past the heartbeat timeout are dead.
            let timed_out: Vec<SessionId> = st
                .sessions
                .iter()
                .filter(|(_, s)| now - s.last_inbound > cfg.heartbeat_timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in &timed_out {
                if let Some(s) = st.sessions.get(id) {
                    s.queue.close(CloseCode::HEARTBEAT_TIMEOUT);
                }
            }
            st.remove_sessions(timed_out, now, &mut fx);
            // 1b. Sessions whose credential expired: the client re-authenticates.
            let expired: Vec<SessionId> =
                st.sessions.iter().filter(|(_, s)| s.expired(now)).map(|(id, _)| *id).collect();
            for id in &expired {
                if let Some(s) = st.sessions.get(id) {
                    s.queue.close(CloseCode::TOKEN_EXPIRED);
                }
            }
            st.remove_sessions(expired, now, &mut fx);
            // 2. Other instances' reports that were not refreshed expire.
            st.expire_remote_presence(now);
            // 3. Refresh this instance's presence for the others, well within their expiry.
            let refresh_every = cfg.heartbeat_timeout / 3;
            if st.last_refresh.is_none_or(|t| now - t >= refresh_every) {
                st.last_refresh = Some(now);
                for (channel, cs) in &st.channels {
                    for (user, m) in &cs.presence {
                        if let Some(status) = m.local_status() {
                            fx.presence.push(PresenceUpdate {
                                channel: *channel,
                                user: *user,
                                status: Some(status),
                            });
                        }
                    }
                }
            }
            // 4. Last-seen of connected users: one write per user, however many sessions.
            let mut touched = HashSet::new();
            for s in st.sessions.values_mut() {
                let Some(user) = s.actor.user() else { continue };
                if s.last_seen_saved.is_none_or(|t| now - t >= cfg.last_seen_interval) {
                    s.last_seen_saved = Some(now);
                    if touched.insert(user) {
                        fx.last_seen.push((user, now));
                    }
                }
            }
            st.reap(now, &mut fx);
        }
        self.apply(fx);
    }
}

/// Serializes an event once, for [`event_frame`] to splice into each channel's envelope.
fn event_json(event: &Event) -> Option<String> {
    serde_json::to_string(event)
        .inspect_err(|e| {
            tracing::error!(error = %e, seq = event.seq, "pm-realtime: an event failed to serialize");
        })
        .ok()
}

/// Builds an event frame by splicing the event's JSON into the envelope: an event is serialized
/// once, whatever the number of channels and sessions it fans out to.
fn event_frame(channel: Channel, seq: i64, json: &str) -> Frame {
    format!(r#"{{"type":"event","channel":"{channel}","seq":{seq},"event":{json}}}"#).into()
}

impl State {
    /// `Some((code, message))` when the session may not subscribe to `channel` now.
    fn can_subscribe(
        &self,
        id: SessionId,
        channel: Channel,
        cfg: &HubConfig,
    ) -> Option<(ErrorCode, String)> {
        let s = self.sessions.get(&id)?;
        if s.channels.contains(&channel) {
            return Some((
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel}"),
            ));
        }
        if s.channels.len() >= cfg.max_subscriptions {
            return Some((
                ErrorCode::TooManySubscriptions,
                format!("at most {} subscriptions per session", cfg.max_subscriptions),
            ));
        }
        None
    }

    fn push_to(&mut self, id: SessionId, lane: Lane, frame: Frame, fx: &mut Effects) {
        if let Some(s) = self.sessions.get(&id)
            && !s.queue.push(lane, frame)
        {
            fx.dead.push(id);
        }
    }

    /// Sends a durable, non-log frame (a notification) to a channel's local subscribers.
    fn deliver_durable(&mut self, channel: Channel, frame: &Frame, fx: &mut Effects) {
        let Some(cs) = self.channels.get(&channel) else { return };
        for id in cs.subscribers.keys() {
            if let Some(s) = self.sessions.get(id)
                && !s.queue.push(Lane::Durable, frame.clone())
            {
                fx.dead.push(*id);
            }
        }
    }

    /// Puts a signal in the slots of a channel's local subscribers (except `skip`, its sender).
    fn deliver_signal(
        &self,
        channel: Channel,
        user: UserId,
        kind: SignalKind,
        frame: &Frame,
        skip: Option<SessionId>,
    ) {
        let Some(cs) = self.channels.get(&channel) else { return };
        let key = SlotKey { channel, user: Some(user), kind };
        for id in cs.subscribers.keys().filter(|id| Some(**id) != skip) {
            if let Some(s) = self.sessions.get(id) {
                s.queue.push_signal(key, frame.clone());
            }
        }
    }

    /// Sends the channel's current member list to a session that just subscribed.
    fn send_presence_snapshot(&self, channel: Channel, id: SessionId) {
        let Some(cs) = self.channels.get(&channel) else { return };
        let Some(s) = self.sessions.get(&id) else { return };
        let frame = ServerFrame::Presence {
            channel,
            joined: cs.presence_list(),
            left: Vec::new(),
            changed: Vec::new(),
        };
        let key = SlotKey { channel, user: None, kind: SignalKind::PresenceSnapshot };
        s.queue.push_signal(key, frame.to_text().into());
    }

    /// Sets (or with `None` removes) a local session's presence, telling the channel about any
    /// change of the user's overall status and other instances about this instance's.
    fn set_local_presence(
        &mut self,
        channel: Channel,
        id: SessionId,
        user: UserId,
        status: Option<PresenceStatus>,
        fx: &mut Effects,
    ) {
        let cs = self.channels.entry(channel).or_default();
        let member = cs.presence.entry(user).or_default();
        let (before, local_before) = (member.status(), member.local_status());
        match status {
            Some(s) => {
                member.local.insert(id, s);
            }
            None => {
                member.local.remove(&id);
            }
        }
        let (after, local_after) = (member.status(), member.local_status());
        if member.local.is_empty() && member.remote.is_empty() {
            cs.presence.remove(&user);
        }
        if local_before != local_after {
            fx.presence.push(PresenceUpdate { channel, user, status: local_after });
        }
        // A session that joins gets the full list instead of its own join.
        let skip = (before.is_none() && status.is_some()).then_some(id);
        self.announce(channel, user, before, after, skip);
    }

    fn set_remote_presence(
        &mut self,
        channel: Channel,
        user: UserId,
        instance: InstanceId,
        status: Option<PresenceStatus>,
        expires: OffsetDateTime,
    ) {
        let cs = self.channels.entry(channel).or_default();
        let member = cs.presence.entry(user).or_default();
        let before = member.status();
        match status {
            Some(s) => {
                member.remote.insert(instance, (s, expires));
            }
            None => {
                member.remote.remove(&instance);
            }
        }
        let after = member.status();
        if member.local.is_empty() && member.remote.is_empty() {
            cs.presence.remove(&user);
        }
        if cs.is_empty() {
            self.channels.remove(&channel);
        }
        self.announce(channel, user, before, after, None);
    }

    fn expire_remote_presence(&mut self, now: OffsetDateTime) {
        let mut expired = Vec::new();
        for (channel, cs) in &self.channels {
            for (user, m) in &cs.presence {
                for (instance, (_, expires)) in &m.remote {
                    if *expires <= now {
                        expired.push((*channel, *user, *instance));
                    }
                }
            }
        }
        for (channel, user, instance) in expired {
            self.set_remote_presence(channel, user, instance, None, now);
        }
    }

    /// Sends a presence diff for one user to a channel's local subscribers (coalesced per user).
    fn announce(
        &self,
        channel: Channel,
        user: UserId,
        before: Option<PresenceStatus>,
        after: Option<PresenceStatus>,
        skip: Option<SessionId>,
    ) {
        let entry = |status| vec![PresenceEntry { user, status }];
        let (joined, left, changed) = match (before, after) {
            (None, Some(s)) => (entry(s), vec![], vec![]),
            (Some(_), None) => (vec![], vec![user], vec![]),
            (Some(a), Some(b)) if a != b => (vec![], vec![], entry(b)),
            _ => return,
        };
        let frame: Frame =
            ServerFrame::Presence { channel, joined, left, changed }.to_text().into();
        let Some(cs) = self.channels.get(&channel) else { return };
        let key = SlotKey { channel, user: Some(user), kind: SignalKind::Presence };
        for id in cs.subscribers.keys().filter(|id| Some(**id) != skip) {
            if let Some(s) = self.sessions.get(id) {
                s.queue.push_signal(key, frame.clone());
            }
        }
    }

    /// Ends one subscription (and the session's presence there); `false` if there was none.
    fn drop_subscription(&mut self, id: SessionId, channel: Channel, fx: &mut Effects) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else { return false };
        if !s.channels.remove(&channel) {
            return false;
        }
        let user = s.actor.user();
        if let Some(cs) = self.channels.get_mut(&channel) {
            cs.subscribers.remove(&id);
        }
        if let Some(user) = user {
            self.set_local_presence(channel, id, user, None, fx);
        }
        if self.channels.get(&channel).is_some_and(ChannelState::is_empty) {
            self.channels.remove(&channel);
        }
        true
    }

    /// Removes sessions (already closed by the caller) with all their subscriptions; records
    /// their users' last-seen time.
    fn remove_sessions(&mut self, ids: Vec<SessionId>, now: OffsetDateTime, fx: &mut Effects) {
        let mut touched = HashSet::new();
        for id in ids {
            let Some(s) = self.sessions.get(&id) else { continue };
            let channels: Vec<Channel> = s.channels.iter().copied().collect();
            let user = s.actor.user();
            for channel in channels {
                self.drop_subscription(id, channel, fx);
            }
            self.sessions.remove(&id);
            if let Some(user) = user
                && touched.insert(user)
            {
                fx.last_seen.push((user, now));
            }
        }
    }

    /// Removes sessions that overflowed while frames were pushed (their removal may push
    /// presence diffs that overflow others: repeat until none is left).
    fn reap(&mut self, now: OffsetDateTime, fx: &mut Effects) {
        while !fx.dead.is_empty() {
            let dead = std::mem::take(&mut fx.dead);
            for id in &dead {
                if let Some(s) = self.sessions.get(id) {
                    s.queue.close(CloseCode::SLOW_CONSUMER);
                }
            }
            self.remove_sessions(dead, now, fx);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks. Each holds a `Weak` to the hub so the hub can go away.

async fn run_tailer(inner: Weak<Inner>, start: i64) {
    let (events, batch) = match inner.upgrade() {
        Some(i) => (i.stores.events.clone(), i.config.read_batch),
        None => return,
    };
    let mut tailer = Tailer::new(events, start);
    loop {
        match tailer.next_batch(batch).await {
            Ok(events) => match inner.upgrade() {
                Some(i) => {
                    for user in i.dispatch(&events) {
                        tokio::spawn(recheck_removed_member(inner.clone(), user));
                    }
                }
                None => return,
            },
            Err(e) => {
                tracing::warn!(error = %e, "pm-realtime: reading the event log failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_broker(inner: Weak<Inner>, mut rx: tokio::sync::broadcast::Receiver<BrokerMessage>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(msg) => match inner.upgrade() {
                Some(i) => i.on_broker_message(msg),
                None => return,
            },
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "pm-realtime: fell behind the broker; signals lost");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Re-checks a removed member's subscriptions now and once more after the configured delay.
async fn recheck_removed_member(inner: Weak<Inner>, user: UserId) {
    let Some(delay) = inner.upgrade().map(|i| i.config.reauthorize_delay) else { return };
    if let Some(i) = inner.upgrade() {
        i.reauthorize(Recheck::User(user)).await;
    }
    tokio::time::sleep(delay).await;
    if let Some(i) = inner.upgrade() {
        i.reauthorize(Recheck::User(user)).await;
    }
}

async fn run_sweeper(inner: Weak<Inner>) {
    let mut last_pass = tokio::time::Instant::now();
    loop {
        let (every, reauthorize_every) = match inner.upgrade() {
            Some(i) => (i.config.sweep_interval, i.config.reauthorize_every),
            None => return,
        };
        tokio::time::sleep(every).await;
        match inner.upgrade() {
            Some(i) => i.sweep(),
            None => return,
        }
        if reauthorize_every.is_some_and(|e| last_pass.elapsed() >= e) {
            last_pass = tokio::time::Instant::now();
            // In its own task: a pass awaits the authorizer and must not delay sweeps.
            let weak = inner.clone();
            tokio::spawn(async move {
                let Some(i) = weak.upgrade() else { return };
                if i.reauthorizing.swap(true, Ordering::AcqRel) {
                    return; // the previous pass is still running
                }
                i.reauthorize(Recheck::All).await;
                i.reauthorizing.store(false, Ordering::Release);
            });
        }
    }
}

async fn run_effects(
    mut rx: mpsc::Receiver<Effect>,
    broker: Arc<dyn Broker>,
    store: Arc<dyn PresenceStore>,
) {
    // An effect taken from the queue while gathering last-seen batches, handled next.
    let mut next: Option<Effect> = None;
    loop {
        let effect = match next.take() {
            Some(e) => e,
            None => match rx.recv().await {
                Some(e) => e,
                None => return,
            },
        };
        match effect {
            Effect::Publish(payload) => {
                if let Err(e) = broker.publish(SIGNAL_TOPIC, payload).await {
                    tracing::warn!(error = %e, "pm-realtime: publishing a signal failed");
                }
            }
            Effect::TouchLastSeen(mut seen) => {
                // Sessions ending one by one (a mass disconnect) queue one batch each: merge
                // what is already waiting into one write.
                while let Ok(e) = rx.try_recv() {
                    match e {
                        Effect::TouchLastSeen(more) => seen.extend(more),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                if let Err(e) = store.touch_last_seen_many(&seen).await {
                    tracing::warn!(error = %e, "pm-realtime: recording last-seen failed");
                }
            }
            Effect::Done(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

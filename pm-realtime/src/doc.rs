//! Collaborative editing of task descriptions: one Yjs document per task, spoken over the Yjs
//! sync + awareness protocol (y-websocket's wire format), so unmodified Yjs clients interoperate.
//!
//! A transport (pm-server's WebSocket glue) connects one [`DocConnection`] per socket through
//! [`Collab::connect`], feeds it every binary frame and writes what [`DocOutbound`] yields:
//!
//! ```no_run
//! # async fn demo(collab: pm_realtime::doc::Collab, actor: pm_core::event::Actor,
//! #               task: pm_core::id::TaskId) -> pm_realtime::Result<()> {
//! use pm_realtime::doc::DocOutgoing;
//! let (connection, mut outbound) = collab.connect(actor, task).await?;
//! // Concurrently: every inbound binary frame goes to `connection.receive(bytes).await`, and
//! // this loop writes what the document sends (one y-protocol message per binary frame):
//! while let Some(out) = outbound.recv().await {
//!     match out {
//!         DocOutgoing::Message(bytes) => { /* socket.send(Binary(bytes)) */ }
//!         DocOutgoing::Close(code) => { /* socket.close(code.code, code.reason) */ break }
//!     }
//! }
//! drop(connection); // leaves the document (its awareness states are removed)
//! # Ok(()) }
//! ```
//!
//! Invariants:
//!
//! - **One actor per open document.** The [`Collab`] registry starts a Tokio task for a task's
//!   document on its first connection and stops it after the last one leaves, once it has
//!   flushed (compaction and write-back). A document reopened while its previous actor is still
//!   flushing waits for it, so two actors of one instance never hold the same document.
//! - **The text lives in the root `YText` named [`TEXT_NAME`]** (`"description"`): Yjs clients
//!   bind `ydoc.getText('description')`. A document without stored state is seeded from the
//!   task's description once ([`DocStore::init_doc`]), so two instances opening it together do
//!   not both insert the text.
//! - **Every accepted update is logged before it is broadcast** ([`DocStore`]). One whose
//!   logging fails is still shared, and the whole state is appended on a retry with backoff
//!   (then other instances are told to reload): a store hiccup never strands an update in one
//!   instance's memory until close. The log is compacted into a snapshot every
//!   [`CollabConfig::compact_every`] updates and when the document closes. Compaction rebuilds the snapshot from the store (not from memory), so
//!   updates written by other instances are never dropped.
//! - **Write-back**: [`CollabConfig::write_back_debounce`] after the last change (and on close),
//!   the text is written into the task description through [`Pm::update_task`] as the last
//!   editing user (or the system), retried on version conflicts, skipped when unchanged.
//! - **External changes win**: a description changed outside the document (REST) while it is
//!   open — recognised in the event log, since write-backs are recorded first — is applied to the
//!   `YText` as a minimal diff by exactly one instance ([`DocStore::claim_external_change`]);
//!   concurrent collaborative edits inside the changed range are replaced by it. A description
//!   the document already knows (its seed, a write-back, the last applied change) is never
//!   applied again, even at a newer task version: a document opened on one instance while
//!   another's edits await write-back is *ahead* of the description, not behind it.
//! - **Across instances**: accepted updates and awareness changes are published on the broker
//!   topic `collab:{task_id}` (see [`topic`]); other instances apply them to their actor of the
//!   document, if open. An update too large for the broker (PostgreSQL `NOTIFY`) is replaced by
//!   a "reload" notice — it is already in the shared log. Broker messages may be lost: every open
//!   document also re-reads the store every [`CollabConfig::reload_interval`].
//! - **Bounded queues**: a connection's outbound queue holds
//!   [`CollabConfig::outbound_queue`] messages; a connection over it is closed with
//!   [`CloseCode::SLOW_CONSUMER`]. A malformed message closes only its connection
//!   ([`CLOSE_MALFORMED`]).
//! - **Authorization**: connecting needs task read, editing needs task update (checked once at
//!   connect through pm-core's `Authorizer`); updates from a read-only connection are ignored
//!   (logged), its awareness (cursors, presence) is still shared.

mod actor;
mod text;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use pm_core::Pm;
use pm_core::authz::{Action, Authorizer, Decision};
use pm_core::event::{Actor, EventKind, Tailer};
use pm_core::id::TaskId;
use pm_core::service::task_resource;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::{Broker, BrokerMessage};
use crate::protocol::CloseCode;
use crate::store::DocStore;
use crate::{Error, Result};

pub use text::apply_text_diff;

/// The name of the root `YText` holding a task's description (`ydoc.getText('description')`).
pub const TEXT_NAME: &str = "description";

/// Closes a connection that sent bytes that are not a valid y-protocol message (1007: invalid
/// payload data).
pub const CLOSE_MALFORMED: CloseCode =
    CloseCode { code: 1007, reason: "malformed y-protocol message" };
/// Closes a connection that sent a message over [`CollabConfig::max_message_bytes`].
pub const CLOSE_TOO_LARGE: CloseCode = CloseCode { code: 1009, reason: "message too large" };
/// Closes every connection of a document that could not be opened (storage failure, the task
/// vanished).
pub const CLOSE_UNAVAILABLE: CloseCode = CloseCode { code: 1011, reason: "document unavailable" };

/// The broker topic of a task's document.
pub fn topic(task: TaskId) -> String {
    format!("collab:{}", task.0)
}

/// Limits, intervals and timeouts of collaborative documents. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct CollabConfig {
    /// Largest accepted y-protocol message, in bytes. The transport should cap its message size
    /// at this too.
    pub max_message_bytes: usize,
    /// Messages queued per connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Commands (inbound messages, joins, broker messages) queued per document; a connection
    /// sending faster waits.
    pub inbound_queue: usize,
    /// Compact the update log after this many logged updates (and on close).
    pub compact_every: u32,
    /// Write the text back into the task description this long after the last change.
    pub write_back_debounce: Duration,
    /// Re-read an open document's store this often (repairs lost broker messages).
    pub reload_interval: Duration,
    /// How long write-back records are kept (they only need to outlive event delivery).
    pub write_back_record_ttl: Duration,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            outbound_queue: 256,
            inbound_queue: 256,
            compact_every: 100,
            write_back_debounce: Duration::from_secs(2),
            reload_interval: Duration::from_secs(30),
            write_back_record_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a connection may do with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocAccess {
    /// Read the document and share awareness; updates are ignored.
    ReadOnly,
    /// Read and edit.
    ReadWrite,
}

/// Something for the transport to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocOutgoing {
    /// One y-protocol message: send it as one binary frame.
    Message(Bytes),
    /// Close the socket with this code; nothing follows.
    Close(CloseCode),
}

/// The outbound side of a connection.
#[derive(Debug)]
pub struct DocOutbound {
    rx: mpsc::Receiver<Bytes>,
    close: oneshot::Receiver<CloseCode>,
    close_seen: bool,
    closed: bool,
}

impl DocOutbound {
    /// The next thing to write; `None` once the document has stopped (after a close, or when
    /// the connection's handle was dropped). A close overtakes queued messages: a slow consumer
    /// is not made to drain its backlog first.
    pub async fn recv(&mut self) -> Option<DocOutgoing> {
        loop {
            if self.closed {
                return None;
            }
            tokio::select! {
                biased;
                code = &mut self.close, if !self.close_seen => {
                    self.close_seen = true;
                    if let Ok(code) = code {
                        self.closed = true;
                        return Some(DocOutgoing::Close(code));
                    }
                }
                msg = self.rx.recv() => return msg.map(DocOutgoing::Message),
            }
        }
    }

    /// What is ready right now, without waiting.
    pub fn try_recv(&mut self) -> Option<DocOutgoing> {
        if self.closed {
            return None;
        }
        if !self.close_seen {
            match self.close.try_recv() {
                Ok(code) => {
                    self.closed = true;
                    self.close_seen = true;
                    return Some(DocOutgoing::Close(code));
                }
                Err(oneshot::error::TryRecvError::Closed) => self.close_seen = true,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.rx.try_recv().ok().map(DocOutgoing::Message)
    }
}

/// Identifies a connection within a [`Collab`].
pub(crate) type ConnId = u64;

/// A connection to one document. Dropping it leaves the document.
pub struct DocConnection {
    id: ConnId,
    task: TaskId,
    /// The actor generation this connection joined (a later actor of the same task has its own
    /// count of connections).
    generation: u64,
    access: DocAccess,
    tx: mpsc::Sender<actor::Command>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DocConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocConnection")
            .field("id", &self.id)
            .field("task", &self.task)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl DocConnection {
    /// The document's task.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// What this connection may do.
    pub fn access(&self) -> DocAccess {
        self.access
    }

    /// Hands one inbound binary frame (one or more y-protocol messages) to the document. Waits
    /// while the document's queue is full, which is the backpressure a fast sender gets.
    pub async fn receive(&self, message: Bytes) {
        let _ = self.tx.send(actor::Command::Message { conn: self.id, bytes: message }).await;
    }
}

impl Drop for DocConnection {
    fn drop(&mut self) {
        let last = self.inner.release(self.task, self.generation);
        send_detached(&self.tx, actor::Command::Leave { conn: self.id, last });
    }
}

/// Sends a command without awaiting: when the queue is full, a task finishes the send (the leave
/// must follow the connection's last message, so it cannot skip the queue).
fn send_detached(tx: &mpsc::Sender<actor::Command>, cmd: actor::Command) {
    match tx.try_send(cmd) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(cmd)) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

/// The registry of open documents of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Collab {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Collab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collab")
            .field("open_documents", &self.open_documents())
            .finish_non_exhaustive()
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

/// State shared by the registry, its connections and its actors.
pub(crate) struct Inner {
    pub(crate) pm: Pm,
    pub(crate) authz: Arc<dyn Authorizer>,
    pub(crate) store: Arc<dyn DocStore>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) config: CollabConfig,
    docs: Mutex<Docs>,
    next_conn: AtomicU64,
    next_generation: AtomicU64,
}

#[derive(Default)]
struct Docs {
    open: HashMap<TaskId, Slot>,
    /// Actors that lost their last connection and are flushing: a reopened document waits.
    closing: HashMap<TaskId, (u64, watch::Receiver<()>)>,
}

struct Slot {
    tx: mpsc::Sender<actor::Command>,
    connections: usize,
    generation: u64,
    done: watch::Receiver<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Docs> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command queue of a task's open document, if any.
    fn sender(&self, task: TaskId) -> Option<mpsc::Sender<actor::Command>> {
        self.lock().open.get(&task).map(|s| s.tx.clone())
    }

    /// Counts a connection out; `true` when it was the document's last (the slot is removed, so
    /// the next connection starts a new actor, which waits for this one to finish).
    fn release(&self, task: TaskId, generation: u64) -> bool {
        let mut docs = self.lock();
        let Some(slot) = docs.open.get_mut(&task).filter(|s| s.generation == generation) else {
            return false; // its actor already stopped (shutdown); nothing to count
        };
        slot.connections -= 1;
        if slot.connections > 0 {
            return false;
        }
        if let Some(slot) = docs.open.remove(&task) {
            docs.closing.insert(task, (slot.generation, slot.done));
        }
        true
    }

    /// Called by an actor as it exits.
    pub(crate) fn finished(&self, task: TaskId, generation: u64) {
        let mut docs = self.lock();
        if docs.closing.get(&task).is_some_and(|(g, _)| *g == generation) {
            docs.closing.remove(&task);
        }
        // An actor that stops on its own (shutdown) leaves no slot behind.
        if docs.open.get(&task).is_some_and(|s| s.generation == generation) {
            docs.open.remove(&task);
        }
    }
}

impl Collab {
    /// Starts the registry: a broker listener routing `collab:` topics to open documents, and a
    /// tailer of the event log (from its end at start) noticing description changes made outside
    /// the documents. `pm` performs write-backs (authorized as the editing user); `authz` checks
    /// connections. Needs a Tokio runtime.
    pub fn new(
        pm: Pm,
        authz: Arc<dyn Authorizer>,
        store: Arc<dyn DocStore>,
        broker: Arc<dyn Broker>,
        config: CollabConfig,
    ) -> Self {
        let broker_rx = broker.subscribe();
        let inner = Arc::new(Inner {
            pm,
            authz,
            store,
            broker,
            config,
            docs: Mutex::new(Docs::default()),
            next_conn: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
        });
        let tasks = vec![
            tokio::spawn(run_broker(Arc::downgrade(&inner), broker_rx)).abort_handle(),
            tokio::spawn(run_tailer(Arc::downgrade(&inner))).abort_handle(),
        ];
        Self { inner, _tasks: Arc::new(Tasks(tasks)) }
    }

    /// The configuration.
    pub fn config(&self) -> &CollabConfig {
        &self.inner.config
    }

    /// Documents with an actor (open, or flushing after their last connection left).
    pub fn open_documents(&self) -> usize {
        let docs = self.inner.lock();
        docs.open.len() + docs.closing.len()
    }

    /// Connects `actor` to the task's document, opening it if needed. `NotFound` when the task
    /// does not exist or the actor may not read it; read-only when it may not update it.
    pub async fn connect(
        &self,
        actor: Actor,
        task: TaskId,
    ) -> Result<(DocConnection, DocOutbound)> {
        self.connect_as(actor, task, DocAccess::ReadWrite).await
    }

    /// Like [`Collab::connect`], with at most `limit` access whatever the authorizer allows
    /// (e.g. read-only for a read-scoped credential).
    pub async fn connect_as(
        &self,
        actor: Actor,
        task: TaskId,
        limit: DocAccess,
    ) -> Result<(DocConnection, DocOutbound)> {
        let access = match (self.authorize(&actor, task).await?, limit) {
            (DocAccess::ReadWrite, DocAccess::ReadWrite) => DocAccess::ReadWrite,
            _ => DocAccess::ReadOnly,
        };
        let cfg = &self.inner.config;
        let (out_tx, out_rx) = mpsc::channel(cfg.outbound_queue.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, generation) = {
            let mut docs = self.inner.lock();
            if let Some(slot) = docs.open.get_mut(&task) {
                slot.connections += 1;
                (slot.tx.clone(), slot.generation)
            } else {
                let (tx, rx) = mpsc::channel(cfg.inbound_queue.max(1));
                let (done_tx, done_rx) = watch::channel(());
                let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
                let previous = docs.closing.get(&task).map(|(_, rx)| rx.clone());
                docs.open.insert(
                    task,
                    Slot { tx: tx.clone(), connections: 1, generation, done: done_rx },
                );
                let doc = actor::DocActor::new(self.inner.clone(), task, generation);
                tokio::spawn(doc.run(rx, previous, done_tx));
                (tx, generation)
            }
        };
        let connection = DocConnection {
            id,
            task,
            generation,
            access,
            tx: tx.clone(),
            inner: self.inner.clone(),
        };
        let join = actor::Command::Join {
            conn: id,
            user: actor.user(),
            access,
            out: out_tx,
            close: close_tx,
        };
        // The join is queued before any message the caller can send through `connection`.
        let _ = tx.send(join).await;
        let outbound =
            DocOutbound { rx: out_rx, close: close_rx, close_seen: false, closed: false };
        Ok((connection, outbound))
    }

    /// Closes every connection with [`CloseCode::GOING_AWAY`] and waits (up to `timeout`) for
    /// every document to flush (compaction, write-back).
    pub async fn shutdown(&self, timeout: Duration) {
        let (senders, waits): (Vec<_>, Vec<_>) = {
            let docs = self.inner.lock();
            let senders = docs.open.values().map(|s| s.tx.clone()).collect();
            let waits = docs
                .open
                .values()
                .map(|s| s.done.clone())
                .chain(docs.closing.values().map(|(_, rx)| rx.clone()))
                .collect();
            (senders, waits)
        };
        for tx in senders {
            let _ = tx.send(actor::Command::Shutdown).await;
        }
        let all = async {
            for mut rx in waits {
                let _ = rx.changed().await;
            }
        };
        let _ = tokio::time::timeout(timeout, all).await;
    }

    /// What `actor` may do with the task's document (without connecting): `NotFound` when the
    /// task does not exist or the actor may not read it. Transports call it to refuse before
    /// upgrading a connection.
    pub async fn authorize(&self, actor: &Actor, task: TaskId) -> Result<DocAccess> {
        let stores = self.inner.pm.stores();
        let t = stores.tasks.get_task(task).await?;
        let watchers = stores.tasks.list_watchers(task).await?;
        let resource = task_resource(&t).with_watchers(watchers.into_iter().map(|w| w.user_id));
        let authz = &self.inner.authz;
        if !matches!(authz.check(actor, Action::Read, &resource).await?, Decision::Allow) {
            // Like pm-core's reads: a task the caller may not see does not exist for them.
            return Err(Error::not_found("task"));
        }
        Ok(match authz.check(actor, Action::Update, &resource).await? {
            Decision::Allow => DocAccess::ReadWrite,
            Decision::Deny(_) => DocAccess::ReadOnly,
        })
    }
}

/// Routes other instances' document messages to this instance's open documents. A document not
/// open here needs nothing: the update is in the shared store.
async fn run_broker(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<BrokerMessage>,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Open documents repair from the store on their next reload.
                tracing::warn!(missed = n, "pm-realtime: collab broker listener lagged");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(task) = wire::task_of_topic(&msg.topic) else { continue };
        let Some(inner) = inner.upgrade() else { return };
        // Never block the listener on one busy document; its reload repairs the gap.
        if let Some(tx) = inner.sender(task)
            && let Err(mpsc::error::TrySendError::Full(_)) =
                tx.try_send(actor::Command::Remote { payload: msg.payload })
        {
            tracing::warn!(%task, "pm-realtime: document queue full, dropped a remote update");
        }
    }
}

/// Tails the event log for description changes of open documents.
async fn run_tailer(inner: std::sync::Weak<Inner>) {
    let mut tailer = loop {
        let Some(strong) = inner.upgrade() else { return };
        let log = strong.pm.stores().events.clone();
        drop(strong);
        match log.latest_seq().await {
            Ok(start) => break Tailer::new(log, start),
            Err(e) => {
                tracing::warn!(error = %e, "pm-realtime: collab tailer cannot read the log's end");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let batch = match tailer.next_batch(500).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pm-realtime: collab tailer failed to read the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        for event in batch {
            if event.kind != EventKind::TaskUpdated {
                continue;
            }
            let Some(task) = event.task_id else { continue };
            let Some(description) =
                event.payload.pointer("/changes/description/to").and_then(|v| v.as_str())
            else {
                continue;
            };
            let Some(version) = event.payload.pointer("/task/version").and_then(|v| v.as_i64())
            else {
                continue;
            };
            if let Some(tx) = inner.sender(task) {
                let cmd = actor::Command::External { version, description: description.to_owned() };
                let _ = tx.send(cmd).await;
            }
        }
    }
}

//! The actor owning one open document: its yrs `Doc` and awareness, its connections, its update
//! log in the store, its write-back and its share of cross-instance traffic.
//!
//! Everything about a document happens in this one task, in the order commands arrive, so the
//! document needs no lock and a connection's messages are handled in the order it sent them.
//! Store and broker calls are awaited inline: while the actor waits, its queue fills and senders
//! wait (backpressure), and an update is always logged before it is broadcast or published.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pm_core::event::Origin;
use pm_core::id::{TaskId, UserId};
use pm_core::model::{Markdown, TaskPatch};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, Update};

use super::{
    CLOSE_MALFORMED, CLOSE_TOO_LARGE, CLOSE_UNAVAILABLE, ConnId, DocAccess, Inner, TEXT_NAME, text,
    topic, wire,
};
use crate::protocol::CloseCode;
use crate::store::StoredDoc;
use crate::{Error, Result};

/// How often a write-back retries after version conflicts before giving up until the next change.
const WRITE_BACK_ATTEMPTS: usize = 5;
/// First wait before persisting updates whose logging failed; doubles up to the maximum.
const LOG_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between attempts to persist unlogged updates.
const LOG_RETRY_MAX: Duration = Duration::from_secs(30);

/// What an actor is asked to do.
pub(crate) enum Command {
    Join {
        conn: ConnId,
        user: Option<UserId>,
        access: DocAccess,
        out: mpsc::Sender<Bytes>,
        close: oneshot::Sender<CloseCode>,
    },
    Message {
        conn: ConnId,
        bytes: Bytes,
    },
    /// `last`: the registry removed the document; flush and stop.
    Leave {
        conn: ConnId,
        last: bool,
    },
    /// A broker payload from another instance.
    Remote {
        payload: Bytes,
    },
    /// The task's description changed in the event log (at task `version`).
    External {
        version: i64,
        description: String,
    },
    Shutdown,
}

struct Connection {
    user: Option<UserId>,
    access: DocAccess,
    out: mpsc::Sender<Bytes>,
    close: Option<oneshot::Sender<CloseCode>>,
    /// Awareness client ids this connection announced (removed when it leaves).
    clients: HashSet<ClientID>,
    warned_read_only: bool,
}

pub(crate) struct DocActor {
    inner: Arc<Inner>,
    task: TaskId,
    generation: u64,
    awareness: Awareness,
    text: TextRef,
    connections: HashMap<ConnId, Connection>,
    /// Connections to close (slow, malformed) and their codes; closed by `reap` after the
    /// current command, which keeps closing (and its broadcasts) free of recursion.
    to_close: Vec<ConnId>,
    close_codes: HashMap<ConnId, CloseCode>,
    /// Updates logged since the last compaction.
    logged_since_compaction: u32,
    /// An update could not be logged: the whole in-memory state is appended at `log_retry_at`
    /// (and by the flush), after which other instances are told to reload.
    unlogged: bool,
    /// When to retry persisting unlogged updates, and the wait after that attempt fails.
    log_retry_at: Option<Instant>,
    log_retry_backoff: Duration,
    /// When the text is due to be written back.
    write_back_at: Option<Instant>,
    /// The text the task description is known to hold.
    synced_text: String,
    /// Who made the latest change (the write-back is attributed to them).
    editor: Option<UserId>,
    opened: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl DocActor {
    pub(crate) fn new(inner: Arc<Inner>, task: TaskId, generation: u64) -> Self {
        let doc = Doc::new();
        let text = doc.get_or_insert_text(TEXT_NAME);
        Self {
            inner,
            task,
            generation,
            awareness: Awareness::new(doc),
            text,
            connections: HashMap::new(),
            to_close: Vec::new(),
            close_codes: HashMap::new(),
            logged_since_compaction: 0,
            unlogged: false,
            log_retry_at: None,
            log_retry_backoff: LOG_RETRY_MIN,
            write_back_at: None,
            synced_text: String::new(),
            editor: None,
            opened: false,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        previous: Option<watch::Receiver<()>>,
        done: watch::Sender<()>,
    ) {
        if let Some(mut previous) = previous {
            // The previous actor of this document is flushing; its sender drops when it is done.
            let _ = previous.changed().await;
        }
        match self.open().await {
            Ok(()) => self.opened = true,
            Err(e) => {
                tracing::error!(task = %self.task, error = %e, "pm-realtime: opening a document failed");
            }
        }
        let mut reload = tokio::time::interval(self.inner.config.reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload.tick().await; // the first tick is immediate; the document was just loaded
        loop {
            let due = self.write_back_at;
            let retry = self.log_retry_at;
            let flow = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        let flow = self.handle(cmd).await;
                        self.reap().await;
                        flow
                    }
                    None => Flow::Stop,
                },
                _ = sleep_until(due), if due.is_some() => {
                    self.write_back().await;
                    Flow::Continue
                }
                _ = sleep_until(retry), if retry.is_some() => {
                    self.persist_unlogged().await;
                    Flow::Continue
                }
                _ = reload.tick(), if self.opened => {
                    self.sync_with_store(false).await;
                    Flow::Continue
                }
            };
            if matches!(flow, Flow::Stop) {
                break;
            }
        }
        for (_, c) in self.connections.drain() {
            if let Some(close) = c.close {
                let _ = close.send(CloseCode::GOING_AWAY);
            }
        }
        if self.opened {
            self.flush().await;
        }
        self.inner.finished(self.task, self.generation);
        drop(done);
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Join { conn, user, access, out, close } => {
                let mut c = Connection {
                    user,
                    access,
                    out,
                    close: Some(close),
                    clients: HashSet::new(),
                    warned_read_only: false,
                };
                if !self.opened {
                    if let Some(close) = c.close.take() {
                        let _ = close.send(CLOSE_UNAVAILABLE);
                    }
                    return Flow::Continue;
                }
                // As y-websocket's server: sync step 1, then the awareness states, each in its
                // own frame (the client reads one message per frame).
                let sv = self.awareness.doc().transact().state_vector();
                let step1 = Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1();
                let mut ok = c.out.try_send(step1.into()).is_ok();
                if let Ok(update) = self.awareness.update()
                    && !update.clients.is_empty()
                {
                    let msg = Message::Awareness(update).encode_v1();
                    ok &= c.out.try_send(msg.into()).is_ok();
                }
                self.connections.insert(conn, c);
                if !ok {
                    self.close(conn, CloseCode::SLOW_CONSUMER);
                }
            }
            Command::Message { conn, bytes } => self.on_message(conn, &bytes).await,
            Command::Leave { conn, last } => {
                self.leave(conn).await;
                if last {
                    return Flow::Stop;
                }
            }
            Command::Remote { payload } => {
                if self.opened {
                    self.on_remote(&payload).await;
                }
            }
            Command::External { version, description } => {
                if self.opened {
                    self.on_external(version, &description).await;
                }
            }
            Command::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    /// Loads the stored document (seeding it from the description the first time) and reconciles
    /// it with the task's current description.
    async fn open(&mut self) -> Result<()> {
        let task = self.inner.pm.stores().tasks.get_task(self.task).await?;
        let description = task.description.as_str().to_owned();
        let mut stored = self.inner.store.load_doc(self.task).await?;
        if stored.is_empty() {
            let seed = Doc::new();
            let seed_text = seed.get_or_insert_text(TEXT_NAME);
            let state = {
                let mut txn = seed.transact_mut();
                seed_text.insert(&mut txn, 0, &description);
                drop(txn);
                seed.transact().encode_state_as_update_v1(&StateVector::default())
            };
            if self.inner.store.init_doc(self.task, &state, &digest(&description), now()).await? {
                stored = StoredDoc { snapshot: None, snapshot_seq: 0, updates: vec![(1, state)] };
            } else {
                // Another instance seeded it first: use theirs.
                stored = self.inner.store.load_doc(self.task).await?;
            }
        }
        self.apply_stored(&stored)?;
        self.logged_since_compaction = u32::try_from(stored.updates.len()).unwrap_or(u32::MAX);
        self.synced_text = description.clone();
        if self.text() != description {
            // Either the description changed while the document was closed (apply it), or the
            // document is ahead of it: edits another instance has not written back yet (its
            // debounce), or a lost write-back. The store's records tell which: a text the
            // document knows (its seed, a write-back, the last claimed change) is never claimed,
            // whatever the task's version says (it also moves for other fields).
            if self
                .inner
                .store
                .claim_external_change(self.task, task.version, &digest(&description), now())
                .await?
            {
                tracing::info!(task = %self.task, version = task.version, "pm-realtime: applying a description changed while the document was closed");
                self.apply_external(&description).await;
            } else {
                self.schedule_write_back();
            }
        }
        Ok(())
    }

    fn apply_stored(&mut self, stored: &StoredDoc) -> Result<()> {
        let doc = self.awareness.doc();
        let mut txn = doc.transact_mut();
        for bytes in stored.snapshot.iter().chain(stored.updates.iter().map(|(_, u)| u)) {
            let update = Update::decode_v1(bytes)
                .map_err(|e| Error::Storage(format!("stored document update: {e}").into()))?;
            txn.apply_update(update)
                .map_err(|e| Error::Storage(format!("stored document update: {e}").into()))?;
        }
        Ok(())
    }

    fn text(&self) -> String {
        self.text.get_string(&self.awareness.doc().transact())
    }

    async fn on_message(&mut self, conn: ConnId, bytes: &[u8]) {
        if !self.connections.contains_key(&conn) || self.close_codes.contains_key(&conn) {
            return; // closed earlier (slow, malformed); its remaining messages are moot
        }
        if bytes.len() > self.inner.config.max_message_bytes {
            self.close(conn, CLOSE_TOO_LARGE);
            return;
        }
        // One message per frame is what y-websocket sends, but lib0 allows several back to
        // back. yrs' `MessageReader` stops silently at a truncated message; here a truncated or
        // otherwise invalid message closes the connection instead. lib0 encodings are
        // canonical, so a message's re-encoded length is the number of bytes it used.
        let mut rest = bytes;
        loop {
            let ok = match Message::decode_v1(rest) {
                Ok(m) => {
                    let used = m.encode_v1().len();
                    match rest.get(used..) {
                        Some(after) if used > 0 => {
                            rest = after;
                            self.on_protocol_message(conn, m).await
                        }
                        _ => false,
                    }
                }
                Err(e) => {
                    tracing::debug!(task = %self.task, error = %e, "pm-realtime: malformed y-protocol message");
                    false
                }
            };
            if !ok {
                self.close(conn, CLOSE_MALFORMED);
                return;
            }
            if rest.is_empty() || self.close_codes.contains_key(&conn) {
                return;
            }
        }
    }

    /// Handles one message of a connection; `false` when it is invalid.
    async fn on_protocol_message(&mut self, conn: ConnId, message: Message) -> bool {
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = self.awareness.doc().transact().encode_state_as_update_v1(&sv);
                let reply = Message::Sync(SyncMessage::SyncStep2(update)).encode_v1();
                self.send(conn, reply.into());
                true
            }
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                let Some(c) = self.connections.get_mut(&conn) else { return true };
                if c.access == DocAccess::ReadOnly {
                    if !c.warned_read_only {
                        c.warned_read_only = true;
                        tracing::info!(task = %self.task, user = ?c.user, "pm-realtime: ignoring updates from a read-only connection");
                    }
                    return true;
                }
                let user = c.user;
                self.on_local_update(Some(conn), user, update).await
            }
            Message::Awareness(update) => {
                if let Some(c) = self.connections.get_mut(&conn) {
                    for (id, entry) in &update.clients {
                        if entry.json.as_ref() == "null" {
                            c.clients.remove(id);
                        } else {
                            c.clients.insert(*id);
                        }
                    }
                }
                if self.awareness.apply_update(update.clone()).is_err() {
                    return false;
                }
                let bytes = update.encode_v1();
                // To the sender too, as y-websocket's server does: a client that hears nothing
                // for 30 s reconnects, and its own awareness renewals are what it hears when
                // alone.
                self.broadcast(None, Message::Awareness(update).encode_v1().into());
                self.publish(wire::awareness(&bytes), false).await;
                true
            }
            Message::AwarenessQuery => {
                if let Ok(update) = self.awareness.update() {
                    self.send(conn, Message::Awareness(update).encode_v1().into());
                }
                true
            }
            // y-websocket's auth message is server → client only; custom messages are ignored
            // like y-websocket ignores unknown types.
            Message::Auth(_) | Message::Custom(..) => true,
        }
    }

    /// Applies, logs, broadcasts and publishes an update made on this instance; `false` when the
    /// bytes are not a valid update.
    async fn on_local_update(
        &mut self,
        from: Option<ConnId>,
        user: Option<UserId>,
        bytes: Vec<u8>,
    ) -> bool {
        let Ok(update) = Update::decode_v1(&bytes) else { return false };
        if update.is_empty() {
            return true; // e.g. the client's sync step 2 when it has nothing new
        }
        if self.awareness.doc().transact_mut().apply_update(update).is_err() {
            return false;
        }
        self.log_update(&bytes).await;
        self.editor = user.or(self.editor);
        self.schedule_write_back();
        let frame = Message::Sync(SyncMessage::Update(bytes.clone())).encode_v1();
        self.broadcast(from, frame.into());
        self.publish(wire::update(user, &bytes), true).await;
        true
    }

    async fn log_update(&mut self, bytes: &[u8]) {
        match self.inner.store.append_doc_update(self.task, bytes, now()).await {
            Ok(_) => {
                self.logged_since_compaction += 1;
                if self.logged_since_compaction >= self.inner.config.compact_every.max(1) {
                    self.sync_with_store(true).await;
                }
            }
            Err(e) => {
                // Still applied and shared, but another instance can only learn of an update
                // the broker cannot carry (and one that opens the document later, of any) from
                // the store: retry soon rather than only at close.
                tracing::error!(task = %self.task, error = %e, "pm-realtime: logging a document update failed; retrying");
                if !self.unlogged {
                    self.unlogged = true;
                    self.log_retry_at = Some(Instant::now() + self.log_retry_backoff);
                }
            }
        }
    }

    /// Appends the whole in-memory state (it covers every unlogged update; Yjs updates are
    /// idempotent), then tells other instances to reload; on failure waits longer.
    async fn persist_unlogged(&mut self) {
        self.log_retry_at = None;
        if !self.unlogged {
            return;
        }
        let state =
            self.awareness.doc().transact().encode_state_as_update_v1(&StateVector::default());
        match self.inner.store.append_doc_update(self.task, &state, now()).await {
            Ok(_) => {
                self.unlogged = false;
                self.log_retry_backoff = LOG_RETRY_MIN;
                self.logged_since_compaction += 1;
                tracing::info!(task = %self.task, "pm-realtime: persisted document updates whose logging had failed");
                self.publish(wire::reload(), false).await;
            }
            Err(e) => {
                self.log_retry_backoff = (self.log_retry_backoff * 2).min(LOG_RETRY_MAX);
                self.log_retry_at = Some(Instant::now() + self.log_retry_backoff);
                tracing::warn!(task = %self.task, error = %e, retry_in = ?self.log_retry_backoff, "pm-realtime: persisting unlogged document updates failed");
            }
        }
    }

    async fn on_remote(&mut self, payload: &[u8]) {
        match wire::decode(payload) {
            Some(wire::Remote::Update { user, update }) => {
                let Ok(decoded) = Update::decode_v1(&update) else {
                    tracing::warn!(task = %self.task, "pm-realtime: ignoring an undecodable remote update");
                    return;
                };
                if self.awareness.doc().transact_mut().apply_update(decoded).is_err() {
                    tracing::warn!(task = %self.task, "pm-realtime: ignoring an inapplicable remote update");
                    return;
                }
                self.editor = user.or(self.editor);
                self.schedule_write_back();
                let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
                self.broadcast(None, frame.into());
            }
            Some(wire::Remote::Awareness { update }) => {
                let Ok(decoded) = AwarenessUpdate::decode_v1(&update) else { return };
                if self.awareness.apply_update(decoded.clone()).is_ok() {
                    self.broadcast(None, Message::Awareness(decoded).encode_v1().into());
                }
            }
            Some(wire::Remote::Reload) => self.sync_with_store(false).await,
            None => {}
        }
    }

    /// A description change seen in the event log: applied as a diff unless it is the text the
    /// document already has, a write-back (recorded in the store before it was made), or
    /// already claimed by another instance (which publishes the diff).
    async fn on_external(&mut self, version: i64, description: &str) {
        self.synced_text = description.to_owned();
        if self.text() == description {
            return;
        }
        match self
            .inner
            .store
            .claim_external_change(self.task, version, &digest(description), now())
            .await
        {
            Ok(true) => self.apply_external(description).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "pm-realtime: claiming an external description change failed");
            }
        }
    }

    /// Turns the document's text into `description` with a minimal Yjs edit, shared like any
    /// local update (attributed to no user; the description already holds it).
    async fn apply_external(&mut self, description: &str) {
        let update = {
            let doc = self.awareness.doc();
            let mut txn = doc.transact_mut();
            if !text::apply_text_diff(&self.text, &mut txn, description) {
                return;
            }
            txn.encode_update_v1()
        };
        self.log_update(&update).await;
        self.synced_text = description.to_owned();
        let frame = Message::Sync(SyncMessage::Update(update.clone())).encode_v1();
        self.broadcast(None, frame.into());
        self.publish(wire::update(None, &update), true).await;
    }

    /// Re-reads the store, applies what this instance missed (sending it to the connections),
    /// and with `compact` rewrites the snapshot from the store's contents.
    async fn sync_with_store(&mut self, compact: bool) {
        let stored = match self.inner.store.load_doc(self.task).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "pm-realtime: reloading a document failed");
                return;
            }
        };
        let before_sv = self.awareness.doc().transact().state_vector();
        let before_text = self.text();
        if let Err(e) = self.apply_stored(&stored) {
            tracing::error!(task = %self.task, error = %e, "pm-realtime: stored document is corrupt");
            return;
        }
        let after_sv = self.awareness.doc().transact().state_vector();
        if after_sv != before_sv || self.text() != before_text {
            let diff = self.awareness.doc().transact().encode_state_as_update_v1(&before_sv);
            self.schedule_write_back();
            self.broadcast(None, Message::Sync(SyncMessage::Update(diff)).encode_v1().into());
        }
        if compact && stored.updates.len() > usize::from(stored.snapshot.is_none()) {
            self.compact(&stored).await;
        }
    }

    /// Writes a snapshot built from exactly what `stored` holds (never from memory: this
    /// instance may not have seen every update another instance logged up to that `seq`).
    async fn compact(&mut self, stored: &StoredDoc) {
        let fresh = Doc::new();
        {
            let mut txn = fresh.transact_mut();
            for bytes in stored.snapshot.iter().chain(stored.updates.iter().map(|(_, u)| u)) {
                match Update::decode_v1(bytes) {
                    Ok(u) => {
                        if txn.apply_update(u).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        let state = fresh.transact().encode_state_as_update_v1(&StateVector::default());
        match self.inner.store.compact_doc(self.task, &state, stored.last_seq()).await {
            Ok(_) => self.logged_since_compaction = 0,
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "pm-realtime: compacting a document failed");
            }
        }
    }

    fn schedule_write_back(&mut self) {
        self.write_back_at = Some(Instant::now() + self.inner.config.write_back_debounce);
    }

    /// Writes the text into the task description (as the last editor), retrying on version
    /// conflicts with a fresh read; skipped when the description already holds it.
    async fn write_back(&mut self) {
        self.write_back_at = None;
        let text = self.text();
        let Ok(markdown) = Markdown::parse(&text) else {
            tracing::warn!(task = %self.task, "pm-realtime: document text is not a valid description; not written back");
            return;
        };
        let origin = self.editor.map_or_else(Origin::system, Origin::user);
        let stores = self.inner.pm.stores();
        for _ in 0..WRITE_BACK_ATTEMPTS {
            let current = match stores.tasks.get_task(self.task).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(task = %self.task, error = %e, "pm-realtime: write-back could not read the task");
                    return;
                }
            };
            if current.description.as_str() == text {
                self.synced_text = text;
                return;
            }
            // Recorded first, so every instance recognises the resulting event as ours.
            let at = now();
            let ttl = self.inner.config.write_back_record_ttl;
            let before = at - time::Duration::try_from(ttl).unwrap_or(time::Duration::HOUR);
            if let Err(e) =
                self.inner.store.record_write_back(self.task, &digest(&text), at, before).await
            {
                tracing::warn!(task = %self.task, error = %e, "pm-realtime: recording a write-back failed");
                self.schedule_write_back();
                return;
            }
            let patch = TaskPatch { description: Some(markdown.clone()), ..TaskPatch::default() };
            match self.inner.pm.update_task(&origin, self.task, current.version, patch).await {
                Ok(_) => {
                    self.synced_text = text;
                    return;
                }
                Err(pm_core::Error::Conflict(_)) => continue,
                Err(e) => {
                    tracing::warn!(task = %self.task, error = %e, "pm-realtime: writing the description back failed");
                    return;
                }
            }
        }
        tracing::warn!(task = %self.task, "pm-realtime: write-back kept conflicting; retrying later");
        self.schedule_write_back();
    }

    /// On close: persist anything unlogged, compact, and write back.
    async fn flush(&mut self) {
        self.persist_unlogged().await;
        if self.logged_since_compaction > 0 {
            self.sync_with_store(true).await;
        }
        if self.write_back_at.is_some() || self.text() != self.synced_text {
            self.write_back().await;
        }
    }

    /// Removes a connection and its awareness states (announced as removed to the others), then
    /// any connection that turned out slow meanwhile.
    async fn leave(&mut self, conn: ConnId) {
        let mut next = Some(conn);
        while let Some(conn) = next.take().or_else(|| self.to_close.pop()) {
            let Some(mut c) = self.connections.remove(&conn) else { continue };
            if let Some(close) = c.close.take() {
                let _ = close.send(self.close_codes.remove(&conn).unwrap_or(CloseCode::GOING_AWAY));
            }
            if c.clients.is_empty() {
                continue;
            }
            for id in &c.clients {
                self.awareness.remove_state(*id);
            }
            if let Ok(update) = self.awareness.update_with_clients(c.clients.iter().copied()) {
                let bytes = update.encode_v1();
                self.broadcast(None, Message::Awareness(update).encode_v1().into());
                self.publish(wire::awareness(&bytes), false).await;
            }
        }
    }

    /// Marks a connection for closing with `code` (done by [`Self::reap`]).
    fn close(&mut self, conn: ConnId, code: CloseCode) {
        if self.connections.contains_key(&conn) && !self.close_codes.contains_key(&conn) {
            self.close_codes.insert(conn, code);
            self.to_close.push(conn);
        }
    }

    /// Closes the connections marked by [`Self::close`].
    async fn reap(&mut self) {
        if let Some(conn) = self.to_close.pop() {
            self.leave(conn).await;
        }
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) {
        let full = match self.connections.get(&conn) {
            Some(c) => c.out.try_send(frame).is_err(),
            None => false,
        };
        if full {
            self.close(conn, CloseCode::SLOW_CONSUMER);
        }
    }

    /// Sends a frame to every connection except `except`; slow ones are marked for closing.
    fn broadcast(&mut self, except: Option<ConnId>, frame: Bytes) {
        let slow: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(id, _)| Some(**id) != except && !self.close_codes.contains_key(id))
            .filter(|(_, c)| c.out.try_send(frame.clone()).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            self.close(id, CloseCode::SLOW_CONSUMER);
        }
    }

    /// Publishes to other instances. An update the broker cannot carry becomes a reload notice
    /// (it is logged already); awareness that does not fit is dropped (ephemeral).
    async fn publish(&self, payload: Vec<u8>, is_update: bool) {
        let broker = &self.inner.broker;
        let topic = topic(self.task);
        match broker.publish(&topic, payload.into()).await {
            Ok(()) => {}
            Err(Error::PayloadTooLarge { .. }) if is_update => {
                if let Err(e) = broker.publish(&topic, wire::reload().into()).await {
                    tracing::warn!(task = %self.task, error = %e, "pm-realtime: publishing a reload notice failed");
                }
            }
            Err(e) => {
                tracing::warn!(task = %self.task, error = %e, "pm-realtime: publishing a document message failed");
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now() -> time::OffsetDateTime {
    pm_core::model::now()
}

/// The digest identifying a description text in write-back records (SHA-256, hex).
fn digest(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

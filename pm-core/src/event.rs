//! The event log: the backbone every other feature consumes.
//!
//! Every mutation in pm-core appends exactly one [`Event`] in the same transaction as the change
//! (see the store adapters). `seq` is a global order in which commits become visible: SQLite
//! has a single writer, and the PostgreSQL adapter takes a transaction-scoped advisory lock before
//! its writes so commit order equals `seq` order. A consumer that reads `seq > cursor` therefore
//! never skips a late-committing lower `seq`.
//!
//! Consumers (realtime, workflows, sync, webhooks, notifications) keep a durable cursor in the
//! store ([`EventLog::load_cursor`]) and process
//! at-least-once, idempotent by [`EventId`]. [`Tailer`] implements the read loop with wake-ups.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::id::{EventId, IntegrationId, OrgId, ProjectId, TaskId, UserId, WorkflowId};
use crate::store::EventLog;
use crate::{Error, Result};

/// Who caused a change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// A person (via REST, WebSocket, PWA).
    User(UserId),
    /// An automation rule of pm-workflows.
    Automation(WorkflowId),
    /// An integration of pm-integrations (inbound sync).
    Integration(IntegrationId),
    /// The system itself (migrations, maintenance).
    System,
}

impl Actor {
    /// The stored kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::Automation(_) => "automation",
            Actor::Integration(_) => "integration",
            Actor::System => "system",
        }
    }

    /// The stored id, if any.
    pub fn id(&self) -> Option<Uuid> {
        match self {
            Actor::User(id) => Some(id.0),
            Actor::Automation(id) => Some(id.0),
            Actor::Integration(id) => Some(id.0),
            Actor::System => None,
        }
    }

    /// Rebuilds an actor from its stored parts.
    pub fn from_parts(kind: &str, id: Option<Uuid>) -> Result<Self> {
        let need = |id: Option<Uuid>| id.ok_or_else(|| Error::invalid("actor.id", "missing"));
        Ok(match kind {
            "user" => Actor::User(UserId(need(id)?)),
            "automation" => Actor::Automation(WorkflowId(need(id)?)),
            "integration" => Actor::Integration(IntegrationId(need(id)?)),
            "system" => Actor::System,
            other => {
                return Err(Error::invalid("actor.type", format!("unknown actor type {other:?}")));
            }
        })
    }

    /// The user behind the actor, if it is one.
    pub fn user(&self) -> Option<UserId> {
        match self {
            Actor::User(u) => Some(*u),
            _ => None,
        }
    }
}

/// Why a change happened: the event that caused it and how deep the causal chain is. Workflows
/// use `depth` for loop protection; integrations use the actor and cause for echo suppression.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// The causing event.
    pub event_id: EventId,
    /// 1 for a direct reaction to a user's change, +1 per automated hop.
    pub depth: u32,
}

/// Who is making a change and why: passed to every mutating service and store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The actor.
    pub actor: Actor,
    /// The cause, for changes made in reaction to another event.
    pub cause: Option<Cause>,
}

impl Origin {
    /// A change made directly by a user.
    pub fn user(id: UserId) -> Self {
        Self { actor: Actor::User(id), cause: None }
    }

    /// A change made by the system.
    pub fn system() -> Self {
        Self { actor: Actor::System, cause: None }
    }
}

macro_rules! event_kinds {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// What happened. The wire/stored form is `entity.verb`, e.g. `task.updated`.
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventKind {
            $(
                #[doc = concat!("`", $name, "`")]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl EventKind {
            /// Every kind, for documentation and exhaustive tests.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The stored/wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// Parses the stored/wire name.
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok(EventKind::$variant),)*
                    other => Err(Error::invalid("kind", format!("unknown event kind {other:?}"))),
                }
            }
        }
    };
}

event_kinds! {
    OrgCreated => "org.created",
    UserCreated => "user.created",
    MemberAdded => "member.added",
    MemberRemoved => "member.removed",
    ProjectCreated => "project.created",
    ProjectUpdated => "project.updated",
    StateCreated => "state.created",
    StateUpdated => "state.updated",
    LabelCreated => "label.created",
    LabelDeleted => "label.deleted",
    MilestoneCreated => "milestone.created",
    MilestoneUpdated => "milestone.updated",
    FieldCreated => "field.created",
    TaskCreated => "task.created",
    TaskUpdated => "task.updated",
    TaskDeleted => "task.deleted",
    RelationAdded => "relation.added",
    RelationRemoved => "relation.removed",
    WatcherAdded => "watcher.added",
    WatcherRemoved => "watcher.removed",
    CommentCreated => "comment.created",
    CommentUpdated => "comment.updated",
    CommentDeleted => "comment.deleted",
    TimeEntryCreated => "time_entry.created",
    TimeEntryDeleted => "time_entry.deleted",
    AttachmentCreated => "attachment.created",
    AttachmentDeleted => "attachment.deleted",
    CheckInCreated => "checkin.created",
}

/// Whose activity feed to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityScope {
    /// Everything that happened in a project.
    Project(ProjectId),
    /// Everything that happened to a task (including its comments and records).
    Task(TaskId),
}

/// One entry of the log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global, gap-tolerant, monotonic position; commit order equals `seq` order.
    pub seq: i64,
    /// Unique id (consumers deduplicate on it).
    pub id: EventId,
    /// When the change was committed (store clock).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Organization concerned (absent for user-level events).
    pub org_id: Option<OrgId>,
    /// Project concerned, if any.
    pub project_id: Option<ProjectId>,
    /// Task concerned, if any (for `task:{id}` channels and activity feeds).
    pub task_id: Option<TaskId>,
    /// Who caused it.
    pub actor: Actor,
    /// What happened.
    pub kind: EventKind,
    /// Id of the entity the event is about (its type follows from `kind`).
    pub subject: Uuid,
    /// Kind-specific data: the entity after the change and, for updates, `changes`
    /// (`{field: {from, to}}`).
    pub payload: Value,
    /// The causing event, for reactions.
    pub cause: Option<Cause>,
}

/// An event before the store gives it a `seq`, id and timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    /// What happened.
    pub kind: EventKind,
    /// Organization concerned.
    pub org_id: Option<OrgId>,
    /// Project concerned.
    pub project_id: Option<ProjectId>,
    /// Task concerned.
    pub task_id: Option<TaskId>,
    /// Entity id.
    pub subject: Uuid,
    /// Payload.
    pub payload: Value,
}

impl EventDraft {
    /// Seals the draft into an event (the caller supplies the store-assigned `seq`).
    pub fn into_event(self, seq: i64, id: EventId, at: OffsetDateTime, origin: &Origin) -> Event {
        Event {
            seq,
            id,
            at,
            org_id: self.org_id,
            project_id: self.project_id,
            task_id: self.task_id,
            actor: origin.actor,
            kind: self.kind,
            subject: self.subject,
            payload: self.payload,
            cause: origin.cause,
        }
    }
}

/// Builds a payload `{ <entity_key>: after, changes: {field: {from, to}} }` for an update, where
/// `changes` lists the top-level fields that differ (bookkeeping fields excluded).
pub fn update_payload<T: Serialize>(entity_key: &str, before: &T, after: &T) -> Value {
    let b = serde_json::to_value(before).unwrap_or(Value::Null);
    let a = serde_json::to_value(after).unwrap_or(Value::Null);
    let mut changes = serde_json::Map::new();
    if let (Value::Object(bm), Value::Object(am)) = (&b, &a) {
        for (k, av) in am {
            if matches!(k.as_str(), "version" | "updated_at") {
                continue;
            }
            let bv = bm.get(k).unwrap_or(&Value::Null);
            if bv != av {
                changes.insert(k.clone(), serde_json::json!({ "from": bv, "to": av }));
            }
        }
    }
    serde_json::json!({ entity_key: a, "changes": changes })
}

/// Builds a payload `{ <entity_key>: entity }` for creations and deletions.
pub fn entity_payload<T: Serialize>(entity_key: &str, entity: &T) -> Value {
    serde_json::json!({ entity_key: entity })
}

/// A wake-up signal for tailers: bumped after every commit that appended events (and, on
/// PostgreSQL, on every `NOTIFY` ping from another instance). It carries no data; tailers always
/// re-read the log, so a lost or coalesced ping costs latency, never events.
#[derive(Debug, Clone)]
pub struct Wakeup {
    tx: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Wakeup {
    fn default() -> Self {
        Self::new()
    }
}

impl Wakeup {
    /// A new signal.
    pub fn new() -> Self {
        Self { tx: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    /// Wakes every waiting tailer.
    pub fn ping(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that resolves `changed()` after the next ping.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// Reads the log after a position, waiting for wake-ups when caught up.
///
/// ```no_run
/// # async fn demo(log: std::sync::Arc<dyn pm_core::store::EventLog>) -> pm_core::Result<()> {
/// let mut tail = pm_core::event::Tailer::new(log, 0);
/// loop {
///     for event in tail.next_batch(100).await? {
///         println!("{} {}", event.seq, event.kind.as_str());
///     }
/// }
/// # }
/// ```
pub struct Tailer {
    log: Arc<dyn EventLog>,
    after: i64,
    wake: tokio::sync::watch::Receiver<u64>,
    /// Fallback poll interval, in case a wake-up is lost (e.g. a dropped LISTEN connection).
    pub poll: Duration,
}

impl Tailer {
    /// Starts tailing after `after` (0 = from the beginning).
    pub fn new(log: Arc<dyn EventLog>, after: i64) -> Self {
        let wake = log.wakeup().subscribe();
        Self { log, after, wake, poll: Duration::from_secs(1) }
    }

    /// The position of the last event returned.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// Returns the next non-empty batch (up to `limit` events), waiting until one exists.
    pub async fn next_batch(&mut self, limit: u32) -> Result<Vec<Event>> {
        loop {
            // Mark the current signal as seen *before* reading, so a commit that lands between
            // the read and the wait still wakes us.
            self.wake.borrow_and_update();
            let batch = self.log.read_after(self.after, limit).await?;
            if let Some(last) = batch.last() {
                self.after = last.seq;
                return Ok(batch);
            }
            let _ = tokio::time::timeout(self.poll, self.wake.changed()).await;
        }
    }
}

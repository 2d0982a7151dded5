//! Per-user notifications derived from the event log.
//!
//! [`NotificationConsumer`] reads the log from its durable cursor (pm-core's
//! `EventLog::load_cursor`/`save_cursor`, consumer name [`CONSUMER`]) and derives:
//!
//! - **assigned** — a task is created with you as assignee, or you are added to its assignees;
//! - **mentioned** — a new comment mentions you as `@{user id}`, `@{e-mail}` or `@{e-mail local
//!   part}` (pm users have no handle; the local part counts when it is unique among the
//!   organization's members), and you are a member of the task's organization;
//! - **commented** — a new comment on a task you watch (unless it mentions you);
//! - **state_changed** — the state of a task you watch or are assigned to changes.
//!
//! Invariants: the actor is never notified of their own change; each user gets at most one
//! notification per event (the store's `(user, event)` uniqueness makes reprocessing after a
//! crash harmless: at-least-once reading, exactly-once storing); a stored notification is pushed
//! live as a `notification` frame on `user:{id}` (through the [`Hub`], so on every instance) and
//! handed to each [`NotificationSink`] (Web Push later) only when it was newly created.
//! Watchers and assignees are read when the event is processed, not as of the event.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::event::{Actor, Checkpoint, Event, EventKind, Tailer};
use pm_core::id::{EventId, OrgId, ProjectId, StateId, TaskId, UserId};
use pm_core::model::{Comment, Task};
use pm_core::store::Stores;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::hub::Hub;
use crate::store::NotificationStore;
use crate::{Error, Result};

/// The consumer name under which the cursor is saved in pm-core's event log.
pub const CONSUMER: &str = "pm-realtime.notifications";

/// Identifies a [`Notification`] (UUIDv7: newer ids sort after older ones).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(pub Uuid);

impl NotificationId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for NotificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for NotificationId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl From<NotificationId> for Uuid {
    fn from(id: NotificationId) -> Uuid {
        id.0
    }
}

impl fmt::Debug for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotificationId({})", self.0)
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for NotificationId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s).map(Self).map_err(|e| Error::invalid("id", e.to_string()))
    }
}

/// Why a user is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// You were assigned to a task.
    Assigned,
    /// A comment mentions you.
    Mentioned,
    /// Someone commented on a task you watch.
    Commented,
    /// A task you watch or are assigned to changed state.
    StateChanged,
    /// An automation rule (pm-workflows' notify action, an approval request) addressed you.
    Automation,
}

impl NotificationKind {
    /// The stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Assigned => "assigned",
            NotificationKind::Mentioned => "mentioned",
            NotificationKind::Commented => "commented",
            NotificationKind::StateChanged => "state_changed",
            NotificationKind::Automation => "automation",
        }
    }

    /// Parses the stored/wire name (`kind` field).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "assigned" => NotificationKind::Assigned,
            "mentioned" => NotificationKind::Mentioned,
            "commented" => NotificationKind::Commented,
            "state_changed" => NotificationKind::StateChanged,
            "automation" => NotificationKind::Automation,
            other => {
                return Err(Error::invalid("kind", format!("unknown notification kind {other:?}")));
            }
        })
    }
}

/// One notification for one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Identity.
    pub id: NotificationId,
    /// Who is notified.
    pub user_id: UserId,
    /// Why.
    pub kind: NotificationKind,
    /// The event it was derived from (unique per user).
    pub event_id: EventId,
    /// That event's position in the log.
    pub seq: i64,
    /// Who caused it.
    pub actor: Actor,
    /// Organization concerned.
    pub org_id: Option<OrgId>,
    /// Project concerned.
    pub project_id: Option<ProjectId>,
    /// Task concerned.
    pub task_id: Option<TaskId>,
    /// One line for humans, e.g. `Ada assigned you PM-42 "Fix login"`.
    pub summary: String,
    /// When it happened (the event's time).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the user read it; `None` while unread.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

/// Where new notifications go besides the store and the live channel (Web Push, e-mail, ...).
#[async_trait]
pub trait NotificationSink: Send + Sync {
    /// Delivers one newly created notification. Failures are logged, not retried: the
    /// notification is stored either way.
    async fn deliver(&self, notification: &Notification) -> Result<()>;
}

/// Derives notifications from the event log and delivers them.
#[derive(Clone)]
pub struct NotificationConsumer {
    stores: Stores,
    notifications: Arc<dyn NotificationStore>,
    hub: Option<Hub>,
    sinks: Vec<Arc<dyn NotificationSink>>,
    batch: u32,
}

impl fmt::Debug for NotificationConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationConsumer")
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

impl NotificationConsumer {
    /// A consumer over pm-core's stores (the log, tasks, watchers, users) writing to
    /// `notifications`.
    pub fn new(stores: Stores, notifications: Arc<dyn NotificationStore>) -> Self {
        Self { stores, notifications, hub: None, sinks: Vec::new(), batch: 200 }
    }

    /// Pushes new notifications live through `hub`.
    pub fn with_hub(mut self, hub: Hub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Also hands new notifications to `sink`.
    pub fn with_sink(mut self, sink: Arc<dyn NotificationSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Processes everything up to the log's current end; returns how many notifications were
    /// created.
    pub async fn catch_up(&self) -> Result<usize> {
        let mut after = self.stores.events.load_cursor(CONSUMER).await?;
        let mut created = 0;
        loop {
            let events = self.stores.events.read_after(after, self.batch).await?;
            let Some(last) = events.last().map(|e| e.seq) else { return Ok(created) };
            created += self.process(&events).await?;
            self.stores.events.save_cursor(CONSUMER, last).await?;
            after = last;
        }
    }

    /// Runs forever: tails the log from the durable cursor, waking on every commit. Errors are
    /// logged and retried after a second (the cursor only advances past processed events).
    pub async fn run(self) {
        loop {
            let start = match self.stores.events.load_cursor(CONSUMER).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "pm-realtime: loading the notification cursor failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut tailer = Tailer::new(self.stores.events.clone(), start);
            // Re-deriving is idempotent (a notification exists once), so the cursor may trail.
            let mut checkpoint = Checkpoint::new(start);
            let failed = loop {
                let events = match tailer.next_batch_or_idle(self.batch, Checkpoint::IDLE).await {
                    Ok(e) => e,
                    Err(e) => break e.into(),
                };
                let created = match self.process(&events).await {
                    Ok(n) => n,
                    Err(e) => break e,
                };
                let at = tailer.position();
                if checkpoint.due(at, created > 0, events.is_empty()) {
                    if let Err(e) = self.stores.events.save_cursor(CONSUMER, at).await {
                        break e.into();
                    }
                    checkpoint.saved(at);
                }
            };
            tracing::warn!(error = %failed, "pm-realtime: notification consumer failed; restarting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Spawns [`NotificationConsumer::run`] on the current runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn process(&self, events: &[Event]) -> Result<usize> {
        let mut created = 0;
        for event in events {
            for n in self.derive(event).await? {
                if self.deliver(&n).await? {
                    created += 1;
                }
            }
        }
        Ok(created)
    }

    /// Stores `n` and, when it is new, pushes it live and hands it to every sink; returns
    /// whether it was new. A notification is unique per user and `event_id`, so delivering it
    /// again (reprocessing after a crash, another instance, a retried automation step) stores
    /// and sends nothing. Also the way in for notifications not derived from the log, e.g. an
    /// automation's notify action (pm-server's workflow notifier).
    pub async fn deliver(&self, n: &Notification) -> Result<bool> {
        if !self.notifications.create_notification(n).await? {
            return Ok(false);
        }
        if let Some(hub) = &self.hub {
            hub.push_notification(n);
        }
        for sink in &self.sinks {
            if let Err(e) = sink.deliver(n).await {
                tracing::warn!(error = %e, notification = %n.id, "pm-realtime: a notification sink failed");
            }
        }
        Ok(true)
    }

    /// The notifications an event gives rise to (not yet stored).
    pub async fn derive(&self, event: &Event) -> Result<Vec<Notification>> {
        let mut out = Vec::new();
        let actor_user = event.actor.user();
        let mut notify = |user: UserId, kind: NotificationKind, summary: String| {
            if Some(user) != actor_user && !out.iter().any(|n: &Notification| n.user_id == user) {
                out.push(Notification {
                    id: NotificationId::new(),
                    user_id: user,
                    kind,
                    event_id: event.id,
                    seq: event.seq,
                    actor: event.actor,
                    org_id: event.org_id,
                    project_id: event.project_id,
                    task_id: event.task_id,
                    summary,
                    created_at: event.at,
                    read_at: None,
                });
            }
        };
        match event.kind {
            EventKind::TaskCreated => {
                let Some(task) = payload_entity::<Task>(event, "task") else { return Ok(out) };
                if task.assignees.is_empty() {
                    return Ok(out);
                }
                let who = self.actor_name(&event.actor).await;
                for user in &task.assignees {
                    notify(*user, NotificationKind::Assigned, assigned(&who, &task));
                }
            }
            EventKind::TaskUpdated => {
                let Some(task) = payload_entity::<Task>(event, "task") else { return Ok(out) };
                let changes = &event.payload["changes"];
                let added: BTreeSet<UserId> = {
                    let ids = |v: &serde_json::Value| -> BTreeSet<UserId> {
                        serde_json::from_value(v.clone()).unwrap_or_default()
                    };
                    let change = &changes["assignees"];
                    ids(&change["to"]).difference(&ids(&change["from"])).copied().collect()
                };
                let state_changed = changes.get("state_id").is_some();
                if added.is_empty() && !state_changed {
                    return Ok(out);
                }
                let who = self.actor_name(&event.actor).await;
                for user in &added {
                    notify(*user, NotificationKind::Assigned, assigned(&who, &task));
                }
                if state_changed {
                    let state = self.state_name(task.state_id).await;
                    let summary = format!(
                        "{who} moved {} \"{}\" to {state}",
                        task.reference,
                        task.title.as_str()
                    );
                    for user in self.watchers(task.id).await?.into_iter().chain(task.assignees) {
                        notify(user, NotificationKind::StateChanged, summary.clone());
                    }
                }
            }
            EventKind::CommentCreated => {
                let Some(comment) = payload_entity::<Comment>(event, "comment") else {
                    return Ok(out);
                };
                let task = match self.stores.tasks.get_task(comment.task_id).await {
                    Ok(t) => t,
                    Err(pm_core::Error::NotFound { .. }) => return Ok(out), // deleted since
                    Err(e) => return Err(e.into()),
                };
                let who = self.actor_name(&event.actor).await;
                let title = format!("{} \"{}\"", task.reference, task.title.as_str());
                for user in self.mentioned(task.org_id, comment.body.as_str()).await? {
                    notify(
                        user,
                        NotificationKind::Mentioned,
                        format!("{who} mentioned you on {title}"),
                    );
                }
                for user in self.watchers(task.id).await? {
                    notify(
                        user,
                        NotificationKind::Commented,
                        format!("{who} commented on {title}"),
                    );
                }
            }
            _ => {}
        }
        Ok(out)
    }

    async fn watchers(&self, task: TaskId) -> Result<Vec<UserId>> {
        match self.stores.tasks.list_watchers(task).await {
            Ok(w) => Ok(w.into_iter().map(|w| w.user_id).collect()),
            Err(pm_core::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    async fn actor_name(&self, actor: &Actor) -> String {
        match actor {
            Actor::User(id) => match self.stores.directory.get_user(*id).await {
                Ok(u) => u.display_name.as_str().to_owned(),
                Err(_) => "Someone".to_owned(),
            },
            Actor::Automation(_) => "An automation".to_owned(),
            Actor::Integration(_) => "An integration".to_owned(),
            Actor::System => "pm".to_owned(),
        }
    }

    async fn state_name(&self, state: StateId) -> String {
        match self.stores.projects.get_state(state).await {
            Ok(s) => s.name.as_str().to_owned(),
            Err(_) => "another state".to_owned(),
        }
    }

    /// Members of `org` mentioned in `body` (see the module docs for the forms).
    async fn mentioned(&self, org: OrgId, body: &str) -> Result<Vec<UserId>> {
        let tokens = mention_tokens(body);
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut members = Vec::new();
        for m in self.stores.directory.list_members(org).await? {
            match self.stores.directory.get_user(m.user_id).await {
                Ok(u) => members.push(u),
                Err(pm_core::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let local = |email: &str| email.split('@').next().unwrap_or("").to_owned();
        let mut found = Vec::new();
        for token in tokens {
            let hit = if let Ok(id) = Uuid::parse_str(&token) {
                members.iter().find(|u| u.id.0 == id).map(|u| u.id)
            } else if token.contains('@') {
                members.iter().find(|u| u.email.as_str() == token).map(|u| u.id)
            } else {
                let mut same = members.iter().filter(|u| local(u.email.as_str()) == token);
                match (same.next(), same.next()) {
                    (Some(u), None) => Some(u.id),
                    _ => None, // unknown or ambiguous
                }
            };
            if let Some(id) = hit
                && !found.contains(&id)
            {
                found.push(id);
            }
        }
        Ok(found)
    }
}

fn assigned(who: &str, task: &Task) -> String {
    format!("{who} assigned you {} \"{}\"", task.reference, task.title.as_str())
}

/// The entity under `key` in an event's payload; `None` (with a warning) if it does not parse,
/// so one odd event cannot stop the consumer.
fn payload_entity<T: serde::de::DeserializeOwned>(event: &Event, key: &str) -> Option<T> {
    match serde_json::from_value(event.payload[key].clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, seq = event.seq, "pm-realtime: unexpected event payload");
            None
        }
    }
}

/// The lower-cased words following an `@` that starts a word (`@ada`, `@ada@example.com`,
/// `@0190…`), without trailing punctuation.
pub fn mention_tokens(body: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut prev: Option<char> = None;
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let starts_word = prev.is_none_or(|p| !(p.is_alphanumeric() || "._-+@".contains(p)));
        if c == '@' && starts_word {
            let rest = &body[i + 1..];
            let end = rest
                .find(|ch: char| !(ch.is_alphanumeric() || "._-+@".contains(ch)))
                .unwrap_or(rest.len());
            let token = rest[..end].trim_end_matches(['.', '-', '_', '+', '@']);
            if !token.is_empty() {
                tokens.push(token.to_lowercase());
            }
            // Skip the token so an e-mail inside it is not taken for a second mention.
            while chars.peek().is_some_and(|(j, _)| *j <= i + end) {
                prev = chars.next().map(|(_, ch)| ch);
            }
            continue;
        }
        prev = Some(c);
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_found_at_word_starts_only() {
        assert_eq!(
            mention_tokens("hi @Ada, see @bob@example.com. mail me at x@y.z (@0190-ab)."),
            ["ada", "bob@example.com", "0190-ab"]
        );
        assert!(mention_tokens("no mentions, a@b.c, @ @.").is_empty());
    }
}

//! Slack and the calendars at work in the server — what turns pm-integrations' clients into
//! behaviour:
//!
//! - **Slack commands and buttons** ([`slash_command`], [`block_action`], called by the inbound
//!   endpoint right after a delivery is verified and persisted): `/pm create <title>` creates a
//!   task in the integration's project as the Slack user's pm account (or the configured bot
//!   user) and `/pm list` lists open tasks — answered synchronously with an ephemeral message
//!   within [`ChatSettings::reply_budget`] (Slack gives 3 s); a reply not ready by then is sent
//!   later through the command's `response_url`. "Assign to me" and the state menu update the
//!   task and replace the message through `response_url`.
//! - **The chat consumer** ([`start`]) tails the event log from its durable cursor
//!   ([`CONSUMER`], kept in pm-integrations' `int_cursors`): in each integrated project it posts
//!   Block Kit notifications to the Slack integration's `channel` (assignments, state changes,
//!   comments) and mirrors due dates into Google Calendar / Outlook events (create, move,
//!   delete; the link is an external mapping whose base holds the date last agreed). A provider
//!   call that fails is tried three times, then logged (`event.failed`) and passed, so one
//!   provider's outage does not hold the others' events; the store failing stops the consumer
//!   before its cursor moves (at-least-once).
//! - **Slack messages are sent once per key** ([`post_once`]): Slack has no idempotency key
//!   for `chat.postMessage`, so the intent (`notify:<event id>:<integration>` for
//!   notifications, the workflow step's idempotency key for workflow messages) is recorded
//!   before the call and marked done with the message's `ts` right after. A replay (a restart
//!   re-reading the log stretch its cursor had not saved, a second instance, the workflow
//!   engine retrying a step whose record was lost) finds it done and does not post again. What
//!   remains is the call itself: a sender dying after Slack accepted the message and before
//!   the record leaves the intent pending; after [`SEND_LEASE`] a replay takes it over and
//!   posts again — at-least-once, since a lost response cannot be told from a message never
//!   sent, and a missing notification is worse than a rare duplicate. Within the lease a
//!   replay does not post (another sender may be mid-call).
//! - **Calendar pushes in** ([`on_inbound`], called by the inbound processor): a Google ping
//!   pulls `events.list` since the stored `syncToken`; a Graph notification fetches the event;
//!   lifecycle notifications renew (`reauthorizationRequired`) or recreate
//!   (`subscriptionRemoved`) the subscription. A moved event changes the task's due date as the
//!   integration's actor, and the consumer skips that actor's events (echo suppression).
//! - **Renewal** ([`renew_watches_once`], every [`ChatSettings::renew_every`]): opens the push
//!   channel of a connected calendar integration that has none and renews the ones expiring
//!   within [`ChatSettings::renew_before`]. The channel (id, resource id, expiry, sync token)
//!   is persisted in the integration's config under `push_channel`.
//!
//! Provider API calls use the integration's OAuth access token (`OAuth::access_token`, refreshed
//! when due). Follow-ups to Slack's `response_url` go through the SSRF guard like every
//! outbound target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pm_core::Pm;
use pm_core::event::{Actor, Checkpoint, Event, EventKind, Origin, Tailer};
use pm_core::id::{IntegrationId, OrgId, StateId, TaskId, UserId};
use pm_core::model::{Email, StateCategory, Task, TaskPatch, TaskTitle};
use pm_core::query::{PageRequest, TaskFilter};
use pm_core::service::CreateTask;
use pm_core::store::EventLog;
use pm_integrations::calendar::{CalendarClient, EventDraft, Watch, format_date};
use pm_integrations::crypto::Secret;
use pm_integrations::model::{
    CredentialKind, ExternalMapping, InboundDelivery, Integration, IntegrationPatch, Intent,
    IntentClaim, MappingId, SyncedBase,
};
use pm_integrations::provider::{InboundEvent, ProviderKey};
use pm_integrations::slack::{
    self, ACTION_ASSIGN_ME, ACTION_SET_STATE, BlockAction, Message, PmCommand, SlackClient,
    SlashCommand, TaskCard,
};
use pm_integrations::sync::Snapshot;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::ApiError;
use crate::integrations::{Integrations, entry};
use pm_integrations::model::Direction;

/// The event-log consumer name of the chat/calendar consumer.
pub const CONSUMER: &str = "chat-calendar";

/// Longest stretch of uninteresting events the consumer reads without saving its cursor.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(5);

/// Pauses before the consumer tries a failing provider call again (then it logs and moves on:
/// one provider's outage must not hold every other integration's events).
const PROVIDER_RETRIES: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(3)];

/// Where the provider APIs are (tests point them at mock servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderApis {
    /// Slack Web API (`PM_SLACK_API_URL`).
    pub slack: String,
    /// Google Calendar v3 (`PM_GOOGLE_CALENDAR_API_URL`).
    pub google_calendar: String,
    /// Microsoft Graph v1.0 (`PM_GRAPH_API_URL`).
    pub graph: String,
}

impl Default for ProviderApis {
    fn default() -> Self {
        Self {
            slack: slack::SLACK_API.into(),
            google_calendar: pm_integrations::calendar::google::GOOGLE_CALENDAR_API.into(),
            graph: pm_integrations::calendar::outlook::GRAPH_API.into(),
        }
    }
}

/// Settings of the Slack and calendar flows.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// Provider API base URLs.
    pub apis: ProviderApis,
    /// This server's public base URL (`PM_PUBLIC_URL`, e.g. `https://pm.example.com`), where
    /// Google and Graph deliver push notifications; calendar push channels are opened only when
    /// it is set.
    pub public_url: Option<String>,
    /// Lifetime asked for a push channel/subscription.
    pub watch_ttl: Duration,
    /// Renew a channel that expires within this.
    pub renew_before: Duration,
    /// How often the renewal job looks.
    pub renew_every: Duration,
    /// How long a slash command may take before the synchronous reply says "working on it"
    /// and the answer goes to `response_url` (Slack waits 3 s).
    pub reply_budget: Duration,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            apis: ProviderApis::default(),
            public_url: None,
            // Graph allows at most 4230 minutes on events; Google up to weeks.
            watch_ttl: Duration::from_secs(2 * 24 * 3600),
            renew_before: Duration::from_secs(12 * 3600),
            renew_every: Duration::from_secs(15 * 60),
            reply_budget: Duration::from_millis(2500),
        }
    }
}

impl ChatSettings {
    /// Reads `PM_SLACK_API_URL`, `PM_GOOGLE_CALENDAR_API_URL`, `PM_GRAPH_API_URL` and
    /// `PM_PUBLIC_URL` through `var`; errors name the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = Self::default();
        let url = |name: &str| -> Result<Option<String>, String> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => match url::Url::parse(v.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                        Ok(Some(v.trim().trim_end_matches('/').to_owned()))
                    }
                    _ => Err(format!("{name} must be an http(s) URL, not {v:?}")),
                },
            }
        };
        if let Some(v) = url("PM_SLACK_API_URL")? {
            s.apis.slack = v;
        }
        if let Some(v) = url("PM_GOOGLE_CALENDAR_API_URL")? {
            s.apis.google_calendar = v;
        }
        if let Some(v) = url("PM_GRAPH_API_URL")? {
            s.apis.graph = v;
        }
        s.public_url = url("PM_PUBLIC_URL")?;
        Ok(s)
    }

    fn calendar_base(&self, provider: &str) -> &str {
        if provider == "outlook" { &self.apis.graph } else { &self.apis.google_calendar }
    }
}

fn is_calendar(i: &Integration) -> bool {
    matches!(i.provider.as_str(), "google_calendar" | "outlook")
}

/// The error text a user or a log may see (problem details never carry secrets).
fn detail(e: &ApiError) -> String {
    e.body()["detail"].as_str().unwrap_or("failed").to_owned()
}

/// The integration's provider access token (OAuth, refreshed when due).
pub async fn access_token(ints: &Integrations, id: IntegrationId) -> Result<Secret, ApiError> {
    Ok(ints.oauth()?.access_token(id).await?)
}

// --- Slack: users, cards, follow-ups -----------------------------------------------------------

/// The pm user acting for Slack user `slack_user`: the integration's stored mapping
/// (`config.users`: Slack id → pm user id), else the pm account with the e-mail Slack shows
/// for them (`users.info`), else the configured bot user (`config.bot_user_id`).
pub async fn slack_user(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    slack_user: &str,
) -> Result<Option<UserId>, ApiError> {
    let uuid_at = |v: &Value| v.as_str().and_then(|s| Uuid::parse_str(s).ok()).map(UserId);
    if let Some(u) = uuid_at(&i.config["users"][slack_user]) {
        return Ok(Some(u));
    }
    let token = access_token(ints, i.id).await?;
    let client = SlackClient::new(&ints.chat.apis.slack)?;
    if let Some(email) = client.user_email(&token, slack_user).await?
        && let Ok(email) = Email::parse(&email)
        && let Some(user) = pm.stores().directory.find_user_by_email(&email).await?
        && pm.stores().directory.get_membership(i.org_id, user.id).await?.is_some()
    {
        return Ok(Some(user.id));
    }
    Ok(uuid_at(&i.config["bot_user_id"]))
}

/// A task as a Slack card, with its project's states for the menu.
async fn card(pm: &Pm, t: &Task) -> Result<(TaskCard, Vec<(String, String)>), ApiError> {
    let states = pm.stores().projects.list_states(t.project_id).await?;
    let state = states
        .iter()
        .find(|s| s.id == t.state_id)
        .map(|s| s.name.as_str().to_owned())
        .unwrap_or_default();
    let mut assignees = Vec::new();
    for a in &t.assignees {
        match pm.stores().directory.get_user(*a).await {
            Ok(u) => assignees.push(u.display_name.as_str().to_owned()),
            Err(_) => assignees.push(a.0.to_string()),
        }
    }
    let card = TaskCard {
        id: t.id.0.to_string(),
        reference: t.reference.clone(),
        title: t.title.as_str().to_owned(),
        state,
        assignees,
        due: t.due_date.map(format_date),
    };
    Ok((card, states.iter().map(|s| (s.id.0.to_string(), s.name.as_str().to_owned())).collect()))
}

/// POSTs `body` to a Slack `response_url`, after the SSRF guard approved every address it
/// resolves to (and connecting only to those).
pub async fn respond(ints: &Integrations, response_url: &str, body: &Value) -> Result<(), String> {
    let url = ints.targets.parse_url("response_url", response_url).map_err(|e| e.to_string())?;
    let addrs = ints.targets.resolve(&url).await.map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .resolve_to_addrs(&host, &addrs)
        .build()
        .map_err(|e| e.to_string())?;
    let res = client.post(url.as_str()).json(body).send().await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("response_url answered HTTP {}", res.status().as_u16()));
    }
    Ok(())
}

/// [`respond`], logging the outcome.
async fn follow_up(ints: &Integrations, i: &Integration, response_url: &str, body: &Value) {
    let r = respond(ints, response_url, body).await;
    if let Err(e) = &r {
        tracing::warn!(error = %e, integration = %i.id, "Slack follow-up failed");
    }
    ints.log(entry(
        Some(i.id),
        "slack",
        Direction::Outbound,
        "slack.follow_up",
        r.is_ok(),
        json!({"error": r.err()}),
        ints.clock.now(),
    ))
    .await;
}

// --- Slack: slash commands ---------------------------------------------------------------------

/// Handles a verified `/pm` slash command; returns the synchronous (ephemeral) reply. Runs the
/// work in its own task: if it is not done within the reply budget, the reply says so and the
/// answer goes to the command's `response_url` when ready. `Err` only for a malformed form.
pub async fn slash_command(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    body: &[u8],
) -> Result<Value, ApiError> {
    let cmd = SlashCommand::parse(body)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<Value>();
    let (ints2, pm2, i2, cmd2) = (ints.clone(), pm.clone(), i.clone(), cmd.clone());
    tokio::spawn(async move {
        let (reply, follow) = run_command(&ints2, &pm2, &i2, &cmd2).await;
        // The caller gave up waiting: the answer goes to response_url instead.
        if let Err(reply) = tx.send(reply) {
            follow_up(&ints2, &i2, &cmd2.response_url, &reply).await;
        }
        if let Some(follow) = follow {
            follow_up(&ints2, &i2, &cmd2.response_url, &follow).await;
        }
    });
    match tokio::time::timeout(ints.chat.reply_budget, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        _ => Ok(slack::ephemeral("Working on it… the answer follows in a moment.", vec![])),
    }
}

/// Runs a command: the ephemeral reply, and an optional in-channel follow-up.
async fn run_command(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    cmd: &SlashCommand,
) -> (Value, Option<Value>) {
    let at = ints.clock.now();
    let result = command_result(ints, pm, i, cmd).await;
    let ok = result.is_ok();
    let (reply, follow, detail_text) = match result {
        Ok((reply, follow)) => (reply, follow, None),
        Err(e) => {
            let d = detail(&e);
            (slack::ephemeral(&format!("Sorry, that did not work: {d}"), vec![]), None, Some(d))
        }
    };
    ints.log(entry(
        Some(i.id),
        "slack",
        Direction::Inbound,
        "slack.command",
        ok,
        json!({"text": cmd.text, "user": cmd.user_id, "error": detail_text}),
        at,
    ))
    .await;
    (reply, follow)
}

async fn command_result(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    cmd: &SlashCommand,
) -> Result<(Value, Option<Value>), ApiError> {
    let parsed = match PmCommand::parse(&cmd.text) {
        Ok(c) => c,
        Err(e) => return Ok((slack::ephemeral(&e.to_string(), vec![]), None)),
    };
    let usage = || slack::ephemeral("Usage: `/pm create <title>` or `/pm list`", vec![]);
    if parsed == PmCommand::Help {
        return Ok((usage(), None));
    }
    let Some(user) = slack_user(ints, pm, i, &cmd.user_id).await? else {
        return Ok((
            slack::ephemeral(
                "Your Slack account is not linked to a pm account of this organization \
                 (same e-mail address, or ask an admin to map it).",
                vec![],
            ),
            None,
        ));
    };
    let origin = Origin::user(user);
    match parsed {
        PmCommand::Create { title } => {
            let title = TaskTitle::parse(&title)?;
            let task = pm.create_task(&origin, CreateTask::new(i.project_id, title)).await?;
            let (c, states) = card(pm, &task).await?;
            let reply = slack::ephemeral(
                &format!("Created {}: {}", task.reference, task.title.as_str()),
                vec![],
            );
            let announce = slack::in_channel(
                &format!("<@{}> created {}", cmd.user_id, task.reference),
                slack::notification(&format!("New task {}", task.reference), &c, &states),
            );
            Ok((reply, Some(announce)))
        }
        PmCommand::List => {
            let project = pm.get_project(&origin, i.project_id).await?;
            let filter = TaskFilter {
                state_categories: vec![
                    StateCategory::Backlog,
                    StateCategory::Unstarted,
                    StateCategory::Started,
                ],
                ..TaskFilter::project(i.project_id)
            };
            let page = PageRequest { limit: 20, ..PageRequest::default() };
            let tasks = pm.list_project_tasks(&origin, i.project_id, &filter, &page).await?;
            let mut cards = Vec::with_capacity(tasks.items.len());
            for t in &tasks.items {
                cards.push(card(pm, t).await?.0);
            }
            let blocks =
                slack::task_list(project.name.as_str(), &cards, tasks.next_cursor.is_some());
            Ok((slack::ephemeral(&format!("{} open tasks", cards.len()), blocks), None))
        }
        PmCommand::Help => Ok((usage(), None)),
    }
}

// --- Slack: buttons ----------------------------------------------------------------------------

/// Handles a verified interaction: "Assign to me" or a state chosen from the menu. The task is
/// updated synchronously; the message is replaced through `response_url` afterwards (or, when
/// the update was refused, an ephemeral note says why). `Ok(false)` for interactions pm does
/// not handle.
pub async fn block_action(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    body: &[u8],
) -> Result<bool, ApiError> {
    let Some(action) = BlockAction::parse(body)? else { return Ok(false) };
    if action.action_id != ACTION_ASSIGN_ME && action.action_id != ACTION_SET_STATE {
        return Ok(false);
    }
    let at = ints.clock.now();
    let result = run_action(ints, pm, i, &action).await;
    ints.log(entry(
        Some(i.id),
        "slack",
        Direction::Inbound,
        "slack.action",
        result.is_ok(),
        json!({"action": action.action_id, "user": action.user_id,
               "error": result.as_ref().err().map(detail)}),
        at,
    ))
    .await;
    match result {
        Ok(task) => {
            if let Some(url) = action.response_url.clone() {
                let (ints, pm, i) = (ints.clone(), pm.clone(), i.clone());
                tokio::spawn(async move {
                    match card(&pm, &task).await {
                        Ok((c, states)) => {
                            let body = slack::replace_original(
                                &format!("{} updated", task.reference),
                                slack::task_card(&c, &states),
                            );
                            follow_up(&ints, &i, &url, &body).await;
                        }
                        Err(e) => tracing::warn!(error = %detail(&e), "cannot render the card"),
                    }
                });
            }
        }
        Err(e) => {
            if let Some(url) = action.response_url.clone() {
                let (ints, i) = (ints.clone(), i.clone());
                let note = json!({"response_type": "ephemeral", "replace_original": false,
                                  "text": format!("Sorry, that did not work: {}", detail(&e))});
                tokio::spawn(async move { follow_up(&ints, &i, &url, &note).await });
            }
        }
    }
    Ok(true)
}

async fn run_action(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    action: &BlockAction,
) -> Result<Task, ApiError> {
    let (task_id, state_id) = match action.action_id.as_str() {
        ACTION_ASSIGN_ME => (action.value.as_str(), None),
        _ => {
            let (t, s) = action.value.split_once(':').ok_or_else(|| {
                ApiError::invalid_field("payload.actions[0].value".into(), "not task:state")
            })?;
            (t, Some(s))
        }
    };
    let parse = |field: &str, s: &str| {
        Uuid::parse_str(s).map_err(|_| ApiError::invalid_field(field.into(), "not an id"))
    };
    let task_id = TaskId(parse("payload.actions[0].value", task_id)?);
    let state_id =
        state_id.map(|s| parse("payload.actions[0].value", s).map(StateId)).transpose()?;
    let Some(user) = slack_user(ints, pm, i, &action.user_id).await? else {
        return Err(ApiError::bad_request("your Slack account is not linked to a pm account"));
    };
    let origin = Origin::user(user);
    // Someone else may change the task between our read and our write: re-read and retry.
    for _ in 0..3 {
        let task = pm.get_task(&origin, task_id).await?;
        if task.project_id != i.project_id {
            return Err(ApiError::entity_not_found("task"));
        }
        let patch = match state_id {
            None => {
                let mut assignees = task.assignees.clone();
                assignees.insert(user);
                TaskPatch { assignees: Some(assignees), ..TaskPatch::default() }
            }
            Some(s) => TaskPatch { state_id: Some(s), ..TaskPatch::default() },
        };
        match pm.update_task(&origin, task_id, task.version, patch).await {
            Ok(t) => return Ok(t),
            Err(pm_core::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::bad_request("the task keeps changing; try again"))
}

// --- the consumer: notifications and calendar events -------------------------------------------

/// The running chat workers (consumer and renewal); dropping this stops them.
#[derive(Debug)]
pub struct ChatWorkers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ChatWorkers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the chat/calendar consumer over `events` and the renewal job.
pub fn start(ints: Integrations, pm: Pm, events: Arc<dyn EventLog>) -> ChatWorkers {
    let consumer = {
        let (ints, pm) = (ints.clone(), pm.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = consume(&ints, &pm, events.clone()).await {
                    tracing::warn!(error = %detail(&e), "chat consumer failed; restarting");
                    tokio::time::sleep(ints.worker.poll).await;
                }
            }
        })
    };
    let renewal = tokio::spawn(async move {
        loop {
            if let Err(e) = renew_watches_once(&ints).await {
                tracing::warn!(error = %detail(&e), "calendar channel renewal failed");
            }
            tokio::time::sleep(ints.chat.renew_every).await;
        }
    });
    ChatWorkers { tasks: vec![consumer, renewal] }
}

async fn consume(ints: &Integrations, pm: &Pm, events: Arc<dyn EventLog>) -> Result<(), ApiError> {
    let from = ints.stores.webhooks.cursor(CONSUMER).await?;
    let mut tail = Tailer::new(events, from);
    tail.poll = ints.worker.poll;
    // The cursor is written when an event concerned an integration or the consumer is caught
    // up, else at most every few seconds: most of the log is other projects' business, and
    // every write competes with pm-core's writer on a shared SQLite file. A restart re-reads at
    // most that stretch.
    let mut checkpoint = Checkpoint::new(from).every(CURSOR_SAVE_EVERY);
    loop {
        let batch = tail.next_batch_or_idle(100, Checkpoint::IDLE).await?;
        let mut acted = false;
        let mut by_org: BTreeMap<OrgId, Vec<Integration>> = BTreeMap::new();
        for e in &batch {
            let (Some(org), Some(project)) = (e.org_id, e.project_id) else { continue };
            if let std::collections::btree_map::Entry::Vacant(slot) = by_org.entry(org) {
                slot.insert(ints.stores.integrations.list_integrations(org).await?);
            }
            for i in by_org[&org].iter().filter(|i| i.enabled && i.project_id == project) {
                acted = true;
                // Our own writes coming back (a calendar move applied to the task) are not
                // sent out again.
                if e.actor == Actor::Integration(i.id) {
                    continue;
                }
                let mut r = Ok(());
                // A provider failing (502: a 5xx, a timeout; 429s are waited out by the client)
                // gets two more tries before the event is passed.
                for pause in PROVIDER_RETRIES.iter().map(Some).chain([None]) {
                    r = match i.provider.as_str() {
                        "slack" => notify_slack(ints, pm, i, e).await,
                        "google_calendar" | "outlook" => push_due_date(ints, pm, i, e).await,
                        _ => Ok(()),
                    };
                    match (&r, pause) {
                        (Err(err), Some(p))
                            if err.status() == axum::http::StatusCode::BAD_GATEWAY =>
                        {
                            tokio::time::sleep(*p).await;
                        }
                        _ => break,
                    }
                }
                if let Err(err) = r {
                    // At-least-once for storage failures (the cursor stays); a provider refusal
                    // is logged and the event passed.
                    if err.status() == axum::http::StatusCode::INTERNAL_SERVER_ERROR {
                        return Err(err);
                    }
                    ints.log(entry(
                        Some(i.id),
                        i.provider.as_str(),
                        Direction::Outbound,
                        "event.failed",
                        false,
                        json!({"event": e.kind.as_str(), "error": detail(&err)}),
                        ints.clock.now(),
                    ))
                    .await;
                }
            }
        }
        let upto = tail.position();
        if checkpoint.due(upto, acted, batch.is_empty()) {
            ints.stores.webhooks.enqueue_outbound(CONSUMER, upto, &[]).await?;
            checkpoint.saved(upto);
        }
    }
}

/// What a Slack channel hears about: assignments, state changes and new comments.
async fn notify_slack(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    e: &Event,
) -> Result<(), ApiError> {
    let Some(channel) = i.config["channel"].as_str() else { return Ok(()) };
    let Some(task_id) = e.task_id else { return Ok(()) };
    let changes = &e.payload["changes"];
    let headline = match e.kind {
        EventKind::TaskUpdated if changes.get("assignees").is_some() => "Assignees changed",
        EventKind::TaskUpdated if changes.get("state_id").is_some() => "State changed",
        EventKind::CommentCreated => "New comment",
        _ => return Ok(()),
    };
    let task = match pm.stores().tasks.get_task(task_id).await {
        Ok(t) => t,
        Err(pm_core::Error::NotFound { .. }) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let who = match e.actor {
        Actor::User(u) => pm
            .stores()
            .directory
            .get_user(u)
            .await
            .map(|u| u.display_name.as_str().to_owned())
            .unwrap_or_else(|_| "Someone".into()),
        _ => "An automation".into(),
    };
    let (c, states) = card(pm, &task).await?;
    let headline = match e.kind {
        EventKind::CommentCreated => {
            let body = e.payload["comment"]["body"].as_str().unwrap_or_default();
            let short: String = body.chars().take(200).collect();
            format!("{who} commented on {}: {short}", task.reference)
        }
        _ => format!("{headline} on {} by {who}: now {}", task.reference, c.state),
    };
    let m = Message {
        channel: channel.to_owned(),
        text: headline.clone(),
        blocks: slack::notification(&headline, &c, &states),
    };
    let ts = match post_once(ints, i, &format!("notify:{}:{}", e.id.0, i.id.0), &m).await? {
        Posted::Now(ts) => ts,
        Posted::Before(_) => return Ok(()),
        Posted::InFlight => {
            ints.log(entry(
                Some(i.id),
                "slack",
                Direction::Outbound,
                "slack.notification_in_flight",
                true,
                json!({"event": e.kind.as_str(), "task": task.reference}),
                ints.clock.now(),
            ))
            .await;
            return Ok(());
        }
    };
    ints.log(entry(
        Some(i.id),
        "slack",
        Direction::Outbound,
        "slack.notification",
        true,
        json!({"event": e.kind.as_str(), "task": task.reference, "ts": ts}),
        ints.clock.now(),
    ))
    .await;
    Ok(())
}

/// How long a Slack send may stay pending before a replay takes it over (its sender died
/// mid-call): well past the client's request timeout.
pub const SEND_LEASE: Duration = Duration::from_secs(60);

/// What [`post_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Posted now; the message's `ts`.
    Now(String),
    /// Posted before under this key; its `ts`.
    Before(String),
    /// Another sender holds the key (within [`SEND_LEASE`]); nothing posted.
    InFlight,
}

/// Posts `m` with `i`'s token unless a message was posted under `key` before: the intent is
/// recorded first and marked done with the `ts` after (see the module docs for what a crash
/// in between does). A send Slack refused is forgotten, so a retry posts.
pub async fn post_once(
    ints: &Integrations,
    i: &Integration,
    key: &str,
    m: &Message,
) -> Result<Posted, ApiError> {
    let now = ints.clock.now();
    let intent = Intent {
        key: format!("slack.message:{key}"),
        integration_id: i.id,
        kind: "slack.message".into(),
        started_at: now,
    };
    match ints.stores.sync_state.begin_intent(&intent, now - SEND_LEASE).await? {
        IntentClaim::Claimed => {}
        IntentClaim::Done(r) => {
            return Ok(Posted::Before(r["ts"].as_str().unwrap_or_default().to_owned()));
        }
        IntentClaim::InFlight => return Ok(Posted::InFlight),
    }
    let sent = async {
        let token = access_token(ints, i.id).await?;
        let client = SlackClient::new(&ints.chat.apis.slack)?;
        Ok::<_, ApiError>(client.post_message(&token, m).await?)
    }
    .await;
    match sent {
        Ok(ts) => {
            ints.stores
                .sync_state
                .finish_intent(&intent.key, &json!({ "ts": ts }), ints.clock.now())
                .await?;
            Ok(Posted::Now(ts))
        }
        Err(e) => {
            if let Err(err) = ints.stores.sync_state.abandon_intent(&intent.key).await {
                tracing::warn!(error = %err, "cannot drop a Slack send intent");
            }
            Err(e)
        }
    }
}

fn due_snapshot(due: Option<time::Date>, title: &str) -> Snapshot {
    let mut s = Snapshot::new();
    s.insert("due".into(), due.map_or(Value::Null, |d| json!(format_date(d))));
    s.insert("title".into(), json!(title));
    s
}

/// Mirrors a task's due date into its calendar event: create when it gets one, move when it
/// changes, delete when it loses it (or the task is deleted/archived).
async fn push_due_date(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    e: &Event,
) -> Result<(), ApiError> {
    let Some(task_id) = e.task_id else { return Ok(()) };
    if !matches!(e.kind, EventKind::TaskCreated | EventKind::TaskUpdated | EventKind::TaskDeleted) {
        return Ok(());
    }
    let task = match pm.stores().tasks.get_task(task_id).await {
        Ok(t) if !t.archived => Some(t),
        Ok(_) | Err(pm_core::Error::NotFound { .. }) => None,
        Err(err) => return Err(err.into()),
    };
    let mapping = ints.stores.mappings.mapping_by_task(i.id, task_id).await?;
    let due = task.as_ref().and_then(|t| t.due_date);
    let client = CalendarClient::for_provider(
        i.provider.as_str(),
        ints.chat.calendar_base(i.provider.as_str()),
        &i.config,
    )?;
    let at = ints.clock.now();
    let log = |op: &str, detail: Value| {
        entry(Some(i.id), i.provider.as_str(), Direction::Outbound, op, true, detail, at)
    };
    match (task, due, mapping) {
        (Some(t), Some(date), None) => {
            let title = format!("{} {}", t.reference, t.title.as_str());
            let token = access_token(ints, i.id).await?;
            let draft = EventDraft { title: title.clone(), date, task_id: t.id.0.to_string() };
            let ev = client.create_event(&token, &draft).await?;
            let m = ExternalMapping {
                id: MappingId::new(),
                integration_id: i.id,
                task_id: t.id,
                external_id: ev.id.clone(),
                external_url: None,
                base: due_snapshot(Some(date), &title),
                remote_updated_at: None,
                pushed_fingerprint: None,
                version: 1,
                created_at: at,
                updated_at: at,
            };
            ints.stores.mappings.create_mapping(&m).await?;
            ints.log(log("event.created", json!({"task": t.reference, "event_id": ev.id}))).await;
        }
        (Some(t), Some(date), Some(m)) => {
            let title = format!("{} {}", t.reference, t.title.as_str());
            let want = due_snapshot(Some(date), &title);
            if m.base == want {
                return Ok(());
            }
            let token = access_token(ints, i.id).await?;
            let draft = EventDraft { title, date, task_id: t.id.0.to_string() };
            client.update_event(&token, &m.external_id, &draft).await?;
            let base =
                SyncedBase { base: want, remote_updated_at: None, pushed_fingerprint: None, at };
            ints.stores.mappings.commit_sync(m.id, m.version, &base, &[]).await?;
            ints.log(log("event.updated", json!({"task": t.reference, "event_id": m.external_id})))
                .await;
        }
        (_, None, Some(m)) => {
            let token = access_token(ints, i.id).await?;
            client.delete_event(&token, &m.external_id).await?;
            ints.stores.mappings.delete_mapping(m.id).await?;
            ints.log(log("event.deleted", json!({"event_id": m.external_id}))).await;
        }
        _ => {}
    }
    Ok(())
}

// --- calendar pushes in ------------------------------------------------------------------------

/// Applies a verified calendar notification (from the inbound queue): events moved in the
/// calendar move their tasks' due dates. Slack deliveries were answered when received and
/// are ignored here.
pub async fn on_inbound(
    ints: &Integrations,
    d: &InboundDelivery,
    events: &[InboundEvent],
) -> Result<(), ApiError> {
    let Some(pm) = ints.pm.as_ref() else { return Ok(()) };
    if !matches!(d.provider.as_str(), "google_calendar" | "outlook") {
        return Ok(());
    }
    let i = ints.stores.integrations.get_integration(d.integration_id).await?;
    if !is_calendar(&i) {
        return Ok(());
    }
    let client = CalendarClient::for_provider(
        i.provider.as_str(),
        ints.chat.calendar_base(i.provider.as_str()),
        &i.config,
    )?;
    let token = access_token(ints, i.id).await?;
    match &client {
        CalendarClient::Google(g) => {
            // `sync` is the channel's first ping: nothing changed yet.
            if events.iter().all(|e| e.kind == "channel.sync") {
                return Ok(());
            }
            let watch = watch_of(&i);
            let changes =
                g.changes(&token, watch.as_ref().and_then(|w| w.sync_token.as_deref())).await?;
            for ev in &changes.events {
                apply_event_change(ints, pm, &i, &ev.id, ev.date, ev.cancelled).await?;
            }
            if let (Some(mut w), Some(next)) = (watch, changes.next_sync_token) {
                w.sync_token = Some(next);
                save_watch(ints, &i, Some(&w)).await?;
            }
        }
        CalendarClient::Outlook(o) => {
            for e in events {
                match e.kind.as_str() {
                    "lifecycle.reauthorizationRequired" | "lifecycle.missed" => {
                        renew_one(ints, &i, true).await?;
                    }
                    "lifecycle.subscriptionRemoved" => {
                        let cleared = save_watch(ints, &i, None).await?;
                        renew_one(ints, &cleared, true).await?;
                    }
                    k if k.starts_with("change.") => {
                        let Some(id) = &e.external_id else { continue };
                        match o.get_event(&token, id).await? {
                            Some(ev) => {
                                apply_event_change(ints, pm, &i, &ev.id, ev.date, ev.cancelled)
                                    .await?
                            }
                            None => apply_event_change(ints, pm, &i, id, None, true).await?,
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// One event as the calendar now has it: a new date moves the task's due date (as the
/// integration); a deleted event clears it. Events pm did not create are ignored.
async fn apply_event_change(
    ints: &Integrations,
    pm: &Pm,
    i: &Integration,
    event_id: &str,
    date: Option<time::Date>,
    cancelled: bool,
) -> Result<(), ApiError> {
    let Some(m) = ints.stores.mappings.mapping_by_external(i.id, event_id).await? else {
        return Ok(());
    };
    let new_due = if cancelled { None } else { date };
    let new_due_json = new_due.map_or(Value::Null, |d| json!(format_date(d)));
    if m.base.get("due") == Some(&new_due_json) {
        // Our own push coming back, or nothing pm tracks changed.
        return Ok(());
    }
    let origin = Origin { actor: Actor::Integration(i.id), cause: None };
    let at = ints.clock.now();
    for _ in 0..3 {
        let task = match pm.get_task(&origin, m.task_id).await {
            Ok(t) => t,
            Err(pm_core::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let patch = TaskPatch { due_date: Some(new_due), ..TaskPatch::default() };
        match pm.update_task(&origin, task.id, task.version, patch).await {
            Ok(t) => {
                let title = format!("{} {}", t.reference, t.title.as_str());
                if cancelled {
                    ints.stores.mappings.delete_mapping(m.id).await?;
                } else {
                    let base = SyncedBase {
                        base: due_snapshot(new_due, &title),
                        remote_updated_at: Some(at),
                        pushed_fingerprint: None,
                        at,
                    };
                    ints.stores.mappings.commit_sync(m.id, m.version, &base, &[]).await?;
                }
                ints.log(entry(
                    Some(i.id),
                    i.provider.as_str(),
                    Direction::Inbound,
                    "event.moved",
                    true,
                    json!({"task": t.reference, "event_id": event_id, "due": new_due_json}),
                    at,
                ))
                .await;
                return Ok(());
            }
            Err(pm_core::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::bad_request("the task keeps changing"))
}

// --- push channels and their renewal -----------------------------------------------------------

/// The integration's persisted push channel, if any.
pub fn watch_of(i: &Integration) -> Option<Watch> {
    serde_json::from_value(i.config.get("push_channel")?.clone()).ok()
}

/// Persists (or clears) the push channel in the integration's config, at its version.
async fn save_watch(
    ints: &Integrations,
    i: &Integration,
    w: Option<&Watch>,
) -> Result<Integration, ApiError> {
    let mut config = i.config.clone();
    if !config.is_object() {
        config = json!({});
    }
    match w {
        Some(w) => config["push_channel"] = serde_json::to_value(w).unwrap_or(Value::Null),
        None => {
            if let Some(m) = config.as_object_mut() {
                m.remove("push_channel");
            }
        }
    }
    let patch = IntegrationPatch { config: Some(config), ..IntegrationPatch::default() };
    Ok(ints
        .stores
        .integrations
        .update_integration(i.id, i.version, &patch, ints.clock.now())
        .await?)
}

/// Where the integration's notifications are delivered.
fn notification_url(ints: &Integrations, i: &Integration) -> Option<String> {
    let base = ints.chat.public_url.as_deref()?;
    Some(format!("{}/api/v1/hooks/{}/{}", base.trim_end_matches('/'), i.provider, i.id))
}

/// Opens or renews one calendar integration's channel: opened when absent, renewed when it
/// expires within `renew_before` (or always with `force`). Returns whether it called the
/// provider.
async fn renew_one(ints: &Integrations, i: &Integration, force: bool) -> Result<bool, ApiError> {
    let Some(address) = notification_url(ints, i) else { return Ok(false) };
    let now = ints.clock.now();
    let current = watch_of(i);
    if let Some(w) = &current
        && !force
        && w.expires_at > now + ints.chat.renew_before
    {
        return Ok(false);
    }
    let secret = ints
        .stores
        .credentials
        .get_credential(i.id, CredentialKind::WebhookSecret)
        .await?
        .ok_or_else(|| ApiError::bad_request("the integration has no webhook secret"))?;
    let secret = ints
        .keyring()?
        .open_secret(&secret.sealed, &CredentialKind::WebhookSecret.context(i.id))?;
    let token = access_token(ints, i.id).await?;
    let client = CalendarClient::for_provider(
        i.provider.as_str(),
        ints.chat.calendar_base(i.provider.as_str()),
        &i.config,
    )?;
    let ttl = ints.chat.watch_ttl;
    let fresh = match &current {
        None => {
            let mut w = client.watch(&token, &address, secret.expose(), ttl, now).await?;
            // Google: the first sync token comes from a full listing.
            if let CalendarClient::Google(g) = &client {
                w.sync_token = g.changes(&token, None).await?.next_sync_token;
            }
            w
        }
        Some(w) => client.renew(&token, w, &address, secret.expose(), ttl, now).await?,
    };
    save_watch(ints, i, Some(&fresh)).await?;
    ints.log(entry(
        Some(i.id),
        i.provider.as_str(),
        Direction::Outbound,
        if current.is_some() { "channel.renewed" } else { "channel.opened" },
        true,
        json!({"channel_id": fresh.id, "expires_at": fresh.expires_at.unix_timestamp()}),
        now,
    ))
    .await;
    Ok(true)
}

/// One round of the renewal job over every enabled, connected calendar integration; returns
/// how many channels were opened or renewed. A failing integration is logged and skipped.
pub async fn renew_watches_once(ints: &Integrations) -> Result<usize, ApiError> {
    if ints.chat.public_url.is_none() || ints.oauth.is_none() {
        return Ok(0);
    }
    let mut n = 0;
    for key in ["google_calendar", "outlook"] {
        let key = ProviderKey::parse(key)?;
        for i in ints.stores.integrations.enabled_integrations_of(&key).await? {
            if ints.oauth()?.connection(i.id).await?.is_none() {
                continue;
            }
            match renew_one(ints, &i, false).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    ints.log(entry(
                        Some(i.id),
                        i.provider.as_str(),
                        Direction::Outbound,
                        "channel.renewal_failed",
                        false,
                        json!({"error": detail(&e)}),
                        ints.clock.now(),
                    ))
                    .await;
                }
            }
        }
    }
    Ok(n)
}

// --- the workflows' message port ---------------------------------------------------------------

/// pm-workflows' `message` action (the [`MessageSender`](pm_workflows::ports::MessageSender)
/// port) over Slack: the organization's enabled Slack integration whose `channel` is the
/// action's channel, else its oldest enabled Slack integration, posts the text with
/// `chat.postMessage`, once per the step's idempotency key ([`post_once`]): a replayed step
/// whose message was posted gets the first post's result back. A step replayed while another
/// sender holds the key fails retryably (the engine tries again after its backoff).
#[derive(Debug, Clone)]
pub struct SlackMessages {
    ints: Integrations,
}

impl SlackMessages {
    /// Over the server's integrations.
    pub fn new(ints: Integrations) -> Self {
        Self { ints }
    }
}

#[async_trait::async_trait]
impl pm_workflows::ports::MessageSender for SlackMessages {
    async fn send(
        &self,
        org: OrgId,
        provider: &str,
        channel: &str,
        text: &str,
        idempotency_key: &str,
    ) -> pm_workflows::Result<Value> {
        use pm_workflows::Error as E;
        if provider != "slack" {
            return Err(E::invalid(
                "action.provider",
                format!("{provider:?} cannot send messages"),
            ));
        }
        if channel.trim().is_empty() || channel.len() > 80 {
            return Err(E::invalid("action.channel", "1-80 characters"));
        }
        let failed = |e: ApiError| E::Action(format!("Slack: {}", detail(&e)));
        let all = self
            .ints
            .stores
            .integrations
            .list_integrations(org)
            .await
            .map_err(|e| failed(e.into()))?;
        let slack: Vec<&Integration> =
            all.iter().filter(|i| i.enabled && i.provider.as_str() == "slack").collect();
        let bare = |c: &str| c.trim_start_matches('#').to_owned();
        let Some(i) = slack
            .iter()
            .find(|i| i.config["channel"].as_str().map(bare) == Some(bare(channel)))
            .or(slack.first())
        else {
            return Err(E::invalid(
                "action.provider",
                "the organization has no enabled Slack integration",
            ));
        };
        let m = Message {
            channel: channel.to_owned(),
            text: text.to_owned(),
            blocks: vec![
                json!({"type": "section", "text": {"type": "mrkdwn", "text": slack::escape(text)}}),
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": "Sent by a pm workflow"}]}),
            ],
        };
        let ts = match post_once(&self.ints, i, idempotency_key, &m).await.map_err(failed)? {
            Posted::Now(ts) => ts,
            Posted::Before(ts) => {
                return Ok(json!({"provider": "slack", "integration_id": i.id.0,
                                 "channel": channel, "ts": ts, "replayed": true}));
            }
            Posted::InFlight => {
                return Err(E::Action(format!(
                    "Slack: a message with idempotency key {idempotency_key:?} is being sent"
                )));
            }
        };
        self.ints
            .log(entry(
                Some(i.id),
                "slack",
                Direction::Outbound,
                "slack.workflow_message",
                true,
                json!({"channel": channel, "ts": ts, "idempotency_key": idempotency_key}),
                self.ints.clock.now(),
            ))
            .await;
        Ok(json!({"provider": "slack", "integration_id": i.id.0, "channel": channel, "ts": ts}))
    }
}

// --- configuration ------------------------------------------------------------------------------

/// Checks the Slack and calendar settings in an integration's `config` (errors name the
/// field): Slack's `channel` (an id or `#name`), `users` (Slack user id → pm user id) and
/// `bot_user_id`; a calendar's `calendar_id`. Other providers' configs are not looked at here.
pub fn check_config(provider: &str, config: &Value) -> Result<(), ApiError> {
    let bad = |field: &str, why: &str| Err(ApiError::invalid_field(format!("config.{field}"), why));
    let is_uuid = |v: &Value| v.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok());
    match provider {
        "slack" => {
            if let Some(c) = config.get("channel").filter(|c| !c.is_null()) {
                let ok = c.as_str().is_some_and(|c| {
                    (1..=80).contains(&c.len())
                        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"#-_.".contains(&b))
                });
                if !ok {
                    return bad("channel", "a channel id (C…) or #name");
                }
            }
            if let Some(u) = config.get("users").filter(|u| !u.is_null()) {
                let Some(map) = u.as_object() else {
                    return bad("users", "an object of Slack user id → pm user id");
                };
                for (slack_id, pm_id) in map {
                    let id_ok = !slack_id.is_empty()
                        && slack_id.len() <= 40
                        && slack_id.bytes().all(|b| b.is_ascii_alphanumeric());
                    if !id_ok || !is_uuid(pm_id) {
                        return bad(
                            &format!("users.{slack_id}"),
                            "a Slack user id mapped to a pm user id",
                        );
                    }
                }
            }
            if let Some(b) = config.get("bot_user_id").filter(|b| !b.is_null())
                && !is_uuid(b)
            {
                return bad("bot_user_id", "a pm user id");
            }
            Ok(())
        }
        "google_calendar" | "outlook" => {
            CalendarClient::for_provider(provider, "https://calendar.invalid", config)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The config an update stores: the caller's, keeping the server-managed `push_channel` (the
/// open calendar channel) unless the caller sent one.
pub fn keep_server_state(old: &Value, mut new: Value) -> Value {
    if let (Some(channel), Some(map)) = (old.get("push_channel"), new.as_object_mut())
        && !map.contains_key("push_channel")
    {
        map.insert("push_channel".into(), channel.clone());
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_and_calendar_configs_are_checked_naming_the_field() {
        let field = |r: Result<(), ApiError>| r.unwrap_err().body()["field"].clone();
        assert!(
            check_config("slack", &json!({"channel": "C0PM", "users": {"U1": Uuid::now_v7()}}))
                .is_ok()
        );
        assert_eq!(field(check_config("slack", &json!({"channel": "<!here>"}))), "config.channel");
        assert_eq!(
            field(check_config("slack", &json!({"users": {"U1": "me"}}))),
            "config.users.U1"
        );
        assert_eq!(field(check_config("slack", &json!({"bot_user_id": 7}))), "config.bot_user_id");
        assert_eq!(
            field(check_config("outlook", &json!({"calendar_id": "../me"}))),
            "config.calendar_id"
        );
        assert!(check_config("github", &json!({"anything": 1})).is_ok());
    }

    #[test]
    fn updates_keep_the_open_channel() {
        let old = json!({"calendar_id": "a", "push_channel": {"id": "c1"}});
        let kept = keep_server_state(&old, json!({"calendar_id": "b"}));
        assert_eq!(kept, json!({"calendar_id": "b", "push_channel": {"id": "c1"}}));
        let replaced = keep_server_state(&old, json!({"push_channel": null}));
        assert_eq!(replaced, json!({"push_channel": null}));
    }

    #[test]
    fn settings_from_the_environment_name_the_variable() {
        let s = ChatSettings::from_env(|v| {
            (v == "PM_PUBLIC_URL").then(|| "https://pm.example/".into())
        })
        .unwrap();
        assert_eq!(s.public_url.as_deref(), Some("https://pm.example"));
        assert_eq!(s.apis, ProviderApis::default());
        let e = ChatSettings::from_env(|v| (v == "PM_GRAPH_API_URL").then(|| "ftp://x".into()));
        assert!(e.unwrap_err().contains("PM_GRAPH_API_URL"));
    }
}

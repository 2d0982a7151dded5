//! Workflow definitions: versioned JSON documents of trigger → conditions → steps.
//!
//! The document format is published as a JSON Schema (`pm-workflows/schema/workflow.schema.json`,
//! generated from these types by [`json_schema`]; a test fails when the committed file drifts).
//! [`Definition::parse`] is the only way external input becomes a definition: it names the JSON
//! path of the first offending value (`steps[2].then[0].action.to_state`), compiles every CEL
//! expression and rhai script once (a syntax error is reported at its path, not at run time),
//! and enforces the [`Limits`] (components per workflow, nesting, items and run time), each a
//! distinct [`Error::LimitExceeded`].
//!
//! Tagged objects (`{"type": "transition", ...}`) are parsed by hand one level at a time rather
//! than by serde's internally-tagged derive: serde buffers such objects and loses the path of
//! errors inside them, and naming the path is the point.

use std::collections::{BTreeMap, HashSet};

use pm_core::id::{StateId, UserId};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The format version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Hard limits a definition and its executions are held to. Hosts may lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Steps, conditions, switch cases and approval stages in one workflow.
    pub max_components: usize,
    /// Deepest nesting of branches / loops / approvals.
    pub max_nesting: usize,
    /// Items a for-each may visit, and actions one execution may run, in total.
    pub max_items_per_execution: u32,
    /// Longest wall-clock time one execution may run (waits and approvals excluded).
    pub max_run_time_secs: u32,
    /// Longest CEL expression or template, in bytes.
    pub max_expression_len: usize,
    /// Longest script source, in bytes.
    pub max_script_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_components: 200,
            max_nesting: 8,
            max_items_per_execution: 1_000,
            max_run_time_secs: 300,
            max_expression_len: 4_096,
            max_script_len: 16_384,
        }
    }
}

/// A workflow definition document (format version [`SCHEMA_VERSION`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pm workflow definition")]
pub struct Definition {
    /// Format version of this document; must be 1.
    pub schema_version: u32,
    /// Human name, 1–200 characters.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What starts an execution.
    pub trigger: Trigger,
    /// CEL expressions over `event`, `task`, `trigger` and `now`; all must be `true` for an
    /// execution to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// Guardrails and retry policy.
    #[serde(default)]
    pub options: Options,
}

/// Guardrails and retry policy of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// React to events caused by automations (including this workflow). Off by default: it is
    /// how cascades start. Cascades stop at depth 10 either way (status `loop`).
    #[serde(default)]
    pub allow_automation_events: bool,
    /// Most for-each items plus actions in one execution (≤ the host's limit).
    #[serde(default = "default_max_items")]
    pub max_items: u32,
    /// Longest run time of one execution in seconds (≤ the host's limit).
    #[serde(default = "default_max_run_time")]
    pub max_run_time_secs: u32,
    /// Attempts per side-effecting step (1–10), with exponential backoff.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt up to `max_backoff_ms`.
    #[serde(default = "default_backoff")]
    pub initial_backoff_ms: u32,
    /// Cap of the retry delay in milliseconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u32,
}

fn default_max_items() -> u32 {
    100
}
fn default_max_run_time() -> u32 {
    60
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> u32 {
    500
}
fn default_max_backoff() -> u32 {
    60_000
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_automation_events: false,
            max_items: default_max_items(),
            max_run_time_secs: default_max_run_time(),
            max_attempts: default_attempts(),
            initial_backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

impl Options {
    /// The delay before attempt `attempt + 1` (attempt 1 is the first try): exponential, capped.
    pub fn backoff(&self, attempt: u32) -> std::time::Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ms = (self.initial_backoff_ms as u64).saturating_mul(1u64 << exp);
        std::time::Duration::from_millis(ms.min(self.max_backoff_ms as u64))
    }
}

/// Generates a tagged enum whose variants each hold one payload struct, with a parser that
/// tracks the JSON path into the payload (see the module docs for why not serde's derive).
macro_rules! tagged {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $tag:literal => $variant:ident($payload:ty) ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($payload), )*
        }

        impl $name {
            /// Every `type` name.
            pub const TYPES: &'static [&'static str] = &[$($tag),*];

            /// The `type` name.
            pub fn type_name(&self) -> &'static str {
                match self { $( $name::$variant(_) => $tag, )* }
            }

            fn parse_at(value: &Value, path: &str) -> Result<Self> {
                let (tag, body) = split_tag(value, path, Self::TYPES)?;
                match tag.as_str() {
                    $( $tag => Ok($name::$variant(leaf::<$payload>(&body, path)?)), )*
                    _ => unreachable!("split_tag checked the tag"),
                }
            }
        }
    };
}

/// A payload with no parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

tagged! {
    /// What starts an execution.
    pub enum Trigger {
        /// A task was created.
        "task_created" => TaskCreated(NoParams),
        /// A task was updated (any field).
        "task_updated" => TaskUpdated(NoParams),
        /// A task field changed.
        "field_changed" => FieldChanged(FieldChanged),
        /// A task moved between workflow states.
        "state_changed" => StateChanged(StateChanged),
        /// Someone was added to a task's assignees.
        "assigned" => Assigned(NoParams),
        /// A comment was added to a task.
        "commented" => Commented(NoParams),
        /// A task's due date is reached (or near: `offset_minutes`), as a durable timer.
        "due_date_reached" => DueDateReached(DueDateReached),
        /// A task stayed in a state for a while (SLA), as a durable timer.
        "in_state_for" => InStateFor(InStateFor),
        /// A cron schedule in a time zone.
        "schedule" => Schedule(Schedule),
        /// An HTTP call to the workflow's webhook endpoint with its secret.
        "webhook" => Webhook(NoParams),
        /// Started by hand (API).
        "manual" => Manual(NoParams),
    }
}

/// `field_changed` trigger parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldChanged {
    /// Task field name (`title`, `priority`, `due_date`, …) or `custom_fields.<field id>`.
    pub field: String,
}

/// `state_changed` trigger parameters; both optional (any state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChanged {
    /// Only when leaving this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<uuid::Uuid>")]
    pub from: Option<StateId>,
    /// Only when entering this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<uuid::Uuid>")]
    pub to: Option<StateId>,
}

/// `due_date_reached` trigger parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DueDateReached {
    /// Minutes relative to the start (00:00 UTC) of the due date: `-2880` = two days before.
    #[serde(default)]
    pub offset_minutes: i64,
}

/// `in_state_for` (SLA) trigger parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InStateFor {
    /// The state.
    #[schemars(with = "uuid::Uuid")]
    pub state: StateId,
    /// How long the task must stay in it, in minutes (1–525600).
    pub minutes: u32,
}

/// `schedule` trigger parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Cron pattern (5 or 6 fields, croner syntax: `0 9 * * MON-FRI`).
    pub cron: String,
    /// IANA time zone the pattern is read in.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Runs an action.
    Action(ActionStep),
    /// Branches on a CEL condition.
    If(IfStep),
    /// Branches on the value of a CEL expression.
    Switch(SwitchStep),
    /// Runs steps once per related task (`item` in expressions).
    ForEach(ForEachStep),
    /// Asks people to approve; continues with one of the outcome branches.
    Approval(ApprovalStep),
}

impl Step {
    /// The step's id, if it has one (outputs are visible to later steps as `steps.<id>`).
    pub fn id(&self) -> Option<&str> {
        match self {
            Step::Action(s) => s.id.as_deref(),
            Step::If(s) => s.id.as_deref(),
            Step::Switch(s) => s.id.as_deref(),
            Step::ForEach(s) => s.id.as_deref(),
            Step::Approval(s) => s.id.as_deref(),
        }
    }
}

/// An action step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionStep {
    /// Optional id (letters, digits, `_`), unique in the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The action.
    pub action: Action,
}

/// An if/else step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IfStep {
    /// Optional id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CEL condition.
    pub condition: String,
    /// Steps when it holds.
    pub then: Vec<Step>,
    /// Steps otherwise.
    #[serde(default, rename = "else", skip_serializing_if = "Vec::is_empty")]
    pub otherwise: Vec<Step>,
}

/// A switch step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchStep {
    /// Optional id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CEL expression whose value selects the case.
    pub value: String,
    /// Cases, first match wins.
    pub cases: Vec<SwitchCase>,
    /// Steps when no case matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default: Vec<Step>,
}

/// One case of a switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchCase {
    /// The JSON value to compare with.
    pub equals: Value,
    /// Steps to run.
    pub steps: Vec<Step>,
}

/// Which tasks a for-each visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Related {
    /// The task's subtasks.
    Subtasks,
    /// Tasks related to it (any relation kind).
    RelatedTasks,
}

/// A for-each step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEachStep {
    /// Optional id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The tasks to visit.
    pub over: Related,
    /// Steps per item; `item` is the visited task.
    pub steps: Vec<Step>,
}

/// Who may approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Approvers {
    /// Holders of a role in the task's project (e.g. `project_manager`), resolved by the host.
    Role(String),
    /// These users.
    Users(#[schemars(with = "Vec<uuid::Uuid>")] Vec<UserId>),
}

/// How many approvals a stage needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Quorum {
    /// At least N approvers (N of M).
    Count(u32),
    /// At least this percentage (1–100) of the eligible approvers, rounded up.
    Percent(u32),
}

impl Quorum {
    /// Approvals needed out of `eligible` approvers (at least 1, at most `eligible`).
    pub fn needed(self, eligible: usize) -> usize {
        let n = match self {
            Quorum::Count(n) => n as usize,
            Quorum::Percent(p) => (eligible * p as usize).div_ceil(100),
        };
        n.clamp(1, eligible.max(1))
    }
}

/// One stage of an approval; stages run in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStage {
    /// Who may decide.
    pub approvers: Approvers,
    /// How many approvals are needed.
    pub quorum: Quorum,
}

/// An approval step: stages, then `on_approved`, `on_rejected` or `on_timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// Optional id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Stages, in order (at least one).
    pub stages: Vec<ApprovalStage>,
    /// Whoever caused the execution may approve it too (off by default).
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Minutes each stage waits before `on_timeout` runs (escalation); none = wait forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u32>,
    /// Steps when every stage approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_approved: Vec<Step>,
    /// Steps when a stage can no longer reach its quorum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_rejected: Vec<Step>,
    /// Steps when a stage timed out (escalation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_timeout: Vec<Step>,
}

tagged! {
    /// What an action step does.
    pub enum Action {
        /// Sets task fields.
        "set_fields" => SetFields(SetFields),
        /// Moves the task to another workflow state.
        "transition" => Transition(Transition),
        /// Changes the task's assignees.
        "assign" => Assign(Assign),
        /// Comments on the task.
        "comment" => Comment(CommentAction),
        /// Creates a task (optionally a subtask of this one) from a template.
        "create_task" => CreateTask(CreateTaskAction),
        /// In-app notification.
        "notify" => Notify(Notify),
        /// E-mail through the host's `Mailer`.
        "email" => Email(Email),
        /// A signed HTTP request (Standard Webhooks).
        "http" => Http(HttpRequest),
        /// A message through a provider (e.g. Slack).
        "message" => Message(MessageAction),
        /// A sandboxed rhai script; its result is the step output.
        "script" => Script(Script),
        /// Waits (durable timer).
        "wait" => Wait(Wait),
    }
}

/// Task fields `set_fields` may change.
pub const SETTABLE_FIELDS: &[&str] =
    &["title", "description", "priority", "due_date", "start_date", "estimate", "archived"];

/// `set_fields` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFields {
    /// Field → new value (`title`, `description`, `priority`, `due_date`, `start_date`,
    /// `estimate`, `archived`, or `custom_fields.<field id>`). String values are templates.
    pub fields: BTreeMap<String, Value>,
}

/// `transition` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// Target workflow state.
    #[schemars(with = "uuid::Uuid")]
    pub to_state: StateId,
}

/// How `assign` changes the assignees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignMode {
    /// Add to the current assignees.
    #[default]
    Add,
    /// Replace them.
    Replace,
    /// Remove these.
    Remove,
}

/// `assign` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    /// The users (at least one unless `mode` is `replace`).
    #[schemars(with = "Vec<uuid::Uuid>")]
    pub users: Vec<UserId>,
    /// Add (default), replace or remove.
    #[serde(default)]
    pub mode: AssignMode,
}

/// `comment` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentAction {
    /// Markdown body; a template (`{{task.reference}}`).
    pub body: String,
}

/// `create_task` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskAction {
    /// The template to instantiate (with its subtasks and automation).
    #[schemars(with = "uuid::Uuid")]
    pub template: uuid::Uuid,
    /// Create it as a subtask of the triggering task.
    #[serde(default)]
    pub as_subtask: bool,
}

/// Who receives a notification or e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Recipient {
    /// The task's reporter.
    Reporter,
    /// The task's assignees.
    Assignees,
    /// The task's watchers.
    Watchers,
    /// Whoever caused the execution.
    Actor,
    /// A user.
    User(#[schemars(with = "uuid::Uuid")] UserId),
    /// An e-mail address (e-mail only).
    Email(String),
}

/// `notify` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Recipients (at least one).
    pub to: Vec<Recipient>,
    /// Text; a template.
    pub message: String,
}

/// `email` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// Recipients (at least one).
    pub to: Vec<Recipient>,
    /// Subject; a template.
    pub subject: String,
    /// Plain-text body; a template.
    pub body: String,
}

/// HTTP methods an `http` action may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST (default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// GET (no body).
    Get,
    /// DELETE (no body).
    Delete,
}

/// `http` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Method (default POST).
    #[serde(default)]
    pub method: HttpMethod,
    /// JSON body; string values are templates. Defaults to the execution context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// `message` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageAction {
    /// Provider name as the host registers it (e.g. `slack`).
    pub provider: String,
    /// Provider channel (e.g. `#releases`).
    pub channel: String,
    /// Text; a template.
    pub text: String,
}

/// `script` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// rhai source; sees `task`, `event`, `steps` as constants; its value is the step output.
    pub source: String,
}

/// `wait` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// Minutes to wait (1–525600).
    pub minutes: u32,
}

// --- parsing --------------------------------------------------------------------------------

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Deserializes a leaf value, naming the full path of an error inside it.
fn leaf<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let mut field = if inner == "." { path.to_string() } else { join(path, &inner) };
        let message = e.into_inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
        {
            field = join(&field, missing);
            return Error::invalid(field, "is required");
        }
        Error::invalid(field, message)
    })
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| Error::invalid(path, "must be an object"))
}

/// Splits `{"type": t, ...rest}` into `(t, rest)`, checking `t` is one of `types`.
fn split_tag(value: &Value, path: &str, types: &[&str]) -> Result<(String, Value)> {
    let mut map = object(value, path)?.clone();
    let tag_path = join(path, "type");
    let tag = match map.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(Error::invalid(tag_path, "must be a string")),
        None => return Err(Error::invalid(tag_path, "is required")),
    };
    if !types.contains(&tag.as_str()) {
        return Err(Error::invalid(
            tag_path,
            format!("unknown type {tag:?}, expected one of {}", types.join(", ")),
        ));
    }
    Ok((tag, Value::Object(map)))
}

fn deny_unknown(map: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<()> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::invalid(
            join(path, k),
            format!("unknown field, expected one of {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn field<T: DeserializeOwned>(map: &Map<String, Value>, path: &str, key: &str) -> Result<T> {
    match map.get(key) {
        Some(v) => leaf(v, &join(path, key)),
        None => Err(Error::invalid(join(path, key), "is required")),
    }
}

fn opt_field<T: DeserializeOwned>(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<T>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => leaf(v, &join(path, key)).map(Some),
    }
}

fn steps_field(
    map: &Map<String, Value>,
    path: &str,
    key: &str,
    required: bool,
) -> Result<Vec<Step>> {
    let p = join(path, key);
    match map.get(key) {
        None if required => Err(Error::invalid(p, "is required")),
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, v)| parse_step(v, &format!("{p}[{i}]"))).collect()
        }
        Some(_) => Err(Error::invalid(p, "must be an array of steps")),
    }
}

fn parse_step(value: &Value, path: &str) -> Result<Step> {
    const TYPES: &[&str] = &["action", "if", "switch", "for_each", "approval"];
    let (tag, body) = split_tag(value, path, TYPES)?;
    let m = body.as_object().expect("split_tag returns an object");
    let id = opt_field::<String>(m, path, "id")?;
    Ok(match tag.as_str() {
        "action" => {
            deny_unknown(m, path, &["id", "action"])?;
            let action_path = join(path, "action");
            let action = match m.get("action") {
                Some(v) => Action::parse_at(v, &action_path)?,
                None => return Err(Error::invalid(action_path, "is required")),
            };
            Step::Action(ActionStep { id, action })
        }
        "if" => {
            deny_unknown(m, path, &["id", "condition", "then", "else"])?;
            Step::If(IfStep {
                id,
                condition: field(m, path, "condition")?,
                then: steps_field(m, path, "then", true)?,
                otherwise: steps_field(m, path, "else", false)?,
            })
        }
        "switch" => {
            deny_unknown(m, path, &["id", "value", "cases", "default"])?;
            let cases_path = join(path, "cases");
            let cases = match m.get("cases") {
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let p = format!("{cases_path}[{i}]");
                        let cm = object(v, &p)?;
                        deny_unknown(cm, &p, &["equals", "steps"])?;
                        let equals = cm
                            .get("equals")
                            .cloned()
                            .ok_or_else(|| Error::invalid(join(&p, "equals"), "is required"))?;
                        Ok(SwitchCase { equals, steps: steps_field(cm, &p, "steps", true)? })
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(_) => return Err(Error::invalid(cases_path, "must be an array")),
                None => return Err(Error::invalid(cases_path, "is required")),
            };
            Step::Switch(SwitchStep {
                id,
                value: field(m, path, "value")?,
                cases,
                default: steps_field(m, path, "default", false)?,
            })
        }
        "for_each" => {
            deny_unknown(m, path, &["id", "over", "steps"])?;
            Step::ForEach(ForEachStep {
                id,
                over: field(m, path, "over")?,
                steps: steps_field(m, path, "steps", true)?,
            })
        }
        "approval" => {
            deny_unknown(
                m,
                path,
                &[
                    "id",
                    "stages",
                    "allow_self_approval",
                    "timeout_minutes",
                    "on_approved",
                    "on_rejected",
                    "on_timeout",
                ],
            )?;
            Step::Approval(ApprovalStep {
                id,
                stages: field(m, path, "stages")?,
                allow_self_approval: opt_field(m, path, "allow_self_approval")?.unwrap_or(false),
                timeout_minutes: opt_field(m, path, "timeout_minutes")?,
                on_approved: steps_field(m, path, "on_approved", false)?,
                on_rejected: steps_field(m, path, "on_rejected", false)?,
                on_timeout: steps_field(m, path, "on_timeout", false)?,
            })
        }
        _ => unreachable!("split_tag checked the tag"),
    })
}

impl Definition {
    /// Parses and validates a JSON document against the default [`Limits`].
    pub fn parse(json: &[u8]) -> Result<Self> {
        Self::parse_with(json, &Limits::default())
    }

    /// Parses and validates a JSON document against `limits`.
    pub fn parse_with(json: &[u8], limits: &Limits) -> Result<Self> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| Error::invalid("$", format!("not valid JSON: {e}")))?;
        Self::from_value(&value, limits)
    }

    /// Parses and validates an already-decoded JSON value against `limits`.
    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self> {
        let m = object(value, "$")?;
        deny_unknown(
            m,
            "",
            &["schema_version", "name", "description", "trigger", "conditions", "steps", "options"],
        )?;
        let trigger = match m.get("trigger") {
            Some(v) => Trigger::parse_at(v, "trigger")?,
            None => return Err(Error::invalid("trigger", "is required")),
        };
        let def = Definition {
            schema_version: field(m, "", "schema_version")?,
            name: field(m, "", "name")?,
            description: opt_field(m, "", "description")?,
            trigger,
            conditions: opt_field(m, "", "conditions")?.unwrap_or_default(),
            steps: steps_field(m, "", "steps", true)?,
            options: opt_field(m, "", "options")?.unwrap_or_default(),
        };
        def.validate(limits)?;
        Ok(def)
    }

    /// Checks everything the types cannot: versions, names, ids, CEL and rhai syntax, triggers,
    /// action parameters and limits. Errors name the JSON path.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::invalid(
                "schema_version",
                format!("unsupported version {}, expected {SCHEMA_VERSION}", self.schema_version),
            ));
        }
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("name", "must be 1-200 characters"));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 10_000) {
            return Err(Error::invalid("description", "must be at most 10000 bytes"));
        }
        validate_trigger(&self.trigger)?;
        validate_options(&self.options, limits)?;
        let mut v = Validator { limits, components: 0, ids: HashSet::new() };
        for (i, c) in self.conditions.iter().enumerate() {
            v.component()?;
            v.cel(c, &format!("conditions[{i}]"))?;
        }
        if self.steps.is_empty() {
            return Err(Error::invalid("steps", "must have at least one step"));
        }
        v.steps(&self.steps, "steps", 1)
    }

    /// The number of components (steps, conditions, cases, approval stages).
    pub fn components(&self) -> usize {
        fn count(steps: &[Step]) -> usize {
            steps
                .iter()
                .map(|s| {
                    1 + match s {
                        Step::Action(_) => 0,
                        Step::If(s) => count(&s.then) + count(&s.otherwise),
                        Step::Switch(s) => {
                            s.cases.iter().map(|c| 1 + count(&c.steps)).sum::<usize>()
                                + count(&s.default)
                        }
                        Step::ForEach(s) => count(&s.steps),
                        Step::Approval(s) => {
                            s.stages.len()
                                + count(&s.on_approved)
                                + count(&s.on_rejected)
                                + count(&s.on_timeout)
                        }
                    }
                })
                .sum()
        }
        self.conditions.len() + count(&self.steps)
    }
}

fn validate_trigger(t: &Trigger) -> Result<()> {
    match t {
        Trigger::FieldChanged(f) => {
            let ok = SETTABLE_FIELDS.contains(&f.field.as_str())
                || matches!(f.field.as_str(), "state_id" | "assignees" | "labels" | "milestone_id")
                || custom_field(&f.field).is_some();
            if !ok {
                return Err(Error::invalid(
                    "trigger.field",
                    format!("unknown task field {:?}", f.field),
                ));
            }
        }
        Trigger::InStateFor(s) if !(1..=525_600).contains(&s.minutes) => {
            return Err(Error::invalid("trigger.minutes", "must be 1-525600"));
        }
        Trigger::DueDateReached(d) if d.offset_minutes.abs() > 525_600 => {
            return Err(Error::invalid("trigger.offset_minutes", "must be within ±525600"));
        }
        Trigger::Schedule(s) => {
            crate::schedule::CronSchedule::parse(&s.cron, &s.timezone)?;
        }
        _ => {}
    }
    Ok(())
}

fn validate_options(o: &Options, limits: &Limits) -> Result<()> {
    if o.max_items == 0 || o.max_items > limits.max_items_per_execution {
        return Err(Error::limit(
            "items_per_execution",
            format!(
                "options.max_items is {}, must be 1-{}",
                o.max_items, limits.max_items_per_execution
            ),
        ));
    }
    if o.max_run_time_secs == 0 || o.max_run_time_secs > limits.max_run_time_secs {
        return Err(Error::limit(
            "run_time",
            format!(
                "options.max_run_time_secs is {}, must be 1-{}",
                o.max_run_time_secs, limits.max_run_time_secs
            ),
        ));
    }
    if !(1..=10).contains(&o.max_attempts) {
        return Err(Error::invalid("options.max_attempts", "must be 1-10"));
    }
    if o.initial_backoff_ms == 0 || o.initial_backoff_ms > o.max_backoff_ms {
        return Err(Error::invalid(
            "options.initial_backoff_ms",
            "must be at least 1 and at most options.max_backoff_ms",
        ));
    }
    if o.max_backoff_ms > 3_600_000 {
        return Err(Error::invalid("options.max_backoff_ms", "must be at most 3600000 (1 h)"));
    }
    Ok(())
}

/// `custom_fields.<uuid>` → the field id.
pub fn custom_field(name: &str) -> Option<uuid::Uuid> {
    name.strip_prefix("custom_fields.").and_then(|id| uuid::Uuid::parse_str(id).ok())
}

struct Validator<'a> {
    limits: &'a Limits,
    components: usize,
    ids: HashSet<String>,
}

impl Validator<'_> {
    fn component(&mut self) -> Result<()> {
        self.components += 1;
        if self.components > self.limits.max_components {
            return Err(Error::limit(
                "components_per_workflow",
                format!("more than {} steps, conditions and cases", self.limits.max_components),
            ));
        }
        Ok(())
    }

    fn cel(&self, expr: &str, path: &str) -> Result<()> {
        if expr.len() > self.limits.max_expression_len {
            return Err(Error::invalid(
                path,
                format!("expression longer than {} bytes", self.limits.max_expression_len),
            ));
        }
        crate::condition::compile(expr).map(drop).map_err(|e| Error::invalid(path, e))
    }

    fn template(&self, text: &str, path: &str, what: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::invalid(path, format!("{what} must not be empty")));
        }
        if text.len() > self.limits.max_expression_len.max(10_000) {
            return Err(Error::invalid(path, "is too long"));
        }
        crate::template::check(text).map_err(|e| Error::invalid(path, e))
    }

    fn steps(&mut self, steps: &[Step], path: &str, depth: usize) -> Result<()> {
        if depth > self.limits.max_nesting {
            return Err(Error::limit(
                "nesting",
                format!("{path} is nested deeper than {}", self.limits.max_nesting),
            ));
        }
        for (i, step) in steps.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.component()?;
            if let Some(id) = step.id() {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !id.starts_with(|c: char| c.is_ascii_digit());
                if !ok {
                    return Err(Error::invalid(
                        join(&p, "id"),
                        "must be 1-64 letters, digits or _ and not start with a digit",
                    ));
                }
                if !self.ids.insert(id.to_string()) {
                    return Err(Error::invalid(
                        join(&p, "id"),
                        format!("duplicate step id {id:?}"),
                    ));
                }
            }
            match step {
                Step::Action(s) => self.action(&s.action, &join(&p, "action"))?,
                Step::If(s) => {
                    self.cel(&s.condition, &join(&p, "condition"))?;
                    if s.then.is_empty() {
                        return Err(Error::invalid(
                            join(&p, "then"),
                            "must have at least one step",
                        ));
                    }
                    self.steps(&s.then, &join(&p, "then"), depth + 1)?;
                    self.steps(&s.otherwise, &join(&p, "else"), depth + 1)?;
                }
                Step::Switch(s) => {
                    self.cel(&s.value, &join(&p, "value"))?;
                    if s.cases.is_empty() {
                        return Err(Error::invalid(
                            join(&p, "cases"),
                            "must have at least one case",
                        ));
                    }
                    for (j, c) in s.cases.iter().enumerate() {
                        self.component()?;
                        self.steps(&c.steps, &format!("{p}.cases[{j}].steps"), depth + 1)?;
                    }
                    self.steps(&s.default, &join(&p, "default"), depth + 1)?;
                }
                Step::ForEach(s) => {
                    if s.steps.is_empty() {
                        return Err(Error::invalid(
                            join(&p, "steps"),
                            "must have at least one step",
                        ));
                    }
                    self.steps(&s.steps, &join(&p, "steps"), depth + 1)?;
                }
                Step::Approval(s) => {
                    if s.stages.is_empty() {
                        return Err(Error::invalid(
                            join(&p, "stages"),
                            "must have at least one stage",
                        ));
                    }
                    for (j, stage) in s.stages.iter().enumerate() {
                        self.component()?;
                        let sp = format!("{p}.stages[{j}]");
                        match &stage.approvers {
                            Approvers::Role(r) if r.trim().is_empty() => {
                                return Err(Error::invalid(
                                    format!("{sp}.approvers.role"),
                                    "must not be empty",
                                ));
                            }
                            Approvers::Users(u) if u.is_empty() || u.len() > 100 => {
                                return Err(Error::invalid(
                                    format!("{sp}.approvers.users"),
                                    "must list 1-100 users",
                                ));
                            }
                            _ => {}
                        }
                        match stage.quorum {
                            Quorum::Count(n) if n == 0 || n > 100 => {
                                return Err(Error::invalid(
                                    format!("{sp}.quorum.count"),
                                    "must be 1-100",
                                ));
                            }
                            Quorum::Count(n) => {
                                if let Approvers::Users(u) = &stage.approvers
                                    && n as usize > u.len()
                                {
                                    return Err(Error::invalid(
                                        format!("{sp}.quorum.count"),
                                        format!(
                                            "needs {n} approvals but only {} approvers",
                                            u.len()
                                        ),
                                    ));
                                }
                            }
                            Quorum::Percent(pct) if pct == 0 || pct > 100 => {
                                return Err(Error::invalid(
                                    format!("{sp}.quorum.percent"),
                                    "must be 1-100",
                                ));
                            }
                            Quorum::Percent(_) => {}
                        }
                    }
                    if s.timeout_minutes.is_some_and(|m| !(1..=525_600).contains(&m)) {
                        return Err(Error::invalid(
                            join(&p, "timeout_minutes"),
                            "must be 1-525600",
                        ));
                    }
                    self.steps(&s.on_approved, &join(&p, "on_approved"), depth + 1)?;
                    self.steps(&s.on_rejected, &join(&p, "on_rejected"), depth + 1)?;
                    self.steps(&s.on_timeout, &join(&p, "on_timeout"), depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn action(&self, action: &Action, p: &str) -> Result<()> {
        match action {
            Action::SetFields(s) => {
                if s.fields.is_empty() {
                    return Err(Error::invalid(join(p, "fields"), "must set at least one field"));
                }
                for (name, value) in &s.fields {
                    let fp = format!("{p}.fields.{name}");
                    if !SETTABLE_FIELDS.contains(&name.as_str()) && custom_field(name).is_none() {
                        return Err(Error::invalid(
                            fp,
                            format!(
                                "unknown field, expected one of {} or custom_fields.<id>",
                                SETTABLE_FIELDS.join(", ")
                            ),
                        ));
                    }
                    if name == "priority"
                        && value
                            .as_str()
                            .is_none_or(|v| pm_core::model::Priority::parse(v).is_err())
                    {
                        return Err(Error::invalid(
                            fp,
                            "must be one of none, low, medium, high, urgent",
                        ));
                    }
                    if let Value::String(s) = value {
                        crate::template::check(s).map_err(|e| Error::invalid(&fp, e))?;
                    }
                }
            }
            Action::Transition(_) => {}
            Action::Assign(a) => {
                if a.users.is_empty() && a.mode != AssignMode::Replace {
                    return Err(Error::invalid(join(p, "users"), "must list at least one user"));
                }
                if a.users.len() > pm_core::service::MAX_ASSIGNEES {
                    return Err(Error::invalid(join(p, "users"), "too many users"));
                }
            }
            Action::Comment(c) => self.template(&c.body, &join(p, "body"), "body")?,
            Action::CreateTask(_) => {}
            Action::Notify(n) => {
                recipients(&n.to, &join(p, "to"), false)?;
                self.template(&n.message, &join(p, "message"), "message")?;
            }
            Action::Email(e) => {
                recipients(&e.to, &join(p, "to"), true)?;
                self.template(&e.subject, &join(p, "subject"), "subject")?;
                self.template(&e.body, &join(p, "body"), "body")?;
            }
            Action::Http(h) => {
                let rest = h.url.strip_prefix("https://").or_else(|| h.url.strip_prefix("http://"));
                if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) || h.url.len() > 2048
                {
                    return Err(Error::invalid(
                        join(p, "url"),
                        "must be an http(s) URL with a host",
                    ));
                }
                if h.body.is_some() && matches!(h.method, HttpMethod::Get | HttpMethod::Delete) {
                    return Err(Error::invalid(join(p, "body"), "GET and DELETE take no body"));
                }
            }
            Action::Message(m) => {
                if m.provider.trim().is_empty() {
                    return Err(Error::invalid(join(p, "provider"), "must not be empty"));
                }
                if m.channel.trim().is_empty() {
                    return Err(Error::invalid(join(p, "channel"), "must not be empty"));
                }
                self.template(&m.text, &join(p, "text"), "text")?;
            }
            Action::Script(s) => {
                if s.source.len() > self.limits.max_script_len {
                    return Err(Error::limit(
                        "script_size",
                        format!("{p}.source is longer than {} bytes", self.limits.max_script_len),
                    ));
                }
                crate::script::Sandbox::shared()
                    .compile(&s.source)
                    .map_err(|e| Error::invalid(join(p, "source"), e.to_string()))?;
            }
            Action::Wait(w) => {
                if !(1..=525_600).contains(&w.minutes) {
                    return Err(Error::invalid(join(p, "minutes"), "must be 1-525600"));
                }
            }
        }
        Ok(())
    }
}

fn recipients(to: &[Recipient], path: &str, email: bool) -> Result<()> {
    if to.is_empty() || to.len() > 100 {
        return Err(Error::invalid(path, "must list 1-100 recipients"));
    }
    for (i, r) in to.iter().enumerate() {
        if let Recipient::Email(addr) = r {
            let p = format!("{path}[{i}].email");
            if !email {
                return Err(Error::invalid(p, "e-mail addresses only work with the email action"));
            }
            let ok = addr.len() <= 254
                && addr.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !addr.contains(char::is_whitespace)
                });
            if !ok {
                return Err(Error::invalid(p, "is not an e-mail address"));
            }
        }
    }
    Ok(())
}

/// The JSON Schema of [`Definition`] documents, as published in
/// `pm-workflows/schema/workflow.schema.json`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(Definition);
    serde_json::to_value(schema).expect("a schema serializes")
}

/// Built-in templates: `(name, definition document)`, from `pm-workflows/templates/` (each
/// checked against the schema and the parser by the tests).
pub const TEMPLATES: &[(&str, &str)] = &[
    ("escalate-stale-urgent", include_str!("../templates/escalate-stale-urgent.json")),
    ("weekly-digest", include_str!("../templates/weekly-digest.json")),
];

//! Offline sync: applying a batch of client ops exactly once, rebasing stale task edits field by
//! field, and the delta feed from the event log. The wire protocol and its rules are in
//! `docs/sync-protocol.md`; this module is their one implementation.
//!
//! Every op goes through the same pm-core service call (and the same REST body types) as its REST
//! twin, so validation and authorization are those of the REST API.
//!
//! Exactly once: a result is recorded per (user, op id) in [`SyncOpStore`](super::store) after the
//! op ran, and a recorded op is answered from the record. The record is a separate write, so each
//! op is also idempotent on its own — creates carry client-chosen ids and a create that finds its
//! id taken by the same user's identical create counts as that earlier application; an update
//! re-applied finds its fields already at the new values; a delete re-applied finds the task gone
//! by the caller's hand. A crash between the op and its record therefore changes nothing on replay.

use std::collections::HashMap;

use pm_core::event::{ActivityScope, Actor, Event, EventKind, Origin};
use pm_core::id::{CheckInId, CommentId, ProjectId, TaskId, UserId};
use pm_core::model::{CheckIn, GeoPoint, Task, TaskPatch, comment_body};
use pm_core::service::CreateTask;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::api::comments::CommentBody;
use crate::api::tasks::{CreateTaskBody, UpdateTaskBody};
use crate::api::worklog::CheckInBody;
use crate::error::ApiError;

/// Most ops in one request.
pub const MAX_OPS: usize = 100;
/// How long op results are kept for replays.
pub const RETENTION: time::Duration = time::Duration::days(30);
/// Reads and writes of one `task.update` before a writer that keeps winning makes it a conflict.
const REBASE_ATTEMPTS: usize = 3;

/// Forgets op results older than [`RETENTION`] now and then once a day (the task runs until
/// aborted).
pub fn spawn_pruning(stores: super::store::PwaStores) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
        loop {
            every.tick().await;
            match stores.sync_ops.prune_ops(pm_core::model::now() - RETENTION).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "forgot old offline-sync op results"),
                Err(e) => tracing::warn!(error = %e, "could not prune offline-sync op results"),
            }
        }
    })
}

/// Applies a user's ops in order, one result each (see the module docs).
pub async fn apply_ops(state: &AppState, user: UserId, ops: &[Value]) -> Vec<Value> {
    let sync = Sync { state, user, origin: Origin::user(user) };
    let mut results = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        results.push(sync.apply(i, op).await);
    }
    results
}

/// One batch's context: the caller and the server state.
struct Sync<'a> {
    state: &'a AppState,
    user: UserId,
    origin: Origin,
}

/// What an op did, before it is recorded.
struct Outcome {
    result: Value,
    /// Whether to record it: not after a server-side failure, so a retry can still apply it.
    record: bool,
}

impl Outcome {
    fn applied(op_id: Uuid, key: &str, entity: Value, rebased: bool) -> Self {
        let mut r = Map::new();
        r.insert("op_id".into(), json!(op_id));
        r.insert("status".into(), json!("applied"));
        r.insert(key.into(), entity);
        if rebased {
            r.insert("rebased".into(), Value::Bool(true));
        }
        Outcome { result: Value::Object(r), record: true }
    }

    fn conflict(op_id: Uuid, current: &Task, conflicts: Vec<FieldConflict>) -> Self {
        let result = json!({
            "op_id": op_id,
            "status": "conflict",
            "current": to_json(current),
            "conflicts": conflicts,
        });
        Outcome { result, record: true }
    }

    fn rejected(op_id: Option<String>, problem: Value) -> Self {
        let server_side = problem["status"].as_u64().is_some_and(|s| s >= 500);
        Outcome {
            result: json!({ "op_id": op_id, "status": "rejected", "error": problem }),
            record: !server_side,
        }
    }
}

/// One conflicting field of a stale `task.update`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldConflict {
    /// The field (`custom_fields.<id>` for a custom field).
    pub field: String,
    /// The value the client's edit was based on (`null` when it sent none).
    pub base: Value,
    /// The value the client wants, as sent.
    pub mine: Value,
    /// The server's current value.
    pub theirs: Value,
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Where a pm-core error of an op points: the op's `data`/`changes` object for field errors, and
/// the op's own id fields for ids and missing entities.
#[derive(Clone, Copy)]
struct Blame<'a> {
    i: usize,
    /// `data` or `changes`.
    body: &'a str,
    /// The op field holding the entity's client-chosen id (`task_id`, `comment_id`, …).
    id_field: &'a str,
}

impl Blame<'_> {
    /// The problem body of `err` with its field rewritten to the op's path.
    fn problem(&self, err: impl Into<ApiError>) -> Value {
        let mut body = err.into().body();
        let field = match body.get("field").and_then(Value::as_str) {
            Some("id") => Some(format!("ops[{}].{}", self.i, self.id_field)),
            Some(f) => Some(format!("ops[{}].{}.{f}", self.i, self.body)),
            None => match body.get("entity").and_then(Value::as_str) {
                Some("project") => Some(format!("ops[{}].project_id", self.i)),
                Some("task") => Some(format!("ops[{}].task_id", self.i)),
                _ => None,
            },
        };
        let Some(new) = field else { return body };
        if let Some(old) = body["field"].as_str().map(str::to_owned)
            && let Some(detail) = body["detail"].as_str().map(str::to_owned)
        {
            body["detail"] = Value::String(detail.replacen(
                &format!("invalid {old}:"),
                &format!("invalid {new}:"),
                1,
            ));
        }
        body["field"] = Value::String(new);
        body
    }
}

/// A 400 problem naming `field` (already the full op path).
fn invalid(field: String, message: impl std::fmt::Display) -> Value {
    ApiError::invalid_field(field, message).body()
}

/// Deserializes `raw` as `T`, naming the failing field as `ops[i].<prefix>.<path>`.
fn parse_at<T: DeserializeOwned>(i: usize, prefix: &str, raw: &Value) -> Result<T, Value> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let base =
            if prefix.is_empty() { format!("ops[{i}]") } else { format!("ops[{i}].{prefix}") };
        let field = if path == "." { base } else { format!("{base}.{path}") };
        invalid(field, inner)
    })
}

// The op shapes. `op_id` and `kind` were read before; they are listed so unknown fields are
// still refused.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskCreateOp {
    #[serde(rename = "op_id")]
    _op_id: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    project_id: Uuid,
    task_id: Uuid,
    data: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskUpdateOp {
    #[serde(rename = "op_id")]
    _op_id: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    task_id: Uuid,
    base_version: i64,
    #[serde(default)]
    base: Map<String, Value>,
    changes: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskDeleteOp {
    #[serde(rename = "op_id")]
    _op_id: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    task_id: Uuid,
    base_version: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentCreateOp {
    #[serde(rename = "op_id")]
    _op_id: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    task_id: Uuid,
    comment_id: Uuid,
    data: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckInCreateOp {
    #[serde(rename = "op_id")]
    _op_id: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    task_id: Uuid,
    #[serde(default)]
    checkin_id: Option<Uuid>,
    data: Value,
}

/// The op kinds, as sent.
pub const OP_KINDS: [&str; 5] =
    ["task.create", "task.update", "task.delete", "comment.create", "checkin.create"];

impl Sync<'_> {
    /// One op: replay check, application, record.
    async fn apply(&self, i: usize, raw: &Value) -> Value {
        let raw_op_id = raw.get("op_id").and_then(Value::as_str).map(str::to_owned);
        let op_id = match raw.get("op_id") {
            _ if !raw.is_object() => {
                return Outcome::rejected(None, invalid(format!("ops[{i}]"), "must be an object"))
                    .result;
            }
            None => {
                return Outcome::rejected(None, invalid(format!("ops[{i}].op_id"), "is required"))
                    .result;
            }
            Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                Some(id) if !id.is_nil() => id,
                _ => {
                    return Outcome::rejected(
                        raw_op_id,
                        invalid(format!("ops[{i}].op_id"), "must be a UUID"),
                    )
                    .result;
                }
            },
        };
        let store = &self.state.pwa.sync_ops;
        match store.find_op(self.user, op_id).await {
            Ok(Some(mut first)) => {
                first["replayed"] = Value::Bool(true);
                return first;
            }
            Ok(None) => {}
            Err(e) => return Outcome::rejected(raw_op_id, ApiError::from(e).body()).result,
        }
        let outcome = match self.run(i, op_id, raw).await {
            Ok(o) | Err(o) => o,
        };
        if !outcome.record {
            return outcome.result;
        }
        match store.record_op(self.user, op_id, &outcome.result, pm_core::model::now()).await {
            Ok(stored) if stored == outcome.result => outcome.result,
            // A concurrent request with the same op recorded its result first: that one counts.
            Ok(mut stored) => {
                stored["replayed"] = Value::Bool(true);
                stored
            }
            Err(e) => {
                // The op itself is idempotent (module docs), so a lost record costs nothing.
                tracing::warn!(error = %e, %op_id, "could not record a sync op result");
                outcome.result
            }
        }
    }

    /// Dispatches on `kind`. `Err` carries a rejection (an outcome all the same).
    async fn run(&self, i: usize, op_id: Uuid, raw: &Value) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let kind = match raw.get("kind").and_then(Value::as_str) {
            Some(k) => k,
            None => {
                return Err(reject(invalid(
                    format!("ops[{i}].kind"),
                    format!("is required: one of {}", OP_KINDS.join(", ")),
                )));
            }
        };
        match kind {
            "task.create" => {
                self.task_create(i, op_id, parse_at(i, "", raw).map_err(reject)?).await
            }
            "task.update" => {
                self.task_update(i, op_id, parse_at(i, "", raw).map_err(reject)?).await
            }
            "task.delete" => {
                self.task_delete(i, op_id, parse_at(i, "", raw).map_err(reject)?).await
            }
            "comment.create" => {
                self.comment_create(i, op_id, parse_at(i, "", raw).map_err(reject)?).await
            }
            "checkin.create" => {
                self.check_in_create(i, op_id, parse_at(i, "", raw).map_err(reject)?).await
            }
            other => Err(reject(invalid(
                format!("ops[{i}].kind"),
                format!("unknown kind {other:?}: one of {}", OP_KINDS.join(", ")),
            ))),
        }
    }

    async fn task_create(
        &self,
        i: usize,
        op_id: Uuid,
        op: TaskCreateOp,
    ) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let blame = Blame { i, body: "data", id_field: "task_id" };
        let body: CreateTaskBody = parse_at(i, "data", &op.data).map_err(reject)?;
        let input = body.into_input(ProjectId(op.project_id), Some(TaskId(op.task_id)));
        let wanted = input.clone();
        match self.state.pm.create_task(&self.origin, input).await {
            Ok(task) => Ok(Outcome::applied(op_id, "task", to_json(&task), false)),
            Err(pm_core::Error::AlreadyExists { entity: "task", field: "id" }) => {
                match self.earlier_create(&wanted).await {
                    Some(task) => Ok(Outcome::applied(op_id, "task", to_json(&task), false)),
                    None => Err(reject(taken(i, "task_id", "task"))),
                }
            }
            Err(e) => Err(reject(blame.problem(e))),
        }
    }

    /// The task a taken `task_id` names, when it is this user's earlier application of the same
    /// create (its `task.created` event is the user's, with the same content).
    async fn earlier_create(&self, wanted: &CreateTask) -> Option<Task> {
        let id = wanted.id?;
        let task = self.state.pm.get_task(&self.origin, id).await.ok()?;
        let created = self.created_event(id).await?;
        if created.actor != Actor::User(self.user) {
            return None;
        }
        let at_creation: Task =
            serde_json::from_value(created.payload.get("task")?.clone()).ok()?;
        same_create(&at_creation, wanted, self.user).then_some(task)
    }

    /// The `task.created` event of a task (its oldest event), paging back through its activity.
    async fn created_event(&self, id: TaskId) -> Option<Event> {
        const PAGE: u32 = 100;
        let events = &self.state.stores.events;
        let mut before = None;
        for _ in 0..50 {
            let page = events.activity(ActivityScope::Task(id), before, PAGE).await.ok()?;
            if let Some(e) = page.iter().find(|e| e.kind == EventKind::TaskCreated) {
                return Some(e.clone());
            }
            if page.len() < PAGE as usize {
                return None;
            }
            before = page.last().map(|e| e.seq);
        }
        None
    }

    async fn task_update(
        &self,
        i: usize,
        op_id: Uuid,
        op: TaskUpdateOp,
    ) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let blame = Blame { i, body: "changes", id_field: "task_id" };
        let changes = Value::Object(op.changes.clone());
        let body: UpdateTaskBody = parse_at(i, "changes", &changes).map_err(reject)?;
        if body.version.is_some() {
            return Err(reject(invalid(
                format!("ops[{i}].changes.version"),
                "is not accepted: base_version is the version the edit was made on",
            )));
        }
        let patch = body.into_patch().map_err(|e| reject(blame.problem(e)))?;
        let id = TaskId(op.task_id);
        let mut last = None;
        for _ in 0..REBASE_ATTEMPTS {
            let current = self
                .state
                .pm
                .get_task(&self.origin, id)
                .await
                .map_err(|e| reject(blame.problem(e)))?;
            let rebased = current.version != op.base_version;
            if rebased {
                let conflicts = field_conflicts(&current, &patch, &op.changes, &op.base);
                if !conflicts.is_empty() {
                    return Ok(Outcome::conflict(op_id, &current, conflicts));
                }
            }
            match self.state.pm.update_task(&self.origin, id, current.version, patch.clone()).await
            {
                Ok(task) => return Ok(Outcome::applied(op_id, "task", to_json(&task), rebased)),
                // Someone wrote in between: read again and re-run the rules.
                Err(pm_core::Error::Conflict(_)) => last = Some(current),
                Err(e) => return Err(reject(blame.problem(e))),
            }
        }
        let current = last.ok_or_else(|| reject(ApiError::internal("no attempt made").body()))?;
        let conflicts = field_conflicts(&current, &patch, &op.changes, &op.base);
        Ok(Outcome::conflict(op_id, &current, conflicts))
    }

    async fn task_delete(
        &self,
        i: usize,
        op_id: Uuid,
        op: TaskDeleteOp,
    ) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let blame = Blame { i, body: "task", id_field: "task_id" };
        let id = TaskId(op.task_id);
        for _ in 0..REBASE_ATTEMPTS {
            let current = match self.state.pm.get_task(&self.origin, id).await {
                Ok(t) => t,
                Err(pm_core::Error::NotFound { .. }) if self.deleted_by_caller(id).await => {
                    return Ok(Outcome::applied(op_id, "task", Value::Null, false));
                }
                Err(e) => return Err(reject(blame.problem(e))),
            };
            if current.version != op.base_version {
                let conflict = FieldConflict {
                    field: "version".into(),
                    base: json!(op.base_version),
                    mine: Value::Null,
                    theirs: json!(current.version),
                };
                return Ok(Outcome::conflict(op_id, &current, vec![conflict]));
            }
            match self.state.pm.delete_task(&self.origin, id, op.base_version).await {
                Ok(()) => return Ok(Outcome::applied(op_id, "task", Value::Null, false)),
                Err(pm_core::Error::Conflict(_)) => continue,
                Err(e) => return Err(reject(blame.problem(e))),
            }
        }
        let current =
            self.state.pm.get_task(&self.origin, id).await.map_err(|e| reject(blame.problem(e)))?;
        let conflict = FieldConflict {
            field: "version".into(),
            base: json!(op.base_version),
            mine: Value::Null,
            theirs: json!(current.version),
        };
        Ok(Outcome::conflict(op_id, &current, vec![conflict]))
    }

    /// Whether the task's last event is its deletion by the caller.
    async fn deleted_by_caller(&self, id: TaskId) -> bool {
        let events = &self.state.stores.events;
        match events.activity(ActivityScope::Task(id), None, 1).await {
            Ok(last) => last.first().is_some_and(|e| {
                e.kind == EventKind::TaskDeleted && e.actor == Actor::User(self.user)
            }),
            Err(_) => false,
        }
    }

    async fn comment_create(
        &self,
        i: usize,
        op_id: Uuid,
        op: CommentCreateOp,
    ) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let blame = Blame { i, body: "data", id_field: "comment_id" };
        let data: CommentBody = parse_at(i, "data", &op.data).map_err(reject)?;
        if data.version.is_some() {
            return Err(reject(invalid(
                format!("ops[{i}].data.version"),
                "is not accepted when creating a comment",
            )));
        }
        let body = comment_body(&data.body).map_err(|e| reject(blame.problem(e)))?;
        let (task, id) = (TaskId(op.task_id), CommentId(op.comment_id));
        match self.state.pm.add_comment_with_id(&self.origin, task, id, body.clone()).await {
            Ok(c) => Ok(Outcome::applied(op_id, "comment", to_json(&c), false)),
            Err(pm_core::Error::AlreadyExists { field: "id", .. }) => {
                let earlier = self.state.stores.comments.get_comment(id).await.ok().filter(|c| {
                    c.author == self.user && c.task_id == task && (c.body == body || c.version > 1)
                });
                match earlier {
                    Some(c) => Ok(Outcome::applied(op_id, "comment", to_json(&c), false)),
                    None => Err(reject(taken(i, "comment_id", "comment"))),
                }
            }
            Err(e) => Err(reject(blame.problem(e))),
        }
    }

    async fn check_in_create(
        &self,
        i: usize,
        op_id: Uuid,
        op: CheckInCreateOp,
    ) -> Result<Outcome, Outcome> {
        let reject = |problem: Value| Outcome::rejected(Some(op_id.to_string()), problem);
        let id_field = if op.checkin_id.is_some() { "checkin_id" } else { "op_id" };
        let blame = Blame { i, body: "data", id_field };
        let data: CheckInBody = parse_at(i, "data", &op.data).map_err(reject)?;
        let position = GeoPoint::parse(data.lat, data.lon, data.accuracy_m)
            .map_err(|e| reject(blame.problem(e)))?;
        let task = TaskId(op.task_id);
        let id = CheckInId(op.checkin_id.unwrap_or(op_id));
        let pm = &self.state.pm;
        match pm.check_in_with_id(&self.origin, task, id, position, &data.note).await {
            Ok(c) => Ok(Outcome::applied(op_id, "check_in", to_json(&c), false)),
            Err(pm_core::Error::AlreadyExists { field: "id", .. }) => {
                let same =
                    |c: &CheckIn| c.id == id && c.user_id == self.user && c.position == position;
                let earlier = pm
                    .list_check_ins(&self.origin, task)
                    .await
                    .ok()
                    .and_then(|all| all.into_iter().find(same));
                match earlier {
                    Some(c) => Ok(Outcome::applied(op_id, "check_in", to_json(&c), false)),
                    None => Err(reject(taken(i, id_field, "check-in"))),
                }
            }
            Err(e) => Err(reject(blame.problem(e))),
        }
    }
}

/// 409: a client-chosen id is taken by something that is not this op's earlier application.
fn taken(i: usize, id_field: &str, entity: &'static str) -> Value {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "already-exists",
        "Already exists",
        format!("a different {entity} already has this id; generate a new one"),
    )
    .with("entity", entity)
    .with("field", format!("ops[{i}].{id_field}"))
    .body()
}

/// Whether `t` (a task as it was created) is what `c` creates, by `user`.
fn same_create(t: &Task, c: &CreateTask, user: UserId) -> bool {
    t.project_id == c.project_id
        && t.title == c.title
        && t.description == c.description
        && c.state_id.is_none_or(|s| s == t.state_id)
        && t.priority == c.priority
        && t.assignees == c.assignees
        && t.reporter == c.reporter.unwrap_or(user)
        && t.labels == c.labels
        && t.start_date == c.start_date
        && t.due_date == c.due_date
        && t.estimate == c.estimate
        && t.parent_id == c.parent_id
        && t.milestone_id == c.milestone_id
        && t.custom_fields == c.custom_fields
}

/// The conflicting fields of a stale update (rules in the module docs): a field conflicts unless
/// the server's value is still the base or already the new value.
fn field_conflicts(
    current: &Task,
    patch: &TaskPatch,
    changes: &Map<String, Value>,
    base: &Map<String, Value>,
) -> Vec<FieldConflict> {
    let theirs_all = to_json(current);
    let mut next = current.clone();
    patch.apply(&mut next);
    // The new values in the server's own representation (trimmed, sets sorted, dates formatted).
    let new_all = to_json(&next);
    let mut out = Vec::new();
    let mut check =
        |field: String, base: Option<&Value>, mine: &Value, theirs: &Value, new: &Value| {
            let same = |a: &Value, b: &Value| normalized(a) == normalized(b);
            if same(theirs, new) || base.is_some_and(|b| same(b, theirs)) {
                return;
            }
            out.push(FieldConflict {
                field,
                base: base.cloned().unwrap_or(Value::Null),
                mine: mine.clone(),
                theirs: theirs.clone(),
            });
        };
    for (key, mine) in changes {
        if key == "custom_fields" {
            for (fid, mine) in mine.as_object().into_iter().flatten() {
                let get = |v: &Value| v["custom_fields"].get(fid).cloned().unwrap_or(Value::Null);
                let base = base.get("custom_fields").and_then(|b| b.get(fid));
                check(
                    format!("custom_fields.{fid}"),
                    base,
                    mine,
                    &get(&theirs_all),
                    &get(&new_all),
                );
            }
            continue;
        }
        let theirs = theirs_all.get(key).cloned().unwrap_or(Value::Null);
        let new = new_all.get(key).cloned().unwrap_or(Value::Null);
        check(key.clone(), base.get(key), mine, &theirs, &new);
    }
    out
}

/// A value for comparison: arrays (assignee and label sets) are order-insensitive.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(normalized).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

/// One entry of the delta feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// The event's position in the log.
    pub seq: i64,
    /// What happened (pm-core's event kind).
    pub kind: EventKind,
    /// The task concerned.
    pub task_id: TaskId,
    /// Its project.
    pub project_id: Option<ProjectId>,
    /// The entity the event is about (the comment for `comment.*`, …).
    pub subject: Uuid,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The task as it is now; `null` when it has been deleted.
    pub task: Option<Task>,
}

/// A page of the delta feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Changes {
    /// Changes in `seq` order.
    pub changes: Vec<Change>,
    /// Pass as `since` for the next page.
    pub next_since: i64,
    /// Whether the log holds more after `next_since`.
    pub has_more: bool,
}

/// Events read from the log per round trip.
const READ_BATCH: u32 = 500;
/// Most events examined per request (invisible ones included), so a long stretch of events the
/// caller may not see cannot make one request scan the whole log.
const SCAN_LIMIT: usize = 5_000;

/// Whether the caller may see a task's events, and the task now.
#[derive(Clone)]
enum Seen {
    Visible(Box<Task>),
    Deleted,
    Hidden,
}

/// The delta feed after `since` for `user`: up to `limit` visible changes (see the protocol doc).
pub async fn changes(
    state: &AppState,
    user: UserId,
    since: i64,
    limit: usize,
) -> Result<Changes, ApiError> {
    let origin = Origin::user(user);
    let mut tasks: HashMap<TaskId, Seen> = HashMap::new();
    let mut projects: HashMap<ProjectId, bool> = HashMap::new();
    let mut out = Vec::new();
    let mut cursor = since;
    let mut scanned = 0;
    let has_more = 'scan: loop {
        let batch = state.stores.events.read_after(cursor, READ_BATCH).await?;
        let full = batch.len() == READ_BATCH as usize;
        if batch.is_empty() {
            break false;
        }
        for event in batch {
            if out.len() == limit {
                break 'scan true;
            }
            cursor = event.seq;
            scanned += 1;
            let Some(task_id) = event.task_id else { continue };
            let seen = match tasks.get(&task_id) {
                Some(s) => s.clone(),
                None => {
                    let s =
                        see_task(state, &origin, task_id, event.project_id, &mut projects).await?;
                    tasks.insert(task_id, s.clone());
                    s
                }
            };
            let task = match seen {
                Seen::Hidden => continue,
                Seen::Deleted => None,
                Seen::Visible(t) => Some(*t),
            };
            out.push(Change {
                seq: event.seq,
                kind: event.kind,
                task_id,
                project_id: event.project_id,
                subject: event.subject,
                at: event.at,
                task,
            });
        }
        if !full {
            break false;
        }
        if scanned >= SCAN_LIMIT {
            break true;
        }
    };
    Ok(Changes { changes: out, next_since: cursor, has_more })
}

async fn see_task(
    state: &AppState,
    origin: &Origin,
    id: TaskId,
    project: Option<ProjectId>,
    projects: &mut HashMap<ProjectId, bool>,
) -> Result<Seen, ApiError> {
    match state.pm.get_task(origin, id).await {
        Ok(t) => return Ok(Seen::Visible(Box::new(t))),
        Err(pm_core::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // Not visible: hidden from the caller, or gone.
    match state.stores.tasks.get_task(id).await {
        Ok(_) => return Ok(Seen::Hidden),
        Err(pm_core::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(project) = project else { return Ok(Seen::Hidden) };
    let readable = match projects.get(&project) {
        Some(r) => *r,
        None => {
            let r = match state.pm.get_project(origin, project).await {
                Ok(_) => true,
                Err(pm_core::Error::NotFound { .. } | pm_core::Error::Forbidden(_)) => false,
                Err(e) => return Err(e.into()),
            };
            projects.insert(project, r);
            r
        }
    };
    Ok(if readable { Seen::Deleted } else { Seen::Hidden })
}

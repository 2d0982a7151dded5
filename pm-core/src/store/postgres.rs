//! PostgreSQL adapter (feature `postgres`): the store for deployments past one machine.
//!
//! Owns pm-core's tables in a PostgreSQL database (`migrations/postgres`, tracked in
//! `_pm_core_migrations` so other crates' migrators coexist) and implements every pm-core store
//! trait over one [`PgPool`].
//!
//! Invariants:
//!
//! - every mutating method is one transaction that also appends its event(s), and the first
//!   statement of every such transaction is `pg_advisory_xact_lock(EVENT_LOG_LOCK)`. Writers
//!   therefore commit one at a time, so commit order equals `seq` order and a tailer reading
//!   `seq > cursor` never skips a late-committing lower `seq`;
//! - a committing write also runs `pg_notify('pm_events', '')` (a ping without payload) and pings
//!   the local [`Wakeup`] after commit. A background task `LISTEN`s on `pm_events` and pings the
//!   local [`Wakeup`] for commits made by other instances; it lives as long as the last clone of
//!   the store;
//! - semantics (event kinds, payloads, error mapping, list orders) are those of the SQLite
//!   adapter; text orders use the "C" collation so they agree with SQLite's byte order;
//! - documents that may hold domain `f64`s (custom field values, event payloads) live in `JSON`
//!   columns written from serde_json text, never JSONB, so they read back exactly as written.
//!
//! Row structs are private; conversion into domain types happens in `TryFrom` impls so parse
//! failures surface as errors, not panics.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::event::{
    ActivityScope, Actor, Cause, Event, EventDraft, EventKind, Origin, Wakeup, entity_payload,
    update_payload,
};
use crate::model::*;
use crate::query::{Page, PageRequest, SortValue, TaskFilter, TaskSortKey, from_micros};
use crate::store::*;
use crate::{Current, Error, Result};

/// Key of the transaction-scoped advisory lock every pm-core write transaction takes first
/// (the bytes of `"pm_core_"`). It serializes appends to the event log across all instances.
const EVENT_LOG_LOCK: i64 = 0x706d_5f63_6f72_655f;

/// The `LISTEN`/`NOTIFY` channel pinged by every commit that appended events.
const CHANNEL: &str = "pm_events";

/// Connections of the pool [`PostgresStore::connect`] opens.
const POOL_SIZE: u32 = 10;

/// The PostgreSQL store. Cheap to clone (the pool is reference-counted); the `LISTEN` task stops
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    wakeup: Wakeup,
    _listener: Option<Arc<ListenerGuard>>,
}

/// Aborts the `LISTEN` task when the last store clone goes away.
#[derive(Debug)]
struct ListenerGuard(tokio::task::AbortHandle);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host/db`) with a pool of 10 connections and starts the
    /// `LISTEN` task. Does not migrate; call [`StoreAdmin::migrate`].
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(Error::storage)?;
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (e.g. one a host shares between crates). When called inside a Tokio
    /// runtime it also starts the `LISTEN` task, on a dedicated connection made with the pool's
    /// connect options (so it never holds one of the pool's connections); outside a runtime,
    /// other instances' commits are only noticed by tailers' fallback polling.
    pub fn from_pool(pool: PgPool) -> Self {
        let wakeup = Wakeup::new();
        let listener = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let listen_pool = PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with((*pool.connect_options()).clone());
            let task = rt.spawn(listen(listen_pool, wakeup.clone()));
            Arc::new(ListenerGuard(task.abort_handle()))
        });
        Self { pool, wakeup, _listener: listener }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a write transaction: takes the event-log lock first (see the module docs).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await.map_err(st)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOG_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        Ok(tx)
    }

    /// Commits a write transaction with its `NOTIFY`, then wakes local tailers.
    async fn commit(&self, mut tx: sqlx::Transaction<'static, Postgres>) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        tx.commit().await.map_err(st)?;
        self.wakeup.ping();
        Ok(())
    }
}

/// The `LISTEN` loop: pings `wakeup` on every notification, and after every (re)connection since
/// pings may have been missed while disconnected. Reconnects with capped exponential backoff.
async fn listen(pool: PgPool, wakeup: Wakeup) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let mut backoff = MIN_BACKOFF;
    loop {
        let subscribed = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match subscribed {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                wakeup.ping();
                loop {
                    match listener.try_recv().await {
                        // `None`: the connection was lost and re-established; pings may be lost.
                        Ok(_) => wakeup.ping(),
                        Err(e) => {
                            tracing::warn!(error = %e, "pm-core: LISTEN {CHANNEL} failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pm-core: cannot LISTEN {CHANNEL}; retrying in {backoff:?}")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions and error mapping

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("stored {what} is invalid: {e}").into())
}

/// Maps a sqlx error to the domain: uniqueness and foreign-key violations become client errors.
fn db_err(
    e: sqlx::Error,
    entity: &'static str,
    unique_field: &'static str,
    fk_field: &'static str,
) -> Error {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return Error::AlreadyExists { entity, field: unique_field };
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return Error::invalid(fk_field, "refers to something that does not exist");
            }
            _ => {}
        }
    }
    Error::storage(e)
}

/// Maps a failed task insert: the primary key (taken by a caller-chosen id) and the
/// `(project_id, number)` index are both unique, and the error says which one failed.
fn task_insert_err(e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(d) = &e
        && d.kind() == sqlx::error::ErrorKind::UniqueViolation
        && d.constraint() == Some("tasks_pkey")
    {
        return Error::AlreadyExists { entity: "task", field: "id" };
    }
    db_err(e, "task", "number", "task")
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

fn ids<T: Into<Uuid> + Copy>(v: &[T]) -> Vec<Uuid> {
    v.iter().map(|&id| id.into()).collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(Error::storage)
}

/// Serializes a document for a `JSON` column (bound as text and cast with `::json`). A
/// `serde_json::Value` parameter would be sent as JSONB, whose `numeric` re-rendering of f64s
/// is what the `JSON` columns exist to avoid (see the migration's header).
fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::storage)
}

fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(sqlx::FromRow)]
struct OrgRow {
    id: Uuid,
    slug: String,
    name: String,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<OrgRow> for Organization {
    type Error = Error;
    fn try_from(r: OrgRow) -> Result<Self> {
        Ok(Organization {
            id: r.id.into(),
            slug: Slug::parse(&r.slug).map_err(|e| corrupt("slug", e))?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    display_name: String,
    created_at: OffsetDateTime,
}

impl TryFrom<UserRow> for User {
    type Error = Error;
    fn try_from(r: UserRow) -> Result<Self> {
        Ok(User {
            id: r.id.into(),
            email: Email::parse(&r.email).map_err(|e| corrupt("email", e))?,
            display_name: Name::parse(&r.display_name).map_err(|e| corrupt("display_name", e))?,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    org_id: Uuid,
    user_id: Uuid,
    role: String,
    joined_at: OffsetDateTime,
}

impl TryFrom<MemberRow> for Membership {
    type Error = Error;
    fn try_from(r: MemberRow) -> Result<Self> {
        Ok(Membership {
            org_id: r.org_id.into(),
            user_id: r.user_id.into(),
            role: MemberRole::parse(&r.role).map_err(|e| corrupt("role", e))?,
            joined_at: r.joined_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: Uuid,
    org_id: Uuid,
    key: String,
    name: String,
    description: String,
    lead: Option<Uuid>,
    archived: bool,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<ProjectRow> for Project {
    type Error = Error;
    fn try_from(r: ProjectRow) -> Result<Self> {
        Ok(Project {
            id: r.id.into(),
            org_id: r.org_id.into(),
            key: ProjectKey::parse(&r.key).map_err(|e| corrupt("key", e))?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            lead: r.lead.map(UserId::from),
            archived: r.archived,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    project_id: Uuid,
    name: String,
    category: String,
    position: i32,
    version: i64,
}

impl TryFrom<StateRow> for WorkflowState {
    type Error = Error;
    fn try_from(r: StateRow) -> Result<Self> {
        Ok(WorkflowState {
            id: r.id.into(),
            project_id: r.project_id.into(),
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            category: StateCategory::parse(&r.category).map_err(|e| corrupt("category", e))?,
            position: r.position,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LabelRow {
    id: Uuid,
    org_id: Uuid,
    name: String,
    color: String,
}

impl TryFrom<LabelRow> for Label {
    type Error = Error;
    fn try_from(r: LabelRow) -> Result<Self> {
        Ok(Label {
            id: r.id.into(),
            org_id: r.org_id.into(),
            name: LabelName::parse(&r.name).map_err(|e| corrupt("name", e))?,
            color: Color::parse(&r.color).map_err(|e| corrupt("color", e))?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MilestoneRow {
    id: Uuid,
    project_id: Uuid,
    name: String,
    description: String,
    due_on: Option<Date>,
    closed: bool,
    version: i64,
}

impl TryFrom<MilestoneRow> for Milestone {
    type Error = Error;
    fn try_from(r: MilestoneRow) -> Result<Self> {
        Ok(Milestone {
            id: r.id.into(),
            project_id: r.project_id.into(),
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            due_on: r.due_on,
            closed: r.closed,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
struct FieldRow {
    id: Uuid,
    project_id: Uuid,
    name: String,
    field_type: serde_json::Value,
}

impl TryFrom<FieldRow> for CustomField {
    type Error = Error;
    fn try_from(r: FieldRow) -> Result<Self> {
        Ok(CustomField {
            id: r.id.into(),
            project_id: r.project_id.into(),
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            field_type: serde_json::from_value(r.field_type)
                .map_err(|e| corrupt("field_type", e))?,
        })
    }
}

/// Selects a task with its project key, assignees, labels and custom field values in one
/// statement (a macro so that `concat!` can build `&'static str` queries from it).
macro_rules! task_select {
    () => {
        "SELECT t.id, t.org_id, t.project_id, t.number, p.key AS project_key, t.title, t.description, \
         t.state_id, t.priority, t.reporter, t.start_date, t.due_date, t.estimate, t.parent_id, \
         t.milestone_id, t.rank, t.archived, t.version, t.created_at, t.updated_at, \
         ARRAY(SELECT a.user_id FROM task_assignees a WHERE a.task_id = t.id ORDER BY a.user_id) AS assignees, \
         ARRAY(SELECT l.label_id FROM task_labels l WHERE l.task_id = t.id ORDER BY l.label_id) AS labels, \
         (SELECT json_object_agg(v.field_id, v.value) FROM task_field_values v WHERE v.task_id = t.id) AS custom_fields \
         FROM tasks t JOIN projects p ON p.id = t.project_id"
    };
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Uuid,
    number: i64,
    project_key: String,
    title: String,
    description: String,
    state_id: Uuid,
    priority: i16,
    reporter: Uuid,
    start_date: Option<Date>,
    due_date: Option<Date>,
    estimate: Option<i64>,
    parent_id: Option<Uuid>,
    milestone_id: Option<Uuid>,
    rank: String,
    archived: bool,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    assignees: Vec<Uuid>,
    labels: Vec<Uuid>,
    custom_fields: Option<serde_json::Value>,
}

impl TryFrom<TaskRow> for Task {
    type Error = Error;
    fn try_from(r: TaskRow) -> Result<Self> {
        let key = ProjectKey::parse(&r.project_key).map_err(|e| corrupt("key", e))?;
        let custom_fields: BTreeMap<FieldId, FieldValue> = match r.custom_fields {
            Some(v) => serde_json::from_value(v).map_err(|e| corrupt("custom_fields", e))?,
            None => BTreeMap::new(),
        };
        Ok(Task {
            id: r.id.into(),
            org_id: r.org_id.into(),
            project_id: r.project_id.into(),
            number: r.number,
            reference: task_reference(&key, r.number),
            title: TaskTitle::parse(&r.title).map_err(|e| corrupt("title", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            state_id: r.state_id.into(),
            priority: Priority::from_i16(r.priority).map_err(|e| corrupt("priority", e))?,
            assignees: r.assignees.into_iter().map(UserId::from).collect::<BTreeSet<_>>(),
            reporter: r.reporter.into(),
            labels: r.labels.into_iter().map(LabelId::from).collect::<BTreeSet<_>>(),
            start_date: r.start_date,
            due_date: r.due_date,
            estimate: r
                .estimate
                .map(|e| u32::try_from(e).map_err(|e| corrupt("estimate", e)))
                .transpose()?,
            parent_id: r.parent_id.map(TaskId::from),
            milestone_id: r.milestone_id.map(MilestoneId::from),
            rank: r.rank,
            archived: r.archived,
            custom_fields,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RelationRow {
    from_task: Uuid,
    to_task: Uuid,
    kind: String,
    created_by: Option<Uuid>,
    created_at: OffsetDateTime,
}

impl TryFrom<RelationRow> for TaskRelation {
    type Error = Error;
    fn try_from(r: RelationRow) -> Result<Self> {
        Ok(TaskRelation {
            from_task: r.from_task.into(),
            to_task: r.to_task.into(),
            kind: RelationKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            created_by: r.created_by.map(UserId::from),
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct WatcherRow {
    task_id: Uuid,
    user_id: Uuid,
    since: OffsetDateTime,
}

impl TryFrom<WatcherRow> for Watcher {
    type Error = Error;
    fn try_from(r: WatcherRow) -> Result<Self> {
        Ok(Watcher { task_id: r.task_id.into(), user_id: r.user_id.into(), since: r.since })
    }
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: Uuid,
    task_id: Uuid,
    author: Uuid,
    body: String,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<CommentRow> for Comment {
    type Error = Error;
    fn try_from(r: CommentRow) -> Result<Self> {
        Ok(Comment {
            id: r.id.into(),
            task_id: r.task_id.into(),
            author: r.author.into(),
            body: Markdown::parse_field("body", &r.body).map_err(|e| corrupt("body", e))?,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TimeEntryRow {
    id: Uuid,
    task_id: Uuid,
    user_id: Uuid,
    minutes: i64,
    spent_on: Date,
    note: String,
    created_at: OffsetDateTime,
}

impl TryFrom<TimeEntryRow> for TimeEntry {
    type Error = Error;
    fn try_from(r: TimeEntryRow) -> Result<Self> {
        Ok(TimeEntry {
            id: r.id.into(),
            task_id: r.task_id.into(),
            user_id: r.user_id.into(),
            minutes: u32::try_from(r.minutes).map_err(|e| corrupt("minutes", e))?,
            spent_on: r.spent_on,
            note: r.note,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttachmentRow {
    id: Uuid,
    task_id: Uuid,
    uploaded_by: Uuid,
    file_name: String,
    content_type: String,
    size: i64,
    sha256: String,
    blob_key: String,
    created_at: OffsetDateTime,
}

impl TryFrom<AttachmentRow> for Attachment {
    type Error = Error;
    fn try_from(r: AttachmentRow) -> Result<Self> {
        Ok(Attachment {
            id: r.id.into(),
            task_id: r.task_id.into(),
            uploaded_by: r.uploaded_by.into(),
            file_name: r.file_name,
            content_type: r.content_type,
            size: u64::try_from(r.size).map_err(|e| corrupt("size", e))?,
            sha256: r.sha256,
            blob_key: r.blob_key,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CheckInRow {
    id: Uuid,
    task_id: Uuid,
    user_id: Uuid,
    lat: f64,
    lon: f64,
    accuracy_m: f64,
    note: String,
    created_at: OffsetDateTime,
}

impl TryFrom<CheckInRow> for CheckIn {
    type Error = Error;
    fn try_from(r: CheckInRow) -> Result<Self> {
        Ok(CheckIn {
            id: r.id.into(),
            task_id: r.task_id.into(),
            user_id: r.user_id.into(),
            position: GeoPoint { lat: r.lat, lon: r.lon, accuracy_m: r.accuracy_m },
            note: r.note,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: Uuid,
    at: OffsetDateTime,
    org_id: Option<Uuid>,
    project_id: Option<Uuid>,
    task_id: Option<Uuid>,
    actor_type: String,
    actor_id: Option<Uuid>,
    kind: String,
    subject: Uuid,
    payload: serde_json::Value,
    cause_event_id: Option<Uuid>,
    cause_depth: Option<i64>,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<Self> {
        let cause = match (r.cause_event_id, r.cause_depth) {
            (Some(id), Some(depth)) => Some(Cause {
                event_id: id.into(),
                depth: u32::try_from(depth).map_err(|e| corrupt("cause_depth", e))?,
            }),
            _ => None,
        };
        Ok(Event {
            seq: r.seq,
            id: r.id.into(),
            at: r.at,
            org_id: r.org_id.map(OrgId::from),
            project_id: r.project_id.map(ProjectId::from),
            task_id: r.task_id.map(TaskId::from),
            actor: Actor::from_parts(&r.actor_type, r.actor_id).map_err(|e| corrupt("actor", e))?,
            kind: EventKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            subject: r.subject,
            payload: r.payload,
            cause,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Shared statements (run inside a write transaction)

async fn append(conn: &mut PgConnection, origin: &Origin, draft: EventDraft) -> Result<Event> {
    let id = EventId::new();
    let at = now();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, at, org_id, project_id, task_id, actor_type, actor_id, kind, subject, payload, \
         cause_event_id, cause_depth) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::json, $11, $12) RETURNING seq",
    )
    .bind(id.0)
    .bind(at)
    .bind(draft.org_id.map(Uuid::from))
    .bind(draft.project_id.map(Uuid::from))
    .bind(draft.task_id.map(Uuid::from))
    .bind(origin.actor.kind())
    .bind(origin.actor.id())
    .bind(draft.kind.as_str())
    .bind(draft.subject)
    // Text cast to JSON, never a JSONB parameter: see `json_text`.
    .bind(json_text(&draft.payload)?)
    .bind(origin.cause.map(|c| c.event_id.0))
    .bind(origin.cause.map(|c| i64::from(c.depth)))
    .fetch_one(&mut *conn)
    .await
    .map_err(st)?;
    Ok(draft.into_event(seq, id, at, origin))
}

/// Loads a task; inside a write transaction, `lock` also row-locks it (`FOR UPDATE OF t`).
async fn load_task(conn: &mut PgConnection, id: TaskId, lock: bool) -> Result<Task> {
    let sql = if lock {
        concat!(task_select!(), " WHERE t.id = $1 FOR UPDATE OF t")
    } else {
        concat!(task_select!(), " WHERE t.id = $1")
    };
    let row: Option<TaskRow> =
        sqlx::query_as(sql).bind(id.0).fetch_optional(&mut *conn).await.map_err(st)?;
    row.ok_or_else(|| Error::not_found("task"))?.try_into()
}

/// Rewrites a task's search document from its title, description and comments. ASCII/Unicode
/// punctuation becomes a word break first, so tokens split like [`crate::query::search_terms`]
/// splits queries (PostgreSQL's parser would otherwise keep `example.com` or `3.14` whole).
async fn refresh_search(conn: &mut PgConnection, task: TaskId) -> Result<()> {
    sqlx::query(
        "INSERT INTO task_search (task_id, doc) \
         SELECT t.id, to_tsvector('simple', regexp_replace(t.title || ' ' || t.description || ' ' || \
           COALESCE((SELECT string_agg(c.body, ' ' ORDER BY c.created_at, c.id) FROM comments c WHERE c.task_id = t.id), ''), \
           '[[:punct:]]+', ' ', 'g')) \
         FROM tasks t WHERE t.id = $1 \
         ON CONFLICT (task_id) DO UPDATE SET doc = EXCLUDED.doc",
    )
    .bind(task.0)
    .execute(&mut *conn)
    .await
    .map_err(st)?;
    Ok(())
}

/// Writes the assignee, label and custom-field rows of `task` (only the sets that differ from
/// `before`; all of them for a new task).
async fn write_task_sets(
    conn: &mut PgConnection,
    task: &Task,
    before: Option<&Task>,
) -> Result<()> {
    if before.is_none_or(|b| b.assignees != task.assignees) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_assignees WHERE task_id = $1")
                .bind(task.id.0)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        if !task.assignees.is_empty() {
            let users: Vec<Uuid> = task.assignees.iter().map(|u| u.0).collect();
            sqlx::query("INSERT INTO task_assignees (task_id, user_id) SELECT $1, u FROM UNNEST($2::uuid[]) AS u")
                .bind(task.id.0)
                .bind(users)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_err(e, "task", "assignees", "assignees"))?;
        }
    }
    if before.is_none_or(|b| b.labels != task.labels) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_labels WHERE task_id = $1")
                .bind(task.id.0)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        if !task.labels.is_empty() {
            let labels: Vec<Uuid> = task.labels.iter().map(|l| l.0).collect();
            sqlx::query("INSERT INTO task_labels (task_id, label_id) SELECT $1, l FROM UNNEST($2::uuid[]) AS l")
                .bind(task.id.0)
                .bind(labels)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_err(e, "task", "labels", "labels"))?;
        }
    }
    if before.is_none_or(|b| b.custom_fields != task.custom_fields) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_field_values WHERE task_id = $1")
                .bind(task.id.0)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        if !task.custom_fields.is_empty() {
            let fields: Vec<Uuid> = task.custom_fields.keys().map(|f| f.0).collect();
            let values = task.custom_fields.values().map(json_text).collect::<Result<Vec<_>>>()?;
            sqlx::query(
                "INSERT INTO task_field_values (task_id, field_id, value) \
                 SELECT $1, f, v::json FROM UNNEST($2::uuid[], $3::text[]) AS x(f, v)",
            )
            .bind(task.id.0)
            .bind(fields)
            .bind(values)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_err(e, "task", "custom_fields", "custom_fields"))?;
        }
    }
    Ok(())
}

/// Context of a task-scoped record: (org, project) of the task, or NotFound.
async fn task_scope(conn: &mut PgConnection, task: TaskId) -> Result<(OrgId, ProjectId)> {
    let row: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT org_id, project_id FROM tasks WHERE id = $1")
            .bind(task.0)
            .fetch_optional(&mut *conn)
            .await
            .map_err(st)?;
    let (o, p) = row.ok_or_else(|| Error::not_found("task"))?;
    Ok((o.into(), p.into()))
}

async fn project_org(conn: &mut PgConnection, project: ProjectId) -> Result<OrgId> {
    let row: Option<Uuid> = sqlx::query_scalar("SELECT org_id FROM projects WHERE id = $1")
        .bind(project.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(st)?;
    Ok(row.ok_or_else(|| Error::not_found("project"))?.into())
}

fn draft(
    kind: EventKind,
    org: Option<OrgId>,
    project: Option<ProjectId>,
    task: Option<TaskId>,
    subject: impl Into<Uuid>,
    payload: serde_json::Value,
) -> EventDraft {
    EventDraft {
        kind,
        org_id: org,
        project_id: project,
        task_id: task,
        subject: subject.into(),
        payload,
    }
}

// ---------------------------------------------------------------------------------------------

#[async_trait]
impl DirectoryStore for PostgresStore {
    async fn create_org(
        &self,
        origin: &Origin,
        org: &Organization,
        owner: Option<UserId>,
    ) -> Result<Organization> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO orgs (id, slug, name, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(org.id.0)
            .bind(org.slug.as_str())
            .bind(org.name.as_str())
            .bind(org.version)
            .bind(org.created_at)
            .bind(org.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "organization", "slug", "id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::OrgCreated,
                Some(org.id),
                None,
                None,
                org.id,
                entity_payload("org", org),
            ),
        )
        .await?;
        if let Some(owner) = owner {
            let m = Membership {
                org_id: org.id,
                user_id: owner,
                role: MemberRole::Owner,
                joined_at: org.created_at,
            };
            sqlx::query("INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)")
                .bind(m.org_id.0)
                .bind(m.user_id.0)
                .bind(m.role.as_str())
                .bind(m.joined_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err(e, "member", "user_id", "owner"))?;
            append(
                &mut tx,
                origin,
                draft(
                    EventKind::MemberAdded,
                    Some(org.id),
                    None,
                    None,
                    owner,
                    entity_payload("member", &m),
                ),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(org.clone())
    }

    async fn get_org(&self, id: OrgId) -> Result<Organization> {
        let row: Option<OrgRow> = sqlx::query_as("SELECT * FROM orgs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("organization"))?.try_into()
    }

    async fn list_orgs_for_user(&self, user: UserId) -> Result<Vec<Organization>> {
        let rows: Vec<OrgRow> = sqlx::query_as(
            "SELECT o.* FROM orgs o JOIN memberships m ON m.org_id = o.id WHERE m.user_id = $1 ORDER BY o.created_at, o.id",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn create_user(&self, origin: &Origin, user: &User) -> Result<User> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, email, display_name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user.id.0)
        .bind(user.email.as_str())
        .bind(user.display_name.as_str())
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "user", "email", "id"))?;
        append(
            &mut tx,
            origin,
            draft(EventKind::UserCreated, None, None, None, user.id, entity_payload("user", user)),
        )
        .await?;
        self.commit(tx).await?;
        Ok(user.clone())
    }

    async fn get_user(&self, id: UserId) -> Result<User> {
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("user"))?.try_into()
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.map(User::try_from).transpose()
    }

    async fn put_member(&self, origin: &Origin, m: &Membership) -> Result<Membership> {
        let mut tx = self.begin().await?;
        let existing: Option<MemberRow> = sqlx::query_as(
            "SELECT * FROM memberships WHERE org_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(m.org_id.0)
        .bind(m.user_id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let stored = match existing {
            Some(row) => {
                let mut cur = Membership::try_from(row)?;
                if cur.role == m.role {
                    return Ok(cur);
                }
                cur.role = m.role;
                sqlx::query("UPDATE memberships SET role = $1 WHERE org_id = $2 AND user_id = $3")
                    .bind(cur.role.as_str())
                    .bind(m.org_id.0)
                    .bind(m.user_id.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(st)?;
                cur
            }
            None => {
                sqlx::query("INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)")
                    .bind(m.org_id.0)
                    .bind(m.user_id.0)
                    .bind(m.role.as_str())
                    .bind(m.joined_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_err(e, "member", "user_id", "user_id"))?;
                m.clone()
            }
        };
        append(
            &mut tx,
            origin,
            draft(
                EventKind::MemberAdded,
                Some(m.org_id),
                None,
                None,
                m.user_id,
                entity_payload("member", &stored),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(stored)
    }

    async fn remove_member(&self, origin: &Origin, org: OrgId, user: UserId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<MemberRow> = sqlx::query_as(
            "DELETE FROM memberships WHERE org_id = $1 AND user_id = $2 RETURNING *",
        )
        .bind(org.0)
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let m = Membership::try_from(row.ok_or_else(|| Error::not_found("member"))?)?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::MemberRemoved,
                Some(org),
                None,
                None,
                user,
                entity_payload("member", &m),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn get_membership(&self, org: OrgId, user: UserId) -> Result<Option<Membership>> {
        let row: Option<MemberRow> =
            sqlx::query_as("SELECT * FROM memberships WHERE org_id = $1 AND user_id = $2")
                .bind(org.0)
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.map(Membership::try_from).transpose()
    }

    async fn list_members(&self, org: OrgId) -> Result<Vec<Membership>> {
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT * FROM memberships WHERE org_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(org.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

async fn insert_state(conn: &mut PgConnection, s: &WorkflowState) -> Result<()> {
    sqlx::query("INSERT INTO workflow_states (id, project_id, name, category, position, version) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(s.id.0)
        .bind(s.project_id.0)
        .bind(s.name.as_str())
        .bind(s.category.as_str())
        .bind(s.position)
        .bind(s.version)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_err(e, "workflow state", "name", "project_id"))?;
    Ok(())
}

#[async_trait]
impl ProjectStore for PostgresStore {
    async fn create_project(
        &self,
        origin: &Origin,
        p: &Project,
        states: &[WorkflowState],
    ) -> Result<Project> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO projects (id, org_id, key, name, description, lead, archived, next_number, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10)",
        )
        .bind(p.id.0)
        .bind(p.org_id.0)
        .bind(p.key.as_str())
        .bind(p.name.as_str())
        .bind(p.description.as_str())
        .bind(p.lead.map(Uuid::from))
        .bind(p.archived)
        .bind(p.version)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "project", "key", "org_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::ProjectCreated,
                Some(p.org_id),
                Some(p.id),
                None,
                p.id,
                entity_payload("project", p),
            ),
        )
        .await?;
        for s in states {
            insert_state(&mut tx, s).await?;
            append(
                &mut tx,
                origin,
                draft(
                    EventKind::StateCreated,
                    Some(p.org_id),
                    Some(p.id),
                    None,
                    s.id,
                    entity_payload("state", s),
                ),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(p.clone())
    }

    async fn get_project(&self, id: ProjectId) -> Result<Project> {
        let row: Option<ProjectRow> = sqlx::query_as("SELECT * FROM projects WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("project"))?.try_into()
    }

    async fn list_projects(&self, org: OrgId, include_archived: bool) -> Result<Vec<Project>> {
        let rows: Vec<ProjectRow> =
            sqlx::query_as("SELECT * FROM projects WHERE org_id = $1 AND ($2 OR NOT archived) ORDER BY key COLLATE \"C\", id")
                .bind(org.0)
                .bind(include_archived)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn update_project(
        &self,
        origin: &Origin,
        id: ProjectId,
        expected_version: i64,
        patch: &ProjectPatch,
    ) -> Result<Project> {
        let mut tx = self.begin().await?;
        let row: Option<ProjectRow> =
            sqlx::query_as("SELECT * FROM projects WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let current = Project::try_from(row.ok_or_else(|| Error::not_found("project"))?)?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Project(current))));
        }
        let mut next = current.clone();
        if !patch.apply(&mut next) {
            return Ok(current);
        }
        next.version += 1;
        next.updated_at = now();
        sqlx::query(
            "UPDATE projects SET name = $1, description = $2, lead = $3, archived = $4, version = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(next.name.as_str())
        .bind(next.description.as_str())
        .bind(next.lead.map(Uuid::from))
        .bind(next.archived)
        .bind(next.version)
        .bind(next.updated_at)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "project", "key", "lead"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::ProjectUpdated,
                Some(next.org_id),
                Some(id),
                None,
                id,
                update_payload("project", &current, &next),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(next)
    }

    async fn create_state(&self, origin: &Origin, s: &WorkflowState) -> Result<WorkflowState> {
        let mut tx = self.begin().await?;
        let org = project_org(&mut tx, s.project_id).await?;
        insert_state(&mut tx, s).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::StateCreated,
                Some(org),
                Some(s.project_id),
                None,
                s.id,
                entity_payload("state", s),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(s.clone())
    }

    async fn get_state(&self, id: StateId) -> Result<WorkflowState> {
        let row: Option<StateRow> = sqlx::query_as("SELECT * FROM workflow_states WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow state"))?.try_into()
    }

    async fn list_states(&self, project: ProjectId) -> Result<Vec<WorkflowState>> {
        let rows: Vec<StateRow> = sqlx::query_as(
            "SELECT * FROM workflow_states WHERE project_id = $1 ORDER BY position, id",
        )
        .bind(project.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn create_label(&self, origin: &Origin, l: &Label) -> Result<Label> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO labels (id, org_id, name, color) VALUES ($1, $2, $3, $4)")
            .bind(l.id.0)
            .bind(l.org_id.0)
            .bind(l.name.as_str())
            .bind(l.color.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "label", "name", "org_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::LabelCreated,
                Some(l.org_id),
                None,
                None,
                l.id,
                entity_payload("label", l),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(l.clone())
    }

    async fn list_labels(&self, org: OrgId) -> Result<Vec<Label>> {
        let rows: Vec<LabelRow> = sqlx::query_as(
            "SELECT * FROM labels WHERE org_id = $1 ORDER BY name COLLATE \"C\", id",
        )
        .bind(org.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn delete_label(&self, origin: &Origin, id: LabelId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<LabelRow> = sqlx::query_as("DELETE FROM labels WHERE id = $1 RETURNING *")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(st)?;
        let l = Label::try_from(row.ok_or_else(|| Error::not_found("label"))?)?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::LabelDeleted,
                Some(l.org_id),
                None,
                None,
                l.id,
                entity_payload("label", &l),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn create_milestone(&self, origin: &Origin, m: &Milestone) -> Result<Milestone> {
        let mut tx = self.begin().await?;
        let org = project_org(&mut tx, m.project_id).await?;
        sqlx::query(
            "INSERT INTO milestones (id, project_id, name, description, due_on, closed, version) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(m.id.0)
        .bind(m.project_id.0)
        .bind(m.name.as_str())
        .bind(m.description.as_str())
        .bind(m.due_on)
        .bind(m.closed)
        .bind(m.version)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "milestone", "name", "project_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::MilestoneCreated,
                Some(org),
                Some(m.project_id),
                None,
                m.id,
                entity_payload("milestone", m),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(m.clone())
    }

    async fn get_milestone(&self, id: MilestoneId) -> Result<Milestone> {
        let row: Option<MilestoneRow> = sqlx::query_as("SELECT * FROM milestones WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("milestone"))?.try_into()
    }

    async fn list_milestones(&self, project: ProjectId) -> Result<Vec<Milestone>> {
        let rows: Vec<MilestoneRow> = sqlx::query_as(
            "SELECT * FROM milestones WHERE project_id = $1 ORDER BY due_on ASC NULLS LAST, name COLLATE \"C\", id",
        )
        .bind(project.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn update_milestone(
        &self,
        origin: &Origin,
        m: &Milestone,
        expected_version: i64,
    ) -> Result<Milestone> {
        let mut tx = self.begin().await?;
        let row: Option<MilestoneRow> =
            sqlx::query_as("SELECT * FROM milestones WHERE id = $1 FOR UPDATE")
                .bind(m.id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let current = Milestone::try_from(row.ok_or_else(|| Error::not_found("milestone"))?)?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Milestone(current))));
        }
        let mut next = m.clone();
        next.project_id = current.project_id;
        next.version = current.version + 1;
        if (Milestone { version: current.version, ..next.clone() }) == current {
            return Ok(current);
        }
        let org = project_org(&mut tx, current.project_id).await?;
        sqlx::query("UPDATE milestones SET name = $1, description = $2, due_on = $3, closed = $4, version = $5 WHERE id = $6")
            .bind(next.name.as_str())
            .bind(next.description.as_str())
            .bind(next.due_on)
            .bind(next.closed)
            .bind(next.version)
            .bind(m.id.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "milestone", "name", "project_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::MilestoneUpdated,
                Some(org),
                Some(current.project_id),
                None,
                m.id,
                update_payload("milestone", &current, &next),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(next)
    }

    async fn create_field(&self, origin: &Origin, f: &CustomField) -> Result<CustomField> {
        let mut tx = self.begin().await?;
        let org = project_org(&mut tx, f.project_id).await?;
        sqlx::query(
            "INSERT INTO custom_fields (id, project_id, name, field_type) VALUES ($1, $2, $3, $4)",
        )
        .bind(f.id.0)
        .bind(f.project_id.0)
        .bind(f.name.as_str())
        .bind(to_json(&f.field_type)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "custom field", "name", "project_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::FieldCreated,
                Some(org),
                Some(f.project_id),
                None,
                f.id,
                entity_payload("field", f),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(f.clone())
    }

    async fn list_fields(&self, project: ProjectId) -> Result<Vec<CustomField>> {
        let rows: Vec<FieldRow> = sqlx::query_as(
            "SELECT * FROM custom_fields WHERE project_id = $1 ORDER BY name COLLATE \"C\", id",
        )
        .bind(project.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn create_task(
        &self,
        origin: &Origin,
        new: &NewTask,
        at: OffsetDateTime,
    ) -> Result<Task> {
        let mut tx = self.begin().await?;
        let row: Option<(i64, String, Uuid)> = sqlx::query_as(
            "UPDATE projects SET next_number = next_number + 1 WHERE id = $1 RETURNING next_number - 1, key, org_id",
        )
        .bind(new.project_id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let (number, key, org) = row.ok_or_else(|| Error::not_found("project"))?;
        let key = ProjectKey::parse(&key).map_err(|e| corrupt("key", e))?;
        // `rank` is COLLATE "C", so MAX is the byte-wise maximum `rank::after` expects.
        let last_rank: Option<String> =
            sqlx::query_scalar("SELECT MAX(rank) FROM tasks WHERE project_id = $1")
                .bind(new.project_id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(st)?;
        let task = new.to_task(org.into(), &key, number, last_rank.as_deref(), at);
        sqlx::query(
            "INSERT INTO tasks (id, org_id, project_id, number, title, description, state_id, priority, reporter, \
             start_date, due_date, estimate, parent_id, milestone_id, rank, archived, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(task.id.0)
        .bind(task.org_id.0)
        .bind(task.project_id.0)
        .bind(task.number)
        .bind(task.title.as_str())
        .bind(task.description.as_str())
        .bind(task.state_id.0)
        .bind(task.priority.as_i16())
        .bind(task.reporter.0)
        .bind(task.start_date)
        .bind(task.due_date)
        .bind(task.estimate.map(i64::from))
        .bind(task.parent_id.map(Uuid::from))
        .bind(task.milestone_id.map(Uuid::from))
        .bind(&task.rank)
        .bind(task.archived)
        .bind(task.version)
        .bind(task.created_at)
        .bind(task.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(task_insert_err)?;
        write_task_sets(&mut tx, &task, None).await?;
        refresh_search(&mut tx, task.id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::TaskCreated,
                Some(task.org_id),
                Some(task.project_id),
                Some(task.id),
                task.id,
                entity_payload("task", &task),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(task)
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        let mut conn = self.pool.acquire().await.map_err(st)?;
        load_task(&mut conn, id, false).await
    }

    async fn get_task_by_number(&self, project: ProjectId, number: i64) -> Result<Task> {
        let row: Option<TaskRow> =
            sqlx::query_as(concat!(task_select!(), " WHERE t.project_id = $1 AND t.number = $2"))
                .bind(project.0)
                .bind(number)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        row.ok_or_else(|| Error::not_found("task"))?.try_into()
    }

    async fn update_task(
        &self,
        origin: &Origin,
        id: TaskId,
        expected_version: i64,
        patch: &TaskPatch,
    ) -> Result<Task> {
        let mut tx = self.begin().await?;
        let current = load_task(&mut tx, id, true).await?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Task(current))));
        }
        let mut next = current.clone();
        if !patch.apply(&mut next) {
            return Ok(current);
        }
        next.version += 1;
        next.updated_at = now();
        sqlx::query(
            "UPDATE tasks SET title = $1, description = $2, state_id = $3, priority = $4, start_date = $5, due_date = $6, \
             estimate = $7, parent_id = $8, milestone_id = $9, rank = $10, archived = $11, version = $12, updated_at = $13 \
             WHERE id = $14",
        )
        .bind(next.title.as_str())
        .bind(next.description.as_str())
        .bind(next.state_id.0)
        .bind(next.priority.as_i16())
        .bind(next.start_date)
        .bind(next.due_date)
        .bind(next.estimate.map(i64::from))
        .bind(next.parent_id.map(Uuid::from))
        .bind(next.milestone_id.map(Uuid::from))
        .bind(&next.rank)
        .bind(next.archived)
        .bind(next.version)
        .bind(next.updated_at)
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "task", "number", "task"))?;
        write_task_sets(&mut tx, &next, Some(&current)).await?;
        if next.title != current.title || next.description != current.description {
            refresh_search(&mut tx, id).await?;
        }
        append(
            &mut tx,
            origin,
            draft(
                EventKind::TaskUpdated,
                Some(next.org_id),
                Some(next.project_id),
                Some(id),
                id,
                update_payload("task", &current, &next),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(next)
    }

    async fn delete_task(&self, origin: &Origin, id: TaskId, expected_version: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        let current = load_task(&mut tx, id, true).await?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Task(current))));
        }
        // The search document, comments, relations, watchers and records go by ON DELETE
        // CASCADE; subtasks are detached by ON DELETE SET NULL.
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::TaskDeleted,
                Some(current.org_id),
                Some(current.project_id),
                Some(id),
                id,
                entity_payload("task", &current),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn list_tasks(
        &self,
        org: OrgId,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>> {
        filter.validate()?;
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(concat!(
            task_select!(),
            " WHERE t.id IN (SELECT t.id FROM tasks t WHERE t.org_id = "
        ));
        q.push_bind(org.0);
        if !filter.project_ids.is_empty() {
            q.push(" AND t.project_id = ANY(").push_bind(ids(&filter.project_ids)).push(")");
        }
        if !filter.state_ids.is_empty() {
            q.push(" AND t.state_id = ANY(").push_bind(ids(&filter.state_ids)).push(")");
        }
        if !filter.state_categories.is_empty() {
            let cats: Vec<String> =
                filter.state_categories.iter().map(|c| c.as_str().to_string()).collect();
            q.push(
                " AND t.state_id IN (SELECT s.id FROM workflow_states s WHERE s.category = ANY(",
            )
            .push_bind(cats)
            .push("))");
        }
        if !filter.assignees.is_empty() {
            q.push(" AND EXISTS (SELECT 1 FROM task_assignees a WHERE a.task_id = t.id AND a.user_id = ANY(")
                .push_bind(ids(&filter.assignees))
                .push("))");
        }
        if !filter.reporters.is_empty() {
            q.push(" AND t.reporter = ANY(").push_bind(ids(&filter.reporters)).push(")");
        }
        if !filter.labels.is_empty() {
            q.push(" AND EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = t.id AND l.label_id = ANY(")
                .push_bind(ids(&filter.labels))
                .push("))");
        }
        if !filter.priorities.is_empty() {
            let prios: Vec<i16> = filter.priorities.iter().map(|p| p.as_i16()).collect();
            q.push(" AND t.priority = ANY(").push_bind(prios).push(")");
        }
        if let Some(d) = filter.due_from {
            q.push(" AND t.due_date >= ").push_bind(d);
        }
        if let Some(d) = filter.due_to {
            q.push(" AND t.due_date <= ").push_bind(d);
        }
        match filter.parent {
            Some(Some(p)) => {
                q.push(" AND t.parent_id = ").push_bind(p.0);
            }
            Some(None) => {
                q.push(" AND t.parent_id IS NULL");
            }
            None => {}
        }
        if let Some(m) = filter.milestone_id {
            q.push(" AND t.milestone_id = ").push_bind(m.0);
        }
        if let Some(since) = filter.updated_since {
            q.push(" AND t.updated_at >= ").push_bind(since);
        }
        if let Some(a) = filter.archived {
            q.push(" AND t.archived = ").push_bind(a);
        }
        if filter.text.is_some() {
            let terms = filter.search_terms();
            if terms.is_empty() {
                q.push(" AND FALSE");
            } else {
                // Terms are alphanumeric (no tsquery operators can be injected); each is
                // prefix-matched and all are required.
                let tsquery =
                    terms.iter().map(|t| format!("{t}:*")).collect::<Vec<_>>().join(" & ");
                q.push(" AND t.id IN (SELECT s.task_id FROM task_search s WHERE s.doc @@ to_tsquery('simple', ")
                    .push_bind(tsquery)
                    .push("))");
            }
        }
        let expr = match page.sort.key {
            TaskSortKey::Created => "t.created_at",
            TaskSortKey::Updated => "t.updated_at",
            TaskSortKey::Due => "COALESCE(t.due_date, DATE '9999-12-31')",
            TaskSortKey::Priority => "t.priority",
            TaskSortKey::Rank => "t.rank COLLATE \"C\"",
            TaskSortKey::Number => "t.number",
        };
        let (cmp, dir) = if page.sort.descending { ("<", "DESC") } else { (">", "ASC") };
        if let Some(c) = &page.after {
            q.push(format_args!(" AND ({expr} {cmp} "));
            push_sort_value(&mut q, page.sort.key, &c.value)?;
            q.push(format_args!(" OR ({expr} = "));
            push_sort_value(&mut q, page.sort.key, &c.value)?;
            q.push(format_args!(" AND t.id {cmp} ")).push_bind(c.id.0).push("))");
        }
        // Two phases: the inner query picks the page's ids using only indexed columns; the outer
        // one loads the page's rows with their sets. Loading sets for every candidate row before
        // sorting made filtered pages over large projects hundreds of times slower.
        q.push(format_args!(" ORDER BY {expr} {dir}, t.id {dir} LIMIT "))
            .push_bind(i64::from(page.limit) + 1)
            .push(format_args!(") ORDER BY {expr} {dir}, t.id {dir}"));
        let rows: Vec<TaskRow> = q.build_query_as().fetch_all(&self.pool).await.map_err(st)?;
        Ok(Page::from_rows(convert(rows)?, page))
    }

    async fn add_relation(&self, origin: &Origin, r: &TaskRelation) -> Result<TaskRelation> {
        if r.from_task == r.to_task {
            return Err(Error::invalid("to_task", "a task cannot relate to itself"));
        }
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, r.from_task).await?;
        let (to_org, _) = task_scope(&mut tx, r.to_task).await?;
        if org != to_org {
            return Err(Error::not_found("task"));
        }
        if r.kind == RelationKind::Blocks {
            // Would `from -> to` close a cycle? Only if `to` already reaches `from`.
            let cycle: bool = sqlx::query_scalar(
                "WITH RECURSIVE reach(id) AS (SELECT $1::uuid UNION SELECT r.to_task FROM task_relations r \
                 JOIN reach ON r.from_task = reach.id WHERE r.kind = 'blocks') \
                 SELECT EXISTS (SELECT 1 FROM reach WHERE id = $2)",
            )
            .bind(r.to_task.0)
            .bind(r.from_task.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?;
            if cycle {
                return Err(Error::invalid("to_task", "would create a cycle of blocking tasks"));
            }
        }
        sqlx::query("INSERT INTO task_relations (from_task, to_task, kind, created_by, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(r.from_task.0)
            .bind(r.to_task.0)
            .bind(r.kind.as_str())
            .bind(r.created_by.map(Uuid::from))
            .bind(r.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "relation", "kind", "to_task"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::RelationAdded,
                Some(org),
                Some(project),
                Some(r.from_task),
                r.to_task,
                entity_payload("relation", r),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(r.clone())
    }

    async fn remove_relation(
        &self,
        origin: &Origin,
        from: TaskId,
        to: TaskId,
        kind: RelationKind,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<RelationRow> =
            sqlx::query_as("DELETE FROM task_relations WHERE from_task = $1 AND to_task = $2 AND kind = $3 RETURNING *")
                .bind(from.0)
                .bind(to.0)
                .bind(kind.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let r = TaskRelation::try_from(row.ok_or_else(|| Error::not_found("relation"))?)?;
        let (org, project) = task_scope(&mut tx, from).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::RelationRemoved,
                Some(org),
                Some(project),
                Some(from),
                to,
                entity_payload("relation", &r),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn list_relations(&self, task: TaskId) -> Result<Vec<TaskRelation>> {
        let rows: Vec<RelationRow> = sqlx::query_as(
            "SELECT * FROM task_relations WHERE from_task = $1 OR to_task = $1 \
             ORDER BY created_at, from_task, to_task, kind COLLATE \"C\"",
        )
        .bind(task.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn add_watcher(&self, origin: &Origin, w: &Watcher) -> Result<Watcher> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, w.task_id).await?;
        let existing: Option<WatcherRow> =
            sqlx::query_as("SELECT * FROM watchers WHERE task_id = $1 AND user_id = $2")
                .bind(w.task_id.0)
                .bind(w.user_id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        if let Some(row) = existing {
            return row.try_into();
        }
        sqlx::query("INSERT INTO watchers (task_id, user_id, since) VALUES ($1, $2, $3)")
            .bind(w.task_id.0)
            .bind(w.user_id.0)
            .bind(w.since)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(e, "watcher", "user_id", "user_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::WatcherAdded,
                Some(org),
                Some(project),
                Some(w.task_id),
                w.user_id,
                entity_payload("watcher", w),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(w.clone())
    }

    async fn remove_watcher(&self, origin: &Origin, task: TaskId, user: UserId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<WatcherRow> =
            sqlx::query_as("DELETE FROM watchers WHERE task_id = $1 AND user_id = $2 RETURNING *")
                .bind(task.0)
                .bind(user.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let w = Watcher::try_from(row.ok_or_else(|| Error::not_found("watcher"))?)?;
        let (org, project) = task_scope(&mut tx, task).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::WatcherRemoved,
                Some(org),
                Some(project),
                Some(task),
                user,
                entity_payload("watcher", &w),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn list_watchers(&self, task: TaskId) -> Result<Vec<Watcher>> {
        let rows: Vec<WatcherRow> =
            sqlx::query_as("SELECT * FROM watchers WHERE task_id = $1 ORDER BY since, user_id")
                .bind(task.0)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }
}

/// Binds a cursor's sort value with the SQL type of the sort expression; a value of the wrong
/// shape for the key is a client error on `cursor`.
fn push_sort_value(q: &mut QueryBuilder<Postgres>, key: TaskSortKey, v: &SortValue) -> Result<()> {
    let bad = || Error::invalid("cursor", "is not a cursor returned by this API");
    match (key, v) {
        (TaskSortKey::Created | TaskSortKey::Updated, SortValue::Int(us)) => {
            q.push_bind(from_micros(*us).map_err(|_| bad())?);
        }
        (TaskSortKey::Priority, SortValue::Int(p)) => {
            q.push_bind(i16::try_from(*p).map_err(|_| bad())?);
        }
        (TaskSortKey::Number, SortValue::Int(n)) => {
            q.push_bind(*n);
        }
        (TaskSortKey::Due, SortValue::Text(s)) => {
            let d = Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                .map_err(|_| bad())?;
            q.push_bind(d);
        }
        (TaskSortKey::Rank, SortValue::Text(s)) => {
            q.push_bind(s.clone());
        }
        _ => return Err(bad()),
    }
    Ok(())
}

#[async_trait]
impl CommentStore for PostgresStore {
    async fn create_comment(&self, origin: &Origin, c: &Comment) -> Result<Comment> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, c.task_id).await?;
        sqlx::query(
            "INSERT INTO comments (id, task_id, author, body, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(c.id.0)
        .bind(c.task_id.0)
        .bind(c.author.0)
        .bind(c.body.as_str())
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "comment", "id", "author"))?;
        refresh_search(&mut tx, c.task_id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::CommentCreated,
                Some(org),
                Some(project),
                Some(c.task_id),
                c.id,
                entity_payload("comment", c),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(c.clone())
    }

    async fn get_comment(&self, id: CommentId) -> Result<Comment> {
        let row: Option<CommentRow> = sqlx::query_as("SELECT * FROM comments WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("comment"))?.try_into()
    }

    async fn list_comments(&self, task: TaskId) -> Result<Vec<Comment>> {
        let rows: Vec<CommentRow> =
            sqlx::query_as("SELECT * FROM comments WHERE task_id = $1 ORDER BY created_at, id")
                .bind(task.0)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn update_comment(
        &self,
        origin: &Origin,
        id: CommentId,
        expected_version: i64,
        body: &Markdown,
    ) -> Result<Comment> {
        let mut tx = self.begin().await?;
        let row: Option<CommentRow> =
            sqlx::query_as("SELECT * FROM comments WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let current = Comment::try_from(row.ok_or_else(|| Error::not_found("comment"))?)?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Comment(current))));
        }
        if current.body == *body {
            return Ok(current);
        }
        let next = Comment {
            body: body.clone(),
            version: current.version + 1,
            updated_at: now(),
            ..current.clone()
        };
        sqlx::query("UPDATE comments SET body = $1, version = $2, updated_at = $3 WHERE id = $4")
            .bind(next.body.as_str())
            .bind(next.version)
            .bind(next.updated_at)
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        refresh_search(&mut tx, next.task_id).await?;
        let (org, project) = task_scope(&mut tx, next.task_id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::CommentUpdated,
                Some(org),
                Some(project),
                Some(next.task_id),
                id,
                update_payload("comment", &current, &next),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(next)
    }

    async fn delete_comment(&self, origin: &Origin, id: CommentId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<CommentRow> =
            sqlx::query_as("DELETE FROM comments WHERE id = $1 RETURNING *")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let c = Comment::try_from(row.ok_or_else(|| Error::not_found("comment"))?)?;
        refresh_search(&mut tx, c.task_id).await?;
        let (org, project) = task_scope(&mut tx, c.task_id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::CommentDeleted,
                Some(org),
                Some(project),
                Some(c.task_id),
                id,
                entity_payload("comment", &c),
            ),
        )
        .await?;
        self.commit(tx).await
    }
}

#[async_trait]
impl WorkLogStore for PostgresStore {
    async fn create_time_entry(&self, origin: &Origin, e: &TimeEntry) -> Result<TimeEntry> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, e.task_id).await?;
        sqlx::query(
            "INSERT INTO time_entries (id, task_id, user_id, minutes, spent_on, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.id.0)
        .bind(e.task_id.0)
        .bind(e.user_id.0)
        .bind(i64::from(e.minutes))
        .bind(e.spent_on)
        .bind(&e.note)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| db_err(err, "time entry", "id", "user_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::TimeEntryCreated,
                Some(org),
                Some(project),
                Some(e.task_id),
                e.id,
                entity_payload("time_entry", e),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(e.clone())
    }

    async fn list_time_entries(&self, task: TaskId) -> Result<Vec<TimeEntry>> {
        let rows: Vec<TimeEntryRow> = sqlx::query_as(
            "SELECT * FROM time_entries WHERE task_id = $1 ORDER BY spent_on, created_at, id",
        )
        .bind(task.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn delete_time_entry(&self, origin: &Origin, id: TimeEntryId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<TimeEntryRow> =
            sqlx::query_as("DELETE FROM time_entries WHERE id = $1 RETURNING *")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let e = TimeEntry::try_from(row.ok_or_else(|| Error::not_found("time entry"))?)?;
        let (org, project) = task_scope(&mut tx, e.task_id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::TimeEntryDeleted,
                Some(org),
                Some(project),
                Some(e.task_id),
                id,
                entity_payload("time_entry", &e),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn create_attachment(&self, origin: &Origin, a: &Attachment) -> Result<Attachment> {
        let size = i64::try_from(a.size).map_err(|_| Error::invalid("size", "is too large"))?;
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, a.task_id).await?;
        sqlx::query(
            "INSERT INTO attachments (id, task_id, uploaded_by, file_name, content_type, size, sha256, blob_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(a.id.0)
        .bind(a.task_id.0)
        .bind(a.uploaded_by.0)
        .bind(&a.file_name)
        .bind(&a.content_type)
        .bind(size)
        .bind(&a.sha256)
        .bind(&a.blob_key)
        .bind(a.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "attachment", "id", "uploaded_by"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::AttachmentCreated,
                Some(org),
                Some(project),
                Some(a.task_id),
                a.id,
                entity_payload("attachment", a),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(a.clone())
    }

    async fn get_attachment(&self, id: AttachmentId) -> Result<Attachment> {
        let row: Option<AttachmentRow> = sqlx::query_as("SELECT * FROM attachments WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("attachment"))?.try_into()
    }

    async fn list_attachments(&self, task: TaskId) -> Result<Vec<Attachment>> {
        let rows: Vec<AttachmentRow> =
            sqlx::query_as("SELECT * FROM attachments WHERE task_id = $1 ORDER BY created_at, id")
                .bind(task.0)
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn delete_attachment(&self, origin: &Origin, id: AttachmentId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<AttachmentRow> =
            sqlx::query_as("DELETE FROM attachments WHERE id = $1 RETURNING *")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        let a = Attachment::try_from(row.ok_or_else(|| Error::not_found("attachment"))?)?;
        let (org, project) = task_scope(&mut tx, a.task_id).await?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::AttachmentDeleted,
                Some(org),
                Some(project),
                Some(a.task_id),
                id,
                entity_payload("attachment", &a),
            ),
        )
        .await?;
        self.commit(tx).await
    }

    async fn create_check_in(&self, origin: &Origin, c: &CheckIn) -> Result<CheckIn> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, c.task_id).await?;
        sqlx::query(
            "INSERT INTO check_ins (id, task_id, user_id, lat, lon, accuracy_m, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.id.0)
        .bind(c.task_id.0)
        .bind(c.user_id.0)
        .bind(c.position.lat)
        .bind(c.position.lon)
        .bind(c.position.accuracy_m)
        .bind(&c.note)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "check-in", "id", "user_id"))?;
        append(
            &mut tx,
            origin,
            draft(
                EventKind::CheckInCreated,
                Some(org),
                Some(project),
                Some(c.task_id),
                c.id,
                entity_payload("check_in", c),
            ),
        )
        .await?;
        self.commit(tx).await?;
        Ok(c.clone())
    }

    async fn list_check_ins(&self, task: TaskId) -> Result<Vec<CheckIn>> {
        let rows: Vec<CheckInRow> = sqlx::query_as(
            "SELECT * FROM check_ins WHERE task_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(task.0)
        .fetch_all(&self.pool)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

#[async_trait]
impl EventLog for PostgresStore {
    async fn read_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        let rows: Vec<EventRow> =
            sqlx::query_as("SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(i64::from(limit.clamp(1, 10_000)))
                .fetch_all(&self.pool)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn activity(
        &self,
        scope: ActivityScope,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::from(limit.clamp(1, 1_000));
        let rows: Vec<EventRow> = match scope {
            ActivityScope::Project(p) => {
                sqlx::query_as("SELECT * FROM events WHERE project_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3")
                    .bind(p.0)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
            ActivityScope::Task(t) => {
                sqlx::query_as("SELECT * FROM events WHERE task_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3")
                    .bind(t.0)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(st)?;
        convert(rows)
    }

    async fn latest_seq(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::bigint FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(st)
    }

    async fn load_cursor(&self, consumer: &str) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM event_cursors WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .map_err(st)?;
        Ok(seq.unwrap_or(0))
    }

    async fn save_cursor(&self, consumer: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO event_cursors (consumer, seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer) DO UPDATE SET seq = GREATEST(event_cursors.seq, EXCLUDED.seq), updated_at = EXCLUDED.updated_at",
        )
        .bind(consumer)
        .bind(seq)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(st)?;
        Ok(())
    }

    fn wakeup(&self) -> &Wakeup {
        &self.wakeup
    }
}

#[async_trait]
impl StoreAdmin for PostgresStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/postgres");
        m.dangerous_set_table_name("_pm_core_migrations");
        m.run(&self.pool).await.map_err(Error::storage)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(st)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

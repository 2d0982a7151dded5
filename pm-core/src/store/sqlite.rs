//! SQLite adapter (feature `sqlite`): the embedded default store.
//!
//! One writer connection plus a read pool over a WAL database. The single writer is what makes
//! `seq` order equal commit order here: transactions that append events are serialized by the
//! writer pool itself. Every mutating method is one transaction on the writer that also appends
//! its event; the [`Wakeup`] is pinged after commit.
//!
//! Storage conventions (see `migrations/sqlite`): ids are hyphenated UUID text, timestamps are
//! integer microseconds, dates are `YYYY-MM-DD` text. Row structs are private; conversion into
//! domain types happens in `TryFrom` impls so parse failures surface as errors, not panics.
//!
//! The hottest reads (a task, a page of tasks, a project with its states, the event log's
//! `read_after`) run on the caller's thread when the database is a file (module `inline`: a
//! few read-only connections, a 3 ms budget per read, the sqlx path as the fallback).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::event::{
    ActivityScope, Event, EventDraft, EventKind, Origin, Wakeup, entity_payload, update_payload,
};
use crate::model::*;
use crate::query::{
    NO_DUE_DATE, Page, PageRequest, SortValue, TaskFilter, TaskSortKey, from_micros, micros,
};
use crate::store::*;
use crate::{Current, Error, Result};

mod inline;
use inline::{Arg, InlineReader, Sql};

/// The SQLite store. Cheap to clone (pools are reference-counted).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    wakeup: Wakeup,
    counters: Counters,
    /// Task creates waiting for the [`CreateBatcher`].
    creates: tokio::sync::mpsc::UnboundedSender<QueuedCreate>,
    creates_alone: Arc<std::sync::atomic::AtomicU64>,
    /// Reads answered on the caller's thread; `None` for an in-memory database.
    inline: Option<Arc<InlineReader>>,
}

type Counters = Arc<Mutex<HashMap<ProjectId, TaskCounter>>>;

fn lock_counters(c: &Counters) -> std::sync::MutexGuard<'_, HashMap<ProjectId, TaskCounter>> {
    // The map holds plain values and is never left half-updated, so a poisoned lock is safe to
    // reuse.
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `create_task` call waiting for a batch (see [`CreateBatcher`]).
#[derive(Debug)]
struct QueuedCreate {
    input: CreateInput,
    reply: tokio::sync::oneshot::Sender<Result<Task>>,
}

#[derive(Debug)]
struct CreateInput {
    origin: Origin,
    new: NewTask,
    at: OffsetDateTime,
}

/// What `create_task` needs to know about a project before it can write a task: its next task
/// number and the rank of its last task (plus the org and key a task row and reference need).
///
/// Kept in memory so a create is one round trip to the writer's thread inside a batch (see
/// `SqliteStore::write_batch`) instead of six: under load those thread hops, not SQLite, bounded
/// write throughput. Only touched while the single writer connection is held, so creates see it in
/// commit order. It is a cache, never the truth: a number another process took is caught by the
/// `(project_id, number)` unique index and the create retried from the database; a rank that is
/// no longer last only places the task slightly earlier.
#[derive(Debug, Clone)]
struct TaskCounter {
    org_id: OrgId,
    key: ProjectKey,
    next_number: i64,
    last_rank: Option<String>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`, `sqlite::memory:`).
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .synchronous(SqliteSynchronous::Normal);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory {
            // An in-memory database lives as long as its one connection: pin it, and let readers
            // share it.
            let pool = SqlitePoolOptions::new()
                // A local file needs no liveness probe; the probe is a round trip to the
                // connection's thread on every acquire.
                .test_before_acquire(false)
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await
                .map_err(Error::storage)?;
            return Ok(Self::from_pools(pool.clone(), pool, None));
        }
        let opts = opts.journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            // A local file needs no liveness probe; the probe is a round trip to the
            // connection's thread on every acquire.
            .test_before_acquire(false)
            .max_connections(1)
            // The writer never checkpoints: `Checkpointer` does, on its own connection (see there).
            .connect_with(opts.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(Error::storage)?;
        let checkpointer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(Error::storage)?;
        // One reader per core: each sqlx SQLite connection runs on its own thread, and more
        // threads than cores only adds context switches (measured under load).
        let readers =
            std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8) as u32;
        let inline =
            InlineReader::new(opts.get_filename(), readers as usize, inline::INLINE_BUDGET);
        let reader = SqlitePoolOptions::new()
            // A local file needs no liveness probe; the probe is a round trip to the
            // connection's thread on every acquire.
            .test_before_acquire(false)
            .max_connections(readers)
            .connect_with(opts.read_only(true))
            .await
            .map_err(Error::storage)?;
        let store = Self::from_pools(writer, reader, Some(Arc::new(inline)));
        tokio::spawn(Checkpointer { pool: checkpointer }.run(store.wakeup.subscribe()));
        Ok(store)
    }

    fn from_pools(
        writer: SqlitePool,
        reader: SqlitePool,
        inline: Option<Arc<InlineReader>>,
    ) -> Self {
        let (creates, queue) = tokio::sync::mpsc::unbounded_channel();
        let store = Self {
            writer,
            reader,
            wakeup: Wakeup::new(),
            counters: Counters::default(),
            creates,
            creates_alone: Arc::default(),
            inline,
        };
        // Ends when the last clone of this store is dropped (the queue closes).
        tokio::spawn(store.batcher().run(queue));
        store
    }

    /// The pool of the single writer connection, for a host that lets other crates' SQLite
    /// adapters write through it too (their `from_pools`): the process then has one writer on
    /// the file, so crates queue for it in process instead of contending for SQLite's write
    /// lock (`SQLITE_BUSY` after the busy timeout). pm-server does. The connection runs with
    /// `wal_autocheckpoint=0`; the store's checkpointer copies the WAL back after pm-core's
    /// commits and, since others' commits do not wake it, every few seconds regardless.
    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read-only pool (for sharing, see [`SqliteStore::writer_pool`]). For an in-memory
    /// database it is the writer's one pinned connection.
    pub fn reader_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// A [`CreateBatcher`] over this store's writer, counters and wake-up.
    fn batcher(&self) -> CreateBatcher {
        CreateBatcher {
            writer: self.writer.clone(),
            wakeup: self.wakeup.clone(),
            counters: self.counters.clone(),
            creates_alone: self.creates_alone.clone(),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectId, TaskCounter>> {
        lock_counters(&self.counters)
    }

    /// How many task creates failed inside a batch and were retried alone (a health signal:
    /// it stays at zero unless writes fail or another process writes the same file).
    pub fn creates_retried_alone(&self) -> u64 {
        self.creates_alone.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hot reads that could not be answered on the caller's thread (budget exceeded, every
    /// inline connection busy) and ran on the sqlx path instead; a health signal for
    /// the inline read budget.
    pub fn inline_read_fallbacks(&self) -> u64 {
        self.inline.as_ref().map_or(0, |i| i.fallbacks())
    }

    /// Runs a one-text-column read inline when possible, else on the reader pool.
    async fn read_text(&self, sql: &Sql) -> Result<Option<String>> {
        if let Some(v) = self.inline.as_ref().and_then(|i| i.text(sql)) {
            return Ok(v);
        }
        sql.fetch_text(&self.reader).await.map_err(st)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        begin_write(&self.writer).await.map_err(Error::storage)
    }

    async fn commit(&self, tx: sqlx::Transaction<'static, Sqlite>) -> Result<()> {
        tx.commit().await.map_err(Error::storage)?;
        self.wakeup.ping();
        Ok(())
    }
}

/// Begins a write transaction holding SQLite's write lock from its first statement.
///
/// A deferred `BEGIN` reads under a snapshot and upgrades to a writer at its first write; when
/// another connection committed in between (another process on the same file: one writer
/// connection per process), the upgrade fails at once with `SQLITE_BUSY`, without waiting for
/// the busy timeout, and the request failed. `BEGIN IMMEDIATE` waits (up to the busy timeout)
/// for the lock instead. Within one process the single writer connection already serializes
/// writes, so this costs nothing there.
async fn begin_write(pool: &SqlitePool) -> sqlx::Result<sqlx::Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Copies committed WAL frames back into the database file, off the write path.
///
/// SQLite's default makes the connection whose commit pushes the WAL past 1000 pages run the
/// checkpoint inside that commit: copying and syncing a few MiB while every queued write waits.
/// Under a steady create load that was a latency spike every fraction of a second (the tail of
/// the create latency). The writer runs with `wal_autocheckpoint=0` and this task checkpoints
/// (`PASSIVE`: never blocks the writer or readers) on its own connection shortly after commits.
/// The WAL still restarts from its beginning once a checkpoint has caught up, so it stays small.
struct Checkpointer {
    pool: SqlitePool,
}

/// How long the checkpointer lets commits accumulate before copying them back.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often the checkpointer runs when no pm-core commit woke it: other crates writing through
/// a shared writer (see `SqliteStore::writer_pool`) do not ping the wake-up, and their WAL
/// frames must not pile up until pm-core's next commit. A passive checkpoint of an already
/// copied WAL writes nothing.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);

impl Checkpointer {
    /// Runs until the store's wake-up signal is gone (every store clone dropped).
    async fn run(self, mut commits: tokio::sync::watch::Receiver<u64>) {
        loop {
            match tokio::time::timeout(CHECKPOINT_IDLE, commits.changed()).await {
                Ok(Ok(())) => {
                    tokio::time::sleep(CHECKPOINT_EVERY).await;
                    commits.mark_unchanged();
                }
                // Every store clone is gone.
                Ok(Err(_)) => return,
                // Idle: copy back what other crates' commits left in the WAL.
                Err(_) => {}
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await
            {
                // A failed checkpoint loses nothing (the frames stay in the WAL); the next one
                // retries.
                tracing::warn!(error = %e, "SQLite WAL checkpoint failed");
            }
        }
    }
}

/// Chunk sizes `CreateBatcher` writes in one round trip, largest first.
const CREATE_CHUNKS: [usize; 5] = [16, 8, 4, 2, 1];

/// One create's statements (see [`bind_create`] for the parameters, bound in this order). sqlx
/// runs every statement of a string in one call, binding anonymous parameters in order across
/// all of them (numbered `?NNN` with gaps are mis-bound across statements by sqlx 0.9). The
/// number only moves forward (`MAX`), so a stale cache never hands it out twice after a restart.
/// A new task has no comments, so its search body is title and description (as `index_search`
/// writes it).
const CREATE_ONE: &str = "INSERT INTO tasks (id, org_id, project_id, number, title, description, state_id, priority, reporter, \
     start_date, due_date, estimate, parent_id, milestone_id, rank, archived, version, created_at, updated_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?); \
     INSERT INTO task_assignees (task_id, user_id) SELECT ?, value FROM json_each(?); \
     INSERT INTO task_labels (task_id, label_id) SELECT ?, value FROM json_each(?); \
     INSERT INTO task_field_values (task_id, field_id, value) SELECT ?, value ->> 0, value ->> 1 FROM json_each(?); \
     UPDATE projects SET next_number = MAX(next_number, ? + 1) WHERE id = ?; \
     INSERT INTO task_search (rowid, body) SELECT rid, title || ' ' || description || ' ' FROM tasks WHERE id = ?; \
     INSERT INTO events (id, at, org_id, project_id, task_id, actor_type, actor_id, kind, subject, payload, \
     cause_event_id, cause_depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);";

/// The statement string for a chunk of `n` creates (one of [`CREATE_CHUNKS`]), built once.
fn create_chunk_sql(n: usize) -> Option<&'static str> {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        CREATE_CHUNKS
            .iter()
            .map(|&n| format!("SAVEPOINT pm_chunk; {} RELEASE pm_chunk", CREATE_ONE.repeat(n)))
            .collect()
    });
    let i = CREATE_CHUNKS.iter().position(|&size| size == n)?;
    Some(all[i].as_str())
}

/// Binds one create's parameters in [`CREATE_ONE`]'s order.
fn bind_create<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    origin: &Origin,
    task: &Task,
) -> Result<sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>> {
    let id = id_text(task.id);
    let project = id_text(task.project_id);
    let org = id_text(task.org_id);
    let assignees: Vec<String> = task.assignees.iter().map(|u| id_text(*u)).collect();
    let labels: Vec<String> = task.labels.iter().map(|l| id_text(*l)).collect();
    // Field values as `[field id, value as JSON text]` pairs: stored as JSON text, like
    // `write_task_sets` does.
    let fields: Vec<(String, String)> = task
        .custom_fields
        .iter()
        .map(|(f, v)| Ok((id_text(*f), serde_json::to_string(v).map_err(Error::storage)?)))
        .collect::<Result<_>>()?;
    Ok(query
        .bind(id.clone())
        .bind(org.clone())
        .bind(project.clone())
        .bind(task.number)
        .bind(task.title.as_str().to_owned())
        .bind(task.description.as_str().to_owned())
        .bind(id_text(task.state_id))
        .bind(task.priority.as_i16())
        .bind(id_text(task.reporter))
        .bind(task.start_date.map(date_text))
        .bind(task.due_date.map(date_text))
        .bind(task.estimate.map(i64::from))
        .bind(opt_id_text(task.parent_id))
        .bind(opt_id_text(task.milestone_id))
        .bind(task.rank.clone())
        .bind(task.archived)
        .bind(task.version)
        .bind(ts(task.created_at))
        .bind(ts(task.updated_at))
        .bind(id.clone())
        .bind(serde_json::to_string(&assignees).map_err(Error::storage)?)
        .bind(id.clone())
        .bind(serde_json::to_string(&labels).map_err(Error::storage)?)
        .bind(id.clone())
        .bind(serde_json::to_string(&fields).map_err(Error::storage)?)
        .bind(task.number)
        .bind(project.clone())
        .bind(id.clone())
        .bind(id_text(EventId::new()))
        .bind(ts(now()))
        .bind(org)
        .bind(project)
        .bind(id.clone())
        .bind(origin.actor.kind())
        .bind(opt_id_text(origin.actor.id()))
        .bind(EventKind::TaskCreated.as_str())
        .bind(id)
        .bind(entity_payload("task", task).to_string())
        .bind(opt_id_text(origin.cause.map(|c| c.event_id)))
        .bind(origin.cause.map(|c| i64::from(c.depth))))
}

/// A project's task counter, read from the database.
async fn load_counter(conn: &mut SqliteConnection, project: ProjectId) -> Result<TaskCounter> {
    let row: Option<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT org_id, key, next_number, (SELECT MAX(rank) FROM tasks WHERE project_id = ?1) \
         FROM projects WHERE id = ?1",
    )
    .bind(id_text(project))
    .fetch_optional(&mut *conn)
    .await
    .map_err(st)?;
    let (org, key, next_number, last_rank) = row.ok_or_else(|| Error::not_found("project"))?;
    Ok(TaskCounter {
        org_id: parse_id(&org)?,
        key: ProjectKey::parse(&key).map_err(|e| corrupt("key", e))?,
        next_number,
        last_rank,
    })
}

/// The one task that writes task creates (group commit): it takes whatever creates are queued,
/// writes them in one transaction on the writer connection, and answers each. Requests never
/// wait on the writer pool themselves, so a burst costs one wake-up per request instead of a
/// chain of pool hand-offs.
#[derive(Debug)]
struct CreateBatcher {
    writer: SqlitePool,
    wakeup: Wakeup,
    counters: Counters,
    creates_alone: Arc<std::sync::atomic::AtomicU64>,
}

impl CreateBatcher {
    /// Upper bound on one batch, so a long queue still commits (and answers) in steps.
    const MAX_BATCH: usize = 256;

    async fn run(self, mut queue: tokio::sync::mpsc::UnboundedReceiver<QueuedCreate>) {
        let mut batch = Vec::new();
        while queue.recv_many(&mut batch, Self::MAX_BATCH).await > 0 {
            self.write_batch(std::mem::take(&mut batch)).await;
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectId, TaskCounter>> {
        lock_counters(&self.counters)
    }

    /// Writes queued creates in one transaction on the writer connection `conn`, then answers
    /// each. Under load this is group commit: one `BEGIN`/`COMMIT` and one WAL append for many
    /// tasks, and one round trip to the writer's thread per task. A task whose statements fail is
    /// rolled back to its savepoint alone and retried by itself afterwards (see
    /// `create_task_alone`).
    async fn write_batch(&self, batch: Vec<QueuedCreate>) {
        let mut written = Vec::with_capacity(batch.len());
        let mut alone = Vec::new();
        let outcome: Result<()> = async {
            let mut tx = begin_write(&self.writer).await.map_err(st)?;
            let mut pending: std::collections::VecDeque<QueuedCreate> = batch.into();
            // Creates of a chunk that failed, to be written one by one to find the culprit.
            let mut singles = std::collections::VecDeque::new();
            loop {
                let chunk: Vec<QueuedCreate> = if let Some(one) = singles.pop_front() {
                    vec![one]
                } else if pending.is_empty() {
                    break;
                } else {
                    // Chunks of 16, 8, 4, 2 or 1: a few statement shapes for sqlx's cache.
                    let size =
                        CREATE_CHUNKS.iter().copied().find(|&n| n <= pending.len()).unwrap_or(1);
                    pending.drain(..size).collect()
                };
                match self.write_chunk(&mut tx, &chunk).await {
                    Ok(tasks) => written.extend(chunk.into_iter().zip(tasks)),
                    Err(e) if chunk.len() == 1 => {
                        tracing::debug!(error = %e, "a batched task create failed; retrying it alone");
                        self.creates_alone.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        alone.extend(chunk);
                    }
                    Err(_) => singles.extend(chunk),
                }
            }
            tx.commit().await.map_err(st)
        }
        .await;
        match outcome {
            Ok(()) => {
                if !written.is_empty() {
                    self.wakeup.ping();
                }
                for (queued, task) in written {
                    let _ = queued.reply.send(Ok(task));
                }
            }
            Err(e) => {
                // Nothing of this batch is stored; the counters may have advanced past it.
                let message = e.to_string();
                let mut counters = self.counters();
                for (queued, _) in written {
                    counters.remove(&queued.input.new.project_id);
                    let _ = queued
                        .reply
                        .send(Err(Error::storage(std::io::Error::other(message.clone()))));
                }
            }
        }
        for queued in alone {
            let i = &queued.input;
            let result = self.create_task_alone(&i.origin, &i.new, i.at).await;
            self.counters().remove(&i.new.project_id);
            let _ = queued.reply.send(result);
        }
    }

    /// Writes `chunk` in one round trip under the savepoint `pm_chunk`. On error nothing of the
    /// chunk remains and the counters of its projects are dropped (they will be re-read).
    async fn write_chunk(
        &self,
        tx: &mut SqliteConnection,
        chunk: &[QueuedCreate],
    ) -> Result<Vec<Task>> {
        let mut counters: HashMap<ProjectId, TaskCounter> = HashMap::new();
        let result = self.try_write_chunk(tx, chunk, &mut counters).await;
        match result {
            Ok(tasks) => {
                self.counters().extend(counters);
                Ok(tasks)
            }
            Err((e, opened)) => {
                {
                    let mut cache = self.counters();
                    for q in chunk {
                        cache.remove(&q.input.new.project_id);
                    }
                }
                if opened {
                    sqlx::query("ROLLBACK TO pm_chunk; RELEASE pm_chunk")
                        .execute(&mut *tx)
                        .await
                        .map_err(st)?;
                }
                Err(e)
            }
        }
    }

    /// `write_chunk`'s work; an error says whether the savepoint was opened.
    async fn try_write_chunk(
        &self,
        tx: &mut SqliteConnection,
        chunk: &[QueuedCreate],
        counters: &mut HashMap<ProjectId, TaskCounter>,
    ) -> std::result::Result<Vec<Task>, (Error, bool)> {
        let before = |e: Error| (e, false);
        let sql = create_chunk_sql(chunk.len()).ok_or_else(|| {
            before(Error::storage(std::io::Error::other("no statement for this chunk size")))
        })?;
        let mut tasks = Vec::with_capacity(chunk.len());
        let mut query = sqlx::query(sql);
        for queued in chunk {
            let (origin, new, at) = (&queued.input.origin, &queued.input.new, queued.input.at);
            let counter = match counters.entry(new.project_id) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let cached = self.counters().get(&new.project_id).cloned();
                    let counter = match cached {
                        Some(c) => c,
                        None => load_counter(&mut *tx, new.project_id).await.map_err(before)?,
                    };
                    slot.insert(counter)
                }
            };
            let task = new.to_task(
                counter.org_id,
                &counter.key,
                counter.next_number,
                counter.last_rank.as_deref(),
                at,
            );
            counter.next_number += 1;
            counter.last_rank = Some(task.rank.clone());
            query = bind_create(query, origin, &task).map_err(before)?;
            tasks.push(task);
        }
        query.execute(&mut *tx).await.map_err(|e| (st(e), true))?;
        Ok(tasks)
    }

    /// `create_task` one statement at a time in its own transaction, reading the project's
    /// counter from the database: the path for a task whose batched write failed, so its error
    /// names the field at fault and a stale cached counter cannot fail it twice.
    async fn create_task_alone(
        &self,
        origin: &Origin,
        new: &NewTask,
        at: OffsetDateTime,
    ) -> Result<Task> {
        let mut tx = begin_write(&self.writer).await.map_err(Error::storage)?;
        // Number and last rank in one statement: every statement is a round trip to the writer's
        // thread, and under load those hops bound write throughput more than SQLite does.
        let row: Option<(i64, String, String, Option<String>)> = sqlx::query_as(
            "UPDATE projects SET next_number = next_number + 1 WHERE id = ?1 \
             RETURNING next_number - 1, key, org_id, (SELECT MAX(rank) FROM tasks WHERE project_id = ?1)",
        )
        .bind(id_text(new.project_id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(st)?;
        let (number, key, org, last_rank) = row.ok_or_else(|| Error::not_found("project"))?;
        let key = ProjectKey::parse(&key).map_err(|e| corrupt("key", e))?;
        let task = new.to_task(parse_id(&org)?, &key, number, last_rank.as_deref(), at);
        sqlx::query(
            "INSERT INTO tasks (id, org_id, project_id, number, title, description, state_id, priority, reporter, \
             start_date, due_date, estimate, parent_id, milestone_id, rank, archived, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(task.id))
        .bind(id_text(task.org_id))
        .bind(id_text(task.project_id))
        .bind(task.number)
        .bind(task.title.as_str())
        .bind(task.description.as_str())
        .bind(id_text(task.state_id))
        .bind(task.priority.as_i16())
        .bind(id_text(task.reporter))
        .bind(task.start_date.map(date_text))
        .bind(task.due_date.map(date_text))
        .bind(task.estimate.map(i64::from))
        .bind(opt_id_text(task.parent_id))
        .bind(opt_id_text(task.milestone_id))
        .bind(&task.rank)
        .bind(task.archived)
        .bind(task.version)
        .bind(ts(task.created_at))
        .bind(ts(task.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(task_insert_err)?;
        write_task_sets(&mut tx, &task, None).await?;
        index_search(&mut tx, &id_text(task.id)).await?;
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
        tx.commit().await.map_err(Error::storage)?;
        self.wakeup.ping();
        Ok(task)
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions

fn id_text(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn opt_id_text<T: Into<Uuid>>(id: Option<T>) -> Option<String> {
    id.map(id_text)
}

fn parse_id<T: From<Uuid>>(s: &str) -> Result<T> {
    Uuid::parse_str(s).map(T::from).map_err(Error::storage)
}

fn parse_opt_id<T: From<Uuid>>(s: Option<&str>) -> Result<Option<T>> {
    s.map(parse_id).transpose()
}

fn date_text(d: Date) -> String {
    d.to_string()
}

fn parse_date(s: &str) -> Result<Date> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(Error::storage)
}

fn parse_opt_date(s: Option<&str>) -> Result<Option<Date>> {
    s.map(parse_date).transpose()
}

fn ts(t: OffsetDateTime) -> i64 {
    micros(t)
}

fn from_ts(us: i64) -> Result<OffsetDateTime> {
    from_micros(us)
}

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
        && d.message().contains("tasks.id")
    {
        return Error::AlreadyExists { entity: "task", field: "id" };
    }
    db_err(e, "task", "number", "task")
}

fn st(e: sqlx::Error) -> Error {
    Error::storage(e)
}

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(sqlx::FromRow)]
struct OrgRow {
    id: String,
    slug: String,
    name: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OrgRow> for Organization {
    type Error = Error;
    fn try_from(r: OrgRow) -> Result<Self> {
        Ok(Organization {
            id: parse_id(&r.id)?,
            slug: Slug::parse(&r.slug).map_err(|e| corrupt("slug", e))?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            version: r.version,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    display_name: String,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;
    fn try_from(r: UserRow) -> Result<Self> {
        Ok(User {
            id: parse_id(&r.id)?,
            email: Email::parse(&r.email).map_err(|e| corrupt("email", e))?,
            display_name: Name::parse(&r.display_name).map_err(|e| corrupt("display_name", e))?,
            created_at: from_ts(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    org_id: String,
    user_id: String,
    role: String,
    joined_at: i64,
}

impl TryFrom<MemberRow> for Membership {
    type Error = Error;
    fn try_from(r: MemberRow) -> Result<Self> {
        Ok(Membership {
            org_id: parse_id(&r.org_id)?,
            user_id: parse_id(&r.user_id)?,
            role: MemberRole::parse(&r.role).map_err(|e| corrupt("role", e))?,
            joined_at: from_ts(r.joined_at)?,
        })
    }
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct ProjectRow {
    id: String,
    org_id: String,
    key: String,
    name: String,
    description: String,
    lead: Option<String>,
    archived: bool,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ProjectRow> for Project {
    type Error = Error;
    fn try_from(r: ProjectRow) -> Result<Self> {
        Ok(Project {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            key: ProjectKey::parse(&r.key).map_err(|e| corrupt("key", e))?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            lead: parse_opt_id(r.lead.as_deref())?,
            archived: r.archived,
            version: r.version,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct StateRow {
    id: String,
    project_id: String,
    name: String,
    category: String,
    position: i32,
    version: i64,
}

impl TryFrom<StateRow> for WorkflowState {
    type Error = Error;
    fn try_from(r: StateRow) -> Result<Self> {
        Ok(WorkflowState {
            id: parse_id(&r.id)?,
            project_id: parse_id(&r.project_id)?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            category: StateCategory::parse(&r.category).map_err(|e| corrupt("category", e))?,
            position: r.position,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LabelRow {
    id: String,
    org_id: String,
    name: String,
    color: String,
}

impl TryFrom<LabelRow> for Label {
    type Error = Error;
    fn try_from(r: LabelRow) -> Result<Self> {
        Ok(Label {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            name: LabelName::parse(&r.name).map_err(|e| corrupt("name", e))?,
            color: Color::parse(&r.color).map_err(|e| corrupt("color", e))?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MilestoneRow {
    id: String,
    project_id: String,
    name: String,
    description: String,
    due_on: Option<String>,
    closed: bool,
    version: i64,
}

impl TryFrom<MilestoneRow> for Milestone {
    type Error = Error;
    fn try_from(r: MilestoneRow) -> Result<Self> {
        Ok(Milestone {
            id: parse_id(&r.id)?,
            project_id: parse_id(&r.project_id)?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            due_on: parse_opt_date(r.due_on.as_deref())?,
            closed: r.closed,
            version: r.version,
        })
    }
}

#[derive(sqlx::FromRow)]
struct FieldRow {
    id: String,
    project_id: String,
    name: String,
    field_type: String,
}

impl TryFrom<FieldRow> for CustomField {
    type Error = Error;
    fn try_from(r: FieldRow) -> Result<Self> {
        Ok(CustomField {
            id: parse_id(&r.id)?,
            project_id: parse_id(&r.project_id)?,
            name: Name::parse(&r.name).map_err(|e| corrupt("name", e))?,
            field_type: serde_json::from_str(&r.field_type)
                .map_err(|e| corrupt("field_type", e))?,
        })
    }
}

/// Selects a task with its key, assignees, labels and custom field values in one statement.
macro_rules! task_select {
    () => {
        "SELECT t.id, t.org_id, t.project_id, t.number, p.key AS project_key, t.title, t.description, \
         t.state_id, t.priority, t.reporter, t.start_date, t.due_date, t.estimate, t.parent_id, \
         t.milestone_id, t.rank, t.archived, t.version, t.created_at, t.updated_at, \
         (SELECT json_group_array(user_id) FROM task_assignees WHERE task_id = t.id) AS assignees, \
         (SELECT json_group_array(label_id) FROM task_labels WHERE task_id = t.id) AS labels, \
         (SELECT json_group_object(field_id, json(value)) FROM task_field_values WHERE task_id = t.id) AS custom_fields \
         FROM tasks t JOIN projects p ON p.id = t.project_id"
    };
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: String,
    org_id: String,
    project_id: String,
    number: i64,
    project_key: String,
    title: String,
    description: String,
    state_id: String,
    priority: i16,
    reporter: String,
    start_date: Option<String>,
    due_date: Option<String>,
    estimate: Option<i64>,
    parent_id: Option<String>,
    milestone_id: Option<String>,
    rank: String,
    archived: bool,
    version: i64,
    created_at: i64,
    updated_at: i64,
    assignees: String,
    labels: String,
    custom_fields: String,
}

impl TryFrom<TaskRow> for Task {
    type Error = Error;
    fn try_from(r: TaskRow) -> Result<Self> {
        let key = ProjectKey::parse(&r.project_key).map_err(|e| corrupt("key", e))?;
        let assignees: BTreeSet<UserId> =
            serde_json::from_str(&r.assignees).map_err(|e| corrupt("assignees", e))?;
        let labels: BTreeSet<LabelId> =
            serde_json::from_str(&r.labels).map_err(|e| corrupt("labels", e))?;
        let custom_fields: BTreeMap<FieldId, FieldValue> =
            serde_json::from_str(&r.custom_fields).map_err(|e| corrupt("custom_fields", e))?;
        Ok(Task {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            project_id: parse_id(&r.project_id)?,
            number: r.number,
            reference: task_reference(&key, r.number),
            title: TaskTitle::parse(&r.title).map_err(|e| corrupt("title", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            state_id: parse_id(&r.state_id)?,
            priority: Priority::from_i16(r.priority)?,
            assignees,
            reporter: parse_id(&r.reporter)?,
            labels,
            start_date: parse_opt_date(r.start_date.as_deref())?,
            due_date: parse_opt_date(r.due_date.as_deref())?,
            estimate: r
                .estimate
                .map(|e| u32::try_from(e).map_err(|e| corrupt("estimate", e)))
                .transpose()?,
            parent_id: parse_opt_id(r.parent_id.as_deref())?,
            milestone_id: parse_opt_id(r.milestone_id.as_deref())?,
            rank: r.rank,
            archived: r.archived,
            custom_fields,
            version: r.version,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

/// Like `task_select!`, but each task as one JSON object (see `list_tasks`).
macro_rules! task_json_object {
    () => {
        "json_object('id', t.id, 'org_id', t.org_id, 'project_id', t.project_id, \
         'number', t.number, 'project_key', p.key, 'title', t.title, 'description', t.description, \
         'state_id', t.state_id, 'priority', t.priority, 'reporter', t.reporter, \
         'start_date', t.start_date, 'due_date', t.due_date, 'estimate', t.estimate, \
         'parent_id', t.parent_id, 'milestone_id', t.milestone_id, 'rank', t.rank, \
         'archived', t.archived, 'version', t.version, 'created_at', t.created_at, \
         'updated_at', t.updated_at, \
         'assignees', json((SELECT json_group_array(user_id) FROM task_assignees WHERE task_id = t.id)), \
         'labels', json((SELECT json_group_array(label_id) FROM task_labels WHERE task_id = t.id)), \
         'custom_fields', json(COALESCE((SELECT json_group_object(field_id, json(value)) \
            FROM task_field_values WHERE task_id = t.id), '{}')))"
    };
}

/// A task as `task_json_select!` renders it.
#[derive(serde::Deserialize)]
struct TaskJson {
    id: String,
    org_id: String,
    project_id: String,
    number: i64,
    project_key: String,
    title: String,
    description: String,
    state_id: String,
    priority: i16,
    reporter: String,
    start_date: Option<String>,
    due_date: Option<String>,
    estimate: Option<i64>,
    parent_id: Option<String>,
    milestone_id: Option<String>,
    rank: String,
    archived: i64,
    version: i64,
    created_at: i64,
    updated_at: i64,
    assignees: BTreeSet<UserId>,
    labels: BTreeSet<LabelId>,
    custom_fields: BTreeMap<FieldId, FieldValue>,
}

impl TryFrom<TaskJson> for Task {
    type Error = Error;
    fn try_from(r: TaskJson) -> Result<Self> {
        let key = ProjectKey::parse(&r.project_key).map_err(|e| corrupt("key", e))?;
        Ok(Task {
            id: parse_id(&r.id)?,
            org_id: parse_id(&r.org_id)?,
            project_id: parse_id(&r.project_id)?,
            number: r.number,
            reference: task_reference(&key, r.number),
            title: TaskTitle::parse(&r.title).map_err(|e| corrupt("title", e))?,
            description: Markdown::parse(&r.description).map_err(|e| corrupt("description", e))?,
            state_id: parse_id(&r.state_id)?,
            priority: Priority::from_i16(r.priority)?,
            assignees: r.assignees,
            reporter: parse_id(&r.reporter)?,
            labels: r.labels,
            start_date: parse_opt_date(r.start_date.as_deref())?,
            due_date: parse_opt_date(r.due_date.as_deref())?,
            estimate: r
                .estimate
                .map(|e| u32::try_from(e).map_err(|e| corrupt("estimate", e)))
                .transpose()?,
            parent_id: parse_opt_id(r.parent_id.as_deref())?,
            milestone_id: parse_opt_id(r.milestone_id.as_deref())?,
            rank: r.rank,
            archived: r.archived != 0,
            custom_fields: r.custom_fields,
            version: r.version,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RelationRow {
    from_task: String,
    to_task: String,
    kind: String,
    created_by: Option<String>,
    created_at: i64,
}

impl TryFrom<RelationRow> for TaskRelation {
    type Error = Error;
    fn try_from(r: RelationRow) -> Result<Self> {
        Ok(TaskRelation {
            from_task: parse_id(&r.from_task)?,
            to_task: parse_id(&r.to_task)?,
            kind: RelationKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            created_by: parse_opt_id(r.created_by.as_deref())?,
            created_at: from_ts(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct WatcherRow {
    task_id: String,
    user_id: String,
    since: i64,
}

impl TryFrom<WatcherRow> for Watcher {
    type Error = Error;
    fn try_from(r: WatcherRow) -> Result<Self> {
        Ok(Watcher {
            task_id: parse_id(&r.task_id)?,
            user_id: parse_id(&r.user_id)?,
            since: from_ts(r.since)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: String,
    task_id: String,
    author: String,
    body: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<CommentRow> for Comment {
    type Error = Error;
    fn try_from(r: CommentRow) -> Result<Self> {
        Ok(Comment {
            id: parse_id(&r.id)?,
            task_id: parse_id(&r.task_id)?,
            author: parse_id(&r.author)?,
            body: Markdown::parse_field("body", &r.body).map_err(|e| corrupt("body", e))?,
            version: r.version,
            created_at: from_ts(r.created_at)?,
            updated_at: from_ts(r.updated_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct TimeEntryRow {
    id: String,
    task_id: String,
    user_id: String,
    minutes: i64,
    spent_on: String,
    note: String,
    created_at: i64,
}

impl TryFrom<TimeEntryRow> for TimeEntry {
    type Error = Error;
    fn try_from(r: TimeEntryRow) -> Result<Self> {
        Ok(TimeEntry {
            id: parse_id(&r.id)?,
            task_id: parse_id(&r.task_id)?,
            user_id: parse_id(&r.user_id)?,
            minutes: u32::try_from(r.minutes).map_err(|e| corrupt("minutes", e))?,
            spent_on: parse_date(&r.spent_on)?,
            note: r.note,
            created_at: from_ts(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttachmentRow {
    id: String,
    task_id: String,
    uploaded_by: String,
    file_name: String,
    content_type: String,
    size: i64,
    sha256: String,
    blob_key: String,
    created_at: i64,
}

impl TryFrom<AttachmentRow> for Attachment {
    type Error = Error;
    fn try_from(r: AttachmentRow) -> Result<Self> {
        Ok(Attachment {
            id: parse_id(&r.id)?,
            task_id: parse_id(&r.task_id)?,
            uploaded_by: parse_id(&r.uploaded_by)?,
            file_name: r.file_name,
            content_type: r.content_type,
            size: u64::try_from(r.size).map_err(|e| corrupt("size", e))?,
            sha256: r.sha256,
            blob_key: r.blob_key,
            created_at: from_ts(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CheckInRow {
    id: String,
    task_id: String,
    user_id: String,
    lat: f64,
    lon: f64,
    accuracy_m: f64,
    note: String,
    created_at: i64,
}

impl TryFrom<CheckInRow> for CheckIn {
    type Error = Error;
    fn try_from(r: CheckInRow) -> Result<Self> {
        Ok(CheckIn {
            id: parse_id(&r.id)?,
            task_id: parse_id(&r.task_id)?,
            user_id: parse_id(&r.user_id)?,
            position: GeoPoint { lat: r.lat, lon: r.lon, accuracy_m: r.accuracy_m },
            note: r.note,
            created_at: from_ts(r.created_at)?,
        })
    }
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct EventRow {
    seq: i64,
    id: String,
    at: i64,
    org_id: Option<String>,
    project_id: Option<String>,
    task_id: Option<String>,
    actor_type: String,
    actor_id: Option<String>,
    kind: String,
    subject: String,
    payload: String,
    cause_event_id: Option<String>,
    cause_depth: Option<i64>,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<Self> {
        let cause = match (r.cause_event_id, r.cause_depth) {
            (Some(id), Some(depth)) => Some(crate::event::Cause {
                event_id: parse_id(&id)?,
                depth: u32::try_from(depth).map_err(|e| corrupt("cause_depth", e))?,
            }),
            _ => None,
        };
        Ok(Event {
            seq: r.seq,
            id: parse_id(&r.id)?,
            at: from_ts(r.at)?,
            org_id: parse_opt_id(r.org_id.as_deref())?,
            project_id: parse_opt_id(r.project_id.as_deref())?,
            task_id: parse_opt_id(r.task_id.as_deref())?,
            actor: crate::event::Actor::from_parts(
                &r.actor_type,
                parse_opt_id::<Uuid>(r.actor_id.as_deref())?,
            )
            .map_err(|e| corrupt("actor", e))?,
            kind: EventKind::parse(&r.kind).map_err(|e| corrupt("kind", e))?,
            subject: parse_id(&r.subject)?,
            payload: serde_json::from_str(&r.payload).map_err(|e| corrupt("payload", e))?,
            cause,
        })
    }
}

fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

// ---------------------------------------------------------------------------------------------
// Shared statements (run inside a writer transaction)

async fn append(conn: &mut SqliteConnection, origin: &Origin, draft: EventDraft) -> Result<Event> {
    let id = EventId::new();
    let at = now();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, at, org_id, project_id, task_id, actor_type, actor_id, kind, subject, payload, \
         cause_event_id, cause_depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(id_text(id))
    .bind(ts(at))
    .bind(opt_id_text(draft.org_id))
    .bind(opt_id_text(draft.project_id))
    .bind(opt_id_text(draft.task_id))
    .bind(origin.actor.kind())
    .bind(opt_id_text(origin.actor.id()))
    .bind(draft.kind.as_str())
    .bind(id_text(draft.subject))
    .bind(draft.payload.to_string())
    .bind(opt_id_text(origin.cause.map(|c| c.event_id)))
    .bind(origin.cause.map(|c| i64::from(c.depth)))
    .fetch_one(&mut *conn)
    .await
    .map_err(st)?;
    Ok(draft.into_event(seq, id, at, origin))
}

async fn load_task(conn: &mut SqliteConnection, id: TaskId) -> Result<Task> {
    let row: Option<TaskRow> = sqlx::query_as(concat!(task_select!(), " WHERE t.id = ?"))
        .bind(id_text(id))
        .fetch_optional(&mut *conn)
        .await
        .map_err(st)?;
    row.ok_or_else(|| Error::not_found("task"))?.try_into()
}

async fn refresh_search(conn: &mut SqliteConnection, task: TaskId) -> Result<()> {
    let id = id_text(task);
    sqlx::query("DELETE FROM task_search WHERE rowid = (SELECT rid FROM tasks WHERE id = ?)")
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map_err(st)?;
    index_search(conn, &id).await
}

/// Inserts a task's search row (a new task has none to delete first).
async fn index_search(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO task_search (rowid, body) SELECT t.rid, t.title || ' ' || t.description || ' ' || \
         COALESCE((SELECT group_concat(body, ' ') FROM comments WHERE task_id = t.id), '') FROM tasks t WHERE t.id = ?",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(st)?;
    Ok(())
}

async fn write_task_sets(
    conn: &mut SqliteConnection,
    task: &Task,
    before: Option<&Task>,
) -> Result<()> {
    let id = id_text(task.id);
    if before.is_none_or(|b| b.assignees != task.assignees) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_assignees WHERE task_id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        for u in &task.assignees {
            sqlx::query("INSERT INTO task_assignees (task_id, user_id) VALUES (?, ?)")
                .bind(&id)
                .bind(id_text(*u))
                .execute(&mut *conn)
                .await
                .map_err(|e| db_err(e, "task", "assignees", "assignees"))?;
        }
    }
    if before.is_none_or(|b| b.labels != task.labels) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_labels WHERE task_id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        for l in &task.labels {
            sqlx::query("INSERT INTO task_labels (task_id, label_id) VALUES (?, ?)")
                .bind(&id)
                .bind(id_text(*l))
                .execute(&mut *conn)
                .await
                .map_err(|e| db_err(e, "task", "labels", "labels"))?;
        }
    }
    if before.is_none_or(|b| b.custom_fields != task.custom_fields) {
        // A new task has no rows to replace.
        if before.is_some() {
            sqlx::query("DELETE FROM task_field_values WHERE task_id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await
                .map_err(st)?;
        }
        for (f, v) in &task.custom_fields {
            sqlx::query(
                "INSERT INTO task_field_values (task_id, field_id, value) VALUES (?, ?, ?)",
            )
            .bind(&id)
            .bind(id_text(*f))
            .bind(serde_json::to_string(v).map_err(Error::storage)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_err(e, "task", "custom_fields", "custom_fields"))?;
        }
    }
    Ok(())
}

/// Context of a task-scoped record: (org, project) of the task, or NotFound.
async fn task_scope(conn: &mut SqliteConnection, task: TaskId) -> Result<(OrgId, ProjectId)> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT org_id, project_id FROM tasks WHERE id = ?")
            .bind(id_text(task))
            .fetch_optional(&mut *conn)
            .await
            .map_err(st)?;
    let (o, p) = row.ok_or_else(|| Error::not_found("task"))?;
    Ok((parse_id(&o)?, parse_id(&p)?))
}

async fn project_org(conn: &mut SqliteConnection, project: ProjectId) -> Result<OrgId> {
    let row: Option<String> = sqlx::query_scalar("SELECT org_id FROM projects WHERE id = ?")
        .bind(id_text(project))
        .fetch_optional(&mut *conn)
        .await
        .map_err(st)?;
    parse_id(&row.ok_or_else(|| Error::not_found("project"))?)
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
impl DirectoryStore for SqliteStore {
    async fn create_org(
        &self,
        origin: &Origin,
        org: &Organization,
        owner: Option<UserId>,
    ) -> Result<Organization> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO orgs (id, slug, name, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(id_text(org.id))
            .bind(org.slug.as_str())
            .bind(org.name.as_str())
            .bind(org.version)
            .bind(ts(org.created_at))
            .bind(ts(org.updated_at))
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
            sqlx::query(
                "INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
            )
            .bind(id_text(m.org_id))
            .bind(id_text(m.user_id))
            .bind(m.role.as_str())
            .bind(ts(m.joined_at))
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
        let row: Option<OrgRow> = sqlx::query_as("SELECT * FROM orgs WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("organization"))?.try_into()
    }

    async fn list_orgs_for_user(&self, user: UserId) -> Result<Vec<Organization>> {
        let rows: Vec<OrgRow> = sqlx::query_as(
            "SELECT o.* FROM orgs o JOIN memberships m ON m.org_id = o.id WHERE m.user_id = ? ORDER BY o.created_at, o.id",
        )
        .bind(id_text(user))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn create_user(&self, origin: &Origin, user: &User) -> Result<User> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO users (id, email, display_name, created_at) VALUES (?, ?, ?, ?)")
            .bind(id_text(user.id))
            .bind(user.email.as_str())
            .bind(user.display_name.as_str())
            .bind(ts(user.created_at))
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
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("user"))?.try_into()
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as("SELECT * FROM users WHERE email = ?")
            .bind(email.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.map(User::try_from).transpose()
    }

    async fn put_member(&self, origin: &Origin, m: &Membership) -> Result<Membership> {
        let mut tx = self.begin().await?;
        let existing: Option<MemberRow> =
            sqlx::query_as("SELECT * FROM memberships WHERE org_id = ? AND user_id = ?")
                .bind(id_text(m.org_id))
                .bind(id_text(m.user_id))
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
                sqlx::query("UPDATE memberships SET role = ? WHERE org_id = ? AND user_id = ?")
                    .bind(cur.role.as_str())
                    .bind(id_text(m.org_id))
                    .bind(id_text(m.user_id))
                    .execute(&mut *tx)
                    .await
                    .map_err(st)?;
                cur
            }
            None => {
                sqlx::query("INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)")
                    .bind(id_text(m.org_id))
                    .bind(id_text(m.user_id))
                    .bind(m.role.as_str())
                    .bind(ts(m.joined_at))
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
        let row: Option<MemberRow> =
            sqlx::query_as("DELETE FROM memberships WHERE org_id = ? AND user_id = ? RETURNING *")
                .bind(id_text(org))
                .bind(id_text(user))
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
            sqlx::query_as("SELECT * FROM memberships WHERE org_id = ? AND user_id = ?")
                .bind(id_text(org))
                .bind(id_text(user))
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        row.map(Membership::try_from).transpose()
    }

    async fn list_members(&self, org: OrgId) -> Result<Vec<Membership>> {
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT * FROM memberships WHERE org_id = ? ORDER BY joined_at, user_id",
        )
        .bind(id_text(org))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

#[async_trait]
impl ProjectStore for SqliteStore {
    async fn create_project(
        &self,
        origin: &Origin,
        p: &Project,
        states: &[WorkflowState],
    ) -> Result<Project> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO projects (id, org_id, key, name, description, lead, archived, next_number, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
        )
        .bind(id_text(p.id))
        .bind(id_text(p.org_id))
        .bind(p.key.as_str())
        .bind(p.name.as_str())
        .bind(p.description.as_str())
        .bind(opt_id_text(p.lead))
        .bind(p.archived)
        .bind(p.version)
        .bind(ts(p.created_at))
        .bind(ts(p.updated_at))
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
        let row: Option<ProjectRow> = sqlx::query_as("SELECT * FROM projects WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("project"))?.try_into()
    }

    async fn list_projects(&self, org: OrgId, include_archived: bool) -> Result<Vec<Project>> {
        let rows: Vec<ProjectRow> = sqlx::query_as(
            "SELECT * FROM projects WHERE org_id = ? AND (? OR archived = 0) ORDER BY key",
        )
        .bind(id_text(org))
        .bind(include_archived)
        .fetch_all(&self.reader)
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
        let row: Option<ProjectRow> = sqlx::query_as("SELECT * FROM projects WHERE id = ?")
            .bind(id_text(id))
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
        sqlx::query("UPDATE projects SET name = ?, description = ?, lead = ?, archived = ?, version = ?, updated_at = ? WHERE id = ?")
            .bind(next.name.as_str())
            .bind(next.description.as_str())
            .bind(opt_id_text(next.lead))
            .bind(next.archived)
            .bind(next.version)
            .bind(ts(next.updated_at))
            .bind(id_text(id))
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
        let row: Option<StateRow> = sqlx::query_as("SELECT * FROM workflow_states WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("workflow state"))?.try_into()
    }

    async fn list_states(&self, project: ProjectId) -> Result<Vec<WorkflowState>> {
        let rows: Vec<StateRow> = sqlx::query_as(
            "SELECT * FROM workflow_states WHERE project_id = ? ORDER BY position, id",
        )
        .bind(id_text(project))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn get_project_with_states(
        &self,
        id: ProjectId,
    ) -> Result<(Project, Vec<WorkflowState>)> {
        // One statement, one JSON text: task creation reads this on every create, so it takes the
        // inline read path like `get_task`. `json(…)` around the subqueries because a value loses
        // its JSON subtype when it leaves a subquery (it would be embedded as a string).
        let mut sql = Sql::default();
        sql.push(
            "SELECT json_object('project', json((SELECT json_object('id', id, 'org_id', org_id, \
             'key', key, 'name', name, 'description', description, 'lead', lead, \
             'archived', json(CASE WHEN archived THEN 'true' ELSE 'false' END), \
             'version', version, 'created_at', created_at, 'updated_at', updated_at) \
             FROM projects WHERE id = ?1)), \
             'states', json((SELECT json_group_array(json_object('id', id, 'project_id', project_id, \
             'name', name, 'category', category, 'position', position, 'version', version) \
             ORDER BY position, id) FROM workflow_states WHERE project_id = ?1)))",
        );
        sql.args.push(Arg::Text(id_text(id)));
        #[derive(serde::Deserialize)]
        struct Both {
            project: Option<ProjectRow>,
            states: Vec<StateRow>,
        }
        let json = self.read_text(&sql).await?.ok_or_else(|| Error::not_found("project"))?;
        let both: Both = serde_json::from_str(&json).map_err(|e| corrupt("project", e))?;
        let project = both.project.ok_or_else(|| Error::not_found("project"))?;
        Ok((project.try_into()?, convert(both.states)?))
    }

    async fn create_label(&self, origin: &Origin, l: &Label) -> Result<Label> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO labels (id, org_id, name, color) VALUES (?, ?, ?, ?)")
            .bind(id_text(l.id))
            .bind(id_text(l.org_id))
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
        let rows: Vec<LabelRow> =
            sqlx::query_as("SELECT * FROM labels WHERE org_id = ? ORDER BY name, id")
                .bind(id_text(org))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn delete_label(&self, origin: &Origin, id: LabelId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<LabelRow> = sqlx::query_as("DELETE FROM labels WHERE id = ? RETURNING *")
            .bind(id_text(id))
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
        sqlx::query("INSERT INTO milestones (id, project_id, name, description, due_on, closed, version) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(id_text(m.id))
            .bind(id_text(m.project_id))
            .bind(m.name.as_str())
            .bind(m.description.as_str())
            .bind(m.due_on.map(date_text))
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
        let row: Option<MilestoneRow> = sqlx::query_as("SELECT * FROM milestones WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("milestone"))?.try_into()
    }

    async fn list_milestones(&self, project: ProjectId) -> Result<Vec<Milestone>> {
        let rows: Vec<MilestoneRow> = sqlx::query_as(
            "SELECT * FROM milestones WHERE project_id = ? ORDER BY due_on IS NULL, due_on, name",
        )
        .bind(id_text(project))
        .fetch_all(&self.reader)
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
        let row: Option<MilestoneRow> = sqlx::query_as("SELECT * FROM milestones WHERE id = ?")
            .bind(id_text(m.id))
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
        sqlx::query("UPDATE milestones SET name = ?, description = ?, due_on = ?, closed = ?, version = ? WHERE id = ?")
            .bind(next.name.as_str())
            .bind(next.description.as_str())
            .bind(next.due_on.map(date_text))
            .bind(next.closed)
            .bind(next.version)
            .bind(id_text(m.id))
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
            "INSERT INTO custom_fields (id, project_id, name, field_type) VALUES (?, ?, ?, ?)",
        )
        .bind(id_text(f.id))
        .bind(id_text(f.project_id))
        .bind(f.name.as_str())
        .bind(serde_json::to_string(&f.field_type).map_err(Error::storage)?)
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
        let rows: Vec<FieldRow> =
            sqlx::query_as("SELECT * FROM custom_fields WHERE project_id = ? ORDER BY name, id")
                .bind(id_text(project))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }
}

async fn insert_state(conn: &mut SqliteConnection, s: &WorkflowState) -> Result<()> {
    sqlx::query("INSERT INTO workflow_states (id, project_id, name, category, position, version) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(id_text(s.id))
        .bind(id_text(s.project_id))
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
impl TaskStore for SqliteStore {
    async fn create_task(
        &self,
        origin: &Origin,
        new: &NewTask,
        at: OffsetDateTime,
    ) -> Result<Task> {
        let input = CreateInput { origin: *origin, new: new.clone(), at };
        let (reply, done) = tokio::sync::oneshot::channel();
        if let Err(refused) = self.creates.send(QueuedCreate { input, reply }) {
            // The batcher is gone (its runtime shut down): write this one directly.
            let i = refused.0.input;
            return self.batcher().create_task_alone(&i.origin, &i.new, i.at).await;
        }
        done.await.unwrap_or_else(|_| {
            Err(Error::storage(std::io::Error::other("the batch writing this task was dropped")))
        })
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        let mut sql = Sql::default();
        sql.push(concat!(
            "SELECT ",
            task_json_object!(),
            " FROM tasks t JOIN projects p ON p.id = t.project_id WHERE t.id = "
        ))
        .bind(Arg::Text(id_text(id)));
        let json = self.read_text(&sql).await?.ok_or_else(|| Error::not_found("task"))?;
        let row: TaskJson = serde_json::from_str(&json).map_err(|e| corrupt("task", e))?;
        row.try_into()
    }

    async fn get_task_by_number(&self, project: ProjectId, number: i64) -> Result<Task> {
        let row: Option<TaskRow> =
            sqlx::query_as(concat!(task_select!(), " WHERE t.project_id = ? AND t.number = ?"))
                .bind(id_text(project))
                .bind(number)
                .fetch_optional(&self.reader)
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
        let current = load_task(&mut tx, id).await?;
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
            "UPDATE tasks SET title = ?, description = ?, state_id = ?, priority = ?, start_date = ?, due_date = ?, \
             estimate = ?, parent_id = ?, milestone_id = ?, rank = ?, archived = ?, version = ?, updated_at = ? WHERE id = ?",
        )
        .bind(next.title.as_str())
        .bind(next.description.as_str())
        .bind(id_text(next.state_id))
        .bind(next.priority.as_i16())
        .bind(next.start_date.map(date_text))
        .bind(next.due_date.map(date_text))
        .bind(next.estimate.map(i64::from))
        .bind(opt_id_text(next.parent_id))
        .bind(opt_id_text(next.milestone_id))
        .bind(&next.rank)
        .bind(next.archived)
        .bind(next.version)
        .bind(ts(next.updated_at))
        .bind(id_text(id))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(e, "task", "number", "task"))?;
        write_task_sets(&mut tx, &next, Some(&current)).await?;
        if next.rank != current.rank
            && let Some(c) = self.counters().get_mut(&next.project_id)
            && c.last_rank.as_deref().is_none_or(|last| next.rank.as_str() > last)
        {
            // Keep "a new task goes last" true after a move to the end (see `TaskCounter`).
            c.last_rank = Some(next.rank.clone());
        }
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
        let current = load_task(&mut tx, id).await?;
        if current.version != expected_version {
            return Err(Error::Conflict(Box::new(Current::Task(current))));
        }
        sqlx::query("DELETE FROM task_search WHERE rowid = (SELECT rid FROM tasks WHERE id = ?)")
            .bind(id_text(id))
            .execute(&mut *tx)
            .await
            .map_err(st)?;
        sqlx::query("DELETE FROM tasks WHERE id = ?")
            .bind(id_text(id))
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
        // The whole page comes back as one JSON row: sqlx hands every result row from its SQLite
        // thread to the async side with a wake-up, which cost more than the query itself for a
        // 25-row page (measured under load).
        let expr = match page.sort.key {
            TaskSortKey::Created => "t.created_at",
            TaskSortKey::Updated => "t.updated_at",
            TaskSortKey::Due => "COALESCE(t.due_date, '9999-12-31')",
            TaskSortKey::Priority => "t.priority",
            TaskSortKey::Rank => "t.rank",
            TaskSortKey::Number => "t.number",
        };
        debug_assert_eq!(NO_DUE_DATE, "9999-12-31");
        let (cmp, dir) = if page.sort.descending { ("<", "DESC") } else { (">", "ASC") };
        // The aggregate takes `json_object` directly (not through a subquery column), so SQLite
        // keeps each object as JSON instead of re-parsing its text (≈ 35 % of the query).
        let mut q = Sql::default();
        q.push(concat!("SELECT json_group_array(", task_json_object!()))
            .push(format_args!(
                " ORDER BY {expr} {dir}, t.id {dir}) FROM tasks t JOIN projects p ON p.id = t.project_id \
                 WHERE t.id IN (SELECT t.id FROM tasks t WHERE t.org_id = "
            ))
            .bind(Arg::Text(id_text(org)));
        if !filter.project_ids.is_empty() {
            q.in_list(
                " AND t.project_id",
                filter.project_ids.iter().map(|v| Arg::Text(id_text(*v))),
            );
        }
        if !filter.state_ids.is_empty() {
            // `+` keeps SQLite from driving the page off these low-selectivity columns: walking
            // the sort index and stopping after `limit` rows beats sorting thousands of matches.
            q.in_list(" AND +t.state_id", filter.state_ids.iter().map(|v| Arg::Text(id_text(*v))));
        }
        if !filter.state_categories.is_empty() {
            q.in_list(
                " AND +t.state_id IN (SELECT id FROM workflow_states WHERE category",
                filter.state_categories.iter().map(|v| Arg::Text(v.as_str().to_string())),
            );
            q.push(")");
        }
        if !filter.assignees.is_empty() {
            q.in_list(
                " AND EXISTS (SELECT 1 FROM task_assignees a WHERE a.task_id = t.id AND a.user_id",
                filter.assignees.iter().map(|v| Arg::Text(id_text(*v))),
            );
            q.push(")");
        }
        if !filter.reporters.is_empty() {
            q.in_list(" AND t.reporter", filter.reporters.iter().map(|v| Arg::Text(id_text(*v))));
        }
        if !filter.labels.is_empty() {
            q.in_list(
                " AND EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = t.id AND l.label_id",
                filter.labels.iter().map(|v| Arg::Text(id_text(*v))),
            );
            q.push(")");
        }
        if !filter.priorities.is_empty() {
            q.in_list(
                " AND +t.priority",
                filter.priorities.iter().map(|p| Arg::Int(i64::from(p.as_i16()))),
            );
        }
        if let Some(d) = filter.due_from {
            q.push(" AND t.due_date >= ").bind(Arg::Text(date_text(d)));
        }
        if let Some(d) = filter.due_to {
            q.push(" AND t.due_date <= ").bind(Arg::Text(date_text(d)));
        }
        match filter.parent {
            Some(Some(p)) => {
                q.push(" AND t.parent_id = ").bind(Arg::Text(id_text(p)));
            }
            Some(None) => {
                q.push(" AND t.parent_id IS NULL");
            }
            None => {}
        }
        if let Some(m) = filter.milestone_id {
            q.push(" AND t.milestone_id = ").bind(Arg::Text(id_text(m)));
        }
        if let Some(since) = filter.updated_since {
            q.push(" AND t.updated_at >= ").bind(Arg::Int(ts(since)));
        }
        if let Some(a) = filter.archived {
            q.push(" AND t.archived = ").bind(Arg::Int(i64::from(a)));
        }
        if filter.text.is_some() {
            let terms = filter.search_terms();
            if terms.is_empty() {
                q.push(" AND 0");
            } else {
                // Each term quoted (no FTS operators can be injected) and prefix-matched; FTS5
                // ANDs juxtaposed terms.
                let m = terms.iter().map(|t| format!("\"{t}\"*")).collect::<Vec<_>>().join(" ");
                q.push(" AND t.rid IN (SELECT rowid FROM task_search WHERE task_search MATCH ")
                    .bind(Arg::Text(m))
                    .push(")");
            }
        }
        if let Some(c) = &page.after {
            let v = sort_arg(&c.value);
            q.push(format_args!(" AND ({expr} {cmp} ")).bind(v.clone());
            q.push(format_args!(" OR ({expr} = ")).bind(v);
            q.push(format_args!(" AND t.id {cmp} ")).bind(Arg::Text(id_text(c.id))).push("))");
        }
        // Two phases: the inner query picks the page's ids using only indexed columns; the outer
        // one loads the page's rows with their sets. Loading sets for every candidate row before
        // sorting made filtered pages over large projects hundreds of times slower.
        // LIMIT is a literal, not a parameter: SQLite's planner peeks at a bound LIMIT and then
        // marks the statement expired whenever it is re-bound, so a bound LIMIT re-prepared this
        // large statement on every call (seen as `sqlite3Reprepare` in profiles). `limit` is a
        // validated u32 and only a handful of values occur, so the statement cache stays small.
        q.push(format_args!(" ORDER BY {expr} {dir}, t.id {dir} LIMIT {})", page.limit + 1));
        // `json_group_array` over no rows is `[]`, never NULL.
        let json = self.read_text(&q).await?.unwrap_or_else(|| "[]".into());
        let rows: Vec<TaskJson> =
            serde_json::from_str(&json).map_err(|e| corrupt("task page", e))?;
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
            let cycle: bool = sqlx::query_scalar(
                "WITH RECURSIVE reach(id) AS (SELECT ? UNION SELECT r.to_task FROM task_relations r JOIN reach ON r.from_task = reach.id \
                 WHERE r.kind = 'blocks') SELECT EXISTS (SELECT 1 FROM reach WHERE id = ?)",
            )
            .bind(id_text(r.to_task))
            .bind(id_text(r.from_task))
            .fetch_one(&mut *tx)
            .await
            .map_err(st)?;
            if cycle {
                return Err(Error::invalid("to_task", "would create a cycle of blocking tasks"));
            }
        }
        sqlx::query("INSERT INTO task_relations (from_task, to_task, kind, created_by, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(id_text(r.from_task))
            .bind(id_text(r.to_task))
            .bind(r.kind.as_str())
            .bind(opt_id_text(r.created_by))
            .bind(ts(r.created_at))
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
        let row: Option<RelationRow> = sqlx::query_as("DELETE FROM task_relations WHERE from_task = ? AND to_task = ? AND kind = ? RETURNING *")
            .bind(id_text(from))
            .bind(id_text(to))
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
        let rows: Vec<RelationRow> =
            sqlx::query_as("SELECT * FROM task_relations WHERE from_task = ?1 OR to_task = ?1 ORDER BY created_at, from_task, to_task, kind")
                .bind(id_text(task))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn add_watcher(&self, origin: &Origin, w: &Watcher) -> Result<Watcher> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, w.task_id).await?;
        let existing: Option<WatcherRow> =
            sqlx::query_as("SELECT * FROM watchers WHERE task_id = ? AND user_id = ?")
                .bind(id_text(w.task_id))
                .bind(id_text(w.user_id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(st)?;
        if let Some(row) = existing {
            return row.try_into();
        }
        sqlx::query("INSERT INTO watchers (task_id, user_id, since) VALUES (?, ?, ?)")
            .bind(id_text(w.task_id))
            .bind(id_text(w.user_id))
            .bind(ts(w.since))
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
            sqlx::query_as("DELETE FROM watchers WHERE task_id = ? AND user_id = ? RETURNING *")
                .bind(id_text(task))
                .bind(id_text(user))
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
            sqlx::query_as("SELECT * FROM watchers WHERE task_id = ? ORDER BY since, user_id")
                .bind(id_text(task))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }
}

fn sort_arg(v: &SortValue) -> Arg {
    match v {
        SortValue::Int(i) => Arg::Int(*i),
        SortValue::Text(s) => Arg::Text(s.clone()),
    }
}

#[async_trait]
impl CommentStore for SqliteStore {
    async fn create_comment(&self, origin: &Origin, c: &Comment) -> Result<Comment> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, c.task_id).await?;
        sqlx::query("INSERT INTO comments (id, task_id, author, body, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(id_text(c.id))
            .bind(id_text(c.task_id))
            .bind(id_text(c.author))
            .bind(c.body.as_str())
            .bind(c.version)
            .bind(ts(c.created_at))
            .bind(ts(c.updated_at))
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
        let row: Option<CommentRow> = sqlx::query_as("SELECT * FROM comments WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("comment"))?.try_into()
    }

    async fn list_comments(&self, task: TaskId) -> Result<Vec<Comment>> {
        let rows: Vec<CommentRow> =
            sqlx::query_as("SELECT * FROM comments WHERE task_id = ? ORDER BY created_at, id")
                .bind(id_text(task))
                .fetch_all(&self.reader)
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
        let row: Option<CommentRow> = sqlx::query_as("SELECT * FROM comments WHERE id = ?")
            .bind(id_text(id))
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
        sqlx::query("UPDATE comments SET body = ?, version = ?, updated_at = ? WHERE id = ?")
            .bind(next.body.as_str())
            .bind(next.version)
            .bind(ts(next.updated_at))
            .bind(id_text(id))
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
            sqlx::query_as("DELETE FROM comments WHERE id = ? RETURNING *")
                .bind(id_text(id))
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
impl WorkLogStore for SqliteStore {
    async fn create_time_entry(&self, origin: &Origin, e: &TimeEntry) -> Result<TimeEntry> {
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, e.task_id).await?;
        sqlx::query("INSERT INTO time_entries (id, task_id, user_id, minutes, spent_on, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(id_text(e.id))
            .bind(id_text(e.task_id))
            .bind(id_text(e.user_id))
            .bind(i64::from(e.minutes))
            .bind(date_text(e.spent_on))
            .bind(&e.note)
            .bind(ts(e.created_at))
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
            "SELECT * FROM time_entries WHERE task_id = ? ORDER BY spent_on, created_at, id",
        )
        .bind(id_text(task))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }

    async fn delete_time_entry(&self, origin: &Origin, id: TimeEntryId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<TimeEntryRow> =
            sqlx::query_as("DELETE FROM time_entries WHERE id = ? RETURNING *")
                .bind(id_text(id))
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
        let mut tx = self.begin().await?;
        let (org, project) = task_scope(&mut tx, a.task_id).await?;
        sqlx::query(
            "INSERT INTO attachments (id, task_id, uploaded_by, file_name, content_type, size, sha256, blob_key, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id_text(a.id))
        .bind(id_text(a.task_id))
        .bind(id_text(a.uploaded_by))
        .bind(&a.file_name)
        .bind(&a.content_type)
        .bind(i64::try_from(a.size).map_err(|_| Error::invalid("size", "is too large"))?)
        .bind(&a.sha256)
        .bind(&a.blob_key)
        .bind(ts(a.created_at))
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
        let row: Option<AttachmentRow> = sqlx::query_as("SELECT * FROM attachments WHERE id = ?")
            .bind(id_text(id))
            .fetch_optional(&self.reader)
            .await
            .map_err(st)?;
        row.ok_or_else(|| Error::not_found("attachment"))?.try_into()
    }

    async fn list_attachments(&self, task: TaskId) -> Result<Vec<Attachment>> {
        let rows: Vec<AttachmentRow> =
            sqlx::query_as("SELECT * FROM attachments WHERE task_id = ? ORDER BY created_at, id")
                .bind(id_text(task))
                .fetch_all(&self.reader)
                .await
                .map_err(st)?;
        convert(rows)
    }

    async fn delete_attachment(&self, origin: &Origin, id: AttachmentId) -> Result<()> {
        let mut tx = self.begin().await?;
        let row: Option<AttachmentRow> =
            sqlx::query_as("DELETE FROM attachments WHERE id = ? RETURNING *")
                .bind(id_text(id))
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
        sqlx::query("INSERT INTO check_ins (id, task_id, user_id, lat, lon, accuracy_m, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(id_text(c.id))
            .bind(id_text(c.task_id))
            .bind(id_text(c.user_id))
            .bind(c.position.lat)
            .bind(c.position.lon)
            .bind(c.position.accuracy_m)
            .bind(&c.note)
            .bind(ts(c.created_at))
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
            "SELECT * FROM check_ins WHERE task_id = ? ORDER BY created_at DESC, id DESC",
        )
        .bind(id_text(task))
        .fetch_all(&self.reader)
        .await
        .map_err(st)?;
        convert(rows)
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn read_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        // Every tailer (realtime hub, notifications, collab, integrations, workflows, …) calls
        // this after every commit, so it takes the inline read path: the batch as one JSON text.
        // A literal LIMIT (see `list_tasks`): tailers call this in a loop, and a bound LIMIT
        // would re-prepare the statement on every call. Safe: the only dynamic part is a number.
        let mut sql = Sql::default();
        sql.push(format_args!(
            "SELECT json_group_array(json_object('seq', seq, 'id', id, 'at', at, \
             'org_id', org_id, 'project_id', project_id, 'task_id', task_id, \
             'actor_type', actor_type, 'actor_id', actor_id, 'kind', kind, 'subject', subject, \
             'payload', payload, 'cause_event_id', cause_event_id, 'cause_depth', cause_depth) \
             ORDER BY seq) FROM (SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT {})",
            limit.clamp(1, 10_000)
        ));
        sql.args.push(Arg::Int(after));
        let json = self.read_text(&sql).await?.unwrap_or_else(|| "[]".into());
        let rows: Vec<EventRow> = serde_json::from_str(&json).map_err(|e| corrupt("events", e))?;
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
            ActivityScope::Project(p) => sqlx::query_as(
                "SELECT * FROM events WHERE project_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(id_text(p))
            .bind(before)
            .bind(limit)
            .fetch_all(&self.reader)
            .await,
            ActivityScope::Task(t) => {
                sqlx::query_as(
                    "SELECT * FROM events WHERE task_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                )
                .bind(id_text(t))
                .bind(before)
                .bind(limit)
                .fetch_all(&self.reader)
                .await
            }
        }
        .map_err(st)?;
        convert(rows)
    }

    async fn latest_seq(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&self.reader)
            .await
            .map_err(st)
    }

    async fn load_cursor(&self, consumer: &str) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM event_cursors WHERE consumer = ?")
                .bind(consumer)
                .fetch_optional(&self.reader)
                .await
                .map_err(st)?;
        Ok(seq.unwrap_or(0))
    }

    async fn save_cursor(&self, consumer: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO event_cursors (consumer, seq, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (consumer) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
        )
        .bind(consumer)
        .bind(seq)
        .bind(ts(now()))
        .execute(&self.writer)
        .await
        .map_err(st)?;
        Ok(())
    }

    fn wakeup(&self) -> &Wakeup {
        &self.wakeup
    }
}

#[async_trait]
impl StoreAdmin for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        let mut m = sqlx::migrate!("./migrations/sqlite");
        m.dangerous_set_table_name("_pm_core_migrations");
        m.run(&self.writer).await.map_err(Error::storage)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(st)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

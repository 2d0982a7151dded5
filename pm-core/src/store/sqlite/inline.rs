//! Hot reads of the SQLite store run on the calling thread, within a time budget.
//!
//! sqlx runs every SQLite connection on its own thread: a query is a hand-off to that thread and
//! a wake-up back per result (and per completion). For the hottest reads — one task, one list
//! page — those hops cost more than SQLite's work: under load, about a third of the server's CPU
//! went to the kernel switching threads (`perf`, see BENCHMARKS.md). This module keeps a few
//! read-only rusqlite connections on the same file and runs such a read directly on the caller's
//! thread (a Tokio worker).
//!
//! Blocking a Tokio worker is only acceptable for a bounded time, so every inline read carries a
//! budget ([`INLINE_BUDGET`]): SQLite's progress handler interrupts a statement that runs past
//! it, and the caller then runs the same read on the sqlx path (off the runtime's threads). The
//! same happens when every inline connection is busy or anything fails inline, so this is purely
//! an optimization: the answer is the sqlx path's answer, and its errors are the sqlx path's errors.
//! Both paths read the latest committed state (WAL snapshots), so read-your-writes holds either way.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, ToSql};

/// How long an inline read may hold the calling thread before it is interrupted and re-run on the
/// sqlx path. A page of 25 tasks over 100 000 is ~1.5 ms of SQLite work (BENCHMARKS.md); a full-
/// text search or a pathological filter is not, and is exactly what the budget hands back.
pub(super) const INLINE_BUDGET: Duration = Duration::from_millis(3);

/// Virtual-machine instructions between two looks at the clock (a look is ~20 ns; 1 000
/// instructions are a few microseconds).
const PROGRESS_EVERY: i32 = 1_000;

/// A bound parameter of a statement built at run time, for both paths.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Arg::Text(s) => s.to_sql(),
            Arg::Int(i) => i.to_sql(),
        }
    }
}

/// A statement text with its parameters in order (`?` placeholders).
#[derive(Debug, Default)]
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) args: Vec<Arg>,
}

impl Sql {
    pub(super) fn push(&mut self, s: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.text, "{s}");
        self
    }

    pub(super) fn bind(&mut self, a: Arg) -> &mut Self {
        self.text.push('?');
        self.args.push(a);
        self
    }

    /// `prefix IN (?, ?, …)`.
    pub(super) fn in_list(&mut self, prefix: &str, values: impl IntoIterator<Item = Arg>) {
        self.push(prefix).push(" IN (");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
    }

    /// Runs the statement on the sqlx path: at most one row of one text (or NULL) column.
    pub(super) async fn fetch_text(
        &self,
        pool: &sqlx::SqlitePool,
    ) -> Result<Option<String>, sqlx::Error> {
        let mut q =
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(self.text.as_str()));
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        Ok(q.fetch_optional(pool).await?.flatten())
    }
}

/// A few read-only connections used on the caller's thread (see the module docs).
#[derive(Debug)]
pub(super) struct InlineReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Connections in existence (idle or in use); at most `max`.
    open: AtomicUsize,
    max: usize,
    budget: Duration,
    fallbacks: AtomicU64,
}

impl InlineReader {
    pub(super) fn new(path: &Path, max: usize, budget: Duration) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            max,
            budget,
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Reads that could not be answered inline and went to the sqlx path.
    pub(super) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Runs `sql`, which yields at most one row of one text (or NULL) column, inline. `None`
    /// means "not answered here": the caller runs the same statement on the sqlx path.
    pub(super) fn text(&self, sql: &Sql) -> Option<Option<String>> {
        let conn = self.take()?;
        let deadline = Instant::now() + self.budget;
        // Per statement: the handler captures this statement's deadline.
        let outcome = conn
            .progress_handler(PROGRESS_EVERY, Some(move || Instant::now() > deadline))
            .and_then(|()| {
                let mut stmt = conn.prepare_cached(&sql.text)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(sql.args.iter()))?;
                match rows.next()? {
                    Some(row) => row.get::<_, Option<String>>(0),
                    None => Ok(None),
                }
            });
        match outcome {
            Ok(v) => {
                self.give_back(conn);
                Some(v)
            }
            Err(e) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                let interrupted = matches!(
                    &e,
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::OperationInterrupted
                );
                if interrupted {
                    self.give_back(conn);
                } else {
                    // Something else went wrong (a busy or broken file): drop this connection;
                    // a fresh one is opened on demand.
                    tracing::debug!(error = %e, "inline read failed; using the sqlx path");
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    fn take(&self) -> Option<Connection> {
        if let Some(c) = self.idle().pop() {
            return Some(c);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.connect() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "opening an inline reader failed; using the sqlx path");
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A reader that would wait for a lock hands the read to the sqlx path instead.
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        // Leave no handler behind that captures a stale deadline.
        let _ = conn.progress_handler(0, None::<fn() -> bool>);
        self.idle().push(conn);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A plain list, never left half-updated: a poisoned lock is safe to reuse.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT); INSERT INTO t VALUES ('a'), ('b');",
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn answers_inline_and_reuses_its_connection() {
        let (_dir, path) = db();
        let r = InlineReader::new(&path, 2, Duration::from_secs(1));
        let mut sql = Sql::default();
        sql.push("SELECT group_concat(k) FROM t WHERE k ")
            .in_list("", [Arg::Text("a".into()), Arg::Text("b".into())]);
        assert_eq!(r.text(&sql), Some(Some("a,b".into())));
        assert_eq!(r.text(&sql), Some(Some("a,b".into())));
        assert_eq!(r.open.load(Ordering::Relaxed), 1);
        assert_eq!(r.fallbacks(), 0);
        let mut none = Sql::default();
        none.push("SELECT k FROM t WHERE k = ").bind(Arg::Text("zz".into()));
        assert_eq!(r.text(&none), Some(None));
    }

    #[test]
    fn a_read_past_its_budget_is_interrupted_and_handed_back() {
        let (_dir, path) = db();
        let r = InlineReader::new(&path, 1, Duration::from_millis(5));
        let mut slow = Sql::default();
        // Hundreds of milliseconds of work at least.
        slow.push(
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100000000) \
             SELECT CAST(count(*) AS TEXT) FROM c",
        );
        let started = Instant::now();
        assert_eq!(r.text(&slow), None);
        assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
        assert_eq!(r.fallbacks(), 1);
        // The connection survived and answers the next read.
        let mut quick = Sql::default();
        quick.push("SELECT k FROM t WHERE k = ").bind(Arg::Text("a".into()));
        assert_eq!(r.text(&quick), Some(Some("a".into())));
        assert_eq!(r.open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn with_every_connection_in_use_the_read_is_handed_back() {
        let (_dir, path) = db();
        let r = InlineReader::new(&path, 1, Duration::from_secs(1));
        let held = r.take().unwrap();
        let mut sql = Sql::default();
        sql.push("SELECT k FROM t LIMIT 1");
        assert_eq!(r.text(&sql), None);
        r.give_back(held);
        assert_eq!(r.text(&sql), Some(Some("a".into())));
    }

    #[test]
    fn a_missing_file_is_handed_back_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let r = InlineReader::new(&dir.path().join("absent.db"), 1, Duration::from_secs(1));
        let mut sql = Sql::default();
        sql.push("SELECT 'x'");
        assert_eq!(r.text(&sql), None);
        assert!(!dir.path().join("absent.db").exists());
        assert_eq!(r.open.load(Ordering::Relaxed), 0);
    }
}

//! The store conformance suite and store-level properties, per backend.

use pm_core::query::{TaskSort, TaskSortKey};
use pm_core::store::Stores;
use pm_core::testing;
use proptest::prelude::*;

/// A migrated SQLite store in a temp file (kept alive by the returned guard).
pub async fn sqlite() -> (Stores, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    (stores, dir)
}

/// Says a test was skipped. Written to stderr directly (not `eprintln!`) so the test harness's
/// output capture doesn't swallow it.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} on PostgreSQL: {why}");
}

/// A migrated PostgreSQL store in a fresh database, or `None` (with a note) when
/// `PM_TEST_POSTGRES_URL` is unset.
#[cfg(feature = "postgres")]
pub async fn postgres(test: &str) -> Option<Stores> {
    use sqlx::Connection;
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        skip(test, "PM_TEST_POSTGRES_URL is not set");
        return None;
    };
    let mut conn =
        sqlx::PgConnection::connect(&base).await.expect("connect to PM_TEST_POSTGRES_URL");
    let (prefix, current) = base.rsplit_once('/').expect("database URL has a path");
    let current = current.split('?').next().unwrap_or(current);
    let name = format!("{current}_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let stores = pm_core::store::open(&format!("{prefix}/{name}")).await.unwrap();
    stores.admin.migrate().await.unwrap();
    Some(stores)
}

#[cfg(not(feature = "postgres"))]
pub async fn postgres(test: &str) -> Option<Stores> {
    skip(test, "pm-core was built without the `postgres` feature");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let (stores, _dir) = sqlite().await;
    testing::run_all(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    if let Some(stores) = postgres("conformance_postgres").await {
        testing::run_all(&stores).await;
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_in_memory_works() {
    let stores = pm_core::store::open("sqlite::memory:").await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap();
    testing::directory(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailer_misses_nothing_sqlite() {
    let (stores, _dir) = sqlite().await;
    testing::tailer_misses_nothing(&stores, 4, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tailer_misses_nothing_under_concurrent_writers_postgres() {
    if let Some(stores) = postgres("tailer_misses_nothing_under_concurrent_writers_postgres").await
    {
        testing::tailer_misses_nothing(&stores, 8, 40).await;
    }
}

fn sort_strategy() -> impl Strategy<Value = TaskSort> {
    let key = prop_oneof![
        Just(TaskSortKey::Created),
        Just(TaskSortKey::Updated),
        Just(TaskSortKey::Due),
        Just(TaskSortKey::Priority),
        Just(TaskSortKey::Rank),
        Just(TaskSortKey::Number),
    ];
    (key, any::<bool>()).prop_map(|(key, descending)| TaskSort { key, descending })
}

fn paging_cases(backend: &'static str) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stores = rt.block_on(async {
        match backend {
            "sqlite" => {
                let (s, dir) = sqlite().await;
                // Leak the temp dir for the duration of the property run.
                std::mem::forget(dir);
                Some(s)
            }
            _ => postgres("paging_under_concurrent_inserts_postgres").await,
        }
    });
    let Some(stores) = stores else { return };
    let config =
        ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(existing in 5usize..40, inserted in 0usize..30, limit in 1u32..8, sort in sort_strategy())| {
        rt.block_on(testing::paging_under_concurrent_inserts(&stores, existing, inserted, limit, sort));
    });
}

#[test]
fn paging_under_concurrent_inserts_sqlite() {
    paging_cases("sqlite");
}

#[test]
fn paging_under_concurrent_inserts_postgres() {
    paging_cases("postgres");
}

/// SQLite's `create_task` numbers tasks from a per-project counter cached in the store. Two
/// stores writing one database file (a server and a CLI, say) must still never hand out a number
/// twice: the stale cache is caught by the unique index and the create retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_task_numbers_stay_unique_across_two_stores_on_one_file() {
    let (a, dir) = sqlite().await;
    let b = pm_core::store::open(&format!("sqlite://{}", dir.path().join("pm.db").display()))
        .await
        .unwrap();
    let f = testing::fixture(&a).await;
    let at = pm_core::model::now();
    let mut numbers = Vec::new();
    for (i, store) in [&a, &b, &a, &a, &b, &a].into_iter().enumerate() {
        let t = store
            .tasks
            .create_task(&f.origin(), &f.new_task(&format!("task {i}")), at)
            .await
            .unwrap_or_else(|e| panic!("create {i}: {e}"));
        numbers.push(t.number);
    }
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
    // And each new task still sorts last by rank, whichever store created it.
    let page = a
        .tasks
        .list_tasks(
            f.org.id,
            &pm_core::query::TaskFilter::default(),
            &pm_core::query::PageRequest {
                sort: TaskSort { key: TaskSortKey::Rank, descending: false },
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    let by_rank: Vec<i64> = page.items.iter().map(|t| t.number).collect();
    assert_eq!(by_rank, vec![1, 2, 3, 4, 5, 6]);
}

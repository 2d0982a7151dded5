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

/// The SQLite writer never checkpoints inside a commit (that stalled every queued write); a
/// background checkpointer copies the WAL back instead. Without it the WAL would grow with every
/// write; with it the WAL restarts from its beginning and its file stays the size of a few
/// rounds of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let (stores, dir) = sqlite().await;
    let wal = dir.path().join("pm.db-wal");
    let f = testing::fixture(&stores).await;
    let mut sizes = Vec::new();
    for round in 0..12 {
        for i in 0..25 {
            let new = f.new_task(&format!("round {round} task {i} {}", "x".repeat(400)));
            stores.tasks.create_task(&f.origin(), &new, pm_core::model::now()).await.unwrap();
        }
        // Longer than the checkpointer's coalescing delay.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        sizes.push(std::fs::metadata(&wal).unwrap().len());
    }
    let (early, last) = (sizes[2], sizes[11]);
    assert!(last <= early * 2, "the WAL kept growing ({sizes:?}): nothing checkpoints it");
}

/// Concurrent creates on SQLite are written in batches (group commit). Every task of a burst
/// keeps its sets and gets its own number; a bad create in the burst fails alone with the field
/// at fault, and only it takes the slow one-at-a-time path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batched_creates_keep_sets_and_numbers() {
    use pm_core::id::{FieldId, LabelId};
    use pm_core::model::*;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let store = pm_core::store::sqlite::SqliteStore::connect(&url).await.unwrap();
    let stores = Stores::from_adapter(Arc::new(store.clone()));
    stores.admin.migrate().await.unwrap();
    // The conformance case with every set filled in, through the batch path.
    testing::task_crud_and_versions(&stores).await;
    assert_eq!(store.creates_retried_alone(), 0, "the conformance creates fell back");

    let f = testing::fixture(&stores).await;
    let label = Label {
        id: LabelId::new(),
        org_id: f.org.id,
        name: LabelName::parse("burst").unwrap(),
        color: Color::parse("#112233").unwrap(),
    };
    stores.projects.create_label(&f.origin(), &label).await.unwrap();
    let field = CustomField {
        id: FieldId::new(),
        project_id: f.project.id,
        name: Name::parse("Size").unwrap(),
        field_type: FieldType::Text,
    };
    stores.projects.create_field(&f.origin(), &field).await.unwrap();
    let missing_label = LabelId::new();
    let creates = (0..60).map(|i| {
        let stores = stores.clone();
        let mut new = f.new_task(&format!("burst {i}"));
        new.assignees = [f.user.id].into();
        // One create in the burst refers to a label that does not exist.
        new.labels = if i == 30 { [missing_label].into() } else { [label.id].into() };
        new.custom_fields.insert(field.id, FieldValue::Text(format!("\"quoted\" {i}")));
        let origin = f.origin();
        tokio::spawn(async move { stores.tasks.create_task(&origin, &new, now()).await })
    });
    let mut numbers = Vec::new();
    for (i, handle) in creates.collect::<Vec<_>>().into_iter().enumerate() {
        let created = handle.await.unwrap();
        if i == 30 {
            // It fails alone, naming the field, and costs the others nothing.
            match created {
                Err(pm_core::Error::Invalid { field, .. }) => assert_eq!(field, "labels"),
                other => panic!("expected an invalid label, got {other:?}"),
            }
            continue;
        }
        let created = created.unwrap();
        let stored = stores.tasks.get_task(created.id).await.unwrap();
        assert_eq!(stored, created);
        assert_eq!(stored.labels, [label.id].into());
        assert_eq!(stored.assignees, [f.user.id].into());
        let i: usize = stored.title.as_str()["burst ".len()..].parse().unwrap();
        assert_eq!(stored.custom_fields[&field.id], FieldValue::Text(format!("\"quoted\" {i}")));
        numbers.push(stored.number);
    }
    numbers.sort();
    assert_eq!(numbers, (1..=59).collect::<Vec<i64>>());
    assert_eq!(store.creates_retried_alone(), 1, "only the bad create is written alone");
    // Each create appended its event.
    let events = stores.events.read_after(0, 10_000).await.unwrap();
    let created = events
        .iter()
        .filter(|e| e.kind == pm_core::event::EventKind::TaskCreated)
        .filter(|e| e.project_id == Some(f.project.id))
        .count();
    assert_eq!(created, 59);
}

/// Two stores on one SQLite file behave like two server processes sharing it (each has its own
/// writer connection). Read-then-write transactions must take the write lock up front: a deferred
/// transaction that read before another connection committed cannot upgrade and fails at once
/// with `SQLITE_BUSY` (the busy timeout does not apply), which reached clients as a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_sqlite_file_write_concurrently_without_busy_errors() {
    use pm_core::id::UserId;
    use pm_core::model::{Email, MemberRole, Membership, Name, User};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let a = pm_core::store::open(&url).await.unwrap();
    a.admin.migrate().await.unwrap();
    let b = pm_core::store::open(&url).await.unwrap();
    let f = testing::fixture(&a).await;
    let mut users = Vec::new();
    for i in 0..120 {
        let u = User {
            id: UserId::new(),
            email: Email::parse(&format!("busy{i}@example.com")).unwrap(),
            display_name: Name::parse("Member").unwrap(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        a.directory.create_user(&f.origin(), &u).await.unwrap();
        users.push(u.id);
    }
    let mut writes = tokio::task::JoinSet::new();
    for (i, user) in users.iter().copied().enumerate() {
        let stores = if i % 2 == 0 { a.clone() } else { b.clone() };
        let origin = f.origin();
        let org = f.org.id;
        writes.spawn(async move {
            let m = Membership {
                org_id: org,
                user_id: user,
                role: MemberRole::Member,
                joined_at: time::OffsetDateTime::now_utc(),
            };
            stores.directory.put_member(&origin, &m).await
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = writes.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 120 writes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(b.directory.list_members(f.org.id).await.unwrap().len(), 121);
}

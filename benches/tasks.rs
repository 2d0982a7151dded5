//! Task store benchmarks on SQLite seeded with 100 000 tasks.
//!
//! Run: `cargo bench --bench tasks`. The seeded database is built once (through the store, so
//! FTS rows and events are real) and cached at `target/bench-data/pm-100k.db`; delete it to
//! reseed. Set `PM_BENCH_TASKS` to change the size (a different size uses a different file).
//!
//! Measures: create one task, get a task by id, list a filtered page of 25 (project + state
//! category + priority, sorted by due date), and full-text search (two terms, first page).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pm_core::event::Origin;
use pm_core::id::*;
use pm_core::model::*;
use pm_core::query::{PageRequest, TaskFilter, TaskSort, TaskSortKey};
use pm_core::store::Stores;
use pm_core::testing::{Fixture, fixture};

const WORDS: &[&str] = &[
    "login",
    "crash",
    "export",
    "invoice",
    "sync",
    "mobile",
    "latency",
    "timeout",
    "dashboard",
    "report",
    "billing",
    "search",
    "upload",
    "avatar",
    "webhook",
    "calendar",
    "reminder",
    "archive",
    "permission",
    "theme",
    "offline",
    "cache",
    "migration",
    "session",
    "payment",
    "import",
    "filter",
    "keyboard",
    "shortcut",
    "tooltip",
];

/// Deterministic xorshift so every seeded database is identical.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn sentence(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| *rng.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

struct Seeded {
    stores: Stores,
    fixture: Fixture,
    sample_ids: Vec<TaskId>,
}

async fn seed(size: usize) -> Seeded {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("pm-{}k.db", size / 1000));
    let marker = path.with_extension("fixture.json");
    let fresh = !marker.exists();
    if fresh {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
    }
    let stores = pm_core::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let fixture = if fresh {
        let f = fixture(&stores).await;
        eprintln!("seeding {size} tasks into {} (once)…", path.display());
        let started = std::time::Instant::now();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let prios =
            [Priority::None, Priority::Low, Priority::Medium, Priority::High, Priority::Urgent];
        let base = time::macros::date!(2030 - 01 - 01);
        // A few writers at once: the store serializes them; this just keeps the writer busy.
        let chunks = 4;
        let mut handles = Vec::new();
        for c in 0..chunks {
            let stores = stores.clone();
            let f = f.clone();
            let mut rng = Rng(rng.next() | 1);
            handles.push(tokio::spawn(async move {
                for _ in 0..size / chunks {
                    let mut n = f.new_task(&sentence(&mut rng, 4));
                    n.description = Markdown::parse(&sentence(&mut rng, 20)).unwrap();
                    n.state_id = rng.pick(&f.states).id;
                    n.priority = *rng.pick(&prios);
                    if !rng.next().is_multiple_of(3) {
                        n.due_date = Some(base + time::Duration::days((rng.next() % 365) as i64));
                    }
                    stores.tasks.create_task(&f.origin(), &n, now()).await.unwrap();
                }
                c
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        eprintln!("seeded in {:.1?}", started.elapsed());
        let json = serde_json::json!({ "user": f.user, "org": f.org, "project": f.project, "states": f.states });
        std::fs::write(&marker, json.to_string()).unwrap();
        f
    } else {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&marker).unwrap()).unwrap();
        Fixture {
            user: serde_json::from_value(v["user"].clone()).unwrap(),
            org: serde_json::from_value(v["org"].clone()).unwrap(),
            project: serde_json::from_value(v["project"].clone()).unwrap(),
            states: serde_json::from_value(v["states"].clone()).unwrap(),
        }
    };
    let page = stores
        .tasks
        .list_tasks(
            fixture.org.id,
            &TaskFilter::default(),
            &PageRequest { limit: 100, ..Default::default() },
        )
        .await
        .unwrap();
    Seeded { stores, fixture, sample_ids: page.items.iter().map(|t| t.id).collect() }
}

fn benches(c: &mut Criterion) {
    let size: usize =
        std::env::var("PM_BENCH_TASKS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let s = Arc::new(rt.block_on(seed(size)));
    let origin: Origin = s.fixture.origin();

    let mut g = c.benchmark_group(format!("sqlite_{}k", size / 1000));
    g.bench_function("create_task", |b| {
        let s = s.clone();
        let mut i = 0u64;
        b.to_async(&rt).iter(|| {
            i += 1;
            let s = s.clone();
            async move {
                let n = s.fixture.new_task(&format!("bench task {i}"));
                s.stores.tasks.create_task(&origin, &n, now()).await.unwrap()
            }
        })
    });
    g.bench_function("get_task_by_id", |b| {
        let s = s.clone();
        let mut i = 0usize;
        b.to_async(&rt).iter(|| {
            i += 1;
            let s = s.clone();
            async move {
                s.stores
                    .tasks
                    .get_task(s.sample_ids[i % s.sample_ids.len()])
                    .await
                    .unwrap()
            }
        })
    });
    g.bench_function("list_filtered_page_25", |b| {
        let s = s.clone();
        let filter = TaskFilter {
            project_ids: vec![s.fixture.project.id],
            state_categories: vec![StateCategory::Unstarted, StateCategory::Started],
            priorities: vec![Priority::High, Priority::Urgent],
            archived: Some(false),
            ..Default::default()
        };
        let req = PageRequest {
            sort: TaskSort { key: TaskSortKey::Due, descending: false },
            limit: 25,
            after: None,
        };
        b.to_async(&rt).iter(|| {
            let s = s.clone();
            let (filter, req) = (filter.clone(), req.clone());
            async move {
                let page =
                    s.stores.tasks.list_tasks(s.fixture.org.id, &filter, &req).await.unwrap();
                assert_eq!(page.items.len(), 25);
                page
            }
        })
    });
    g.bench_function("full_text_search_page_25", |b| {
        let s = s.clone();
        let filter = TaskFilter { text: Some("webhook timeout".into()), ..Default::default() };
        let req = PageRequest::default();
        b.to_async(&rt).iter(|| {
            let s = s.clone();
            let (filter, req) = (filter.clone(), req.clone());
            async move {
                let page =
                    s.stores.tasks.list_tasks(s.fixture.org.id, &filter, &req).await.unwrap();
                assert!(!page.items.is_empty());
                page
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = tasks;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5));
    targets = benches
}
criterion_main!(tasks);

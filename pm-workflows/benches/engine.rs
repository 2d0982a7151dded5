//! pm-workflows criterion benches (issue 7 targets in parentheses):
//!
//! - `condition/eval` — one compiled CEL condition against a prebuilt scope (p50 ≤ 1 µs);
//!   `condition/scope` — building the scope of one event (task + event JSON), paid once per event;
//! - `dispatch/1000_workflows` — one `task.updated` event offered to 1,000 enabled workflows of its
//!   organization, none of which matches (the common case; ≥ 100,000 events/s per core);
//! - `executions/sqlite` — durable executions on SQLite: start, run one action (a sandboxed
//!   script), record the step, finish (≥ 1,000/s; n8n's anchor is 220/s on 2 vCPU);
//! - `schedules/next_fire_100k` — next fire time of 100,000 cron schedules one by one, and
//!   `schedules/next_fire_100k_batch` through `schedule::next_fires` (≤ 100 ms).
//!
//! Run: `cargo bench -p pm-workflows --bench engine` (numbers in BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::blob::FsBlobStore;
use pm_core::event::{Actor, Event, EventKind};
use pm_core::id::{EventId, OrgId, StateId, WorkflowId};
use pm_workflows::condition::{self, Scope};
use pm_workflows::definition::Definition;
use pm_workflows::engine::{Engine, EngineConfig, StartRequest};
use pm_workflows::ports::Ports;
use serde_json::json;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn conditions(c: &mut Criterion) {
    let task = json!({"title": "Fix login", "priority": "high", "estimate": 5, "assignees": ["a", "b"],
        "state_id": "0190f5d4-0000-7000-8000-000000000001", "labels": [], "custom_fields": {}});
    let event = json!({"kind": "task.updated", "actor": {"type": "user", "id": "u"}, "changes": {"priority": {"from": "low", "to": "high"}}});
    let program = condition::compile("task.priority == 'high' && task.estimate > 3").unwrap();
    let scope = Scope::from_pairs([("task", &task), ("event", &event)]);
    assert_eq!(scope.holds(&program), Ok(true));
    c.bench_function("condition/eval", |b| b.iter(|| scope.holds(&program)));
    c.bench_function("condition/scope", |b| {
        b.iter(|| Scope::from_pairs([("task", &task), ("event", &event)]))
    });
}

struct World {
    engine: Engine,
    pm: Pm,
    org: OrgId,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let core = pm_core::store::open(&url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let stores = pm_workflows::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let pm = Pm::new(core, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.path().join("b"))));
    let engine = Engine::new(pm.clone(), stores, Ports::default(), EngineConfig::default());
    World { engine, pm, org: OrgId::new(), _dir: dir }
}

fn def(v: serde_json::Value) -> Definition {
    Definition::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn dispatch(c: &mut Criterion) {
    let rt = rt();
    let w = rt.block_on(world());
    rt.block_on(async {
        for i in 0..1000 {
            let d = def(json!({
                "schema_version": 1, "name": format!("wf {i}"),
                "trigger": {"type": "state_changed", "to": StateId::new()},
                "conditions": ["task.priority == 'urgent'"],
                "steps": [{"type": "action", "action": {"type": "comment", "body": "x"}}]
            }));
            w.engine.create_workflow(w.org, None, d, Actor::System).await.unwrap();
        }
    });
    let event = Event {
        seq: 1,
        id: EventId::new(),
        at: pm_core::model::now() + time::Duration::hours(1),
        org_id: Some(w.org),
        project_id: None,
        task_id: None,
        actor: Actor::User(pm_core::id::UserId::new()),
        kind: EventKind::TaskUpdated,
        subject: uuid::Uuid::now_v7(),
        payload: json!({"task": {"priority": "low"}, "changes": {"state_id": {"from": "a", "to": "b"}}}),
        cause: None,
    };
    c.bench_function("dispatch/1000_workflows", |b| {
        b.iter(|| rt.block_on(w.engine.dispatch(&event)).unwrap())
    });
    drop(w.pm);
}

fn executions(c: &mut Criterion) {
    let rt = rt();
    let w = rt.block_on(world());
    let wf = rt.block_on(async {
        let d = def(json!({
            "schema_version": 1, "name": "one action",
            "trigger": {"type": "manual"},
            "steps": [{"type": "action", "id": "calc", "action": {"type": "script", "source": "40 + 2"}}]
        }));
        w.engine.create_workflow(w.org, None, d, Actor::System).await.unwrap()
    });
    let mut n = 0u64;
    let mut g = c.benchmark_group("executions");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    // Throughput of a batch of 200 concurrent executions; criterion reports time per batch.
    g.throughput(criterion::Throughput::Elements(200));
    g.bench_function("sqlite", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    for _ in 0..200 {
                        n += 1;
                        let req = StartRequest {
                            key: format!("bench:{n}"),
                            actor: Actor::System,
                            task_id: None,
                            input: json!({}),
                        };
                        w.engine.start(wf.id, req).await.unwrap();
                    }
                    w.engine.wait_idle().await;
                }
                started.elapsed()
            })
        })
    });
    g.finish();
    let _ = WorkflowId::new();
}

fn schedules(c: &mut Criterion) {
    let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"];
    let patterns = ["0 9 * * MON-FRI", "*/5 * * * *", "30 2 1 * *", "0 0 * * SUN"];
    let schedules: Vec<_> = (0..100_000)
        .map(|i| {
            pm_workflows::schedule::CronSchedule::parse(patterns[i % 4], zones[(i / 4) % 4])
                .unwrap()
        })
        .collect();
    let now = pm_core::model::now();
    let mut g = c.benchmark_group("schedules");
    g.sample_size(10);
    g.bench_function("next_fire_100k", |b| {
        b.iter(|| schedules.iter().filter_map(|s| s.next_after(now)).count())
    });
    // The same set through `next_fires` (what `Engine::reload` uses): 16 distinct
    // (pattern, zone) pairs computed once each.
    g.bench_function("next_fire_100k_batch", |b| {
        b.iter(|| pm_workflows::schedule::next_fires(&schedules, now).into_iter().flatten().count())
    });
    g.finish();
}

criterion_group!(benches, conditions, dispatch, executions, schedules);
criterion_main!(benches);

//! Two engines on one database: executions and timers are leased, so no step runs twice.
//!
//! Runs against PostgreSQL (`PM_TEST_POSTGRES_URL`, the multi-instance deployment) and SQLite.
//! Both engines run their full loops (log consumer, timers, periodic resume) with a short lease
//! so their resumers keep offering each other's in-flight executions to themselves; a slow
//! mailer keeps executions in flight long enough for that. Every side effect is counted by
//! idempotency key and must happen once. Then an execution whose owner "died" (a lease held by
//! nobody alive) is taken over once the lease expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::blob::FsBlobStore;
use pm_core::event::{Actor, Origin};
use pm_core::model::*;
use pm_core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm_workflows::definition::Definition;
use pm_workflows::engine::{Engine, EngineConfig};
use pm_workflows::ports::{Mail, Mailer, Ports};
use pm_workflows::store::*;
use serde_json::json;

/// Counts sends per idempotency key; each send takes 100 ms (a slow SMTP server).
#[derive(Default)]
struct CountingMailer(Mutex<HashMap<String, u32>>);

#[async_trait]
impl Mailer for CountingMailer {
    async fn send(&self, mail: &Mail) -> pm_workflows::Result<()> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        *self.0.lock().unwrap().entry(mail.idempotency_key.clone()).or_default() += 1;
        Ok(())
    }
}

async fn two_engines_never_run_a_step_twice(url: &str, dir: &std::path::Path) {
    let core = pm_core::store::open(url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let pm = Pm::new(core, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.join("b"))));
    let sys = Origin::system();
    let ada = pm
        .create_user(
            &sys,
            NewUser {
                email: Email::parse("ada@example.com").unwrap(),
                display_name: Name::parse("ada").unwrap(),
            },
        )
        .await
        .unwrap();
    let me = Origin::user(ada.id);
    let org = pm
        .create_org(
            &me,
            NewOrg { slug: Slug::parse("acme").unwrap(), name: Name::parse("A").unwrap() },
        )
        .await
        .unwrap();
    let project = pm
        .create_project(
            &me,
            org.id,
            NewProject {
                key: ProjectKey::parse("pm").unwrap(),
                name: Name::parse("P").unwrap(),
                description: Markdown::default(),
                lead: None,
            },
        )
        .await
        .unwrap();

    let mailer = Arc::new(CountingMailer::default());
    let config = EngineConfig { lease: Duration::from_millis(600), ..EngineConfig::default() };
    let mut engines = Vec::new();
    for _ in 0..2 {
        // Each engine has its own connections, as two server processes would.
        let stores = pm_workflows::store::open(url).await.unwrap();
        stores.admin.migrate().await.unwrap();
        let ports = Ports { mailer: Some(mailer.clone()), ..Ports::default() };
        engines.push(Engine::new(pm.clone(), stores, ports, config.clone()));
    }
    assert_ne!(engines[0].lease_owner(), engines[1].lease_owner());
    let doc = json!({
        "schema_version": 1, "name": "mail, mail, wait, mail",
        "trigger": {"type": "task_created"},
        "steps": [
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "a", "body": "x"}},
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "b", "body": "x"}},
            {"type": "action", "action": {"type": "wait", "minutes": 1}},
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "c", "body": "x"}}
        ]
    });
    let def = Definition::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let wf = engines[0]
        .create_workflow(org.id, Some(project.id), def, Actor::User(ada.id))
        .await
        .unwrap();
    engines[1].reload().await.unwrap();
    let handles: Vec<_> = engines.iter().map(|e| e.clone().spawn()).collect();

    const TASKS: usize = 12;
    for i in 0..TASKS {
        pm.create_task(
            &me,
            CreateTask::new(project.id, TaskTitle::parse(&format!("t{i}")).unwrap()),
        )
        .await
        .unwrap();
    }
    let stores = engines[0].stores().clone();
    let until = |want: ExecutionStatus, n: usize| {
        let stores = stores.clone();
        async move {
            let started = Instant::now();
            loop {
                let list = stores.executions.list_executions(org.id, None, 100).await.unwrap();
                if list.iter().filter(|e| e.status == want).count() == n {
                    return list;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "waiting for {n} {want:?}: {list:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until(ExecutionStatus::Waiting, TASKS).await;
    // Both engines fire the waits' timers at once, as if a minute had passed.
    let later = pm_core::model::now() + time::Duration::minutes(2);
    let (a, b) =
        tokio::join!(engines[0].fire_due_timers_at(later), engines[1].fire_due_timers_at(later));
    assert_eq!(a.unwrap() + b.unwrap(), TASKS, "each wait fired once");
    let list = until(ExecutionStatus::Succeeded, TASKS).await;
    assert_eq!(list.len(), TASKS, "one execution per task");
    {
        let sent = mailer.0.lock().unwrap();
        assert_eq!(sent.len(), TASKS * 3, "three e-mails per execution");
        assert!(sent.values().all(|&n| n == 1), "a step ran twice: {sent:?}");
    }

    // An execution whose owner died mid-way (step 0 done, its lease still held for a moment)
    // is left alone while the lease lasts, then taken over — once.
    let dead = Execution {
        id: ExecutionId::new(),
        workflow_id: wf.id,
        workflow_version: 1,
        org_id: org.id,
        task_id: list[0].task_id,
        // Parked as `waiting` while it is set up, so no resumer looks at it before the lease.
        status: ExecutionStatus::Waiting,
        trigger_key: "manual:orphan".into(),
        actor: Actor::User(ada.id),
        depth: 1,
        context: list[0].context.clone(),
        error: None,
        created_at: pm_core::model::now(),
        updated_at: pm_core::model::now(),
    };
    let now = pm_core::model::now();
    stores.executions.create_execution(&dead).await.unwrap();
    assert!(
        stores
            .executions
            .lease_execution(dead.id, "engine-dead", now, now + time::Duration::seconds(2))
            .await
            .unwrap()
    );
    assert!(
        !stores
            .executions
            .lease_execution(dead.id, engines[0].lease_owner(), now, now)
            .await
            .unwrap(),
        "held by another owner"
    );
    stores
        .executions
        .begin_step(dead.id, "steps[0]", StepStatus::Running, &json!({}), now)
        .await
        .unwrap();
    stores
        .executions
        .finish_step(dead.id, "steps[0]", StepStatus::Done, &json!({"sent": true}), None, now)
        .await
        .unwrap();
    let running = [ExecutionStatus::Waiting];
    assert!(
        stores
            .executions
            .set_status(dead.id, &running, ExecutionStatus::Running, None, now)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        stores.executions.get_execution(dead.id).await.unwrap().status,
        ExecutionStatus::Running,
        "not while leased"
    );
    let waiting = until(ExecutionStatus::Waiting, 1).await;
    assert_eq!(waiting[0].id, dead.id, "taken over after the lease expired");
    let sent = mailer.0.lock().unwrap().clone();
    let orphan: Vec<_> = sent.iter().filter(|(k, _)| k.starts_with(&dead.id.to_string())).collect();
    assert_eq!(orphan.len(), 1, "only step 1 ran (step 0 was recorded): {orphan:?}");
    assert_eq!(*orphan[0].1, 1);
    for h in handles {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_postgres_never_run_a_step_twice() {
    let Some(url) = crate::stores::postgres_url("two_engines_on_postgres").await else { return };
    let dir = tempfile::tempdir().unwrap();
    two_engines_never_run_a_step_twice(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_sqlite_never_run_a_step_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    two_engines_never_run_a_step_twice(&url, dir.path()).await;
}

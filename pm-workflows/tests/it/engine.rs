//! The engine against real pm-core and workflow stores on one SQLite file: dispatch from the
//! event log, approvals with quorum and rights at decision time, timeouts and escalation,
//! retries, resume after a restart without repeating side effects, guardrails (automation
//! opt-in, the cascade limit → LOOP), dry-run, replay, webhooks.
//!
//! The ports are in-process recorders standing in for the host's adapters (pm-server's SMTP,
//! HTTP and realtime adapters are tested there against real servers).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::blob::FsBlobStore;
use pm_core::event::{Actor, Origin};
use pm_core::id::{OrgId, ProjectId, TaskId, UserId};
use pm_core::model::*;
use pm_core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm_workflows::definition::{Approvers, Definition};
use pm_workflows::engine::{Engine, EngineConfig, StartRequest};
use pm_workflows::ports::{ApproverDirectory, Mail, Mailer, Notifier, Ports};
use pm_workflows::store::*;
use pm_workflows::{Error, Result};
use serde_json::{Value, json};

/// Records mail; fails the first `fail_first` sends.
#[derive(Default)]
pub struct RecordingMailer {
    pub sent: Mutex<Vec<Mail>>,
    pub fail_first: AtomicU32,
}

#[async_trait]
impl Mailer for RecordingMailer {
    async fn send(&self, mail: &Mail) -> Result<()> {
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Action("451 try again later".into()));
        }
        self.sent.lock().unwrap().push(mail.clone());
        Ok(())
    }
}

#[derive(Default)]
pub struct RecordingNotifier {
    pub sent: Mutex<Vec<(Vec<UserId>, String)>>,
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(
        &self,
        users: &[UserId],
        _: Option<TaskId>,
        message: &str,
        _: &str,
    ) -> Result<()> {
        self.sent.lock().unwrap().push((users.to_vec(), message.to_string()));
        Ok(())
    }
}

/// `project_manager` = a mutable set of users (rights can be revoked between request and
/// decision).
#[derive(Default)]
pub struct Managers(pub Mutex<BTreeSet<UserId>>);

#[async_trait]
impl ApproverDirectory for Managers {
    async fn eligible(&self, _: OrgId, _: Option<ProjectId>, a: &Approvers) -> Result<Vec<UserId>> {
        Ok(match a {
            Approvers::Role(r) if r == "project_manager" => {
                self.0.lock().unwrap().iter().copied().collect()
            }
            Approvers::Role(_) => vec![],
            Approvers::Users(u) => u.clone(),
        })
    }
    async fn may_decide(
        &self,
        user: UserId,
        org: OrgId,
        p: Option<ProjectId>,
        a: &Approvers,
    ) -> Result<bool> {
        Ok(self.eligible(org, p, a).await?.contains(&user))
    }
}

pub struct World {
    pub pm: Pm,
    pub stores: WorkflowStores,
    pub url: String,
    pub mailer: Arc<RecordingMailer>,
    pub notifier: Arc<RecordingNotifier>,
    pub managers: Arc<Managers>,
    pub ada: User,
    pub pms: Vec<User>,
    pub bob: User,
    pub org: Organization,
    pub project: Project,
    pub review: WorkflowState,
    pub done: WorkflowState,
    pub task: Task,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pm.db").display());
        let core = pm_core::store::open(&url).await.unwrap();
        core.admin.migrate().await.unwrap();
        let stores = pm_workflows::store::open(&url).await.unwrap();
        stores.admin.migrate().await.unwrap();
        let pm =
            Pm::new(core, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.path().join("blobs"))));
        let sys = Origin::system();
        let user = |n: &str| NewUser {
            email: Email::parse(&format!("{n}@example.com")).unwrap(),
            display_name: Name::parse(n).unwrap(),
        };
        let ada = pm.create_user(&sys, user("ada")).await.unwrap();
        let bob = pm.create_user(&sys, user("bob")).await.unwrap();
        let mut pms = Vec::new();
        for n in ["pm1", "pm2", "pm3"] {
            pms.push(pm.create_user(&sys, user(n)).await.unwrap());
        }
        let me = Origin::user(ada.id);
        let org = pm
            .create_org(
                &me,
                NewOrg { slug: Slug::parse("acme").unwrap(), name: Name::parse("Acme").unwrap() },
            )
            .await
            .unwrap();
        for u in pms.iter().chain([&bob]) {
            pm.put_member(&me, org.id, u.id, MemberRole::Member).await.unwrap();
        }
        let project = pm
            .create_project(
                &me,
                org.id,
                NewProject {
                    key: ProjectKey::parse("pm").unwrap(),
                    name: Name::parse("Platform").unwrap(),
                    description: Markdown::default(),
                    lead: Some(ada.id),
                },
            )
            .await
            .unwrap();
        let review = pm
            .create_state(&me, project.id, Name::parse("Review").unwrap(), StateCategory::Started)
            .await
            .unwrap();
        let done = pm
            .create_state(
                &me,
                project.id,
                Name::parse("Approved").unwrap(),
                StateCategory::Completed,
            )
            .await
            .unwrap();
        let task = pm
            .create_task(&me, CreateTask::new(project.id, TaskTitle::parse("Ship it").unwrap()))
            .await
            .unwrap();
        let managers = Arc::new(Managers::default());
        managers.0.lock().unwrap().extend(pms.iter().map(|u| u.id));
        World {
            pm,
            stores,
            url,
            mailer: Arc::default(),
            notifier: Arc::default(),
            managers,
            ada,
            pms,
            bob,
            org,
            project,
            review,
            done,
            task,
            _dir: dir,
        }
    }

    pub fn engine(&self) -> Engine {
        let ports = Ports {
            mailer: Some(self.mailer.clone()),
            notifier: Some(self.notifier.clone()),
            approvers: Some(self.managers.clone()),
            ..Ports::default()
        };
        Engine::new(self.pm.clone(), self.stores.clone(), ports, EngineConfig::default())
    }

    pub async fn workflow(&self, engine: &Engine, doc: Value) -> Workflow {
        let def = Definition::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        engine
            .create_workflow(self.org.id, Some(self.project.id), def, Actor::User(self.ada.id))
            .await
            .unwrap()
    }

    pub async fn move_task(&self, state: &WorkflowState) -> Task {
        let t = self.pm.stores().tasks.get_task(self.task.id).await.unwrap();
        let patch = TaskPatch { state_id: Some(state.id), ..TaskPatch::default() };
        self.pm.update_task(&Origin::user(self.ada.id), t.id, t.version, patch).await.unwrap()
    }

    pub async fn task_now(&self) -> Task {
        self.pm.stores().tasks.get_task(self.task.id).await.unwrap()
    }

    pub async fn executions(&self) -> Vec<Execution> {
        self.stores.executions.list_executions(self.org.id, None, 100).await.unwrap()
    }

    /// Reads the log until nothing new starts, waiting for executions in between.
    pub async fn settle(&self, engine: &Engine) {
        loop {
            let started = engine.catch_up().await.unwrap();
            engine.wait_idle().await;
            if started == 0 {
                return;
            }
        }
    }
}

fn review_workflow(w: &World, timeout_minutes: u32) -> Value {
    json!({
        "schema_version": 1,
        "name": "Review needs two of three project managers",
        "trigger": {"type": "state_changed", "to": w.review.id},
        "steps": [{
            "type": "approval", "id": "review",
            "stages": [{"approvers": {"role": "project_manager"}, "quorum": {"count": 2}}],
            "timeout_minutes": timeout_minutes,
            "on_approved": [
                {"type": "action", "action": {"type": "transition", "to_state": w.done.id}},
                {"type": "action", "action": {"type": "email", "to": ["reporter"],
                    "subject": "{{task.reference}} approved", "body": "{{task.title}} is done."}}
            ],
            "on_timeout": [
                {"type": "action", "action": {"type": "set_fields", "fields": {"priority": "urgent"}}},
                {"type": "action", "action": {"type": "notify", "to": ["reporter"], "message": "Review of {{task.reference}} timed out"}}
            ]
        }],
        "options": {"initial_backoff_ms": 1, "max_backoff_ms": 5}
    })
}

#[tokio::test]
async fn review_approval_two_of_three_then_done_and_mail() {
    let w = World::new().await;
    let engine = w.engine();
    let wf = w.workflow(&engine, review_workflow(&w, 60)).await;
    w.move_task(&w.review).await;
    w.settle(&engine).await;

    let execs = w.executions().await;
    assert_eq!(execs.len(), 1);
    assert_eq!(execs[0].status, ExecutionStatus::Waiting);
    let approvals = w.stores.approvals.list_approvals(w.org.id, true, 10).await.unwrap();
    assert_eq!(approvals.len(), 1);
    let a = &approvals[0];
    assert_eq!((a.eligible.len(), a.needed), (3, 2));
    assert_eq!(w.notifier.sent.lock().unwrap().len(), 1, "approvers were asked");

    // Not a project manager: refused. The requester (ada) may not self-approve either.
    assert!(matches!(engine.decide(a.id, w.bob.id, true, None).await, Err(Error::Forbidden(_))));
    assert!(matches!(engine.decide(a.id, w.ada.id, true, None).await, Err(Error::Forbidden(_))));
    // Rights are checked at decision time: pm3 loses the role after the request.
    w.managers.0.lock().unwrap().remove(&w.pms[2].id);
    assert!(matches!(engine.decide(a.id, w.pms[2].id, true, None).await, Err(Error::Forbidden(_))));

    let after = engine.decide(a.id, w.pms[0].id, true, Some("lgtm".into())).await.unwrap();
    assert_eq!(after.status, ApprovalStatus::Pending);
    assert!(matches!(engine.decide(a.id, w.pms[0].id, true, None).await, Err(Error::Conflict(_))));
    let after = engine.decide(a.id, w.pms[1].id, true, None).await.unwrap();
    assert_eq!(after.status, ApprovalStatus::Approved);
    engine.wait_idle().await;

    let task = w.task_now().await;
    assert_eq!(task.state_id, w.done.id, "moved to Done");
    let mail = w.mailer.sent.lock().unwrap().clone();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, vec!["ada@example.com".to_string()]);
    assert_eq!(mail[0].subject, format!("{} approved", task.reference));
    let e = w.stores.executions.get_execution(execs[0].id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);

    // The transition was made by the automation, one hop deep.
    let events = w.pm.stores().events.read_after(0, 1000).await.unwrap();
    let last_update =
        events.iter().rev().find(|e| e.kind == pm_core::event::EventKind::TaskUpdated).unwrap();
    assert_eq!(last_update.actor, Actor::Automation(wf.id));
    assert_eq!(last_update.cause.map(|c| c.depth), Some(1));

    // Replaying the stored execution decides exactly the same.
    let replay = engine.replay(e.id).await.unwrap();
    assert!(replay.identical, "{replay:?}");

    // The transition to Done does not re-trigger (trigger is "to Review"), and re-reading the
    // log starts nothing twice.
    w.settle(&engine).await;
    assert_eq!(w.executions().await.len(), 1);
}

#[tokio::test]
async fn approval_timeout_escalates() {
    let w = World::new().await;
    let engine = w.engine();
    w.workflow(&engine, review_workflow(&w, 30)).await;
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    let a = w.stores.approvals.list_approvals(w.org.id, true, 10).await.unwrap().remove(0);
    engine.decide(a.id, w.pms[0].id, true, None).await.unwrap();
    // Not yet due.
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0);
    let later = pm_core::model::now() + time::Duration::minutes(31);
    assert_eq!(engine.fire_due_timers_at(later).await.unwrap(), 1);
    engine.wait_idle().await;
    let task = w.task_now().await;
    assert_eq!(task.priority, Priority::Urgent, "escalated");
    assert_eq!(task.state_id, w.review.id, "not approved");
    assert!(w.mailer.sent.lock().unwrap().is_empty());
    let notes = w.notifier.sent.lock().unwrap().clone();
    assert!(notes.iter().any(|(users, m)| users == &vec![w.ada.id] && m.contains("timed out")));
    let a = w.stores.approvals.get_approval(a.id).await.unwrap();
    assert_eq!(a.status, ApprovalStatus::TimedOut);
    assert!(matches!(engine.decide(a.id, w.pms[1].id, true, None).await, Err(Error::Conflict(_))));
    assert_eq!(w.executions().await[0].status, ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn percentage_quorum_and_rejection() {
    let w = World::new().await;
    let engine = w.engine();
    let mut doc = review_workflow(&w, 60);
    doc["steps"][0]["stages"][0]["quorum"] = json!({"percent": 100});
    doc["steps"][0]["on_rejected"] =
        json!([{"type": "action", "action": {"type": "comment", "body": "Rejected by review"}}]);
    w.workflow(&engine, doc).await;
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    let a = w.stores.approvals.list_approvals(w.org.id, true, 10).await.unwrap().remove(0);
    assert_eq!(a.needed, 3, "100 % of 3");
    engine.decide(a.id, w.pms[0].id, true, None).await.unwrap();
    let after = engine.decide(a.id, w.pms[1].id, false, Some("no".into())).await.unwrap();
    assert_eq!(after.status, ApprovalStatus::Rejected);
    engine.wait_idle().await;
    let comments = w.pm.stores().comments.list_comments(w.task.id).await.unwrap();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].body.as_str(), "Rejected by review");
    assert_eq!(w.task_now().await.state_id, w.review.id);
}

#[tokio::test]
async fn a_self_triggering_workflow_stops_at_depth_10_marked_loop() {
    let w = World::new().await;
    let engine = w.engine();
    w.workflow(
        &engine,
        json!({
            "schema_version": 1,
            "name": "Renames itself",
            "trigger": {"type": "task_updated"},
            "steps": [{"type": "action", "action": {"type": "set_fields", "fields": {"title": "hop {{event.depth}}"}}}],
            "options": {"allow_automation_events": true}
        }),
    )
    .await;
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    let mut execs = w.executions().await;
    execs.sort_by_key(|e| e.depth);
    assert_eq!(execs.len(), 10);
    for (i, e) in execs.iter().enumerate() {
        assert_eq!(e.depth, i as u32 + 1);
    }
    assert!(execs[..9].iter().all(|e| e.status == ExecutionStatus::Succeeded));
    assert_eq!(execs[9].status, ExecutionStatus::Loop);
    assert!(execs[9].error.as_deref().unwrap().contains("depth 10"));
    assert_eq!(w.task_now().await.title.as_str(), "hop 8");
}

#[tokio::test]
async fn automation_events_do_not_trigger_unless_opted_in() {
    let w = World::new().await;
    let engine = w.engine();
    w.workflow(
        &engine,
        json!({
            "schema_version": 1,
            "name": "Renames once",
            "trigger": {"type": "task_updated"},
            "steps": [{"type": "action", "action": {"type": "set_fields", "fields": {"title": "hop {{event.depth}}"}}}]
        }),
    )
    .await;
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    let execs = w.executions().await;
    assert_eq!(execs.len(), 1);
    assert_eq!(w.task_now().await.title.as_str(), "hop 0");
}

#[tokio::test]
async fn conditions_filter_and_triggers_match_precisely() {
    let w = World::new().await;
    let engine = w.engine();
    w.workflow(
        &engine,
        json!({
            "schema_version": 1,
            "name": "Only urgent",
            "trigger": {"type": "field_changed", "field": "priority"},
            "conditions": ["task.priority == 'urgent'"],
            "steps": [{"type": "action", "action": {"type": "comment", "body": "urgent!"}}]
        }),
    )
    .await;
    // A state change is not a priority change.
    w.move_task(&w.review).await;
    for p in [Priority::High, Priority::Urgent] {
        let t = w.task_now().await;
        let patch = TaskPatch { priority: Some(p), ..TaskPatch::default() };
        w.pm.update_task(&Origin::user(w.ada.id), t.id, t.version, patch).await.unwrap();
    }
    w.settle(&engine).await;
    let execs = w.executions().await;
    assert_eq!(execs.len(), 1);
    assert_eq!(w.pm.stores().comments.list_comments(w.task.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn side_effects_retry_with_backoff_then_succeed_once() {
    let w = World::new().await;
    let engine = w.engine();
    w.mailer.fail_first.store(2, Ordering::SeqCst);
    w.workflow(
        &engine,
        json!({
            "schema_version": 1,
            "name": "Mail on create",
            "trigger": {"type": "task_created"},
            "steps": [{"type": "action", "action": {"type": "email", "to": ["reporter", {"email": "ops@example.com"}], "subject": "New: {{task.title}}", "body": "x"}}],
            "options": {"initial_backoff_ms": 1, "max_backoff_ms": 4}
        }),
    )
    .await;
    w.pm.create_task(
        &Origin::user(w.ada.id),
        CreateTask::new(w.project.id, TaskTitle::parse("New one").unwrap()),
    )
    .await
    .unwrap();
    w.settle(&engine).await;
    let e = w.executions().await.remove(0);
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let steps = w.stores.executions.list_steps(e.id).await.unwrap();
    assert_eq!(steps[0].attempts, 3);
    let mail = w.mailer.sent.lock().unwrap().clone();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, vec!["ada@example.com".to_string(), "ops@example.com".to_string()]);
    assert_eq!(mail[0].idempotency_key, format!("{}:steps[0]", e.id));

    // Out of attempts: the execution fails, and a retry runs only what failed.
    w.mailer.fail_first.store(100, Ordering::SeqCst);
    w.pm.create_task(
        &Origin::user(w.ada.id),
        CreateTask::new(w.project.id, TaskTitle::parse("Another").unwrap()),
    )
    .await
    .unwrap();
    w.settle(&engine).await;
    let failed =
        w.executions().await.into_iter().find(|x| x.status == ExecutionStatus::Failed).unwrap();
    assert!(failed.error.as_deref().unwrap().contains("451"));
    w.mailer.fail_first.store(0, Ordering::SeqCst);
    engine.retry(failed.id).await.unwrap();
    engine.wait_idle().await;
    assert_eq!(
        w.stores.executions.get_execution(failed.id).await.unwrap().status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(w.mailer.sent.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_restarted_engine_resumes_without_repeating_side_effects() {
    let w = World::new().await;
    let doc = json!({
        "schema_version": 1,
        "name": "Mail, wait, mail",
        "trigger": {"type": "task_created"},
        "steps": [
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "first", "body": "x"}},
            {"type": "action", "action": {"type": "wait", "minutes": 60}},
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "second", "body": "x"}}
        ]
    });
    {
        let first = w.engine();
        w.workflow(&first, doc).await;
        w.pm.create_task(
            &Origin::user(w.ada.id),
            CreateTask::new(w.project.id, TaskTitle::parse("T").unwrap()),
        )
        .await
        .unwrap();
        w.settle(&first).await;
        assert_eq!(w.executions().await[0].status, ExecutionStatus::Waiting);
    } // the first engine is gone ("crash" while waiting)

    let second = w.engine();
    second.reload().await.unwrap();
    assert_eq!(second.resume().await.unwrap(), 0, "nothing was running");
    second.fire_due_timers_at(pm_core::model::now() + time::Duration::minutes(61)).await.unwrap();
    second.wait_idle().await;
    let subjects: Vec<String> =
        w.mailer.sent.lock().unwrap().iter().map(|m| m.subject.clone()).collect();
    assert_eq!(subjects, vec!["first", "second"]);
    let e = w.executions().await.remove(0);
    assert_eq!(e.status, ExecutionStatus::Succeeded);

    // An execution left `running` mid-way (the process died after step 0 was recorded) is
    // resumed at start and performs only the rest.
    let running = Execution {
        id: ExecutionId::new(),
        status: ExecutionStatus::Running,
        trigger_key: "manual:crashed".into(),
        ..e.clone()
    };
    w.stores.executions.create_execution(&running).await.unwrap();
    let at = pm_core::model::now();
    w.stores
        .executions
        .begin_step(running.id, "steps[0]", StepStatus::Running, &json!({}), at)
        .await
        .unwrap();
    w.stores
        .executions
        .finish_step(running.id, "steps[0]", StepStatus::Done, &json!({"sent": true}), None, at)
        .await
        .unwrap();
    w.stores
        .executions
        .finish_step(running.id, "steps[1]", StepStatus::Done, &json!({"waited": true}), None, at)
        .await
        .unwrap();
    let third = w.engine();
    assert_eq!(third.resume().await.unwrap(), 1);
    let subjects: Vec<String> =
        w.mailer.sent.lock().unwrap().iter().map(|m| m.subject.clone()).collect();
    assert_eq!(subjects, vec!["first", "second", "second"], "only the unfinished step ran");
}

#[tokio::test]
async fn dry_run_plans_without_side_effects() {
    let w = World::new().await;
    let engine = w.engine();
    let def = Definition::parse(
        &serde_json::to_vec(&json!({
            "schema_version": 1,
            "name": "Plan me",
            "trigger": {"type": "manual"},
            "steps": [
                {"type": "if", "condition": "task.title == 'Ship it'",
                 "then": [{"type": "action", "id": "calc", "action": {"type": "script", "source": "task.title.len() * 2"}}],
                 "else": [{"type": "action", "action": {"type": "comment", "body": "no"}}]},
                {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "{{task.reference}}: {{steps.calc}}", "body": "x"}},
                {"type": "for_each", "over": "subtasks", "steps": [{"type": "action", "action": {"type": "comment", "body": "child {{item.reference}}"}}]}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let sub = {
        let mut c = CreateTask::new(w.project.id, TaskTitle::parse("Child").unwrap());
        c.parent_id = Some(w.task.id);
        w.pm.create_task(&Origin::user(w.ada.id), c).await.unwrap()
    };
    let plan = engine.dry_run(&def, w.org.id, Some(w.task.id), None).await.unwrap();
    assert!(plan.would_run);
    let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, vec!["if", "action:script", "action:email", "for_each", "action:comment"]);
    assert_eq!(plan.steps[1].detail["output"], json!(14));
    assert_eq!(plan.steps[2].detail["subject"], json!(format!("{}: 14", w.task.reference)));
    assert_eq!(plan.steps[4].detail["body"], json!(format!("child {}", sub.reference)));
    assert!(w.mailer.sent.lock().unwrap().is_empty());
    assert!(w.pm.stores().comments.list_comments(w.task.id).await.unwrap().is_empty());
    assert!(w.executions().await.is_empty());
}

#[tokio::test]
async fn webhooks_need_the_secret_and_start_once_per_delivery() {
    let w = World::new().await;
    let engine = w.engine();
    let wf = w
        .workflow(
            &engine,
            json!({
                "schema_version": 1,
                "name": "Hook",
                "trigger": {"type": "webhook"},
                "steps": [{"type": "action", "action": {"type": "comment", "body": "hook says {{trigger.text}}"}}]
            }),
        )
        .await;
    let payload = json!({"task_id": w.task.id, "text": "hi"});
    assert!(matches!(
        engine.webhook(wf.id, "wrong", "d1", payload.clone()).await,
        Err(Error::Forbidden(_))
    ));
    engine.webhook(wf.id, &wf.webhook_secret, "d1", payload.clone()).await.unwrap();
    assert!(matches!(
        engine.webhook(wf.id, &wf.webhook_secret, "d1", payload.clone()).await,
        Err(Error::Conflict(_))
    ));
    engine.wait_idle().await;
    let comments = w.pm.stores().comments.list_comments(w.task.id).await.unwrap();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].body.as_str(), "hook says hi");
    assert_eq!(comments[0].author, w.ada.id, "written as the workflow's creator");

    // Manual starts and cancellation.
    let manual = json!({
        "schema_version": 1, "name": "Wait forever", "trigger": {"type": "manual"},
        "steps": [{"type": "action", "action": {"type": "wait", "minutes": 600}}]
    });
    let m = w.workflow(&engine, manual).await;
    let e = engine
        .start(
            m.id,
            StartRequest {
                key: "manual:1".into(),
                actor: Actor::User(w.bob.id),
                task_id: None,
                input: json!({}),
            },
        )
        .await
        .unwrap();
    engine.wait_idle().await;
    assert_eq!(
        w.stores.executions.get_execution(e.id).await.unwrap().status,
        ExecutionStatus::Waiting
    );
    assert_eq!(engine.cancel(e.id).await.unwrap().status, ExecutionStatus::Cancelled);
    assert!(matches!(engine.cancel(e.id).await, Err(Error::Conflict(_))));
    // A disabled workflow does not start.
    let m = engine.set_enabled(m.id, m.version, false).await.unwrap();
    assert!(!m.enabled);
    assert!(matches!(
        engine
            .start(
                m.id,
                StartRequest {
                    key: "manual:2".into(),
                    actor: Actor::System,
                    task_id: None,
                    input: json!({})
                }
            )
            .await,
        Err(Error::Conflict(_))
    ));
    let _ = w.url.len();
}

#[tokio::test]
async fn schedules_and_relative_times_fire_as_durable_timers() {
    let w = World::new().await;
    let engine = w.engine();
    let comment =
        |body: &str| json!([{"type": "action", "action": {"type": "comment", "body": body}}]);
    w.workflow(
        &engine,
        json!({"schema_version": 1, "name": "Every minute", "trigger": {"type": "schedule", "cron": "* * * * *", "timezone": "Europe/Paris"},
               "steps": [{"type": "action", "action": {"type": "script", "source": "42"}}]}),
    )
    .await;
    w.workflow(
        &engine,
        json!({"schema_version": 1, "name": "Two days before due", "trigger": {"type": "due_date_reached", "offset_minutes": -2880},
               "steps": comment("due in two days")}),
    )
    .await;
    w.workflow(
        &engine,
        json!({"schema_version": 1, "name": "Stuck in review", "trigger": {"type": "in_state_for", "state": w.review.id, "minutes": 2880},
               "steps": comment("48 h in review")}),
    )
    .await;
    let now = pm_core::model::now();
    let due = (now + time::Duration::days(10)).date();
    let t = w.task_now().await;
    let patch = TaskPatch { due_date: Some(Some(due)), ..TaskPatch::default() };
    w.pm.update_task(&Origin::user(w.ada.id), t.id, t.version, patch).await.unwrap();
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    assert!(w.executions().await.is_empty(), "nothing is due yet");

    // A minute later: the schedule fires once, and is re-armed for the minute after.
    engine.fire_due_timers_at(now + time::Duration::seconds(61)).await.unwrap();
    engine.wait_idle().await;
    assert_eq!(w.executions().await.len(), 1);
    engine.fire_due_timers_at(now + time::Duration::seconds(121)).await.unwrap();
    engine.wait_idle().await;
    assert_eq!(w.executions().await.len(), 2);

    // 49 hours later: the SLA fires (still in review); 8 days later: due in two days.
    engine.fire_due_timers_at(now + time::Duration::hours(49)).await.unwrap();
    engine.wait_idle().await;
    let bodies = |comments: Vec<Comment>| {
        comments.into_iter().map(|c| c.body.as_str().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        bodies(w.pm.stores().comments.list_comments(w.task.id).await.unwrap()),
        vec!["48 h in review"]
    );
    engine
        .fire_due_timers_at(
            due.midnight().assume_utc() - time::Duration::days(2) + time::Duration::seconds(1),
        )
        .await
        .unwrap();
    engine.wait_idle().await;
    assert_eq!(
        bodies(w.pm.stores().comments.list_comments(w.task.id).await.unwrap()),
        vec!["48 h in review", "due in two days"]
    );
    // Each fired once, whatever the schedule did meanwhile.
    let execs = w.executions().await;
    assert_eq!(execs.iter().filter(|e| e.trigger_key.starts_with("due:")).count(), 1);
    assert_eq!(execs.iter().filter(|e| e.trigger_key.starts_with("sla:")).count(), 1);
}

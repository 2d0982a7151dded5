//! The store conformance suite (feature `testing`).
//!
//! One suite for every backend: the built-in SQLite and PostgreSQL adapters run it in their
//! tests, and a host that writes its own adapter runs the same functions against theirs. Checks
//! use fresh ids, so they may share a database; give [`run_all`] a freshly migrated one. Checks
//! panic with a message on failure, like any test.

use pm_core::event::Actor;
use pm_core::id::{OrgId, TaskId, UserId, WorkflowId};
use serde_json::json;
use time::OffsetDateTime;

use crate::Error;
use crate::definition::Definition;
use crate::store::*;

/// Runs every check against `stores`.
pub async fn run_all(stores: &WorkflowStores) {
    workflows_are_versioned(stores).await;
    workflow_updates_are_optimistic(stores).await;
    executions_are_unique_per_trigger(stores).await;
    steps_count_attempts_and_finish_once(stores).await;
    status_changes_are_guarded(stores).await;
    timers_fire_once(stores).await;
    approvals_tally_and_close(stores).await;
    templates_round_trip_with_unique_names(stores).await;
    leases_are_exclusive_until_they_expire(stores).await;
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).expect("valid timestamp")
}

fn definition(name: &str) -> Definition {
    Definition::from_value(
        &json!({
            "schema_version": 1,
            "name": name,
            "trigger": {"type": "task_created"},
            "steps": [{"type": "action", "action": {"type": "comment", "body": "«ünïcödé» {{task.reference}}"}}]
        }),
        &crate::Limits::default(),
    )
    .expect("valid definition")
}

/// A new workflow (not stored).
pub fn workflow(org: OrgId) -> Workflow {
    Workflow {
        id: WorkflowId::new(),
        org_id: org,
        project_id: None,
        enabled: true,
        definition_version: 1,
        definition: definition("first"),
        webhook_secret: "s3cret".into(),
        created_by: Actor::User(UserId::new()),
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    }
}

/// A new running execution of `w` (not stored).
pub fn execution(w: &Workflow, trigger_key: &str) -> Execution {
    Execution {
        id: ExecutionId::new(),
        workflow_id: w.id,
        workflow_version: w.definition_version,
        org_id: w.org_id,
        task_id: Some(TaskId::new()),
        status: ExecutionStatus::Running,
        trigger_key: trigger_key.into(),
        actor: Actor::User(UserId::new()),
        depth: 1,
        context: json!({"task": {"title": "«ünïcödé»"}, "n": 1.5}),
        error: None,
        created_at: at(1),
        updated_at: at(1),
    }
}

/// Creating a workflow stores version 1; a definition change adds a version and keeps the old.
pub async fn workflows_are_versioned(s: &WorkflowStores) {
    let org = OrgId::new();
    let w = workflow(org);
    s.workflows.create_workflow(&w).await.unwrap();
    assert_eq!(s.workflows.get_workflow(w.id).await.unwrap(), w);
    assert!(matches!(s.workflows.create_workflow(&w).await, Err(Error::Conflict(_))));
    let changed =
        s.workflows.update_definition(w.id, 1, &definition("second"), at(5)).await.unwrap();
    assert_eq!(changed.definition_version, 2);
    assert_eq!(changed.version, 2);
    assert_eq!(changed.definition.name, "second");
    assert_eq!(changed.updated_at, at(5));
    let versions = s.workflows.list_versions(w.id).await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(versions[0].definition.name, "first");
    assert_eq!(s.workflows.get_version(w.id, 1).await.unwrap().definition, w.definition);
    assert!(matches!(s.workflows.get_version(w.id, 3).await, Err(Error::NotFound { .. })));
    assert_eq!(s.workflows.list_workflows(org).await.unwrap(), vec![changed.clone()]);
    assert!(s.workflows.list_enabled().await.unwrap().iter().any(|x| x.id == w.id));
    let off = s.workflows.set_enabled(w.id, 2, false, at(6)).await.unwrap();
    assert!(!off.enabled);
    assert!(!s.workflows.list_enabled().await.unwrap().iter().any(|x| x.id == w.id));
    s.workflows.delete_workflow(w.id).await.unwrap();
    assert!(matches!(s.workflows.get_workflow(w.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.workflows.delete_workflow(w.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.workflows.list_versions(w.id).await, Err(Error::NotFound { .. })));
}

/// Updates at a stale version are conflicts and change nothing.
pub async fn workflow_updates_are_optimistic(s: &WorkflowStores) {
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    assert!(matches!(
        s.workflows.update_definition(w.id, 7, &definition("x"), at(2)).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.workflows.set_enabled(w.id, 7, false, at(2)).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.workflows.get_workflow(w.id).await.unwrap(), w, "nothing changed");
    assert_eq!(s.workflows.list_versions(w.id).await.unwrap().len(), 1);
    assert!(matches!(
        s.workflows.set_enabled(WorkflowId::new(), 1, false, at(2)).await,
        Err(Error::NotFound { .. })
    ));
}

/// One execution per (workflow, trigger key): re-reading the log starts nothing twice.
pub async fn executions_are_unique_per_trigger(s: &WorkflowStores) {
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    let e = execution(&w, "event:1");
    assert!(s.executions.create_execution(&e).await.unwrap());
    assert!(!s.executions.create_execution(&execution(&w, "event:1")).await.unwrap());
    let e2 = execution(&w, "event:2");
    assert!(s.executions.create_execution(&e2).await.unwrap());
    assert_eq!(s.executions.get_execution(e.id).await.unwrap(), e);
    let listed = s.executions.list_executions(w.org_id, Some(w.id), 10).await.unwrap();
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![e2.id, e.id], "newest first");
    assert_eq!(s.executions.list_executions(w.org_id, None, 1).await.unwrap().len(), 1);
    let running = s.executions.list_running(1000).await.unwrap();
    assert!(running.iter().any(|x| x.id == e.id));
    assert!(matches!(
        s.executions.get_execution(ExecutionId::new()).await,
        Err(Error::NotFound { .. })
    ));
}

/// Attempts count across begins; a finished step stays finished.
pub async fn steps_count_attempts_and_finish_once(s: &WorkflowStores) {
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    let e = execution(&w, "event:steps");
    s.executions.create_execution(&e).await.unwrap();
    let input = json!({"to": "ada@example.com"});
    let r = s
        .executions
        .begin_step(e.id, "steps[0]", StepStatus::Running, &input, at(2))
        .await
        .unwrap();
    assert_eq!((r.attempts, r.status, &r.input), (1, StepStatus::Running, &input));
    let r = s
        .executions
        .begin_step(e.id, "steps[0]", StepStatus::Running, &input, at(3))
        .await
        .unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.started_at, at(2), "first start is kept");
    s.executions
        .finish_step(e.id, "steps[0]", StepStatus::Done, &json!({"sent": true}), None, at(4))
        .await
        .unwrap();
    assert!(matches!(
        s.executions.begin_step(e.id, "steps[0]", StepStatus::Running, &input, at(5)).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        s.executions
            .finish_step(e.id, "steps[0]", StepStatus::Failed, &json!(null), Some("x"), at(5))
            .await,
        Err(Error::Conflict(_))
    ));
    // A decision is recorded without a begin.
    s.executions
        .finish_step(e.id, "steps[1]", StepStatus::Done, &json!({"branch": "then"}), None, at(6))
        .await
        .unwrap();
    s.executions
        .finish_step(e.id, "steps[2]", StepStatus::Failed, &json!(null), Some("boom"), at(7))
        .await
        .unwrap();
    let steps = s.executions.list_steps(e.id).await.unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].output, json!({"sent": true}));
    assert_eq!(steps[0].finished_at, Some(at(4)));
    assert_eq!(steps[2].error.as_deref(), Some("boom"));
    assert_eq!(s.executions.reset_failed_steps(e.id).await.unwrap(), 1);
    assert_eq!(s.executions.list_steps(e.id).await.unwrap().len(), 2);
    assert!(matches!(
        s.executions
            .begin_step(ExecutionId::new(), "steps[0]", StepStatus::Running, &input, at(1))
            .await,
        Err(Error::NotFound { .. })
    ));
}

/// Status transitions apply only from the expected statuses.
pub async fn status_changes_are_guarded(s: &WorkflowStores) {
    use ExecutionStatus::*;
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    let e = execution(&w, "event:status");
    s.executions.create_execution(&e).await.unwrap();
    assert!(s.executions.set_status(e.id, &[Running], Waiting, None, at(2)).await.unwrap());
    assert!(!s.executions.set_status(e.id, &[Running], Succeeded, None, at(3)).await.unwrap());
    assert!(
        s.executions
            .set_status(e.id, &[Running, Waiting], Failed, Some("boom"), at(4))
            .await
            .unwrap()
    );
    let got = s.executions.get_execution(e.id).await.unwrap();
    assert_eq!((got.status, got.error.as_deref(), got.updated_at), (Failed, Some("boom"), at(4)));
    assert!(matches!(
        s.executions.set_status(ExecutionId::new(), &[Running], Failed, None, at(1)).await,
        Err(Error::NotFound { .. })
    ));
}

/// Timers are armed once per key, listed when due, claimed by one caller.
pub async fn timers_fire_once(s: &WorkflowStores) {
    let wf = WorkflowId::new();
    let key = format!("wait:{wf}");
    let t = Timer {
        id: TimerId::new(),
        key: key.clone(),
        execution_id: None,
        workflow_id: wf,
        fire_at: at(100),
        payload: json!({"kind": "wait"}),
    };
    assert!(s.timers.arm_timer(&t).await.unwrap());
    assert!(!s.timers.arm_timer(&Timer { id: TimerId::new(), ..t.clone() }).await.unwrap());
    assert!(!s.timers.due_timers(at(99), 100).await.unwrap().iter().any(|x| x.id == t.id));
    let due = s.timers.due_timers(at(100), 10_000).await.unwrap();
    assert_eq!(due.iter().find(|x| x.id == t.id), Some(&t));
    assert!(s.timers.next_fire_at().await.unwrap().is_some_and(|n| n <= at(100)));
    assert!(s.timers.claim_timer(t.id).await.unwrap());
    assert!(!s.timers.claim_timer(t.id).await.unwrap());
    let t2 = Timer { id: TimerId::new(), fire_at: at(200), ..t };
    assert!(s.timers.arm_timer(&t2).await.unwrap(), "a claimed key can be re-armed");
    assert!(s.timers.disarm_timer(&key).await.unwrap());
    assert!(!s.timers.disarm_timer(&key).await.unwrap());
}

/// Decisions are once per person, tallied in the same transaction, and closed approvals refuse
/// further decisions.
pub async fn approvals_tally_and_close(s: &WorkflowStores) {
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    let e = execution(&w, "event:approval");
    s.executions.create_execution(&e).await.unwrap();
    let (a1, a2, a3) = (UserId::new(), UserId::new(), UserId::new());
    let approval = Approval {
        id: ApprovalId::new(),
        execution_id: e.id,
        workflow_id: w.id,
        org_id: w.org_id,
        task_id: e.task_id,
        step_key: "steps[0]".into(),
        stage: 0,
        status: ApprovalStatus::Pending,
        approvers: crate::definition::Approvers::Users(vec![a1, a2, a3]),
        eligible: vec![a1, a2, a3],
        needed: 2,
        requester: Some(UserId::new()),
        allow_self_approval: false,
        deadline: Some(at(1000)),
        decisions: vec![],
        created_at: at(2),
    };
    let stored = s.approvals.create_approval(&approval).await.unwrap();
    assert_eq!(stored, approval);
    let again = s
        .approvals
        .create_approval(&Approval { id: ApprovalId::new(), ..approval.clone() })
        .await
        .unwrap();
    assert_eq!(again.id, approval.id, "one approval per (execution, step, stage)");
    let decision = |user, approve| ApprovalDecision {
        user_id: user,
        approve,
        comment: Some("ok".into()),
        at: at(3),
    };
    let after = s.approvals.decide(approval.id, &decision(a1, true)).await.unwrap();
    assert_eq!((after.status, after.decisions.len()), (ApprovalStatus::Pending, 1));
    assert!(matches!(
        s.approvals.decide(approval.id, &decision(a1, false)).await,
        Err(Error::Conflict(_))
    ));
    let after = s.approvals.decide(approval.id, &decision(a2, true)).await.unwrap();
    assert_eq!(after.status, ApprovalStatus::Approved);
    assert!(matches!(
        s.approvals.decide(approval.id, &decision(a3, true)).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        s.approvals.get_approval(approval.id).await.unwrap().status,
        ApprovalStatus::Approved
    );
    assert!(!s.approvals.close_approval(approval.id, ApprovalStatus::TimedOut).await.unwrap());

    // Two rejections out of three make a quorum of two unreachable.
    let second =
        Approval { id: ApprovalId::new(), stage: 1, decisions: vec![], ..approval.clone() };
    s.approvals.create_approval(&second).await.unwrap();
    s.approvals.decide(second.id, &decision(a1, false)).await.unwrap();
    let after = s.approvals.decide(second.id, &decision(a2, false)).await.unwrap();
    assert_eq!(after.status, ApprovalStatus::Rejected);

    let third = Approval { id: ApprovalId::new(), stage: 2, decisions: vec![], ..approval.clone() };
    s.approvals.create_approval(&third).await.unwrap();
    let pending = s.approvals.list_approvals(w.org_id, true, 10).await.unwrap();
    assert_eq!(pending.iter().map(|a| a.id).collect::<Vec<_>>(), vec![third.id]);
    assert!(s.approvals.close_approval(third.id, ApprovalStatus::TimedOut).await.unwrap());
    assert_eq!(s.approvals.list_approvals(w.org_id, false, 10).await.unwrap().len(), 3);
    assert!(s.approvals.find_approval(e.id, "steps[0]", 9).await.unwrap().is_none());
    assert!(matches!(
        s.approvals.get_approval(ApprovalId::new()).await,
        Err(Error::NotFound { .. })
    ));
}

/// Task templates: the document round-trips (with its attached workflow definition), names are
/// unique per organization (not across), updates are optimistic, delete removes.
pub async fn templates_round_trip_with_unique_names(stores: &WorkflowStores) {
    let store = &stores.templates;
    let org = OrgId::new();
    let spec = crate::task_template::TemplateSpec::from_value(
        &json!({
            "task": {"title": "Onboard {{values.name}} «ü»", "priority": "high",
                     "checklist": ["Laptop"], "assignee": "instantiator",
                     "subtasks": [{"title": "Accounts", "assignee": {"users": [UserId::new()]}}]},
            "workflows": [{"scope": "task", "definition": {
                "schema_version": 1, "name": "w", "trigger": {"type": "task_updated"},
                "steps": [{"type": "action", "action": {"type": "comment", "body": "x"}}]}}]
        }),
        &crate::Limits::default(),
    )
    .expect("valid template");
    let t = TaskTemplate {
        id: TaskTemplateId::new(),
        org_id: org,
        project_id: None,
        name: "Onboarding".into(),
        spec,
        created_by: Actor::User(UserId::new()),
        version: 1,
        created_at: at(0),
        updated_at: at(0),
    };
    store.create_template(&t).await.expect("create template");
    assert_eq!(store.get_template(t.id).await.expect("get template"), t);
    let twin = TaskTemplate { id: TaskTemplateId::new(), ..t.clone() };
    assert!(
        matches!(store.create_template(&twin).await, Err(Error::Conflict(_))),
        "a name is unique in its organization"
    );
    let elsewhere = TaskTemplate { id: TaskTemplateId::new(), org_id: OrgId::new(), ..t.clone() };
    store.create_template(&elsewhere).await.expect("same name, other organization");
    let second = TaskTemplate { id: TaskTemplateId::new(), name: "Alpha".into(), ..t.clone() };
    store.create_template(&second).await.expect("second template");
    let names: Vec<_> =
        store.list_templates(org).await.expect("list").into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["Alpha", "Onboarding"], "listed by name, this organization only");

    let renamed = TaskTemplate { name: "Onboarding v2".into(), updated_at: at(5), ..t.clone() };
    let updated = store.update_template(&renamed, 1).await.expect("update");
    assert_eq!(
        (updated.version, updated.name.as_str(), updated.updated_at),
        (2, "Onboarding v2", at(5))
    );
    assert!(matches!(store.update_template(&renamed, 1).await, Err(Error::Conflict(_))), "stale");
    let clash = TaskTemplate { name: "Alpha".into(), ..updated.clone() };
    assert!(
        matches!(store.update_template(&clash, 2).await, Err(Error::Conflict(_))),
        "name taken"
    );
    assert_eq!(store.get_template(t.id).await.expect("unchanged").version, 2);
    let gone = TaskTemplate { id: TaskTemplateId::new(), ..t.clone() };
    assert!(matches!(store.update_template(&gone, 1).await, Err(Error::NotFound { .. })));

    store.delete_template(t.id).await.expect("delete");
    assert!(matches!(store.get_template(t.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.delete_template(t.id).await, Err(Error::NotFound { .. })));
}

/// Execution and timer leases: one owner at a time, renewable by the holder, free for anyone
/// once expired or released; leased timers are not handed to a second owner.
pub async fn leases_are_exclusive_until_they_expire(s: &WorkflowStores) {
    let w = workflow(OrgId::new());
    s.workflows.create_workflow(&w).await.unwrap();
    let e = execution(&w, "event:lease");
    s.executions.create_execution(&e).await.unwrap();
    let ex = &s.executions;
    assert!(ex.lease_execution(e.id, "a", at(0), at(10)).await.unwrap(), "free: granted");
    assert!(!ex.lease_execution(e.id, "b", at(5), at(15)).await.unwrap(), "held by a");
    assert!(ex.lease_execution(e.id, "a", at(5), at(15)).await.unwrap(), "a renews");
    assert!(!ex.lease_execution(e.id, "b", at(14), at(24)).await.unwrap(), "renewed: still a's");
    assert!(ex.lease_execution(e.id, "b", at(16), at(26)).await.unwrap(), "expired: b takes over");
    ex.release_execution(e.id, "a").await.unwrap(); // not a's any more: no effect
    assert!(!ex.lease_execution(e.id, "c", at(17), at(27)).await.unwrap(), "b still holds it");
    ex.release_execution(e.id, "b").await.unwrap();
    assert!(ex.lease_execution(e.id, "c", at(17), at(27)).await.unwrap(), "released: free");

    let wf = WorkflowId::new();
    let timer = |n: i64| Timer {
        id: TimerId::new(),
        key: format!("lease:{wf}:{n}"),
        execution_id: None,
        workflow_id: wf,
        fire_at: at(-1_000_000 + n),
        payload: json!({"kind": "wait"}),
    };
    let (t1, t2) = (timer(1), timer(2));
    s.timers.arm_timer(&t1).await.unwrap();
    s.timers.arm_timer(&t2).await.unwrap();
    let mine = |v: Vec<Timer>| -> Vec<TimerId> {
        v.into_iter().filter(|t| t.workflow_id == wf).map(|t| t.id).collect()
    };
    let a = mine(s.timers.lease_due_timers(at(0), "a", at(10), 10_000).await.unwrap());
    assert_eq!(a, vec![t1.id, t2.id], "due timers leased to a, earliest first");
    let b = mine(s.timers.lease_due_timers(at(5), "b", at(15), 10_000).await.unwrap());
    assert!(b.is_empty(), "leased to a: not handed to b");
    assert!(s.timers.claim_timer(t1.id).await.unwrap());
    let b = mine(s.timers.lease_due_timers(at(11), "b", at(21), 10_000).await.unwrap());
    assert_eq!(b, vec![t2.id], "a's lease expired: b gets the timer a did not claim");
    assert!(s.timers.claim_timer(t2.id).await.unwrap());
}

//! Task templates against real pm-core and workflow stores on one SQLite file: validation that
//! names the path, instantiation of the task tree (placeholders, checklist, assignee rules, due
//! date) with its attached workflow, all-or-nothing on a failure halfway, and the `create_task`
//! action instantiating a template once per step even when its execution is driven again.

use std::collections::{BTreeMap, BTreeSet};

use pm_core::event::{Actor, Origin};
use pm_core::id::UserId;
use pm_core::model::*;
use pm_core::query::{PageRequest, TaskFilter};
use pm_workflows::Error;
use pm_workflows::engine::InstantiateRequest;
use pm_workflows::store::TaskTemplateId;
use serde_json::{Value, json};

use crate::engine::World;

fn field(e: &Error) -> &str {
    match e {
        Error::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other}"),
    }
}

async fn project_tasks(w: &World) -> Vec<Task> {
    w.pm.list_project_tasks(
        &Origin::user(w.ada.id),
        w.project.id,
        &TaskFilter::default(),
        &PageRequest::default(),
    )
    .await
    .unwrap()
    .items
}

fn onboarding(w: &World) -> Value {
    json!({
        "task": {
            "title": "Onboard {{values.name}} ({{project.key}})",
            "description": "Welcome, {{values.name}}.",
            "priority": "high",
            "checklist": ["Laptop for {{values.name}}", "Accounts"],
            "assignee": "instantiator",
            "due_in_days": 7,
            "subtasks": [
                {"title": "Accounts for {{values.name}}", "assignee": "project_lead",
                 "subtasks": [{"title": "VPN", "assignee": {"users": [w.pms[0].id]}}]},
                {"title": "Welcome lunch", "estimate": 2}
            ]
        },
        "workflows": [{
            "scope": "task",
            "definition": {
                "schema_version": 1, "name": "Onboarding done",
                "trigger": {"type": "state_changed", "to": w.done.id},
                "steps": [{"type": "action", "action": {"type": "notify", "to": ["reporter"], "message": "{{task.title}} is done"}}]
            }
        }]
    })
}

#[tokio::test]
async fn templates_are_validated_with_paths() {
    let w = World::new().await;
    let engine = w.engine();
    let by = Actor::User(w.ada.id);
    let bad = |v: Value| {
        let engine = engine.clone();
        let org = w.org.id;
        async move { engine.create_template(org, None, "T", &v, by).await.unwrap_err() }
    };
    let e = bad(json!({"task": {"title": "ok", "subtasks": [{"title": "x", "priority": "hot"}]}}))
        .await;
    assert_eq!(field(&e), "task.subtasks[0].priority");
    let e = bad(json!({"task": {"title": "ok", "checklist": ["a\nb"]}})).await;
    assert_eq!(field(&e), "task.checklist[0]");
    let e = bad(json!({"task": {"title": "ok", "assignee": {"users": []}}})).await;
    assert_eq!(field(&e), "task.assignee.users");
    let e = bad(json!({"task": {"title": "ok"}, "workflows": [{"definition": {
        "schema_version": 1, "name": "w", "trigger": {"type": "state_changed", "to": "nope"}, "steps": []}}]}))
    .await;
    assert!(field(&e).starts_with("workflows[0].definition.trigger"), "{e}");
    let e = bad(json!({"task": {"title": "ok"}, "workflows": [{"scope": "task", "definition": {
        "schema_version": 1, "name": "w", "trigger": {"type": "manual"},
        "steps": [{"type": "action", "action": {"type": "comment", "body": "x"}}]}}]}))
    .await;
    assert_eq!(field(&e), "workflows[0].scope");
    let e = engine
        .create_template(w.org.id, None, " ", &json!({"task": {"title": "ok"}}), by)
        .await
        .unwrap_err();
    assert_eq!(field(&e), "name");

    // Names are unique per organization; updates are optimistic.
    let t = engine.create_template(w.org.id, None, "T", &onboarding(&w), by).await.unwrap();
    let dup = engine.create_template(w.org.id, None, "T", &onboarding(&w), by).await;
    assert!(matches!(dup, Err(Error::Conflict(_))));
    let t2 =
        engine.update_template(t.id, 1, Some(w.project.id), "T v2", &onboarding(&w)).await.unwrap();
    assert_eq!((t2.version, t2.name.as_str(), t2.project_id), (2, "T v2", Some(w.project.id)));
    let stale = engine.update_template(t.id, 1, None, "T v3", &onboarding(&w)).await;
    assert!(matches!(stale, Err(Error::Conflict(_))));
}

#[tokio::test]
async fn instantiation_creates_the_tree_and_its_task_scoped_workflow() {
    let w = World::new().await;
    let engine = w.engine();
    let t = engine
        .create_template(w.org.id, None, "Onboarding", &onboarding(&w), Actor::User(w.ada.id))
        .await
        .unwrap();
    let me = Origin::user(w.pms[1].id);
    let request = |values: BTreeMap<String, String>| InstantiateRequest {
        template: t.id,
        project: w.project.id,
        parent: None,
        values,
        reporter: None,
        source_task: None,
        idempotency_key: None,
    };
    let e = engine.instantiate(&me, request(BTreeMap::new())).await.unwrap_err();
    assert_eq!(field(&e), "values.name", "a placeholder without its value");
    let before = project_tasks(&w).await.len();

    let values = BTreeMap::from([("name".to_string(), "Grace".to_string())]);
    let done = engine.instantiate(&me, request(values)).await.unwrap();
    assert_eq!(done.tasks.len(), 4);
    assert_eq!(project_tasks(&w).await.len(), before + 4);
    let [root, accounts, vpn, lunch] = &done.tasks[..] else { unreachable!() };
    assert_eq!(root.title.as_str(), "Onboard Grace (PM)");
    assert_eq!(
        root.description.as_str(),
        "Welcome, Grace.\n\n- [ ] Laptop for Grace\n- [ ] Accounts\n"
    );
    assert_eq!(root.priority, Priority::High);
    assert_eq!(root.assignees, BTreeSet::from([w.pms[1].id]), "the instantiator");
    assert_eq!(root.reporter, w.pms[1].id);
    assert_eq!(root.due_date, Some(pm_core::model::now().date() + time::Duration::days(7)));
    assert_eq!(
        (accounts.parent_id, accounts.assignees.clone()),
        (Some(root.id), BTreeSet::from([w.ada.id]))
    );
    assert_eq!(
        (vpn.parent_id, vpn.assignees.clone()),
        (Some(accounts.id), BTreeSet::from([w.pms[0].id]))
    );
    assert_eq!((lunch.parent_id, lunch.estimate), (Some(root.id), Some(2)));

    // The attached workflow reacts to the instantiated task only.
    assert_eq!(done.workflows.len(), 1);
    assert_eq!(done.workflows[0].project_id, Some(w.project.id));
    for task in [&w.task, root] {
        let now = w.pm.stores().tasks.get_task(task.id).await.unwrap();
        let patch = TaskPatch { state_id: Some(w.done.id), ..TaskPatch::default() };
        w.pm.update_task(&Origin::user(w.ada.id), now.id, now.version, patch).await.unwrap();
    }
    w.settle(&engine).await;
    let notes = w.notifier.sent.lock().unwrap().clone();
    assert_eq!(notes, vec![(vec![w.pms[1].id], "Onboard Grace (PM) is done".to_string())]);

    // The parent must be a task of the target project; the template must exist.
    let other = engine
        .create_template(
            w.org.id,
            None,
            "Bound",
            &json!({"task": {"title": "x"}}),
            Actor::User(w.ada.id),
        )
        .await
        .unwrap();
    let mut req = request(BTreeMap::new());
    req.template = other.id;
    req.parent = Some(pm_core::id::TaskId::new());
    assert_eq!(field(&engine.instantiate(&me, req).await.unwrap_err()), "parent_task_id");
    let mut req = request(BTreeMap::new());
    req.template = TaskTemplateId::new();
    assert!(matches!(engine.instantiate(&me, req).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_failure_halfway_leaves_nothing() {
    let w = World::new().await;
    let engine = w.engine();
    let stranger = UserId::new(); // not a member: pm-core refuses the third task
    let doc = json!({
        "task": {"title": "Release {{values.v}}", "subtasks": [
            {"title": "Changelog"},
            {"title": "Announce", "assignee": {"users": [stranger]}}
        ]},
        "workflows": [{"definition": {
            "schema_version": 1, "name": "w", "trigger": {"type": "task_updated"},
            "steps": [{"type": "action", "action": {"type": "comment", "body": "x"}}]}}]
    });
    let t = engine
        .create_template(w.org.id, None, "Release", &doc, Actor::User(w.ada.id))
        .await
        .unwrap();
    let before = project_tasks(&w).await;
    let workflows_before = w.stores.workflows.list_workflows(w.org.id).await.unwrap().len();
    let e = engine
        .instantiate(
            &Origin::user(w.ada.id),
            InstantiateRequest {
                template: t.id,
                project: w.project.id,
                parent: None,
                values: BTreeMap::from([("v".to_string(), "1.0".to_string())]),
                reporter: None,
                source_task: None,
                idempotency_key: None,
            },
        )
        .await
        .unwrap_err();
    assert!(field(&e).starts_with("task.subtasks[1]."), "{e}");
    assert_eq!(project_tasks(&w).await, before, "the first two tasks were removed again");
    assert_eq!(w.stores.workflows.list_workflows(w.org.id).await.unwrap().len(), workflows_before);
}

#[tokio::test]
async fn the_create_task_action_instantiates_once() {
    let w = World::new().await;
    let engine = w.engine();
    let t = engine
        .create_template(
            w.org.id,
            None,
            "Review follow-up",
            &json!({"task": {"title": "Follow up on {{task.reference}}", "assignee": "project_lead",
                             "subtasks": [{"title": "Notes for {{parent.reference}}"}]}}),
            Actor::User(w.ada.id),
        )
        .await
        .unwrap();
    w.workflow(
        &engine,
        json!({
            "schema_version": 1, "name": "follow up",
            "trigger": {"type": "state_changed", "to": w.review.id},
            "steps": [{"type": "action", "id": "make", "action": {"type": "create_task", "template": t.id.0, "as_subtask": true}}]
        }),
    )
    .await;
    let before = project_tasks(&w).await.len();
    w.move_task(&w.review).await;
    w.settle(&engine).await;
    let tasks = project_tasks(&w).await;
    assert_eq!(tasks.len(), before + 2);
    let follow = tasks.iter().find(|t| t.title.as_str().starts_with("Follow up")).unwrap();
    assert_eq!(follow.title.as_str(), format!("Follow up on {}", w.task.reference));
    assert_eq!(follow.parent_id, Some(w.task.id));
    assert_eq!(follow.reporter, w.task.reporter);
    assert_eq!(follow.assignees, BTreeSet::from([w.ada.id]), "the project lead");
    let exec = &w.executions().await[0];
    assert_eq!(exec.status, pm_workflows::store::ExecutionStatus::Succeeded, "{:?}", exec.error);
    let steps = w.stores.executions.list_steps(exec.id).await.unwrap();
    assert_eq!(steps[0].output["task_id"], json!(follow.id));

    // The same step instantiated again (a retry after a crash between "created" and
    // "recorded") finds the tasks the first attempt made instead of duplicating them.
    let again = engine
        .instantiate(
            &Origin::system(),
            InstantiateRequest {
                template: t.id,
                project: w.project.id,
                parent: Some(w.task.id),
                values: BTreeMap::new(),
                reporter: Some(w.task.reporter),
                source_task: Some(w.task_now().await),
                idempotency_key: Some(format!("{}:{}", exec.id, steps[0].key)),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.tasks[0].id, follow.id);
    assert_eq!(project_tasks(&w).await.len(), before + 2);
}

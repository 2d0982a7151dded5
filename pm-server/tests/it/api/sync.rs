//! Offline sync (`POST /api/v1/sync`, `GET /api/v1/sync/changes`; protocol in
//! `docs/sync-protocol.md`) against a real server whose op-result table lives in the same
//! database: SQLite always, PostgreSQL too when `PM_TEST_POSTGRES_URL` is set.

use pm_core::event::Origin;
use pm_core::id::{CommentId, ProjectId, TaskId};
use pm_core::model::{TaskTitle, comment_body};
use pm_core::service::CreateTask;
use pm_server::AppState;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

use super::{Server, TEST_SECRET, org_and_project};

/// A server over `url` (every table migrated, the PWA tables included) whose files live in `dir`.
async fn server_on(url: &str, dir: TempDir) -> Server {
    server_with(url, dir, |_| {}).await
}

/// [`server_on`] with the state adjusted by `configure` first.
pub(super) async fn server_with(
    url: &str,
    dir: TempDir,
    configure: impl FnOnce(&mut AppState),
) -> Server {
    let stores = pm_core::store::open(url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let permissions = pm_server::authz::open_permissions(url).await.unwrap();
    let pwa = pm_server::pwa::store::open(url).await.unwrap();
    pwa.migrate().await.unwrap();
    let blobs = std::sync::Arc::new(pm_core::blob::FsBlobStore::new(dir.path().join("blobs")));
    let mut state = AppState::with(stores, permissions, TEST_SECRET, blobs).with_pwa(pwa);
    configure(&mut state);
    Server::serve_state(state, dir).await
}

async fn sqlite_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    server_on(&url, dir).await
}

/// A server on a fresh PostgreSQL database, or `None` (with a skip line) without one.
async fn postgres_server(test: &str) -> Option<Server> {
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        use std::io::Write;
        let _ =
            writeln!(std::io::stderr(), "SKIPPED {test} on PostgreSQL: PM_TEST_POSTGRES_URL unset");
        return None;
    };
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect(&base).await.expect("connect to PM_TEST_POSTGRES_URL");
    let (prefix, current) = base.rsplit_once('/').expect("database URL has a path");
    let current = current.split('?').next().unwrap_or(current);
    let name = format!("{current}_{}", Uuid::now_v7().simple());
    // The name is ours (database name + hex), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(server_on(&format!("{prefix}/{name}"), tempfile::tempdir().unwrap()).await)
}

async fn sync(s: &Server, token: &str, ops: Value) -> Vec<Value> {
    let res = s.call(Method::POST, "/api/v1/sync", Some(token), Some(json!({ "ops": ops }))).await;
    res.ok(200)["results"].as_array().unwrap().clone()
}

async fn get(s: &Server, token: &str, path: &str) -> Value {
    s.call(Method::GET, path, Some(token), None).await.ok(200).clone()
}

fn id() -> String {
    Uuid::now_v7().to_string()
}

async fn task_count(s: &Server, token: &str, project: &str) -> usize {
    let page = get(s, token, &format!("/api/v1/projects/{project}/tasks?limit=100")).await;
    page["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn create_is_exactly_once_on_sqlite() {
    create_is_exactly_once(&sqlite_server().await).await;
}

#[tokio::test]
async fn create_is_exactly_once_on_postgres() {
    if let Some(s) = postgres_server("create_is_exactly_once").await {
        create_is_exactly_once(&s).await;
    }
}

/// A create replayed by op id is answered from the record; a create applied but never recorded
/// (the server died in between) is recognised by its client-chosen id; a taken id with other
/// content is refused.
async fn create_is_exactly_once(s: &Server) {
    let (user, token) = s.user("offline@example.com").await;
    let (_, project, _) = org_and_project(s, &token, "offline", "OFF").await;
    let (op, task) = (id(), id());
    let create = json!([{ "op_id": op, "kind": "task.create", "project_id": project, "task_id": task,
        "data": { "title": "Written on the train", "priority": "high", "due_date": "2030-01-31" } }]);
    let first = sync(s, &token, create.clone()).await;
    assert_eq!(first[0]["status"], "applied", "{first:?}");
    assert_eq!(first[0]["op_id"], op.as_str());
    assert_eq!(first[0]["task"]["id"], task.as_str());
    assert_eq!(first[0]["task"]["priority"], "high");
    assert!(first[0].get("replayed").is_none());
    let again = sync(s, &token, create).await;
    assert_eq!(again[0]["replayed"], true);
    assert_eq!(again[0]["task"], first[0]["task"], "the first result, unchanged");
    assert_eq!(task_count(s, &token, &project).await, 1);

    // Applied, then the server died before recording: the client's retry finds its own task.
    let lost = Uuid::now_v7();
    let mut input =
        CreateTask::new(ProjectId(project.parse().unwrap()), TaskTitle::parse("Lost ack").unwrap());
    input.id = Some(TaskId(lost));
    s.state.pm.create_task(&Origin::user(user), input).await.unwrap();
    let retry = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.create", "project_id": project,
        "task_id": lost, "data": { "title": "Lost ack" } }]),
    )
    .await;
    assert_eq!(retry[0]["status"], "applied", "{retry:?}");
    assert_eq!(retry[0]["task"]["id"], lost.to_string());
    assert_eq!(task_count(s, &token, &project).await, 2);
    // The same id with other content is not that create.
    let clash = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.create", "project_id": project,
        "task_id": lost, "data": { "title": "Something else" } }]),
    )
    .await;
    assert_eq!(clash[0]["status"], "rejected");
    assert_eq!(clash[0]["error"]["status"], 409);
    assert_eq!(clash[0]["error"]["field"], "ops[0].task_id");
    // Another user's replay of the same id is not it either.
    let (other_id, other) = s.user("colleague@example.com").await;
    let org = get(s, &token, &format!("/api/v1/projects/{project}")).await["org_id"].clone();
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{}/members/{}", org.as_str().unwrap(), other_id.0),
        Some(&token),
        Some(json!({ "role": "member" })),
    )
    .await
    .ok(200);
    let foreign = sync(
        s,
        &other,
        json!([{ "op_id": id(), "kind": "task.create", "project_id": project,
        "task_id": lost, "data": { "title": "Lost ack" } }]),
    )
    .await;
    assert_eq!(foreign[0]["error"]["status"], 409, "{foreign:?}");
    assert_eq!(task_count(s, &token, &project).await, 2);

    // Comments: same story with the client's comment id.
    let comment = Uuid::now_v7();
    s.state
        .pm
        .add_comment_with_id(
            &Origin::user(user),
            TaskId(task.parse().unwrap()),
            CommentId(comment),
            comment_body("seen offline").unwrap(),
        )
        .await
        .unwrap();
    let op = id();
    let c = json!([{ "op_id": op, "kind": "comment.create", "task_id": task, "comment_id": comment,
        "data": { "body": "seen offline" } }]);
    let r = sync(s, &token, c.clone()).await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    assert_eq!(r[0]["comment"]["id"], comment.to_string());
    assert_eq!(sync(s, &token, c).await[0]["replayed"], true);
    let comments = get(s, &token, &format!("/api/v1/tasks/{task}/comments")).await;
    assert_eq!(comments.as_array().unwrap().len(), 1);

    // Check-ins default their id to the op id: a replayed one is recorded once.
    let op = id();
    let check_in = json!([{ "op_id": op, "kind": "checkin.create", "task_id": task,
        "data": { "lat": 48.2082, "lon": 16.3738, "accuracy_m": 12.5 } }]);
    let r = sync(s, &token, check_in.clone()).await;
    assert_eq!(r[0]["check_in"]["id"], op.as_str(), "{r:?}");
    assert_eq!(sync(s, &token, check_in).await[0]["replayed"], true);
    let all = get(s, &token, &format!("/api/v1/tasks/{task}/check-ins")).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn stale_updates_rebase_or_conflict_on_sqlite() {
    stale_updates_rebase_or_conflict(&sqlite_server().await).await;
}

#[tokio::test]
async fn stale_updates_rebase_or_conflict_on_postgres() {
    if let Some(s) = postgres_server("stale_updates_rebase_or_conflict").await {
        stale_updates_rebase_or_conflict(&s).await;
    }
}

async fn stale_updates_rebase_or_conflict(s: &Server) {
    let (_, token) = s.user("editor@example.com").await;
    let (_, project, states) = org_and_project(s, &token, "edits", "EDT").await;
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({ "title": "Original", "description": "d" })),
        )
        .await;
    let task = created.ok(201)["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/tasks/{task}");
    // Someone else renames it while the client is offline: version 2.
    s.call(Method::PATCH, &path, Some(&token), Some(json!({ "version": 1, "title": "Theirs" })))
        .await
        .ok(200);

    // Up to date: applies as is.
    let done = state_id(&states, 2);
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.update", "task_id": task,
        "base_version": 2, "base": {}, "changes": { "description": "fresh" } }]),
    )
    .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    assert!(r[0].get("rebased").is_none());
    assert_eq!(r[0]["task"]["version"], 3);

    // Stale on another field: a clean rebase.
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.update", "task_id": task,
        "base_version": 1, "base": { "priority": "none", "state_id": state_id(&states, 1) },
        "changes": { "priority": "urgent", "state_id": done } }]),
    )
    .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    assert_eq!(r[0]["rebased"], true);
    assert_eq!(r[0]["task"]["title"], "Theirs", "the other change is kept");
    assert_eq!(r[0]["task"]["priority"], "urgent");
    assert_eq!(r[0]["task"]["state_id"], done.as_str());
    let version = r[0]["task"]["version"].as_i64().unwrap();

    // Stale on the same field: a conflict naming base, mine and theirs, and nothing applied.
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.update", "task_id": task,
        "base_version": 1, "base": { "title": "Original", "estimate": null },
        "changes": { "title": "Mine", "estimate": 5 } }]),
    )
    .await;
    assert_eq!(r[0]["status"], "conflict", "{r:?}");
    assert_eq!(
        r[0]["conflicts"],
        json!([{ "field": "title", "base": "Original", "mine": "Mine", "theirs": "Theirs" }])
    );
    assert_eq!(r[0]["current"]["version"], version);
    let now = get(s, &token, &path).await;
    assert_eq!((now["title"].as_str(), now["estimate"].as_i64()), (Some("Theirs"), None));
    assert_eq!(now["version"], version, "a conflicting op applies nothing");

    // The user resolves: a new op on the current version.
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.update", "task_id": task,
        "base_version": version, "base": { "title": "Theirs" }, "changes": { "title": "Mine" } }]),
    )
    .await;
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["task"]["title"].as_str()),
        (Some("applied"), Some("Mine"))
    );

    // A stale op whose value the server already has (e.g. re-sent after a lost answer) applies
    // and changes nothing.
    let before = get(s, &token, &path).await;
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.update", "task_id": task,
        "base_version": 1, "base": { "title": "Original" }, "changes": { "title": "Mine" } }]),
    )
    .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    assert_eq!(get(s, &token, &path).await["version"], before["version"]);

    // Delete on a stale version conflicts; on the current one it deletes, and a replay of the
    // delete after a lost record is still `applied`.
    let current = before["version"].as_i64().unwrap();
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.delete", "task_id": task, "base_version": 1 }]),
    )
    .await;
    assert_eq!(r[0]["status"], "conflict");
    assert_eq!(r[0]["conflicts"][0]["field"], "version");
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.delete", "task_id": task, "base_version": current }]),
    )
    .await;
    assert_eq!((r[0]["status"].as_str(), &r[0]["task"]), (Some("applied"), &Value::Null));
    let r = sync(
        s,
        &token,
        json!([{ "op_id": id(), "kind": "task.delete", "task_id": task, "base_version": current }]),
    )
    .await;
    assert_eq!(r[0]["status"], "applied", "{r:?}");
    s.call(Method::GET, &path, Some(&token), None).await.problem(404);
}

fn state_id(states: &[Value], i: usize) -> String {
    states[i]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_bad_op_is_rejected_alone_naming_its_field() {
    let s = sqlite_server().await;
    let (_, token) = s.user("batch@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "batch", "BAT").await;
    let task = id();
    let r = sync(
        &s,
        &token,
        json!([
            { "op_id": id(), "kind": "task.create", "project_id": project, "task_id": task, "data": { "title": "ok" } },
            { "op_id": id(), "kind": "task.update", "task_id": task, "base_version": 1, "changes": { "priority": "whenever" } },
            { "op_id": id(), "kind": "task.create", "project_id": project, "task_id": id(), "data": { "title": "   " } },
            { "op_id": id(), "kind": "task.update", "task_id": task, "base_version": 1, "changes": { "version": 1 } },
            { "op_id": id(), "kind": "task.teleport", "task_id": task },
            { "kind": "task.delete", "task_id": task, "base_version": 1 },
            { "op_id": id(), "kind": "comment.create", "task_id": task, "comment_id": id(), "data": { "body": "" } },
            { "op_id": id(), "kind": "checkin.create", "task_id": task, "data": { "lat": 91, "lon": 0, "accuracy_m": 1 } },
            { "op_id": id(), "kind": "task.update", "task_id": task, "base_version": 1, "changes": { "priority": "low" }, "colour": "red" },
            { "op_id": id(), "kind": "task.update", "task_id": id(), "base_version": 1, "changes": { "priority": "low" } },
            { "op_id": id(), "kind": "task.update", "task_id": task, "base_version": 1, "changes": { "priority": "high" } }
        ]),
    )
    .await;
    let fields: Vec<(&str, &str)> = r
        .iter()
        .map(|r| (r["status"].as_str().unwrap(), r["error"]["field"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("applied", ""),
            ("rejected", "ops[1].changes.priority"),
            ("rejected", "ops[2].data.title"),
            ("rejected", "ops[3].changes.version"),
            ("rejected", "ops[4].kind"),
            ("rejected", "ops[5].op_id"),
            ("rejected", "ops[6].data.body"),
            ("rejected", "ops[7].data.lat"),
            ("rejected", "ops[8].colour"),
            ("rejected", "ops[9].task_id"),
            ("applied", ""),
        ],
        "{r:#?}"
    );
    assert_eq!(r[1]["error"]["status"], 400);
    assert!(
        r[1]["error"]["detail"].as_str().unwrap().contains("ops[1].changes.priority"),
        "{}",
        r[1]
    );
    assert!(r[8]["error"]["detail"].as_str().unwrap().contains("colour"), "{}", r[8]);
    assert_eq!(r[9]["error"]["status"], 404);
    assert_eq!(r[10]["task"]["priority"], "high");
    assert_eq!(task_count(&s, &token, &project).await, 1);
}

#[tokio::test]
async fn ops_are_authorized_like_their_rest_calls() {
    let s = sqlite_server().await;
    let (_, owner) = s.user("owner@example.com").await;
    let (org, project, _) = org_and_project(&s, &owner, "guarded", "GRD").await;
    let (guest_id, guest) = s.user("guest@example.com").await;
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", guest_id.0),
        Some(&owner),
        Some(json!({ "role": "guest" })),
    )
    .await
    .ok(200);
    let (_, outsider) = s.user("outsider@example.com").await;
    let create = || {
        json!([{ "op_id": id(), "kind": "task.create", "project_id": project,
        "task_id": id(), "data": { "title": "not mine to add" } }])
    };
    let r = sync(&s, &guest, create()).await;
    assert_eq!(r[0]["status"], "rejected", "{r:?}");
    assert_eq!(r[0]["error"]["status"], 403);
    assert_eq!(r[0]["error"]["type"], "/problems/forbidden");
    // Someone who cannot even see the project learns nothing about it.
    let r = sync(&s, &outsider, create()).await;
    assert_eq!(r[0]["error"]["status"], 404);
    assert_eq!(r[0]["error"]["field"], "ops[0].project_id");
    assert_eq!(task_count(&s, &owner, &project).await, 0);
    // A read-scoped token may not sync at all.
    let (read, _) = s.state.auth.keys.issue(guest_id, pm_server::auth::Scope::Read).unwrap();
    s.call(Method::POST, "/api/v1/sync", Some(&read), Some(json!({ "ops": create() })))
        .await
        .problem(403);
}

#[tokio::test]
async fn a_malformed_envelope_is_refused_whole() {
    let s = sqlite_server().await;
    let (_, token) = s.user("envelope@example.com").await;
    let t = Some(token.as_str());
    let raw = s
        .http
        .post(format!("{}/api/v1/sync", s.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"ops\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(super::to_res(raw).await.problem(400)["type"], "/problems/malformed-json");
    s.call(Method::POST, "/api/v1/sync", t, Some(json!([1]))).await.problem(400);
    for body in [json!({}), json!({ "ops": "all of them" }), json!({ "ops": [] })] {
        let r = s.call(Method::POST, "/api/v1/sync", t, Some(body.clone())).await;
        assert_eq!(
            r.problem(400)["field"].as_str().map(|f| f.starts_with("ops") || f == "body"),
            Some(true),
            "{body}: {}",
            r.body
        );
    }
    let many: Vec<Value> =
        (0..101).map(|_| json!({ "op_id": id(), "kind": "task.delete" })).collect();
    let r = s.call(Method::POST, "/api/v1/sync", t, Some(json!({ "ops": many }))).await;
    assert_eq!(r.problem(400)["field"], "ops");
    let r = s.call(Method::POST, "/api/v1/sync", t, Some(json!({ "ops": [], "extra": 1 }))).await;
    r.problem(400);
}

#[tokio::test]
async fn the_changes_feed_pages_and_shows_only_what_the_caller_may_read() {
    let s = sqlite_server().await;
    let (_, alice) = s.user("alice@feed.example").await;
    let (_, bob) = s.user("bob@feed.example").await;
    let (_, mine, _) = org_and_project(&s, &alice, "alices", "ALI").await;
    let (_, theirs, _) = org_and_project(&s, &bob, "bobs", "BOB").await;
    let start = get(&s, &alice, "/api/v1/sync/changes").await;
    let since = start["next_since"].as_i64().unwrap();
    assert_eq!(start["has_more"], false);

    let mut ops = Vec::new();
    let mut alice_tasks = Vec::new();
    for n in 0..3 {
        let task = id();
        alice_tasks.push(task.clone());
        ops.push(json!({ "op_id": id(), "kind": "task.create", "project_id": mine, "task_id": task, "data": { "title": format!("A{n}") } }));
    }
    ops.push(json!({ "op_id": id(), "kind": "comment.create", "task_id": alice_tasks[0], "comment_id": id(), "data": { "body": "hi" } }));
    ops.push(json!({ "op_id": id(), "kind": "task.delete", "task_id": alice_tasks[2], "base_version": 1 }));
    assert!(sync(&s, &alice, json!(ops)).await.iter().all(|r| r["status"] == "applied"));
    let bobs: Vec<Value> = (0..2)
        .map(|n| json!({ "op_id": id(), "kind": "task.create", "project_id": theirs, "task_id": id(), "data": { "title": format!("B{n}") } }))
        .collect();
    assert!(sync(&s, &bob, json!(bobs)).await.iter().all(|r| r["status"] == "applied"));

    // Alice pages through two at a time.
    let mut seen = Vec::new();
    let mut cursor = since;
    let mut pages = 0;
    loop {
        let page = get(&s, &alice, &format!("/api/v1/sync/changes?since={cursor}&limit=2")).await;
        pages += 1;
        let changes = page["changes"].as_array().unwrap();
        assert!(changes.len() <= 2);
        seen.extend(changes.iter().cloned());
        let next = page["next_since"].as_i64().unwrap();
        assert!(next >= cursor);
        cursor = next;
        if page["has_more"] == false {
            break;
        }
        assert!(pages < 20, "the feed must end");
    }
    let kinds: Vec<&str> = seen.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec!["task.created", "task.created", "task.created", "comment.created", "task.deleted"],
        "{seen:#?}"
    );
    assert!(seen.iter().all(|c| alice_tasks.contains(&c["task_id"].as_str().unwrap().to_string())));
    assert!(seen.iter().all(|c| c["project_id"] == mine.as_str()));
    let seqs: Vec<i64> = seen.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // The current task, or null once deleted.
    assert_eq!(seen[0]["task"]["title"], "A0");
    assert_eq!(seen[2]["task"], Value::Null);
    assert_eq!(seen[4]["task"], Value::Null);
    assert_eq!(seen[3]["task"]["id"], alice_tasks[0].as_str());

    // Bob sees only his own.
    let bob_view = get(&s, &bob, &format!("/api/v1/sync/changes?since={since}")).await;
    let bob_changes = bob_view["changes"].as_array().unwrap();
    assert_eq!(bob_changes.len(), 2);
    assert!(bob_changes.iter().all(|c| c["project_id"] == theirs.as_str()));
    // Caught up: nothing more.
    let caught_up = get(&s, &alice, &format!("/api/v1/sync/changes?since={cursor}")).await;
    assert_eq!(caught_up["changes"], json!([]));
    assert_eq!(caught_up["has_more"], false);

    for (query, field) in [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
    ] {
        let r =
            s.call(Method::GET, &format!("/api/v1/sync/changes?{query}"), Some(&alice), None).await;
        assert_eq!(r.problem(400)["field"], field, "{query}");
    }
}

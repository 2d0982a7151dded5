//! The resources end to end: an organization, a project, 250 tasks, filters, complete paging,
//! and the satellites of a task.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use super::{Server, org_and_project};

const PRIORITIES: [&str; 3] = ["none", "low", "high"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_filter_and_page_through_250_tasks() {
    let s = Server::start().await;
    let (me, token) = s.user("ada@example.com").await;
    let t = Some(token.as_str());
    let (org, project, states) = org_and_project(&s, &token, "acme", "PM").await;
    let started = states.iter().find(|st| st["category"] == "started").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let label = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/labels"),
            t,
            Some(json!({"name": "bug", "color": "#FF0000"})),
        )
        .await;
    let label = label.ok(201)["id"].as_str().unwrap().to_string();

    let mut created = Vec::new();
    for i in 0..250 {
        let mut body = json!({"title": format!("Task {i}"), "priority": PRIORITIES[i % 3]});
        if i % 5 == 0 {
            body["state_id"] = json!(started);
            body["labels"] = json!([label]);
        }
        if i % 7 == 0 {
            body["assignees"] = json!([me.0]);
            body["due_date"] = json!(format!("2030-01-{:02}", i % 28 + 1));
        }
        let res =
            s.call(Method::POST, &format!("/api/v1/projects/{project}/tasks"), t, Some(body)).await;
        let task = res.ok(201);
        assert_eq!(task["reference"], format!("PM-{}", i + 1));
        assert_eq!(res.header("etag"), Some("\"v1\""));
        created.push(task["id"].as_str().unwrap().to_string());
    }

    // Page through everything with a small page size: no duplicate, no gap, in creation order.
    let mut seen = Vec::new();
    let mut url = format!("/api/v1/projects/{project}/tasks?limit=17");
    let mut pages = 0;
    loop {
        let res = s.call(Method::GET, &url, t, None).await;
        let page = res.ok(200);
        seen.extend(
            page["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => {
                let link = res.header("link").expect("a Link header on every page but the last");
                assert!(link.contains("rel=\"next\"") && link.contains("limit=17"), "{link}");
                url = format!("/api/v1/projects/{project}/tasks?limit=17&cursor={c}");
            }
            None => {
                assert!(res.header("link").is_none());
                break;
            }
        }
    }
    assert_eq!(pages, 250usize.div_ceil(17));
    assert_eq!(seen, created, "paging returns every task once, in order");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 250);

    // Filters, alone and combined, org-wide and per project.
    let count = |q: String| {
        let s = &s;
        async move {
            let res = s.call(Method::GET, &q, t, None).await;
            res.ok(200)["items"].as_array().unwrap().len()
        }
    };
    let base = format!("/api/v1/projects/{project}/tasks?limit=100");
    assert_eq!(count(format!("{base}&state={started}")).await, 50);
    assert_eq!(count(format!("{base}&state_category=started")).await, 50);
    assert_eq!(count(format!("{base}&label={label}")).await, 50);
    assert_eq!(count(format!("{base}&assignee=me")).await, 36);
    assert_eq!(count(format!("{base}&assignee=me&label={label}")).await, 8);
    assert_eq!(count(format!("{base}&priority=high")).await, 83);
    assert_eq!(count(format!("{base}&priority=high,low")).await, 100);
    assert_eq!(count(format!("{base}&due_from=2030-01-08&due_to=2030-01-15")).await, 18);
    assert_eq!(count(format!("{base}&q=task%20249")).await, 1);
    assert_eq!(count(format!("/api/v1/orgs/{org}/tasks?limit=100&project={project}&priority=none&state_category=started")).await, 17);
    let sorted = s.call(Method::GET, &format!("{base}&sort=-due&assignee=me"), t, None).await;
    let dues: Vec<String> = sorted.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["due_date"].as_str().unwrap().to_string())
        .collect();
    assert!(dues.windows(2).all(|w| w[0] >= w[1]), "{dues:?}");
}

#[tokio::test]
async fn a_task_and_its_satellites() {
    let s = Server::start().await;
    let (me, token) = s.user("sat@example.com").await;
    let t = Some(token.as_str());
    let (_, project, states) = org_and_project(&s, &token, "sat", "SAT").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "Parent"})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_string();
    let child = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "Child", "parent_id": task})),
        )
        .await;
    let child = child.ok(201)["id"].as_str().unwrap().to_string();
    let subtasks = s
        .call(Method::GET, &format!("/api/v1/projects/{project}/tasks?parent={task}"), t, None)
        .await;
    assert_eq!(subtasks.ok(200)["items"][0]["id"], child.as_str());

    // Relations, with cycle rejection naming the field.
    s.call(
        Method::POST,
        &format!("/api/v1/tasks/{task}/relations"),
        t,
        Some(json!({"to_task": child, "kind": "blocks"})),
    )
    .await
    .ok(201);
    let cycle = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{child}/relations"),
            t,
            Some(json!({"to_task": task, "kind": "blocks"})),
        )
        .await;
    assert_eq!(cycle.problem(400)["field"], "to_task");
    assert_eq!(
        s.call(Method::GET, &format!("/api/v1/tasks/{child}/relations"), t, None)
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.call(Method::DELETE, &format!("/api/v1/tasks/{task}/relations/blocks/{child}"), t, None)
        .await
        .ok(204);

    // Watchers, comments, time, check-ins, transitions and the activity feed.
    s.call(Method::PUT, &format!("/api/v1/tasks/{task}/watchers/{}", me.0), t, None).await.ok(200);
    let c = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/comments"),
            t,
            Some(json!({"body": "Looks good"})),
        )
        .await;
    let comment = c.ok(201)["id"].as_str().unwrap().to_string();
    s.call_with(
        Method::PATCH,
        &format!("/api/v1/comments/{comment}"),
        t,
        Some(json!({"body": "Looks great"})),
        &[("if-match", "\"v1\"")],
    )
    .await
    .ok(200);
    s.call(
        Method::POST,
        &format!("/api/v1/tasks/{task}/time-entries"),
        t,
        Some(json!({"minutes": 45, "spent_on": "2030-01-02"})),
    )
    .await
    .ok(201);
    let bad_time = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/time-entries"),
            t,
            Some(json!({"minutes": 0, "spent_on": "2030-01-02"})),
        )
        .await;
    assert_eq!(bad_time.problem(400)["field"], "minutes");
    s.call(
        Method::POST,
        &format!("/api/v1/tasks/{task}/check-ins"),
        t,
        Some(json!({"lat": 52.5, "lon": 13.4, "accuracy_m": 10.0})),
    )
    .await
    .ok(201);
    let bad_ci = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/check-ins"),
            t,
            Some(json!({"lat": 95.0, "lon": 13.4, "accuracy_m": 10.0})),
        )
        .await;
    assert_eq!(bad_ci.problem(400)["field"], "lat");
    let done = states.iter().find(|st| st["category"] == "completed").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let moved = s
        .call_with(
            Method::POST,
            &format!("/api/v1/tasks/{task}/transition"),
            t,
            Some(json!({"state_id": done})),
            &[("if-match", "\"v1\"")],
        )
        .await;
    assert_eq!(moved.ok(200)["state_id"], done.as_str());
    let feed =
        s.call(Method::GET, &format!("/api/v1/tasks/{task}/activity?limit=3"), t, None).await;
    let feed = feed.ok(200);
    assert_eq!(feed["items"][0]["kind"], "task.updated");
    assert_eq!(feed["items"].as_array().unwrap().len(), 3);
    let before = feed["next_before"].as_i64().unwrap();
    let older = s
        .call(Method::GET, &format!("/api/v1/tasks/{task}/activity?before={before}"), t, None)
        .await;
    assert!(
        older.ok(200)["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["seq"].as_i64().unwrap() < before)
    );
    let project_feed =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/activity"), t, None).await;
    assert!(project_feed.ok(200)["items"].as_array().unwrap().len() >= 8);

    // Attachments: multipart upload, download, delete.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"hello file".to_vec())
            .file_name("notes.txt")
            .mime_str("text/plain")
            .unwrap(),
    );
    let up = s
        .http
        .post(format!("{}/api/v1/tasks/{task}/attachments", s.base))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let up = super::to_res(up).await;
    let att = up.ok(201)["id"].as_str().unwrap().to_string();
    assert_eq!(up.body["size"], 10);
    let down = s
        .http
        .get(format!("{}/api/v1/tasks/{task}/attachments/{att}", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(down.headers()["content-type"], "text/plain");
    assert!(down.headers()["content-disposition"].to_str().unwrap().contains("notes.txt"));
    assert_eq!(down.bytes().await.unwrap().as_ref(), b"hello file");
    s.call(Method::DELETE, &format!("/api/v1/tasks/{task}/attachments/{att}"), t, None)
        .await
        .ok(204);
    s.call(Method::GET, &format!("/api/v1/tasks/{task}/attachments/{att}"), t, None)
        .await
        .problem(404);
}

#[tokio::test]
async fn tenants_are_isolated() {
    let s = Server::start().await;
    let (_, alice) = s.user("alice@example.com").await;
    let (bob_id, bob) = s.user("bob@example.com").await;
    let (org, project, _) = org_and_project(&s, &alice, "alice-co", "AL").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&alice),
            Some(json!({"title": "secret"})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_string();
    // Bob is not a member: he sees nothing, and cannot tell what exists.
    s.call(Method::GET, &format!("/api/v1/tasks/{task}"), Some(&bob), None).await.problem(404);
    s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks"), Some(&bob), None)
        .await
        .problem(404);
    s.call(Method::GET, &format!("/api/v1/orgs/{org}/tasks"), Some(&bob), None).await.problem(404);
    let write = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&bob),
            Some(json!({"title": "x"})),
        )
        .await;
    assert!(matches!(write.status.as_u16(), 403 | 404), "{:?}", write);
    // Once a guest, Bob reads but cannot write.
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", bob_id.0),
        Some(&alice),
        Some(json!({"role": "guest"})),
    )
    .await
    .ok(200);
    s.call(Method::GET, &format!("/api/v1/tasks/{task}"), Some(&bob), None).await.ok(200);
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/tasks"),
        Some(&bob),
        Some(json!({"title": "x"})),
    )
    .await
    .problem(403);
    // And only owners/admins manage members.
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", bob_id.0),
        Some(&bob),
        Some(json!({"role": "owner"})),
    )
    .await
    .problem(403);
}

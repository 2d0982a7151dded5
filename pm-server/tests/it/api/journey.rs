//! The acceptance journey, all over HTTP against a real server: register, log in, create an
//! organization, a project and 250 tasks, filter, page through all of them, rotate a refresh
//! token and detect its reuse, enforce API-token scopes, and replay an idempotent POST.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use super::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_work_and_tokens() {
    let s = Server::start().await;
    // Register and log in.
    let reg = s
        .call(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"email": "grace@example.com", "display_name": "Grace", "password": "correct horse battery"})),
        )
        .await;
    reg.ok(201);
    let bad = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "grace@example.com", "password": "wrong password!"})),
        )
        .await;
    bad.problem(401);
    let login = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "grace@example.com", "password": "correct horse battery"})),
        )
        .await;
    let pair = login.ok(200).clone();
    let access = pair["access_token"].as_str().unwrap().to_string();
    let t = Some(access.as_str());
    let me = s.call(Method::GET, "/api/v1/me", t, None).await;
    assert_eq!(me.ok(200)["email"], "grace@example.com");

    // Organization, project, 250 tasks (one idempotent POST replayed on the way).
    let org = s
        .call(
            Method::POST,
            "/api/v1/orgs",
            t,
            Some(json!({"slug": "grace-co", "name": "Grace Co"})),
        )
        .await;
    let org = org.ok(201)["id"].as_str().unwrap().to_string();
    let p = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/projects"),
            t,
            Some(json!({"key": "GC", "name": "Core"})),
        )
        .await;
    let project = p.ok(201)["id"].as_str().unwrap().to_string();
    let tasks_url = format!("/api/v1/projects/{project}/tasks");
    let mut ids = Vec::new();
    for i in 0..250 {
        let body = json!({"title": format!("Journey {i}"), "priority": if i % 4 == 0 { "urgent" } else { "low" }});
        let key = format!("journey-{i}");
        let res = s
            .call_with(
                Method::POST,
                &tasks_url,
                t,
                Some(body.clone()),
                &[("idempotency-key", key.as_str())],
            )
            .await;
        ids.push(res.ok(201)["id"].as_str().unwrap().to_string());
        if i == 100 {
            // The client lost the response and retries: same task, not a new one.
            let replay = s
                .call_with(
                    Method::POST,
                    &tasks_url,
                    t,
                    Some(body),
                    &[("idempotency-key", key.as_str())],
                )
                .await;
            assert_eq!(replay.ok(201)["id"], ids[100].as_str());
            assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        }
    }

    // Filter, then page through everything: no duplicate, no gap.
    let urgent =
        s.call(Method::GET, &format!("{tasks_url}?priority=urgent&limit=100"), t, None).await;
    assert_eq!(urgent.ok(200)["items"].as_array().unwrap().len(), 63);
    let mut seen = Vec::new();
    let mut url = format!("{tasks_url}?limit=40");
    loop {
        let page = s.call(Method::GET, &url, t, None).await;
        let body = page.ok(200);
        seen.extend(
            body["items"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => url = format!("{tasks_url}?limit=40&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 250);
    assert_eq!(seen, ids);

    // Refresh rotation; reusing a rotated refresh token revokes the whole family.
    let r0 = pair["refresh_token"].as_str().unwrap().to_string();
    let r1 = s
        .call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r0})))
        .await;
    let r1 = r1.ok(200)["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r0);
    let reuse = s
        .call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r0})))
        .await;
    reuse.problem(401);
    let after = s
        .call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r1})))
        .await;
    after.problem(401);

    // API tokens: a read token reads but cannot write; a revoked one stops working.
    let created = s
        .call(Method::POST, "/api/v1/me/tokens", t, Some(json!({"name": "ci", "scope": "read"})))
        .await;
    let created = created.ok(201).clone();
    let read_token = created["token"].as_str().unwrap().to_string();
    let rt = Some(read_token.as_str());
    s.call(Method::GET, &format!("/api/v1/tasks/{}", ids[0]), rt, None).await.ok(200);
    let write = s.call(Method::POST, &tasks_url, rt, Some(json!({"title": "nope"}))).await;
    write.problem(403);
    let listed = s.call(Method::GET, "/api/v1/me/tokens", t, None).await;
    assert!(listed.ok(200).to_string().find(&read_token).is_none(), "secrets are never listed");
    let id = created["id"].as_str().unwrap();
    s.call(Method::DELETE, &format!("/api/v1/me/tokens/{id}"), t, None).await.ok(204);
    s.call(Method::GET, &format!("/api/v1/tasks/{}", ids[0]), rt, None).await.problem(401);
}

//! HTTP conventions: ETag / If-Match (412), body versions (409 with the current state), 428 when
//! neither is sent, and problem+json everywhere.

use reqwest::Method;
use serde_json::json;

use super::{Server, org_and_project};

#[tokio::test]
async fn etags_and_preconditions() {
    let s = Server::start().await;
    let (_, token) = s.user("etag@example.com").await;
    let t = Some(token.as_str());
    let (_, project, _) = org_and_project(&s, &token, "etag", "ET").await;
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "v1"})),
        )
        .await;
    let id = created.ok(201)["id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/tasks/{id}");
    let read = s.call(Method::GET, &url, t, None).await;
    assert_eq!(read.header("etag"), Some("\"v1\""));

    // No precondition: refused, nothing changes.
    s.call(Method::PATCH, &url, t, Some(json!({"title": "blind"}))).await.problem(428);
    // Matching If-Match: applied, new ETag.
    let ok = s
        .call_with(Method::PATCH, &url, t, Some(json!({"title": "v2"})), &[("if-match", "\"v1\"")])
        .await;
    assert_eq!(ok.ok(200)["title"], "v2");
    assert_eq!(ok.header("etag"), Some("\"v2\""));
    // Stale If-Match: 412 with the current task.
    let stale = s
        .call_with(
            Method::PATCH,
            &url,
            t,
            Some(json!({"title": "lost"})),
            &[("if-match", "\"v1\"")],
        )
        .await;
    let body = stale.problem(412);
    assert_eq!(body["current"]["title"], "v2");
    assert_eq!(body["current"]["version"], 2);
    // Stale body version: 409 with the current task.
    let conflict =
        s.call(Method::PATCH, &url, t, Some(json!({"title": "lost", "version": 1}))).await;
    assert_eq!(conflict.problem(409)["current"]["version"], 2);
    // Garbage If-Match names the header.
    let bad = s
        .call_with(Method::PATCH, &url, t, Some(json!({"title": "x"})), &[("if-match", "*")])
        .await;
    assert_eq!(bad.problem(400)["field"], "If-Match");
    // Null clears, absent keeps.
    s.call(Method::PATCH, &url, t, Some(json!({"due_date": "2030-05-05", "version": 2})))
        .await
        .ok(200);
    let cleared =
        s.call(Method::PATCH, &url, t, Some(json!({"due_date": null, "version": 3}))).await;
    assert!(cleared.ok(200)["due_date"].is_null());
    assert_eq!(cleared.body["title"], "v2");
    // Delete needs If-Match too.
    s.call(Method::DELETE, &url, t, None).await.problem(428);
    s.call_with(Method::DELETE, &url, t, None, &[("if-match", "\"v4\"")]).await.ok(204);
    s.call(Method::GET, &url, t, None).await.problem(404);
}

#[tokio::test]
async fn bulk_update_reports_per_item() {
    let s = Server::start().await;
    let (_, token) = s.user("bulk@example.com").await;
    let t = Some(token.as_str());
    let (_, project, _) = org_and_project(&s, &token, "bulk", "BU").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = s
            .call(
                Method::POST,
                &format!("/api/v1/projects/{project}/tasks"),
                t,
                Some(json!({"title": format!("b{i}")})),
            )
            .await;
        ids.push(r.ok(201)["id"].as_str().unwrap().to_string());
    }
    let body = json!({"items": [
        {"id": ids[0], "version": 1, "changes": {"priority": "urgent"}},
        {"id": ids[1], "version": 9, "changes": {"priority": "urgent"}},
        {"id": ids[2], "version": 1, "changes": {"state_id": "0190a3c0-0000-7000-8000-000000000000"}},
    ]});
    let res = s
        .call(Method::POST, &format!("/api/v1/projects/{project}/tasks/bulk"), t, Some(body))
        .await;
    let out = res.ok(200).as_array().unwrap();
    assert_eq!(out[0]["status"], "applied");
    assert_eq!(out[0]["task"]["priority"], "urgent");
    assert_eq!(out[1]["status"], "failed");
    assert_eq!(out[1]["problem"]["status"], 409);
    assert_eq!(out[2]["problem"]["status"], 400);
    let too_many = json!({"items": []});
    assert_eq!(
        s.call(Method::POST, &format!("/api/v1/projects/{project}/tasks/bulk"), t, Some(too_many))
            .await
            .problem(400)["field"],
        "items"
    );
}

#[tokio::test]
async fn idempotent_post_replays_instead_of_repeating() {
    let s = Server::start().await;
    let (_, token) = s.user("idem@example.com").await;
    let t = Some(token.as_str());
    let (_, project, _) = org_and_project(&s, &token, "idem", "ID").await;
    let url = format!("/api/v1/projects/{project}/tasks");
    let key = [("idempotency-key", "op-0001")];
    let first = s.call_with(Method::POST, &url, t, Some(json!({"title": "once"})), &key).await;
    let first_body = first.ok(201).clone();
    let again = s.call_with(Method::POST, &url, t, Some(json!({"title": "once"})), &key).await;
    assert_eq!(again.ok(201), &first_body, "the replay returns the first response");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("etag"), Some("\"v1\""));
    let list = s.call(Method::GET, &url, t, None).await;
    assert_eq!(list.ok(200)["items"].as_array().unwrap().len(), 1, "one task, not two");
    // Same key, different body: refused.
    let reused = s.call_with(Method::POST, &url, t, Some(json!({"title": "twice"})), &key).await;
    reused.problem(422);
    // A new key is a new operation; a bad key is named.
    s.call_with(
        Method::POST,
        &url,
        t,
        Some(json!({"title": "once"})),
        &[("idempotency-key", "op-0002")],
    )
    .await
    .ok(201);
    let bad = s
        .call_with(Method::POST, &url, t, Some(json!({"title": "x"})), &[("idempotency-key", "")])
        .await;
    assert_eq!(bad.problem(400)["field"], "Idempotency-Key");
    // Failed validations are outcomes too: replayed, not re-run.
    let k3 = [("idempotency-key", "op-0003")];
    s.call_with(Method::POST, &url, t, Some(json!({"title": ""})), &k3).await.problem(400);
    let replay = s.call_with(Method::POST, &url, t, Some(json!({"title": ""})), &k3).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn rate_limits_report_headers_and_answer_429() {
    let limits = pm_server::ratelimit::RateLimits { per_credential: 5, per_ip: 0 };
    let s =
        Server::start_with(|st| st.limiter = pm_server::ratelimit::RateLimiter::new(limits)).await;
    let (_, token) = s.user("limited@example.com").await;
    for i in 0..5 {
        let res = s.call(Method::GET, "/api/v1/orgs", Some(&token), None).await;
        res.ok(200);
        assert_eq!(res.header("ratelimit-limit"), Some("5"));
        assert_eq!(res.header("ratelimit-remaining"), Some((4 - i).to_string().as_str()));
        assert!(res.header("ratelimit-reset").is_some());
    }
    let limited = s.call(Method::GET, "/api/v1/orgs", Some(&token), None).await;
    limited.problem(429);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Another credential has its own bucket.
    let (_, other) = s.user("other@example.com").await;
    s.call(Method::GET, "/api/v1/orgs", Some(&other), None).await.ok(200);
}

/// Behind a trusted proxy every request comes from the proxy's address: per-IP buckets are kept
/// per `X-Forwarded-For` client, and a client's own forged header is not believed.
#[tokio::test]
async fn per_ip_limits_follow_forwarded_for_only_from_trusted_proxies() {
    let limits = pm_server::ratelimit::RateLimits { per_credential: 0, per_ip: 3 };
    let s = Server::start_with(|st| {
        st.limiter = pm_server::ratelimit::RateLimiter::new(limits);
        st.trusted_proxies = pm_server::forwarded::TrustedProxies::parse("127.0.0.1").unwrap();
    })
    .await;
    let get = |client: &'static str| {
        s.http.get(format!("{}/healthz", s.base)).header("x-forwarded-for", client).send()
    };
    for _ in 0..3 {
        assert_eq!(get("203.0.113.1").await.unwrap().status(), 200);
    }
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 429, "client 1 used its bucket");
    assert_eq!(get("203.0.113.2").await.unwrap().status(), 200, "client 2 has its own");

    // Without trust, the header is ignored: all requests share the peer's bucket.
    let s =
        Server::start_with(|st| st.limiter = pm_server::ratelimit::RateLimiter::new(limits)).await;
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let res =
            s.http.get(format!("{}/healthz", s.base)).header("x-forwarded-for", client).send();
        assert_eq!(res.await.unwrap().status(), 200);
    }
    let res = s.http.get(format!("{}/healthz", s.base)).header("x-forwarded-for", "198.51.100.9");
    assert_eq!(res.send().await.unwrap().status(), 429, "a forged header buys no new bucket");
}

#[tokio::test]
async fn cors_and_compression_when_configured() {
    let s = Server::start_with(|st| st.cors_origins = vec!["https://app.example.com".into()]).await;
    let (_, token) = s.user("cors@example.com").await;
    let pre = s
        .http
        .request(Method::OPTIONS, format!("{}/api/v1/orgs", s.base))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,idempotency-key")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "https://app.example.com");
    let other = s
        .http
        .get(format!("{}/api/v1/orgs", s.base))
        .header("origin", "https://evil.example.com")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Large JSON responses are compressed when the client asks.
    let (_, project, _) = org_and_project(&s, &token, "gz", "GZ").await;
    for i in 0..30 {
        let body =
            json!({"title": format!("compress me {i}"), "description": "lorem ipsum ".repeat(40)});
        s.call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(body),
        )
        .await
        .ok(201);
    }
    let gz = s
        .http
        .get(format!("{}/api/v1/projects/{project}/tasks?limit=30", s.base))
        .bearer_auth(&token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
}

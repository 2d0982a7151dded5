//! The GitHub provider against a wiremock server shaped like GitHub's REST API: pulling issues
//! (pull requests skipped, all pages), creating and updating issues, comments, and rate limits
//! (a 429 with `Retry-After` is waited out; a long one is handed back to the caller), and
//! connections pinned to the addresses the SSRF policy approved.

use std::time::{Duration, Instant};

use pm_integrations::Error;
use pm_integrations::crypto::Secret;
use pm_integrations::http::ApiClient;
use pm_integrations::provider::{PinnedHost, Provider, ProviderContext};
use pm_integrations::providers::GitHub;
use pm_integrations::sync::Snapshot;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ctx(server: &MockServer) -> ProviderContext {
    ProviderContext {
        base_url: server.uri(),
        access_token: Some(Secret::new("gho_test")),
        config: json!({"repository": "octo/repo"}),
        pinned: None,
    }
}

fn issue(n: i64, title: &str) -> serde_json::Value {
    json!({"number": n, "title": title, "body": "b", "state": "open",
           "labels": [{"name": "bug"}], "updated_at": "2025-01-02T03:04:05Z",
           "html_url": format!("https://github.com/octo/repo/issues/{n}")})
}

#[tokio::test]
async fn pulls_issues_and_skips_pull_requests() {
    let server = MockServer::start().await;
    let mut pr = issue(3, "a PR");
    pr["pull_request"] = json!({"url": "x"});
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues"))
        .and(query_param("state", "all"))
        .and(header("authorization", "Bearer gho_test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            issue(1, "One"),
            issue(2, "Two"),
            pr
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let items = GitHub.pull(&ctx(&server), None).await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.external_id.as_str()).collect::<Vec<_>>(),
        ["octo/repo#1", "octo/repo#2"]
    );
    assert_eq!(items[0].fields["labels"], json!(["bug"]));
    assert_eq!(items[0].fields["title"], "One");
    assert!(items[0].updated_at.is_some());
}

#[tokio::test]
async fn creates_updates_and_comments() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/repo/issues"))
        .and(body_json(json!({"title": "New", "body": "text", "labels": ["bug"]})))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(9, "New")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/repo/issues/9"))
        .and(body_json(json!({"state": "closed"})))
        .respond_with(ResponseTemplate::new(200).set_body_json({
            let mut i = issue(9, "New");
            i["state"] = json!("closed");
            i
        }))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/repo/issues/9/comments"))
        .and(body_json(json!({"body": "from pm"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 77})))
        .expect(1)
        .mount(&server)
        .await;
    let c = ctx(&server);
    let mut fields = Snapshot::new();
    fields.insert("title".into(), json!("New"));
    fields.insert("description".into(), json!("text"));
    fields.insert("labels".into(), json!(["bug"]));
    let created = GitHub.push(&c, None, &fields).await.unwrap();
    assert_eq!(created.external_id, "octo/repo#9");
    let mut close = Snapshot::new();
    close.insert("state".into(), json!("closed"));
    let updated = GitHub.push(&c, Some("octo/repo#9"), &close).await.unwrap();
    assert_eq!(updated.fields["state"], "closed");
    assert_eq!(GitHub.comment(&c, "octo/repo#9", "from pm").await.unwrap(), 77);
    assert!(matches!(
        GitHub.push(&c, Some("other/repo#9"), &close).await,
        Err(Error::Invalid { field, .. }) if field == "external_id"
    ));
    let bad = ProviderContext { config: json!({"repository": "nope"}), ..c };
    assert!(
        matches!(GitHub.pull(&bad, None).await, Err(Error::Invalid { field, .. }) if field == "config.repository")
    );
}

#[tokio::test]
async fn rate_limits_honour_retry_after_and_refusals_are_not_transient() {
    let server = MockServer::start().await;
    // First answer: a secondary rate limit (403 + Retry-After: 1); then success.
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues"))
        .respond_with(ResponseTemplate::new(403).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([issue(1, "One")])))
        .with_priority(2)
        .mount(&server)
        .await;
    let started = Instant::now();
    let items = GitHub.pull(&ctx(&server), None).await.unwrap();
    assert_eq!(items.len(), 1);
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for Retry-After");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);

    // A wait longer than the client may hold a worker: handed back with `retry_after`. Its own
    // server, outside wiremock's pool: the hour-long limit stays recorded for its address, and a
    // pooled server would carry it into another test.
    let slow = MockServer::builder().start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .mount(&slow)
        .await;
    match GitHub.pull(&ctx(&slow), None).await {
        Err(Error::Provider { retry_after: Some(3600), .. }) => {}
        other => panic!("expected a provider error with retry_after, got {other:?}"),
    }
    // An ordinary failure is not a rate limit.
    let broken = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(500)).mount(&broken).await;
    let outage = GitHub.pull(&ctx(&broken), None).await.unwrap_err();
    assert!(matches!(outage, Error::Provider { retry_after: None, .. }), "{outage:?}");
    assert!(outage.is_transient(), "an outage may pass");
    // A refusal that is not a rate limit is `Rejected`, with its status: retrying will not help.
    let refusing = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(json!({"message": "Resource not accessible"})),
        )
        .mount(&refusing)
        .await;
    let refused = GitHub.pull(&ctx(&refusing), None).await.unwrap_err();
    assert!(matches!(refused, Error::Rejected { status: 403, .. }), "{refused:?}");
    assert!(!refused.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_for_every_request_to_the_provider_and_dates_count() {
    let server = MockServer::start().await;
    // The first pull meets a 503 whose Retry-After is an HTTP date ~2 s ahead, then succeeds.
    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let date = until
        .format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", date.as_str()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([issue(1, "One")])))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/repo/issues/1/comments"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 5})))
        .mount(&server)
        .await;
    let c = ctx(&server);
    let started = Instant::now();
    let pull = tokio::spawn({
        let c = c.clone();
        async move { GitHub.pull(&c, None).await }
    });
    // Wait until the 503 has been answered, then comment through a separate client: it must
    // not be sent before the limit ends, although it never saw a 503 itself.
    let observer = ApiClient::new("github", &server.uri()).unwrap();
    while observer.limited_for().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "the 503 never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    GitHub.comment(&c, "octo/repo#1", "hi").await.unwrap();
    let comment_done = started.elapsed();
    assert_eq!(pull.await.unwrap().unwrap().len(), 1);
    assert!(comment_done >= Duration::from_millis(900), "the comment waited: {comment_done:?}");
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method.as_str(), "GET", "the 503 came first");
}

/// A context pinned to approved addresses connects there without looking the name up again
/// (DNS rebinding cannot swap in an internal address) and follows no redirect.
#[tokio::test]
async fn pinned_contexts_connect_only_to_the_approved_addresses() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issue(1, "One")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues/2"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://127.0.0.1:9/internal"),
        )
        .mount(&server)
        .await;
    let addr = *server.address();
    // `.invalid` never resolves: only the pin can get a connection to the mock.
    let pinned = ProviderContext {
        base_url: format!("http://api.github.invalid:{}", addr.port()),
        pinned: Some(PinnedHost { host: "api.github.invalid".into(), addrs: vec![addr] }),
        ..ctx(&server)
    };
    assert_eq!(GitHub.fetch(&pinned, "octo/repo#1").await.unwrap().fields["title"], "One");
    match GitHub.fetch(&pinned, "octo/repo#2").await {
        Err(Error::Provider { message, .. }) => assert!(message.contains("302"), "{message}"),
        other => panic!("a redirect must not be followed, got {other:?}"),
    }
    let unpinned = ProviderContext { pinned: None, ..pinned };
    assert!(GitHub.fetch(&unpinned, "octo/repo#1").await.is_err(), "the name does not resolve");
    server.verify().await;
}

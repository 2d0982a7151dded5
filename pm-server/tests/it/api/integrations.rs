//! Integrations end to end against a real server: inbound webhooks (verified, deduplicated,
//! persisted, processed from the queue; bad signatures 401 + logged + nothing stored; the Graph
//! handshake), integration CRUD with authorization, and outbound webhook subscriptions
//! delivering signed events to a real receiver on loopback (SSRF guard, retries with backoff,
//! auto-disable, manual redelivery, secret rotation). The raw database row of a stored secret is
//! read to prove no plaintext is kept.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use pm_integrations::crypto::{EncryptionKey, Keyring};
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::webhook::inbound::{
    GITHUB_DELIVERY, GITHUB_EVENT, GITHUB_SIGNATURE, hub_signature,
};
use pm_integrations::webhook::outbound::{self, WebhookSecret};
use pm_server::integrations::{Integrations, WorkerConfig};
use reqwest::Method;
use serde_json::{Value, json};

use super::{Server, org_and_project, to_res};

/// A server with integrations over their own SQLite file (with an allow-list when `allow`).
async fn server(allow: Option<&str>) -> (Server, Integrations, tempfile::TempDir) {
    server_with(allow, vec![Duration::from_millis(50), Duration::from_millis(50)]).await
}

/// [`server`] with the given retry schedule of outbound deliveries.
async fn server_with(
    allow: Option<&str>,
    backoff: Vec<Duration>,
) -> (Server, Integrations, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    let keyring = Keyring::new("test", &EncryptionKey::generate()).unwrap();
    let policy = match allow {
        Some(a) => TargetPolicy::parse_allow_list(a).unwrap(),
        None => TargetPolicy::public_only(),
    };
    let mut ints = Integrations::open(&url, Some(keyring), policy).await.unwrap();
    ints.worker = WorkerConfig {
        backoff,
        disable_after: 3,
        lease: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        batch: 50,
        poll: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let for_state = ints.clone();
    let s =
        Server::start_with(move |state| *state = state.clone().with_integrations(for_state)).await;
    (s, ints, dir)
}

async fn github_integration(s: &Server, token: &str, project: &str) -> (String, String) {
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(token),
            Some(json!({"provider": "github", "name": "octo/repo", "config": {"repository": "octo/repo"}})),
        )
        .await;
    let body = created.ok(201);
    assert_eq!(
        body["integration"]["webhook_path"],
        format!("/api/v1/hooks/github/{}", body["integration"]["id"].as_str().unwrap())
    );
    (
        body["integration"]["id"].as_str().unwrap().to_owned(),
        body["webhook_secret"].as_str().unwrap().to_owned(),
    )
}

async fn post_hook(s: &Server, path: &str, body: &[u8], headers: &[(&str, String)]) -> super::Res {
    let mut req = s.http.post(format!("{}{path}", s.base)).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = to_res(req.send().await.unwrap()).await;
    super::openapi::validate(&Method::POST, path, &res);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_webhooks_are_verified_deduplicated_persisted_and_processed() {
    let (s, ints, _dir) = server(None).await;
    let (_, token) = s.user("hooks@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "hooks", "HK").await;
    let (id, secret) = github_integration(&s, &token, &project).await;
    let path = format!("/api/v1/hooks/github/{id}");
    let payload = json!({
        "action": "edited",
        "issue": {"number": 12, "title": "Fix login", "body": "b", "state": "open", "labels": [],
                  "updated_at": "2025-01-02T03:04:05Z"},
        "repository": {"full_name": "octo/repo"}
    })
    .to_string();
    let signed = |body: &str, delivery: &str| {
        vec![
            (GITHUB_SIGNATURE, hub_signature(secret.as_bytes(), body.as_bytes())),
            (GITHUB_DELIVERY, delivery.to_owned()),
            (GITHUB_EVENT, "issues".to_owned()),
        ]
    };

    let first = post_hook(&s, &path, payload.as_bytes(), &signed(&payload, "d-1")).await;
    assert_eq!(first.ok(202)["status"], "queued");
    let replay = post_hook(&s, &path, payload.as_bytes(), &signed(&payload, "d-1")).await;
    assert_eq!(replay.ok(200)["status"], "duplicate");
    assert_eq!(replay.body["delivery_id"], first.body["delivery_id"]);

    // One byte changed, a missing prefix, a missing header: 401 problem, nothing stored.
    let mut tampered = payload.clone().into_bytes();
    tampered[10] ^= 1;
    let bad = post_hook(&s, &path, &tampered, &signed(&payload, "d-2")).await;
    assert_eq!(bad.problem(401)["type"], "/problems/invalid-signature");
    let mut no_prefix = signed(&payload, "d-3");
    no_prefix[0].1 = no_prefix[0].1.trim_start_matches("sha256=").to_owned();
    post_hook(&s, &path, payload.as_bytes(), &no_prefix).await.problem(401);
    post_hook(&s, &path, payload.as_bytes(), &signed(&payload, "d-4")[1..]).await.problem(401);
    // Signed but without a delivery id: 400 naming it.
    let no_id = signed(&payload, "x");
    let r = post_hook(&s, &path, payload.as_bytes(), &[no_id[0].clone(), no_id[2].clone()]).await;
    assert_eq!(r.problem(400)["field"], "delivery_id");
    // Unknown integration or provider mismatch: 404.
    post_hook(&s, &format!("/api/v1/hooks/jira/{id}"), b"{}", &[]).await.problem(404);
    post_hook(&s, &format!("/api/v1/hooks/github/{}", uuid::Uuid::now_v7()), b"{}", &[])
        .await
        .problem(404);

    // Exactly one delivery is queued; processing it logs what it meant.
    assert_eq!(ints.process_inbound_once().await.unwrap(), 1);
    assert_eq!(ints.process_inbound_once().await.unwrap(), 0);
    let logs = s
        .call(Method::GET, &format!("/api/v1/integrations/{id}/logs?limit=100"), Some(&token), None)
        .await;
    let ops: Vec<&str> = logs.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "webhook.rejected").count(), 3, "{ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "webhook.received").count(), 1, "{ops:?}");
    let processed = logs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["operation"] == "webhook.processed")
        .expect("processed");
    assert_eq!(processed["detail"]["events"][0]["kind"], "issues.edited");
    assert_eq!(processed["detail"]["events"][0]["external_id"], "octo/repo#12");
    assert!(!logs.body.to_string().contains(&secret), "no secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_handshake_and_slack_window() {
    let (s, _ints, _dir) = server(None).await;
    let (_, token) = s.user("graph@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "graph", "GR").await;
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(&token),
            Some(json!({"provider": "outlook", "name": "Calendar"})),
        )
        .await;
    let id = created.ok(201)["integration"]["id"].as_str().unwrap().to_owned();
    let client_state = created.body["webhook_secret"].as_str().unwrap().to_owned();
    let res = s
        .http
        .post(format!(
            "{}/api/v1/hooks/outlook/{id}?validationToken=Validation%3A%20Testing",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(res.text().await.unwrap(), "Validation: Testing");
    let note = |cs: &str| {
        json!({"value": [{"subscriptionId": "s", "clientState": cs, "changeType": "updated", "resourceData": {"id": "AAMk"}}]}).to_string()
    };
    let ok =
        post_hook(&s, &format!("/api/v1/hooks/outlook/{id}"), note(&client_state).as_bytes(), &[])
            .await;
    ok.ok(202);
    post_hook(&s, &format!("/api/v1/hooks/outlook/{id}"), note("forged").as_bytes(), &[])
        .await
        .problem(401);

    // Slack: the signing secret must be given; a stale timestamp is refused.
    let missing = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(&token),
            Some(json!({"provider": "slack", "name": "Slack"})),
        )
        .await;
    assert_eq!(missing.problem(400)["field"], "webhook_secret");
    let slack_secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(&token),
            Some(json!({"provider": "slack", "name": "Slack", "webhook_secret": slack_secret})),
        )
        .await;
    let sid = created.ok(201)["integration"]["id"].as_str().unwrap().to_owned();
    let body = "command=%2Fpm&text=help&team_id=T1&user_id=U1&channel_id=C1\
                &response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1";
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let sign = |ts: i64| {
        vec![
            ("X-Slack-Request-Timestamp", ts.to_string()),
            (
                "X-Slack-Signature",
                pm_integrations::webhook::inbound::slack_signature(
                    slack_secret.as_bytes(),
                    ts,
                    body.as_bytes(),
                ),
            ),
        ]
    };
    // A slash command is answered synchronously (here: the usage, ephemerally).
    let answered =
        post_hook(&s, &format!("/api/v1/hooks/slack/{sid}"), body.as_bytes(), &sign(ts)).await;
    assert_eq!(answered.ok(200)["response_type"], "ephemeral");
    let stale =
        post_hook(&s, &format!("/api/v1/hooks/slack/{sid}"), body.as_bytes(), &sign(ts - 301))
            .await;
    assert!(stale.problem(401)["detail"].as_str().unwrap().contains("old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_crud_is_authorized_and_versioned_and_secrets_are_sealed() {
    let (s, ints, dir) = server(None).await;
    let (_, token) = s.user("owner@example.com").await;
    let (_, stranger) = s.user("stranger@example.com").await;
    let (org, project, _) = org_and_project(&s, &token, "crud", "CR").await;
    let (id, secret) = github_integration(&s, &token, &project).await;

    let got = s.call(Method::GET, &format!("/api/v1/integrations/{id}"), Some(&token), None).await;
    assert_eq!(got.ok(200)["version"], 1);
    let list =
        s.call(Method::GET, &format!("/api/v1/orgs/{org}/integrations"), Some(&token), None).await;
    assert_eq!(list.ok(200).as_array().unwrap().len(), 1);
    // A stranger sees nothing and may do nothing.
    s.call(Method::GET, &format!("/api/v1/integrations/{id}"), Some(&stranger), None)
        .await
        .problem(404);
    s.call(Method::GET, &format!("/api/v1/orgs/{org}/integrations"), Some(&stranger), None)
        .await
        .problem(403);

    let patched = s
        .call(
            Method::PATCH,
            &format!("/api/v1/integrations/{id}"),
            Some(&token),
            Some(json!({"version": 1, "enabled": false})),
        )
        .await;
    assert_eq!(patched.ok(200)["enabled"], false);
    let stale = s
        .call(
            Method::PATCH,
            &format!("/api/v1/integrations/{id}"),
            Some(&token),
            Some(json!({"version": 1, "name": "x"})),
        )
        .await;
    assert_eq!(stale.problem(409)["current"]["version"], 2);
    let bad = s
        .call(
            Method::PATCH,
            &format!("/api/v1/integrations/{id}"),
            Some(&token),
            Some(json!({"version": 2, "config": []})),
        )
        .await;
    assert_eq!(bad.problem(400)["field"], "config");
    let providers = s.call(Method::GET, "/api/v1/integration-providers", Some(&token), None).await;
    assert_eq!(providers.ok(200).as_array().unwrap().len(), 5);

    // The raw row holds a sealed value, never the secret.
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT sealed FROM int_credentials").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].0.starts_with("v1.test."), "{}", rows[0].0);
    assert!(!rows[0].0.contains(&secret));
    let dump: Vec<(String,)> =
        sqlx::query_as("SELECT quote(sealed) || detail FROM int_credentials, int_logs")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    assert!(dump.iter().all(|(r,)| !r.contains(&secret)));

    s.call(Method::DELETE, &format!("/api/v1/integrations/{id}"), Some(&token), None).await.ok(204);
    s.call(Method::GET, &format!("/api/v1/integrations/{id}"), Some(&token), None)
        .await
        .problem(404);
    assert!(
        ints.stores
            .credentials
            .get_credential(
                id.parse::<uuid::Uuid>().unwrap().into(),
                pm_integrations::model::CredentialKind::WebhookSecret
            )
            .await
            .unwrap()
            .is_none()
    );
}

/// A webhook receiver on loopback answering with a settable status.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    status: Arc<AtomicU16>,
}

async fn receiver() -> Receiver {
    receiver_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

async fn receiver_on(listener: tokio::net::TcpListener) -> Receiver {
    let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let status = Arc::new(AtomicU16::new(204));
    let (g, st) = (got.clone(), status.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (g, st) = (g.clone(), st.clone());
            async move {
                g.lock().unwrap().push((headers, body));
                axum::http::StatusCode::from_u16(st.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url: format!("http://{addr}/hook"), got, status }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn verify(
    secret: &str,
    h: &HeaderMap,
    body: &[u8],
) -> Result<(), pm_integrations::webhook::SignatureError> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    outbound::verify(
        &[WebhookSecret::parse(secret).unwrap()],
        &get("webhook-id"),
        &get("webhook-timestamp"),
        &get("webhook-signature"),
        body,
        time::OffsetDateTime::now_utc(),
        outbound::DEFAULT_TOLERANCE_SECS,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_webhooks_are_signed_retried_disabled_and_redelivered() {
    let (s, ints, _dir) = server(Some("127.0.0.0/8")).await;
    let (_, token) = s.user("subs@example.com").await;
    let (org, project, _) = org_and_project(&s, &token, "subs", "SB").await;
    let rx = receiver().await;
    let _workers = ints.start(s.state.stores.events.clone());

    let bad = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/webhooks"),
            Some(&token),
            Some(json!({"url": rx.url, "events": ["nope.*"]})),
        )
        .await;
    assert_eq!(bad.problem(400)["field"], "events[0]");
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/webhooks"),
            Some(&token),
            Some(json!({"url": rx.url, "events": ["task.created"]})),
        )
        .await;
    let sub = created.ok(201)["subscription"]["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();

    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Hello"})),
        )
        .await;
    let task_id = task.ok(201)["id"].as_str().unwrap().to_owned();
    wait_for("the first delivery", || rx.got.lock().unwrap().len() == 1).await;
    let (headers, body) = rx.got.lock().unwrap()[0].clone();
    verify(&secret, &headers, &body).expect("signature verifies with the subscription's secret");
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["type"], "task.created");
    assert_eq!(payload["data"]["subject"], task_id);
    assert!(verify(&WebhookSecret::generate().expose(), &headers, &body).is_err());

    // Rotation: both the old and the new secret verify what is sent next.
    let rotated = s
        .call(Method::POST, &format!("/api/v1/webhooks/{sub}/rotate-secret"), Some(&token), None)
        .await;
    let new_secret = rotated.ok(200)["secret"].as_str().unwrap().to_owned();

    // The receiver fails: one try plus two retries, then the delivery fails and, at the third
    // failure in a row, the subscription is disabled.
    rx.status.store(500, Ordering::SeqCst);
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/tasks"),
        Some(&token),
        Some(json!({"title": "Second"})),
    )
    .await
    .ok(201);
    wait_for("three attempts", || rx.got.lock().unwrap().len() == 4).await;
    let (h, b) = rx.got.lock().unwrap()[1].clone();
    verify(&secret, &h, &b).expect("old secret still verifies");
    verify(&new_secret, &h, &b).expect("new secret verifies");
    let mut disabled = Value::Null;
    for _ in 0..200 {
        disabled =
            s.call(Method::GET, &format!("/api/v1/webhooks/{sub}"), Some(&token), None).await.body;
        if disabled["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(disabled["enabled"], false, "{disabled}");
    assert!(disabled["disabled_reason"].as_str().unwrap().contains("3"));
    let deliveries = s
        .call(Method::GET, &format!("/api/v1/webhooks/{sub}/deliveries"), Some(&token), None)
        .await;
    let items = deliveries.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0]["status"].as_str(), items[0]["attempts"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(items[0]["last_status"], 500);
    assert_eq!(items[1]["status"], "done");

    // Fixed receiver: re-enable, redeliver by hand.
    rx.status.store(200, Ordering::SeqCst);
    let version = disabled["version"].as_i64().unwrap();
    s.call(
        Method::PATCH,
        &format!("/api/v1/webhooks/{sub}"),
        Some(&token),
        Some(json!({"version": version, "enabled": true})),
    )
    .await
    .ok(200);
    let failed_id = items[0]["id"].as_str().unwrap();
    let again = s
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{sub}/deliveries/{failed_id}/redeliver"),
            Some(&token),
            None,
        )
        .await;
    again.ok(202);
    wait_for("the redelivery", || rx.got.lock().unwrap().len() == 5).await;
    let (h5, _) = rx.got.lock().unwrap()[4].clone();
    assert_eq!(h5["webhook-id"], h["webhook-id"], "the message id is stable across redeliveries");
    let mut status = Value::Null;
    for _ in 0..200 {
        status = s
            .call(Method::GET, &format!("/api/v1/webhooks/{sub}/deliveries"), Some(&token), None)
            .await
            .body;
        if status["items"][0]["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status["items"][0]["status"], "done");
}

/// `/metrics` reports the integration consumers' lag from their own cursors (pm-integrations
/// keeps them, not pm-core's event log), and each drains to zero once the consumer is caught
/// up, although the cursors are no longer written after every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_consumers_report_their_lag_and_catch_up() {
    let (s, ints, _dir) = server(None).await;
    let ints = ints.with_pm(s.state.pm.clone());
    let _workers = ints.start(s.state.stores.events.clone());
    let _chat =
        pm_server::chat::start(ints.clone(), s.state.pm.clone(), s.state.stores.events.clone());
    let (_, token) = s.user("lag@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "lag", "LG").await;
    for i in 0..20 {
        s.call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": format!("Task {i}")})),
        )
        .await
        .ok(201);
    }
    let series = |name: &str| format!("pm_event_log_consumer_lag{{consumer=\"{name}\"}} ");
    let mut text = String::new();
    for _ in 0..100 {
        let res = s.http.get(format!("{}/metrics", s.base)).send().await.unwrap();
        text = res.text().await.unwrap();
        let lags: Vec<Option<&str>> = ["outbound-webhooks", "sync-push", "chat-calendar"]
            .iter()
            .map(|n| text.lines().find_map(|l| l.strip_prefix(&series(n))))
            .collect();
        assert!(lags.iter().all(Option::is_some), "a consumer's lag is missing:\n{text}");
        if lags.iter().all(|l| *l == Some("0")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the integration consumers did not catch up:\n{text}");
}

/// Issue 9's drill: the receiver is down (connection refused) for a while; the delivery is retried
/// on schedule, and arrives — once, signed — when the receiver is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_the_delivery_when_back() {
    let (s, ints, _dir) =
        server_with(Some("127.0.0.0/8"), vec![Duration::from_millis(400); 8]).await;
    let (_, token) = s.user("down@example.com").await;
    let (org, project, _) = org_and_project(&s, &token, "down", "DN").await;
    // A port that refuses connections until the receiver binds it again.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = parked.local_addr().unwrap();
    drop(parked);
    let _workers = ints.start(s.state.stores.events.clone());
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/webhooks"),
            Some(&token),
            Some(json!({"url": format!("http://{addr}/hook"), "events": ["task.created"]})),
        )
        .await;
    let sub = created.ok(201)["subscription"]["id"].as_str().unwrap().to_owned();
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/tasks"),
        Some(&token),
        Some(json!({"title": "Deliver me later"})),
    )
    .await
    .ok(201);
    // Two attempts fail while the receiver is down; the delivery stays pending.
    let deliveries = format!("/api/v1/webhooks/{sub}/deliveries");
    let mut item = Value::Null;
    for _ in 0..400 {
        item = s.call(Method::GET, &deliveries, Some(&token), None).await.body["items"][0].clone();
        if item["attempts"].as_i64() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(item["attempts"].as_i64() >= Some(2), "{item}");
    assert_ne!(item["status"], "done", "{item}");
    assert_ne!(item["status"], "failed", "{item}");

    // The receiver comes back on the same address.
    let rx = receiver_on(tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    wait_for("the delivery after the outage", || rx.got.lock().unwrap().len() == 1).await;
    let (headers, body) = rx.got.lock().unwrap()[0].clone();
    verify(&secret, &headers, &body).expect("signed");
    let mut status = Value::Null;
    for _ in 0..200 {
        status =
            s.call(Method::GET, &deliveries, Some(&token), None).await.body["items"][0].clone();
        if status["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status["status"], "done", "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_unless_allow_listed() {
    let (s, _ints, _dir) = server(None).await;
    let (_, token) = s.user("ssrf@example.com").await;
    let (org, _, _) = org_and_project(&s, &token, "ssrf", "SS").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://10.0.0.1/x",
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
    ] {
        let r = s
            .call(
                Method::POST,
                &format!("/api/v1/orgs/{org}/webhooks"),
                Some(&token),
                Some(json!({"url": url, "events": ["*"]})),
            )
            .await;
        assert_eq!(r.problem(400)["field"], "url", "{url}");
    }
}

#[tokio::test]
async fn without_integrations_the_routes_are_404() {
    let s = Server::start().await;
    let (_, token) = s.user("none@example.com").await;
    s.call(Method::GET, "/api/v1/integration-providers", Some(&token), None).await.problem(404);
    post_hook(&s, &format!("/api/v1/hooks/github/{}", uuid::Uuid::now_v7()), b"{}", &[])
        .await
        .problem(404);
}

// --- OAuth -------------------------------------------------------------------------------------

mod oauth {
    use std::sync::Arc;
    use std::time::Duration;

    use pm_integrations::clock::ManualClock;
    use pm_integrations::crypto::{EncryptionKey, Keyring, Secret};
    use pm_integrations::oauth::{OAuthClient, OAuthSettings};
    use pm_integrations::provider::Provider;
    use pm_integrations::providers::GoogleCalendar;
    use pm_integrations::ssrf::TargetPolicy;
    use pm_server::integrations::Integrations;
    use reqwest::Method;
    use serde_json::json;
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::super::{Server, org_and_project};

    struct OAuthServer {
        s: Server,
        ints: Integrations,
        clock: Arc<ManualClock>,
        provider: MockServer,
        token: String,
        integration: String,
        dir: tempfile::TempDir,
    }

    /// A server whose Google Calendar OAuth endpoints (it has a revocation endpoint) are a
    /// wiremock server, with a manual clock and one integration to connect.
    async fn setup(email: &str) -> OAuthServer {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("int.db").display());
        let keyring = Keyring::new("test", &EncryptionKey::generate()).unwrap();
        let mut ints =
            Integrations::open(&url, Some(keyring), TargetPolicy::public_only()).await.unwrap();
        let clock = Arc::new(ManualClock::default());
        ints.clock = clock.clone();
        let provider = MockServer::start().await;
        let client = OAuthClient::new(
            &GoogleCalendar.oauth().unwrap(),
            "pm-client",
            Some(Secret::new("pm-client-secret")),
        )
        .unwrap()
        .with_base_url(&provider.uri())
        .unwrap();
        let ints = ints
            .with_oauth(
                OAuthSettings::new("https://pm.example/api/v1/oauth/callback"),
                vec![(GoogleCalendar.info().key, client)],
            )
            .unwrap();
        assert!(ints.oauth.is_some());
        let for_state = ints.clone();
        let s =
            Server::start_with(move |state| *state = state.clone().with_integrations(for_state))
                .await;
        let (_, token) = s.user(email).await;
        let (_, project, _) = org_and_project(&s, &token, "oauth", "OA").await;
        let created = s
            .call(
                Method::POST,
                &format!("/api/v1/projects/{project}/integrations"),
                Some(&token),
                Some(json!({"provider": "google_calendar", "name": "Team calendar"})),
            )
            .await;
        let integration = created.ok(201)["integration"]["id"].as_str().unwrap().to_owned();
        OAuthServer { s, ints, clock, provider, token, integration, dir }
    }

    impl OAuthServer {
        async fn connect(&self) -> String {
            let r = self
                .s
                .call(
                    Method::POST,
                    &format!("/api/v1/integrations/{}/oauth/connect", self.integration),
                    Some(&self.token),
                    None,
                )
                .await;
            let url = r.ok(200)["authorization_url"].as_str().unwrap().to_owned();
            reqwest::Url::parse(&url)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .expect("state in the authorization URL")
        }

        async fn callback(&self, query: &str) -> super::super::Res {
            self.s.call(Method::GET, &format!("/api/v1/oauth/callback?{query}"), None, None).await
        }

        async fn integration(&self) -> serde_json::Value {
            self.s
                .call(
                    Method::GET,
                    &format!("/api/v1/integrations/{}", self.integration),
                    Some(&self.token),
                    None,
                )
                .await
                .ok(200)
                .clone()
        }

        async fn raw_tokens(&self) -> Vec<(String, String, String)> {
            let url = format!("sqlite://{}", self.dir.path().join("int.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query_as(
                "SELECT access_token, coalesce(refresh_token, ''), key_id FROM int_oauth_tokens",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    }

    fn tokens(access: &str, refresh: &str, expires_in: i64) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": access, "refresh_token": refresh, "expires_in": expires_in,
            "scope": "https://www.googleapis.com/auth/calendar.events", "token_type": "Bearer"
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_callback_stores_encrypted_tokens_and_disconnect_revokes() {
        let o = setup("oauth-happy@example.com").await;
        let state = o.connect().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=authorization_code"))
            .and(body_string_contains("code=good-code"))
            .and(body_string_contains("code_verifier="))
            .respond_with(tokens("ya29.PLAINTEXT-ACCESS", "1//PLAINTEXT-REFRESH", 3600))
            .expect(1)
            .mount(&o.provider)
            .await;
        let done = o.callback(&format!("state={state}&code=good-code&scope=x")).await;
        let body = done.ok(200);
        assert_eq!(body["integration_id"], o.integration.as_str());
        assert_eq!(body["connection"]["status"], "active");
        assert_eq!(body["connection"]["refreshable"], true);
        assert!(!done.body.to_string().contains("PLAINTEXT"), "tokens are never returned");

        // The database holds sealed tokens under the current key id, never the plaintext.
        let rows = o.raw_tokens().await;
        assert_eq!(rows.len(), 1);
        let (access, refresh, key_id) = &rows[0];
        assert_eq!(key_id, "test");
        assert!(access.starts_with("v1.test.") && refresh.starts_with("v1.test."));
        assert!(!access.contains("PLAINTEXT") && !refresh.contains("PLAINTEXT"));
        let id = pm_core::id::IntegrationId(o.integration.parse().unwrap());
        let oauth = o.ints.oauth.clone().unwrap();
        assert_eq!(oauth.access_token(id).await.unwrap().expose(), "ya29.PLAINTEXT-ACCESS");
        let i = o.integration().await;
        assert_eq!(i["oauth"]["status"], "active");
        assert_eq!(i["oauth"]["scopes"][0], "https://www.googleapis.com/auth/calendar.events");

        // The state was single use.
        let reused = o.callback(&format!("state={state}&code=good-code")).await;
        assert_eq!(reused.problem(400)["field"], "state");

        // Disconnect revokes the refresh token at the provider, then deletes the tokens.
        Mock::given(method("POST"))
            .and(path("/revoke"))
            .and(body_string_contains("token=1%2F%2FPLAINTEXT-REFRESH"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&o.provider)
            .await;
        let url = format!("/api/v1/integrations/{}/oauth", o.integration);
        let gone = o.s.call(Method::DELETE, &url, Some(&o.token), None).await;
        assert_eq!(gone.ok(200)["revocation"], "revoked");
        o.provider.verify().await;
        assert!(o.raw_tokens().await.is_empty());
        assert!(o.integration().await["oauth"].is_null());
        o.s.call(Method::DELETE, &url, Some(&o.token), None).await.problem(404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_states_refusals_and_token_errors_are_problems_and_store_nothing() {
        let o = setup("oauth-errors@example.com").await;
        assert_eq!(o.callback("code=x").await.problem(400)["field"], "state");
        assert_eq!(o.callback("state=forged&code=x").await.problem(400)["field"], "state");

        // Expired: the state lives 10 minutes.
        let state = o.connect().await;
        o.clock.advance(Duration::from_secs(11 * 60));
        let expired = o.callback(&format!("state={state}&code=x")).await;
        assert_eq!(expired.problem(400)["field"], "state");
        assert!(expired.body["detail"].as_str().unwrap().contains("expired"));

        // The user refused at the provider.
        let state = o.connect().await;
        let denied = o
            .callback(&format!("state={state}&error=access_denied&error_description=No+thanks"))
            .await;
        let p = denied.problem(400);
        assert_eq!(p["field"], "error");
        assert!(p["detail"].as_str().unwrap().contains("access_denied"));

        // The token endpoint fails: 502, nothing stored; a refused code: 400 naming `code`.
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("code=boom"))
            .respond_with(ResponseTemplate::new(500).set_body_string("oops"))
            .mount(&o.provider)
            .await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("code=stale"))
            .respond_with(
                ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
            )
            .mount(&o.provider)
            .await;
        let state = o.connect().await;
        let failed = o.callback(&format!("state={state}&code=boom")).await;
        assert_eq!(failed.problem(502)["type"], "/problems/provider-failed");
        let state = o.connect().await;
        assert_eq!(
            o.callback(&format!("state={state}&code=stale")).await.problem(400)["field"],
            "code"
        );
        let state = o.connect().await;
        assert_eq!(o.callback(&format!("state={state}")).await.problem(400)["field"], "code");
        assert!(o.raw_tokens().await.is_empty());
        assert!(o.integration().await["oauth"].is_null());

        // Not connected: disconnect is 404; another user cannot start a connection.
        let url = format!("/api/v1/integrations/{}/oauth", o.integration);
        o.s.call(Method::DELETE, &url, Some(&o.token), None).await.problem(404);
        let (_, stranger) = o.s.user("oauth-stranger@example.com").await;
        o.s.call(Method::POST, &format!("{url}/connect"), Some(&stranger), None).await.problem(404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_refresh_shows_as_needs_reconnect() {
        let o = setup("oauth-reconnect@example.com").await;
        let state = o.connect().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=authorization_code"))
            .respond_with(tokens("ya29.short", "1//revoked-later", 60))
            .mount(&o.provider)
            .await;
        o.callback(&format!("state={state}&code=c")).await.ok(200);
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(body_string_contains("grant_type=refresh_token"))
            .respond_with(ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "Token has been revoked."}),
            ))
            .expect(1)
            .mount(&o.provider)
            .await;
        o.clock.advance(Duration::from_secs(120));
        let id = pm_core::id::IntegrationId(o.integration.parse().unwrap());
        let oauth = o.ints.oauth.clone().unwrap();
        for _ in 0..2 {
            assert!(matches!(
                oauth.access_token(id).await,
                Err(pm_integrations::Error::NeedsReconnect { .. })
            ));
        }
        o.provider.verify().await;
        let i = o.integration().await;
        assert_eq!(i["oauth"]["status"], "needs_reconnect");
        assert!(i["oauth"]["reason"].as_str().unwrap().contains("invalid_grant"));
    }
}

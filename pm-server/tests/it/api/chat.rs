//! Slack and calendar flows end to end: a real server on loopback, its integration workers
//! and chat consumer running, and one wiremock server shaped like Slack's Web API
//! (`/api/chat.postMessage`, `/api/users.info`, `response_url`s), Google Calendar v3
//! (`/calendar/v3/...`), Microsoft Graph v1.0 (`/v1.0/...`) and the providers' OAuth token
//! endpoints. Integrations are connected through the real OAuth connect → callback flow.

use std::time::Duration;

use pm_integrations::crypto::{EncryptionKey, Keyring};
use pm_integrations::oauth::OAuthSettings;
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::webhook::inbound::{
    GOOGLE_CHANNEL_ID, GOOGLE_CHANNEL_TOKEN, GOOGLE_MESSAGE_NUMBER, SLACK_SIGNATURE,
    SLACK_TIMESTAMP, slack_signature,
};
use pm_server::AppState;
use pm_server::integrations::{Integrations, WorkerConfig};
use reqwest::Method;
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{Res, Server, TEST_SECRET, org_and_project, to_res};

const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// A running server with one integration of `provider`, connected through OAuth.
struct Setup {
    s: Server,
    ints: Integrations,
    mock: MockServer,
    token: String,
    email: String,
    org: String,
    project: String,
    states: Vec<Value>,
    integration: String,
    /// The webhook secret (Slack signing secret, Graph clientState, Google channel token).
    secret: String,
    _workers: (pm_server::integrations::Workers, pm_server::chat::ChatWorkers),
    _dir: tempfile::TempDir,
    _engine: Option<tokio::task::JoinHandle<()>>,
}

async fn setup(email: &str, provider: &str, config: Value) -> Setup {
    setup_with(email, provider, config, false, None).await
}

/// [`setup`] with the workflow engine (`workflows`) and another slash-command reply budget.
async fn setup_with(
    email: &str,
    provider: &str,
    config: Value,
    workflows: bool,
    reply_budget: Option<Duration>,
) -> Setup {
    let mock = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::new("test", &EncryptionKey::generate()).unwrap();
    let int_url = format!("sqlite://{}", dir.path().join("int.db").display());
    // response_urls point at the mock on loopback: allow-listed like a test receiver.
    let mut ints = Integrations::open(
        &int_url,
        Some(keyring),
        TargetPolicy::parse_allow_list("127.0.0.0/8").unwrap(),
    )
    .await
    .unwrap();
    ints.worker = WorkerConfig {
        backoff: vec![Duration::from_millis(100); 3],
        disable_after: 3,
        lease: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        batch: 50,
        poll: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    ints.chat.apis.slack = format!("{}/api", mock.uri());
    ints.chat.apis.google_calendar = format!("{}/calendar/v3", mock.uri());
    ints.chat.apis.graph = format!("{}/v1.0", mock.uri());
    ints.chat.public_url = Some("https://pm.example.com".into());
    if let Some(b) = reply_budget {
        ints.chat.reply_budget = b;
    }
    // The clients are configured the way the binary reads them from the environment.
    let base = mock.uri();
    let clients = pm_server::config::oauth_clients(&ints.registry, |v| match v {
        "PM_OAUTH_SLACK_CLIENT_ID"
        | "PM_OAUTH_GOOGLE_CALENDAR_CLIENT_ID"
        | "PM_OAUTH_OUTLOOK_CLIENT_ID" => Some("pm-client".into()),
        v if v.ends_with("_BASE_URL") => Some(base.clone()),
        _ => None,
    })
    .unwrap();
    let mut ints = ints
        .with_oauth(OAuthSettings::new("https://pm.example.com/api/v1/oauth/callback"), clients)
        .unwrap();

    // The server's state, built like `Server::start_with` does, plus the workflow engine.
    let pm_dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", pm_dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let blobs = std::sync::Arc::new(pm_core::blob::FsBlobStore::new(pm_dir.path().join("b")));
    let permissions = pm_server::authz::open_permissions(&url).await.unwrap();
    let state = AppState::with(stores, permissions, TEST_SECRET, blobs);
    ints.pm = Some(state.pm.clone());
    let mut state = state.with_integrations(ints.clone());
    let mut engine = None;
    if workflows {
        let messages: std::sync::Arc<dyn pm_workflows::ports::MessageSender> =
            std::sync::Arc::new(pm_server::chat::SlackMessages::new(ints.clone()));
        let e = pm_server::workflows::open_engine(
            &url,
            state.pm.clone(),
            state.permissions.clone(),
            None,
            Some(messages),
            None,
        )
        .await
        .unwrap();
        engine = Some(e.clone().spawn());
        state = state.with_workflows(e);
    }
    let s = Server::serve_state(state, pm_dir).await;
    let workers = (
        ints.start(s.state.stores.events.clone()),
        pm_server::chat::start(ints.clone(), s.state.pm.clone(), s.state.stores.events.clone()),
    );

    let (_, token) = s.user(email).await;
    let slug = email.split('@').next().unwrap().replace('.', "-");
    let (org, project, states) = org_and_project(&s, &token, &slug, "PL").await;
    let mut body = json!({"provider": provider, "name": provider, "config": config});
    if provider == "slack" {
        body["webhook_secret"] = json!(SIGNING_SECRET);
    }
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(&token),
            Some(body),
        )
        .await;
    let integration = created.ok(201)["integration"]["id"].as_str().unwrap().to_owned();
    let secret = created.body["webhook_secret"].as_str().unwrap().to_owned();

    // Connect: pm → provider consent → callback with a code the mock token endpoint accepts.
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/integrations/{integration}/oauth/connect"),
            Some(&token),
            None,
        )
        .await;
    let auth_url = reqwest::Url::parse(r.ok(200)["authorization_url"].as_str().unwrap()).unwrap();
    if provider == "slack" {
        let scope = auth_url.query_pairs().find(|(k, _)| k == "scope").unwrap().1.into_owned();
        assert_eq!(scope, "chat:write,commands,users:read,users:read.email", "Slack wants commas");
    }
    let state = auth_url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let access = if provider == "slack" { "xoxb-17-bot-token" } else { "ya29.calendar-access" };
    Mock::given(method("POST"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true, "access_token": access, "token_type": "Bearer", "expires_in": 3600,
            "refresh_token": "refresh-1", "scope": "calendar"
        })))
        .mount(&mock)
        .await;
    let done = s
        .call(Method::GET, &format!("/api/v1/oauth/callback?state={state}&code=c0de"), None, None)
        .await;
    assert_eq!(done.ok(200)["connection"]["status"], "active");
    Setup {
        s,
        ints,
        mock,
        token,
        email: email.to_owned(),
        org,
        project,
        states,
        integration,
        secret,
        _workers: workers,
        _dir: dir,
        _engine: engine,
    }
}

impl Setup {
    /// A Slack form POST, signed now with the signing secret (`sign = false`: a bad signature).
    async fn slack(&self, form: &[(&str, &str)], sign: bool) -> Res {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().copied())
            .finish();
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let secret = if sign { SIGNING_SECRET } else { "not-the-secret" };
        let path = format!("/api/v1/hooks/slack/{}", self.integration);
        let res = self
            .s
            .http
            .post(format!("{}{path}", self.s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(SLACK_TIMESTAMP, ts.to_string())
            .header(SLACK_SIGNATURE, slack_signature(secret.as_bytes(), ts, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        let res = to_res(res).await;
        super::openapi::validate(&Method::POST, &path, &res);
        res
    }

    async fn command(&self, text: &str, user: &str) -> Res {
        let response_url = format!("{}/slack/commands/T1/42", self.mock.uri());
        self.slack(
            &[
                ("command", "/pm"),
                ("text", text),
                ("team_id", "T1"),
                ("user_id", user),
                ("channel_id", "C0PM"),
                ("response_url", response_url.as_str()),
                ("trigger_id", "13345224609.738474920.8088930838d88f008e0"),
            ],
            true,
        )
        .await
    }

    async fn action(&self, action_id: &str, value: &str) -> Res {
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U1", "username": "ada", "team_id": "T1"},
            "team": {"id": "T1", "domain": "acme"},
            "channel": {"id": "C0PM", "name": "pm"},
            "response_url": format!("{}/slack/actions/T1/7", self.mock.uri()),
            "actions": [if action_id == pm_integrations::slack::ACTION_SET_STATE {
                json!({"type": "static_select", "action_id": action_id, "block_id": "b",
                       "selected_option": {"text": {"type": "plain_text", "text": "x"}, "value": value}})
            } else {
                json!({"type": "button", "action_id": action_id, "block_id": "b", "value": value})
            }],
        })
        .to_string();
        self.slack(&[("payload", payload.as_str())], true).await
    }

    /// Slack's `users.info` says U1 is this test's user (by e-mail).
    async fn slack_knows_u1(&self) {
        Mock::given(method("GET"))
            .and(path("/api/users.info"))
            .and(query_param("user", "U1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "ok": true, "user": {"id": "U1", "name": "ada", "profile": {"email": self.email}}
            })))
            .mount(&self.mock)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/users.info"))
            .and(query_param("user", "U9"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "ok": true, "user": {"id": "U9", "name": "eve", "profile": {"email": "eve@elsewhere.example"}}
            })))
            .mount(&self.mock)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/chat.postMessage"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(
                    json!({"ok": true, "channel": "C0PM", "ts": "1503435956.000247"}),
                ),
            )
            .mount(&self.mock)
            .await;
        Mock::given(method("POST"))
            .and(wiremock::matchers::path_regex("^/slack/"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&self.mock)
            .await;
    }

    async fn task(&self, title: &str, due: Option<&str>) -> Value {
        let r = self
            .s
            .call(
                Method::POST,
                &format!("/api/v1/projects/{}/tasks", self.project),
                Some(&self.token),
                Some(json!({"title": title, "due_date": due})),
            )
            .await;
        r.ok(201).clone()
    }

    async fn get_task(&self, id: &str) -> Value {
        self.s
            .call(Method::GET, &format!("/api/v1/tasks/{id}"), Some(&self.token), None)
            .await
            .ok(200)
            .clone()
    }

    async fn patch_task(&self, id: &str, patch: Value) -> Value {
        let current = self.get_task(id).await;
        let mut body = patch;
        body["version"] = current["version"].clone();
        self.s
            .call(Method::PATCH, &format!("/api/v1/tasks/{id}"), Some(&self.token), Some(body))
            .await
            .ok(200)
            .clone()
    }

    fn state_id(&self, name: &str) -> String {
        self.states.iter().find(|s| s["name"] == name).unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn logs(&self) -> Vec<Value> {
        self.s
            .call(
                Method::GET,
                &format!("/api/v1/integrations/{}/logs?limit=100", self.integration),
                Some(&self.token),
                None,
            )
            .await
            .ok(200)["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The requests the mock received matching `m` and a path prefix.
async fn seen(mock: &MockServer, m: &str, prefix: &str) -> Vec<Request> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == m && r.url.path().starts_with(prefix))
        .collect()
}

/// Waits (up to 15 s) until the mock received a request matching `m`, `prefix` and `pred`.
async fn wait_for(
    mock: &MockServer,
    m: &str,
    prefix: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..300 {
        for r in seen(mock, m, prefix).await {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            if pred(&body) {
                return body;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {m} {prefix} matching request arrived; got {:?}", seen(mock, m, prefix).await);
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn blocks_text(v: &Value) -> String {
    v["blocks"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_slash_commands_create_and_list_with_response_url_follow_ups() {
    let t = setup("slash.cmd@example.com", "slack", json!({"channel": "C0PM"})).await;
    t.slack_knows_u1().await;

    // `/pm create`: answered synchronously, ephemerally; the channel hears it via response_url.
    let created = t.command("create Fix the login page", "U1").await;
    let reply = created.ok(200);
    assert_eq!(reply["response_type"], "ephemeral");
    assert_eq!(reply["text"], "Created PL-1: Fix the login page");
    let follow =
        wait_for(&t.mock, "POST", "/slack/commands/T1/42", |b| b["response_type"] == "in_channel")
            .await;
    let blocks = blocks_text(&follow);
    assert!(blocks.contains("Fix the login page") && blocks.contains("pm.assign_me"), "{blocks}");
    assert!(blocks.contains("pm.set_state"), "{blocks}");
    let tasks = t
        .s
        .call(Method::GET, &format!("/api/v1/projects/{}/tasks", t.project), Some(&t.token), None)
        .await;
    let items = tasks.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["title"], "Fix the login page");

    // `/pm list`: open tasks as Block Kit.
    t.task("Write the release notes", None).await;
    let list = t.command("list", "U1").await;
    let body = list.ok(200);
    assert_eq!(body["response_type"], "ephemeral");
    assert_eq!(body["blocks"][0]["type"], "header");
    let s = blocks_text(body);
    assert!(s.contains("PL-1") && s.contains("Write the release notes"), "{s}");

    // A stored mapping links a Slack user without asking Slack (no users.info mock for U2).
    let me = t.s.call(Method::GET, "/api/v1/me", Some(&t.token), None).await.ok(200)["id"].clone();
    let path = format!("/api/v1/integrations/{}", t.integration);
    let current = t.s.call(Method::GET, &path, Some(&t.token), None).await.ok(200).clone();
    let bad =
        t.s.call(
            Method::PATCH,
            &path,
            Some(&t.token),
            Some(json!({"version": current["version"], "config": {"users": {"U2": "me"}}})),
        )
        .await;
    assert_eq!(bad.problem(400)["field"], "config.users.U2");
    t.s.call(
        Method::PATCH,
        &path,
        Some(&t.token),
        Some(json!({"version": current["version"],
                    "config": {"channel": "C0PM", "users": {"U2": me}}})),
    )
    .await
    .ok(200);
    let mapped = t.command("list", "U2").await;
    assert_eq!(mapped.ok(200)["blocks"][0]["type"], "header", "{}", mapped.body);

    // Usage errors are told to the user; unlinked users are refused; nothing is created.
    let usage = t.command("create   ", "U1").await;
    assert!(usage.ok(200)["text"].as_str().unwrap().contains("usage: /pm create <title>"));
    let stranger = t.command("create Sneaky", "U9").await;
    assert!(stranger.ok(200)["text"].as_str().unwrap().contains("not linked"));
    // A bad signature is a 401 problem and nothing happens.
    let forged = t
        .slack(
            &[
                ("command", "/pm"),
                ("text", "create Forged"),
                ("team_id", "T1"),
                ("user_id", "U1"),
                ("channel_id", "C0PM"),
                ("response_url", "https://hooks.slack.com/x"),
            ],
            false,
        )
        .await;
    forged.problem(401);
    // A signed form without the fields of a command is a 400 naming the field.
    let broken = t.slack(&[("command", "/pm"), ("text", "list")], true).await;
    assert_eq!(broken.problem(400)["field"], "team_id");
    let tasks = t
        .s
        .call(Method::GET, &format!("/api/v1/projects/{}/tasks", t.project), Some(&t.token), None)
        .await;
    assert_eq!(tasks.ok(200)["items"].as_array().unwrap().len(), 2, "only the two real tasks");
    let ops: Vec<String> =
        t.logs().await.iter().map(|l| l["operation"].as_str().unwrap().to_owned()).collect();
    assert!(ops.iter().filter(|o| *o == "slack.command").count() >= 4, "{ops:?}");
    assert!(ops.contains(&"webhook.rejected".to_owned()), "{ops:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_slower_than_the_budget_is_answered_through_response_url() {
    // A zero budget: the synchronous reply cannot wait for the work.
    let t =
        setup_with("slow.cmd@example.com", "slack", json!({}), false, Some(Duration::ZERO)).await;
    t.slack_knows_u1().await;
    let r = t.command("create Slow but sure", "U1").await;
    assert!(r.ok(200)["text"].as_str().unwrap().starts_with("Working on it"), "{}", r.body);
    let late = wait_for(&t.mock, "POST", "/slack/commands/T1/42", |b| {
        b["response_type"] == "ephemeral" && b["text"] == "Created PL-1: Slow but sure"
    })
    .await;
    assert!(late.get("blocks").is_none());
    wait_for(&t.mock, "POST", "/slack/commands/T1/42", |b| b["response_type"] == "in_channel")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_buttons_assign_to_me_and_change_state() {
    let t = setup("slack.buttons@example.com", "slack", json!({})).await;
    t.slack_knows_u1().await;
    let task = t.task("Triage the inbox", None).await;
    let id = task["id"].as_str().unwrap();
    assert!(task["assignees"].as_array().unwrap().is_empty());

    let r = t.action(pm_integrations::slack::ACTION_ASSIGN_ME, id).await;
    r.ok(200);
    let after = t.get_task(id).await;
    assert_eq!(after["assignees"].as_array().unwrap().len(), 1, "{after}");
    let replaced =
        wait_for(&t.mock, "POST", "/slack/actions/T1/7", |b| b["replace_original"] == true).await;
    assert!(blocks_text(&replaced).contains("Tester"), "the card shows the assignee: {replaced}");

    let done = t.state_id("Done");
    t.action(pm_integrations::slack::ACTION_SET_STATE, &format!("{id}:{done}")).await.ok(200);
    assert_eq!(t.get_task(id).await["state_id"], done.as_str());

    // A task of another project is not reachable through this integration: nothing changes
    // and the user is told.
    let other =
        t.s.call(
            Method::POST,
            &format!("/api/v1/orgs/{}/projects", t.org),
            Some(&t.token),
            Some(json!({"key": "OT", "name": "Other"})),
        )
        .await;
    let other_project = other.ok(201)["id"].as_str().unwrap().to_owned();
    let foreign =
        t.s.call(
            Method::POST,
            &format!("/api/v1/projects/{other_project}/tasks"),
            Some(&t.token),
            Some(json!({"title": "Elsewhere"})),
        )
        .await;
    let foreign_id = foreign.ok(201)["id"].as_str().unwrap().to_owned();
    t.action(pm_integrations::slack::ACTION_ASSIGN_ME, &foreign_id).await.ok(200);
    wait_for(&t.mock, "POST", "/slack/actions/T1/7", |b| {
        b["text"].as_str().is_some_and(|s| s.starts_with("Sorry"))
    })
    .await;
    assert!(t.get_task(&foreign_id).await["assignees"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_notifications_are_posted_with_block_kit() {
    let t = setup("slack.notify@example.com", "slack", json!({"channel": "C0PM"})).await;
    // Slack fails the first post (a 500): the consumer tries again.
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&t.mock)
        .await;
    t.slack_knows_u1().await;
    let task = t.task("Ship the beta", None).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let me = t.s.call(Method::GET, "/api/v1/me", Some(&t.token), None).await;
    let me = me.ok(200)["id"].clone();
    t.patch_task(&id, json!({"assignees": [me]})).await;
    let posted = wait_for(&t.mock, "POST", "/api/chat.postMessage", |b| {
        b["text"].as_str().is_some_and(|s| s.contains("Assignees changed on PL-1"))
    })
    .await;
    assert_eq!(posted["channel"], "C0PM");
    assert_eq!(posted["blocks"][1]["type"], "section");
    assert!(blocks_text(&posted).contains("Ship the beta"));
    eventually("the failed post and its retry", || async {
        seen(&t.mock, "POST", "/api/chat.postMessage").await.len() == 2
    })
    .await;
    let posts = seen(&t.mock, "POST", "/api/chat.postMessage").await;
    assert_eq!(posts[0].body, posts[1].body);
    assert_eq!(posts[1].headers["authorization"], "Bearer xoxb-17-bot-token");

    t.patch_task(&id, json!({"state_id": t.state_id("In Progress")})).await;
    wait_for(&t.mock, "POST", "/api/chat.postMessage", |b| {
        b["text"]
            .as_str()
            .is_some_and(|s| s.contains("State changed on PL-1") && s.contains("In Progress"))
    })
    .await;
    t.s.call(
        Method::POST,
        &format!("/api/v1/tasks/{id}/comments"),
        Some(&t.token),
        Some(json!({"body": "Looks good"})),
    )
    .await
    .ok(201);
    wait_for(&t.mock, "POST", "/api/chat.postMessage", |b| {
        b["text"].as_str().is_some_and(|s| s.contains("commented on PL-1: Looks good"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_message_action_reaches_slack() {
    let t =
        setup_with("wf.slack@example.com", "slack", json!({"channel": "C0PM"}), true, None).await;
    t.slack_knows_u1().await;
    let def = json!({
        "schema_version": 1,
        "name": "Announce new tasks",
        "trigger": {"type": "task_created"},
        "steps": [{"type": "action", "action": {"type": "message", "provider": "slack",
                   "channel": "#C0PM", "text": "New task {{ task.reference }}"}}]
    });
    let created =
        t.s.call(
            Method::POST,
            &format!("/api/v1/orgs/{}/workflows", t.org),
            Some(&t.token),
            Some(json!({"definition": def, "project_id": t.project})),
        )
        .await;
    created.ok(201);
    t.task("Automate me", None).await;
    let posted =
        wait_for(&t.mock, "POST", "/api/chat.postMessage", |b| b["text"] == "New task PL-1").await;
    assert_eq!(posted["channel"], "#C0PM");
    assert!(blocks_text(&posted).contains("Sent by a pm workflow"));
}

/// Slack has no idempotency key: the intent is recorded before `chat.postMessage` and marked
/// done with the `ts` after, so a replayed workflow step (its own record lost) does not post
/// twice; a send left pending by a sender that died is posted again once its lease is over
/// (at-least-once), and not while another sender may still be in the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_message_is_posted_once_per_idempotency_key() {
    use pm_integrations::model::{Intent, IntentClaim};
    use pm_workflows::ports::MessageSender;
    let t = setup("once.slack@example.com", "slack", json!({"channel": "C0PM"})).await;
    t.slack_knows_u1().await;
    let org = pm_core::id::OrgId(t.org.parse().unwrap());
    let sender = pm_server::chat::SlackMessages::new(t.ints.clone());
    let posts = |text: &'static str| {
        let mock = &t.mock;
        async move {
            seen(mock, "POST", "/api/chat.postMessage")
                .await
                .iter()
                .filter(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["text"] == text)
                .count()
        }
    };

    let first = sender.send(org, "slack", "#C0PM", "once", "run-1/step-0").await.unwrap();
    let again = sender.send(org, "slack", "#C0PM", "once", "run-1/step-0").await.unwrap();
    assert_eq!(again["ts"], first["ts"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(posts("once").await, 1, "a replay does not post again");

    // A sender died mid-call two minutes ago: past the lease, the replay posts.
    let integration = pm_core::id::IntegrationId(t.integration.parse().unwrap());
    let now = time::OffsetDateTime::now_utc();
    let stale = Intent {
        key: "slack.message:run-2/step-0".into(),
        integration_id: integration,
        kind: "slack.message".into(),
        started_at: now - Duration::from_secs(120),
    };
    let claim = t.ints.stores.sync_state.begin_intent(&stale, now - Duration::from_secs(600));
    assert_eq!(claim.await.unwrap(), IntentClaim::Claimed);
    let r = sender.send(org, "slack", "#C0PM", "taken over", "run-2/step-0").await.unwrap();
    assert!(r.get("replayed").is_none(), "{r}");
    assert_eq!(posts("taken over").await, 1);

    // Another sender holds the key right now: nothing is posted, the step is retried later.
    let busy = Intent { key: "slack.message:run-3/step-0".into(), started_at: now, ..stale };
    let claim = t.ints.stores.sync_state.begin_intent(&busy, now - Duration::from_secs(600));
    assert_eq!(claim.await.unwrap(), IntentClaim::Claimed);
    let err = sender.send(org, "slack", "#C0PM", "busy", "run-3/step-0").await.unwrap_err();
    assert!(matches!(err, pm_workflows::Error::Action(_)), "{err:?}");
    assert_eq!(posts("busy").await, 0);
}

// --- calendars ---------------------------------------------------------------------------------

fn graph_event(id: &str, start: &str) -> Value {
    json!({
        "@odata.etag": "W/\"DwAAABYAAAA\"",
        "id": id, "subject": "PL-1 Launch", "isAllDay": false, "isCancelled": false,
        "start": {"dateTime": start, "timeZone": "UTC"},
        "end": {"dateTime": start, "timeZone": "UTC"}
    })
}

async fn post_raw(t: &Setup, path: &str, body: &str, headers: &[(&str, &str)]) -> Res {
    let mut req = t.s.http.post(format!("{}{path}", t.s.base)).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = to_res(req.send().await.unwrap()).await;
    super::openapi::validate(&Method::POST, path, &res);
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_events_follow_due_dates_both_ways_with_subscription_renewal() {
    let t = setup("graph.cal@example.com", "outlook", json!({})).await;
    let hook = format!("/api/v1/hooks/outlook/{}", t.integration);
    Mock::given(method("POST"))
        .and(path("/v1.0/me/events"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(graph_event("AAMkAGEv1=", "2025-03-10T00:00:00.0000000")),
        )
        .mount(&t.mock)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v1.0/me/events/AAMkAGEv1="))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(graph_event("AAMkAGEv1=", "2025-03-12T00:00:00.0000000")),
        )
        .mount(&t.mock)
        .await;

    // A task with a due date gets an all-day event; a due-date change via REST moves it.
    let task = t.task("Launch", Some("2025-03-10")).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let created = wait_for(&t.mock, "POST", "/v1.0/me/events", |_| true).await;
    assert_eq!(created["isAllDay"], true);
    assert_eq!(created["transactionId"], id.as_str(), "idempotent creates");
    assert_eq!(created["start"]["dateTime"], "2025-03-10T00:00:00");
    assert_eq!(created["end"]["dateTime"], "2025-03-11T00:00:00");
    t.patch_task(&id, json!({"due_date": "2025-03-12"})).await;
    let moved = wait_for(&t.mock, "PATCH", "/v1.0/me/events/AAMkAGEv1=", |_| true).await;
    assert_eq!(moved["start"]["dateTime"], "2025-03-12T00:00:00");

    // The subscription: the renewal job opens it (clientState = the integration's secret).
    Mock::given(method("POST"))
        .and(path("/v1.0/subscriptions"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "resource": "me/events",
            "changeType": "created,updated,deleted",
            "expirationDateTime": (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
                .format(&time::format_description::well_known::Rfc3339).unwrap(),
        })))
        .mount(&t.mock)
        .await;
    assert_eq!(pm_server::chat::renew_watches_once(&t.ints).await.unwrap(), 1);
    let sub = wait_for(&t.mock, "POST", "/v1.0/subscriptions", |_| true).await;
    assert_eq!(sub["clientState"], t.secret.as_str());
    assert_eq!(sub["notificationUrl"], format!("https://pm.example.com{hook}"));
    assert_eq!(sub["lifecycleNotificationUrl"], sub["notificationUrl"]);

    // Graph's validation handshake echoes the token as text/plain.
    let v =
        t.s.http
            .post(format!("{}{hook}?validationToken=Validation%3A%20Testing%20client", t.s.base))
            .send()
            .await
            .unwrap();
    assert_eq!(v.status(), 200);
    assert_eq!(v.headers()["content-type"], "text/plain");
    assert_eq!(v.text().await.unwrap(), "Validation: Testing client");

    // The event is moved in Outlook: Graph notifies, pm fetches the event, the due date follows.
    Mock::given(method("GET"))
        .and(path("/v1.0/me/events/AAMkAGEv1="))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(graph_event("AAMkAGEv1=", "2025-03-20T15:30:00.0000000")),
        )
        .mount(&t.mock)
        .await;
    let note = |cs: &str| {
        json!({"value": [{
            "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "clientState": cs,
            "changeType": "updated", "resource": "Users/u/Events/AAMkAGEv1=",
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "tenantId": "t",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": "Users/u/Events/AAMkAGEv1=", "id": "AAMkAGEv1="}
        }]})
        .to_string()
    };
    // A forged clientState is refused and nothing is fetched.
    post_raw(&t, &hook, &note("forged"), &[("content-type", "application/json")])
        .await
        .problem(401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen(&t.mock, "GET", "/v1.0/me/events").await.is_empty(), "nothing processed");
    post_raw(&t, &hook, &note(&t.secret), &[("content-type", "application/json")]).await.ok(202);
    eventually("the due date to follow the event", || async {
        t.get_task(&id).await["due_date"] == "2025-03-20"
    })
    .await;
    // That change is the calendar's own: it is not pushed back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen(&t.mock, "PATCH", "/v1.0/me/events").await.len(), 1, "no echo");

    // Renewal before expiry (the subscription expires within `renew_before`).
    Mock::given(method("PATCH"))
        .and(path("/v1.0/subscriptions/7f105c7d-2dc5-4530-97cd-4e7ae6534c07"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "expirationDateTime": (time::OffsetDateTime::now_utc() + time::Duration::days(2))
                .format(&time::format_description::well_known::Rfc3339).unwrap(),
        })))
        .mount(&t.mock)
        .await;
    assert_eq!(pm_server::chat::renew_watches_once(&t.ints).await.unwrap(), 1);
    let renewal = wait_for(&t.mock, "PATCH", "/v1.0/subscriptions/", |_| true).await;
    assert!(renewal["expirationDateTime"].is_string());
    assert_eq!(pm_server::chat::renew_watches_once(&t.ints).await.unwrap(), 0, "fresh now");

    // Lifecycle: Graph removed the subscription → pm creates a new one.
    let removed = json!({"value": [{"subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "clientState": t.secret, "lifecycleEvent": "subscriptionRemoved",
        "resource": "me/events", "tenantId": "t", "organizationId": "t"}]})
    .to_string();
    post_raw(&t, &hook, &removed, &[("content-type", "application/json")]).await.ok(202);
    eventually("a new subscription", || async {
        seen(&t.mock, "POST", "/v1.0/subscriptions").await.len() == 2
    })
    .await;

    // Lifecycle: Graph asks for reauthorization → pm renews the subscription at once.
    let reauth = json!({"value": [{"subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "clientState": t.secret, "lifecycleEvent": "reauthorizationRequired",
        "resource": "me/events", "tenantId": "t", "organizationId": "t"}]})
    .to_string();
    post_raw(&t, &hook, &reauth, &[("content-type", "application/json")]).await.ok(202);
    eventually("the subscription to be renewed", || async {
        seen(&t.mock, "PATCH", "/v1.0/subscriptions/").await.len() == 2
    })
    .await;

    // Clearing the due date deletes the event.
    Mock::given(method("DELETE"))
        .and(path("/v1.0/me/events/AAMkAGEv1="))
        .respond_with(ResponseTemplate::new(204))
        .mount(&t.mock)
        .await;
    t.patch_task(&id, json!({"due_date": null})).await;
    eventually("the event to be deleted", || async {
        !seen(&t.mock, "DELETE", "/v1.0/me/events/AAMkAGEv1=").await.is_empty()
    })
    .await;
    let req = seen(&t.mock, "POST", "/v1.0/me/events").await.remove(0);
    assert_eq!(req.headers["authorization"], "Bearer ya29.calendar-access");
}

/// A Google push ping: no body, everything in `X-Goog-*` headers.
async fn ping_hook(t: &Setup, hook: &str, headers: &[(&'static str, String)]) -> Res {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_raw(t, hook, "", &h).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_events_follow_due_dates_both_ways_through_channels_and_sync_tokens() {
    let t = setup("google.cal@example.com", "google_calendar", json!({})).await;
    let hook = format!("/api/v1/hooks/google_calendar/{}", t.integration);
    let g = |id: &str, date: &str| {
        json!({"kind": "calendar#event", "id": id, "status": "confirmed", "summary": "PL-1 Launch",
               "start": {"date": date}, "end": {"date": date}, "etag": "\"3181161784712000\""})
    };
    Mock::given(method("POST"))
        .and(path("/calendar/v3/calendars/primary/events"))
        .respond_with(ResponseTemplate::new(200).set_body_json(g("evt0pm1", "2025-04-01")))
        .mount(&t.mock)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/calendar/v3/calendars/primary/events/evt0pm1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(g("evt0pm1", "2025-04-03")))
        .mount(&t.mock)
        .await;
    let task = t.task("Launch", Some("2025-04-01")).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let created =
        wait_for(&t.mock, "POST", "/calendar/v3/calendars/primary/events", |_| true).await;
    assert_eq!(created["start"]["date"], "2025-04-01");
    assert_eq!(created["id"], format!("pm{}", id.replace('-', "")), "idempotent creates");
    assert_eq!(created["end"]["date"], "2025-04-02");
    t.patch_task(&id, json!({"due_date": "2025-04-03"})).await;
    let moved =
        wait_for(&t.mock, "PATCH", "/calendar/v3/calendars/primary/events/evt0pm1", |_| true).await;
    assert_eq!(moved["start"]["date"], "2025-04-03");

    // Renewal job: opens a watch channel (channel token = the integration's secret) and takes
    // the first sync token from a full listing.
    let expiring =
        (time::OffsetDateTime::now_utc() + time::Duration::hours(1)).unix_timestamp() * 1000;
    Mock::given(method("POST"))
        .and(path("/calendar/v3/calendars/primary/events/watch"))
        .respond_with(move |req: &Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            ResponseTemplate::new(200).set_body_json(json!({
                "kind": "api#channel", "id": body["id"], "resourceId": "o3hgv1538sdjfh",
                "resourceUri": "https://www.googleapis.com/calendar/v3/calendars/primary/events",
                "token": body["token"], "expiration": expiring.to_string()
            }))
        })
        .mount(&t.mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/primary/events"))
        .and(query_param("syncToken", "sync-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "calendar#events", "items": [g("evt0pm1", "2025-04-09"), g("not-ours", "2025-01-01")],
            "nextSyncToken": "sync-2"
        })))
        .mount(&t.mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/calendar/v3/calendars/primary/events"))
        .and(query_param("showDeleted", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "calendar#events", "items": [g("evt0pm1", "2025-04-03")], "nextSyncToken": "sync-1"
        })))
        .mount(&t.mock)
        .await;
    assert_eq!(pm_server::chat::renew_watches_once(&t.ints).await.unwrap(), 1);
    let watch =
        wait_for(&t.mock, "POST", "/calendar/v3/calendars/primary/events/watch", |_| true).await;
    assert_eq!(watch["token"], t.secret.as_str());
    assert_eq!(watch["type"], "web_hook");
    assert_eq!(watch["address"], format!("https://pm.example.com{hook}"));
    let channel = watch["id"].as_str().unwrap().to_owned();

    let ping = |token: &str, n: &str| {
        vec![
            (GOOGLE_CHANNEL_ID, channel.clone()),
            (GOOGLE_MESSAGE_NUMBER, n.to_owned()),
            (GOOGLE_CHANNEL_TOKEN, token.to_owned()),
            ("X-Goog-Resource-State", "exists".to_owned()),
            ("X-Goog-Resource-ID", "o3hgv1538sdjfh".to_owned()),
        ]
    };
    // A wrong channel token: 401, nothing is listed.
    ping_hook(&t, &hook, &ping("wrong", "2")).await.problem(401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let incremental = |r: &Request| r.url.query().is_some_and(|q| q.contains("syncToken"));
    assert!(!seen(&t.mock, "GET", "/calendar/v3").await.iter().any(incremental));
    // The real ping: pm lists the changes since its sync token; the moved event moves the task.
    ping_hook(&t, &hook, &ping(&t.secret, "3")).await.ok(202);
    eventually("the due date to follow the event", || async {
        t.get_task(&id).await["due_date"] == "2025-04-09"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seen(&t.mock, "PATCH", "/calendar/v3/calendars/primary/events/").await.len(),
        1,
        "the calendar's own change is not pushed back"
    );
    let saved = t
        .s
        .call(Method::GET, &format!("/api/v1/integrations/{}", t.integration), Some(&t.token), None)
        .await;
    assert_eq!(saved.ok(200)["config"]["push_channel"]["sync_token"], "sync-2");

    // Renewal before expiry: a new channel, the old one stopped.
    Mock::given(method("POST"))
        .and(path("/calendar/v3/channels/stop"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&t.mock)
        .await;
    assert_eq!(pm_server::chat::renew_watches_once(&t.ints).await.unwrap(), 1);
    let stop = wait_for(&t.mock, "POST", "/calendar/v3/channels/stop", |_| true).await;
    assert_eq!(stop["id"], channel.as_str());
    assert_eq!(stop["resourceId"], "o3hgv1538sdjfh");
    assert_eq!(seen(&t.mock, "POST", "/calendar/v3/calendars/primary/events/watch").await.len(), 2);
}

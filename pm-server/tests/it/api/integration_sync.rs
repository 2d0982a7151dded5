//! Two-way sync end to end: a real server on loopback with its workers running (inbound
//! processor, sync pusher), against wiremock servers that behave like GitHub's REST issues API
//! and Jira Cloud's REST v3 (stateful: what we PATCH is what a later GET returns, with the
//! providers' shapes, auth headers and status codes). Webhooks are signed like the providers
//! sign them.
//!
//! Covered: GitHub and Jira round trips both ways (webhook → task, task → issue), edits of
//! different fields on both sides merging, the same field edited on both sides following its
//! policy and recorded as a conflict (listed and settled through the API), our own echo
//! ignored, a 429 with `Retry-After` waited out, Jira export (idempotent) and transitions, and
//! the API token unreadable in the raw database row; comments both ways (GitHub and Jira), with
//! comments written on GitHub staying local when edited in pm; failing pushes parked in the
//! durable retry queue while other pushes go on (across a restart too), the queue listed
//! through the API and measured on `/metrics`, and recorded failures retried or dismissed
//! through the API.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pm_core::event::Origin;
use pm_core::id::TaskId;
use pm_integrations::crypto::{EncryptionKey, Keyring};
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::webhook::inbound::{
    GITHUB_DELIVERY, GITHUB_EVENT, GITHUB_SIGNATURE, JIRA_DELIVERY, JIRA_SIGNATURE, hub_signature,
};
use pm_server::integrations::{Integrations, WorkerConfig, Workers};
use reqwest::Method;
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

use super::{Server, org_and_project, to_res};

const GITHUB_TOKEN: &str = "ghp_testtoken0123456789";
const JIRA_EMAIL: &str = "bot@example.com";
const JIRA_TOKEN: &str = "ATATT-jira-api-token-42";

/// A server with integrations (loopback allowed for the mock providers) and its workers.
async fn server() -> (Server, Integrations, Workers, tempfile::TempDir) {
    server_with(|_| {}).await
}

/// [`server`] with its worker timing adjusted by `tune`.
async fn server_with(
    tune: impl FnOnce(&mut WorkerConfig),
) -> (Server, Integrations, Workers, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    let keyring = Keyring::new("test", &EncryptionKey::generate()).unwrap();
    let policy = TargetPolicy::parse_allow_list("127.0.0.1/32").unwrap();
    let mut ints = Integrations::open(&url, Some(keyring), policy).await.unwrap();
    ints.worker = WorkerConfig {
        backoff: vec![Duration::from_millis(50)],
        disable_after: 3,
        lease: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        batch: 50,
        poll: Duration::from_millis(50),
        push_retries: 3,
        push_backoff_cap: Duration::from_millis(300),
    };
    tune(&mut ints.worker);
    let for_state = ints.clone();
    let s =
        Server::start_with(move |state| *state = state.clone().with_integrations(for_state)).await;
    // The state's copy has pm-core's services attached (the sync needs them).
    let ints = s.state.integrations.clone().unwrap();
    let workers = ints.start(s.state.stores.events.clone());
    (s, ints, workers, dir)
}

/// Evaluates `check` (an expression that may `.await`) until it is `Some`, for up to 20 s.
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = $check {
                break v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

// --- a GitHub-shaped mock ------------------------------------------------------------------------

#[derive(Default)]
struct GitHubState {
    issues: BTreeMap<u64, Value>,
    /// Seconds added to "now" for the next `updated_at` (GitHub times have second resolution).
    tick: i64,
    /// (method, path, when) of every authenticated request.
    requests: Vec<(String, String, Instant)>,
    /// PATCHes still to answer with a secondary-rate-limit 429.
    limit_patches: u32,
    /// Issue PATCHes answer 502 while set (an outage).
    fail_patches: bool,
    /// PATCHes of these issues answer 502 while set (an outage of one item).
    failing_issues: Vec<u64>,
    /// Issue PATCHes answer 503 (no `Retry-After`) while set (GitHub unavailable).
    unavailable: bool,
    /// Issue PATCHes answer 403 while set (no permission: retrying will not help).
    forbid_patches: bool,
    /// How long issue creates take to answer (the issue exists as soon as the request
    /// arrives, as on GitHub, whose webhook may beat the response).
    create_delay: Duration,
    /// Issue comments by id.
    comments: BTreeMap<u64, Value>,
    /// Comments created so far (ids are never reused).
    comment_count: u64,
}

/// GitHub's issues API for `octo/repo`: create, get, update, comment — with bearer auth.
#[derive(Clone, Default)]
struct GitHub(Arc<Mutex<GitHubState>>);

impl GitHub {
    fn stamp(st: &mut GitHubState) -> String {
        st.tick += 1;
        rfc3339(
            time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
                + time::Duration::seconds(st.tick),
        )
    }

    fn issue(number: u64, title: &str, body: &str, labels: &[&str], updated_at: String) -> Value {
        json!({
            "id": 1000 + number, "node_id": format!("I_{number}"), "number": number,
            "title": title, "body": body, "state": "open", "state_reason": null,
            "labels": labels.iter().map(|l| json!({"id": 1, "name": l, "color": "ededed"})).collect::<Vec<_>>(),
            "html_url": format!("https://github.com/octo/repo/issues/{number}"),
            "user": {"login": "octocat", "id": 1}, "comments": 0,
            "created_at": updated_at, "updated_at": updated_at,
        })
    }

    /// An issue created on GitHub (not through us).
    fn create_remote(&self, title: &str, body: &str, labels: &[&str]) -> Value {
        let mut st = self.0.lock().unwrap();
        let number = st.issues.len() as u64 + 1;
        let at = Self::stamp(&mut st);
        let issue = Self::issue(number, title, body, labels, at);
        st.issues.insert(number, issue.clone());
        issue
    }

    /// An edit made on GitHub (not through us), `later` seconds ahead.
    fn edit_remote(&self, number: u64, later: i64, f: impl FnOnce(&mut Value)) -> Value {
        let mut st = self.0.lock().unwrap();
        st.tick += later;
        let at = Self::stamp(&mut st);
        let issue = st.issues.get_mut(&number).unwrap();
        f(issue);
        issue["updated_at"] = json!(at);
        issue.clone()
    }

    fn get(&self, number: u64) -> Value {
        self.0.lock().unwrap().issues[&number].clone()
    }

    fn find(&self, title: &str) -> Option<Value> {
        self.0.lock().unwrap().issues.values().find(|i| i["title"] == title).cloned()
    }

    fn requests(&self, method: &str) -> Vec<(String, Instant)> {
        let st = self.0.lock().unwrap();
        st.requests.iter().filter(|r| r.0 == method).map(|r| (r.1.clone(), r.2)).collect()
    }

    fn labels(issue: &Value) -> Vec<String> {
        let mut v: Vec<String> = issue["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }
}

impl Respond for GitHub {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let auth = req.headers.get("authorization").and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {GITHUB_TOKEN}")) {
            return ResponseTemplate::new(401).set_body_json(json!({
                "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest",
                "status": "401"}));
        }
        let mut st = self.0.lock().unwrap();
        let method = req.method.to_string();
        let path = req.url.path().to_owned();
        st.requests.push((method.clone(), path.clone(), Instant::now()));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let not_found = || {
            ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found",
                "documentation_url": "https://docs.github.com/rest/issues/issues#get-an-issue"}))
        };
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["repos", "octo", "repo", "issues"]) => {
                let number = st.issues.len() as u64 + 1;
                let at = Self::stamp(&mut st);
                let labels: Vec<&str> = body["labels"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let issue = Self::issue(
                    number,
                    body["title"].as_str().unwrap_or_default(),
                    body["body"].as_str().unwrap_or_default(),
                    &labels,
                    at,
                );
                st.issues.insert(number, issue.clone());
                ResponseTemplate::new(201).set_body_json(issue).set_delay(st.create_delay)
            }
            ("GET", ["repos", "octo", "repo", "issues", n]) => {
                match n.parse::<u64>().ok().and_then(|n| st.issues.get(&n)) {
                    Some(i) => ResponseTemplate::new(200).set_body_json(i),
                    None => not_found(),
                }
            }
            ("PATCH", ["repos", "octo", "repo", "issues", "comments", id]) => {
                let Some(c) = id.parse::<u64>().ok().and_then(|id| st.comments.get_mut(&id)) else {
                    return not_found();
                };
                c["body"] = body["body"].clone();
                ResponseTemplate::new(200).set_body_json(c.clone())
            }
            ("DELETE", ["repos", "octo", "repo", "issues", "comments", id]) => {
                match id.parse::<u64>().ok().and_then(|id| st.comments.remove(&id)) {
                    Some(_) => ResponseTemplate::new(204),
                    None => not_found(),
                }
            }
            ("PATCH", ["repos", "octo", "repo", "issues", n]) => {
                if st.fail_patches || n.parse().is_ok_and(|n: u64| st.failing_issues.contains(&n)) {
                    return ResponseTemplate::new(502).set_body_string("Bad Gateway");
                }
                if st.unavailable {
                    return ResponseTemplate::new(503).set_body_json(json!({
                        "message": "Service Unavailable",
                        "documentation_url": "https://www.githubstatus.com"}));
                }
                if st.forbid_patches {
                    return ResponseTemplate::new(403).set_body_json(json!({
                        "message": "Must have admin rights to Repository.",
                        "documentation_url": "https://docs.github.com/rest/issues/issues#update-an-issue"}));
                }
                if st.limit_patches > 0 {
                    st.limit_patches -= 1;
                    return ResponseTemplate::new(429).insert_header("retry-after", "1").set_body_json(
                        json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                               "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}),
                    );
                }
                let at = Self::stamp(&mut st);
                let Some(issue) = n.parse::<u64>().ok().and_then(|n| st.issues.get_mut(&n)) else {
                    return not_found();
                };
                for k in ["title", "body", "state"] {
                    if let Some(v) = body.get(k) {
                        issue[k] = v.clone();
                    }
                }
                if let Some(l) = body["labels"].as_array() {
                    issue["labels"] =
                        l.iter().map(|n| json!({"id": 1, "name": n, "color": "ededed"})).collect();
                }
                issue["updated_at"] = json!(at);
                ResponseTemplate::new(200).set_body_json(issue.clone())
            }
            ("POST", ["repos", "octo", "repo", "issues", n, "comments"]) => {
                st.comment_count += 1;
                let id = 554 + st.comment_count;
                let at = Self::stamp(&mut st);
                let c = json!({"id": id, "body": body["body"], "user": {"login": "pm-bot"},
                    "issue_url": format!("https://api.github.com/repos/octo/repo/issues/{n}"),
                    "created_at": at, "updated_at": at});
                st.comments.insert(id, c.clone());
                ResponseTemplate::new(201).set_body_json(c)
            }
            _ => not_found(),
        }
    }
}

async fn github_mock() -> (MockServer, GitHub) {
    let server = MockServer::start().await;
    let gh = GitHub::default();
    Mock::given(any()).respond_with(gh.clone()).mount(&server).await;
    (server, gh)
}

/// Sends a signed GitHub `issues` webhook for `issue`; returns the delivery id.
async fn github_hook(s: &Server, id: &str, secret: &str, action: &str, issue: &Value) -> String {
    let delivery = uuid::Uuid::now_v7().to_string();
    let body = json!({"action": action, "issue": issue,
        "repository": {"full_name": "octo/repo", "id": 42}, "sender": {"login": "octocat"}})
    .to_string();
    let res = s
        .http
        .post(format!("{}/api/v1/hooks/github/{id}", s.base))
        .header(GITHUB_SIGNATURE, hub_signature(secret.as_bytes(), body.as_bytes()))
        .header(GITHUB_DELIVERY, &delivery)
        .header(GITHUB_EVENT, "issues")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    delivery
}

/// Sends a signed GitHub `issue_comment` webhook; returns the delivery id.
async fn comment_hook(
    s: &Server,
    id: &str,
    secret: &str,
    action: &str,
    issue: &Value,
    comment: &Value,
) -> String {
    let delivery = uuid::Uuid::now_v7().to_string();
    let body = json!({"action": action, "issue": issue, "comment": comment,
        "repository": {"full_name": "octo/repo", "id": 42}, "sender": {"login": "octocat"}})
    .to_string();
    let res = s
        .http
        .post(format!("{}/api/v1/hooks/github/{id}", s.base))
        .header(GITHUB_SIGNATURE, hub_signature(secret.as_bytes(), body.as_bytes()))
        .header(GITHUB_DELIVERY, &delivery)
        .header(GITHUB_EVENT, "issue_comment")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    delivery
}

/// Waits for the delivery to be processed; returns what its events did.
async fn processed(ints: &Integrations, id: &str, delivery: &str) -> String {
    let iid = pm_core::id::IntegrationId(id.parse().unwrap());
    eventually!("the delivery to be processed", {
        let logs = ints.stores.logs.list_logs(Some(iid), 100, None).await.unwrap();
        logs.items
            .iter()
            .find(|l| {
                l.operation == "webhook.processed" && l.detail.as_value()["delivery_id"] == delivery
            })
            .map(|l| l.detail.as_value()["events"].to_string())
    })
}

async fn create_integration(
    s: &Server,
    token: &str,
    project: &str,
    body: Value,
) -> (String, String) {
    let res = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/integrations"),
            Some(token),
            Some(body),
        )
        .await;
    let b = res.ok(201);
    (
        b["integration"]["id"].as_str().unwrap().to_owned(),
        b["webhook_secret"].as_str().unwrap().to_owned(),
    )
}

/// The task mapped to `external`, once both the mapping and the task exist (an inbound create
/// writes the mapping first, then the task under the id it holds).
async fn mapped_task(s: &Server, token: &str, id: &str, external: &str) -> TaskId {
    let task_id = eventually!("the item to be mapped", {
        let res = s
            .call(Method::GET, &format!("/api/v1/integrations/{id}/mappings"), Some(token), None)
            .await;
        res.ok(200)["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["external_id"] == external)
            .map(|m| TaskId(m["task_id"].as_str().unwrap().parse().unwrap()))
    });
    eventually!("the mapped task", s.state.pm.get_task(&Origin::system(), task_id).await.ok());
    task_id
}

async fn task(s: &Server, id: TaskId) -> pm_core::model::Task {
    s.state.pm.get_task(&Origin::system(), id).await.unwrap()
}

async fn label_names(s: &Server, t: &pm_core::model::Task) -> Vec<String> {
    let labels = s.state.pm.list_labels(&Origin::system(), t.org_id).await.unwrap();
    let mut names: Vec<String> = labels
        .iter()
        .filter(|l| t.labels.contains(&l.id))
        .map(|l| l.name.as_str().to_owned())
        .collect();
    names.sort();
    names
}

async fn patch_task(s: &Server, token: &str, id: TaskId, body: Value) -> Value {
    let version = task(s, id).await.version;
    let mut body = body;
    body["version"] = json!(version);
    s.call(Method::PATCH, &format!("/api/v1/tasks/{}", id.0), Some(token), Some(body))
        .await
        .ok(200)
        .clone()
}

async fn github_setup(
    s: &Server,
    slug: &str,
    base: &str,
) -> (String, String, String, String, Vec<Value>) {
    let (user, token) = s.user(&format!("{slug}@example.com")).await;
    let (_, project, states) = org_and_project(s, &token, slug, "GH").await;
    let (id, secret) = create_integration(
        s,
        &token,
        &project,
        json!({"provider": "github", "name": "octo/repo", "api_token": GITHUB_TOKEN,
               "config": {"repository": "octo/repo", "base_url": base, "reporter_id": user.0}}),
    )
    .await;
    (token, project, id, secret, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_round_trips_both_ways_and_its_echo_is_ignored() {
    let (s, ints, _workers, dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, project, id, secret, _) = github_setup(&s, "ghround", &mock.uri()).await;

    // GitHub → pm: an issue opened on GitHub becomes a task (labels created by name).
    let issue = gh.create_remote("Fix login", "Steps:\r\n1. open", &["bug"]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    assert!(processed(&ints, &id, &d).await.contains("Created"));
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;
    let t = task(&s, task_id).await;
    assert_eq!(t.title.as_str(), "Fix login");
    assert_eq!(t.description.as_str(), "Steps:\n1. open");
    assert_eq!(label_names(&s, &t).await, ["bug"]);
    // A redelivery under a new id (GitHub "redeliver") creates nothing twice.
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let tasks =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks"), Some(&token), None).await;
    assert_eq!(tasks.ok(200)["items"].as_array().unwrap().len(), 1);

    // pm → GitHub: a local edit is pushed by the sync pusher.
    patch_task(&s, &token, task_id, json!({"title": "Fix login page"})).await;
    eventually!("the title to reach GitHub", {
        (gh.get(1)["title"] == "Fix login page").then_some(())
    });
    // (The sync commits its new base right after the PATCH; wait for it, as GitHub's webhook
    // would take longer than that to arrive.)
    eventually!("the new base", {
        let res = s
            .call(Method::GET, &format!("/api/v1/integrations/{id}/mappings"), Some(&token), None)
            .await;
        (res.ok(200)["items"][0]["base"]["title"] == "Fix login page").then_some(())
    });
    let patches = gh.requests("PATCH").len();
    let version = task(&s, task_id).await.version;

    // GitHub's webhook for our own edit comes back: ignored, nothing written or pushed.
    let d = github_hook(&s, &id, &secret, "edited", &gh.get(1)).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"), "our own change must be an echo");
    assert_eq!(task(&s, task_id).await.version, version);
    assert_eq!(gh.requests("PATCH").len(), patches, "nothing pushed back");

    // GitHub → pm: closing the issue on GitHub completes the task.
    let closed = gh.edit_remote(1, 0, |i| {
        i["state"] = json!("closed");
        i["title"] = json!("Fix login page (done)");
    });
    let d = github_hook(&s, &id, &secret, "closed", &closed).await;
    processed(&ints, &id, &d).await;
    let t = task(&s, task_id).await;
    assert_eq!(t.title.as_str(), "Fix login page (done)");
    let states = s.state.pm.list_states(&Origin::system(), t.project_id).await.unwrap();
    let state = states.iter().find(|st| st.id == t.state_id).unwrap();
    assert_eq!(state.category.as_str(), "completed");
    // …and the sync pushed nothing back for its own apply (echo suppression by actor).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gh.requests("PATCH").len(), patches);

    // pm → GitHub: a task created in pm becomes an issue, mapped; a comment follows it.
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "New from pm", "description": "made **here**"})),
        )
        .await;
    let new_id = TaskId(created.ok(201)["id"].as_str().unwrap().parse().unwrap());
    let issue = eventually!("the issue to be created", gh.find("New from pm"));
    assert_eq!(issue["body"], "made **here**");
    let number = issue["number"].as_u64().unwrap();
    assert_eq!(mapped_task(&s, &token, &id, &format!("octo/repo#{number}")).await, new_id);
    s.call(
        Method::POST,
        &format!("/api/v1/tasks/{}/comments", new_id.0),
        Some(&token),
        Some(json!({"body": "Looks good"})),
    )
    .await
    .ok(201);
    eventually!("the comment to reach GitHub", {
        gh.requests("POST")
            .iter()
            .any(|(p, _)| p == &format!("/repos/octo/repo/issues/{number}/comments"))
            .then_some(())
    });

    // The API token is stored sealed: the raw row does not contain it.
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, sealed FROM int_credentials").fetch_all(&pool).await.unwrap();
    assert!(rows.iter().any(|(k, _)| k == "api_token"));
    for (_, sealed) in &rows {
        assert!(!sealed.contains(GITHUB_TOKEN) && !sealed.contains("ghp_"), "{sealed}");
    }
    let logs: Vec<(String,)> =
        sqlx::query_as("SELECT detail FROM int_logs").fetch_all(&pool).await.unwrap();
    assert!(logs.iter().all(|(d,)| !d.contains(GITHUB_TOKEN)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_on_both_sides_merge_and_same_field_edits_are_recorded_conflicts() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghmerge", &mock.uri()).await;
    let issue = gh.create_remote("Crash on save", "", &["bug"]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;

    // Different fields: GitHub gains a label (its webhook not here yet), pm changes the title.
    gh.edit_remote(1, 0, |i| {
        i["labels"] = json!([{"id": 1, "name": "bug"}, {"id": 2, "name": "backend"}]);
    });
    patch_task(&s, &token, task_id, json!({"title": "Crash on save (v2)"})).await;
    eventually!("both edits on both sides", {
        let t = task(&s, task_id).await;
        let merged = gh.get(1)["title"] == "Crash on save (v2)"
            && label_names(&s, &t).await == ["backend", "bug"];
        merged.then_some(())
    });
    assert_eq!(GitHub::labels(&gh.get(1)), ["backend", "bug"]);
    let conflicts = s
        .call(Method::GET, &format!("/api/v1/integrations/{id}/conflicts"), Some(&token), None)
        .await;
    assert!(conflicts.ok(200)["items"].as_array().unwrap().is_empty(), "a clean merge");

    // The same field on both sides: the title's policy is "latest edit"; GitHub's is later.
    gh.edit_remote(1, 3600, |i| i["title"] = json!("theirs"));
    patch_task(&s, &token, task_id, json!({"title": "ours"})).await;
    eventually!("the later edit to win", {
        (task(&s, task_id).await.title.as_str() == "theirs").then_some(())
    });
    assert_eq!(gh.get(1)["title"], "theirs");
    let listed = s
        .call(
            Method::GET,
            &format!("/api/v1/integrations/{id}/conflicts?unresolved=true&limit=10"),
            Some(&token),
            None,
        )
        .await;
    let items = listed.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    let c = &items[0];
    assert_eq!(c["field"], "title");
    assert_eq!(c["base"], "Crash on save (v2)");
    assert_eq!(c["local"], "ours");
    assert_eq!(c["remote"], "theirs");
    assert_eq!(c["resolved"], "theirs");
    assert_eq!(c["winner"], "remote");
    assert_eq!(c["policy"]["policy"], "latest");
    let cid = c["id"].as_str().unwrap();

    // Bad input names the field; settling chooses our value on both sides.
    let path = format!("/api/v1/integrations/{id}/conflicts/{cid}/resolve");
    let bad = s.call(Method::POST, &path, Some(&token), Some(json!({"choice": "mine"}))).await;
    assert!(bad.problem(400).to_string().contains("choice"));
    let bad = s.call(Method::POST, &path, Some(&token), Some(json!({"choice": "value"}))).await;
    assert!(bad.problem(400).to_string().contains("value"));
    let unknown = s
        .call(
            Method::POST,
            &format!("/api/v1/integrations/{id}/conflicts/{}/resolve", uuid::Uuid::now_v7()),
            Some(&token),
            Some(json!({"choice": "local"})),
        )
        .await;
    unknown.problem(404);
    let done = s.call(Method::POST, &path, Some(&token), Some(json!({"choice": "local"}))).await;
    assert!(done.ok(200)["resolved_at"].is_string());
    assert_eq!(task(&s, task_id).await.title.as_str(), "ours");
    assert_eq!(gh.get(1)["title"], "ours");
    let again = s.call(Method::POST, &path, Some(&token), Some(json!({"choice": "remote"}))).await;
    again.problem(409);
    let open = s
        .call(
            Method::GET,
            &format!("/api/v1/integrations/{id}/conflicts?unresolved=true"),
            Some(&token),
            None,
        )
        .await;
    assert!(open.ok(200)["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_before_the_next_request() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghlimit", &mock.uri()).await;
    let issue = gh.create_remote("Slow down", "", &[]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;

    gh.0.lock().unwrap().limit_patches = 1;
    patch_task(&s, &token, task_id, json!({"title": "Slowed down"})).await;
    eventually!("the push to succeed after the limit", {
        (gh.get(1)["title"] == "Slowed down").then_some(())
    });
    let patches = gh.requests("PATCH");
    assert_eq!(patches.len(), 2, "one limited attempt, one retry: {patches:?}");
    let waited = patches[1].1 - patches[0].1;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}, before Retry-After: 1");
}

// --- a Jira-Cloud-shaped mock -------------------------------------------------------------------

#[derive(Default)]
struct JiraState {
    issues: BTreeMap<String, Value>,
    requests: Vec<(String, String, Value)>,
    /// Issue comments by id (ids are never reused).
    comments: BTreeMap<String, Value>,
    /// How long comment creates take to answer (the comment exists, and its webhook may be
    /// sent, as soon as the request arrives).
    comment_delay: Duration,
}

/// Jira Cloud REST v3 for project PROJ: issues (create/get/edit), transitions, comments — with
/// API-token Basic auth. Workflow: To Do (11) → In Progress (21) → Done (31), any to any.
#[derive(Clone, Default)]
struct Jira(Arc<Mutex<JiraState>>);

fn jira_now() -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory][offset_minute]"
    );
    time::OffsetDateTime::now_utc().format(&fmt).unwrap()
}

impl Jira {
    fn issue(key: &str, fields: &Value) -> Value {
        json!({"id": key.trim_start_matches("PROJ-"), "key": key,
               "self": format!("https://example.atlassian.net/rest/api/3/issue/{key}"), "fields": fields})
    }

    fn create_remote(&self, summary: &str, description: Value) -> Value {
        let mut st = self.0.lock().unwrap();
        let key = format!("PROJ-{}", 100 + st.issues.len());
        let fields = json!({"summary": summary, "description": description,
            "status": {"name": "To Do", "statusCategory": {"key": "new"}}, "labels": [],
            "duedate": "2026-12-24", "updated": jira_now()});
        st.issues.insert(key.clone(), fields);
        Self::issue(&key, &st.issues[&key])
    }

    fn get(&self, key: &str) -> Value {
        self.0.lock().unwrap().issues[key].clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().issues.len()
    }
}

impl Respond for Jira {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        use base64::Engine;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{JIRA_EMAIL}:{JIRA_TOKEN}"))
        );
        if req.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&expected) {
            return ResponseTemplate::new(401).set_body_json(json!({
                "errorMessages": ["You are not authenticated. Authentication required to perform this operation."],
                "errors": {}}));
        }
        let mut st = self.0.lock().unwrap();
        let method = req.method.to_string();
        let path = req.url.path().to_owned();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        st.requests.push((method.clone(), path.clone(), body.clone()));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let missing = || {
            ResponseTemplate::new(404).set_body_json(json!({
                "errorMessages": ["Issue does not exist or you do not have permission to see it."],
                "errors": {}}))
        };
        let statuses = [("11", "To Do"), ("21", "In Progress"), ("31", "Done")];
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["rest", "api", "3", "issue"]) => {
                let f = &body["fields"];
                if f["project"]["key"] != "PROJ" || f["summary"].as_str().is_none_or(str::is_empty)
                {
                    return ResponseTemplate::new(400).set_body_json(json!({
                        "errorMessages": [], "errors": {"summary": "You must specify a summary of the issue."}}));
                }
                let key = format!("PROJ-{}", 100 + st.issues.len());
                let fields = json!({"summary": f["summary"], "description": f["description"],
                    "status": {"name": "To Do"}, "labels": f["labels"].as_array().cloned().unwrap_or_default(),
                    "duedate": f["duedate"], "updated": jira_now()});
                st.issues.insert(key.clone(), fields);
                ResponseTemplate::new(201).set_body_json(json!({"id": "10000", "key": key,
                    "self": format!("https://example.atlassian.net/rest/api/3/issue/{key}")}))
            }
            ("GET", ["rest", "api", "3", "issue", key]) => match st.issues.get(*key) {
                Some(f) => ResponseTemplate::new(200).set_body_json(Self::issue(key, f)),
                None => missing(),
            },
            ("PUT", ["rest", "api", "3", "issue", key]) => {
                let Some(f) = st.issues.get_mut(*key) else { return missing() };
                for (k, v) in body["fields"].as_object().cloned().unwrap_or_default() {
                    f[k.as_str()] = v;
                }
                f["updated"] = json!(jira_now());
                ResponseTemplate::new(204)
            }
            ("GET", ["rest", "api", "3", "issue", key, "transitions"]) => {
                if !st.issues.contains_key(*key) {
                    return missing();
                }
                let ts: Vec<Value> = statuses
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": format!("Move to {name}"), "to": {"name": name}}))
                    .collect();
                ResponseTemplate::new(200)
                    .set_body_json(json!({"expand": "transitions", "transitions": ts}))
            }
            ("POST", ["rest", "api", "3", "issue", key, "transitions"]) => {
                let Some(f) = st.issues.get_mut(*key) else { return missing() };
                let id = body["transition"]["id"].as_str().unwrap_or_default();
                let Some((_, name)) = statuses.iter().find(|(i, _)| *i == id) else {
                    return ResponseTemplate::new(400).set_body_json(json!({
                        "errorMessages": ["Transition id is not valid for this issue."], "errors": {}}));
                };
                f["status"] = json!({"name": name});
                f["updated"] = json!(jira_now());
                ResponseTemplate::new(204)
            }
            ("POST", ["rest", "api", "3", "issue", key, "comment"]) => {
                if !st.issues.contains_key(*key) {
                    return missing();
                }
                let id = (10_000 + st.requests.len()).to_string();
                let c = json!({"id": id, "body": body["body"], "created": jira_now(),
                    "updated": jira_now(),
                    "author": {"accountId": "bot-1", "displayName": "pm bot"}});
                st.comments.insert(id, c.clone());
                ResponseTemplate::new(201).set_body_json(c).set_delay(st.comment_delay)
            }
            ("PUT", ["rest", "api", "3", "issue", _, "comment", id]) => {
                let Some(c) = st.comments.get_mut(*id) else { return missing() };
                c["body"] = body["body"].clone();
                c["updated"] = json!(jira_now());
                ResponseTemplate::new(200).set_body_json(c.clone())
            }
            ("DELETE", ["rest", "api", "3", "issue", _, "comment", id]) => {
                match st.comments.remove(*id) {
                    Some(_) => ResponseTemplate::new(204),
                    None => missing(),
                }
            }
            _ => missing(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_round_trips_both_ways_exports_a_project_and_transitions() {
    let (s, ints, _workers, _dir) = server().await;
    let mock = MockServer::start().await;
    let jira = Jira::default();
    Mock::given(any()).respond_with(jira.clone()).mount(&mock).await;
    let (user, token) = s.user("jira@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "jirasync", "JS").await;

    // Tasks from before the integration: only an export sends them.
    for title in ["Plan sprint", "Write **docs**"] {
        s.call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": title, "description": format!("About: {title}")})),
        )
        .await
        .ok(201);
    }
    let (id, secret) = create_integration(
        &s,
        &token,
        &project,
        json!({"provider": "jira", "name": "PROJ", "api_token": JIRA_TOKEN,
               "config": {"base_url": mock.uri(), "project_key": "PROJ", "email": JIRA_EMAIL,
                          "reporter_id": user.0}}),
    )
    .await;
    let export = s
        .call(Method::POST, &format!("/api/v1/integrations/{id}/export"), Some(&token), None)
        .await;
    assert_eq!(export.ok(200)["created"], 2);
    assert_eq!(jira.count(), 2);
    let again = s
        .call(Method::POST, &format!("/api/v1/integrations/{id}/export"), Some(&token), None)
        .await;
    assert_eq!(again.ok(200)["created"], 0, "an export is idempotent");
    assert_eq!(again.body["synced"], 2);
    assert_eq!(jira.count(), 2);
    let exported = jira.get("PROJ-100");
    assert_eq!(exported["summary"], "Plan sprint");
    assert_eq!(exported["description"]["type"], "doc", "descriptions go out as ADF");

    // Jira → pm: a webhook for an issue created in Jira (ADF description → markdown).
    let issue = jira.create_remote(
        "From Jira",
        json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "Needs "}, {"type": "text", "text": "care", "marks": [{"type": "strong"}]}]}]}),
    );
    let key = issue["key"].as_str().unwrap().to_owned();
    let body = json!({"timestamp": 1, "webhookEvent": "jira:issue_created",
        "issue_event_type_name": "issue_created", "user": {"accountId": "x"}, "issue": issue})
    .to_string();
    let res = s
        .http
        .post(format!("{}/api/v1/hooks/jira/{id}", s.base))
        .header(JIRA_SIGNATURE, hub_signature(secret.as_bytes(), body.as_bytes()))
        .header(JIRA_DELIVERY, "jira-delivery-1")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(to_res(res).await.status, 202);
    let task_id = mapped_task(&s, &token, &id, &key).await;
    let t = task(&s, task_id).await;
    assert_eq!(t.title.as_str(), "From Jira");
    assert_eq!(t.description.as_str(), "Needs **care**");
    assert_eq!(t.due_date.unwrap().to_string(), "2026-12-24");

    // pm → Jira: a new title and the task done → PUT fields, then the "Done" transition.
    let states = s.state.pm.list_states(&Origin::system(), t.project_id).await.unwrap();
    let done = states.iter().find(|st| st.category.as_str() == "completed").unwrap();
    patch_task(
        &s,
        &token,
        task_id,
        json!({"title": "From Jira, finished", "state_id": done.id, "description": "Took *care*"}),
    )
    .await;
    eventually!("the edit and transition to reach Jira", {
        let f = jira.get(&key);
        (f["summary"] == "From Jira, finished" && f["status"]["name"] == "Done").then_some(f)
    });
    let f = jira.get(&key);
    assert_eq!(f["description"]["content"][0]["content"][1]["marks"][0]["type"], "em");
    let requests = jira.0.lock().unwrap().requests.clone();
    assert!(requests.iter().any(|(m, p, b)| m == "POST"
        && p.ends_with(&format!("{key}/transitions"))
        && b["transition"]["id"] == "31"));
    // Our own transition's webhook is ignored. (The sync commits its new base after its last
    // fetch; Jira's webhook would take longer than that to arrive.)
    eventually!("the new base", {
        let res = s
            .call(Method::GET, &format!("/api/v1/integrations/{id}/mappings"), Some(&token), None)
            .await;
        res.ok(200)["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["external_id"] == key.as_str() && m["base"]["state"] == "Done")
            .then_some(())
    });
    let echo = json!({"webhookEvent": "jira:issue_updated",
        "issue": Jira::issue(&key, &jira.get(&key))})
    .to_string();
    let version = task(&s, task_id).await.version;
    let res = s
        .http
        .post(format!("{}/api/v1/hooks/jira/{id}", s.base))
        .header(JIRA_SIGNATURE, hub_signature(secret.as_bytes(), echo.as_bytes()))
        .header(JIRA_DELIVERY, "jira-delivery-2")
        .body(echo)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let events = processed(&ints, &id, "jira-delivery-2").await;
    assert!(events.contains("echo") || events.contains("unchanged"), "{events}");
    assert_eq!(task(&s, task_id).await.version, version);
}

// --- comments, create races, push failures --------------------------------------------------------

async fn comments_of(s: &Server, id: TaskId) -> Vec<pm_core::model::Comment> {
    s.state.pm.list_comments(&Origin::system(), id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_comments_sync_both_ways_with_edits_deletes_and_echoes_ignored() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghcomments", &mock.uri()).await;
    let issue = gh.create_remote("Discuss", "", &[]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;

    // GitHub → pm: a comment on the issue becomes a comment on the task, with its byline.
    let theirs = json!({"id": 9001, "body": "Seen on **prod**", "user": {"login": "octocat"},
                        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"});
    let d = comment_hook(&s, &id, &secret, "created", &issue, &theirs).await;
    processed(&ints, &id, &d).await;
    let cs = comments_of(&s, task_id).await;
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].body.as_str(), "**@octocat** on GitHub:\n\nSeen on **prod**");
    // Redelivered under a new id: still one.
    let d = comment_hook(&s, &id, &secret, "created", &issue, &theirs).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"));
    assert_eq!(comments_of(&s, task_id).await.len(), 1);

    // Edited on GitHub: the pm comment follows.
    let mut edited = theirs.clone();
    edited["body"] = json!("Seen on **staging** too");
    let d = comment_hook(&s, &id, &secret, "edited", &issue, &edited).await;
    processed(&ints, &id, &d).await;
    let cs = comments_of(&s, task_id).await;
    assert_eq!(cs[0].body.as_str(), "**@octocat** on GitHub:\n\nSeen on **staging** too");
    let from_github = cs[0].id;

    // pm → GitHub: a comment written in pm is posted, with our marker.
    let mine = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{}/comments", task_id.0),
            Some(&token),
            Some(json!({"body": "Fixed in #12"})),
        )
        .await;
    let mine_id = mine.ok(201)["id"].as_str().unwrap().to_owned();
    let posted = eventually!("the comment on GitHub", {
        gh.0.lock()
            .unwrap()
            .comments
            .values()
            .find(|c| c["body"].as_str().is_some_and(|b| b.starts_with("Fixed in #12")))
            .cloned()
    });
    assert!(posted["body"].as_str().unwrap().contains(&format!("<!-- pm:comment:{mine_id} -->")));
    // Its webhook comes back: nothing is added in pm.
    let d = comment_hook(&s, &id, &secret, "created", &issue, &posted).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"));
    assert_eq!(comments_of(&s, task_id).await.len(), 2);

    // Edited in pm: PATCHed on GitHub; its webhook is an echo.
    s.call(
        Method::PATCH,
        &format!("/api/v1/comments/{mine_id}"),
        Some(&token),
        Some(json!({"body": "Fixed in #13", "version": 1})),
    )
    .await
    .ok(200);
    let number = posted["id"].as_u64().unwrap();
    let patched = eventually!("the edit on GitHub", {
        let c = gh.0.lock().unwrap().comments[&number].clone();
        c["body"].as_str().unwrap().starts_with("Fixed in #13").then_some(c)
    });
    let d = comment_hook(&s, &id, &secret, "edited", &issue, &patched).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"));
    let version = comments_of(&s, task_id)
        .await
        .iter()
        .find(|c| c.id.0.to_string() == mine_id)
        .unwrap()
        .version;
    assert_eq!(version, 2, "the echo wrote nothing");
    // None of GitHub's own comments went back to GitHub, and nothing was posted twice.
    let posts = gh.requests("POST").iter().filter(|(p, _)| p.ends_with("/comments")).count();
    assert_eq!(posts, 1);
    assert!(gh.requests("PATCH").iter().all(|(p, _)| !p.ends_with("/comments/9001")));

    // Deleted on GitHub: gone in pm. Deleted in pm: gone on GitHub.
    let d = comment_hook(&s, &id, &secret, "deleted", &issue, &edited).await;
    processed(&ints, &id, &d).await;
    assert!(comments_of(&s, task_id).await.iter().all(|c| c.id != from_github));
    s.call(Method::DELETE, &format!("/api/v1/comments/{mine_id}"), Some(&token), None)
        .await
        .ok(204);
    eventually!("the deletion on GitHub", {
        (!gh.0.lock().unwrap().comments.contains_key(&number)).then_some(())
    });
    assert!(comments_of(&s, task_id).await.is_empty());
}

/// The webhook of an issue we are creating can arrive before GitHub answered the create (and so
/// before the mapping exists): it must not create a second task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_racing_our_own_create_does_not_duplicate_the_task() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, project, id, secret, _) = github_setup(&s, "ghrace", &mock.uri()).await;
    gh.0.lock().unwrap().create_delay = Duration::from_millis(1500);
    let created = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Race me"})),
        )
        .await;
    let task_id = TaskId(created.ok(201)["id"].as_str().unwrap().parse().unwrap());
    // The issue exists on GitHub while the create's response is still on its way.
    let issue = eventually!("the create to reach GitHub", gh.find("Race me"));
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    let events = processed(&ints, &id, &d).await;
    assert!(events.contains("echo") || events.contains("unchanged"), "{events}");
    assert_eq!(mapped_task(&s, &token, &id, "octo/repo#1").await, task_id);
    let tasks =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks"), Some(&token), None).await;
    assert_eq!(tasks.ok(200)["items"].as_array().unwrap().len(), 1, "no duplicate task");
    assert_eq!(gh.requests("POST").len(), 1, "one issue created");
}

/// A push that keeps failing is retried with growing, capped waits, then recorded as a sync
/// failure (listed through the API, logged) — and the pusher goes on with other work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_keeps_failing_is_retried_with_backoff_then_recorded() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, project, id, secret, _) = github_setup(&s, "ghfail", &mock.uri()).await;
    let issue = gh.create_remote("Flaky", "", &[]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;

    gh.0.lock().unwrap().fail_patches = true;
    patch_task(&s, &token, task_id, json!({"title": "Flaky, renamed"})).await;
    let path = format!("/api/v1/integrations/{id}/sync-failures");
    let failure = eventually!("the failure to be recorded", {
        let res = s.call(Method::GET, &path, Some(&token), None).await;
        res.ok(200)["items"].as_array().unwrap().first().cloned()
    });
    assert_eq!(failure["task_id"], task_id.0.to_string());
    assert_eq!(failure["event_kind"], "task.updated");
    assert_eq!(failure["attempts"], 4, "one try and three retries: {failure}");
    assert!(failure["error"].as_str().unwrap().contains("502"), "{failure}");
    // Backoff: 100 ms, 200 ms, then capped at 300 ms (poll 50 ms doubled per retry).
    let patches = gh.requests("PATCH");
    assert_eq!(patches.len(), 4);
    let gaps: Vec<Duration> = patches.windows(2).map(|w| w[1].1 - w[0].1).collect();
    for (gap, least) in gaps.iter().zip([100, 200, 300]) {
        assert!(*gap >= Duration::from_millis(least), "{gaps:?}");
    }
    assert!(gaps[2] < Duration::from_millis(1500), "capped: {gaps:?}");
    let logs = ints.stores.logs.list_logs(None, 100, None).await.unwrap();
    assert!(logs.items.iter().any(|l| l.operation == "sync.push_gave_up" && !l.ok));

    // The pusher moved on: a new task still becomes an issue.
    gh.0.lock().unwrap().fail_patches = false;
    s.call(
        Method::POST,
        &format!("/api/v1/projects/{project}/tasks"),
        Some(&token),
        Some(json!({"title": "After the outage"})),
    )
    .await
    .ok(201);
    eventually!("the next push", gh.find("After the outage"));
    let bad = s.call(Method::GET, &format!("{path}?limit=0"), Some(&token), None).await;
    assert!(bad.problem(400).to_string().contains("limit"));
}

// --- the push retry queue, failure endpoints, comments written on GitHub -------------------------

/// The task's pushes parked for integration `id`.
async fn parked(ints: &Integrations, id: &str) -> Vec<pm_integrations::model::ParkedPush> {
    let iid = pm_core::id::IntegrationId(id.parse().unwrap());
    ints.stores.sync_state.list_parked_pushes(iid, 100, None).await.unwrap().items
}

/// The integration's recorded sync failures (first page, newest first).
async fn sync_failures(s: &Server, token: &str, id: &str) -> Vec<Value> {
    let path = format!("/api/v1/integrations/{id}/sync-failures");
    let res = s.call(Method::GET, &path, Some(token), None).await;
    res.ok(200)["items"].as_array().unwrap().clone()
}

/// PATCHes GitHub received for issue `number`.
fn issue_patches(gh: &GitHub, number: u64) -> usize {
    let path = format!("/repos/octo/repo/issues/{number}");
    gh.requests("PATCH").iter().filter(|(p, _)| *p == path).count()
}

/// Two issues opened on GitHub, mapped to two tasks.
async fn two_mapped_tasks(
    s: &Server,
    ints: &Integrations,
    gh: &GitHub,
    token: &str,
    id: &str,
    secret: &str,
) -> (TaskId, TaskId) {
    for title in ["Task A", "Task B"] {
        let issue = gh.create_remote(title, "", &[]);
        let d = github_hook(s, id, secret, "opened", &issue).await;
        processed(ints, id, &d).await;
    }
    (mapped_task(s, token, id, "octo/repo#1").await, mapped_task(s, token, id, "octo/repo#2").await)
}

/// A push failing for task A is parked and the pusher goes on: task B's push goes through
/// while A waits; a later edit of A queues behind A's parked push instead of overtaking it;
/// once GitHub recovers A's latest state arrives and the queue empties, with no failure
/// recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_push_is_parked_while_other_tasks_push_and_succeeds_on_recovery() {
    // Retries up to 1 s apart, many of them: retrying in place would hold B for good.
    let (s, ints, _workers, _dir) = server_with(|w| {
        w.push_retries = 50;
        w.push_backoff_cap = Duration::from_secs(1);
    })
    .await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghpark", &mock.uri()).await;
    let (a, b) = two_mapped_tasks(&s, &ints, &gh, &token, &id, &secret).await;

    gh.0.lock().unwrap().failing_issues = vec![1];
    patch_task(&s, &token, a, json!({"title": "A, first edit"})).await;
    eventually!("A's push to be parked", {
        parked(&ints, &id).await.iter().find(|p| p.task_id == a && p.attempts >= 1).cloned()
    });
    patch_task(&s, &token, b, json!({"title": "B, edited"})).await;
    eventually!("B's title on GitHub", (gh.get(2)["title"] == "B, edited").then_some(()));
    let waiting = parked(&ints, &id).await;
    assert!(waiting.iter().all(|p| p.task_id == a), "only A waits: {waiting:?}");
    assert!(!waiting.is_empty(), "B went through while A was still parked");
    assert_eq!(gh.get(1)["title"], "Task A");

    // A's next edit is not attempted ahead of the parked one: it queues behind it.
    patch_task(&s, &token, a, json!({"title": "A, second edit"})).await;
    let queued = eventually!("A's second event to queue", {
        let p = parked(&ints, &id).await;
        (p.len() == 2).then_some(p)
    });
    assert!(queued[0].event.seq < queued[1].event.seq);
    assert_eq!(queued[1].attempts, 0, "queued behind, not attempted: {queued:?}");

    // GitHub recovers: A's latest state arrives, both parked events are done.
    gh.0.lock().unwrap().failing_issues.clear();
    eventually!("A's latest title on GitHub", {
        (gh.get(1)["title"] == "A, second edit").then_some(())
    });
    eventually!("the queue to empty", parked(&ints, &id).await.is_empty().then_some(()));
    let failures = s
        .call(Method::GET, &format!("/api/v1/integrations/{id}/sync-failures"), Some(&token), None)
        .await;
    assert!(failures.ok(200)["items"].as_array().unwrap().is_empty());
    let iid = pm_core::id::IntegrationId(id.parse().unwrap());
    let logs = ints.stores.logs.list_logs(Some(iid), 100, None).await.unwrap();
    assert!(logs.items.iter().any(|l| l.operation == "sync.push_parked"));
}

/// The integration's parked pushes through the API: `GET …/parked-pushes` (one page).
async fn parked_via_api(s: &Server, token: &str, id: &str, query: &str) -> Value {
    let path = format!("/api/v1/integrations/{id}/parked-pushes{query}");
    s.call(Method::GET, &path, Some(token), None).await.ok(200).clone()
}

/// Operators see the retry queue: while GitHub answers 503 the parked push is listed by
/// `GET …/parked-pushes` (attempts, last error, next attempt; no credential), a later edit of
/// the task queues behind it (pages of one, oldest first), `/metrics` counts them for `github`
/// with the oldest one's age; once GitHub recovers the list is empty and both gauges are 0.
/// Strangers and unknown integrations get 404 problems, bad paging 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_pushes_are_listed_and_measured_until_the_provider_recovers() {
    // Many retries, at most 1 s apart: the push stays parked for the whole outage.
    let (s, ints, _workers, _dir) = server_with(|w| {
        w.push_retries = 50;
        w.push_backoff_cap = Duration::from_secs(1);
    })
    .await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghparkapi", &mock.uri()).await;
    let (a, _) = two_mapped_tasks(&s, &ints, &gh, &token, &id, &secret).await;
    let count = "pm_sync_parked_pushes{provider=\"github\"}";
    let age = "pm_sync_parked_push_oldest_age_seconds{provider=\"github\"}";
    assert!(parked_via_api(&s, &token, &id, "").await["items"].as_array().unwrap().is_empty());
    let text = crate::metrics::scrape(&s).await;
    assert_eq!(crate::metrics::sample(&text, count), Some(0.0), "{text}");
    assert_eq!(crate::metrics::sample(&text, age), Some(0.0), "{text}");

    gh.0.lock().unwrap().unavailable = true;
    patch_task(&s, &token, a, json!({"title": "A, during the outage"})).await;
    let first = eventually!("A's push to be listed as parked after an attempt", {
        let page = parked_via_api(&s, &token, &id, "").await;
        page["items"]
            .as_array()
            .unwrap()
            .first()
            .filter(|p| p["attempts"].as_i64() >= Some(1))
            .cloned()
    });
    assert_eq!(first["task_id"], a.0.to_string());
    assert_eq!(first["event_kind"], "task.updated");
    assert!(first["event_seq"].as_i64().unwrap() > 0, "{first}");
    let error = first["last_error"].as_str().unwrap();
    assert!(error.contains("503") && error.contains("PATCH /repos/octo/repo/issues/1"), "{first}");
    for at in ["next_attempt_at", "parked_at"] {
        let t = first[at].as_str().unwrap();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{at} {t}: {e}"));
    }
    assert!(!first.to_string().contains(GITHUB_TOKEN), "no credential: {first}");

    // A second edit queues behind the first; pages of one follow the queue from its head.
    patch_task(&s, &token, a, json!({"title": "A, still during the outage"})).await;
    let page1 = eventually!("the second event to queue", {
        let page = parked_via_api(&s, &token, &id, "?limit=1").await;
        page["next_cursor"].is_string().then_some(page)
    });
    let items = page1["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], first["id"], "oldest first: {page1}");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = parked_via_api(&s, &token, &id, &format!("?limit=1&cursor={cursor}")).await;
    let items2 = page2["items"].as_array().unwrap();
    assert_eq!(items2.len(), 1, "{page2}");
    assert!(items2[0]["event_seq"].as_i64() > first["event_seq"].as_i64(), "{page2}");
    assert_eq!(items2[0]["task_id"], a.0.to_string());
    assert!(page2["next_cursor"].is_null(), "{page2}");

    // The gauges: two pushes waiting for GitHub, the oldest for at least a second by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = crate::metrics::scrape(&s).await;
    assert_eq!(crate::metrics::sample(&text, count), Some(2.0), "{text}");
    assert!(crate::metrics::sample(&text, age).unwrap() >= 1.0, "{text}");
    assert!(!text.contains(&id), "no per-integration series:\n{text}");

    // Same permission as the failure list; unknown ids and bad paging are problems.
    let (_, stranger) = s.user("stranger-parkapi@example.com").await;
    let list = format!("/api/v1/integrations/{id}/parked-pushes");
    s.call(Method::GET, &list, Some(&stranger), None).await.problem(404);
    let unknown = format!("/api/v1/integrations/{}/parked-pushes", uuid::Uuid::now_v7());
    let p = s.call(Method::GET, &unknown, Some(&token), None).await;
    assert!(p.problem(404)["detail"].as_str().unwrap().contains("integration"), "{}", p.body);
    let p = s.call(Method::GET, &format!("{list}?limit=0"), Some(&token), None).await;
    assert!(p.problem(400).to_string().contains("limit"), "{}", p.body);
    let p = s.call(Method::GET, &format!("{list}?cursor=nope"), Some(&token), None).await;
    assert!(p.problem(400).to_string().contains("cursor"), "{}", p.body);
    s.call(Method::GET, &list, None, None).await.problem(401);

    // GitHub is back: the retries go through, the queue and the gauges empty.
    gh.0.lock().unwrap().unavailable = false;
    eventually!("A's latest title on GitHub", {
        (gh.get(1)["title"] == "A, still during the outage").then_some(())
    });
    eventually!("the listed queue to empty", {
        let page = parked_via_api(&s, &token, &id, "").await;
        page["items"].as_array().unwrap().is_empty().then_some(())
    });
    let text = crate::metrics::scrape(&s).await;
    assert_eq!(crate::metrics::sample(&text, count), Some(0.0), "{text}");
    assert_eq!(crate::metrics::sample(&text, age), Some(0.0), "{text}");
    assert!(sync_failures(&s, &token, &id).await.is_empty(), "recovered, not given up");
}

/// A parked push is in the database: workers stopped mid-way (a restart) and started afresh
/// over a new connection to the same database retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_push_survives_a_restart() {
    let (s, ints, workers, dir) = server_with(|w| {
        w.push_retries = 50;
        w.push_backoff_cap = Duration::from_secs(2);
        w.lease = Duration::from_secs(1);
    })
    .await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghrestart", &mock.uri()).await;
    let (a, _) = two_mapped_tasks(&s, &ints, &gh, &token, &id, &secret).await;

    gh.0.lock().unwrap().failing_issues = vec![1];
    patch_task(&s, &token, a, json!({"title": "A, before the restart"})).await;
    eventually!("A's push to be parked", {
        parked(&ints, &id).await.iter().find(|p| p.attempts >= 2).cloned()
    });
    drop(workers);
    gh.0.lock().unwrap().failing_issues.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches = issue_patches(&gh, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(issue_patches(&gh, 1), patches, "nothing retries while stopped");
    assert_eq!(gh.get(1)["title"], "Task A");

    // A new process: its own connection to the integrations database, same key and pm.
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    let stores = pm_integrations::store::open(&url).await.unwrap();
    let mut fresh = Integrations::new(stores, None, ints.targets.clone());
    fresh.keyring = ints.keyring.clone();
    fresh.worker = ints.worker.clone();
    let fresh = fresh.with_pm(s.state.pm.clone());
    assert_eq!(parked(&fresh, &id).await.len(), 1, "the parked push is in the database");
    let _workers = fresh.start(s.state.stores.events.clone());
    eventually!("A's title on GitHub after the restart", {
        (gh.get(1)["title"] == "A, before the restart").then_some(())
    });
    eventually!("the queue to empty", parked(&fresh, &id).await.is_empty().then_some(()));
}

/// Recorded failures can be retried (re-queued now) and dismissed, by integration managers
/// only; unknown ids are 404 problems. A refusal (403) is recorded at once, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_failures_are_retried_and_dismissed_through_the_api() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghfailapi", &mock.uri()).await;
    let (a, b) = two_mapped_tasks(&s, &ints, &gh, &token, &id, &secret).await;
    let list = format!("/api/v1/integrations/{id}/sync-failures");

    // GitHub refuses: recorded after one attempt, nothing parked.
    gh.0.lock().unwrap().forbid_patches = true;
    patch_task(&s, &token, a, json!({"title": "A, refused"})).await;
    let refused = eventually!(
        "the refusal to be recorded",
        sync_failures(&s, &token, &id).await.first().cloned()
    );
    assert_eq!(refused["attempts"], 1, "a 403 is not retried: {refused}");
    assert!(refused["error"].as_str().unwrap().contains("403"), "{refused}");
    assert!(parked(&ints, &id).await.is_empty());
    assert_eq!(issue_patches(&gh, 1), 1);

    // Not a manager of the integration: 404, as for an unknown one.
    let (_, stranger) = s.user("stranger-failapi@example.com").await;
    let fid = refused["id"].as_str().unwrap().to_owned();
    let retry = format!("{list}/{fid}/retry");
    s.call(Method::POST, &retry, Some(&stranger), None).await.problem(404);
    s.call(Method::DELETE, &format!("{list}/{fid}"), Some(&stranger), None).await.problem(404);
    let unknown = uuid::Uuid::now_v7();
    let p = s.call(Method::POST, &format!("{list}/{unknown}/retry"), Some(&token), None).await;
    assert!(p.problem(404)["detail"].as_str().unwrap().contains("sync failure"), "{}", p.body);
    s.call(Method::DELETE, &format!("{list}/{unknown}"), Some(&token), None).await.problem(404);
    s.call(Method::POST, &format!("{list}/not-a-uuid/retry"), Some(&token), None)
        .await
        .problem(400);

    // Permission granted on GitHub; retry: re-queued now, pushed, gone from the list.
    gh.0.lock().unwrap().forbid_patches = false;
    let res = s.call(Method::POST, &retry, Some(&token), None).await;
    let queued = res.ok(202);
    assert_eq!(queued["task_id"], a.0.to_string());
    assert_eq!(queued["event_kind"], "task.updated");
    assert!(sync_failures(&s, &token, &id).await.is_empty());
    eventually!("A's title on GitHub", (gh.get(1)["title"] == "A, refused").then_some(()));
    eventually!("the queue to empty", parked(&ints, &id).await.is_empty().then_some(()));
    s.call(Method::POST, &retry, Some(&token), None).await.problem(404);

    // Another failure (an outage outlasting the retries), dismissed: gone, nothing pushed.
    gh.0.lock().unwrap().fail_patches = true;
    patch_task(&s, &token, b, json!({"title": "B, lost"})).await;
    let lost = eventually!(
        "the outage to be recorded",
        sync_failures(&s, &token, &id).await.first().cloned()
    );
    assert_eq!(lost["attempts"], 4, "{lost}");
    gh.0.lock().unwrap().fail_patches = false;
    let dismiss = format!("{list}/{}", lost["id"].as_str().unwrap());
    s.call(Method::DELETE, &dismiss, Some(&token), None).await.ok(204);
    assert!(sync_failures(&s, &token, &id).await.is_empty());
    s.call(Method::DELETE, &dismiss, Some(&token), None).await.problem(404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gh.get(2)["title"], "Task B", "a dismissed push is not made");
}

/// A comment copied from GitHub is its author's there: edited or deleted in pm, it stays
/// local — nothing is sent to GitHub and nothing is recorded as a failure — and once deleted
/// in pm a later edit on GitHub does not bring it back. A comment written in pm still syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_comments_written_on_github_stay_local() {
    let (s, ints, _workers, _dir) = server().await;
    let (mock, gh) = github_mock().await;
    let (token, _, id, secret, _) = github_setup(&s, "ghforeign", &mock.uri()).await;
    let issue = gh.create_remote("Discuss", "", &[]);
    let d = github_hook(&s, &id, &secret, "opened", &issue).await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, "octo/repo#1").await;
    let theirs = json!({"id": 9001, "body": "Seen on prod", "user": {"login": "octocat"},
                        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"});
    let d = comment_hook(&s, &id, &secret, "created", &issue, &theirs).await;
    processed(&ints, &id, &d).await;
    let copied = comments_of(&s, task_id).await[0].clone();

    // Edited in pm: stays local.
    s.call(
        Method::PATCH,
        &format!("/api/v1/comments/{}", copied.id.0),
        Some(&token),
        Some(json!({"body": "Seen on prod (typo fixed)", "version": copied.version})),
    )
    .await
    .ok(200);
    let iid = pm_core::id::IntegrationId(id.parse().unwrap());
    let kept = |op: &'static str| {
        let ints = ints.clone();
        async move {
            let logs = ints.stores.logs.list_logs(Some(iid), 100, None).await.unwrap();
            logs.items.iter().filter(|l| l.operation == op).count()
        }
    };
    eventually!(
        "the edit to be kept local",
        (kept("sync.comment_kept_local").await == 1).then_some(())
    );
    assert_eq!(comments_of(&s, task_id).await[0].body.as_str(), "Seen on prod (typo fixed)");

    // Deleted in pm: stays local too; GitHub's later edit does not revive it.
    s.call(Method::DELETE, &format!("/api/v1/comments/{}", copied.id.0), Some(&token), None)
        .await
        .ok(204);
    eventually!(
        "the deletion to be kept local",
        (kept("sync.comment_kept_local").await == 2).then_some(())
    );
    let mut edited = theirs.clone();
    edited["body"] = json!("Seen on prod and staging");
    let d = comment_hook(&s, &id, &secret, "edited", &issue, &edited).await;
    assert!(processed(&ints, &id, &d).await.contains("comment deleted"));
    assert!(comments_of(&s, task_id).await.is_empty());

    // Nothing went to GitHub's comment, and nothing failed.
    assert!(gh.requests("PATCH").iter().all(|(p, _)| !p.contains("/comments/")));
    assert!(gh.requests("DELETE").is_empty());
    let failures = s
        .call(Method::GET, &format!("/api/v1/integrations/{id}/sync-failures"), Some(&token), None)
        .await;
    assert!(failures.ok(200)["items"].as_array().unwrap().is_empty());
    assert_eq!(kept("sync.push_failed").await, 0);

    // A comment written in pm is still pushed.
    s.call(
        Method::POST,
        &format!("/api/v1/tasks/{}/comments", task_id.0),
        Some(&token),
        Some(json!({"body": "Ours"})),
    )
    .await
    .ok(201);
    eventually!("our comment on GitHub", {
        gh.0.lock()
            .unwrap()
            .comments
            .values()
            .any(|c| c["body"].as_str().is_some_and(|b| b.starts_with("Ours")))
            .then_some(())
    });
}

/// Sends a signed Jira webhook; returns its delivery id.
async fn jira_hook(s: &Server, id: &str, secret: &str, body: Value) -> String {
    let delivery = uuid::Uuid::now_v7().to_string();
    let body = body.to_string();
    let res = s
        .http
        .post(format!("{}/api/v1/hooks/jira/{id}", s.base))
        .header(JIRA_SIGNATURE, hub_signature(secret.as_bytes(), body.as_bytes()))
        .header(JIRA_DELIVERY, &delivery)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    delivery
}

/// Jira comments both ways, in ADF: a comment written in Jira becomes a pm comment with its
/// author's name and follows its edits and deletion; one written in pm is posted as ADF, edited
/// with PUT and deleted, and its own webhooks come back as echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_comments_sync_both_ways_in_adf() {
    use pm_integrations::adf::from_markdown;
    let (s, ints, _workers, _dir) = server().await;
    let mock = MockServer::start().await;
    let jira = Jira::default();
    Mock::given(any()).respond_with(jira.clone()).mount(&mock).await;
    let (user, token) = s.user("jiracomments@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "jiracomments", "JC").await;
    let (id, secret) = create_integration(
        &s,
        &token,
        &project,
        json!({"provider": "jira", "name": "PROJ", "api_token": JIRA_TOKEN,
               "config": {"base_url": mock.uri(), "project_key": "PROJ", "email": JIRA_EMAIL,
                          "reporter_id": user.0}}),
    )
    .await;
    let issue = jira.create_remote("Discuss in Jira", from_markdown("Context"));
    let key = issue["key"].as_str().unwrap().to_owned();
    let d =
        jira_hook(&s, &id, &secret, json!({"webhookEvent": "jira:issue_created", "issue": issue}))
            .await;
    processed(&ints, &id, &d).await;
    let task_id = mapped_task(&s, &token, &id, &key).await;

    // Jira → pm: a comment (ADF) becomes markdown with its author's name; edits follow.
    let mut theirs = json!({"id": "10500", "body": from_markdown("Seen on **prod**"),
        "author": {"accountId": "a-1", "displayName": "Ann Lee"},
        "created": jira_now(), "updated": jira_now()});
    let hook = |event: &str, comment: &Value| {
        json!({"webhookEvent": event, "comment": comment,
               "issue": {"id": "1", "key": key, "fields": {"summary": "Discuss in Jira"}}})
    };
    let d = jira_hook(&s, &id, &secret, hook("comment_created", &theirs)).await;
    processed(&ints, &id, &d).await;
    let cs = comments_of(&s, task_id).await;
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].body.as_str(), "**Ann Lee** on Jira:\n\nSeen on **prod**");
    let d = jira_hook(&s, &id, &secret, hook("comment_created", &theirs)).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"), "a redelivery adds nothing");
    theirs["body"] = from_markdown("Seen on *staging* too");
    let d = jira_hook(&s, &id, &secret, hook("comment_updated", &theirs)).await;
    processed(&ints, &id, &d).await;
    let from_jira = comments_of(&s, task_id).await[0].clone();
    assert_eq!(from_jira.body.as_str(), "**Ann Lee** on Jira:\n\nSeen on *staging* too");

    // pm → Jira: posted as ADF; its webhook is an echo — even when it arrives before Jira
    // answered the create (ADF has no room for a marker: it waits for the link).
    jira.0.lock().unwrap().comment_delay = Duration::from_millis(1500);
    let mine = s
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{}/comments", task_id.0),
            Some(&token),
            Some(json!({"body": "Fixed with **care**"})),
        )
        .await;
    let mine_id = mine.ok(201)["id"].as_str().unwrap().to_owned();
    let posted = eventually!("the comment in Jira", {
        jira.0.lock().unwrap().comments.values().next().cloned()
    });
    assert_eq!(posted["body"]["type"], "doc");
    assert_eq!(posted["body"]["content"][0]["content"][1]["marks"][0]["type"], "strong");
    let d = jira_hook(&s, &id, &secret, hook("comment_created", &posted)).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"));
    assert_eq!(comments_of(&s, task_id).await.len(), 2, "no copy of our own comment");
    let logs = ints.stores.logs.list_logs(None, 100, None).await.unwrap();
    assert!(
        logs.items.iter().any(|l| l.operation == "webhook.unprocessable"
            && l.detail.as_value()["delivery_id"] == d.as_str()),
        "the early webhook waited for the link"
    );

    // Edited in pm: PUT to Jira; its webhook is an echo.
    s.call(
        Method::PATCH,
        &format!("/api/v1/comments/{mine_id}"),
        Some(&token),
        Some(json!({"body": "Fixed with *more* care", "version": 1})),
    )
    .await
    .ok(200);
    let cid = posted["id"].as_str().unwrap().to_owned();
    let edited = eventually!("the edit in Jira", {
        let c = jira.0.lock().unwrap().comments[&cid].clone();
        (c["body"] != posted["body"]).then_some(c)
    });
    let d = jira_hook(&s, &id, &secret, hook("comment_updated", &edited)).await;
    assert!(processed(&ints, &id, &d).await.contains("echo"));
    let mine_now = comments_of(&s, task_id).await;
    let mine_now = mine_now.iter().find(|c| c.id.0.to_string() == mine_id).unwrap();
    assert_eq!((mine_now.version, mine_now.body.as_str()), (2, "Fixed with *more* care"));
    // Ann's comment was never sent to Jira.
    let requests = jira.0.lock().unwrap().requests.clone();
    assert!(requests.iter().all(|(_, p, _)| !p.ends_with("/comment/10500")));

    // Deleted in Jira: gone in pm. Deleted in pm: gone in Jira.
    let d = jira_hook(&s, &id, &secret, hook("comment_deleted", &theirs)).await;
    processed(&ints, &id, &d).await;
    assert!(comments_of(&s, task_id).await.iter().all(|c| c.id != from_jira.id));
    s.call(Method::DELETE, &format!("/api/v1/comments/{mine_id}"), Some(&token), None)
        .await
        .ok(204);
    eventually!("the deletion in Jira", {
        jira.0.lock().unwrap().comments.is_empty().then_some(())
    });
    assert!(comments_of(&s, task_id).await.is_empty());
}

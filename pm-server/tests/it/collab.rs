//! Collaborative editing through a real server with real Yjs clients: `tests/yjs/collab.mjs`
//! (the `yjs` + `y-websocket` npm packages under Node) edits a task description over
//! `/api/v1/collab/{task_id}`, and REST then returns the converged text. With
//! `PM_TEST_POSTGRES_URL`, the same runs across two server instances sharing one PostgreSQL
//! database. Skipped (with a `SKIPPED` line) when Node/npm are unavailable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pm_realtime::broker::{Broker, InProcessBroker};
use pm_realtime::doc::CollabConfig;
use pm_realtime::store::DocStore;
use pm_server::AppState;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Server, TEST_SECRET, org_and_project};

/// Says a test was skipped, on stderr directly so the harness's capture keeps it.
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

fn collab_config() -> CollabConfig {
    CollabConfig { write_back_debounce: Duration::from_millis(200), ..CollabConfig::default() }
}

fn memory_docs() -> Arc<dyn DocStore> {
    pm_realtime::store::RealtimeStores::from_adapter(Arc::new(
        pm_realtime::store::memory::MemoryRealtimeStore::new(),
    ))
    .docs
}

/// The directory of the Node script, with its npm dependencies installed (`npm ci` when
/// `node_modules` is missing); `None` when Node or npm is unavailable.
pub(crate) fn yjs_dir(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/yjs");
    if std::process::Command::new("node").arg("--version").output().is_err() {
        skip(test, "node is not installed");
        return None;
    }
    // Tests run in parallel: one `npm ci` at a time in this directory.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !dir.join("node_modules/y-websocket").is_dir() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status();
        if !matches!(installed, Ok(s) if s.success()) {
            skip(test, "`npm ci --prefix pm-server/tests/yjs` failed (is npm available?)");
            return None;
        }
    }
    Some(dir)
}

/// Runs `collab.mjs` against two collab URLs; returns its JSON report.
pub(crate) async fn run_yjs_clients(
    dir: PathBuf,
    url_a: String,
    url_b: String,
    task: &str,
    token: &str,
) -> Value {
    let (task, token) = (task.to_owned(), token.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(dir.join("collab.mjs"))
            .args([&url_a, &url_b, &task, &token])
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "collab.mjs failed ({}):\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report {stdout}: {e}"))
}

/// Waits (up to 10 s) until REST returns `expected` as the task's description.
async fn rest_description_becomes(s: &Server, token: &str, task: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = s.call(Method::GET, &format!("/api/v1/tasks/{task}"), Some(token), None).await;
        let got = res.ok(200)["description"].as_str().unwrap_or_default().to_owned();
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "description stayed {got:?}, want {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn collab_url(base: &str) -> String {
    format!("{}/api/v1/collab", base.replacen("http://", "ws://", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collab_with_real_yjs_clients() {
    let Some(dir) = yjs_dir("collab_with_real_yjs_clients") else { return };
    let s = Server::start_with(|state| {
        *state = state.clone().with_collab(
            memory_docs(),
            Arc::new(InProcessBroker::new()),
            collab_config(),
        );
    })
    .await;
    let (_, token) = s.user("yjs@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "yjs", "YJ").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Collaborate", "description": "Initial description."})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_owned();

    let url = collab_url(&s.base);
    let report = run_yjs_clients(dir, url.clone(), url, &task, &token).await;
    assert_eq!(report["initial"], "Initial description.", "seeded from the description");
    let text = report["text"].as_str().unwrap();
    assert_eq!(text, "Alice was here. Initial description. Bob too.");
    rest_description_becomes(&s, &token, &task, text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collab_refuses_before_upgrading() {
    let s = Server::start().await;
    let (_, token) = s.user("refuse@example.com").await;
    let (_, project, _) = org_and_project(&s, &token, "refuse", "RF").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Private"})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/collab/{task}");
    // No token: 401. Someone else's task: 404. Not an upgrade: 426. All problem+json.
    s.call(Method::GET, &path, None, None).await.problem(401);
    let (_, stranger) = s.user("stranger@example.com").await;
    s.call(Method::GET, &path, Some(&stranger), None).await.problem(404);
    s.call(Method::GET, "/api/v1/collab/0190a3c0-0000-7000-8000-000000000000", Some(&token), None)
        .await
        .problem(404);
    s.call(Method::GET, &path, Some(&token), None).await.problem(426);
    // The query-string token is accepted too (browsers cannot set headers on WebSockets).
    let res = s.http.get(format!("{}{path}?access_token={token}", s.base)).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 426);
    let res = s.http.get(format!("{}{path}?access_token=nope", s.base)).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

/// One server instance over a shared PostgreSQL database, its collab registry on the database's
/// realtime tables and `LISTEN/NOTIFY` broker.
async fn postgres_instance(url: &str) -> (SocketAddr, AppState, tokio::sync::oneshot::Sender<()>) {
    let stores = pm_core::store::open(url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let permissions = pm_server::authz::open_permissions(url).await.unwrap();
    let blobs = pm_server::temp_blobs();
    let docs: Arc<dyn DocStore> = pm_server::collab::open_registry_store(url).await.unwrap();
    let broker: Arc<dyn Broker> =
        pm_server::realtime::open_broker(pm_server::realtime::BrokerKind::Postgres, url, None)
            .await
            .unwrap();
    let state = AppState::with(stores, permissions, TEST_SECRET, blobs).with_collab(
        docs,
        broker,
        collab_config(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_state = state.clone();
    tokio::spawn(async move {
        pm_server::serve(listener, serve_state, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, state, stop)
}

/// Creates `<base database>_<uuid>` next to the database of `base` and returns its URL.
async fn fresh_postgres_database(base: &str) -> String {
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect(base).await.expect("connect to PM_TEST_POSTGRES_URL");
    let (prefix, current) = base.rsplit_once('/').expect("database URL has a path");
    let current = current.split('?').next().unwrap_or(current);
    let name = format!("{current}_{}", uuid::Uuid::now_v7().simple());
    // The name is ours (database name + hex), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("{prefix}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collab_across_two_instances_sharing_postgres() {
    const TEST: &str = "collab_across_two_instances_sharing_postgres";
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        skip(TEST, "PM_TEST_POSTGRES_URL is not set");
        return;
    };
    let Some(dir) = yjs_dir(TEST) else { return };
    let _pair = crate::POSTGRES_PAIRS.acquire().await.expect("the semaphore is never closed");
    let url = fresh_postgres_database(&base).await;
    let (addr_a, state_a, _stop_a) = postgres_instance(&url).await;
    let (addr_b, _state_b, _stop_b) = postgres_instance(&url).await;
    // Set up through instance A (the helpers speak to one base URL).
    let a = Server::attach(format!("http://{addr_a}"), state_a);
    let (_, token) = a.user("pg-yjs@example.com").await;
    let (_, project, _) = org_and_project(&a, &token, "pgyjs", "PY").await;
    let task = a
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "Across", "description": "Shared."})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_owned();
    // Instance B notices the new grants within its permission refresh interval.
    let b_base = format!("http://{addr_b}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = a
            .http
            .get(format!("{b_base}/api/v1/tasks/{task}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if res.status().is_success() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "instance B never saw the task");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let report =
        run_yjs_clients(dir, collab_url(&a.base), collab_url(&b_base), &task, &token).await;
    let text = report["text"].as_str().unwrap();
    assert_eq!(text, "Alice was here. Shared. Bob too.");
    rest_description_becomes(&a, &token, &task, text).await;
    let res = a
        .http
        .get(format!("{b_base}/api/v1/tasks/{task}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["description"], text, "instance B's REST agrees");
}

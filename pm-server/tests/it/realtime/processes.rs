//! Issue 5's multi-instance acceptance with two real OS processes: two `pm-server serve`
//! children (the compiled binary, configured through `PM_*` variables only) sharing one fresh
//! PostgreSQL database and one JWT secret, with the `postgres` realtime broker and with `redis`.
//! Everything goes over the network, as a deployment sees it:
//!
//! - a task changed through REST on A reaches a WebSocket on B with the same `seq` a socket on A
//!   saw (the shared event log);
//! - presence from a socket on A (join, status change, leave) is seen on B (the broker);
//! - concurrent Yjs edits through A and B (`tests/yjs/collab.mjs`) converge, and REST on both
//!   instances then returns the converged text (the debounced write-back);
//! - with `PM_REALTIME_BROKER=redis`, the document updates between A and B travel over Redis
//!   (a third broker instance on the same Redis sees them on the document's topic), not over
//!   PostgreSQL `NOTIFY`.
//!
//! Unlike [`super::multi`] (two `AppState`s in one test process, sharing nothing but the
//! database and broker either), nothing here can leak between the instances through process
//! memory. Gated on `PM_TEST_POSTGRES_URL` (and `PM_TEST_REDIS_URL` for Redis); the Yjs step
//! also needs Node. Skipped with a `SKIPPED …` line on stderr otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Ws;
use crate::collab::{collab_url, run_yjs_clients, yjs_dir};
use crate::raw_get;

/// Shared by both children, so a token issued by A is accepted by B.
pub(crate) const JWT_SECRET: &str = "multi-process-test-secret-at-least-32-bytes";
pub(crate) const PASSWORD: &str = "correct horse battery";
/// How long a child may take to migrate and answer `/readyz`.
const STARTUP: Duration = Duration::from_secs(20);
/// How long a REST-visible effect of another instance may take (permission refresh, write-back).
const CONVERGE: Duration = Duration::from_secs(15);

pub(crate) fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Creates `<base database>_<uuid>` next to the database of `base`; returns its URL and name.
pub(crate) async fn fresh_postgres_database(base: &str) -> (String, String) {
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
    (format!("{prefix}/{name}"), name)
}

/// Drops a database made by [`fresh_postgres_database`] (FORCE: pools of killed children may
/// linger for a moment). Best effort: `.ci/run` drops leftovers by prefix anyway.
pub(crate) async fn drop_database(base: &str, name: &str) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(base).await else { return };
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
}

/// A port that was free a moment ago (the server logs its address only at `info`; a clash with
/// another test in that moment shows up as the child exiting with "binding … (PM_BIND)").
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Which realtime broker the children use.
#[derive(Clone, Copy)]
pub(crate) enum Broker<'a> {
    Postgres,
    Redis(&'a str),
}

/// One `pm-server serve` child. Dropping it kills the process and reaps it, so a failing test
/// leaves no server behind.
pub(crate) struct Instance {
    name: &'static str,
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    pub(crate) fn spawn(name: &'static str, database_url: &str, broker: Broker<'_>) -> Instance {
        Self::spawn_with(name, database_url, broker, &[])
    }

    /// [`Instance::spawn`] with extra `PM_*` variables (`env`, set last so they win).
    pub(crate) fn spawn_with(
        name: &'static str,
        database_url: &str,
        broker: Broker<'_>,
        env: &[(&str, &str)],
    ) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pm-server"));
        cmd.arg("serve")
            .env("PM_DATABASE_URL", database_url)
            .env("PM_BIND", addr.to_string())
            .env("PM_JWT_SECRET", JWT_SECRET)
            .env("PM_LOG", "warn")
            .env("PM_RATE_LIMIT_PER_MINUTE", "0")
            .env("PM_RATE_LIMIT_IP_PER_MINUTE", "0")
            .env("PM_REGISTRATION", "open")
            .env("PM_BLOB_DIR", dir.path().join("blobs"))
            .env("PM_SHUTDOWN_TIMEOUT_SECS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: nobody reads while the test runs, and a full pipe would block
            // the server.
            .stderr(std::fs::File::create(&log).unwrap());
        match broker {
            Broker::Postgres => {
                cmd.env("PM_REALTIME_BROKER", "postgres").env_remove("PM_REDIS_URL");
            }
            Broker::Redis(url) => {
                cmd.env("PM_REALTIME_BROKER", "redis").env("PM_REDIS_URL", url);
            }
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn pm-server");
        Instance { name, child, addr, base: format!("http://{addr}"), log, _dir: dir }
    }

    /// What the child wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200, failing with the child's log if it exits first.
    pub(crate) async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("instance {} exited early with {status}:\n{}", self.name, self.stderr());
            }
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(2), raw_get(self.addr, "/readyz")).await
            {
                return;
            }
            assert!(
                started.elapsed() < STARTUP,
                "instance {} not ready within {STARTUP:?}:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A REST client with a per-request timeout.
struct Rest {
    http: reqwest::Client,
}

impl Rest {
    fn new() -> Rest {
        Rest { http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap() }
    }

    /// `method base+path` with an optional bearer token and JSON body: (status, JSON body).
    async fn call(
        &self,
        method: Method,
        s: &Instance,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}\n{}", s.name, s.stderr()));
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Like [`Rest::call`], asserting `want`; returns the body.
    async fn ok(
        &self,
        want: u16,
        method: Method,
        s: &Instance,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, body) = self.call(method.clone(), s, path, token, body).await;
        assert_eq!(status, want, "{method} {path} on {}: {body}", s.name);
        body
    }

    /// Registers `email` and logs in; returns (user id, access token).
    async fn account(&self, s: &Instance, email: &str) -> (String, String) {
        let body = json!({"email": email, "display_name": "Multi", "password": PASSWORD});
        let user = self.ok(201, Method::POST, s, "/api/v1/auth/register", None, Some(body)).await;
        let body = json!({"email": email, "password": PASSWORD});
        let tokens = self.ok(200, Method::POST, s, "/api/v1/auth/login", None, Some(body)).await;
        (str_of(&user["id"]), str_of(&tokens["access_token"]))
    }

    /// Polls `GET path` on `s` until `done(status, body)`; fails after [`CONVERGE`] with the
    /// last answer and `what`.
    async fn poll(
        &self,
        s: &Instance,
        path: &str,
        token: &str,
        what: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let (status, body) = self.call(Method::GET, s, path, Some(token), None).await;
            if done(status, &body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {}: {what} within {CONVERGE:?}; last GET {path}: {status} {body}",
                s.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// A socket's view of a channel's presence: user id → status, built from `presence` frames by
/// the protocol's rule (`joined`/`changed` set, `left` removes).
#[derive(Default)]
struct PresenceView(HashMap<String, String>);

impl PresenceView {
    fn apply(&mut self, frame: &Value) {
        for key in ["joined", "changed"] {
            for e in frame[key].as_array().into_iter().flatten() {
                self.0.insert(str_of(&e["user"]), str_of(&e["status"]));
            }
        }
        for u in frame["left"].as_array().into_iter().flatten() {
            self.0.remove(u.as_str().unwrap_or_default());
        }
    }

    /// Reads `ws`'s presence frames until `user`'s status is `want` (`None`: absent). Each
    /// frame is awaited with [`super::WAIT`], so a missing change fails instead of hanging.
    async fn until(&mut self, ws: &mut Ws, user: &str, want: Option<&str>, what: &str) {
        while self.0.get(user).map(String::as_str) != want {
            let frame = tokio::time::timeout(super::WAIT, ws.expect("presence"))
                .await
                .unwrap_or_else(|_| panic!("no presence frame: {what}; view {:?}", self.0));
            self.apply(&frame);
        }
    }
}

/// A socket to `s`'s `/api/v1/ws`, the upgrade bounded by [`super::WAIT`].
async fn connect(s: &Instance, token: &str) -> Ws {
    tokio::time::timeout(super::WAIT, Ws::connect(&s.base, token))
        .await
        .unwrap_or_else(|_| panic!("no WebSocket upgrade from {} within the wait", s.name))
}

/// The next `event` frame on `ws` that is `kind` for `task`: its `seq`. Presence and other
/// ephemeral frames are skipped, and so are a few earlier events of the channel: a subscription
/// without `last_seq` starts at the position the instance has *delivered* up to, and the other
/// instance's tailer may still be behind the writes made through the first one (the project's
/// creation, say), which it then delivers, correctly, after `subscribed`.
async fn next_event(ws: &mut Ws, channel: &str, kind: &str, task: &str) -> i64 {
    let mut earlier = Vec::new();
    loop {
        let v = ws.next_durable().await;
        assert_eq!(v["type"], "event", "{v}");
        assert_eq!(v["channel"], channel, "{v}");
        assert_eq!(v["seq"], v["event"]["seq"], "{v}");
        if v["event"]["kind"] == kind && v["event"]["task_id"] == task {
            return v["seq"].as_i64().unwrap();
        }
        earlier.push(v["event"]["kind"].clone());
        assert!(earlier.len() < 10, "no {kind} of {task}; got only {earlier:?}");
    }
}

async fn two_processes(test: &str, broker: Broker<'_>) {
    let started = Instant::now();
    let base = std::env::var("PM_TEST_POSTGRES_URL").unwrap();
    let _pair = crate::POSTGRES_PAIRS.acquire().await.expect("the semaphore is never closed");
    let (url, db) = fresh_postgres_database(&base).await;
    {
        // Both start at once, as replicas of a deployment do: their migrations and permission
        // seeding race on the empty database.
        let mut a = Instance::spawn("A", &url, broker);
        let mut b = Instance::spawn("B", &url, broker);
        a.ready().await;
        b.ready().await;
        exercise(test, &a, &b, broker).await;
    } // Both children killed and reaped here, also when `exercise` panicked (unwinding).
    drop_database(&base, &db).await;
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{test}: {:.1} s", started.elapsed().as_secs_f64());
}

async fn exercise(test: &str, a: &Instance, b: &Instance, broker: Broker<'_>) {
    let rest = Rest::new();

    // Accounts, org, project and task, all through A.
    let (owner_id, owner) = rest.account(a, "owner@processes.example").await;
    let (peer_id, peer) = rest.account(a, "peer@processes.example").await;
    let org = rest
        .ok(
            201,
            Method::POST,
            a,
            "/api/v1/orgs",
            Some(&owner),
            Some(json!({"slug": "processes", "name": "Processes"})),
        )
        .await;
    let org = str_of(&org["id"]);
    rest.ok(
        200,
        Method::PUT,
        a,
        &format!("/api/v1/orgs/{org}/members/{peer_id}"),
        Some(&owner),
        Some(json!({"role": "member"})),
    )
    .await;
    let project = rest
        .ok(
            201,
            Method::POST,
            a,
            &format!("/api/v1/orgs/{org}/projects"),
            Some(&owner),
            Some(json!({"key": "PRC", "name": "Processes"})),
        )
        .await;
    let project = str_of(&project["id"]);
    let task = rest
        .ok(
            201,
            Method::POST,
            a,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&owner),
            Some(json!({"title": "Across processes", "description": "Shared."})),
        )
        .await;
    let task_id = str_of(&task["id"]);
    let task_path = format!("/api/v1/tasks/{task_id}");

    // B has its own permission cache, refreshed from the database every second: wait until it
    // lets both users read the task (a token from A is valid on B: same PM_JWT_SECRET).
    for (who, token) in [("owner", &owner), ("peer", &peer)] {
        let what = format!("B lets the {who} read the task created on A");
        rest.poll(b, &task_path, token, &what, |status, _| status == 200).await;
    }

    // Sockets: the owner on B, the peer on A, both on the project channel.
    let pch = format!("project:{project}");
    let mut on_b = connect(b, &owner).await;
    on_b.subscribe(&pch, None).await;
    let mut on_a = connect(a, &peer).await;
    on_a.subscribe(&pch, None).await;

    // Presence on A is seen on B: the peer joins online, turns away, (later) leaves.
    let mut seen_on_b = PresenceView::default();
    seen_on_b.until(&mut on_b, &owner_id, Some("online"), "the owner's own join on B").await;
    seen_on_b.until(&mut on_b, &peer_id, Some("online"), "the peer's join on A, seen on B").await;
    on_a.send(json!({"type": "presence", "channel": pch, "status": "away"})).await;
    seen_on_b.until(&mut on_b, &peer_id, Some("away"), "the peer's `away` on A, seen on B").await;

    // A task changed through REST on A reaches B's socket with the seq A's socket saw.
    rest.ok(
        200,
        Method::PATCH,
        a,
        &task_path,
        Some(&owner),
        Some(json!({"title": "Across processes, renamed", "version": task["version"]})),
    )
    .await;
    let seq_a = next_event(&mut on_a, &pch, "task.updated", &task_id).await;
    let seq_b = next_event(&mut on_b, &pch, "task.updated", &task_id).await;
    assert_eq!(seq_a, seq_b, "both instances deliver the event at the same log position");

    // The peer's socket on A closes: B sees the peer leave.
    drop(on_a);
    seen_on_b.until(&mut on_b, &peer_id, None, "the peer leaving A, seen on B").await;
    on_b.ping().await;
    drop(on_b);

    // Concurrent Yjs edits through A and B converge; REST on both returns the converged text.
    let Some(dir) = yjs_dir(test) else { return };
    // With Redis configured, the documents must use it too: listen there as a third instance.
    let doc_topic = pm_realtime::doc::topic(pm_core::id::TaskId(task_id.parse().unwrap()));
    let redis_tap = match broker {
        Broker::Redis(url) => Some(RedisTap::start(url, doc_topic.clone()).await),
        Broker::Postgres => None,
    };
    let report = tokio::time::timeout(Duration::from_secs(30), async {
        run_yjs_clients(dir, collab_url(&a.base), collab_url(&b.base), &task_id, &owner).await
    })
    .await
    .unwrap_or_else(|_| panic!("collab.mjs did not finish within 30 s"));
    assert_eq!(report["initial"], "Shared.", "seeded from the description: {report}");
    let text = str_of(&report["text"]);
    assert_eq!(text, "Alice was here. Shared. Bob too.");
    for s in [b, a] {
        rest.poll(s, &task_path, &owner, "REST returns the converged text", |status, body| {
            status == 200 && body["description"] == text.as_str()
        })
        .await;
    }
    if let Some(tap) = redis_tap {
        let seen = tap.seen();
        assert!(
            seen > 0,
            "no message on {doc_topic} went through Redis (PM_REALTIME_BROKER=redis)"
        );
    }
}

/// A third instance on the Redis broker, counting the messages A and B publish on one topic.
struct RedisTap {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisTap {
    async fn start(url: &str, topic: String) -> RedisTap {
        use pm_realtime::broker::Broker as _;
        let observer = pm_realtime::broker::redis::RedisBroker::connect(url).await.unwrap();
        let mut rx = observer.subscribe();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let task = tokio::spawn(async move {
            let _observer = observer; // keeps the subscription open
            loop {
                match rx.recv().await {
                    Ok(m) if m.topic == topic => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        RedisTap { count, task }
    }

    fn seen(&self) -> usize {
        self.task.abort();
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_the_postgres_broker() {
    const TEST: &str = "two_processes_with_the_postgres_broker";
    if std::env::var("PM_TEST_POSTGRES_URL").is_err() {
        skip(TEST, "PM_TEST_POSTGRES_URL is not set");
        return;
    }
    two_processes(TEST, Broker::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_the_redis_broker() {
    const TEST: &str = "two_processes_with_the_redis_broker";
    let (Ok(_), Ok(redis)) =
        (std::env::var("PM_TEST_POSTGRES_URL"), std::env::var("PM_TEST_REDIS_URL"))
    else {
        skip(TEST, "PM_TEST_POSTGRES_URL and PM_TEST_REDIS_URL are not both set");
        return;
    };
    two_processes(TEST, Broker::Redis(&redis)).await;
}

/// A private `redis-server` on its own port (so stopping it disturbs no other test); killed on
/// drop.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start_on(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        PrivateRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(started.elapsed() < STARTUP, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 9's Redis drill: two instances on the Redis broker; Redis is killed. Durable events keep
/// reaching sockets on the other instance (they come from the shared log, not the broker), both
/// instances stay ready, and once Redis is back presence crosses instances again — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_durable_events_flowing_and_presence_recovers() {
    const TEST: &str = "redis_outage_keeps_durable_events_flowing_and_presence_recovers";
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        return skip(TEST, "PM_TEST_POSTGRES_URL is not set");
    };
    if std::env::var("PM_TEST_REDIS_URL").is_err() {
        return skip(TEST, "PM_TEST_REDIS_URL is not set (this test runs its own redis-server)");
    }
    let redis = PrivateRedis::start_on(free_port());
    redis.ready().await;
    let redis_url = redis.url();
    let _pair = crate::POSTGRES_PAIRS.acquire().await.expect("the semaphore is never closed");
    let (url, db) = fresh_postgres_database(&base).await;
    {
        let mut a = Instance::spawn("A", &url, Broker::Redis(&redis_url));
        a.ready().await;
        let mut b = Instance::spawn("B", &url, Broker::Redis(&redis_url));
        b.ready().await;
        let rest = Rest::new();
        let (_, owner) = rest.account(&a, "owner@redis-outage.example").await;
        let (peer_id, peer) = rest.account(&a, "peer@redis-outage.example").await;
        let body = json!({"slug": "outage", "name": "Outage"});
        let org = rest.ok(201, Method::POST, &a, "/api/v1/orgs", Some(&owner), Some(body)).await;
        let org = str_of(&org["id"]);
        let member = json!({"role": "member"});
        let path = format!("/api/v1/orgs/{org}/members/{peer_id}");
        rest.ok(200, Method::PUT, &a, &path, Some(&owner), Some(member)).await;
        let body = json!({"key": "OUT", "name": "Outage"});
        let path = format!("/api/v1/orgs/{org}/projects");
        let project = rest.ok(201, Method::POST, &a, &path, Some(&owner), Some(body)).await;
        let project = str_of(&project["id"]);
        let body = json!({"title": "Outage"});
        let path = format!("/api/v1/projects/{project}/tasks");
        let task = rest.ok(201, Method::POST, &a, &path, Some(&owner), Some(body)).await;
        let task_id = str_of(&task["id"]);
        let task_path = format!("/api/v1/tasks/{task_id}");
        for token in [&owner, &peer] {
            rest.poll(&b, &task_path, token, "B lets both read the task", |s, _| s == 200).await;
        }
        let pch = format!("project:{project}");
        let mut on_b = connect(&b, &owner).await;
        on_b.subscribe(&pch, None).await;
        let mut on_a = connect(&a, &peer).await;
        on_a.subscribe(&pch, None).await;
        let mut view = PresenceView::default();
        view.until(&mut on_b, &peer_id, Some("online"), "the peer's join on A, seen on B").await;

        // Redis goes away.
        let port = redis.port;
        drop(redis);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = json!({"title": "During the outage", "version": task["version"]});
        let task = rest.ok(200, Method::PATCH, &a, &task_path, Some(&owner), Some(body)).await;
        let seq_b = next_event(&mut on_b, &pch, "task.updated", &task_id).await;
        assert!(seq_b > 0);
        for s in [&a, &b] {
            let (status, _) = raw_get(s.addr, "/readyz").await.unwrap();
            assert_eq!(status, 200, "instance {} stays ready without Redis", s.name);
        }
        // Presence sent now is lost (ephemeral), and must not break the sockets.
        on_a.send(json!({"type": "presence", "channel": pch, "status": "away"})).await;
        on_a.ping().await;

        // Redis is back on the same port: presence crosses instances again, without restarts.
        let redis = PrivateRedis::start_on(port);
        redis.ready().await;
        let deadline = Instant::now() + CONVERGE * 2;
        let mut status = "online";
        loop {
            status = if status == "away" { "online" } else { "away" };
            on_a.send(json!({"type": "presence", "channel": pch, "status": status})).await;
            let seen = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    let frame = on_b.expect("presence").await;
                    view.apply(&frame);
                    if view.0.get(&peer_id).map(String::as_str) == Some(status) {
                        return;
                    }
                }
            })
            .await;
            if seen.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "presence did not cross instances after Redis came back"
            );
        }
        // And durable events still flow.
        let body = json!({"title": "After the outage", "version": task["version"]});
        rest.ok(200, Method::PATCH, &a, &task_path, Some(&owner), Some(body)).await;
        loop {
            let v = on_b.next_durable().await;
            if v["type"] == "event" && v["event"]["kind"] == "task.updated" {
                break;
            }
        }
        drop(redis);
    }
    drop_database(&base, &db).await;
}

//! Fault tolerance of a cluster (issue 9): two `pm-server` processes on one PostgreSQL database
//! behind a real nginx (HTTP and WebSocket proxying, configured like `scripts/cluster.sh`'s).
//!
//! Under steady task-creation load through nginx, one instance is SIGKILLed. Afterwards every
//! write the cluster acknowledged (201) is readable, and a WebSocket client watching the project
//! through nginx — reconnecting with `last_seq` whenever its connection drops — has seen every
//! acknowledged task's `task.created` event exactly once, in `seq` order, with no gap.
//!
//! A private PostgreSQL cluster (its own `initdb`, so the shared server is not disturbed) is
//! stopped like a crash under a running instance: `/readyz` turns 503, writes fail with a
//! problem instead of hanging, the process survives; once PostgreSQL is back the same process
//! is ready again, writes succeed and its WebSocket clients get the new events.
//!
//! Gated on `PM_TEST_POSTGRES_URL` + `PM_TEST_NGINX` (the nginx binary) and `PM_TEST_PG_BIN` (the
//! directory of `initdb`/`pg_ctl`); `.ci/run` sets all three. Skipped with a `SKIPPED …` line
//! otherwise. Bounded: ~4 s of load from 4 writers on loopback, a ~20 s outage drill.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::raw_get;
use crate::realtime::processes::{
    Broker, Instance, PASSWORD, drop_database, free_port, fresh_postgres_database, skip,
};

/// nginx in front of the instances, as a child process (`daemon off`), killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// SIGTERM (nginx's fast shutdown) lets the master stop its workers; a SIGKILLed master
    /// would leave them orphaned, still holding the port. SIGKILL only if it does not exit.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(binary: &str, upstreams: &[SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("        server {a} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream pm {{
        least_conn;
{servers}        keepalive 16;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://pm;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (PM_TEST_NGINX)");
        Nginx { child, addr, dir }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(2), raw_get(self.addr, "/readyz")).await
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("error.log"));
                panic!("nginx exited with {status}: {log:?}");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "nginx not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the watching socket saw of the project channel: `task_id → seq` of `task.created`, and
/// every durable `seq` in arrival order.
#[derive(Default)]
struct Seen {
    created: BTreeMap<String, i64>,
    seqs: Vec<i64>,
    reconnects: usize,
}

/// Watches `channel` until `stop`: first connected to `first` (the instance that will die), then,
/// after any drop, through `base` (the balancer) with `last_seq`.
async fn watch(
    first: String,
    base: String,
    token: String,
    channel: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let ws_url = |b: &str| format!("{}/api/v1/ws", b.replacen("http://", "ws://", 1));
    let mut url = ws_url(&first);
    let mut last_seq: Option<i64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    'connect: loop {
        assert!(Instant::now() < deadline, "the watcher could not stay connected");
        if last_seq.is_some() {
            url = ws_url(&base);
        }
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("pm.v1, bearer.{token}")).unwrap(),
        );
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req))
                .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = last_seq {
            frame["last_seq"] = json!(s);
            seen.lock().unwrap().reconnects += 1;
        }
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            continue;
        }
        loop {
            let msg = tokio::select! {
                () = stop.notified() => return,
                msg = ws.next() => msg,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => continue 'connect,
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("subscribed") => {
                    last_seq.get_or_insert(v["seq"].as_i64().unwrap());
                }
                Some("resync") => panic!("resync after a short outage: {v}"),
                Some("event") => {
                    let seq = v["seq"].as_i64().unwrap();
                    let mut seen = seen.lock().unwrap();
                    seen.seqs.push(seq);
                    if v["event"]["kind"] == "task.created" {
                        let id = v["event"]["task_id"].as_str().unwrap().to_owned();
                        assert!(seen.created.insert(id, seq).is_none(), "duplicate event {v}");
                    }
                    last_seq = Some(seq);
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_write_load_loses_no_acknowledged_write_and_no_event() {
    const TEST: &str = "sigkill_under_write_load_loses_no_acknowledged_write_and_no_event";
    let Ok(pg) = std::env::var("PM_TEST_POSTGRES_URL") else {
        return skip(TEST, "PM_TEST_POSTGRES_URL is not set");
    };
    let Ok(nginx) = std::env::var("PM_TEST_NGINX") else {
        return skip(TEST, "PM_TEST_NGINX (path to nginx) is not set");
    };
    let (db, db_name) = fresh_postgres_database(&pg).await;
    // One after the other: the first migrates, the second finds the schema current.
    let mut a = Instance::spawn("A", &db, Broker::Postgres);
    a.ready().await;
    let mut b = Instance::spawn("B", &db, Broker::Postgres);
    b.ready().await;
    let mut lb = Nginx::start(&nginx, &[a.addr, b.addr]);
    lb.ready().await;
    let base = lb.base();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // Account, org, project through the balancer.
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let r = post(
        "/api/v1/auth/register",
        None,
        json!({"email": "fault@example.com", "display_name": "Fault", "password": PASSWORD}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tokens: Value = post(
        "/api/v1/auth/login",
        None,
        json!({"email": "fault@example.com", "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let org: Value = post("/api/v1/orgs", Some(&token), json!({"slug": "fault", "name": "Fault"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let project: Value = post(
        &format!("/api/v1/orgs/{org_id}/projects"),
        Some(&token),
        json!({"key": "FLT", "name": "Faults"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let project_id = project["id"].as_str().unwrap().to_owned();

    // The watcher, through nginx.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch(
        format!("http://{}", a.addr),
        base.clone(),
        token.clone(),
        format!("project:{project_id}"),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Four writers for ~4 s; instance A is SIGKILLed after ~1.5 s.
    let started = Instant::now();
    let load = Duration::from_secs(4);
    let acked = Arc::new(Mutex::new(Vec::<(String, Duration)>::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, base, token, project_id) =
            (http.clone(), base.clone(), token.clone(), project_id.clone());
        let (acked, failed) = (acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < load {
                n += 1;
                let res = http
                    .post(format!("{base}/api/v1/projects/{project_id}/tasks"))
                    .bearer_auth(&token)
                    .json(&json!({"title": format!("writer {w} task {n}")}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: Value = r.json().await.unwrap();
                        let id = body["id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push((id, started.elapsed()));
                    }
                    // Not acknowledged (the instance died mid-request, nginx answered 502):
                    // the client may retry; nothing is promised about this write.
                    _ => *failed.lock().unwrap() += 1,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = started.elapsed();
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let failed = *failed.lock().unwrap();
    assert!(acked.iter().any(|(_, at)| *at < killed_at), "writes before the kill");
    assert!(
        acked.iter().filter(|(_, at)| *at > killed_at + Duration::from_millis(500)).count() >= 3,
        "the cluster kept acknowledging writes after the kill ({} acked, {failed} failed)",
        acked.len()
    );

    // Every acknowledged write is there.
    for (id, _) in &acked {
        let r =
            http.get(format!("{base}/api/v1/tasks/{id}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged task {id} lost");
    }

    // Every acknowledged write reached the watcher, once, in order, without gaps.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked.iter().filter(|(id, _)| !seen.created.contains_key(id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} acknowledged tasks never reached the socket");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.reconnects >= 1,
            "the watcher was on the killed instance and had to reconnect"
        );
        assert!(seen.seqs.windows(2).all(|w| w[0] < w[1]), "events out of order or repeated");
        let created: HashSet<&String> = seen.created.keys().collect();
        for (id, _) in &acked {
            assert!(created.contains(id));
        }
        eprintln!(
            "faults: {} writes acknowledged ({} after the kill), {failed} not acknowledged, watcher reconnected {} time(s)",
            acked.len(),
            acked.iter().filter(|(_, at)| *at > killed_at).count(),
            seen.reconnects
        );
    }
    drop(lb);
    drop(b);
    drop(a);
    drop_database(&pg, &db_name).await;
}

/// A private PostgreSQL cluster (initdb in a temp dir, its own port), so the test can stop and
/// start it without disturbing the shared server other tests use. Stopped on drop.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// `pg_ctl`/`initdb` refuse to run as root: as root, run them as `postgres`.
    fn command(&self, tool: &str) -> Command {
        let tool = self.bin.join(tool);
        // The effective uid, from /proc (no libc dependency for one check).
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            Command::new(tool)
        }
    }

    fn run(&self, mut cmd: Command, what: &str) {
        let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init(bin: &str) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        // The postgres user must own the data directory's parent to create it.
        let _ = Command::new("chmod").arg("777").arg(dir.path()).status();
        let pg = PrivatePostgres { bin: bin.into(), dir, port: free_port() };
        let mut init = pg.command("initdb");
        init.arg("-D").arg(pg.data()).args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.run(init, "initdb");
        pg.start();
        pg
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) {
        let mut start = self.command("pg_ctl");
        start.arg("-D").arg(self.data()).arg("-l").arg(self.dir.path().join("pg.log")).args([
            "-w",
            "-o",
            &format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ),
            "start",
        ]);
        self.run(start, "pg_ctl start");
    }

    /// Stops like a crash (`immediate`: no shutdown checkpoint, connections cut).
    fn stop(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        self.run(stop, "pg_ctl stop");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]);
        let _ = stop.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Polls `/readyz` of `addr` until it answers `want`.
async fn readyz_becomes(addr: SocketAddr, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(3), raw_get(addr, "/readyz")).await;
        if let Ok(Ok((status, _))) = got
            && status == want
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "/readyz did not become {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_makes_the_server_unready_then_it_recovers_without_restart() {
    const TEST: &str = "postgres_restart_makes_the_server_unready_then_it_recovers_without_restart";
    let Ok(bin) = std::env::var("PM_TEST_PG_BIN") else {
        return skip(TEST, "PM_TEST_PG_BIN (the directory of initdb and pg_ctl) is not set");
    };
    let pg = PrivatePostgres::init(&bin);
    let mut a = Instance::spawn("A", &pg.url(), Broker::Postgres);
    a.ready().await;
    let base = format!("http://{}", a.addr);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap();
    let post = |path: String, token: Option<String>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let account = json!({"email": "pg@example.com", "display_name": "PG", "password": PASSWORD});
    assert_eq!(post("/api/v1/auth/register".into(), None, account).await.0, StatusCode::CREATED);
    let login = json!({"email": "pg@example.com", "password": PASSWORD});
    let token = post("/api/v1/auth/login".into(), None, login).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = || Some(token.clone());
    let org = post("/api/v1/orgs".into(), t(), json!({"slug": "pg", "name": "PG"})).await.1;
    let org_id = org["id"].as_str().unwrap().to_owned();
    let project =
        post(format!("/api/v1/orgs/{org_id}/projects"), t(), json!({"key": "PG", "name": "PG"}))
            .await
            .1;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let tasks = format!("/api/v1/projects/{project_id}/tasks");
    let (status, before) = post(tasks.clone(), t(), json!({"title": "before the outage"})).await;
    assert_eq!(status, StatusCode::CREATED);

    // A socket watching the project stays connected to pm-server through the outage.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch(
        base.clone(),
        base.clone(),
        token.clone(),
        format!("project:{project_id}"),
        seen.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    pg.stop();
    let took = readyz_becomes(a.addr, 503, Duration::from_secs(15)).await;
    eprintln!("faults: /readyz answered 503 {took:?} after PostgreSQL stopped");
    // A write during the outage fails cleanly (a problem, not a hang past the request timeout).
    let (status, body) = post(tasks.clone(), t(), json!({"title": "during the outage"})).await;
    assert!(status.is_server_error(), "{status} {body}");
    assert!(a.child.try_wait().unwrap().is_none(), "the server must survive the outage");

    pg.start();
    let took = readyz_becomes(a.addr, 200, Duration::from_secs(30)).await;
    eprintln!("faults: /readyz answered 200 {took:?} after PostgreSQL started again");
    // Writes, reads and the event-log tailer work again, in the same process.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (status, body) = post(tasks.clone(), t(), json!({"title": "after the outage"})).await;
        if status == StatusCode::CREATED {
            break body;
        }
        assert!(Instant::now() < deadline, "writes did not recover: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = http
        .get(format!("{base}/api/v1/tasks/{}", before["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after_id = after["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().created.contains_key(&after_id) {
        assert!(
            Instant::now() < deadline,
            "the task created after recovery never reached the socket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    drop(a);
}

//! Issue 7 acceptance, against the compiled `pm-server` binary (a real server process) and a
//! real SMTP server process on loopback (`tests/smtp/sink.py`, Python's `smtpd`):
//!
//! - "a task moves to Review → approval by 2 of 3 project managers → Done, and the reporter is
//!   e-mailed", everything through the REST API;
//! - a server SIGKILLed in the middle of an execution resumes after a restart and performs each
//!   side effect exactly once (the e-mails once; the interrupted signed HTTP request is re-sent
//!   with the same `webhook-id`, which is what lets the receiver count it once);
//! - a self-triggering workflow stops at depth 10 with an execution marked `loop`;
//! - with the SMTP server down, the e-mail step is retried on its schedule and the mail is
//!   delivered, once, when the server is back (issue 9's SMTP drill).
//!
//! - the same approval left undecided times out after its one minute and escalates: priority
//!   raised, task reassigned to a manager, a comment, and the manager e-mailed through the SMTP
//!   process (the server's clock is real, so this test takes a little over a minute).
//!
//! Skipped (with a note) when `python3` with `smtpd` is not available.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

/// Kills the child when dropped (test failure or end).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn python_smtpd_available() -> bool {
    Command::new("python3")
        .args(["-W", "ignore", "-c", "import smtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The SMTP sink process and the file it appends messages to.
struct Smtp {
    _proc: Reaper,
    port: u16,
    out: PathBuf,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        Self::start_on(dir, free_port())
    }

    fn start_on(dir: &Path, port: u16) -> Smtp {
        use std::io::BufRead as _;
        let out = dir.join("mail.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/sink.py");
        let mut child = Command::new("python3")
            .args([script, &port.to_string(), out.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the SMTP sink");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Smtp { _proc: Reaper(child), port, out }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A `pm-server` process over a SQLite file.
struct Pm {
    proc: Reaper,
    base: String,
}

impl Pm {
    async fn start(db: &Path, smtp_port: u16) -> Pm {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_pm-server"))
            .env("PM_BIND", format!("127.0.0.1:{port}"))
            .env("PM_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("PM_JWT_SECRET", "workflow-acceptance-secret-0123456789abcdef")
            .env("PM_SMTP_URL", format!("smtp://127.0.0.1:{smtp_port}"))
            .env("PM_SMTP_FROM", "pm <pm@example.com>")
            .env("PM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pm-server");
        let mut proc = Reaper(child);
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Some(status) = proc.0.try_wait().unwrap() {
                panic!("pm-server exited early with {status}");
            }
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "pm-server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Pm { proc, base }
    }

    /// SIGKILL: no shutdown, no draining.
    fn kill(mut self) {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
    }
}

/// A signed-in API client.
#[derive(Clone)]
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `call`, asserting the status. The panic names the call (an `async fn` cannot be
    /// `#[track_caller]`, so the location alone would always be this line).
    async fn ok(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, body) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path} answered {status}, wanted {want}: {body}");
        body
    }
}

async fn sign_up(base: &str, name: &str) -> (String, Client) {
    let http = reqwest::Client::new();
    let email = format!("{name}@example.com");
    let password = "correct horse battery staple";
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": email, "display_name": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    let tokens: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_string();
    (user["id"].as_str().unwrap().to_string(), Client { base: base.into(), token, http })
}

/// Ada (admin, reporter), three project managers and Bob (a member), an organization, a
/// project with Review and Done states, and a task.
struct World {
    ada: (String, Client),
    pms: Vec<(String, Client)>,
    bob: (String, Client),
    org: String,
    review: String,
    done: String,
    task: String,
}

async fn world(base: &str) -> World {
    let ada = sign_up(base, "ada").await;
    let bob = sign_up(base, "bob").await;
    let mut pms = Vec::new();
    for n in ["pm1", "pm2", "pm3"] {
        pms.push(sign_up(base, n).await);
    }
    let a = &ada.1;
    let org = a.ok(Method::POST, "/orgs", Some(json!({"slug": "acme", "name": "Acme"})), 201).await;
    let org = org["id"].as_str().unwrap().to_string();
    for (id, _) in pms.iter().chain([&bob]) {
        a.ok(
            Method::PUT,
            &format!("/orgs/{org}/members/{id}"),
            Some(json!({"role": "member"})),
            200,
        )
        .await;
    }
    let p = a
        .ok(
            Method::POST,
            &format!("/orgs/{org}/projects"),
            Some(json!({"key": "PM", "name": "Platform"})),
            201,
        )
        .await;
    let project = p["id"].as_str().unwrap().to_string();
    let state = |name: &'static str, category: &'static str| {
        let a = a.clone();
        let project = project.clone();
        async move {
            let s = a
                .ok(
                    Method::POST,
                    &format!("/projects/{project}/states"),
                    Some(json!({"name": name, "category": category})),
                    201,
                )
                .await;
            s["id"].as_str().unwrap().to_string()
        }
    };
    let review = state("Review", "started").await;
    let done = state("Done!", "completed").await;
    let roles = a.ok(Method::GET, &format!("/orgs/{org}/roles"), None, 200).await;
    let pm_role =
        roles.as_array().unwrap().iter().find(|r| r["name"] == "project_manager").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
    for (id, _) in &pms {
        a.ok(
            Method::POST,
            &format!("/orgs/{org}/assignments"),
            Some(json!({"user_id": id, "role_id": pm_role, "project_id": project, "reason": "runs PM"})),
            201,
        )
        .await;
    }
    let t = a
        .ok(
            Method::POST,
            &format!("/projects/{project}/tasks"),
            Some(json!({"title": "Ship the release"})),
            201,
        )
        .await;
    World { task: t["id"].as_str().unwrap().to_string(), ada, pms, bob, org, review, done }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        // 60 s: after a SIGKILL the restarted server takes over the dead process's executions
        // once their lease (10 s) has expired.
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn move_task(c: &Client, task: &str, state: &str) {
    let t = c.ok(Method::GET, &format!("/tasks/{task}"), None, 200).await;
    c.ok(
        Method::PATCH,
        &format!("/tasks/{task}"),
        Some(json!({"version": t["version"], "state_id": state})),
        200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_needs_two_of_three_managers_then_done_and_the_reporter_is_mailed() {
    if !python_smtpd_available() {
        return skip("review_needs_two_of_three_managers", "python3 with smtpd is not available");
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let server = Pm::start(&dir.path().join("pm.db"), smtp.port).await;
    let w = world(&server.base).await;
    let a = &w.ada.1;
    let definition = json!({
        "schema_version": 1,
        "name": "Review needs two of three project managers",
        "trigger": {"type": "state_changed", "to": w.review},
        "steps": [{
            "type": "approval",
            "stages": [{"approvers": {"role": "project_manager"}, "quorum": {"count": 2}}],
            "timeout_minutes": 1440,
            "on_approved": [
                {"type": "action", "action": {"type": "transition", "to_state": w.done}},
                {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "{{task.reference}} approved", "body": "{{task.title}} is done."}},
                {"type": "action", "action": {"type": "notify", "to": ["reporter"], "message": "{{task.reference}} was approved"}}
            ],
            "on_timeout": [
                {"type": "action", "action": {"type": "set_fields", "fields": {"priority": "urgent"}}},
                {"type": "action", "action": {"type": "assign", "users": [w.pms[0].0], "mode": "replace"}}
            ]
        }]
    });
    // A broken definition is refused with the path of the problem.
    let mut broken = definition.clone();
    broken["steps"][0]["on_approved"][0]["action"]["to_state"] = json!("nope");
    let (status, problem) = a
        .call(
            Method::POST,
            &format!("/orgs/{}/workflows", w.org),
            Some(json!({"definition": broken})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(problem["field"], "definition.steps[0].on_approved[0].action.to_state");
    // A team member may not create workflows.
    let (status, _) = w
        .bob
        .1
        .call(
            Method::POST,
            &format!("/orgs/{}/workflows", w.org),
            Some(json!({"definition": definition})),
        )
        .await;
    assert_eq!(status, 403);
    a.ok(
        Method::POST,
        &format!("/orgs/{}/workflows", w.org),
        Some(json!({"definition": definition})),
        201,
    )
    .await;

    move_task(a, &w.task, &w.review).await;
    let approval = eventually("the approval request", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/approvals", w.org), None, 200).await;
        list.as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        (approval["eligible"].as_array().unwrap().len(), approval["needed"].as_u64()),
        (3, Some(2))
    );
    // Every eligible manager is told in-app (stored, listed, counted as unread); Bob is not.
    let reference = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    for (_, pm) in &w.pms {
        let n = eventually("the approver's notification", async || {
            let list = pm.ok(Method::GET, "/me/notifications", None, 200).await;
            list["items"].as_array().unwrap().iter().find(|n| n["kind"] == "automation").cloned()
        })
        .await;
        assert_eq!(n["kind"], "automation", "{n}");
        assert_eq!(n["summary"], format!("Approval requested: {reference}"));
        assert_eq!(n["task_id"], json!(w.task));
        let unread = pm.ok(Method::GET, "/me/notifications/unread-count", None, 200).await;
        assert!(unread["count"].as_u64().unwrap() >= 1, "{unread}");
    }
    let bobs = w.bob.1.ok(Method::GET, "/me/notifications", None, 200).await;
    assert!(
        bobs["items"].as_array().unwrap().iter().all(|n| n["kind"] != "automation"),
        "not an approver: {bobs}"
    );
    let decide = format!("/approvals/{}/decision", approval["id"].as_str().unwrap());
    let (status, _) = w.bob.1.call(Method::POST, &decide, Some(json!({"approve": true}))).await;
    assert_eq!(status, 403, "not a project manager");
    let first = w.pms[0]
        .1
        .ok(Method::POST, &decide, Some(json!({"approve": true, "comment": "lgtm"})), 200)
        .await;
    assert_eq!(first["status"], "pending");
    let (status, _) = w.pms[0].1.call(Method::POST, &decide, Some(json!({"approve": true}))).await;
    assert_eq!(status, 409, "one decision per person");
    let second = w.pms[1].1.ok(Method::POST, &decide, Some(json!({"approve": true})), 200).await;
    assert_eq!(second["status"], "approved");

    let task = eventually("the task to be Done", async || {
        let t = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await;
        (t["state_id"] == json!(w.done)).then_some(t)
    })
    .await;
    let mail = eventually("the e-mail", async || smtp.messages().first().cloned()).await;
    assert_eq!(mail["to"], json!(["ada@example.com"]));
    assert_eq!(mail["subject"], json!(format!("{} approved", task["reference"].as_str().unwrap())));
    // The mail is the last step's side effect; the execution is marked finished just after it.
    let execution = eventually("the execution to finish", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/executions", w.org), None, 200).await;
        let e = list.as_array().unwrap()[0].clone();
        (e["status"] != "running").then_some(e)
    })
    .await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    let replay = a
        .ok(
            Method::GET,
            &format!("/executions/{}/replay", execution["id"].as_str().unwrap()),
            None,
            200,
        )
        .await;
    assert_eq!(replay["identical"], true);
    // The notify action reached the reporter in-app, once.
    let mine = a.ok(Method::GET, "/me/notifications", None, 200).await;
    let approved: Vec<&Value> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["summary"] == format!("{reference} was approved"))
        .collect();
    assert_eq!(approved.len(), 1, "{mine}");
    assert_eq!(approved[0]["kind"], "automation");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 1, "exactly one e-mail");
}

/// The escalation branch for real: nobody decides within the approval's one-minute timeout, so
/// the server's timer fires and `on_timeout` runs — the task is raised to urgent, reassigned to
/// the first project manager, commented on, and that manager is e-mailed through the SMTP
/// process. Takes a little over a minute (the server's clock is not moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_nobody_decides_times_out_and_escalates() {
    if !python_smtpd_available() {
        return skip("an_approval_nobody_decides_times_out", "python3 with smtpd is not available");
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let server = Pm::start(&dir.path().join("pm.db"), smtp.port).await;
    let w = world(&server.base).await;
    let a = &w.ada.1;
    let manager = &w.pms[0].0;
    let definition = json!({
        "schema_version": 1,
        "name": "Review needs two of three project managers, escalated after a minute",
        "trigger": {"type": "state_changed", "to": w.review},
        "steps": [{
            "type": "approval",
            "stages": [{"approvers": {"role": "project_manager"}, "quorum": {"count": 2}}],
            "timeout_minutes": 1,
            "on_approved": [
                {"type": "action", "action": {"type": "transition", "to_state": w.done}}
            ],
            "on_timeout": [
                {"type": "action", "action": {"type": "set_fields", "fields": {"priority": "urgent"}}},
                {"type": "action", "action": {"type": "assign", "users": [manager], "mode": "replace"}},
                {"type": "action", "action": {"type": "comment", "body": "Review of {{task.reference}} timed out: escalated"}},
                {"type": "action", "action": {"type": "email", "to": [{"user": manager}],
                    "subject": "Escalated: {{task.reference}}", "body": "Nobody reviewed {{task.title}} in time."}}
            ]
        }]
    });
    a.ok(
        Method::POST,
        &format!("/orgs/{}/workflows", w.org),
        Some(json!({"definition": definition})),
        201,
    )
    .await;
    move_task(a, &w.task, &w.review).await;
    let approval = eventually("the approval request", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/approvals", w.org), None, 200).await;
        list.as_array().unwrap().first().cloned()
    })
    .await;
    let requested = Instant::now();
    // One approval is not the quorum: the stage still times out.
    let decide = format!("/approvals/{}/decision", approval["id"].as_str().unwrap());
    w.pms[1].1.ok(Method::POST, &decide, Some(json!({"approve": true})), 200).await;

    // The escalation e-mail through the real SMTP server (allow the minute plus slack).
    let started = Instant::now();
    let mail = loop {
        if let Some(m) = smtp.messages().first().cloned() {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no escalation e-mail after 2 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(requested.elapsed() >= Duration::from_secs(50), "escalated before the timeout");
    let task = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await;
    let reference = task["reference"].as_str().unwrap();
    assert_eq!(mail["to"], json!(["pm1@example.com"]));
    assert_eq!(mail["subject"], json!(format!("Escalated: {reference}")));
    assert_eq!(task["priority"], "urgent");
    assert_eq!(task["assignees"], json!([manager]));
    assert_eq!(task["state_id"], json!(w.review), "not approved, so not moved on");
    let comments = a.ok(Method::GET, &format!("/tasks/{}/comments", w.task), None, 200).await;
    assert!(
        comments
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["body"] == json!(format!("Review of {reference} timed out: escalated"))),
        "{comments}"
    );
    let approvals =
        a.ok(Method::GET, &format!("/orgs/{}/approvals?pending=false", w.org), None, 200).await;
    assert_eq!(approvals[0]["status"], "timed_out");
    // Too late to decide now.
    let (status, _) = w.pms[2].1.call(Method::POST, &decide, Some(json!({"approve": true}))).await;
    assert_eq!(status, 409);
    let execution = eventually("the execution to finish", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/executions", w.org), None, 200).await;
        let e = list.as_array().unwrap()[0].clone();
        (e["status"] != "running").then_some(e)
    })
    .await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 1, "exactly one e-mail");
}

/// A receiver of the workflow's signed HTTP request: records each delivery's `webhook-id`;
/// the first delivery hangs (so the server can be killed in the middle of it).
async fn hook_sink() -> (String, Arc<Mutex<Vec<String>>>, tokio::sync::mpsc::Receiver<()>) {
    use axum::http::HeaderMap;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let seen = s.clone();
            let tx = tx.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                assert!(
                    headers
                        .get("webhook-signature")
                        .is_some_and(|v| v.to_str().unwrap().starts_with("v1,"))
                );
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(id);
                    seen.len() == 1
                };
                if first {
                    let _ = tx.send(()).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_execution_resumes_and_performs_each_side_effect_once() {
    if !python_smtpd_available() {
        return skip("a_server_killed_mid_execution", "python3 with smtpd is not available");
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let db = dir.path().join("pm.db");
    let server = Pm::start(&db, smtp.port).await;
    let w = world(&server.base).await;
    let (hook, deliveries, mut first_delivery) = hook_sink().await;
    let definition = json!({
        "schema_version": 1,
        "name": "Mail, call, mail",
        "trigger": {"type": "field_changed", "field": "title"},
        "steps": [
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "before", "body": "x"}},
            {"type": "action", "action": {"type": "http", "url": hook, "body": {"task": "{{task.reference}}"}}},
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "after", "body": "x"}}
        ],
        "options": {"initial_backoff_ms": 50, "max_backoff_ms": 200}
    });
    let a = &w.ada.1;
    a.ok(
        Method::POST,
        &format!("/orgs/{}/workflows", w.org),
        Some(json!({"definition": definition})),
        201,
    )
    .await;
    let t = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await;
    a.ok(
        Method::PATCH,
        &format!("/tasks/{}", w.task),
        Some(json!({"version": t["version"], "title": "Renamed"})),
        200,
    )
    .await;

    // The first e-mail is out and the HTTP request is in flight: kill the server.
    tokio::time::timeout(Duration::from_secs(30), first_delivery.recv())
        .await
        .expect("the HTTP step started");
    assert_eq!(smtp.messages().len(), 1);
    server.kill();

    let server = Pm::start(&db, smtp.port).await;
    let a = Client { base: server.base.clone(), ..a.clone() };
    let execution = eventually("the execution to finish after the restart", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/executions", w.org), None, 200).await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["status"] != "running" && e["status"] != "waiting")
            .cloned()
    })
    .await;
    assert_eq!(execution["status"], "succeeded", "{execution}");
    let subjects: Vec<String> =
        smtp.messages().iter().map(|m| m["subject"].as_str().unwrap().to_string()).collect();
    assert_eq!(subjects, vec!["before", "after"], "each e-mail exactly once");
    let ids = deliveries.lock().unwrap().clone();
    assert!(ids.len() >= 2, "the interrupted request was re-sent: {ids:?}");
    assert!(ids.iter().all(|i| i == &ids[0] && !i.is_empty()), "with one webhook-id: {ids:?}");
    let steps = a
        .ok(Method::GET, &format!("/executions/{}", execution["id"].as_str().unwrap()), None, 200)
        .await;
    let http_step =
        steps["steps"].as_array().unwrap().iter().find(|s| s["key"] == "steps[1]").unwrap().clone();
    assert!(http_step["attempts"].as_u64().unwrap() >= 2, "{http_step}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_triggering_workflow_stops_at_depth_10_marked_loop() {
    if !python_smtpd_available() {
        return skip(
            "a_self_triggering_workflow_stops_at_depth_10",
            "python3 with smtpd is not available",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(dir.path());
    let server = Pm::start(&dir.path().join("pm.db"), smtp.port).await;
    let w = world(&server.base).await;
    let a = &w.ada.1;
    let definition = json!({
        "schema_version": 1,
        "name": "Renames itself",
        "trigger": {"type": "task_updated"},
        "steps": [{"type": "action", "action": {"type": "set_fields", "fields": {"title": "hop {{event.depth}}"}}}],
        "options": {"allow_automation_events": true}
    });
    a.ok(
        Method::POST,
        &format!("/orgs/{}/workflows", w.org),
        Some(json!({"definition": definition})),
        201,
    )
    .await;
    move_task(a, &w.task, &w.review).await;
    // Wait until the loop is marked and every earlier hop is marked finished too (each hop's
    // execution is finished just after the write that triggers the next one).
    let executions = eventually("an execution marked loop", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/executions", w.org), None, 200).await;
        let list = list.as_array().unwrap().clone();
        let settled = list.iter().all(|e| e["status"] != "running" && e["status"] != "waiting");
        (settled && list.iter().any(|e| e["status"] == "loop")).then_some(list)
    })
    .await;
    assert_eq!(executions.len(), 10);
    let looped: Vec<&Value> = executions.iter().filter(|e| e["status"] == "loop").collect();
    assert_eq!(looped.len(), 1);
    assert_eq!(looped[0]["depth"], 10);
    assert!(executions.iter().filter(|e| e["status"] == "succeeded").count() == 9);
    let t = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await;
    assert_eq!(t["title"], "hop 8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_down_the_mail_is_retried_and_delivered_once_when_it_is_back() {
    if !python_smtpd_available() {
        return skip("with_smtp_down_the_mail_is_retried", "python3 with smtpd is not available");
    }
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port(); // nothing listens yet: connections are refused
    let server = Pm::start(&dir.path().join("pm.db"), smtp_port).await;
    let w = world(&server.base).await;
    let a = &w.ada.1;
    let definition = json!({
        "schema_version": 1,
        "name": "Mail on rename",
        "trigger": {"type": "field_changed", "field": "title"},
        "steps": [
            {"type": "action", "action": {"type": "email", "to": ["reporter"], "subject": "renamed", "body": "x"}}
        ],
        "options": {"max_attempts": 10, "initial_backoff_ms": 300, "max_backoff_ms": 1000}
    });
    a.ok(
        Method::POST,
        &format!("/orgs/{}/workflows", w.org),
        Some(json!({"definition": definition})),
        201,
    )
    .await;
    let t = a.ok(Method::GET, &format!("/tasks/{}", w.task), None, 200).await;
    a.ok(
        Method::PATCH,
        &format!("/tasks/{}", w.task),
        Some(json!({"version": t["version"], "title": "Renamed while SMTP is down"})),
        200,
    )
    .await;
    // The step fails at least twice while SMTP is down; the execution keeps running.
    let execution = eventually("two failed attempts of the e-mail step", async || {
        let list = a.ok(Method::GET, &format!("/orgs/{}/executions", w.org), None, 200).await;
        let e = list.as_array().unwrap().first()?.clone();
        let detail = a
            .ok(Method::GET, &format!("/executions/{}", e["id"].as_str().unwrap()), None, 200)
            .await;
        let attempts = detail["steps"][0]["attempts"].as_u64().unwrap_or(0);
        (attempts >= 2).then_some(detail)
    })
    .await;
    assert_eq!(execution["status"], "running", "{execution}");

    let smtp = Smtp::start_on(dir.path(), smtp_port);
    let id = execution["id"].as_str().unwrap().to_owned();
    let done = eventually("the execution to finish once SMTP is back", async || {
        let e = a.ok(Method::GET, &format!("/executions/{id}"), None, 200).await;
        (e["status"] != "running").then_some(e)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let subjects: Vec<String> =
        smtp.messages().iter().map(|m| m["subject"].as_str().unwrap().to_string()).collect();
    assert_eq!(subjects, vec!["renamed"], "delivered exactly once");
    drop(server);
}

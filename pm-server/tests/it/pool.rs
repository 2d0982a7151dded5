//! Issue 9 follow-up: one pm-server process on PostgreSQL holds one database pool. A real
//! `pm-server serve` child (the compiled binary) with `PM_DATABASE_POOL_SIZE=N` on a fresh
//! database serves 50 concurrent requests that touch every crate's tables, while a sampler
//! counts the child's sessions in `pg_stat_activity`: never more than `N` plus its dedicated
//! `LISTEN` connections (`pm_server::db::LISTEN_CONNECTIONS`). With a pool per crate an idle
//! instance alone held ≈20.
//!
//! Gated on `PM_TEST_POSTGRES_URL`; skipped with a `SKIPPED …` line on stderr otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::realtime::processes::{Broker, Instance, drop_database, fresh_postgres_database, skip};

/// The pool size the child runs with: small, so 50 concurrent requests must queue for it.
const POOL_SIZE: u32 = 4;

/// The child's client sessions on `db` (autovacuum and other background workers excluded).
async fn sessions(conn: &mut sqlx::PgConnection, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = $1 AND backend_type = 'client backend'",
    )
    .bind(db)
    .fetch_one(conn)
    .await
    .expect("count sessions")
}

/// `method url` with an optional bearer token and JSON body: (status, JSON body).
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

/// Counts the child's sessions every few milliseconds, keeping the highest count, from a
/// connection to the base database (so the sampler does not count itself).
struct Sampler {
    peak: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<sqlx::PgConnection>,
}

impl Sampler {
    async fn start(base: &str, db: &str) -> Sampler {
        use sqlx::Connection as _;
        let mut monitor = sqlx::PgConnection::connect(base).await.expect("monitor connection");
        let (peak, stop) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn({
            let (peak, stop, db) = (peak.clone(), stop.clone(), db.to_owned());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(sessions(&mut monitor, &db).await, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                monitor
            }
        });
        Sampler { peak, stop, task }
    }

    /// The highest count so far.
    fn peak(&self) -> i64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling; returns the highest count, including one last sample.
    async fn stop(self, db: &str) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut monitor = self.task.await.expect("sampler");
        let last = sessions(&mut monitor, db).await;
        self.peak.load(Ordering::Relaxed).max(last)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_holds_at_most_its_pool_plus_listen_connections() {
    let test = "one_instance_holds_at_most_its_pool_plus_listen_connections";
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        skip(test, "PM_TEST_POSTGRES_URL is not set");
        return;
    };
    let budget = i64::from(POOL_SIZE + pm_server::db::LISTEN_CONNECTIONS);
    let (url, db) = fresh_postgres_database(&base).await;
    {
        // From before the start: migrations and seeding count too.
        let sampler = Sampler::start(&base, &db).await;
        let size = POOL_SIZE.to_string();
        let mut server = Instance::spawn_with(
            "pool",
            &url,
            Broker::Postgres,
            &[("PM_DATABASE_POOL_SIZE", size.as_str())],
        );
        server.ready().await;
        let started = sampler.peak();
        burst(&server).await;
        let peak = sampler.stop(&db).await;
        {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "{test}: {started} connections when ready, peak {peak} (budget {budget})"
            );
        }
        assert!(started >= 1, "the sampler sees the child's sessions ({started})");
        assert!(
            peak <= budget,
            "pm-server with PM_DATABASE_POOL_SIZE={POOL_SIZE} held {peak} connections \
             ({started} by the time it was ready); at most {budget} expected (the pool plus \
             {} LISTEN connections)",
            pm_server::db::LISTEN_CONNECTIONS
        );
    } // The child is killed and reaped here, also when an assertion failed.
    drop_database(&base, &db).await;
}

/// An owner with an org and a project, then 50 concurrent requests that read and write every
/// crate's tables; each must succeed (waiting for a pooled connection, not failing for one).
async fn burst(server: &Instance) {
    let api = format!("http://{}/api/v1", server.addr);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    let password = "correct horse battery";
    let body = json!({"email": "pool@example.com", "display_name": "Pool", "password": password});
    let (status, user) =
        call(&http, Method::POST, &format!("{api}/auth/register"), None, Some(body)).await;
    assert_eq!(status, 201, "register: {user}");
    let body = json!({"email": "pool@example.com", "password": password});
    let (status, tokens) =
        call(&http, Method::POST, &format!("{api}/auth/login"), None, Some(body)).await;
    assert_eq!(status, 200, "login: {tokens}");
    let token = tokens["access_token"].as_str().expect("access token").to_owned();
    let body = json!({"slug": "pool", "name": "Pool"});
    let (status, org) =
        call(&http, Method::POST, &format!("{api}/orgs"), Some(&token), Some(body)).await;
    assert_eq!(status, 201, "org: {org}");
    let org = id_of(&org);
    let body = json!({"key": "POOL", "name": "Pool"});
    let (status, project) =
        call(&http, Method::POST, &format!("{api}/orgs/{org}/projects"), Some(&token), Some(body))
            .await;
    assert_eq!(status, 201, "project: {project}");
    let project = id_of(&project);

    // Round-robin over writes and reads of pm-core, pm-server's auth and PWA tables,
    // pm-permissions, pm-realtime, pm-workflows and pm-integrations.
    let routes: [(Method, String); 10] = [
        (Method::POST, format!("{api}/projects/{project}/tasks")),
        (Method::GET, format!("{api}/projects/{project}/tasks")),
        (Method::POST, format!("{api}/projects/{project}/tasks")),
        (Method::GET, format!("{api}/orgs/{org}/projects")),
        (Method::GET, format!("{api}/me/notifications")),
        (Method::GET, format!("{api}/orgs/{org}/workflows")),
        (Method::GET, format!("{api}/orgs/{org}/integrations")),
        (Method::GET, format!("{api}/orgs/{org}/audit")),
        (Method::GET, format!("{api}/me/tokens")),
        (Method::GET, format!("{api}/push/subscriptions")),
    ];
    let requests = (0..50).map(|i| {
        let (method, url) = routes[i % routes.len()].clone();
        let body = (method == Method::POST).then(|| json!({"title": format!("Task {i}")}));
        let (http, token) = (http.clone(), token.clone());
        tokio::spawn(async move {
            let (status, body) = call(&http, method.clone(), &url, Some(&token), body).await;
            (method, url, status, body)
        })
    });
    for answer in futures_util::future::join_all(requests).await {
        let (method, url, status, body) = answer.expect("request task");
        assert!(
            (200..300).contains(&status),
            "{method} {url}: {status} {body}\n{}",
            server.stderr()
        );
    }
}

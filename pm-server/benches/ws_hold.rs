//! Connection-hold harness for the realtime WebSocket (`/api/v1/ws`), issue 5: how many
//! authenticated, subscribed WebSockets a set of `pm-server` processes holds, and the servers'
//! memory per connection.
//!
//! ```sh
//! bash scripts/ws-hold.sh 50000                   # the BENCHMARKS.md run (see the script)
//! cargo bench -p pm-server --bench ws_hold        # quick: 2 servers, 2 clients, 2 000 connections
//! ```
//!
//! Not a timed test. One process can hold no more descriptors than its `RLIMIT_NOFILE` (20 000
//! on the development VM, and the session may not raise it), so the harness spreads the load:
//!
//! - **K server processes** (`WS_HOLD_SERVERS`) of the release `pm-server`, all on one address
//!   with `PM_REUSE_PORT=true` (the kernel spreads new connections over them), sharing one
//!   database (a temp SQLite file, or `WS_HOLD_DATABASE_URL`);
//! - **setup over REST**: `WS_HOLD_USERS` users register and log in (one access token each, like
//!   real users; every registration and login costs an argon2 hash, which is why there are not
//!   50 000 users), the first creates an org and a project, and adds the others as members;
//! - **K client processes** (`WS_HOLD_CLIENTS`, this binary again with `WS_HOLD_ROLE=client`),
//!   each opening its share of `WS_HOLD_CONNS` WebSockets (token of user `i % users` in the
//!   subprotocol list, at most `WS_HOLD_IN_FLIGHT` handshakes at a time per process), each
//!   socket bound to a source address in 127.0.0.2‥254 before connecting so ephemeral ports do
//!   not run out, and subscribing it to `project:<the project>`. Clients answer the servers'
//!   pings and otherwise stay silent;
//! - **hold** `WS_HOLD_SECONDS` once every client has finished opening; then the servers' RSS
//!   (`VmRSS` of `/proc/<pid>/status`, summed) is read, as it was before the clients started,
//!   and the descriptors of each server counted (`/proc/<pid>/fd`);
//! - **liveness**: one task is created in the project, and every held connection must receive
//!   its `event` frame (within 60 s), so "held" means subscribed and delivering.
//!
//! Printed: connections attempted / held / failed (with the first reasons: a refused
//! subscription shows its `error` frame), server RSS before and after, **KB per connection**
//! (all server RSS / connections held, and the growth / connections held), per-server
//! descriptors, event delivery. Exits non-zero when a connection failed or missed the event.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_HOLD_CONNS` | 2 000 | WebSocket connections in total |
//! | `WS_HOLD_SERVERS`, `WS_HOLD_CLIENTS` | 2, 2 | server and client processes |
//! | `WS_HOLD_USERS` | 1 | users the connections belong to (round robin; the BENCHMARKS.md run uses 200, so presence lists are realistic) |
//! | `WS_HOLD_IN_FLIGHT` | 200 | concurrent handshakes per client process |
//! | `WS_HOLD_SECONDS` | 10 | hold time before measuring |
//! | `WS_HOLD_DATABASE_URL` | a temp SQLite file | the servers' shared database |
//! | `WS_HOLD_SERVER_BIN` | this build's `pm-server` | the server binary |

use std::io::{BufRead as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const JWT_SECRET: &str = "ws-hold-secret-ws-hold-secret-0123456789";
const PASSWORD: &str = "ws-hold-password-123";

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}"))
        }
        _ => Ok(default),
    }
}

fn main() -> Result<()> {
    let role = std::env::var("WS_HOLD_ROLE").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if role == "client" {
        return rt.block_on(client_main());
    }
    rt.block_on(coordinator())
}

// ---------------------------------------------------------------------------------------------
// Coordinator

struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client process and the lines it prints.
struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ClientProc {
    /// The next line starting with `prefix` (others, `NOTE`s, are printed).
    async fn line(&mut self, prefix: &str, wait: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| format!("no {prefix} line within {wait:?}"))?
                .context("the client process ended")?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
            println!("  {line}");
        }
    }

    fn send(&mut self, cmd: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("client stdin closed")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the client exits at end of input
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kb(pid: u32) -> Result<u64> {
    let status = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&status).with_context(|| format!("reading {status}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Sum of the servers' RSS once it stops moving: password hashing used Tokio's blocking threads
/// (~20 MB each), which return their memory only when they exit, 10 s after their last job.
async fn settled_rss(servers: &[Server]) -> Result<u64> {
    let sum = || -> Result<u64> { servers.iter().map(|s| rss_kb(s.child.id())).sum() };
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut last = sum()?;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sum()?;
        if now.abs_diff(last) * 200 < last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_server(bin: &Path, url: &str, addr: SocketAddr, dir: &Path, n: usize) -> Result<Server> {
    let log = dir.join(format!("server{n}.log"));
    let child = Command::new(bin)
        .arg("serve")
        .env("PM_DATABASE_URL", url)
        .env("PM_BIND", addr.to_string())
        .env("PM_REUSE_PORT", "true")
        // `pm_server=info` for the "listening" line; requests are not logged at info.
        .env("PM_LOG", "warn,pm_server=info")
        .env("PM_RATE_LIMIT_PER_MINUTE", "0")
        .env("PM_RATE_LIMIT_IP_PER_MINUTE", "0")
        .env("PM_JWT_SECRET", JWT_SECRET)
        .env("PM_ACCESS_TTL_SECS", "7200")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Server { child, log })
}

/// Waits for the server's "pm-server listening" log line (a health check on the shared port
/// could be answered by another server).
async fn wait_listening(s: &mut Server, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = s.child.try_wait()? {
            bail!("server {n} exited ({status}):\n{}", s.log_tail());
        }
        if std::fs::read_to_string(&s.log).unwrap_or_default().contains("pm-server listening") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("server {n} not listening within 120 s:\n{}", s.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value> {
    let mut req = http.request(method.clone(), url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| format!("{method} {url}"))?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn str_field(v: &Value, k: &str) -> Result<String> {
    v[k].as_str().map(str::to_owned).with_context(|| format!("no `{k}` in {v}"))
}

/// Registers and logs in user `i`; returns (user id, access token).
async fn user(http: &reqwest::Client, base: &str, i: usize) -> Result<(String, String)> {
    let email = format!("wshold{i}@example.com");
    let reg = json!({"email": email, "password": PASSWORD, "display_name": format!("Hold {i}")});
    let post = reqwest::Method::POST;
    let u = call(http, post.clone(), &format!("{base}/api/v1/auth/register"), None, reg).await?;
    let creds = json!({"email": email, "password": PASSWORD});
    let login = call(http, post, &format!("{base}/api/v1/auth/login"), None, creds).await?;
    Ok((str_field(&u, "id")?, str_field(&login, "access_token")?))
}

/// Asks every client process for its counts: (connections alive, `event` frames received),
/// summed.
async fn status(clients: &mut [ClientProc]) -> Result<(u64, u64)> {
    for c in clients.iter_mut() {
        c.send("STATUS")?;
    }
    let (mut alive, mut events) = (0, 0);
    for c in clients.iter_mut() {
        let s = c.line("STATUS", Duration::from_secs(60)).await?;
        let v: Vec<u64> = s.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        alive += v.first().copied().unwrap_or(0);
        events += v.get(1).copied().unwrap_or(0);
    }
    Ok((alive, events))
}

async fn coordinator() -> Result<()> {
    let conns: usize = env_or("WS_HOLD_CONNS", 2000)?;
    let n_servers: usize = env_or("WS_HOLD_SERVERS", 2)?;
    let n_clients: usize = env_or("WS_HOLD_CLIENTS", 2)?;
    let n_users: usize = env_or("WS_HOLD_USERS", 1)?;
    let in_flight: usize = env_or("WS_HOLD_IN_FLIGHT", 200)?;
    let hold: f64 = env_or("WS_HOLD_SECONDS", 10.0)?;
    if conns == 0 || n_servers == 0 || n_clients == 0 || n_users == 0 || in_flight == 0 {
        bail!("WS_HOLD_CONNS, _SERVERS, _CLIENTS, _USERS and _IN_FLIGHT must be positive");
    }
    let bin = std::env::var_os("WS_HOLD_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pm-server")));
    let dir = tempfile::tempdir()?;
    let url = match std::env::var("WS_HOLD_DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => format!("sqlite://{}", dir.path().join("hold.db").display()),
    };
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let base = format!("http://{addr}");
    println!(
        "ws_hold: {conns} connections, {n_servers} servers, {n_clients} client processes, \
         {n_users} users, database {}",
        if url.starts_with("sqlite") { "SQLite (temp file)" } else { "PostgreSQL" }
    );

    // Servers one after the other: the first migrates the database.
    let mut servers = Vec::new();
    for n in 0..n_servers {
        let mut s = start_server(&bin, &url, addr, dir.path(), n)?;
        wait_listening(&mut s, n).await?;
        servers.push(s);
    }

    // Users, org, project.
    let t = Instant::now();
    let http = reqwest::Client::new();
    let limit = Arc::new(Semaphore::new(8));
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..n_users {
        let (http, base, limit) = (http.clone(), base.clone(), limit.clone());
        jobs.spawn(async move {
            let _p = limit.acquire_owned().await?;
            user(&http, &base, i).await.map(|u| (i, u))
        });
    }
    let mut users = vec![(String::new(), String::new()); n_users];
    while let Some(r) = jobs.join_next().await {
        let (i, u) = r??;
        users[i] = u;
    }
    let owner = users[0].1.clone();
    let put = reqwest::Method::PUT;
    let post = reqwest::Method::POST;
    let org = call(
        &http,
        post.clone(),
        &format!("{base}/api/v1/orgs"),
        Some(&owner),
        json!({"slug": "wshold", "name": "WS hold"}),
    )
    .await?;
    let org = str_field(&org, "id")?;
    for (id, _) in &users[1..] {
        let url = format!("{base}/api/v1/orgs/{org}/members/{id}");
        call(&http, put.clone(), &url, Some(&owner), json!({"role": "member"})).await?;
    }
    let project = call(
        &http,
        post.clone(),
        &format!("{base}/api/v1/orgs/{org}/projects"),
        Some(&owner),
        json!({"key": "HLD", "name": "Hold"}),
    )
    .await?;
    let project = str_field(&project, "id")?;
    println!(
        "setup: {n_users} users registered, logged in and added to the org in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, users.iter().map(|(_, t)| format!("{t}\n")).collect::<String>())?;

    let before = settled_rss(&servers).await?;
    println!("servers' RSS before connecting: {before} kB in total");

    // Clients.
    let t = Instant::now();
    let exe = std::env::current_exe()?;
    let mut clients = Vec::new();
    for c in 0..n_clients {
        let share = conns / n_clients + usize::from(c < conns % n_clients);
        let mut child = Command::new(&exe)
            .env("WS_HOLD_ROLE", "client")
            .env("WS_HOLD_CLIENT_INDEX", c.to_string())
            .env("WS_HOLD_CLIENT_CLIENTS", n_clients.to_string())
            .env("WS_HOLD_CLIENT_CONNS", share.to_string())
            .env("WS_HOLD_IN_FLIGHT", in_flight.to_string())
            .env("WS_HOLD_TARGET", addr.to_string())
            .env("WS_HOLD_TOKENS", &tokens)
            .env("WS_HOLD_CHANNEL", format!("project:{project}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a client process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        clients.push(ClientProc { child, stdin, lines: rx });
    }
    let (mut opened, mut failed) = (0u64, 0u64);
    for (c, client) in clients.iter_mut().enumerate() {
        let ready = client.line("READY", Duration::from_secs(1800)).await?;
        let mut it = ready.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
        let (ok, bad) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        println!("client {c}: {ok} open, {bad} failed");
        opened += ok;
        failed += bad;
    }
    println!(
        "opened {opened} of {conns} in {:.1} s ({failed} failed); holding {hold} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;

    let (mut alive, _) = status(&mut clients).await?;
    let after = settled_rss(&servers).await?;
    let fds: Vec<usize> = servers.iter().map(|s| fd_count(s.child.id())).collect();
    let per_conn = |kb: u64| if alive == 0 { 0.0 } else { kb as f64 / alive as f64 };
    println!("held: {alive} of {conns} connections after {hold} s");
    println!("servers' descriptors: {fds:?}");
    println!(
        "servers' RSS: {before} kB before, {after} kB held → {:.1} KB per connection (all RSS), \
         {:.1} KB per connection (growth)",
        per_conn(after),
        per_conn(after.saturating_sub(before))
    );

    // Liveness: one event reaches every held connection.
    let task_url = format!("{base}/api/v1/projects/{project}/tasks");
    call(&http, post, &task_url, Some(&owner), json!({"title": "ws_hold liveness"})).await?;
    let t = Instant::now();
    let mut delivered = 0;
    let mut still = 0;
    while t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        (still, delivered) = status(&mut clients).await?;
        if delivered >= still {
            break;
        }
    }
    println!(
        "liveness: the event reached {delivered} of {still} held connections in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for (n, s) in servers.iter_mut().enumerate() {
        if let Some(status) = s.child.try_wait()? {
            println!("server {n} exited early ({status}):\n{}", s.log_tail());
        }
    }
    alive = alive.min(still);
    let ok = failed == 0 && alive == conns as u64 && delivered >= still;
    drop(clients);
    drop(servers);
    if !ok {
        bail!("not every connection was held and live (see above)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client process

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

struct Counts {
    alive: AtomicU64,
    events: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Counts {
    async fn note(&self, what: String) {
        let mut n = self.notes.lock().await;
        if n.len() < 5 {
            n.push(what);
        }
    }
}

async fn open(index: usize, target: SocketAddr, token: &str, channel: &str) -> Result<WsStream> {
    // 253 source addresses, ~28k ephemeral ports each: the global index picks one.
    let src = Ipv4Addr::new(127, 0, 0, 2 + (index % 253) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind((src, 0).into()).with_context(|| format!("bind {src}"))?;
    let tcp = socket.connect(target).await.context("connect")?;
    let mut req = format!("ws://{target}/api/v1/ws").into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("pm.v1, bearer.{token}"))?,
    );
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .context("upgrade")?;
    ws.send(Message::text(json!({"type": "subscribe", "channel": channel}).to_string())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("no `subscribed` within 120 s")?
            .context("closed while subscribing")??;
        if let Message::Text(t) = msg {
            if t.starts_with(r#"{"type":"subscribed""#) {
                return Ok(ws);
            } else if t.starts_with(r#"{"type":"error""#) {
                bail!("subscribe refused: {}", t.as_str());
            }
        }
    }
}

async fn client_main() -> Result<()> {
    let index: usize = env_or("WS_HOLD_CLIENT_INDEX", 0)?;
    let clients: usize = env_or("WS_HOLD_CLIENT_CLIENTS", 1)?;
    let conns: usize = env_or("WS_HOLD_CLIENT_CONNS", 0)?;
    let in_flight: usize = env_or("WS_HOLD_IN_FLIGHT", 200)?;
    let target: SocketAddr = env_or("WS_HOLD_TARGET", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
    let channel: Arc<str> = std::env::var("WS_HOLD_CHANNEL")?.into();
    let tokens: Vec<Arc<str>> =
        std::fs::read_to_string(std::env::var("WS_HOLD_TOKENS")?)?.lines().map(Arc::from).collect();
    let counts = Arc::new(Counts {
        alive: AtomicU64::new(0),
        events: AtomicU64::new(0),
        notes: Mutex::default(),
    });
    let failed = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(in_flight));
    let mut opening = tokio::task::JoinSet::new();
    for k in 0..conns {
        // Global connection number: client processes interleave, so users and source addresses
        // are spread evenly.
        let global = k * clients + index;
        let token = tokens[global % tokens.len()].clone();
        let (counts, failed, limit, channel) =
            (counts.clone(), failed.clone(), limit.clone(), channel.clone());
        let permit = limit.acquire_owned().await?;
        opening.spawn(async move {
            let ws = match open(global, target, &token, &channel).await {
                Ok(ws) => ws,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    counts.note(format!("connection {global}: {e:#}")).await;
                    return;
                }
            };
            drop(permit);
            counts.alive.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(read(ws, global, counts));
        });
    }
    while opening.join_next().await.is_some() {}
    for note in counts.notes.lock().await.drain(..) {
        println!("NOTE {note}");
    }
    println!("READY {} {}", counts.alive.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    // Commands on stdin until it closes; exiting closes every connection.
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        if line.trim() == "STATUS" {
            for note in counts.notes.lock().await.drain(..) {
                println!("NOTE {note}");
            }
            println!(
                "STATUS {} {}",
                counts.alive.load(Ordering::Relaxed),
                counts.events.load(Ordering::Relaxed)
            );
        }
    }
    Ok(())
}

/// Reads until the connection ends: answers pings (tungstenite does, while reading), counts
/// `event` frames, notes a close or an `error` frame.
async fn read(mut ws: WsStream, global: usize, counts: Arc<Counts>) {
    let end = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.starts_with(r#"{"type":"event""#) {
                    counts.events.fetch_add(1, Ordering::Relaxed);
                } else if t.starts_with(r#"{"type":"error""#) {
                    counts.note(format!("connection {global}: {}", t.as_str())).await;
                }
            }
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("{e}"),
            None => break "ended".to_owned(),
        }
    };
    counts.alive.fetch_sub(1, Ordering::Relaxed);
    counts.note(format!("connection {global}: {end}")).await;
}

//! Load harness for the realtime WebSocket (`/api/v1/ws`), issue 5: connections held and memory
//! per connection, fan-out throughput (delivered `event` frames per second) and publish →
//! last-subscriber latency, on one node or across two nodes sharing PostgreSQL.
//!
//! ```sh
//! cargo bench -p pm-server --bench ws_load        # quick: 1 node on SQLite, 200 connections
//! bash scripts/ws-load.sh                         # the sizes of BENCHMARKS.md (see the script)
//! WS_LOAD_CONNS=10000 WS_LOAD_RATE=20 cargo bench -p pm-server --bench ws_load
//! ```
//!
//! Not a timed test: it starts the `pm-server` release binary as child processes (rate limits
//! off), registers a user and creates an org with two projects over REST, then:
//!
//! 1. **hold** — opens `WS_LOAD_CONNS` WebSockets (token in the subprotocol list, at most
//!    `WS_LOAD_IN_FLIGHT` handshakes at a time), each bound to a source address cycling over
//!    127.0.0.2‥127.0.0.254 so ephemeral ports do not run out, and subscribes every one to
//!    `project:A`. The subscriber node's RSS (`/proc/<pid>/status`) before and after gives the
//!    memory per connection.
//! 2. **fan-out** — a publisher creates tasks in project A through node 1 at `WS_LOAD_RATE` per
//!    second for `WS_LOAD_SECONDS`; every connection receives each `task.created` event. The
//!    delivered rate is counted over the window after a 1 s warm-up; then the harness waits for
//!    the stragglers and checks that every connection got every event.
//! 3. **latency** — the first `WS_LOAD_LAT_SUBS` connections are also subscribed to `project:B`;
//!    a publisher creates tasks there at `WS_LOAD_LAT_RATE` per second for
//!    `WS_LOAD_LAT_SECONDS`. For each write, the time from sending the REST request (and from
//!    its response) to the moment the **last** of those subscribers received its event. The
//!    fan-out phase's latency (the last of all connections, at full load) is reported as well.
//!
//! Events are matched to writes by their title (`wsload#<n>`), read from the frames of one probe
//! connection; every other connection only reads each frame's `seq`. Client and server(s) share
//! the machine, so on a small box the client's work is part of the result.
//!
//! Settings (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_LOAD_CONNS` | 200 | WebSocket connections |
//! | `WS_LOAD_RATE`, `WS_LOAD_SECONDS` | 20, 3 | fan-out writes per second, for how long |
//! | `WS_LOAD_LAT_SUBS` | min(conns, 1000) | subscribers of the latency phase |
//! | `WS_LOAD_LAT_RATE`, `WS_LOAD_LAT_SECONDS` | 20, 3 | latency-phase writes per second, for how long |
//! | `WS_LOAD_IN_FLIGHT` | 500 | concurrent WebSocket handshakes |
//! | `WS_LOAD_NODES` | 1 | 2 = subscribers on node 2, writes through node 1 (needs PostgreSQL) |
//! | `WS_LOAD_DATABASE_URL` | a temp SQLite file | the database of the node(s) |
//! | `WS_LOAD_BROKER` | server default | `PM_REALTIME_BROKER` of the node(s): memory, postgres, redis |
//! | `PM_REDIS_URL` | — | passed to the nodes (broker `redis`) |
//! | `WS_LOAD_SERVER_BIN` | this build's `pm-server` | the server binary |
//!
//! Exits non-zero when connections fail beyond 0.1 %, a connection gets an `error` frame or is
//! closed by the server, or an event does not reach every subscriber.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Slots of the per-`seq` receive table (a ring indexed by `seq`); a run writes far fewer events.
const RING: usize = 1 << 18;
/// Concurrent REST writes of a publisher; a tick finding none free is counted as skipped.
const PUBLISH_IN_FLIGHT: usize = 64;
const JWT_SECRET: &str = "ws-load-secret-ws-load-secret-0123456789";

struct Opts {
    conns: usize,
    rate: f64,
    seconds: f64,
    lat_subs: usize,
    lat_rate: f64,
    lat_seconds: f64,
    in_flight: usize,
    nodes: usize,
    database_url: Option<String>,
    broker: Option<String>,
    redis_url: Option<String>,
    server_bin: PathBuf,
}

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

impl Opts {
    fn from_env() -> Result<Self> {
        let conns: usize = env_or("WS_LOAD_CONNS", 200)?;
        let o = Opts {
            conns,
            rate: env_or("WS_LOAD_RATE", 20.0)?,
            seconds: env_or("WS_LOAD_SECONDS", 3.0)?,
            lat_subs: env_or("WS_LOAD_LAT_SUBS", conns.min(1000))?,
            lat_rate: env_or("WS_LOAD_LAT_RATE", 20.0)?,
            lat_seconds: env_or("WS_LOAD_LAT_SECONDS", 3.0)?,
            in_flight: env_or("WS_LOAD_IN_FLIGHT", 500)?,
            nodes: env_or("WS_LOAD_NODES", 1)?,
            database_url: std::env::var("WS_LOAD_DATABASE_URL").ok().filter(|s| !s.is_empty()),
            broker: std::env::var("WS_LOAD_BROKER").ok().filter(|s| !s.is_empty()),
            redis_url: std::env::var("PM_REDIS_URL").ok().filter(|s| !s.is_empty()),
            server_bin: std::env::var_os("WS_LOAD_SERVER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pm-server"))),
        };
        if o.conns == 0 || o.lat_subs == 0 || o.lat_subs > o.conns || o.in_flight == 0 {
            bail!("need 0 < WS_LOAD_LAT_SUBS <= WS_LOAD_CONNS and WS_LOAD_IN_FLIGHT > 0");
        }
        if !(1..=2).contains(&o.nodes) {
            bail!("WS_LOAD_NODES is 1 or 2");
        }
        if o.nodes == 2 && !o.database_url.as_deref().is_some_and(|u| u.starts_with("postgres")) {
            bail!("two nodes share a PostgreSQL database: set WS_LOAD_DATABASE_URL=postgres://…");
        }
        if o.rate <= 0.0 || o.lat_rate <= 0.0 {
            bail!("rates must be positive");
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes

struct Node {
    child: Child,
    base: String,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kb(&self) -> Result<u64> {
        rss_kb(&format!("/proc/{}/status", self.pid()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kb(status: &str) -> Result<u64> {
    let text = std::fs::read_to_string(status).with_context(|| format!("reading {status}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// The node's RSS once it stops shrinking. Registering and logging in hash passwords on Tokio's
/// blocking threads (~20 MB each); that memory goes back to the system only when those threads
/// exit, 10 s after their last job, so wait that out first.
async fn settled_rss(node: &Node) -> Result<u64> {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut last = node.rss_kb()?;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = node.rss_kb()?;
        if now.abs_diff(last) * 200 < last {
            return Ok(now); // within 0.5 %
        }
        last = now;
    }
    Ok(last)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_node(o: &Opts, database_url: &str, dir: &Path, n: usize) -> Result<Node> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = dir.join(format!("node{n}.log"));
    let mut cmd = Command::new(&o.server_bin);
    cmd.arg("serve")
        .env("PM_DATABASE_URL", database_url)
        .env("PM_BIND", addr.to_string())
        .env("PM_LOG", "warn")
        .env("PM_RATE_LIMIT_PER_MINUTE", "0")
        .env("PM_RATE_LIMIT_IP_PER_MINUTE", "0")
        .env("PM_JWT_SECRET", JWT_SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if let Some(b) = &o.broker {
        cmd.env("PM_REALTIME_BROKER", b);
    }
    if let Some(r) = &o.redis_url {
        cmd.env("PM_REDIS_URL", r);
    }
    let child = cmd.spawn().with_context(|| format!("starting {}", o.server_bin.display()))?;
    let mut node = Node { child, base: format!("http://{addr}"), addr, log };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = node.child.try_wait()? {
            bail!("node {n} exited ({status}):\n{}", node.log_tail());
        }
        let up = http.get(format!("{}/healthz", node.base)).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            return Ok(node);
        }
        if Instant::now() > deadline {
            node.child.kill().ok();
            bail!("node {n} did not answer /healthz within 60 s:\n{}", node.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// REST

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn str_field(v: &Value, k: &str) -> Result<String> {
    v[k].as_str().map(str::to_owned).with_context(|| format!("no `{k}` in {v}"))
}

/// Registers and logs in the load user, creates an org and projects A and B; returns the API
/// handle and the two project ids.
async fn setup(base: &str) -> Result<(Api, String, String)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(PUBLISH_IN_FLIGHT).build()?;
    let creds = json!({"email": "wsload@example.com", "password": "ws-load-password-123"});
    let mut register = creds.clone();
    register["display_name"] = json!("WS load");
    post(&http, &format!("{base}/api/v1/auth/register"), None, register).await?;
    let login = post(&http, &format!("{base}/api/v1/auth/login"), None, creds).await?;
    let token = str_field(&login, "access_token")?;
    let t = Some(token.as_str());
    let org =
        post(&http, &format!("{base}/api/v1/orgs"), t, json!({"slug":"wsload","name":"WS load"}))
            .await?;
    let org = str_field(&org, "id")?;
    let projects = format!("{base}/api/v1/orgs/{org}/projects");
    let a =
        str_field(&post(&http, &projects, t, json!({"key":"WLA","name":"Fan-out"})).await?, "id")?;
    let b =
        str_field(&post(&http, &projects, t, json!({"key":"WLB","name":"Latency"})).await?, "id")?;
    Ok((Api { http, base: base.to_owned(), token }, a, b))
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Receive times of one `seq`, over every connection.
struct Slot {
    count: AtomicU32,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

struct Shared {
    t0: Instant,
    /// `event` frames received, all connections.
    events: AtomicU64,
    /// Connections subscribed and reading.
    ready: AtomicU64,
    /// Connections that failed to open or subscribe.
    failed: AtomicU64,
    /// `error` frames received.
    error_frames: AtomicU64,
    /// Connections closed or broken by the server while the harness ran.
    dropped: AtomicU64,
    /// Close codes and errors seen (first few kept for the report).
    notes: Mutex<Vec<String>>,
    /// Set when the harness starts tearing down: closes after it are expected.
    done: AtomicBool,
    slots: Vec<Slot>,
    /// Probe connection: `seq` of the event titled `wsload#<n>`, by `n`.
    probe: Mutex<HashMap<u64, i64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn slot(&self, seq: i64) -> &Slot {
        &self.slots[seq.rem_euclid(RING as i64) as usize]
    }

    fn note(&self, what: String) {
        let mut n = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if n.len() < 10 {
            n.push(what);
        }
    }
}

/// `{"type":"event","channel":"…","seq":N,…`: the `seq`, without parsing the frame.
fn event_seq(text: &str) -> Option<i64> {
    if !text.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let rest = &text[text.find(r#""seq":"#)? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `wsload#<n>` in an event's title.
fn marker(text: &str) -> Option<u64> {
    let rest = &text[text.find("wsload#")? + 7..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct ClientSpec {
    index: usize,
    target: SocketAddr,
    token: Arc<str>,
    channels: Vec<String>,
    probe: bool,
}

async fn open(spec: &ClientSpec) -> Result<WsStream> {
    // Cycle the source address over 127.0.0.2‥254: ~28k ephemeral ports per address.
    let src = Ipv4Addr::new(127, 0, 0, 2 + (spec.index % 253) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind((src, 0).into()).with_context(|| format!("bind {src}"))?;
    let tcp = socket.connect(spec.target).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{}/api/v1/ws", spec.target).into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("pm.v1, bearer.{}", spec.token))?,
    );
    // tungstenite's defaults allocate 128 KiB per buffer; the client side needs little.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .context("upgrade")?;
    for ch in &spec.channels {
        let frame = json!({"type": "subscribe", "channel": ch}).to_string();
        ws.send(Message::text(frame)).await?;
    }
    let mut subscribed = 0;
    while subscribed < spec.channels.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no `subscribed` within 60 s")?
            .context("closed while subscribing")??;
        if let Message::Text(t) = msg {
            if t.starts_with(r#"{"type":"subscribed""#) {
                subscribed += 1;
            } else if t.starts_with(r#"{"type":"error""#) {
                bail!("subscribe refused: {}", t.as_str());
            }
        }
    }
    Ok(ws)
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn client(spec: ClientSpec, shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) {
    let mut ws = match open(&spec).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.note(format!("connection {}: {e:#}", spec.index));
            return;
        }
    };
    drop(permit);
    shared.ready.fetch_add(1, Ordering::Relaxed);
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                if let Some(seq) = event_seq(&t) {
                    let now = shared.now_ns();
                    let slot = shared.slot(seq);
                    slot.count.fetch_add(1, Ordering::Relaxed);
                    slot.first_ns.fetch_min(now, Ordering::Relaxed);
                    slot.last_ns.fetch_max(now, Ordering::Relaxed);
                    shared.events.fetch_add(1, Ordering::Relaxed);
                    if spec.probe
                        && let Some(n) = marker(&t)
                    {
                        shared.probe.lock().unwrap_or_else(|p| p.into_inner()).insert(n, seq);
                    }
                } else if t.starts_with(r#"{"type":"error""#) {
                    shared.error_frames.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("connection {}: {}", spec.index, t.as_str()));
                }
            }
            Ok(Message::Close(frame)) => {
                if !shared.done.load(Ordering::Relaxed) {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("connection {} closed: {frame:?}", spec.index));
                }
                return;
            }
            Ok(_) => {} // pings are answered by tungstenite
            Err(e) => {
                if !shared.done.load(Ordering::Relaxed) {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("connection {}: {e}", spec.index));
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishers

#[derive(Clone, Copy)]
struct Write {
    n: u64,
    sent_ns: u64,
    done_ns: u64,
    ok: bool,
}

struct PublishResult {
    writes: Vec<Write>,
    skipped: u64,
    /// Events received by all connections during the window after the first second.
    window_events: u64,
    window_secs: f64,
}

/// Creates tasks titled `wsload#<n>` in `project` at `rate` per second for `seconds`.
async fn publish(
    api: &Arc<Api>,
    shared: &Arc<Shared>,
    project: &str,
    rate: f64,
    seconds: f64,
    next_n: &mut u64,
) -> PublishResult {
    let url = Arc::new(format!("{}/api/v1/projects/{project}/tasks", api.base));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let limit = Arc::new(Semaphore::new(PUBLISH_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let warm = start + Duration::from_secs_f64(1.0_f64.min(seconds / 4.0));
    let mut window_start: Option<(Instant, u64)> = None;
    let mut skipped = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let at = tick.tick().await;
        let now = Instant::now();
        if window_start.is_none() && now >= warm {
            window_start = Some((now, shared.events.load(Ordering::Relaxed)));
        }
        if at.into_std() >= end {
            break;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let n = *next_n;
        *next_n += 1;
        let (api, shared, url, writes) = (api.clone(), shared.clone(), url.clone(), writes.clone());
        tasks.spawn(async move {
            let sent_ns = shared.now_ns();
            let body = json!({"title": format!("wsload#{n}"), "priority": "medium"});
            let res = api.http.post(url.as_str()).bearer_auth(&api.token).json(&body).send().await;
            let ok = match res {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let done_ns = shared.now_ns();
            writes.lock().unwrap_or_else(|p| p.into_inner()).push(Write {
                n,
                sent_ns,
                done_ns,
                ok,
            });
            drop(permit);
        });
    }
    let (w_at, w_events) = window_start.unwrap_or((start, 0));
    let window_events = shared.events.load(Ordering::Relaxed) - w_events;
    let window_secs = w_at.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let mut writes = std::mem::take(&mut *writes.lock().unwrap_or_else(|p| p.into_inner()));
    writes.sort_by_key(|w| w.n);
    PublishResult { writes, skipped, window_events, window_secs }
}

/// Waits until every write's event reached `expected` connections, or nothing arrived for 3 s
/// (at most 60 s).
async fn drain(shared: &Shared, writes: &[Write], expected: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (shared.events.load(Ordering::Relaxed), Instant::now());
    loop {
        let complete = {
            let probe = shared.probe.lock().unwrap_or_else(|p| p.into_inner());
            writes.iter().filter(|w| w.ok).all(|w| {
                probe
                    .get(&w.n)
                    .is_some_and(|seq| shared.slot(*seq).count.load(Ordering::Relaxed) >= expected)
            })
        };
        let events = shared.events.load(Ordering::Relaxed);
        if events != last.0 {
            last = (events, Instant::now());
        }
        if complete || last.1.elapsed() > Duration::from_secs(3) || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Latency {
    writes: usize,
    failed_writes: usize,
    incomplete: usize,
    /// Milliseconds, sorted: request sent → last subscriber; response → last subscriber;
    /// request sent → first subscriber; REST write round trip.
    from_sent: Vec<f64>,
    from_done: Vec<f64>,
    first: Vec<f64>,
    rest: Vec<f64>,
}

fn latency(shared: &Shared, writes: &[Write], expected: u32) -> Latency {
    let probe = shared.probe.lock().unwrap_or_else(|p| p.into_inner());
    let mut l = Latency {
        writes: writes.len(),
        failed_writes: writes.iter().filter(|w| !w.ok).count(),
        incomplete: 0,
        from_sent: vec![],
        from_done: vec![],
        first: vec![],
        rest: vec![],
    };
    let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;
    for w in writes.iter().filter(|w| w.ok) {
        l.rest.push(ms(w.done_ns, w.sent_ns));
        let Some(seq) = probe.get(&w.n) else {
            l.incomplete += 1;
            continue;
        };
        let s = shared.slot(*seq);
        if s.count.load(Ordering::Relaxed) < expected {
            l.incomplete += 1;
            continue;
        }
        let (first, last) = (s.first_ns.load(Ordering::Relaxed), s.last_ns.load(Ordering::Relaxed));
        l.from_sent.push(ms(last, w.sent_ns));
        l.from_done.push(ms(last, w.done_ns));
        l.first.push(ms(first, w.sent_ns));
    }
    for v in [&mut l.from_sent, &mut l.from_done, &mut l.first, &mut l.rest] {
        v.sort_by(f64::total_cmp);
    }
    l
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ws_load: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run() -> Result<bool> {
    let o = Opts::from_env()?;
    if let Some(limit) = open_files_limit()
        && (o.conns as u64) + 256 > limit
    {
        bail!(
            "{} connections need more open files than RLIMIT_NOFILE ({limit}) allows the \
             harness and the server: raise `ulimit -n` (hard limit: `ulimit -Hn`) or lower \
             WS_LOAD_CONNS",
            o.conns
        );
    }
    let dir = tempfile::tempdir()?;
    let database_url = match &o.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}/pm.db", dir.path().display()),
    };
    let mode = match o.nodes {
        1 => format!("1 node, {}", db_kind(&database_url)),
        _ => format!(
            "2 nodes sharing {}, broker {}",
            db_kind(&database_url),
            o.broker.as_deref().unwrap_or("default")
        ),
    };
    println!(
        "ws_load: {mode}; {} connections; {} cores; load average {}",
        o.conns,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    // Node 1 takes the writes; subscribers go to the last node. Node 2 starts after node 1 has
    // migrated the shared database.
    let mut nodes = vec![start_node(&o, &database_url, dir.path(), 1).await?];
    if o.nodes == 2 {
        nodes.push(start_node(&o, &database_url, dir.path(), 2).await?);
    }
    let (api, project_a, project_b) = setup(&nodes[0].base).await?;
    let api = Arc::new(api);
    let sub_node = nodes.last().context("a node")?;

    let shared = Arc::new(Shared {
        t0: Instant::now(),
        events: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        error_frames: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        notes: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
        slots: (0..RING)
            .map(|_| Slot {
                count: AtomicU32::new(0),
                first_ns: AtomicU64::new(u64::MAX),
                last_ns: AtomicU64::new(0),
            })
            .collect(),
        probe: Mutex::new(HashMap::new()),
    });

    // 1. Hold.
    let rss_before = settled_rss(sub_node).await?;
    let token: Arc<str> = api.token.as_str().into();
    let ch_a = format!("project:{project_a}");
    let ch_b = format!("project:{project_b}");
    let gate = Arc::new(Semaphore::new(o.in_flight));
    let opening = Instant::now();
    for index in 0..o.conns {
        let mut channels = vec![ch_a.clone()];
        if index < o.lat_subs {
            channels.push(ch_b.clone());
        }
        let spec = ClientSpec {
            index,
            target: sub_node.addr,
            token: token.clone(),
            channels,
            probe: index == 0,
        };
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(client(spec, shared.clone(), permit));
        if index == 0 {
            // The probe first, alone: its subscribe also brings the node's permission engine up
            // to date (it looks for other nodes' grants at most once a second, and checks that
            // race with that look are answered from the old state; see BENCHMARKS.md).
            while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) == 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let open_deadline = Instant::now() + Duration::from_secs(120 + o.conns as u64 / 100);
    loop {
        let settled = shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if settled >= o.conns as u64 {
            break;
        }
        if Instant::now() > open_deadline {
            bail!("only {settled} of {} connections settled in time", o.conns);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_secs = opening.elapsed().as_secs_f64();
    let ready = shared.ready.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    if ready == 0 {
        bail!("no connection opened: {:?}", shared.notes.lock().unwrap_or_else(|p| p.into_inner()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = sub_node.rss_kb()?;
    let client_rss_held = rss_kb("/proc/self/status")?;
    let kb_per_conn = (rss_held as f64 - rss_before as f64) / ready as f64;
    println!(
        "hold: {ready} connections subscribed in {open_secs:.1} s ({failed} failed); \
         server RSS {rss_before} → {rss_held} kB"
    );

    // 2. Fan-out to every connection.
    let mut next_n = 0;
    let fan = publish(&api, &shared, &project_a, o.rate, o.seconds, &mut next_n).await;
    drain(&shared, &fan.writes, ready as u32).await;
    let fan_lat = latency(&shared, &fan.writes, ready as u32);
    let delivered_per_s = fan.window_events as f64 / fan.window_secs;
    let rss_after_fan = sub_node.rss_kb()?;
    println!(
        "fan-out: {} writes ({} skipped at the rate limit of {PUBLISH_IN_FLIGHT} in flight), \
         {:.0} events/s delivered over {:.1} s; server RSS after {rss_after_fan} kB",
        fan.writes.len(),
        fan.skipped,
        delivered_per_s,
        fan.window_secs
    );

    // 3. Latency with `lat_subs` subscribers.
    let lat_subs = (o.lat_subs as u64).min(ready) as u32;
    let lat = publish(&api, &shared, &project_b, o.lat_rate, o.lat_seconds, &mut next_n).await;
    drain(&shared, &lat.writes, lat_subs).await;
    let lat_l = latency(&shared, &lat.writes, lat_subs);

    shared.done.store(true, Ordering::Relaxed);
    let error_frames = shared.error_frames.load(Ordering::Relaxed);
    let dropped = shared.dropped.load(Ordering::Relaxed);

    println!();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| connections held (subscribed) | {ready} of {} ({failed} failed) | 50 000 |",
        o.conns
    );
    println!(
        "| server memory per connection | {kb_per_conn:.1} KB ({rss_before} → {rss_held} kB RSS) | ≤ 30 KB |"
    );
    println!(
        "| delivered events/s, {ready} subscribers, {:.0} writes/s | {delivered_per_s:.0} | ≥ 100 000 |",
        o.rate
    );
    let lat_target = match (o.nodes, o.broker.as_deref()) {
        (1, _) => "≤ 25 ms",
        (_, Some("redis")) => "≤ 50 ms",
        _ => "≤ 150 ms",
    };
    for (name, subs, l) in
        [("latency phase", lat_subs, &lat_l), ("fan-out phase", ready as u32, &fan_lat)]
    {
        println!(
            "| {name}: sent → last of {subs} p50 / p99 (max) | {:.1} / {:.1} ms ({:.1}) | p99 {lat_target} |",
            pct(&l.from_sent, 0.5),
            pct(&l.from_sent, 0.99),
            pct(&l.from_sent, 1.0)
        );
        println!(
            "| {name}: response → last p50 / p99; sent → first p50; REST p50 / p99 | {:.1} / {:.1}; {:.1}; {:.1} / {:.1} ms | — |",
            pct(&l.from_done, 0.5),
            pct(&l.from_done, 0.99),
            pct(&l.first, 0.5),
            pct(&l.rest, 0.5),
            pct(&l.rest, 0.99)
        );
        println!(
            "| {name}: writes, failed, events not delivered to every subscriber | {}, {}, {} | 0 failed / undelivered |",
            l.writes, l.failed_writes, l.incomplete
        );
    }
    println!(
        "| error frames, connections dropped by the server | {error_frames}, {dropped} | 0, 0 |"
    );
    println!("| harness RSS with all connections open | {client_rss_held} kB | — |");
    for (i, node) in nodes.iter().enumerate() {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let warnings: Vec<&str> =
            log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        println!("| node {} warnings and errors logged | {} | — |", i + 1, warnings.len());
        for w in warnings.iter().take(3) {
            let short: String = w.chars().take(240).collect();
            println!("note: node {}: {short}", i + 1);
        }
    }
    let notes = shared.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for n in &notes {
        println!("note: {n}");
    }

    let tolerance = (o.conns as u64).div_ceil(1000);
    let ok = failed <= tolerance
        && error_frames == 0
        && dropped == 0
        && fan_lat.failed_writes + lat_l.failed_writes == 0
        && fan_lat.incomplete + lat_l.incomplete == 0;
    if !ok {
        eprintln!(
            "ws_load: FAILED (connection failures beyond {tolerance}, error frames, drops or undelivered events)"
        );
    }
    drop(nodes);
    Ok(ok)
}

fn db_kind(url: &str) -> &'static str {
    if url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" }
}

//! The compiled `pm-server` binary: starts from environment variables, answers `/healthz`,
//! exits cleanly on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::raw_get;

/// Kills the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read as _;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[cfg(unix)]
#[tokio::test]
async fn binary_serves_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(env!("CARGO_BIN_EXE_pm-server"))
        .env("PM_BIND", addr.to_string())
        .env("PM_DATABASE_URL", format!("sqlite://{}", dir.path().join("pm.db").display()))
        .env("PM_LOG", "info")
        .env("PM_SHUTDOWN_TIMEOUT_SECS", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pm-server");
    let mut child = Reaper(child);

    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("pm-server exited early with {status}: {}", stderr_of(&mut child.0));
        }
        if let Ok((200, _)) = raw_get(addr, "/healthz").await {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no /healthz 200 within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir.path().join("pm.db").exists(), "database file created");
    // The realtime endpoint is served and refuses an unauthenticated upgrade.
    let (status, text) = raw_get(addr, "/api/v1/ws").await.unwrap();
    assert_eq!(status, 401, "{text}");

    let killed = Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status().unwrap();
    assert!(killed.success());

    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = stderr_of(&mut child.0);
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("backend=\"sqlite\"") || log.contains("backend=sqlite"), "{log}");
    assert!(log.contains("realtime hub started"), "{log}");
}

#[test]
fn binary_names_the_variable_a_realtime_broker_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pm-server"))
        .env("PM_DATABASE_URL", format!("sqlite://{}", dir.path().join("pm.db").display()))
        .env("PM_BIND", "127.0.0.1:0")
        .env("PM_REALTIME_BROKER", "redis")
        .env_remove("PM_REDIS_URL")
        .output()
        .expect("run pm-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PM_REDIS_URL"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_pm-server"))
        .env("PM_REALTIME_BROKER", "kafka")
        .output()
        .expect("run pm-server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PM_REALTIME_BROKER"));
}

#[test]
fn binary_rejects_a_bad_bind_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_pm-server"))
        .env("PM_BIND", "not-an-address")
        .output()
        .expect("run pm-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PM_BIND"), "{err}");
}

#[test]
fn init_permissions_is_idempotent_and_reports_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_pm-server"))
            .arg("init-permissions")
            .env("PM_DATABASE_URL", &url)
            .output()
            .expect("run pm-server init-permissions");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let first = run();
    assert!(first.contains("created 21 permissions"), "{first}");
    assert!(first.contains("task.update"), "{first}");
    assert!(
        first.contains("created 4 roles: viewer, team_member, project_manager, admin"),
        "{first}"
    );
    assert!(first.contains("created 4 role templates"), "{first}");
    let second = run();
    assert!(second.starts_with("nothing to create"), "{second}");
    assert!(!second.contains("created"), "{second}");
}

#[test]
fn init_integrations_is_idempotent_and_reports_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let run = |key: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pm-server"))
            .arg("init-integrations")
            .env("PM_DATABASE_URL", &url)
            .env("PM_ENCRYPTION_KEY", key)
            .output()
            .expect("run pm-server init-integrations");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let key = format!("k1:{}", pm_integrations::crypto::EncryptionKey::generate().to_base64());
    let (ok, first, err) = run(&key);
    assert!(ok, "{first}\n{err}");
    assert!(
        first.contains("created 5 integration providers")
            && ["github", "jira", "slack", "google_calendar", "outlook"]
                .iter()
                .all(|p| first.contains(p)),
        "{first}"
    );
    let (ok, second, err) = run(&key);
    assert!(ok, "{second}\n{err}");
    assert!(second.starts_with("nothing to create"), "{second}");
    // A malformed key is refused up front, naming the variable.
    let (ok, _, err) = run("k1:short");
    assert!(!ok);
    assert!(err.contains("PM_ENCRYPTION_KEY"), "{err}");
}

/// Starts `pm-server` on `addr` with its own SQLite database in `dir`, `PM_REUSE_PORT` as given.
fn spawn_server(dir: &std::path::Path, addr: std::net::SocketAddr, reuse_port: &str) -> Reaper {
    let child = Command::new(env!("CARGO_BIN_EXE_pm-server"))
        .env("PM_BIND", addr.to_string())
        .env("PM_DATABASE_URL", format!("sqlite://{}", dir.join("pm.db").display()))
        .env("PM_LOG", "warn")
        .env("PM_SHUTDOWN_TIMEOUT_SECS", "2")
        .env("PM_REUSE_PORT", reuse_port)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pm-server");
    Reaper(child)
}

/// Waits until `addr` answers `/healthz` with 200, failing if `child` exits first.
async fn wait_healthy(child: &mut Reaper, addr: std::net::SocketAddr) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("pm-server exited early with {status}: {}", stderr_of(&mut child.0));
        }
        if let Ok((200, _)) = raw_get(addr, "/healthz").await {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no /healthz 200 within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `PM_REUSE_PORT`: a second process binds the port the first one listens on and both serve;
/// when the first stops, the second still answers on that port. Without the setting the second
/// process refuses to start, naming `PM_BIND`.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn two_processes_share_a_port_with_pm_reuse_port() {
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut a = spawn_server(dir_a.path(), addr, "true");
    wait_healthy(&mut a, addr).await;
    let mut b = spawn_server(dir_b.path(), addr, "true");
    // B is up once its database exists and it answers while A runs: wait for its database, then
    // for a moment in which it has not exited (a failed bind exits at once).
    let started = Instant::now();
    while !dir_b.path().join("pm.db").exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "B never opened its database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(status) = b.0.try_wait().unwrap() {
        panic!("the second process did not share the port ({status}): {}", stderr_of(&mut b.0));
    }
    // Both listen: stop A; the port keeps answering, from B.
    let killed = Command::new("kill").arg("-TERM").arg(a.0.id().to_string()).status().unwrap();
    assert!(killed.success());
    let signalled = Instant::now();
    while a.0.try_wait().unwrap().is_none() {
        assert!(signalled.elapsed() < Duration::from_secs(10), "A did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let (status, body) = raw_get(addr, "/healthz").await.expect("B serves the shared port");
        assert_eq!(status, 200, "{body}");
    }
    assert!(b.0.try_wait().unwrap().is_none(), "B still runs");

    // Without PM_REUSE_PORT, a port in use is an error naming the variable.
    let mut c = spawn_server(dir_c.path(), addr, "false");
    let err = stderr_of(&mut c.0);
    let status = c.0.wait().unwrap();
    assert!(!status.success(), "a second server without PM_REUSE_PORT started: {err}");
    assert!(err.contains("PM_BIND"), "{err}");
}

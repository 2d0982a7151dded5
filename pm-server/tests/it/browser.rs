//! The PWA in a real browser: `tests/browser/pwa.mjs` (playwright-core) drives chromium against
//! a pm-server on a temp SQLite database, seeded here through the API: manifest and icons,
//! service worker, offline reload, offline create replayed exactly once, field-level conflict
//! resolution, photo upload, geolocation check-in, board drag with mouse and touch. Screenshots
//! go to `<target>/screenshots/`.
//!
//! Runs only when `PM_TEST_BROWSER` names a chromium binary (CI sets `/usr/bin/chromium`);
//! otherwise, or without Node/npm, prints a `SKIPPED` line.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::json;

use crate::api::{Server, org_and_project};

fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED pwa_in_chromium: {why}");
}

/// `tests/browser` with `node_modules` installed (`npm ci` when missing).
fn browser_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if std::process::Command::new("node").arg("--version").output().is_err() {
        skip("node is not installed");
        return None;
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            skip("`npm ci --prefix pm-server/tests/browser` failed");
            return None;
        }
    }
    Some(dir)
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pwa_in_chromium() {
    let Some(chromium) = std::env::var_os("PM_TEST_BROWSER") else {
        skip("set PM_TEST_BROWSER to a chromium binary (e.g. /usr/bin/chromium) to run it");
        return;
    };
    let Some(dir) = browser_dir() else { return };
    let s = Server::start().await;

    let (email, password) = ("dana@example.com", "correct horse battery staple");
    let dana = s
        .call(
            Method::POST,
            "/api/v1/auth/register",
            None,
            Some(json!({"email": email, "display_name": "Dana Field", "password": password})),
        )
        .await;
    let dana = dana.ok(201)["id"].as_str().unwrap().to_owned();
    let login = s
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await;
    let token = login.ok(200)["access_token"].as_str().unwrap().to_owned();
    let (org, project, states) = org_and_project(&s, &token, "acme", "PLT").await;
    let mut titles = vec![];
    for (title, priority) in [
        ("Drag me across the board", "high"),
        ("Fix the loading dock door", "urgent"),
        ("Order safety vests", "low"),
        ("Inspect the north stairwell", "medium"),
    ] {
        s.call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": title, "priority": priority, "state_id": states[0]["id"]})),
        )
        .await
        .ok(201);
        titles.push(title);
    }
    // Someone else assigns Dana a task: she has an unread notification.
    let (sam, sam_token) = s.user("sam@example.com").await;
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", sam.0),
        Some(&token),
        Some(json!({"role": "admin"})),
    )
    .await
    .ok(200);
    let tasks =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks"), Some(&token), None).await;
    let stairwell = tasks.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == titles[3])
        .unwrap()
        .clone();
    s.call(
        Method::PATCH,
        &format!("/api/v1/tasks/{}", stairwell["id"].as_str().unwrap()),
        Some(&sam_token),
        Some(json!({"assignees": [dana], "version": stairwell["version"]})),
    )
    .await
    .ok(200);
    // The test state's realtime (and with it the notification consumer) starts on first use,
    // unlike the binary's: ask for the count until the notification is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n =
            s.call(Method::GET, "/api/v1/me/notifications/unread-count", Some(&token), None).await;
        if n.ok(200)["count"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the assignment notification never came");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seed = json!({
        "notify_task": titles[3],
        "email": email, "password": password, "project_id": project,
        "states": states.iter().map(|s| json!({"id": s["id"], "name": s["name"]})).collect::<Vec<_>>(),
        "drag_task": titles[0], "conflict_task": titles[1],
    });

    let shots = screenshot_dir();
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(dir.join("pwa.mjs"))
            .arg(&base)
            .arg(&chromium)
            .arg(&shots)
            .arg(seed.to_string())
            .output()
    })
    .await
    .unwrap()
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pwa.mjs failed ({}):\n{stdout}\n{stderr}", out.status);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("{stderr}");
}

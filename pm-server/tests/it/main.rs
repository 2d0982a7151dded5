//! pm-server's one integration-test binary: in-process HTTP tests against [`app`] (`oneshot`),
//! a real listener driven by [`pm_server::serve`], and the compiled `pm-server` binary.
//!
//! Everything runs on temp-file SQLite databases: no external service needed (the auth store
//! conformance also runs on PostgreSQL when `PM_TEST_POSTGRES_URL` is set).

mod api;
mod auth;
mod binary;
mod browser;
mod collab;
mod faults;
mod http;
mod metrics;
mod pool;
mod readiness;
mod realtime;
mod serve;
mod web;
mod workflows;

use std::net::SocketAddr;

/// Taken by every test that runs two pm-server instances on the shared PostgreSQL. It was
/// needed while an instance held ~20 connections idle (one pool per crate): two such tests at
/// once, beside the rest of the suite, exceeded the local server's 100 ("sorry, too many
/// clients already", seen as pool timeouts). A `pm-server` process now holds at most
/// `PM_DATABASE_POOL_SIZE` (16) + 2 `LISTEN` connections (see `pool.rs`), but the in-process
/// pairs (`realtime::multi`, `collab`) still open a pool per crate through the URL `open`s, and
/// the permit is cheap: kept as a safety margin.
pub static POSTGRES_PAIRS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use pm_server::{AppState, app};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

/// A migrated SQLite database (pm-core and pm-permissions tables, default roles seeded) in a
/// temp dir (kept alive by the returned guard).
pub async fn sqlite_state() -> (TempDir, AppState) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.expect("open sqlite store");
    stores.admin.migrate().await.expect("migrate");
    let permissions =
        pm_server::authz::open_permissions(&url).await.expect("open permission tables");
    (dir, AppState::new(stores, permissions))
}

/// A response, its body parsed as JSON (`Value::Null` when empty).
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body parsed as JSON.
    pub body: Value,
}

impl Reply {
    /// The `content-type` header, or `""`.
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with `status`, returning its body.
    pub fn assert_problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.content_type(), "application/problem+json");
        assert_eq!(self.body["status"], status.as_u16());
        for member in ["type", "title", "detail"] {
            assert!(self.body[member].is_string(), "missing {member} in {}", self.body);
        }
        &self.body
    }
}

/// Sends one request through `router` in-process.
pub async fn send(router: Router, req: Request<Body>) -> Reply {
    let res = router.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Reply { status: parts.status, headers: parts.headers, body }
}

/// `GET path` through a fresh [`app`] over `state`.
pub async fn get(state: &AppState, path: &str) -> Reply {
    send(app(state.clone()), Request::get(path).body(Body::empty()).unwrap()).await
}

/// A minimal HTTP/1.1 client over a real socket: `GET path` with `Connection: close`, returning
/// the status code and the raw response text.
pub async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, text))
}

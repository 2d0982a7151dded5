//! `/readyz` when the database does not answer.
//!
//! pm-core's built-in adapters cannot be made unreachable from outside (SQLite's pool keeps its
//! connections; `open` of an unreachable PostgreSQL fails up front), so these tests swap the
//! real store's `admin` for one whose `ping` fails or never returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::StatusCode;
use pm_core::store::StoreAdmin;
use pm_server::AppState;

use crate::{get, sqlite_state};

/// How the fake admin's `ping` behaves.
#[derive(Clone, Copy)]
pub enum Ping {
    /// Fails like a refused connection, with internal text that must not reach clients.
    Fail,
    /// Never answers.
    Hang,
}

struct FakeAdmin(Ping);

#[async_trait]
impl StoreAdmin for FakeAdmin {
    async fn migrate(&self) -> pm_core::Result<()> {
        Ok(())
    }

    async fn ping(&self) -> pm_core::Result<()> {
        match self.0 {
            Ping::Fail => Err(pm_core::Error::storage(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connect to 10.0.0.7:5432 as pm_admin refused",
            ))),
            Ping::Hang => std::future::pending().await,
        }
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// `state` with its store admin replaced by one whose ping behaves as `ping`.
pub fn with_admin(mut state: AppState, ping: Ping) -> AppState {
    state.stores.admin = Arc::new(FakeAdmin(ping));
    state
}

#[tokio::test]
async fn unreachable_database_is_503_without_details() {
    let (_db, state) = sqlite_state().await;
    let r = get(&with_admin(state, Ping::Fail), "/readyz").await;
    let body = r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["type"], "/problems/unavailable");
    let text = body.to_string();
    assert!(!text.contains("10.0.0.7") && !text.contains("pm_admin"), "leaked: {text}");
}

#[tokio::test]
async fn silent_database_is_503_after_the_readiness_timeout() {
    let (_db, state) = sqlite_state().await;
    let mut state = with_admin(state, Ping::Hang);
    state.timeouts.readiness = Duration::from_millis(200);
    let started = Instant::now();
    let r = get(&state, "/readyz").await;
    r.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn liveness_ignores_the_database() {
    let (_db, state) = sqlite_state().await;
    assert_eq!(get(&with_admin(state, Ping::Fail), "/healthz").await.status, StatusCode::OK);
}

//! Issue 5's acceptance: two pm-server instances, each with its own hub and its own broker
//! connection, sharing one PostgreSQL database. A task changed through REST on A reaches a
//! socket on B (through the shared event log), and presence from a socket on A is seen on B
//! (through the broker) — with the PostgreSQL broker, and with Redis.
//!
//! Gated on `PM_TEST_POSTGRES_URL` (a fresh database per test) and, for Redis, on
//! `PM_TEST_REDIS_URL`; skipped with a `SKIPPED …` line on stderr otherwise.

use std::sync::Arc;

use pm_core::event::Origin;
use pm_core::model::{Email, Name};
use pm_core::service::NewUser;
use pm_realtime::HubConfig;
use pm_server::AppState;
use pm_server::auth::Scope;
use pm_server::realtime::{BrokerKind, Realtime, RealtimeSetup, open_broker};
use serde_json::json;
use tempfile::TempDir;

use super::Ws;
use crate::api::{Server, TEST_SECRET, org_and_project};

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Creates `<base database>_<uuid>` next to the database of `base` and returns its URL.
async fn fresh_postgres_database(base: &str) -> String {
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
    format!("{prefix}/{name}")
}

/// One instance on `url`, as the binary builds it: every crate's tables migrated, the realtime
/// stores on the same database, its own broker connection.
async fn instance(url: &str, broker: BrokerKind, redis: Option<&str>) -> Server {
    let stores = pm_core::store::open(url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let permissions = pm_server::authz::open_permissions(url).await.unwrap();
    let realtime_stores = pm_realtime::store::open(url).await.unwrap();
    realtime_stores.admin.migrate().await.unwrap();
    let dir = TempDir::new().unwrap();
    let blobs = Arc::new(pm_core::blob::FsBlobStore::new(dir.path().join("blobs")));
    let mut state = AppState::with(stores, permissions, TEST_SECRET, blobs);
    state.realtime = Realtime::start(RealtimeSetup {
        stores: state.stores.clone(),
        authz: Arc::new(pm_server::authz::ServerAuthorizer::new(state.permissions.clone())),
        realtime_stores,
        broker: open_broker(broker, url, redis).await.unwrap(),
        config: HubConfig::default(),
        sinks: Vec::new(),
    })
    .await
    .unwrap();
    Server::serve_state(state, dir).await
}

async fn user(s: &Server, email: &str) -> (pm_core::id::UserId, String) {
    let u = s
        .state
        .pm
        .create_user(
            &Origin::system(),
            NewUser {
                email: Email::parse(email).unwrap(),
                display_name: Name::parse("Multi").unwrap(),
            },
        )
        .await
        .unwrap();
    let (token, _) = s.state.auth.keys.issue(u.id, Scope::Write).unwrap();
    (u.id, token)
}

async fn two_instances_share_events_and_presence(broker: BrokerKind, redis: Option<&str>) {
    let base = std::env::var("PM_TEST_POSTGRES_URL").unwrap();
    let _pair = crate::POSTGRES_PAIRS.acquire().await.expect("the semaphore is never closed");
    let url = fresh_postgres_database(&base).await;
    let a = instance(&url, broker, redis).await;
    let (_, owner) = user(&a, "owner@multi.example").await;
    let (peer_id, peer) = user(&a, "peer@multi.example").await;
    let (org, project, _) = org_and_project(&a, &owner, "multi", "MUL").await;
    a.call(
        reqwest::Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", peer_id.0),
        Some(&owner),
        Some(json!({"role": "member"})),
    )
    .await
    .ok(200);
    // B starts after the grants exist (it would also see them within `authz::REFRESH_EVERY`).
    let b = instance(&url, broker, redis).await;
    let pch = format!("project:{project}");

    // Durable: REST on A → socket on B.
    let mut on_b = Ws::connect(&b.base, &owner).await;
    on_b.subscribe(&pch, None).await;
    let task = a
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&owner),
            Some(json!({"title": "Across instances"})),
        )
        .await;
    let id = task.ok(201)["id"].as_str().unwrap().to_owned();
    let ev = on_b.next_durable().await;
    assert_eq!(
        (ev["type"].as_str(), ev["event"]["task_id"].as_str()),
        (Some("event"), Some(id.as_str())),
        "{ev}"
    );

    // Ephemeral: a socket on A joins; B's subscriber sees the peer come online.
    let mut on_a = Ws::connect(&a.base, &peer).await;
    on_a.subscribe(&pch, None).await;
    let peer_id = peer_id.0.to_string();
    loop {
        let p = on_b.expect("presence").await;
        let joined = p["joined"].as_array().unwrap().iter().chain(p["changed"].as_array().unwrap());
        if joined.into_iter().any(|e| e["user"] == peer_id.as_str()) {
            break;
        }
    }
    // And leaves when that socket closes.
    drop(on_a);
    loop {
        let p = on_b.expect("presence").await;
        if p["left"].as_array().unwrap().iter().any(|u| u == peer_id.as_str()) {
            break;
        }
    }
    a.state.realtime.shutdown().await;
    b.state.realtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_with_the_postgres_broker() {
    if std::env::var("PM_TEST_POSTGRES_URL").is_err() {
        skip(
            "two_instances_on_postgres_with_the_postgres_broker",
            "PM_TEST_POSTGRES_URL is not set",
        );
        return;
    }
    two_instances_share_events_and_presence(BrokerKind::Postgres, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_with_the_redis_broker() {
    let (Ok(_), Ok(redis)) =
        (std::env::var("PM_TEST_POSTGRES_URL"), std::env::var("PM_TEST_REDIS_URL"))
    else {
        skip(
            "two_instances_on_postgres_with_the_redis_broker",
            "PM_TEST_POSTGRES_URL and PM_TEST_REDIS_URL are not both set",
        );
        return;
    };
    two_instances_share_events_and_presence(BrokerKind::Redis, Some(&redis)).await;
}

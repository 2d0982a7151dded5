//! The store conformance suite per backend, and migrations beside pm-core's in one file.

use pm_integrations::store::{self, IntegrationStores};
use pm_integrations::testing;

/// Says a test was skipped. Written to stderr directly so the harness's capture keeps it.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The URL of a fresh PostgreSQL database, or `None` (with a note) when `PM_TEST_POSTGRES_URL`
/// is unset.
#[cfg(feature = "postgres")]
pub async fn postgres_url(test: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        skip(test, "PM_TEST_POSTGRES_URL is not set");
        return None;
    };
    let mut conn =
        sqlx::PgConnection::connect(&base).await.expect("connect to PM_TEST_POSTGRES_URL");
    let (prefix, current) = base.rsplit_once('/').expect("database URL has a path");
    let current = current.split('?').next().unwrap_or(current);
    let name = format!("{current}_int_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

#[cfg(not(feature = "postgres"))]
pub async fn postgres_url(test: &str) -> Option<String> {
    skip(test, "pm-integrations was built without the `postgres` feature");
    None
}

pub async fn open(url: &str) -> IntegrationStores {
    let stores = store::open(url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores
}

#[tokio::test]
async fn conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let stores = open(&format!("sqlite://{}", dir.path().join("int.db").display())).await;
    testing::run_all(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    let Some(url) = postgres_url("conformance_postgres").await else { return };
    testing::run_all(&open(&url).await).await;
}

#[tokio::test]
async fn migrations_coexist_with_pm_core_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let core = pm_core::store::open(&url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let int = open(&url).await;
    core.admin.migrate().await.unwrap();
    testing::inbound_deliveries_dedupe_and_queue(&int).await;
    let mem = open("sqlite::memory:").await;
    testing::providers_seed_idempotently(&mem).await;
}

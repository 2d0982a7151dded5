//! The store conformance suite on SQLite (always) and PostgreSQL (when `PM_TEST_POSTGRES_URL`
//! is set; each run creates its own database).

use pm_workflows::store;

pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wf.db").display());
    let stores = store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap(); // idempotent
    pm_workflows::testing::run_all(&stores).await;
}

#[tokio::test]
async fn sqlite_in_memory_conformance() {
    let stores = store::open("sqlite::memory:").await.unwrap();
    stores.admin.migrate().await.unwrap();
    pm_workflows::testing::run_all(&stores).await;
}

/// The URL of a fresh PostgreSQL database `<base>_wf_<uuid>`, or `None` (with a note) when
/// `PM_TEST_POSTGRES_URL` is unset.
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
    let name = format!("{current}_wf_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

#[cfg(not(feature = "postgres"))]
pub async fn postgres_url(test: &str) -> Option<String> {
    skip(test, "pm-workflows was built without the `postgres` feature");
    None
}

#[tokio::test]
async fn postgres_conformance() {
    let Some(url) = postgres_url("postgres_conformance").await else { return };
    let stores = store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap();
    pm_workflows::testing::run_all(&stores).await;
}

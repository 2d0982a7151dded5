//! The store conformance suite per backend, and backend-specific checks.

use pm_permissions::store::{self, AuthzStores};
use pm_permissions::testing;

/// A migrated SQLite store in a temp file (kept alive by the returned guard).
pub async fn sqlite() -> (AuthzStores, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    (stores, dir, url)
}

/// Says a test was skipped. Written to stderr directly so the harness's capture keeps it.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} on PostgreSQL: {why}");
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
    let name = format!("{current}_authz_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    Some(format!("{prefix}/{name}"))
}

#[cfg(not(feature = "postgres"))]
pub async fn postgres_url(test: &str) -> Option<String> {
    skip(test, "pm-permissions was built without the `postgres` feature");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let (stores, _dir, _) = sqlite().await;
    testing::run_all(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    let Some(url) = postgres_url("conformance_postgres").await else {
        return;
    };
    let stores = store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap();
    testing::run_all(&stores).await;
}

#[tokio::test]
async fn migrations_are_idempotent_in_memory_and_beside_pm_core() {
    let stores = store::open("sqlite::memory:").await.unwrap();
    stores.admin.migrate().await.unwrap();
    stores.admin.migrate().await.unwrap();
    testing::roles(&stores).await;

    // Same file as pm-core: both migrators coexist.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let core = pm_core::store::open(&url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let authz = store::open(&url).await.unwrap();
    authz.admin.migrate().await.unwrap();
    core.admin.migrate().await.unwrap();
    authz.admin.migrate().await.unwrap();
    testing::assignments(&authz).await;
}

/// The database refuses to change audit records; a record changed behind its back (trigger
/// dropped) is caught by chain verification.
#[tokio::test]
async fn audit_is_append_only_and_tampering_is_detected_sqlite() {
    use sqlx::Connection;
    let (stores, _dir, url) = sqlite().await;
    testing::snapshot_and_audit_chain(&stores).await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let refused =
        sqlx::query("UPDATE authz_audit SET subject = 'x' WHERE seq = 1").execute(&mut conn).await;
    assert!(refused.is_err(), "audit rows must be immutable");
    assert!(sqlx::query("DELETE FROM authz_audit").execute(&mut conn).await.is_err());
    sqlx::query("DROP TRIGGER authz_audit_no_update").execute(&mut conn).await.unwrap();
    sqlx::query("UPDATE authz_audit SET payload = '{\"forged\":true}' WHERE seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let records = stores.audit.list_audit(0, 100).await.unwrap();
    let report = pm_permissions::audit::verify_chain(&records);
    assert!(!report.valid);
    assert_eq!(report.broken_at, Some(1));
}

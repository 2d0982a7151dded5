//! The `AuthStore` conformance suite on every adapter: SQLite and in-memory always, PostgreSQL
//! when `PM_TEST_POSTGRES_URL` is set (a fresh database `<base>_<suffix>` per test, as in
//! pm-core's tests).

use pm_server::auth::store::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let auth = pm_server::auth::store::open(&url).await.unwrap();
    auth.migrate().await.unwrap();
    auth.migrate().await.unwrap();
    testing::run_all(&*auth, &*stores.directory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let stores = pm_core::store::open("sqlite::memory:").await.unwrap();
    stores.admin.migrate().await.unwrap();
    // An in-memory SQLite URL selects the in-memory auth store.
    let auth = pm_server::auth::store::open("sqlite::memory:").await.unwrap();
    auth.migrate().await.unwrap();
    testing::run_all(&*auth, &*stores.directory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_postgres() {
    let Ok(base) = std::env::var("PM_TEST_POSTGRES_URL") else {
        skip("conformance_postgres", "PM_TEST_POSTGRES_URL is not set");
        return;
    };
    let url = fresh_postgres_database(&base).await;
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let auth = pm_server::auth::store::open(&url).await.unwrap();
    auth.migrate().await.unwrap();
    auth.migrate().await.unwrap();
    testing::run_all(&*auth, &*stores.directory).await;

    // Without PM_JWT_SECRET, every instance on this database gets the same stored secret.
    let a = pm_server::auth::secret::jwt_secret(None, &url, &*auth).await.unwrap();
    let other = pm_server::auth::store::open(&url).await.unwrap();
    let b = pm_server::auth::secret::jwt_secret(None, &url, &*other).await.unwrap();
    assert_eq!(a, b);
    assert!(a.len() >= pm_server::auth::secret::MIN_SECRET_LEN);
}

/// Says a test was skipped, on stderr directly so the harness's capture doesn't swallow it.
fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} on PostgreSQL: {why}");
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

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

/// Migration 0004 gives existing comment links the side they were written on: a comment copied
/// from the provider holds a byline in pm, so its two fingerprints differ; one written in pm is
/// the same text on both sides.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn existing_comment_links_get_their_origin_from_the_migration() {
    use pm_core::id::{CommentId, TaskId};
    use pm_integrations::sync::Side;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("int.db").display());
    // The database as the previous release left it: migrations up to 0003.
    let before = dir.path().join("migrations");
    std::fs::create_dir(&before).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in std::fs::read_dir(&all).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().as_ref() < "0004" {
            std::fs::copy(f.path(), before.join(f.file_name())).unwrap();
        }
    }
    let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let pool = sqlx::SqlitePool::connect_with(opts.create_if_missing(true).foreign_keys(true))
        .await
        .unwrap();
    let mut old = sqlx::migrate::Migrator::new(before.as_path()).await.unwrap();
    old.dangerous_set_table_name("_pm_integrations_migrations");
    old.run(&pool).await.unwrap();
    let stores = store::open(&url).await.unwrap();
    let i = testing::integration(&stores).await;
    let (ours, theirs) = (CommentId::new(), CommentId::new());
    for (comment, external, local_fp, remote_fp) in
        [(ours, "1", "same", "same"), (theirs, "2", "with byline", "without")]
    {
        sqlx::query(
            "INSERT INTO int_comment_links (id, integration_id, task_id, comment_id, external_id, \
             external_comment_id, local_fingerprint, remote_fingerprint, created_at, updated_at) \
             VALUES (?, ?, ?, ?, 'octo/repo#1', ?, ?, ?, 0, 0)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(i.id.0.to_string())
        .bind(TaskId::new().0.to_string())
        .bind(comment.0.to_string())
        .bind(external)
        .bind(local_fp)
        .bind(remote_fp)
        .execute(&pool)
        .await
        .unwrap();
    }
    stores.admin.migrate().await.unwrap();
    let origin = |c| {
        let stores = stores.clone();
        async move { stores.sync_state.comment_link(i.id, c).await.unwrap().unwrap().origin }
    };
    assert_eq!(origin(ours).await, Side::Local);
    assert_eq!(origin(theirs).await, Side::Remote);
}

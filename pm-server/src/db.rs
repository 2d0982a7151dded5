//! The process's database: one [`Database`] per pm-server process, opened from
//! `PM_DATABASE_URL`, from which every crate's stores are made.
//!
//! On PostgreSQL it owns the process's one connection pool (at most `PM_DATABASE_POOL_SIZE`
//! connections) and hands clones of it to every crate's adapter (`from_pool`): pm-core,
//! pm-server's auth and PWA tables, pm-permissions, pm-realtime, pm-integrations, pm-workflows
//! and the `NOTIFY` side of the PostgreSQL realtime broker. An instance therefore holds at most
//! the pool size plus [`LISTEN_CONNECTIONS`] dedicated `LISTEN` connections, whatever its load.
//! (Each crate opening its own pool from the URL cost ≈20 connections per *idle* instance, so
//! five instances exhausted PostgreSQL's default `max_connections` of 100.)
//!
//! On a SQLite file the same holds for the file's connections: pm-core's store opens its one
//! writer and its read pool, and every other crate's adapter is made over those two pools
//! (`from_pools`). The process thus has a single writer connection, so crates queue for it in
//! process rather than contending for SQLite's write lock (where a transaction that waited past
//! the busy timeout failed with `SQLITE_BUSY`). pm-core's inline reader keeps its own read-only
//! connections. An in-memory SQLite database (tests) keeps one database per crate as before:
//! its single pinned connection would serialize every crate's reads and writes, and the auth
//! and PWA tables live in memory there anyway.

use std::sync::Arc;

use pm_core::store::Stores;
use pm_integrations::store::IntegrationStores;
use pm_permissions::store::AuthzStores;
use pm_realtime::store::RealtimeStores;
use pm_workflows::store::WorkflowStores;

use crate::auth::store::AuthStore;
use crate::pwa::store::PwaStores;

/// Default for `PM_DATABASE_POOL_SIZE`: enough for the 2–8 cores an instance usually has (a
/// request holds a connection only for its queries), small enough that a handful of instances
/// fit PostgreSQL's default `max_connections` of 100.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// Largest `PM_DATABASE_POOL_SIZE`: beyond this a single instance would outgrow any realistic
/// `max_connections`; a typo (`10000`) is refused instead of exhausting the server.
pub const MAX_POOL_SIZE: u32 = 1000;

/// Connections an instance holds outside its pool, on PostgreSQL: pm-core's event-log `LISTEN`
/// (wake-ups for other instances' commits) and, with `PM_REALTIME_BROKER=postgres` (the default
/// on PostgreSQL), the realtime broker's `LISTEN`. Each needs a connection of its own for as long
/// as the process runs, so neither can borrow from the pool.
pub const LISTEN_CONNECTIONS: u32 = 2;

/// How long a query waits for a free pooled connection before failing (→ 503 problem): a
/// saturated pool then surfaces as errors naming the cause rather than requests that hang.
#[cfg(feature = "postgres")]
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The process's database (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Database {
    url: String,
    /// The shared pool when `url` is PostgreSQL.
    #[cfg(feature = "postgres")]
    postgres: Option<sqlx::PgPool>,
    /// pm-core's store, whose writer and read pools every crate shares, when `url` is a SQLite
    /// file.
    #[cfg(feature = "sqlite")]
    sqlite: Option<pm_core::store::sqlite::SqliteStore>,
}

// Hand-written: the URL may carry a password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("backend", &self.backend()).finish_non_exhaustive()
    }
}

impl Database {
    /// Opens the database at `url`, after validating `pool_size` (1 to [`MAX_POOL_SIZE`]). On
    /// PostgreSQL: opens the shared pool of at most `pool_size` connections and makes its first
    /// connection, so a wrong URL or credential fails here. On a SQLite file: opens pm-core's
    /// store (creating the file if missing; `pool_size` does not apply). In-memory SQLite: only
    /// checks the URL.
    pub async fn connect(url: &str, pool_size: u32) -> pm_core::Result<Self> {
        if !(1..=MAX_POOL_SIZE).contains(&pool_size) {
            return Err(pm_core::Error::invalid(
                "database_pool_size",
                format!("must be from 1 to {MAX_POOL_SIZE}, not {pool_size}"),
            ));
        }
        if url.starts_with("sqlite:") {
            #[cfg(feature = "sqlite")]
            let sqlite = if crate::auth::store::is_sqlite_memory(url) {
                None
            } else {
                Some(pm_core::store::sqlite::SqliteStore::connect(url).await?)
            };
            return Ok(Self {
                url: url.to_owned(),
                #[cfg(feature = "postgres")]
                postgres: None,
                #[cfg(feature = "sqlite")]
                sqlite,
            });
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            #[cfg(feature = "postgres")]
            {
                use std::str::FromStr as _;
                let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                    .map_err(|e| pm_core::Error::invalid("database_url", e.to_string()))?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(pm_core::Error::storage)?;
                return Ok(Self {
                    url: url.to_owned(),
                    postgres: Some(pool),
                    #[cfg(feature = "sqlite")]
                    sqlite: None,
                });
            }
            #[cfg(not(feature = "postgres"))]
            return Err(pm_core::Error::invalid(
                "database_url",
                "pm-server was built without the `postgres` feature",
            ));
        }
        Err(pm_core::Error::invalid("database_url", "must start with sqlite: or postgres:"))
    }

    /// The URL it was opened from (may hold a password: not for logs).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        if self.url.starts_with("sqlite:") { "sqlite" } else { "postgres" }
    }

    /// The shared pool, on PostgreSQL.
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        self.postgres.as_ref()
    }

    /// pm-core's SQLite writer and read pools, on a SQLite file.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pools(&self) -> Option<(sqlx::SqlitePool, sqlx::SqlitePool)> {
        self.sqlite.as_ref().map(|s| (s.writer_pool().clone(), s.reader_pool().clone()))
    }

    /// pm-core's stores (not migrated).
    pub async fn core_stores(&self) -> pm_core::Result<Stores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(pm_core::store::postgres_stores(pool.clone()));
        }
        #[cfg(feature = "sqlite")]
        if let Some(store) = &self.sqlite {
            return Ok(Stores::from_adapter(Arc::new(store.clone())));
        }
        pm_core::store::open(&self.url).await
    }

    /// pm-server's authentication store (not migrated).
    pub async fn auth_store(&self) -> pm_core::Result<Arc<dyn AuthStore>> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(Arc::new(crate::auth::store::postgres::PostgresAuthStore::from_pool(
                pool.clone(),
            )));
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            return Ok(Arc::new(crate::auth::store::sqlite::SqliteAuthStore::from_pools(
                writer, reader,
            )));
        }
        crate::auth::store::open(&self.url).await
    }

    /// pm-server's PWA stores (migrated with the auth store's tables).
    pub async fn pwa_stores(&self) -> pm_core::Result<PwaStores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            let s =
                Arc::new(crate::pwa::store::postgres::PostgresPwaStore::from_pool(pool.clone()));
            return Ok(PwaStores { sync_ops: s.clone(), push: s });
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            let s = Arc::new(crate::pwa::store::sqlite::SqlitePwaStore::from_pools(writer, reader));
            return Ok(PwaStores { sync_ops: s.clone(), push: s });
        }
        crate::pwa::store::open(&self.url).await
    }

    /// pm-permissions' stores (not migrated).
    pub async fn authz_stores(&self) -> pm_permissions::Result<AuthzStores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(pm_permissions::store::postgres_stores(pool.clone()));
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            let s = pm_permissions::store::sqlite::SqliteAuthzStore::from_pools(writer, reader);
            return Ok(AuthzStores::from_adapter(Arc::new(s)));
        }
        pm_permissions::store::open(&self.url).await
    }

    /// pm-realtime's stores (not migrated).
    pub async fn realtime_stores(&self) -> pm_realtime::Result<RealtimeStores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(pm_realtime::store::postgres_stores(pool.clone()));
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            let s = pm_realtime::store::sqlite::SqliteRealtimeStore::from_pools(writer, reader);
            return Ok(RealtimeStores::from_adapter(Arc::new(s)));
        }
        pm_realtime::store::open(&self.url).await
    }

    /// pm-integrations' stores (not migrated).
    pub async fn integration_stores(&self) -> pm_integrations::Result<IntegrationStores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(pm_integrations::store::postgres_stores(pool.clone()));
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            let s =
                pm_integrations::store::sqlite::SqliteIntegrationStore::from_pools(writer, reader);
            return Ok(IntegrationStores::from_adapter(Arc::new(s)));
        }
        pm_integrations::store::open(&self.url).await
    }

    /// pm-workflows' stores (not migrated).
    pub async fn workflow_stores(&self) -> pm_workflows::Result<WorkflowStores> {
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.postgres {
            return Ok(pm_workflows::store::postgres_stores(pool.clone()));
        }
        #[cfg(feature = "sqlite")]
        if let Some((writer, reader)) = self.sqlite_pools() {
            let s = pm_workflows::store::sqlite::SqliteWorkflowStore::from_pools(writer, reader);
            return Ok(WorkflowStores::from_adapter(Arc::new(s)));
        }
        pm_workflows::store::open(&self.url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_size_is_validated_before_connecting() {
        for bad in [0, MAX_POOL_SIZE + 1] {
            let err = Database::connect("postgres://nobody@127.0.0.1:1/none", bad)
                .await
                .expect_err("out of range");
            assert!(err.to_string().contains("database_pool_size"), "{err}");
        }
        let err = Database::connect("mysql://x", DEFAULT_POOL_SIZE).await.expect_err("scheme");
        assert!(err.to_string().contains("database_url"), "{err}");
        let db = Database::connect("sqlite::memory:", 1).await.unwrap();
        assert_eq!(db.backend(), "sqlite");
        assert!(db.sqlite_pools().is_none(), "in memory: a database per crate, as before");
    }

    /// On a SQLite file every crate writes through pm-core's one writer connection: after
    /// migrating all of them, the writer pool still has a single connection and each crate's
    /// tables are in the file.
    #[tokio::test]
    async fn sqlite_crates_share_pm_cores_writer() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pm.db").display());
        let db = Database::connect(&url, DEFAULT_POOL_SIZE).await.unwrap();
        assert!(!format!("{db:?}").contains("pm.db"), "no URL in Debug");
        db.core_stores().await.unwrap().admin.migrate().await.unwrap();
        db.auth_store().await.unwrap().migrate().await.unwrap();
        db.authz_stores().await.unwrap().admin.migrate().await.unwrap();
        db.realtime_stores().await.unwrap().admin.migrate().await.unwrap();
        db.integration_stores().await.unwrap().admin.migrate().await.unwrap();
        db.workflow_stores().await.unwrap().admin.migrate().await.unwrap();
        let (writer, reader) = db.sqlite_pools().expect("shared pools on a file");
        assert_eq!(writer.options().get_max_connections(), 1);
        assert!(writer.size() <= 1);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%migrations'",
        )
        .fetch_all(&reader)
        .await
        .unwrap();
        assert!(tables.len() >= 5, "every crate's migrations table in the one file: {tables:?}");
    }
}

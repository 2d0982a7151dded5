//! The realtime glue's state: pm-realtime's [`Hub`], its broker and stores, and the
//! [`NotificationConsumer`], as one [`Realtime`] handle kept in [`AppState`](crate::AppState).
//! The WebSocket endpoint is [`crate::api::realtime`]; the notification routes are
//! [`crate::api::notifications`].
//!
//! - The hub is built over the same pm-core stores and the same authorizer
//!   ([`ServerAuthorizer`](crate::authz::ServerAuthorizer)) as the REST API, so a subscription is
//!   allowed exactly when the matching REST read is.
//! - The broker (cross-instance presence, typing, cursors and live notifications) is chosen by
//!   `PM_REALTIME_BROKER` ([`BrokerKind`]): `memory` (one instance; the default on SQLite),
//!   `postgres` (`LISTEN/NOTIFY` on the same database; the default on PostgreSQL) or `redis`
//!   (`PM_REDIS_URL`). Durable events never go through it: every instance tails the log.
//! - The notification consumer runs next to the hub, so notifications are pushed live on
//!   `user:{id}` through it (and, through the broker, on every instance). Several instances may
//!   run it on the same database: the store's `(user, event)` uniqueness keeps it exactly-once.
//!
//! Starting is async (the hub reads the log's end), while [`AppState`](crate::AppState)'s
//! constructors are not: a [`Realtime`] built with [`Realtime::new`] starts on first use (the
//! first WebSocket or notification request), one built with [`Realtime::start`] starts at once.
//! The `pm-server` binary starts it at once; the sync constructors use an in-process broker and
//! in-memory realtime stores ([`RealtimeSetup::in_process`]).

use std::sync::{Arc, Mutex};

use pm_core::authz::Authorizer;
use pm_core::store::Stores;
use pm_realtime::broker::{Broker, InProcessBroker};
use pm_realtime::notification::{NotificationConsumer, NotificationSink};
use pm_realtime::store::memory::MemoryRealtimeStore;
use pm_realtime::store::{NotificationStore, RealtimeStores};
use pm_realtime::{Hub, HubConfig};
use tokio::sync::OnceCell;

/// Which broker carries ephemeral signals between instances (`PM_REALTIME_BROKER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// In-process only: a single instance.
    Memory,
    /// PostgreSQL `LISTEN/NOTIFY` on the server's database.
    Postgres,
    /// Redis pub/sub at `PM_REDIS_URL`.
    Redis,
}

impl BrokerKind {
    /// `memory`, `postgres` or `redis`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Postgres => "postgres",
            BrokerKind::Redis => "redis",
        }
    }

    /// Parses `memory`, `postgres` or `redis`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "memory" => Some(BrokerKind::Memory),
            "postgres" => Some(BrokerKind::Postgres),
            "redis" => Some(BrokerKind::Redis),
            _ => None,
        }
    }

    /// The default for a database: `postgres` when it is PostgreSQL (instances sharing it can
    /// then share signals with no extra service), `memory` otherwise.
    pub fn default_for(database_url: &str) -> Self {
        if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
            BrokerKind::Postgres
        } else {
            BrokerKind::Memory
        }
    }
}

/// Connects the broker of `kind` for the process's `database`: on PostgreSQL the broker sends
/// its `NOTIFY`s through the shared pool and only its `LISTEN` connection is its own (one of
/// [`crate::db::LISTEN_CONNECTIONS`]); Redis on `redis_url`.
pub async fn open_broker_on(
    kind: BrokerKind,
    database: &crate::db::Database,
    redis_url: Option<&str>,
) -> pm_realtime::Result<Arc<dyn Broker>> {
    #[cfg(feature = "postgres")]
    if let (BrokerKind::Postgres, Some(pool)) = (kind, database.postgres_pool()) {
        let b = pm_realtime::broker::postgres::PostgresBroker::from_pool(pool.clone()).await?;
        return Ok(Arc::new(b));
    }
    // Anything else (memory, Redis, or a `postgres` broker refused on a SQLite database) needs
    // no pool of ours.
    open_broker(kind, database.url(), redis_url).await
}

/// Connects the broker of `kind`: PostgreSQL on `database_url` (a pool of its own, for hosts
/// without a [`crate::db::Database`]; see [`open_broker_on`]), Redis on `redis_url`.
pub async fn open_broker(
    kind: BrokerKind,
    database_url: &str,
    redis_url: Option<&str>,
) -> pm_realtime::Result<Arc<dyn Broker>> {
    match kind {
        BrokerKind::Memory => Ok(Arc::new(InProcessBroker::new())),
        BrokerKind::Postgres => {
            #[cfg(feature = "postgres")]
            {
                if !(database_url.starts_with("postgres:")
                    || database_url.starts_with("postgresql:"))
                {
                    return Err(pm_realtime::Error::invalid(
                        "PM_REALTIME_BROKER",
                        "`postgres` needs a PostgreSQL PM_DATABASE_URL",
                    ));
                }
                let b =
                    pm_realtime::broker::postgres::PostgresBroker::connect(database_url).await?;
                Ok(Arc::new(b))
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = database_url;
                Err(pm_realtime::Error::invalid(
                    "PM_REALTIME_BROKER",
                    "pm-server was built without the `postgres` feature",
                ))
            }
        }
        BrokerKind::Redis => {
            let Some(url) = redis_url else {
                return Err(pm_realtime::Error::invalid(
                    "PM_REDIS_URL",
                    "PM_REALTIME_BROKER=redis needs PM_REDIS_URL (e.g. redis://127.0.0.1:6379)",
                ));
            };
            #[cfg(feature = "redis")]
            {
                Ok(Arc::new(pm_realtime::broker::redis::RedisBroker::connect(url).await?))
            }
            #[cfg(not(feature = "redis"))]
            {
                let _ = url;
                Err(pm_realtime::Error::invalid(
                    "PM_REALTIME_BROKER",
                    "pm-server was built without the `redis` feature",
                ))
            }
        }
    }
}

/// What a [`Realtime`] is built from.
#[derive(Clone)]
pub struct RealtimeSetup {
    /// pm-core's stores (the event log, and the resources subscriptions are checked against).
    pub stores: Stores,
    /// The REST API's authorizer.
    pub authz: Arc<dyn Authorizer>,
    /// Last-seen times and notifications (migrated by the caller).
    pub realtime_stores: RealtimeStores,
    /// The cross-instance broker.
    pub broker: Arc<dyn Broker>,
    /// Limits and timeouts (the WebSocket glue reads its buffer sizes and timers from it too).
    pub config: HubConfig,
    /// Where new notifications go besides the store and the live channel (Web Push: see
    /// [`AppState::push_sink`](crate::AppState::push_sink)).
    pub sinks: Vec<Arc<dyn NotificationSink>>,
}

impl std::fmt::Debug for RealtimeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeSetup")
            .field("broker", &self.broker.instance_id())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RealtimeSetup {
    /// One instance, nothing persisted by pm-realtime: an in-process broker and in-memory
    /// last-seen and notification stores, default limits.
    pub fn in_process(stores: Stores, authz: Arc<dyn Authorizer>) -> Self {
        Self {
            stores,
            authz,
            realtime_stores: RealtimeStores::from_adapter(Arc::new(MemoryRealtimeStore::new())),
            broker: Arc::new(InProcessBroker::new()),
            config: HubConfig::default(),
            sinks: Vec::new(),
        }
    }
}

/// The realtime hub and what runs beside it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Realtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    setup: RealtimeSetup,
    hub: OnceCell<Hub>,
    /// The notification consumer's task, aborted on shutdown.
    consumer: Mutex<Option<tokio::task::AbortHandle>>,
    /// Delivers notifications not derived from the log (store, live push, sinks), like the
    /// consumer does; set when the hub starts.
    delivery: OnceCell<NotificationConsumer>,
}

impl Realtime {
    /// A realtime that starts on first use ([`Realtime::hub`]).
    pub fn new(setup: RealtimeSetup) -> Self {
        Self {
            inner: Arc::new(Inner {
                setup,
                hub: OnceCell::new(),
                consumer: Mutex::new(None),
                delivery: OnceCell::new(),
            }),
        }
    }

    /// A realtime started now (hub, broker listener, notification consumer).
    pub async fn start(setup: RealtimeSetup) -> pm_realtime::Result<Self> {
        let rt = Self::new(setup);
        rt.hub().await?;
        Ok(rt)
    }

    /// The running hub, starting it (and the notification consumer) on first call.
    pub async fn hub(&self) -> pm_realtime::Result<&Hub> {
        self.inner
            .hub
            .get_or_try_init(|| async {
                let s = &self.inner.setup;
                let hub = Hub::builder(s.stores.clone(), s.authz.clone())
                    .config(s.config.clone())
                    .broker(s.broker.clone())
                    .presence_store(s.realtime_stores.presence.clone())
                    .start()
                    .await?;
                let mut consumer = NotificationConsumer::new(
                    s.stores.clone(),
                    s.realtime_stores.notifications.clone(),
                )
                .with_hub(hub.clone());
                for sink in &s.sinks {
                    consumer = consumer.with_sink(sink.clone());
                }
                let _ = self.inner.delivery.set(consumer.clone());
                let consumer = consumer.spawn();
                *lock(&self.inner.consumer) = Some(consumer.abort_handle());
                tracing::info!(instance = %hub.instance_id(), "realtime hub started");
                Ok(hub)
            })
            .await
    }

    /// Re-checks `user`'s WebSocket subscriptions on this instance after their access changed
    /// (see [`Hub::reauthorize_user`]); nothing to do when the hub has not started.
    pub async fn reauthorize_user(&self, user: pm_core::id::UserId) {
        if let Some(hub) = self.inner.hub.get() {
            hub.reauthorize_user(user).await;
        }
    }

    /// Delivers `n` as the notification consumer does (stored once per user and `event_id`,
    /// pushed live, handed to Web Push); returns whether it was new.
    pub async fn deliver(
        &self,
        n: &pm_realtime::notification::Notification,
    ) -> pm_realtime::Result<bool> {
        self.hub().await?;
        match self.inner.delivery.get() {
            Some(d) => d.deliver(n).await,
            None => Ok(false),
        }
    }

    /// The notification store, once the consumer that fills it runs (it starts with the hub).
    pub async fn notifications(&self) -> pm_realtime::Result<&Arc<dyn NotificationStore>> {
        self.hub().await?;
        Ok(&self.inner.setup.realtime_stores.notifications)
    }

    /// The hub's counters, without starting it: `None` until it has started.
    pub fn stats(&self) -> Option<pm_realtime::HubStats> {
        self.inner.hub.get().map(Hub::stats)
    }

    /// The hub's limits and timeouts (known before it starts).
    pub fn config(&self) -> &HubConfig {
        &self.inner.setup.config
    }

    /// Graceful shutdown: closes every WebSocket session with 1001 (clients reconnect elsewhere
    /// with `last_seq`), tells other instances this one's users left, stops the consumer. A
    /// realtime that never started has nothing to stop.
    pub async fn shutdown(&self) {
        if let Some(consumer) = lock(&self.inner.consumer).take() {
            consumer.abort();
        }
        if let Some(hub) = self.inner.hub.get() {
            hub.shutdown().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

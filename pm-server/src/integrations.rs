//! pm-integrations in the server: the runtime state the integration routes use
//! ([`Integrations`]), the seeding of the built-in providers (`pm-server init-integrations`),
//! and the background workers:
//!
//! - the **inbound processor** claims verified deliveries from the persisted queue (the HTTP
//!   handler only verifies, dedupes, persists and acknowledges), oldest first, parses them with
//!   their provider and — once pm-core's services are attached ([`Integrations::with_pm`]) —
//!   applies each event through the [`SyncEngine`] (three-way merge, task created on first
//!   sight, conflicts recorded). A failure the provider or the store may get over (rate limit,
//!   outage, concurrent write) is retried with backoff; a payload that cannot apply fails.
//!   Order per external item: deliveries are applied in arrival order; one that is retried
//!   later can be overtaken, and when it finally runs the engine drops it as stale (the
//!   provider's change time is older than the state already synced);
//! - the **sync pusher** tails pm-core's event log from its own durable cursor
//!   ([`SYNC_CONSUMER`]) and hands task and comment events to the [`SyncEngine`], one target
//!   integration at a time, which pushes local changes of integrated projects to the provider
//!   (never the integration's own applies: echo suppression by actor). A push that fails with
//!   an error that may pass (outage, timeout, rate limit, concurrent write, a create in flight)
//!   is **parked** in pm-integrations' durable retry queue and the pusher goes straight on to
//!   the next event; a later event of a task with parked pushes queues behind them (see
//!   `pm_integrations::sync::engine::retry`). Operators see the queue through
//!   `GET /integrations/{id}/parked-pushes` and, per provider, the `/metrics` gauges
//!   `pm_sync_parked_pushes` and `pm_sync_parked_push_oldest_age_seconds`;
//! - the **push retrier** attempts parked pushes as they fall due (per task, oldest event
//!   first), waiting `Retry-After` or doubling from [`WorkerConfig::poll`] up to
//!   [`WorkerConfig::push_backoff_cap`]; after [`WorkerConfig::push_retries`] retries — or at
//!   once for a failure retrying cannot fix — the push is recorded as a sync failure (listed by
//!   `GET /integrations/{id}/sync-failures`, re-queued by `POST …/{failure_id}/retry`,
//!   dismissed by `DELETE …/{failure_id}`) and logged (`sync.push_gave_up`);
//! - the **outbound fan-out** tails pm-core's event log from a durable cursor (kept in
//!   pm-integrations' own table, advanced in the same transaction as the enqueue) and enqueues
//!   one delivery per matching subscription;
//! - the **outbound sender** claims due deliveries, re-checks the target with the SSRF guard
//!   (connecting only to the addresses it approved), signs with Standard Webhooks, POSTs, and
//!   records the attempt: success, a retry at the next backoff step, or — after the last step —
//!   failure; a subscription failing `disable_after` times in a row is disabled.
//!
//! [`Integrations::oauth`] holds the OAuth 2 connections (pm-integrations' [`OAuth`]: PKCE
//! code flow, sealed tokens, single-flight refresh, revocation), configured from
//! `PM_OAUTH_REDIRECT_URL` and `PM_OAUTH_<PROVIDER>_*` (see [`crate::config::oauth_clients`]).
//!
//! Invariant: nothing here trusts a delivery before its signature was checked, and nothing is
//! lost when the process dies: every step works from rows leased for a bounded time.

use std::sync::Arc;
use std::time::Duration;

use pm_core::event::{Checkpoint, Tailer};
use pm_core::store::EventLog;
use pm_integrations::clock::{Clock, SystemClock};
use pm_integrations::crypto::Keyring;
use pm_integrations::model::*;
use pm_integrations::oauth::{OAuth, OAuthClient, OAuthSettings};
use pm_integrations::provider::ProviderKey;
use pm_integrations::providers::Registry;
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::store::IntegrationStores;
use pm_integrations::sync::engine::retry::PushRetry;
use pm_integrations::sync::engine::{Applied, SyncEngine};
use pm_integrations::webhook::InboundRequest;
use pm_integrations::webhook::outbound::{self, WebhookSecret};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The event-log consumer name of the outbound fan-out.
pub const FANOUT_CONSUMER: &str = "outbound-webhooks";

/// The event-log consumer name of the sync pusher.
pub const SYNC_CONSUMER: &str = "sync-push";

/// Timing of the workers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Delay before each retry of a failed outbound delivery; its length is the number of
    /// retries (then the delivery fails).
    pub backoff: Vec<Duration>,
    /// Failed attempts in a row after which a subscription is disabled.
    pub disable_after: i32,
    /// How long a claimed item stays leased to a worker.
    pub lease: Duration,
    /// Timeout of one outbound HTTP attempt.
    pub request_timeout: Duration,
    /// Items claimed per round.
    pub batch: u32,
    /// Poll interval when no wake-up arrives; also the first step of the push retrier's
    /// backoff.
    pub poll: Duration,
    /// Retries of one parked push before it is recorded as failed.
    pub push_retries: u32,
    /// Longest wait between two retries of a push, unless the provider asks for longer
    /// (`Retry-After` is honoured whole: the push waits in the database, not in a worker).
    pub push_backoff_cap: Duration,
}

impl Default for WorkerConfig {
    /// Retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (the Standard Webhooks schedule);
    /// disabled after 20 failures in a row. Pushes: 6 retries after 2, 4, 8, 16, 30, 30 s.
    fn default() -> Self {
        let m = 60;
        Self {
            backoff: [5, 5 * m, 30 * m, 2 * 60 * m, 5 * 60 * m, 10 * 60 * m, 10 * 60 * m]
                .map(Duration::from_secs)
                .to_vec(),
            disable_after: 20,
            lease: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            batch: 50,
            poll: Duration::from_secs(1),
            push_retries: 6,
            push_backoff_cap: Duration::from_secs(30),
        }
    }
}

/// What the integration routes and workers share. Cheap to clone.
#[derive(Clone)]
pub struct Integrations {
    /// pm-integrations' stores.
    pub stores: IntegrationStores,
    /// Seals credentials and subscription secrets; `None` when `PM_ENCRYPTION_KEY` is unset
    /// (creating anything that holds a secret is then refused).
    pub keyring: Option<Arc<Keyring>>,
    /// The providers by key.
    pub registry: Arc<Registry>,
    /// Which outbound targets are allowed.
    pub targets: TargetPolicy,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// Worker timing.
    pub worker: WorkerConfig,
    /// OAuth connections; `None` unless `PM_OAUTH_REDIRECT_URL`, `PM_ENCRYPTION_KEY` and at
    /// least one provider's client are configured (see [`Integrations::with_oauth`]).
    pub oauth: Option<Arc<OAuth>>,
    /// Slack and calendar settings (provider API URLs, public URL, renewal timing).
    pub chat: crate::chat::ChatSettings,
    /// pm-core's services, which the sync applies provider changes through and inbound calendar
    /// changes move due dates with; `None` until [`Integrations::with_pm`] (deliveries are then
    /// only parsed and logged).
    pub pm: Option<pm_core::Pm>,
    inbound_wake: Arc<Notify>,
    outbound_wake: Arc<Notify>,
}

impl std::fmt::Debug for Integrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrations")
            .field("stores", &self.stores)
            .field("keyring", &self.keyring)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Integrations {
    /// Integrations over migrated `stores` with the built-in providers, the system clock and
    /// default worker timing.
    pub fn new(stores: IntegrationStores, keyring: Option<Keyring>, targets: TargetPolicy) -> Self {
        Self {
            stores,
            keyring: keyring.map(Arc::new),
            registry: Arc::new(Registry::default()),
            targets,
            clock: Arc::new(SystemClock),
            worker: WorkerConfig::default(),
            oauth: None,
            chat: crate::chat::ChatSettings::default(),
            pm: None,
            inbound_wake: Arc::new(Notify::new()),
            outbound_wake: Arc::new(Notify::new()),
        }
    }

    /// Opens and migrates pm-integrations' tables in the database at `url`.
    pub async fn open(
        url: &str,
        keyring: Option<Keyring>,
        targets: TargetPolicy,
    ) -> pm_integrations::Result<Self> {
        let stores = pm_integrations::store::open(url).await?;
        stores.admin.migrate().await?;
        Ok(Self::new(stores, keyring, targets))
    }

    /// The keyring, or the error saying it is not configured.
    pub fn keyring(&self) -> Result<&Keyring, crate::error::ApiError> {
        self.keyring.as_deref().ok_or_else(|| {
            crate::error::ApiError::unavailable(
                "secrets cannot be stored: PM_ENCRYPTION_KEY is not configured",
                "PM_ENCRYPTION_KEY is unset",
            )
        })
    }

    /// Enables OAuth connections with these provider clients, calling back to
    /// `settings.redirect_uri`. Needs the keyring (tokens are only ever stored sealed): without
    /// it OAuth stays off, as it does without clients.
    pub fn with_oauth(
        mut self,
        settings: OAuthSettings,
        clients: Vec<(ProviderKey, OAuthClient)>,
    ) -> pm_integrations::Result<Self> {
        let Some(keyring) = self.keyring.clone() else {
            return Ok(self);
        };
        if clients.is_empty() {
            return Ok(self);
        }
        let mut oauth = OAuth::new(self.stores.clone(), keyring, self.clock.clone(), settings)?;
        for (key, client) in clients {
            oauth = oauth.with_client(key, client);
        }
        self.oauth = Some(Arc::new(oauth));
        Ok(self)
    }

    /// Attaches pm-core's services: inbound deliveries are then applied to tasks and local
    /// changes pushed to providers.
    pub fn with_pm(mut self, pm: pm_core::Pm) -> Self {
        self.pm = Some(pm);
        self
    }

    /// The sync engine, when pm-core's services are attached.
    pub fn sync(&self) -> Option<SyncEngine> {
        self.pm.clone().map(|pm| {
            SyncEngine::new(
                pm,
                self.stores.clone(),
                self.registry.clone(),
                self.keyring.clone(),
                self.oauth.clone(),
                self.targets.clone(),
                self.clock.clone(),
            )
        })
    }

    /// The sync engine, or the error saying the server runs without it.
    pub fn sync_engine(&self) -> Result<SyncEngine, crate::error::ApiError> {
        self.sync().ok_or_else(|| {
            crate::error::ApiError::unavailable(
                "sync is not running on this server",
                "Integrations::with_pm was not called",
            )
        })
    }

    /// OAuth, or the error saying it is not configured.
    pub fn oauth(&self) -> Result<&OAuth, crate::error::ApiError> {
        self.oauth.as_deref().ok_or_else(|| {
            crate::error::ApiError::unavailable(
                "OAuth is not configured on this server (PM_OAUTH_REDIRECT_URL, \
                 PM_OAUTH_<PROVIDER>_CLIENT_ID and PM_ENCRYPTION_KEY)",
                "OAuth is not configured",
            )
        })
    }

    /// Tells the inbound processor a delivery is waiting.
    pub fn wake_inbound(&self) {
        self.inbound_wake.notify_one();
    }

    /// Tells the outbound sender a delivery is due.
    pub fn wake_outbound(&self) {
        self.outbound_wake.notify_one();
    }

    /// Appends a log entry; a failure to log is itself only logged (it must not fail the
    /// exchange it describes).
    pub async fn log(&self, entry: LogEntry) {
        if let Err(e) = self.stores.logs.append_log(&entry).await {
            tracing::warn!(error = %e, operation = %entry.operation, "cannot write integration log");
        }
    }

    /// Starts the workers over `events` (the sync pusher only with [`Integrations::with_pm`]);
    /// they stop when the handle is dropped.
    pub fn start(&self, events: Arc<dyn EventLog>) -> Workers {
        let inbound = tokio::spawn(self.clone().run_inbound());
        let fanout = tokio::spawn(self.clone().run_fanout(events.clone()));
        let sender = tokio::spawn(self.clone().run_sender());
        let mut tasks = vec![inbound, fanout, sender];
        if let Some(engine) = self.sync() {
            tasks.push(tokio::spawn(self.clone().run_push_retries(engine.clone())));
            tasks.push(tokio::spawn(self.clone().run_sync_push(engine, events)));
        }
        Workers { tasks }
    }

    async fn run_sync_push(self, engine: SyncEngine, events: Arc<dyn EventLog>) {
        loop {
            if let Err(e) = self.sync_push(&engine, events.clone()).await {
                tracing::warn!(error = %e, "sync pusher failed; restarting");
                tokio::time::sleep(self.worker.poll).await;
            }
        }
    }

    /// Pushes local changes: every task/comment event after the cursor goes to the engine, for
    /// each integration it concerns; the cursor trails by at most a [`Checkpoint`]
    /// (at-least-once; a repeated push finds nothing to do).
    async fn sync_push(
        &self,
        engine: &SyncEngine,
        events: Arc<dyn EventLog>,
    ) -> pm_integrations::Result<()> {
        let from = self.stores.webhooks.cursor(SYNC_CONSUMER).await?;
        let mut tail = Tailer::new(events, from);
        tail.poll = self.worker.poll;
        let mut checkpoint = Checkpoint::new(from);
        let policy = self.push_retry();
        loop {
            let batch = tail
                .next_batch_or_idle(100, Checkpoint::IDLE)
                .await
                .map_err(pm_integrations::Error::storage)?;
            for e in &batch {
                for i in engine.targets(e).await? {
                    engine.push_or_park(&i, e, &policy).await?;
                }
            }
            let upto = tail.position();
            if checkpoint.due(upto, false, batch.is_empty()) {
                self.stores.webhooks.enqueue_outbound(SYNC_CONSUMER, upto, &[]).await?;
                checkpoint.saved(upto);
            }
        }
    }

    /// The sync pusher's retry policy, from the worker timing.
    pub fn push_retry(&self) -> PushRetry {
        PushRetry {
            retries: self.worker.push_retries,
            base: self.worker.poll,
            cap: self.worker.push_backoff_cap,
            lease: self.worker.lease,
            batch: self.worker.batch,
        }
    }

    /// Retries parked pushes as they fall due (see [`SyncEngine::retry_parked`]).
    async fn run_push_retries(self, engine: SyncEngine) {
        let policy = self.push_retry();
        loop {
            match engine.retry_parked(&policy).await {
                Ok(0) => tokio::time::sleep(self.worker.poll).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "retrying parked pushes failed; retrying");
                    tokio::time::sleep(self.worker.poll).await;
                }
            }
        }
    }

    async fn run_inbound(self) {
        loop {
            match self.process_inbound_once().await {
                Ok(0) => {
                    let _ =
                        tokio::time::timeout(self.worker.poll, self.inbound_wake.notified()).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "inbound processing failed; retrying");
                    tokio::time::sleep(self.worker.poll).await;
                }
            }
        }
    }

    /// Processes one batch of due inbound deliveries; returns how many.
    pub async fn process_inbound_once(&self) -> pm_integrations::Result<usize> {
        let now = self.clock.now();
        let lease = now + self.worker.lease;
        let batch = self.stores.inbound.claim_inbound(now, lease, self.worker.batch).await?;
        for d in &batch {
            let outcome = match self.registry.get(&d.provider) {
                None => Attempt::Failed { error: "unknown provider".into(), retry_at: None },
                Some(p) => {
                    let req = InboundRequest {
                        headers: d.headers.clone(),
                        query: None,
                        body: d.body.clone(),
                    };
                    match p.parse(&req) {
                        // Slack and calendar deliveries act through `chat`; GitHub and Jira
                        // ones through the sync engine (each ignores the other's providers).
                        Ok(events) => match crate::chat::on_inbound(self, d, &events).await {
                            // A provider or the store failing now may work later.
                            Err(e) => Attempt::Failed {
                                error: e.body()["detail"].as_str().unwrap_or("failed").to_owned(),
                                retry_at: (d.attempts < 5).then(|| {
                                    now + self
                                        .worker
                                        .backoff
                                        .first()
                                        .copied()
                                        .unwrap_or(self.worker.poll)
                                }),
                            },
                            Ok(()) => match self.apply(d, &events).await {
                                Ok(applied) => {
                                    let kinds: Vec<_> = events
                                        .iter()
                                        .zip(
                                            applied.iter().map(Some).chain(std::iter::repeat(None)),
                                        )
                                        .map(|(e, a)| {
                                            json!({"kind": e.kind, "external_id": e.external_id,
                                               "applied": a.map(|a| format!("{a:?}"))})
                                        })
                                        .collect();
                                    self.log(entry(
                                        Some(d.integration_id),
                                        d.provider.as_str(),
                                        Direction::Inbound,
                                        "webhook.processed",
                                        true,
                                        json!({"delivery_id": d.delivery_id, "events": kinds}),
                                        now,
                                    ))
                                    .await;
                                    Attempt::Succeeded
                                }
                                Err(e) => {
                                    let retry_at = retryable(&e)
                                        .then(|| {
                                            let step =
                                                usize::try_from(d.attempts).unwrap_or(1).max(1);
                                            (step <= INBOUND_RETRIES).then(|| {
                                                now + retry_delay(&e, step as u32, self.worker.poll)
                                            })
                                        })
                                        .flatten();
                                    Attempt::Failed { error: e.to_string(), retry_at }
                                }
                            },
                        },
                        // A payload the provider cannot parse will not parse next time either.
                        Err(e) => Attempt::Failed { error: e.to_string(), retry_at: None },
                    }
                }
            };
            if let Attempt::Failed { error, .. } = &outcome {
                self.log(entry(
                    Some(d.integration_id),
                    d.provider.as_str(),
                    Direction::Inbound,
                    "webhook.unprocessable",
                    false,
                    json!({"delivery_id": d.delivery_id, "error": error}),
                    now,
                ))
                .await;
            }
            self.stores.inbound.finish_inbound(d.id, &outcome).await?;
        }
        Ok(batch.len())
    }

    /// Applies a delivery's events through the sync engine (when attached), in order.
    async fn apply(
        &self,
        d: &InboundDelivery,
        events: &[pm_integrations::provider::InboundEvent],
    ) -> pm_integrations::Result<Vec<Applied>> {
        let Some(engine) = self.sync() else { return Ok(Vec::new()) };
        let i = match self.stores.integrations.get_integration(d.integration_id).await {
            Ok(i) => i,
            Err(pm_integrations::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(engine.apply_inbound(&i, e).await?);
        }
        Ok(out)
    }

    async fn run_fanout(self, events: Arc<dyn EventLog>) {
        loop {
            if let Err(e) = self.fanout(events.clone()).await {
                tracing::warn!(error = %e, "outbound webhook fan-out failed; restarting");
                tokio::time::sleep(self.worker.poll).await;
            }
        }
    }

    async fn fanout(&self, events: Arc<dyn EventLog>) -> pm_integrations::Result<()> {
        let from = self.stores.webhooks.cursor(FANOUT_CONSUMER).await?;
        let mut tail = Tailer::new(events, from);
        tail.poll = self.worker.poll;
        // Deliveries are enqueued with the cursor in one transaction; a batch that matched no
        // subscription only moves the cursor, which may trail (re-reading finds nothing).
        let mut checkpoint = Checkpoint::new(from);
        loop {
            let batch = tail
                .next_batch_or_idle(200, Checkpoint::IDLE)
                .await
                .map_err(pm_integrations::Error::storage)?;
            let subs = self.stores.webhooks.enabled_subscriptions().await?;
            let now = self.clock.now();
            let mut deliveries = Vec::new();
            for e in &batch {
                // A subscription receives what happened after it was created, not the history
                // the fan-out may still be catching up on.
                for s in subs.iter().filter(|s| s.wants(e) && e.at >= s.created_at) {
                    deliveries.push(OutboundDelivery::new(s.id, e, now));
                }
            }
            let upto = tail.position();
            if !checkpoint.due(upto, !deliveries.is_empty(), batch.is_empty()) {
                continue;
            }
            match self.stores.webhooks.enqueue_outbound(FANOUT_CONSUMER, upto, &deliveries).await {
                Ok(n) => {
                    checkpoint.saved(upto);
                    if n > 0 {
                        self.wake_outbound();
                    }
                }
                // A subscription deleted between the list and the insert: list again.
                Err(pm_integrations::Error::NotFound { .. }) => {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_sender(self) {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.worker.request_timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client");
                return;
            }
        };
        loop {
            match self.send_once(&client).await {
                Ok(0) => {
                    let _ =
                        tokio::time::timeout(self.worker.poll, self.outbound_wake.notified()).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbound webhook sending failed; retrying");
                    tokio::time::sleep(self.worker.poll).await;
                }
            }
        }
    }

    /// Sends one batch of due outbound deliveries; returns how many were attempted.
    pub async fn send_once(&self, client: &reqwest::Client) -> pm_integrations::Result<usize> {
        let now = self.clock.now();
        let claimed = self
            .stores
            .webhooks
            .claim_outbound(now, now + self.worker.lease, self.worker.batch)
            .await?;
        for d in &claimed {
            let result = self.attempt(client, d).await;
            let at = self.clock.now();
            let (status, error) = match result {
                Ok(code) if (200..300).contains(&code) => (Some(code), None),
                Ok(code) => (Some(code), Some(format!("HTTP {code}"))),
                Err(e) => (None, Some(e)),
            };
            let retry_at = match &error {
                None => None,
                Some(_) => {
                    let step = usize::try_from(d.attempts).unwrap_or(usize::MAX).saturating_sub(1);
                    self.worker.backoff.get(step).map(|delay| at + *delay)
                }
            };
            let attempt = OutboundAttempt {
                status: status.map(i32::from),
                error: error.clone(),
                retry_at,
                at,
                disable_after: self.worker.disable_after,
            };
            let (_, sub) = match self.stores.webhooks.finish_outbound(d.id, &attempt).await {
                Ok(r) => r,
                // Deleted with its subscription meanwhile.
                Err(pm_integrations::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            self.log(entry(
                None,
                "webhooks",
                Direction::Outbound,
                if error.is_none() { "webhook.delivered" } else { "webhook.failed" },
                error.is_none(),
                json!({
                    "subscription_id": d.subscription_id, "delivery_id": d.id,
                    "event_kind": d.event_kind, "attempt": d.attempts, "status": status,
                    "error": error, "retry_at": retry_at.map(|t| t.unix_timestamp()),
                    "subscription_disabled": !sub.enabled,
                }),
                at,
            ))
            .await;
        }
        Ok(claimed.len())
    }

    /// One HTTP attempt: the status code, or why no response came.
    async fn attempt(&self, client: &reqwest::Client, d: &OutboundDelivery) -> Result<u16, String> {
        let sub = self
            .stores
            .webhooks
            .get_subscription(d.subscription_id)
            .await
            .map_err(|e| e.to_string())?;
        if !sub.enabled {
            return Err("subscription is disabled".into());
        }
        let keyring = self.keyring.as_deref().ok_or("PM_ENCRYPTION_KEY is not configured")?;
        let secrets = open_secrets(keyring, &sub).map_err(|e| e.to_string())?;
        let url = self.targets.parse_url("url", &sub.url).map_err(|e| e.to_string())?;
        // Resolve and check every address now, then connect only to those (no rebinding).
        let addrs = self.targets.resolve(&url).await.map_err(|e| e.to_string())?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let body = serde_json::to_vec(&d.payload).map_err(|e| e.to_string())?;
        let signed =
            outbound::sign(&secrets, &format!("msg_{}", d.id.0.simple()), self.clock.now(), &body)
                .map_err(|e| e.to_string())?;
        let pinned = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.worker.request_timeout)
            .resolve_to_addrs(&host, &addrs)
            .build()
            .unwrap_or_else(|_| client.clone());
        let mut req = pinned
            .post(url.as_str())
            .header("content-type", "application/json")
            .header("user-agent", "pm-webhooks/1");
        for (name, value) in signed.pairs() {
            req = req.header(name, value);
        }
        let res = req.body(body).send().await.map_err(|e| format!("request failed: {e}"))?;
        Ok(res.status().as_u16())
    }
}

/// Retries of an inbound delivery whose apply failed transiently.
pub const INBOUND_RETRIES: usize = 8;

/// Whether a failed inbound apply may succeed later (see
/// [`pm_integrations::Error::is_transient`]).
fn retryable(e: &pm_integrations::Error) -> bool {
    e.is_transient()
}

/// How long to wait before retry `attempt` (1-based): the provider's `Retry-After` when it
/// gave one, else exponential from `base` (capped at ten minutes).
fn retry_delay(e: &pm_integrations::Error, attempt: u32, base: Duration) -> Duration {
    if let pm_integrations::Error::Provider { retry_after: Some(s), .. } = e {
        return Duration::from_secs(*s);
    }
    let factor = 1u32 << attempt.min(10);
    (base * factor).min(Duration::from_secs(600))
}

/// The subscription's `whsec_` secrets, opened.
pub fn open_secrets(
    keyring: &Keyring,
    sub: &Subscription,
) -> pm_integrations::Result<Vec<WebhookSecret>> {
    let raw = keyring.open_secret(&sub.secrets, &Subscription::secrets_context(sub.id))?;
    let list: Vec<String> = serde_json::from_str(raw.expose())
        .map_err(|e| pm_integrations::Error::Crypto(format!("secrets are not a list: {e}")))?;
    list.iter().map(|s| WebhookSecret::parse(s)).collect()
}

/// Seals a list of `whsec_` secrets for `id`.
pub fn seal_secrets(
    keyring: &Keyring,
    id: SubscriptionId,
    secrets: &[WebhookSecret],
) -> pm_integrations::crypto::Sealed {
    let list: Vec<String> = secrets.iter().map(WebhookSecret::expose).collect();
    let json = serde_json::to_string(&list).expect("strings serialise");
    keyring.seal(json.as_bytes(), &Subscription::secrets_context(id))
}

/// A log entry (the detail is redacted on construction).
pub fn entry(
    integration: Option<pm_core::id::IntegrationId>,
    provider: &str,
    direction: Direction,
    operation: &str,
    ok: bool,
    detail: serde_json::Value,
    at: time::OffsetDateTime,
) -> LogEntry {
    LogEntry {
        id: LogId::new(),
        integration_id: integration,
        provider: provider.to_owned(),
        direction,
        operation: operation.to_owned(),
        ok,
        detail: Redacted::new(detail),
        at,
    }
}

/// The running workers; dropping this stops them.
#[derive(Debug)]
pub struct Workers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `init-integrations`: registers the built-in providers that are missing; returns the keys
/// created (empty on a second run).
pub async fn seed_providers(
    stores: &IntegrationStores,
    registry: &Registry,
    at: time::OffsetDateTime,
) -> pm_integrations::Result<Vec<String>> {
    let mut created = Vec::new();
    for p in registry.all() {
        let info = p.info();
        let record = ProviderRecord {
            key: info.key.clone(),
            name: info.name,
            capabilities: info.capabilities,
            enabled: true,
            created_at: at,
        };
        if stores.providers.ensure_provider(&record).await? {
            created.push(info.key.to_string());
        }
    }
    Ok(created)
}

/// Parses `PM_ENCRYPTION_KEY`: comma-separated `key_id:base64` entries (32-byte keys), the first
/// being current and the others kept to open older secrets; a single bare base64 key is named
/// `k1`.
pub fn parse_keyring(spec: &str) -> pm_integrations::Result<Keyring> {
    use pm_integrations::crypto::EncryptionKey;
    let mut entries = spec.split(',').map(str::trim).filter(|e| !e.is_empty());
    let parse = |e: &str| -> pm_integrations::Result<(String, EncryptionKey)> {
        match e.split_once(':') {
            Some((id, key)) => Ok((id.to_owned(), EncryptionKey::from_base64(key)?)),
            None => Ok(("k1".to_owned(), EncryptionKey::from_base64(e)?)),
        }
    };
    let first = entries
        .next()
        .ok_or_else(|| pm_integrations::Error::invalid("PM_ENCRYPTION_KEY", "is empty"))?;
    let (id, key) = parse(first)?;
    let mut ring = Keyring::new(&id, &key)?;
    for e in entries {
        let (id, key) = parse(e)?;
        ring = ring.with_previous(&id, &key)?;
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyrings_parse_with_rotation() {
        use pm_integrations::crypto::EncryptionKey;
        let (a, b) = (EncryptionKey::generate(), EncryptionKey::generate());
        let ring = parse_keyring(&format!("new:{}, old:{}", a.to_base64(), b.to_base64())).unwrap();
        assert_eq!(ring.current_id(), "new");
        assert_eq!(parse_keyring(&a.to_base64()).unwrap().current_id(), "k1");
        assert!(parse_keyring("").is_err());
        assert!(parse_keyring("k:short").is_err());
    }
}

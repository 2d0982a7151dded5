//! The PostgreSQL broker (feature `postgres`): `LISTEN/NOTIFY` on the channel [`CHANNEL`].
//!
//! Each message is one `NOTIFY` whose payload is the shared text envelope (origin, topic, base64
//! payload). PostgreSQL refuses payloads of 8000 bytes or more, so [`Broker::publish`] rejects an
//! encoded message over [`MAX_PAYLOAD`] with [`Error::PayloadTooLarge`] before sending anything —
//! a clear error instead of a server-side failure. Ephemeral signals are far smaller (cursor
//! positions are capped at 1 KiB); collaborative-document updates, which can be larger, belong on
//! the Redis broker or must be chunked by their producer.
//!
//! `NOTIFY` is transactional and, like pm-core's wake-up pings, serializes committing
//! transactions on a global queue: fine for presence-rate traffic, a reason to prefer Redis for
//! high-rate cursors across many instances.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, oneshot};

use super::{Broker, BrokerMessage, Envelope, InstanceId, SUBSCRIBER_BUFFER, relay};
use crate::{Error, Result};

/// The `LISTEN/NOTIFY` channel.
pub const CHANNEL: &str = "pm_realtime";

/// Largest encoded message, in bytes (PostgreSQL's limit is "shorter than 8000 bytes").
pub const MAX_PAYLOAD: usize = 7999;

/// How long [`PostgresBroker::from_pool`] waits for its first `LISTEN`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL broker. Cheap to clone; the `LISTEN` task stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PostgresBroker {
    id: InstanceId,
    pool: PgPool,
    tx: broadcast::Sender<BrokerMessage>,
    _listener: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresBroker {
    /// Connects to `url` (a pool of 2 connections for `NOTIFY`, plus one dedicated `LISTEN`
    /// connection) and returns once it listens.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("broker_url", e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(Error::broker)?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool for `NOTIFY` (e.g. pm-core's) and opens a dedicated `LISTEN`
    /// connection with the same options; returns once it listens, so nothing published after
    /// this returns is missed.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        let id = InstanceId::new();
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(listen(listen_pool, id, tx.clone(), ready_tx));
        let guard = Arc::new(AbortOnDrop(task.abort_handle()));
        match tokio::time::timeout(LISTEN_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(Self { id, pool, tx, _listener: guard }),
            Ok(Err(_)) | Err(_) => Err(Error::Broker(
                format!("could not LISTEN {CHANNEL} within {LISTEN_TIMEOUT:?}").into(),
            )),
        }
    }
}

/// The `LISTEN` loop: relays notifications; reconnects with capped exponential backoff (messages
/// sent while disconnected are lost, which ephemeral data tolerates).
async fn listen(
    pool: PgPool,
    me: InstanceId,
    tx: broadcast::Sender<BrokerMessage>,
    ready: oneshot::Sender<()>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    loop {
        let subscribed = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match subscribed {
            Ok(mut listener) => {
                backoff = MIN_BACKOFF;
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if let Some(msg) = Envelope::decode(n.payload().as_bytes()) {
                                relay(&tx, me, msg);
                            }
                        }
                        // The connection was lost and re-established by sqlx.
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "pm-realtime: LISTEN {CHANNEL} failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pm-realtime: cannot LISTEN {CHANNEL}; retrying in {backoff:?}")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[async_trait]
impl Broker for PostgresBroker {
    fn instance_id(&self) -> InstanceId {
        self.id
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let text = Envelope::encode(self.id, topic, &payload)?;
        if text.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooLarge { size: text.len(), limit: MAX_PAYLOAD });
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(text)
            .execute(&self.pool)
            .await
            .map_err(Error::broker)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BrokerMessage> {
        self.tx.subscribe()
    }
}

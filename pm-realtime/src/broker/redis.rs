//! The Redis broker (feature `redis`): pub/sub on the channel [`CHANNEL`] through the `fred`
//! client.
//!
//! One client publishes, a dedicated subscriber client listens (a Redis connection in subscribe
//! mode can do nothing else) and re-subscribes by itself after a reconnect. Messages use the
//! shared text envelope (origin, topic, base64 payload); Redis has no practical size limit here,
//! so large collaborative-document updates are fine.
//!
//! Redis going away must not take the instance with it: both clients reconnect forever with
//! capped exponential backoff (100 ms … 5 s), and while disconnected `publish` fails at once
//! instead of queueing (a signal is ephemeral: late is as useless as lost, and queued publishes
//! would stall the hub's effect task). Durable events never depend on the broker — every
//! instance reads them from the shared event log — so task updates keep flowing during an
//! outage; presence, typing, cursors and collaborative-edit fan-out between instances resume
//! when Redis is back (document updates are persisted either way, so a document opened later,
//! and REST, show them).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Builder;
use fred::types::config::{Config, ReconnectPolicy};
use tokio::sync::broadcast;

use super::{Broker, BrokerMessage, Envelope, InstanceId, SUBSCRIBER_BUFFER, relay};
use crate::{Error, Result};

/// The pub/sub channel.
pub const CHANNEL: &str = "pm:realtime";

/// Longest a Redis command may take before it fails (fred's default is to wait forever).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis broker. Cheap to clone; the relay task stops when the subscriber connection closes.
#[derive(Clone)]
pub struct RedisBroker {
    id: InstanceId,
    publisher: Client,
    subscriber: SubscriberClient,
    tx: broadcast::Sender<BrokerMessage>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to `url` (`redis://host:port/db`) and returns once subscribed.
    pub async fn connect(url: &str) -> Result<Self> {
        let config =
            Config::from_url(url).map_err(|e| Error::invalid("broker_url", e.to_string()))?;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT);
        let publisher = builder.build().map_err(Error::broker)?;
        let subscriber = builder.build_subscriber_client().map_err(Error::broker)?;
        publisher.init().await.map_err(Error::broker)?;
        subscriber.init().await.map_err(Error::broker)?;
        let id = InstanceId::new();
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let mut messages = subscriber.message_rx();
        let relay_tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(m) => {
                        if let Some(msg) = m.value.as_bytes().and_then(Envelope::decode) {
                            relay(&relay_tx, id, msg);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "pm-realtime: Redis broker relay lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // Re-subscribes after every reconnect; the task lives as long as the client (detached).
        drop(subscriber.manage_subscriptions());
        subscriber.subscribe(CHANNEL).await.map_err(Error::broker)?;
        Ok(Self { id, publisher, subscriber, tx })
    }

    /// Closes both connections.
    pub async fn quit(&self) -> Result<()> {
        self.subscriber.quit().await.map_err(Error::broker)?;
        self.publisher.quit().await.map_err(Error::broker)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn instance_id(&self) -> InstanceId {
        self.id
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        if !self.publisher.is_connected() {
            return Err(Error::broker(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "Redis is not connected (reconnecting); the signal is dropped",
            )));
        }
        let text = Envelope::encode(self.id, topic, &payload)?;
        let _: i64 = self.publisher.publish(CHANNEL, text).await.map_err(Error::broker)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BrokerMessage> {
        self.tx.subscribe()
    }
}

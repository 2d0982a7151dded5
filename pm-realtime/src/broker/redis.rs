//! The Redis broker (feature `redis`): pub/sub on the channel [`CHANNEL`] through the `fred`
//! client.
//!
//! One client publishes, a dedicated subscriber client listens (a Redis connection in subscribe
//! mode can do nothing else) and re-subscribes by itself after a reconnect. Messages use the
//! shared text envelope (origin, topic, base64 payload); Redis has no practical size limit here,
//! so large collaborative-document updates are fine.

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Builder;
use fred::types::config::Config;
use tokio::sync::broadcast;

use super::{Broker, BrokerMessage, Envelope, InstanceId, SUBSCRIBER_BUFFER, relay};
use crate::{Error, Result};

/// The pub/sub channel.
pub const CHANNEL: &str = "pm:realtime";

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
        let builder = Builder::from_config(config);
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
        let text = Envelope::encode(self.id, topic, &payload)?;
        let _: i64 = self.publisher.publish(CHANNEL, text).await.map_err(Error::broker)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BrokerMessage> {
        self.tx.subscribe()
    }
}

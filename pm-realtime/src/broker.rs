//! Brokers: fan-out of ephemeral signals between instances (presence, typing, cursors,
//! notifications pushed live, and opaque collaborative-document updates on their own topics).
//!
//! Durable events never travel through a broker: every instance tails the event log itself
//! (DESIGN.md §3, §5). A broker only carries what may be lost: a message published while another
//! instance is disconnected is simply missed, and presence repairs itself through periodic
//! refreshes and timeouts.
//!
//! Every message carries the [`InstanceId`] of its origin, and a broker never hands an instance
//! its own messages back (it filters its echoes), so a hub can publish and deliver locally
//! without double delivery.
//!
//! Built in: [`InProcessBroker`] (default; also models several instances in one process for
//! tests), `postgres::PostgresBroker` (feature `postgres`, `LISTEN/NOTIFY`, payloads capped at
//! [`postgres::MAX_PAYLOAD`] bytes) and `redis::RedisBroker` (feature `redis`, pub/sub via fred).

use std::fmt;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::{Error, Result};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

/// How many messages a slow subscriber may fall behind before it misses some (ephemeral
/// signals: losing old ones is the right trade-off).
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// Identifies one instance (one hub) among those sharing a broker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub Uuid);

impl InstanceId {
    /// A fresh, random id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A message received from another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMessage {
    /// The publishing instance (never the receiver's own).
    pub origin: InstanceId,
    /// The topic, e.g. [`crate::hub::SIGNAL_TOPIC`] or a document topic.
    pub topic: String,
    /// Opaque payload.
    pub payload: Bytes,
}

/// Cross-instance pub/sub for ephemeral data.
#[async_trait]
pub trait Broker: Send + Sync {
    /// This instance's id (stamped on every published message).
    fn instance_id(&self) -> InstanceId;
    /// Publishes to every *other* instance. Best effort: an error means this message was not
    /// sent (e.g. [`Error::PayloadTooLarge`]); nothing is retried.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()>;
    /// Messages from other instances, on every topic, from now on. Each call returns an
    /// independent receiver; a receiver that falls more than [`SUBSCRIBER_BUFFER`] messages
    /// behind skips the oldest (`RecvError::Lagged`).
    fn subscribe(&self) -> broadcast::Receiver<BrokerMessage>;
}

/// The wire form shared by the networked brokers: one JSON object (text, so it fits a PostgreSQL
/// `NOTIFY` payload) with the origin, the topic and the base64 payload.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    #[serde(rename = "o")]
    pub origin: InstanceId,
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "p")]
    pub payload: String,
}

impl Envelope {
    /// Encodes a message.
    #[allow(dead_code, reason = "only the networked brokers (optional features) encode")]
    pub(crate) fn encode(origin: InstanceId, topic: &str, payload: &[u8]) -> Result<String> {
        let e = Envelope {
            origin,
            topic: topic.to_owned(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
        };
        serde_json::to_string(&e).map_err(Error::broker)
    }

    /// Decodes a message; `None` (with a warning) for garbage, which a shared channel may carry.
    #[allow(dead_code, reason = "only the networked brokers (optional features) decode")]
    pub(crate) fn decode(text: &[u8]) -> Option<BrokerMessage> {
        let decoded = serde_json::from_slice::<Envelope>(text).ok().and_then(|e| {
            let payload = base64::engine::general_purpose::STANDARD.decode(&e.payload).ok()?;
            Some(BrokerMessage { origin: e.origin, topic: e.topic, payload: payload.into() })
        });
        if decoded.is_none() {
            tracing::warn!(len = text.len(), "pm-realtime: ignoring an undecodable broker message");
        }
        decoded
    }
}

/// Forwards broker messages to local subscribers, dropping this instance's own echoes.
#[allow(dead_code, reason = "only the networked brokers (optional features) relay")]
pub(crate) fn relay(tx: &broadcast::Sender<BrokerMessage>, me: InstanceId, msg: BrokerMessage) {
    if msg.origin != me {
        // No receiver yet is fine: ephemeral data nobody listens to is dropped.
        let _ = tx.send(msg);
    }
}

/// The in-process broker: the default for a single instance, and a way to run several hubs in
/// one process (tests, simulations). Instances made from one broker with
/// [`InProcessBroker::instance`] share a bus.
#[derive(Debug, Clone)]
pub struct InProcessBroker {
    id: InstanceId,
    bus: broadcast::Sender<BrokerMessage>,
}

impl Default for InProcessBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBroker {
    /// A broker with its own bus.
    pub fn new() -> Self {
        Self { id: InstanceId::new(), bus: broadcast::channel(SUBSCRIBER_BUFFER).0 }
    }

    /// Another instance on the same bus.
    pub fn instance(&self) -> Self {
        Self { id: InstanceId::new(), bus: self.bus.clone() }
    }
}

#[async_trait]
impl Broker for InProcessBroker {
    fn instance_id(&self) -> InstanceId {
        self.id
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let _ = self.bus.send(BrokerMessage { origin: self.id, topic: topic.to_owned(), payload });
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BrokerMessage> {
        // Echo filtering happens on receipt: the bus is shared, so wrap the receiver.
        let (tx, rx) = broadcast::channel(SUBSCRIBER_BUFFER);
        let mut bus = self.bus.subscribe();
        let me = self.id;
        tokio::spawn(async move {
            loop {
                match bus.recv().await {
                    Ok(msg) if msg.origin == me => {}
                    Ok(msg) => {
                        if tx.send(msg).is_err() {
                            break; // the subscriber is gone
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "pm-realtime: in-process broker subscriber lagged"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        rx
    }
}

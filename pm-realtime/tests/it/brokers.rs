//! Two hubs on two broker instances: presence, cursors and notifications cross; durable events
//! reach both through the shared log; an instance never gets its own echoes.

use std::sync::Arc;

use bytes::Bytes;
use pm_core::event::Actor;
use pm_realtime::Channel;
use pm_realtime::broker::{Broker, InProcessBroker};
use pm_realtime::protocol::{PresenceEntry, PresenceStatus, ServerFrame};

use crate::support::*;

/// Runs the cross-instance checks on a world and two brokers sharing a bus.
async fn two_hubs(w: &World, a: Arc<dyn Broker>, b: Arc<dyn Broker>) {
    assert_ne!(a.instance_id(), b.instance_id());
    let hub_a = w.hub().broker(a.clone()).start().await.unwrap();
    let hub_b = w.hub().broker(b.clone()).start().await.unwrap();
    let channel = Channel::Task(w.task.id);
    let mut ada = Client::connect(&hub_a, Actor::User(w.ada.id));
    let mut bob = Client::connect(&hub_b, Actor::User(w.bob.id));
    ada.subscribe(channel).await;
    bob.subscribe(channel).await;

    // Presence crosses: Bob (on B) sees Ada (on A) and the other way round.
    let online = |user| PresenceEntry { user, status: PresenceStatus::Online };
    let joined = |user| ServerFrame::Presence {
        channel,
        joined: vec![online(user)],
        left: vec![],
        changed: vec![],
    };
    // Bob's snapshot lists Ada if her report arrived first; otherwise her join follows.
    bob.next_where(
        |f| matches!(f, ServerFrame::Presence { joined, .. } if joined.contains(&online(w.ada.id))),
    )
    .await;
    ada.next_where(|f| *f == joined(w.bob.id)).await;

    // Cursors cross.
    ada.send(&format!(r#"{{"type":"cursor","channel":"{channel}","position":{{"line":3}}}}"#))
        .await;
    let cursor = bob.next_where(|f| matches!(f, ServerFrame::Cursor { .. })).await;
    assert_eq!(
        cursor,
        ServerFrame::Cursor { channel, user: w.ada.id, position: serde_json::json!({"line": 3}) }
    );

    // Durable events reach both hubs through the log (no broker involved).
    w.touch_task("Seen everywhere").await;
    let (_, seq_a, _) = ada.next_event().await;
    let (_, seq_b, _) = bob.next_event().await;
    assert_eq!(seq_a, seq_b);

    // Leaving crosses too.
    drop(ada);
    bob.next_where(|f| matches!(f, ServerFrame::Presence { left, .. } if left == &vec![w.ada.id]))
        .await;

    // No echoes: what A publishes reaches B, never A itself.
    let mut from_a = a.subscribe();
    let mut from_b = b.subscribe();
    a.publish("test.topic", Bytes::from_static(b"\x00binary\xff")).await.unwrap();
    let got = next_on_topic(&mut from_b).await;
    assert_eq!(got.origin, a.instance_id());
    assert_eq!(&got.payload[..], &b"\x00binary\xff"[..]);
    b.publish("test.topic", Bytes::from_static(b"from b")).await.unwrap();
    // A's own message was published first; had it echoed, it would arrive before B's.
    let got = next_on_topic(&mut from_a).await;
    assert_eq!(got.origin, b.instance_id());
}

/// The next message on `test.topic` (hub signals may be interleaved), never one of our own.
async fn next_on_topic(
    rx: &mut tokio::sync::broadcast::Receiver<pm_realtime::broker::BrokerMessage>,
) -> pm_realtime::broker::BrokerMessage {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a broker message within 5 s")
            .unwrap();
        if msg.topic == "test.topic" {
            return msg;
        }
    }
}

#[tokio::test]
async fn in_process_brokers_connect_two_hubs() {
    let w = sqlite_world().await;
    let a = InProcessBroker::new();
    let b = a.instance();
    two_hubs(&w, Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_brokers_connect_two_hubs_sharing_one_database() {
    #[cfg(feature = "postgres")]
    {
        use pm_realtime::broker::postgres::{MAX_PAYLOAD, PostgresBroker};
        let Some(url) = crate::stores::postgres_url("postgres_brokers_connect_two_hubs").await
        else {
            return;
        };
        let stores = pm_core::store::open(&url).await.unwrap();
        stores.admin.migrate().await.unwrap();
        let w = world(stores, Vec::new()).await;
        let a = PostgresBroker::connect(&url).await.unwrap();
        let b = PostgresBroker::connect(&url).await.unwrap();
        let too_big = Bytes::from(vec![7u8; MAX_PAYLOAD]);
        assert!(matches!(
            a.publish("doc.x", too_big).await,
            Err(pm_realtime::Error::PayloadTooLarge { limit: MAX_PAYLOAD, .. })
        ));
        two_hubs(&w, Arc::new(a), Arc::new(b)).await;
    }
    #[cfg(not(feature = "postgres"))]
    skip("postgres_brokers_connect_two_hubs", "built without the `postgres` feature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_brokers_connect_two_hubs() {
    #[cfg(feature = "redis")]
    {
        use pm_realtime::broker::redis::RedisBroker;
        let Ok(url) = std::env::var("PM_TEST_REDIS_URL") else {
            skip("redis_brokers_connect_two_hubs", "PM_TEST_REDIS_URL is not set");
            return;
        };
        let w = sqlite_world().await;
        let a = RedisBroker::connect(&url).await.unwrap();
        let b = RedisBroker::connect(&url).await.unwrap();
        // Large payloads are fine on Redis.
        a.publish("doc.x", Bytes::from(vec![7u8; 64 * 1024])).await.unwrap();
        two_hubs(&w, Arc::new(a.clone()), Arc::new(b.clone())).await;
        a.quit().await.unwrap();
        b.quit().await.unwrap();
    }
    #[cfg(not(feature = "redis"))]
    skip("redis_brokers_connect_two_hubs", "built without the `redis` feature");
}

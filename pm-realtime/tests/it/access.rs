//! Access on open sessions: subscriptions re-checked when a member is removed (at once and once
//! more after the delay), expiring credentials closed with 4001, read-only sessions that watch
//! without signalling, and last-seen times written as one batch per sweep.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pm_core::authz::{Action, Authorizer, Decision, Resource};
use pm_core::event::Actor;
use pm_core::id::UserId;
use pm_realtime::Channel;
use pm_realtime::clock::{Clock as _, ManualClock};
use pm_realtime::hub::{HubConfig, SessionOptions};
use pm_realtime::protocol::{CloseCode, ErrorCode, ServerFrame, UnsubscribeReason};
use pm_realtime::session::Outgoing;
use pm_realtime::store::PresenceStore;
use time::OffsetDateTime;

use crate::support::*;

/// Allows everything except reads by the users in its revoked set, which a test changes at will
/// (as a permission engine's state changes under an open session).
#[derive(Default)]
struct Revocable(Mutex<HashSet<UserId>>);

impl Revocable {
    fn revoke(&self, user: UserId) {
        self.0.lock().unwrap().insert(user);
    }
}

#[async_trait]
impl Authorizer for Revocable {
    async fn check(
        &self,
        actor: &Actor,
        action: Action,
        _: &Resource,
    ) -> pm_core::Result<Decision> {
        let revoked = actor.user().is_some_and(|u| self.0.lock().unwrap().contains(&u));
        if action == Action::Read && revoked {
            return Ok(Decision::Deny("revoked".into()));
        }
        Ok(Decision::Allow)
    }
}

fn forbidden(channel: Channel) -> ServerFrame {
    ServerFrame::Unsubscribed { channel, reason: Some(UnsubscribeReason::Forbidden) }
}

#[tokio::test]
async fn a_removed_member_loses_the_channels_on_the_second_look_after_the_event() {
    let w = sqlite_world().await;
    let authz = Arc::new(Revocable::default());
    let config = HubConfig { reauthorize_delay: Duration::from_millis(300), ..fast_config() };
    let hub = w.hub_with(authz.clone()).config(config).start().await.unwrap();
    let mut bob = Client::connect(&hub, Actor::User(w.bob.id));
    let mut ada = Client::connect(&hub, Actor::User(w.ada.id));
    for channel in [Channel::Org(w.org.id), Channel::Project(w.project.id), Channel::User(w.bob.id)]
    {
        bob.subscribe(channel).await;
    }
    ada.subscribe(Channel::Project(w.project.id)).await;

    // The membership row goes first; the grants are revoked a moment later (as pm-server does),
    // after the hub's first look at the `member.removed` event.
    w.pm.remove_member(&w.ada(), w.org.id, w.bob.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    authz.revoke(w.bob.id);

    let mut dropped = Vec::new();
    for _ in 0..2 {
        let f = bob.next_where(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await;
        dropped.push(f);
    }
    let mut want =
        vec![forbidden(Channel::Org(w.org.id)), forbidden(Channel::Project(w.project.id))];
    let key = |f: &ServerFrame| format!("{f:?}");
    dropped.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(dropped, want);

    // The session stays open, keeps its own user channel, and hears nothing more of the project.
    bob.send(r#"{"type":"ping"}"#).await;
    assert_eq!(
        bob.next_where(|f| !matches!(f, ServerFrame::Presence { .. })).await,
        ServerFrame::Pong
    );
    w.touch_task("After the removal").await;
    ada.next_event().await;
    assert!(
        bob.drain_frames().iter().all(|f| !matches!(f, ServerFrame::Event { .. })),
        "no event after access was lost"
    );
    // Subscribing again is refused like any forbidden channel.
    bob.send(&format!(r#"{{"type":"subscribe","channel":"project:{}"}}"#, w.project.id)).await;
    match bob.next().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("expected an error, got {other:?}"),
    }
    // Ada, still allowed, keeps her subscription through a full pass.
    assert_eq!(hub.reauthorize_all().await, 0);
}

#[tokio::test]
async fn the_host_can_recheck_a_user_at_once() {
    let w = sqlite_world().await;
    let authz = Arc::new(Revocable::default());
    let hub = w.hub_with(authz.clone()).start().await.unwrap();
    let mut bob = Client::connect(&hub, Actor::User(w.bob.id));
    bob.subscribe(Channel::Task(w.task.id)).await;
    assert_eq!(hub.reauthorize_user(w.bob.id).await, 0, "still allowed");
    authz.revoke(w.bob.id);
    assert_eq!(hub.reauthorize_user(w.ada.id).await, 0, "someone else");
    assert_eq!(hub.reauthorize_user(w.bob.id).await, 1);
    assert_eq!(
        bob.next_where(|f| matches!(f, ServerFrame::Unsubscribed { .. })).await,
        forbidden(Channel::Task(w.task.id))
    );
    assert_eq!(hub.reauthorize_user(w.bob.id).await, 0, "nothing left to drop");
}

#[tokio::test]
async fn an_expired_credential_closes_the_session_with_4001() {
    let w = sqlite_world().await;
    let clock = Arc::new(ManualClock::default());
    let hub = w.hub().clock(clock.clone()).start().await.unwrap();
    let expires_at = Some(clock.now() + Duration::from_secs(60));
    let (session, mut out) =
        hub.connect_with(Actor::User(w.ada.id), SessionOptions { expires_at, read_only: false });
    let (lasting, mut lasting_out) = hub.connect(Actor::User(w.bob.id));

    clock.advance(Duration::from_secs(30));
    hub.sweep();
    assert!(session.heartbeat(), "not yet");
    assert!(lasting.heartbeat(), "alive (and not silent past the heartbeat timeout below)");
    clock.advance(Duration::from_secs(31));
    hub.sweep();
    assert_eq!(out.try_recv(), Some(Outgoing::Close(CloseCode::TOKEN_EXPIRED)));
    assert_eq!(CloseCode::TOKEN_EXPIRED.code, 4001);
    assert!(!session.heartbeat(), "closed");
    assert!(lasting.heartbeat(), "a session without expiry lives on");
    assert_eq!(lasting_out.try_recv(), None);

    // An inbound frame after the expiry closes at once, without waiting for a sweep.
    let expires_at = Some(clock.now() + Duration::from_secs(5));
    let (late, mut late_out) =
        hub.connect_with(Actor::User(w.ada.id), SessionOptions { expires_at, read_only: false });
    clock.advance(Duration::from_secs(6));
    late.receive(r#"{"type":"ping"}"#).await;
    assert_eq!(late_out.try_recv(), Some(Outgoing::Close(CloseCode::TOKEN_EXPIRED)));
}

#[tokio::test]
async fn a_read_only_session_watches_but_sends_no_signals() {
    let w = sqlite_world().await;
    let hub = w.hub().start().await.unwrap();
    let channel = Channel::Project(w.project.id);
    let (session, out) = hub
        .connect_with(Actor::User(w.bob.id), SessionOptions { expires_at: None, read_only: true });
    let mut bob = Client { session, out };
    let mut ada = Client::connect(&hub, Actor::User(w.ada.id));
    ada.subscribe(channel).await;
    bob.subscribe(channel).await;

    for frame in [
        format!(r#"{{"type":"presence","channel":"{channel}","status":"away"}}"#),
        format!(r#"{{"type":"typing","channel":"{channel}"}}"#),
        format!(r#"{{"type":"cursor","channel":"{channel}","position":{{"index":3}}}}"#),
    ] {
        bob.send(&frame).await;
        match bob.next_where(|f| matches!(f, ServerFrame::Error { .. })).await {
            ServerFrame::Error { code, channel: c, message, .. } => {
                assert_eq!(code, ErrorCode::ReadOnly, "{frame}");
                assert_eq!(c, Some(channel));
                assert!(message.contains("read-only"), "{message}");
            }
            _ => unreachable!(),
        }
    }
    // Healthy, receiving, and never shown as present.
    bob.send(r#"{"type":"ping"}"#).await;
    assert_eq!(
        bob.next_where(|f| !matches!(f, ServerFrame::Presence { .. })).await,
        ServerFrame::Pong
    );
    w.touch_task("Watched").await;
    bob.next_event().await;
    ada.next_event().await;
    let seen = ada.drain_frames();
    assert!(
        !seen.iter().any(|f| matches!(f, ServerFrame::Presence { joined, .. } if joined.iter().any(|e| e.user == w.bob.id))),
        "a read-only watcher is not announced: {seen:?}"
    );
    assert!(hub.presence(channel).iter().all(|e| e.user != w.bob.id));
}

/// Counts the calls a hub makes to its presence store.
#[derive(Default)]
struct CountingPresence {
    single: Mutex<usize>,
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl PresenceStore for CountingPresence {
    async fn touch_last_seen(&self, _: UserId, _: OffsetDateTime) -> pm_realtime::Result<()> {
        *self.single.lock().unwrap() += 1;
        Ok(())
    }

    async fn last_seen(&self, _: UserId) -> pm_realtime::Result<Option<OffsetDateTime>> {
        Ok(None)
    }

    async fn touch_last_seen_many(
        &self,
        seen: &[(UserId, OffsetDateTime)],
    ) -> pm_realtime::Result<()> {
        self.batches.lock().unwrap().push(seen.len());
        Ok(())
    }
}

#[tokio::test]
async fn a_sweep_writes_every_users_last_seen_in_one_batch() {
    let w = sqlite_world().await;
    let clock = Arc::new(ManualClock::default());
    let store = Arc::new(CountingPresence::default());
    let hub = w.hub().clock(clock.clone()).presence_store(store.clone()).start().await.unwrap();
    let users: Vec<UserId> = (0..50).map(|_| UserId::new()).collect();
    let sessions: Vec<_> = users.iter().map(|u| hub.connect(Actor::User(*u))).collect();
    hub.sweep();
    eventually("the sweep's batch", async || !store.batches.lock().unwrap().is_empty()).await;
    assert_eq!(*store.batches.lock().unwrap(), vec![50], "one write for 50 users");
    assert_eq!(*store.single.lock().unwrap(), 0);

    // Closing them all: one batch per removal, merged while they wait for the writer.
    drop(sessions);
    eventually("the removals' last-seen", async || {
        store.batches.lock().unwrap().iter().sum::<usize>() >= 100
    })
    .await;
    assert_eq!(*store.single.lock().unwrap(), 0, "never one user at a time");
}

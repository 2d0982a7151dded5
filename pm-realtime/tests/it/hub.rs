//! The hub against a real SQLite event log: authorization, live delivery, replay and resync,
//! backpressure, malformed frames, presence, coalescing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pm_core::authz::{Action, Authorizer, Decision, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::id::{ProjectId, TaskId, UserId};
use pm_realtime::Channel;
use pm_realtime::clock::ManualClock;
use pm_realtime::hub::HubConfig;
use pm_realtime::protocol::{CloseCode, ErrorCode, PresenceEntry, PresenceStatus, ServerFrame};
use pm_realtime::session::Outgoing;
use pm_realtime::store::PresenceStore;
use pm_realtime::store::memory::MemoryRealtimeStore;

use crate::support::*;

/// Denies reading one project (and its tasks) to everyone but its lead.
struct PrivateProject {
    project: ProjectId,
    lead: UserId,
}

#[async_trait]
impl Authorizer for PrivateProject {
    async fn check(
        &self,
        actor: &Actor,
        action: Action,
        r: &Resource,
    ) -> pm_core::Result<Decision> {
        let private = r.project_id == Some(self.project)
            && matches!(r.kind, ResourceKind::Project | ResourceKind::Task);
        if action == Action::Read && private && actor.user() != Some(self.lead) {
            return Ok(Decision::Deny("private project".into()));
        }
        Ok(Decision::Allow)
    }
}

fn error_of(f: ServerFrame) -> (ErrorCode, Option<String>) {
    match f {
        ServerFrame::Error { code, field, .. } => (code, field),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn subscriptions_are_authorized() {
    let w = sqlite_world().await;
    let hub = w
        .hub_with(Arc::new(PrivateProject { project: w.project.id, lead: w.ada.id }))
        .start()
        .await
        .unwrap();
    let mut ada = Client::connect(&hub, Actor::User(w.ada.id));
    let mut bob = Client::connect(&hub, Actor::User(w.bob.id));
    ada.subscribe(Channel::Project(w.project.id)).await;
    ada.subscribe(Channel::Task(w.task.id)).await;
    ada.subscribe(Channel::User(w.ada.id)).await;
    bob.subscribe(Channel::Org(w.org.id)).await;
    bob.subscribe(Channel::User(w.bob.id)).await;

    for channel in [
        Channel::Project(w.project.id),
        Channel::Task(w.task.id),
        Channel::User(w.ada.id),
        Channel::Task(TaskId::new()), // does not exist: indistinguishable from forbidden
    ] {
        bob.send(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#)).await;
        let (code, field) = error_of(bob.next().await);
        assert_eq!(code, ErrorCode::Forbidden, "{channel}");
        assert_eq!(field.as_deref(), Some("channel"));
    }
    // Still healthy, and a refused subscription delivers nothing.
    bob.send(r#"{"type":"ping"}"#).await;
    assert_eq!(bob.next().await, ServerFrame::Pong);
    w.touch_task("Renamed").await;
    let (channel, _, _) = ada.next_event().await;
    assert_eq!(channel, Channel::Project(w.project.id));
    let (channel, _, _) = bob.next_event().await;
    assert_eq!(channel, Channel::Org(w.org.id), "bob only has the org channel");
    // A second subscribe to the same channel is refused.
    ada.send(&format!(r#"{{"type":"subscribe","channel":"task:{}"}}"#, w.task.id)).await;
    let f = ada.next_where(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert_eq!(error_of(f).0, ErrorCode::AlreadySubscribed);
}

#[tokio::test]
async fn service_writes_reach_every_matching_channel_with_their_seq() {
    let w = sqlite_world().await;
    let hub = w.hub().start().await.unwrap();
    let mut c = Client::connect(&hub, Actor::User(w.bob.id));
    let start = c.subscribe(Channel::Task(w.task.id)).await;
    c.subscribe(Channel::Project(w.project.id)).await;
    let other = w.new_task("Elsewhere").await; // project only
    let renamed = w.touch_task("Live").await; // task and project
    let mut got = Vec::new();
    for _ in 0..3 {
        let (channel, seq, event) = c.next_event().await;
        assert_eq!(seq, event.seq);
        assert!(seq > start);
        got.push((channel, event.task_id));
    }
    got.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(
        got,
        vec![
            (Channel::Project(w.project.id), Some(other.id)),
            (Channel::Project(w.project.id), Some(renamed.id)),
            (Channel::Task(w.task.id), Some(renamed.id)),
        ]
    );
    assert!(c.drain_frames().iter().all(|f| !matches!(f, ServerFrame::Event { .. })));
}

#[tokio::test]
async fn reconnecting_with_last_seq_gets_exactly_the_missed_events_even_during_writes() {
    let w = sqlite_world().await;
    let hub = w.hub().start().await.unwrap();
    let channel = Channel::Project(w.project.id);
    let mut first = Client::connect(&hub, Actor::User(w.bob.id));
    first.subscribe(channel).await;
    w.touch_task("One").await;
    let (_, last_seq, _) = first.next_event().await;
    drop(first);

    // Missed while away: three project events and unrelated ones.
    for i in 0..3 {
        w.touch_task(&format!("Missed {i}")).await;
        w.pm.create_org(
            &w.ada(),
            pm_core::service::NewOrg {
                slug: pm_core::model::Slug::parse(&format!("other-{i}")).unwrap(),
                name: pm_core::model::Name::parse("Other").unwrap(),
            },
        )
        .await
        .unwrap();
    }
    // Writes keep landing while the replay runs.
    let writer = {
        let pm = w.pm.clone();
        let (task, ada) = (w.task.id, w.ada());
        tokio::spawn(async move {
            for i in 0..20 {
                let t = pm.stores().tasks.get_task(task).await.unwrap();
                let patch = pm_core::model::TaskPatch {
                    title: Some(pm_core::model::TaskTitle::parse(&format!("During {i}")).unwrap()),
                    ..Default::default()
                };
                pm.update_task(&ada, task, t.version, patch).await.unwrap();
            }
        })
    };
    let mut again = Client::connect(&hub, Actor::User(w.bob.id));
    again
        .send(&format!(r#"{{"type":"subscribe","channel":"{channel}","last_seq":{last_seq}}}"#))
        .await;
    writer.await.unwrap();
    let latest = w.stores.events.latest_seq().await.unwrap();
    let expected: Vec<i64> = w
        .stores
        .events
        .read_after(last_seq, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.project_id == Some(w.project.id))
        .map(|e| e.seq)
        .collect();
    assert_eq!(expected.len(), 23);
    let mut got = Vec::new();
    let subscribed = again.next_where(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    assert_eq!(subscribed, ServerFrame::Subscribed { channel, seq: last_seq });
    while got.last() != Some(&latest) {
        got.push(again.next_event().await.1);
    }
    assert_eq!(got, expected, "no gap, no duplicate, in order");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(again.drain_frames().iter().all(|f| !matches!(f, ServerFrame::Event { .. })));
}

#[tokio::test]
async fn a_last_seq_older_than_the_window_gets_resync() {
    let w = sqlite_world().await;
    let hub =
        w.hub().config(HubConfig { replay_window: 3, ..fast_config() }).start().await.unwrap();
    for i in 0..5 {
        w.touch_task(&format!("Edit {i}")).await;
    }
    let latest = w.stores.events.latest_seq().await.unwrap();
    let mut c = Client::connect(&hub, Actor::User(w.bob.id));
    // Wait until the tailer has seen the edits, so the window is measured from `latest`.
    eventually("the tailer to catch up", async || hub.stats().tail_seq == latest).await;
    let channel = Channel::Task(w.task.id);
    c.send(&format!(r#"{{"type":"subscribe","channel":"{channel}","last_seq":1}}"#)).await;
    assert_eq!(c.next().await, ServerFrame::Resync { channel, latest_seq: latest });
    assert_eq!(c.next().await, ServerFrame::Subscribed { channel, seq: latest });
    w.touch_task("After").await;
    let (_, seq, _) = c.next_event().await;
    assert_eq!(seq, latest + 1);
    // Within the window: a replay, not a resync.
    let mut d = Client::connect(&hub, Actor::User(w.bob.id));
    d.send(&format!(r#"{{"type":"subscribe","channel":"{channel}","last_seq":{}}}"#, latest - 1))
        .await;
    assert_eq!(d.next().await, ServerFrame::Subscribed { channel, seq: latest - 1 });
    assert_eq!(d.next_event().await.1, latest);
    assert_eq!(d.next_event().await.1, latest + 1);
}

#[tokio::test]
async fn a_stalled_session_is_cut_off_while_another_keeps_receiving() {
    let w = sqlite_world().await;
    let hub = w
        .hub()
        .config(HubConfig { max_queue_bytes: 16 * 1024, ..fast_config() })
        .start()
        .await
        .unwrap();
    let channel = Channel::Task(w.task.id);
    let mut stalled = Client::connect(&hub, Actor::User(w.ada.id));
    let mut reader = Client::connect(&hub, Actor::User(w.bob.id));
    stalled.subscribe(channel).await;
    reader.subscribe(channel).await;
    let mut seen = 0;
    for i in 0..40 {
        w.touch_task(&format!("Flood {i} {}", "x".repeat(200))).await;
        // The reader keeps up.
        reader.next_event().await;
        seen += 1;
    }
    assert_eq!(seen, 40);
    // The stalled one never read: its queue was dropped and the close comes first.
    let out = stalled.drain();
    assert_eq!(out.first(), Some(&Outgoing::Close(CloseCode::SLOW_CONSUMER)), "{out:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(stalled.out.recv().await, None);
    assert_eq!(hub.stats().sessions, 1);
    // Its handle is inert now.
    stalled.send(r#"{"type":"ping"}"#).await;
}

#[tokio::test]
async fn malformed_frames_get_errors_naming_the_field_and_the_session_stays_healthy() {
    let w = sqlite_world().await;
    let hub =
        w.hub().config(HubConfig { max_frame_bytes: 512, ..fast_config() }).start().await.unwrap();
    let mut c = Client::connect(&hub, Actor::User(w.bob.id));
    let task = Channel::Task(w.task.id);
    let cases: Vec<(String, ErrorCode, Option<&str>)> = vec![
        ("not json".into(), ErrorCode::InvalidFrame, None),
        (r#"{"type":"dance"}"#.into(), ErrorCode::InvalidFrame, Some("type")),
        (
            r#"{"type":"subscribe","channel":"task:42"}"#.into(),
            ErrorCode::InvalidFrame,
            Some("channel"),
        ),
        (
            format!(r#"{{"type":"subscribe","channel":"{task}","extra":true}}"#),
            ErrorCode::InvalidFrame,
            Some("extra"),
        ),
        (
            format!(r#"{{"type":"subscribe","channel":"{task}","last_seq":-1}}"#),
            ErrorCode::InvalidFrame,
            Some("last_seq"),
        ),
        (
            format!(r#"{{"type":"typing","channel":"{task}"}}"#),
            ErrorCode::NotSubscribed,
            Some("channel"),
        ),
        (
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(600)),
            ErrorCode::FrameTooLarge,
            None,
        ),
        ("\u{0}\u{ffff}".into(), ErrorCode::InvalidFrame, None),
    ];
    for (text, code, field) in cases {
        c.send(&text).await;
        let (got_code, got_field) = error_of(c.next().await);
        assert_eq!((got_code, got_field.as_deref()), (code, field), "{text}");
    }
    c.send(r#"{"type":"ping"}"#).await;
    assert_eq!(c.next().await, ServerFrame::Pong);
    c.subscribe(task).await;
    w.touch_task("Still alive").await;
    c.next_event().await;
}

#[tokio::test]
async fn presence_joins_changes_leaves_and_times_out() {
    let w = sqlite_world().await;
    let clock = Arc::new(ManualClock::default());
    let last_seen = Arc::new(MemoryRealtimeStore::new());
    let hub = w.hub().clock(clock.clone()).presence_store(last_seen.clone()).start().await.unwrap();
    let channel = Channel::Project(w.project.id);
    let mut ada = Client::connect(&hub, Actor::User(w.ada.id));
    ada.subscribe(channel).await;
    let snapshot = ada.next_where(|f| matches!(f, ServerFrame::Presence { .. })).await;
    let online = |user| PresenceEntry { user, status: PresenceStatus::Online };
    assert_eq!(
        snapshot,
        ServerFrame::Presence {
            channel,
            joined: vec![online(w.ada.id)],
            left: vec![],
            changed: vec![]
        }
    );

    let mut bob = Client::connect(&hub, Actor::User(w.bob.id));
    bob.subscribe(channel).await;
    let mut both = vec![online(w.ada.id), online(w.bob.id)];
    both.sort_by_key(|e| e.user);
    assert_eq!(
        bob.next_where(|f| matches!(f, ServerFrame::Presence { .. })).await,
        ServerFrame::Presence { channel, joined: both, left: vec![], changed: vec![] }
    );
    assert_eq!(
        ada.next().await,
        ServerFrame::Presence {
            channel,
            joined: vec![online(w.bob.id)],
            left: vec![],
            changed: vec![]
        }
    );

    bob.send(&format!(r#"{{"type":"presence","channel":"{channel}","status":"away"}}"#)).await;
    let away = PresenceEntry { user: w.bob.id, status: PresenceStatus::Away };
    assert_eq!(
        ada.next().await,
        ServerFrame::Presence { channel, joined: vec![], left: vec![], changed: vec![away] }
    );

    // A second session of Ada: no diff (she is already online); closing one of the two neither.
    let mut ada2 = Client::connect(&hub, Actor::User(w.ada.id));
    ada2.subscribe(channel).await;
    drop(ada2);
    bob.drain();

    // Bob goes silent; Ada keeps sending heartbeats. After the timeout the sweep cuts Bob off.
    clock.advance(Duration::from_secs(30));
    ada.session.heartbeat();
    clock.advance(Duration::from_secs(20));
    hub.sweep();
    assert_eq!(bob.drain().first(), Some(&Outgoing::Close(CloseCode::HEARTBEAT_TIMEOUT)));
    assert_eq!(
        ada.next_where(|f| matches!(f, ServerFrame::Presence { .. })).await,
        ServerFrame::Presence { channel, joined: vec![], left: vec![w.bob.id], changed: vec![] }
    );
    assert_eq!(hub.presence(channel), vec![online(w.ada.id)]);
    eventually("bob's last-seen to be recorded", async || {
        last_seen.last_seen(w.bob.id).await.unwrap().is_some()
    })
    .await;

    ada.send(&format!(r#"{{"type":"unsubscribe","channel":"{channel}"}}"#)).await;
    assert_eq!(ada.next().await, ServerFrame::Unsubscribed { channel, reason: None });
    assert!(hub.presence(channel).is_empty());
    assert_eq!(hub.stats().channels, 0);
}

#[tokio::test]
async fn cursors_and_typing_are_coalesced_per_user_and_skip_the_sender() {
    let w = sqlite_world().await;
    let hub = w.hub().start().await.unwrap();
    let channel = Channel::Task(w.task.id);
    let mut ada = Client::connect(&hub, Actor::User(w.ada.id));
    let mut bob = Client::connect(&hub, Actor::User(w.bob.id));
    ada.subscribe(channel).await;
    bob.subscribe(channel).await;
    ada.drain();
    bob.drain();
    for i in 0..50 {
        ada.send(&format!(
            r#"{{"type":"cursor","channel":"{channel}","position":{{"index":{i}}}}}"#
        ))
        .await;
        ada.send(&format!(
            r#"{{"type":"typing","channel":"{channel}","task_id":"{}"}}"#,
            w.task.id
        ))
        .await;
    }
    let frames = bob.drain_frames();
    assert_eq!(
        frames,
        vec![
            ServerFrame::Cursor {
                channel,
                user: w.ada.id,
                position: serde_json::json!({ "index": 49 })
            },
            ServerFrame::Typing { channel, user: w.ada.id, task_id: Some(w.task.id) },
        ]
    );
    assert!(ada.drain_frames().is_empty(), "the sender gets no echo");
    // A service account has no user: no presence, no cursors.
    let mut robot = Client::connect(&hub, Actor::System);
    robot.subscribe(channel).await;
    robot.send(&format!(r#"{{"type":"cursor","channel":"{channel}","position":1}}"#)).await;
    let f = robot.next_where(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert_eq!(error_of(f).0, ErrorCode::UserRequired);
}

#[tokio::test]
async fn dropping_the_hub_session_handle_ends_the_outbound_side() {
    let w = sqlite_world().await;
    let hub = w.hub().start().await.unwrap();
    let Client { session, mut out } = Client::connect(&hub, Actor::User(w.ada.id));
    drop(session);
    assert_eq!(out.recv().await, Some(Outgoing::Close(CloseCode::GOING_AWAY)));
    assert_eq!(out.recv().await, None);
    assert_eq!(hub.stats().sessions, 0);
    let mut c = Client::connect(&hub, Actor::User(w.ada.id));
    hub.shutdown().await;
    assert_eq!(c.out.recv().await, Some(Outgoing::Close(CloseCode::GOING_AWAY)));
}

#[tokio::test]
async fn a_replay_larger_than_the_queue_waits_for_the_reader_instead_of_cutting_it_off() {
    let w = sqlite_world().await;
    let hub = w
        .hub()
        .config(HubConfig { max_queue_bytes: 8 * 1024, ..fast_config() })
        .start()
        .await
        .unwrap();
    let channel = Channel::Task(w.task.id);
    let mut first = Client::connect(&hub, Actor::User(w.bob.id));
    first.subscribe(channel).await;
    w.touch_task("Start").await;
    let (_, last_seq, _) = first.next_event().await;
    drop(first);
    for i in 0..40 {
        w.touch_task(&format!("Missed {i} {}", "y".repeat(300))).await;
    }
    let latest = w.stores.events.latest_seq().await.unwrap();
    // The missed events must all come from the replay: had the tailer not read them yet, they
    // would arrive live during it, and its live buffer (over the tiny budget) would cut the
    // reader off (seen on a loaded machine).
    eventually("the tailer to reach the log's end", async || hub.stats().tail_seq >= latest).await;
    let mut again = Client::connect(&hub, Actor::User(w.bob.id));
    again
        .send(&format!(r#"{{"type":"subscribe","channel":"{channel}","last_seq":{last_seq}}}"#))
        .await;
    let mut got = Vec::new();
    while got.last() != Some(&latest) {
        got.push(again.next_event().await.1);
    }
    assert_eq!(got, ((last_seq + 1)..=latest).collect::<Vec<_>>());
    assert_eq!(hub.stats().sessions, 1, "the reader was never cut off");
}

//! Notifications derived from the event log: who gets what, never the actor, once per event,
//! pushed live on `user:{id}` and to sinks.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pm_core::event::{Actor, Origin};
use pm_core::model::*;
use pm_core::service::{CreateTask, NewUser};
use pm_realtime::Channel;
use pm_realtime::notification::{
    Notification, NotificationConsumer, NotificationKind, NotificationSink,
};
use pm_realtime::protocol::ServerFrame;
use pm_realtime::store::{self, NotificationQuery};

use crate::support::*;

#[derive(Default)]
struct Collect(Mutex<Vec<Notification>>);

#[async_trait]
impl NotificationSink for Collect {
    async fn deliver(&self, n: &Notification) -> pm_realtime::Result<()> {
        self.0.lock().unwrap().push(n.clone());
        Ok(())
    }
}

#[tokio::test]
async fn notifications_are_derived_from_the_log() {
    let w = sqlite_world().await;
    let dir = tempfile::tempdir().unwrap();
    let rt =
        store::open(&format!("sqlite://{}", dir.path().join("rt.db").display())).await.unwrap();
    rt.admin.migrate().await.unwrap();
    let hub = w.hub().start().await.unwrap();
    let sink = Arc::new(Collect::default());
    let consumer = NotificationConsumer::new(w.stores.clone(), rt.notifications.clone())
        .with_hub(hub.clone())
        .with_sink(sink.clone());
    // Start after the world's setup events.
    consumer.catch_up().await.unwrap();

    let (pm, ada, bob) = (&w.pm, w.ada(), Origin::user(w.bob.id));
    let carol = pm
        .create_user(
            &Origin::system(),
            NewUser {
                email: Email::parse("carol@example.com").unwrap(),
                display_name: Name::parse("Carol").unwrap(),
            },
        )
        .await
        .unwrap();
    pm.put_member(&ada, w.org.id, carol.id, MemberRole::Member).await.unwrap();
    let mut bob_live = Client::connect(&hub, Actor::User(w.bob.id));
    bob_live.subscribe(Channel::User(w.bob.id)).await;

    // Assigned on creation (Ada assigning herself is no news to her).
    let mut input = CreateTask::new(w.project.id, TaskTitle::parse("Fix login").unwrap());
    input.assignees = BTreeSet::from([w.bob.id, w.ada.id]);
    let task = pm.create_task(&ada, input).await.unwrap();
    // Bob watches it; Carol is assigned later.
    pm.add_watcher(&bob, task.id, w.bob.id).await.unwrap();
    let t = w.stores.tasks.get_task(task.id).await.unwrap();
    let patch = TaskPatch {
        assignees: Some(BTreeSet::from([w.bob.id, w.ada.id, carol.id])),
        ..TaskPatch::default()
    };
    pm.update_task(&ada, task.id, t.version, patch).await.unwrap();
    // Mentions by local part and by id: mentioned beats commented for Bob.
    let body = format!("ping @carol and @{} — and @nobody", w.bob.id);
    pm.add_comment(&ada, task.id, Markdown::parse(&body).unwrap()).await.unwrap();
    // A plain comment: watchers hear of it.
    pm.add_comment(&ada, task.id, Markdown::parse("plain").unwrap()).await.unwrap();
    // Bob's own comment notifies nobody (he is the only watcher).
    pm.add_comment(&bob, task.id, Markdown::parse("on it @bob").unwrap()).await.unwrap();
    // A state change: watchers and assignees (not Ada, who made it).
    let states = pm.list_states(&ada, w.project.id).await.unwrap();
    let t = w.stores.tasks.get_task(task.id).await.unwrap();
    let done = states.iter().find(|s| s.id != t.state_id).unwrap();
    let patch = TaskPatch { state_id: Some(done.id), ..TaskPatch::default() };
    pm.update_task(&ada, task.id, t.version, patch).await.unwrap();

    let created = consumer.catch_up().await.unwrap();
    let all = |user| {
        let rt = rt.clone();
        async move {
            let page = rt
                .notifications
                .list_notifications(user, &NotificationQuery::default())
                .await
                .unwrap();
            page.items.into_iter().rev().map(|n| n.kind).collect::<Vec<_>>()
        }
    };
    use NotificationKind::*;
    assert_eq!(all(w.bob.id).await, vec![Assigned, Mentioned, Commented, StateChanged]);
    assert_eq!(all(carol.id).await, vec![Assigned, Mentioned, StateChanged]);
    assert_eq!(all(w.ada.id).await, vec![]);
    assert_eq!(created, 7);
    assert_eq!(sink.0.lock().unwrap().len(), 7);
    let page = rt.notifications.list_notifications(w.bob.id, &NotificationQuery::default()).await;
    let first = page.unwrap().items.pop().unwrap();
    assert_eq!(first.summary, format!("Ada assigned you {} \"Fix login\"", task.reference));
    assert_eq!(first.task_id, Some(task.id));

    // Live on Bob's channel, in order.
    let mut live = Vec::new();
    for _ in 0..4 {
        match bob_live.next_where(|f| matches!(f, ServerFrame::Notification { .. })).await {
            ServerFrame::Notification { notification, .. } => live.push(notification.kind),
            _ => unreachable!(),
        }
    }
    assert_eq!(live, vec![Assigned, Mentioned, Commented, StateChanged]);

    // Nothing new on a second run; re-deriving an event stores nothing twice.
    assert_eq!(consumer.catch_up().await.unwrap(), 0);
    let events = w.stores.events.read_after(0, 1000).await.unwrap();
    for event in &events {
        for n in consumer.derive(event).await.unwrap() {
            assert!(!rt.notifications.create_notification(&n).await.unwrap(), "{n:?}");
        }
    }
    assert_eq!(rt.notifications.unread_count(w.bob.id).await.unwrap(), 4);
}

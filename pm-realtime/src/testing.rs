//! The store conformance suite (feature `testing`).
//!
//! One suite for every backend: the built-in SQLite and PostgreSQL adapters run it in their
//! tests, and a host that writes its own adapter runs the same functions against theirs. Checks
//! use fresh user ids, so they may share a database; give [`run_all`] a freshly migrated one.
//! Checks panic with a message on failure, like any test.

use pm_core::event::Actor;
use pm_core::id::{EventId, OrgId, TaskId, UserId};

use crate::store::StoredDoc;
use time::OffsetDateTime;

use crate::Error;
use crate::notification::{Notification, NotificationId, NotificationKind};
use crate::store::{NotificationQuery, RealtimeStores};

/// Runs every check against `stores`.
pub async fn run_all(stores: &RealtimeStores) {
    last_seen_only_moves_forward(stores).await;
    last_seen_batches_follow_the_same_rule(stores).await;
    notifications_are_idempotent_per_event(stores).await;
    notifications_page_newest_first(stores).await;
    read_state_and_unread_count(stores).await;
    users_only_touch_their_own(stores).await;
    doc_log_appends_loads_and_compacts(stores).await;
    doc_init_and_claims_happen_once(stores).await;
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000 + secs).expect("valid timestamp")
}

fn notification(user: UserId, seq: i64) -> Notification {
    Notification {
        id: NotificationId::new(),
        user_id: user,
        kind: NotificationKind::Mentioned,
        event_id: EventId::new(),
        seq,
        actor: Actor::User(UserId::new()),
        org_id: Some(OrgId::new()),
        project_id: None,
        task_id: Some(TaskId::new()),
        summary: format!("Ada mentioned you ({seq}) — «ünïcödé»"),
        created_at: at(seq),
        read_at: None,
    }
}

/// Last-seen times are stored per user and never move backwards.
pub async fn last_seen_only_moves_forward(s: &RealtimeStores) {
    let user = UserId::new();
    assert_eq!(s.presence.last_seen(user).await.unwrap(), None);
    s.presence.touch_last_seen(user, at(10)).await.unwrap();
    assert_eq!(s.presence.last_seen(user).await.unwrap(), Some(at(10)));
    s.presence.touch_last_seen(user, at(5)).await.unwrap();
    assert_eq!(s.presence.last_seen(user).await.unwrap(), Some(at(10)), "must not move back");
    s.presence.touch_last_seen(user, at(20)).await.unwrap();
    assert_eq!(s.presence.last_seen(user).await.unwrap(), Some(at(20)));
}

/// A batch of last-seen times (with a user twice, and one already seen later) follows the
/// per-user rule: the latest time wins, nothing moves backwards; an empty batch is fine.
pub async fn last_seen_batches_follow_the_same_rule(s: &RealtimeStores) {
    let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
    s.presence.touch_last_seen(c, at(50)).await.unwrap();
    s.presence.touch_last_seen_many(&[]).await.unwrap();
    s.presence
        .touch_last_seen_many(&[(a, at(10)), (b, at(7)), (a, at(30)), (a, at(20)), (c, at(40))])
        .await
        .unwrap();
    assert_eq!(s.presence.last_seen(a).await.unwrap(), Some(at(30)), "the latest of the batch");
    assert_eq!(s.presence.last_seen(b).await.unwrap(), Some(at(7)));
    assert_eq!(s.presence.last_seen(c).await.unwrap(), Some(at(50)), "must not move back");
    s.presence.touch_last_seen_many(&[(b, at(60)), (c, at(70))]).await.unwrap();
    assert_eq!(s.presence.last_seen(b).await.unwrap(), Some(at(60)));
    assert_eq!(s.presence.last_seen(c).await.unwrap(), Some(at(70)));
}

/// A second notification for the same user and event is not stored; the first round-trips
/// exactly.
pub async fn notifications_are_idempotent_per_event(s: &RealtimeStores) {
    let user = UserId::new();
    let n = notification(user, 1);
    assert!(s.notifications.create_notification(&n).await.unwrap());
    let again = Notification { id: NotificationId::new(), ..n.clone() };
    assert!(!s.notifications.create_notification(&again).await.unwrap());
    let other_user =
        Notification { id: NotificationId::new(), user_id: UserId::new(), ..n.clone() };
    assert!(s.notifications.create_notification(&other_user).await.unwrap());
    let page =
        s.notifications.list_notifications(user, &NotificationQuery::default()).await.unwrap();
    assert_eq!(page.items, vec![n]);
    assert_eq!(page.next_cursor, None);
}

/// Lists are newest first with a keyset cursor that neither repeats nor skips.
pub async fn notifications_page_newest_first(s: &RealtimeStores) {
    let user = UserId::new();
    let mut made = Vec::new();
    for seq in 0..7 {
        let n = notification(user, seq);
        s.notifications.create_notification(&n).await.unwrap();
        made.push(n.id);
    }
    made.reverse();
    let mut seen = Vec::new();
    let mut q = NotificationQuery { limit: 3, ..NotificationQuery::default() };
    loop {
        let page = s.notifications.list_notifications(user, &q).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|n| n.id));
        match page.next_cursor {
            Some(c) => q.before = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, made);
    let bad = NotificationQuery { limit: 0, ..NotificationQuery::default() };
    assert!(matches!(
        s.notifications.list_notifications(user, &bad).await,
        Err(Error::Invalid { field, .. }) if field == "limit"
    ));
}

/// Read/unread marking, `unread_only` listing and the unread count agree.
pub async fn read_state_and_unread_count(s: &RealtimeStores) {
    let user = UserId::new();
    let a = notification(user, 1);
    let b = notification(user, 2);
    let c = notification(user, 3);
    for n in [&a, &b, &c] {
        s.notifications.create_notification(n).await.unwrap();
    }
    assert_eq!(s.notifications.unread_count(user).await.unwrap(), 3);
    let read = s.notifications.set_read(user, b.id, Some(at(100))).await.unwrap();
    assert_eq!(read.read_at, Some(at(100)));
    assert_eq!(s.notifications.unread_count(user).await.unwrap(), 2);
    let unread = NotificationQuery { unread_only: true, ..NotificationQuery::default() };
    let page = s.notifications.list_notifications(user, &unread).await.unwrap();
    assert_eq!(page.items.iter().map(|n| n.id).collect::<Vec<_>>(), vec![c.id, a.id]);
    let again = s.notifications.set_read(user, b.id, None).await.unwrap();
    assert_eq!(again.read_at, None);
    assert_eq!(s.notifications.unread_count(user).await.unwrap(), 3);
    assert_eq!(s.notifications.mark_all_read(user, at(200)).await.unwrap(), 3);
    assert_eq!(s.notifications.unread_count(user).await.unwrap(), 0);
    assert_eq!(s.notifications.mark_all_read(user, at(300)).await.unwrap(), 0);
}

/// Another user's notification is `NotFound`, and unknown ids too.
pub async fn users_only_touch_their_own(s: &RealtimeStores) {
    let owner = UserId::new();
    let n = notification(owner, 1);
    s.notifications.create_notification(&n).await.unwrap();
    let intruder = UserId::new();
    assert!(matches!(
        s.notifications.set_read(intruder, n.id, Some(at(1))).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.notifications.set_read(owner, NotificationId::new(), Some(at(1))).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(s.notifications.unread_count(intruder).await.unwrap(), 0);
    assert_eq!(s.notifications.unread_count(owner).await.unwrap(), 1);
}

/// A document's updates are numbered from 1 per document, load in order after the snapshot, and
/// compaction replaces the covered updates by the snapshot (never moving backwards).
pub async fn doc_log_appends_loads_and_compacts(s: &RealtimeStores) {
    let task = TaskId::new();
    let other = TaskId::new();
    assert_eq!(s.docs.load_doc(task).await.unwrap(), StoredDoc::default());
    assert!(s.docs.load_doc(task).await.unwrap().is_empty());
    for (i, bytes) in [b"one".as_slice(), b"two", b"\x00three\xff"].into_iter().enumerate() {
        let seq = s.docs.append_doc_update(task, bytes, at(i as i64)).await.unwrap();
        assert_eq!(seq, i as i64 + 1);
    }
    assert_eq!(s.docs.append_doc_update(other, b"elsewhere", at(0)).await.unwrap(), 1);
    let stored = s.docs.load_doc(task).await.unwrap();
    assert_eq!(
        stored,
        StoredDoc {
            snapshot: None,
            snapshot_seq: 0,
            updates: vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"\x00three\xff".to_vec())
            ],
        }
    );
    assert_eq!(stored.last_seq(), 3);

    assert!(s.docs.compact_doc(task, b"snap-2", 2).await.unwrap());
    let stored = s.docs.load_doc(task).await.unwrap();
    assert_eq!(stored.snapshot.as_deref(), Some(b"snap-2".as_slice()));
    assert_eq!(stored.snapshot_seq, 2);
    assert_eq!(stored.updates, vec![(3, b"\x00three\xff".to_vec())]);
    assert_eq!(stored.last_seq(), 3);
    assert!(!stored.is_empty());

    // An older or equal snapshot is refused; numbering continues after compaction.
    assert!(!s.docs.compact_doc(task, b"stale", 2).await.unwrap());
    assert!(!s.docs.compact_doc(task, b"stale", 1).await.unwrap());
    assert_eq!(s.docs.append_doc_update(task, b"four", at(4)).await.unwrap(), 4);
    assert!(s.docs.compact_doc(task, b"snap-4", 4).await.unwrap());
    let stored = s.docs.load_doc(task).await.unwrap();
    assert_eq!((stored.snapshot.as_deref(), stored.snapshot_seq), (Some(b"snap-4".as_slice()), 4));
    assert!(stored.updates.is_empty());
    assert_eq!(stored.last_seq(), 4);
    // A snapshot cannot claim updates that do not exist.
    assert!(!s.docs.compact_doc(task, b"future", 9).await.unwrap());
    // Other documents are untouched.
    assert_eq!(s.docs.load_doc(other).await.unwrap().updates, vec![(1, b"elsewhere".to_vec())]);
}

/// A document is initialised once; an external change is claimed once per version and never
/// when its text is one the document knows (its seed, a recorded write-back, the last claim).
pub async fn doc_init_and_claims_happen_once(s: &RealtimeStores) {
    let task = TaskId::new();
    let claim = async |version: i64, digest: &str, secs: i64| {
        s.docs.claim_external_change(task, version, digest, at(secs)).await.unwrap()
    };
    // A claim may come before the document exists.
    assert!(claim(3, "d3", 0).await);
    assert!(!claim(3, "d3", 0).await, "claimed twice");
    assert!(!claim(2, "d2", 0).await, "older version");
    assert!(s.docs.init_doc(task, b"seed", "seeded", at(0)).await.unwrap());
    assert!(!s.docs.init_doc(task, b"again", "again", at(1)).await.unwrap());
    let stored = s.docs.load_doc(task).await.unwrap();
    assert_eq!(stored.updates, vec![(1, b"seed".to_vec())]);
    assert_eq!(s.docs.append_doc_update(task, b"next", at(2)).await.unwrap(), 2);

    s.docs.record_write_back(task, "ours", at(10), at(0)).await.unwrap();
    assert!(!claim(4, "ours", 11).await, "a write-back");
    // The seed text at a newer task version (another field changed, or another instance's edits
    // await write-back) is not a change.
    assert!(!claim(4, "seeded", 11).await, "the seed text");
    assert!(claim(4, "theirs", 20).await);
    assert!(!claim(5, "theirs", 21).await, "the claimed text is known");
    // A claim forgets older texts: changing the description back to one is a change.
    assert!(claim(5, "seeded", 30).await, "a text known before the last claim");
    // Old records are pruned by later ones.
    s.docs.record_write_back(task, "ours", at(40), at(0)).await.unwrap();
    s.docs.record_write_back(task, "newer", at(100), at(35)).await.unwrap();
    assert!(claim(6, "seeded", 101).await, "pruned record");
    assert!(!claim(6, "newer", 102).await, "version already claimed");

    let fresh = TaskId::new();
    assert!(s.docs.init_doc(fresh, b"seed", "s", at(0)).await.unwrap());
    assert!(!s.docs.init_doc(fresh, b"seed", "s", at(0)).await.unwrap());
    assert!(!s.docs.claim_external_change(fresh, 1, "s", at(1)).await.unwrap(), "its seed");
    assert!(s.docs.claim_external_change(fresh, 1, "other", at(1)).await.unwrap());
}

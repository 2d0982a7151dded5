//! Cross-crate tests of the `pm` facade.

use std::sync::Arc;
use std::time::Duration;

use pm::core::authz::AllowAll;
use pm::core::blob::FsBlobStore;
use pm::core::event::{EventKind, Origin, Tailer};
use pm::core::model::{Email, Name, ProjectKey, Slug, TaskTitle};
use pm::core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm::core::{Pm, store};

/// A second handle on the same database (as a second process would have) sees the first one's
/// events through its tailer even though no in-process wake-up reaches it: wake-ups are hints, the
/// poll fallback and the log are the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_handle_tails_events_without_wakeups() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let writer = store::open(&url).await.unwrap();
    writer.admin.migrate().await.unwrap();
    let reader = store::open(&url).await.unwrap();
    let mut tail = Tailer::new(reader.events.clone(), reader.events.latest_seq().await.unwrap());
    tail.poll = Duration::from_millis(50);

    let pm =
        Pm::new(writer, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.path().join("blobs"))));
    let user = pm
        .create_user(
            &Origin::system(),
            NewUser {
                email: Email::parse("a@example.com").unwrap(),
                display_name: Name::parse("A").unwrap(),
            },
        )
        .await
        .unwrap();
    let me = Origin::user(user.id);
    let org = pm
        .create_org(
            &me,
            NewOrg { slug: Slug::parse("a").unwrap(), name: Name::parse("A").unwrap() },
        )
        .await
        .unwrap();
    let p = pm
        .create_project(
            &me,
            org.id,
            NewProject {
                key: ProjectKey::parse("AB").unwrap(),
                name: Name::parse("AB").unwrap(),
                description: Default::default(),
                lead: None,
            },
        )
        .await
        .unwrap();
    let task = pm
        .create_task(&me, CreateTask::new(p.id, TaskTitle::parse("seen elsewhere").unwrap()))
        .await
        .unwrap();

    let mut kinds = Vec::new();
    while !kinds.contains(&EventKind::TaskCreated) {
        let batch = tokio::time::timeout(Duration::from_secs(10), tail.next_batch(100))
            .await
            .expect("tailer polled")
            .unwrap();
        kinds.extend(batch.iter().map(|e| e.kind));
        if let Some(e) = batch.iter().find(|e| e.kind == EventKind::TaskCreated) {
            assert_eq!(e.task_id, Some(task.id));
        }
    }
    assert_eq!(kinds[..3], [EventKind::UserCreated, EventKind::OrgCreated, EventKind::MemberAdded]);
}

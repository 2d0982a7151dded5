//! Embedding pm in a host application: open the embedded SQLite store, create a user, an
//! organization, a project and a task through the services, then follow the event log the way a
//! consumer (notifications, webhooks, realtime) would.
//!
//! Run: `cargo run --example embedded` (writes `target/embedded-example.db`; delete it to start
//! over).

use std::sync::Arc;

use pm::core::authz::AllowAll;
use pm::core::blob::FsBlobStore;
use pm::core::event::{Origin, Tailer};
use pm::core::model::{Email, Markdown, Name, Priority, ProjectKey, Slug, TaskTitle};
use pm::core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm::core::{Pm, store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let db = concat!(env!("CARGO_MANIFEST_DIR"), "/target/embedded-example.db");
    let _ = std::fs::remove_file(db);
    let stores = store::open(&format!("sqlite://{db}")).await?;
    stores.admin.migrate().await?;
    let pm = Pm::new(
        stores.clone(),
        Arc::new(AllowAll),
        Arc::new(FsBlobStore::new(std::env::temp_dir().join("pm-example-blobs"))),
    );

    // Start following the log before writing, as a durable consumer would from its saved cursor.
    let consumer = "example-consumer";
    let mut tail = Tailer::new(stores.events.clone(), stores.events.load_cursor(consumer).await?);

    let ada = pm
        .create_user(
            &Origin::system(),
            NewUser { email: Email::parse("ada@example.com")?, display_name: Name::parse("Ada")? },
        )
        .await?;
    let me = Origin::user(ada.id);
    let org = pm
        .create_org(&me, NewOrg { slug: Slug::parse("acme")?, name: Name::parse("Acme")? })
        .await?;
    let project = pm
        .create_project(
            &me,
            org.id,
            NewProject {
                key: ProjectKey::parse("PM")?,
                name: Name::parse("Platform")?,
                description: Markdown::default(),
                lead: Some(ada.id),
            },
        )
        .await?;
    let mut input = CreateTask::new(project.id, TaskTitle::parse("Ship the first release")?);
    input.priority = Priority::High;
    input.assignees = [ada.id].into();
    let task = pm.create_task(&me, input).await?;
    println!("created {} “{}”", task.reference, task.title);

    // Bad input is refused with the field named, and nothing is written.
    if let Err(e) = TaskTitle::parse("   ") {
        println!("rejected: {e}");
    }

    let events = tail.next_batch(100).await?;
    for e in &events {
        println!("#{:<3} {:<18} by {:?}", e.seq, e.kind.as_str(), e.actor);
    }
    stores.events.save_cursor(consumer, tail.position()).await?;
    Ok(())
}

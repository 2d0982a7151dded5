//! Shared fixtures: a pm-core store with a user, an organization, a project and a task; a hub
//! over it; helpers to read frames.

use std::sync::Arc;
use std::time::Duration;

use pm_core::authz::{AllowAll, Authorizer};
use pm_core::blob::FsBlobStore;
use pm_core::event::{Actor, Origin};
use pm_core::model::*;
use pm_core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm_core::store::Stores;
use pm_core::{Pm, model};
use pm_realtime::hub::{Hub, HubBuilder, HubConfig};
use pm_realtime::protocol::ServerFrame;
use pm_realtime::session::{Outbound, Outgoing};
use pm_realtime::{Channel, SessionHandle};

/// Says a test was skipped. Written to stderr directly so the harness's capture keeps it.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A world to test in. Keep it alive for the test's duration (it owns the temp dirs).
pub struct World {
    pub pm: Pm,
    pub stores: Stores,
    pub ada: User,
    pub bob: User,
    pub org: Organization,
    pub project: Project,
    pub task: Task,
    _dirs: Vec<tempfile::TempDir>,
}

impl World {
    pub fn ada(&self) -> Origin {
        Origin::user(self.ada.id)
    }

    pub fn hub(&self) -> HubBuilder {
        self.hub_with(Arc::new(AllowAll))
    }

    pub fn hub_with(&self, authz: Arc<dyn Authorizer>) -> HubBuilder {
        Hub::builder(self.stores.clone(), authz).config(fast_config())
    }

    /// Renames the world's task (one `task.updated` event); returns the new task.
    pub async fn touch_task(&self, title: &str) -> Task {
        let current = self.stores.tasks.get_task(self.task.id).await.unwrap();
        let patch =
            TaskPatch { title: Some(TaskTitle::parse(title).unwrap()), ..TaskPatch::default() };
        self.pm.update_task(&self.ada(), self.task.id, current.version, patch).await.unwrap()
    }

    /// A new task in the world's project.
    pub async fn new_task(&self, title: &str) -> Task {
        let input = CreateTask::new(self.project.id, TaskTitle::parse(title).unwrap());
        self.pm.create_task(&self.ada(), input).await.unwrap()
    }
}

/// A hub configuration for tests: the background sweep is effectively off (tests call
/// `hub.sweep()` with a manual clock).
pub fn fast_config() -> HubConfig {
    HubConfig { sweep_interval: Duration::from_secs(3600), ..HubConfig::default() }
}

/// A world on a fresh SQLite file.
pub async fn sqlite_world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    world(stores, vec![dir]).await
}

/// Shows the library's log in a failing test's output: warnings and errors by default (the
/// collab actor only logs a failed store call, it cannot fail the test), `RUST_LOG` to widen.
/// Installed once per test binary; every test calls it through [`world`].
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

/// Populates a world in `stores` (migrated).
pub async fn world(stores: Stores, mut dirs: Vec<tempfile::TempDir>) -> World {
    init_tracing();
    let blobs = tempfile::tempdir().unwrap();
    let pm = Pm::new(stores.clone(), Arc::new(AllowAll), Arc::new(FsBlobStore::new(blobs.path())));
    dirs.push(blobs);
    let sys = Origin::system();
    let user = |email: &str, name: &str| NewUser {
        email: Email::parse(email).unwrap(),
        display_name: Name::parse(name).unwrap(),
    };
    let ada = pm.create_user(&sys, user("ada@example.com", "Ada")).await.unwrap();
    let bob = pm.create_user(&sys, user("bob@example.com", "Bob")).await.unwrap();
    let me = Origin::user(ada.id);
    let org = pm
        .create_org(
            &me,
            NewOrg { slug: Slug::parse("acme").unwrap(), name: Name::parse("Acme").unwrap() },
        )
        .await
        .unwrap();
    pm.put_member(&me, org.id, bob.id, MemberRole::Member).await.unwrap();
    let project = pm
        .create_project(
            &me,
            org.id,
            NewProject {
                key: ProjectKey::parse("pm").unwrap(),
                name: Name::parse("Platform").unwrap(),
                description: Markdown::default(),
                lead: Some(ada.id),
            },
        )
        .await
        .unwrap();
    let task = pm
        .create_task(&me, CreateTask::new(project.id, TaskTitle::parse("First").unwrap()))
        .await
        .unwrap();
    let _ = model::now();
    World { pm, stores, ada, bob, org, project, task, _dirs: dirs }
}

/// A connected client: its session handle and outbound side.
pub struct Client {
    pub session: SessionHandle,
    pub out: Outbound,
}

impl Client {
    pub fn connect(hub: &Hub, actor: Actor) -> Self {
        let (session, out) = hub.connect(actor);
        Self { session, out }
    }

    pub async fn send(&self, text: &str) {
        self.session.receive(text).await;
    }

    pub async fn subscribe(&mut self, channel: Channel) -> i64 {
        self.send(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#)).await;
        match self.next_where(|f| matches!(f, ServerFrame::Subscribed { .. })).await {
            ServerFrame::Subscribed { seq, .. } => seq,
            _ => unreachable!(),
        }
    }

    /// The next frame (fails the test after 5 s, or on a close).
    pub async fn next(&mut self) -> ServerFrame {
        match tokio::time::timeout(Duration::from_secs(5), self.out.recv()).await {
            Ok(Some(Outgoing::Frame(text))) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("server frame {text} does not parse: {e}")),
            Ok(other) => panic!("expected a frame, got {other:?}"),
            Err(_) => panic!("no frame within 5 s"),
        }
    }

    /// The next frame matching `pred`, skipping others.
    pub async fn next_where(&mut self, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.next().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// The next event frame's (channel, seq), skipping other frames.
    pub async fn next_event(&mut self) -> (Channel, i64, pm_core::event::Event) {
        match self.next_where(|f| matches!(f, ServerFrame::Event { .. })).await {
            ServerFrame::Event { channel, seq, event } => (channel, seq, *event),
            _ => unreachable!(),
        }
    }

    /// Everything queued right now.
    pub fn drain(&mut self) -> Vec<Outgoing> {
        std::iter::from_fn(|| self.out.try_recv()).collect()
    }

    /// Frames queued right now, parsed.
    pub fn drain_frames(&mut self) -> Vec<ServerFrame> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Outgoing::Frame(t) => serde_json::from_str(&t).ok(),
                Outgoing::Close(_) => None,
            })
            .collect()
    }
}

/// Waits (up to 5 s) until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The services over a real SQLite file: validation naming fields, authorization, attachments.

use std::sync::Arc;

use async_trait::async_trait;
use pm_core::authz::{Action, AllowAll, Authorizer, Decision, Resource, ResourceKind};
use pm_core::blob::FsBlobStore;
use pm_core::event::{Actor, Origin};
use pm_core::model::*;
use pm_core::service::{CreateTask, NewOrg, NewProject, NewUser};
use pm_core::{Error, Pm};

use crate::backends::sqlite;

struct Setup {
    pm: Pm,
    me: Origin,
    org: Organization,
    project: Project,
    _dir: tempfile::TempDir,
    _blobs: tempfile::TempDir,
}

async fn setup(authz: Arc<dyn Authorizer>) -> Setup {
    let (stores, dir) = sqlite().await;
    let blobs = tempfile::tempdir().unwrap();
    let pm = Pm::new(stores, authz, Arc::new(FsBlobStore::new(blobs.path())));
    let sys = Origin::system();
    let user = pm
        .create_user(
            &sys,
            NewUser {
                email: Email::parse("ada@example.com").unwrap(),
                display_name: Name::parse("Ada").unwrap(),
            },
        )
        .await
        .unwrap();
    let me = Origin::user(user.id);
    let org = pm
        .create_org(
            &me,
            NewOrg { slug: Slug::parse("acme").unwrap(), name: Name::parse("Acme").unwrap() },
        )
        .await
        .unwrap();
    let project = pm
        .create_project(
            &me,
            org.id,
            NewProject {
                key: ProjectKey::parse("pm").unwrap(),
                name: Name::parse("Platform").unwrap(),
                description: Markdown::default(),
                lead: Some(user.id),
            },
        )
        .await
        .unwrap();
    Setup { pm, me, org, project, _dir: dir, _blobs: blobs }
}

fn invalid_field(e: Error) -> String {
    match e {
        Error::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn title(s: &str) -> TaskTitle {
    TaskTitle::parse(s).unwrap()
}

#[tokio::test]
async fn tasks_are_validated_against_their_project() {
    let s = setup(Arc::new(AllowAll)).await;
    let (pm, me) = (&s.pm, &s.me);
    let task =
        pm.create_task(me, CreateTask::new(s.project.id, title("Default state"))).await.unwrap();
    let states = pm.list_states(me, s.project.id).await.unwrap();
    let todo = states.iter().find(|st| st.category == StateCategory::Unstarted).unwrap();
    assert_eq!(task.state_id, todo.id, "new tasks start in the first unstarted state");
    assert_eq!(task.reference, "PM-1");

    let other = pm
        .create_project(
            me,
            s.org.id,
            NewProject {
                key: ProjectKey::parse("OPS").unwrap(),
                name: Name::parse("Ops").unwrap(),
                description: Markdown::default(),
                lead: None,
            },
        )
        .await
        .unwrap();
    let foreign_state = pm.list_states(me, other.id).await.unwrap()[0].id;
    let mut bad = CreateTask::new(s.project.id, title("x"));
    bad.state_id = Some(foreign_state);
    assert_eq!(invalid_field(pm.create_task(me, bad).await.unwrap_err()), "state_id");

    let stranger = pm
        .create_user(
            &Origin::system(),
            NewUser {
                email: Email::parse("eve@example.com").unwrap(),
                display_name: Name::parse("Eve").unwrap(),
            },
        )
        .await
        .unwrap();
    let mut bad = CreateTask::new(s.project.id, title("x"));
    bad.assignees = [stranger.id].into();
    assert_eq!(invalid_field(pm.create_task(me, bad).await.unwrap_err()), "assignees");

    let field = pm
        .create_field(
            me,
            s.project.id,
            Name::parse("Severity").unwrap(),
            FieldType::Select { options: vec!["low".into(), "high".into()] },
        )
        .await
        .unwrap();
    let mut bad = CreateTask::new(s.project.id, title("x"));
    bad.custom_fields.insert(field.id, FieldValue::Select("medium".into()));
    assert_eq!(invalid_field(pm.create_task(me, bad).await.unwrap_err()), "custom_fields.Severity");
    let mut good = CreateTask::new(s.project.id, title("x"));
    good.custom_fields.insert(field.id, FieldValue::Select("high".into()));
    pm.create_task(me, good).await.unwrap();

    let mut bad = CreateTask::new(s.project.id, title("x"));
    bad.start_date = Some(time::macros::date!(2030 - 02 - 02));
    bad.due_date = Some(time::macros::date!(2030 - 01 - 01));
    assert_eq!(invalid_field(pm.create_task(me, bad).await.unwrap_err()), "start_date");

    // Subtasks: same project only, no cycles.
    let child = {
        let mut c = CreateTask::new(s.project.id, title("child"));
        c.parent_id = Some(task.id);
        pm.create_task(me, c).await.unwrap()
    };
    let cycle = TaskPatch { parent_id: Some(Some(child.id)), ..Default::default() };
    assert_eq!(
        invalid_field(pm.update_task(me, task.id, task.version, cycle).await.unwrap_err()),
        "parent_id"
    );
    let mut cross = CreateTask::new(other.id, title("cross"));
    cross.parent_id = Some(task.id);
    assert_eq!(invalid_field(pm.create_task(me, cross).await.unwrap_err()), "parent_id");

    // Transition through update, with a stale version refused.
    let done = states.iter().find(|st| st.category == StateCategory::Completed).unwrap();
    let moved = pm
        .update_task(me, task.id, 1, TaskPatch { state_id: Some(done.id), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(moved.state_id, done.id);
    assert!(matches!(
        pm.update_task(me, task.id, 1, TaskPatch::default()).await,
        Err(Error::Conflict(_))
    ));
}

#[tokio::test]
async fn attachments_roundtrip_through_the_blob_store() {
    let s = setup(Arc::new(AllowAll)).await;
    let (pm, me) = (&s.pm, &s.me);
    let task = pm.create_task(me, CreateTask::new(s.project.id, title("photo"))).await.unwrap();
    let a =
        pm.add_attachment(me, task.id, "site.jpg", "image/jpeg", b"\xff\xd8jpeg").await.unwrap();
    assert_eq!(a.size, 6);
    assert_eq!(a.sha256.len(), 64);
    let (meta, bytes) = pm.get_attachment(me, task.id, a.id).await.unwrap();
    assert_eq!((meta, bytes.as_slice()), (a.clone(), &b"\xff\xd8jpeg"[..]));
    assert_eq!(
        invalid_field(
            pm.add_attachment(me, task.id, "../etc/passwd", "text/plain", b"").await.unwrap_err()
        ),
        "file_name"
    );
    assert_eq!(
        invalid_field(
            pm.add_attachment(me, task.id, "a.txt", "not a mime", b"").await.unwrap_err()
        ),
        "content_type"
    );
    pm.delete_attachment(me, task.id, a.id).await.unwrap();
    assert!(matches!(pm.get_attachment(me, task.id, a.id).await, Err(Error::NotFound { .. })));

    let c = pm
        .check_in(me, task.id, GeoPoint::parse(48.85, 2.35, 12.0).unwrap(), "on site")
        .await
        .unwrap();
    assert_eq!(pm.list_check_ins(me, task.id).await.unwrap(), vec![c]);
    assert_eq!(invalid_field(GeoPoint::parse(91.0, 0.0, 1.0).unwrap_err()), "lat");
    assert_eq!(
        invalid_field(
            pm.log_time(me, task.id, 0, time::macros::date!(2030 - 01 - 01), "").await.unwrap_err()
        ),
        "minutes"
    );
}

/// Allows everything except updating tasks and reading anything in a "secret" project.
struct Restrictive {
    secret: std::sync::Mutex<Option<pm_core::id::ProjectId>>,
}

#[async_trait]
impl Authorizer for Restrictive {
    async fn check(
        &self,
        _actor: &Actor,
        action: Action,
        resource: &Resource,
    ) -> pm_core::Result<Decision> {
        if resource.kind == ResourceKind::Task && action == Action::Update {
            return Ok(Decision::Deny("task updates are frozen".into()));
        }
        let secret = *self.secret.lock().unwrap();
        if action == Action::Read && resource.project_id.is_some() && resource.project_id == secret
        {
            return Ok(Decision::Deny("secret".into()));
        }
        Ok(Decision::Allow)
    }
}

#[tokio::test]
async fn services_ask_the_authorizer() {
    let authz = Arc::new(Restrictive { secret: std::sync::Mutex::new(None) });
    let s = setup(authz.clone()).await;
    let (pm, me) = (&s.pm, &s.me);
    let task = pm.create_task(me, CreateTask::new(s.project.id, title("frozen"))).await.unwrap();
    let err = pm
        .update_task(
            me,
            task.id,
            1,
            TaskPatch { priority: Some(Priority::High), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(ref r) if r == "task updates are frozen"), "{err:?}");
    assert_eq!(pm.get_task(me, task.id).await.unwrap().version, 1, "nothing written");

    *authz.secret.lock().unwrap() = Some(s.project.id);
    assert!(
        matches!(pm.get_task(me, task.id).await, Err(Error::NotFound { .. })),
        "hidden, not forbidden"
    );
    assert!(matches!(pm.get_project(me, s.project.id).await, Err(Error::NotFound { .. })));
    // A project-scoped list is held to the same rule (its project → org lookup is cached, the
    // decision is not): hidden now, though the project was listed while readable.
    *authz.secret.lock().unwrap() = None;
    let filter = pm_core::query::TaskFilter::default();
    let page = pm_core::query::PageRequest::default();
    let listed = pm.list_project_tasks(me, s.project.id, &filter, &page).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    *authz.secret.lock().unwrap() = Some(s.project.id);
    assert!(matches!(
        pm.list_project_tasks(me, s.project.id, &filter, &page).await,
        Err(Error::NotFound { entity: "project" })
    ));
    let missing = pm_core::id::ProjectId::new();
    assert!(matches!(
        pm.list_project_tasks(me, missing, &filter, &page).await,
        Err(Error::NotFound { entity: "project" })
    ));
}

//! The store conformance suite (feature `testing`).
//!
//! One suite for every backend: the built-in SQLite and PostgreSQL adapters run it in their
//! tests, and a host that writes its own adapter runs the same functions against theirs. Each
//! check creates its own organization, so checks may share a database; give [`run_all`] a
//! freshly migrated one. Checks panic with a message on failure, like any test.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use time::macros::date;

use crate::event::{ActivityScope, Actor, Cause, EventKind, Origin, Tailer};
use crate::id::*;
use crate::model::*;
use crate::query::{Cursor, PageRequest, TaskFilter, TaskSort, TaskSortKey};
use crate::store::Stores;
use crate::{Current, Error};

/// Runs every check against `stores`.
pub async fn run_all(stores: &Stores) {
    directory(stores).await;
    projects(stores).await;
    task_crud_and_versions(stores).await;
    failed_write_leaves_nothing(stores).await;
    relations(stores).await;
    watchers_and_comments(stores).await;
    worklog(stores).await;
    caller_chosen_ids(stores).await;
    filters_and_sorts(stores).await;
    full_text_search(stores).await;
    pagination_is_complete(stores).await;
    events_and_cursors(stores).await;
}

/// A seeded organization for a check: a user (owner), the org, a project with default states.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The owner.
    pub user: User,
    /// The organization.
    pub org: Organization,
    /// A project `PM` with the default states.
    pub project: Project,
    /// Its states, by position.
    pub states: Vec<WorkflowState>,
}

impl Fixture {
    /// The origin of changes made by the fixture's user.
    pub fn origin(&self) -> Origin {
        Origin::user(self.user.id)
    }

    /// A minimal new task in the fixture's project.
    pub fn new_task(&self, title: &str) -> NewTask {
        NewTask {
            id: None,
            project_id: self.project.id,
            title: TaskTitle::parse(title).expect("valid title"),
            description: Markdown::default(),
            state_id: self.states[1].id,
            priority: Priority::None,
            assignees: BTreeSet::new(),
            reporter: self.user.id,
            labels: BTreeSet::new(),
            start_date: None,
            due_date: None,
            estimate: None,
            parent_id: None,
            milestone_id: None,
            custom_fields: BTreeMap::new(),
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid7::short())
}

struct Uuid7;
impl Uuid7 {
    fn short() -> String {
        let s = uuid::Uuid::now_v7().simple().to_string();
        // The random tail: the leading hex digits are the (shared) timestamp.
        s[20..].to_string()
    }
}

/// Creates a [`Fixture`] through the stores.
pub async fn fixture(stores: &Stores) -> Fixture {
    let at = now();
    let user = User {
        id: UserId::new(),
        email: Email::parse(&format!("{}@example.com", unique("u"))).unwrap(),
        display_name: Name::parse("Ada").unwrap(),
        created_at: at,
    };
    let origin = Origin::user(user.id);
    stores.directory.create_user(&origin, &user).await.expect("create user");
    let org = Organization {
        id: OrgId::new(),
        slug: Slug::parse(&unique("org")).unwrap(),
        name: Name::parse("Acme").unwrap(),
        version: 1,
        created_at: at,
        updated_at: at,
    };
    stores.directory.create_org(&origin, &org, Some(user.id)).await.expect("create org");
    let project = Project {
        id: ProjectId::new(),
        org_id: org.id,
        key: ProjectKey::parse("PM").unwrap(),
        name: Name::parse("Platform").unwrap(),
        description: Markdown::default(),
        lead: Some(user.id),
        archived: false,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    let states: Vec<WorkflowState> = DEFAULT_STATES
        .iter()
        .enumerate()
        .map(|(i, (n, c))| WorkflowState {
            id: StateId::new(),
            project_id: project.id,
            name: Name::parse(n).unwrap(),
            category: *c,
            position: i as i32,
            version: 1,
        })
        .collect();
    stores.projects.create_project(&origin, &project, &states).await.expect("create project");
    Fixture { user, org, project, states }
}

async fn new_user(stores: &Stores, f: &Fixture) -> User {
    let u = User {
        id: UserId::new(),
        email: Email::parse(&format!("{}@example.com", unique("m"))).unwrap(),
        display_name: Name::parse("Member").unwrap(),
        created_at: now(),
    };
    stores.directory.create_user(&f.origin(), &u).await.unwrap();
    let m =
        Membership { org_id: f.org.id, user_id: u.id, role: MemberRole::Member, joined_at: now() };
    stores.directory.put_member(&f.origin(), &m).await.unwrap();
    u
}

/// Users, organizations, memberships.
pub async fn directory(stores: &Stores) {
    let f = fixture(stores).await;
    let d = &stores.directory;
    assert_eq!(d.get_user(f.user.id).await.unwrap(), f.user);
    assert_eq!(d.get_org(f.org.id).await.unwrap(), f.org);
    assert_eq!(d.find_user_by_email(&f.user.email).await.unwrap(), Some(f.user.clone()));
    let dup = User { id: UserId::new(), ..f.user.clone() };
    assert!(matches!(
        d.create_user(&f.origin(), &dup).await,
        Err(Error::AlreadyExists { field: "email", .. })
    ));
    let dup_org = Organization { id: OrgId::new(), ..f.org.clone() };
    assert!(matches!(
        d.create_org(&f.origin(), &dup_org, None).await,
        Err(Error::AlreadyExists { field: "slug", .. })
    ));
    assert!(matches!(d.get_user(UserId::new()).await, Err(Error::NotFound { .. })));

    let owner = d.get_membership(f.org.id, f.user.id).await.unwrap().expect("owner membership");
    assert_eq!(owner.role, MemberRole::Owner);
    assert_eq!(d.list_orgs_for_user(f.user.id).await.unwrap(), vec![f.org.clone()]);

    let u = new_user(stores, &f).await;
    let admin = Membership {
        role: MemberRole::Admin,
        ..d.get_membership(f.org.id, u.id).await.unwrap().unwrap()
    };
    assert_eq!(d.put_member(&f.origin(), &admin).await.unwrap().role, MemberRole::Admin);
    assert_eq!(d.list_members(f.org.id).await.unwrap().len(), 2);
    d.remove_member(&f.origin(), f.org.id, u.id).await.unwrap();
    assert!(d.get_membership(f.org.id, u.id).await.unwrap().is_none());
    assert!(matches!(
        d.remove_member(&f.origin(), f.org.id, u.id).await,
        Err(Error::NotFound { .. })
    ));
}

/// Projects, states, labels, milestones, custom fields.
pub async fn projects(stores: &Stores) {
    let f = fixture(stores).await;
    let p = &stores.projects;
    assert_eq!(p.get_project(f.project.id).await.unwrap(), f.project);
    assert_eq!(p.list_states(f.project.id).await.unwrap(), f.states);
    assert_eq!(
        p.get_project_with_states(f.project.id).await.unwrap(),
        (f.project.clone(), f.states.clone())
    );
    assert!(matches!(
        p.get_project_with_states(ProjectId::new()).await,
        Err(Error::NotFound { .. })
    ));
    let dup = Project { id: ProjectId::new(), ..f.project.clone() };
    assert!(matches!(
        p.create_project(&f.origin(), &dup, &[]).await,
        Err(Error::AlreadyExists { field: "key", .. })
    ));
    // The failed create left no project behind.
    assert_eq!(p.list_projects(f.org.id, true).await.unwrap().len(), 1);

    let patch = ProjectPatch {
        name: Some(Name::parse("Renamed").unwrap()),
        archived: Some(true),
        ..Default::default()
    };
    let updated = p.update_project(&f.origin(), f.project.id, 1, &patch).await.unwrap();
    assert_eq!((updated.version, updated.name.as_str(), updated.archived), (2, "Renamed", true));
    match p.update_project(&f.origin(), f.project.id, 1, &patch).await {
        Err(Error::Conflict(c)) => assert_eq!(*c, Current::Project(updated.clone())),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(p.list_projects(f.org.id, false).await.unwrap().is_empty());
    assert_eq!(p.list_projects(f.org.id, true).await.unwrap(), vec![updated]);

    let state = WorkflowState {
        id: StateId::new(),
        project_id: f.project.id,
        name: Name::parse("Review").unwrap(),
        category: StateCategory::Started,
        position: 10,
        version: 1,
    };
    p.create_state(&f.origin(), &state).await.unwrap();
    assert_eq!(p.get_state(state.id).await.unwrap(), state);
    let dup_state = WorkflowState { id: StateId::new(), ..state.clone() };
    assert!(matches!(
        p.create_state(&f.origin(), &dup_state).await,
        Err(Error::AlreadyExists { .. })
    ));

    let label = Label {
        id: LabelId::new(),
        org_id: f.org.id,
        name: LabelName::parse("bug").unwrap(),
        color: Color::parse("#ff0000").unwrap(),
    };
    p.create_label(&f.origin(), &label).await.unwrap();
    assert_eq!(p.list_labels(f.org.id).await.unwrap(), vec![label.clone()]);
    p.delete_label(&f.origin(), label.id).await.unwrap();
    assert!(p.list_labels(f.org.id).await.unwrap().is_empty());
    assert!(matches!(p.delete_label(&f.origin(), label.id).await, Err(Error::NotFound { .. })));

    let m = Milestone {
        id: MilestoneId::new(),
        project_id: f.project.id,
        name: Name::parse("v1").unwrap(),
        description: Markdown::default(),
        due_on: Some(date!(2030 - 01 - 31)),
        closed: false,
        version: 1,
    };
    p.create_milestone(&f.origin(), &m).await.unwrap();
    let closed =
        p.update_milestone(&f.origin(), &Milestone { closed: true, ..m.clone() }, 1).await.unwrap();
    assert_eq!((closed.closed, closed.version), (true, 2));
    assert!(matches!(p.update_milestone(&f.origin(), &m, 1).await, Err(Error::Conflict(_))));
    assert_eq!(p.list_milestones(f.project.id).await.unwrap(), vec![closed]);

    let field = CustomField {
        id: FieldId::new(),
        project_id: f.project.id,
        name: Name::parse("Severity").unwrap(),
        field_type: FieldType::Select { options: vec!["low".into(), "high".into()] },
    };
    p.create_field(&f.origin(), &field).await.unwrap();
    assert_eq!(p.list_fields(f.project.id).await.unwrap(), vec![field]);
}

/// Task create/read/update/delete, numbering, optimistic concurrency.
pub async fn task_crud_and_versions(stores: &Stores) {
    let f = fixture(stores).await;
    let t = &stores.tasks;
    let member = new_user(stores, &f).await;
    let label = Label {
        id: LabelId::new(),
        org_id: f.org.id,
        name: LabelName::parse("ui").unwrap(),
        color: Color::parse("#00ff00").unwrap(),
    };
    stores.projects.create_label(&f.origin(), &label).await.unwrap();
    let field = CustomField {
        id: FieldId::new(),
        project_id: f.project.id,
        name: Name::parse("Points").unwrap(),
        field_type: FieldType::Number,
    };
    stores.projects.create_field(&f.origin(), &field).await.unwrap();

    let mut new = f.new_task("First");
    new.description = Markdown::parse("Some *markdown*").unwrap();
    new.assignees = [f.user.id, member.id].into();
    new.labels = [label.id].into();
    new.due_date = Some(date!(2031 - 05 - 06));
    new.estimate = Some(3);
    new.priority = Priority::High;
    new.custom_fields.insert(field.id, FieldValue::Number(2.5));
    let at = now();
    let first = t.create_task(&f.origin(), &new, at).await.unwrap();
    assert_eq!((first.number, first.reference.as_str(), first.version), (1, "PM-1", 1));
    assert_eq!((first.created_at, first.updated_at), (at, at));
    assert_eq!(first.assignees, new.assignees);
    assert_eq!(first.labels, new.labels);
    assert_eq!(first.custom_fields, new.custom_fields);
    assert_eq!(t.get_task(first.id).await.unwrap(), first);
    assert_eq!(t.get_task_by_number(f.project.id, 1).await.unwrap(), first);

    let second = t.create_task(&f.origin(), &f.new_task("Second"), now()).await.unwrap();
    assert_eq!(second.number, 2);
    assert!(second.rank > first.rank, "new tasks rank after existing ones");

    let patch = TaskPatch {
        title: Some(TaskTitle::parse("First, renamed").unwrap()),
        state_id: Some(f.states[2].id),
        assignees: Some([member.id].into()),
        due_date: Some(None),
        custom_fields: [(field.id, None)].into(),
        ..Default::default()
    };
    let updated = t.update_task(&f.origin(), first.id, 1, &patch).await.unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.title.as_str(), "First, renamed");
    assert_eq!(updated.assignees, [member.id].into());
    assert_eq!(updated.due_date, None);
    assert!(updated.custom_fields.is_empty());
    assert!(updated.updated_at >= first.updated_at);
    assert_eq!(t.get_task(first.id).await.unwrap(), updated);

    // A stale version is refused and the refusal carries the current task.
    match t.update_task(&f.origin(), first.id, 1, &patch).await {
        Err(Error::Conflict(c)) => assert_eq!(*c, Current::Task(updated.clone())),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A no-op patch changes nothing and logs nothing.
    let before = stores.events.latest_seq().await.unwrap();
    assert_eq!(t.update_task(&f.origin(), first.id, 2, &patch).await.unwrap(), updated);
    assert_eq!(stores.events.latest_seq().await.unwrap(), before);

    assert!(matches!(
        t.update_task(&f.origin(), TaskId::new(), 1, &patch).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(t.delete_task(&f.origin(), second.id, 7).await, Err(Error::Conflict(_))));
    t.delete_task(&f.origin(), second.id, 1).await.unwrap();
    assert!(matches!(t.get_task(second.id).await, Err(Error::NotFound { .. })));
    // Numbers are never reused.
    assert_eq!(t.create_task(&f.origin(), &f.new_task("Third"), now()).await.unwrap().number, 3);
}

/// A failed multi-statement write leaves nothing behind: no task, no event, no number consumed.
pub async fn failed_write_leaves_nothing(stores: &Stores) {
    let f = fixture(stores).await;
    let t = &stores.tasks;
    t.create_task(&f.origin(), &f.new_task("ok"), now()).await.unwrap();
    let seq_before = stores.events.latest_seq().await.unwrap();
    let mut bad = f.new_task("fails on its label row");
    bad.assignees = [f.user.id].into();
    bad.labels = [LabelId::new()].into(); // no such label: the task row is inserted, then this fails
    let err = t.create_task(&f.origin(), &bad, now()).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert_eq!(
        stores.events.latest_seq().await.unwrap(),
        seq_before,
        "no event for a failed write"
    );
    let page =
        t.list_tasks(f.org.id, &TaskFilter::default(), &PageRequest::default()).await.unwrap();
    assert_eq!(page.items.len(), 1, "no partial task");
    assert!(matches!(t.get_task_by_number(f.project.id, 2).await, Err(Error::NotFound { .. })));
    assert_eq!(
        t.create_task(&f.origin(), &f.new_task("next"), now()).await.unwrap().number,
        2,
        "number not consumed"
    );

    // An update that fails half-way keeps the old state too.
    let task = t.get_task_by_number(f.project.id, 1).await.unwrap();
    let patch = TaskPatch {
        title: Some(TaskTitle::parse("changed").unwrap()),
        labels: Some([LabelId::new()].into()),
        ..Default::default()
    };
    assert!(t.update_task(&f.origin(), task.id, task.version, &patch).await.is_err());
    assert_eq!(t.get_task(task.id).await.unwrap(), task);
}

/// Relations, including `blocks` cycle rejection.
pub async fn relations(stores: &Stores) {
    let f = fixture(stores).await;
    let t = &stores.tasks;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        ids.push(t.create_task(&f.origin(), &f.new_task(n), now()).await.unwrap().id);
    }
    let rel = |from, to, kind| TaskRelation {
        from_task: from,
        to_task: to,
        kind,
        created_by: Some(f.user.id),
        created_at: now(),
    };
    t.add_relation(&f.origin(), &rel(ids[0], ids[1], RelationKind::Blocks)).await.unwrap();
    t.add_relation(&f.origin(), &rel(ids[1], ids[2], RelationKind::Blocks)).await.unwrap();
    let cycle = t.add_relation(&f.origin(), &rel(ids[2], ids[0], RelationKind::Blocks)).await;
    assert!(
        matches!(cycle, Err(Error::Invalid { ref field, .. }) if field == "to_task"),
        "{cycle:?}"
    );
    // Non-blocking kinds may point back.
    t.add_relation(&f.origin(), &rel(ids[2], ids[0], RelationKind::Relates)).await.unwrap();
    assert!(matches!(
        t.add_relation(&f.origin(), &rel(ids[0], ids[0], RelationKind::Relates)).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        t.add_relation(&f.origin(), &rel(ids[0], ids[1], RelationKind::Blocks)).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        t.add_relation(&f.origin(), &rel(ids[0], TaskId::new(), RelationKind::Relates)).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(t.list_relations(ids[0]).await.unwrap().len(), 2);
    t.remove_relation(&f.origin(), ids[1], ids[2], RelationKind::Blocks).await.unwrap();
    // With b→c gone, c may block a.
    t.add_relation(&f.origin(), &rel(ids[2], ids[0], RelationKind::Blocks)).await.unwrap();
    assert!(matches!(
        t.remove_relation(&f.origin(), ids[1], ids[2], RelationKind::Blocks).await,
        Err(Error::NotFound { .. })
    ));
}

/// Watchers and comments (with versions).
pub async fn watchers_and_comments(stores: &Stores) {
    let f = fixture(stores).await;
    let task = stores.tasks.create_task(&f.origin(), &f.new_task("watched"), now()).await.unwrap();
    let w = Watcher { task_id: task.id, user_id: f.user.id, since: now() };
    stores.tasks.add_watcher(&f.origin(), &w).await.unwrap();
    stores.tasks.add_watcher(&f.origin(), &w).await.unwrap();
    assert_eq!(stores.tasks.list_watchers(task.id).await.unwrap(), vec![w]);
    stores.tasks.remove_watcher(&f.origin(), task.id, f.user.id).await.unwrap();
    assert!(stores.tasks.list_watchers(task.id).await.unwrap().is_empty());

    let c = &stores.comments;
    let at = now();
    let comment = Comment {
        id: CommentId::new(),
        task_id: task.id,
        author: f.user.id,
        body: comment_body("hello").unwrap(),
        version: 1,
        created_at: at,
        updated_at: at,
    };
    c.create_comment(&f.origin(), &comment).await.unwrap();
    assert_eq!(c.get_comment(comment.id).await.unwrap(), comment);
    let edited = c
        .update_comment(&f.origin(), comment.id, 1, &comment_body("hello again").unwrap())
        .await
        .unwrap();
    assert_eq!((edited.version, edited.body.as_str()), (2, "hello again"));
    assert!(matches!(
        c.update_comment(&f.origin(), comment.id, 1, &comment_body("x").unwrap()).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(c.list_comments(task.id).await.unwrap(), vec![edited]);
    let orphan = Comment { id: CommentId::new(), task_id: TaskId::new(), ..comment.clone() };
    assert!(matches!(c.create_comment(&f.origin(), &orphan).await, Err(Error::NotFound { .. })));
    c.delete_comment(&f.origin(), comment.id).await.unwrap();
    assert!(c.list_comments(task.id).await.unwrap().is_empty());
}

/// Time entries, attachments, check-ins.
pub async fn worklog(stores: &Stores) {
    let f = fixture(stores).await;
    let task =
        stores.tasks.create_task(&f.origin(), &f.new_task("field work"), now()).await.unwrap();
    let w = &stores.worklog;
    let e = TimeEntry {
        id: TimeEntryId::new(),
        task_id: task.id,
        user_id: f.user.id,
        minutes: 90,
        spent_on: date!(2030 - 02 - 03),
        note: "pairing".into(),
        created_at: now(),
    };
    w.create_time_entry(&f.origin(), &e).await.unwrap();
    assert_eq!(w.list_time_entries(task.id).await.unwrap(), vec![e.clone()]);
    w.delete_time_entry(&f.origin(), e.id).await.unwrap();
    assert!(w.list_time_entries(task.id).await.unwrap().is_empty());

    let a = Attachment {
        id: AttachmentId::new(),
        task_id: task.id,
        uploaded_by: f.user.id,
        file_name: "photo.jpg".into(),
        content_type: "image/jpeg".into(),
        size: 1234,
        sha256: "ab".repeat(32),
        blob_key: "k1".into(),
        created_at: now(),
    };
    w.create_attachment(&f.origin(), &a).await.unwrap();
    assert_eq!(w.get_attachment(a.id).await.unwrap(), a);
    assert_eq!(w.list_attachments(task.id).await.unwrap(), vec![a.clone()]);
    w.delete_attachment(&f.origin(), a.id).await.unwrap();
    assert!(matches!(w.get_attachment(a.id).await, Err(Error::NotFound { .. })));

    let c1 = CheckIn {
        id: CheckInId::new(),
        task_id: task.id,
        user_id: f.user.id,
        position: GeoPoint::parse(52.52, 13.405, 8.5).unwrap(),
        note: String::new(),
        created_at: now(),
    };
    w.create_check_in(&f.origin(), &c1).await.unwrap();
    let c2 = CheckIn { id: CheckInId::new(), created_at: now(), ..c1.clone() };
    w.create_check_in(&f.origin(), &c2).await.unwrap();
    assert_eq!(w.list_check_ins(task.id).await.unwrap(), vec![c2, c1], "newest first");
}

/// Creates with caller-chosen ids (offline clients make their creates idempotent that way): the
/// id is kept, and a second create with a taken id is `AlreadyExists { field: "id" }` that leaves
/// no event and consumes no task number.
pub async fn caller_chosen_ids(stores: &Stores) {
    let f = fixture(stores).await;
    let id = TaskId(uuid::Uuid::now_v7());
    let first = NewTask { id: Some(id), ..f.new_task("chosen id") };
    let task = stores.tasks.create_task(&f.origin(), &first, now()).await.unwrap();
    assert_eq!(task.id, id);
    assert_eq!(stores.tasks.get_task(id).await.unwrap(), task);
    let seq = stores.events.latest_seq().await.unwrap();
    let again = NewTask { id: Some(id), ..f.new_task("same id, other task") };
    match stores.tasks.create_task(&f.origin(), &again, now()).await {
        Err(Error::AlreadyExists { entity: "task", field: "id" }) => {}
        other => panic!("a taken task id must be AlreadyExists {{ field: id }}: {other:?}"),
    }
    assert_eq!(stores.events.latest_seq().await.unwrap(), seq, "a failed create appends no event");
    assert_eq!(stores.tasks.get_task(id).await.unwrap(), task, "the first task is untouched");
    let next = stores.tasks.create_task(&f.origin(), &f.new_task("next"), now()).await.unwrap();
    assert_eq!(next.number, task.number + 1, "the failed create consumed no number");

    let at = now();
    let comment = Comment {
        id: CommentId(uuid::Uuid::now_v7()),
        task_id: task.id,
        author: f.user.id,
        body: comment_body("offline").unwrap(),
        version: 1,
        created_at: at,
        updated_at: at,
    };
    stores.comments.create_comment(&f.origin(), &comment).await.unwrap();
    assert!(matches!(
        stores.comments.create_comment(&f.origin(), &comment).await,
        Err(Error::AlreadyExists { entity: "comment", field: "id" })
    ));
    assert_eq!(stores.comments.list_comments(task.id).await.unwrap(), vec![comment]);

    let check_in = CheckIn {
        id: CheckInId(uuid::Uuid::now_v7()),
        task_id: task.id,
        user_id: f.user.id,
        position: GeoPoint::parse(48.2, 16.37, 10.0).unwrap(),
        note: String::new(),
        created_at: now(),
    };
    stores.worklog.create_check_in(&f.origin(), &check_in).await.unwrap();
    assert!(matches!(
        stores.worklog.create_check_in(&f.origin(), &check_in).await,
        Err(Error::AlreadyExists { field: "id", .. })
    ));
    assert_eq!(stores.worklog.list_check_ins(task.id).await.unwrap(), vec![check_in]);
}

/// Every filter of [`TaskFilter`] and every sort key.
pub async fn filters_and_sorts(stores: &Stores) {
    let f = fixture(stores).await;
    let t = &stores.tasks;
    let o = f.origin();
    let member = new_user(stores, &f).await;
    let label = Label {
        id: LabelId::new(),
        org_id: f.org.id,
        name: LabelName::parse("infra").unwrap(),
        color: Color::parse("#0000ff").unwrap(),
    };
    stores.projects.create_label(&o, &label).await.unwrap();
    let ms = Milestone {
        id: MilestoneId::new(),
        project_id: f.project.id,
        name: Name::parse("M1").unwrap(),
        description: Markdown::default(),
        due_on: None,
        closed: false,
        version: 1,
    };
    stores.projects.create_milestone(&o, &ms).await.unwrap();
    let other = Project {
        id: ProjectId::new(),
        key: ProjectKey::parse("OPS").unwrap(),
        ..f.project.clone()
    };
    let other_state =
        WorkflowState { id: StateId::new(), project_id: other.id, ..f.states[0].clone() };
    stores.projects.create_project(&o, &other, std::slice::from_ref(&other_state)).await.unwrap();

    let mk = |title: &str| f.new_task(title);
    let mut a = mk("alpha");
    a.priority = Priority::Urgent;
    a.assignees = [member.id].into();
    a.due_date = Some(date!(2030 - 03 - 01));
    let a = t.create_task(&o, &a, now()).await.unwrap();
    let mut b = mk("bravo");
    b.priority = Priority::Low;
    b.labels = [label.id].into();
    b.state_id = f.states[2].id;
    b.due_date = Some(date!(2030 - 01 - 01));
    b.milestone_id = Some(ms.id);
    let b = t.create_task(&o, &b, now()).await.unwrap();
    let mut c = mk("charlie");
    c.parent_id = Some(a.id);
    c.reporter = member.id;
    let c = t.create_task(&o, &c, now()).await.unwrap();
    let mut d = mk("delta");
    d.project_id = other.id;
    d.state_id = other_state.id;
    let d = t.create_task(&o, &d, now()).await.unwrap();
    let archived = t.create_task(&o, &mk("echo"), now()).await.unwrap();
    let archived = t
        .update_task(&o, archived.id, 1, &TaskPatch { archived: Some(true), ..Default::default() })
        .await
        .unwrap();

    let list = |filter: TaskFilter, sort: TaskSort| {
        let t = t.clone();
        let org = f.org.id;
        async move {
            let req = PageRequest { sort, limit: 100, after: None };
            t.list_tasks(org, &filter, &req)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|t| t.title.to_string())
                .collect::<Vec<_>>()
        }
    };
    let live = TaskFilter { archived: Some(false), ..Default::default() };
    let by = TaskSort::default();
    assert_eq!(list(live.clone(), by).await, ["alpha", "bravo", "charlie", "delta"]);
    assert_eq!(
        list(TaskFilter::default(), by).await,
        ["alpha", "bravo", "charlie", "delta", "echo"]
    );
    assert_eq!(list(TaskFilter { archived: Some(true), ..Default::default() }, by).await, ["echo"]);
    assert_eq!(
        list(TaskFilter { project_ids: vec![other.id], ..live.clone() }, by).await,
        ["delta"]
    );
    assert_eq!(
        list(TaskFilter { state_ids: vec![f.states[2].id], ..live.clone() }, by).await,
        ["bravo"]
    );
    assert_eq!(
        list(TaskFilter { state_categories: vec![StateCategory::Backlog], ..live.clone() }, by)
            .await,
        ["delta"]
    );
    assert_eq!(
        list(TaskFilter { assignees: vec![member.id], ..live.clone() }, by).await,
        ["alpha"]
    );
    assert_eq!(
        list(TaskFilter { reporters: vec![member.id], ..live.clone() }, by).await,
        ["charlie"]
    );
    assert_eq!(list(TaskFilter { labels: vec![label.id], ..live.clone() }, by).await, ["bravo"]);
    assert_eq!(
        list(TaskFilter { priorities: vec![Priority::Urgent, Priority::Low], ..live.clone() }, by)
            .await,
        ["alpha", "bravo"]
    );
    assert_eq!(
        list(TaskFilter { due_from: Some(date!(2030 - 02 - 01)), ..live.clone() }, by).await,
        ["alpha"]
    );
    assert_eq!(
        list(TaskFilter { due_to: Some(date!(2030 - 02 - 01)), ..live.clone() }, by).await,
        ["bravo"]
    );
    assert_eq!(
        list(TaskFilter { parent: Some(Some(a.id)), ..live.clone() }, by).await,
        ["charlie"]
    );
    assert_eq!(
        list(TaskFilter { parent: Some(None), ..live.clone() }, by).await,
        ["alpha", "bravo", "delta"]
    );
    assert_eq!(list(TaskFilter { milestone_id: Some(ms.id), ..live.clone() }, by).await, ["bravo"]);
    assert_eq!(
        list(TaskFilter { updated_since: Some(archived.updated_at), ..Default::default() }, by)
            .await,
        ["echo"]
    );
    // Another organization sees none of it.
    let stranger = fixture(stores).await;
    assert!(
        t.list_tasks(stranger.org.id, &TaskFilter::default(), &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let sort = |key, descending| TaskSort { key, descending };
    assert_eq!(
        list(live.clone(), sort(TaskSortKey::Created, true)).await,
        ["delta", "charlie", "bravo", "alpha"]
    );
    assert_eq!(
        list(live.clone(), sort(TaskSortKey::Priority, true)).await[..2],
        ["alpha", "bravo"]
    );
    assert_eq!(
        list(live.clone(), sort(TaskSortKey::Due, false)).await[..2],
        ["bravo", "alpha"],
        "undated tasks sort last"
    );
    // Ranks order tasks within a project.
    let in_pm = TaskFilter { project_ids: vec![f.project.id], ..live.clone() };
    assert_eq!(list(in_pm, sort(TaskSortKey::Rank, false)).await, ["alpha", "bravo", "charlie"]);
    let _ = (b, c, d);
}

/// Full-text search over title, description and comments.
pub async fn full_text_search(stores: &Stores) {
    let f = fixture(stores).await;
    let t = &stores.tasks;
    let mut n = f.new_task("Login page crashes");
    n.description = Markdown::parse("Stack trace in the authentication module").unwrap();
    let a = t.create_task(&f.origin(), &n, now()).await.unwrap();
    let b = t.create_task(&f.origin(), &f.new_task("Dark mode"), now()).await.unwrap();
    let at = now();
    let comment = Comment {
        id: CommentId::new(),
        task_id: b.id,
        author: f.user.id,
        body: comment_body("Users report eyestrain at night").unwrap(),
        version: 1,
        created_at: at,
        updated_at: at,
    };
    stores.comments.create_comment(&f.origin(), &comment).await.unwrap();

    let search = |q: &str| {
        let filter = TaskFilter { text: Some(q.to_string()), ..Default::default() };
        let t = t.clone();
        let org = f.org.id;
        async move {
            t.list_tasks(org, &filter, &PageRequest::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("crash").await, vec![a.id], "prefix match on title");
    assert_eq!(search("AUTHENTICATION").await, vec![a.id], "description, case-insensitive");
    assert_eq!(search("eyestrain").await, vec![b.id], "comments are searchable");
    assert_eq!(search("login trace").await, vec![a.id], "all terms must match");
    assert!(search("login eyestrain").await.is_empty());
    assert!(search("\"-*)(").await.is_empty(), "operators only: matches nothing, no error");
    // Edits are reflected.
    let a2 = t
        .update_task(
            &f.origin(),
            a.id,
            1,
            &TaskPatch {
                title: Some(TaskTitle::parse("Signup page").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(search("login").await.is_empty());
    assert_eq!(search("signup").await, vec![a2.id]);
    stores.comments.delete_comment(&f.origin(), comment.id).await.unwrap();
    assert!(search("eyestrain").await.is_empty());
}

/// Paging through a list returns every row once, in order, for every sort.
pub async fn pagination_is_complete(stores: &Stores) {
    let f = fixture(stores).await;
    let prios = [Priority::None, Priority::Low, Priority::High];
    for i in 0..23 {
        let mut n = f.new_task(&format!("task {i}"));
        n.priority = prios[i % 3];
        n.due_date = if i % 4 == 0 {
            None
        } else {
            Some(date!(2030 - 01 - 01) + time::Duration::days((i % 5) as i64))
        };
        stores.tasks.create_task(&f.origin(), &n, now()).await.unwrap();
    }
    for key in [
        TaskSortKey::Created,
        TaskSortKey::Updated,
        TaskSortKey::Due,
        TaskSortKey::Priority,
        TaskSortKey::Rank,
        TaskSortKey::Number,
    ] {
        for descending in [false, true] {
            let sort = TaskSort { key, descending };
            let full = page_all(stores, f.org.id, &TaskFilter::default(), sort, 100).await;
            assert_eq!(full.len(), 23);
            let paged = page_all(stores, f.org.id, &TaskFilter::default(), sort, 4).await;
            assert_eq!(paged, full, "paging by 4 under {sort:?} equals one big page");
        }
    }
}

/// Pages through the whole list and returns the ids in order.
pub async fn page_all(
    stores: &Stores,
    org: OrgId,
    filter: &TaskFilter,
    sort: TaskSort,
    limit: u32,
) -> Vec<TaskId> {
    let mut out = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let req = PageRequest { sort, limit, after: after.clone() };
        let page = stores.tasks.list_tasks(org, filter, &req).await.unwrap();
        assert!(page.items.len() <= limit as usize);
        out.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(c) => after = Some(Cursor::decode(&c).unwrap()),
            None => return out,
        }
    }
}

/// Pages through a filtered list while other tasks are inserted concurrently: no row is
/// returned twice and every row that existed before paging began is returned.
pub async fn paging_under_concurrent_inserts(
    stores: &Stores,
    existing: usize,
    inserted: usize,
    limit: u32,
    sort: TaskSort,
) {
    let f = fixture(stores).await;
    let hot = StateId(f.states[1].id.0);
    let mut before = HashSet::new();
    for i in 0..existing {
        let mut n = f.new_task(&format!("pre {i}"));
        n.priority = if i % 2 == 0 { Priority::High } else { Priority::Low };
        n.state_id = if i % 3 == 0 { f.states[2].id } else { hot };
        let t = stores.tasks.create_task(&f.origin(), &n, now()).await.unwrap();
        if t.state_id == hot {
            before.insert(t.id);
        }
    }
    let filter = TaskFilter { state_ids: vec![hot], ..Default::default() };
    let writer = {
        let stores = stores.clone();
        let f = f.clone();
        tokio::spawn(async move {
            for i in 0..inserted {
                let mut n = f.new_task(&format!("concurrent {i}"));
                n.priority = if i % 2 == 0 { Priority::High } else { Priority::Urgent };
                stores.tasks.create_task(&f.origin(), &n, now()).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = HashSet::new();
    let mut after: Option<Cursor> = None;
    loop {
        let req = PageRequest { sort, limit, after: after.clone() };
        let page = stores.tasks.list_tasks(f.org.id, &filter, &req).await.unwrap();
        for t in &page.items {
            assert!(seen.insert(t.id), "task {} returned twice under {sort:?}", t.reference);
        }
        tokio::task::yield_now().await;
        match page.next_cursor {
            Some(c) => after = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    writer.await.unwrap();
    let missing: Vec<_> = before.difference(&seen).collect();
    assert!(missing.is_empty(), "pre-existing tasks skipped under {sort:?}: {missing:?}");
}

/// Every mutation appends an event with actor and cause; cursors are durable and monotonic;
/// a tailer sees every event in order.
pub async fn events_and_cursors(stores: &Stores) {
    let f = fixture(stores).await;
    let ev = &stores.events;
    let start = ev.latest_seq().await.unwrap();
    let cause = Cause { event_id: EventId::new(), depth: 2 };
    let auto = Origin { actor: Actor::Automation(WorkflowId::new()), cause: Some(cause) };
    let task = stores.tasks.create_task(&auto, &f.new_task("evented"), now()).await.unwrap();
    let task = stores
        .tasks
        .update_task(
            &f.origin(),
            task.id,
            1,
            &TaskPatch { priority: Some(Priority::Urgent), ..Default::default() },
        )
        .await
        .unwrap();
    let events = ev.read_after(start, 100).await.unwrap();
    let mine: Vec<_> = events.iter().filter(|e| e.task_id == Some(task.id)).collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].kind, EventKind::TaskCreated);
    assert_eq!(mine[0].actor, auto.actor);
    assert_eq!(mine[0].cause, Some(cause));
    assert_eq!(
        (mine[0].org_id, mine[0].project_id, mine[0].subject),
        (Some(f.org.id), Some(f.project.id), task.id.0)
    );
    assert_eq!(mine[0].payload["task"]["title"], "evented");
    assert_eq!(mine[1].kind, EventKind::TaskUpdated);
    assert_eq!(mine[1].actor, Actor::User(f.user.id));
    assert_eq!(mine[1].payload["changes"]["priority"]["to"], "urgent");
    assert_eq!(mine[1].payload["changes"]["priority"]["from"], "none");
    assert!(mine[1].payload["changes"].get("title").is_none());
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "read_after returns seq order");

    // Activity feeds: newest first, scoped, paged by `before`.
    let feed = ev.activity(ActivityScope::Task(task.id), None, 10).await.unwrap();
    assert_eq!(
        feed.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::TaskUpdated, EventKind::TaskCreated]
    );
    let older = ev.activity(ActivityScope::Task(task.id), Some(feed[0].seq), 10).await.unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].kind, EventKind::TaskCreated);
    let project_feed = ev.activity(ActivityScope::Project(f.project.id), None, 100).await.unwrap();
    assert!(
        project_feed.len() >= 2 && project_feed.iter().all(|e| e.project_id == Some(f.project.id))
    );
    assert!(project_feed.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(ev.read_after(start, 1).await.unwrap().len(), 1);

    let consumer = unique("consumer");
    assert_eq!(ev.load_cursor(&consumer).await.unwrap(), 0);
    ev.save_cursor(&consumer, 10).await.unwrap();
    ev.save_cursor(&consumer, 5).await.unwrap();
    assert_eq!(ev.load_cursor(&consumer).await.unwrap(), 10, "cursors never move backwards");

    // A tailer wakes on new events.
    let mut tail = Tailer::new(Arc::clone(ev), ev.latest_seq().await.unwrap());
    let stores2 = stores.clone();
    let f2 = f.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stores2.tasks.create_task(&f2.origin(), &f2.new_task("wake"), now()).await.unwrap()
    });
    let batch = tokio::time::timeout(std::time::Duration::from_secs(5), tail.next_batch(10))
        .await
        .expect("tailer woke")
        .unwrap();
    let woke = writer.await.unwrap();
    assert!(batch.iter().any(|e| e.task_id == Some(woke.id) && e.kind == EventKind::TaskCreated));

    // Caught up, `next_batch_or_idle` says so once (an empty batch) after the quiet period, so
    // a consumer can write its cursor; then it waits for the next event as `next_batch` does.
    let idle = std::time::Duration::from_millis(30);
    let quiet =
        tokio::time::timeout(std::time::Duration::from_secs(5), tail.next_batch_or_idle(10, idle))
            .await
            .expect("the idle signal came")
            .unwrap();
    assert!(quiet.is_empty(), "caught up: an empty batch, got {quiet:?}");
    let stores3 = stores.clone();
    let f3 = f.clone();
    let writer = tokio::spawn(async move {
        // Well past `idle`: a second idle signal would come first if it were repeated.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stores3.tasks.create_task(&f3.origin(), &f3.new_task("after idle"), now()).await.unwrap()
    });
    let batch =
        tokio::time::timeout(std::time::Duration::from_secs(5), tail.next_batch_or_idle(10, idle))
            .await
            .expect("the tailer woke after idling")
            .unwrap();
    let later = writer.await.unwrap();
    assert!(
        batch.iter().any(|e| e.task_id == Some(later.id)),
        "the idle signal is given once, then the next event: {batch:?}"
    );
    assert_eq!(tail.position(), batch.last().unwrap().seq);
}

/// Concurrent writers while a tailer follows the log: the tailer sees every event exactly once,
/// in strictly increasing `seq`, with none missed (commit order equals `seq` order).
pub async fn tailer_misses_nothing(stores: &Stores, writers: usize, per_writer: usize) {
    let f = fixture(stores).await;
    let start = stores.events.latest_seq().await.unwrap();
    let mut tail = Tailer::new(Arc::clone(&stores.events), start);
    tail.poll = std::time::Duration::from_millis(20);
    let mut handles = Vec::new();
    for w in 0..writers {
        let stores = stores.clone();
        let f = f.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_writer {
                stores
                    .tasks
                    .create_task(&f.origin(), &f.new_task(&format!("w{w} #{i}")), now())
                    .await
                    .unwrap();
            }
        }));
    }
    let expected_mine = writers * per_writer;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while seen.iter().filter(|e: &&crate::event::Event| e.project_id == Some(f.project.id)).count()
        < expected_mine
    {
        let batch = tokio::time::timeout_at(deadline, tail.next_batch(50))
            .await
            .expect("tailer kept up")
            .unwrap();
        seen.extend(batch);
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "strictly increasing seq");
    // Everything committed in the window, as the log now holds it, was seen by the tailer.
    let last = seen.last().unwrap().seq;
    let mut all = Vec::new();
    let mut after = start;
    while after < last {
        let b = stores.events.read_after(after, 500).await.unwrap();
        let Some(e) = b.last() else { break };
        after = e.seq;
        all.extend(b.into_iter().filter(|e| e.seq <= last));
    }
    let seen_seqs: Vec<i64> = seen.iter().map(|e| e.seq).collect();
    let all_seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seen_seqs, all_seqs, "the tailer missed events");
}

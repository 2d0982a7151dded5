//! The store conformance suite (feature `testing`).
//!
//! One suite for every backend: the built-in SQLite and PostgreSQL adapters run it in their
//! tests, and a host that writes its own adapter runs the same functions against theirs. Checks
//! use fresh names and ids, so they may share a database; give [`run_all`] a freshly migrated
//! one. Checks panic with a message on failure, like any test.

use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};

use crate::Error;
use crate::audit::verify_chain;
use crate::model::*;
use crate::store::AuthzStores;

/// Runs every check against `stores`.
pub async fn run_all(stores: &AuthzStores) {
    catalogue_and_templates(stores).await;
    roles(stores).await;
    assignments(stores).await;
    failed_writes_leave_nothing(stores).await;
    snapshot_and_audit_chain(stores).await;
}

fn role(org: Option<OrgId>, name: &str, parent: Option<RoleId>) -> Role {
    let now = pm_core::model::now();
    Role {
        id: RoleId::new(),
        org_id: org,
        name: format!("{name}-{}", uuid::Uuid::now_v7().simple()),
        description: "test".into(),
        parent_id: parent,
        grants: vec![
            Grant::always(Permission::new(ResourceKind::Task, Action::Read)),
            Grant::when(
                Permission::new(ResourceKind::Task, Action::Update),
                Condition::Expr { expr: "resource.attributes.x == 1.5".into() },
            ),
        ],
        denies: vec![Permission::new(ResourceKind::Task, Action::Delete)],
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

fn assignment(user: UserId, role: RoleId, scope: Scope) -> Assignment {
    let now = pm_core::model::now();
    Assignment {
        id: AssignmentId::new(),
        user_id: user,
        role_id: role,
        scope,
        valid_from: Some(now),
        valid_until: Some(now + time::Duration::days(1)),
        granted_by: Some(UserId::new()),
        reason: "because".into(),
        created_at: now,
    }
}

/// Permissions and templates are put once; a second put reports that they existed.
pub async fn catalogue_and_templates(s: &AuthzStores) {
    let a = Actor::System;
    let def = PermissionDef {
        permission: Permission::new(ResourceKind::Workflow, Action::Read),
        description: "read workflows".into(),
    };
    let first = s.roles.put_permission(&a, &def).await.unwrap();
    let again = s.roles.put_permission(&a, &def).await.unwrap();
    assert!(first.is_some() || again.is_none(), "second put must report existing");
    assert!(again.is_none(), "putting a permission twice creates it once");
    let list = s.roles.list_permissions().await.unwrap();
    assert_eq!(list.iter().filter(|d| **d == def).count(), 1);

    let t = RoleTemplate {
        name: format!("tpl-{}", uuid::Uuid::now_v7().simple()),
        description: "d".into(),
        parent: Some("viewer".into()),
        grants: vec![Grant::when(
            Permission::new(ResourceKind::Task, Action::Update),
            Condition::Assignee,
        )],
        denies: vec![],
    };
    assert!(s.roles.put_template(&a, &t).await.unwrap().is_some());
    assert!(s.roles.put_template(&a, &t).await.unwrap().is_none());
    let ts = s.roles.list_templates().await.unwrap();
    assert_eq!(ts.iter().find(|x| x.name == t.name), Some(&t));
}

/// Role create/get/list/update/delete with versions, uniqueness and references.
pub async fn roles(s: &AuthzStores) {
    let a = Actor::User(UserId::new());
    let org = OrgId::new();
    let parent = role(Some(org), "parent", None);
    let w = s.roles.create_role(&a, &parent).await.unwrap();
    assert_eq!(w.value, parent);
    assert_eq!(s.roles.get_role(parent.id).await.unwrap(), parent);
    let child = role(Some(org), "child", Some(parent.id));
    s.roles.create_role(&a, &child).await.unwrap();
    let all = s.roles.list_roles().await.unwrap();
    assert!(all.contains(&parent) && all.contains(&child));

    // Same name in the same org is refused; in another org (or as a system role) it is fine.
    let mut dup = role(Some(org), "x", None);
    dup.name.clone_from(&parent.name);
    assert!(matches!(
        s.roles.create_role(&a, &dup).await,
        Err(Error::AlreadyExists { entity: "role", .. })
    ));
    let mut other = dup.clone();
    other.id = RoleId::new();
    other.org_id = Some(OrgId::new());
    s.roles.create_role(&a, &other).await.unwrap();
    let mut sys = dup.clone();
    sys.id = RoleId::new();
    sys.org_id = None;
    s.roles.create_role(&a, &sys).await.unwrap();
    let mut sys2 = sys.clone();
    sys2.id = RoleId::new();
    assert!(matches!(s.roles.create_role(&a, &sys2).await, Err(Error::AlreadyExists { .. })));

    // Unknown parent.
    let orphan = role(None, "orphan", Some(RoleId::new()));
    assert!(matches!(s.roles.create_role(&a, &orphan).await, Err(Error::Invalid { .. })));

    // Update at the right version bumps it; a stale version conflicts with the current role.
    let mut changed = child.clone();
    changed.description = "changed".into();
    changed.grants.push(Grant::always(Permission::new(ResourceKind::Comment, Action::Create)));
    let w = s.roles.update_role(&a, &changed, 1).await.unwrap();
    assert_eq!(w.value.version, 2);
    assert_eq!(w.value.description, "changed");
    assert_eq!(s.roles.get_role(child.id).await.unwrap(), w.value);
    match s.roles.update_role(&a, &changed, 1).await {
        Err(Error::Conflict(current)) => assert_eq!(current.version, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        s.roles.update_role(&a, &role(None, "ghost", None), 1).await,
        Err(Error::NotFound { entity: "role" })
    ));

    // A parent is in use while a child inherits it; an assigned role while assigned.
    assert!(matches!(s.roles.delete_role(&a, parent.id).await, Err(Error::InUse { .. })));
    let asg = assignment(UserId::new(), child.id, Scope::Org { org_id: org });
    s.assignments.grant(&a, &asg).await.unwrap();
    assert!(matches!(s.roles.delete_role(&a, child.id).await, Err(Error::InUse { .. })));
    s.assignments.revoke(&a, asg.id, "done").await.unwrap();
    s.roles.delete_role(&a, child.id).await.unwrap();
    s.roles.delete_role(&a, parent.id).await.unwrap();
    assert!(matches!(s.roles.get_role(parent.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.roles.delete_role(&a, parent.id).await, Err(Error::NotFound { .. })));
}

/// Grant, get, list by filters, revoke.
pub async fn assignments(s: &AuthzStores) {
    let a = Actor::System;
    let r = role(None, "asg", None);
    s.roles.create_role(&a, &r).await.unwrap();
    let (u1, u2) = (UserId::new(), UserId::new());
    let org = OrgId::new();
    let project = ProjectId::new();
    let g = assignment(u1, r.id, Scope::Global);
    let o = assignment(u1, r.id, Scope::Org { org_id: org });
    let p = assignment(u2, r.id, Scope::Project { org_id: org, project_id: project });
    let mut open = assignment(u2, r.id, Scope::Org { org_id: org });
    open.valid_from = None;
    open.valid_until = None;
    open.granted_by = None;
    for x in [&g, &o, &p, &open] {
        assert_eq!(&s.assignments.grant(&a, x).await.unwrap().value, x);
    }
    assert_eq!(s.assignments.get_assignment(p.id).await.unwrap(), p);
    assert_eq!(s.assignments.get_assignment(open.id).await.unwrap(), open);
    let by_user = s
        .assignments
        .list_assignments(&AssignmentFilter { user_id: Some(u1), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(by_user, vec![g.clone(), o.clone()]);
    let by_scope = s
        .assignments
        .list_assignments(&AssignmentFilter {
            scope: Some(Scope::Org { org_id: org }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_scope, vec![o.clone(), open.clone()]);
    let by_role = s
        .assignments
        .list_assignments(&AssignmentFilter {
            role_id: Some(r.id),
            user_id: Some(u2),
            scope: Some(p.scope),
        })
        .await
        .unwrap();
    assert_eq!(by_role, vec![p.clone()]);
    let w = s.assignments.revoke(&a, o.id, "left").await.unwrap();
    assert_eq!(w.value, o);
    assert!(matches!(s.assignments.get_assignment(o.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(s.assignments.revoke(&a, o.id, "again").await, Err(Error::NotFound { .. })));
    let bad = assignment(u1, RoleId::new(), Scope::Global);
    assert!(matches!(s.assignments.grant(&a, &bad).await, Err(Error::Invalid { .. })));
}

/// A refused write appends no audit record and changes no row.
pub async fn failed_writes_leave_nothing(s: &AuthzStores) {
    let a = Actor::System;
    let r = role(None, "fail", None);
    s.roles.create_role(&a, &r).await.unwrap();
    let before = s.audit.revision().await.unwrap();
    let roles_before = s.roles.list_roles().await.unwrap().len();
    let mut dup = role(None, "fail", None);
    dup.name.clone_from(&r.name);
    assert!(s.roles.create_role(&a, &dup).await.is_err());
    assert!(s.roles.update_role(&a, &r, 7).await.is_err());
    let bad = assignment(UserId::new(), RoleId::new(), Scope::Global);
    assert!(s.assignments.grant(&a, &bad).await.is_err());
    assert!(s.roles.delete_role(&a, RoleId::new()).await.is_err());
    assert_eq!(s.audit.revision().await.unwrap(), before);
    assert_eq!(s.roles.list_roles().await.unwrap().len(), roles_before);
}

/// Every write bumps the revision by one and appends a verifiable record; the snapshot agrees.
pub async fn snapshot_and_audit_chain(s: &AuthzStores) {
    let actor = Actor::User(UserId::new());
    let rev0 = s.audit.revision().await.unwrap();
    let r = role(None, "chain", None);
    let w1 = s.roles.create_role(&actor, &r).await.unwrap();
    assert_eq!(w1.revision, rev0 + 1);
    let asg = assignment(UserId::new(), r.id, Scope::Global);
    let w2 = s.assignments.grant(&actor, &asg).await.unwrap();
    assert_eq!(w2.revision, rev0 + 2);
    assert_eq!(s.audit.revision().await.unwrap(), rev0 + 2);

    let tail = s.audit.list_audit(rev0, 10).await.unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].action, "role.create");
    assert_eq!(tail[0].subject, r.id.to_string());
    assert_eq!(tail[0].actor, actor);
    assert_eq!(tail[1].action, "assignment.grant");
    assert_eq!(tail[1].prev_hash, tail[0].hash);
    assert_eq!(tail[0].payload["role"]["name"], r.name.as_str());

    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = s.audit.list_audit(after, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    let report = verify_chain(&all);
    assert!(report.valid, "{report:?}");
    assert_eq!(report.records, (rev0 + 2) as u64);

    let snap = s.admin.load_snapshot().await.unwrap();
    assert_eq!(snap.revision, rev0 + 2);
    assert!(snap.roles.contains(&r));
    assert!(snap.assignments.contains(&asg));
}

//! The service over real stores: seeding, the default roles' semantics, explain, validation,
//! audit, and multi-instance refresh.

use std::sync::Arc;

use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};
use pm_permissions::clock::ManualClock;
use pm_permissions::engine::{MissingGrant, Step};
use pm_permissions::model::*;
use pm_permissions::store::{self, AuthzStores};
use pm_permissions::{Error, PermissionService, ServiceConfig};

use crate::stores::{postgres_url, sqlite};

async fn seeded(stores: AuthzStores) -> PermissionService {
    let svc = PermissionService::open(stores, ServiceConfig::default()).await.unwrap();
    let first = svc.seed_defaults(&Actor::System).await.unwrap();
    assert_eq!(first.permissions.len(), 21);
    assert_eq!(first.roles, ["viewer", "team_member", "project_manager", "admin"]);
    assert_eq!(first.templates.len(), 4);
    let again = svc.seed_defaults(&Actor::System).await.unwrap();
    assert!(again.is_empty(), "seeding is idempotent: {again:?}");
    svc
}

async fn role_id(svc: &PermissionService, name: &str) -> RoleId {
    svc.system_role(name).await.unwrap().unwrap().id
}

async fn grant(svc: &PermissionService, user: UserId, role: &str, scope: Scope) -> Assignment {
    let role_id = role_id(svc, role).await;
    svc.grant(
        &Actor::System,
        NewAssignment {
            user_id: user,
            role_id,
            scope,
            valid_from: None,
            valid_until: None,
            reason: "test".into(),
        },
    )
    .await
    .unwrap()
}

fn task(org: OrgId, project: ProjectId, owner: UserId, assignees: &[UserId]) -> Resource {
    Resource::new(ResourceKind::Task, Some(org), Some(project))
        .with_id(uuid::Uuid::now_v7())
        .with_owner(owner)
        .with_assignees(assignees.iter().copied())
}

async fn default_roles_behave(svc: PermissionService) {
    let org = OrgId::new();
    let (p1, p2) = (ProjectId::new(), ProjectId::new());
    let [viewer, member, pm, admin, other] = std::array::from_fn(|_| UserId::new());
    grant(&svc, viewer, "viewer", Scope::Org { org_id: org }).await;
    grant(&svc, member, "team_member", Scope::Org { org_id: org }).await;
    grant(&svc, pm, "project_manager", Scope::Project { org_id: org, project_id: p1 }).await;
    grant(&svc, admin, "admin", Scope::Global).await;
    let e = svc.engine();
    let upd = |u: UserId, r: &Resource| e.is_allowed(u, Action::Update, r);

    let others_task = task(org, p1, other, &[]);
    let own_task = task(org, p1, member, &[]);
    let assigned_task = task(org, p1, other, &[member]);
    assert!(e.is_allowed(viewer, Action::Read, &others_task));
    assert!(!upd(viewer, &others_task), "viewer cannot update tasks");
    assert!(upd(member, &own_task) && upd(member, &assigned_task));
    assert!(!upd(member, &others_task), "team_member edits only own/assigned tasks");
    assert!(upd(pm, &others_task));
    assert!(upd(pm, &task(org, p1, other, &[])));
    assert!(!upd(pm, &task(org, p2, other, &[])), "not another project");
    let project1 = Resource::new(ResourceKind::Project, Some(org), Some(p1));
    let project2 = Resource::new(ResourceKind::Project, Some(org), Some(p2));
    assert!(e.is_allowed(pm, Action::Manage, &project1));
    assert!(!e.is_allowed(pm, Action::Manage, &project2));
    for act in [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Manage] {
        assert!(e.is_allowed(admin, act, &project2));
    }
    assert!(e.is_allowed(admin, Action::Create, &Resource::new(ResourceKind::Org, None, None)));
    // Another org is out of reach for org-scoped roles.
    let foreign = task(OrgId::new(), ProjectId::new(), member, &[member]);
    assert!(!upd(member, &foreign) && !e.is_allowed(viewer, Action::Read, &foreign));

    // Explain shows the chain on allow, the nearest missing grant on deny.
    let ex = e.explain(&Actor::User(member), Action::Update, &assigned_task);
    assert!(ex.allowed, "{ex:#?}");
    assert!(matches!(ex.chain.first(), Some(Step::Assignment { .. })));
    assert!(matches!(&ex.chain[1], Step::Role { name, .. } if name == "team_member"));
    assert!(matches!(
        ex.chain.last(),
        Some(Step::Condition { holds: true, condition: Condition::Assignee })
    ));
    let ex = e.explain(&Actor::User(viewer), Action::Read, &others_task);
    assert!(
        matches!(&ex.chain[2], Step::Permission { permission } if permission.to_string() == "task.read")
    );
    let ex = e.explain(&Actor::User(pm), Action::Read, &others_task);
    assert!(
        matches!(&ex.chain[..], [Step::Assignment { .. }, Step::Role { .. }, Step::InheritedRole { depth: 1, .. }, Step::InheritedRole { name, depth: 2, .. }, Step::Permission { .. }] if name == "viewer"),
        "{:#?}",
        ex.chain
    );
    let ex = e.explain(&Actor::User(member), Action::Update, &others_task);
    assert!(!ex.allowed);
    assert!(matches!(ex.missing, Some(MissingGrant::ConditionNotMet { .. })), "{ex:#?}");
    let ex = e.explain(&Actor::User(viewer), Action::Update, &others_task);
    match &ex.missing {
        Some(MissingGrant::AssignRole { role, scope, .. }) => {
            let scope = *scope;
            assert_eq!(role, "project_manager");
            assert_eq!(scope, Scope::Project { org_id: org, project_id: p1 });
        }
        other => panic!("{other:?}"),
    }
    serde_json::to_string(&ex).unwrap();

    // Effective permissions.
    let eff = svc
        .effective_permissions(&Actor::User(member), member, Scope::Org { org_id: org })
        .unwrap();
    let upd_task = eff.iter().find(|p| p.permission.to_string() == "task.update").unwrap();
    assert_eq!(upd_task.conditions, vec![Condition::Owner, Condition::Assignee]);
    assert!(eff.iter().any(|p| p.permission.to_string() == "task.read" && p.conditions.is_empty()));

    // Management is authorized by the engine itself.
    let as_member = Actor::User(member);
    let r = svc
        .create_role(
            &as_member,
            NewRole { org_id: Some(org), name: "x".into(), ..Default::default() },
        )
        .await;
    assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
    let custom = svc
        .create_role(
            &Actor::User(admin),
            NewRole {
                org_id: Some(org),
                name: "auditor".into(),
                parent_id: Some(role_id(&svc, "viewer").await),
                denies: vec![Permission::new(ResourceKind::Comment, Action::Read)],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let a = svc
        .grant(
            &Actor::User(admin),
            NewAssignment {
                user_id: other,
                role_id: custom.id,
                scope: Scope::Org { org_id: org },
                valid_from: None,
                valid_until: None,
                reason: "audit".into(),
            },
        )
        .await
        .unwrap();
    let comment = Resource::new(ResourceKind::Comment, Some(org), Some(p1));
    assert!(e.is_allowed(other, Action::Read, &others_task), "visible at once");
    assert!(!e.is_allowed(other, Action::Read, &comment), "deny overrides inherited allow");
    // An org role cannot be granted in another org.
    let bad = svc
        .grant(
            &Actor::System,
            NewAssignment {
                user_id: other,
                role_id: custom.id,
                scope: Scope::Org { org_id: OrgId::new() },
                valid_from: None,
                valid_until: None,
                reason: String::new(),
            },
        )
        .await;
    assert!(matches!(bad, Err(Error::Invalid { .. })), "{bad:?}");
    svc.revoke(&Actor::User(admin), a.id, "done").await.unwrap();
    assert!(!e.is_allowed(other, Action::Read, &others_task), "revoke visible at once");

    // Cycles and depth are rejected with clear errors.
    let viewer_role = svc.system_role("viewer").await.unwrap().unwrap();
    let admin_role = role_id(&svc, "admin").await;
    let cyc = svc
        .update_role(
            &Actor::System,
            viewer_role.id,
            viewer_role.version,
            RolePatch { parent_id: Some(Some(admin_role)), ..Default::default() },
        )
        .await;
    match cyc {
        Err(Error::InheritanceCycle { path }) => {
            assert_eq!(path.first(), path.last());
            assert!(path.contains(&"admin".to_string()));
        }
        other => panic!("{other:?}"),
    }
    let mut parent = Some(admin_role);
    let mut deep = None;
    for n in 0..10 {
        let r = svc
            .create_role(
                &Actor::System,
                NewRole { name: format!("level{n}"), parent_id: parent, ..Default::default() },
            )
            .await;
        match r {
            Ok(r) => parent = Some(r.id),
            Err(e) => {
                deep = Some(e);
                break;
            }
        }
    }
    assert!(matches!(deep, Some(Error::InheritanceTooDeep { limit: 8, .. })), "{deep:?}");
    let bad_cel = svc
        .create_role(
            &Actor::System,
            NewRole {
                name: "cel".into(),
                grants: vec![Grant::when(
                    Permission::new(ResourceKind::Task, Action::Read),
                    Condition::Expr { expr: "1 +".into() },
                )],
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad_cel, Err(Error::Invalid { .. })));

    // Templates apply to an org.
    let t = svc.apply_template(&Actor::System, "team_member", org).await.unwrap();
    assert_eq!(t.org_id, Some(org));
    assert_eq!(t.parent_id, Some(viewer_role.id));

    // The audit chain verifies and is readable only with role.manage globally.
    let report = svc.verify_audit_chain(&Actor::User(admin)).await.unwrap();
    assert!(report.valid, "{report:?}");
    assert!(report.records > 30);
    assert!(svc.verify_audit_chain(&Actor::User(viewer)).await.is_err());
    let log = svc.list_audit(&Actor::System, 0, 5).await.unwrap();
    assert_eq!(log.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_roles_sqlite() {
    let (stores, _dir, _) = sqlite().await;
    default_roles_behave(seeded(stores).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_roles_postgres() {
    let Some(url) = postgres_url("default_roles_postgres").await else {
        return;
    };
    let stores = store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    default_roles_behave(seeded(stores).await).await;
}

async fn two_instances(url: &str) {
    let a_stores = store::open(url).await.unwrap();
    a_stores.admin.migrate().await.unwrap();
    let a = seeded(a_stores).await;
    let b = PermissionService::open(store::open(url).await.unwrap(), ServiceConfig::default())
        .await
        .unwrap();
    let user = UserId::new();
    let org = OrgId::new();
    let r = Resource::new(ResourceKind::Task, Some(org), None);
    assert!(!b.engine().is_allowed(user, Action::Read, &r));
    let g = grant(&a, user, "viewer", Scope::Org { org_id: org }).await;
    assert!(a.engine().is_allowed(user, Action::Read, &r));
    // B still serves its (cached) view until it looks at the revision…
    assert!(!b.engine().is_allowed(user, Action::Read, &r));
    b.ensure_revision(&a.revision_token()).await.unwrap();
    assert!(b.engine().is_allowed(user, Action::Read, &r));
    assert_eq!(a.revision_token(), b.revision_token());
    // …or refreshes when stale.
    a.revoke(&Actor::System, g.id, "bye").await.unwrap();
    assert!(b.refresh_if_stale().await.unwrap());
    assert!(!b.engine().is_allowed(user, Action::Read, &r));
    assert!(!b.refresh_if_stale().await.unwrap());
    // A's own write after B's: A applies in place; B's write after A's makes A reload.
    grant(&b, user, "viewer", Scope::Global).await;
    grant(&a, user, "team_member", Scope::Global).await; // A reloads: misses B's write otherwise
    assert!(a.engine().is_allowed(user, Action::Read, &r));
}

/// Through the `Authorizer` with a long refresh interval: a grant made on A is honoured by B's very
/// next check (a refusal looks for newer state first); a revoke may lag by the interval.
async fn grants_cross_instances_at_once(url: &str) {
    use pm_core::authz::{Authorizer, Decision};
    let a_stores = store::open(url).await.unwrap();
    a_stores.admin.migrate().await.unwrap();
    let a = seeded(a_stores).await;
    let config = ServiceConfig {
        refresh_every: Some(std::time::Duration::from_secs(3600)),
        ..ServiceConfig::default()
    };
    let b = PermissionService::open(store::open(url).await.unwrap(), config).await.unwrap();
    let (user, org) = (UserId::new(), OrgId::new());
    let actor = Actor::User(user);
    let r = Resource::new(ResourceKind::Task, Some(org), None);
    assert!(matches!(b.check(&actor, Action::Read, &r).await.unwrap(), Decision::Deny(_)));
    let g = grant(&a, user, "viewer", Scope::Org { org_id: org }).await;
    assert_eq!(b.check(&actor, Action::Read, &r).await.unwrap(), Decision::Allow);
    a.revoke(&Actor::System, g.id, "bye").await.unwrap();
    // The revoke is seen at B's next periodic look (an hour here), or on demand.
    assert_eq!(b.check(&actor, Action::Read, &r).await.unwrap(), Decision::Allow);
    b.ensure_revision(&a.revision_token()).await.unwrap();
    assert!(matches!(b.check(&actor, Action::Read, &r).await.unwrap(), Decision::Deny(_)));
}

/// An audit log whose first `revision()` call waits at a gate: holds one check between its
/// refusal and its look for newer state, so another check can refresh the engine meanwhile.
struct GatedAudit {
    inner: Arc<dyn store::AuditLog>,
    calls: std::sync::atomic::AtomicUsize,
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
    gate_call: usize,
}

#[async_trait::async_trait]
impl store::AuditLog for GatedAudit {
    async fn list_audit(&self, after: i64, limit: u32) -> pm_permissions::Result<Vec<AuditRecord>> {
        self.inner.list_audit(after, limit).await
    }

    async fn revision(&self) -> pm_permissions::Result<i64> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n == self.gate_call {
            self.entered.notify_one();
            let _permit = self.release.acquire().await.unwrap();
        }
        self.inner.revision().await
    }
}

/// The race behind subscriptions refused on an idle node (issue 5, 50k-connection run): check X
/// is refused by the stale engine; before X looks for newer state, check Y reloads the engine;
/// X's look then finds nothing stale. X must still decide again on the reloaded engine instead of
/// answering with the refusal it made on the old state.
async fn a_refusal_raced_by_a_concurrent_reload_is_decided_again(url: &str) {
    use pm_core::authz::{Authorizer, Decision};
    let a_stores = store::open(url).await.unwrap();
    a_stores.admin.migrate().await.unwrap();
    let a = seeded(a_stores).await;
    let b_stores = store::open(url).await.unwrap();
    let gated = Arc::new(GatedAudit {
        inner: b_stores.audit.clone(),
        calls: Default::default(),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
        gate_call: 0,
    });
    let b_stores = AuthzStores { audit: gated.clone(), ..b_stores };
    let config = ServiceConfig {
        refresh_every: Some(std::time::Duration::from_secs(3600)),
        ..ServiceConfig::default()
    };
    let b = Arc::new(PermissionService::open(b_stores, config).await.unwrap());
    let (user, org) = (UserId::new(), OrgId::new());
    let actor = Actor::User(user);
    let r = Resource::new(ResourceKind::Project, Some(org), None);
    // Granted on A after B loaded: B's engine is stale.
    grant(&a, user, "viewer", Scope::Org { org_id: org }).await;
    let x = tokio::spawn({
        let (b, r) = (b.clone(), r.clone());
        async move { b.check(&actor, Action::Read, &r).await.unwrap() }
    });
    // X has been refused by the stale engine and waits before its look.
    tokio::time::timeout(std::time::Duration::from_secs(10), gated.entered.notified())
        .await
        .expect("check X reached its look for newer state");
    // Y: refused too, looks (not gated), reloads, decides again.
    assert_eq!(b.check(&actor, Action::Read, &r).await.unwrap(), Decision::Allow);
    gated.release.add_permits(1);
    assert_eq!(x.await.unwrap(), Decision::Allow, "X answered from the state before the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_raced_by_a_concurrent_reload_is_decided_again_sqlite() {
    let (_s, _dir, url) = sqlite().await;
    a_refusal_raced_by_a_concurrent_reload_is_decided_again(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_raced_by_a_concurrent_reload_is_decided_again_postgres() {
    if let Some(url) =
        postgres_url("a_refusal_raced_by_a_concurrent_reload_is_decided_again_postgres").await
    {
        a_refusal_raced_by_a_concurrent_reload_is_decided_again(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_cross_instances_at_once_sqlite() {
    let (_s, _dir, url) = sqlite().await;
    grants_cross_instances_at_once(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_cross_instances_at_once_postgres() {
    if let Some(url) = postgres_url("grants_cross_instances_at_once_postgres").await {
        grants_cross_instances_at_once(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_store_sqlite() {
    let (_s, _dir, url) = sqlite().await;
    two_instances(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_store_postgres() {
    if let Some(url) = postgres_url("two_instances_share_a_store_postgres").await {
        two_instances(&url).await;
    }
}

/// Through the service with an injected clock: a grant with `valid_until` stops at that instant.
#[tokio::test]
async fn grant_expires_exactly_at_valid_until_through_the_service() {
    let (stores, _dir, _) = sqlite().await;
    let start = time::macros::datetime!(2031-05-01 12:00 UTC);
    let clock = Arc::new(ManualClock::at(start));
    let svc = PermissionService::open_with_clock(stores, ServiceConfig::default(), clock.clone())
        .await
        .unwrap();
    svc.seed_defaults(&Actor::System).await.unwrap();
    let user = UserId::new();
    let org = OrgId::new();
    let until = start + time::Duration::hours(2);
    svc.grant(
        &Actor::System,
        NewAssignment {
            user_id: user,
            role_id: role_id(&svc, "viewer").await,
            scope: Scope::Org { org_id: org },
            valid_from: None,
            valid_until: Some(until),
            reason: "temp".into(),
        },
    )
    .await
    .unwrap();
    let r = Resource::new(ResourceKind::Task, Some(org), None);
    assert!(svc.engine().is_allowed(user, Action::Read, &r));
    clock.set(until - time::Duration::microseconds(1));
    assert!(svc.engine().is_allowed(user, Action::Read, &r));
    clock.set(until);
    assert!(!svc.engine().is_allowed(user, Action::Read, &r));
    // The Authorizer impl answers the same.
    use pm_core::authz::{Authorizer, Decision};
    let d = Authorizer::check(&svc, &Actor::User(user), Action::Read, &r).await.unwrap();
    assert!(matches!(d, Decision::Deny(_)));
}

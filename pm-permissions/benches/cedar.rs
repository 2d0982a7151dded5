//! cedar-policy side by side with the engine: the `small` model of `engine.rs` (10,000 users,
//! 10 orgs × 10 projects, 10,000 tasks, the default 4-level hierarchy, one org- or
//! project-scoped assignment per user) translated into a Cedar policy set and entity store, and
//! the same request mix timed against both.
//!
//! Run: `cargo bench -p pm-permissions --features cedar-bench --bench cedar`. Before criterion's
//! runs it checks that Cedar and the engine (cached and uncached) decide every one of the 200,000
//! requests the same way, then prints p50/p99 over individually timed calls for our cached check
//! (the 1,000-request working set), our uncached check (all 200,000), Cedar on all 200,000 and
//! Cedar on the same 1,000 as the cached run, and the ratios Cedar / ours.
//!
//! The encoding (schema-less; see [`policies`] and [`entities`]):
//!
//! - a role held at a scope is a group entity `Group::"<role>@<scope>"` (scope `global`,
//!   `org:<id>` or `project:<id>`), whose parent is the parent role's group at the same scope, so
//!   role inheritance is entity ancestry and Cedar's transitive closure resolves it: holding
//!   `project_manager@S` puts a user `in` `team_member@S` and `viewer@S`;
//! - an assignment is a parent edge `User -> Group::"<role>@<scope>"`. Cedar memberships carry no
//!   validity window, so only assignments active when the store is built are translated (a host
//!   would rebuild the entities at the next `valid_from`/`valid_until`); in this model all are;
//! - `Org` and `Project` entities have one attribute per role naming that role's group at their
//!   scope, and a `Task` names its `org` and `project` (and `owner`, `assignees`), so a scope
//!   check is `principal in resource.project.viewer` — Cedar cannot build an entity id from a
//!   string at evaluation time, hence the indirection through attributes;
//! - a role's grants become one `permit` per (role, condition) over the actions it grants, guarded
//!   by "holds this role at a scope covering the resource"; denies would become `forbid`s (the
//!   defaults have none); conditions `owner` / `assignee` compare `resource.owner` /
//!   `resource.assignees` with the principal;
//! - `resource.manage` implies every action on the resource, as in the engine: each `Action`
//!   entity `resource.x` has `Action::"resource.manage"` as its parent, and policies say
//!   `action in [...]`.
//!
//! Both sides get prepared requests: the engine a `Resource` value, Cedar a `Request` of three
//! entity ids (its entity store resolves the task's attributes, ours are inline in `Resource`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression,
};
use criterion::{Criterion, criterion_group, criterion_main};
use pm_core::authz::{Action, Resource, ResourceKind};
use pm_permissions::engine::{Engine, EngineConfig, Snapshot};
use pm_permissions::model::{ACTIONS, Condition, Permission, RESOURCES, Role, RoleId, Scope};
use time::OffsetDateTime;

// Shared with `engine.rs`; this binary does not use the 1M-assignment model.
#[allow(dead_code)]
mod common;

use common::{Rng, World, percentiles, requests, small};

fn uid(ty: &str, id: impl AsRef<str>) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).expect("valid entity type name"),
        EntityId::new(id),
    )
}

fn action_uid(p: Permission) -> EntityUid {
    uid("Action", p.to_string())
}

fn scope_key(scope: &Scope) -> String {
    match scope {
        Scope::Global => "global".to_owned(),
        Scope::Org { org_id } => format!("org:{org_id}"),
        Scope::Project { project_id, .. } => format!("project:{project_id}"),
    }
}

fn group_uid(role: &Role, scope: &str) -> EntityUid {
    uid("Group", format!("{}@{scope}", role.name))
}

/// The policy set: per role, one `forbid` for its denies and one `permit` per condition over
/// the permissions it grants under that condition.
fn policies(roles: &[Role]) -> String {
    let mut src = String::new();
    for role in roles {
        // Org-owned roles also need "resource is in the role's org" (scope isolation); the
        // benched model has system roles only, so that is not translated.
        assert!(role.org_id.is_none(), "org-owned role {} is not translated", role.name);
        let r = &role.name;
        assert!(
            r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "role name {r} is used as a Cedar attribute name"
        );
        let held = format!(
            "((resource has project && principal in resource.project.{r}) || \
             (resource has org && principal in resource.org.{r}) || \
             principal in Group::\"{r}@global\")"
        );
        let actions = |perms: &[Permission]| {
            perms.iter().map(|p| format!("Action::\"{p}\"")).collect::<Vec<_>>().join(", ")
        };
        if !role.denies.is_empty() {
            let a = actions(&role.denies);
            writeln!(src, "forbid(principal, action in [{a}], resource) when {{ {held} }};")
                .unwrap();
        }
        let mut by_condition: BTreeMap<Option<&Condition>, Vec<Permission>> = BTreeMap::new();
        for g in &role.grants {
            by_condition.entry(g.condition.as_ref()).or_default().push(g.permission);
        }
        for (condition, perms) in by_condition {
            let extra = match condition {
                None => "",
                Some(Condition::Owner) => " && resource has owner && resource.owner == principal",
                Some(Condition::Assignee) => {
                    " && resource has assignees && resource.assignees.contains(principal)"
                }
                Some(other) => panic!("condition {other} is not translated"),
            };
            let a = actions(&perms);
            writeln!(src, "permit(principal, action in [{a}], resource) when {{ {held}{extra} }};")
                .unwrap();
        }
    }
    src
}

/// The entity store: actions, role groups per scope, orgs, projects, tasks and users.
fn entities(snap: &Snapshot, w: &World, now: OffsetDateTime) -> Entities {
    let roles: HashMap<RoleId, &Role> = snap.roles.iter().map(|r| (r.id, r)).collect();
    let mut out = Vec::new();
    for r in RESOURCES {
        let manage = Permission::new(r, Action::Manage);
        for a in ACTIONS {
            let p = Permission::new(r, a);
            let parents = if a == Action::Manage {
                HashSet::new()
            } else {
                HashSet::from([action_uid(manage)])
            };
            out.push(Entity::new_no_attrs(action_uid(p), parents));
        }
    }

    let mut orgs: Vec<_> = w.projects.iter().map(|&(o, _)| o).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let mut scopes = vec![Scope::Global];
    scopes.extend(orgs.iter().map(|&org_id| Scope::Org { org_id }));
    scopes.extend(
        w.projects.iter().map(|&(org_id, project_id)| Scope::Project { org_id, project_id }),
    );
    for scope in &scopes {
        let key = scope_key(scope);
        for role in &snap.roles {
            let parent = role.parent_id.map(|p| group_uid(roles[&p], &key));
            out.push(Entity::new_no_attrs(group_uid(role, &key), parent.into_iter().collect()));
        }
    }
    let role_attrs = |scope: &Scope| -> HashMap<String, RestrictedExpression> {
        let key = scope_key(scope);
        snap.roles
            .iter()
            .map(|r| (r.name.clone(), RestrictedExpression::new_entity_uid(group_uid(r, &key))))
            .collect()
    };
    for &org_id in &orgs {
        let attrs = role_attrs(&Scope::Org { org_id });
        out.push(Entity::new(uid("Org", org_id.to_string()), attrs, HashSet::new()).unwrap());
    }
    for &(org_id, project_id) in &w.projects {
        let mut attrs = role_attrs(&Scope::Project { org_id, project_id });
        attrs.insert(
            "org".into(),
            RestrictedExpression::new_entity_uid(uid("Org", org_id.to_string())),
        );
        let parents = HashSet::from([uid("Org", org_id.to_string())]);
        out.push(Entity::new(uid("Project", project_id.to_string()), attrs, parents).unwrap());
    }
    for t in &w.tasks {
        out.push(task_entity(t));
    }

    let mut memberships: HashMap<_, HashSet<EntityUid>> =
        w.users.iter().map(|&u| (u, HashSet::new())).collect();
    let mut inactive = 0usize;
    for a in &snap.assignments {
        if !a.active_at(now) {
            inactive += 1;
            continue;
        }
        let group = group_uid(roles[&a.role_id], &scope_key(&a.scope));
        memberships.entry(a.user_id).or_default().insert(group);
    }
    assert_eq!(inactive, 0, "the benched model has only active assignments");
    for (u, parents) in memberships {
        out.push(Entity::new_no_attrs(uid("User", u.to_string()), parents));
    }
    Entities::from_entities(out, None).expect("a consistent entity store")
}

fn task_entity(t: &Resource) -> Entity {
    assert_eq!(t.kind, ResourceKind::Task);
    let user =
        |u: &pm_core::id::UserId| RestrictedExpression::new_entity_uid(uid("User", u.to_string()));
    let mut attrs = HashMap::new();
    let org = t.org_id.expect("tasks live in an org");
    let project = t.project_id.expect("tasks live in a project");
    attrs.insert("org".into(), RestrictedExpression::new_entity_uid(uid("Org", org.to_string())));
    attrs.insert(
        "project".into(),
        RestrictedExpression::new_entity_uid(uid("Project", project.to_string())),
    );
    if let Some(owner) = &t.owner {
        attrs.insert("owner".into(), user(owner));
    }
    attrs.insert("assignees".into(), RestrictedExpression::new_set(t.assignees.iter().map(user)));
    let id = t.id.expect("bench tasks have ids");
    let parents = HashSet::from([uid("Project", project.to_string())]);
    Entity::new(uid("Task", id.to_string()), attrs, parents).unwrap()
}

/// Cedar's side: the translated policies and entities, and an authorizer.
struct Cedar {
    policies: PolicySet,
    entities: Entities,
    authorizer: Authorizer,
}

impl Cedar {
    fn is_allowed(&self, request: &Request) -> bool {
        self.authorizer.is_authorized(request, &self.policies, &self.entities).decision()
            == Decision::Allow
    }
}

fn request(u: pm_core::id::UserId, a: Action, r: &Resource) -> Request {
    Request::new(
        uid("User", u.to_string()),
        action_uid(Permission::new(r.kind, a)),
        uid("Task", r.id.expect("bench tasks have ids").to_string()),
        Context::empty(),
        None,
    )
    .expect("a schema-less request")
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(42);
    let (snap, w) = small(&mut rng);
    let reqs = requests(&w, &snap, &mut rng, 200_000);

    let t0 = Instant::now();
    let source = policies(&snap.roles);
    let cedar = Cedar {
        policies: PolicySet::from_str(&source).expect("the translated policies parse"),
        entities: entities(&snap, &w, OffsetDateTime::now_utc()),
        authorizer: Authorizer::new(),
    };
    eprintln!(
        "cedar: {} policies, {} entities, built in {:?}",
        cedar.policies.policies().count(),
        cedar.entities.iter().count(),
        t0.elapsed()
    );
    let t0 = Instant::now();
    let engine = Engine::new(snap, EngineConfig::default()).unwrap();
    eprintln!("engine: built in {:?}", t0.elapsed());
    let cedar_reqs: Vec<Request> = reqs.iter().map(|(u, a, r)| request(*u, *a, r)).collect();

    // An honest comparison needs equal answers: every request, both of our paths, no Cedar
    // evaluation errors (Cedar denies on an error, which would hide a broken translation).
    let mut allowed = 0usize;
    for (i, ((u, a, r), cr)) in reqs.iter().zip(&cedar_reqs).enumerate() {
        let ours = engine.is_allowed_uncached(*u, *a, r);
        let response = cedar.authorizer.is_authorized(cr, &cedar.policies, &cedar.entities);
        assert!(
            response.diagnostics().errors().next().is_none(),
            "request {i}: cedar errors {:?}",
            response.diagnostics().errors().collect::<Vec<_>>()
        );
        let theirs = response.decision() == Decision::Allow;
        assert_eq!(ours, theirs, "request {i} ({u:?} {a:?} {r:?}): engine {ours}, cedar {theirs}");
        allowed += usize::from(ours);
    }
    eprintln!(
        "decisions agree on all {} requests ({:.0}% allowed)",
        reqs.len(),
        100.0 * allowed as f64 / reqs.len() as f64
    );

    // Cached: the engine bench's working set of 1,000 requests, warmed the same way (only these
    // entries in the cache, as there).
    let hot = &reqs[..1_000];
    let cedar_hot = &cedar_reqs[..1_000];
    for (u, a, r) in hot {
        assert_eq!(engine.is_allowed(*u, *a, r), engine.is_allowed_uncached(*u, *a, r));
    }
    let n = reqs.len();
    eprintln!("--- percentiles (individually timed) ---");
    let cached = percentiles(
        "small/ours-cached",
        |i| {
            let (u, a, r) = &hot[i % hot.len()];
            engine.is_allowed(*u, *a, r)
        },
        n,
    );
    let uncached = percentiles(
        "small/ours-uncached",
        |i| {
            let (u, a, r) = &reqs[i];
            engine.is_allowed_uncached(*u, *a, r)
        },
        n,
    );
    let cedar_all = percentiles("small/cedar", |i| cedar.is_allowed(&cedar_reqs[i]), n);
    let cedar_hot_p =
        percentiles("small/cedar-working-set", |i| cedar.is_allowed(&cedar_hot[i % 1_000]), n);
    eprintln!("--- ratios (p50, same run) ---");
    eprintln!(
        "cedar / ours-uncached, 200k mix:     {:>6.1}x   ({} ns / {} ns)",
        cedar_all.p50 as f64 / uncached.p50 as f64,
        cedar_all.p50,
        uncached.p50
    );
    eprintln!(
        "cedar / ours-cached, 1k working set: {:>6.1}x   ({} ns / {} ns)",
        cedar_hot_p.p50 as f64 / cached.p50 as f64,
        cedar_hot_p.p50,
        cached.p50
    );
    eprintln!(
        "cedar 200k mix / ours-cached:        {:>6.1}x",
        cedar_all.p50 as f64 / cached.p50 as f64
    );

    let mut g = c.benchmark_group("cedar");
    let mut i = 0usize;
    g.bench_function("small/ours-cached", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            let (u, a, r) = &hot[i];
            engine.is_allowed(*u, *a, r)
        })
    });
    g.bench_function("small/ours-uncached", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            let (u, a, r) = &reqs[i];
            engine.is_allowed_uncached(*u, *a, r)
        })
    });
    g.bench_function("small/cedar", |b| {
        b.iter(|| {
            i = (i + 1) % cedar_reqs.len();
            cedar.is_allowed(&cedar_reqs[i])
        })
    });
    g.bench_function("small/cedar-working-set", |b| {
        b.iter(|| {
            i = (i + 1) % cedar_hot.len();
            cedar.is_allowed(&cedar_hot[i])
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Random models and requests, and the naive reference model the engine is compared with.
//!
//! Generation is deliberately cheap (a SplitMix64 generator, small pools of ids) so that a debug
//! build runs 100,000+ cases in seconds, and dense (few users, orgs, projects, resource kinds) so
//! that random requests actually hit grants, denies, conditions and validity boundaries.

use std::sync::Arc;

use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::id::{OrgId, ProjectId, UserId};
use pm_permissions::clock::{ManualClock, from_micros};
use pm_permissions::engine::{Engine, EngineConfig, Snapshot};
use pm_permissions::model::*;
use uuid::Uuid;

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Fixed id pools shared by every case (ids need no randomness, only identity).
pub struct Pools {
    pub users: Vec<UserId>,
    pub orgs: Vec<OrgId>,
    /// (org, project)
    pub projects: Vec<(OrgId, ProjectId)>,
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

impl Pools {
    pub fn new() -> Self {
        let users = (1..=3).map(|n| UserId(id(n))).collect();
        let orgs: Vec<OrgId> = (10..=11).map(|n| OrgId(id(n))).collect();
        let projects = vec![
            (orgs[0], ProjectId(id(20))),
            (orgs[0], ProjectId(id(21))),
            (orgs[1], ProjectId(id(22))),
        ];
        Self { users, orgs, projects }
    }
}

pub const KINDS: [ResourceKind; 3] =
    [ResourceKind::Task, ResourceKind::Project, ResourceKind::Comment];
pub const ALL_ACTIONS: [Action; 5] =
    [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Manage];

/// Time is small integers of microseconds; `now` ranges over 0..200.
pub fn t(us: i64) -> time::OffsetDateTime {
    from_micros(us)
}

pub fn random_condition(rng: &mut Rng) -> Option<Condition> {
    match rng.below(10) {
        0..=4 => None,
        5 => Some(Condition::Owner),
        6 => Some(Condition::Assignee),
        7 => Some(Condition::Watcher),
        8 => Some(Condition::ProjectMember),
        _ => Some(Condition::OrgMember),
    }
}

pub fn random_permission(rng: &mut Rng) -> Permission {
    Permission::new(*rng.pick(&KINDS), *rng.pick(&ALL_ACTIONS))
}

pub fn random_scope(rng: &mut Rng, p: &Pools) -> Scope {
    match rng.below(10) {
        0..=1 => Scope::Global,
        2..=5 => Scope::Org { org_id: *rng.pick(&p.orgs) },
        _ => {
            let (org_id, project_id) = *rng.pick(&p.projects);
            Scope::Project { org_id, project_id }
        }
    }
}

fn random_bound(rng: &mut Rng) -> Option<time::OffsetDateTime> {
    if rng.chance(50) { None } else { Some(t(rng.below(200) as i64)) }
}

pub fn random_role(rng: &mut Rng, p: &Pools, n: usize, parent: Option<RoleId>) -> Role {
    let org_id = if rng.chance(70) { None } else { Some(*rng.pick(&p.orgs)) };
    let grants = (0..1 + rng.below(6))
        .map(|_| Grant { permission: random_permission(rng), condition: random_condition(rng) })
        .collect();
    let denies = if rng.chance(20) { vec![random_permission(rng)] } else { vec![] };
    Role {
        id: RoleId(id(1000 + n as u128)),
        org_id,
        name: format!("r{n}"),
        description: String::new(),
        parent_id: parent,
        grants,
        denies,
        version: 1,
        created_at: t(0),
        updated_at: t(0),
    }
}

pub fn random_assignment(rng: &mut Rng, p: &Pools, roles: &[Role], n: u64) -> Assignment {
    let role = rng.pick(roles);
    let (valid_from, valid_until) = (random_bound(rng), random_bound(rng));
    Assignment {
        id: AssignmentId(Uuid::from_u64_pair(0x0190_0000_0000_7000, 0x8000_0000_0000_0000 | n)),
        user_id: *rng.pick(&p.users),
        role_id: role.id,
        scope: random_scope(rng, p),
        valid_from,
        valid_until,
        granted_by: None,
        reason: String::new(),
        created_at: t(0),
    }
}

/// A random acyclic model: up to 6 roles (parents among earlier roles), 2 to 11 assignments.
pub fn random_model(rng: &mut Rng, p: &Pools) -> Snapshot {
    let mut roles: Vec<Role> = Vec::new();
    for n in 0..1 + rng.below(6) as usize {
        let parent =
            if !roles.is_empty() && rng.chance(50) { Some(rng.pick(&roles).id) } else { None };
        roles.push(random_role(rng, p, n, parent));
    }
    let assignments =
        (0..2 + rng.below(10)).map(|n| random_assignment(rng, p, &roles, n)).collect();
    Snapshot { roles, assignments, revision: 0 }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub user: UserId,
    pub action: Action,
    pub resource: Resource,
    pub now: i64,
}

pub fn random_request(rng: &mut Rng, p: &Pools) -> Request {
    let (org, project) = match rng.below(10) {
        0 => (None, None),
        1..=3 => (Some(*rng.pick(&p.orgs)), None),
        4 => {
            // A project under the wrong org (or a forged resource): must match nothing scoped.
            (Some(*rng.pick(&p.orgs)), Some(rng.pick(&p.projects).1))
        }
        _ => {
            let (o, pr) = *rng.pick(&p.projects);
            (Some(o), Some(pr))
        }
    };
    let mut r = Resource::new(*rng.pick(&KINDS), org, project);
    if rng.chance(60) {
        r.owner = Some(*rng.pick(&p.users));
    }
    for u in &p.users {
        if rng.chance(30) {
            r.assignees.push(*u);
        }
        if rng.chance(20) {
            r.watchers.push(*u);
        }
    }
    Request {
        user: *rng.pick(&p.users),
        action: *rng.pick(&ALL_ACTIONS),
        resource: r,
        now: rng.below(200) as i64,
    }
}

pub fn engine(model: &Snapshot, clock: Arc<ManualClock>) -> Engine {
    Engine::with_clock(model.clone(), EngineConfig::default(), clock).expect("valid model")
}

// ---------------------------------------------------------------------------------------------
// The reference model: the rules as written, by linear scans, no index, no cache.

fn grants_action(granted: Permission, wanted: Permission) -> bool {
    granted.resource == wanted.resource
        && (granted.action == wanted.action || granted.action == Action::Manage)
}

fn reference_condition(m: &Snapshot, c: &Condition, req: &Request) -> bool {
    let now = t(req.now);
    let r = &req.resource;
    match c {
        Condition::Owner => r.owner == Some(req.user),
        Condition::Assignee => r.assignees.contains(&req.user),
        Condition::Watcher => r.watchers.contains(&req.user),
        Condition::ProjectMember => m.assignments.iter().any(|a| {
            a.user_id == req.user
                && a.active_at(now)
                && matches!(a.scope, Scope::Project { org_id, project_id }
                    if Some(org_id) == r.org_id && Some(project_id) == r.project_id)
        }),
        Condition::OrgMember => m.assignments.iter().any(|a| {
            a.user_id == req.user
                && a.active_at(now)
                && r.org_id.is_some()
                && a.scope.org_id() == r.org_id
        }),
        Condition::Expr { .. } => unreachable!("not generated"),
    }
}

/// The decision by the book.
pub fn reference(m: &Snapshot, req: &Request) -> bool {
    let wanted = Permission::new(req.resource.kind, req.action);
    let now = t(req.now);
    let (mut allowed, mut denied) = (false, false);
    for a in &m.assignments {
        if a.user_id != req.user || !a.active_at(now) || !a.scope.covers(&req.resource) {
            continue;
        }
        let role = m.roles.iter().find(|r| r.id == a.role_id).unwrap();
        if role.org_id.is_some() && role.org_id != req.resource.org_id {
            continue;
        }
        let mut cur = Some(role);
        while let Some(r) = cur {
            denied |= r.denies.iter().any(|d| grants_action(*d, wanted));
            allowed |= r.grants.iter().any(|g| {
                grants_action(g.permission, wanted)
                    && g.condition.as_ref().is_none_or(|c| reference_condition(m, c, req))
            });
            cur = r.parent_id.map(|p| m.roles.iter().find(|x| x.id == p).unwrap());
        }
    }
    allowed && !denied
}

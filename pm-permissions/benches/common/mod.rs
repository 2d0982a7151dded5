//! The model and request mix shared by the engine benches (`engine.rs`, `cedar.rs`), so the
//! cedar-policy comparison runs on exactly the model the engine's own figures come from.
//!
//! Each bench binary compiles this module separately and uses part of it (the cedar bench has
//! no 1M-assignment model), hence the `dead_code` allowance at its `mod` declaration.

use std::hint::black_box;
use std::time::Instant;

use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::id::{OrgId, ProjectId, UserId};
use pm_permissions::defaults;
use pm_permissions::engine::Snapshot;
use pm_permissions::model::*;
use time::OffsetDateTime;

/// SplitMix64: a fixed seed gives the same model shape on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn default_roles() -> Vec<Role> {
    let now = OffsetDateTime::now_utc();
    let mut roles: Vec<Role> = Vec::new();
    for t in defaults::templates() {
        let parent_id = t.parent.as_ref().map(|p| roles.iter().find(|r| &r.name == p).unwrap().id);
        roles.push(Role {
            id: RoleId::new(),
            org_id: None,
            name: t.name,
            description: t.description,
            parent_id,
            grants: t.grants,
            denies: t.denies,
            version: 1,
            created_at: now,
            updated_at: now,
        });
    }
    roles
}

/// Users, (org, project) pairs and tasks; every task has an id, an owner and one assignee.
pub struct World {
    pub users: Vec<UserId>,
    pub projects: Vec<(OrgId, ProjectId)>,
    pub tasks: Vec<Resource>,
}

pub fn assignment(user: UserId, role: RoleId, scope: Scope, rng: &mut Rng) -> Assignment {
    let now = OffsetDateTime::now_utc();
    // A quarter of the assignments expire (in the future), so entries carry a real deadline.
    let valid_until = (rng.below(4) == 0).then(|| now + time::Duration::days(30));
    Assignment {
        id: AssignmentId::new(),
        user_id: user,
        role_id: role,
        scope,
        valid_from: None,
        valid_until,
        granted_by: None,
        reason: String::new(),
        created_at: now,
    }
}

pub fn world(users: usize, orgs: usize, projects_per_org: usize, rng: &mut Rng) -> World {
    let orgs: Vec<OrgId> = (0..orgs).map(|_| OrgId::new()).collect();
    let projects: Vec<(OrgId, ProjectId)> = orgs
        .iter()
        .flat_map(|&o| (0..projects_per_org).map(move |_| (o, ProjectId::new())))
        .collect();
    let users: Vec<UserId> = (0..users).map(|_| UserId::new()).collect();
    let tasks = (0..10_000)
        .map(|_| {
            let (o, p) = projects[rng.below(projects.len())];
            let owner = users[rng.below(users.len())];
            let assignee = users[rng.below(users.len())];
            // The id is not used by the engine; the cedar bench names its `Task` entities by it.
            Resource::new(ResourceKind::Task, Some(o), Some(p))
                .with_id(uuid::Uuid::now_v7())
                .with_owner(owner)
                .with_assignees([assignee])
        })
        .collect();
    World { users, projects, tasks }
}

/// 10k users, 100 projects, 10k tasks, default hierarchy, one assignment per user.
pub fn small(rng: &mut Rng) -> (Snapshot, World) {
    let w = world(10_000, 10, 10, rng);
    let roles = default_roles();
    let assignments = w
        .users
        .iter()
        .map(|&u| {
            let role = roles[rng.below(3)].id; // viewer, team_member, project_manager
            let (org_id, project_id) = w.projects[rng.below(w.projects.len())];
            let scope = if rng.below(3) == 0 {
                Scope::Org { org_id }
            } else {
                Scope::Project { org_id, project_id }
            };
            assignment(u, role, scope, rng)
        })
        .collect();
    (Snapshot { roles, assignments, revision: 1 }, w)
}

/// 1M assignments (100k users × 10 over 1,000 projects), 10k roles.
pub fn large(rng: &mut Rng, base: &World) -> Snapshot {
    let now = OffsetDateTime::now_utc();
    let mut roles = default_roles();
    let perms: Vec<Permission> =
        defaults::permissions().into_iter().map(|d| d.permission).collect();
    while roles.len() < 10_000 {
        let n = roles.len();
        // Chains of at most 4: a parent among the 4 defaults or a root.
        let parent_id = (rng.below(2) == 0).then(|| roles[rng.below(4)].id);
        let grants =
            (0..1 + rng.below(5)).map(|_| Grant::always(perms[rng.below(perms.len())])).collect();
        roles.push(Role {
            id: RoleId::new(),
            org_id: None,
            name: format!("role{n}"),
            description: String::new(),
            parent_id,
            grants,
            denies: vec![],
            version: 1,
            created_at: now,
            updated_at: now,
        });
    }
    let extra = world(90_000, 100, 9, rng);
    let mut users = base.users.clone();
    users.extend(extra.users);
    let mut projects = base.projects.clone();
    projects.extend(extra.projects);
    let mut assignments = Vec::with_capacity(1_000_000);
    for &u in &users {
        for _ in 0..10 {
            let role = roles[rng.below(roles.len())].id;
            let (org_id, project_id) = projects[rng.below(projects.len())];
            assignments.push(assignment(u, role, Scope::Project { org_id, project_id }, rng));
        }
    }
    Snapshot { roles, assignments, revision: 1 }
}

/// Half the requests target a task inside a scope where the user holds an assignment (so grants,
/// conditions and inheritance are exercised), half a random task (mostly denials).
pub fn requests(
    w: &World,
    snap: &Snapshot,
    rng: &mut Rng,
    n: usize,
) -> Vec<(UserId, Action, Resource)> {
    let actions = [Action::Read, Action::Update, Action::Delete];
    let mut by_project: std::collections::HashMap<ProjectId, Vec<usize>> = Default::default();
    for (i, t) in w.tasks.iter().enumerate() {
        by_project.entry(t.project_id.unwrap()).or_default().push(i);
    }
    (0..n)
        .map(|_| {
            let action = actions[rng.below(actions.len())];
            if rng.below(2) == 0 {
                let a = &snap.assignments[rng.below(snap.assignments.len())];
                let project = match a.scope {
                    Scope::Project { project_id, .. } => project_id,
                    Scope::Org { org_id } => {
                        let in_org: Vec<_> =
                            w.projects.iter().filter(|(o, _)| *o == org_id).collect();
                        in_org[rng.below(in_org.len())].1
                    }
                    Scope::Global => w.projects[0].1,
                };
                if let Some(ts) = by_project.get(&project) {
                    let t = w.tasks[ts[rng.below(ts.len())]].clone();
                    return (a.user_id, action, t);
                }
            }
            let u = w.users[rng.below(w.users.len())];
            (u, action, w.tasks[rng.below(w.tasks.len())].clone())
        })
        .collect()
}

/// Percentiles of individually timed calls, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

/// Times `f(0..n)` one call at a time and prints p50/p99/p99.9 and the share of `true`.
pub fn percentiles(name: &str, mut f: impl FnMut(usize) -> bool, n: usize) -> Percentiles {
    let mut samples = Vec::with_capacity(n);
    let mut allowed = 0usize;
    for i in 0..n {
        let t0 = Instant::now();
        let a = black_box(f(i));
        samples.push(t0.elapsed().as_nanos() as u64);
        allowed += usize::from(a);
    }
    samples.sort_unstable();
    let p = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    let out = Percentiles { p50: p(0.50), p99: p(0.99), p999: p(0.999) };
    eprintln!(
        "{name:<34} p50 {:>6} ns   p99 {:>6} ns   p99.9 {:>6} ns   ({:.0}% allowed)",
        out.p50,
        out.p99,
        out.p999,
        100.0 * allowed as f64 / n as f64
    );
    out
}

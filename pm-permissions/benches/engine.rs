//! Engine benchmarks: cached and uncached checks on a realistic model, and the same at scale.
//!
//! Run: `cargo bench -p pm-permissions --bench engine`. Before criterion's runs it prints a
//! percentile table (p50/p99 over 200,000 individually timed checks; each timing includes ~20 ns
//! of `Instant` overhead) for:
//!
//! - `small`: 10,000 users, 10 orgs × 10 projects, 10,000 tasks, the 4-level default hierarchy
//!   (viewer ← team_member ← project_manager ← admin), one assignment per user (10k);
//! - `large`: the same requests against 1,000,000 assignments (100,000 users × 10, over 1,000
//!   projects) and 10,000 roles (random grants, chains up to 4 deep).
//!
//! "cached" repeats a working set of (user, project) pairs so the decision cache hits; "uncached"
//! bypasses the cache (`is_allowed_uncached`), i.e. the full indexed evaluation.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::id::{OrgId, ProjectId, UserId};
use pm_permissions::defaults;
use pm_permissions::engine::{Engine, EngineConfig, Snapshot};
use pm_permissions::model::*;
use time::OffsetDateTime;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn default_roles() -> Vec<Role> {
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

struct World {
    users: Vec<UserId>,
    projects: Vec<(OrgId, ProjectId)>,
    tasks: Vec<Resource>,
}

fn assignment(user: UserId, role: RoleId, scope: Scope, rng: &mut Rng) -> Assignment {
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

fn world(users: usize, orgs: usize, projects_per_org: usize, rng: &mut Rng) -> World {
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
            Resource::new(ResourceKind::Task, Some(o), Some(p))
                .with_owner(owner)
                .with_assignees([assignee])
        })
        .collect();
    World { users, projects, tasks }
}

/// 10k users, 100 projects, 10k tasks, default hierarchy, one assignment per user.
fn small(rng: &mut Rng) -> (Snapshot, World) {
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
fn large(rng: &mut Rng, base: &World) -> Snapshot {
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
fn requests(
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

fn percentiles(name: &str, mut f: impl FnMut(usize) -> bool, n: usize) {
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
    eprintln!(
        "{name:<34} p50 {:>6} ns   p99 {:>6} ns   p99.9 {:>6} ns   ({:.0}% allowed)",
        p(0.50),
        p(0.99),
        p(0.999),
        100.0 * allowed as f64 / n as f64
    );
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(42);
    let (snap, w) = small(&mut rng);
    let reqs = requests(&w, &snap, &mut rng, 200_000);
    let small_engine = Engine::new(snap, EngineConfig::default()).unwrap();
    // Cached: a working set of 1,000 requests, so (user, org, project) entries are warm.
    let hot: Vec<_> = reqs[..1_000].to_vec();
    for (u, a, r) in &hot {
        small_engine.is_allowed(*u, *a, r);
    }
    eprintln!("--- percentiles (individually timed) ---");
    percentiles(
        "small/cached",
        |i| {
            let (u, a, r) = &hot[i % hot.len()];
            small_engine.is_allowed(*u, *a, r)
        },
        200_000,
    );
    percentiles(
        "small/uncached",
        |i| {
            let (u, a, r) = &reqs[i];
            small_engine.is_allowed_uncached(*u, *a, r)
        },
        200_000,
    );

    let t0 = Instant::now();
    let big = large(&mut rng, &w);
    let big_reqs = requests(&w, &big, &mut rng, 200_000);
    let big_hot: Vec<_> = big_reqs[..1_000].to_vec();
    let big_engine = Engine::new(big, EngineConfig::default()).unwrap();
    eprintln!(
        "large model: {} assignments, {} roles, built in {:?}",
        big_engine.assignment_count(),
        big_engine.roles().len(),
        t0.elapsed()
    );
    for (u, a, r) in &big_hot {
        big_engine.is_allowed(*u, *a, r);
    }
    percentiles(
        "large/cached",
        |i| {
            let (u, a, r) = &big_hot[i % big_hot.len()];
            big_engine.is_allowed(*u, *a, r)
        },
        200_000,
    );
    percentiles(
        "large/uncached",
        |i| {
            let (u, a, r) = &big_reqs[i];
            big_engine.is_allowed_uncached(*u, *a, r)
        },
        200_000,
    );

    let mut g = c.benchmark_group("check");
    let mut i = 0usize;
    g.bench_function("small/cached", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            let (u, a, r) = &hot[i];
            small_engine.is_allowed(*u, *a, r)
        })
    });
    g.bench_function("small/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            let (u, a, r) = &reqs[i];
            small_engine.is_allowed_uncached(*u, *a, r)
        })
    });
    g.bench_function("large/cached", |b| {
        b.iter(|| {
            i = (i + 1) % big_hot.len();
            let (u, a, r) = &big_hot[i];
            big_engine.is_allowed(*u, *a, r)
        })
    });
    g.bench_function("large/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % big_reqs.len();
            let (u, a, r) = &big_reqs[i];
            big_engine.is_allowed_uncached(*u, *a, r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

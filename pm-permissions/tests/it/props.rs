//! Property tests of the engine's invariants: deny overrides, inheritance monotonicity, scope
//! isolation, cache coherence under random interleavings of grants, revokes and clock moves.

use std::sync::Arc;

use pm_permissions::clock::ManualClock;
use pm_permissions::engine::Change;
use pm_permissions::model::*;
use proptest::prelude::*;

use crate::model_gen::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// An active global assignment of a role denying the permission wins over every grant.
    #[test]
    fn deny_overrides_allow(seed in any::<u64>()) {
        let pools = Pools::new();
        let mut rng = Rng(seed);
        let mut model = random_model(&mut rng, &pools);
        let req = random_request(&mut rng, &pools);
        let perm = Permission::new(req.resource.kind, req.action);
        // Grant everything too, so there is something to override.
        let mut denier = random_role(&mut rng, &pools, 99, None);
        denier.org_id = None;
        denier.grants = vec![Grant::always(perm)];
        denier.denies = vec![if rng.chance(50) {
            perm
        } else {
            Permission::new(perm.resource, Action::Manage)
        }];
        let mut a = random_assignment(&mut rng, &pools, std::slice::from_ref(&denier), 99);
        a.user_id = req.user;
        a.scope = Scope::Global;
        a.valid_from = None;
        a.valid_until = None;
        model.roles.push(denier);
        model.assignments.push(a);
        let clock = Arc::new(ManualClock::at(t(req.now)));
        let e = engine(&model, clock);
        prop_assert!(!e.is_allowed(req.user, req.action, &req.resource));
        prop_assert!(!reference(&model, &req));
    }

    /// A role without denies allows everything its parent allows (in place of the parent).
    #[test]
    fn inheritance_is_monotone(seed in any::<u64>()) {
        let pools = Pools::new();
        let mut rng = Rng(seed);
        let base = random_model(&mut rng, &pools);
        let parent = rng.pick(&base.roles).clone();
        let mut child = random_role(&mut rng, &pools, 77, Some(parent.id));
        child.denies.clear();
        child.org_id = parent.org_id;
        let mut with_parent = base.clone();
        let mut with_child = base.clone();
        with_child.roles.push(child.clone());
        with_parent.roles.push(child.clone());
        let a = {
            let mut a = random_assignment(&mut rng, &pools, std::slice::from_ref(&parent), 77);
            a.valid_from = None;
            a.valid_until = None;
            a
        };
        with_parent.assignments.push(a.clone());
        with_child.assignments.push(Assignment { role_id: child.id, ..a });
        let clock = Arc::new(ManualClock::at(t(0)));
        let ep = engine(&with_parent, clock.clone());
        let ec = engine(&with_child, clock.clone());
        for _ in 0..64 {
            let req = random_request(&mut rng, &pools);
            clock.set(t(req.now));
            let p = ep.is_allowed(req.user, req.action, &req.resource);
            let c = ec.is_allowed(req.user, req.action, &req.resource);
            prop_assert!(!p || c, "parent allows but child does not: {req:?}");
        }
    }

    /// Nothing scoped to (or owned by) org A changes a decision about a resource outside A.
    #[test]
    fn scope_isolation(seed in any::<u64>()) {
        let pools = Pools::new();
        let mut rng = Rng(seed);
        let model = random_model(&mut rng, &pools);
        let req = random_request(&mut rng, &pools);
        let Some(b) = req.resource.org_id else { return Ok(()) };
        let a_org = *pools.orgs.iter().find(|o| **o != b).unwrap();
        // Drop everything of org A, then add a lot of org-A power.
        let mut stripped = model.clone();
        stripped.assignments.retain(|x| x.scope.org_id() != Some(a_org));
        let mut boosted = model.clone();
        let mut a_role = random_role(&mut rng, &pools, 55, None);
        a_role.org_id = Some(a_org);
        a_role.grants = ALL_ACTIONS
            .iter()
            .flat_map(|&act| KINDS.iter().map(move |&k| Grant::always(Permission::new(k, act))))
            .collect();
        let mut sys = a_role.clone();
        sys.id = RoleId::new();
        sys.org_id = None;
        sys.name = "sys55".into();
        for (n, (role, scope)) in [
            (a_role.id, Scope::Org { org_id: a_org }),
            (sys.id, Scope::Org { org_id: a_org }),
            (a_role.id, Scope::Global), // an org role can never leak out of its org
            (sys.id, Scope::Project { org_id: a_org, project_id: req.resource.project_id.unwrap_or_default() }),
        ].into_iter().enumerate() {
            let mut x = random_assignment(&mut rng, &pools, std::slice::from_ref(&sys), 500 + n as u64);
            x.user_id = req.user;
            x.role_id = role;
            x.scope = scope;
            x.valid_from = None;
            x.valid_until = None;
            boosted.assignments.push(x);
        }
        boosted.roles.push(a_role);
        boosted.roles.push(sys);
        let clock = Arc::new(ManualClock::at(t(req.now)));
        let d0 = engine(&model, clock.clone()).is_allowed(req.user, req.action, &req.resource);
        let d1 = engine(&stripped, clock.clone()).is_allowed(req.user, req.action, &req.resource);
        let d2 = engine(&boosted, clock.clone()).is_allowed(req.user, req.action, &req.resource);
        prop_assert_eq!(d0, d1);
        prop_assert_eq!(d0, d2);
    }

    /// Cached answers equal fresh answers (and the reference) across random interleavings of
    /// checks, grants, revokes, role edits and clock moves in both directions.
    #[test]
    fn cache_coherence(seed in any::<u64>()) {
        let pools = Pools::new();
        let mut rng = Rng(seed);
        let mut model = random_model(&mut rng, &pools);
        let clock = Arc::new(ManualClock::at(t(100)));
        let e = engine(&model, clock.clone());
        let mut now = 100i64;
        let mut next_id = 1000u64;
        let mut rev = 0i64;
        for _ in 0..120 {
            match rng.below(10) {
                0 => {
                    next_id += 1;
                    let a = random_assignment(&mut rng, &pools, &model.roles, next_id);
                    rev += 1;
                    e.apply(Change::Grant(a.clone()), rev).unwrap();
                    model.assignments.push(a);
                }
                1 if !model.assignments.is_empty() => {
                    let i = rng.below(model.assignments.len() as u64) as usize;
                    let a = model.assignments.remove(i);
                    rev += 1;
                    e.apply(Change::Revoke(a.id), rev).unwrap();
                }
                2 => {
                    // Edit a role's grants (parents unchanged: stays acyclic).
                    let i = rng.below(model.roles.len() as u64) as usize;
                    let mut r = model.roles[i].clone();
                    let fresh = random_role(&mut rng, &pools, 0, None);
                    r.grants = fresh.grants;
                    r.denies = fresh.denies;
                    rev += 1;
                    e.apply(Change::PutRole(r.clone()), rev).unwrap();
                    model.roles[i] = r;
                }
                3 => {
                    now = (now + rng.below(30) as i64 - 10).clamp(0, 199);
                    clock.set(t(now));
                }
                _ => {
                    let mut req = random_request(&mut rng, &pools);
                    req.now = now;
                    let want = reference(&model, &req);
                    let cached = e.is_allowed(req.user, req.action, &req.resource);
                    let fresh = e.is_allowed_uncached(req.user, req.action, &req.resource);
                    prop_assert_eq!(cached, want, "cached vs reference: {:?}", req);
                    prop_assert_eq!(fresh, want, "uncached vs reference: {:?}", req);
                }
            }
        }
    }
}

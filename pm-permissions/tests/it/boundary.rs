//! An assignment stops granting exactly at `valid_until` and starts exactly at `valid_from`,
//! cached or not, with an injected clock standing on the boundaries.

use std::sync::Arc;

use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::id::{OrgId, UserId};
use pm_permissions::clock::ManualClock;
use pm_permissions::engine::{Engine, EngineConfig, Snapshot};
use pm_permissions::model::*;
use time::Duration;
use time::macros::datetime;

const US: Duration = Duration::microseconds(1);

fn setup() -> (Arc<ManualClock>, Engine, UserId, Resource, Assignment) {
    let from = datetime!(2030-01-01 09:00 UTC);
    let until = datetime!(2030-01-01 17:00 UTC);
    let clock = Arc::new(ManualClock::at(from - Duration::hours(1)));
    let org = OrgId::new();
    let role = Role {
        id: RoleId::new(),
        org_id: None,
        name: "editor".into(),
        description: String::new(),
        parent_id: None,
        grants: vec![Grant::always(Permission::new(ResourceKind::Task, Action::Update))],
        denies: vec![],
        version: 1,
        created_at: from,
        updated_at: from,
    };
    let user = UserId::new();
    let a = Assignment {
        id: AssignmentId::new(),
        user_id: user,
        role_id: role.id,
        scope: Scope::Org { org_id: org },
        valid_from: Some(from),
        valid_until: Some(until),
        granted_by: None,
        reason: "shift".into(),
        created_at: from,
    };
    let engine = Engine::with_clock(
        Snapshot { roles: vec![role], assignments: vec![a.clone()], revision: 2 },
        EngineConfig::default(),
        clock.clone(),
    )
    .unwrap();
    let res = Resource::new(ResourceKind::Task, Some(org), None);
    (clock, engine, user, res, a)
}

#[test]
fn valid_until_is_exclusive_cached_or_not() {
    let (clock, e, user, res, a) = setup();
    let (from, until) = (a.valid_from.unwrap(), a.valid_until.unwrap());
    let check = |e: &Engine| {
        let cached = e.is_allowed(user, Action::Update, &res);
        let cached_again = e.is_allowed(user, Action::Update, &res);
        let uncached = e.is_allowed_uncached(user, Action::Update, &res);
        assert_eq!(cached, uncached, "at {}", clock_now(&clock));
        assert_eq!(cached, cached_again);
        cached
    };
    // Warm the cache well before: the entry must die at valid_from.
    assert!(!check(&e));
    clock.set(from - US);
    assert!(!check(&e));
    clock.set(from);
    assert!(check(&e), "active exactly at valid_from");
    // Warm at the start of the window, then stand one microsecond before the end.
    clock.set(until - US);
    assert!(check(&e), "still active one microsecond before valid_until");
    clock.set(until);
    assert!(!check(&e), "inactive exactly at valid_until");
    clock.set(until + Duration::days(1));
    assert!(!check(&e));
    // The clock going backwards revives the cached window correctly too.
    clock.set(until - US);
    assert!(check(&e));
    clock.set(from - US);
    assert!(!check(&e));
}

#[test]
fn entry_cached_inside_window_dies_at_valid_until() {
    let (clock, e, user, res, a) = setup();
    clock.set(a.valid_from.unwrap() + Duration::minutes(5));
    assert!(e.is_allowed(user, Action::Update, &res)); // fills the cache
    clock.set(a.valid_until.unwrap());
    assert!(!e.is_allowed(user, Action::Update, &res));
    let ex = e.explain(&pm_core::event::Actor::User(user), Action::Update, &res);
    assert!(!ex.allowed);
    assert!(
        matches!(ex.missing, Some(pm_permissions::engine::MissingGrant::Inactive { .. })),
        "{ex:#?}"
    );
}

fn clock_now(c: &ManualClock) -> time::OffsetDateTime {
    use pm_permissions::clock::Clock;
    c.now()
}

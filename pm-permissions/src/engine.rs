//! The evaluator: an in-memory index of roles and assignments, a decision cache, `explain` and
//! effective permissions. Implements pm-core's [`Authorizer`].
//!
//! How a check runs (`user`, `action`, `resource`):
//!
//! 1. The permission `(resource.kind, action)` is a bit in a 40-bit set.
//! 2. The *effective set* of the user at the resource's (org, project) is the union of the
//!    flattened grants/denies of the roles of the user's active assignments at scope Global,
//!    `Org(resource.org)` and `Project(resource.project)` — three hash lookups by (user, scope),
//!    never a scan over rules or assignments of other users. Roles are flattened (inheritance
//!    resolved into bit sets) once, when indexed.
//! 3. Deny bits win; then unconditional allow bits; then the conditional grants for this bit are
//!    evaluated against the resource (conditions are always evaluated fresh, never cached).
//!
//! The cache holds effective sets keyed by (user, org, project). Each entry records the interval
//! `[lo, hi)` of clock time during which the set it holds cannot change — bounded by the nearest
//! `valid_from`/`valid_until` of the assignments it considered — so an entry dies exactly at the
//! earliest boundary it relied on, whichever way the clock moves. Every change to the index bumps
//! the local revision and clears the cache under the index's write lock, so a grant or revoke is
//! visible to the very next check. The index also records the store revision it reflects (the
//! audit log's last `seq`), which other instances compare with the store's to notice changes
//! (see [`crate::PermissionService::refresh_if_stale`]).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use pm_core::authz::{Authorizer, Decision};
use pm_core::event::Actor;
use pm_core::id::{OrgId, ProjectId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock, from_micros, micros};
use crate::condition::CompiledCondition;
use crate::model::*;
use crate::{Error, Result};

/// The default limit on inheritance depth (a role and up to 7 ancestors).
pub const DEFAULT_MAX_DEPTH: usize = 8;

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Longest allowed inheritance chain, counting the role itself.
    pub max_depth: usize,
    /// Cached effective sets kept before the cache is emptied.
    pub cache_capacity: usize,
    /// Which non-user actors are trusted to do anything.
    pub service_actors: ServiceActors,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            cache_capacity: 262_144,
            service_actors: ServiceActors::default(),
        }
    }
}

/// Non-user actors have no assignments; these switches say which of them are allowed everything.
/// Defaults: `System` (migrations, maintenance, seeding) and automations and integrations, which
/// pm-server only runs on behalf of rules and connections that users with `workflow.manage` /
/// `integration.manage` set up. Hosts that want them held to nothing set these to `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceActors {
    /// `Actor::System`.
    pub system: bool,
    /// `Actor::Automation`.
    pub automation: bool,
    /// `Actor::Integration`.
    pub integration: bool,
}

impl Default for ServiceActors {
    fn default() -> Self {
        Self { system: true, automation: true, integration: true }
    }
}

/// Everything the engine indexes: roles, assignments, and the store revision they reflect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// All roles.
    pub roles: Vec<Role>,
    /// All assignments.
    pub assignments: Vec<Assignment>,
    /// The store revision (audit `seq`) this snapshot reflects.
    pub revision: i64,
}

/// One change to apply to a loaded engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A role was created or updated.
    PutRole(Role),
    /// A role was deleted.
    DeleteRole(RoleId),
    /// An assignment was granted.
    Grant(Assignment),
    /// An assignment was revoked.
    Revoke(AssignmentId),
}

// ---------------------------------------------------------------------------------------------
// Hashing: ids are UUIDv7 with random low bits, so a multiplicative hash of the 64-bit halves
// spreads them well at a fraction of SipHash's cost.

#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheKey {
    user: u128,
    org: u128,
    project: u128,
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(self.user);
        h.write_u128(self.org);
        h.write_u128(self.project);
    }
}

impl CacheKey {
    fn new(user: UserId, org: Option<OrgId>, project: Option<ProjectId>) -> Self {
        Self {
            user: user.0.as_u128(),
            org: org.map_or(0, |o| o.0.as_u128()),
            project: project.map_or(0, |p| p.0.as_u128()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The index

/// A role with its inheritance resolved into bit sets.
#[derive(Debug, Clone)]
struct CompiledRole {
    org: Option<OrgId>,
    allow: u64,
    deny: u64,
    cond_mask: u64,
    /// Conditional grants: (permission bit, condition index).
    conds: Box<[(u8, u32)]>,
    /// Role indexes: the role, its parent, its grandparent, …
    chain: Box<[u32]>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: AssignmentId,
    role: u32,
    org: Option<OrgId>,
    from: i64,
    until: i64,
}

impl Slot {
    fn active(&self, now: i64) -> bool {
        self.from <= now && now < self.until
    }
}

#[derive(Debug, Default, Clone)]
struct UserSlots {
    global: Vec<Slot>,
    orgs: FxMap<OrgId, Vec<Slot>>,
    projects: FxMap<ProjectId, Vec<Slot>>,
    /// Project-scoped slots by their organization (for "org member").
    org_projects: FxMap<OrgId, Vec<Slot>>,
}

impl UserSlots {
    fn lists(&mut self, scope: &Scope) -> Vec<&mut Vec<Slot>> {
        match *scope {
            Scope::Global => vec![&mut self.global],
            Scope::Org { org_id } => vec![self.orgs.entry(org_id).or_default()],
            Scope::Project { org_id, project_id } => vec![
                self.projects.entry(project_id).or_default(),
                self.org_projects.entry(org_id).or_default(),
            ],
        }
    }
}

/// The effective set of a user at an (org, project).
#[derive(Debug, Clone, Default)]
struct Effective {
    allow: u64,
    deny: u64,
    cond_mask: u64,
    conds: Vec<(u8, u32)>,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    revision: u64,
    lo: i64,
    hi: i64,
    eff: Effective,
}

#[derive(Debug, Default)]
struct Index {
    roles: Vec<Option<Role>>,
    role_idx: FxMap<RoleId, u32>,
    compiled: Vec<Option<CompiledRole>>,
    conditions: Vec<CompiledCondition>,
    cond_idx: HashMap<Condition, u32>,
    users: FxMap<UserId, UserSlots>,
    assignments: FxMap<AssignmentId, Assignment>,
    store_revision: i64,
    revision: u64,
}

fn slot_of(a: &Assignment, role: u32) -> Slot {
    Slot {
        id: a.id,
        role,
        org: a.scope.org_id(),
        from: a.valid_from.map_or(i64::MIN, micros),
        until: a.valid_until.map_or(i64::MAX, micros),
    }
}

impl Index {
    fn build(snapshot: Snapshot, max_depth: usize) -> Result<Self> {
        let mut idx = Index { store_revision: snapshot.revision, ..Index::default() };
        for r in snapshot.roles {
            idx.put_role_def(r);
        }
        idx.compiled = idx.compile_roles(max_depth)?;
        for a in snapshot.assignments {
            idx.grant(a)?;
        }
        Ok(idx)
    }

    fn put_role_def(&mut self, r: Role) {
        match self.role_idx.get(&r.id) {
            Some(&i) => self.roles[i as usize] = Some(r),
            None => {
                let i = u32::try_from(self.roles.len()).expect("fewer than 2^32 roles");
                self.role_idx.insert(r.id, i);
                self.roles.push(Some(r));
            }
        }
    }

    fn condition(&mut self, c: &Condition) -> u32 {
        if let Some(&i) = self.cond_idx.get(c) {
            return i;
        }
        let compiled = CompiledCondition::compile(c).unwrap_or_else(|e| {
            tracing::warn!(condition = %c, error = %e, "pm-permissions: condition does not compile; it never holds");
            CompiledCondition::never(c)
        });
        let i = u32::try_from(self.conditions.len()).expect("fewer than 2^32 conditions");
        self.conditions.push(compiled);
        self.cond_idx.insert(c.clone(), i);
        i
    }

    /// The inheritance chain of role `i` (itself first), with cycle and depth checks.
    fn chain(&self, i: u32, max_depth: usize) -> Result<Vec<u32>> {
        let mut chain = vec![i];
        let mut cur = i;
        loop {
            let role = self.roles[cur as usize].as_ref().expect("live role");
            let Some(parent) = role.parent_id else { break };
            let Some(&p) =
                self.role_idx.get(&parent).filter(|&&p| self.roles[p as usize].is_some())
            else {
                return Err(Error::invalid(
                    "parent_id",
                    format!("role {} has an unknown parent {parent}", role.name),
                ));
            };
            if let Some(pos) = chain.iter().position(|&c| c == p) {
                let mut path: Vec<String> =
                    chain[pos..].iter().map(|&c| self.role_name(c).to_owned()).collect();
                path.push(self.role_name(p).to_owned());
                return Err(Error::InheritanceCycle { path });
            }
            chain.push(p);
            if chain.len() > max_depth {
                return Err(Error::InheritanceTooDeep {
                    role: self.role_name(i).to_owned(),
                    depth: chain.len(),
                    limit: max_depth,
                });
            }
            cur = p;
        }
        Ok(chain)
    }

    fn role_name(&self, i: u32) -> &str {
        self.roles[i as usize].as_ref().map_or("?", |r| &r.name)
    }

    fn compile_roles(&mut self, max_depth: usize) -> Result<Vec<Option<CompiledRole>>> {
        let mut out = Vec::with_capacity(self.roles.len());
        for i in 0..self.roles.len() {
            let i = i as u32;
            if self.roles[i as usize].is_none() {
                out.push(None);
                continue;
            }
            let chain = self.chain(i, max_depth)?;
            let mut c = CompiledRole {
                org: self.roles[i as usize].as_ref().and_then(|r| r.org_id),
                allow: 0,
                deny: 0,
                cond_mask: 0,
                conds: Box::new([]),
                chain: Box::new([]),
            };
            let mut conds = Vec::new();
            for &ri in &chain {
                let role = self.roles[ri as usize].clone().expect("live role");
                for d in &role.denies {
                    c.deny |= d.implied_mask();
                }
                for g in &role.grants {
                    let mask = g.permission.implied_mask();
                    match &g.condition {
                        None => c.allow |= mask,
                        Some(cond) => {
                            let ci = self.condition(cond);
                            c.cond_mask |= mask;
                            for bit in 0..40u8 {
                                if mask & (1 << bit) != 0 && !conds.contains(&(bit, ci)) {
                                    conds.push((bit, ci));
                                }
                            }
                        }
                    }
                }
            }
            c.conds = conds.into_boxed_slice();
            c.chain = chain.into_boxed_slice();
            out.push(Some(c));
        }
        Ok(out)
    }

    fn grant(&mut self, a: Assignment) -> Result<()> {
        let Some(&role) =
            self.role_idx.get(&a.role_id).filter(|&&r| self.roles[r as usize].is_some())
        else {
            return Err(Error::invalid(
                "role_id",
                format!("assignment {} refers to an unknown role", a.id),
            ));
        };
        if let Some(old) = self.assignments.remove(&a.id) {
            self.unslot(&old);
        }
        let slot = slot_of(&a, role);
        let user = self.users.entry(a.user_id).or_default();
        for list in user.lists(&a.scope) {
            list.push(slot);
        }
        self.assignments.insert(a.id, a);
        Ok(())
    }

    fn unslot(&mut self, a: &Assignment) {
        if let Some(user) = self.users.get_mut(&a.user_id) {
            for list in user.lists(&a.scope) {
                list.retain(|s| s.id != a.id);
            }
        }
    }

    fn revoke(&mut self, id: AssignmentId) {
        if let Some(a) = self.assignments.remove(&id) {
            self.unslot(&a);
        }
    }

    /// The slots relevant to a resource at (org, project), active or not.
    fn slots<'a>(
        &'a self,
        user: UserId,
        org: Option<OrgId>,
        project: Option<ProjectId>,
    ) -> impl Iterator<Item = &'a Slot> + 'a {
        let u = self.users.get(&user);
        let global = u.map(|u| u.global.as_slice()).unwrap_or_default();
        let orgs =
            u.zip(org).and_then(|(u, o)| u.orgs.get(&o)).map(Vec::as_slice).unwrap_or_default();
        let projects = u
            .zip(project)
            .and_then(|(u, p)| u.projects.get(&p))
            .map(Vec::as_slice)
            .unwrap_or_default();
        global.iter().chain(orgs).chain(projects.iter().filter(move |s| s.org == org)).filter(
            move |s| {
                // Scope isolation: an org role only applies inside its organization.
                let role_org = self.compiled[s.role as usize].as_ref().and_then(|c| c.org);
                role_org.is_none() || role_org == org
            },
        )
    }

    fn effective(
        &self,
        user: UserId,
        org: Option<OrgId>,
        project: Option<ProjectId>,
        now: i64,
    ) -> (Effective, i64, i64) {
        let mut eff = Effective::default();
        let (mut lo, mut hi) = (i64::MIN, i64::MAX);
        for s in self.slots(user, org, project) {
            for b in [s.from, s.until] {
                if b > now {
                    hi = hi.min(b);
                } else {
                    lo = lo.max(b);
                }
            }
            if !s.active(now) {
                continue;
            }
            let Some(c) = &self.compiled[s.role as usize] else {
                continue;
            };
            eff.allow |= c.allow;
            eff.deny |= c.deny;
            eff.cond_mask |= c.cond_mask;
            for cd in c.conds.iter() {
                if !eff.conds.contains(cd) {
                    eff.conds.push(*cd);
                }
            }
        }
        (eff, lo, hi)
    }

    fn is_project_member(
        &self,
        user: UserId,
        project: ProjectId,
        org: Option<OrgId>,
        now: i64,
    ) -> bool {
        self.users
            .get(&user)
            .and_then(|u| u.projects.get(&project))
            .is_some_and(|v| v.iter().any(|s| s.org == org && s.active(now)))
    }

    fn is_org_member(&self, user: UserId, org: OrgId, now: i64) -> bool {
        self.users.get(&user).is_some_and(|u| {
            [u.orgs.get(&org), u.org_projects.get(&org)]
                .into_iter()
                .flatten()
                .any(|v| v.iter().any(|s| s.active(now)))
        })
    }

    fn holds(&self, ci: u32, user: UserId, resource: &Resource, now: i64) -> bool {
        self.conditions[ci as usize].holds(
            user,
            resource,
            now,
            || {
                resource
                    .project_id
                    .is_some_and(|p| self.is_project_member(user, p, resource.org_id, now))
            },
            || resource.org_id.is_some_and(|o| self.is_org_member(user, o, now)),
        )
    }

    fn decide(
        &self,
        eff: &Effective,
        bit: u8,
        user: UserId,
        resource: &Resource,
        now: i64,
    ) -> bool {
        let m = 1u64 << bit;
        if eff.deny & m != 0 {
            return false;
        }
        if eff.allow & m != 0 {
            return true;
        }
        eff.cond_mask & m != 0
            && eff.conds.iter().any(|&(b, ci)| b == bit && self.holds(ci, user, resource, now))
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations

/// One link of an explanation chain.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The actor is a trusted service actor (see [`ServiceActors`]).
    ServiceActor {
        /// The actor.
        actor: Actor,
    },
    /// An assignment of the user.
    Assignment {
        /// Its id.
        id: AssignmentId,
        /// Its scope.
        scope: Scope,
        /// Active from.
        #[serde(default, with = "time::serde::rfc3339::option")]
        valid_from: Option<OffsetDateTime>,
        /// Active until.
        #[serde(default, with = "time::serde::rfc3339::option")]
        valid_until: Option<OffsetDateTime>,
    },
    /// The assigned role.
    Role {
        /// Id.
        id: RoleId,
        /// Name.
        name: String,
    },
    /// A role inherited (depth 1 = the parent of the assigned role).
    InheritedRole {
        /// Id.
        id: RoleId,
        /// Name.
        name: String,
        /// How many levels up.
        depth: usize,
    },
    /// The permission as granted (may be a `manage` implying the requested action).
    Permission {
        /// The granted permission.
        permission: Permission,
    },
    /// An explicit deny.
    Deny {
        /// The denied permission.
        permission: Permission,
    },
    /// A condition of the grant, and whether it held.
    Condition {
        /// The condition.
        condition: Condition,
        /// Whether it held.
        holds: bool,
    },
}

/// On a deny, the nearest change that would have allowed the request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MissingGrant {
    /// An explicit deny blocks the request; the chain leads to it.
    DeniedBy {
        /// The chain from the assignment to the deny.
        chain: Vec<Step>,
    },
    /// A grant exists but its condition does not hold for this resource.
    ConditionNotMet {
        /// The chain from the assignment to the condition.
        chain: Vec<Step>,
    },
    /// An assignment would grant it, but is outside its validity window.
    Inactive {
        /// The chain from the (inactive) assignment to the permission.
        chain: Vec<Step>,
    },
    /// No assignment grants it; assigning this role at this scope would (the role granting it
    /// with the fewest permissions overall).
    AssignRole {
        /// The role.
        role_id: RoleId,
        /// Its name.
        role: String,
        /// The narrowest scope covering the resource.
        scope: Scope,
    },
    /// No role visible here grants the permission.
    NoRoleGrants,
}

/// Why a request was allowed or denied.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The decision.
    pub allowed: bool,
    /// The permission asked for.
    pub permission: Permission,
    /// The actor.
    pub actor: Actor,
    /// The clock time of the decision.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// On allow: assignment → role → inherited roles → permission (→ condition).
    pub chain: Vec<Step>,
    /// On deny: the nearest missing grant.
    pub missing: Option<MissingGrant>,
    /// One sentence for people.
    pub summary: String,
    /// The store revision the decision was made at.
    pub revision: i64,
}

/// A permission a user has at a scope, and where it comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectivePermission {
    /// The permission (concrete actions; `manage` grants are expanded).
    pub permission: Permission,
    /// Empty when unconditional; otherwise it holds where any of these holds.
    pub conditions: Vec<Condition>,
    /// The roles it comes from (assigned or inherited), by name.
    pub via: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// The engine

/// The permission engine. Cheap to share (`Arc<Engine>`); all methods take `&self`.
#[derive(Debug)]
pub struct Engine {
    index: RwLock<Index>,
    cache: RwLock<FxMap<CacheKey, CacheEntry>>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    changes: AtomicU64,
}

impl Engine {
    /// An engine over `snapshot` with the system clock.
    pub fn new(snapshot: Snapshot, config: EngineConfig) -> Result<Self> {
        Self::with_clock(snapshot, config, Arc::new(SystemClock))
    }

    /// An engine over `snapshot` with an injected clock.
    pub fn with_clock(
        snapshot: Snapshot,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        Ok(Self {
            index: RwLock::new(Index::build(snapshot, config.max_depth)?),
            cache: RwLock::new(FxMap::default()),
            clock,
            config,
            changes: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn clear_cache(&self, idx: &mut Index) {
        idx.revision += 1;
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.cache.write().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Replaces everything with `snapshot` (a reload from the store). Fails, leaving the engine
    /// as it was, when the snapshot's roles have a cycle or are too deep.
    pub fn replace(&self, snapshot: Snapshot) -> Result<()> {
        let new = Index::build(snapshot, self.config.max_depth)?;
        let mut idx = self.write();
        let revision = idx.revision;
        *idx = new;
        idx.revision = revision;
        self.clear_cache(&mut idx);
        Ok(())
    }

    /// Applies `change`, the write that produced store revision `revision`, if the engine
    /// reflects exactly `revision - 1`. Returns `Ok(true)` when applied or when the engine
    /// already reflects `revision` (a reload overtook it), `Ok(false)` when the engine must
    /// reload because it missed other writes.
    pub fn apply_at(&self, change: Change, revision: i64) -> Result<bool> {
        let mut idx = self.write();
        if revision <= idx.store_revision {
            return Ok(true);
        }
        if revision != idx.store_revision + 1 {
            return Ok(false);
        }
        self.apply_locked(&mut idx, change, revision).map(|()| true)
    }

    /// Records that the store moved to `revision` through a change the index does not hold
    /// (e.g. registering a permission), if it is the next one.
    pub fn note_revision(&self, revision: i64) {
        let mut idx = self.write();
        if idx.store_revision + 1 == revision {
            idx.store_revision = revision;
        }
    }

    /// Replaces everything with `snapshot` unless the engine already reflects a revision at
    /// least as new.
    pub fn replace_if_newer(&self, snapshot: Snapshot) -> Result<()> {
        if snapshot.revision <= self.store_revision() {
            return Ok(());
        }
        let new = Index::build(snapshot, self.config.max_depth)?;
        let mut idx = self.write();
        if new.store_revision <= idx.store_revision {
            return Ok(());
        }
        let revision = idx.revision;
        *idx = new;
        idx.revision = revision;
        self.clear_cache(&mut idx);
        Ok(())
    }

    /// Applies one change and records `store_revision` as the revision now reflected. Fails,
    /// leaving the engine as it was, when a role change would create a cycle or exceed the depth
    /// limit, or a grant names an unknown role.
    pub fn apply(&self, change: Change, store_revision: i64) -> Result<()> {
        let mut idx = self.write();
        self.apply_locked(&mut idx, change, store_revision)
    }

    fn apply_locked(&self, idx: &mut Index, change: Change, store_revision: i64) -> Result<()> {
        match change {
            Change::PutRole(role) => {
                let id = role.id;
                let before = idx.role_idx.get(&id).map(|&i| idx.roles[i as usize].clone());
                idx.put_role_def(role);
                match idx.compile_roles(self.config.max_depth) {
                    Ok(c) => idx.compiled = c,
                    Err(e) => {
                        match before {
                            Some(old) => {
                                let i = idx.role_idx[&id];
                                idx.roles[i as usize] = old;
                            }
                            None => {
                                let i = idx.role_idx[&id];
                                idx.roles[i as usize] = None;
                            }
                        }
                        return Err(e);
                    }
                }
            }
            Change::DeleteRole(id) => {
                if let Some(&i) = idx.role_idx.get(&id) {
                    let used = idx.assignments.values().any(|a| a.role_id == id);
                    if used {
                        return Err(Error::InUse {
                            entity: "role",
                            message: "it has assignments".into(),
                        });
                    }
                    let old = idx.roles[i as usize].take();
                    match idx.compile_roles(self.config.max_depth) {
                        Ok(c) => idx.compiled = c,
                        Err(e) => {
                            idx.roles[i as usize] = old;
                            return Err(e);
                        }
                    }
                }
            }
            Change::Grant(a) => idx.grant(a)?,
            Change::Revoke(id) => idx.revoke(id),
        }
        idx.store_revision = idx.store_revision.max(store_revision);
        self.clear_cache(idx);
        Ok(())
    }

    /// Checks that `role`, if stored, would keep the hierarchy acyclic and within the depth
    /// limit, without changing anything.
    pub fn validate_role(&self, role: &Role) -> Result<()> {
        let idx = self.read();
        let mut trial =
            Index { roles: idx.roles.clone(), role_idx: idx.role_idx.clone(), ..Index::default() };
        drop(idx);
        trial.put_role_def(role.clone());
        let i = trial.role_idx[&role.id];
        trial.chain(i, self.config.max_depth)?;
        // Descendants get deeper too.
        for j in 0..trial.roles.len() as u32 {
            if trial.roles[j as usize].is_some() {
                trial.chain(j, self.config.max_depth)?;
            }
        }
        Ok(())
    }

    /// The store revision the index reflects.
    pub fn store_revision(&self) -> i64 {
        self.read().store_revision
    }

    /// How many changes this engine applied since it was built (in-process revision).
    pub fn local_revision(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// An opaque token naming the state the engine reflects (the store revision), for clients
    /// and other instances: see [`crate::PermissionService::ensure_revision`].
    pub fn revision_token(&self) -> String {
        format!("r{}", self.store_revision())
    }

    /// Whether `user` may do `action` on `resource` — the hot path (no allocation on a cache
    /// hit).
    pub fn is_allowed(&self, user: UserId, action: Action, resource: &Resource) -> bool {
        let bit = Permission::new(resource.kind, action).bit();
        let now = self.clock.now_micros();
        let idx = self.read();
        let key = CacheKey::new(user, resource.org_id, resource.project_id);
        {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = cache.get(&key)
                && e.revision == idx.revision
                && e.lo <= now
                && now < e.hi
            {
                return idx.decide(&e.eff, bit, user, resource, now);
            }
        }
        let (eff, lo, hi) = idx.effective(user, resource.org_id, resource.project_id, now);
        let allowed = idx.decide(&eff, bit, user, resource, now);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.config.cache_capacity {
            cache.clear();
        }
        cache.insert(key, CacheEntry { revision: idx.revision, lo, hi, eff });
        allowed
    }

    /// Like [`Engine::is_allowed`] but never reads or fills the cache (for tests and benches).
    pub fn is_allowed_uncached(&self, user: UserId, action: Action, resource: &Resource) -> bool {
        let bit = Permission::new(resource.kind, action).bit();
        let now = self.clock.now_micros();
        let idx = self.read();
        let (eff, _, _) = idx.effective(user, resource.org_id, resource.project_id, now);
        idx.decide(&eff, bit, user, resource, now)
    }

    /// Decides for any actor (service actors per [`ServiceActors`]).
    pub fn check(&self, actor: &Actor, action: Action, resource: &Resource) -> Decision {
        match actor {
            Actor::User(u) => {
                if self.is_allowed(*u, action, resource) {
                    Decision::Allow
                } else {
                    Decision::Deny(format!(
                        "missing permission {}",
                        Permission::new(resource.kind, action)
                    ))
                }
            }
            other => {
                if self.service_allowed(other) {
                    Decision::Allow
                } else {
                    Decision::Deny(format!("{} actors are not allowed", other.kind()))
                }
            }
        }
    }

    fn service_allowed(&self, actor: &Actor) -> bool {
        let s = self.config.service_actors;
        match actor {
            Actor::User(_) => false,
            Actor::System => s.system,
            Actor::Automation(_) => s.automation,
            Actor::Integration(_) => s.integration,
        }
    }

    /// Explains the decision [`Engine::check`] makes for this request.
    pub fn explain(&self, actor: &Actor, action: Action, resource: &Resource) -> Explanation {
        let permission = Permission::new(resource.kind, action);
        let now = self.clock.now_micros();
        let idx = self.read();
        let mut ex = Explanation {
            allowed: false,
            permission,
            actor: *actor,
            at: from_micros(now),
            chain: Vec::new(),
            missing: None,
            summary: String::new(),
            revision: idx.store_revision,
        };
        let Actor::User(user) = *actor else {
            ex.allowed = self.service_allowed(actor);
            ex.chain.push(Step::ServiceActor { actor: *actor });
            ex.summary = format!(
                "{} actors are {}",
                actor.kind(),
                if ex.allowed { "trusted" } else { "not allowed" }
            );
            return ex;
        };
        let m = permission.implied_mask() & (1u64 << permission.bit());
        let mut allow_chain = None;
        let mut deny_chain = None;
        let mut cond_chain = None;
        let mut inactive_chain = None;
        for s in idx.slots(user, resource.org_id, resource.project_id) {
            let Some(c) = &idx.compiled[s.role as usize] else {
                continue;
            };
            let a = &idx.assignments[&s.id];
            let active = s.active(now);
            let head = Step::Assignment {
                id: a.id,
                scope: a.scope,
                valid_from: a.valid_from,
                valid_until: a.valid_until,
            };
            for (depth, &ri) in c.chain.iter().enumerate() {
                let role = idx.roles[ri as usize].as_ref().expect("live role");
                let path = |last: Step| {
                    let mut v = vec![head.clone()];
                    for (d, &rj) in c.chain[..=depth].iter().enumerate() {
                        let r = idx.roles[rj as usize].as_ref().expect("live role");
                        v.push(if d == 0 {
                            Step::Role { id: r.id, name: r.name.clone() }
                        } else {
                            Step::InheritedRole { id: r.id, name: r.name.clone(), depth: d }
                        });
                    }
                    v.push(last);
                    v
                };
                for d in &role.denies {
                    if active && d.implied_mask() & m != 0 && deny_chain.is_none() {
                        deny_chain = Some(path(Step::Deny { permission: *d }));
                    }
                }
                for g in &role.grants {
                    if g.permission.implied_mask() & m == 0 {
                        continue;
                    }
                    if !active {
                        if inactive_chain.is_none() {
                            inactive_chain =
                                Some(path(Step::Permission { permission: g.permission }));
                        }
                        continue;
                    }
                    match &g.condition {
                        None => {
                            if allow_chain.is_none() {
                                allow_chain =
                                    Some(path(Step::Permission { permission: g.permission }));
                            }
                        }
                        Some(cond) => {
                            let ci = idx.cond_idx[cond];
                            let holds = idx.holds(ci, user, resource, now);
                            let mut p = path(Step::Permission { permission: g.permission });
                            p.push(Step::Condition { condition: cond.clone(), holds });
                            if holds {
                                if allow_chain.is_none() {
                                    allow_chain = Some(p);
                                }
                            } else if cond_chain.is_none() {
                                cond_chain = Some(p);
                            }
                        }
                    }
                }
            }
        }
        if let Some(chain) = deny_chain {
            ex.summary = format!("{permission} is explicitly denied");
            ex.missing = Some(MissingGrant::DeniedBy { chain });
        } else if let Some(chain) = allow_chain {
            ex.allowed = true;
            ex.summary = format!("{permission} is granted");
            ex.chain = chain;
        } else if let Some(chain) = cond_chain {
            ex.summary =
                format!("{permission} is granted only under a condition that does not hold");
            ex.missing = Some(MissingGrant::ConditionNotMet { chain });
        } else if let Some(chain) = inactive_chain {
            ex.summary = format!("{permission} is granted by an assignment that is not active now");
            ex.missing = Some(MissingGrant::Inactive { chain });
        } else {
            let best = idx
                .compiled
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
                .filter(|(_, c)| {
                    c.allow & m != 0
                        && c.deny & m == 0
                        && (c.org.is_none() || c.org == resource.org_id)
                })
                .min_by_key(|(i, c)| {
                    (
                        (c.allow | c.cond_mask).count_ones(),
                        idx.roles[*i].as_ref().map(|r| r.name.clone()),
                    )
                });
            match best {
                Some((i, _)) => {
                    let r = idx.roles[i].as_ref().expect("live role");
                    let scope = Scope::narrowest_for(resource);
                    ex.summary = format!(
                        "no assignment grants {permission}; the role `{}` at {scope:?} would",
                        r.name
                    );
                    ex.missing = Some(MissingGrant::AssignRole {
                        role_id: r.id,
                        role: r.name.clone(),
                        scope,
                    });
                }
                None => {
                    ex.summary = format!("no role grants {permission}");
                    ex.missing = Some(MissingGrant::NoRoleGrants);
                }
            }
        }
        ex
    }

    /// What `user` may do at `scope` now (denied permissions are left out).
    pub fn effective_permissions(&self, user: UserId, scope: Scope) -> Vec<EffectivePermission> {
        let now = self.clock.now_micros();
        let idx = self.read();
        let (org, project) = (scope.org_id(), scope.project_id());
        let (eff, _, _) = idx.effective(user, org, project, now);
        let mut out = Vec::new();
        for bit in 0..40u8 {
            let m = 1u64 << bit;
            if eff.deny & m != 0 || (eff.allow | eff.cond_mask) & m == 0 {
                continue;
            }
            let permission = Permission::from_bit(bit).expect("bit < 40");
            let mut conditions = Vec::new();
            if eff.allow & m == 0 {
                for &(b, ci) in &eff.conds {
                    if b == bit {
                        conditions.push(idx.conditions[ci as usize].condition.clone());
                    }
                }
                conditions.sort();
                conditions.dedup();
            }
            let mut via = Vec::new();
            for s in idx.slots(user, org, project).filter(|s| s.active(now)) {
                let Some(c) = &idx.compiled[s.role as usize] else {
                    continue;
                };
                for &ri in c.chain.iter() {
                    let r = idx.roles[ri as usize].as_ref().expect("live role");
                    let grants = r.grants.iter().any(|g| {
                        g.permission.implied_mask() & m != 0
                            && (eff.allow & m == 0 || g.condition.is_none())
                    });
                    if grants && !via.contains(&r.name) {
                        via.push(r.name.clone());
                    }
                }
            }
            out.push(EffectivePermission { permission, conditions, via });
        }
        out
    }

    /// The roles the engine indexes (a copy).
    pub fn roles(&self) -> Vec<Role> {
        self.read().roles.iter().flatten().cloned().collect()
    }

    /// Number of indexed assignments.
    pub fn assignment_count(&self) -> usize {
        self.read().assignments.len()
    }
}

#[async_trait]
impl Authorizer for Engine {
    async fn check(
        &self,
        actor: &Actor,
        action: Action,
        resource: &Resource,
    ) -> pm_core::Result<Decision> {
        Ok(Engine::check(self, actor, action, resource))
    }
}

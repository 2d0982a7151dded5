//! Role-based access control with conditions: the production implementation of pm-core's
//! `Authorizer` (`check(actor, action, resource) -> Decision`).
//!
//! **Skeleton.** This crate reserves the name and its place in the crate graph; the
//! implementation is tracked in the issue tracker. It will own:
//!
//! - `model`: permissions as (resource, action); roles with parent roles (inheritance, cycle
//!   rejection, depth limit); role templates; assignments scoped Global | Org | Project with
//!   `valid_from`/`valid_until`; conditions (owner, assignee, creator, project member, CEL).
//! - `engine`: an indexed evaluator (no linear scan over rules) behind a decision cache keyed by
//!   a revision epoch, so a grant or revoke is visible to the very next check, and whose entries
//!   expire at the earliest `valid_until` they relied on.
//! - `explain`: the chain assignment → role → inherited role → permission (or condition), and on
//!   deny the nearest missing grant.
//! - `audit`: an append-only log of every change to roles and assignments.
//! - `seed`: the default roles (admin, project_manager, team_member, viewer) and 21 permissions,
//!   seeded idempotently.
//! - `store`: the store traits, with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; it owns its tables and migrations.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-integrations, pm-workflows, pm-realtime); builds without sqlx under
//! `--no-default-features`; knows no HTTP framework.

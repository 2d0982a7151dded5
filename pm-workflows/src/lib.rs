//! The automation engine: workflows of trigger → conditions → steps, executed durably.
//!
//! **Skeleton.** This crate reserves the name and its place in the crate graph; the
//! implementation is tracked in the issue tracker. It will own:
//!
//! - `definition`: versioned workflows (trigger, CEL conditions, steps with actions and branches).
//! - `trigger`: domain events read from pm-core's event log, schedules (cron with time zones),
//!   relative times (due dates, SLAs), incoming webhooks and manual runs.
//! - `action`: set fields, transition, assign, comment, create from template, notify, email
//!   (a `Mailer` port), HTTP request, message via a `MessageSender` port, sandboxed rhai script
//!   (every limit on), request approval, wait.
//! - `execution`: durable executions (per-step input/output/attempts persisted, resume after a
//!   crash, capped retries with backoff, idempotency keys), replay and dry-run against recorded
//!   events, and guardrails (automation-caused events opt-in, cascade depth limit).
//! - `approval`: multi-step, N-of-M quorum, timeout and escalation, rights checked at decision time.
//! - `store`: the store traits, with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; it owns its tables and migrations.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-integrations, pm-realtime). Capabilities from those crates
//! arrive through ports defined here and wired by pm-server. Builds without sqlx under
//! `--no-default-features`; knows no HTTP framework.

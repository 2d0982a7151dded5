//! The automation engine: workflows of trigger → conditions → steps, executed durably.
//!
//! - [`definition`]: versioned JSON documents (trigger, CEL conditions, steps with actions,
//!   if/else, switch, for-each and approvals) with a published JSON Schema
//!   (`schema/workflow.schema.json`); [`Definition::parse`](definition::Definition::parse)
//!   names the JSON path of every error and enforces the [`Limits`].
//! - [`condition`]: CEL, compiled once ([`compiled::CompiledWorkflow`]), evaluated against a
//!   [`Scope`](condition::Scope) built once per event; fail closed.
//! - [`template`]: `{{ task.reference }}` text templates for comments, messages and e-mail.
//! - [`task_template`]: task templates with their automation (task tree, checklist, assignee
//!   rules, attached workflows) with a published JSON Schema
//!   (`schema/task-template.schema.json`); instantiated all-or-nothing by
//!   [`Engine::instantiate`](engine::Engine::instantiate).
//! - [`script`]: the rhai [`Sandbox`](script::Sandbox) — operation, call-depth, size and
//!   wall-clock limits, no `import`/`eval`.
//! - [`schedule`]: cron patterns in IANA time zones (croner).
//! - [`store`]: the store traits (workflows and versions, executions and steps, timers,
//!   approvals, task templates) with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; tables prefixed `wf_`, migrations tracked in
//!   `_pm_workflows_migrations`.
//! - `testing` (feature `testing`): the store conformance suite.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-integrations, pm-realtime). Capabilities from those crates
//! arrive through ports defined here and wired by pm-server. Builds without sqlx under
//! `--no-default-features`; knows no HTTP framework.

pub mod compiled;
pub mod condition;
pub mod definition;
pub mod engine;
mod error;
pub mod ports;
pub mod schedule;
pub mod script;
pub mod store;
pub mod task_template;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;

pub use definition::{Definition, Limits};
pub use error::{Error, Result};

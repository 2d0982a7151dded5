//! Connections to external tools: the `Provider` trait for integration authors, the built-in
//! providers, inbound and outbound webhooks, OAuth and two-way sync.
//!
//! **Skeleton.** This crate reserves the name and its place in the crate graph; the
//! implementation is tracked in the issue tracker. It will own:
//!
//! - `provider`: the `Provider` trait (identity, OAuth config, webhook verification and parsing,
//!   pull/push of items, field mapping) and the built-ins `github`, `slack`, `jira`,
//!   `google_calendar` and `outlook` (Microsoft Graph); HTTP clients take a base URL for tests.
//! - `webhook::inbound`: constant-time signature verification on raw bytes, dedupe by delivery
//!   id, persist, acknowledge fast, process from a queue.
//! - `webhook::outbound`: Standard Webhooks signing, retries with backoff, auto-disable and
//!   manual redelivery, fed from pm-core's event log.
//! - `oauth`: authorization code + PKCE, single-flight refresh per credential, tokens encrypted at
//!   rest with an AEAD and a key id for rotation.
//! - `sync`: external mappings with a per-field base snapshot, three-way merge with per-field
//!   policy, recorded conflicts, echo suppression, per-provider rate limits and `Retry-After`.
//! - `store`: the store traits, with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; it owns its tables and migrations.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-workflows, pm-realtime); builds without sqlx under
//! `--no-default-features`; knows no HTTP server framework.

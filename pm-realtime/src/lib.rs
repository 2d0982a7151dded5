//! Live collaboration, transport-agnostic: a hub of sessions and channels fed by pm-core's event
//! log, plus ephemeral signals and collaborative documents. pm-server owns the WebSocket glue.
//!
//! **Skeleton.** This crate reserves the name and its place in the crate graph; the
//! implementation is tracked in the issue tracker. It will own:
//!
//! - `hub`: sessions and channels (`org:{id}`, `project:{id}`, `task:{id}`, `user:{id}`), each
//!   subscribe authorized; durable events tailed from the log carry their `seq`, so a client
//!   reconnecting with `last_seq` gets what it missed or a resync signal; bounded per-session
//!   queues, slow consumers disconnected with a clear close code.
//! - `presence`, `typing`, `cursor`: ephemeral signals with heartbeats and timeouts, coalesced
//!   latest-wins and dropped under pressure, never queued behind durable events.
//! - `broker`: the `Broker` trait for ephemeral fan-out across instances: in-process (default),
//!   PostgreSQL, Redis.
//! - `doc`: collaborative rich text on yrs speaking the Yjs sync + awareness protocol, one actor
//!   per document, updates persisted as a log with periodic snapshot compaction.
//! - `notification`: per-user notifications derived from the event log.
//! - `store`: the store traits, with adapters `store::sqlite` and `store::postgres` behind the
//!   `sqlite` (default) and `postgres` features; it owns its tables and migrations.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-integrations, pm-workflows); builds without sqlx under
//! `--no-default-features`; knows no HTTP framework.

//! Live collaboration, transport-agnostic: a hub of sessions and channels fed by pm-core's event
//! log, ephemeral signals (presence, typing, cursors) shared across instances through a broker,
//! and per-user notifications. pm-server owns the WebSocket glue; the wire protocol is described
//! in the repository's `docs/realtime-protocol.md`.
//!
//! - [`protocol`]: the JSON frames (client and server), error codes and close codes;
//!   [`ClientFrame::parse`](protocol::ClientFrame::parse) names the failing field.
//! - [`channel`]: [`Channel`] — `org:{id}`, `project:{id}`, `task:{id}`, `user:{id}`.
//! - [`hub`]: the [`Hub`] and its sessions — each subscribe authorized through pm-core's
//!   `Authorizer`; one tailer per hub routes durable events by channel, each frame carrying its
//!   `seq`; reconnecting with `last_seq` replays what was missed (or sends `resync` when too
//!   old); presence with heartbeats and timeouts.
//! - [`session`]: a session's bounded outbound queue — durable frames in a byte budget (a slow
//!   consumer is closed with code 4008), ephemeral signals coalesced latest-wins and dropped
//!   under pressure, never queued behind durable events.
//! - [`broker`]: the [`Broker`](broker::Broker) trait for cross-instance fan-out:
//!   [`InProcessBroker`](broker::InProcessBroker) (default), `PostgresBroker` (feature
//!   `postgres`, `LISTEN/NOTIFY`), `RedisBroker` (feature `redis`).
//! - [`notification`]: the [`NotificationConsumer`](notification::NotificationConsumer) deriving
//!   per-user notifications from the log (durable cursor, idempotent by event), the
//!   [`NotificationSink`](notification::NotificationSink) hook.
//! - [`store`]: the store traits (presence last-seen, notifications, collaborative documents),
//!   with adapters
//!   `store::sqlite` and `store::postgres` behind the `sqlite` (default) and `postgres` features
//!   and an in-memory one; tables prefixed `rt_`, migrations tracked in
//!   `_pm_realtime_migrations`.
//! - [`doc`]: collaborative editing of task descriptions — the [`Collab`](doc::Collab) registry
//!   with one actor per open document, speaking the Yjs sync + awareness protocol (y-websocket's
//!   binary messages) so unmodified Yjs clients work; the text is the root `YText` named
//!   `"description"`. Updates are logged and compacted into snapshots ([`store::DocStore`]),
//!   shared across instances on broker topics `collab:{task_id}`, and written back into the task
//!   description (debounced) through pm-core's services.
//! - [`clock`]: the injectable clock for timeouts.
//! - `testing` (feature `testing`): the store conformance suite.
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-integrations, pm-workflows); builds without sqlx under
//! `--no-default-features`; knows no HTTP framework.

pub mod broker;
pub mod channel;
pub mod clock;
pub mod doc;
mod error;
pub mod hub;
pub mod notification;
pub mod protocol;
pub mod session;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use channel::Channel;
pub use error::{Error, Result};
pub use hub::{Hub, HubConfig, HubStats, SessionHandle};

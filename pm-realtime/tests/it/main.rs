//! pm-realtime integration tests, against real pm-core stores (SQLite always; PostgreSQL and
//! Redis when `PM_TEST_POSTGRES_URL` / `PM_TEST_REDIS_URL` are set — each PostgreSQL test creates
//! its own database): the store conformance suite, the hub (authorization, live delivery,
//! replay and resync, backpressure, malformed frames, presence, coalescing), brokers across two
//! hubs, notifications, collaborative documents (yrs as the Yjs client), and access on open
//! sessions (re-authorization, expiring and read-only credentials, batched last-seen).

mod access;
mod brokers;
mod collab;
mod hub;
mod notifications;
mod stores;
mod support;

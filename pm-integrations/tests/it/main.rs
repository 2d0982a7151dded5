//! pm-integrations integration tests: the published webhook signature vectors (and their
//! one-byte mutations), and the store conformance suite on SQLite and PostgreSQL.

mod github;
mod stores;
mod vectors;

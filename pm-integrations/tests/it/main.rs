//! pm-integrations integration tests: the published webhook signature vectors (and their
//! one-byte mutations), the store conformance suite on SQLite and PostgreSQL, the GitHub client
//! and the example Gitea provider against wiremock, OAuth 2 against a wiremock
//! authorization server, the sync engine pushing with a refreshed OAuth token, and the Slack
//! and calendar clients against wiremock.

mod chat;
mod gitea;
mod github;
mod oauth;
mod stores;
mod sync_engine;
mod vectors;

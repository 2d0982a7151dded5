//! pm-integrations integration tests: the published webhook signature vectors (and their
//! one-byte mutations), the store conformance suite on SQLite and PostgreSQL, the GitHub client
//! and the example Gitea provider against wiremock, and OAuth 2 against a wiremock
//! authorization server; the Slack and calendar clients against wiremock.

mod chat;
mod gitea;
mod github;
mod oauth;
mod stores;
mod vectors;

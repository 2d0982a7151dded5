//! Connections to external tools: the [`Provider`](provider::Provider) trait for integration
//! authors, the built-in providers, signed inbound and outbound webhooks, secrets encrypted at
//! rest, the SSRF guard for outbound targets, and the sync engine's three-way merge.
//!
//! - [`webhook`]: constant-time verification of inbound webhooks on raw bytes
//!   ([`webhook::inbound`]: GitHub, Jira, Slack v0, Microsoft Graph, Google) and Standard
//!   Webhooks signing/verification for what pm sends ([`webhook::outbound`]).
//! - [`provider`]: the `Provider` trait (identity, OAuth config, webhook verify + parse, pull/push
//!   of items, field and state mappings) and its types; [`providers`]: GitHub, Jira, Slack,
//!   Google Calendar, Outlook and the [`Registry`](providers::Registry).
//! - [`crypto`]: the [`Keyring`](crypto::Keyring) sealing tokens and secrets with
//!   ChaCha20-Poly1305 under a key id (rotation without a flag day).
//! - [`oauth`]: OAuth 2 connections — authorization code with PKCE (`S256`), single-use
//!   states, tokens sealed at rest, refresh single-flight per connection (rotated refresh
//!   tokens kept, `invalid_grant` → needs reconnect), revocation on disconnect.
//! - [`ssrf`]: [`TargetPolicy`](ssrf::TargetPolicy) — outbound targets must resolve to public
//!   addresses only, unless allow-listed.
//! - [`sync`]: per-field three-way merge with policies (authoritative side, set union for
//!   labels, latest edit), recorded conflicts, and fingerprints for echo suppression;
//!   [`sync::engine`]: the [`SyncEngine`](sync::engine::SyncEngine) applying it end to end —
//!   provider events onto tasks through pm-core's services, local changes onto the provider,
//!   GitHub and Jira comments both ways ([`sync::engine::comments`]), and the durable retry
//!   queue that parks transiently failing pushes instead of holding the pusher
//!   ([`sync::engine::retry`]).
//! - [`jira`]: the Jira Cloud REST v3 client (transitions, JQL search); [`adf`]: Atlassian
//!   Document Format ↔ markdown.
//! - [`model`]: what is persisted (integrations, inbound deliveries, credentials, mappings,
//!   conflicts, comment links, parked pushes and sync failures, logs, outbound subscriptions
//!   and deliveries); [`store`]: the store traits with
//!   adapters `store::sqlite` and `store::postgres` behind the `sqlite` (default) and `postgres`
//!   features — tables prefixed `int_`, migrations tracked in `_pm_integrations_migrations`.
//! - [`http`]: the thin JSON client providers share (base URL, bearer or basic auth, rate
//!   limits with `Retry-After`; a `4xx` refusal is [`Error::Rejected`], not retried).
//! - [`slack`]: Slack's Web API client (`chat.postMessage`, `users.info`), slash command and
//!   `block_actions` parsing, and the Block Kit messages pm sends.
//! - [`calendar`]: task due dates as all-day events in Google Calendar and Outlook (Graph),
//!   push channels/subscriptions and their renewal.
//! - [`clock`]: the injectable clock.
//! - `testing` (feature `testing`): the store conformance suite.
//!
//! # Writing a provider
//!
//! Start from the example Gitea issues provider, `examples/gitea_provider/provider.rs`: one
//! struct implementing [`Provider`](provider::Provider) — identity, OAuth endpoints, webhook
//! verification (`X-Gitea-Signature`, with
//! [`webhook::inbound::verify_hmac_sha256_hex`]) and parsing, pull/push over the shared
//! [`http::ApiClient`], default field and state mappings. `cargo run -p pm-integrations
//! --example gitea_provider` runs it against a mock Gitea and prints each step; its test
//! (`tests/it/gitea.rs`) exercises verify, pull and push against wiremock. Register yours with
//! [`Registry::register`](providers::Registry::register).
//!
//! Dependency rule (checked in CI by `.ci/deps.sh`): depends on pm-core only, never on another
//! feature crate (pm-permissions, pm-workflows, pm-realtime); builds without sqlx under
//! `--no-default-features`; knows no HTTP server framework.

pub mod adf;
pub mod calendar;
pub mod clock;
pub mod crypto;
mod error;
pub mod http;
pub mod jira;
pub mod model;
pub mod oauth;
pub mod provider;
pub mod providers;
pub mod slack;
pub mod ssrf;
pub mod store;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhook;

pub use error::{Error, Result};

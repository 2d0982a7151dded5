//! The [`Provider`] trait integration authors implement, and the types it speaks.
//!
//! A provider is stateless configuration plus behaviour: who it is ([`ProviderInfo`]), how users
//! connect it ([`OAuthConfig`]), how its webhooks are authenticated, deduplicated and parsed, how
//! items are pulled and pushed, and how its fields and states map onto pm's. Everything stateful
//! (credentials, mappings, deliveries) lives in the stores and is passed in.
//!
//! Inbound requests go through, in order: [`Provider::handshake`] (unsigned set-up pings such as
//! Microsoft Graph's validation token), [`Provider::verify`] (401 on failure, nothing else is
//! looked at), [`Provider::delivery_id`] (dedupe key), then persisting; [`Provider::parse`] runs
//! later, from the persisted queue.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::crypto::Secret;
use crate::sync::{FieldPolicies, Snapshot};
use crate::webhook::{InboundRequest, SignatureError};
use crate::{Error, Result};

/// A provider's stable key (`github`, `jira`, a host's `gitea`): 1–32 of `[a-z0-9_-]`, starting
/// with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderKey(String);

impl ProviderKey {
    /// Parses a key; errors name `field`.
    pub fn parse_field(field: &str, s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(Error::invalid(
                field,
                "1-32 characters of [a-z0-9_-], starting with a letter",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a key (errors name `provider`).
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_field("provider", s)
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProviderKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<ProviderKey> for String {
    fn from(k: ProviderKey) -> String {
        k.0
    }
}

impl fmt::Display for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderKey({})", self.0)
    }
}

/// What a provider can do (advertised so UIs and the sync engine know what to call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Receives signed webhooks.
    Webhooks,
    /// Items (issues, events) can be pulled.
    Pull,
    /// Items can be created/updated remotely.
    Push,
    /// Messages/notifications can be sent (Slack).
    Messages,
    /// Connects with OAuth 2.
    OAuth,
}

/// A provider's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Stable key.
    pub key: ProviderKey,
    /// Human-readable name.
    pub name: String,
    /// What it can do.
    pub capabilities: Vec<Capability>,
}

/// OAuth 2 authorization-code settings (PKCE is always used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthConfig {
    /// Where users are sent to consent.
    pub authorize_url: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_url: String,
    /// Where tokens are revoked on disconnect, if the provider supports it.
    pub revoke_url: Option<String>,
    /// Scopes requested.
    pub scopes: Vec<String>,
}

/// An answer to an unsigned set-up request, sent instead of processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeReply {
    /// `Content-Type` of the reply.
    pub content_type: &'static str,
    /// The reply body.
    pub body: String,
}

/// What a verified inbound delivery means, once parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// Provider-specific kind, e.g. `issues.edited`, `jira:issue_updated`, `slash_command`.
    pub kind: String,
    /// The external item concerned, if any (e.g. `octo/repo#12`, `PROJ-7`).
    pub external_id: Option<String>,
    /// The item's fields as the provider now has them (for the merge), when the payload has
    /// them.
    pub fields: Snapshot,
    /// When the provider says the item changed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub changed_at: Option<OffsetDateTime>,
    /// The raw event for anything else.
    pub raw: Value,
}

/// An external item as pulled from or pushed to a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalItem {
    /// The provider's id for it.
    pub external_id: String,
    /// Its web URL, if any.
    pub url: Option<String>,
    /// Mapped fields (pm field names).
    pub fields: Snapshot,
    /// The provider's last-change time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// What a provider needs to talk to its API for one integration.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// API base URL (tests point it at a mock server).
    pub base_url: String,
    /// The access token, if connected.
    pub access_token: Option<Secret>,
    /// The integration's provider-specific configuration (repository, project key, calendar).
    pub config: Value,
    /// The addresses `base_url`'s host resolved to when the SSRF policy checked them: clients
    /// built with [`ApiClient::for_context`](crate::http::ApiClient::for_context) connect only
    /// to these (no second lookup that DNS rebinding could answer differently). `None`: resolve
    /// normally (tests, a host's own contexts).
    pub pinned: Option<PinnedHost>,
}

/// A host name and the checked addresses connections to it must use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedHost {
    /// The host name as in the URL.
    pub host: String,
    /// Its addresses, each approved by the SSRF policy.
    pub addrs: Vec<std::net::SocketAddr>,
}

/// How a provider's fields and states map onto pm's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mappings {
    /// pm field → provider field.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Provider state → pm state category (`todo`, `in_progress`, `done`, ...).
    #[serde(default)]
    pub states: BTreeMap<String, String>,
    /// Conflict policy per pm field.
    #[serde(default)]
    pub policies: FieldPolicies,
}

impl Mappings {
    /// The pm state category for a provider state.
    pub fn local_state(&self, remote: &str) -> Option<&str> {
        self.states.get(remote).map(String::as_str)
    }

    /// The provider state for a pm state category (the first listed).
    pub fn remote_state(&self, local: &str) -> Option<&str> {
        self.states.iter().find(|(_, l)| l.as_str() == local).map(|(r, _)| r.as_str())
    }
}

/// An integration author's view of an external tool. Object-safe: pm-server holds
/// `Arc<dyn Provider>` in a registry keyed by [`ProviderInfo::key`].
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// Identity and capabilities.
    fn info(&self) -> ProviderInfo;

    /// OAuth settings, for providers connected with OAuth 2.
    fn oauth(&self) -> Option<OAuthConfig> {
        None
    }

    /// What separates scopes in this provider's authorization URL: RFC 6749's `" "` unless
    /// the provider reads another (Slack wants `","`).
    fn scope_separator(&self) -> &'static str {
        " "
    }

    /// Answers unsigned set-up requests (Graph's `validationToken`). `Ok(None)` for ordinary
    /// deliveries.
    fn handshake(
        &self,
        _req: &InboundRequest,
    ) -> std::result::Result<Option<HandshakeReply>, SignatureError> {
        Ok(None)
    }

    /// Checks the request is authentic, on its raw bytes, against the integration's webhook
    /// secret (or channel token / client state).
    fn verify(
        &self,
        secret: &[u8],
        req: &InboundRequest,
        now: OffsetDateTime,
    ) -> std::result::Result<(), SignatureError>;

    /// The provider's delivery id, the dedupe key (a replayed delivery carries the same one).
    fn delivery_id(&self, req: &InboundRequest) -> std::result::Result<String, SignatureError>;

    /// Answers a verified request that needs a synchronous reply (Slack's `url_verification`,
    /// a slash command's immediate acknowledgement). `None`: a plain empty 200.
    fn immediate_reply(&self, _req: &InboundRequest) -> Option<HandshakeReply> {
        None
    }

    /// Interprets a verified, persisted delivery (run from the queue, not in the request).
    fn parse(&self, req: &InboundRequest) -> Result<Vec<InboundEvent>>;

    /// Default field/state mappings and policies for new integrations.
    fn default_mappings(&self) -> Mappings {
        Mappings::default()
    }

    /// Items changed since `since` (all when `None`).
    async fn pull(
        &self,
        _ctx: &ProviderContext,
        _since: Option<OffsetDateTime>,
    ) -> Result<Vec<ExternalItem>> {
        Err(self.unsupported("pull"))
    }

    /// One item as the provider has it now (the remote side of a sync started by a local
    /// change).
    async fn fetch(&self, _ctx: &ProviderContext, _external_id: &str) -> Result<ExternalItem> {
        Err(self.unsupported("fetch"))
    }

    /// Creates (`external_id` = `None`) or updates an item with `fields`; returns it as the
    /// provider now has it.
    async fn push(
        &self,
        _ctx: &ProviderContext,
        _external_id: Option<&str>,
        _fields: &Snapshot,
    ) -> Result<ExternalItem> {
        Err(self.unsupported("push"))
    }

    /// The error for an operation this provider does not offer.
    fn unsupported(&self, operation: &str) -> Error {
        Error::Provider {
            provider: self.info().key.to_string(),
            message: format!("{operation} is not supported by this provider"),
            retry_after: None,
        }
    }
}

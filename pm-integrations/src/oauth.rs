//! OAuth 2 connections, transport-agnostic: authorization code with PKCE (RFC 6749 §4.1 +
//! RFC 7636 `S256`), token refresh single-flight per connection, and revocation (RFC 7009) on
//! disconnect.
//!
//! The flow a host (pm-server) drives:
//!
//! 1. [`OAuth::begin`] makes a random `state` and PKCE `code_verifier`, stores the state's
//!    SHA-256 with the sealed verifier, the integration and the user (expiring after
//!    [`OAuthSettings::state_ttl`], 10 minutes by default), and returns the provider's
//!    authorization URL to send the user to.
//! 2. The provider redirects back with `state` and `code` (or `error`); [`OAuth::complete`]
//!    takes the state (single use: a second callback with it finds nothing), exchanges the code
//!    with the verifier at the token endpoint, and stores the tokens sealed with the
//!    [`Keyring`] ([`OAuthToken`]: access, refresh, expiry, scopes, key id).
//! 3. [`OAuth::access_token`] hands out a valid access token, refreshing it when it expires
//!    within [`OAuthSettings::refresh_skew`]. Concurrent callers for one connection wait on one
//!    refresh (a per-connection async mutex in this process; across processes the store's
//!    version check lets one writer win and the others read its result). A rotated refresh
//!    token is persisted; a refresh refused with `invalid_grant` marks the connection
//!    [`OAuthStatus::NeedsReconnect`] and fails fast from then on instead of retrying.
//!    [`OAuth::provider_context`] wraps it into the [`ProviderContext`] a provider's pull/push
//!    take.
//! 4. [`OAuth::disconnect`] revokes at the provider's revocation endpoint when it has one and
//!    deletes the tokens either way (a failed revocation is logged, not fatal).
//!
//! Endpoints come from the provider's [`OAuthConfig`] plus the host's registration (client id
//! and secret) in an [`OAuthClient`]; [`OAuthClient::with_base_url`] points them at a mock
//! server or a self-hosted instance. Client authentication is `client_secret_post` (the
//! credentials in the form body), which every built-in provider accepts. Every exchange is
//! written to the integration log, secrets redacted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pm_core::id::{IntegrationId, UserId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::crypto::{Keyring, Secret};
use crate::model::*;
use crate::provider::{OAuthConfig, ProviderContext, ProviderKey};
use crate::store::IntegrationStores;
use crate::{Error, Result};

/// A host's registration with one provider's OAuth server.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (confidential clients; public clients rely on PKCE alone).
    pub client_secret: Option<Secret>,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint (code exchange and refresh).
    pub token_url: String,
    /// Revocation endpoint (RFC 7009), if the provider has one.
    pub revoke_url: Option<String>,
    /// Scopes to request (sent space-separated, as RFC 6749 §3.3 says, unless the provider
    /// wants another separator: see [`OAuthClient::scope_separator`]).
    pub scopes: Vec<String>,
    /// What joins the scopes in the authorization URL: `" "` (RFC 6749) by default; Slack
    /// wants `","` ([`Provider::scope_separator`](crate::provider::Provider::scope_separator)).
    pub scope_separator: &'static str,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .field("revoke_url", &self.revoke_url)
            .field("scopes", &self.scopes)
            .field("scope_separator", &self.scope_separator)
            .finish()
    }
}

impl OAuthClient {
    /// A client of a provider's endpoints and scopes with the host's credentials. Errors name
    /// `client_id` when it is empty.
    pub fn new(
        config: &OAuthConfig,
        client_id: impl Into<String>,
        client_secret: Option<Secret>,
    ) -> Result<Self> {
        let client_id = client_id.into();
        if client_id.trim().is_empty() || client_id.len() > 512 {
            return Err(Error::invalid("client_id", "1-512 characters"));
        }
        for (field, u) in
            [("authorize_url", &config.authorize_url), ("token_url", &config.token_url)]
        {
            check_url(field, u)?;
        }
        if let Some(u) = &config.revoke_url {
            check_url("revoke_url", u)?;
        }
        Ok(Self {
            client_id,
            client_secret,
            authorize_url: config.authorize_url.clone(),
            token_url: config.token_url.clone(),
            revoke_url: config.revoke_url.clone(),
            scopes: config.scopes.clone(),
            scope_separator: " ",
        })
    }

    /// Joins scopes with `separator` in the authorization URL (Slack's v2 authorize endpoint
    /// reads a comma-separated list; everyone else follows RFC 6749's spaces).
    pub fn with_scope_separator(mut self, separator: &'static str) -> Self {
        self.scope_separator = separator;
        self
    }

    /// The same endpoints' paths on another origin (`http://127.0.0.1:4321` for a mock server,
    /// a self-hosted GitLab/Gitea): scheme, host and port are replaced, paths kept.
    pub fn with_base_url(mut self, base: &str) -> Result<Self> {
        let base_url = url::Url::parse(base)
            .map_err(|e| Error::invalid("base_url", format!("not a URL: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.host_str().is_none() {
            return Err(Error::invalid("base_url", "must be an http(s) URL with a host"));
        }
        let prefix = base_url.path().trim_end_matches('/').to_owned();
        let rebase = |u: &str| -> Result<String> {
            let old = url::Url::parse(u).map_err(|e| Error::invalid("base_url", e.to_string()))?;
            let mut new = base_url.clone();
            new.set_path(&format!("{prefix}{}", old.path()));
            new.set_query(old.query());
            Ok(new.to_string())
        };
        self.authorize_url = rebase(&self.authorize_url)?;
        self.token_url = rebase(&self.token_url)?;
        self.revoke_url = self.revoke_url.as_deref().map(rebase).transpose()?;
        Ok(self)
    }
}

fn check_url(field: &str, u: &str) -> Result<()> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => Ok(()),
        _ => Err(Error::invalid(field, "must be an http(s) URL")),
    }
}

/// Timing and the callback address.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The callback URL registered with the providers (the server's `/api/v1/oauth/callback`).
    pub redirect_uri: String,
    /// How long a started authorization may take (default 10 minutes).
    pub state_ttl: Duration,
    /// Refresh an access token this long before it expires (default 60 s).
    pub refresh_skew: Duration,
    /// Timeout of one request to a token or revocation endpoint (default 30 s).
    pub request_timeout: Duration,
}

impl OAuthSettings {
    /// Defaults with this callback URL.
    pub fn new(redirect_uri: impl Into<String>) -> Self {
        Self {
            redirect_uri: redirect_uri.into(),
            state_ttl: Duration::from_secs(600),
            refresh_skew: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Where to send the user, from [`OAuth::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The provider's authorization URL with `state` and `code_challenge`.
    pub url: String,
    /// The state (also in the URL); the callback must bring it back before `expires_at`.
    pub state: String,
    /// When the state stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// The query of the provider's redirect back to us, as received (every part optional: the
/// checks name what is missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Callback<'a> {
    /// `state`.
    pub state: Option<&'a str>,
    /// `code`, on success.
    pub code: Option<&'a str>,
    /// `error` (`access_denied`, ...), when the user or provider refused.
    pub error: Option<&'a str>,
    /// `error_description`.
    pub error_description: Option<&'a str>,
}

/// What became of the provider-side token on disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The revocation endpoint accepted it.
    Revoked,
    /// The provider has no revocation endpoint (the token stays valid there until it expires).
    NotSupported,
    /// Revocation failed (logged); the tokens were deleted here anyway.
    Failed(String),
}

/// A token endpoint's refusal or failure.
#[derive(Debug)]
enum TokenError {
    /// An OAuth error response (`error`, `error_description`).
    Rejected { error: String, description: Option<String> },
    /// No usable answer (network, non-JSON, missing fields).
    Failed(String),
}

impl TokenError {
    fn describe(&self) -> String {
        match self {
            TokenError::Rejected { error, description: Some(d) } => format!("{error}: {d}"),
            TokenError::Rejected { error, description: None } => error.clone(),
            TokenError::Failed(m) => m.clone(),
        }
    }
}

/// A token endpoint's success.
struct Tokens {
    access: Secret,
    refresh: Option<Secret>,
    token_type: String,
    expires_in: Option<i64>,
    scopes: Option<Vec<String>>,
}

/// OAuth connections of every integration. Cheap to share (`Arc<OAuth>`).
pub struct OAuth {
    stores: IntegrationStores,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    clients: BTreeMap<ProviderKey, OAuthClient>,
    settings: OAuthSettings,
    http: reqwest::Client,
    /// One async mutex per connection, so one refresh runs at a time per connection in this
    /// process. Entries are never removed: one per integration that ever refreshed.
    refreshing: Mutex<HashMap<IntegrationId, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("clients", &self.clients)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Random 256 bits, base64url without padding (43 characters of the PKCE/state alphabet).
fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(b)
}

/// The PKCE `S256` challenge of a verifier: `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// How states are stored: SHA-256, hex.
pub fn state_hash(state: &str) -> String {
    crate::webhook::hex(&Sha256::digest(state.as_bytes()))
}

/// A provider-supplied text made safe to show and log: printable, at most 200 characters.
fn tidy(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

impl OAuth {
    /// OAuth over `stores`, sealing with `keyring`; no provider is connectable until
    /// [`OAuth::with_client`] registers it.
    pub fn new(
        stores: IntegrationStores,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        settings: OAuthSettings,
    ) -> Result<Self> {
        check_url("redirect_uri", &settings.redirect_uri)?;
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            // Token endpoints do not redirect; following one would resend the client secret.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("pm-integrations/1")
            .build()
            .map_err(|e| Error::Provider {
                provider: "oauth".into(),
                message: format!("cannot build HTTP client: {e}"),
                retry_after: None,
            })?;
        Ok(Self {
            stores,
            keyring,
            clock,
            clients: BTreeMap::new(),
            settings,
            http,
            refreshing: Mutex::new(HashMap::new()),
        })
    }

    /// Registers the host's client for `provider`.
    pub fn with_client(mut self, provider: ProviderKey, client: OAuthClient) -> Self {
        self.clients.insert(provider, client);
        self
    }

    /// The registered client of a provider.
    pub fn client(&self, provider: &ProviderKey) -> Option<&OAuthClient> {
        self.clients.get(provider)
    }

    /// The settings.
    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    fn client_for(&self, provider: &ProviderKey) -> Result<&OAuthClient> {
        self.clients.get(provider).ok_or_else(|| {
            Error::invalid(
                "provider",
                format!("no OAuth client is configured for {provider} on this server"),
            )
        })
    }

    async fn log(&self, integration: &Integration, operation: &str, ok: bool, detail: Value) {
        let entry = LogEntry {
            id: LogId::new(),
            integration_id: Some(integration.id),
            provider: integration.provider.to_string(),
            direction: Direction::Outbound,
            operation: operation.to_owned(),
            ok,
            detail: Redacted::new(detail),
            at: self.clock.now(),
        };
        if let Err(e) = self.stores.logs.append_log(&entry).await {
            tracing::warn!(error = %e, operation, "cannot write integration log");
        }
    }

    /// Starts connecting `integration` for `user`: stores a single-use state with the sealed
    /// PKCE verifier and returns the authorization URL.
    pub async fn begin(&self, integration: &Integration, user: UserId) -> Result<Authorization> {
        let client = self.client_for(&integration.provider)?;
        let state = random_token();
        let verifier = random_token();
        let hash = state_hash(&state);
        let now = self.clock.now();
        let expires_at = now + self.settings.state_ttl;
        let pending = OAuthState {
            state_hash: hash.clone(),
            integration_id: integration.id,
            user_id: user,
            verifier: self.keyring.seal(verifier.as_bytes(), &OAuthState::verifier_context(&hash)),
            redirect_uri: self.settings.redirect_uri.clone(),
            created_at: now,
            expires_at,
        };
        self.stores.oauth.put_oauth_state(&pending).await?;
        let mut url = url::Url::parse(&client.authorize_url)
            .map_err(|e| Error::invalid("authorize_url", e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_uri)
            .append_pair("scope", &client.scopes.join(client.scope_separator))
            .append_pair("state", &state)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Authorization { url: url.into(), state, expires_at })
    }

    /// Finishes a connection from the provider's redirect: checks and consumes the state,
    /// exchanges the code (with the PKCE verifier) and stores the tokens sealed. Errors name the
    /// query parameter at fault (`state`: missing, unknown, used or expired; `code`: missing or
    /// refused by the provider; `error`: the provider reported a refusal); a failing token
    /// endpoint is [`Error::Provider`]. Nothing is stored unless everything succeeded.
    pub async fn complete(&self, cb: Callback<'_>) -> Result<(Integration, OAuthToken)> {
        let state = cb.state.map(str::trim).filter(|s| !s.is_empty());
        let Some(state) = state else {
            return Err(Error::invalid("state", "missing"));
        };
        if state.len() > 512 {
            return Err(Error::invalid("state", "unknown, already used or expired"));
        }
        let Some(pending) = self.stores.oauth.take_oauth_state(&state_hash(state)).await? else {
            return Err(Error::invalid("state", "unknown, already used or expired"));
        };
        let now = self.clock.now();
        if pending.expires_at <= now {
            return Err(Error::invalid("state", "expired: start connecting again"));
        }
        let integration = self.stores.integrations.get_integration(pending.integration_id).await?;
        if let Some(error) = cb.error {
            let reason = match cb.error_description {
                Some(d) => format!("{}: {}", tidy(error), tidy(d)),
                None => tidy(error),
            };
            self.log(&integration, "oauth.denied", false, json!({ "error": reason })).await;
            return Err(Error::invalid(
                "error",
                format!("the provider did not authorize the connection ({reason})"),
            ));
        }
        let code = cb.code.map(str::trim).filter(|c| !c.is_empty());
        let Some(code) = code else {
            return Err(Error::invalid("code", "missing"));
        };
        let client = self.client_for(&integration.provider)?;
        let verifier = self
            .keyring
            .open_secret(&pending.verifier, &OAuthState::verifier_context(&pending.state_hash))?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", pending.redirect_uri.clone()),
            ("code_verifier", verifier.expose().to_owned()),
        ];
        let tokens = match self.token_request(client, &mut form).await {
            Ok(t) => t,
            Err(e) => {
                self.log(&integration, "oauth.token_failed", false, json!({"error": e.describe()}))
                    .await;
                return Err(match &e {
                    TokenError::Rejected { error, .. } if error == "invalid_grant" => {
                        Error::invalid(
                            "code",
                            format!(
                                "the provider refused the authorization code ({})",
                                e.describe()
                            ),
                        )
                    }
                    _ => self.provider_error(&integration, &e),
                });
            }
        };
        let at = self.clock.now();
        let token = OAuthToken {
            integration_id: integration.id,
            access: self
                .keyring
                .seal_secret(&tokens.access, &OAuthToken::access_context(integration.id)),
            refresh: tokens
                .refresh
                .as_ref()
                .map(|r| self.keyring.seal_secret(r, &OAuthToken::refresh_context(integration.id))),
            token_type: tokens.token_type,
            scopes: tokens.scopes.unwrap_or_else(|| client.scopes.clone()),
            expires_at: tokens.expires_in.map(|s| at + Duration::from_secs(s.max(0) as u64)),
            status: OAuthStatus::Active,
            status_reason: None,
            connected_by: pending.user_id,
            version: 1,
            created_at: at,
            updated_at: at,
        };
        let stored = self.stores.oauth.put_oauth_token(&token).await?;
        self.log(
            &integration,
            "oauth.connected",
            true,
            json!({
                "scopes": stored.scopes, "expires_at": stored.expires_at.map(|t| t.unix_timestamp()),
                "refreshable": stored.refresh.is_some(), "user_id": pending.user_id,
            }),
        )
        .await;
        Ok((integration, stored))
    }

    fn provider_error(&self, integration: &Integration, e: &TokenError) -> Error {
        Error::Provider {
            provider: integration.provider.to_string(),
            message: format!("token endpoint: {}", e.describe()),
            retry_after: None,
        }
    }

    /// Posts a form to the token endpoint with client credentials; parses the answer (JSON, or
    /// form-encoded from providers that ignore `Accept`). A 2xx carrying `error` (GitHub,
    /// Slack's `ok: false`) is a refusal too.
    async fn token_request(
        &self,
        client: &OAuthClient,
        form: &mut Vec<(&'static str, String)>,
    ) -> std::result::Result<Tokens, TokenError> {
        form.push(("client_id", client.client_id.clone()));
        if let Some(s) = &client.client_secret {
            form.push(("client_secret", s.expose().to_owned()));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let res = self
            .http
            .post(&client.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError::Failed(format!("request failed: {}", e.without_url())))?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| {
            TokenError::Failed(format!("reading the response: {}", e.without_url()))
        })?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::Object(
                url::form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            )
        });
        if let Some(error) = v.get("error").and_then(Value::as_str) {
            return Err(TokenError::Rejected {
                error: tidy(error),
                description: v.get("error_description").and_then(Value::as_str).map(tidy),
            });
        }
        if !status.is_success() {
            return Err(TokenError::Failed(format!("HTTP {}", status.as_u16())));
        }
        let Some(access) = v.get("access_token").and_then(Value::as_str).filter(|s| !s.is_empty())
        else {
            return Err(TokenError::Failed("the response has no access_token".into()));
        };
        let expires_in = match v.get("expires_in") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        // RFC 6749 says space-separated; GitHub answers comma-separated.
        let scopes = v.get("scope").and_then(Value::as_str).map(|s| {
            s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_owned).collect::<Vec<_>>()
        });
        Ok(Tokens {
            access: Secret::new(access),
            refresh: v
                .get("refresh_token")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(Secret::new),
            token_type: v
                .get("token_type")
                .and_then(Value::as_str)
                .map(|t| tidy(t).to_ascii_lowercase())
                .unwrap_or_else(|| "bearer".into()),
            expires_in,
            scopes,
        })
    }

    /// The integration's connection, if any.
    pub async fn connection(&self, integration: IntegrationId) -> Result<Option<OAuthToken>> {
        self.stores.oauth.get_oauth_token(integration).await
    }

    /// The access token of `integration` when it is good for longer than the skew; `None`
    /// when it must be refreshed.
    fn usable(&self, provider: &ProviderKey, tok: &OAuthToken) -> Result<Option<Secret>> {
        if tok.status == OAuthStatus::NeedsReconnect {
            return Err(Error::NeedsReconnect {
                provider: provider.to_string(),
                reason: tok.status_reason.clone().unwrap_or_else(|| "refused".into()),
            });
        }
        let fresh = match tok.expires_at {
            None => true,
            Some(e) => e > self.clock.now() + self.settings.refresh_skew,
        };
        if !fresh {
            return Ok(None);
        }
        self.keyring
            .open_secret(&tok.access, &OAuthToken::access_context(tok.integration_id))
            .map(Some)
    }

    fn lock_for(&self, integration: IntegrationId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(integration).or_default().clone()
    }

    /// A valid access token of `integration`, refreshed first when it expires within the skew.
    /// Concurrent callers share one refresh. `NotFound` (`oauth connection`) when it is not
    /// connected; [`Error::NeedsReconnect`] once the provider refused the refresh token.
    pub async fn access_token(&self, integration: IntegrationId) -> Result<Secret> {
        let i = self.stores.integrations.get_integration(integration).await?;
        let load = || async {
            self.stores
                .oauth
                .get_oauth_token(integration)
                .await?
                .ok_or_else(|| Error::not_found("oauth connection"))
        };
        if let Some(s) = self.usable(&i.provider, &load().await?)? {
            return Ok(s);
        }
        let lock = self.lock_for(integration);
        let _one_at_a_time = lock.lock().await;
        // Whoever held the lock before us may have refreshed already.
        let tok = load().await?;
        if let Some(s) = self.usable(&i.provider, &tok)? {
            return Ok(s);
        }
        self.refresh(&i, tok).await
    }

    /// What a provider needs to call its API for `integration`: `base_url`, a valid access
    /// token (refreshed if need be, as [`OAuth::access_token`]) and the integration's config.
    pub async fn provider_context(
        &self,
        integration: &Integration,
        base_url: &str,
    ) -> Result<ProviderContext> {
        Ok(ProviderContext {
            base_url: base_url.to_owned(),
            access_token: Some(self.access_token(integration.id).await?),
            config: integration.config.clone(),
            pinned: None,
        })
    }

    async fn refresh(&self, i: &Integration, tok: OAuthToken) -> Result<Secret> {
        let client = self.client_for(&i.provider)?;
        let Some(sealed_refresh) = &tok.refresh else {
            if tok.expires_at.is_some_and(|e| e <= self.clock.now()) {
                return self
                    .needs_reconnect(
                        i,
                        tok,
                        "the access token expired and no refresh token was issued",
                    )
                    .await;
            }
            // Expiring soon but not refreshable: use it while it lasts.
            return self.keyring.open_secret(&tok.access, &OAuthToken::access_context(i.id));
        };
        let refresh =
            self.keyring.open_secret(sealed_refresh, &OAuthToken::refresh_context(i.id))?;
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.expose().to_owned()),
        ];
        match self.token_request(client, &mut form).await {
            Ok(t) => {
                let at = self.clock.now();
                let next = OAuthToken {
                    access: self.keyring.seal_secret(&t.access, &OAuthToken::access_context(i.id)),
                    // Providers that rotate send a new refresh token (the old one is dead now);
                    // the others keep the old one valid.
                    refresh: match &t.refresh {
                        Some(r) => {
                            Some(self.keyring.seal_secret(r, &OAuthToken::refresh_context(i.id)))
                        }
                        None => tok.refresh.clone(),
                    },
                    token_type: t.token_type,
                    scopes: t.scopes.unwrap_or_else(|| tok.scopes.clone()),
                    expires_at: t.expires_in.map(|s| at + Duration::from_secs(s.max(0) as u64)),
                    status: OAuthStatus::Active,
                    status_reason: None,
                    updated_at: at,
                    ..tok.clone()
                };
                match self.stores.oauth.update_oauth_token(&next, tok.version).await {
                    Ok(saved) => {
                        self.log(
                            i,
                            "oauth.refreshed",
                            true,
                            json!({
                                "expires_at": saved.expires_at.map(|t| t.unix_timestamp()),
                                "rotated": t.refresh.is_some(),
                            }),
                        )
                        .await;
                        Ok(t.access)
                    }
                    // Another instance refreshed first: its tokens are the current ones.
                    Err(Error::Conflict { .. }) => self.current(i).await,
                    Err(e) => Err(e),
                }
            }
            Err(TokenError::Rejected { error, description }) if error == "invalid_grant" => {
                let e = TokenError::Rejected { error, description };
                self.needs_reconnect(i, tok, &e.describe()).await
            }
            Err(e) => {
                self.log(i, "oauth.refresh_failed", false, json!({"error": e.describe()})).await;
                Err(self.provider_error(i, &e))
            }
        }
    }

    /// The stored access token after someone else's write (it must be usable now).
    async fn current(&self, i: &Integration) -> Result<Secret> {
        let tok = self
            .stores
            .oauth
            .get_oauth_token(i.id)
            .await?
            .ok_or_else(|| Error::not_found("oauth connection"))?;
        match self.usable(&i.provider, &tok)? {
            Some(s) => Ok(s),
            None => Err(Error::Provider {
                provider: i.provider.to_string(),
                message: "the token was refreshed concurrently but is already expiring".into(),
                retry_after: Some(1),
            }),
        }
    }

    async fn needs_reconnect(
        &self,
        i: &Integration,
        tok: OAuthToken,
        reason: &str,
    ) -> Result<Secret> {
        let reason = tidy(reason);
        let marked = OAuthToken {
            status: OAuthStatus::NeedsReconnect,
            status_reason: Some(reason.clone()),
            updated_at: self.clock.now(),
            ..tok.clone()
        };
        match self.stores.oauth.update_oauth_token(&marked, tok.version).await {
            Ok(_) => {
                self.log(i, "oauth.refresh_rejected", false, json!({"error": reason})).await;
                Err(Error::NeedsReconnect { provider: i.provider.to_string(), reason })
            }
            // Another instance refreshed (rotating the token we sent) or reconnected meanwhile:
            // its tokens decide.
            Err(Error::Conflict { .. }) => self.current(i).await,
            Err(e) => Err(e),
        }
    }

    /// Disconnects `integration`: revokes its token at the provider (the refresh token when
    /// there is one, which ends the grant; else the access token) and deletes the tokens here
    /// whatever the provider answered. `NotFound` (`oauth connection`) when not connected.
    pub async fn disconnect(&self, integration: &Integration) -> Result<Revocation> {
        let Some(tok) = self.stores.oauth.get_oauth_token(integration.id).await? else {
            return Err(Error::not_found("oauth connection"));
        };
        let client = self.clients.get(&integration.provider);
        let revocation = match client.and_then(|c| c.revoke_url.as_deref().map(|u| (c, u))) {
            None => Revocation::NotSupported,
            Some((client, url)) => match self.revoke(client, url, &tok).await {
                Ok(()) => Revocation::Revoked,
                Err(e) => {
                    tracing::warn!(integration = %integration.id, error = %e, "token revocation failed; deleting the tokens anyway");
                    Revocation::Failed(e)
                }
            },
        };
        self.stores.oauth.delete_oauth_token(integration.id).await?;
        let (ok, detail) = match &revocation {
            Revocation::Revoked => (true, json!({"revocation": "revoked"})),
            Revocation::NotSupported => (true, json!({"revocation": "not_supported"})),
            Revocation::Failed(e) => (false, json!({"revocation": "failed", "error": e})),
        };
        self.log(integration, "oauth.disconnected", ok, detail).await;
        Ok(revocation)
    }

    async fn revoke(
        &self,
        client: &OAuthClient,
        url: &str,
        tok: &OAuthToken,
    ) -> std::result::Result<(), String> {
        let (sealed, context, hint) = match &tok.refresh {
            Some(r) => (r, OAuthToken::refresh_context(tok.integration_id), "refresh_token"),
            None => (&tok.access, OAuthToken::access_context(tok.integration_id), "access_token"),
        };
        let token = self.keyring.open_secret(sealed, &context).map_err(|e| e.to_string())?;
        // Built in a block: the serializer is not `Send` and must not live across the await.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token.expose())
                .append_pair("token_type_hint", hint)
                .append_pair("client_id", &client.client_id);
            if let Some(s) = &client.client_secret {
                form.append_pair("client_secret", s.expose());
            }
            form.finish()
        };
        let res = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        // RFC 7009 §2.2: 200 whether or not the token was still valid.
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", res.status().as_u16()))
        }
    }
}

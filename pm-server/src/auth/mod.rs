//! Authentication: who is calling. Owns pm-server's credentials and sessions; the routes are in
//! [`crate::api::auth`].
//!
//! - Access tokens are short-lived HS256 JWTs ([`JwtKeys`]); a login starts a session whose
//!   rotating refresh tokens form a family (see [`store`]); the access token names its family
//!   (`sid`) so a password change can keep the current session and end the others.
//! - Personal API tokens (`pmat_…`) are opaque; only their SHA-256 is stored and every request
//!   looks the hash up, so a revocation takes effect on the next request (no cache).
//! - Passwords are argon2id ([`password`]); failed logins are throttled ([`throttle`]).
//! - The [`Authenticated`] extractor accepts both kinds of bearer token before a handler runs.
//!
//! Scope rule, enforced here once for every route: a read-scoped credential may only use safe
//! methods (GET, HEAD, OPTIONS); anything else is 403 before the handler runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pm_core::event::Origin;
use pm_core::id::UserId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

pub mod password;
pub mod secret;
pub mod store;
pub mod throttle;
pub mod token;

use store::AuthStore;
use throttle::{LoginThrottle, ThrottleLimits};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Safe methods only.
    Read,
    /// Everything the user may do.
    Write,
}

impl Scope {
    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    /// Parses `read` or `write`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Scope.
    pub scope: Scope,
}

/// What an access token carries: the [`Claims`] plus, for tokens issued by a login or refresh,
/// the refresh family (login session) `sid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The standard claims.
    #[serde(flatten)]
    pub claims: Claims,
    /// The refresh family the token was issued for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

/// Signing keys and token lifetimes.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("access_ttl", &self.access_ttl).finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys from a secret (at least 32 bytes).
    pub fn new(secret: &[u8], access_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
        }
    }

    /// Issues an access token; returns it with its lifetime in seconds.
    pub fn issue(&self, user: UserId, scope: Scope) -> Result<(String, u64), ApiError> {
        self.issue_for_session(user, scope, None)
    }

    /// Issues an access token belonging to the login session `sid` (a refresh family).
    pub fn issue_for_session(
        &self,
        user: UserId,
        scope: Scope,
        sid: Option<Uuid>,
    ) -> Result<(String, u64), ApiError> {
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = self.access_ttl.as_secs();
        let claims =
            SessionClaims { claims: Claims { sub: user.0, exp: now + ttl, iat: now, scope }, sid };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, ttl))
    }

    /// Verifies an access token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.verify_session(token).map(|c| c.claims)
    }

    /// Verifies an access token, keeping its session id.
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, ApiError> {
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    unauthorized("the access token has expired")
                }
                _ => unauthorized("the access token is not valid"),
            })
    }
}

/// Who may register (`PM_REGISTRATION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Registration {
    /// Anyone may register (the default).
    #[default]
    Open,
    /// Registration needs an invite token from `POST /api/v1/auth/invites`.
    Invite,
}

impl Registration {
    /// `open` or `invite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Registration::Open => "open",
            Registration::Invite => "invite",
        }
    }
}

/// Authentication settings (see [`crate::config::Config`] for the variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSettings {
    /// Who may register.
    pub registration: Registration,
    /// Lifetime of access tokens (default 15 minutes).
    pub access_ttl: Duration,
    /// Lifetime of each refresh token (default 30 days); every rotation issues a new one.
    pub refresh_ttl: Duration,
    /// Lifetime of invites (7 days).
    pub invite_ttl: Duration,
    /// Login throttling.
    pub throttle: ThrottleLimits,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            registration: Registration::Open,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            invite_ttl: Duration::from_secs(7 * 24 * 3600),
            throttle: ThrottleLimits::default(),
        }
    }
}

/// Authentication services shared by handlers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auth {
    /// JWT keys.
    pub keys: Arc<JwtKeys>,
    /// Credentials, sessions, API tokens, invites.
    pub store: Arc<dyn AuthStore>,
    /// Settings.
    pub settings: AuthSettings,
    /// Failed-login counters.
    pub throttle: Arc<LoginThrottle>,
}

impl Auth {
    /// Authentication over `store`, signing with `jwt_secret`.
    pub fn new(jwt_secret: &[u8], store: Arc<dyn AuthStore>, settings: AuthSettings) -> Self {
        Self {
            keys: Arc::new(JwtKeys::new(jwt_secret, settings.access_ttl)),
            store,
            throttle: Arc::new(LoginThrottle::new(settings.throttle)),
            settings,
        }
    }

    /// Authentication that lives and dies with the process: a random JWT secret and an in-memory
    /// store, default settings. For tests and quick embedding.
    pub fn ephemeral() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random number generator works");
        Self::new(
            &secret,
            Arc::new(store::memory::MemoryAuthStore::default()),
            AuthSettings::default(),
        )
    }
}

impl Auth {
    /// Authenticates a bearer token, an access JWT or a personal API token (`pmat_…`), however
    /// it arrived (the `Authorization` header, or a WebSocket's subprotocol or query). The scope
    /// rule is the caller's to apply.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, ApiError> {
        if token.starts_with(token::API_TOKEN_PREFIX) {
            api_token(self, token).await
        } else {
            let SessionClaims { claims, sid } = self.keys.verify_session(token)?;
            Ok(Authenticated {
                user_id: UserId(claims.sub),
                scope: claims.scope,
                via: Via::AccessToken { session: sid },
                expires_at: i64::try_from(claims.exp)
                    .ok()
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()),
            })
        }
    }
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A JWT access token, of the login session (refresh family) `session` if any.
    AccessToken {
        /// The refresh family the token was issued for.
        session: Option<Uuid>,
    },
    /// A personal API token.
    ApiToken {
        /// The token's id.
        id: Uuid,
    },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The user.
    pub user_id: UserId,
    /// What the credential may do.
    pub scope: Scope,
    /// The credential.
    pub via: Via,
    /// When the credential expires (`None`: an API token without expiry). Long-lived uses of
    /// one authentication, such as a WebSocket, end then.
    pub expires_at: Option<time::OffsetDateTime>,
}

impl Authenticated {
    /// The origin of changes this caller makes.
    pub fn origin(&self) -> Origin {
        Origin::user(self.user_id)
    }

    /// Refuses API tokens: for operations that create or change credentials, so a leaked API
    /// token cannot mint longer-lived access or take over the account.
    pub fn require_login_session(&self) -> Result<(), ApiError> {
        match self.via {
            Via::AccessToken { .. } => Ok(()),
            Via::ApiToken { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "login-required",
                "Login required",
                "this operation needs an access token from a login, not an API token",
            )),
        }
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge.
pub fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
        .with_header("www-authenticate", "Bearer")
}

/// How often at most `last_used_at` of an API token is written.
const TOUCH_EVERY: time::Duration = time::Duration::minutes(1);

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Auth: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Auth::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthorized("this operation needs an `Authorization: Bearer` token"))?;
        let value =
            header.to_str().map_err(|_| unauthorized("the Authorization header is not valid"))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let who = auth.authenticate(token).await?;
        if who.scope == Scope::Read
            && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
                "this token is read-only",
            ));
        }
        Ok(who)
    }
}

/// Authenticates a personal API token: looked up by hash on every request, so revocation and
/// expiry take effect immediately.
async fn api_token(auth: &Auth, presented: &str) -> Result<Authenticated, ApiError> {
    let found = auth.store.find_api_token(&token::sha256(presented)).await?;
    let Some(t) = found else { return Err(unauthorized("the API token is not valid")) };
    let now = pm_core::model::now();
    if t.revoked_at.is_some() {
        return Err(unauthorized("the API token has been revoked"));
    }
    if !t.is_active(now) {
        return Err(unauthorized("the API token has expired"));
    }
    if t.last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY) {
        // Bookkeeping only: a failure here must not fail the request.
        if let Err(e) = auth.store.touch_api_token(t.id, now).await {
            tracing::warn!(error = %e, "could not record API token use");
        }
    }
    Ok(Authenticated {
        user_id: t.user_id,
        scope: t.scope,
        via: Via::ApiToken { id: t.id },
        expires_at: t.expires_at,
    })
}

/// The client's IP address: as resolved behind trusted proxies ([`crate::forwarded`]), else the
/// connection's peer (`axum::serve` with `into_make_service_with_connect_info::<SocketAddr>()`);
/// `None` when the server was built without connection info (e.g. in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let resolved = parts.extensions.get::<crate::forwarded::RemoteIp>().map(|r| r.0);
        Ok(ClientIp(
            resolved
                .or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())),
        ))
    }
}

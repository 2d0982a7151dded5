//! Authentication: who is calling. Access tokens are short-lived HS256 JWTs; the
//! [`Authenticated`] extractor verifies them (and, via [`Auth`], personal API tokens) before a
//! handler runs.
//!
//! Scope rule, enforced here once for every route: a read-scoped credential may only use safe
//! methods (GET, HEAD, OPTIONS); anything else is 403 before the handler runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pm_core::event::Origin;
use pm_core::id::UserId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Safe methods only.
    Read,
    /// Everything the user may do.
    Write,
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
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = self.access_ttl.as_secs();
        let claims = Claims { sub: user.0, exp: now + ttl, iat: now, scope };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, ttl))
    }

    /// Verifies an access token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    unauthorized("the access token has expired")
                }
                _ => unauthorized("the access token is not valid"),
            })
    }
}

/// Authentication services shared by handlers.
#[derive(Clone, Debug)]
pub struct Auth {
    /// JWT keys.
    pub keys: Arc<JwtKeys>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The user.
    pub user_id: UserId,
    /// What the credential may do.
    pub scope: Scope,
}

impl Authenticated {
    /// The origin of changes this caller makes.
    pub fn origin(&self) -> Origin {
        Origin::user(self.user_id)
    }
}

/// 401 with a `WWW-Authenticate: Bearer` challenge.
pub fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
        .with_header("www-authenticate", "Bearer")
}

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
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must use the Bearer scheme"))?
            .trim();
        let claims = auth.keys.verify(token)?;
        let who = Authenticated { user_id: UserId(claims.sub), scope: claims.scope };
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

//! Authentication routes: registration (open, or by invite), login, refresh-token rotation,
//! logout, the caller's profile (`/me`), password change and personal API tokens.
//!
//! Token responses follow OAuth 2.0's shape (`access_token`, `token_type`, `expires_in`,
//! `refresh_token`). Secrets (passwords, refresh/API/invite tokens) appear only in request bodies
//! and in the one response that creates them; never in URLs, logs or lists.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pm_core::event::Origin;
use pm_core::id::UserId;
use pm_core::model::{Email, Name, User, now};
use pm_core::service::NewUser;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{PageBody, Problem};
use crate::AppState;
use crate::auth::store::{ApiToken, Invite, NewRefreshToken, Rotation, Successor};
use crate::auth::{Auth, Authenticated, ClientIp, Registration, Scope, password, token};
use crate::error::ApiError;
use crate::extract::{Json, Path};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(create_invite))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(list_api_tokens, create_api_token))
        .routes(routes!(revoke_api_token))
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// E-mail address (unique, case-insensitive).
    #[schema(format = "email")]
    pub email: String,
    /// Display name, 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub display_name: String,
    /// Password, 10-1024 characters.
    #[schema(min_length = 10, max_length = 1024, format = "password")]
    pub password: String,
    /// Invite token from `POST /auth/invites`; required when the server runs with
    /// `PM_REGISTRATION=invite`, ignored otherwise.
    pub invite_token: Option<String>,
}

/// E-mail and password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// E-mail address.
    pub email: String,
    /// Password.
    #[schema(format = "password")]
    pub password: String,
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token from the last login or refresh.
    pub refresh_token: String,
}

/// A new access token and the refresh token that replaces the presented one.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single-use token for `POST /auth/refresh`; using it twice ends the session.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// Options of a new invite.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    /// Seconds the invite stays valid (default 7 days, at most 30 days).
    pub expires_in_secs: Option<u64>,
}

/// A single-use registration invite.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInvite {
    /// Pass as `invite_token` to `POST /auth/register`. Shown only once.
    pub invite_token: String,
    /// When it stops being accepted.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordBody {
    /// The current password.
    #[schema(format = "password")]
    pub current_password: String,
    /// The new password, 10-1024 characters.
    #[schema(min_length = 10, max_length = 1024, format = "password")]
    pub new_password: String,
}

/// A new personal API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenBody {
    /// A label to recognise it by, 1-100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `read` (safe methods only) or `write`.
    pub scope: Scope,
    /// When it stops working (RFC 3339, in the future); never when absent.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

/// A personal API token, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenInfo {
    /// Identity (for `DELETE /me/tokens/{token_id}`).
    pub id: Uuid,
    /// Label.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it stops working, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// When it last authenticated a request (to the minute).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<ApiToken> for ApiTokenInfo {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            scope: t.scope,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            created_at: t.created_at,
        }
    }
}

/// A new API token with its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiToken {
    /// The token for `Authorization: Bearer`. Shown only once: only its hash is kept.
    pub token: String,
    /// The token's metadata.
    #[serde(flatten)]
    pub info: ApiTokenInfo,
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Re-labels a pm-core validation error with the request's field name.
fn field(name: &'static str, e: pm_core::Error) -> ApiError {
    match e {
        pm_core::Error::Invalid { message, .. } => pm_core::Error::invalid(name, message).into(),
        other => other.into(),
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid-credentials",
        "Invalid credentials",
        "the e-mail address or password is wrong",
    )
    .with_header("www-authenticate", "Bearer")
}

fn too_many_attempts(retry_after: std::time::Duration) -> ApiError {
    let secs = retry_after.as_secs().max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-attempts",
        "Too many attempts",
        format!("too many failed logins; try again in {secs} s"),
    )
    .with("retry_after", secs)
    .with_header("retry-after", secs.to_string())
}

fn ttl(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// Starts a session (a new refresh family) for `user` and returns its first token pair.
async fn start_session(auth: &Auth, user: UserId) -> Result<TokenPair, ApiError> {
    let family_id = Uuid::now_v7();
    let (refresh_token, token_hash) = token::generate(token::REFRESH_TOKEN_PREFIX)?;
    let at = now();
    auth.store
        .insert_refresh(&NewRefreshToken {
            id: Uuid::now_v7(),
            family_id,
            user_id: user,
            token_hash,
            expires_at: at + ttl(auth.settings.refresh_ttl),
            created_at: at,
        })
        .await?;
    token_pair(auth, user, family_id, refresh_token)
}

fn token_pair(
    auth: &Auth,
    user: UserId,
    family: Uuid,
    refresh_token: String,
) -> Result<TokenPair, ApiError> {
    let (access_token, expires_in) =
        auth.keys.issue_for_session(user, Scope::Write, Some(family))?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token,
        refresh_expires_in: auth.settings.refresh_ttl.as_secs(),
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Creates an account with a password. With `PM_REGISTRATION=invite` it needs an invite token.
#[utoipa::path(post, path = "/auth/register", tag = "auth", operation_id = "register",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The new user; log in to get tokens", body = User),
        (status = 400, description = "Invalid e-mail, display name or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Registration needs a valid invite", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A user with this e-mail already exists", body = Problem, content_type = "application/problem+json"),
    ))]
async fn register(
    State(s): State<AppState>,
    Json(body): Json<RegisterBody>,
) -> Result<Response, ApiError> {
    let email = Email::parse(&body.email).map_err(|e| field("email", e))?;
    let display_name = Name::parse(&body.display_name).map_err(|e| field("display_name", e))?;
    password::validate("password", &body.password)?;
    let store = &s.auth.store;

    let invite = match s.auth.settings.registration {
        Registration::Open => None,
        Registration::Invite => {
            let Some(presented) = body.invite_token.as_deref() else {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "invite-required",
                    "Invite required",
                    "registration on this server needs an invite_token",
                ));
            };
            match store.consume_invite(&token::sha256(presented), now()).await? {
                Some(id) => Some(id),
                None => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "invite-invalid",
                        "Invalid invite",
                        "the invite_token is unknown, used or expired",
                    )
                    .with("field", "invite_token"));
                }
            }
        }
    };
    // Hash before creating anything: the slow, fallible step must not strand a user row.
    let hash = match password::hash(body.password).await {
        Ok(h) => h,
        Err(e) => return Err(release(&s.auth, invite, e.into()).await),
    };
    let user = match s.pm.create_user(&Origin::system(), NewUser { email, display_name }).await {
        Ok(u) => u,
        // Duplicate e-mail (409) or a storage failure: nothing was written, so the invite is
        // handed back.
        Err(e) => return Err(release(&s.auth, invite, e.into()).await),
    };
    // The user row and the credential live in different stores (pm-core's and ours), so they
    // cannot share a transaction. If this insert fails, the user exists without a password:
    // nobody can log in as them, and a new registration with the same e-mail gets 409 rather
    // than silently claiming the row — claiming would also hand over any user row that a host or
    // an integration created without a credential (and its memberships) to whoever registers
    // that address first. An operator completes the account with
    // `pm-server create-user --email …`, which attaches a password to an existing user that has
    // none. The invite stays consumed: it admitted this user.
    if let Err(e) = store.create_credential(user.id, &hash, now()).await {
        tracing::error!(user = %user.id.0, error = %e, "user created without a credential: registration half-done; `pm-server create-user --email` completes it");
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Hands a consumed invite back after a failed registration, then returns `err`.
async fn release(auth: &Auth, invite: Option<Uuid>, err: ApiError) -> ApiError {
    if let Some(id) = invite
        && let Err(e) = auth.store.release_invite(id).await
    {
        tracing::warn!(error = %e, "could not release the invite of a failed registration");
    }
    err
}

/// Exchanges e-mail and password for an access token and a refresh token. Failed attempts are
/// limited per account and per client address; past the limit the answer is 429 with
/// `Retry-After`.
#[utoipa::path(post, path = "/auth/login", tag = "auth", operation_id = "login",
    request_body = LoginBody,
    responses(
        (status = 200, description = "A new session", body = TokenPair),
        (status = 400, description = "Malformed body or e-mail", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong e-mail or password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(body): Json<LoginBody>,
) -> Result<Json<TokenPair>, ApiError> {
    let email = Email::parse(&body.email).map_err(|e| field("email", e))?;
    let auth = &s.auth;
    auth.throttle.check(email.as_str(), ip).map_err(too_many_attempts)?;
    let user = s.stores.directory.find_user_by_email(&email).await?;
    let stored = match &user {
        Some(u) => auth.store.password_hash(u.id).await?,
        None => None,
    };
    // Verified even without a user (against a dummy hash) so timing does not reveal accounts.
    let ok = password::verify(body.password, stored).await?;
    let Some(user) = user.filter(|_| ok) else {
        auth.throttle.failed(email.as_str(), ip);
        return Err(invalid_credentials());
    };
    auth.throttle.succeeded(email.as_str());
    Ok(Json(start_session(auth, user.id).await?))
}

/// Rotates a refresh token: returns a new access token and a new refresh token, and retires the
/// presented one. Presenting a retired refresh token again ends the whole session (every token
/// issued from the same login), since it means the token was copied.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", operation_id = "refresh",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "The next token pair", body = TokenPair),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(s): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<TokenPair>, ApiError> {
    let auth = &s.auth;
    let (next_token, token_hash) = token::generate(token::REFRESH_TOKEN_PREFIX)?;
    let at = now();
    let successor = Successor {
        id: Uuid::now_v7(),
        token_hash,
        expires_at: at + ttl(auth.settings.refresh_ttl),
    };
    match auth.store.rotate_refresh(&token::sha256(&body.refresh_token), &successor, at).await? {
        Rotation::Rotated { user_id, family_id } => {
            Ok(Json(token_pair(auth, user_id, family_id, next_token)?))
        }
        Rotation::Reused { user_id, family_id } => {
            tracing::warn!(user = %user_id.0, session = %family_id, "refresh token reused: session revoked");
            Err(crate::auth::unauthorized(
                "this refresh token was already used; the session has been revoked, log in again",
            ))
        }
        Rotation::Invalid => {
            Err(crate::auth::unauthorized("the refresh token is not valid; log in again"))
        }
    }
}

/// Ends the session of a refresh token: it and every token rotated from the same login stop
/// working. Access tokens already issued stay valid until they expire (minutes). Answers 204
/// whether or not the token was known.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", operation_id = "logout",
    request_body = RefreshBody,
    responses(
        (status = 204, description = "The session is over"),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
    ))]
async fn logout(
    State(s): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    s.auth.store.revoke_refresh_family(&token::sha256(&body.refresh_token), now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a single-use registration invite (for `PM_REGISTRATION=invite`). Only its hash is
/// stored; the token is shown once.
#[utoipa::path(post, path = "/auth/invites", tag = "auth", operation_id = "create_invite",
    request_body = InviteBody,
    responses(
        (status = 201, description = "The invite", body = CreatedInvite),
        (status = 400, description = "Invalid expiry", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_invite(
    State(s): State<AppState>,
    who: Authenticated,
    Json(body): Json<InviteBody>,
) -> Result<Response, ApiError> {
    const MAX: u64 = 30 * 24 * 3600;
    let lifetime = match body.expires_in_secs {
        None => ttl(s.auth.settings.invite_ttl),
        Some(n @ 1..=MAX) => time::Duration::seconds(n as i64),
        Some(_) => {
            return Err(pm_core::Error::invalid(
                "expires_in_secs",
                format!("must be between 1 and {MAX}"),
            )
            .into());
        }
    };
    let (invite_token, token_hash) = token::generate(token::INVITE_TOKEN_PREFIX)?;
    let at = now();
    let invite = Invite {
        id: Uuid::now_v7(),
        token_hash,
        created_by: who.user_id,
        expires_at: at + lifetime,
        created_at: at,
    };
    s.auth.store.create_invite(&invite).await?;
    let body = CreatedInvite { invite_token, expires_at: invite.expires_at };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The calling user.
#[utoipa::path(get, path = "/me", tag = "auth", operation_id = "get_me",
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn me(State(s): State<AppState>, who: Authenticated) -> Result<Json<User>, ApiError> {
    Ok(Json(s.pm.get_user(who.user_id).await?))
}

/// Changes the caller's password. Needs the current one and a login session (not an API
/// token). Every other session of the user ends; the calling session and API tokens stay valid.
#[utoipa::path(post, path = "/me/password", tag = "auth", operation_id = "change_password",
    request_body = ChangePasswordBody,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "The new password breaks the length rule", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong current password, read-only token or API token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn change_password(
    State(s): State<AppState>,
    who: Authenticated,
    ClientIp(ip): ClientIp,
    Json(body): Json<ChangePasswordBody>,
) -> Result<StatusCode, ApiError> {
    who.require_login_session()?;
    password::validate("new_password", &body.new_password)?;
    let auth = &s.auth;
    let user = s.pm.get_user(who.user_id).await?;
    // Guessing the current password here counts against the same limits as logging in.
    let account = user.email.as_str();
    auth.throttle.check(account, ip).map_err(too_many_attempts)?;
    let stored = auth.store.password_hash(user.id).await?;
    if !password::verify(body.current_password, stored).await? {
        auth.throttle.failed(account, ip);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid-credentials",
            "Invalid credentials",
            "current_password is wrong",
        )
        .with("field", "current_password"));
    }
    let hash = password::hash(body.new_password).await?;
    let keep = match who.via {
        crate::auth::Via::AccessToken { session } => session,
        crate::auth::Via::ApiToken { .. } => None,
    };
    auth.store.change_password(user.id, &hash, keep, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's active personal API tokens (never their secrets), oldest first.
#[utoipa::path(get, path = "/me/tokens", tag = "auth", operation_id = "list_api_tokens",
    responses(
        (status = 200, description = "All unrevoked tokens (one page)", body = PageBody<ApiTokenInfo>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_api_tokens(
    State(s): State<AppState>,
    who: Authenticated,
) -> Result<Json<PageBody<ApiTokenInfo>>, ApiError> {
    let tokens = s.auth.store.list_api_tokens(who.user_id).await?;
    Ok(Json(PageBody { items: tokens.into_iter().map(Into::into).collect(), next_cursor: None }))
}

/// Creates a personal API token for scripts and integrations. Needs a login session (an API
/// token cannot create tokens). The secret is in this response only.
#[utoipa::path(post, path = "/me/tokens", tag = "auth", operation_id = "create_api_token",
    request_body = CreateApiTokenBody,
    responses(
        (status = 201, description = "The token, with its secret", body = CreatedApiToken),
        (status = 400, description = "Invalid name, scope or expiry", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token or API token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_api_token(
    State(s): State<AppState>,
    who: Authenticated,
    Json(body): Json<CreateApiTokenBody>,
) -> Result<Response, ApiError> {
    who.require_login_session()?;
    let name = body.name.trim();
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(char::is_control) {
        return Err(pm_core::Error::invalid(
            "name",
            "must be 1-100 characters, no control characters",
        )
        .into());
    }
    let at = now();
    if body.expires_at.is_some_and(|e| e <= at) {
        return Err(pm_core::Error::invalid("expires_at", "must be in the future").into());
    }
    let (secret, token_hash) = token::generate(token::API_TOKEN_PREFIX)?;
    let t = ApiToken {
        id: Uuid::now_v7(),
        user_id: who.user_id,
        name: name.to_owned(),
        token_hash,
        scope: body.scope,
        // Stored at the precision both backends keep.
        expires_at: body
            .expires_at
            .map(pm_core::query::micros)
            .map(pm_core::query::from_micros)
            .transpose()?,
        revoked_at: None,
        last_used_at: None,
        created_at: at,
    };
    s.auth.store.create_api_token(&t).await?;
    let body = CreatedApiToken { token: secret, info: t.into() };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revokes one of the caller's API tokens; it stops working immediately.
#[utoipa::path(delete, path = "/me/tokens/{token_id}", tag = "auth", operation_id = "revoke_api_token",
    params(("token_id" = Uuid, Path, description = "API token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller has no such active token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn revoke_api_token(
    State(s): State<AppState>,
    who: Authenticated,
    Path(token_id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    s.auth.store.revoke_api_token(who.user_id, token_id, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Integrations over HTTP: the inbound webhook endpoint per provider, project integrations
//! (CRUD, logs), and outbound webhook subscriptions (CRUD with event filters, secret rotation,
//! delivery log, manual redelivery), and OAuth 2 connections (connect → provider → callback,
//! disconnect with revocation), and the two-way sync's surface: task ↔ item mappings, conflicts
//! (listed, settled by choosing local, remote or a value), the pushes waiting in the sync's
//! retry queue, the pushes the sync gave up on, and the project export.
//!
//! Invariants: an inbound request is verified on its raw bytes before anything else looks at
//! it — a bad signature is a 401 problem, logged, and nothing is stored or processed; a replayed
//! delivery id is a 200 no-op; an accepted delivery is persisted (the queue) and acknowledged at
//! once, processing happens in the background. Managing integrations and subscriptions needs
//! `(integration, manage)` in the organization; an integration or subscription the caller may
//! not manage is 404. Secrets are returned once, when created, and stored sealed; OAuth tokens are
//! never returned at all. The OAuth callback is authenticated by its single-use `state`, not a
//! bearer token (it is a browser redirect from the provider). When the
//! server runs without integrations ([`AppState::integrations`] is `None`) every route is 404.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use pm_core::authz::{Action, Resource, ResourceKind};
use pm_core::id::{IntegrationId, OrgId, ProjectId};
use pm_integrations::model::*;
use pm_integrations::provider::{Mappings, ProviderKey};
use pm_integrations::webhook::InboundRequest;
use pm_integrations::webhook::outbound::WebhookSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::{PageBody, Problem, page_response, with_etag};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::integrations::{Integrations, entry, open_secrets, seal_secrets};

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_webhook))
        .routes(routes!(list_providers))
        .routes(routes!(create_integration))
        .routes(routes!(list_integrations))
        .routes(routes!(get_integration, update_integration, delete_integration))
        .routes(routes!(list_integration_logs))
        .routes(routes!(oauth_connect))
        .routes(routes!(oauth_disconnect))
        .routes(routes!(oauth_callback))
        .routes(routes!(list_subscriptions, create_subscription))
        .routes(routes!(get_subscription, update_subscription, delete_subscription))
        .routes(routes!(rotate_subscription_secret))
        .routes(routes!(list_subscription_deliveries))
        .routes(routes!(redeliver))
        .routes(routes!(list_mappings))
        .routes(routes!(list_conflicts))
        .routes(routes!(list_sync_failures))
        .routes(routes!(retry_sync_failure))
        .routes(routes!(dismiss_sync_failure))
        .routes(routes!(list_parked_pushes))
        .routes(routes!(resolve_conflict))
        .routes(routes!(export_integration))
}

fn integrations(s: &AppState) -> Result<&Integrations, ApiError> {
    s.integrations.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "integrations are not enabled on this server",
        )
    })
}

fn now(i: &Integrations) -> OffsetDateTime {
    i.clock.now()
}

/// Requires `(integration, manage)` in `org` (and `project`); `hide` turns a denial into a 404
/// of `entity`, for reads of a specific row the caller may not see.
async fn require_manage(
    s: &AppState,
    who: &Authenticated,
    org: OrgId,
    project: Option<ProjectId>,
    hide: Option<&'static str>,
) -> Result<(), ApiError> {
    let resource = Resource::new(ResourceKind::Integration, Some(org), project);
    match crate::authz::require(s, who, Action::Manage, &resource).await {
        Ok(()) => Ok(()),
        Err(e) if e.status() == StatusCode::FORBIDDEN => match hide {
            Some(entity) => Err(ApiError::entity_not_found(entity)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

// --- inbound -----------------------------------------------------------------------------------

/// The acknowledgement of an inbound delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboundAck {
    /// `queued` (stored, will be processed) or `duplicate` (seen before; nothing done).
    pub status: String,
    /// Our id of the stored delivery.
    pub delivery_id: Uuid,
}

/// Headers worth keeping with a delivery (what parsing needs); signatures and tokens are not.
fn keep_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let secret = ["signature", "token", "authorization", "cookie"].iter().any(|w| n.contains(w));
    !secret
        && (n == "content-type"
            || n.starts_with("x-github-")
            || n.starts_with("x-atlassian-")
            || n.starts_with("x-goog-")
            || n.starts_with("x-slack-"))
}

/// Receives a provider's webhook for one integration. Verified on the raw body (GitHub
/// `X-Hub-Signature-256`, Jira `X-Hub-Signature`, Slack v0 signing, Graph `clientState`,
/// Google channel token) with the integration's secret; deduplicated by the provider's delivery
/// id; persisted, then processed in the background. Microsoft Graph's validation handshake
/// (`?validationToken=`) and Slack's `url_verification` are answered in `text/plain`; Slack
/// slash commands (`/pm create <title>`, `/pm list`) with an ephemeral message, Slack buttons
/// with an empty 200 (the updated message follows through `response_url`).
#[utoipa::path(post, path = "/hooks/{provider}/{integration_id}", tag = "integrations", operation_id = "receive_webhook",
    params(
        ("provider" = String, Path, description = "Provider key, e.g. `github`"),
        ("integration_id" = Uuid, Path, description = "Integration id"),
    ),
    request_body(content = String, description = "The provider's payload, verified byte for byte", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "A replayed delivery (no-op), a handshake answer in text/plain, a Slack slash command's ephemeral answer, or an empty body for a Slack button", body = super::integrations_chat::HookReply),
        (status = 202, description = "Stored; processing follows", body = InboundAck),
        (status = 400, description = "Malformed path or a signed request without a delivery id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Signature, timestamp or token rejected; nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration for this provider", body = Problem, content_type = "application/problem+json"),
    ),
    security(("webhook_signature" = [])))]
async fn receive_webhook(
    State(s): State<AppState>,
    Path((provider, integration_id)): Path<(String, Uuid)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ints = integrations(&s)?;
    let key = ProviderKey::parse(&provider)?;
    let p = ints.registry.get(&key).ok_or_else(|| ApiError::entity_not_found("provider"))?;
    let integration =
        match ints.stores.integrations.get_integration(IntegrationId(integration_id)).await {
            Ok(i) if i.provider == key && i.enabled => i,
            Ok(_) | Err(pm_integrations::Error::NotFound { .. }) => {
                return Err(ApiError::entity_not_found("integration"));
            }
            Err(e) => return Err(e.into()),
        };
    let req = InboundRequest {
        headers: headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        query,
        body: body.to_vec(),
    };
    let at = now(ints);
    let reject = |reason: String| {
        let entry = entry(
            Some(integration.id),
            key.as_str(),
            Direction::Inbound,
            "webhook.rejected",
            false,
            json!({"reason": reason, "bytes": req.body.len()}),
            at,
        );
        async move {
            ints.log(entry).await;
        }
    };
    if let Some(reply) = p.handshake(&req).map_err(pm_integrations::Error::from)? {
        return Ok(([(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response());
    }
    let secret = ints
        .stores
        .credentials
        .get_credential(integration.id, CredentialKind::WebhookSecret)
        .await?;
    let Some(secret) = secret else {
        reject("the integration has no webhook secret".into()).await;
        return Err(unauthenticated("the integration has no webhook secret configured"));
    };
    let secret = ints
        .keyring()?
        .open_secret(&secret.sealed, &CredentialKind::WebhookSecret.context(integration.id))?;
    if let Err(e) = p.verify(secret.expose().as_bytes(), &req, at) {
        reject(e.to_string()).await;
        return Err(pm_integrations::Error::from(e).into());
    }
    if let Some(reply) = p.immediate_reply(&req) {
        return Ok(([(header::CONTENT_TYPE, reply.content_type)], reply.body).into_response());
    }
    let delivery_id = p
        .delivery_id(&req)
        .map_err(|e| ApiError::invalid_field("delivery_id".into(), e.to_string()))?;
    let kept = req.headers.iter().filter(|(n, _)| keep_header(n)).cloned().collect();
    let is_slack = key.as_str() == "slack";
    let delivery =
        InboundDelivery::new(key.clone(), integration.id, delivery_id.clone(), kept, req.body, at);
    match ints.stores.inbound.ingest(&delivery).await? {
        Ingested::New(id) => {
            ints.log(entry(
                Some(integration.id),
                key.as_str(),
                Direction::Inbound,
                "webhook.received",
                true,
                json!({"delivery_id": delivery_id}),
                at,
            ))
            .await;
            ints.wake_inbound();
            // Slack waits (3 s) for the answer to a command or a button.
            if is_slack
                && let Some(r) =
                    super::integrations_chat::slack_reply(&s, ints, &integration, &body).await?
            {
                return Ok(r);
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(InboundAck { status: "queued".into(), delivery_id: id.0 }),
            )
                .into_response())
        }
        Ingested::Duplicate(id) => {
            Ok((StatusCode::OK, Json(InboundAck { status: "duplicate".into(), delivery_id: id.0 }))
                .into_response())
        }
    }
}

fn unauthenticated(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid-signature", "Unauthenticated webhook", detail)
}

// --- providers ---------------------------------------------------------------------------------

/// A provider pm can connect to.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderBody {
    /// Stable key, used in paths.
    pub key: String,
    /// Display name.
    pub name: String,
    /// What it can do (`webhooks`, `pull`, `push`, `messages`, `o_auth`).
    #[schema(value_type = Vec<String>)]
    pub capabilities: Value,
    /// OAuth endpoints and scopes, for providers connected with OAuth 2.
    #[schema(value_type = Option<Object>)]
    pub oauth: Option<Value>,
}

/// Lists the providers this server knows.
#[utoipa::path(get, path = "/integration-providers", tag = "integrations", operation_id = "list_integration_providers",
    responses(
        (status = 200, description = "Providers by key", body = Vec<ProviderBody>),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Integrations are not enabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_providers(
    State(s): State<AppState>,
    _who: Authenticated,
) -> Result<Json<Vec<ProviderBody>>, ApiError> {
    let ints = integrations(&s)?;
    Ok(Json(
        ints.registry
            .all()
            .map(|p| {
                let info = p.info();
                ProviderBody {
                    key: info.key.to_string(),
                    name: info.name,
                    capabilities: json!(info.capabilities),
                    oauth: p.oauth().map(|o| json!(o)),
                }
            })
            .collect(),
    ))
}

// --- integrations ------------------------------------------------------------------------------

/// A project's integration.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationBody {
    /// Id (also the actor of changes it makes).
    pub id: Uuid,
    /// Organization.
    pub org_id: Uuid,
    /// Project.
    pub project_id: Uuid,
    /// Provider key.
    pub provider: String,
    /// Name.
    pub name: String,
    /// Provider-specific settings.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Field/state mappings and merge policies.
    #[schema(value_type = Object)]
    pub mappings: Value,
    /// Whether it is active.
    pub enabled: bool,
    /// Version (for `If-Match` / `version`).
    pub version: i64,
    /// Where the provider must send webhooks (path on this server).
    pub webhook_path: String,
    /// The OAuth connection, when one was made (`status` says whether it needs a reconnect).
    pub oauth: Option<OAuthConnectionBody>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Integration> for IntegrationBody {
    fn from(i: Integration) -> Self {
        Self {
            webhook_path: format!("/api/v1/hooks/{}/{}", i.provider, i.id),
            oauth: None,
            id: i.id.0,
            org_id: i.org_id.0,
            project_id: i.project_id.0,
            provider: i.provider.to_string(),
            name: i.name,
            config: i.config,
            mappings: json!(i.mappings),
            enabled: i.enabled,
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// A new integration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegrationBody {
    /// Provider key (see `GET /integration-providers`).
    pub provider: String,
    /// Name, 1-200 characters.
    pub name: String,
    /// Provider-specific settings (an object).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Mappings; the provider's defaults when absent.
    #[schema(value_type = Option<Object>)]
    pub mappings: Option<Value>,
    /// The secret webhooks are verified with: Slack's signing secret must be given; for the
    /// others one is generated when absent (and returned once).
    pub webhook_secret: Option<String>,
    /// A static API token the sync calls the provider with instead of an OAuth connection (a
    /// GitHub personal access token; a Jira API token, with `config.email`). Stored sealed,
    /// never returned.
    pub api_token: Option<String>,
}

/// A created integration and its webhook secret (shown only now).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedIntegration {
    /// The integration.
    pub integration: IntegrationBody,
    /// Configure this at the provider (GitHub/Jira webhook secret, Graph `clientState`, Google
    /// channel token). Not retrievable later.
    pub webhook_secret: String,
}

fn parse_config(field: &str, v: Option<Value>) -> Result<Value, ApiError> {
    match v {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) if v.to_string().len() <= 16 * 1024 => Ok(v),
        Some(Value::Object(_)) => Err(ApiError::invalid_field(field.into(), "larger than 16 KiB")),
        Some(_) => Err(ApiError::invalid_field(field.into(), "must be an object")),
    }
}

fn parse_mappings(v: Value) -> Result<Mappings, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::invalid_field("mappings".into(), e.to_string()))
}

fn parse_secret(s: &str) -> Result<String, ApiError> {
    if s.len() < 16 || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field(
            "webhook_secret".into(),
            "16-256 visible ASCII characters",
        ));
    }
    Ok(s.to_owned())
}

fn parse_api_token(s: &str) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > 1024 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field("api_token".into(), "1-1024 visible ASCII characters"));
    }
    Ok(s.to_owned())
}

fn random_secret() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Connects a project to a provider.
#[utoipa::path(post, path = "/projects/{project_id}/integrations", tag = "integrations", operation_id = "create_integration",
    params(("project_id" = Uuid, Path, description = "Project id")),
    request_body = CreateIntegrationBody,
    responses(
        (status = 201, description = "The integration and its webhook secret", body = CreatedIntegration),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to manage integrations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project, or integrations are not enabled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_integration(
    State(s): State<AppState>,
    who: Authenticated,
    Path(project_id): Path<Uuid>,
    Json(b): Json<CreateIntegrationBody>,
) -> Result<Response, ApiError> {
    let ints = integrations(&s)?;
    let project = s.pm.get_project(&who.origin(), ProjectId(project_id)).await?;
    require_manage(&s, &who, project.org_id, Some(project.id), None).await?;
    let key = ProviderKey::parse(&b.provider)?;
    let provider = ints.registry.get(&key).ok_or_else(|| {
        ApiError::invalid_field("provider".into(), format!("unknown provider {key}"))
    })?;
    let name = parse_name("name", &b.name)?;
    let config = parse_config("config", b.config)?;
    crate::chat::check_config(key.as_str(), &config)?;
    let mappings = match b.mappings {
        Some(m) => parse_mappings(m)?,
        None => provider.default_mappings(),
    };
    let secret = match (&b.webhook_secret, key.as_str()) {
        (Some(s), _) => parse_secret(s)?,
        (None, "slack") => {
            return Err(ApiError::invalid_field(
                "webhook_secret".into(),
                "Slack's signing secret is required (from the Slack app's Basic Information)",
            ));
        }
        (None, _) => random_secret(),
    };
    let api_token = b.api_token.as_deref().map(parse_api_token).transpose()?;
    let keyring = ints.keyring()?;
    let at = now(ints);
    let integration = Integration {
        id: IntegrationId::new(),
        org_id: project.org_id,
        project_id: project.id,
        provider: key,
        name,
        config,
        mappings,
        enabled: true,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    ints.stores.integrations.create_integration(&integration).await?;
    let sealed =
        keyring.seal(secret.as_bytes(), &CredentialKind::WebhookSecret.context(integration.id));
    if let Err(e) = ints
        .stores
        .credentials
        .put_credential(integration.id, CredentialKind::WebhookSecret, &sealed, None, at)
        .await
    {
        // No half-made integration without its secret.
        let _ = ints.stores.integrations.delete_integration(integration.id).await;
        return Err(e.into());
    }
    if let Some(token) = &api_token {
        let sealed =
            keyring.seal(token.as_bytes(), &CredentialKind::ApiToken.context(integration.id));
        if let Err(e) = ints
            .stores
            .credentials
            .put_credential(integration.id, CredentialKind::ApiToken, &sealed, None, at)
            .await
        {
            let _ = ints.stores.integrations.delete_integration(integration.id).await;
            return Err(e.into());
        }
    }
    let body = CreatedIntegration { integration: integration.into(), webhook_secret: secret };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Lists an organization's integrations.
#[utoipa::path(get, path = "/orgs/{org_id}/integrations", tag = "integrations", operation_id = "list_integrations",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "Integrations, oldest first", body = Vec<IntegrationBody>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to manage integrations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Integrations are not enabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_integrations(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<Vec<IntegrationBody>>, ApiError> {
    let ints = integrations(&s)?;
    require_manage(&s, &who, OrgId(org_id), None, None).await?;
    let list = ints.stores.integrations.list_integrations(OrgId(org_id)).await?;
    let mut bodies = Vec::with_capacity(list.len());
    for i in list {
        bodies.push(with_connection(ints, i).await?);
    }
    Ok(Json(bodies))
}

async fn load_integration(
    s: &AppState,
    who: &Authenticated,
    id: Uuid,
) -> Result<Integration, ApiError> {
    let ints = integrations(s)?;
    let i = ints.stores.integrations.get_integration(IntegrationId(id)).await?;
    require_manage(s, who, i.org_id, Some(i.project_id), Some("integration")).await?;
    Ok(i)
}

/// Reads an integration.
#[utoipa::path(get, path = "/integrations/{integration_id}", tag = "integrations", operation_id = "get_integration",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "The integration", body = IntegrationBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_integration(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let version = i.version;
    Ok(with_etag(StatusCode::OK, version, with_connection(integrations(&s)?, i).await?))
}

/// Changes to an integration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegrationBody {
    /// The version read.
    pub version: i64,
    /// New name.
    pub name: Option<String>,
    /// New settings (an object).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// New mappings.
    #[schema(value_type = Option<Object>)]
    pub mappings: Option<Value>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Changes an integration (at the version read).
#[utoipa::path(patch, path = "/integrations/{integration_id}", tag = "integrations", operation_id = "update_integration",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    request_body = UpdateIntegrationBody,
    responses(
        (status = 200, description = "The integration", body = IntegrationBody),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_integration(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateIntegrationBody>,
) -> Result<Response, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let config = match b.config {
        Some(c) => {
            let c = parse_config("config", Some(c))?;
            crate::chat::check_config(i.provider.as_str(), &c)?;
            Some(crate::chat::keep_server_state(&i.config, c))
        }
        None => None,
    };
    let patch = IntegrationPatch {
        name: b.name.as_deref().map(|n| parse_name("name", n)).transpose()?,
        config,
        mappings: b.mappings.map(parse_mappings).transpose()?,
        enabled: b.enabled,
    };
    let i = ints.stores.integrations.update_integration(i.id, b.version, &patch, now(ints)).await?;
    let version = i.version;
    Ok(with_etag(StatusCode::OK, version, with_connection(ints, i).await?))
}

/// Deletes an integration with its credentials, mappings and queued deliveries.
#[utoipa::path(delete, path = "/integrations/{integration_id}", tag = "integrations", operation_id = "delete_integration",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_integration(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    integrations(&s)?.stores.integrations.delete_integration(i.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Paging of logs and delivery lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1-100 (default 25).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    fn parse(&self) -> Result<(u32, Option<Uuid>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        check_limit(limit)?;
        let before = match self.cursor.as_deref() {
            None => None,
            Some(c) => Some(Uuid::parse_str(c).map_err(|_| {
                ApiError::invalid_field("cursor".into(), "not a cursor returned by this API")
            })?),
        };
        Ok((limit, before))
    }
}

fn page<T, B: Serialize>(p: Page<T>, f: impl Fn(T) -> B, uri: &Uri) -> Response {
    page_response(
        pm_core::query::Page {
            items: p.items.into_iter().map(f).collect::<Vec<_>>(),
            next_cursor: p.next.map(|u| u.to_string()),
        },
        uri,
    )
}

/// One logged exchange (secrets redacted).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogBody {
    /// Id.
    pub id: Uuid,
    /// Integration, if any.
    pub integration_id: Option<Uuid>,
    /// Provider key (`webhooks` for outbound subscriptions).
    pub provider: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// What happened, e.g. `webhook.rejected`.
    pub operation: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Details.
    #[schema(value_type = Object)]
    pub detail: Value,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

impl From<LogEntry> for LogBody {
    fn from(e: LogEntry) -> Self {
        Self {
            id: e.id.0,
            integration_id: e.integration_id.map(|i| i.0),
            provider: e.provider,
            direction: e.direction.as_str().to_owned(),
            operation: e.operation,
            ok: e.ok,
            detail: e.detail.as_value().clone(),
            at: e.at,
        }
    }
}

/// Lists an integration's exchange log, newest first.
#[utoipa::path(get, path = "/integrations/{integration_id}/logs", tag = "integrations", operation_id = "list_integration_logs",
    params(("integration_id" = Uuid, Path, description = "Integration id"), PageQuery),
    responses(
        (status = 200, description = "A page of log entries", body = PageBody<LogBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_integration_logs(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (limit, before) = q.parse()?;
    let i = load_integration(&s, &who, id).await?;
    let p = integrations(&s)?.stores.logs.list_logs(Some(i.id), limit, before.map(LogId)).await?;
    Ok(page(p, LogBody::from, &uri))
}

// --- OAuth ---------------------------------------------------------------------------------------

/// An integration's OAuth connection (tokens themselves are never shown).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthConnectionBody {
    /// `active`, or `needs_reconnect` once the provider refused the refresh token (connect
    /// again).
    pub status: String,
    /// Why it needs a reconnect.
    pub reason: Option<String>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// When the current access token expires (it is refreshed before that).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Whether a refresh token is held.
    pub refreshable: bool,
    /// Who connected it.
    pub connected_by: Uuid,
    /// Last connected or refreshed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<OAuthToken> for OAuthConnectionBody {
    fn from(t: OAuthToken) -> Self {
        Self {
            status: t.status.as_str().to_owned(),
            reason: t.status_reason,
            scopes: t.scopes,
            expires_at: t.expires_at,
            refreshable: t.refresh.is_some(),
            connected_by: t.connected_by.0,
            updated_at: t.updated_at,
        }
    }
}

async fn with_connection(ints: &Integrations, i: Integration) -> Result<IntegrationBody, ApiError> {
    let conn = ints.stores.oauth.get_oauth_token(i.id).await?;
    let mut body = IntegrationBody::from(i);
    body.oauth = conn.map(Into::into);
    Ok(body)
}

/// Where to send the user to authorize the connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthConnectBody {
    /// The provider's authorization URL (with `state` and a PKCE `code_challenge`).
    pub authorization_url: String,
    /// The authorization must come back before this.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

/// Starts connecting an integration with OAuth 2 (authorization code + PKCE): returns the URL
/// to send the user to. The provider redirects back to `GET /oauth/callback` within 10 minutes.
#[utoipa::path(post, path = "/integrations/{integration_id}/oauth/connect", tag = "integrations", operation_id = "oauth_connect",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "The authorization URL", body = OAuthConnectBody),
        (status = 400, description = "No OAuth client is configured for the provider (`provider`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "OAuth is not configured on this server", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn oauth_connect(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<OAuthConnectBody>, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let a = integrations(&s)?.oauth()?.begin(&i, who.user_id).await?;
    Ok(Json(OAuthConnectBody { authorization_url: a.url, expires_at: a.expires_at }))
}

/// The provider's redirect back to us.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OAuthCallbackQuery {
    /// The state from `connect` (single use, 10 minutes).
    pub state: Option<String>,
    /// The authorization code, on success.
    pub code: Option<String>,
    /// The provider's refusal (`access_denied`, ...), instead of a code.
    pub error: Option<String>,
    /// The provider's words about the refusal.
    pub error_description: Option<String>,
}

/// A completed connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthCallbackBody {
    /// The integration now connected.
    pub integration_id: Uuid,
    /// Its provider.
    pub provider: String,
    /// The connection.
    pub connection: OAuthConnectionBody,
}

/// Completes an OAuth connection: the provider redirects the user's browser here with `state`
/// and `code` (or `error`). Authenticated by the single-use `state` (bound to the user and
/// integration that started it), not by a token.
#[utoipa::path(get, path = "/oauth/callback", tag = "integrations", operation_id = "oauth_callback",
    params(OAuthCallbackQuery),
    responses(
        (status = 200, description = "Connected; tokens stored encrypted", body = OAuthCallbackBody),
        (status = 400, description = "`state` missing, unknown, used or expired; `code` missing or refused; `error` from the provider", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Integrations are not enabled, or the integration is gone", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider's token endpoint failed; nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "OAuth is not configured on this server", body = Problem, content_type = "application/problem+json"),
    ))]
async fn oauth_callback(
    State(s): State<AppState>,
    Query(q): Query<OAuthCallbackQuery>,
) -> Result<Json<OAuthCallbackBody>, ApiError> {
    let oauth = integrations(&s)?.oauth()?;
    let (i, tok) = oauth
        .complete(pm_integrations::oauth::Callback {
            state: q.state.as_deref(),
            code: q.code.as_deref(),
            error: q.error.as_deref(),
            error_description: q.error_description.as_deref(),
        })
        .await?;
    Ok(Json(OAuthCallbackBody {
        integration_id: i.id.0,
        provider: i.provider.to_string(),
        connection: tok.into(),
    }))
}

/// What disconnecting did at the provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthDisconnectBody {
    /// `revoked`, `not_supported` (the provider has no revocation endpoint) or `failed` (the
    /// tokens were deleted here anyway; see the integration log).
    pub revocation: String,
    /// Why revocation failed.
    pub error: Option<String>,
}

/// Disconnects an integration's OAuth connection: revokes the token at the provider (RFC 7009)
/// when it has a revocation endpoint, then deletes the tokens — also when revocation fails.
#[utoipa::path(delete, path = "/integrations/{integration_id}/oauth", tag = "integrations", operation_id = "oauth_disconnect",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "Disconnected", body = OAuthDisconnectBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration, or it is not connected", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "OAuth is not configured on this server", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn oauth_disconnect(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<OAuthDisconnectBody>, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    use pm_integrations::oauth::Revocation;
    let body = match integrations(&s)?.oauth()?.disconnect(&i).await? {
        Revocation::Revoked => OAuthDisconnectBody { revocation: "revoked".into(), error: None },
        Revocation::NotSupported => {
            OAuthDisconnectBody { revocation: "not_supported".into(), error: None }
        }
        Revocation::Failed(e) => {
            OAuthDisconnectBody { revocation: "failed".into(), error: Some(e) }
        }
    };
    Ok(Json(body))
}

// --- outbound subscriptions ----------------------------------------------------------------------

/// An outbound webhook subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionBody {
    /// Id.
    pub id: Uuid,
    /// Organization whose events are sent.
    pub org_id: Uuid,
    /// Only this project's events, when set.
    pub project_id: Option<Uuid>,
    /// Target URL.
    pub url: String,
    /// Event patterns (`*`, `task.*`, `comment.created`, ...).
    pub events: Vec<String>,
    /// Description.
    pub description: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled automatically.
    pub disabled_reason: Option<String>,
    /// Failed attempts in a row.
    pub consecutive_failures: i32,
    /// Version.
    pub version: i64,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<Subscription> for SubscriptionBody {
    fn from(s: Subscription) -> Self {
        Self {
            id: s.id.0,
            org_id: s.org_id.0,
            project_id: s.project_id.map(|p| p.0),
            url: s.url,
            events: s.events.patterns().to_vec(),
            description: s.description,
            enabled: s.enabled,
            disabled_reason: s.disabled_reason,
            consecutive_failures: s.consecutive_failures,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscriptionBody {
    /// Target URL (http/https; private, loopback and link-local addresses are refused unless
    /// allow-listed by the operator).
    pub url: String,
    /// Event patterns: `*`, an event kind (`task.created`) or `entity.*`.
    pub events: Vec<String>,
    /// Only this project's events.
    pub project_id: Option<Uuid>,
    /// Description.
    pub description: Option<String>,
}

/// A subscription with its signing secret (shown only now).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionWithSecret {
    /// The subscription.
    pub subscription: SubscriptionBody,
    /// The Standard Webhooks secret (`whsec_…`) to verify `webhook-signature` with.
    pub secret: String,
}

async fn check_target(ints: &Integrations, raw: &str) -> Result<String, ApiError> {
    if raw.len() > 2048 {
        return Err(ApiError::invalid_field("url".into(), "longer than 2048 characters"));
    }
    let url = ints.targets.parse_url("url", raw)?;
    ints.targets
        .resolve(&url)
        .await
        .map_err(|e| ApiError::invalid_field("url".into(), e.to_string()))?;
    Ok(url.to_string())
}

fn parse_description(d: Option<String>) -> Result<String, ApiError> {
    let d = d.unwrap_or_default();
    if d.chars().count() > 500 {
        return Err(ApiError::invalid_field("description".into(), "at most 500 characters"));
    }
    Ok(d)
}

/// Subscribes a URL to an organization's events.
#[utoipa::path(post, path = "/orgs/{org_id}/webhooks", tag = "integrations", operation_id = "create_webhook_subscription",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    request_body = CreateSubscriptionBody,
    responses(
        (status = 201, description = "The subscription and its secret", body = SubscriptionWithSecret),
        (status = 400, description = "Invalid body (the field is named; refused targets name `url`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to manage integrations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Integrations are not enabled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn create_subscription(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
    Json(b): Json<CreateSubscriptionBody>,
) -> Result<Response, ApiError> {
    let ints = integrations(&s)?;
    let org = OrgId(org_id);
    let project = b.project_id.map(ProjectId);
    require_manage(&s, &who, org, project, None).await?;
    if let Some(p) = project {
        let p = s.pm.get_project(&who.origin(), p).await?;
        if p.org_id != org {
            return Err(ApiError::invalid_field(
                "project_id".into(),
                "not a project of this organization",
            ));
        }
    }
    let events = EventFilter::parse(b.events)?;
    let description = parse_description(b.description)?;
    let url = check_target(ints, &b.url).await?;
    let keyring = ints.keyring()?;
    let secret = WebhookSecret::generate();
    let id = SubscriptionId::new();
    let at = now(ints);
    let sub = Subscription {
        id,
        org_id: org,
        project_id: project,
        url,
        events,
        description,
        secrets: seal_secrets(keyring, id, std::slice::from_ref(&secret)),
        enabled: true,
        disabled_reason: None,
        consecutive_failures: 0,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    ints.stores.webhooks.create_subscription(&sub).await?;
    let body = SubscriptionWithSecret { subscription: sub.into(), secret: secret.expose() };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Lists an organization's subscriptions.
#[utoipa::path(get, path = "/orgs/{org_id}/webhooks", tag = "integrations", operation_id = "list_webhook_subscriptions",
    params(("org_id" = Uuid, Path, description = "Organization id")),
    responses(
        (status = 200, description = "Subscriptions, oldest first", body = Vec<SubscriptionBody>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to manage integrations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Integrations are not enabled", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_subscriptions(
    State(s): State<AppState>,
    who: Authenticated,
    Path(org_id): Path<Uuid>,
) -> Result<Json<Vec<SubscriptionBody>>, ApiError> {
    let ints = integrations(&s)?;
    require_manage(&s, &who, OrgId(org_id), None, None).await?;
    let list = ints.stores.webhooks.list_subscriptions(OrgId(org_id)).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

async fn load_subscription(
    s: &AppState,
    who: &Authenticated,
    id: Uuid,
) -> Result<Subscription, ApiError> {
    let ints = integrations(s)?;
    let sub = ints.stores.webhooks.get_subscription(SubscriptionId(id)).await?;
    require_manage(s, who, sub.org_id, sub.project_id, Some("subscription")).await?;
    Ok(sub)
}

/// Reads a subscription.
#[utoipa::path(get, path = "/webhooks/{subscription_id}", tag = "integrations", operation_id = "get_webhook_subscription",
    params(("subscription_id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn get_subscription(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let sub = load_subscription(&s, &who, id).await?;
    Ok(with_etag(StatusCode::OK, sub.version, SubscriptionBody::from(sub)))
}

/// Changes to a subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscriptionBody {
    /// The version read.
    pub version: i64,
    /// New URL.
    pub url: Option<String>,
    /// New event patterns.
    pub events: Option<Vec<String>>,
    /// New description.
    pub description: Option<String>,
    /// Enable (also forgives past failures) or disable.
    pub enabled: Option<bool>,
}

/// Changes a subscription (at the version read).
#[utoipa::path(patch, path = "/webhooks/{subscription_id}", tag = "integrations", operation_id = "update_webhook_subscription",
    params(("subscription_id" = Uuid, Path, description = "Subscription id")),
    request_body = UpdateSubscriptionBody,
    responses(
        (status = 200, description = "The subscription", body = SubscriptionBody),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed meanwhile", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn update_subscription(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateSubscriptionBody>,
) -> Result<Response, ApiError> {
    let sub = load_subscription(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let url = match b.url {
        Some(u) => Some(check_target(ints, &u).await?),
        None => None,
    };
    let patch = SubscriptionPatch {
        url,
        events: b.events.map(EventFilter::parse).transpose()?,
        description: b.description.map(|d| parse_description(Some(d))).transpose()?,
        secrets: None,
        enabled: b.enabled,
    };
    let sub =
        ints.stores.webhooks.update_subscription(sub.id, b.version, &patch, now(ints)).await?;
    Ok(with_etag(StatusCode::OK, sub.version, SubscriptionBody::from(sub)))
}

/// Deletes a subscription and its delivery log.
#[utoipa::path(delete, path = "/webhooks/{subscription_id}", tag = "integrations", operation_id = "delete_webhook_subscription",
    params(("subscription_id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_subscription(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let sub = load_subscription(&s, &who, id).await?;
    integrations(&s)?.stores.webhooks.delete_subscription(sub.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts a secret rotation: a new secret signs every delivery from now on, next to the current
/// one (receivers holding either verify); a second rotation drops the oldest.
#[utoipa::path(post, path = "/webhooks/{subscription_id}/rotate-secret", tag = "integrations", operation_id = "rotate_webhook_secret",
    params(("subscription_id" = Uuid, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription and its new secret", body = SubscriptionWithSecret),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed meanwhile; retry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn rotate_subscription_secret(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<SubscriptionWithSecret>, ApiError> {
    let sub = load_subscription(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let keyring = ints.keyring()?;
    let mut secrets = open_secrets(keyring, &sub)?;
    let new = WebhookSecret::generate();
    secrets.truncate(1);
    secrets.insert(0, new.clone());
    let patch = SubscriptionPatch {
        secrets: Some(seal_secrets(keyring, sub.id, &secrets)),
        ..Default::default()
    };
    let sub =
        ints.stores.webhooks.update_subscription(sub.id, sub.version, &patch, now(ints)).await?;
    Ok(Json(SubscriptionWithSecret { subscription: sub.into(), secret: new.expose() }))
}

/// One event sent (or to send) to a subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody {
    /// Id; also the `webhook-id` header (`msg_<id without dashes>`).
    pub id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// Event.
    pub event_id: Uuid,
    /// Event kind.
    pub event_kind: String,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// HTTP status of the last attempt.
    pub last_status: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// Next attempt (pending) or last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub available_at: OffsetDateTime,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<OutboundDelivery> for DeliveryBody {
    fn from(d: OutboundDelivery) -> Self {
        Self {
            id: d.id.0,
            subscription_id: d.subscription_id.0,
            event_id: d.event_id.0,
            event_kind: d.event_kind,
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            available_at: d.available_at,
            created_at: d.created_at,
        }
    }
}

/// Lists a subscription's deliveries, newest first.
#[utoipa::path(get, path = "/webhooks/{subscription_id}/deliveries", tag = "integrations", operation_id = "list_webhook_deliveries",
    params(("subscription_id" = Uuid, Path, description = "Subscription id"), PageQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = PageBody<DeliveryBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_subscription_deliveries(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (limit, before) = q.parse()?;
    let sub = load_subscription(&s, &who, id).await?;
    let p = integrations(&s)?
        .stores
        .webhooks
        .list_outbound(sub.id, limit, before.map(OutboundId))
        .await?;
    Ok(page(p, DeliveryBody::from, &uri))
}

/// Sends a delivery again now (with a fresh retry budget).
#[utoipa::path(post, path = "/webhooks/{subscription_id}/deliveries/{delivery_id}/redeliver", tag = "integrations", operation_id = "redeliver_webhook",
    params(
        ("subscription_id" = Uuid, Path, description = "Subscription id"),
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Queued again", body = DeliveryBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription or delivery", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn redeliver(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let sub = load_subscription(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let d = ints.stores.webhooks.get_outbound(OutboundId(delivery_id)).await?;
    if d.subscription_id != sub.id {
        return Err(ApiError::entity_not_found("delivery"));
    }
    let d = ints.stores.webhooks.redeliver(d.id, now(ints)).await?;
    ints.wake_outbound();
    Ok((StatusCode::ACCEPTED, Json(DeliveryBody::from(d))).into_response())
}

// --- sync: mappings, conflicts, export ---------------------------------------------------------

/// The link between a task and a provider item, with the base of the last sync.
#[derive(Debug, Serialize, ToSchema)]
pub struct MappingBody {
    /// Id.
    pub id: Uuid,
    /// The task.
    pub task_id: Uuid,
    /// The provider's item (`octo/repo#12`, `PROJ-7`).
    pub external_id: String,
    /// The item's web page.
    pub external_url: Option<String>,
    /// Field values both sides agreed on at the last sync.
    #[schema(value_type = Object)]
    pub base: Value,
    /// The provider's change time the base reflects.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub remote_updated_at: Option<OffsetDateTime>,
    /// Version.
    pub version: i64,
    /// Last synced.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<ExternalMapping> for MappingBody {
    fn from(m: ExternalMapping) -> Self {
        Self {
            id: m.id.0,
            task_id: m.task_id.0,
            external_id: m.external_id,
            external_url: m.external_url,
            base: json!(m.base),
            remote_updated_at: m.remote_updated_at,
            version: m.version,
            updated_at: m.updated_at,
        }
    }
}

/// Lists an integration's task ↔ item mappings, newest first.
#[utoipa::path(get, path = "/integrations/{integration_id}/mappings", tag = "integrations", operation_id = "list_integration_mappings",
    params(("integration_id" = Uuid, Path, description = "Integration id"), PageQuery),
    responses(
        (status = 200, description = "A page of mappings", body = PageBody<MappingBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_mappings(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (limit, before) = q.parse()?;
    let i = load_integration(&s, &who, id).await?;
    let p =
        integrations(&s)?.stores.mappings.list_mappings(i.id, limit, before.map(MappingId)).await?;
    Ok(page(p, MappingBody::from, &uri))
}

/// A field both sides changed since the last sync, and what its policy kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictBody {
    /// Id.
    pub id: Uuid,
    /// The mapping.
    pub mapping_id: Uuid,
    /// The task.
    pub task_id: Uuid,
    /// The field (`title`, `description`, `state`, `labels`, `due`).
    pub field: String,
    /// Value at the last sync. (any JSON: a string, a list of label names, `null`…)
    pub base: Value,
    /// Our value. (any JSON: a string, a list of label names, `null`…)
    pub local: Value,
    /// The provider's value. (any JSON: a string, a list of label names, `null`…)
    pub remote: Value,
    /// The value kept. (any JSON: a string, a list of label names, `null`…)
    pub resolved: Value,
    /// `local` or `remote`.
    pub winner: String,
    /// The policy that decided.
    #[schema(value_type = Object)]
    pub policy: Value,
    /// When it was detected.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub detected_at: OffsetDateTime,
    /// When someone settled it (`null` while open).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<OffsetDateTime>,
}

impl From<SyncConflict> for ConflictBody {
    fn from(c: SyncConflict) -> Self {
        Self {
            id: c.id.0,
            mapping_id: c.mapping_id.0,
            task_id: c.task_id.0,
            field: c.field,
            base: c.base,
            local: c.local,
            remote: c.remote,
            resolved: c.resolved,
            winner: json!(c.winner).as_str().unwrap_or_default().to_owned(),
            policy: json!(c.policy),
            detected_at: c.detected_at,
            resolved_at: c.resolved_at,
        }
    }
}

/// Paging and filter of conflicts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// Page size, 1-100 (default 25).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only conflicts nobody settled yet (default `false`: all).
    pub unresolved: Option<bool>,
}

/// Lists the sync conflicts of an integration, newest first.
#[utoipa::path(get, path = "/integrations/{integration_id}/conflicts", tag = "integrations", operation_id = "list_integration_conflicts",
    params(("integration_id" = Uuid, Path, description = "Integration id"), ConflictQuery),
    responses(
        (status = 200, description = "A page of conflicts", body = PageBody<ConflictBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_conflicts(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<ConflictQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let paging = PageQuery { limit: q.limit, cursor: q.cursor.clone() };
    let (limit, before) = paging.parse()?;
    let i = load_integration(&s, &who, id).await?;
    let p = integrations(&s)?
        .stores
        .mappings
        .list_conflicts(i.id, q.unresolved.unwrap_or(false), limit, before.map(ConflictId))
        .await?;
    Ok(page(p, ConflictBody::from, &uri))
}

/// A push the sync gave up on after its retries (or at once, for an error retrying cannot
/// fix): the event, how often it was tried and the last error. The next change of the task
/// syncs it again; `POST …/retry` re-queues it now, `DELETE` dismisses it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncFailureBody {
    /// Id.
    pub id: Uuid,
    /// The task, if the event concerned one.
    pub task_id: Option<Uuid>,
    /// The pm event that was being pushed.
    pub event_id: Uuid,
    /// Its position in the event log.
    pub event_seq: i64,
    /// Its kind (`task.updated`, `comment.created`, …).
    pub event_kind: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// When the sync gave up.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub failed_at: OffsetDateTime,
}

impl From<SyncFailure> for SyncFailureBody {
    fn from(f: SyncFailure) -> Self {
        Self {
            id: f.id.0,
            task_id: f.task_id.map(|t| t.0),
            event_id: f.event_id.0,
            event_seq: f.event_seq,
            event_kind: f.event_kind,
            attempts: f.attempts,
            error: f.error,
            failed_at: f.failed_at,
        }
    }
}

/// Lists the pushes the sync of an integration gave up on, newest first.
#[utoipa::path(get, path = "/integrations/{integration_id}/sync-failures", tag = "integrations", operation_id = "list_integration_sync_failures",
    params(("integration_id" = Uuid, Path, description = "Integration id"), PageQuery),
    responses(
        (status = 200, description = "A page of push failures", body = PageBody<SyncFailureBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_sync_failures(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (limit, before) = q.parse()?;
    let i = load_integration(&s, &who, id).await?;
    let p = integrations(&s)?
        .stores
        .sync_state
        .list_sync_failures(i.id, limit, before.map(SyncFailureId))
        .await?;
    Ok(page(p, SyncFailureBody::from, &uri))
}

/// A push waiting in the sync's retry queue: it failed with an error that may pass (the
/// provider down or rate limiting, a timeout) or waits behind such a push of the same task.
/// After its retries it becomes a sync failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedPushBody {
    /// Id.
    pub id: Uuid,
    /// The task.
    pub task_id: Uuid,
    /// The pm event to push.
    pub event_id: Uuid,
    /// Its position in the event log.
    pub event_seq: i64,
    /// Its kind.
    pub event_kind: String,
    /// Attempts made since it was (re-)queued (0: queued behind an earlier push of the task,
    /// or re-queued by hand).
    pub attempts: i32,
    /// The last attempt's error (the provider's status and the request's method and path;
    /// never a credential), if any.
    pub last_error: Option<String>,
    /// When it is attempted next (pushes of one task go oldest event first; while an attempt
    /// runs, when that attempt's lease ends).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: OffsetDateTime,
    /// When it entered the queue.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub parked_at: OffsetDateTime,
}

impl From<ParkedPush> for ParkedPushBody {
    fn from(p: ParkedPush) -> Self {
        Self {
            id: p.id.0,
            task_id: p.task_id.0,
            event_id: p.event.id.0,
            event_seq: p.event.seq,
            event_kind: p.event.kind.as_str().to_owned(),
            attempts: p.attempts,
            last_error: p.last_error,
            next_attempt_at: p.next_attempt_at,
            parked_at: p.parked_at,
        }
    }
}

/// Lists the pushes of an integration waiting in the sync's retry queue, oldest parked first
/// (the head of the queue). Empty when the provider takes every push.
#[utoipa::path(get, path = "/integrations/{integration_id}/parked-pushes", tag = "integrations", operation_id = "list_integration_parked_pushes",
    params(("integration_id" = Uuid, Path, description = "Integration id"), PageQuery),
    responses(
        (status = 200, description = "A page of parked pushes", body = PageBody<ParkedPushBody>),
        (status = 400, description = "Bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_parked_pushes(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Result<Response, ApiError> {
    // This list runs oldest first: the cursor is the last row seen, rows after it follow.
    let (limit, after) = q.parse()?;
    let i = load_integration(&s, &who, id).await?;
    let p = integrations(&s)?
        .stores
        .sync_state
        .list_parked_pushes(i.id, limit, after.map(ParkedPushId))
        .await?;
    Ok(page(p, ParkedPushBody::from, &uri))
}

/// Retries a push the sync gave up on: the failure leaves the list and its event goes back
/// into the retry queue, due now (after any earlier parked push of the same task). Its
/// outcome shows in the logs, or as a new failure.
#[utoipa::path(post, path = "/integrations/{integration_id}/sync-failures/{failure_id}/retry", tag = "integrations", operation_id = "retry_integration_sync_failure",
    params(
        ("integration_id" = Uuid, Path, description = "Integration id"),
        ("failure_id" = Uuid, Path, description = "Sync failure id"),
    ),
    responses(
        (status = 202, description = "Queued for a new attempt", body = ParkedPushBody),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration or sync failure (or its event is no longer in the log)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The sync is not running on this server", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn retry_sync_failure(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, failure_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let parked =
        integrations(&s)?.sync_engine()?.requeue_failure(&i, SyncFailureId(failure_id)).await?;
    Ok((StatusCode::ACCEPTED, Json(ParkedPushBody::from(parked))).into_response())
}

/// Dismisses a push the sync gave up on: it leaves the list; nothing is pushed.
#[utoipa::path(delete, path = "/integrations/{integration_id}/sync-failures/{failure_id}", tag = "integrations", operation_id = "dismiss_integration_sync_failure",
    params(
        ("integration_id" = Uuid, Path, description = "Integration id"),
        ("failure_id" = Uuid, Path, description = "Sync failure id"),
    ),
    responses(
        (status = 204, description = "Dismissed"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration or sync failure", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn dismiss_sync_failure(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, failure_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let stores = &integrations(&s)?.stores;
    let f = stores.sync_state.get_sync_failure(SyncFailureId(failure_id)).await?;
    // Another integration's failure is as unknown as a missing one.
    if f.integration_id != i.id || !stores.sync_state.delete_sync_failure(f.id).await? {
        return Err(ApiError::entity_not_found("sync failure"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// How to settle a conflict.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveConflictBody {
    /// `local` (our value at the time), `remote` (the provider's), or `value` (the given
    /// `value`).
    pub choice: String,
    /// The value to keep, with `choice: value` (same shape as the field: a string, a list of
    /// label names, a `YYYY-MM-DD` date or `null`).
    pub value: Option<Value>,
}

/// Settles a conflict: the chosen value is written on the task and pushed to the provider,
/// becomes the sync base, and the conflict is marked resolved.
#[utoipa::path(post, path = "/integrations/{integration_id}/conflicts/{conflict_id}/resolve", tag = "integrations", operation_id = "resolve_integration_conflict",
    params(
        ("integration_id" = Uuid, Path, description = "Integration id"),
        ("conflict_id" = Uuid, Path, description = "Conflict id"),
    ),
    request_body = ResolveConflictBody,
    responses(
        (status = 200, description = "The settled conflict", body = ConflictBody),
        (status = 400, description = "Invalid choice or value", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration or conflict", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already resolved", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused the change", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn resolve_conflict(
    State(s): State<AppState>,
    who: Authenticated,
    Path((id, conflict_id)): Path<(Uuid, Uuid)>,
    Json(b): Json<ResolveConflictBody>,
) -> Result<Json<ConflictBody>, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let c = ints.stores.mappings.get_conflict(ConflictId(conflict_id)).await?;
    if c.integration_id != i.id {
        return Err(ApiError::entity_not_found("conflict"));
    }
    if c.resolved_at.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "Already resolved",
            "this conflict was resolved already",
        ));
    }
    let value = match (b.choice.as_str(), b.value) {
        ("local", None) => c.local.clone(),
        ("remote", None) => c.remote.clone(),
        ("value", Some(v)) => v,
        ("value", None) => {
            return Err(ApiError::invalid_field("value".into(), "is required with choice value"));
        }
        ("local" | "remote", Some(_)) => {
            return Err(ApiError::invalid_field(
                "value".into(),
                "is only allowed with choice value",
            ));
        }
        _ => {
            return Err(ApiError::invalid_field(
                "choice".into(),
                "must be one of local, remote, value",
            ));
        }
    };
    let resolved = ints.sync_engine()?.resolve(&i, &c, value).await?;
    Ok(Json(resolved.into()))
}

/// What an export did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportBody {
    /// Items created at the provider.
    pub created: u64,
    /// Tasks already mapped (synced, or nothing to do).
    pub synced: u64,
}

/// Exports every task of the integration's project to the provider (Jira project export):
/// unmapped tasks are created there and mapped, mapped ones synced. Idempotent: running it
/// again creates nothing new.
#[utoipa::path(post, path = "/integrations/{integration_id}/export", tag = "integrations", operation_id = "export_integration",
    params(("integration_id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "What was created and synced", body = ExportBody),
        (status = 400, description = "The integration cannot push (configuration)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider failed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn export_integration(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<ExportBody>, ApiError> {
    let i = load_integration(&s, &who, id).await?;
    let ints = integrations(&s)?;
    let provider =
        ints.registry.get(&i.provider).ok_or_else(|| ApiError::entity_not_found("provider"))?;
    if !provider.info().capabilities.contains(&pm_integrations::provider::Capability::Push) {
        return Err(ApiError::invalid_field(
            "provider".into(),
            format!("{} items cannot be exported to", i.provider),
        ));
    }
    let (created, synced) = ints.sync_engine()?.export(&i).await?;
    Ok(Json(ExportBody { created, synced }))
}

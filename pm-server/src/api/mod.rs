//! The REST API, `/api/v1`: one module per resource, each exposing
//! `router() -> OpenApiRouter<AppState>` built with `routes!`, so the OpenAPI document is generated
//! from the same handlers the router serves and cannot drift from it.
//!
//! The document is served at `/api/v1/openapi.json` and rendered by Swagger UI at `/docs`.

use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;

pub mod activity;
pub mod auth;
pub mod authz;
pub mod comments;
pub mod common;
pub mod integrations;
pub mod integrations_chat;
pub mod notifications;
pub mod orgs;
pub mod projects;
pub mod push;
pub mod realtime;
pub mod schemas;
pub mod sync;
pub mod task_links;
pub mod task_templates;
pub mod tasks;
pub mod workflows;
pub mod worklog;

/// Top-level document metadata; paths come from the resource routers.
#[derive(OpenApi)]
#[openapi(
    info(title = "pm API", version = "1", description = "Project management: organizations, projects, tasks and everything around them. Errors are RFC 9457 problem+json."),
    modifiers(&BearerAuth),
    components(schemas(common::Problem)),
    tags(
        (name = "auth", description = "Registration, login, tokens"),
        (name = "orgs", description = "Organizations and members"),
        (name = "projects", description = "Projects, workflow states, labels, milestones, custom fields"),
        (name = "tasks", description = "Tasks, subtasks, transitions, bulk updates"),
        (name = "task-links", description = "Relations and watchers"),
        (name = "comments", description = "Comments on tasks"),
        (name = "worklog", description = "Time entries, attachments, check-ins"),
        (name = "activity", description = "Activity feeds from the event log"),
        (name = "authz", description = "Roles, assignments, effective permissions, check/explain, audit log"),
        (name = "realtime", description = "The realtime WebSocket (protocol: docs/realtime-protocol.md)"),
        (name = "notifications", description = "The caller's notifications"),
        (name = "integrations", description = "Provider integrations, inbound webhooks, outbound webhook subscriptions"),
        (name = "workflows", description = "Automation: workflows, executions, approvals, task templates, webhooks"),
        (name = "push", description = "Web Push: the VAPID key and the caller's push subscriptions"),
        (name = "sync", description = "Offline sync for the PWA: op batches and the delta feed (protocol: docs/sync-protocol.md)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // The workflow webhook endpoint is authenticated by the workflow's secret, not a user.
        components.add_security_scheme(
            "workflow_webhook_secret",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::new("X-PM-Webhook-Secret"),
            )),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or personal API token")
                    .build(),
            ),
        );
        // Inbound provider webhooks carry no bearer token: they are authenticated by the
        // provider's signature over the raw body (GitHub's header shown; Jira, Slack, Graph and
        // Google use their own, see the operation).
        components.add_security_scheme(
            "webhook_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Hub-Signature-256",
                "The provider's signature of the raw body: GitHub `X-Hub-Signature-256`, Jira \
                 `X-Hub-Signature`, Slack `X-Slack-Signature` + `X-Slack-Request-Timestamp`, \
                 Microsoft Graph `clientState` in the body, Google `X-Goog-Channel-Token`",
            ))),
        );
    }
}

/// Adds the responses every operation can give because of cross-cutting middleware: 429 from the
/// rate limiter, 503 from the request timeout, and on POST the `Idempotency-Key` outcomes (409 in
/// progress, 422 key reused with another body).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.put, false),
                (&mut item.patch, false),
                (&mut item.delete, false),
                (&mut item.post, true),
            ];
            for (op, is_post) in ops {
                let Some(op) = op.as_mut() else { continue };
                let r = &mut op.responses.responses;
                r.entry("429".into())
                    .or_insert_with(|| problem("Rate limit exceeded; see `Retry-After`").into());
                r.entry("503".into()).or_insert_with(|| problem("The request timed out").into());
                if is_post {
                    r.entry("409".into()).or_insert_with(|| {
                        problem("A request with this `Idempotency-Key` is still in progress").into()
                    });
                    r.entry("422".into()).or_insert_with(|| {
                        problem("The `Idempotency-Key` was used with a different body").into()
                    });
                }
            }
        }
    }
}

/// Every `/api/v1` operation, with its OpenAPI description.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .merge(auth::router())
        .merge(orgs::router())
        .merge(projects::router())
        .merge(tasks::router())
        .merge(task_links::router())
        .merge(comments::router())
        .merge(worklog::router())
        .merge(activity::router())
        .merge(authz::router())
        .merge(realtime::router())
        .merge(notifications::router())
        .merge(integrations::router())
        .merge(workflows::router())
        .merge(task_templates::router())
        .merge(schemas::router())
        .merge(sync::router())
        .merge(push::router())
        .merge(crate::collab::router());
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", v1);
    // After the paths exist: the modifier walks every operation.
    CommonResponses.modify(router.get_openapi_mut());
    router
}

/// The OpenAPI document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi_router().into_openapi()
}

/// The API routes plus `/api/v1/openapi.json` and the `/docs` UI.
pub fn router(_state: AppState) -> Router<AppState> {
    let (router, doc) = openapi_router().split_for_parts();
    let json = doc.to_json().unwrap_or_else(|_| "{}".to_owned());
    let json: &'static str = Box::leak(json.into_boxed_str());
    router
        .route(
            "/api/v1/openapi.json",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], json) }),
        )
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi-ui.json", doc))
}

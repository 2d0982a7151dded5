//! In-process tests of routes, fallbacks, middleware and extractors via `oneshot`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use pm_server::app;
use pm_server::error::ApiError;
use pm_server::extract::Json;
use serde_json::{Value, json};

use crate::readiness::{Ping, with_admin};
use crate::{get, send, sqlite_state};

#[tokio::test]
async fn healthz_is_ok() {
    let (_db, state) = sqlite_state().await;
    let r = get(&state, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({ "status": "ok" }));
    assert!(r.content_type().starts_with("application/json"));
}

#[tokio::test]
async fn readyz_reports_the_backend() {
    let (_db, state) = sqlite_state().await;
    let r = get(&state, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({ "status": "ready", "backend": "sqlite" }));
}

#[tokio::test]
async fn unknown_route_is_a_problem() {
    let (_db, state) = sqlite_state().await;
    let r = get(&state, "/no/such/thing").await;
    let body = r.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "/problems/not-found");
}

#[tokio::test]
async fn wrong_method_is_a_problem_with_allow() {
    let (_db, state) = sqlite_state().await;
    let r = send(app(state), Request::post("/healthz").body(Body::empty()).unwrap()).await;
    r.assert_problem(StatusCode::METHOD_NOT_ALLOWED);
    let allow = r.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(allow.contains("GET"), "allow: {allow:?}");
}

#[tokio::test]
async fn request_id_is_generated_and_propagated() {
    let (_db, state) = sqlite_state().await;
    let r = get(&state, "/healthz").await;
    let generated = r.headers.get("x-request-id").expect("generated x-request-id");
    assert_eq!(generated.len(), 36, "a UUID: {generated:?}");

    let req = Request::get("/nope")
        .header("x-request-id", "client-chosen-42")
        .body(Body::empty())
        .unwrap();
    let r = send(app(state), req).await;
    assert_eq!(r.headers["x-request-id"], "client-chosen-42");
}

#[tokio::test]
async fn slow_requests_time_out_as_problems() {
    let (_db, state) = sqlite_state().await;
    let mut state = with_admin(state, Ping::Hang);
    state.timeouts.readiness = Duration::from_secs(60);
    state.timeouts.request = Duration::from_millis(100);
    let r = get(&state, "/readyz").await;
    assert_eq!(r.assert_problem(StatusCode::SERVICE_UNAVAILABLE)["type"], "/problems/timeout");
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn extractor_rejections_are_problems() {
    async fn echo(Json(v): Json<Value>) -> Result<Json<Value>, ApiError> {
        Ok(Json(v))
    }
    let router = || Router::new().route("/echo", post(echo));

    let ok = Request::post("/echo")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"a":1}"#))
        .unwrap();
    assert_eq!(send(router(), ok).await.body, json!({ "a": 1 }));

    let broken = Request::post("/echo")
        .header("content-type", "application/json")
        .body(Body::from("{"))
        .unwrap();
    send(router(), broken).await.assert_problem(StatusCode::BAD_REQUEST);

    let untyped = Request::post("/echo").body(Body::from("{}")).unwrap();
    send(router(), untyped).await.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn domain_errors_are_problems() {
    async fn fail() -> Result<Json<Value>, ApiError> {
        Err(pm_core::Error::invalid("title", "must not be empty").into())
    }
    async fn broken() -> Result<Json<Value>, ApiError> {
        Err(pm_core::Error::storage(std::io::Error::other("password=hunter2 rejected")).into())
    }
    let router = || Router::new().route("/fail", post(fail)).route("/broken", post(broken));

    let r = send(router(), Request::post("/fail").body(Body::empty()).unwrap()).await;
    let body = r.assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "title");
    assert!(body["detail"].as_str().unwrap().contains("title"));

    let r = send(router(), Request::post("/broken").body(Body::empty()).unwrap()).await;
    let body = r.assert_problem(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.to_string().contains("hunter2"), "leaked: {body}");
}

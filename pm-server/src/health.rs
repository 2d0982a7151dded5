//! Probes: `GET /healthz` (liveness: the process answers HTTP) and `GET /readyz` (readiness: the
//! database answers within [`Timeouts::readiness`](crate::Timeouts::readiness)).
//!
//! Liveness never touches the database, so an orchestrator does not restart a healthy process
//! because its database blipped; readiness does, so traffic is held back until it answers.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Json;

/// The probe routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let admin = &state.stores.admin;
    let limit = state.timeouts.readiness;
    match tokio::time::timeout(limit, admin.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready", "backend": admin.backend() }))),
        Ok(Err(err)) => Err(ApiError::unavailable("the database is not reachable", err)
            .with("backend", admin.backend())),
        Err(elapsed) => Err(ApiError::unavailable(
            format!("the database did not answer within {} s", limit.as_secs_f64()),
            elapsed,
        )
        .with("backend", admin.backend())),
    }
}

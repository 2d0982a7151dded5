//! `GET /api/v1/schemas/{name}`: the JSON Schemas (draft 2020-12) of the documents the API takes
//! beyond its OpenAPI types — workflow definitions and task templates — so that editors and CI
//! can validate files against the very server they target (a document's `"$schema"` may point
//! here). Public, like `/api/v1/openapi.json`: a schema describes a format, not anyone's data.
//! The documents are generated from pm-workflows' types, the same ones its committed
//! `schema/*.schema.json` files are checked against.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::common::Problem;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Path;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_schema))
}

/// The names served, with what each describes.
const SCHEMAS: &str = "`workflow` (a workflow definition) or `task-template` (a task template)";

/// A JSON Schema of a document format: `workflow` (the `definition` of a workflow) or
/// `task-template` (the `task` and `workflows` of a task template). No authentication.
#[utoipa::path(get, path = "/schemas/{name}", tag = "workflows", operation_id = "get_json_schema",
    params(("name" = String, Path, description = "`workflow` or `task-template` (a `.schema.json` suffix is accepted)")),
    responses(
        (status = 200, description = "The JSON Schema (draft 2020-12)", body = Object, content_type = "application/schema+json"),
        (status = 404, description = "No schema of that name", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_schema(Path(name): Path<String>) -> Result<Response, ApiError> {
    let schema = match name.trim_end_matches(".schema.json") {
        "workflow" => pm_workflows::definition::json_schema(),
        "task-template" => pm_workflows::task_template::json_schema(),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no schema named `{name}`: {SCHEMAS}"),
            ));
        }
    };
    let mut res = axum::Json(schema).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/schema+json"));
    Ok(res)
}

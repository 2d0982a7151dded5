//! Records on a task: time entries, attachments (multipart upload, download) and location
//! check-ins.

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pm_core::id::{AttachmentId, TaskId, TimeEntryId};
use pm_core::model::{Attachment, CheckIn, GeoPoint, TimeEntry};
use pm_core::service::MAX_ATTACHMENT_BYTES;
use serde::Deserialize;
use time::Date;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::common::Problem;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{Json, Path};

/// Routes of this module. Uploads get a body limit just above the attachment size limit; every
/// other route keeps the server's default.
pub fn router() -> OpenApiRouter<AppState> {
    let uploads = OpenApiRouter::new()
        .routes(routes!(list_attachments, upload_attachment))
        .layer(DefaultBodyLimit::max(MAX_ATTACHMENT_BYTES + 64 * 1024));
    OpenApiRouter::new()
        .routes(routes!(list_time_entries, log_time))
        .routes(routes!(delete_time_entry))
        .merge(uploads)
        .routes(routes!(download_attachment, delete_attachment))
        .routes(routes!(list_check_ins, check_in))
}

/// Lists time logged on a task.
#[utoipa::path(get, path = "/tasks/{task_id}/time-entries", tag = "worklog", operation_id = "list_time_entries",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Time entries by day", body = Vec<TimeEntry>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_time_entries(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<TimeEntry>>, ApiError> {
    Ok(Json(s.pm.list_time_entries(&who.origin(), TaskId(id)).await?))
}

/// Time spent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogTimeBody {
    /// Minutes, 1-1440.
    pub minutes: i64,
    /// The day (YYYY-MM-DD).
    pub spent_on: Date,
    /// Optional note (≤ 2000 chars).
    #[serde(default)]
    pub note: String,
}

/// Logs time on a task as the caller.
#[utoipa::path(post, path = "/tasks/{task_id}/time-entries", tag = "worklog", operation_id = "log_time",
    params(("task_id" = Uuid, Path, description = "Task id")),
    request_body = LogTimeBody,
    responses(
        (status = 201, description = "The entry", body = TimeEntry),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn log_time(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<LogTimeBody>,
) -> Result<Response, ApiError> {
    let e = s.pm.log_time(&who.origin(), TaskId(id), b.minutes, b.spent_on, &b.note).await?;
    Ok((StatusCode::CREATED, Json(e)).into_response())
}

/// Deletes a time entry.
#[utoipa::path(delete, path = "/tasks/{task_id}/time-entries/{entry_id}", tag = "worklog", operation_id = "delete_time_entry",
    params(("task_id" = Uuid, Path, description = "Task id"), ("entry_id" = Uuid, Path, description = "Time entry id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_time_entry(
    State(s): State<AppState>,
    who: Authenticated,
    Path((task, entry)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    s.pm.delete_time_entry(&who.origin(), TaskId(task), TimeEntryId(entry)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a task's attachments (metadata).
#[utoipa::path(get, path = "/tasks/{task_id}/attachments", tag = "worklog", operation_id = "list_attachments",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Attachments", body = Vec<Attachment>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_attachments(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<Attachment>>, ApiError> {
    Ok(Json(s.pm.list_attachments(&who.origin(), TaskId(id)).await?))
}

/// The multipart form of an upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file (one part named `file`, with a filename and content type).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// Uploads a file to a task (`multipart/form-data`, one part named `file`, ≤ 25 MiB).
#[utoipa::path(post, path = "/tasks/{task_id}/attachments", tag = "worklog", operation_id = "upload_attachment",
    params(("task_id" = Uuid, Path, description = "Task id")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "The attachment's metadata", body = Attachment),
        (status = 400, description = "No `file` part, bad file name or content type", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "File too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn upload_attachment(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|r| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            r.body_text(),
        )
    })?;
    let multipart_err = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload-too-large",
                "Payload too large",
                format!("files are limited to {MAX_ATTACHMENT_BYTES} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", e.body_text())
                .with("field", "file")
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(multipart_err)? {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("upload").to_string();
        let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
        let bytes = field.bytes().await.map_err(multipart_err)?;
        let a =
            s.pm.add_attachment(&who.origin(), TaskId(id), &file_name, &content_type, &bytes)
                .await?;
        return Ok((StatusCode::CREATED, Json(a)).into_response());
    }
    Err(pm_core::Error::invalid("file", "the form has no part named `file`").into())
}

/// Downloads an attachment's bytes.
#[utoipa::path(get, path = "/tasks/{task_id}/attachments/{attachment_id}", tag = "worklog", operation_id = "download_attachment",
    params(("task_id" = Uuid, Path, description = "Task id"), ("attachment_id" = Uuid, Path, description = "Attachment id")),
    responses(
        (status = 200, description = "The file, with its content type", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such attachment", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn download_attachment(
    State(s): State<AppState>,
    who: Authenticated,
    Path((task, attachment)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let (a, bytes) =
        s.pm.get_attachment(&who.origin(), TaskId(task), AttachmentId(attachment)).await?;
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&a.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // The name is ASCII-safe-quoted; non-ASCII names go in the RFC 5987 form.
    let ascii: String = a
        .file_name
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' })
        .collect();
    let encoded: String = a
        .file_name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(res)
}

/// Deletes an attachment and its bytes.
#[utoipa::path(delete, path = "/tasks/{task_id}/attachments/{attachment_id}", tag = "worklog", operation_id = "delete_attachment",
    params(("task_id" = Uuid, Path, description = "Task id"), ("attachment_id" = Uuid, Path, description = "Attachment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such attachment", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn delete_attachment(
    State(s): State<AppState>,
    who: Authenticated,
    Path((task, attachment)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    s.pm.delete_attachment(&who.origin(), TaskId(task), AttachmentId(attachment)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a task's check-ins, newest first.
#[utoipa::path(get, path = "/tasks/{task_id}/check-ins", tag = "worklog", operation_id = "list_check_ins",
    params(("task_id" = Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Check-ins", body = Vec<CheckIn>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn list_check_ins(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<CheckIn>>, ApiError> {
    Ok(Json(s.pm.list_check_ins(&who.origin(), TaskId(id)).await?))
}

/// A location check-in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInBody {
    /// Latitude, -90..90.
    pub lat: f64,
    /// Longitude, -180..180.
    pub lon: f64,
    /// Accuracy radius in metres.
    pub accuracy_m: f64,
    /// Optional note.
    #[serde(default)]
    pub note: String,
}

/// Records a check-in at the caller's position.
#[utoipa::path(post, path = "/tasks/{task_id}/check-ins", tag = "worklog", operation_id = "check_in",
    params(("task_id" = Uuid, Path, description = "Task id")),
    request_body = CheckInBody,
    responses(
        (status = 201, description = "The check-in", body = CheckIn),
        (status = 400, description = "Invalid coordinates or note", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
async fn check_in(
    State(s): State<AppState>,
    who: Authenticated,
    Path(id): Path<Uuid>,
    Json(b): Json<CheckInBody>,
) -> Result<Response, ApiError> {
    let position = GeoPoint::parse(b.lat, b.lon, b.accuracy_m)?;
    let c = s.pm.check_in(&who.origin(), TaskId(id), position, &b.note).await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

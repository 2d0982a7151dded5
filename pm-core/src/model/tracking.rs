//! Records attached to a task: time entries, attachment metadata and location check-ins.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::id::{AttachmentId, CheckInId, TaskId, TimeEntryId, UserId};
use crate::{Error, Result};

/// Time logged against a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeEntry {
    /// Identity.
    pub id: TimeEntryId,
    /// The task.
    pub task_id: TaskId,
    /// Who worked.
    pub user_id: UserId,
    /// Minutes spent (1 – 1440 per entry).
    pub minutes: u32,
    /// The day the work happened.
    pub spent_on: Date,
    /// Optional note (≤ 2000 chars).
    pub note: String,
    /// When it was logged.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Validates minutes for a time entry (`minutes` field).
pub fn parse_minutes(minutes: i64) -> Result<u32> {
    if !(1..=1440).contains(&minutes) {
        return Err(Error::invalid("minutes", "must be between 1 and 1440"));
    }
    Ok(minutes as u32)
}

/// Validates a free-text note (`note` field): ≤ 2000 characters.
pub fn parse_note(note: &str) -> Result<String> {
    if note.chars().count() > 2000 {
        return Err(Error::invalid("note", "must be at most 2000 characters"));
    }
    if note.contains('\0') {
        return Err(Error::invalid("note", "must not contain NUL characters"));
    }
    Ok(note.to_string())
}

/// Metadata of a file attached to a task; the bytes live in a [`BlobStore`](crate::blob::BlobStore).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Identity.
    pub id: AttachmentId,
    /// The task.
    pub task_id: TaskId,
    /// Who uploaded it.
    pub uploaded_by: UserId,
    /// Original file name (sanitised).
    pub file_name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Key in the blob store.
    pub blob_key: String,
    /// When it was uploaded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Validates an attachment file name (`file_name` field): 1–255 chars, no path separators.
pub fn parse_file_name(raw: &str) -> Result<String> {
    let v = raw.trim();
    if v.is_empty()
        || v.chars().count() > 255
        || v.contains(['/', '\\', '\0'])
        || v == "."
        || v == ".."
    {
        return Err(Error::invalid(
            "file_name",
            "must be 1-255 characters without path separators",
        ));
    }
    Ok(v.to_string())
}

/// Validates a MIME type (`content_type` field), e.g. `image/png`.
pub fn parse_content_type(raw: &str) -> Result<String> {
    let v = raw.trim().to_ascii_lowercase();
    let mut parts = v.splitn(2, '/');
    let ok = match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => {
            let tok = |s: &str| {
                !s.is_empty()
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+;= ".contains(c))
            };
            tok(a) && tok(b) && v.len() <= 255
        }
        _ => false,
    };
    if !ok {
        return Err(Error::invalid("content_type", "must be a MIME type like image/png"));
    }
    Ok(v)
}

/// A location check-in on a task (field work, site visits).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckIn {
    /// Identity.
    pub id: CheckInId,
    /// The task.
    pub task_id: TaskId,
    /// Who checked in.
    pub user_id: UserId,
    /// The position.
    pub position: GeoPoint,
    /// Optional note.
    pub note: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A WGS84 position with its accuracy radius.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in degrees, −90…90.
    pub lat: f64,
    /// Longitude in degrees, −180…180.
    pub lon: f64,
    /// Accuracy radius in metres, ≥ 0.
    pub accuracy_m: f64,
}

impl GeoPoint {
    /// Validates coordinates (`lat`, `lon`, `accuracy_m` fields).
    pub fn parse(lat: f64, lon: f64, accuracy_m: f64) -> Result<Self> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(Error::invalid("lat", "must be between -90 and 90"));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(Error::invalid("lon", "must be between -180 and 180"));
        }
        if !accuracy_m.is_finite() || !(0.0..=1.0e7).contains(&accuracy_m) {
            return Err(Error::invalid("accuracy_m", "must be a non-negative number of metres"));
        }
        Ok(Self { lat, lon, accuracy_m })
    }
}

//! Time entries, attachments (metadata + blob bytes) and check-ins.

use sha2::{Digest, Sha256};
use time::Date;

use super::task::task_resource;
use crate::authz::Action;
use crate::event::Origin;
use crate::id::{AttachmentId, CheckInId, TaskId, TimeEntryId};
use crate::model::*;
use crate::{Error, Pm, Result};

/// Largest accepted attachment, in bytes.
pub const MAX_ATTACHMENT_BYTES: usize = 25 * 1024 * 1024;

impl Pm {
    /// Logs time on a task for the acting user.
    pub async fn log_time(
        &self,
        origin: &Origin,
        task: TaskId,
        minutes: i64,
        spent_on: Date,
        note: &str,
    ) -> Result<TimeEntry> {
        let t = self.get_task(origin, task).await?;
        let user = origin
            .actor
            .user()
            .ok_or_else(|| Error::invalid("user_id", "time is logged by a user"))?;
        self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        let e = TimeEntry {
            id: TimeEntryId::new(),
            task_id: task,
            user_id: user,
            minutes: parse_minutes(minutes)?,
            spent_on,
            note: parse_note(note)?,
            created_at: now(),
        };
        self.stores.worklog.create_time_entry(origin, &e).await
    }

    /// Time entries of a task.
    pub async fn list_time_entries(&self, origin: &Origin, task: TaskId) -> Result<Vec<TimeEntry>> {
        self.get_task(origin, task).await?;
        self.stores.worklog.list_time_entries(task).await
    }

    /// Deletes a time entry of `task`.
    pub async fn delete_time_entry(
        &self,
        origin: &Origin,
        task: TaskId,
        id: TimeEntryId,
    ) -> Result<()> {
        let t = self.get_task(origin, task).await?;
        self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        if !self.stores.worklog.list_time_entries(task).await?.iter().any(|e| e.id == id) {
            return Err(Error::not_found("time entry"));
        }
        self.stores.worklog.delete_time_entry(origin, id).await
    }

    /// Stores an attachment: bytes to the blob store first, then metadata. If the metadata write
    /// fails the blob is removed again, so no orphan is left behind.
    pub async fn add_attachment(
        &self,
        origin: &Origin,
        task: TaskId,
        file_name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<Attachment> {
        let t = self.get_task(origin, task).await?;
        let user = origin
            .actor
            .user()
            .ok_or_else(|| Error::invalid("uploaded_by", "attachments are uploaded by a user"))?;
        self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        let file_name = parse_file_name(file_name)?;
        let content_type = parse_content_type(content_type)?;
        if bytes.len() > MAX_ATTACHMENT_BYTES {
            return Err(Error::invalid(
                "file",
                format!("must be at most {MAX_ATTACHMENT_BYTES} bytes"),
            ));
        }
        let id = AttachmentId::new();
        let blob_key = id.to_string();
        let sha256 = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        self.blobs.put(&blob_key, bytes).await?;
        let a = Attachment {
            id,
            task_id: task,
            uploaded_by: user,
            file_name,
            content_type,
            size: bytes.len() as u64,
            sha256,
            blob_key: blob_key.clone(),
            created_at: now(),
        };
        match self.stores.worklog.create_attachment(origin, &a).await {
            Ok(a) => Ok(a),
            Err(e) => {
                if let Err(cleanup) = self.blobs.delete(&blob_key).await {
                    tracing::warn!(%blob_key, error = %cleanup, "could not remove blob of a failed attachment");
                }
                Err(e)
            }
        }
    }

    /// Attachment metadata and bytes.
    pub async fn get_attachment(
        &self,
        origin: &Origin,
        task: TaskId,
        id: AttachmentId,
    ) -> Result<(Attachment, Vec<u8>)> {
        self.get_task(origin, task).await?;
        let a = self.stores.worklog.get_attachment(id).await?;
        if a.task_id != task {
            return Err(Error::not_found("attachment"));
        }
        let bytes = self.blobs.get(&a.blob_key).await?;
        Ok((a, bytes))
    }

    /// Attachments of a task.
    pub async fn list_attachments(&self, origin: &Origin, task: TaskId) -> Result<Vec<Attachment>> {
        self.get_task(origin, task).await?;
        self.stores.worklog.list_attachments(task).await
    }

    /// Deletes an attachment: metadata first (the commit point), then the blob.
    pub async fn delete_attachment(
        &self,
        origin: &Origin,
        task: TaskId,
        id: AttachmentId,
    ) -> Result<()> {
        let t = self.get_task(origin, task).await?;
        self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        let a = self.stores.worklog.get_attachment(id).await?;
        if a.task_id != task {
            return Err(Error::not_found("attachment"));
        }
        self.stores.worklog.delete_attachment(origin, id).await?;
        if let Err(e) = self.blobs.delete(&a.blob_key).await {
            tracing::warn!(blob_key = %a.blob_key, error = %e, "attachment deleted but its blob remains");
        }
        Ok(())
    }

    /// Records a location check-in on a task for the acting user.
    pub async fn check_in(
        &self,
        origin: &Origin,
        task: TaskId,
        position: GeoPoint,
        note: &str,
    ) -> Result<CheckIn> {
        self.check_in_with_id(origin, task, CheckInId::new(), position, note).await
    }

    /// [`Pm::check_in`] with a caller-chosen id (an offline client's, so a replayed check-in is
    /// recognisable). A taken id fails with `AlreadyExists { entity: "check-in", field: "id" }`.
    pub async fn check_in_with_id(
        &self,
        origin: &Origin,
        task: TaskId,
        id: CheckInId,
        position: GeoPoint,
        note: &str,
    ) -> Result<CheckIn> {
        if id.0.is_nil() {
            return Err(Error::invalid("id", "must not be the nil UUID"));
        }
        let t = self.get_task(origin, task).await?;
        let user = origin
            .actor
            .user()
            .ok_or_else(|| Error::invalid("user_id", "check-ins are made by a user"))?;
        self.authorize(origin, Action::Update, &task_resource(&t)).await?;
        let c = CheckIn {
            id,
            task_id: task,
            user_id: user,
            position,
            note: parse_note(note)?,
            created_at: now(),
        };
        self.stores.worklog.create_check_in(origin, &c).await
    }

    /// Check-ins of a task, newest first.
    pub async fn list_check_ins(&self, origin: &Origin, task: TaskId) -> Result<Vec<CheckIn>> {
        self.get_task(origin, task).await?;
        self.stores.worklog.list_check_ins(task).await
    }
}

//! Tasks and their satellites: relations, watchers and comments.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::{FieldValue, Markdown, ProjectKey, TaskTitle};
use crate::id::{
    CommentId, FieldId, LabelId, MilestoneId, OrgId, ProjectId, StateId, TaskId, UserId,
};
use crate::{Error, Result};

/// Task priority. Ordered: `None < Low < Medium < High < Urgent`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Not prioritised.
    #[default]
    None,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Urgent.
    Urgent,
}

impl Priority {
    /// The stored integer (0 = none … 4 = urgent); sorting descending puts urgent first.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// Inverse of [`Priority::as_i16`].
    pub fn from_i16(v: i16) -> Result<Self> {
        Ok(match v {
            0 => Priority::None,
            1 => Priority::Low,
            2 => Priority::Medium,
            3 => Priority::High,
            4 => Priority::Urgent,
            _ => return Err(Error::invalid("priority", format!("unknown priority {v}"))),
        })
    }

    /// Parses the wire name (`priority` field).
    pub fn parse(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::invalid("priority", "must be one of none, low, medium, high, urgent")
        })
    }
}

/// Estimate in points; 0–1000.
pub type Estimate = u32;

/// A unit of work.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Identity.
    pub id: TaskId,
    /// Owning organization (denormalised for authorization and routing).
    pub org_id: OrgId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Per-project sequence number: `PM-42` has number 42.
    pub number: i64,
    /// Human reference, `{project key}-{number}`.
    pub reference: String,
    /// Title.
    pub title: TaskTitle,
    /// Markdown description.
    pub description: Markdown,
    /// Current workflow state (belongs to the same project).
    pub state_id: StateId,
    /// Priority.
    pub priority: Priority,
    /// Assignees (several allowed).
    pub assignees: BTreeSet<UserId>,
    /// Who reported it (also its creator for "owner" conditions).
    pub reporter: UserId,
    /// Labels.
    pub labels: BTreeSet<LabelId>,
    /// Planned start.
    pub start_date: Option<Date>,
    /// Due date.
    pub due_date: Option<Date>,
    /// Estimate in points.
    pub estimate: Option<Estimate>,
    /// Parent task, for subtasks (same project).
    pub parent_id: Option<TaskId>,
    /// Milestone (same project).
    pub milestone_id: Option<MilestoneId>,
    /// Manual order key (fractional index, compared as a string).
    pub rank: String,
    /// Archived tasks are hidden from default lists.
    pub archived: bool,
    /// Custom field values by field.
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
    /// Optimistic-concurrency version, bumped on every change.
    pub version: i64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Formats a task reference such as `PM-42`.
pub fn task_reference(key: &ProjectKey, number: i64) -> String {
    format!("{key}-{number}")
}

/// Everything needed to create a task; the store assigns id, number, rank and timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Project.
    pub project_id: ProjectId,
    /// Title.
    pub title: TaskTitle,
    /// Description.
    pub description: Markdown,
    /// Initial state; the service defaults it to the project's first backlog/unstarted state.
    pub state_id: StateId,
    /// Priority.
    pub priority: Priority,
    /// Assignees.
    pub assignees: BTreeSet<UserId>,
    /// Reporter.
    pub reporter: UserId,
    /// Labels.
    pub labels: BTreeSet<LabelId>,
    /// Planned start.
    pub start_date: Option<Date>,
    /// Due date.
    pub due_date: Option<Date>,
    /// Estimate.
    pub estimate: Option<Estimate>,
    /// Parent task.
    pub parent_id: Option<TaskId>,
    /// Milestone.
    pub milestone_id: Option<MilestoneId>,
    /// Custom field values.
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
}

impl NewTask {
    /// The task a store writes for this input: a fresh id, `number` in its project (reference
    /// `KEY-number`), ranked after the project's last task `last_rank`, version 1, created `at`.
    pub fn to_task(
        &self,
        org_id: OrgId,
        key: &ProjectKey,
        number: i64,
        last_rank: Option<&str>,
        at: OffsetDateTime,
    ) -> Task {
        Task {
            id: TaskId::new(),
            org_id,
            project_id: self.project_id,
            number,
            reference: task_reference(key, number),
            title: self.title.clone(),
            description: self.description.clone(),
            state_id: self.state_id,
            priority: self.priority,
            assignees: self.assignees.clone(),
            reporter: self.reporter,
            labels: self.labels.clone(),
            start_date: self.start_date,
            due_date: self.due_date,
            estimate: self.estimate,
            parent_id: self.parent_id,
            milestone_id: self.milestone_id,
            rank: super::rank::after(last_rank),
            archived: false,
            custom_fields: self.custom_fields.clone(),
            version: 1,
            created_at: at,
            updated_at: at,
        }
    }
}

/// Changes to a task; `None` leaves a field unchanged, `Some(None)` clears an optional field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPatch {
    /// New title.
    pub title: Option<TaskTitle>,
    /// New description.
    pub description: Option<Markdown>,
    /// New state (a transition).
    pub state_id: Option<StateId>,
    /// New priority.
    pub priority: Option<Priority>,
    /// Replace the assignee set.
    pub assignees: Option<BTreeSet<UserId>>,
    /// Replace the label set.
    pub labels: Option<BTreeSet<LabelId>>,
    /// New start date.
    pub start_date: Option<Option<Date>>,
    /// New due date.
    pub due_date: Option<Option<Date>>,
    /// New estimate.
    pub estimate: Option<Option<Estimate>>,
    /// New parent.
    pub parent_id: Option<Option<TaskId>>,
    /// New milestone.
    pub milestone_id: Option<Option<MilestoneId>>,
    /// New rank.
    pub rank: Option<String>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
    /// Set (`Some`) or clear (`None`) individual custom field values.
    pub custom_fields: BTreeMap<FieldId, Option<FieldValue>>,
}

impl TaskPatch {
    /// Applies the patch to `task`, returning whether anything changed. Version and timestamps
    /// are the store's business.
    pub fn apply(&self, task: &mut Task) -> bool {
        let before = task.clone();
        macro_rules! set {
            ($($f:ident),*) => {$(
                if let Some(v) = &self.$f {
                    task.$f = v.clone();
                }
            )*};
        }
        set!(
            title,
            description,
            state_id,
            priority,
            assignees,
            labels,
            start_date,
            due_date,
            estimate,
            parent_id,
            milestone_id,
            rank,
            archived
        );
        for (field, value) in &self.custom_fields {
            match value {
                Some(v) => {
                    task.custom_fields.insert(*field, v.clone());
                }
                None => {
                    task.custom_fields.remove(field);
                }
            }
        }
        *task != before
    }

    /// True when the patch changes nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == TaskPatch::default()
    }
}

/// How two tasks relate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationKind {
    /// `from` blocks `to`; cycles are rejected.
    Blocks,
    /// Loosely related (symmetric in meaning).
    Relates,
    /// `from` duplicates `to`.
    Duplicates,
}

impl RelationKind {
    /// The stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RelationKind::Blocks => "blocks",
            RelationKind::Relates => "relates",
            RelationKind::Duplicates => "duplicates",
        }
    }

    /// Parses the stored/wire name (`kind` field).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "blocks" => RelationKind::Blocks,
            "relates" => RelationKind::Relates,
            "duplicates" => RelationKind::Duplicates,
            _ => {
                return Err(Error::invalid("kind", "must be one of blocks, relates, duplicates"));
            }
        })
    }
}

/// A directed relation between two tasks of the same organization.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRelation {
    /// Source task.
    pub from_task: TaskId,
    /// Target task.
    pub to_task: TaskId,
    /// Kind.
    pub kind: RelationKind,
    /// Who created it.
    pub created_by: Option<UserId>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A user watching a task (notified of its changes).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watcher {
    /// The task.
    pub task_id: TaskId,
    /// The watcher.
    pub user_id: UserId,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// A comment on a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    /// Identity.
    pub id: CommentId,
    /// The task.
    pub task_id: TaskId,
    /// Author.
    pub author: UserId,
    /// Markdown body (1–100 000 characters).
    pub body: Markdown,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was last edited.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Parses a comment body (`body` field): non-blank markdown.
pub fn comment_body(raw: &str) -> Result<Markdown> {
    if raw.trim().is_empty() {
        return Err(Error::invalid("body", "must not be empty"));
    }
    Markdown::parse_field("body", raw)
}

//! Projects and what hangs off them: workflow states, labels, milestones and custom fields.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use super::{Color, LabelName, Markdown, Name, ProjectKey};
use crate::id::{FieldId, LabelId, MilestoneId, OrgId, ProjectId, StateId, UserId};
use crate::{Error, Result};

/// A project: a key (`PM`), a lead, its own workflow states and task numbering.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Identity.
    pub id: ProjectId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Key, unique within the organization; prefixes task numbers.
    pub key: ProjectKey,
    /// Display name.
    pub name: Name,
    /// Markdown description.
    pub description: Markdown,
    /// Project lead, if any.
    pub lead: Option<UserId>,
    /// Archived projects are read-only in spirit and hidden from default lists.
    pub archived: bool,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Changes to a project; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectPatch {
    /// New name.
    pub name: Option<Name>,
    /// New description.
    pub description: Option<Markdown>,
    /// New lead (`Some(None)` clears it).
    pub lead: Option<Option<UserId>>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
}

impl ProjectPatch {
    /// Applies the patch, returning whether anything changed.
    pub fn apply(&self, p: &mut Project) -> bool {
        let before = p.clone();
        if let Some(v) = &self.name {
            p.name = v.clone();
        }
        if let Some(v) = &self.description {
            p.description = v.clone();
        }
        if let Some(v) = self.lead {
            p.lead = v;
        }
        if let Some(v) = self.archived {
            p.archived = v;
        }
        *p != before
    }
}

/// The category a workflow state belongs to; boards, filters and automations reason in
/// categories so that every project can name its states freely.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateCategory {
    /// Not yet triaged.
    Backlog,
    /// Accepted, not started.
    Unstarted,
    /// In progress.
    Started,
    /// Done.
    Completed,
    /// Will not be done.
    Cancelled,
}

impl StateCategory {
    /// The stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateCategory::Backlog => "backlog",
            StateCategory::Unstarted => "unstarted",
            StateCategory::Started => "started",
            StateCategory::Completed => "completed",
            StateCategory::Cancelled => "cancelled",
        }
    }

    /// Parses the stored/wire name (`category` field).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "backlog" => StateCategory::Backlog,
            "unstarted" => StateCategory::Unstarted,
            "started" => StateCategory::Started,
            "completed" => StateCategory::Completed,
            "cancelled" => StateCategory::Cancelled,
            _ => {
                return Err(Error::invalid(
                    "category",
                    "must be one of backlog, unstarted, started, completed, cancelled",
                ));
            }
        })
    }
}

/// A column of a project's board.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    /// Identity.
    pub id: StateId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Display name, unique within the project.
    pub name: Name,
    /// Category.
    pub category: StateCategory,
    /// Position on the board (ascending).
    pub position: i32,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// The states every new project starts with (name, category).
pub const DEFAULT_STATES: [(&str, StateCategory); 5] = [
    ("Backlog", StateCategory::Backlog),
    ("Todo", StateCategory::Unstarted),
    ("In Progress", StateCategory::Started),
    ("Done", StateCategory::Completed),
    ("Cancelled", StateCategory::Cancelled),
];

/// An organization-wide label.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Identity.
    pub id: LabelId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Name, unique within the organization.
    pub name: LabelName,
    /// Colour.
    pub color: Color,
}

/// A project milestone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Milestone {
    /// Identity.
    pub id: MilestoneId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Name, unique within the project.
    pub name: Name,
    /// Markdown description.
    pub description: Markdown,
    /// Target date.
    pub due_on: Option<Date>,
    /// Closed milestones no longer accept tasks in the UI.
    pub closed: bool,
    /// Optimistic-concurrency version.
    pub version: i64,
}

/// The type of a custom field, with its options for the select types.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FieldType {
    /// Free text.
    Text,
    /// A finite number.
    Number,
    /// A calendar date.
    Date,
    /// One of `options`.
    Select {
        /// Allowed values.
        options: Vec<String>,
    },
    /// Any subset of `options`.
    MultiSelect {
        /// Allowed values.
        options: Vec<String>,
    },
    /// A user id.
    User,
    /// True or false.
    Checkbox,
    /// An `http(s)` URL.
    Url,
}

impl FieldType {
    /// Validates the definition itself (`field_type` field): select types need 1–100 distinct,
    /// non-empty options.
    pub fn validate(&self) -> Result<()> {
        if let FieldType::Select { options } | FieldType::MultiSelect { options } = self {
            if options.is_empty() || options.len() > 100 {
                return Err(Error::invalid("field_type.options", "must hold 1 to 100 options"));
            }
            let mut seen = std::collections::HashSet::new();
            for o in options {
                if o.trim().is_empty() || o.len() > 100 || o.chars().any(char::is_control) {
                    return Err(Error::invalid(
                        "field_type.options",
                        "options must be 1-100 characters without control characters",
                    ));
                }
                if !seen.insert(o) {
                    return Err(Error::invalid(
                        "field_type.options",
                        format!("duplicate option {o:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A custom field defined on a project.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomField {
    /// Identity.
    pub id: FieldId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Name, unique within the project.
    pub name: Name,
    /// Type and options.
    pub field_type: FieldType,
}

/// A value of a custom field on a task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    /// Free text.
    Text(String),
    /// A finite number.
    Number(f64),
    /// A date.
    Date(Date),
    /// One option.
    Select(String),
    /// Several options.
    MultiSelect(Vec<String>),
    /// A user.
    User(UserId),
    /// A checkbox.
    Checkbox(bool),
    /// A URL.
    Url(String),
}

impl CustomField {
    /// Checks that `value` fits this field's type; the error names `custom_fields.<name>`.
    pub fn check(&self, value: &FieldValue) -> Result<()> {
        let field = format!("custom_fields.{}", self.name);
        let bad = |msg: &str| Err(Error::invalid(field.clone(), msg.to_string()));
        match (&self.field_type, value) {
            (FieldType::Text, FieldValue::Text(s)) if s.contains('\0') => {
                bad("must not contain NUL characters")
            }
            (FieldType::Text, FieldValue::Text(s)) if s.chars().count() <= 10_000 => Ok(()),
            (FieldType::Text, FieldValue::Text(_)) => bad("must be at most 10000 characters"),
            (FieldType::Number, FieldValue::Number(n)) if n.is_finite() => Ok(()),
            (FieldType::Number, FieldValue::Number(_)) => bad("must be a finite number"),
            (FieldType::Date, FieldValue::Date(_)) => Ok(()),
            (FieldType::Select { options }, FieldValue::Select(v)) if options.contains(v) => Ok(()),
            (FieldType::Select { .. }, FieldValue::Select(_)) => {
                bad("is not one of the field's options")
            }
            (FieldType::MultiSelect { options }, FieldValue::MultiSelect(vs)) => {
                if vs.iter().all(|v| options.contains(v)) {
                    Ok(())
                } else {
                    bad("holds a value that is not one of the field's options")
                }
            }
            (FieldType::User, FieldValue::User(_)) => Ok(()),
            (FieldType::Checkbox, FieldValue::Checkbox(_)) => Ok(()),
            (FieldType::Url, FieldValue::Url(u)) => {
                let ok = (u.starts_with("https://") || u.starts_with("http://"))
                    && u.len() <= 2048
                    && !u.chars().any(|c| c.is_whitespace() || c.is_control());
                if ok { Ok(()) } else { bad("must be an http(s) URL") }
            }
            _ => bad("has the wrong type for this field"),
        }
    }
}

//! Task queries: filters, sort orders, keyset cursors and full-text search terms.
//!
//! Pagination is keyset-based: a [`Cursor`] carries the sort key and id of the last row of a
//! page, and the next page starts strictly after it. Rows inserted concurrently therefore never
//! shift a page boundary: paging never repeats a row and never skips one that existed when paging
//! began (a property test checks this on every backend).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::id::{LabelId, MilestoneId, ProjectId, StateId, TaskId, UserId};
use crate::model::{Priority, StateCategory, Task};
use crate::{Error, Result};

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 25;
/// Largest page size.
pub const MAX_LIMIT: u32 = 100;

/// Which tasks to list. Every set field narrows the result (AND); list-valued fields match any
/// of their values (OR).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    /// Only these projects (empty = every project of the organization).
    pub project_ids: Vec<ProjectId>,
    /// In any of these states.
    pub state_ids: Vec<StateId>,
    /// In a state of any of these categories.
    pub state_categories: Vec<StateCategory>,
    /// Assigned to any of these users.
    pub assignees: Vec<UserId>,
    /// Reported by any of these users.
    pub reporters: Vec<UserId>,
    /// Carrying any of these labels.
    pub labels: Vec<LabelId>,
    /// With any of these priorities.
    pub priorities: Vec<Priority>,
    /// Due on or after.
    pub due_from: Option<Date>,
    /// Due on or before.
    pub due_to: Option<Date>,
    /// Children of this task (`Some(None)` = top-level tasks only).
    pub parent: Option<Option<TaskId>>,
    /// In this milestone.
    pub milestone_id: Option<MilestoneId>,
    /// Changed at or after.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_since: Option<OffsetDateTime>,
    /// Archived tasks only (`Some(true)`), live only (`Some(false)`, the default), or both (`None`).
    pub archived: Option<bool>,
    /// Full-text search over title, description and comments.
    pub text: Option<String>,
}

impl TaskFilter {
    /// A filter for live tasks of one project.
    pub fn project(id: ProjectId) -> Self {
        Self { project_ids: vec![id], archived: Some(false), ..Self::default() }
    }

    /// Validates the filter (e.g. `due_from` after `due_to`) and bounds list sizes.
    pub fn validate(&self) -> Result<()> {
        if let (Some(a), Some(b)) = (self.due_from, self.due_to)
            && a > b
        {
            return Err(Error::invalid("due_from", "must not be after due_to"));
        }
        let lens = [
            ("project_ids", self.project_ids.len()),
            ("state_ids", self.state_ids.len()),
            ("state_categories", self.state_categories.len()),
            ("assignees", self.assignees.len()),
            ("reporters", self.reporters.len()),
            ("labels", self.labels.len()),
            ("priorities", self.priorities.len()),
        ];
        for (field, n) in lens {
            if n > 100 {
                return Err(Error::invalid(field, "must list at most 100 values"));
            }
        }
        if let Some(t) = &self.text
            && t.chars().count() > 200
        {
            return Err(Error::invalid("q", "must be at most 200 characters"));
        }
        Ok(())
    }

    /// The search terms of [`TaskFilter::text`], see [`search_terms`].
    pub fn search_terms(&self) -> Vec<String> {
        self.text.as_deref().map(search_terms).unwrap_or_default()
    }
}

/// Splits free text into lower-case alphanumeric search terms (at most 16). Every backend matches
/// each term as a prefix and requires all terms (AND), so results agree across stores and user
/// input never reaches a query parser unescaped.
pub fn search_terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .take(16)
        .collect()
}

/// The key a list is ordered by. Ties are broken by task id (time-ordered), so the order is total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSortKey {
    /// Creation time.
    #[default]
    Created,
    /// Last change.
    Updated,
    /// Due date; tasks without one sort after every dated task.
    Due,
    /// Priority (ascending = none first; use descending for urgent first).
    Priority,
    /// Manual rank.
    Rank,
    /// Per-project number.
    Number,
}

impl TaskSortKey {
    /// Parses the wire name (`sort` field).
    pub fn parse(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::invalid("sort", "must be one of created, updated, due, priority, rank, number")
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskSortKey::Created => "created",
            TaskSortKey::Updated => "updated",
            TaskSortKey::Due => "due",
            TaskSortKey::Priority => "priority",
            TaskSortKey::Rank => "rank",
            TaskSortKey::Number => "number",
        }
    }
}

/// A sort order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSort {
    /// The key.
    pub key: TaskSortKey,
    /// Descending instead of ascending.
    pub descending: bool,
}

/// The value of the sort key of one row, as stored in a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    /// Integer keys: timestamps (µs since the epoch), priority, number.
    Int(i64),
    /// Text keys: rank, due date (`YYYY-MM-DD`, `9999-12-31` when absent).
    Text(String),
}

/// Sentinel due date that sorts tasks without a due date last.
pub const NO_DUE_DATE: &str = "9999-12-31";

impl TaskSort {
    /// The sort value of `task` under this order (what a cursor after `task` stores).
    pub fn value_of(&self, task: &Task) -> SortValue {
        match self.key {
            TaskSortKey::Created => SortValue::Int(micros(task.created_at)),
            TaskSortKey::Updated => SortValue::Int(micros(task.updated_at)),
            TaskSortKey::Due => SortValue::Text(
                task.due_date.map(|d| d.to_string()).unwrap_or_else(|| NO_DUE_DATE.to_string()),
            ),
            TaskSortKey::Priority => SortValue::Int(task.priority.as_i16() as i64),
            TaskSortKey::Rank => SortValue::Text(task.rank.clone()),
            TaskSortKey::Number => SortValue::Int(task.number),
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// Inverse of [`micros`].
pub fn from_micros(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1_000)
        .map_err(|e| Error::invalid("timestamp", e.to_string()))
}

/// An opaque position in a sorted list: the sort key and id of the last row returned. Encoded as
/// URL-safe base64 of JSON; it also records the sort so a cursor cannot be replayed against a
/// different order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Sort the cursor belongs to.
    pub sort: TaskSort,
    /// Sort value of the last row.
    pub value: SortValue,
    /// Id of the last row.
    pub id: TaskId,
}

impl Cursor {
    /// The cursor positioned after `task` in `sort` order.
    pub fn after(sort: TaskSort, task: &Task) -> Self {
        Self { sort, value: sort.value_of(task), id: task.id }
    }

    /// Encodes the cursor for a client.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("cursor serializes"))
    }

    /// Decodes a client's cursor (`cursor` field).
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::invalid("cursor", "is not a cursor returned by this API");
        if s.len() > 512 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

/// Which page to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    /// Order.
    pub sort: TaskSort,
    /// Rows per page, 1..=[`MAX_LIMIT`].
    pub limit: u32,
    /// Start after this position (first page when `None`).
    pub after: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { sort: TaskSort::default(), limit: DEFAULT_LIMIT, after: None }
    }
}

impl PageRequest {
    /// Builds a request from wire values, validating limit and cursor (fields `limit`, `cursor`).
    pub fn parse(sort: TaskSort, limit: Option<u32>, cursor: Option<&str>) -> Result<Self> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::invalid("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        if let Some(c) = &after {
            if c.sort != sort {
                return Err(Error::invalid("cursor", "was issued for a different sort order"));
            }
            let int_key = matches!(
                sort.key,
                TaskSortKey::Created
                    | TaskSortKey::Updated
                    | TaskSortKey::Priority
                    | TaskSortKey::Number
            );
            if int_key != matches!(c.value, SortValue::Int(_)) {
                return Err(Error::invalid("cursor", "is not a cursor returned by this API"));
            }
        }
        Ok(Self { sort, limit, after })
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl Page<Task> {
    /// Builds a page from up to `limit + 1` rows fetched by a store: the extra row only signals
    /// that another page exists.
    pub fn from_rows(mut rows: Vec<Task>, req: &PageRequest) -> Self {
        let more = rows.len() > req.limit as usize;
        rows.truncate(req.limit as usize);
        let next_cursor =
            if more { rows.last().map(|t| Cursor::after(req.sort, t).encode()) } else { None };
        Page { items: rows, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms_strip_operators() {
        assert_eq!(search_terms("Fix \"login\" OR crash*"), vec!["fix", "login", "or", "crash"]);
        assert!(search_terms("-- ;").is_empty());
    }

    #[test]
    fn cursor_roundtrip_and_rejection() {
        let c = Cursor {
            sort: TaskSort { key: TaskSortKey::Due, descending: true },
            value: SortValue::Text("2024-01-01".into()),
            id: TaskId::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(
            matches!(Cursor::decode("garbage!"), Err(Error::Invalid { field, .. }) if field == "cursor")
        );
        let other = TaskSort::default();
        assert!(PageRequest::parse(other, None, Some(&c.encode())).is_err());
        assert!(
            matches!(PageRequest::parse(other, Some(0), None), Err(Error::Invalid { field, .. }) if field == "limit")
        );
        assert!(PageRequest::parse(other, Some(101), None).is_err());
        // A forged cursor whose value does not fit its sort key is refused, not run.
        let forged = Cursor { sort: other, value: SortValue::Text("x".into()), id: TaskId::new() };
        assert!(PageRequest::parse(other, None, Some(&forged.encode())).is_err());
    }
}

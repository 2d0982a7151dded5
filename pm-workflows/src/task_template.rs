//! Task templates with their automation: a task (title, description, priority, labels, custom
//! fields, estimate, due date offset, checklist, default assignee rule) with a tree of subtasks,
//! plus workflow definitions that are created for the project — or for the one instantiated
//! task — when the template is instantiated.
//!
//! This module owns the template document ([`TemplateSpec`]), its validation (every error names
//! the JSON path: `task.subtasks[1].title`, `workflows[0].definition.trigger`), and the
//! rendering of one instantiation into concrete task inputs ([`plan`]). The engine
//! ([`Engine::instantiate`](crate::engine::Engine::instantiate)) performs the plan through
//! pm-core's services and undoes what it created when a later part fails, so an instantiation is
//! all or nothing.
//!
//! Texts (titles, descriptions, checklist items) are text templates ([`crate::template`])
//! rendered against `{project: {id, key, name}, parent: <task or null>, values: {...}, today}`; a
//! `{{values.x}}` placeholder must be supplied by the caller (checked before anything is
//! created). Workflow definitions are not rendered: their own `{{task.…}}` placeholders are
//! evaluated when they run. pm-core has no checklist entity, so the checklist becomes a Markdown
//! task list (`- [ ] item`) at the end of the description, which the web app renders as
//! checkboxes.
//!
//! The document format is published as a JSON Schema
//! (`pm-workflows/schema/task-template.schema.json`, generated from these types by
//! [`json_schema()`]; a test fails when the committed file drifts, and checks that documents the
//! schema accepts parse and that each constraint of [`TemplateSpec::from_value`] is also a
//! constraint of the schema). The schema cannot state the whole-tree limits ([`MAX_TASKS`] tasks,
//! [`MAX_DEPTH`] levels), what compiling an attached workflow's CEL and rhai finds, nor that
//! `5.0` is not an integer to serde: those are only reported by the parser (the API's 400).

use std::collections::{BTreeMap, BTreeSet};

use pm_core::id::{FieldId, LabelId, UserId};
use pm_core::model::{FieldValue, Markdown, Priority, TaskTitle};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{Definition, Limits, Trigger};
use crate::template;
use crate::{Error, Result};

/// Most tasks (root plus subtasks) one template creates.
pub const MAX_TASKS: usize = 100;
/// Deepest subtask nesting below the root (pm-core allows 10 levels in all).
pub const MAX_DEPTH: usize = 5;
/// Most workflows a template attaches.
pub const MAX_WORKFLOWS: usize = 20;
/// Most checklist items per task.
pub const MAX_CHECKLIST: usize = 100;
/// Longest title or checklist item, in characters (before rendering).
pub const MAX_LINE_CHARS: usize = 500;
/// Largest estimate, in points.
pub const MAX_ESTIMATE: u32 = 1000;

/// The template document: a task tree and the workflows that come with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pm task template")]
pub struct TemplateSpec {
    /// The task to create (with its subtasks). A template creates at most 100 tasks, nested at
    /// most 5 levels below this one (checked by the server; not expressible in this schema).
    pub task: TemplateTask,
    /// Workflows created (enabled unless said otherwise) when the template is instantiated;
    /// at most 20. `null` is the same as leaving it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // `from_value` takes `null` for "none" (the API passes an explicit `null` through).
    #[schemars(with = "Option<Vec<AttachedWorkflow>>", length(max = MAX_WORKFLOWS))]
    pub workflows: Vec<AttachedWorkflow>,
}

/// One task of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateTask {
    /// Title, 1–500 characters, not only whitespace; a text template
    /// (`Onboard {{values.name}}`).
    #[schemars(schema_with = "title_schema")]
    pub title: String,
    /// Markdown description, at most 100000 characters; a text template.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(schema_with = "description_schema")]
    pub description: String,
    /// Priority (`none`, `low`, `medium`, `high`, `urgent`).
    #[serde(default)]
    #[schemars(schema_with = "priority_schema")]
    pub priority: Priority,
    /// Labels of the organization.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[schemars(with = "Vec<uuid::Uuid>")]
    pub labels: BTreeSet<LabelId>,
    /// Custom field values by field id (fields of the target project; the value must fit the
    /// field's type, checked when instantiating).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "custom_fields_schema")]
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
    /// Estimate in points, 0–1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_ESTIMATE))]
    pub estimate: Option<u32>,
    /// Due date, in days after the instantiation day (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_in_days: Option<u16>,
    /// Checklist items (text templates; each one line of 1–500 characters, not only
    /// whitespace; at most 100 items), appended to the description as `- [ ] item`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "checklist_schema")]
    pub checklist: Vec<String>,
    /// Who the task is assigned to.
    #[serde(default)]
    pub assignee: AssigneeRule,
    /// Subtasks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<TemplateTask>,
}

/// The default assignee of a template task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AssigneeRule {
    /// Nobody.
    #[default]
    Nobody,
    /// Whoever instantiates the template (nobody when an automation does, without a person).
    Instantiator,
    /// The target project's lead (nobody when it has none).
    ProjectLead,
    /// These users (members of the organization), 1–20 of them.
    Users(
        #[schemars(
            with = "Vec<uuid::Uuid>",
            length(min = 1, max = pm_core::service::MAX_ASSIGNEES)
        )]
        Vec<UserId>,
    ),
}

/// Whom an attached workflow reacts to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachScope {
    /// Every task of the target project.
    #[default]
    Project,
    /// Only the instantiated (root) task: a `task.id == "<id>"` condition is added.
    Task,
}

/// A workflow that comes with the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// The one cross-field rule of `attached`: a task-scoped workflow needs a task trigger.
#[schemars(extend(
    "if" = {"properties": {"scope": {"const": "task"}}, "required": ["scope"]},
    "then" = {"properties": {"definition": {"properties": {"trigger": {"properties": {
        "type": {"not": {"enum": ["schedule", "webhook", "manual"]}}
    }}}}}}
))]
pub struct AttachedWorkflow {
    /// Project-wide (default) or only the instantiated task; a task-scoped workflow needs a
    /// task trigger (not `schedule`, `webhook` or `manual`).
    #[serde(default)]
    pub scope: AttachScope,
    /// Created enabled (default) or disabled.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The workflow definition (the same document as `workflow.schema.json`).
    pub definition: Definition,
}

fn enabled() -> bool {
    true
}

/// What [`template::check`] accepts, as an ECMA-262 pattern: text whose every `{{` opens a
/// `{{ dotted.path }}` placeholder (segments of ASCII letters, digits, `_`, `-`) closed by the
/// next `}}`. Written without look-around so every JSON Schema validator can run it.
const TEXT_TEMPLATE_PATTERN: &str =
    r"^(?:[^{]|\{(?:[^{]|$)|\{\{\s*[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\s*\}\})*$";

fn title_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LINE_CHARS,
        "allOf": [{"pattern": "\\S"}, {"pattern": TEXT_TEMPLATE_PATTERN}]
    })
}

fn description_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": Markdown::MAX_CHARS,
        "pattern": TEXT_TEMPLATE_PATTERN
    })
}

fn checklist_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": MAX_CHECKLIST,
        "items": {
            "type": "string",
            "maxLength": MAX_LINE_CHARS,
            // One line with something besides whitespace on it.
            "allOf": [{"pattern": "^[^\\n]*\\S[^\\n]*$"}, {"pattern": TEXT_TEMPLATE_PATTERN}]
        }
    })
}

fn priority_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": ["none", "low", "medium", "high", "urgent"]})
}

/// pm-core's `FieldValue` (`{"type": "text", "value": "..."}`) keyed by field id; pm-core does
/// not derive `JsonSchema` (it knows no schema crate), so its shape is stated here.
fn custom_fields_schema(_: &mut SchemaGenerator) -> Schema {
    let kind = |t: &str, value: Value| {
        serde_json::json!({
            "type": "object",
            "properties": {"type": {"const": t}, "value": value},
            "required": ["type", "value"]
        })
    };
    let text = serde_json::json!({"type": "string"});
    json_schema!({
        "type": "object",
        "propertyNames": {"format": "uuid"},
        "additionalProperties": {
            "oneOf": [
                kind("text", text.clone()),
                kind("number", serde_json::json!({"type": "number"})),
                kind("date", serde_json::json!({"type": "string", "format": "date"})),
                kind("select", text.clone()),
                kind("multi_select", serde_json::json!({"type": "array", "items": {"type": "string"}})),
                kind("user", serde_json::json!({"type": "string", "format": "uuid"})),
                kind("checkbox", serde_json::json!({"type": "boolean"})),
                kind("url", text),
            ]
        }
    })
}

/// The JSON Schema of [`TemplateSpec`] documents, as published in
/// `pm-workflows/schema/task-template.schema.json`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(TemplateSpec);
    serde_json::to_value(schema).expect("a schema serializes")
}

fn path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// Re-roots an error's field under `prefix`.
pub(crate) fn under(prefix: &str, e: Error) -> Error {
    match e {
        Error::Invalid { field, message } if field == "$" || field.is_empty() => {
            Error::Invalid { field: prefix.to_string(), message }
        }
        Error::Invalid { field, message } => {
            Error::Invalid { field: path(prefix, &field), message }
        }
        other => other,
    }
}

impl TemplateSpec {
    /// Parses and validates a template document; errors name the JSON path.
    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self> {
        let Value::Object(m) = value else {
            return Err(Error::invalid("$", "must be an object with `task` (and `workflows`)"));
        };
        for k in m.keys() {
            if k != "task" && k != "workflows" {
                return Err(Error::invalid(k.as_str(), "unknown field"));
            }
        }
        let task_value = m.get("task").ok_or_else(|| Error::invalid("task", "is required"))?;
        let task: TemplateTask = serde_path_to_error::deserialize(task_value).map_err(|e| {
            let p = e.path().to_string();
            let field = if p == "." { "task".to_string() } else { path("task", &p) };
            Error::invalid(field, e.into_inner().to_string())
        })?;
        let mut workflows = Vec::new();
        match m.get("workflows") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_WORKFLOWS {
                    return Err(Error::invalid(
                        "workflows",
                        format!("at most {MAX_WORKFLOWS} workflows"),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    workflows.push(attached(item, &format!("workflows[{i}]"), limits)?);
                }
            }
            Some(_) => return Err(Error::invalid("workflows", "must be an array")),
        }
        let spec = TemplateSpec { task, workflows };
        let mut count = 0;
        check_task(&spec.task, "task", 0, &mut count)?;
        Ok(spec)
    }

    /// The `{{values.x}}` names the texts need, sorted.
    pub fn required_values(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        fn walk(t: &TemplateTask, out: &mut BTreeSet<String>) {
            let texts = [&t.title, &t.description].into_iter().chain(t.checklist.iter());
            for text in texts {
                for p in template::paths(text) {
                    if let Some(name) = p.strip_prefix("values.") {
                        out.insert(name.split('.').next().unwrap_or(name).to_string());
                    }
                }
            }
            t.subtasks.iter().for_each(|s| walk(s, out));
        }
        walk(&self.task, &mut out);
        out
    }
}

fn attached(item: &Value, p: &str, limits: &Limits) -> Result<AttachedWorkflow> {
    let Value::Object(m) = item else {
        return Err(Error::invalid(p, "must be an object with `definition`"));
    };
    for k in m.keys() {
        if !["scope", "enabled", "definition"].contains(&k.as_str()) {
            return Err(Error::invalid(path(p, k), "unknown field"));
        }
    }
    let scope = match m.get("scope") {
        None => AttachScope::Project,
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| Error::invalid(path(p, "scope"), "must be `project` or `task`"))?,
    };
    let enabled = match m.get("enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::invalid(path(p, "enabled"), "must be a boolean")),
    };
    let def =
        m.get("definition").ok_or_else(|| Error::invalid(path(p, "definition"), "is required"))?;
    let definition =
        Definition::from_value(def, limits).map_err(|e| under(&path(p, "definition"), e))?;
    if scope == AttachScope::Task
        && matches!(
            definition.trigger,
            Trigger::Schedule(_) | Trigger::Webhook(_) | Trigger::Manual(_)
        )
    {
        return Err(Error::invalid(
            path(p, "scope"),
            "a task-scoped workflow needs a task trigger (not schedule, webhook or manual)",
        ));
    }
    Ok(AttachedWorkflow { scope, enabled, definition })
}

fn check_text(text: &str, p: &str, max: usize) -> Result<()> {
    if text.chars().count() > max {
        return Err(Error::invalid(p, format!("must be at most {max} characters")));
    }
    template::check(text).map_err(|e| Error::invalid(p, e))
}

fn check_task(t: &TemplateTask, p: &str, depth: usize, count: &mut usize) -> Result<()> {
    *count += 1;
    if *count > MAX_TASKS {
        return Err(Error::invalid(p, format!("a template creates at most {MAX_TASKS} tasks")));
    }
    if t.title.trim().is_empty() {
        return Err(Error::invalid(path(p, "title"), "must not be empty"));
    }
    check_text(&t.title, &path(p, "title"), MAX_LINE_CHARS)?;
    check_text(&t.description, &path(p, "description"), Markdown::MAX_CHARS)?;
    if t.checklist.len() > MAX_CHECKLIST {
        return Err(Error::invalid(path(p, "checklist"), format!("at most {MAX_CHECKLIST} items")));
    }
    for (i, item) in t.checklist.iter().enumerate() {
        let ip = format!("{}[{i}]", path(p, "checklist"));
        if item.trim().is_empty() || item.contains('\n') {
            return Err(Error::invalid(ip, "must be one non-empty line"));
        }
        check_text(item, &ip, MAX_LINE_CHARS)?;
    }
    if let Some(e) = t.estimate
        && e > MAX_ESTIMATE
    {
        return Err(Error::invalid(path(p, "estimate"), format!("must be at most {MAX_ESTIMATE}")));
    }
    if let AssigneeRule::Users(u) = &t.assignee
        && (u.is_empty() || u.len() > pm_core::service::MAX_ASSIGNEES)
    {
        return Err(Error::invalid(
            path(p, "assignee.users"),
            format!("must list 1–{} users", pm_core::service::MAX_ASSIGNEES),
        ));
    }
    if !t.subtasks.is_empty() && depth >= MAX_DEPTH {
        return Err(Error::invalid(
            path(p, "subtasks"),
            format!("subtasks nest at most {MAX_DEPTH} levels"),
        ));
    }
    for (i, s) in t.subtasks.iter().enumerate() {
        check_task(s, &format!("{}[{i}]", path(p, "subtasks")), depth + 1, count)?;
    }
    Ok(())
}

/// One task to create, rendered: the fields of pm-core's `CreateTask` a template sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    /// JSON path in the template (`task.subtasks[0]`), for errors.
    pub path: String,
    /// Index of the parent in the plan (`None` for the root).
    pub parent: Option<usize>,
    /// Rendered title.
    pub title: TaskTitle,
    /// Rendered description with the checklist appended.
    pub description: Markdown,
    /// Priority.
    pub priority: Priority,
    /// Labels.
    pub labels: BTreeSet<LabelId>,
    /// Custom fields.
    pub custom_fields: BTreeMap<FieldId, FieldValue>,
    /// Estimate.
    pub estimate: Option<u32>,
    /// Due date.
    pub due_date: Option<time::Date>,
    /// Assignees after applying the rule.
    pub assignees: BTreeSet<UserId>,
}

/// Who and where an instantiation happens, for the assignee rules and the placeholders.
#[derive(Debug, Clone)]
pub struct PlanContext {
    /// The rendering context (`project`, `parent`, `values`, `today`).
    pub ctx: Value,
    /// The person instantiating, if any.
    pub instantiator: Option<UserId>,
    /// The target project's lead, if any.
    pub project_lead: Option<UserId>,
    /// The day due dates count from.
    pub today: time::Date,
}

/// Renders every task of the template, depth-first (parents before their subtasks). Checks
/// that each `{{values.x}}` is supplied and that each rendered title and description is valid,
/// so nothing is created for a template that cannot be instantiated as asked.
pub fn plan(spec: &TemplateSpec, pc: &PlanContext) -> Result<Vec<PlannedTask>> {
    let values = pc.ctx.get("values").and_then(Value::as_object);
    for name in spec.required_values() {
        if !values.is_some_and(|v| v.contains_key(&name)) {
            return Err(Error::invalid(
                format!("values.{name}"),
                "is used by the template and must be given",
            ));
        }
    }
    let mut out = Vec::new();
    plan_task(&spec.task, "task", None, pc, &mut out)?;
    Ok(out)
}

fn plan_task(
    t: &TemplateTask,
    p: &str,
    parent: Option<usize>,
    pc: &PlanContext,
    out: &mut Vec<PlannedTask>,
) -> Result<()> {
    let title = template::render(&t.title, &pc.ctx);
    let title = TaskTitle::parse(title.trim()).map_err(|e| under(p, e.into()))?;
    let mut description = template::render(&t.description, &pc.ctx);
    if !t.checklist.is_empty() {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        for item in &t.checklist {
            description.push_str("- [ ] ");
            description.push_str(template::render(item, &pc.ctx).trim());
            description.push('\n');
        }
    }
    let description = Markdown::parse_field(&path(p, "description"), &description)?;
    let assignees = match &t.assignee {
        AssigneeRule::Nobody => BTreeSet::new(),
        AssigneeRule::Instantiator => pc.instantiator.into_iter().collect(),
        AssigneeRule::ProjectLead => pc.project_lead.into_iter().collect(),
        AssigneeRule::Users(u) => u.iter().copied().collect(),
    };
    let due_date = t.due_in_days.map(|d| pc.today + time::Duration::days(d.into()));
    out.push(PlannedTask {
        path: p.to_string(),
        parent,
        title,
        description,
        priority: t.priority,
        labels: t.labels.clone(),
        custom_fields: t.custom_fields.clone(),
        estimate: t.estimate,
        due_date,
        assignees,
    });
    let me = out.len() - 1;
    for (i, s) in t.subtasks.iter().enumerate() {
        plan_task(s, &format!("{}[{i}]", path(p, "subtasks")), Some(me), pc, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<TemplateSpec> {
        TemplateSpec::from_value(&v, &Limits::default())
    }

    #[test]
    fn errors_name_the_path() {
        let e = spec(json!({"task": {"title": "a", "subtasks": [{"title": "b"}, {"title": " "}]}}))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "task.subtasks[1].title"),
            "{e}"
        );
        let e = spec(json!({"task": {"title": "a", "priority": "hot"}})).unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "task.priority"), "{e}");
        let e = spec(json!({"task": {"title": "{{ oops"}})).unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "task.title"), "{e}");
        let e = spec(
            json!({"task": {"title": "a"}, "workflows": [{"definition": {"schema_version": 1}}]}),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field.starts_with("workflows[0].definition")),
            "{e}"
        );
        let e = spec(json!({"task": {"title": "a"}, "extra": 1})).unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "extra"), "{e}");
    }

    #[test]
    fn plans_render_placeholders_checklists_and_rules() {
        let s = spec(json!({"task": {
            "title": "Onboard {{values.name}} to {{project.key}}",
            "checklist": ["Laptop for {{values.name}}", "Accounts"],
            "assignee": "instantiator", "due_in_days": 3,
            "subtasks": [{"title": "Welcome lunch", "assignee": "project_lead"}]
        }}))
        .unwrap();
        assert_eq!(s.required_values(), BTreeSet::from(["name".to_string()]));
        let me = UserId::new();
        let lead = UserId::new();
        let today = time::macros::date!(2026 - 11 - 28);
        let pc = PlanContext {
            ctx: json!({"project": {"key": "PM"}, "values": {"name": "Grace"}}),
            instantiator: Some(me),
            project_lead: Some(lead),
            today,
        };
        let p = plan(&s, &pc).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].title.as_str(), "Onboard Grace to PM");
        assert_eq!(p[0].description.as_str(), "- [ ] Laptop for Grace\n- [ ] Accounts\n");
        assert_eq!(p[0].due_date, Some(time::macros::date!(2026 - 12 - 01)));
        assert_eq!(p[0].assignees, BTreeSet::from([me]));
        assert_eq!((p[1].parent, p[1].assignees.clone()), (Some(0), BTreeSet::from([lead])));
        let missing = PlanContext { ctx: json!({"values": {}}), ..pc };
        let e = plan(&s, &missing).unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "values.name"), "{e}");
    }
}

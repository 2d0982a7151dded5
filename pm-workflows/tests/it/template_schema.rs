//! The task template JSON Schema (`schema/task-template.schema.json`) kept in step with
//! [`TemplateSpec::from_value`]: the committed file is the generated one, documents it accepts
//! parse (and their stored form is accepted again), and every constraint the parser enforces on
//! a single value is enforced by the schema too. The whole-tree limits are the parser's alone.

use pm_workflows::Error;
use pm_workflows::definition::Limits;
use pm_workflows::task_template::{MAX_DEPTH, MAX_TASKS, TemplateSpec, json_schema};
use serde_json::{Value, json};

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/task-template.schema.json");
const EXAMPLES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/examples");

fn parse(v: &Value) -> pm_workflows::Result<TemplateSpec> {
    TemplateSpec::from_value(v, &Limits::default())
}

/// Formats are asserted: ids must be UUIDs and dates dates, as the parser demands (JSON Schema
/// 2020-12 only annotates formats unless the validator is told to check them).
fn validator() -> jsonschema::Validator {
    jsonschema::options().should_validate_formats(true).build(&json_schema()).unwrap()
}

const USER: &str = "0190f5d4-0000-7000-8000-00000000b001";
const FIELD: &str = "0190f5d4-0000-7000-8000-00000000f001";

fn schedule_workflow() -> Value {
    json!({
        "schema_version": 1, "name": "Weekly",
        "trigger": {"type": "schedule", "cron": "0 9 * * 1", "timezone": "Europe/Paris"},
        "steps": [{"type": "action", "action": {"type": "comment", "body": "Weekly check"}}]
    })
}

fn examples() -> Vec<Value> {
    let mut docs = vec![
        json!({"task": {"title": "x"}}),
        json!({"task": {"title": "  Release {{values.version}} {single brace} }} {", "description": "", "priority": "none",
               "labels": [], "custom_fields": {}, "estimate": null, "due_in_days": null,
               "checklist": [], "assignee": "nobody", "subtasks": []},
               "workflows": null}),
        json!({"task": {"title": "Numbers", "estimate": 1000, "due_in_days": 65535,
               "custom_fields": {
                   // pm-core's FieldValue ignores other keys, so the schema lets them through.
                   FIELD: {"type": "text", "value": "t", "note": "ignored"},
                   "0190f5d4-0000-7000-8000-00000000f002": {"type": "number", "value": 2.5},
                   "0190f5d4-0000-7000-8000-00000000f003": {"type": "multi_select", "value": ["a", "b"]},
                   "0190f5d4-0000-7000-8000-00000000f004": {"type": "user", "value": USER},
                   "0190f5d4-0000-7000-8000-00000000f005": {"type": "checkbox", "value": true},
                   "0190f5d4-0000-7000-8000-00000000f006": {"type": "url", "value": "https://example.com"}
               },
               "assignee": {"users": [USER]}},
               "workflows": [{"enabled": false, "definition": schedule_workflow()}]}),
    ];
    for entry in std::fs::read_dir(EXAMPLES_DIR).unwrap() {
        let path = entry.unwrap().path();
        docs.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
    }
    docs
}

#[test]
fn published_task_template_schema_matches_the_types() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("PM_BLESS").is_some() {
        std::fs::write(SCHEMA_FILE, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    // Compared as JSON values: key order depends on serde_json's `preserve_order` unification.
    let committed: Value = serde_json::from_str(&committed).unwrap_or_default();
    assert!(
        committed == json_schema(),
        "schema/task-template.schema.json is stale: rerun this test with PM_BLESS=1 and commit it"
    );
    assert_eq!(committed["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn valid_templates_satisfy_the_schema_and_parse() {
    let validator = validator();
    for doc in examples() {
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema rejects a valid template {doc}: {errors:?}");
        let spec = parse(&doc).unwrap_or_else(|e| panic!("parser rejects {doc}: {e}"));
        // The stored form (what the API returns) is a valid document that parses back the same.
        let stored = serde_json::to_value(&spec).unwrap();
        assert!(validator.is_valid(&stored), "schema rejects the stored form {stored}");
        assert_eq!(parse(&stored).unwrap(), spec);
    }
}

/// `base` with the value at `pointer` (parent must exist) set to `value`.
fn with(pointer: &str, value: Value) -> Value {
    let mut doc = examples().pop().unwrap();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match doc.pointer_mut(parent).unwrap() {
        Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        Value::Array(a) => a[key.parse::<usize>().unwrap()] = value,
        other => panic!("{parent} is {other}"),
    }
    doc
}

/// `base` without the value at `pointer`.
fn without(pointer: &str) -> Value {
    let mut doc = examples().pop().unwrap();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key).unwrap();
    doc
}

#[test]
fn invalid_templates_are_rejected_by_the_schema_and_the_parser() {
    let long = |n: usize| Value::String("a".repeat(n));
    let users = |n: usize| Value::Array((0..n).map(|_| json!(USER)).collect());
    let cases: Vec<(Value, &str)> = vec![
        // The document.
        (json!([]), "$"),
        (with("/extra", json!(1)), "extra"),
        (without("/task"), "task"),
        (with("/task", json!("Onboard")), "task"),
        // Task fields: unknown, wrong type, out of range, each checked constraint.
        (with("/task/colour", json!("red")), "task"),
        (without("/task/title"), "task"),
        (with("/task/title", json!(7)), "task.title"),
        (with("/task/title", json!("")), "task.title"),
        (with("/task/title", json!(" \t ")), "task.title"),
        (with("/task/title", long(501)), "task.title"),
        (with("/task/title", json!("Onboard {{ values.name")), "task.title"),
        (with("/task/title", json!("Onboard {{}}")), "task.title"),
        (with("/task/title", json!("Onboard {{values name}}")), "task.title"),
        (with("/task/title", json!("Onboard {{values.}}")), "task.title"),
        (with("/task/title", json!("Onboard {{{values.name}}")), "task.title"),
        (with("/task/description", json!(null)), "task.description"),
        (with("/task/description", long(100_001)), "task.description"),
        (with("/task/description", json!("see {{ a..b }}")), "task.description"),
        (with("/task/priority", json!("hot")), "task.priority"),
        (with("/task/labels", json!("bug")), "task.labels"),
        (with("/task/labels/0", json!("not-a-uuid")), "task.labels[0]"),
        (
            with("/task/custom_fields/not-a-uuid", json!({"type": "text", "value": "x"})),
            "task.custom_fields",
        ),
        (
            with(&format!("/task/custom_fields/{FIELD}"), json!({"type": "colour", "value": "x"})),
            "task.custom_fields",
        ),
        (
            with(&format!("/task/custom_fields/{FIELD}"), json!({"type": "number", "value": "x"})),
            "task.custom_fields",
        ),
        (
            with(&format!("/task/custom_fields/{FIELD}"), json!({"type": "text"})),
            "task.custom_fields",
        ),
        (
            with(
                &format!("/task/custom_fields/{FIELD}"),
                json!({"type": "date", "value": "next week"}),
            ),
            "task.custom_fields",
        ),
        (with("/task/estimate", json!(1001)), "task.estimate"),
        (with("/task/estimate", json!(-1)), "task.estimate"),
        (with("/task/estimate", json!("5")), "task.estimate"),
        (with("/task/due_in_days", json!(65_536)), "task.due_in_days"),
        (with("/task/due_in_days", json!(-1)), "task.due_in_days"),
        (
            with(
                "/task/checklist",
                Value::Array((0..101).map(|i| json!(format!("item {i}"))).collect()),
            ),
            "task.checklist",
        ),
        (with("/task/checklist/0", json!("")), "task.checklist[0]"),
        (with("/task/checklist/0", json!("   ")), "task.checklist[0]"),
        (with("/task/checklist/0", json!("two\nlines")), "task.checklist[0]"),
        (with("/task/checklist/0", long(501)), "task.checklist[0]"),
        (with("/task/checklist/0", json!("Laptop for {{values.name")), "task.checklist[0]"),
        (with("/task/checklist/0", json!(3)), "task.checklist[0]"),
        (with("/task/assignee", json!("everyone")), "task.assignee"),
        (with("/task/assignee", json!({"users": []})), "task.assignee.users"),
        (with("/task/assignee", json!({"users": users(21)})), "task.assignee.users"),
        (with("/task/assignee", json!({"users": ["nope"]})), "task.assignee"),
        (with("/task/assignee", json!({"users": [USER], "role": "x"})), "task.assignee"),
        (with("/task/subtasks/0/title", json!(" ")), "task.subtasks[0].title"),
        (
            with("/task/subtasks/1/subtasks/0/priority", json!(1)),
            "task.subtasks[1].subtasks[0].priority",
        ),
        (with("/task/subtasks/0/extra", json!(true)), "task.subtasks[0]"),
        // Attached workflows.
        (with("/workflows", json!({})), "workflows"),
        (
            with(
                "/workflows",
                Value::Array((0..21).map(|_| json!({"definition": schedule_workflow()})).collect()),
            ),
            "workflows",
        ),
        (with("/workflows/0", json!("weekly")), "workflows[0]"),
        (with("/workflows/0/name", json!("x")), "workflows[0].name"),
        (with("/workflows/0/scope", json!("org")), "workflows[0].scope"),
        (with("/workflows/0/enabled", json!("yes")), "workflows[0].enabled"),
        (without("/workflows/0/definition"), "workflows[0].definition"),
        (with("/workflows/0/definition/schema_version", json!("1")), "workflows[0].definition"),
        (
            with("/workflows/0/definition/trigger", json!({"type": "explode"})),
            "workflows[0].definition",
        ),
        (with("/workflows/0/definition/steps/0/action/body", json!(5)), "workflows[0].definition"),
        (with("/workflows/0/definition", schedule_workflow()), "workflows[0].scope"),
    ];
    let validator = validator();
    for (doc, field) in cases {
        assert!(
            !validator.is_valid(&doc),
            "schema accepts a template the parser rejects at {field}"
        );
        match parse(&doc) {
            Err(Error::Invalid { field: f, .. }) => {
                assert!(f.starts_with(field), "expected an error at {field}, got {f}")
            }
            other => panic!("expected Invalid at {field}, got {other:?}"),
        }
    }
}

/// What a JSON Schema cannot state: the limits on the whole tree, what compiling a workflow
/// finds, and integers written with a fraction (`5.0` is an integer to JSON Schema, not to
/// serde). Such a document satisfies the schema and is still refused; the docs say so, and this
/// pins the gap so that closing it updates them.
#[test]
fn what_the_schema_cannot_state_is_the_parsers_alone() {
    let validator = validator();
    let mut deep = json!({"title": "leaf"});
    for level in 0..=MAX_DEPTH {
        deep = json!({"title": format!("level {level}"), "subtasks": [deep]});
    }
    let wide: Vec<Value> = (0..MAX_TASKS).map(|i| json!({"title": format!("t{i}")})).collect();
    let cel = with("/workflows/0/definition/conditions", json!(["1 +"]));
    for (doc, field) in [
        (json!({"task": deep}), "task"),
        (json!({"task": {"title": "root", "subtasks": wide}}), "task.subtasks"),
        (cel, "workflows[0].definition.conditions[0]"),
        (with("/task/estimate", json!(5.0)), "task.estimate"),
    ] {
        assert!(validator.is_valid(&doc));
        match parse(&doc) {
            Err(Error::Invalid { field: f, .. }) => assert!(f.starts_with(field), "{f}"),
            other => panic!("expected Invalid at {field}, got {other:?}"),
        }
    }
}

//! Definitions: the published schema matches the types, examples parse, invalid documents are
//! rejected with the JSON path of the offending value, limits are their own errors.

use pm_workflows::definition::{Definition, Limits, json_schema};
use pm_workflows::{Error, Result};
use serde_json::{Value, json};

const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/workflow.schema.json");

fn parse(v: Value) -> Result<Definition> {
    Definition::parse(&serde_json::to_vec(&v).unwrap())
}

/// The "Review → approval → Done + e-mail, escalate on timeout" workflow of the issue.
fn review_approval() -> Value {
    json!({
        "schema_version": 1,
        "name": "Review needs two project managers",
        "trigger": {"type": "state_changed", "to": "0190f5d4-0000-7000-8000-000000000001"},
        "conditions": ["task.priority != 'none' || true"],
        "steps": [
            {"type": "approval", "id": "review",
             "stages": [{"approvers": {"role": "project_manager"}, "quorum": {"count": 2}}],
             "timeout_minutes": 1440,
             "on_approved": [
                 {"type": "action", "action": {"type": "transition", "to_state": "0190f5d4-0000-7000-8000-000000000002"}},
                 {"type": "action", "action": {"type": "email", "to": ["reporter"],
                     "subject": "{{task.reference}} approved", "body": "Approved: {{task.title}}"}}
             ],
             "on_timeout": [
                 {"type": "action", "action": {"type": "set_fields", "fields": {"priority": "urgent"}}},
                 {"type": "action", "action": {"type": "notify", "to": ["assignees"], "message": "Review of {{task.reference}} timed out"}}
             ]},
            {"type": "if", "condition": "task.estimate > 3",
             "then": [{"type": "action", "action": {"type": "comment", "body": "Big one"}}],
             "else": [{"type": "switch", "value": "task.priority",
                       "cases": [{"equals": "high", "steps": [{"type": "action", "action": {"type": "wait", "minutes": 5}}]}]}]},
            {"type": "for_each", "over": "subtasks",
             "steps": [{"type": "action", "action": {"type": "script", "source": "item.title + \"!\""}}]}
        ]
    })
}

#[test]
fn published_schema_matches_the_types() {
    let generated = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("PM_BLESS").is_some() {
        std::fs::write(SCHEMA_FILE, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
    // Compared as JSON values: key order depends on whether serde_json's `preserve_order` is
    // unified into the build (it is in the whole workspace, not in pm-workflows alone).
    let committed: Value = serde_json::from_str(&committed).unwrap_or_default();
    assert!(
        committed == json_schema(),
        "schema/workflow.schema.json is stale: rerun this test with PM_BLESS=1 and commit it"
    );
}

#[test]
fn valid_documents_satisfy_the_schema_and_round_trip() {
    let schema = json_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut docs = vec![review_approval()];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates")).unwrap() {
        let path = entry.unwrap().path();
        docs.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
    }
    for doc in docs {
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "schema rejects a valid document: {errors:?}");
        let def = parse(doc.clone()).expect("valid document");
        // Serialization is the stored form: it parses back to the same definition.
        let stored = serde_json::to_value(&def).unwrap();
        assert_eq!(parse(stored.clone()).unwrap(), def);
        assert!(validator.is_valid(&stored));
    }
}

fn invalid_at(v: Value) -> String {
    match parse(v) {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn errors_name_the_json_path() {
    let mut d = review_approval();
    d["steps"][1]["then"][0] =
        json!({"type": "action", "action": {"type": "transition", "to_state": 7}});
    assert_eq!(invalid_at(d), "steps[1].then[0].action.to_state");

    let mut d = review_approval();
    d["steps"][1]["else"][0]["cases"][0]["steps"][0]["action"]["minutes"] = json!(0);
    assert_eq!(invalid_at(d), "steps[1].else[0].cases[0].steps[0].action.minutes");

    let mut d = review_approval();
    d["steps"][0]["on_approved"][1]["action"]["to"] = json!([{"email": "not-an-address"}]);
    assert_eq!(invalid_at(d), "steps[0].on_approved[1].action.to[0].email");

    let mut d = review_approval();
    d["steps"][1]["condition"] = json!("task.estimate >");
    assert_eq!(invalid_at(d), "steps[1].condition");

    let mut d = review_approval();
    d["conditions"] = json!(["true", "1 +"]);
    assert_eq!(invalid_at(d), "conditions[1]");

    let mut d = review_approval();
    d["steps"][2]["steps"][0]["action"]["source"] = json!("let x = ;");
    assert_eq!(invalid_at(d), "steps[2].steps[0].action.source");

    let mut d = review_approval();
    d["steps"][0]["stages"][0]["quorum"] = json!({"percent": 150});
    assert_eq!(invalid_at(d), "steps[0].stages[0].quorum.percent");

    let mut d = review_approval();
    d["steps"][1]["then"][0]["action"]["type"] = json!("explode");
    assert_eq!(invalid_at(d), "steps[1].then[0].action.type");

    let mut d = review_approval();
    d["steps"][1]["then"][0]["action"]["colour"] = json!("red");
    assert_eq!(invalid_at(d), "steps[1].then[0].action.colour");

    let mut d = review_approval();
    d["steps"][0]["on_timeout"][0]["action"]["fields"] = json!({"reporter": "x"});
    assert_eq!(invalid_at(d), "steps[0].on_timeout[0].action.fields.reporter");

    let mut d = review_approval();
    d["trigger"] = json!({"type": "schedule", "cron": "0 9 * * *", "timezone": "Nowhere/Else"});
    assert_eq!(invalid_at(d), "trigger.timezone");

    let mut d = review_approval();
    d["trigger"] = json!({"type": "field_changed"});
    assert_eq!(invalid_at(d), "trigger.field");

    let mut d = review_approval();
    d["steps"][2]["id"] = json!("review");
    assert_eq!(invalid_at(d), "steps[2].id");

    let mut d = review_approval();
    d["schema_version"] = json!(2);
    assert_eq!(invalid_at(d), "schema_version");

    assert_eq!(invalid_at(json!([1])), "$");
    assert!(
        matches!(Definition::parse(b"{nope"), Err(Error::Invalid { field, .. }) if field == "$")
    );
}

#[test]
fn limits_are_distinct_errors() {
    let action = json!({"type": "action", "action": {"type": "comment", "body": "x"}});
    let mut d = review_approval();
    d["steps"] = Value::Array(vec![action; 201]);
    assert!(matches!(parse(d), Err(Error::LimitExceeded { limit: "components_per_workflow", .. })));

    let mut d = review_approval();
    d["options"] = json!({"max_items": 1_000_000});
    assert!(matches!(parse(d), Err(Error::LimitExceeded { limit: "items_per_execution", .. })));

    let mut d = review_approval();
    d["options"] = json!({"max_run_time_secs": 86_400});
    assert!(matches!(parse(d), Err(Error::LimitExceeded { limit: "run_time", .. })));

    let mut nested = json!({"type": "action", "action": {"type": "comment", "body": "x"}});
    for _ in 0..10 {
        nested = json!({"type": "if", "condition": "true", "then": [nested]});
    }
    let mut d = review_approval();
    d["steps"] = json!([nested]);
    assert!(matches!(parse(d), Err(Error::LimitExceeded { limit: "nesting", .. })));

    // A host may lower the limits.
    let tight = Limits { max_components: 3, ..Limits::default() };
    let d = serde_json::to_vec(&review_approval()).unwrap();
    assert!(matches!(
        Definition::parse_with(&d, &tight),
        Err(Error::LimitExceeded { limit: "components_per_workflow", .. })
    ));
}

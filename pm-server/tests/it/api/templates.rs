//! Task templates over HTTP (a real server on loopback with the workflow engine): CRUD, bad
//! input named by its JSON path, instantiation of a task tree with its workflow, and a failure
//! halfway through that leaves nothing behind. Responses are checked against the OpenAPI
//! document by `Server::call`.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Server, TEST_SECRET, org_and_project};

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let stores = pm_core::store::open(&url).await.unwrap();
    stores.admin.migrate().await.unwrap();
    let blobs = std::sync::Arc::new(pm_core::blob::FsBlobStore::new(dir.path().join("blobs")));
    let permissions = pm_server::authz::open_permissions(&url).await.unwrap();
    let state = pm_server::AppState::with(stores, permissions, TEST_SECRET, blobs);
    let engine = pm_server::workflows::open_engine(
        &url,
        state.pm.clone(),
        state.permissions.clone(),
        None,
        None,
        None,
    )
    .await
    .unwrap();
    engine.clone().spawn();
    Server::serve_state(state.with_workflows(engine), dir).await
}

async fn task_count(s: &Server, token: &str, project: &str) -> usize {
    let r = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/tasks?limit=100"),
            Some(token),
            None,
        )
        .await;
    r.ok(200)["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn task_templates_crud_and_instantiate() {
    let s = server().await;
    let (_, ada) = s.user("ada@example.com").await;
    let (stranger, stranger_token) = s.user("eve@example.com").await;
    let (org, project, states) = org_and_project(&s, &ada, "acme", "PM").await;
    let done = states.iter().find(|st| st["category"] == "completed").unwrap()["id"].clone();
    let templates = format!("/api/v1/orgs/{org}/task-templates");

    // Bad input: errors name the JSON path.
    for (body, field) in [
        (
            json!({"name": "T", "task": {"title": "x", "subtasks": [{"title": " "}]}}),
            "task.subtasks[0].title",
        ),
        (json!({"name": "T", "task": {"title": "x", "priority": "hot"}}), "task.priority"),
        (json!({"name": "T", "task": {"title": "{{ values.x"}}), "task.title"),
        (json!({"name": "", "task": {"title": "x"}}), "name"),
        (
            json!({"name": "T", "task": {"title": "x"}, "workflows": [{"definition": {"schema_version": 1, "name": "no trigger", "steps": []}}]}),
            "workflows[0].definition.trigger",
        ),
        (
            json!({"name": "T", "project_id": uuid::Uuid::now_v7(), "task": {"title": "x"}}),
            "project_id",
        ),
    ] {
        let r = s.call(Method::POST, &templates, Some(&ada), Some(body.clone())).await;
        assert_eq!(r.problem(400)["field"], field, "{body}");
    }
    let r = s.call(Method::POST, &templates, Some(&ada), Some(json!({"name": "T"}))).await;
    r.problem(400);

    let doc = json!({
        "name": "Onboarding",
        "task": {
            "title": "Onboard {{values.name}}",
            "checklist": ["Laptop", "Badge for {{values.name}}"],
            "assignee": "instantiator",
            "priority": "high",
            "subtasks": [{"title": "Accounts", "subtasks": [{"title": "VPN for {{values.name}}"}]}]
        },
        "workflows": [{"scope": "task", "definition": {
            "schema_version": 1, "name": "Onboarding done",
            "trigger": {"type": "state_changed", "to": done},
            "steps": [{"type": "action", "action": {"type": "comment", "body": "{{task.reference}} finished"}}]
        }}]
    });
    let t = s.call(Method::POST, &templates, Some(&ada), Some(doc.clone())).await.ok(201).clone();
    assert_eq!(t["task"]["checklist"][1], "Badge for {{values.name}}");
    assert_eq!(t["workflows"][0]["scope"], "task");
    s.call(Method::POST, &templates, Some(&ada), Some(doc.clone())).await.problem(409);
    let list = s.call(Method::GET, &templates, Some(&ada), None).await;
    assert_eq!(list.ok(200).as_array().unwrap().len(), 1);
    s.call(Method::GET, &templates, Some(&stranger_token), None).await.problem(403);
    let one = format!("/api/v1/task-templates/{}", t["id"].as_str().unwrap());
    s.call(Method::GET, &one, Some(&ada), None).await.ok(200);

    // Instantiate.
    let inst = format!("{one}/instantiate");
    let before = task_count(&s, &ada, &project).await;
    let r = s.call(Method::POST, &inst, Some(&ada), Some(json!({"project_id": project}))).await;
    assert_eq!(r.problem(400)["field"], "values.name");
    let r = s
        .call(
            Method::POST,
            &inst,
            Some(&ada),
            Some(json!({"project_id": project, "values": {"name": "Grace"}})),
        )
        .await;
    let made = r.ok(201).clone();
    let tasks = made["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0]["title"], "Onboard Grace");
    assert_eq!(tasks[0]["description"], "- [ ] Laptop\n- [ ] Badge for Grace\n");
    assert_eq!(tasks[0]["priority"], "high");
    assert_eq!(tasks[1]["parent_id"], tasks[0]["id"]);
    assert_eq!(
        (tasks[2]["title"].clone(), tasks[2]["parent_id"].clone()),
        (json!("VPN for Grace"), tasks[1]["id"].clone())
    );
    assert_eq!(made["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(task_count(&s, &ada, &project).await, before + 3);

    // The attached workflow comments on the instantiated task when it is done.
    let root = tasks[0]["id"].as_str().unwrap();
    let r = s
        .call(
            Method::PATCH,
            &format!("/api/v1/tasks/{root}"),
            Some(&ada),
            Some(json!({"version": tasks[0]["version"], "state_id": done})),
        )
        .await;
    r.ok(200);
    let reference = tasks[0]["reference"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    loop {
        let r =
            s.call(Method::GET, &format!("/api/v1/tasks/{root}/comments"), Some(&ada), None).await;
        let body = r.ok(200).clone();
        let items = body.get("items").cloned().unwrap_or(body);
        if items
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["body"] == json!(format!("{reference} finished"))))
        {
            break;
        }
        assert!(started.elapsed().as_secs() < 20, "the attached workflow did not comment");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A failure halfway (the last subtask's assignee is not a member) leaves nothing.
    let mut broken = doc.clone();
    broken["name"] = json!("Broken");
    broken["task"]["subtasks"][0]["subtasks"][0]["assignee"] = json!({"users": [stranger]});
    let b = s.call(Method::POST, &templates, Some(&ada), Some(broken)).await.ok(201).clone();
    let count = task_count(&s, &ada, &project).await;
    let r = s
        .call(
            Method::POST,
            &format!("/api/v1/task-templates/{}/instantiate", b["id"].as_str().unwrap()),
            Some(&ada),
            Some(json!({"project_id": project, "values": {"name": "X"}})),
        )
        .await;
    let field = r.problem(400)["field"].as_str().unwrap().to_string();
    assert!(field.starts_with("task.subtasks[0].subtasks[0]."), "{field}");
    assert_eq!(task_count(&s, &ada, &project).await, count, "the two tasks made first are gone");

    // Update (optimistic) and delete.
    let mut update: Value = doc.clone();
    update["version"] = json!(1);
    update["name"] = json!("Onboarding v2");
    s.call(Method::PUT, &one, Some(&ada), Some(update.clone())).await.ok(200);
    s.call(Method::PUT, &one, Some(&ada), Some(update)).await.problem(409);
    s.call(Method::DELETE, &one, Some(&ada), None).await.ok(204);
    s.call(Method::GET, &one, Some(&ada), None).await.problem(404);
}

const TEMPLATE_SCHEMA: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../pm-workflows/schema/task-template.schema.json");

/// The published task template schema is what the API takes: the create and update operations
/// point to it, the hand-written examples next to it are accepted as `task` + `workflows` of a
/// create body, and what the server returns for them is again valid under it.
#[tokio::test]
async fn task_template_schema_is_referenced_and_its_examples_are_accepted() {
    let schema: Value = serde_json::from_slice(&std::fs::read(TEMPLATE_SCHEMA).unwrap()).unwrap();
    let validator = jsonschema::options().should_validate_formats(true).build(&schema).unwrap();
    for (path, method) in [
        ("/api/v1/orgs/{org_id}/task-templates", "post"),
        ("/api/v1/task-templates/{template_id}", "put"),
    ] {
        let op = &super::doc()["paths"][path][method];
        let text = op["description"].as_str().unwrap_or_default();
        assert!(
            text.contains("pm-workflows/schema/task-template.schema.json"),
            "{method} {path} does not reference the schema: {op}"
        );
    }

    let s = server().await;
    let (_, ada) = s.user("ada@example.com").await;
    let (org, _, _) = org_and_project(&s, &ada, "acme", "PM").await;
    let templates = format!("/api/v1/orgs/{org}/task-templates");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pm-workflows/schema/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(validator.is_valid(&doc), "{} does not satisfy the schema", path.display());
        let mut body = doc.clone();
        body["name"] = json!(path.file_name().unwrap().to_string_lossy());
        let r = s.call(Method::POST, &templates, Some(&ada), Some(body)).await;
        let t = r.ok(201);
        let stored = json!({"task": t["task"], "workflows": t["workflows"]});
        assert!(validator.is_valid(&stored), "the stored form is not valid: {stored}");
        seen += 1;
    }
    assert!(seen > 0, "no examples in {dir}");
}

/// Both published schemas are served, without a token, as the committed files (which a
/// pm-workflows test keeps equal to the types); an unknown name is a 404 problem.
#[tokio::test]
async fn the_json_schemas_are_served_as_committed() {
    let s = server().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pm-workflows/schema");
    for (name, file) in [
        ("workflow", "workflow.schema.json"),
        ("task-template", "task-template.schema.json"),
        ("task-template.schema.json", "task-template.schema.json"),
    ] {
        let res = s.call(Method::GET, &format!("/api/v1/schemas/{name}"), None, None).await;
        assert_eq!(res.header("content-type"), Some("application/schema+json"), "{name}");
        let committed: Value =
            serde_json::from_slice(&std::fs::read(format!("{dir}/{file}")).unwrap()).unwrap();
        assert_eq!(res.ok(200), &committed, "{name}");
    }
    let res = s.call(Method::GET, "/api/v1/schemas/nope", None, None).await;
    assert_eq!(res.ok(404)["type"], "/problems/not-found");
}

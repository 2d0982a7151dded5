//! Authorization over HTTP: the default roles enforced on real routes (viewer, team member,
//! project-scoped project manager, admin), explain chains, roles/templates/assignments CRUD,
//! effective permissions, the audit log, and bad input to every authz endpoint (4xx, never 5xx).

use reqwest::Method;
use serde_json::{Value, json};

use super::{Server, org_and_project};

/// An organization with two projects, administered by Alice, and members of each default role.
struct World {
    s: Server,
    org: String,
    p1: String,
    p2: String,
    alice: String,
    viewer: (String, String),
    member: (String, String),
    pm: (String, String),
    outsider: String,
}

impl World {
    async fn new() -> World {
        let s = Server::start().await;
        let (_, alice) = s.user("alice@example.com").await;
        let (org, p1, _) = org_and_project(&s, &alice, "acme", "ONE").await;
        let p2 = s
            .call(
                Method::POST,
                &format!("/api/v1/orgs/{org}/projects"),
                Some(&alice),
                Some(json!({"key": "TWO", "name": "Second"})),
            )
            .await;
        let p2 = p2.ok(201)["id"].as_str().unwrap().to_string();
        let mut people = Vec::new();
        for (email, role) in [
            ("viewer@example.com", "guest"),
            ("tm@example.com", "member"),
            ("pm@example.com", "member"),
        ] {
            let (id, token) = s.user(email).await;
            s.call(
                Method::PUT,
                &format!("/api/v1/orgs/{org}/members/{}", id.0),
                Some(&alice),
                Some(json!({ "role": role })),
            )
            .await
            .ok(200);
            people.push((id.0.to_string(), token));
        }
        let (_, outsider) = s.user("outsider@example.com").await;
        let pm = people.pop().unwrap();
        let member = people.pop().unwrap();
        let viewer = people.pop().unwrap();
        World { s, org, p1, p2, alice, viewer, member, pm, outsider }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> super::Res {
        self.s.call(method, path, Some(token), body).await
    }

    async fn task(&self, project: &str, token: &str, body: Value) -> String {
        let res = self
            .call(Method::POST, &format!("/api/v1/projects/{project}/tasks"), token, Some(body))
            .await;
        res.ok(201)["id"].as_str().unwrap().to_string()
    }

    async fn update_task(&self, task: &str, token: &str) -> super::Res {
        let current =
            self.call(Method::GET, &format!("/api/v1/tasks/{task}"), &self.alice, None).await;
        let version = current.ok(200)["version"].clone();
        self.call(
            Method::PATCH,
            &format!("/api/v1/tasks/{task}"),
            token,
            Some(json!({"version": version, "title": "changed"})),
        )
        .await
    }

    async fn system_role(&self, name: &str) -> String {
        let roles = self
            .call(Method::GET, &format!("/api/v1/orgs/{}/roles", self.org), &self.alice, None)
            .await;
        roles
            .ok(200)
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && r["org_id"].is_null())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn grant_pm_on_p1(&self) -> String {
        let role = self.system_role("project_manager").await;
        let res = self
            .call(
                Method::POST,
                &format!("/api/v1/orgs/{}/assignments", self.org),
                &self.alice,
                Some(json!({"user_id": self.pm.0, "role_id": role, "project_id": self.p1, "reason": "runs ONE"})),
            )
            .await;
        let a = res.ok(201);
        assert_eq!(a["active"], true);
        assert_eq!(a["scope"]["kind"], "project");
        a["id"].as_str().unwrap().to_string()
    }
}

fn task_resource(w: &World, project: &str, owner: &str) -> Value {
    json!({"kind": "task", "org_id": w.org, "project_id": project, "id": null, "owner": owner, "assignees": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_roles_are_enforced_on_task_updates() {
    let w = World::new().await;
    let by_alice = w.task(&w.p1, &w.alice, json!({"title": "Alice's"})).await;
    let by_member = w.task(&w.p1, &w.member.1, json!({"title": "Member's"})).await;
    let assigned =
        w.task(&w.p1, &w.alice, json!({"title": "Assigned", "assignees": [w.member.0]})).await;
    let in_p2 = w.task(&w.p2, &w.alice, json!({"title": "Elsewhere"})).await;

    // viewer: reads, never writes.
    w.call(Method::GET, &format!("/api/v1/tasks/{by_alice}"), &w.viewer.1, None).await.ok(200);
    let denied = w.update_task(&by_alice, &w.viewer.1).await;
    let body = denied.problem(403);
    assert!(body["detail"].as_str().unwrap().contains("task.update"), "{body}");
    let create = w
        .call(
            Method::POST,
            &format!("/api/v1/projects/{}/tasks", w.p1),
            &w.viewer.1,
            Some(json!({"title": "x"})),
        )
        .await;
    create.problem(403);

    // team_member: own and assigned tasks only.
    w.update_task(&by_member, &w.member.1).await.ok(200);
    w.update_task(&assigned, &w.member.1).await.ok(200);
    w.update_task(&by_alice, &w.member.1).await.problem(403);

    // project_manager on ONE: every task of ONE and the project itself, nothing of TWO.
    w.update_task(&by_alice, &w.pm.1).await.problem(403);
    w.grant_pm_on_p1().await;
    w.update_task(&by_alice, &w.pm.1).await.ok(200);
    w.update_task(&in_p2, &w.pm.1).await.problem(403);
    w.call(
        Method::PATCH,
        &format!("/api/v1/projects/{}", w.p1),
        &w.pm.1,
        Some(json!({"version": 1, "name": "Renamed"})),
    )
    .await
    .ok(200);
    w.call(
        Method::PATCH,
        &format!("/api/v1/projects/{}", w.p2),
        &w.pm.1,
        Some(json!({"version": 1, "name": "Nope"})),
    )
    .await
    .problem(403);

    // admin: everything.
    w.update_task(&in_p2, &w.alice).await.ok(200);
    w.update_task(&by_member, &w.alice).await.ok(200);
    w.call(Method::DELETE, &format!("/api/v1/tasks/{in_p2}"), &w.alice, None).await;

    // outsider: sees nothing.
    w.call(Method::GET, &format!("/api/v1/tasks/{by_alice}"), &w.outsider, None).await.problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_chain_and_check_agrees() {
    let w = World::new().await;
    let explain = |token: String, body: Value| {
        let w = &w;
        async move { w.call(Method::POST, "/api/v1/authz/explain", &token, Some(body)).await }
    };

    // A team member updating its own task: assignment → team_member → permission → owner.
    let res = explain(
        w.member.1.clone(),
        json!({"action": "update", "resource": task_resource(&w, &w.p1, &w.member.0)}),
    )
    .await;
    let ex = res.ok(200);
    assert_eq!(ex["allowed"], true, "{ex}");
    let steps: Vec<&str> =
        ex["chain"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps.first(), Some(&"assignment"), "{ex}");
    assert!(steps.contains(&"role"), "{ex}");
    assert!(steps.contains(&"permission"), "{ex}");
    let cond = ex["chain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "condition")
        .expect("a condition step");
    assert_eq!(cond["condition"]["kind"], "owner");
    assert_eq!(cond["holds"], true);
    let role = ex["chain"].as_array().unwrap().iter().find(|s| s["step"] == "role").unwrap();
    assert_eq!(role["name"], "team_member");

    // Someone else's task: denied, with the nearest missing grant.
    let res = explain(
        w.member.1.clone(),
        json!({"action": "update", "resource": task_resource(&w, &w.p1, &w.viewer.0)}),
    )
    .await;
    let ex = res.ok(200);
    assert_eq!(ex["allowed"], false);
    assert!(ex["missing"].is_object(), "{ex}");

    // The admin's chain runs through inherited roles.
    let res = explain(
        w.alice.clone(),
        json!({"action": "read", "resource": task_resource(&w, &w.p1, &w.viewer.0)}),
    )
    .await;
    let ex = res.ok(200);
    assert_eq!(ex["allowed"], true);
    let inherited: Vec<&str> = ex["chain"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "inherited_role")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(inherited.contains(&"viewer"), "{ex}");

    // The admin may ask about the member; check agrees with explain.
    let check = w
        .call(
            Method::POST,
            "/api/v1/authz/check",
            &w.alice,
            Some(json!({"user_id": w.member.0, "action": "update", "resource": task_resource(&w, &w.p1, &w.member.0)})),
        )
        .await;
    let c = check.ok(200);
    assert_eq!(c["allowed"], true);
    assert_eq!(c["permission"], json!({"resource": "task", "action": "update"}));
    // An outsider may not ask about members.
    w.call(
        Method::POST,
        "/api/v1/authz/check",
        &w.outsider,
        Some(json!({"user_id": w.member.0, "action": "read", "resource": task_resource(&w, &w.p1, &w.member.0)})),
    )
    .await
    .problem(403);
    // Creating an organization is the server's policy, for everyone; check and explain agree.
    let create_org = json!({"action": "create", "resource": {"kind": "org", "org_id": null, "project_id": null, "id": null, "owner": null, "assignees": []}});
    let c =
        w.call(Method::POST, "/api/v1/authz/check", &w.outsider, Some(create_org.clone())).await;
    assert_eq!(c.ok(200)["allowed"], true);
    let ex = w.call(Method::POST, "/api/v1/authz/explain", &w.outsider, Some(create_org)).await;
    assert!(ex.ok(200)["summary"].as_str().unwrap().contains("policy"));
    // But about themselves, always: denied.
    let own = w
        .call(
            Method::POST,
            "/api/v1/authz/check",
            &w.outsider,
            Some(json!({"action": "read", "resource": task_resource(&w, &w.p1, &w.member.0)})),
        )
        .await;
    assert_eq!(own.ok(200)["allowed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_crud_and_templates() {
    let w = World::new().await;
    let roles_path = format!("/api/v1/orgs/{}/roles", w.org);
    let viewer_role = w.system_role("viewer").await;
    let created = w
        .call(
            Method::POST,
            &roles_path,
            &w.alice,
            Some(json!({
                "name": "triager",
                "description": "Edits any task",
                "parent_id": viewer_role,
                "grants": [{"permission": {"resource": "task", "action": "update"}}],
                "denies": [{"resource": "comment", "action": "delete"}],
            })),
        )
        .await;
    let role = created.ok(201).clone();
    assert_eq!(role["org_id"], w.org.as_str());
    assert_eq!(created.header("etag"), Some("\"v1\""));
    let id = role["id"].as_str().unwrap();
    w.call(Method::GET, &format!("/api/v1/roles/{id}"), &w.alice, None).await.ok(200);
    // Members read roles; outsiders cannot tell the role exists.
    w.call(Method::GET, &roles_path, &w.viewer.1, None).await.ok(200);
    w.call(Method::GET, &roles_path, &w.outsider, None).await.problem(404);
    w.call(Method::GET, &format!("/api/v1/roles/{id}"), &w.outsider, None).await.problem(404);
    // Duplicate name, unknown parent, unknown field, bad permission, members may not create.
    w.call(Method::POST, &roles_path, &w.alice, Some(json!({"name": "triager"})))
        .await
        .problem(409);
    let unknown = uuid::Uuid::now_v7();
    w.call(Method::POST, &roles_path, &w.alice, Some(json!({"name": "x", "parent_id": unknown})))
        .await
        .problem(400);
    w.call(Method::POST, &roles_path, &w.alice, Some(json!({"name": "x", "colour": "red"})))
        .await
        .problem(400);
    w.call(
        Method::POST,
        &roles_path,
        &w.alice,
        Some(json!({"name": "x", "grants": [{"permission": {"resource": "spaceship", "action": "fly"}}]})),
    )
    .await
    .problem(400);
    w.call(Method::POST, &roles_path, &w.alice, Some(json!({"name": "  "}))).await.problem(400);
    w.call(Method::POST, &roles_path, &w.member.1, Some(json!({"name": "mine"})))
        .await
        .problem(403);
    w.call(Method::POST, "/api/v1/orgs/not-a-uuid/roles", &w.alice, Some(json!({"name": "x"})))
        .await
        .problem(400);

    // Update with If-Match; a stale one is 412, none is 428; a cycle is 400.
    let path = format!("/api/v1/roles/{id}");
    let updated =
        w.s.call_with(
            Method::PATCH,
            &path,
            Some(&w.alice),
            Some(json!({"description": "Triage"})),
            &[("if-match", "\"v1\"")],
        )
        .await;
    assert_eq!(updated.ok(200)["version"], 2);
    w.s.call_with(
        Method::PATCH,
        &path,
        Some(&w.alice),
        Some(json!({"description": "x"})),
        &[("if-match", "\"v1\"")],
    )
    .await
    .problem(412);
    w.call(Method::PATCH, &path, &w.alice, Some(json!({"description": "x"}))).await.problem(428);
    let child = w
        .call(Method::POST, &roles_path, &w.alice, Some(json!({"name": "child", "parent_id": id})))
        .await;
    let child = child.ok(201)["id"].as_str().unwrap().to_string();
    let cycle = w
        .call(Method::PATCH, &path, &w.alice, Some(json!({"version": 2, "parent_id": child})))
        .await;
    assert_eq!(cycle.problem(400)["type"], "/problems/inheritance-cycle");
    w.call(Method::PATCH, &path, &w.member.1, Some(json!({"version": 2, "name": "mine"})))
        .await
        .problem(403);
    w.call(Method::PATCH, "/api/v1/roles/nope", &w.alice, Some(json!({"version": 2})))
        .await
        .problem(400);

    // Delete: in use (inherited) is 409; then both go.
    w.call(Method::DELETE, &path, &w.alice, None).await.problem(409);
    w.call(Method::DELETE, &format!("/api/v1/roles/{child}"), &w.alice, None).await.ok(204);
    w.call(Method::DELETE, &path, &w.member.1, None).await.problem(403);
    w.call(Method::DELETE, &path, &w.alice, None).await.ok(204);
    w.call(Method::DELETE, &path, &w.alice, None).await.problem(404);
    w.call(Method::DELETE, "/api/v1/roles/nope", &w.alice, None).await.problem(400);

    // Templates: listed, applied once per organization.
    let templates = w.call(Method::GET, "/api/v1/role-templates", &w.viewer.1, None).await;
    let names: Vec<&str> =
        templates.ok(200).as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for n in ["viewer", "team_member", "project_manager", "admin"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let apply = format!("/api/v1/orgs/{}/role-templates/team_member/apply", w.org);
    let applied = w.call(Method::POST, &apply, &w.alice, None).await;
    let applied = applied.ok(201);
    assert_eq!(applied["name"], "team_member");
    assert_eq!(applied["org_id"], w.org.as_str());
    w.call(Method::POST, &apply, &w.alice, None).await.problem(409);
    w.call(Method::POST, &apply, &w.member.1, None).await.problem(403);
    w.call(
        Method::POST,
        &format!("/api/v1/orgs/{}/role-templates/nope/apply", w.org),
        &w.alice,
        None,
    )
    .await
    .problem(404);
    w.call(Method::POST, "/api/v1/orgs/x/role-templates/viewer/apply", &w.alice, None)
        .await
        .problem(400);

    // The catalogue.
    let perms = w.call(Method::GET, "/api/v1/permissions", &w.viewer.1, None).await;
    assert_eq!(perms.ok(200).as_array().unwrap().len(), 21);
    w.s.call(Method::GET, "/api/v1/permissions", None, None).await.problem(401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_grant_revoke_list_with_validity() {
    let w = World::new().await;
    let path = format!("/api/v1/orgs/{}/assignments", w.org);
    let a = w.grant_pm_on_p1().await;
    let viewer_role = w.system_role("viewer").await;

    // A grant that ended in the past is listed, inactive, and gives nothing.
    let expired = w
        .call(
            Method::POST,
            &path,
            &w.alice,
            Some(json!({"user_id": w.viewer.0, "role_id": w.system_role("admin").await,
                        "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2020-02-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(expired.ok(201)["active"], false);
    let mine = w.call(Method::GET, &format!("{path}?user={}", w.viewer.0), &w.viewer.1, None).await;
    let mine = mine.ok(200).as_array().unwrap().clone();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter().any(|a| a["active"] == false && a["valid_until"] == "2020-02-01T00:00:00Z")
    );
    let project_only =
        w.call(Method::GET, &format!("{path}?project={}", w.p1), &w.alice, None).await;
    assert_eq!(project_only.ok(200).as_array().unwrap().len(), 1);

    // Effective permissions: the PM manages ONE, only reads at the org.
    let eff = |user: &str, q: &str| format!("/api/v1/orgs/{}/users/{user}/permissions{q}", w.org);
    let at_p1 =
        w.call(Method::GET, &eff(&w.pm.0, &format!("?project={}", w.p1)), &w.pm.1, None).await;
    let at_p1 = at_p1.ok(200);
    let update = at_p1["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["permission"] == json!({"resource": "task", "action": "update"}))
        .unwrap();
    assert_eq!(update["conditions"], json!([]), "{at_p1}");
    assert!(update["via"].as_array().unwrap().contains(&json!("project_manager")));
    let at_org = w.call(Method::GET, &eff(&w.member.0, ""), &w.alice, None).await;
    let conds = at_org.ok(200)["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["permission"] == json!({"resource": "task", "action": "update"}))
        .unwrap()["conditions"]
        .clone();
    assert_eq!(conds.as_array().unwrap().len(), 2, "owner or assignee: {conds}");
    w.call(Method::GET, &eff(&w.member.0, ""), &w.outsider, None).await.problem(404);
    w.call(
        Method::GET,
        &eff(&w.member.0, &format!("?project={}", uuid::Uuid::now_v7())),
        &w.alice,
        None,
    )
    .await
    .problem(400);
    w.call(Method::GET, &eff("nope", ""), &w.alice, None).await.problem(400);
    w.call(Method::GET, &eff(&w.member.0, "?project=nope"), &w.alice, None).await.problem(400);

    // Bad grants: not a member, empty window, unknown role, project of another org, bad body.
    let (outsider_id, _) = w.s.user("other@example.com").await;
    let bad = [
        json!({"user_id": outsider_id.0, "role_id": viewer_role}),
        json!({"user_id": w.viewer.0, "role_id": viewer_role, "valid_from": "2030-01-02T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"}),
        json!({"user_id": w.viewer.0, "role_id": uuid::Uuid::now_v7()}),
        json!({"user_id": w.viewer.0, "role_id": viewer_role, "project_id": uuid::Uuid::now_v7()}),
        json!({"user_id": w.viewer.0, "role_id": viewer_role, "valid_until": "tomorrow"}),
        json!({"user_id": w.viewer.0}),
        json!({"user_id": w.viewer.0, "role_id": viewer_role, "scope": "global"}),
    ];
    for body in bad {
        w.call(Method::POST, &path, &w.alice, Some(body.clone())).await.problem(400);
    }
    // Only role managers grant; outsiders learn nothing about the organization.
    let body = json!({"user_id": w.viewer.0, "role_id": viewer_role});
    w.call(Method::POST, &path, &w.member.1, Some(body.clone())).await.problem(403);
    w.call(Method::POST, &path, &w.outsider, Some(body)).await.problem(403);
    w.call(Method::GET, &path, &w.outsider, None).await.problem(404);
    w.call(Method::GET, &format!("{path}?user=nope"), &w.alice, None).await.problem(400);

    // Revoke: the next request sees it.
    let by_alice = w.task(&w.p1, &w.alice, json!({"title": "Alice's"})).await;
    w.update_task(&by_alice, &w.pm.1).await.ok(200);
    w.call(Method::DELETE, &format!("/api/v1/assignments/{a}"), &w.member.1, None)
        .await
        .problem(403);
    w.call(Method::DELETE, &format!("/api/v1/assignments/{a}"), &w.outsider, None)
        .await
        .problem(404);
    w.call(Method::DELETE, &format!("/api/v1/assignments/{a}?reason=done"), &w.alice, None)
        .await
        .ok(204);
    w.update_task(&by_alice, &w.pm.1).await.problem(403);
    w.call(Method::DELETE, &format!("/api/v1/assignments/{a}"), &w.alice, None).await.problem(404);
    w.call(Method::DELETE, "/api/v1/assignments/nope", &w.alice, None).await.problem(400);
    let long = "x".repeat(1001);
    w.call(Method::DELETE, &format!("/api/v1/assignments/{a}?reason={long}"), &w.alice, None)
        .await
        .problem(400);

    // Removing a member revokes their grants: they no longer see the organization's tasks.
    w.call(Method::GET, &format!("/api/v1/tasks/{by_alice}"), &w.member.1, None).await.ok(200);
    w.call(
        Method::DELETE,
        &format!("/api/v1/orgs/{}/members/{}", w.org, w.member.0),
        &w.alice,
        None,
    )
    .await
    .ok(204);
    w.call(Method::GET, &format!("/api/v1/tasks/{by_alice}"), &w.member.1, None).await.problem(404);
    // And a role change replaces the membership grant: the viewer, promoted, edits.
    w.call(
        Method::PUT,
        &format!("/api/v1/orgs/{}/members/{}", w.org, w.viewer.0),
        &w.alice,
        Some(json!({"role": "admin"})),
    )
    .await
    .ok(200);
    w.update_task(&by_alice, &w.viewer.1).await.ok(200);
    let held = w.call(Method::GET, &format!("{path}?user={}", w.viewer.0), &w.alice, None).await;
    let active: Vec<Value> =
        held.ok(200).as_array().unwrap().iter().filter(|a| a["active"] == true).cloned().collect();
    assert_eq!(active.len(), 1, "one membership grant: {active:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_lists_the_org_and_verifies() {
    let w = World::new().await;
    w.grant_pm_on_p1().await;
    let audit = format!("/api/v1/orgs/{}/audit", w.org);
    let page = w.call(Method::GET, &audit, &w.alice, None).await;
    let page = page.ok(200);
    let actions: Vec<&str> =
        page["records"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    // Alice's admin grant, three membership grants, the PM grant.
    assert_eq!(actions.iter().filter(|a| **a == "assignment.grant").count(), 5, "{actions:?}");
    assert!(page["next_after"].is_null());
    // Paging.
    let first = w.call(Method::GET, &format!("{audit}?limit=2"), &w.alice, None).await;
    let first = first.ok(200);
    assert_eq!(first["records"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_i64().unwrap();
    let rest = w.call(Method::GET, &format!("{audit}?after={after}"), &w.alice, None).await;
    assert_eq!(rest.ok(200)["records"].as_array().unwrap().len(), 3);
    // Another organization's audit is not mixed in.
    let (_, bob) = w.s.user("bob@example.com").await;
    let (bob_org, _, _) = org_and_project(&w.s, &bob, "bob-co", "BOB").await;
    let bobs = w.call(Method::GET, &format!("/api/v1/orgs/{bob_org}/audit"), &bob, None).await;
    assert_eq!(bobs.ok(200)["records"].as_array().unwrap().len(), 1);

    let verify = w.call(Method::GET, &format!("{audit}/verify"), &w.alice, None).await;
    let report = verify.ok(200);
    assert_eq!(report["valid"], true, "{report}");
    assert!(report["records"].as_u64().unwrap() > 5);
    assert_eq!(report["head"].as_str().unwrap().len(), 64);

    // Members without role.manage: 403; outsiders: 404; bad input: 400.
    w.call(Method::GET, &audit, &w.viewer.1, None).await.problem(403);
    w.call(Method::GET, &format!("{audit}/verify"), &w.pm.1, None).await.problem(403);
    w.call(Method::GET, &audit, &w.outsider, None).await.problem(404);
    w.call(Method::GET, &format!("{audit}/verify"), &w.outsider, None).await.problem(404);
    w.call(Method::GET, &format!("{audit}?limit=0"), &w.alice, None).await.problem(400);
    w.call(Method::GET, &format!("{audit}?after=x"), &w.alice, None).await.problem(400);
    w.call(Method::GET, "/api/v1/orgs/nope/audit/verify", &w.alice, None).await.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_explain_reject_bad_bodies() {
    let w = World::new().await;
    for path in ["/api/v1/authz/check", "/api/v1/authz/explain"] {
        let bad = [
            json!({"action": "fly", "resource": task_resource(&w, &w.p1, &w.member.0)}),
            json!({"action": "read"}),
            json!({"action": "read", "resource": {"kind": "spaceship"}}),
            json!({"action": "read", "resource": task_resource(&w, &w.p1, &w.member.0), "extra": 1}),
            json!({"user_id": "nope", "action": "read", "resource": task_resource(&w, &w.p1, &w.member.0)}),
        ];
        for body in bad {
            w.call(Method::POST, path, &w.alice, Some(body)).await.problem(400);
        }
        let res =
            w.s.http
                .post(format!("{}{path}", w.s.base))
                .bearer_auth(&w.alice)
                .body("{}")
                .send()
                .await
                .unwrap();
        assert_eq!(res.status().as_u16(), 415);
        w.s.call(Method::POST, path, None, Some(json!({}))).await.problem(401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routes_are_guarded_by_require() {
    use axum::extract::State;
    use pm_core::authz::{Action, Resource, ResourceKind};
    use pm_core::id::OrgId;
    use pm_server::AppState;
    use pm_server::auth::Authenticated;
    use pm_server::authz::require;
    use pm_server::error::ApiError;
    use pm_server::extract::Path;

    async fn export(
        State(state): State<AppState>,
        who: Authenticated,
        Path(org): Path<uuid::Uuid>,
    ) -> Result<axum::Json<&'static str>, ApiError> {
        let resource = Resource::new(ResourceKind::Org, Some(OrgId(org)), None);
        require(&state, &who, Action::Manage, &resource).await?;
        Ok(axum::Json("exported"))
    }

    let w = World::new().await;
    let host = axum::Router::new()
        .route("/host/orgs/{org}/export", axum::routing::get(export))
        .with_state(w.s.state.clone());
    let router = pm_server::app(w.s.state.clone()).merge(host);
    let get = |token: &str| {
        axum::http::Request::get(format!("/host/orgs/{}/export", w.org))
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let ok = crate::send(router.clone(), get(&w.alice)).await;
    assert_eq!(ok.status.as_u16(), 200);
    assert_eq!(ok.body, "exported");
    let denied = crate::send(router, get(&w.viewer.1)).await;
    let body = denied.assert_problem(axum::http::StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("org.manage"), "{body}");
}

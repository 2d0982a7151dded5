//! Hostile input: every class gets the right 4xx problem+json and never a 5xx; a fuzz pass throws
//! random bodies, paths and headers at every documented operation.

use reqwest::Method;
use serde_json::{Value, json};

use super::{Server, doc, org_and_project};

#[tokio::test]
async fn each_class_of_bad_input_gets_the_right_problem() {
    let s = Server::start().await;
    let (_, token) = s.user("hostile@example.com").await;
    let t = Some(token.as_str());
    let (_, project, _) = org_and_project(&s, &token, "hostile", "HO").await;
    let tasks = format!("{}/api/v1/projects/{project}/tasks", s.base);
    let post_raw = |body: &'static str, ct: &'static str| {
        let req = s.http.post(&tasks).bearer_auth(&token).header("content-type", ct).body(body);
        async move { super::to_res(req.send().await.unwrap()).await }
    };
    // Malformed JSON.
    assert_eq!(
        post_raw("{\"title\": ", "application/json").await.problem(400)["type"],
        "/problems/malformed-json"
    );
    assert_eq!(
        post_raw("{\"title\": \"x\"} trailing", "application/json").await.problem(400)["type"],
        "/problems/malformed-json"
    );
    // Wrong types, named.
    let wrong = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": 5})),
        )
        .await;
    assert_eq!(wrong.problem(400)["field"], "title");
    let wrong = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "x", "estimate": -1})),
        )
        .await;
    assert_eq!(wrong.problem(400)["field"], "estimate");
    let wrong = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "x", "assignees": ["nope"]})),
        )
        .await;
    assert_eq!(wrong.problem(400)["field"], "assignees[0]");
    let invalid = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "   "})),
        )
        .await;
    assert_eq!(invalid.problem(400)["field"], "title");
    // Unknown fields.
    let unknown = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            t,
            Some(json!({"title": "x", "colour": "red"})),
        )
        .await;
    assert!(unknown.problem(400)["detail"].as_str().unwrap().contains("colour"));
    // Bad UUIDs in paths and queries.
    s.call(Method::GET, "/api/v1/tasks/not-a-uuid", t, None).await.problem(400);
    let q =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks?state=zzz"), t, None).await;
    assert_eq!(q.problem(400)["field"], "state");
    let q =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks?bogus=1"), t, None).await;
    q.problem(400);
    let q =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks?limit=1000"), t, None).await;
    assert_eq!(q.problem(400)["field"], "limit");
    let q =
        s.call(Method::GET, &format!("/api/v1/projects/{project}/tasks?cursor=%%%"), t, None).await;
    q.problem(400);
    // Oversize bodies.
    let big = "x".repeat(3 * 1024 * 1024);
    let res = s
        .http
        .post(&tasks)
        .bearer_auth(&token)
        .json(&json!({"title": "x", "description": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(super::to_res(res).await.problem(413)["status"], 413);
    // Missing, malformed and expired tokens.
    let none = s.call(Method::GET, "/api/v1/orgs", None, None).await;
    none.problem(401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    s.call(Method::GET, "/api/v1/orgs", Some("garbage"), None).await.problem(401);
    let res = s
        .http
        .get(format!("{}/api/v1/orgs", s.base))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    super::to_res(res).await.problem(401);
    let expired = expired_token(&s);
    let res = s.call(Method::GET, "/api/v1/orgs", Some(&expired), None).await;
    assert!(res.problem(401)["detail"].as_str().unwrap().contains("expired"));
    // Wrong content type.
    assert_eq!(post_raw("{\"title\":\"x\"}", "text/plain").await.problem(415)["status"], 415);
    let res =
        s.http.post(&tasks).bearer_auth(&token).body("{\"title\":\"x\"}").send().await.unwrap();
    super::to_res(res).await.problem(415);
}

fn expired_token(_s: &Server) -> String {
    // Signed with the server's key, but expired a minute ago (beyond the 5 s leeway).
    let now = jsonwebtoken::get_current_timestamp();
    let claims = pm_server::auth::Claims {
        sub: uuid::Uuid::now_v7(),
        exp: now - 60,
        iat: now - 120,
        scope: pm_server::auth::Scope::Write,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(super::TEST_SECRET),
    )
    .unwrap()
}

/// A tiny deterministic generator, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.next() % if depth > 2 { 6 } else { 8 } {
        0 => Value::Null,
        1 => json!(rng.next().is_multiple_of(2)),
        2 => json!(rng.next() as i64),
        3 => json!(f64::from_bits(rng.next()).to_string()),
        4 => json!(*rng.pick(&[
            "",
            "x",
            "   ",
            "0190a3c0-0000-7000-8000-000000000000",
            "2030-01-01",
            "urgent",
            "blocks",
            "#ff0000",
            "\u{0}",
            "ü💥",
            "-1",
            "PM"
        ])),
        5 => json!("a".repeat((rng.next() % 600) as usize)),
        6 => Value::Array((0..rng.next() % 4).map(|_| random_value(rng, depth + 1)).collect()),
        _ => {
            let keys = [
                "title",
                "name",
                "slug",
                "key",
                "state_id",
                "priority",
                "version",
                "body",
                "minutes",
                "lat",
                "items",
                "changes",
                "role",
                "kind",
                "to_task",
                "field_type",
                "custom_fields",
                "due_date",
                "assignees",
                "zzz",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.next() % 5 {
                m.insert(rng.pick(&keys).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Random bodies, path parameters, query strings and content types at every documented operation:
/// never a 5xx, and every error is problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_every_operation_never_5xx() {
    let s = Server::start().await;
    let (_, token) = s.user("fuzz@example.com").await;
    let (org, project, states) = org_and_project(&s, &token, "fuzz", "FZ").await;
    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&token),
            Some(json!({"title": "target"})),
        )
        .await;
    let task = task.ok(201)["id"].as_str().unwrap().to_string();
    let state = states[0]["id"].as_str().unwrap().to_string();
    let real_ids = [org.as_str(), project.as_str(), task.as_str(), state.as_str()];
    let junk =
        ["0190a3c0-0000-7000-8000-000000000000", "x", "%00", "..", "-1", "PM-1", "blocks", "💥"];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let paths = doc()["paths"].as_object().unwrap();
    let mut requests = 0;
    for _round in 0..8 {
        for (template, item) in paths {
            for method in item.as_object().unwrap().keys() {
                let path: String = template
                    .split('/')
                    .map(|seg| {
                        if seg.starts_with('{') {
                            if rng.next().is_multiple_of(2) {
                                rng.pick(&real_ids).to_string()
                            } else {
                                rng.pick(&junk).to_string()
                            }
                        } else {
                            seg.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let query = *rng.pick(&[
                    "",
                    "?limit=0",
                    "?limit=abc",
                    "?cursor=eyJ9",
                    "?sort=-nope",
                    "?q=%22%27%3B--",
                    "?archived=maybe",
                    "?before=-5",
                    "?parent=none&due_from=2030-13-01",
                ]);
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let body = random_value(&mut rng, 0);
                let ct = *rng.pick(&[
                    "application/json",
                    "application/json",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                ]);
                let mut req = s
                    .http
                    .request(m.clone(), format!("{}{}{}", s.base, path, query))
                    .header("content-type", ct);
                if !rng.next().is_multiple_of(8) {
                    req = req.bearer_auth(&token);
                }
                if rng.next().is_multiple_of(3) {
                    req = req.header("if-match", *rng.pick(&["\"v1\"", "\"v999\"", "nope", "*"]));
                }
                let res = super::to_res(req.body(body.to_string()).send().await.unwrap()).await;
                requests += 1;
                assert!(
                    res.status.as_u16() < 500,
                    "{method} {path}{query} with {body} → {}: {}",
                    res.status,
                    res.body
                );
                if res.status.is_client_error() {
                    assert_eq!(
                        res.header("content-type"),
                        Some("application/problem+json"),
                        "{method} {path}{query}: {:?}",
                        res.body
                    );
                }
            }
        }
    }
    assert!(requests > 300);
}

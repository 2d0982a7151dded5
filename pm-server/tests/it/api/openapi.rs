//! The OpenAPI document: every response the tests see is validated against it, every documented
//! operation is served by the router, and there are as many as the API promises.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::Method;
use serde_json::{Value, json};

use super::{Res, Server, doc};

/// Finds the operation documented for `method path` (path templates match any segment).
fn operation(method: &Method, path: &str) -> Option<(String, &'static Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let paths = doc()["paths"].as_object()?;
    for (template, item) in paths {
        let tsegs: Vec<&str> = template.trim_end_matches('/').split('/').collect();
        let matches = tsegs.len() == segs.len()
            && tsegs
                .iter()
                .zip(&segs)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s);
        if matches && let Some(op) = item.get(method.as_str().to_lowercase()) {
            return Some((template.clone(), op));
        }
    }
    None
}

type Validators = Mutex<HashMap<(String, String, u16), Option<Arc<jsonschema::Validator>>>>;

/// Validates a response body against the documented schema for its status. Panics (failing the
/// test) when the operation or the status is undocumented, or the body does not match.
pub fn validate(method: &Method, path: &str, res: &Res) {
    let Some((template, op)) = operation(method, path) else {
        // Routes outside the API (health, docs) are not in the document.
        assert!(
            !path.starts_with("/api/v1/") || path.starts_with("/api/v1/openapi"),
            "undocumented operation {method} {path}"
        );
        return;
    };
    let status = res.status.as_u16();
    let key = (method.to_string(), template.clone(), status);
    static CACHE: OnceLock<Validators> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let validator = {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| {
                let responses = &op["responses"];
                let response =
                    responses.get(status.to_string()).or_else(|| responses.get("default"));
                let response = response.unwrap_or_else(|| {
                    panic!("{method} {template} does not document status {status}: {}", res.body)
                });
                let content = response.get("content")?;
                let schema = content
                    .get("application/json")
                    .or_else(|| content.get("application/problem+json"))
                    .and_then(|c| c.get("schema"))?;
                let mut root = schema.clone();
                if let Value::Object(m) = &mut root {
                    m.insert("components".into(), doc()["components"].clone());
                } else {
                    root = json!({"allOf": [schema], "components": doc()["components"]});
                }
                Some(Arc::new(
                    jsonschema::validator_for(&root).expect("documented schema compiles"),
                ))
            })
            .clone()
    };
    let Some(validator) = validator else { return };
    let ct = res.header("content-type").unwrap_or("");
    if !(ct.starts_with("application/json") || ct.starts_with("application/problem+json")) {
        return;
    }
    let errors: Vec<String> = validator
        .iter_errors(&res.body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} → {status} does not match its documented schema: {errors:?}\nbody: {}",
        res.body
    );
}

#[test]
fn the_document_lists_at_least_45_operations_with_errors_and_security() {
    let paths = doc()["paths"].as_object().unwrap();
    let mut ops = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            ops += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('4')),
                "{method} {path} documents no error response"
            );
            // The OAuth callback is a browser redirect from the provider, authenticated by its
            // single-use `state` parameter; the JSON Schemas describe formats, like the OpenAPI
            // document itself.
            let public = path.starts_with("/api/v1/auth/")
                || path == "/api/v1/oauth/callback"
                || path.starts_with("/api/v1/schemas/");
            if !public {
                assert!(
                    op.get("security").is_some(),
                    "{method} {path} has no security requirement"
                );
                assert!(responses.contains_key("401"), "{method} {path} does not document 401");
            }
        }
    }
    assert!(ops >= 45, "only {ops} operations documented");
    assert_eq!(doc()["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
    assert!(doc()["components"]["securitySchemes"]["bearer"].is_object());
}

/// Every documented operation is routed: requesting it never hits the router's "no route" or
/// "method not allowed" fallbacks.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let s = Server::start().await;
    let (_, token) = s.user("router@example.com").await;
    let paths = doc()["paths"].as_object().unwrap();
    let id = "0190a3c0-0000-7000-8000-000000000000";
    for (template, item) in paths {
        let path: String = template
            .split('/')
            .map(|seg| {
                if seg == "{kind}" {
                    "blocks"
                } else if seg.starts_with('{') {
                    id
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = s
                .http
                .request(m.clone(), format!("{}{}", s.base, path))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let res = super::to_res(res).await;
            let routed = !(res.status == 405
                || (res.status == 404 && res.body["detail"] == "no resource at this path"));
            assert!(routed, "{method} {template} is documented but not routed ({})", res.status);
            assert!(res.status.as_u16() < 500, "{method} {path} → {}: {}", res.status, res.body);
        }
    }
}

#[tokio::test]
async fn openapi_json_and_docs_are_served() {
    let s = Server::start().await;
    let res = s.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(res.ok(200)["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
    assert_eq!(&res.body, doc(), "served document equals the generated one");
    let ui = s.http.get(format!("{}/docs/", s.base)).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    let html = ui.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
}

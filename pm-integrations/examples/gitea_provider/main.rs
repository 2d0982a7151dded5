//! A Gitea issues provider written against the `Provider` trait, run against a mock Gitea.
//!
//! Shows what an integration author implements (see `provider.rs`, the starting point to copy)
//! and how the pieces are used: registering the provider, verifying and parsing a signed
//! webhook the way pm-server's inbound endpoint does, pulling issues, creating and updating one,
//! and mapping Gitea states onto pm's. The "Gitea" is a wiremock server on loopback shaped like
//! Gitea's REST API, so this runs offline:
//!
//! ```text
//! cargo run -p pm-integrations --example gitea_provider
//! ```

mod provider;

use std::sync::Arc;

use pm_integrations::crypto::Secret;
use pm_integrations::provider::{ProviderContext, ProviderKey};
use pm_integrations::providers::Registry;
use pm_integrations::sync::Snapshot;
use pm_integrations::webhook::InboundRequest;
use pm_integrations::webhook::inbound::hmac_sha256_hex;
use provider::{GITEA_DELIVERY, GITEA_EVENT, GITEA_SIGNATURE, Gitea};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn issue(n: i64, title: &str, state: &str) -> Value {
    json!({
        "number": n, "title": title, "body": format!("Body of {title}"), "state": state,
        "due_date": null, "labels": [{"name": "bug"}],
        "html_url": format!("https://gitea.example/octo/app/issues/{n}"),
        "updated_at": "2026-01-02T03:04:05Z"
    })
}

/// A mock Gitea with one repository, `octo/app`, holding two issues.
async fn mock_gitea() -> MockServer {
    let gitea = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/octo/app/issues"))
        .and(query_param("type", "issues"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            issue(1, "Login fails on Safari", "open"),
            issue(2, "Dark mode", "closed"),
        ])))
        .mount(&gitea)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/repos/octo/app/issues"))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(3, "Export to CSV", "open")))
        .mount(&gitea)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v1/repos/octo/app/issues/1"))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(
            1,
            "Login fails on Safari 17",
            "closed",
        )))
        .mount(&gitea)
        .await;
    gitea
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Register it next to the built-ins; pm-server looks providers up by key.
    let mut registry = Registry::default();
    registry.register(Arc::new(Gitea));
    let gitea = registry.get(&ProviderKey::parse("gitea")?).expect("registered");
    let info = gitea.info();
    println!("provider: {} ({}), can {:?}", info.name, info.key, info.capabilities);
    let oauth = gitea.oauth().expect("Gitea connects with OAuth");
    println!("oauth: authorize at {}, scopes {:?}", oauth.authorize_url, oauth.scopes);

    // 2. A webhook as Gitea sends it: verified on the raw bytes, deduplicated by delivery id,
    //    parsed (later, from the queue).
    let secret = b"webhook-secret-from-the-integration";
    let body = json!({
        "action": "edited", "number": 1, "issue": issue(1, "Login fails on Safari", "open"),
        "repository": {"full_name": "octo/app"}
    })
    .to_string();
    let req = InboundRequest::new(body.clone())
        .header(GITEA_SIGNATURE, hmac_sha256_hex(secret, body.as_bytes()))
        .header(GITEA_DELIVERY, "5f1c1a2e-0000-4000-8000-000000000001")
        .header(GITEA_EVENT, "issues");
    let now = time::OffsetDateTime::now_utc();
    gitea.verify(secret, &req, now)?;
    println!("webhook: signature verified, delivery {}", gitea.delivery_id(&req)?);
    for e in gitea.parse(&req)? {
        println!("webhook: {} on {:?}, title {}", e.kind, e.external_id, e.fields["title"]);
    }
    let forged = InboundRequest::new(body.replace("Safari", "Chrome"))
        .header(GITEA_SIGNATURE, hmac_sha256_hex(secret, body.as_bytes()));
    println!(
        "webhook: a modified body is refused: {}",
        gitea.verify(secret, &forged, now).unwrap_err()
    );

    // 3. Pull and push against the (mock) API.
    let server = mock_gitea().await;
    let ctx = ProviderContext {
        base_url: server.uri(),
        access_token: Some(Secret::new("gitea-oauth-access-token")),
        config: json!({"repository": "octo/app"}),
        pinned: None,
    };
    let mappings = gitea.default_mappings();
    for item in gitea.pull(&ctx, None).await? {
        let state = item.fields["state"].as_str().unwrap_or_default();
        println!(
            "pulled {}: {} [{} → pm {}]",
            item.external_id,
            item.fields["title"],
            state,
            mappings.local_state(state).unwrap_or("?")
        );
    }
    let mut new = Snapshot::new();
    new.insert("title".into(), json!("Export to CSV"));
    new.insert("description".into(), json!("As a PM I want a CSV export"));
    let created = gitea.push(&ctx, None, &new).await?;
    println!("pushed new issue: {} at {:?}", created.external_id, created.url);
    let mut edit = Snapshot::new();
    edit.insert("title".into(), json!("Login fails on Safari 17"));
    edit.insert("state".into(), json!(mappings.remote_state("completed").unwrap_or("closed")));
    let updated = gitea.push(&ctx, Some("octo/app#1"), &edit).await?;
    println!("pushed update: {} is now {}", updated.external_id, updated.fields["state"]);
    println!(
        "{} requests reached the mock Gitea",
        server.received_requests().await.unwrap_or_default().len()
    );
    Ok(())
}

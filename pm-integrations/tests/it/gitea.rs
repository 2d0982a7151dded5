//! The example Gitea provider (`examples/gitea_provider/provider.rs`, compiled here as a module)
//! against a wiremock server shaped like Gitea's API: webhook verification (and its failures),
//! parsing, pulling every page, creating (closing after create when asked) and updating issues
//! with the mapped fields.

#[path = "../../examples/gitea_provider/provider.rs"]
mod provider;

use pm_integrations::crypto::Secret;
use pm_integrations::provider::{Provider, ProviderContext};
use pm_integrations::sync::Snapshot;
use pm_integrations::webhook::inbound::hmac_sha256_hex;
use pm_integrations::webhook::{InboundRequest, SignatureError};
use provider::{GITEA_DELIVERY, GITEA_EVENT, GITEA_SIGNATURE, Gitea};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn issue(n: i64, state: &str) -> Value {
    json!({"number": n, "title": format!("Issue {n}"), "body": "b", "state": state,
           "due_date": "2026-03-01T00:00:00Z", "labels": [{"name": "bug"}],
           "html_url": format!("https://gitea.example/octo/app/issues/{n}"),
           "updated_at": "2026-01-02T03:04:05Z"})
}

fn ctx(server: &MockServer) -> ProviderContext {
    ProviderContext {
        base_url: server.uri(),
        access_token: Some(Secret::new("gitea-token")),
        config: json!({"repository": "octo/app"}),
        pinned: None,
    }
}

#[test]
fn webhooks_verify_on_raw_bytes_and_parse() {
    let body = json!({"action": "closed", "issue": issue(7, "closed"),
                      "repository": {"full_name": "octo/app"}})
    .to_string();
    let signed = |b: &str, sig: String| {
        InboundRequest::new(b.to_owned())
            .header(GITEA_SIGNATURE, sig)
            .header(GITEA_DELIVERY, "d-1")
            .header(GITEA_EVENT, "issues")
    };
    let now = time::OffsetDateTime::now_utc();
    let ok = signed(&body, hmac_sha256_hex(b"s3cret", body.as_bytes()));
    assert_eq!(Gitea.verify(b"s3cret", &ok, now), Ok(()));
    assert_eq!(Gitea.delivery_id(&ok).unwrap(), "d-1");
    assert_eq!(Gitea.verify(b"other", &ok, now), Err(SignatureError::Mismatch));
    let mut tampered = body.clone().into_bytes();
    tampered[5] ^= 1;
    let t = InboundRequest::new(tampered)
        .header(GITEA_SIGNATURE, hmac_sha256_hex(b"s3cret", body.as_bytes()));
    assert_eq!(Gitea.verify(b"s3cret", &t, now), Err(SignatureError::Mismatch));
    let prefixed = signed(&body, format!("sha256={}", hmac_sha256_hex(b"s3cret", body.as_bytes())));
    assert!(matches!(
        Gitea.verify(b"s3cret", &prefixed, now),
        Err(SignatureError::Malformed { .. })
    ));
    assert!(matches!(
        Gitea.verify(b"s3cret", &InboundRequest::new(body.clone()), now),
        Err(SignatureError::Missing { .. })
    ));

    let events = Gitea.parse(&ok).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "issues.closed");
    assert_eq!(events[0].external_id.as_deref(), Some("octo/app#7"));
    assert_eq!(events[0].fields["state"], "closed");
    assert_eq!(events[0].fields["description"], "b");
    assert_eq!(events[0].fields["labels"], json!(["bug"]));
    assert_eq!(Gitea.default_mappings().local_state("closed"), Some("completed"));
}

#[tokio::test]
async fn pulls_every_page_and_pushes_mapped_fields() {
    let server = MockServer::start().await;
    let page1: Vec<Value> = (1..=50).map(|n| issue(n, "open")).collect();
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/octo/app/issues"))
        .and(query_param("page", "1"))
        .and(query_param("type", "issues"))
        .and(header("authorization", "Bearer gitea-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page1))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/octo/app/issues"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([issue(51, "closed")])))
        .expect(1)
        .mount(&server)
        .await;
    let items = Gitea.pull(&ctx(&server), None).await.unwrap();
    assert_eq!(items.len(), 51);
    assert_eq!(items[50].external_id, "octo/app#51");
    assert_eq!(items[50].fields["state"], "closed");
    assert!(items[0].updated_at.is_some());

    // Create: `state` is not sent with the create (Gitea ignores it) but applied after.
    Mock::given(method("POST"))
        .and(path("/api/v1/repos/octo/app/issues"))
        .and(body_json(json!({"title": "New", "body": "Details"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(60, "open")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v1/repos/octo/app/issues/60"))
        .and(body_json(json!({"state": "closed"})))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(60, "closed")))
        .expect(1)
        .mount(&server)
        .await;
    let mut fields = Snapshot::new();
    fields.insert("title".into(), json!("New"));
    fields.insert("description".into(), json!("Details"));
    fields.insert("state".into(), json!("closed"));
    let created = Gitea.push(&ctx(&server), None, &fields).await.unwrap();
    assert_eq!(
        (created.external_id.as_str(), &created.fields["state"]),
        ("octo/app#60", &json!("closed"))
    );

    // Update: pm names become Gitea names.
    Mock::given(method("PATCH"))
        .and(path("/api/v1/repos/octo/app/issues/7"))
        .and(body_json(json!({"title": "Renamed", "due_date": null})))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(7, "open")))
        .expect(1)
        .mount(&server)
        .await;
    let mut edit = Snapshot::new();
    edit.insert("title".into(), json!("Renamed"));
    edit.insert("due_date".into(), Value::Null);
    Gitea.push(&ctx(&server), Some("octo/app#7"), &edit).await.unwrap();
    server.verify().await;

    assert!(matches!(
        Gitea.push(&ctx(&server), Some("other/repo#7"), &edit).await,
        Err(pm_integrations::Error::Invalid { field, .. }) if field == "external_id"
    ));
    let bad = ProviderContext { config: json!({"repository": "nope"}), ..ctx(&server) };
    assert!(matches!(
        Gitea.pull(&bad, None).await,
        Err(pm_integrations::Error::Invalid { field, .. }) if field == "config.repository"
    ));
}

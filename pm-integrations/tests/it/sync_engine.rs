//! The sync engine over real pm-core and integration stores (SQLite) against a wiremock GitHub
//! that only answers requests carrying the integration's OAuth access token: an OAuth-connected
//! integration's expired token is refreshed through `OAuth::access_token` (single-flight) and
//! the refreshed token is the one the push uses; the tokens stay sealed in the raw rows.

use std::sync::Arc;
use std::time::Duration;

use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::blob::FsBlobStore;
use pm_core::event::Origin;
use pm_core::id::IntegrationId;
use pm_core::model::{TaskPatch, TaskTitle};
use pm_integrations::clock::ManualClock;
use pm_integrations::crypto::{EncryptionKey, Keyring, Secret};
use pm_integrations::model::Integration;
use pm_integrations::oauth::{Callback, OAuth, OAuthClient, OAuthSettings};
use pm_integrations::provider::Provider;
use pm_integrations::providers::{GitHub, Registry};
use pm_integrations::ssrf::TargetPolicy;
use pm_integrations::sync::engine::{Applied, SyncEngine};
use pm_integrations::webhook::InboundRequest;
use pm_integrations::webhook::inbound::GITHUB_EVENT;
use serde_json::json;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn issue(title: &str) -> serde_json::Value {
    json!({"number": 7, "title": title, "body": "", "state": "open", "labels": [],
           "html_url": "https://github.com/octo/repo/issues/7",
           "updated_at": "2026-01-01T00:00:00Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_use_the_refreshed_oauth_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let core = pm_core::store::open(&url).await.unwrap();
    core.admin.migrate().await.unwrap();
    let fx = pm_core::testing::fixture(&core).await;
    let pm = Pm::new(core, Arc::new(AllowAll), Arc::new(FsBlobStore::new(dir.path().join("b"))));
    let stores = super::stores::open(&url).await;
    let server = MockServer::start().await;
    let clock = Arc::new(ManualClock::default());
    let at = pm_core::model::now() - Duration::from_secs(60);
    let integration = Integration {
        id: IntegrationId::new(),
        org_id: fx.org.id,
        project_id: fx.project.id,
        provider: GitHub.info().key,
        name: "octo/repo".into(),
        config: json!({"repository": "octo/repo", "base_url": server.uri(),
                       "reporter_id": fx.user.id.0}),
        mappings: GitHub.default_mappings(),
        enabled: true,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    stores.integrations.create_integration(&integration).await.unwrap();
    let client = OAuthClient::new(&GitHub.oauth().unwrap(), "client-1", Some(Secret::new("cs-1")))
        .unwrap()
        .with_base_url(&server.uri())
        .unwrap();
    let keyring = Arc::new(Keyring::new("k1", &EncryptionKey::generate()).unwrap());
    let oauth = Arc::new(
        OAuth::new(
            stores.clone(),
            keyring.clone(),
            clock.clone(),
            OAuthSettings::new("https://pm.example/api/v1/oauth/callback"),
        )
        .unwrap()
        .with_client(integration.provider.clone(), client),
    );

    // Connect (GitHub apps with expiring tokens: 8 h access token + refresh token).
    Mock::given(method("POST"))
        .and(path("/login/oauth/access_token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ghu_first", "refresh_token": "ghr_first", "expires_in": 28800,
            "token_type": "bearer", "scope": "repo"})))
        .expect(1)
        .mount(&server)
        .await;
    let auth = oauth.begin(&integration, fx.user.id).await.unwrap();
    oauth
        .complete(Callback { state: Some(&auth.state), code: Some("code-1"), ..Default::default() })
        .await
        .unwrap();
    // The access token expires; the next call refreshes it first.
    clock.advance(Duration::from_secs(9 * 3600));
    Mock::given(method("POST"))
        .and(path("/login/oauth/access_token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ghu_second", "refresh_token": "ghr_second", "expires_in": 28800,
            "token_type": "bearer", "scope": "repo"})))
        .expect(1)
        .mount(&server)
        .await;
    // GitHub answers only the refreshed token.
    Mock::given(method("GET"))
        .and(path("/repos/octo/repo/issues/7"))
        .and(header("authorization", "Bearer ghu_second"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issue("From GitHub")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/repo/issues/7"))
        .and(header("authorization", "Bearer ghu_second"))
        .and(body_string_contains("Edited in pm"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issue("Edited in pm")))
        .expect(1)
        .mount(&server)
        .await;

    let engine = SyncEngine::new(
        pm.clone(),
        stores.clone(),
        Arc::new(Registry::default()),
        Some(keyring),
        Some(oauth),
        TargetPolicy::parse_allow_list("127.0.0.1/32").unwrap(),
        clock,
    );
    let body = json!({"action": "opened", "issue": issue("From GitHub"),
                      "repository": {"full_name": "octo/repo"}});
    let req = InboundRequest::new(body.to_string()).header(GITHUB_EVENT, "issues");
    let event = GitHub.parse(&req).unwrap().remove(0);
    let Applied::Created { task_id, .. } =
        engine.apply_inbound(&integration, &event).await.unwrap()
    else {
        panic!("the first sight of an item creates a task");
    };
    let t = pm.get_task(&Origin::system(), task_id).await.unwrap();
    let patch =
        TaskPatch { title: Some(TaskTitle::parse("Edited in pm").unwrap()), ..Default::default() };
    pm.update_task(&fx.origin(), task_id, t.version, patch).await.unwrap();
    let pushed = engine.push_task(&integration, task_id).await.unwrap();
    assert_eq!(
        pushed,
        Applied::Synced {
            task_id,
            to_local: vec![],
            to_remote: vec!["title".into()],
            conflicts: 0
        }
    );
    // Pushing again finds nothing to do (and calls nobody: the mocks expect one call each).
    assert_eq!(
        engine.push_task(&integration, task_id).await.unwrap(),
        Applied::Skipped("unchanged")
    );
    server.verify().await;

    // Neither token is readable in the raw row.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT access_token, refresh_token FROM int_oauth_tokens")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    let (access, refresh) = &rows[0];
    assert!(!access.contains("ghu_") && !refresh.as_deref().unwrap_or("").contains("ghr_"));
}

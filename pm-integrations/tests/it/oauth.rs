//! OAuth 2 against a wiremock authorization server: authorization code + PKCE (the verifier
//! sent to the token endpoint matches the challenge in the URL), single-use and expiring
//! states, token-endpoint errors storing nothing, refresh single-flight (N concurrent callers,
//! one refresh request) with the rotated refresh token persisted, `invalid_grant` → needs
//! reconnect without retrying, and revocation on disconnect (failed revocation still deletes).

use std::sync::Arc;
use std::time::Duration;

use pm_core::id::UserId;
use pm_integrations::Error;
use pm_integrations::clock::{Clock, ManualClock};
use pm_integrations::crypto::{EncryptionKey, Keyring, Secret};
use pm_integrations::model::{Integration, OAuthStatus, OAuthToken};
use pm_integrations::oauth::{
    Callback, OAuth, OAuthClient, OAuthSettings, Revocation, pkce_challenge,
};
use pm_integrations::provider::{OAuthConfig, Provider};
use pm_integrations::providers::GoogleCalendar;
use pm_integrations::store::IntegrationStores;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

struct Fixture {
    oauth: Arc<OAuth>,
    stores: IntegrationStores,
    clock: Arc<ManualClock>,
    integration: Integration,
    server: MockServer,
    _dir: tempfile::TempDir,
}

/// A Google Calendar integration (it has a revocation endpoint) whose OAuth endpoints are on a
/// mock server.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let stores =
        super::stores::open(&format!("sqlite://{}", dir.path().join("o.db").display())).await;
    let mut integration = pm_integrations::testing::integration(&stores).await;
    // The suite's helper makes a GitHub one; connect a provider with a revocation endpoint.
    stores.integrations.delete_integration(integration.id).await.unwrap();
    integration.provider = GoogleCalendar.info().key;
    stores.integrations.create_integration(&integration).await.unwrap();
    let server = MockServer::start().await;
    let client = OAuthClient::new(
        &GoogleCalendar.oauth().unwrap(),
        "client-1",
        Some(Secret::new("client-secret-1")),
    )
    .unwrap()
    .with_base_url(&server.uri())
    .unwrap();
    let clock = Arc::new(ManualClock::default());
    let keyring = Arc::new(Keyring::new("k1", &EncryptionKey::generate()).unwrap());
    let oauth = OAuth::new(
        stores.clone(),
        keyring,
        clock.clone(),
        OAuthSettings::new("https://pm.example/api/v1/oauth/callback"),
    )
    .unwrap()
    .with_client(integration.provider.clone(), client);
    Fixture { oauth: Arc::new(oauth), stores, clock, integration, server, _dir: dir }
}

fn query(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{name} missing in {url}"))
}

fn form(req: &Request, name: &str) -> Option<String> {
    url::form_urlencoded::parse(&req.body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn connect(f: &Fixture, refresh: &str, expires_in: i64) -> OAuthToken {
    let token = Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ya29.access-1", "refresh_token": refresh, "expires_in": expires_in,
            "scope": "https://www.googleapis.com/auth/calendar.events", "token_type": "Bearer"
        })))
        .expect(1)
        .mount_as_scoped(&f.server)
        .await;
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    let (_, tok) = f
        .oauth
        .complete(Callback { state: Some(&auth.state), code: Some("code-1"), ..Default::default() })
        .await
        .unwrap();
    drop(token);
    tok
}

#[tokio::test]
async fn code_flow_with_pkce_stores_sealed_tokens() {
    let f = fixture().await;
    let user = UserId::new();
    let auth = f.oauth.begin(&f.integration, user).await.unwrap();
    assert!(auth.url.starts_with(&format!("{}/o/oauth2/v2/auth?", f.server.uri())), "{}", auth.url);
    assert_eq!(query(&auth.url, "response_type"), "code");
    assert_eq!(query(&auth.url, "client_id"), "client-1");
    assert_eq!(query(&auth.url, "redirect_uri"), "https://pm.example/api/v1/oauth/callback");
    assert_eq!(query(&auth.url, "state"), auth.state);
    assert_eq!(query(&auth.url, "code_challenge_method"), "S256");
    let challenge = query(&auth.url, "code_challenge");
    assert_eq!(challenge.len(), 43);

    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ya29.plain-access", "refresh_token": "1//plain-refresh",
            "expires_in": 3599, "scope": "a b", "token_type": "Bearer"
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    let t0 = f.clock.now();
    let (_, tok) = f
        .oauth
        .complete(Callback {
            state: Some(&auth.state),
            code: Some("the-code"),
            ..Default::default()
        })
        .await
        .unwrap();
    let reqs = f.server.received_requests().await.unwrap();
    let sent = &reqs[0];
    assert_eq!(form(sent, "grant_type").as_deref(), Some("authorization_code"));
    assert_eq!(form(sent, "code").as_deref(), Some("the-code"));
    assert_eq!(form(sent, "client_secret").as_deref(), Some("client-secret-1"));
    assert_eq!(
        form(sent, "redirect_uri").as_deref(),
        Some("https://pm.example/api/v1/oauth/callback")
    );
    let verifier = form(sent, "code_verifier").expect("PKCE verifier sent");
    assert_eq!(pkce_challenge(&verifier), challenge, "the verifier matches the challenge");

    assert_eq!(tok.connected_by, user);
    assert_eq!(tok.scopes, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(tok.status, OAuthStatus::Active);
    assert_eq!(tok.expires_at, Some(t0 + Duration::from_secs(3599)));
    assert_eq!(tok.key_id(), "k1");
    assert!(!tok.access.as_str().contains("plain-access"));
    assert!(!tok.refresh.as_ref().unwrap().as_str().contains("plain-refresh"));
    assert_eq!(f.oauth.access_token(f.integration.id).await.unwrap().expose(), "ya29.plain-access");

    // The state was single use.
    let again = f
        .oauth
        .complete(Callback {
            state: Some(&auth.state),
            code: Some("the-code"),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(again, Err(Error::Invalid { ref field, .. }) if field == "state"),
        "{again:?}"
    );
}

#[tokio::test]
async fn bad_states_errors_and_refusals_store_nothing() {
    let f = fixture().await;
    let invalid = |r: Result<_, Error>, want: &str| match r {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, want),
        other => panic!("expected invalid {want}, got {other:?}"),
    };
    let cb = |state: &'static str| Callback {
        state: Some(state),
        code: Some("c"),
        ..Default::default()
    };
    invalid(f.oauth.complete(Callback { code: Some("c"), ..Default::default() }).await, "state");
    invalid(f.oauth.complete(cb("forged")).await, "state");

    // Expired: 10 minutes pass.
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    f.clock.advance(Duration::from_secs(601));
    let r = f
        .oauth
        .complete(Callback { state: Some(&auth.state), code: Some("c"), ..Default::default() })
        .await;
    invalid(r, "state");

    // The provider refused (error=access_denied): a problem naming `error`, state consumed.
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    let denied = Callback {
        state: Some(&auth.state),
        error: Some("access_denied"),
        error_description: Some("The user said no"),
        ..Default::default()
    };
    match f.oauth.complete(denied).await {
        Err(Error::Invalid { field, message }) => {
            assert_eq!(field, "error");
            assert!(message.contains("access_denied") && message.contains("The user said no"));
        }
        other => panic!("{other:?}"),
    }
    invalid(
        f.oauth
            .complete(Callback { state: Some(&auth.state), code: Some("c"), ..Default::default() })
            .await,
        "state",
    );

    // The token endpoint refuses the code, or fails: nothing is stored.
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("code=stale"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "Bad Request"}),
            ),
        )
        .mount(&f.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("code=boom"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&f.server)
        .await;
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    invalid(
        f.oauth
            .complete(Callback {
                state: Some(&auth.state),
                code: Some("stale"),
                ..Default::default()
            })
            .await,
        "code",
    );
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    let r = f
        .oauth
        .complete(Callback { state: Some(&auth.state), code: Some("boom"), ..Default::default() })
        .await;
    assert!(matches!(r, Err(Error::Provider { .. })), "{r:?}");
    assert!(f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().is_none());
    assert!(matches!(
        f.oauth.access_token(f.integration.id).await,
        Err(Error::NotFound { entity: "oauth connection" })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_refresh_and_keep_the_rotated_token() {
    let f = fixture().await;
    connect(&f, "1//refresh-1", 3600).await;
    // Within the skew of expiry: the next callers must refresh.
    f.clock.advance(Duration::from_secs(3600 - 30));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=1%2F%2Frefresh-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({
                    "access_token": "ya29.access-2", "refresh_token": "1//refresh-2",
                    "expires_in": 3600, "token_type": "Bearer"
                }))
                // Slow enough that every caller arrives while the refresh is in flight.
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let oauth = f.oauth.clone();
            let id = f.integration.id;
            tokio::spawn(async move { oauth.access_token(id).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap().expose(), "ya29.access-2");
    }
    f.server.verify().await;
    let tok = f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().unwrap();
    assert_eq!(tok.version, 2);
    let keyring_check = f.oauth.access_token(f.integration.id).await.unwrap();
    assert_eq!(keyring_check.expose(), "ya29.access-2", "fresh now: no second refresh");
    // The rotated refresh token is what the next refresh sends.
    f.clock.advance(Duration::from_secs(3600));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("refresh_token=1%2F%2Frefresh-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ya29.access-3", "expires_in": 3600
        })))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.oauth.access_token(f.integration.id).await.unwrap().expose(), "ya29.access-3");
    let tok = f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().unwrap();
    assert!(tok.refresh.is_some(), "a provider that does not rotate keeps the old refresh token");
}

#[tokio::test]
async fn invalid_grant_marks_the_connection_for_reconnect() {
    let f = fixture().await;
    connect(&f, "1//revoked", 60).await;
    f.clock.advance(Duration::from_secs(120));
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        ))
        .expect(1)
        .mount(&f.server)
        .await;
    for _ in 0..3 {
        match f.oauth.access_token(f.integration.id).await {
            Err(Error::NeedsReconnect { reason, .. }) => assert!(reason.contains("invalid_grant")),
            other => panic!("{other:?}"),
        }
    }
    f.server.verify().await; // refused once, not retried
    let tok = f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().unwrap();
    assert_eq!(tok.status, OAuthStatus::NeedsReconnect);

    // Connecting again makes it usable.
    f.server.reset().await;
    connect(&f, "1//fresh", 3600).await;
    assert_eq!(f.oauth.access_token(f.integration.id).await.unwrap().expose(), "ya29.access-1");
}

#[tokio::test]
async fn disconnect_revokes_then_deletes_even_when_revocation_fails() {
    let f = fixture().await;
    connect(&f, "1//to-revoke", 3600).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(body_string_contains("token=1%2F%2Fto-revoke"))
        .and(body_string_contains("token_type_hint=refresh_token"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&f.server)
        .await;
    assert_eq!(f.oauth.disconnect(&f.integration).await.unwrap(), Revocation::Revoked);
    f.server.verify().await;
    assert!(f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().is_none());
    assert!(matches!(
        f.oauth.disconnect(&f.integration).await,
        Err(Error::NotFound { entity: "oauth connection" })
    ));

    f.server.reset().await;
    connect(&f, "1//unrevokable", 3600).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&f.server)
        .await;
    assert!(matches!(f.oauth.disconnect(&f.integration).await.unwrap(), Revocation::Failed(_)));
    assert!(f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().is_none());
    let logs = f.stores.logs.list_logs(Some(f.integration.id), 100, None).await.unwrap();
    let failed = logs
        .items
        .iter()
        .find(|e| e.operation == "oauth.disconnected" && !e.ok)
        .expect("the failed revocation is logged");
    assert_eq!(failed.detail.as_value()["revocation"], "failed");
    let all = format!("{:?}", logs.items);
    assert!(!all.contains("unrevokable") && !all.contains("ya29"), "no token in the log");
}

#[test]
fn clients_rebase_and_check_their_urls() {
    let cfg = OAuthConfig {
        authorize_url: "https://github.com/login/oauth/authorize".into(),
        token_url: "https://github.com/login/oauth/access_token".into(),
        revoke_url: None,
        scopes: vec!["repo".into()],
    };
    let c = OAuthClient::new(&cfg, "id", None)
        .unwrap()
        .with_base_url("http://127.0.0.1:9/gh/")
        .unwrap();
    assert_eq!(c.token_url, "http://127.0.0.1:9/gh/login/oauth/access_token");
    assert!(
        matches!(OAuthClient::new(&cfg, " ", None), Err(Error::Invalid { field, .. }) if field == "client_id")
    );
    let bad = OAuthConfig { token_url: "ftp://x".into(), ..cfg };
    assert!(
        matches!(OAuthClient::new(&bad, "id", None), Err(Error::Invalid { field, .. }) if field == "token_url")
    );
}

#[tokio::test]
async fn tokens_reach_providers_and_expire_without_a_refresh_token() {
    let f = fixture().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "ya29.once", "expires_in": 60})),
        )
        .expect(1)
        .mount(&f.server)
        .await;
    let auth = f.oauth.begin(&f.integration, UserId::new()).await.unwrap();
    f.oauth
        .complete(Callback { state: Some(&auth.state), code: Some("c"), ..Default::default() })
        .await
        .unwrap();
    let ctx = f.oauth.provider_context(&f.integration, "http://api.example").await.unwrap();
    assert_eq!(ctx.access_token.unwrap().expose(), "ya29.once");
    assert_eq!(ctx.config, f.integration.config);
    // Within the skew but not expired: still handed out (nothing to refresh with).
    f.clock.advance(Duration::from_secs(30));
    assert_eq!(f.oauth.access_token(f.integration.id).await.unwrap().expose(), "ya29.once");
    // Expired: a reconnect is needed, and no request is made.
    f.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        f.oauth.provider_context(&f.integration, "http://api.example").await,
        Err(Error::NeedsReconnect { .. })
    ));
    f.server.verify().await;
    let tok = f.stores.oauth.get_oauth_token(f.integration.id).await.unwrap().unwrap();
    assert_eq!(tok.status, OAuthStatus::NeedsReconnect);
}

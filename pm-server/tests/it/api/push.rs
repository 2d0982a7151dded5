//! Web Push: the RFC 8291 test vector, subscription validation, and delivery end to end — a
//! task assigned through REST makes the server POST an encrypted, VAPID-signed message to a
//! wiremock push service, which the test decrypts with the subscription's private key; `410`
//! removes the subscription and `503` is retried.

use std::sync::Arc;
use std::time::Duration;

use p256::SecretKey;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use pm_integrations::ssrf::TargetPolicy;
use pm_server::pwa::push::{RetryPolicy, WebPush};
use pm_server::pwa::webpush::{self, Vapid, b64, unb64};
use pm_server::realtime::{Realtime, RealtimeSetup};
use reqwest::Method;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{Server, org_and_project};

fn vector() -> Value {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/webhooks.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    all["web_push_rfc8291_appendix_a"].clone()
}

#[test]
fn rfc8291_appendix_a_encrypts_and_decrypts() {
    let v = vector();
    let bytes = |k: &str| unb64(v[k].as_str().unwrap()).unwrap();
    let plaintext = v["plaintext"].as_str().unwrap().as_bytes();
    let as_secret = SecretKey::from_slice(&bytes("as_private")).unwrap();
    assert_eq!(webpush::public_bytes(&as_secret.public_key()), bytes("as_public"));
    let salt: [u8; 16] = bytes("salt").try_into().unwrap();
    let body =
        webpush::encrypt(plaintext, &bytes("ua_public"), &bytes("auth_secret"), &as_secret, &salt)
            .unwrap();
    assert_eq!(b64(&body), v["expected_body"].as_str().unwrap());
    let ua_secret = SecretKey::from_slice(&bytes("ua_private")).unwrap();
    let expected = bytes("expected_body");
    assert_eq!(webpush::decrypt(&expected, &ua_secret, &bytes("auth_secret")).unwrap(), plaintext);
    // One flipped bit anywhere in the record, or the wrong auth secret, and it does not open.
    let mut tampered = expected.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(webpush::decrypt(&tampered, &ua_secret, &bytes("auth_secret")).is_err());
    assert!(webpush::decrypt(&expected, &ua_secret, &[0u8; 16]).is_err());
}

#[test]
fn vapid_jwt_verifies_with_the_public_key() {
    let vapid = Vapid::new(webpush::random_secret().unwrap(), "mailto:ops@example.com");
    let jwt = vapid.jwt("https://push.example.net", 2_000_000_000);
    check_jwt(&jwt, &vapid.public_key(), "https://push.example.net");
    // A key round-trips through its configured form.
    let again = Vapid::new(Vapid::parse_private(&vapid.private_b64()).unwrap(), "mailto:x@y");
    assert_eq!(again.public_key(), vapid.public_key());
    assert!(Vapid::parse_private("not a key").is_err());
}

/// Verifies an ES256 VAPID JWT against `key` (base64url point) and returns its claims.
fn check_jwt(jwt: &str, key: &str, audience: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&unb64(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let claims: Value = serde_json::from_slice(&unb64(parts[1]).unwrap()).unwrap();
    let verifying = VerifyingKey::from_sec1_bytes(&unb64(key).unwrap()).unwrap();
    let signature = Signature::from_slice(&unb64(parts[2]).unwrap()).unwrap();
    verifying
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the VAPID JWT verifies with the advertised key");
    assert_eq!(claims["aud"], audience);
    let now = jsonwebtoken::get_current_timestamp();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > now && exp <= now + 24 * 3600 || exp == 2_000_000_000, "exp {exp}");
    assert!(claims["sub"].as_str().unwrap().starts_with("mailto:"));
    claims
}

/// A browser's side of a subscription: its key pair and auth secret.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        let mut auth = [0u8; 16];
        getrandom::fill(&mut auth).unwrap();
        Self { secret: webpush::random_secret().unwrap(), auth }
    }

    fn subscription(&self, endpoint: &str) -> Value {
        json!({ "endpoint": endpoint, "expirationTime": null, "keys": {
            "p256dh": b64(&webpush::public_bytes(&self.secret.public_key())),
            "auth": b64(&self.auth) } })
    }
}

async fn push_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    super::sync::server_with(&url, dir, |state| {
        let vapid = Vapid::new(webpush::random_secret().unwrap(), "mailto:ops@example.com");
        let mut push =
            WebPush::new(vapid, TargetPolicy::allowing(["127.0.0.1/32".parse().unwrap()]));
        push.retry = RetryPolicy { attempts: 3, base_delay: Duration::from_millis(50) };
        state.web_push = push;
        let authz = Arc::new(pm_server::authz::ServerAuthorizer::new(state.permissions.clone()));
        state.realtime = Realtime::new(RealtimeSetup {
            sinks: vec![state.push_sink()],
            ..RealtimeSetup::in_process(state.stores.clone(), authz)
        });
    })
    .await
}

#[tokio::test]
async fn subscriptions_are_validated_upserted_and_removed() {
    let s = push_server().await;
    let (_, token) = s.user("subscriber@example.com").await;
    let (_, other) = s.user("other@example.com").await;
    let t = Some(token.as_str());
    let browser = Browser::new();
    let key = s.call(Method::GET, "/api/v1/push/vapid-public-key", t, None).await;
    assert_eq!(key.ok(200)["public_key"], s.state.web_push.vapid.public_key());
    assert_eq!(unb64(key.body["public_key"].as_str().unwrap()).unwrap().len(), 65);

    let bad = |mut sub: Value, pointer: &str, value: Value| {
        *sub.pointer_mut(pointer).unwrap() = value;
        sub
    };
    let good = browser.subscription("https://push.example.net/send/abc");
    for (body, field) in [
        (bad(good.clone(), "/endpoint", json!("ftp://push.example.net/x")), "endpoint"),
        (bad(good.clone(), "/endpoint", json!("http://push.example.net/x")), "endpoint"),
        (bad(good.clone(), "/endpoint", json!("https://10.1.2.3/x")), "endpoint"),
        (bad(good.clone(), "/keys/p256dh", json!("***")), "keys.p256dh"),
        (bad(good.clone(), "/keys/p256dh", json!(b64(&[4u8; 65]))), "keys.p256dh"),
        (bad(good.clone(), "/keys/auth", json!(b64(&[1u8; 15]))), "keys.auth"),
        (bad(good.clone(), "/expirationTime", json!(-5)), "expirationTime"),
        (bad(good.clone(), "/keys", json!("none")), "keys"),
    ] {
        let r = s.call(Method::POST, "/api/v1/push/subscriptions", t, Some(body.clone())).await;
        assert_eq!(r.problem(400)["field"], field, "{body}");
    }
    let created = s.call(Method::POST, "/api/v1/push/subscriptions", t, Some(good.clone())).await;
    let id = created.ok(201)["id"].clone();
    // The same endpoint again (new keys): still one subscription, same id.
    let renewed = Browser::new().subscription("https://push.example.net/send/abc");
    let again = s.call(Method::POST, "/api/v1/push/subscriptions", t, Some(renewed)).await;
    assert_eq!(again.ok(201)["id"], id);
    let list = s.call(Method::GET, "/api/v1/push/subscriptions", t, None).await;
    assert_eq!(list.ok(200).as_array().unwrap().len(), 1);
    // Another user registering the same endpoint takes it over (the browser changed hands).
    s.call(Method::POST, "/api/v1/push/subscriptions", Some(&other), Some(good.clone()))
        .await
        .ok(201);
    let list = s.call(Method::GET, "/api/v1/push/subscriptions", t, None).await;
    assert_eq!(list.ok(200), &json!([]));
    let endpoint = json!({ "endpoint": "https://push.example.net/send/abc" });
    s.call(Method::DELETE, "/api/v1/push/subscriptions", t, Some(endpoint.clone()))
        .await
        .problem(404);
    s.call(Method::DELETE, "/api/v1/push/subscriptions", Some(&other), Some(endpoint.clone()))
        .await
        .ok(204);
    s.call(Method::DELETE, "/api/v1/push/subscriptions", Some(&other), Some(endpoint))
        .await
        .problem(404);
}

#[tokio::test]
async fn an_assignment_is_pushed_encrypted_and_signed() {
    let service = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/push/live"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&service)
        .await;
    Mock::given(method("POST"))
        .and(path("/push/gone"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&service)
        .await;
    Mock::given(method("POST"))
        .and(path("/push/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&service)
        .await;
    Mock::given(method("POST"))
        .and(path("/push/flaky"))
        .respond_with(ResponseTemplate::new(201))
        .with_priority(2)
        .mount(&service)
        .await;

    let s = push_server().await;
    s.state.realtime.hub().await.unwrap();
    let (_, owner) = s.user("owner@push.example").await;
    let (phone_id, phone) = s.user("phone@push.example").await;
    let (org, project, _) = org_and_project(&s, &owner, "pushy", "PSH").await;
    s.call(
        Method::PUT,
        &format!("/api/v1/orgs/{org}/members/{}", phone_id.0),
        Some(&owner),
        Some(json!({ "role": "member" })),
    )
    .await
    .ok(200);
    let browser = Browser::new();
    for p in ["live", "gone", "flaky"] {
        let sub = browser.subscription(&format!("{}/push/{p}", service.uri()));
        s.call(Method::POST, "/api/v1/push/subscriptions", Some(&phone), Some(sub)).await.ok(201);
    }
    let key = s.state.web_push.vapid.public_key();

    let task = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/tasks"),
            Some(&owner),
            Some(json!({ "title": "Fix the pump", "assignees": [phone_id.0] })),
        )
        .await;
    let task_id = task.ok(201)["id"].as_str().unwrap().to_string();

    // Wait for: one push to /live, two to /flaky (503 then 201), /gone removed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (live, flaky) = loop {
        let received = service.received_requests().await.unwrap_or_default();
        let to = |p: &str| -> Vec<wiremock::Request> {
            received.iter().filter(|r| r.url.path() == p).cloned().collect()
        };
        let subs = s.call(Method::GET, "/api/v1/push/subscriptions", Some(&phone), None).await;
        let remaining = subs.ok(200).as_array().unwrap().len();
        let (live, flaky) = (to("/push/live"), to("/push/flaky"));
        if live.len() == 1 && flaky.len() == 2 && remaining == 2 {
            assert_eq!(to("/push/gone").len(), 1);
            break (live, flaky);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pushes not delivered: live {}, flaky {}, subscriptions left {remaining}",
            live.len(),
            flaky.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let req = &live[0];
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(header("content-encoding"), "aes128gcm");
    assert_eq!(header("urgency"), "high");
    assert!(header("ttl").parse::<u64>().unwrap() > 0);
    let auth = header("authorization");
    let rest = auth.strip_prefix("vapid t=").expect("vapid scheme");
    let (jwt, k) = rest.split_once(", k=").expect("t= and k=");
    assert_eq!(k, key);
    check_jwt(jwt, &key, &service.uri());
    assert!(req.body.len() <= 4096);
    let plain = webpush::decrypt(&req.body, &browser.secret, &browser.auth).unwrap();
    let payload: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(payload["title"], "Assigned to you");
    assert!(payload["body"].as_str().unwrap().contains("Fix the pump"), "{payload}");
    assert_eq!(payload["url"], format!("/tasks/{task_id}"));
    let notes = s.call(Method::GET, "/api/v1/me/notifications", Some(&phone), None).await;
    let ids: Vec<&Value> =
        notes.ok(200)["items"].as_array().unwrap().iter().map(|n| &n["id"]).collect();
    assert!(ids.contains(&&payload["notification_id"]), "{payload} vs {ids:?}");
    // The retried push carries the same message.
    let retried = webpush::decrypt(&flaky[1].body, &browser.secret, &browser.auth).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&retried).unwrap(), payload);
}

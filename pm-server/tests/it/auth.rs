//! Authentication over HTTP (in-process, SQLite auth store next to pm-core's tables): register,
//! login, throttling, refresh rotation and reuse detection, logout, password change, API tokens,
//! invites, and how bad credentials are refused. The store conformance runs are in [`store`].

mod store;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use pm_core::model::now;
use pm_server::auth::store::ApiToken;
use pm_server::auth::throttle::ThrottleLimits;
use pm_server::auth::{Auth, AuthSettings, Claims, Registration, Scope, token};
use pm_server::{AppState, app, temp_blobs};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

use crate::{Reply, send};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const PASSWORD: &str = "correct horse battery";

/// pm-core, auth and permission tables in one migrated SQLite file.
async fn state_with(settings: AuthSettings) -> (TempDir, AppState) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    (dir, state_at(&url, settings).await)
}

/// State over the (migrated here) SQLite database at `url`.
async fn state_at(url: &str, settings: AuthSettings) -> AppState {
    let stores = pm_core::store::open(url).await.expect("open sqlite store");
    stores.admin.migrate().await.expect("migrate pm-core");
    let auth_store = pm_server::auth::store::open(url).await.expect("open auth store");
    auth_store.migrate().await.expect("migrate auth");
    let permissions =
        pm_server::authz::open_permissions(url).await.expect("open permission tables");
    let auth = Auth::new(SECRET, auth_store, settings);
    AppState::with_auth(stores, permissions, auth, temp_blobs())
}

async fn state() -> (TempDir, AppState) {
    state_with(AuthSettings::default()).await
}

/// One request: optional bearer token, optional JSON body, optional peer address.
async fn call(
    state: &AppState,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
    peer: Option<SocketAddr>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = match body {
        Some(b) => {
            req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap()
        }
        None => req.body(Body::empty()).unwrap(),
    };
    if let Some(addr) = peer {
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    send(app(state.clone()), req).await
}

async fn post(state: &AppState, path: &str, bearer: Option<&str>, body: Value) -> Reply {
    call(state, Method::POST, path, bearer, Some(body), None).await
}

async fn get(state: &AppState, path: &str, bearer: Option<&str>) -> Reply {
    call(state, Method::GET, path, bearer, None, None).await
}

async fn register(state: &AppState, email: &str) -> Reply {
    post(
        state,
        "/api/v1/auth/register",
        None,
        json!({ "email": email, "display_name": "Ada Lovelace", "password": PASSWORD }),
    )
    .await
}

async fn login_with(state: &AppState, email: &str, password: &str) -> Reply {
    post(state, "/api/v1/auth/login", None, json!({ "email": email, "password": password })).await
}

/// Logs in; returns (access token, refresh token).
async fn login(state: &AppState, email: &str) -> (String, String) {
    let r = login_with(state, email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    (s(&r.body["access_token"]), s(&r.body["refresh_token"]))
}

async fn refresh(state: &AppState, refresh_token: &str) -> Reply {
    post(state, "/api/v1/auth/refresh", None, json!({ "refresh_token": refresh_token })).await
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

fn assert_unauthorized(r: &Reply) {
    r.assert_problem(StatusCode::UNAUTHORIZED);
    let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok());
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "challenge: {challenge:?}");
}

#[tokio::test]
async fn register_login_me() {
    let (_db, state) = state().await;
    let r = register(&state, "Ada@Example.com").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["email"], "ada@example.com");
    let id = s(&r.body["id"]);

    let (access, refresh_token) = login(&state, "ada@example.com").await;
    assert!(refresh_token.starts_with("pmrt_"));
    let me = get(&state, "/api/v1/me", Some(&access)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["id"], id);
    assert_eq!(me.body["display_name"], "Ada Lovelace");

    let dup = register(&state, "ada@EXAMPLE.com").await;
    dup.assert_problem(StatusCode::CONFLICT);
}

#[tokio::test]
async fn registration_names_the_invalid_field() {
    let (_db, state) = state().await;
    let body = |email: &str, name: &str, password: &str| json!({ "email": email, "display_name": name, "password": password });
    for (b, field) in [
        (body("nope", "Ada", PASSWORD), "email"),
        (body("a@example.com", "  ", PASSWORD), "display_name"),
        (body("a@example.com", "Ada", "too short"), "password"),
        (body("a@example.com", "Ada", &"x".repeat(1025)), "password"),
    ] {
        let r = post(&state, "/api/v1/auth/register", None, b).await;
        assert_eq!(r.assert_problem(StatusCode::BAD_REQUEST)["field"], field, "{}", r.body);
    }
    let extra = json!({ "email": "a@example.com", "display_name": "Ada", "password": PASSWORD, "admin": true });
    post(&state, "/api/v1/auth/register", None, extra)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    // Nothing was created by the failures.
    assert_eq!(register(&state, "a@example.com").await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_401() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    let r = login_with(&state, "ada@example.com", "wrong password!").await;
    assert_unauthorized(&r);
    assert_eq!(r.body["type"], "/problems/invalid-credentials");
    let r = login_with(&state, "nobody@example.com", PASSWORD).await;
    assert_unauthorized(&r);
    assert_eq!(r.body["type"], "/problems/invalid-credentials");
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    for _ in 0..5 {
        assert_unauthorized(&login_with(&state, "ada@example.com", "wrong password!").await);
    }
    // Locked: even the right password is refused until the window passes.
    let r = login_with(&state, "ada@example.com", PASSWORD).await;
    r.assert_problem(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "retry-after {retry}");
    // Other accounts are unaffected (no peer address in oneshot tests: no per-IP count).
    register(&state, "bob@example.com").await;
    login(&state, "bob@example.com").await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_ip() {
    let limits = ThrottleLimits { per_account: 100, per_ip: 3, window: Duration::from_secs(60) };
    let (_db, state) = state_with(AuthSettings { throttle: limits, ..Default::default() }).await;
    register(&state, "ada@example.com").await;
    let attacker: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let elsewhere: SocketAddr = "198.51.100.1:40000".parse().unwrap();
    let attempt = |email: &'static str, password: &'static str, peer| {
        let body = json!({ "email": email, "password": password });
        let state = state.clone();
        async move {
            call(&state, Method::POST, "/api/v1/auth/login", None, Some(body), Some(peer)).await
        }
    };
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        assert_unauthorized(&attempt(email, "wrong password!", attacker).await);
    }
    let r = attempt("ada@example.com", PASSWORD, attacker).await;
    r.assert_problem(StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(attempt("ada@example.com", PASSWORD, elsewhere).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    let (_, first) = login(&state, "ada@example.com").await;

    let r = refresh(&state, &first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let second = s(&r.body["refresh_token"]);
    assert_ne!(second, first);
    let access = s(&r.body["access_token"]);
    assert_eq!(get(&state, "/api/v1/me", Some(&access)).await.status, StatusCode::OK);

    // Replaying the rotated token: refused, and the newer token dies with the family.
    assert_unauthorized(&refresh(&state, &first).await);
    assert_unauthorized(&refresh(&state, &second).await);
    // A separate login is a separate family.
    let (_, other) = login(&state, "ada@example.com").await;
    assert_eq!(refresh(&state, &other).await.status, StatusCode::OK);
    assert_unauthorized(&refresh(&state, "pmrt_unknown").await);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    let (_, first) = login(&state, "ada@example.com").await;
    let second = s(&refresh(&state, &first).await.body["refresh_token"]);
    let r = post(&state, "/api/v1/auth/logout", None, json!({ "refresh_token": second })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_unauthorized(&refresh(&state, &second).await);
    // Unknown tokens are fine too (logout is idempotent).
    let r = post(&state, "/api/v1/auth/logout", None, json!({ "refresh_token": "pmrt_x" })).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn password_change_keeps_this_session_and_ends_the_others() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    let (access, mine) = login(&state, "ada@example.com").await;
    let (_, theirs) = login(&state, "ada@example.com").await;

    let change =
        |current: &str, new: &str| json!({ "current_password": current, "new_password": new });
    let r = post(
        &state,
        "/api/v1/me/password",
        Some(&access),
        change("wrong password!", "a new passphrase"),
    )
    .await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["field"], "current_password");
    let r = post(&state, "/api/v1/me/password", Some(&access), change(PASSWORD, "short")).await;
    assert_eq!(r.assert_problem(StatusCode::BAD_REQUEST)["field"], "new_password");
    let r =
        post(&state, "/api/v1/me/password", Some(&access), change(PASSWORD, "a new passphrase"))
            .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    assert_eq!(refresh(&state, &mine).await.status, StatusCode::OK);
    assert_unauthorized(&refresh(&state, &theirs).await);
    assert_unauthorized(&login_with(&state, "ada@example.com", PASSWORD).await);
    assert_eq!(
        login_with(&state, "ada@example.com", "a new passphrase").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn api_tokens_create_use_list_revoke() {
    let (_db, state) = state().await;
    register(&state, "ada@example.com").await;
    let (access, _) = login(&state, "ada@example.com").await;

    let r =
        post(&state, "/api/v1/me/tokens", Some(&access), json!({ "name": "ci", "scope": "read" }))
            .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let read = s(&r.body["token"]);
    let read_id = s(&r.body["id"]);
    assert!(read.starts_with("pmat_"), "{read}");
    assert_eq!(r.body["scope"], "read");
    let r = post(
        &state,
        "/api/v1/me/tokens",
        Some(&access),
        json!({ "name": "laptop", "scope": "write" }),
    )
    .await;
    let write = s(&r.body["token"]);

    // A read token reads, and nothing else.
    let me = get(&state, "/api/v1/me", Some(&read)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["email"], "ada@example.com");
    let r = post(&state, "/api/v1/me/tokens", Some(&read), json!({ "name": "x", "scope": "read" }))
        .await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["type"], "/problems/insufficient-scope");
    let patch = format!("/api/v1/tasks/{}", Uuid::now_v7());
    let r =
        call(&state, Method::PATCH, &patch, Some(&read), Some(json!({ "title": "x" })), None).await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["type"], "/problems/insufficient-scope");
    // A write token works for writes, but cannot mint tokens.
    let r =
        post(&state, "/api/v1/me/tokens", Some(&write), json!({ "name": "x", "scope": "read" }))
            .await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["type"], "/problems/login-required");

    let list = get(&state, "/api/v1/me/tokens", Some(&read)).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "ci");
    assert!(items[0]["last_used_at"].is_string(), "use is recorded: {}", items[0]);
    let text = list.body.to_string();
    assert!(!text.contains(&read) && !text.contains(&write) && !text.contains("token\""), "{text}");

    let path = format!("/api/v1/me/tokens/{read_id}");
    let r = call(&state, Method::DELETE, &path, Some(&access), None, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_unauthorized(&get(&state, "/api/v1/me", Some(&read)).await);
    call(&state, Method::DELETE, &path, Some(&access), None, None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let items = get(&state, "/api/v1/me/tokens", Some(&access)).await.body["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);

    let past = json!({ "name": "old", "scope": "read", "expires_at": "2000-01-01T00:00:00Z" });
    let r = post(&state, "/api/v1/me/tokens", Some(&access), past).await;
    assert_eq!(r.assert_problem(StatusCode::BAD_REQUEST)["field"], "expires_at");
}

#[tokio::test]
async fn expired_api_token_is_401() {
    let (_db, state) = state().await;
    let user = s(&register(&state, "ada@example.com").await.body["id"]);
    let (secret, token_hash) = token::generate(token::API_TOKEN_PREFIX).unwrap();
    let at = now();
    state
        .auth
        .store
        .create_api_token(&ApiToken {
            id: Uuid::now_v7(),
            user_id: pm_core::id::UserId(user.parse().unwrap()),
            name: "old".into(),
            token_hash,
            scope: Scope::Write,
            expires_at: Some(at - time::Duration::seconds(1)),
            revoked_at: None,
            last_used_at: None,
            created_at: at - time::Duration::days(1),
        })
        .await
        .unwrap();
    let r = get(&state, "/api/v1/me", Some(&secret)).await;
    assert_unauthorized(&r);
    assert!(r.body["detail"].as_str().unwrap().contains("expired"), "{}", r.body);
}

#[tokio::test]
async fn expired_access_token_is_401() {
    let (_db, state) = state().await;
    let user = s(&register(&state, "ada@example.com").await.body["id"]);
    let past = jsonwebtoken::get_current_timestamp() - 3600;
    let claims =
        Claims { sub: user.parse().unwrap(), exp: past + 900, iat: past, scope: Scope::Write };
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let r = get(&state, "/api/v1/me", Some(&jwt)).await;
    assert_unauthorized(&r);
    assert!(r.body["detail"].as_str().unwrap().contains("expired"), "{}", r.body);
}

#[tokio::test]
async fn malformed_authorization_is_401_problem_with_challenge() {
    let (_db, state) = state().await;
    for value in [
        None,
        Some("Basic YTpi"),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer not.a.jwt"),
        Some("Bearer pmat_nope"),
        Some("bearer"),
    ] {
        let mut req = Request::get("/api/v1/me");
        if let Some(v) = value {
            req = req.header("authorization", v);
        }
        let r = send(app(state.clone()), req.body(Body::empty()).unwrap()).await;
        assert_unauthorized(&r);
    }
    // A token signed with another secret.
    let other = Auth::ephemeral().keys.issue(pm_core::id::UserId::new(), Scope::Write).unwrap().0;
    assert_unauthorized(&get(&state, "/api/v1/me", Some(&other)).await);
}

#[tokio::test]
async fn invite_mode_needs_a_single_use_invite() {
    let settings = AuthSettings { registration: Registration::Invite, ..Default::default() };
    let (_db, state) = state_with(settings).await;
    let r = register(&state, "ada@example.com").await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["type"], "/problems/invite-required");

    // The first user comes from the CLI's path: a pm-core user plus a credential.
    let admin = state
        .pm
        .create_user(
            &pm_core::event::Origin::system(),
            pm_core::service::NewUser {
                email: pm_core::model::Email::parse("admin@example.com").unwrap(),
                display_name: pm_core::model::Name::parse("Admin").unwrap(),
            },
        )
        .await
        .unwrap();
    let hash = pm_server::auth::password::hash(PASSWORD.into()).await.unwrap();
    state.auth.store.create_credential(admin.id, &hash, now()).await.unwrap();
    let (access, _) = login(&state, "admin@example.com").await;

    let r = post(&state, "/api/v1/auth/invites", Some(&access), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let invite = s(&r.body["invite_token"]);
    let with_invite = |email: &str| json!({ "email": email, "display_name": "Ada", "password": PASSWORD, "invite_token": invite });
    let r = post(&state, "/api/v1/auth/register", None, with_invite("admin@example.com")).await;
    r.assert_problem(StatusCode::CONFLICT);
    // The failed registration handed the invite back.
    let r = post(&state, "/api/v1/auth/register", None, with_invite("ada@example.com")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = post(&state, "/api/v1/auth/register", None, with_invite("bob@example.com")).await;
    assert_eq!(r.assert_problem(StatusCode::FORBIDDEN)["field"], "invite_token");
    login(&state, "ada@example.com").await;
}

#[tokio::test]
async fn openapi_documents_the_auth_routes() {
    let doc = pm_server::api::openapi();
    let json = serde_json::to_value(&doc).unwrap();
    for path in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/invites",
        "/api/v1/me",
        "/api/v1/me/password",
        "/api/v1/me/tokens",
        "/api/v1/me/tokens/{token_id}",
    ] {
        assert!(json["paths"][path].is_object(), "{path} is not documented");
    }
    let login = &json["paths"]["/api/v1/auth/login"]["post"];
    assert!(login["responses"]["429"]["content"]["application/problem+json"].is_object());
}

#[tokio::test]
async fn create_user_cli_sets_a_password_that_logs_in() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pm.db").display());
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pm-server"))
            .args(args)
            .env("PM_DATABASE_URL", &url)
            .env("PM_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pm-server");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    };
    let base = ["create-user", "--email", "ada@example.com", "--name", "Ada"];
    let out = run(&[&base[..], &["--password-stdin"]].concat(), Some(&format!("{PASSWORD}\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ada@example.com"));
    // A second password for the same user is refused.
    let again = run(&base, None);
    assert!(!again.status.success());
    // A generated password is printed once.
    let out = run(&["create-user", "--email", "bob@example.com", "--name", "Bob"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let generated = stdout.lines().find_map(|l| l.strip_prefix("password: ")).expect("printed");

    let state = state_at(&url, AuthSettings::default()).await;
    login(&state, "ada@example.com").await;
    assert_eq!(login_with(&state, "bob@example.com", generated).await.status, StatusCode::OK);
}

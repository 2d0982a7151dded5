//! End-to-end API tests against a real server on 127.0.0.1:0, with responses validated against
//! the server's own OpenAPI document.

mod authz;
mod chat;
mod conventions;
mod hostile;
mod integration_sync;
mod integrations;
mod journey;
mod openapi;
mod push;
mod resources;
mod sync;
mod templates;

use std::sync::{Arc, OnceLock};

use pm_core::event::Origin;
use pm_core::model::{Email, Name};
use pm_core::service::NewUser;
use pm_server::AppState;
use pm_server::auth::Scope;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The JWT secret of test servers (so tests can forge expired tokens).
pub const TEST_SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

/// A server running on a loopback port until dropped.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The server's state (for direct setup).
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response with its JSON body.
#[derive(Debug)]
pub struct Res {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body (`Null` when empty or not JSON).
    pub body: Value,
}

impl Res {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, returning the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        &self.body
    }

    /// Asserts a problem+json with `status`, returning the body.
    #[track_caller]
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.body);
        &self.body
    }
}

impl Server {
    /// Starts a server over a fresh SQLite database.
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// Starts a server whose state `configure` adjusts first.
    pub async fn start_with(configure: impl FnOnce(&mut AppState)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pm.db").display());
        let stores = pm_core::store::open(&url).await.unwrap();
        stores.admin.migrate().await.unwrap();
        let blobs = std::sync::Arc::new(pm_core::blob::FsBlobStore::new(dir.path().join("blobs")));
        let permissions =
            pm_server::authz::open_permissions(&url).await.expect("open permission tables");
        let mut state = AppState::with(stores, permissions, TEST_SECRET, blobs);
        configure(&mut state);
        Self::serve_state(state, dir).await
    }

    /// Serves `state` (whose files live in `dir`) until dropped.
    pub async fn serve_state(state: AppState, dir: TempDir) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve_state = state.clone();
        tokio::spawn(async move {
            pm_server::serve(listener, serve_state, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            state,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// A handle on a server started elsewhere (e.g. one of several instances over a shared
    /// database); stopping it is the caller's business.
    pub fn attach(base: String, state: AppState) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server { base, http: reqwest::Client::new(), state, stop: None, _dir: dir }
    }

    /// Creates a user and returns a write-scoped access token for them.
    pub async fn user(&self, email: &str) -> (pm_core::id::UserId, String) {
        let u = self
            .state
            .pm
            .create_user(
                &Origin::system(),
                NewUser {
                    email: Email::parse(email).unwrap(),
                    display_name: Name::parse("Tester").unwrap(),
                },
            )
            .await
            .unwrap();
        let (token, _) = self.state.auth.keys.issue(u.id, Scope::Write).unwrap();
        (u.id, token)
    }

    /// Sends a request with an optional bearer token and JSON body; validates the response against
    /// the OpenAPI document.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        self.call_with(method, path, token, body, &[]).await
    }

    /// [`Server::call`] with extra headers.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Res {
        let mut req = self.http.request(method.clone(), format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let res = to_res(res).await;
        openapi::validate(&method, path, &res);
        res
    }
}

/// Reads a response.
pub async fn to_res(res: reqwest::Response) -> Res {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Res { status, headers, body }
}

/// Org + project set up through the API by `token`'s user: returns (org id, project id, states).
pub async fn org_and_project(
    s: &Server,
    token: &str,
    slug: &str,
    key: &str,
) -> (String, String, Vec<Value>) {
    let org = s
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(token),
            Some(json!({"slug": slug, "name": "Acme"})),
        )
        .await;
    let org_id = org.ok(201)["id"].as_str().unwrap().to_string();
    let p = s
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org_id}/projects"),
            Some(token),
            Some(json!({"key": key, "name": "Platform"})),
        )
        .await;
    let project_id = p.ok(201)["id"].as_str().unwrap().to_string();
    let states = s
        .call(Method::GET, &format!("/api/v1/projects/{project_id}/states"), Some(token), None)
        .await;
    (org_id, project_id, states.ok(200).as_array().unwrap().clone())
}

/// The OpenAPI document, built once.
pub fn doc() -> &'static Value {
    static DOC: OnceLock<Arc<Value>> = OnceLock::new();
    DOC.get_or_init(|| Arc::new(serde_json::to_value(pm_server::api::openapi()).unwrap()))
}

//! The PWA: serves the web app built into `web/dist` (embedded at compile time by `build.rs`, so
//! the binary needs no Node step and no files next to it) at `/`.
//!
//! - Files by path with their content type and an `ETag` (`If-None-Match` → 304).
//! - `Cache-Control`: `no-cache` for what names the current version (`index.html`, `sw.js`, the
//!   manifest, the offline page) so clients revalidate and pick up new builds; a year, immutable,
//!   for `/assets/*`, whose names carry content hashes; a day for icons.
//! - App routes (`/login`, `/orgs/…`, `/projects/…`, `/tasks/…`, …) answer `index.html`, so deep
//!   links and reloads work; everything else, in particular `/api/…`, keeps the API's 404
//!   problem+json. Only `GET`/`HEAD`.
//!
//! Mounted as the router's fallback, so the API routes always win.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// First path segments of client-side routes, answered with `index.html`.
const APP_ROUTES: &[&str] = &["login", "register", "orgs", "projects", "tasks", "notifications"];

/// The embedded file at `path` (relative to `web/dist`): contents and ETag.
pub fn file(path: &str) -> Option<(&'static [u8], &'static str)> {
    FILES.iter().find(|(p, _, _)| *p == path).map(|(_, body, etag)| (*body, *etag))
}

/// The fallback handler: a web app file, the app shell for app routes, or the API's 404.
pub async fn serve(req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::route_not_found().into_response();
    }
    let path = req.uri().path();
    let rel = match path.trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    let first = rel.split('/').next().unwrap_or("");
    let (rel, found) = match file(rel) {
        Some(found) => (rel, found),
        None if APP_ROUTES.contains(&first) && !rel.contains('.') => match file("index.html") {
            Some(found) => ("index.html", found),
            None => return ApiError::route_not_found().into_response(),
        },
        None => return ApiError::route_not_found().into_response(),
    };
    let (body, etag) = found;
    let mut res = if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        body.into_response()
    };
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(rel)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(rel)));
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if rel == "sw.js" {
        headers.insert("service-worker-allowed", HeaderValue::from_static("/"));
    }
    res
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("webmanifest") => "application/manifest+json",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn cache_control(path: &str) -> &'static str {
    if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else if path.starts_with("icons/") {
        "public, max-age=86400"
    } else {
        "no-cache"
    }
}

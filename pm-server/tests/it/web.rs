//! The embedded web app at `/`: the shell, the manifest and the service worker with their
//! content types and caching, hashed assets cached for long, SPA fallback for app routes only
//! (the API keeps its problem+json 404s), and conditional requests.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use pm_server::app;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::sqlite_state;

/// GET `path` in-process: status, headers and the raw body.
async fn fetch(
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let (_dir, state) = sqlite_state().await;
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app(state).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn header<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn serves_the_shell_manifest_and_service_worker() {
    let (status, h, body) = fetch("/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&h, "cache-control"), "no-cache");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(r#"<link rel="manifest" href="/manifest.webmanifest">"#), "{html}");

    // The shell's hashed script and stylesheet exist and are immutable.
    for prefix in ["/assets/app-", "/assets/styles-"] {
        let start = html.find(prefix).unwrap_or_else(|| panic!("{prefix} in {html}"));
        let asset = &html[start..start + html[start..].find('"').unwrap()];
        let (status, h, body) = fetch(asset, &[]).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(!body.is_empty());
        assert_eq!(header(&h, "cache-control"), "public, max-age=31536000, immutable");
        let ct = header(&h, "content-type");
        assert!(ct == "text/javascript; charset=utf-8" || ct == "text/css; charset=utf-8", "{ct}");
    }

    let (status, h, body) = fetch("/manifest.webmanifest", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "application/manifest+json");
    assert_eq!(header(&h, "cache-control"), "no-cache");
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    for field in
        ["name", "short_name", "id", "scope", "start_url", "theme_color", "background_color"]
    {
        assert!(manifest[field].is_string(), "manifest.{field}");
    }
    assert_eq!(manifest["display"], "standalone");
    let icons = manifest["icons"].as_array().unwrap();
    for (size, purpose) in [(192, "any"), (512, "any"), (512, "maskable")] {
        let icon = icons
            .iter()
            .find(|i| i["sizes"] == format!("{size}x{size}") && i["purpose"] == purpose)
            .unwrap_or_else(|| panic!("icon {size} {purpose}"));
        let (status, h, png) = fetch(icon["src"].as_str().unwrap(), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "content-type"), "image/png");
        // PNG signature, then IHDR: width and height big-endian at bytes 16..24.
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let hgt = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, hgt), (size, size), "{}", icon["src"]);
    }

    let (status, h, body) = fetch("/sw.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header(&h, "cache-control"), "no-cache");
    assert_eq!(header(&h, "service-worker-allowed"), "/");
    let sw = String::from_utf8(body).unwrap();
    assert!(!sw.contains("__VERSION__") && !sw.contains("__PRECACHE__"), "built, not the template");
    assert!(sw.contains("const SHELL = `pm-shell-${VERSION}`"));
    assert!(sw.contains("\"/offline.html\""), "precaches the offline page");
}

#[tokio::test]
async fn app_routes_fall_back_to_the_shell_and_nothing_else_does() {
    let (_, _, shell) = fetch("/", &[]).await;
    for path in
        ["/login", "/projects/0190c1e2-7c3a-7b21-9a4e-3f1c2d5e6a7b", "/tasks/x", "/notifications"]
    {
        let (status, h, body) = fetch(path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
        assert_eq!(body, shell, "{path}");
    }
    for path in ["/api/v1/nope", "/api/v1/projects/x/nope", "/nope", "/projects/x/missing.js"] {
        let (status, h, body) = fetch(path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&h, "content-type"), "application/problem+json", "{path}");
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["status"], 404);
    }
    // Writes to the app's paths are not a thing.
    let (_dir, state) = sqlite_state().await;
    let res =
        app(state).oneshot(Request::post("/login").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn conditional_requests_revalidate_with_the_etag() {
    let (_, h, _) = fetch("/index.html", &[]).await;
    let etag = header(&h, "etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let (status, _, body) = fetch("/index.html", &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (status, _, _) = fetch("/index.html", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(status, StatusCode::OK);
}

//! `Idempotency-Key` on POST: a client that retries a POST with the same key (after a timeout, or
//! replaying an offline outbox) gets the first response again instead of a second effect.
//!
//! Keys are scoped to the credential (a hash of the `Authorization` header), method and path. The
//! request body's SHA-256 is remembered with the response: the same key with a different body is a
//! client bug and gets 422; a retry while the first request still runs gets 409. Responses with a
//! 5xx status (and 401/408/429, which are not outcomes of the operation) are not remembered, so
//! such a retry runs again. Records live in memory for 24 hours (bounded in number); a restarted
//! or different instance does not know them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed response.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

const TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_ENTRIES: usize = 50_000;
/// Largest body buffered to fingerprint it (attachments are the largest POSTs).
const MAX_BODY: usize = 26 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        fingerprint: [u8; 32],
    },
    Done {
        fingerprint: [u8; 32],
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<[u8; 32], (Entry, Instant)>,
    order: VecDeque<([u8; 32], Instant)>,
}

/// Remembered POST outcomes.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyCache {
    inner: Arc<Mutex<Inner>>,
}

impl Inner {
    fn evict(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front().copied() {
            if now.duration_since(at) < TTL && self.order.len() <= MAX_ENTRIES {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|(_, t)| *t == at) {
                self.entries.remove(&key);
            }
        }
    }
}

fn problem(
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: &'static str,
) -> Response {
    ApiError::new(status, slug, title, detail).into_response()
}

/// Middleware (see the module docs).
pub async fn idempotent(
    State(cache): State<IdempotencyCache>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(&IDEMPOTENCY_KEY).cloned() else {
        return next.run(req).await;
    };
    let key_ok =
        !key.is_empty() && key.len() <= 255 && key.as_bytes().iter().all(|b| b.is_ascii_graphic());
    if !key_ok {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Invalid input",
            "invalid Idempotency-Key: 1-255 visible ASCII characters",
        )
        .with("field", "Idempotency-Key")
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                "the body is too large",
            );
        }
    };
    let scope = {
        let mut h = Sha256::new();
        h.update(parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default());
        h.update([0]);
        h.update(parts.uri.path().as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        <[u8; 32]>::from(h.finalize())
    };
    let fingerprint = <[u8; 32]>::from(Sha256::digest(&bytes));
    let now = Instant::now();
    {
        let mut inner = cache.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.evict(now);
        match inner.entries.get(&scope).map(|(e, _)| e.clone()) {
            Some(Entry::InFlight { fingerprint: f } | Entry::Done { fingerprint: f, .. })
                if f != fingerprint =>
            {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Idempotency key reused",
                    "this Idempotency-Key was used with a different request body",
                );
            }
            Some(Entry::InFlight { .. }) => {
                return problem(
                    StatusCode::CONFLICT,
                    "idempotency-in-progress",
                    "Request in progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                );
            }
            Some(Entry::Done { status, headers, body, .. }) => {
                let mut res = (status, body).into_response();
                for (k, v) in headers {
                    res.headers_mut().insert(k, v);
                }
                res.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
                return res;
            }
            None => {
                inner.entries.insert(scope, (Entry::InFlight { fingerprint }, now));
                inner.order.push_back((scope, now));
            }
        }
    }
    let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = res.status();
    let remember = !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        ));
    if !remember {
        let mut inner = cache.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.remove(&scope);
        return res;
    }
    let (res_parts, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            cache.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.remove(&scope);
            return ApiError::internal(std::io::Error::other(
                "response body could not be buffered",
            ))
            .into_response();
        }
    };
    let headers = keep_headers(&res_parts.headers);
    {
        let mut inner = cache.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.insert(
            scope,
            (
                Entry::Done { fingerprint, status: res_parts.status, headers, body: body.clone() },
                now,
            ),
        );
    }
    Response::from_parts(res_parts, Body::from(body))
}

fn keep_headers(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    [CONTENT_TYPE, ETAG, LOCATION]
        .into_iter()
        .filter_map(|n| h.get(&n).map(|v| (n, v.clone())))
        .collect()
}

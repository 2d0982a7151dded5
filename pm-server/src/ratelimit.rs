//! Rate limits: a token bucket per credential (the `Authorization` header) and one per client IP,
//! reported with the IETF `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers;
//! an empty bucket answers 429 problem+json with `Retry-After`.
//!
//! Buckets live in memory, sharded to keep lock hold times tiny; idle buckets are swept so memory
//! stays bounded by the number of active clients. With several instances behind a load balancer
//! each enforces its own share (documented in the README).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::forwarded::RemoteIp;

/// Limits, in requests per minute; `0` disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per credential (token / API key).
    pub per_credential: u32,
    /// Per client IP address.
    pub per_ip: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { per_credential: 1200, per_ip: 3000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit (per minute).
    pub limit: u32,
    /// Whole requests left right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// When denied: seconds until one request is allowed.
    pub retry_after: u64,
}

const SHARDS: usize = 16;

/// Token buckets keyed by `K`.
#[derive(Debug)]
pub struct Buckets<K> {
    per_minute: u32,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Buckets that refill `per_minute` tokens a minute, holding at most that many.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// Takes one token for `key` at `now`.
    pub fn check(&self, key: &K, now: Instant) -> Verdict {
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Sweep buckets that have refilled completely: they hold no state worth keeping.
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
        }
        let b = map.entry(key.clone()).or_insert(Bucket { tokens: cap, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        let reset = ((cap - b.tokens) / rate).ceil() as u64;
        let retry_after =
            if allowed { 0 } else { ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64 };
        Verdict {
            allowed,
            limit: self.per_minute,
            remaining: b.tokens.floor() as u32,
            reset,
            retry_after,
        }
    }
}

/// The limiter shared by all requests.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    credential: Option<Arc<Buckets<u64>>>,
    ip: Option<Arc<Buckets<IpAddr>>>,
}

impl RateLimiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            credential: (limits.per_credential > 0)
                .then(|| Arc::new(Buckets::new(limits.per_credential))),
            ip: (limits.per_ip > 0).then(|| Arc::new(Buckets::new(limits.per_ip))),
        }
    }
}

/// Middleware: checks both buckets, answers 429 when either is empty, and reports the tighter of
/// the two on every response.
pub async fn limit(State(limiter): State<RateLimiter>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(2);
    if let Some(b) = &limiter.credential
        && let Some(auth) = req.headers().get(AUTHORIZATION)
    {
        // Keyed by a hash of the credential: the limiter never stores secrets.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        auth.as_bytes().hash(&mut h);
        verdicts.push(b.check(&h.finish(), now));
    }
    if let Some(b) = &limiter.ip
        && let Some(RemoteIp(ip)) = req.extensions().get::<RemoteIp>()
    {
        verdicts.push(b.check(ip, now));
    }
    let tightest = verdicts.iter().copied().min_by_key(|v| (v.allowed, v.remaining));
    let mut res = match tightest {
        Some(v) if !v.allowed => {
            let retry =
                verdicts.iter().filter(|v| !v.allowed).map(|v| v.retry_after).max().unwrap_or(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "rate limit of {} requests per minute exceeded; retry in {retry} s",
                    v.limit
                ),
            )
            .with_header("retry-after", retry.to_string())
            .into_response()
        }
        _ => next.run(req).await,
    };
    if let Some(v) = tightest {
        let h = res.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(v.limit));
        h.insert("ratelimit-remaining", HeaderValue::from(v.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(v.reset));
    }
    res
}

/// A limiter that never limits, for benchmarks and tests that measure something else.
pub fn unlimited() -> RateLimiter {
    RateLimiter::new(RateLimits { per_credential: 0, per_ip: 0 })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_drains_and_refills() {
        let b = Buckets::<u8>::new(60); // one a second
        let t0 = Instant::now();
        for i in 0..60 {
            let v = b.check(&1, t0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 59 - i);
        }
        let denied = b.check(&1, t0);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, 1);
        assert!(b.check(&2, t0).allowed, "keys are independent");
        assert!(
            b.check(&1, t0 + Duration::from_millis(1000)).allowed,
            "a token back after a second"
        );
        assert!(!b.check(&1, t0 + Duration::from_millis(1000)).allowed);
        let full = b.check(&1, t0 + Duration::from_secs(120));
        assert_eq!((full.allowed, full.remaining), (true, 59));
    }
}

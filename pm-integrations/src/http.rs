//! The thin HTTP client the built-in providers share: a base URL (so tests point it at a mock
//! server), a bearer token, JSON in and out, and rate limits honoured.
//!
//! A `429`, or a `403` that says it is a rate limit (GitHub's secondary limits send
//! `Retry-After`; its primary limit sends `x-ratelimit-remaining: 0` and `x-ratelimit-reset`), is
//! waited out and retried when the wait is at most [`RateLimitPolicy::max_wait`]; a longer
//! wait becomes [`Error::Provider`] with `retry_after`, so the caller's queue schedules the retry
//! instead of holding a worker. Every other non-2xx is an `Error::Provider` naming the status.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::crypto::Secret;
use crate::{Error, Result};

/// How long the client itself may wait for a rate limit to pass.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitPolicy {
    /// Longest single wait done in place.
    pub max_wait: Duration,
    /// Retries done in place per request.
    pub max_retries: u32,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        Self { max_wait: Duration::from_secs(60), max_retries: 2 }
    }
}

/// A JSON API client for one provider.
#[derive(Debug, Clone)]
pub struct ApiClient {
    provider: &'static str,
    base: String,
    http: reqwest::Client,
    /// Rate-limit behaviour.
    pub limits: RateLimitPolicy,
}

impl ApiClient {
    /// A client for `provider` at `base_url` (no trailing slash needed).
    pub fn new(provider: &'static str, base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("pm-integrations/1")
            .build()
            .map_err(|e| Error::Provider {
                provider: provider.into(),
                message: format!("cannot build HTTP client: {e}"),
                retry_after: None,
            })?;
        Ok(Self {
            provider,
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            limits: RateLimitPolicy::default(),
        })
    }

    fn fail(&self, message: String, retry_after: Option<u64>) -> Error {
        Error::Provider { provider: self.provider.into(), message, retry_after }
    }

    /// Sends `method path` (path relative to the base, with its query) with an optional JSON
    /// body; returns the JSON response (`null` for an empty one).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut retries = 0;
        loop {
            let mut req =
                self.http.request(method.clone(), &url).header("accept", "application/json");
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let res =
                req.send().await.map_err(|e| self.fail(format!("request failed: {e}"), None))?;
            let status = res.status();
            if status.is_success() {
                let bytes =
                    res.bytes().await.map_err(|e| self.fail(format!("reading body: {e}"), None))?;
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes)
                    .map_err(|e| self.fail(format!("response is not JSON: {e}"), None));
            }
            if let Some(wait) = rate_limit_wait(status, res.headers()) {
                if wait <= self.limits.max_wait && retries < self.limits.max_retries {
                    retries += 1;
                    tracing::info!(
                        provider = self.provider,
                        wait_ms = wait.as_millis() as u64,
                        "rate limited; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(self.fail(
                    format!("rate limited (HTTP {})", status.as_u16()),
                    Some(wait.as_secs().max(1)),
                ));
            }
            return Err(self.fail(format!("HTTP {} on {method} {path}", status.as_u16()), None));
        }
    }
}

/// The wait a rate-limited response asks for, or `None` when it is not a rate limit.
fn rate_limit_wait(status: StatusCode, h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok());
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    if status != StatusCode::TOO_MANY_REQUESTS
        && !(status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted))
    {
        return None;
    }
    if let Some(secs) = retry_after {
        return Some(Duration::from_secs(secs));
    }
    if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok()) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        return Some(Duration::from_secs(u64::try_from(reset - now).unwrap_or(0).max(1)));
    }
    // A 429 without a hint: GitHub's guidance is to wait at least a minute.
    Some(Duration::from_secs(60))
}

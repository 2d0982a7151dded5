//! The thin HTTP client the built-in providers share: a base URL (so tests point it at a mock
//! server), a bearer token, JSON in and out, and rate limits honoured.
//!
//! A `429`, a `503` with `Retry-After`, or a `403` that says it is a rate limit (GitHub's
//! secondary limits send `Retry-After`; its primary limit sends `x-ratelimit-remaining: 0` and
//! `x-ratelimit-reset`) — `Retry-After` in seconds or as an HTTP date — is
//! waited out and retried when the wait is at most [`RateLimitPolicy::max_wait`]; a longer
//! wait becomes [`Error::Provider`] with `retry_after`, so the caller's queue schedules the retry
//! instead of holding a worker. The wait is shared per provider (key and base URL) across every
//! client in the process: requests sent while a limit lasts wait for it first. Every other `4xx`
//! is an [`Error::Rejected`] (retrying will not help), any other non-2xx an `Error::Provider`
//! naming the status.
//!
//! [`ApiClient::for_context`] connects only to the addresses the SSRF policy approved for the
//! context's host ([`ProviderContext::pinned`](crate::provider::ProviderContext::pinned)) and
//! follows no redirects, as outbound webhooks do: an integration's `base_url` is chosen by its
//! manager, and a second DNS answer must not lead the server to an internal address.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
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

/// How a request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>` (OAuth access tokens, GitHub PATs).
    Bearer(&'a Secret),
    /// HTTP Basic with a user name and a token (Jira Cloud API tokens: e-mail + token).
    Basic {
        /// The user name (Jira: the account's e-mail).
        user: &'a str,
        /// The token used as the password.
        token: &'a Secret,
    },
}

impl<'a> From<Option<&'a Secret>> for Auth<'a> {
    fn from(t: Option<&'a Secret>) -> Self {
        t.map_or(Auth::None, Auth::Bearer)
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
        Self::build(provider, base_url, None)
    }

    /// A client for `provider` at the context's base URL, connecting only to the addresses
    /// the SSRF policy approved when the context was made (if it pinned any) and following no
    /// redirects (a redirect would lead to an unchecked host).
    pub fn for_context(
        provider: &'static str,
        ctx: &crate::provider::ProviderContext,
    ) -> Result<Self> {
        Self::build(provider, &ctx.base_url, ctx.pinned.as_ref())
    }

    fn build(
        provider: &'static str,
        base_url: &str,
        pinned: Option<&crate::provider::PinnedHost>,
    ) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("pm-integrations/1");
        if let Some(p) = pinned {
            builder = builder
                .resolve_to_addrs(&p.host, &p.addrs)
                .redirect(reqwest::redirect::Policy::none());
        }
        let http = builder.build().map_err(|e| Error::Provider {
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

    /// This client's entry in the process-wide gate table: one per provider and base URL.
    fn gate_key(&self) -> String {
        format!("{} {}", self.provider, self.base)
    }

    /// How long a rate limit this provider announced (to any client of the process) still
    /// holds, if one does: a scheduler can postpone work instead of blocking on it.
    pub fn limited_for(&self) -> Option<Duration> {
        self.gate_wait()
    }

    /// How long to wait before calling this provider again, if a limit is in force.
    fn gate_wait(&self) -> Option<Duration> {
        let gates = gates().lock().unwrap_or_else(|p| p.into_inner());
        let until = *gates.get(&self.gate_key())?;
        let now = tokio::time::Instant::now();
        (until > now).then(|| until - now)
    }

    /// Records that this provider asked for `wait`: every client of it waits until then.
    fn close_gate(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut gates = gates().lock().unwrap_or_else(|p| p.into_inner());
        let entry = gates.entry(self.gate_key()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
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
        self.send(method, path, Auth::from(token), body).await
    }

    /// [`ApiClient::json`] with any [`Auth`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut retries = 0;
        loop {
            // A limit another request to this provider ran into holds for this one too.
            if let Some(wait) = self.gate_wait() {
                if wait > self.limits.max_wait {
                    return Err(self.fail(
                        "rate limited (waiting out an earlier Retry-After)".into(),
                        Some(wait.as_secs().max(1)),
                    ));
                }
                tokio::time::sleep(wait).await;
            }
            let mut req =
                self.http.request(method.clone(), &url).header("accept", "application/json");
            match auth {
                Auth::None => {}
                Auth::Bearer(t) => req = req.bearer_auth(t.expose()),
                Auth::Basic { user, token } => req = req.basic_auth(user, Some(token.expose())),
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
                self.close_gate(wait);
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
            let message = format!("HTTP {} on {method} {path}", status.as_u16());
            // A refusal (no permission, gone, invalid) will be refused again; a 5xx may pass.
            if status.is_client_error() {
                return Err(Error::Rejected {
                    provider: self.provider.into(),
                    status: status.as_u16(),
                    message,
                });
            }
            return Err(self.fail(message, None));
        }
    }
}

/// When each provider (by key and base URL) may be called again, learnt from rate-limited
/// answers and shared by every [`ApiClient`] of the process: the limit is the provider's, not
/// one request's, so requests issued while it lasts wait instead of drawing more 429s.
fn gates() -> &'static Mutex<HashMap<String, tokio::time::Instant>> {
    static GATES: OnceLock<Mutex<HashMap<String, tokio::time::Instant>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// The wait a rate-limited response asks for, or `None` when it is not a rate limit: a 429, a
/// 503 with `Retry-After` (overload), or a 403 that says it is a limit (GitHub's secondary
/// limit with `Retry-After`, its primary limit with `x-ratelimit-remaining: 0`).
fn rate_limit_wait(status: StatusCode, h: &reqwest::header::HeaderMap) -> Option<Duration> {
    rate_limit_wait_at(status, h, time::OffsetDateTime::now_utc())
}

fn rate_limit_wait_at(
    status: StatusCode,
    h: &reqwest::header::HeaderMap,
    now: time::OffsetDateTime,
) -> Option<Duration> {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = header("retry-after").and_then(|v| retry_after(v, now));
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
        || (status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted));
    if !limited {
        return None;
    }
    if let Some(wait) = retry_after {
        return Some(wait);
    }
    if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok()) {
        return Some(Duration::from_secs(
            u64::try_from(reset - now.unix_timestamp()).unwrap_or(0).max(1),
        ));
    }
    // A 429 without a hint: GitHub's guidance is to wait at least a minute.
    Some(Duration::from_secs(60))
}

/// `Retry-After` (RFC 9110 §10.2.3): delay seconds, or an HTTP date (IMF-fixdate) — a date in
/// the past means "now".
fn retry_after(v: &str, now: time::OffsetDateTime) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, fmt).ok()?.assume_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = time::macros::datetime!(2015-10-21 07:28:00 UTC);
        let wait = |status: u16, h: &[(&'static str, &str)]| {
            rate_limit_wait_at(StatusCode::from_u16(status).unwrap(), &headers(h), now)
        };
        assert_eq!(wait(429, &[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(
            wait(503, &[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait(429, &[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(wait(503, &[]), None, "a 503 without Retry-After is an outage, not a limit");
        assert_eq!(wait(403, &[]), None, "a plain 403 is a permission error");
        assert_eq!(wait(403, &[("retry-after", "3")]), Some(Duration::from_secs(3)));
        let reset = (now.unix_timestamp() + 12).to_string();
        assert_eq!(
            wait(403, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &reset)]),
            Some(Duration::from_secs(12))
        );
        assert_eq!(wait(429, &[]), Some(Duration::from_secs(60)));
        assert_eq!(wait(429, &[("retry-after", "soon")]), Some(Duration::from_secs(60)));
    }
}

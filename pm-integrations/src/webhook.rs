//! Webhooks in both directions, verified and signed on raw bytes.
//!
//! - [`inbound`]: checks that a request really comes from a provider — GitHub
//!   `X-Hub-Signature-256`, Jira `X-Hub-Signature`, Slack v0 (with its 5-minute window), Microsoft
//!   Graph `clientState` and validation handshake, Google channel tokens.
//! - [`outbound`]: the [Standard Webhooks](https://www.standardwebhooks.com/) scheme pm uses to
//!   sign the events it sends (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`),
//!   with several secrets at once for rotation, and its verifier for receivers.
//!
//! Invariants: every check runs on the exact bytes received (never a re-serialised body); every
//! comparison of a secret-derived value is constant-time (`subtle`); a failure says *what* was
//! wrong (missing header, malformed value, stale timestamp) but never leaks the expected value.

use std::fmt;

pub mod inbound;
pub mod outbound;

/// Why an inbound (or Standard Webhooks) request was not accepted as authentic. Endpoints answer
/// every variant with 401; the variant goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header (or query parameter / body field) is absent.
    #[error("missing {header}")]
    Missing {
        /// The header, e.g. `X-Hub-Signature-256`.
        header: &'static str,
    },
    /// The header is present but not in the expected shape (no `sha256=` prefix, not hex,
    /// truncated, not a number, ...).
    #[error("malformed {header}: {reason}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The signature (or token) does not match the payload and secret.
    #[error("signature does not match")]
    Mismatch,
    /// The timestamp is older than the tolerance window (a replay or a very late delivery).
    #[error("timestamp is {age_secs} s old (window {window_secs} s)")]
    Stale {
        /// How old the timestamp is.
        age_secs: i64,
        /// The tolerance.
        window_secs: i64,
    },
    /// The timestamp lies further in the future than the tolerance window.
    #[error("timestamp is {ahead_secs} s in the future (window {window_secs} s)")]
    Future {
        /// How far ahead the timestamp is.
        ahead_secs: i64,
        /// The tolerance.
        window_secs: i64,
    },
}

/// The parts of an HTTP request a verifier looks at, independent of any HTTP framework.
///
/// Header names are matched case-insensitively; `body` is the raw bytes as received.
#[derive(Clone, Default)]
pub struct InboundRequest {
    /// Header name/value pairs (values that were not valid UTF-8 are best left out).
    pub headers: Vec<(String, String)>,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl InboundRequest {
    /// A request with the given body and no headers.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self { headers: Vec::new(), query: None, body: body.into() }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the query string (builder style).
    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    /// Header `name`, or [`SignatureError::Missing`].
    pub fn require(&self, name: &'static str) -> Result<&str, SignatureError> {
        self.get(name).ok_or(SignatureError::Missing { header: name })
    }
}

impl fmt::Debug for InboundRequest {
    // Headers may carry tokens and the body may be large: show names and sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundRequest")
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("query", &self.query.as_ref().map(|_| "…"))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// HMAC-SHA256 over the concatenation of `parts` (so callers never build a joined copy of a large
/// body just to sign it).
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // aws-lc (already linked for rustls) hashes about twice as fast as RustCrypto's sha2 on
    // our machines; webhook bodies are up to a few hundred KB (BENCHMARKS.md, issue 6).
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Constant-time equality of two byte strings (their lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Decodes exactly 32 bytes of lower-case hex (64 characters) — what every provider sends.
/// Upper case is refused so that any one-character change of a signature fails.
pub(crate) fn decode_hex32(header: &'static str, s: &str) -> Result<[u8; 32], SignatureError> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return Err(SignatureError::Malformed { header, reason: "expected 64 hex digits" });
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]);
        let lo = hex_val(pair[1]);
        match (hi, lo) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return Err(SignatureError::Malformed { header, reason: "not hexadecimal" }),
        }
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Checks a Unix timestamp against `now` with a symmetric tolerance.
pub(crate) fn check_window(ts: i64, now: i64, window_secs: i64) -> Result<(), SignatureError> {
    let age = now.saturating_sub(ts);
    if age > window_secs {
        return Err(SignatureError::Stale { age_secs: age, window_secs });
    }
    if -age > window_secs {
        return Err(SignatureError::Future { ahead_secs: -age, window_secs });
    }
    Ok(())
}

/// Parses a Unix-seconds header strictly (ASCII digits only, no sign or spaces).
pub(crate) fn parse_unix(header: &'static str, s: &str) -> Result<i64, SignatureError> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed { header, reason: "expected Unix seconds" });
    }
    s.parse().map_err(|_| SignatureError::Malformed { header, reason: "expected Unix seconds" })
}

//! Inbound webhook authentication, one function per provider scheme.
//!
//! Each verifier takes the raw body and the request's headers and returns `Ok(())` only for an
//! authentic request. They are pure (the clock is a parameter), so the test vectors in
//! `shared/vectors/webhooks.json` check them directly.
//!
//! | provider | header(s) | scheme |
//! |---|---|---|
//! | GitHub | `X-Hub-Signature-256` | `sha256=` + hex HMAC-SHA256(secret, body) |
//! | Jira | `X-Hub-Signature` | same algorithm (only `sha256=` is accepted; SHA-1 is refused) |
//! | Slack | `X-Slack-Signature`, `X-Slack-Request-Timestamp` | `v0=` + hex HMAC-SHA256(secret, `v0:{ts}:{body}`), ts within 5 minutes |
//! | Microsoft Graph | body `value[].clientState`; `?validationToken=` | shared secret per subscription; echo the token |
//! | Google Calendar | `X-Goog-Channel-Token` | shared token per channel |

use time::OffsetDateTime;

use super::{InboundRequest, SignatureError, check_window, ct_eq, decode_hex32, hmac_sha256};

/// GitHub's signature header.
pub const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
/// GitHub's delivery id header (dedupe key).
pub const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";
/// GitHub's event name header.
pub const GITHUB_EVENT: &str = "X-GitHub-Event";
/// Jira's signature header.
pub const JIRA_SIGNATURE: &str = "X-Hub-Signature";
/// Jira's delivery id header (dedupe key).
pub const JIRA_DELIVERY: &str = "X-Atlassian-Webhook-Identifier";
/// Slack's signature header.
pub const SLACK_SIGNATURE: &str = "X-Slack-Signature";
/// Slack's timestamp header.
pub const SLACK_TIMESTAMP: &str = "X-Slack-Request-Timestamp";
/// Google's channel token header.
pub const GOOGLE_CHANNEL_TOKEN: &str = "X-Goog-Channel-Token";
/// Google's channel id header.
pub const GOOGLE_CHANNEL_ID: &str = "X-Goog-Channel-ID";
/// Google's per-channel message number (dedupe key together with the channel id).
pub const GOOGLE_MESSAGE_NUMBER: &str = "X-Goog-Message-Number";

/// Slack's replay window: requests whose timestamp is further than this from now are refused.
pub const SLACK_WINDOW_SECS: i64 = 300;

/// Verifies GitHub's `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn verify_github(secret: &[u8], req: &InboundRequest) -> Result<(), SignatureError> {
    verify_hub_signature(GITHUB_SIGNATURE, secret, req)
}

/// Verifies Jira's `X-Hub-Signature: sha256=<hex>` (the WebSub scheme GitHub also uses). Only
/// SHA-256 is accepted: a `sha1=` value is refused as malformed rather than checked weakly.
pub fn verify_jira(secret: &[u8], req: &InboundRequest) -> Result<(), SignatureError> {
    verify_hub_signature(JIRA_SIGNATURE, secret, req)
}

fn verify_hub_signature(
    header: &'static str,
    secret: &[u8],
    req: &InboundRequest,
) -> Result<(), SignatureError> {
    let value = req.require(header)?.trim();
    let hex = value
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed { header, reason: "missing sha256= prefix" })?;
    let given = decode_hex32(header, hex)?;
    let expected = hmac_sha256(secret, &[&req.body]);
    if ct_eq(&given, &expected) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// Verifies a bare lower-case hex HMAC-SHA256 of the raw body carried in `header` — the scheme of
/// Gitea (`X-Gitea-Signature`), Gogs and others; a building block for providers hosts write.
pub fn verify_hmac_sha256_hex(
    header: &'static str,
    secret: &[u8],
    req: &InboundRequest,
) -> Result<(), SignatureError> {
    let given = decode_hex32(header, req.require(header)?.trim())?;
    let expected = hmac_sha256(secret, &[&req.body]);
    if ct_eq(&given, &expected) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// The bare hex HMAC-SHA256 of `body` that [`verify_hmac_sha256_hex`] checks.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    super::hex(&hmac_sha256(secret, &[body]))
}

/// The `sha256=<hex>` value GitHub/Jira would send for `body` (for tests and local tools).
pub fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", super::hex(&hmac_sha256(secret, &[body])))
}

/// Verifies Slack's signing scheme v0: `X-Slack-Signature: v0=<hex>` of
/// `v0:{X-Slack-Request-Timestamp}:{body}`, with the timestamp no more than `window_secs`
/// (normally [`SLACK_WINDOW_SECS`]) away from `now`, in either direction.
pub fn verify_slack(
    secret: &[u8],
    req: &InboundRequest,
    now: OffsetDateTime,
    window_secs: i64,
) -> Result<(), SignatureError> {
    let ts_raw = req.require(SLACK_TIMESTAMP)?.trim();
    let ts = super::parse_unix(SLACK_TIMESTAMP, ts_raw)?;
    let value = req.require(SLACK_SIGNATURE)?.trim();
    let hex = value.strip_prefix("v0=").ok_or(SignatureError::Malformed {
        header: SLACK_SIGNATURE,
        reason: "missing v0= prefix",
    })?;
    let given = decode_hex32(SLACK_SIGNATURE, hex)?;
    // The signature is checked before the window so a forged request learns nothing about our
    // clock; both must pass.
    let expected = hmac_sha256(secret, &[b"v0:", ts_raw.as_bytes(), b":", &req.body]);
    if !ct_eq(&given, &expected) {
        return Err(SignatureError::Mismatch);
    }
    check_window(ts, now.unix_timestamp(), window_secs)
}

/// The `v0=<hex>` value Slack would send (for tests and local tools).
pub fn slack_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    format!("v0={}", super::hex(&hmac_sha256(secret, &[b"v0:", ts.as_bytes(), b":", body])))
}

/// Microsoft Graph's subscription validation handshake: when a subscription is created, Graph
/// POSTs with `?validationToken=…` and expects the decoded token back as `text/plain` within 10
/// seconds. Returns the token to echo, or `None` when this is not a handshake.
///
/// The token is bounded (Graph's are a few hundred bytes) and must be printable, so the echo
/// cannot be turned into a reflected-content vector.
pub fn graph_validation_token(req: &InboundRequest) -> Result<Option<String>, SignatureError> {
    let Some(token) = req.query_param("validationToken") else { return Ok(None) };
    if token.is_empty() || token.len() > 1024 || token.chars().any(char::is_control) {
        return Err(SignatureError::Malformed {
            header: "validationToken",
            reason: "empty, longer than 1024 bytes or containing control characters",
        });
    }
    Ok(Some(token))
}

/// Verifies a Microsoft Graph change (or lifecycle) notification batch: every item of `value`
/// must carry our subscription's `clientState`. A batch with one foreign item is refused whole.
pub fn verify_graph(client_state: &[u8], req: &InboundRequest) -> Result<(), SignatureError> {
    const FIELD: &str = "clientState";
    let body: serde_json::Value = serde_json::from_slice(&req.body)
        .map_err(|_| SignatureError::Malformed { header: "body", reason: "not JSON" })?;
    let items = body
        .get("value")
        .and_then(|v| v.as_array())
        .ok_or(SignatureError::Malformed { header: "body", reason: "no value array" })?;
    if items.is_empty() {
        return Err(SignatureError::Malformed { header: "body", reason: "empty value array" });
    }
    for item in items {
        let given = item
            .get(FIELD)
            .and_then(|v| v.as_str())
            .ok_or(SignatureError::Missing { header: FIELD })?;
        if !ct_eq(given.as_bytes(), client_state) {
            return Err(SignatureError::Mismatch);
        }
    }
    Ok(())
}

/// Verifies a Google Calendar push notification: `X-Goog-Channel-Token` must equal the token we
/// set when opening the channel.
pub fn verify_google(channel_token: &[u8], req: &InboundRequest) -> Result<(), SignatureError> {
    let given = req.require(GOOGLE_CHANNEL_TOKEN)?;
    req.require(GOOGLE_CHANNEL_ID)?;
    if ct_eq(given.as_bytes(), channel_token) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature_round_trips_and_rejects_other_secrets() {
        let sig = hub_signature(b"s3cret", b"{}");
        let req = InboundRequest::new("{}").header("x-hub-signature-256", sig);
        assert_eq!(verify_github(b"s3cret", &req), Ok(()));
        assert_eq!(verify_github(b"other", &req), Err(SignatureError::Mismatch));
    }

    #[test]
    fn bare_hex_signatures() {
        let sig = hmac_sha256_hex(b"k", b"{}");
        let req = InboundRequest::new("{}").header("X-Gitea-Signature", sig.clone());
        assert_eq!(verify_hmac_sha256_hex("X-Gitea-Signature", b"k", &req), Ok(()));
        assert_eq!(
            verify_hmac_sha256_hex("X-Gitea-Signature", b"other", &req),
            Err(SignatureError::Mismatch)
        );
        let short = InboundRequest::new("{}").header("X-Gitea-Signature", &sig[..10]);
        assert!(matches!(
            verify_hmac_sha256_hex("X-Gitea-Signature", b"k", &short),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn jira_refuses_sha1() {
        let req = InboundRequest::new("x").header(JIRA_SIGNATURE, "sha1=abcd");
        assert!(matches!(verify_jira(b"k", &req), Err(SignatureError::Malformed { .. })));
    }

    #[test]
    fn graph_handshake_and_client_state() {
        let req = InboundRequest::new("").query("validationToken=Validation%3A%20Testing");
        assert_eq!(graph_validation_token(&req).unwrap().as_deref(), Some("Validation: Testing"));
        let ok = InboundRequest::new(r#"{"value":[{"clientState":"abc"},{"clientState":"abc"}]}"#);
        assert_eq!(verify_graph(b"abc", &ok), Ok(()));
        let mixed = InboundRequest::new(r#"{"value":[{"clientState":"abc"},{"clientState":"x"}]}"#);
        assert_eq!(verify_graph(b"abc", &mixed), Err(SignatureError::Mismatch));
        let none = InboundRequest::new(r#"{"value":[{}]}"#);
        assert!(matches!(verify_graph(b"abc", &none), Err(SignatureError::Missing { .. })));
    }

    #[test]
    fn google_channel_token() {
        let req = InboundRequest::new("")
            .header(GOOGLE_CHANNEL_TOKEN, "tok")
            .header(GOOGLE_CHANNEL_ID, "ch1");
        assert_eq!(verify_google(b"tok", &req), Ok(()));
        assert_eq!(verify_google(b"tok2", &req), Err(SignatureError::Mismatch));
    }
}

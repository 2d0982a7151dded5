//! Standard Webhooks signing (what pm sends) and verification (what receivers — and our tests —
//! run).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
//! `v1,` + base64(HMAC-SHA256(key, content)) where the key is the base64 part of a
//! `whsec_…` secret. A subscription may hold several secrets while one is rotated: pm signs with
//! each of them and sends the signatures space-separated, so a receiver holding either the old or
//! the new secret accepts the message.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use time::OffsetDateTime;

use super::{SignatureError, check_window, ct_eq, hmac_sha256, parse_unix};
use crate::{Error, Result};

/// Header carrying the message id (stable across retries: receivers dedupe on it).
pub const WEBHOOK_ID: &str = "webhook-id";
/// Header carrying the Unix-seconds send time.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more space-separated `v1,<base64>` signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// The receivers' default tolerance for the timestamp, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

const PREFIX: &str = "whsec_";

/// A Standard Webhooks signing secret (`whsec_` + base64 of 24–64 random bytes). Its `Debug`
/// never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn parse(s: &str) -> Result<Self> {
        let b64 = s.strip_prefix(PREFIX).unwrap_or(s);
        let key = B64
            .decode(b64)
            .map_err(|_| Error::invalid("secret", "must be whsec_ followed by base64"))?;
        if !(16..=64).contains(&key.len()) {
            return Err(Error::invalid("secret", "key must be 16 to 64 bytes"));
        }
        Ok(Self(key))
    }

    /// A fresh random secret of 32 bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source is available");
        Self(key)
    }

    /// The `whsec_…` form, to show once to the subscriber and to store (sealed).
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", B64.encode(&self.0))
    }

    /// `v1,<base64>` for one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, payload: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.0, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", payload]);
        format!("v1,{}", B64.encode(mac))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// The three headers of a signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`: one `v1,<b64>` per secret, space-separated.
    pub signature: String,
}

impl SignedHeaders {
    /// As `(name, value)` pairs, ready for any HTTP client.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            (WEBHOOK_ID, &self.id),
            (WEBHOOK_TIMESTAMP, &self.timestamp),
            (WEBHOOK_SIGNATURE, &self.signature),
        ]
    }
}

/// Signs `payload` with every secret in `secrets` (at least one).
pub fn sign(
    secrets: &[WebhookSecret],
    msg_id: &str,
    at: OffsetDateTime,
    payload: &[u8],
) -> Result<SignedHeaders> {
    if secrets.is_empty() {
        return Err(Error::invalid("secrets", "at least one signing secret is required"));
    }
    validate_msg_id(msg_id)?;
    let ts = at.unix_timestamp();
    let signature =
        secrets.iter().map(|s| s.sign(msg_id, ts, payload)).collect::<Vec<_>>().join(" ");
    Ok(SignedHeaders { id: msg_id.to_owned(), timestamp: ts.to_string(), signature })
}

fn validate_msg_id(id: &str) -> Result<()> {
    // The id is part of the signed content, delimited by '.', and travels in a header.
    if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
        return Err(Error::invalid("webhook_id", "1-256 visible ASCII characters, no '.'"));
    }
    Ok(())
}

/// Verifies a Standard Webhooks message: the timestamp within `tolerance_secs` of `now`, and one
/// of the space-separated `v1,` signatures matching one of `secrets`. Signatures of other
/// versions (or without a version prefix) are ignored, so a message carrying only those fails.
pub fn verify(
    secrets: &[WebhookSecret],
    msg_id: &str,
    timestamp: &str,
    signature: &str,
    payload: &[u8],
    now: OffsetDateTime,
    tolerance_secs: i64,
) -> std::result::Result<(), SignatureError> {
    if msg_id.is_empty() {
        return Err(SignatureError::Missing { header: WEBHOOK_ID });
    }
    let ts = parse_unix(WEBHOOK_TIMESTAMP, timestamp.trim())?;
    if signature.trim().is_empty() {
        return Err(SignatureError::Missing { header: WEBHOOK_SIGNATURE });
    }
    let mut any_v1 = false;
    let mut matched = false;
    for candidate in signature.split_ascii_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else { continue };
        any_v1 = true;
        let Ok(given) = B64.decode(b64) else { continue };
        for secret in secrets {
            let expected = hmac_sha256(
                &secret.0,
                &[msg_id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", payload],
            );
            // No early exit: every candidate is compared, so timing does not reveal which one
            // (or which secret) matched.
            matched |= ct_eq(&given, &expected);
        }
    }
    if !any_v1 {
        return Err(SignatureError::Malformed {
            header: WEBHOOK_SIGNATURE,
            reason: "no v1, signature",
        });
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    check_window(ts, now.unix_timestamp(), tolerance_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_signs_with_every_secret_and_either_verifies() {
        let old = WebhookSecret::generate();
        let new = WebhookSecret::generate();
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let h = sign(&[old.clone(), new.clone()], "msg_1", now, b"{}").unwrap();
        assert_eq!(h.signature.split(' ').count(), 2);
        for s in [old, new] {
            verify(&[s], &h.id, &h.timestamp, &h.signature, b"{}", now, 300).unwrap();
        }
        let other = WebhookSecret::generate();
        assert_eq!(
            verify(&[other], &h.id, &h.timestamp, &h.signature, b"{}", now, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn secrets_parse_and_hide() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&s.expose()).unwrap(), s);
        assert_eq!(format!("{s:?}"), "WebhookSecret(…)");
        assert!(WebhookSecret::parse("whsec_!!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(validate_msg_id("a.b").is_err());
    }
}

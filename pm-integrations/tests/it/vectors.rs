//! Every published vector in `tests/vectors/webhooks.json` (a copy of the shared
//! `vectors/webhooks.json`) verifies, and every one-byte change of payload, signature, timestamp
//! or id, stale and future timestamps, missing prefixes and truncated signatures are refused.

use pm_integrations::webhook::inbound::*;
use pm_integrations::webhook::outbound::{self, WebhookSecret};
use pm_integrations::webhook::{InboundRequest, SignatureError};
use serde_json::Value;
use time::OffsetDateTime;

fn vectors() -> Vec<Value> {
    let raw = include_str!("../vectors/webhooks.json");
    let doc: Value = serde_json::from_str(raw).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector field {k}"))
}

fn at(ts: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(ts).unwrap()
}

/// Every variant of `value` with exactly one byte changed: each position flipped to a
/// different character of the same alphabet (still well-formed, so the comparison itself must
/// refuse it) and to a byte outside it.
fn one_byte_changes(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    for i in 0..bytes.len() {
        for replacement in [swap_in_alphabet(bytes[i]), bytes[i] ^ 0x01] {
            if replacement == bytes[i] || !replacement.is_ascii() {
                continue;
            }
            let mut b = bytes.to_vec();
            b[i] = replacement;
            out.push(String::from_utf8(b).unwrap());
        }
    }
    out
}

fn swap_in_alphabet(c: u8) -> u8 {
    match c {
        b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'Y' => c + 1,
        b'9' => b'0',
        b'f' => b'a',
        b'Z' => b'A',
        b'g'..=b'y' => c + 1,
        b'z' => b'a',
        other => other,
    }
}

fn flipped_payloads(payload: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..payload.len()).map(move |i| {
        let mut p = payload.to_vec();
        p[i] ^= 0x20;
        p
    })
}

type HubVerify = fn(&[u8], &InboundRequest) -> Result<(), SignatureError>;

fn check_hub(v: &Value, header: &str, verify: HubVerify) {
    let secret = s(v, "secret").as_bytes();
    let payload = s(v, "payload").as_bytes();
    let expected = s(v, "expected");
    let req = |body: &[u8], sig: &str| InboundRequest::new(body).header(header, sig);

    assert_eq!(verify(secret, &req(payload, expected)), Ok(()), "vector must verify: {v}");
    assert_eq!(hub_signature(secret, payload), expected, "signing reproduces the vector");

    for body in flipped_payloads(payload) {
        assert_eq!(verify(secret, &req(&body, expected)), Err(SignatureError::Mismatch));
    }
    for sig in one_byte_changes(expected) {
        assert!(verify(secret, &req(payload, &sig)).is_err(), "changed signature {sig} accepted");
    }
    let bare = expected.strip_prefix("sha256=").unwrap();
    let refused = [
        bare.to_owned(),                                       // missing prefix
        format!("sha1={bare}"),                                // other algorithm
        expected[..expected.len() - 1].to_owned(),             // truncated by one
        expected[..expected.len() / 2].to_owned(),             // truncated by half
        "sha256=".to_owned(),                                  // empty
        expected.to_uppercase().replace("SHA256=", "sha256="), // case-changed hex
        format!("{expected}00"),                               // extended
    ];
    for sig in refused {
        assert!(verify(secret, &req(payload, &sig)).is_err(), "{sig} accepted");
    }
    assert_eq!(
        verify(secret, &InboundRequest::new(payload)),
        Err(SignatureError::Missing {
            header: if header == GITHUB_SIGNATURE { GITHUB_SIGNATURE } else { JIRA_SIGNATURE }
        })
    );
    assert_eq!(verify(b"another secret", &req(payload, expected)), Err(SignatureError::Mismatch));
}

fn check_slack(v: &Value) {
    let secret = s(v, "secret").as_bytes();
    let payload = s(v, "payload").as_bytes();
    let expected = s(v, "expected");
    let ts = v["timestamp"].as_i64().unwrap();
    let now = at(v["now"].as_i64().unwrap());
    let window = v["window_seconds"].as_i64().unwrap();
    assert_eq!(window, SLACK_WINDOW_SECS);
    let req = |body: &[u8], ts: &str, sig: &str| {
        InboundRequest::new(body).header(SLACK_TIMESTAMP, ts).header(SLACK_SIGNATURE, sig)
    };
    let ts_s = ts.to_string();

    assert_eq!(verify_slack(secret, &req(payload, &ts_s, expected), now, window), Ok(()));
    assert_eq!(slack_signature(secret, ts, payload), expected);
    // The window's edges are inside; one second beyond is not, in either direction.
    for edge in [ts - window, ts + window] {
        assert_eq!(verify_slack(secret, &req(payload, &ts_s, expected), at(edge), window), Ok(()));
    }
    assert!(matches!(
        verify_slack(secret, &req(payload, &ts_s, expected), at(ts + window + 1), window),
        Err(SignatureError::Stale { .. })
    ));
    assert!(matches!(
        verify_slack(secret, &req(payload, &ts_s, expected), at(ts - window - 1), window),
        Err(SignatureError::Future { .. })
    ));

    for body in flipped_payloads(payload) {
        assert_eq!(
            verify_slack(secret, &req(&body, &ts_s, expected), now, window),
            Err(SignatureError::Mismatch)
        );
    }
    for sig in one_byte_changes(expected) {
        assert!(verify_slack(secret, &req(payload, &ts_s, &sig), now, window).is_err());
    }
    for t in one_byte_changes(&ts_s) {
        assert!(verify_slack(secret, &req(payload, &t, expected), now, window).is_err(), "ts {t}");
    }
    let bare = expected.strip_prefix("v0=").unwrap();
    for sig in [bare, &expected[..expected.len() - 1], &expected[..10], "v0="] {
        assert!(verify_slack(secret, &req(payload, &ts_s, sig), now, window).is_err(), "{sig}");
    }
    assert!(matches!(
        verify_slack(
            secret,
            &InboundRequest::new(payload).header(SLACK_SIGNATURE, expected),
            now,
            window
        ),
        Err(SignatureError::Missing { .. })
    ));
    assert!(matches!(
        verify_slack(
            secret,
            &InboundRequest::new(payload).header(SLACK_TIMESTAMP, &*ts_s),
            now,
            window
        ),
        Err(SignatureError::Missing { .. })
    ));
}

fn check_standard(v: &Value) {
    let secrets = [WebhookSecret::parse(s(v, "secret")).unwrap()];
    let payload = s(v, "payload").as_bytes();
    let expected = s(v, "expected");
    let id = s(v, "id");
    let ts = v["timestamp"].as_i64().unwrap();
    let ts_s = ts.to_string();
    let now = at(ts);
    let tol = outbound::DEFAULT_TOLERANCE_SECS;
    let verify = |id: &str, t: &str, sig: &str, body: &[u8], now| {
        outbound::verify(&secrets, id, t, sig, body, now, tol)
    };

    assert_eq!(verify(id, &ts_s, expected, payload, now), Ok(()));
    let signed = outbound::sign(&secrets, id, now, payload).unwrap();
    assert_eq!(signed.signature, expected, "signing reproduces the vector");
    // Several signatures (rotation): one matching is enough, in any position.
    assert_eq!(verify(id, &ts_s, &format!("v1,Zm9v {expected} v2,YmFy"), payload, now), Ok(()));

    assert!(matches!(
        verify(id, &ts_s, expected, payload, at(ts + tol + 1)),
        Err(SignatureError::Stale { .. })
    ));
    assert!(matches!(
        verify(id, &ts_s, expected, payload, at(ts - tol - 1)),
        Err(SignatureError::Future { .. })
    ));

    for body in flipped_payloads(payload) {
        assert_eq!(verify(id, &ts_s, expected, &body, now), Err(SignatureError::Mismatch));
    }
    for sig in one_byte_changes(expected) {
        assert!(verify(id, &ts_s, &sig, payload, now).is_err(), "changed signature {sig} accepted");
    }
    for changed in one_byte_changes(id) {
        assert!(verify(&changed, &ts_s, expected, payload, now).is_err(), "id {changed}");
    }
    for t in one_byte_changes(&ts_s) {
        assert!(verify(id, &t, expected, payload, now).is_err(), "timestamp {t}");
    }
    let bare = expected.strip_prefix("v1,").unwrap();
    for sig in [bare, &expected[..expected.len() - 1], &expected[..12], "v1,", "", "v2,abc"] {
        assert!(verify(id, &ts_s, sig, payload, now).is_err(), "{sig:?} accepted");
    }
}

#[test]
fn every_vector_verifies_and_every_mutation_is_refused() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 6, "the shared file has six signature vectors");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for v in &vectors {
        let scheme = s(v, "scheme");
        *seen.entry(scheme.to_owned()).or_default() += 1;
        match scheme {
            "github" => {
                assert_eq!(s(v, "header"), GITHUB_SIGNATURE);
                check_hub(v, GITHUB_SIGNATURE, verify_github);
            }
            "jira" => {
                assert_eq!(s(v, "header"), JIRA_SIGNATURE);
                check_hub(v, JIRA_SIGNATURE, verify_jira);
            }
            "slack" => check_slack(v),
            "standard-webhooks" => check_standard(v),
            other => panic!("unknown scheme {other}"),
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

//! The hash chain of the audit log: every record carries the SHA-256 of its own fields and of the
//! previous record's hash, so editing, reordering or deleting a record in the middle of the log
//! (or rewriting history from some record on without recomputing every later hash) is detected by
//! [`verify_chain`]. Adapters compute hashes with [`record_hash`] when appending, inside the write
//! transaction, after serializing appends (one writer on SQLite, an advisory lock on PostgreSQL).
//!
//! A chain cannot, by itself, reveal truncation of its newest records; hosts that need that keep
//! the latest hash (the revision token's companion) somewhere else, e.g. in their own logs.

use pm_core::event::Actor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::clock::micros;
use crate::model::AuditRecord;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a record with these fields, as lowercase hex.
///
/// Input: `seq`, `at` (µs), the actor and payload as serde_json text, `action`, `subject` and
/// `prev_hash`, each followed by a unit separator so fields cannot run into each other.
pub fn record_hash(
    prev_hash: &str,
    seq: i64,
    at: OffsetDateTime,
    actor: &Actor,
    action: &str,
    subject: &str,
    payload: &serde_json::Value,
) -> String {
    let mut h = Sha256::new();
    let actor = serde_json::to_string(actor).unwrap_or_default();
    let payload = serde_json::to_string(payload).unwrap_or_default();
    for part in
        [prev_hash, &seq.to_string(), &micros(at).to_string(), &actor, action, subject, &payload]
    {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The result of verifying the audit chain.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Whether every record checked out.
    pub valid: bool,
    /// How many records were checked.
    pub records: u64,
    /// The hash of the last record (the chain head), [`GENESIS`] when empty.
    pub head: String,
    /// The first record that does not check out.
    pub broken_at: Option<i64>,
    /// What is wrong with it.
    pub problem: Option<String>,
}

/// Incremental verifier: feed records in `seq` order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev: String,
    records: u64,
    broken: Option<(i64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { expected_seq: 1, prev: GENESIS.to_owned(), records: 0, broken: None }
    }
}

impl ChainVerifier {
    /// Checks the next record; after the first break, further records are ignored.
    pub fn push(&mut self, r: &AuditRecord) {
        if self.broken.is_some() {
            return;
        }
        self.records += 1;
        let problem = if r.seq != self.expected_seq {
            Some(format!(
                "expected seq {}, found {} (a record is missing)",
                self.expected_seq, r.seq
            ))
        } else if r.prev_hash != self.prev {
            Some("prev_hash does not match the previous record's hash".to_owned())
        } else if record_hash(
            &r.prev_hash,
            r.seq,
            r.at,
            &r.actor,
            &r.action,
            &r.subject,
            &r.payload,
        ) != r.hash
        {
            Some("hash does not match the record's contents (it was altered)".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => self.broken = Some((r.seq, p)),
            None => {
                self.expected_seq += 1;
                self.prev.clone_from(&r.hash);
            }
        }
    }

    /// Whether a break was found so far.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The report.
    pub fn finish(self) -> ChainReport {
        ChainReport {
            valid: self.broken.is_none(),
            records: self.records,
            head: self.prev,
            broken_at: self.broken.as_ref().map(|b| b.0),
            problem: self.broken.map(|b| b.1),
        }
    }
}

/// Verifies records given in `seq` order from the first.
pub fn verify_chain<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> ChainReport {
    let mut v = ChainVerifier::default();
    for r in records {
        v.push(r);
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(seq);
                let payload = serde_json::json!({"n": seq});
                let hash = record_hash(&prev, seq, at, &Actor::System, "x", "s", &payload);
                let r = AuditRecord {
                    seq,
                    at,
                    actor: Actor::System,
                    action: "x".into(),
                    subject: "s".into(),
                    payload,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies_and_tampering_is_found() {
        let mut c = chain(5);
        assert!(verify_chain(&c).valid);
        c[2].payload = serde_json::json!({"n": 99});
        let r = verify_chain(&c);
        assert_eq!((r.valid, r.broken_at), (false, Some(3)));
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(&c).broken_at, Some(3));
    }
}

//! The sync engine's pure core: a three-way merge per field between our task (`local`), the
//! provider's item (`remote`) and the snapshot both agreed on at the last sync (`base`).
//!
//! For each field: if only one side changed since the base, that side's value wins and is
//! copied to the other; if both changed to the same value nothing is to do; if both changed
//! differently, the field's [`FieldPolicy`] decides and — unless the policy merges both edits
//! (labels' set union) — a [`FieldConflict`] is recorded so people can see what was overridden.
//! The result's `base` is the new snapshot to store with the mapping.
//!
//! Echo suppression lives here too: a change we pushed comes back as a webhook; its
//! [`fingerprint`] equals the one stored when we pushed, so it is ignored.

pub mod engine;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Field name → value: one side of a mapping at a point in time.
pub type Snapshot = BTreeMap<String, Value>;

/// Which side of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// pm's task.
    Local,
    /// The provider's item.
    Remote,
}

impl Side {
    /// Stored form: `local` or `remote`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "local" => Ok(Side::Local),
            "remote" => Ok(Side::Remote),
            other => {
                Err(crate::Error::invalid("side", format!("{other:?} is not local or remote")))
            }
        }
    }
}

/// How a field edited on both sides since the last sync is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", content = "side", rename_all = "snake_case")]
pub enum FieldPolicy {
    /// One side owns the field; its value wins (conflict recorded).
    Authoritative(Side),
    /// Both values are sets (JSON arrays): additions and removals of both sides are kept
    /// (labels). No conflict.
    Union,
    /// The side changed most recently wins (conflict recorded); a tie goes to the remote side,
    /// whose time is the provider's own clock and so the later-observed edit.
    Latest,
}

/// Per-field policies with a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPolicies {
    /// Policy of fields not listed.
    pub default: FieldPolicy,
    /// Per-field overrides.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldPolicy>,
}

impl Default for FieldPolicies {
    /// Labels merge as sets; everything else follows the latest edit.
    fn default() -> Self {
        let mut fields = BTreeMap::new();
        fields.insert("labels".to_owned(), FieldPolicy::Union);
        Self { default: FieldPolicy::Latest, fields }
    }
}

impl FieldPolicies {
    /// The policy of `field`.
    pub fn get(&self, field: &str) -> FieldPolicy {
        self.fields.get(field).copied().unwrap_or(self.default)
    }
}

/// When each side last changed (for [`FieldPolicy::Latest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeTimes {
    /// Our task's `updated_at`.
    pub local: OffsetDateTime,
    /// The provider's item update time.
    pub remote: OffsetDateTime,
}

/// A field both sides changed differently, and what was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldConflict {
    /// The field.
    pub field: String,
    /// The agreed value at the last sync (`null` if never synced).
    pub base: Value,
    /// Our value.
    pub local: Value,
    /// The provider's value.
    pub remote: Value,
    /// The value kept.
    pub resolved: Value,
    /// The side whose value was kept.
    pub winner: Side,
    /// The policy that decided.
    pub policy: FieldPolicy,
}

/// The outcome of a merge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeOutcome {
    /// Fields to write on our task.
    pub to_local: Snapshot,
    /// Fields to push to the provider.
    pub to_remote: Snapshot,
    /// Conflicts resolved by policy (to record).
    pub conflicts: Vec<FieldConflict>,
    /// The new base snapshot (what both sides hold after applying the changes).
    pub base: Snapshot,
}

impl MergeOutcome {
    /// Whether nothing needs writing anywhere.
    pub fn is_noop(&self) -> bool {
        self.to_local.is_empty() && self.to_remote.is_empty()
    }
}

/// Three-way merge of every field present in any of the three snapshots. A field absent from a
/// snapshot is `null` there.
pub fn merge(
    base: &Snapshot,
    local: &Snapshot,
    remote: &Snapshot,
    policies: &FieldPolicies,
    times: ChangeTimes,
) -> MergeOutcome {
    let mut out = MergeOutcome::default();
    let fields: std::collections::BTreeSet<&String> =
        base.keys().chain(local.keys()).chain(remote.keys()).collect();
    for field in fields {
        let b = base.get(field).unwrap_or(&Value::Null);
        let l = local.get(field).unwrap_or(&Value::Null);
        let r = remote.get(field).unwrap_or(&Value::Null);
        let resolved = if l == r {
            l.clone()
        } else if l == b {
            out.to_local.insert(field.clone(), r.clone());
            r.clone()
        } else if r == b {
            out.to_remote.insert(field.clone(), l.clone());
            l.clone()
        } else {
            let policy = policies.get(field);
            let (value, winner) = match policy {
                FieldPolicy::Authoritative(side) => (pick(side, l, r), side),
                FieldPolicy::Latest => {
                    let side = if times.local > times.remote { Side::Local } else { Side::Remote };
                    (pick(side, l, r), side)
                }
                FieldPolicy::Union => match union(b, l, r) {
                    Some(v) => (v, Side::Local),
                    // Not arrays: fall back to the latest edit, and say so.
                    None => {
                        let side =
                            if times.local > times.remote { Side::Local } else { Side::Remote };
                        (pick(side, l, r), side)
                    }
                },
            };
            let merged_cleanly = policy == FieldPolicy::Union && value.is_array();
            if !merged_cleanly {
                out.conflicts.push(FieldConflict {
                    field: field.clone(),
                    base: b.clone(),
                    local: l.clone(),
                    remote: r.clone(),
                    resolved: value.clone(),
                    winner,
                    policy,
                });
            }
            if &value != l {
                out.to_local.insert(field.clone(), value.clone());
            }
            if &value != r {
                out.to_remote.insert(field.clone(), value.clone());
            }
            value
        };
        if !resolved.is_null() {
            out.base.insert(field.clone(), resolved);
        }
    }
    out
}

fn pick(side: Side, l: &Value, r: &Value) -> Value {
    match side {
        Side::Local => l.clone(),
        Side::Remote => r.clone(),
    }
}

/// Set union honouring removals: an element is kept if both sides have it, or one side added it
/// (it is not in the base). Order: local's elements first, then remote's additions.
fn union(b: &Value, l: &Value, r: &Value) -> Option<Value> {
    let empty = Vec::new();
    let b = match b {
        Value::Null => &empty,
        v => v.as_array()?,
    };
    let (l, r) = (l.as_array().unwrap_or(&empty), r.as_array().unwrap_or(&empty));
    let keep = |x: &Value| (l.contains(x) && r.contains(x)) || !b.contains(x);
    let mut out: Vec<Value> = Vec::new();
    for x in l.iter().chain(r.iter()) {
        if keep(x) && !out.contains(x) {
            out.push(x.clone());
        }
    }
    Some(Value::Array(out))
}

/// A stable digest of a snapshot (keys are ordered by the `BTreeMap`), stored when we push and
/// compared when a webhook comes back, to recognise our own echo.
pub fn fingerprint(fields: &Snapshot) -> String {
    let canonical = serde_json::to_vec(fields).expect("a JSON map always serialises");
    crate::webhook::hex(&Sha256::digest(&canonical))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snap(v: Value) -> Snapshot {
        serde_json::from_value(v).unwrap()
    }

    fn times(local_later: bool) -> ChangeTimes {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let later = t + time::Duration::seconds(5);
        if local_later {
            ChangeTimes { local: later, remote: t }
        } else {
            ChangeTimes { local: t, remote: later }
        }
    }

    #[test]
    fn different_fields_merge_without_conflict() {
        let base = snap(json!({"title": "a", "due": "2025-01-01"}));
        let local = snap(json!({"title": "b", "due": "2025-01-01"}));
        let remote = snap(json!({"title": "a", "due": "2025-02-02"}));
        let m = merge(&base, &local, &remote, &FieldPolicies::default(), times(true));
        assert_eq!(m.to_local, snap(json!({"due": "2025-02-02"})));
        assert_eq!(m.to_remote, snap(json!({"title": "b"})));
        assert!(m.conflicts.is_empty());
        assert_eq!(m.base, snap(json!({"title": "b", "due": "2025-02-02"})));
    }

    #[test]
    fn same_field_follows_policy_and_records_conflict() {
        let base = snap(json!({"title": "a"}));
        let local = snap(json!({"title": "ours"}));
        let remote = snap(json!({"title": "theirs"}));
        let latest = merge(&base, &local, &remote, &FieldPolicies::default(), times(false));
        assert_eq!(latest.to_local, snap(json!({"title": "theirs"})));
        assert_eq!(latest.conflicts.len(), 1);
        assert_eq!(latest.conflicts[0].winner, Side::Remote);

        let mut owned = FieldPolicies::default();
        owned.fields.insert("title".into(), FieldPolicy::Authoritative(Side::Local));
        let m = merge(&base, &local, &remote, &owned, times(false));
        assert_eq!(m.to_remote, snap(json!({"title": "ours"})));
        assert!(m.to_local.is_empty());
        assert_eq!(m.conflicts[0].policy, FieldPolicy::Authoritative(Side::Local));
    }

    #[test]
    fn labels_union_keeps_both_edits() {
        let base = snap(json!({"labels": ["bug", "ui"]}));
        let local = snap(json!({"labels": ["bug", "ui", "p1"]}));
        let remote = snap(json!({"labels": ["bug", "backend"]}));
        let m = merge(&base, &local, &remote, &FieldPolicies::default(), times(true));
        assert!(m.conflicts.is_empty());
        assert_eq!(m.base["labels"], json!(["bug", "p1", "backend"]));
        assert_eq!(m.to_local["labels"], json!(["bug", "p1", "backend"]));
        assert_eq!(m.to_remote["labels"], json!(["bug", "p1", "backend"]));
    }

    #[test]
    fn fingerprint_is_order_independent() {
        let a = snap(json!({"a": 1, "b": 2}));
        let mut b = Snapshot::new();
        b.insert("b".into(), json!(2));
        b.insert("a".into(), json!(1));
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }
}

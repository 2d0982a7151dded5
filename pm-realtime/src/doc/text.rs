//! Applying a whole new text to a `YText` as a minimal edit, so a description changed outside
//! the document (REST) becomes a normal Yjs change that merges with concurrent edits instead of
//! replacing the document.
//!
//! The diff is the common prefix and suffix of the old and new strings, with one deletion and
//! one insertion between them. Offsets are computed on `char` boundaries and converted to the
//! document's offset kind (yrs defaults to UTF-8 bytes).

use yrs::{GetString, OffsetKind, Text, TextRef, TransactionMut};

/// Makes `text` read `new` with one deletion and one insertion between the common prefix and
/// suffix; returns whether anything changed.
pub fn apply_text_diff(text: &TextRef, txn: &mut TransactionMut<'_>, new: &str) -> bool {
    let old = text.get_string(txn);
    if old == new {
        return false;
    }
    let prefix: usize =
        old.chars().zip(new.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum();
    let (old_rest, new_rest) = (&old[prefix..], &new[prefix..]);
    let suffix: usize = old_rest
        .chars()
        .rev()
        .zip(new_rest.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let removed = &old_rest[..old_rest.len() - suffix];
    let inserted = &new_rest[..new_rest.len() - suffix];
    let offset_kind = txn.doc().offset_kind();
    let measure = |s: &str| -> u32 {
        let n = match offset_kind {
            OffsetKind::Bytes => s.len(),
            OffsetKind::Utf16 => s.encode_utf16().count(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    let at = measure(&old[..prefix]);
    if !removed.is_empty() {
        text.remove_range(txn, at, measure(removed));
    }
    if !inserted.is_empty() {
        text.insert(txn, at, inserted);
    }
    true
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, Transact};

    use super::*;

    fn check(old: &str, new: &str) {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, old);
        assert_eq!(apply_text_diff(&text, &mut txn, new), old != new);
        assert_eq!(text.get_string(&txn), new);
    }

    #[test]
    fn edits_reach_the_new_text() {
        check("", "");
        check("", "hello");
        check("hello", "");
        check("hello world", "hello brave world");
        check("hello brave world", "hello world");
        check("abc", "xyz");
        check("aaa", "aaaa");
        check("größe → ok", "grüße → ok!");
        check("emoji 😀 here", "emoji 😃 here");
    }
}

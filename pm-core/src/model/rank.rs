//! Fractional ranks: strings over `0-9a-z` compared byte-wise, so a task can always be placed
//! between two others without renumbering its neighbours.

const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const MID: u8 = b'i';

fn digit(c: u8) -> usize {
    DIGITS.iter().position(|&d| d == c).unwrap_or(0)
}

/// A rank strictly between `a` and `b` (`None` = open end). Requires `a < b` when both are given;
/// otherwise returns a rank after `a`.
pub fn between(a: Option<&str>, b: Option<&str>) -> String {
    let a = a.unwrap_or("").as_bytes();
    match b {
        None => after_bytes(a),
        Some(b) if b.as_bytes() <= a => after_bytes(a),
        Some(b) => {
            let b = b.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            loop {
                let da = a.get(i).map(|&c| digit(c)).unwrap_or(0);
                let db = b.get(i).map(|&c| digit(c)).unwrap_or(DIGITS.len());
                if db > da + 1 {
                    out.push(DIGITS[(da + db) / 2]);
                    return String::from_utf8(out).expect("ascii");
                }
                out.push(DIGITS[da]);
                if db == da + 1 {
                    // Take a's digit here; from now on b no longer constrains us.
                    let rest = if i + 1 < a.len() { &a[i + 1..] } else { &[][..] };
                    out.extend_from_slice(after_bytes(rest).as_bytes());
                    return String::from_utf8(out).expect("ascii");
                }
                i += 1;
            }
        }
    }
}

/// A rank after `a` (first rank when empty). Appends keep ranks short: the leading part is an
/// integer whose head letter encodes its digit count (`a` = 1 digit, `b` = 2, …), so appending
/// increments that integer instead of growing the string.
pub fn after(a: Option<&str>) -> String {
    let a = a.unwrap_or("").as_bytes();
    let Some(&head) = a.first() else {
        return "a0".to_string();
    };
    if !head.is_ascii_lowercase() {
        // Ranks made by `between` before the first integer rank sort below "a…".
        return "a0".to_string();
    }
    let width = (head - b'a') as usize + 1;
    let mut int: Vec<u8> = (0..width).map(|i| a.get(1 + i).copied().unwrap_or(b'0')).collect();
    // Increment with carry.
    for i in (0..width).rev() {
        let d = digit(int[i]);
        if d + 1 < DIGITS.len() {
            int[i] = DIGITS[d + 1];
            let mut out = vec![head];
            out.extend_from_slice(&int);
            return String::from_utf8(out).expect("ascii");
        }
        int[i] = b'0';
    }
    if head < b'z' {
        let mut out = vec![head + 1];
        out.extend(std::iter::repeat_n(b'0', width + 1));
        return String::from_utf8(out).expect("ascii");
    }
    let mut out = a.to_vec();
    out.push(MID);
    String::from_utf8(out).expect("ascii")
}

fn after_bytes(a: &[u8]) -> String {
    // Used inside `between` for the unconstrained tail: any string greater than `a`.
    for (i, &c) in a.iter().enumerate() {
        let d = digit(c);
        if d + 1 < DIGITS.len() {
            let mut out = a[..i].to_vec();
            out.push(DIGITS[d + 1]);
            return String::from_utf8(out).expect("ascii");
        }
    }
    let mut out = a.to_vec();
    out.push(MID);
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn appending_stays_ordered() {
        let mut prev = after(None);
        for _ in 0..100_000 {
            let next = after(Some(&prev));
            assert!(next > prev, "{next} <= {prev}");
            prev = next;
        }
        assert!(prev.len() <= 5, "{prev}");
    }

    proptest! {
        #[test]
        fn between_is_between(x in "[0-9a-z]{1,8}", y in "[0-9a-z]{1,8}") {
            let (lo, hi) = if x < y { (x, y) } else { (y, x) };
            // Nothing lies strictly between "x" and "x0": '0' is the smallest digit, and no
            // rank we generate ends in it.
            prop_assume!(lo != hi && !hi.ends_with('0'));
            let m = between(Some(&lo), Some(&hi));
            prop_assert!(lo.as_str() < m.as_str() && m.as_str() < hi.as_str(), "{} {} {}", lo, m, hi);
        }
    }
}

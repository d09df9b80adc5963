//! Ordering of release versions for the catalog ("newest first").
//!
//! Versions are the tags' `MAJOR.MINOR.PATCH` (any number of dot-separated
//! parts: `2026.5.3` works too) with an optional pre-release after the
//! first `-` or `_` (`1.2.0-rc.1`). As in SemVer: numeric parts compare as
//! numbers, a missing part counts as 0, a pre-release sorts before its
//! release, and pre-release identifiers compare numerically when both are
//! numbers, otherwise as text (numbers before text).

use std::cmp::Ordering;

/// Compares two release versions (see the module documentation).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split(a);
    let (b_core, b_pre) = split(b);
    compare_parts(a_core, b_core, true).then_with(|| match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => compare_parts(x, y, false),
    })
}

fn split(v: &str) -> (&str, Option<&str>) {
    match v.find(['-', '_']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    }
}

/// Dot-separated identifiers; in the core a missing part is `0`.
fn compare_parts(a: &str, b: &str, pad_with_zero: bool) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        let ord = match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (Some(x), None) if pad_with_zero => compare_ident(x, "0"),
            (None, Some(y)) if pad_with_zero => compare_ident("0", y),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some(x), Some(y)) => compare_ident(x, y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

fn compare_ident(x: &str, y: &str) -> Ordering {
    let num = |s: &str| -> Option<u128> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (num(x), num(y)) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => x.cmp(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascending_chain() {
        let chain = [
            "0.9.0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.2",
            "1.0.10",
            "1.1",
            "1.1.1",
            "2026.5.3",
        ];
        for w in chain.windows(2) {
            assert_eq!(compare(w[0], w[1]), Ordering::Less, "{} < {}", w[0], w[1]);
            assert_eq!(
                compare(w[1], w[0]),
                Ordering::Greater,
                "{} > {}",
                w[1],
                w[0]
            );
        }
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare("1.0.0_rc1", "1.0.0-rc1"), Ordering::Equal);
    }
}

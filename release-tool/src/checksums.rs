//! Reading `SHA256SUMS` (`sha256sum` output, PROTOCOL.md §10.4): the one
//! source of the digests that go into the manifest, so manifest and
//! checksum file cannot disagree.

use std::collections::BTreeMap;

/// File name → lower-case hex SHA-256.
pub type Sums = BTreeMap<String, String>;

/// Parses `<64 hex><two spaces><name>` lines (a `*` before the name, binary
/// mode, is accepted). Any other line, or a name listed twice, is an error
/// naming the line.
pub fn parse(text: &str) -> Result<Sums, String> {
    let mut sums = Sums::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (digest, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("SHA256SUMS line {n} is not `<sha256>  <file>`: {line:?}"))?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| format!("SHA256SUMS line {n} is not `<sha256>  <file>`: {line:?}"))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "SHA256SUMS line {n} does not start with a 64-digit hex SHA-256: {line:?}"
            ));
        }
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "SHA256SUMS line {n} names no plain file name: {line:?}"
            ));
        }
        if sums
            .insert(name.to_owned(), digest.to_ascii_lowercase())
            .is_some()
        {
            return Err(format!("SHA256SUMS lists {name} more than once"));
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256sum_output() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let sums = parse(&format!("{a}  one\n\n{b} *two\n")).unwrap();
        assert_eq!(sums["one"], a);
        assert_eq!(sums["two"], "b".repeat(64));
    }

    #[test]
    fn refuses_malformed_lines() {
        let a = "a".repeat(64);
        for bad in [
            "nothing".to_owned(),
            format!("{a} one"),
            format!("{}  one", "a".repeat(63)),
            format!("{}  one", "g".repeat(64)),
            format!("{a}  dir/one"),
            format!("{a}  "),
            format!("{a}  one\n{a}  one"),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}

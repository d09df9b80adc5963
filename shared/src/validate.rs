//! Validation of untrusted strings that more than one process acts on:
//! Debian package names, release versions and UUIDs.
//!
//! These checks guard the root helper's command line, so they are strict
//! allow-lists, never deny-lists. Dependency-free (the build script includes
//! this file to check `NODERAX_VERSION`).

use std::fmt;

/// Longest package name accepted (without `:arch`). Debian Policy sets no
/// maximum; real names are far shorter and the bound keeps argv small.
pub const MAX_PACKAGE_NAME_LEN: usize = 128;
/// Longest architecture qualifier accepted after `:`.
pub const MAX_ARCH_LEN: usize = 32;
/// Longest release version: the control plane stores at most 64 characters.
pub const MAX_RELEASE_VERSION_LEN: usize = 64;

/// Why a string was refused. The message names the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl Invalid {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        // Keep error messages bounded and printable whatever came in.
        let mut shown: String = value.chars().take(80).collect();
        if value.chars().count() > 80 {
            shown.push('…');
        }
        Self {
            what,
            value: shown,
            reason,
        }
    }

    /// The rule that failed.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

impl std::error::Error for Invalid {}

/// A Debian package name as Debian Policy §5.6.1 defines it
/// (`^[a-z0-9][a-z0-9+.-]+$`), optionally qualified with `:arch`
/// (`lib32gcc-s1:amd64`).
///
/// Stricter than Policy in one place: a trailing `-` is refused, because
/// apt reads `name-` as "remove name" even inside an install command.
/// A trailing `+` stays allowed (`g++`, `libstdc++6` are real packages); the
/// root helper additionally requires every name to resolve to exactly that
/// package, which closes apt's other fallbacks (regex matching for names
/// with `.`, the `+` install modifier in remove commands).
pub fn package_name(s: &str) -> Result<(), Invalid> {
    const WHAT: &str = "package name";
    let (name, arch) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(Invalid::new(WHAT, s, "empty"));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(Invalid::new(
            WHAT,
            s,
            "must start with a lower-case letter or digit",
        ));
    }
    if name.len() < 2 {
        return Err(Invalid::new(WHAT, s, "must be at least two characters"));
    }
    if name.len() > MAX_PACKAGE_NAME_LEN {
        return Err(Invalid::new(WHAT, s, "longer than 128 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
    {
        return Err(Invalid::new(
            WHAT,
            s,
            "only lower-case letters, digits, '+', '-' and '.' are allowed",
        ));
    }
    if name.ends_with('-') {
        return Err(Invalid::new(
            WHAT,
            s,
            "must not end with '-' (apt would read it as a removal)",
        ));
    }
    if let Some(arch) = arch {
        let ok = !arch.is_empty()
            && arch.len() <= MAX_ARCH_LEN
            && arch.as_bytes()[0].is_ascii_lowercase()
            && arch
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(Invalid::new(
                WHAT,
                s,
                "the architecture after ':' must be lower-case letters, digits and '-' (e.g. amd64)",
            ));
        }
    }
    Ok(())
}

/// An agent release version as published in release manifests and tags
/// (`agent-v<version>`): `1.0.3`, `2026.5.3`, `main-abc1234`. It becomes a
/// path component (`releases/<version>/`), so it must be a plain token.
pub fn release_version(s: &str) -> Result<(), Invalid> {
    const WHAT: &str = "release version";
    if s.is_empty() {
        return Err(Invalid::new(WHAT, s, "empty"));
    }
    if s.len() > MAX_RELEASE_VERSION_LEN {
        return Err(Invalid::new(WHAT, s, "longer than 64 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Invalid::new(
            WHAT,
            s,
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(Invalid::new(WHAT, s, "must start with a letter or digit"));
    }
    if s.contains("..") {
        return Err(Invalid::new(WHAT, s, "must not contain '..'"));
    }
    Ok(())
}

/// A UUID in its canonical 8-4-4-4-12 hexadecimal form (either case), as the
/// control plane issues node, task, session and rollout-target ids.
pub fn uuid(s: &str) -> Result<(), Invalid> {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            "UUID",
            s,
            "expected 8-4-4-4-12 hexadecimal digits",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_package_names_pass() {
        for name in [
            "libc6",
            "g++",
            "libstdc++6",
            "python3.11",
            "0ad",
            "lib32gcc-s1:amd64",
            "nginx",
            "libgtk-3-0",
            "xserver-xorg-video-all",
            "libc6:i386",
            "zz",
        ] {
            assert_eq!(package_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn hostile_package_names_fail() {
        let long = "a".repeat(300);
        let hostile = [
            "-o",
            "-oDir::Etc=/tmp",
            "--allow-unauthenticated",
            "-y",
            "./x.deb",
            "/tmp/x.deb",
            "x/y",
            "../evil",
            "ngin*",
            "ngin?",
            "ngin[x]",
            "nginx=1.0",
            "nginx/bookworm",
            "nginx-",
            "ngi nx",
            " nginx",
            "nginx\n",
            "nginx\t",
            "ngi\u{0}nx",
            "ngi\u{1b}nx",
            "nginx\u{7f}",
            "nginxé",
            "ｎginx",
            "Nginx",
            "",
            "a",
            ".nginx",
            "+nginx",
            "nginx:",
            "nginx:AMD64",
            "nginx:amd64:x",
            "nginx:-amd64",
            "nginx:../x",
            &long,
        ];
        for name in hostile {
            assert!(package_name(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn error_names_value_and_rule() {
        let e = package_name("./x.deb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid package name \"./x.deb\": must start with a lower-case letter or digit"
        );
        let long = "a".repeat(300);
        assert!(package_name(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn release_versions() {
        for v in [
            "1.0.3",
            "2026.5.3",
            "main-abc1234",
            "0.1.0-dev",
            "1.0.0_rc1",
        ] {
            assert_eq!(release_version(v), Ok(()), "{v}");
        }
        for v in [
            "",
            "../1.0",
            "1.0/..",
            "1..0",
            "-1.0",
            ".1",
            "1.0 ",
            "1.0\n",
            "1/0",
            "1.0+b",
            "é",
            &"1".repeat(65),
        ] {
            assert!(release_version(v).is_err(), "{v:?} accepted");
        }
    }

    #[test]
    fn uuids() {
        for u in [
            "b7f88611-b63e-4c95-9f37-4afb5c0cf275",
            "B7F88611-B63E-4C95-9F37-4AFB5C0CF275",
        ] {
            assert_eq!(uuid(u), Ok(()));
        }
        for u in [
            "",
            "b7f88611b63e4c959f374afb5c0cf275",
            "b7f88611-b63e-4c95-9f37-4afb5c0cf27",
            "b7f88611-b63e-4c95-9f37-4afb5c0cf2755",
            "g7f88611-b63e-4c95-9f37-4afb5c0cf275",
            "b7f88611-b63e-4c95-9f37_4afb5c0cf275",
            "../../../../etc/passwd-aaaaaaaaaaaaaa",
        ] {
            assert!(uuid(u).is_err(), "{u:?} accepted");
        }
    }
}

//! The installer's manifest, `/var/lib/noderax-agent-install/manifest`
//! (format described in its own header, written by `installer/install.sh`):
//! reading and checking it before anything acts on it.
//!
//! Root removes what it lists, so it is trusted only when root owns it and
//! its directory and neither is writable by anyone else, and every entry is
//! checked before anything is removed: absolute, no `.`, `..` or empty
//! components, not `/`; account and unit names as the installer writes them.
//! One bad line refuses the whole manifest.
//!
//! `install.sh --package deb` writes `# package: noderax-agent`: the agent is
//! then that Debian package, whose files dpkg owns (none are listed), and
//! `uninstall` leaves it to apt-get.

use super::nofollow_fs::Root;

/// Where the installer writes it.
pub const PATH: &str = "/var/lib/noderax-agent-install/manifest";
/// Its directory (also listed in it).
pub const DIR: &str = "/var/lib/noderax-agent-install";
/// Far more than an installation lists.
const MAX_BYTES: u64 = 1024 * 1024;

/// A checked manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Paths the installer created, in the order it did.
    pub paths: Vec<String>,
    pub created_users: Vec<String>,
    pub created_groups: Vec<String>,
    pub enabled_units: Vec<String>,
    /// Created by the running agent: removed with their contents.
    pub runtime_paths: Vec<String>,
    /// The agent's state: kept unless purging.
    pub state_paths: Vec<String>,
    /// The Debian package the agent was installed as (`install.sh --package
    /// deb`); the listed paths are only what the installer added beside it.
    pub package: Option<String>,
}

/// Whether `path` is one of `roots` or inside one.
fn under(path: &str, roots: &[String]) -> bool {
    roots.iter().any(|r| {
        path == r
            || path
                .strip_prefix(r.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

impl Manifest {
    /// Whether `path` is a state path or inside one.
    pub fn is_state(&self, path: &str) -> bool {
        under(path, &self.state_paths)
    }

    /// Whether `path` is a runtime path or inside one.
    pub fn is_runtime(&self, path: &str) -> bool {
        under(path, &self.runtime_paths)
    }
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "no install manifest at {0}: the agent was not installed here by its installer, or is already uninstalled; nothing was removed"
    )]
    Missing(String),
    #[error("cannot read the install manifest {path}: {reason}; nothing was removed")]
    Unreadable { path: String, reason: String },
    #[error(
        "the install manifest {path} is not trustworthy ({reason}): root removes what it lists, so it must be root's alone; nothing was removed"
    )]
    Untrusted { path: String, reason: String },
    #[error(
        "the install manifest {path} has an invalid line {line}: {text:?} ({reason}); nothing was removed"
    )]
    BadLine {
        path: String,
        line: usize,
        text: String,
        reason: &'static str,
    },
}

/// A check of one manifest value; the error says what is wrong.
type Check = fn(&str) -> Result<(), &'static str>;

/// Checks a listed path: absolute and normal.
pub fn check_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("not an absolute path");
    }
    if p == "/" {
        return Err("the root directory");
    }
    if p.bytes().any(|b| b == 0 || b == b'\n' || b == b'\r') {
        return Err("a control character in the path");
    }
    for comp in p[1..].split('/') {
        match comp {
            "" => return Err("an empty path component (// or a trailing /)"),
            "." | ".." => return Err("a . or .. component"),
            _ => {}
        }
    }
    Ok(())
}

/// An account name as `useradd` accepts it.
fn check_account(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("not an account name")
    }
}

/// A unit name of the agent.
fn check_unit(name: &str) -> Result<(), &'static str> {
    let ok = name.starts_with("noderax-agent")
        && (name.ends_with(".service") || name.ends_with(".socket"))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("not a unit of the agent")
    }
}

/// Parses and checks a manifest's text.
pub fn parse(text: &str, shown: &str) -> Result<Manifest, ManifestError> {
    let mut m = Manifest::default();
    let bad = |line: usize, text: &str, reason: &'static str| ManifestError::BadLine {
        path: shown.to_owned(),
        line,
        text: text.to_owned(),
        reason,
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(comment) = line.strip_prefix('#') {
            // `# key: values`; other comment lines are documentation.
            let Some((key, values)) = comment.strip_prefix(' ').and_then(|c| c.split_once(": "))
            else {
                continue;
            };
            if key == "package" {
                let name = values.trim();
                shared::validate::package_name(name)
                    .map_err(|_| bad(n, line, "not a Debian package name"))?;
                m.package = Some(name.to_owned());
                continue;
            }
            let (list, check): (&mut Vec<String>, Check) = match key {
                "created-users" => (&mut m.created_users, check_account),
                "created-groups" => (&mut m.created_groups, check_account),
                "enabled-units" => (&mut m.enabled_units, check_unit),
                "runtime-paths" => (&mut m.runtime_paths, check_path),
                "state-paths" => (&mut m.state_paths, check_path),
                _ => continue,
            };
            for v in values.split_whitespace() {
                check(v).map_err(|r| bad(n, line, r))?;
                list.push(v.to_owned());
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        check_path(line).map_err(|r| bad(n, line, r))?;
        if !m.paths.iter().any(|p| p == line) {
            m.paths.push(line.to_owned());
        }
    }
    Ok(m)
}

/// Reads and checks the manifest below `root`.
pub fn load(root: &Root) -> Result<Manifest, ManifestError> {
    let shown = root.shown(PATH).display().to_string();
    let untrusted = |reason: String| ManifestError::Untrusted {
        path: shown.clone(),
        reason,
    };
    for p in [DIR, PATH] {
        match root.owner_mode(p) {
            Ok(None) => return Err(ManifestError::Missing(shown.clone())),
            Ok(Some((uid, _, mode))) => {
                if uid != 0 {
                    return Err(untrusted(format!(
                        "{} is owned by uid {uid}",
                        root.shown(p).display()
                    )));
                }
                if mode & 0o022 != 0 {
                    return Err(untrusted(format!(
                        "{} is writable by group or others (mode {mode:04o})",
                        root.shown(p).display()
                    )));
                }
            }
            Err(e) => {
                return Err(ManifestError::Unreadable {
                    path: shown.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    let bytes = root
        .read(PATH, MAX_BYTES)
        .map_err(|e| ManifestError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| ManifestError::Missing(shown.clone()))?;
    let text = String::from_utf8(bytes).map_err(|_| ManifestError::Unreadable {
        path: shown.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    parse(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Noderax agent install manifest, format 1.\n\
        # Fields ('# key: value', values separated by spaces):\n\
        # created-groups: noderax-net noderax\n\
        # created-users: noderax-net noderax\n\
        # enabled-units: noderax-agent-exec.socket noderax-agent.service\n\
        # runtime-paths: /opt/noderax-agent/releases /opt/noderax-agent/previous\n\
        # state-paths: /var/lib/noderax-agent /var/lib/noderax-agent-exec\n\
        /var/lib/noderax-agent-install\n\
        /var/lib/noderax-agent-install/manifest\n\
        /var/lib/noderax-agent\n\
        /var/lib/noderax-agent/agent_identity.json\n\
        /var/lib/noderax-agent-exec\n\
        /usr/local/bin/noderax-agent\n";

    #[test]
    fn parses_the_installers_format() {
        let m = parse(SAMPLE, "m").unwrap();
        assert_eq!(m.created_users, ["noderax-net", "noderax"]);
        assert_eq!(m.created_groups, ["noderax-net", "noderax"]);
        assert_eq!(
            m.enabled_units,
            ["noderax-agent-exec.socket", "noderax-agent.service"]
        );
        assert_eq!(m.paths.len(), 6);
        assert_eq!(m.paths[5], "/usr/local/bin/noderax-agent");
        assert!(m.is_state("/var/lib/noderax-agent"));
        assert!(m.is_state("/var/lib/noderax-agent/agent_identity.json"));
        assert!(m.is_state("/var/lib/noderax-agent-exec"));
        assert!(!m.is_state("/var/lib/noderax-agent-install"));
        assert!(!m.is_state("/var/lib/noderax-agentx"));
        assert!(m.is_runtime("/opt/noderax-agent/releases/1.0.0/noderax-agent"));
        assert!(!m.is_runtime("/opt/noderax-agent/current"));
        assert_eq!(m.package, None);
    }

    #[test]
    fn names_the_package_of_a_package_installation() {
        let text = "# runtime-paths: \n# package: noderax-agent\n\
                    /var/lib/noderax-agent-install\n";
        let m = parse(text, "m").unwrap();
        assert_eq!(m.package.as_deref(), Some("noderax-agent"));
        assert!(m.runtime_paths.is_empty());
        assert_eq!(m.paths, ["/var/lib/noderax-agent-install"]);
    }

    #[test]
    fn refuses_any_bad_line() {
        for (line, why) in [
            ("relative/path", "not an absolute path"),
            ("/opt/../etc/passwd", "a . or .. component"),
            ("/opt/./x", "a . or .. component"),
            ("/", "the root directory"),
            ("/opt//x", "an empty path component"),
            ("/opt/x/", "an empty path component"),
            ("# created-users: root;rm", "not an account name"),
            ("# created-users: Root", "not an account name"),
            ("# enabled-units: sshd.service", "not a unit of the agent"),
            ("# runtime-paths: /opt/..", "a . or .. component"),
            ("# state-paths: var/lib", "not an absolute path"),
            ("# package: noderax agent", "not a Debian package name"),
            ("# package: ", "not a Debian package name"),
        ] {
            let text = format!("{SAMPLE}{line}\n");
            let err = parse(&text, "m").unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("nothing was removed"),
                "{line}: {err}"
            );
        }
    }
}

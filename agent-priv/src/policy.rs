//! Who may call the helper and what the host owner allows it to do.
//!
//! - The caller check (ARCHITECTURE.md §2): effective and real uid 0, and
//!   when invoked through sudo, the sudo caller is the executor user or an
//!   administrator.
//! - The root-access ceiling (ARCHITECTURE.md §9): `root_access_ceiling`
//!   from the root-owned agent config; operational commands run only when it
//!   includes `operational`. The environment override that `noderax-agent`
//!   honours (`NODERAX_ROOT_ACCESS_CEILING`) is deliberately ignored here.

use std::path::Path;

use crate::Failure;
use crate::host::{self, Host, paths};

/// The executor's system user (ARCHITECTURE.md §3): the only unprivileged
/// account the sudoers drop-in grants this helper to.
pub const EXECUTOR_USER: &str = "noderax";

/// Groups whose members are administrators on Debian/Ubuntu (they may run
/// anything as root already), so their manual use of the helper is fine.
pub const ADMIN_GROUPS: [&str; 3] = ["sudo", "admin", "wheel"];

/// Largest config file read (the real one is a few KiB).
const MAX_CONFIG: u64 = 1 << 20;
/// Largest /etc/passwd or /etc/group read.
const MAX_ACCOUNTS: u64 = 16 << 20;

/// The identity of this invocation, gathered once in `main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub ruid: u32,
    pub euid: u32,
    /// `SUDO_UID` as given, the one variable read from the environment;
    /// sudo sets it to the invoking user's uid.
    pub sudo_uid: Option<String>,
}

impl Caller {
    /// This process's ids.
    pub fn current() -> Self {
        // SAFETY: getuid/geteuid cannot fail and touch no memory of ours.
        let (ruid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
        Self {
            ruid,
            euid,
            sudo_uid: std::env::var("SUDO_UID").ok(),
        }
    }
}

/// Refuses unless the caller may use the helper at all.
///
/// Under sudo both real and effective uid are 0, so the real uid alone
/// cannot tell the executor from anyone else; `SUDO_UID` can, and it is
/// trustworthy here because only sudo (or root itself) can start us with
/// uid 0 and sudo overwrites it. A real uid other than 0 means we were
/// started some other way (a setuid copy, say) and nothing is trusted.
pub fn check_caller(host: &Host, c: &Caller) -> Result<(), Failure> {
    if c.euid != 0 {
        return Err(Failure::refused(format!(
            "must run as root (effective uid is {}); the executor runs it as `sudo -n {}`",
            c.euid,
            paths::SELF
        )));
    }
    if c.ruid != 0 {
        return Err(Failure::refused(format!(
            "real uid {} is not root: start the helper through sudo, not as a setuid program",
            c.ruid
        )));
    }
    let Some(sudo_uid) = &c.sudo_uid else {
        // A root shell.
        return Ok(());
    };
    let uid: u32 = sudo_uid.parse().map_err(|_| {
        Failure::refused(format!(
            "SUDO_UID {:?} is not a number",
            crate::cli::shown(&[sudo_uid])
        ))
    })?;
    if uid == 0 {
        return Ok(());
    }
    // The account databases decide who the executor is, so they get the
    // same ownership check as the config.
    let read = |p: &str| -> Result<String, Failure> {
        let path = host.path(p);
        let bytes = host::read_trusted(&path, MAX_ACCOUNTS)?
            .ok_or_else(|| Failure::refused(format!("{} is missing", path.display())))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let passwd = read(paths::PASSWD)?;
    let group = read(paths::GROUP)?;
    if passwd_uid(&passwd, EXECUTOR_USER) == Some(uid) {
        return Ok(());
    }
    if is_admin(&passwd, &group, uid) {
        return Ok(());
    }
    Err(Failure::refused(format!(
        "sudo caller uid {uid} is neither the executor user {EXECUTOR_USER:?} nor a member of {}; \
         check /etc/sudoers.d/noderax-agent",
        ADMIN_GROUPS.join("/")
    )))
}

/// The uid of `user` in passwd(5) text.
fn passwd_uid(passwd: &str, user: &str) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == user).then(|| f[2].parse().ok())?
    })
}

/// Whether `uid` belongs to an admin group, as primary group or member.
fn is_admin(passwd: &str, group: &str, uid: u32) -> bool {
    let Some((name, gid)) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| (f[0], f[3]))
    }) else {
        return false;
    };
    group.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.len() >= 4
            && ADMIN_GROUPS.contains(&f[0])
            && (f[2] == gid || f[3].split(',').any(|m| m == name))
    })
}

/// Whether the host owner's ceiling includes the `operational` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    pub profile: String,
    pub operational: bool,
}

/// Reads `root_access_ceiling` from the agent's config. The file must be
/// root-owned and not group/world writable; a missing file or key means the
/// agent's documented default, `operational`.
pub fn read_ceiling(host: &Host) -> Result<Ceiling, Failure> {
    let path = host.path(paths::CONFIG);
    let Some(bytes) = host::read_trusted(&path, MAX_CONFIG)? else {
        return Ok(Ceiling {
            profile: "operational".into(),
            operational: true,
        });
    };
    ceiling_from_json(&bytes, &path)
}

fn ceiling_from_json(bytes: &[u8], path: &Path) -> Result<Ceiling, Failure> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Failure::refused(format!(
            "{} is not valid JSON ({e}); fix or remove it",
            path.display()
        ))
    })?;
    let profile = match v.get("root_access_ceiling") {
        None | Some(serde_json::Value::Null) => "operational",
        // Empty strings in the config mean "unset" (shared::config).
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => "operational",
        Some(serde_json::Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(Failure::refused(format!(
                "root_access_ceiling in {} must be a string, found {other}",
                path.display()
            )));
        }
    };
    let operational = match profile {
        "operational" | "operational_task" | "operational_terminal" | "all" => true,
        "off" | "task" | "terminal" | "task_terminal" => false,
        _ => {
            return Err(Failure::refused(format!(
                "root_access_ceiling {:?} in {} is not a known profile \
                 (off, operational, task, terminal, operational_task, operational_terminal, task_terminal, all)",
                crate::cli::shown(&[profile]),
                path.display()
            )));
        }
    };
    Ok(Ceiling {
        profile: profile.to_owned(),
        operational,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        alice:x:1000:1000::/home/alice:/bin/bash\n\
        bob:x:1001:1001::/home/bob:/bin/bash\n\
        carol:x:1002:27::/home/carol:/bin/bash\n\
        noderax:x:998:998::/var/lib/noderax-agent:/usr/sbin/nologin\n\
        noderax-net:x:997:997::/var/lib/noderax-agent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:alice\nbob:x:1001:\nnoderax:x:998:\n";

    fn host() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc/noderax-agent")).unwrap();
        fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let h = Host::under(dir.path());
        (dir, h)
    }

    fn caller(ruid: u32, euid: u32, sudo: Option<&str>) -> Caller {
        Caller {
            ruid,
            euid,
            sudo_uid: sudo.map(str::to_owned),
        }
    }

    #[test]
    fn allowed_callers() {
        let (_d, h) = host();
        for c in [
            caller(0, 0, Some("998")),  // the executor through sudo
            caller(0, 0, None),         // a root shell
            caller(0, 0, Some("0")),    // root using sudo
            caller(0, 0, Some("1000")), // alice, member of sudo
            caller(0, 0, Some("1002")), // carol, primary group sudo
        ] {
            assert_eq!(check_caller(&h, &c), Ok(()), "{c:?}");
        }
    }

    #[test]
    fn wrong_callers_are_refused() {
        let (_d, h) = host();
        let cases = [
            (caller(998, 998, None), "must run as root"),
            (caller(998, 998, Some("998")), "must run as root"),
            (caller(998, 0, Some("998")), "not as a setuid program"),
            (caller(1001, 0, None), "not as a setuid program"),
            (caller(0, 0, Some("1001")), "uid 1001 is neither"),
            (caller(0, 0, Some("997")), "uid 997 is neither"), // the network user
            (caller(0, 0, Some("4242")), "uid 4242 is neither"),
            (caller(0, 0, Some("998 ")), "not a number"),
            (caller(0, 0, Some("")), "not a number"),
        ];
        for (c, want) in cases {
            let e = check_caller(&h, &c).unwrap_err();
            assert_eq!(e.code, crate::EXIT_REFUSED);
            assert!(e.message.contains(want), "{c:?}: {}", e.message);
        }
    }

    #[test]
    fn a_writable_account_database_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let (d, h) = host();
        let passwd = d.path().join("etc/passwd");
        fs::set_permissions(&passwd, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_caller(&h, &caller(0, 0, Some("998"))).unwrap_err();
        assert!(
            e.message.contains("writable by group or others"),
            "{}",
            e.message
        );
        // A root shell does not consult it.
        assert_eq!(check_caller(&h, &caller(0, 0, None)), Ok(()));
    }

    #[test]
    fn ceiling() {
        let (d, h) = host();
        let cfg = d.path().join("etc/noderax-agent/config.json");
        assert!(
            read_ceiling(&h).unwrap().operational,
            "missing file → default"
        );
        for (json, op) in [
            (r#"{"api_url":"x"}"#, true),
            (r#"{"root_access_ceiling":""}"#, true),
            (r#"{"root_access_ceiling":"operational"}"#, true),
            (r#"{"root_access_ceiling":"all"}"#, true),
            (r#"{"root_access_ceiling":"operational_task"}"#, true),
            (r#"{"root_access_ceiling":"off"}"#, false),
            (r#"{"root_access_ceiling":" off "}"#, false),
            (r#"{"root_access_ceiling":"task_terminal"}"#, false),
        ] {
            fs::write(&cfg, json).unwrap();
            assert_eq!(read_ceiling(&h).unwrap().operational, op, "{json}");
        }
        for json in [
            r#"{"root_access_ceiling":"root"}"#,
            r#"{"root_access_ceiling":1}"#,
            r#"{"root_access_ceiling":"off""#,
            "",
        ] {
            fs::write(&cfg, json).unwrap();
            assert!(read_ceiling(&h).is_err(), "{json}");
        }
        // Not root-owned: refused even though it says "operational".
        fs::write(&cfg, r#"{"root_access_ceiling":"operational"}"#).unwrap();
        std::os::unix::fs::chown(&cfg, Some(997), None).unwrap();
        assert!(read_ceiling(&h).unwrap_err().message.contains("not root"));
    }
}

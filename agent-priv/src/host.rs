//! The host as the helper sees it: fixed paths, fixed tool locations, the
//! one environment every child gets, and how children are run.
//!
//! Every path is an absolute constant resolved under [`Host::root`], which is
//! `/` in the installed binary. Only `#[cfg(test)]` code can build a host
//! with another root (a throwaway tree holding fake `apt-get`, `systemctl`,
//! ...); the binary has no flag, variable or file that changes it.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{self, Stdio};
use std::time::Duration;

use crate::Failure;

/// The only environment a child process gets. Nothing is inherited from the
/// caller (sudo's own `env_reset` is not relied on): an inherited
/// `APT_CONFIG`, `DPKG_*`, `LD_*` or `PATH` would change what runs as root.
pub const CHILD_ENV: [(&str, &str); 6] = [
    ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LANG", "C.UTF-8"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    // Maintainer scripts expect a home; root's, never the caller's.
    ("HOME", "/root"),
    // needrestart (Ubuntu) would otherwise prompt or restart services,
    // including the agent's own, in the middle of a package operation.
    ("NEEDRESTART_MODE", "l"),
    // apt-listchanges would wait for a pager or mail changelogs.
    ("APT_LISTCHANGES_FRONTEND", "none"),
];

/// Installed paths (PROTOCOL.md §12, ARCHITECTURE.md §3), relative to the root.
pub mod paths {
    /// The agent's config; the helper reads only `root_access_ceiling`.
    pub const CONFIG: &str = "/etc/noderax-agent/config.json";
    /// Minisign public key of the release signer. When present, every
    /// update's manifest must carry a valid signature by it.
    pub const RELEASE_KEY: &str = shared::release_files::RELEASE_KEY_PATH;
    /// Where agent-net stages a downloaded release: `<dir>/<version>/`.
    pub const STAGING: &str = "/var/lib/noderax-agent/updates";
    /// Side-by-side releases: `releases/<version>/`, `current`, `previous`.
    pub const INSTALL: &str = shared::release_files::INSTALL_DIR;
    /// The helper itself, as sudoers names it.
    pub const SELF: &str = shared::release_files::HELPER_PATH;
    /// The files dpkg installed for the `noderax-agent` package (a .deb
    /// install); its release directory is never pruned.
    pub const DPKG_FILE_LIST: &str = "/var/lib/dpkg/info/noderax-agent.list";
    /// Audit trail (JSON lines, root-only).
    pub const AUDIT_DIR: &str = "/var/log/noderax-agent";
    pub const AUDIT_FILE: &str = "/var/log/noderax-agent/priv-audit.jsonl";
    /// The system log socket.
    pub const SYSLOG: &str = "/dev/log";
    /// Exists when systemd is PID 1 (what `sd_booted()` checks).
    pub const SYSTEMD_RUNNING: &str = "/run/systemd/system";
    /// Our own cgroup, to know whether we already run in the update unit.
    pub const SELF_CGROUP: &str = "/proc/self/cgroup";
    pub const PASSWD: &str = "/etc/passwd";
    pub const GROUP: &str = "/etc/group";
}

/// Programs the helper runs; the first existing candidate is used (Debian
/// without merged /usr has some under /bin and /sbin).
pub mod tools {
    pub const APT_GET: &[&str] = &["/usr/bin/apt-get"];
    pub const APT_CACHE: &[&str] = &["/usr/bin/apt-cache"];
    pub const DPKG_QUERY: &[&str] = &["/usr/bin/dpkg-query"];
    pub const SYSTEMCTL: &[&str] = &["/usr/bin/systemctl", "/bin/systemctl"];
    pub const SYSTEMD_RUN: &[&str] = &["/usr/bin/systemd-run", "/bin/systemd-run"];
    pub const REBOOT: &[&str] = &["/usr/sbin/reboot", "/sbin/reboot"];
}

/// Timing of the post-update readiness wait.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// Give up (and roll back) after this long.
    pub timeout: Duration,
    /// Between two `systemctl is-active` checks.
    pub poll: Duration,
    /// Consecutive successful checks needed: a unit that crash-loops under
    /// `Restart=always` is briefly active between failures.
    pub settle: u32,
    /// Pause before a switch restarts the units, so the executor can report
    /// the update task's hand-off first.
    pub handoff_grace: Duration,
}

/// Test-only points where an update is made to fail on purpose.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// After the release is verified and installed under releases/, before
    /// the `current` link is switched.
    BeforeSwitch,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    pub readiness: Readiness,
    #[cfg(test)]
    pub fail_at: Option<FailPoint>,
}

impl Host {
    /// The real host. The only constructor outside tests.
    pub fn system() -> Self {
        Self {
            root: PathBuf::from("/"),
            readiness: Readiness {
                timeout: Duration::from_secs(60),
                poll: Duration::from_secs(1),
                settle: 5,
                handoff_grace: Duration::from_secs(2),
            },
            #[cfg(test)]
            fail_at: None,
        }
    }

    /// A host rooted in a throwaway directory (tests only).
    #[cfg(test)]
    pub fn under(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            readiness: Readiness {
                timeout: Duration::from_millis(400),
                poll: Duration::from_millis(10),
                settle: 3,
                handoff_grace: Duration::ZERO,
            },
            fail_at: None,
        }
    }

    /// `abs` (an absolute installed path) under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The root prefix (`/` when installed).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The first existing candidate for a tool.
    pub fn tool(&self, candidates: &[&str]) -> Result<PathBuf, Failure> {
        candidates
            .iter()
            .map(|c| self.path(c))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Failure::failed(format!(
                    "{} not found; install it (this helper only runs programs from fixed paths)",
                    candidates.join(" or ")
                ))
            })
    }

    /// Whether systemd is PID 1, the way `sd_booted()` decides it.
    pub fn systemd_running(&self) -> bool {
        self.path(paths::SYSTEMD_RUNNING).is_dir()
    }

    /// Whether this process already runs inside the transient unit `unit`
    /// (read from our cgroup, which a caller cannot fake, unlike the
    /// environment).
    pub fn in_unit(&self, unit: &str) -> bool {
        let suffix = format!("/{unit}.service");
        fs::read_to_string(self.path(paths::SELF_CGROUP))
            .map(|s| s.lines().any(|l| l.trim_end().ends_with(&suffix)))
            .unwrap_or(false)
    }
}

/// A command for `program` with [`CHILD_ENV`] only, `/` as working directory
/// and no standard input.
pub fn command(program: &Path) -> process::Command {
    let mut c = process::Command::new(program);
    c.env_clear()
        .envs(CHILD_ENV)
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

/// Runs `cmd` with its output going straight to ours (streamed to the
/// executor through sudo) and fails unless it exits 0.
pub fn run_streamed(mut cmd: process::Command, what: &str) -> Result<(), Failure> {
    let status = cmd.status().map_err(|e| {
        Failure::failed(format!(
            "cannot start {what} ({:?}): {e}",
            cmd.get_program()
        ))
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{what} failed ({status}); its output is above"
        )))
    }
}

/// Runs `cmd` and returns its standard output; stderr is passed through.
pub fn run_captured(mut cmd: process::Command, what: &str) -> Result<(bool, String), Failure> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure::failed(format!("cannot start {what}: {e}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Arguments that put `argv` into a transient unit of its own via
/// `systemd-run --wait --pipe --collect`, so that restarting the executor's
/// service cannot kill it half-way; `--pipe` keeps the output streaming to
/// us and `--wait` propagates the exit status.
pub fn detached_argv(unit: &str, description: &str, argv: &[&OsStr]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        "--quiet".into(),
        "--wait".into(),
        "--pipe".into(),
        "--collect".into(),
        format!("--unit={unit}").into(),
        format!("--description={description}").into(),
        "--property=Type=exec".into(),
    ];
    for (k, val) in CHILD_ENV {
        v.push(format!("--setenv={k}={val}").into());
    }
    v.push("--".into());
    v.extend(argv.iter().map(|a| a.to_os_string()));
    v
}

/// Arguments that start `argv` in a transient unit of its own and return
/// as soon as it runs (`systemd-run` without `--wait`): for work that must
/// go on after the caller, and the caller's unit, are gone. Its output goes
/// to the journal under the unit's name.
pub fn background_argv(unit: &str, description: &str, argv: &[&OsStr]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        "--quiet".into(),
        "--collect".into(),
        format!("--unit={unit}").into(),
        format!("--description={description}").into(),
        "--property=Type=exec".into(),
    ];
    for (k, val) in CHILD_ENV {
        v.push(format!("--setenv={k}={val}").into());
    }
    v.push("--".into());
    v.extend(argv.iter().map(|a| a.to_os_string()));
    v
}

/// Checks that `path` is a file or directory owned by root and not writable
/// by group or others, without following a final symlink. Everything the
/// helper trusts (config, release key, install and audit directories) must
/// pass this.
pub fn check_trusted(path: &Path) -> Result<fs::Metadata, Failure> {
    let md = fs::symlink_metadata(path)
        .map_err(|e| Failure::refused(format!("cannot inspect {}: {e}", path.display())))?;
    if md.file_type().is_symlink() {
        return Err(Failure::refused(format!(
            "{} is a symbolic link; it must be a plain root-owned file or directory",
            path.display()
        )));
    }
    if md.uid() != 0 {
        return Err(Failure::refused(format!(
            "{} is owned by uid {}, not root; run `chown root {}`",
            path.display(),
            md.uid(),
            path.display()
        )));
    }
    if md.mode() & 0o022 != 0 {
        return Err(Failure::refused(format!(
            "{} is writable by group or others (mode {:o}); run `chmod go-w {}`",
            path.display(),
            md.mode() & 0o7777,
            path.display()
        )));
    }
    Ok(md)
}

/// Reads a trusted (see [`check_trusted`]) regular file, also checking its
/// directory, refusing files larger than `max` bytes. `Ok(None)` when the
/// file does not exist.
pub fn read_trusted(path: &Path, max: u64) -> Result<Option<Vec<u8>>, Failure> {
    if let Some(dir) = path.parent() {
        if dir.exists() {
            check_trusted(dir)?;
        }
    }
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::refused(format!(
                "cannot open {}: {e}",
                path.display()
            )));
        }
    };
    // Checked on the open file, so a rename in between cannot swap it.
    let md = file
        .metadata()
        .map_err(|e| Failure::refused(format!("cannot inspect {}: {e}", path.display())))?;
    check_trusted(path)?;
    if !md.is_file() {
        return Err(Failure::refused(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    read_bounded(file, max, path).map(Some)
}

/// Opens an existing file for reading without following a symlink at the
/// last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

/// Reads at most `max` bytes, failing (rather than truncating) beyond.
pub fn read_bounded(file: File, max: u64, path: &Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::refused(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > max {
        return Err(Failure::refused(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn children_get_only_the_fixed_environment() {
        let _serial = crate::testkit::serial();
        let c = command(Path::new("/usr/bin/env"));
        let envs: Vec<(String, String)> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(envs.len(), CHILD_ENV.len());
        // And nothing of ours leaks: run it and compare the whole output.
        let out = command(Path::new("/usr/bin/env")).output().unwrap();
        let mut got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        got.sort();
        let mut want: Vec<String> = CHILD_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn detached_argv_is_exact() {
        let argv = detached_argv(
            "noderax-agent-priv-apt-1",
            "noderax-agent-priv apt",
            &[OsStr::new("/usr/bin/apt-get"), OsStr::new("update")],
        );
        let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "--quiet",
                "--wait",
                "--pipe",
                "--collect",
                "--unit=noderax-agent-priv-apt-1",
                "--description=noderax-agent-priv apt",
                "--property=Type=exec",
                "--setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "--setenv=LANG=C.UTF-8",
                "--setenv=DEBIAN_FRONTEND=noninteractive",
                "--setenv=HOME=/root",
                "--setenv=NEEDRESTART_MODE=l",
                "--setenv=APT_LISTCHANGES_FRONTEND=none",
                "--",
                "/usr/bin/apt-get",
                "update",
            ]
        );
    }

    #[test]
    fn trust_checks() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.json");
        fs::write(&f, b"{}").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        // These tests run as root (the helper's integration tests need it).
        assert_eq!(read_trusted(&f, 10).unwrap().unwrap(), b"{}");
        assert!(
            read_trusted(&dir.path().join("missing"), 10)
                .unwrap()
                .is_none()
        );
        assert!(
            read_trusted(&f, 1)
                .unwrap_err()
                .message
                .contains("larger than 1 bytes")
        );

        fs::set_permissions(&f, fs::Permissions::from_mode(0o662)).unwrap();
        let e = read_trusted(&f, 10).unwrap_err();
        assert!(e.message.contains("writable by group or others"), "{e:?}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();

        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = read_trusted(&f, 10).unwrap_err();
        assert!(e.message.contains("owned by uid 65534"), "{e:?}");
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            read_trusted(&f, 10).is_err(),
            "world-writable directory accepted"
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_trusted(&link, 10).is_err(), "symlink accepted");
    }
}

//! Installing a verified release, switching to it, and rolling back
//! (ARCHITECTURE.md §6, PROTOCOL.md §10).
//!
//! Contract with the network process, which downloads and stages a release
//! as user `noderax-net` (file names: `shared::release_files`):
//!
//! ```text
//! /var/lib/noderax-agent/updates/VERSION/release-manifest.json
//! /var/lib/noderax-agent/updates/VERSION/release-manifest.json.minisig   (when published)
//! /var/lib/noderax-agent/updates/VERSION/noderax-agent-linux-ARCH
//! /var/lib/noderax-agent/updates/VERSION/noderax-agent-exec-linux-ARCH
//! /var/lib/noderax-agent/updates/VERSION/noderax-agent-priv-linux-ARCH
//! ```
//!
//! Nothing staged is trusted. `update apply` copies the files into a
//! directory only root can write (`/opt/noderax-agent/releases/.incoming-VERSION-PID`),
//! hashing each program as it copies; verifies the copied manifest's minisign
//! signature when `/etc/noderax-agent/release.pub` exists (a missing or bad
//! signature is then refused); checks that the manifest is for VERSION on
//! channel `tag` and that every program's SHA-256 matches it; and renames the
//! finished directory to `releases/VERSION`. A refusal here changes nothing
//! and is the task's failure, reported while the caller still waits.
//!
//! The switch comes after, in `update switch`: the `current` symlink is
//! replaced by renaming a new link over it, so at every moment `current`
//! names a complete release (the executor, the network process and, through
//! `/usr/local/libexec/noderax-agent-priv -> current/noderax-agent-priv`,
//! this helper). `previous` names the release that was current before, for
//! `update rollback`. With systemd as PID 1, `apply` starts the switch in a
//! transient unit of its own (`noderax-agent-update`) and returns at once:
//! the switch restarts the executor's unit, which would otherwise kill the
//! task that asked for the update before it could report its hand-off
//! (PROTOCOL.md §13 item 46). The switch restarts the agent's units, waits
//! until both have been active for several consecutive checks, and if they
//! do not get there in time switches `current` back and restarts them again.
//! Its outcome goes to `/opt/noderax-agent/update-result.json`, where the
//! restarted network process (which has no other way to learn why it is
//! still the old version) reads it and reports it to the control plane.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use shared::release_files::{self, PROGRAMS};
use shared::validate;

use crate::Failure;
use crate::host::{self, Host, paths, tools};

/// The transient unit the switch runs in.
pub const UPDATE_UNIT: &str = "noderax-agent-update";
/// Restarted after a switch, the executor first so the network process
/// finds it ready; both must then stay active for the release to count as
/// working.
pub const UNITS: [&str; 2] = ["noderax-agent-exec.service", "noderax-agent.service"];
/// The network process's unit (what `service restart-agent` restarts).
pub const READY_UNIT: &str = "noderax-agent.service";
/// File names inside a staged or installed release.
pub const MANIFEST: &str = release_files::MANIFEST;
pub const SIGNATURE: &str = release_files::SIGNATURE;
pub const BINARY: &str = release_files::AGENT;

const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 4096;
const MAX_KEY: u64 = 4096;
/// Far above any real agent binary, low enough to bound the copy.
const MAX_ARTIFACT: u64 = 512 << 20;

/// The release architecture name of this machine (PROTOCOL.md §10.4).
pub fn host_arch() -> Result<&'static str, Failure> {
    release_files::host_arch().ok_or_else(|| {
        Failure::refused(format!(
            "no agent releases exist for the {} architecture (only amd64 and arm64)",
            std::env::consts::ARCH
        ))
    })
}

/// `update apply --version V`: verifies the staged release and installs it
/// beside the running one, then switches to it (see the module
/// documentation). Returns what was done.
pub fn apply(host: &Host, version: &str) -> Result<String, Failure> {
    validate::release_version(version).map_err(|e| Failure::refused(e.to_string()))?;
    let install = Install::open(host)?;
    let lock = install.lock(false)?;
    let arch = host_arch()?;
    let current = install.link_version("current")?;
    if current.as_deref() == Some(version) {
        // A repeated request (a retried task, a re-dispatched rollout target).
        return Ok(format!(
            "{version} is already the current version; nothing to do"
        ));
    }
    let incoming = install.stage_verified(host, version, arch)?;
    let target = install.releases.join(version);
    if fs::symlink_metadata(&target).is_ok() {
        // Not current (checked above): an older install of the same
        // version, possibly `previous`; the verified copy replaces it.
        fs::remove_dir_all(&target).map_err(|e| io_fail("remove the old copy of", &target, e))?;
    }
    step("installing", &target.display().to_string());
    fs::rename(&incoming.path, &target).map_err(|e| io_fail("install", &target, e))?;
    incoming.disarm();
    sync_dir(&install.releases);

    #[cfg(test)]
    if host.fail_at == Some(host::FailPoint::BeforeSwitch) {
        return Err(Failure::failed("injected failure before the switch".into()));
    }

    if host.systemd_running() {
        // The switch waits for this lock, so it starts only once this
        // process is done.
        start_switch_unit(host, version)?;
        drop(lock);
        step("restarting", &format!("handed to the {UPDATE_UNIT} unit"));
        return Ok(format!(
            "{version} is verified and installed; the {UPDATE_UNIT} unit switches to it and \
             restarts the agent (follow it with `journalctl -u {UPDATE_UNIT}`)"
        ));
    }
    let msg = install.switch(host, version)?;
    install.prune(host);
    Ok(msg)
}

/// `update switch --version V`: makes an installed release current,
/// restarts the units and rolls back if it does not become ready.
pub fn switch(host: &Host, version: &str) -> Result<String, Failure> {
    validate::release_version(version).map_err(|e| Failure::refused(e.to_string()))?;
    if host.systemd_running() && !host.in_unit(UPDATE_UNIT) {
        return rerun_in_own_unit(host, &["update", "switch", "--version", version]);
    }
    let install = Install::open(host)?;
    // Blocking: `apply` holds the lock until it has exited.
    let _lock = install.lock(true)?;
    let msg = install.switch(host, version)?;
    install.prune(host);
    Ok(msg)
}

/// `update rollback`: make `previous` current again (and the current one
/// `previous`, so the rollback can itself be undone).
pub fn rollback(host: &Host) -> Result<String, Failure> {
    if host.systemd_running() && !host.in_unit(UPDATE_UNIT) {
        return rerun_in_own_unit(host, &["update", "rollback"]);
    }
    let install = Install::open(host)?;
    let _lock = install.lock(false)?;
    let Some(previous) = install.link_version("previous")? else {
        return Err(Failure::refused(format!(
            "no previous version is kept in {}; nothing to roll back to",
            install.dir.display()
        )));
    };
    install.check_complete(&previous)?;
    let current = install.link_version("current")?;
    // The version rolled away from becomes `previous`, so the rollback can
    // itself be undone; if it fails, both links go back as they were.
    install.activate(host, &previous, current.as_deref(), Some(&previous))
}

/// Starts this helper again with `args` inside the update unit and streams
/// its output; the exit status is the unit's.
fn rerun_in_own_unit(host: &Host, args: &[&str]) -> Result<String, Failure> {
    let run = host.tool(tools::SYSTEMD_RUN)?;
    let me = host.path(paths::SELF);
    let mut argv: Vec<&OsStr> = vec![me.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    let mut cmd = host::command(&run);
    cmd.args(host::detached_argv(
        UPDATE_UNIT,
        "noderax-agent update",
        &argv,
    ));
    host::run_streamed(cmd, &format!("the {UPDATE_UNIT} unit"))?;
    Ok(format!(
        "{} finished in the {UPDATE_UNIT} unit",
        args.join(" ")
    ))
}

/// Starts `update switch --version V` in the update unit without waiting
/// for it: it outlives the restart of the executor's unit it causes.
fn start_switch_unit(host: &Host, version: &str) -> Result<(), Failure> {
    let run = host.tool(tools::SYSTEMD_RUN)?;
    let me = host.path(paths::SELF);
    let argv: Vec<&OsStr> = vec![
        me.as_os_str(),
        OsStr::new("update"),
        OsStr::new("switch"),
        OsStr::new("--version"),
        OsStr::new(version),
    ];
    let mut cmd = host::command(&run);
    cmd.args(host::background_argv(
        UPDATE_UNIT,
        &format!("noderax-agent update to {version}"),
        &argv,
    ));
    host::run_streamed(cmd, &format!("starting the {UPDATE_UNIT} unit")).map_err(|f| {
        Failure::failed(format!(
            "{version} is installed but the switch to it could not be started ({}); \
             nothing was switched",
            f.message
        ))
    })
}

/// `/opt/noderax-agent` and its `releases/` directory.
struct Install {
    dir: PathBuf,
    releases: PathBuf,
}

/// A partly built release directory, removed unless disarmed.
struct Incoming {
    path: PathBuf,
    armed: std::cell::Cell<bool>,
}

impl Incoming {
    fn disarm(&self) {
        self.armed.set(false);
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.armed.get() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Install {
    fn open(host: &Host) -> Result<Self, Failure> {
        let dir = host.path(paths::INSTALL);
        let releases = dir.join("releases");
        for d in [&dir, &releases] {
            if !d.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(d)
                    .map_err(|e| io_fail("create", d, e))?;
            }
            host::check_trusted(d)?;
        }
        Ok(Self { dir, releases })
    }

    /// One update at a time; the lock is released when the file closes.
    /// `wait`: block until the holder is done instead of refusing.
    fn lock(&self, wait: bool) -> Result<File, Failure> {
        let path = self.dir.join(".update.lock");
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io_fail("open", &path, e))?;
        let how = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
            return Err(Failure::refused(
                "another update or rollback is running; wait for it to finish".into(),
            ));
        }
        Ok(f)
    }

    /// The version a link (`current`, `previous`) points to, if it exists.
    fn link_version(&self, name: &str) -> Result<Option<String>, Failure> {
        let link = self.dir.join(name);
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_fail("read the link", &link, e)),
        };
        let version = target
            .strip_prefix("releases")
            .ok()
            .and_then(|v| v.to_str())
            .filter(|v| validate::release_version(v).is_ok());
        match version {
            Some(v) => Ok(Some(v.to_owned())),
            None => Err(Failure::failed(format!(
                "{} points to {}, not to releases/VERSION; repair it by hand \
                 (`ln -sfn releases/VERSION {}`)",
                link.display(),
                target.display(),
                link.display()
            ))),
        }
    }

    /// Copies and verifies the staged release into a new root-only
    /// directory, laid out as an installed release.
    fn stage_verified(&self, host: &Host, version: &str, arch: &str) -> Result<Incoming, Failure> {
        let staged = host.path(paths::STAGING).join(version);
        let dirfd = open_dir_nofollow(&staged).map_err(|e| {
            Failure::refused(format!(
                "no staged release at {} ({e}); download it first (noderax-agent stages it)",
                staged.display()
            ))
        })?;
        let path = self
            .releases
            .join(format!(".incoming-{version}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| io_fail("create", &path, e))?;
        let incoming = Incoming {
            path,
            armed: std::cell::Cell::new(true),
        };

        let manifest = read_staged(&dirfd, &staged, MANIFEST, MAX_MANIFEST)?.ok_or_else(|| {
            Failure::refused(format!("{} is missing", staged.join(MANIFEST).display()))
        })?;
        let signature = read_staged(&dirfd, &staged, SIGNATURE, MAX_SIGNATURE)?;
        write_new(&incoming.path.join(MANIFEST), &manifest, 0o644)?;
        if let Some(sig) = &signature {
            write_new(&incoming.path.join(SIGNATURE), sig, 0o644)?;
        }
        let mut digests = Vec::with_capacity(PROGRAMS.len());
        for program in PROGRAMS {
            let artifact = release_files::artifact_name(program, arch);
            let dest = incoming.path.join(program);
            let digest = copy_staged(&dirfd, &staged, &artifact, &dest)?;
            digests.push((program, artifact, dest, digest));
        }

        // Checks run on the copies: nothing outside root's reach is read again.
        step("verifying", &format!("{version} for {arch}"));
        verify_signature(host, &manifest, signature.as_deref())?;
        let wanted = manifest_digests(&manifest, version, arch)?;
        for ((program, artifact, dest, digest), (_, want)) in digests.iter().zip(&wanted) {
            if !digest.eq_ignore_ascii_case(want) {
                return Err(Failure::refused(format!(
                    "SHA-256 of {} is {digest}, but the manifest says {want} for {program}: the \
                     download is corrupt or tampered with; nothing was changed",
                    staged.join(artifact).display()
                )));
            }
            fs::set_permissions(dest, fs::Permissions::from_mode(0o755))
                .map_err(|e| io_fail("chmod", dest, e))?;
        }
        fs::set_permissions(&incoming.path, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_fail("chmod", &incoming.path, e))?;
        sync_dir(&incoming.path);
        Ok(incoming)
    }

    /// Fails unless `releases/VERSION` holds every program and its root
    /// helper runs: once `current` points there, sudo reaches only that
    /// helper, and a broken one could not even roll back.
    fn check_complete(&self, version: &str) -> Result<(), Failure> {
        let dir = self.releases.join(version);
        for program in PROGRAMS {
            let p = dir.join(program);
            if !p.is_file() {
                return Err(Failure::refused(format!(
                    "release {version} is incomplete ({} is missing); install it with \
                     `update apply --version {version}`",
                    p.display()
                )));
            }
        }
        let helper = dir.join(release_files::HELPER);
        let mut cmd = host::command(&helper);
        cmd.arg("version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(Failure::refused(format!(
                "the root helper of release {version} does not run ({} version: {s}); not \
                 switching to it",
                helper.display()
            ))),
            Err(e) => Err(Failure::refused(format!(
                "the root helper of release {version} cannot be started ({}: {e}); not \
                 switching to it",
                helper.display()
            ))),
        }
    }

    /// Switches to the installed release `version` (the part of `apply`
    /// that runs in the update unit).
    fn switch(&self, host: &Host, version: &str) -> Result<String, Failure> {
        let current = self.link_version("current")?;
        if current.as_deref() == Some(version) {
            return Ok(format!(
                "{version} is already the current version; nothing to do"
            ));
        }
        self.check_complete(version)?;
        if host.systemd_running() {
            // Lets the executor report the hand-off before its unit restarts.
            std::thread::sleep(host.readiness.handoff_grace);
        }
        let previous = self.link_version("previous")?;
        self.activate(host, version, current.as_deref(), previous.as_deref())
    }

    /// Points `current` at `version` (and `previous` at `prev_for_new`),
    /// restarts the units and waits for readiness; on failure switches back
    /// to `old` (restoring `previous` to `old_previous`).
    fn activate(
        &self,
        host: &Host,
        version: &str,
        old: Option<&str>,
        old_previous: Option<&str>,
    ) -> Result<String, Failure> {
        if let Some(o) = old {
            self.set_link("previous", o)?;
        }
        self.set_link("current", version)?;
        step("switched", &format!("current -> releases/{version}"));
        if !host.systemd_running() {
            let msg = format!(
                "switched to {version}; systemd is not running, so restart noderax-agent yourself"
            );
            write_result(host, version, "current", &msg);
            return Ok(msg);
        }
        step("restarting", &UNITS.join(" "));
        let why = match restart_and_wait(host) {
            Ok(()) => {
                let msg = format!("switched to {version}; {} are running", UNITS.join(" and "));
                write_result(host, version, "current", &msg);
                return Ok(msg);
            }
            Err(why) => why,
        };
        let Some(old) = old else {
            let msg = format!(
                "{version} is installed and current but not ready ({why}); there is no previous \
                 version to roll back to: see `journalctl -u {READY_UNIT}`"
            );
            write_result(host, version, "failed", &msg);
            return Err(Failure::failed(msg));
        };
        step(
            "rolling-back",
            &format!("{version} is not ready ({why}); back to {old}"),
        );
        self.set_link("current", old)?;
        match old_previous {
            Some(p) => self.set_link("previous", p)?,
            None => {
                let _ = fs::remove_file(self.dir.join("previous"));
            }
        }
        // Written before the restart: the old network process reads it as
        // soon as it is back.
        write_result(
            host,
            version,
            "rolled_back",
            &format!("{version} did not become ready ({why}); rolled back to {old}"),
        );
        let after = match restart_and_wait(host) {
            Ok(()) => format!("{old} is running again"),
            Err(e) => format!("{old} is not ready either ({e}): see `journalctl -u {READY_UNIT}`"),
        };
        Err(Failure::failed(format!(
            "{version} did not become ready ({why}); rolled back to {old}: {after}"
        )))
    }

    /// Replaces the symlink `name` atomically (a new link renamed over it).
    fn set_link(&self, name: &str, version: &str) -> Result<(), Failure> {
        let link = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.new-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)
            .map_err(|e| io_fail("create the link", &tmp, e))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_fail("switch", &link, e)
        })?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Removes releases other than `current` and `previous`, and leftovers
    /// of interrupted runs, but never the release the Debian package
    /// installed (dpkg owns its files; `dpkg -V` would report them missing).
    /// Best effort: a failure here changes nothing that matters.
    fn prune(&self, host: &Host) {
        let mut keep: Vec<String> = ["current", "previous"]
            .iter()
            .filter_map(|l| self.link_version(l).ok().flatten())
            .collect();
        keep.extend(packaged_releases(host, &self.releases));
        let Ok(entries) = fs::read_dir(&self.releases) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Names of the release directories dpkg's file list of the `noderax-agent`
/// package mentions.
fn packaged_releases(host: &Host, releases: &Path) -> Vec<String> {
    let list = host.path(paths::DPKG_FILE_LIST);
    let Ok(Some(text)) = host::read_trusted(&list, 16 << 20) else {
        return Vec::new();
    };
    // Entries are absolute paths as installed; compare with the real tree.
    let prefix = Path::new("/").join(releases.strip_prefix(host.root()).unwrap_or(releases));
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| Path::new(l).strip_prefix(&prefix).ok())
        .filter_map(|rest| rest.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// Reports progress on stdout as `noderax-agent-priv: step: NAME: DETAIL`,
/// one line each, so the executor can follow an update (the names match the
/// progress statuses of PROTOCOL.md §10.3 where one exists).
fn step(name: &str, detail: &str) {
    crate::say(&format!("noderax-agent-priv: step: {name}: {detail}"));
}

/// `systemctl restart` the units, then wait for every one of them to be
/// active for `settle` consecutive checks.
fn restart_and_wait(host: &Host) -> Result<(), String> {
    let systemctl = host.tool(tools::SYSTEMCTL).map_err(|e| e.message)?;
    let mut cmd = host::command(&systemctl);
    cmd.arg("restart").args(UNITS);
    // The reason ends up in update-result.json and before the operator in
    // the control plane, where systemctl's own output is not: point at
    // the journal, which has it.
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", systemctl.display()))?;
    if !status.success() {
        return Err(format!(
            "systemctl restart {} failed ({status}): a unit did not start, see `journalctl -u {}`",
            UNITS.join(" "),
            UNITS.join(" -u ")
        ));
    }
    let r = host.readiness;
    let start = Instant::now();
    let mut streak = 0;
    loop {
        // One unit per call: `systemctl is-active A B` succeeds when any is.
        let inactive = UNITS.iter().find(|unit| {
            let mut cmd = host::command(&systemctl);
            cmd.args(["is-active", "--quiet", unit]);
            !cmd.status().map(|s| s.success()).unwrap_or(false)
        });
        streak = if inactive.is_none() { streak + 1 } else { 0 };
        if streak >= r.settle {
            return Ok(());
        }
        if start.elapsed() >= r.timeout {
            return Err(format!(
                "{} not active for {} consecutive checks within {:?}",
                inactive.unwrap_or(&READY_UNIT),
                r.settle,
                r.timeout
            ));
        }
        std::thread::sleep(r.poll);
    }
}

/// The installed release key, if any: a minisign public key file (or its
/// bare base64 line), root-owned and not writable by others.
pub fn release_key(host: &Host) -> Result<Option<minisign_verify::PublicKey>, Failure> {
    let key_path = host.path(paths::RELEASE_KEY);
    let Some(key) = host::read_trusted(&key_path, MAX_KEY)? else {
        return Ok(None);
    };
    let key_text = String::from_utf8_lossy(&key);
    if key_text.trim().lines().count() == 1 {
        minisign_verify::PublicKey::from_base64(key_text.trim())
    } else {
        minisign_verify::PublicKey::decode(&key_text)
    }
    .map(Some)
    .map_err(|e| {
        Failure::refused(format!(
            "{} is not a minisign public key ({e}); replace it with the release key",
            key_path.display()
        ))
    })
}

/// Checks the manifest's signature when a release key is installed.
fn verify_signature(host: &Host, manifest: &[u8], signature: Option<&[u8]>) -> Result<(), Failure> {
    let key_path = host.path(paths::RELEASE_KEY);
    let Some(key) = release_key(host)? else {
        crate::say(&format!(
            "noderax-agent-priv: no release key at {}; checking the SHA-256 digest only",
            key_path.display()
        ));
        return Ok(());
    };
    let Some(signature) = signature else {
        return Err(Failure::refused(format!(
            "a release key is installed but the release has no {SIGNATURE}; refusing an \
             unsigned release (nothing was changed)"
        )));
    };
    let sig = minisign_verify::Signature::decode(&String::from_utf8_lossy(signature))
        .map_err(|e| Failure::refused(format!("{SIGNATURE} is not a minisign signature ({e})")))?;
    // Legacy (non-prehashed) signatures are refused: current minisign never
    // makes them.
    key.verify(manifest, &sig, false).map_err(|e| {
        Failure::refused(format!(
            "the release manifest's signature does not verify with {} ({e}); refusing it \
             (nothing was changed)",
            key_path.display()
        ))
    })
}

/// The expected digest of every program ([`PROGRAMS`] order) from a manifest
/// for `version` and `arch`, enforcing the agent's validity rule
/// (PROTOCOL.md §10.4) and this agent's `components` (`shared::release_files`).
fn manifest_digests(
    manifest: &[u8],
    version: &str,
    arch: &str,
) -> Result<Vec<(&'static str, String)>, Failure> {
    let bad = |why: String| Failure::refused(format!("release manifest refused: {why}"));
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    if v["version"].as_str() != Some(version) {
        return Err(bad(format!(
            "it is for version {}, not {version}",
            v["version"]
        )));
    }
    if v["channel"].as_str() != Some("tag") {
        return Err(bad(format!(
            "channel is {}, only \"tag\" releases are installable",
            v["channel"]
        )));
    }
    let artifact = &v["artifacts"][arch];
    PROGRAMS
        .iter()
        .map(|&program| {
            let sha = if program == release_files::AGENT {
                &artifact["sha256"]
            } else {
                &artifact["components"][program]["sha256"]
            };
            let sha = sha.as_str().unwrap_or("");
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "no valid sha256 for {program} ({arch}); a release must carry all of {}",
                    PROGRAMS.join(", ")
                )));
            }
            Ok((program, sha.to_ascii_lowercase()))
        })
        .collect()
}

/// Records the outcome of a switch in [`release_files::UPDATE_RESULT`]
/// (replaced atomically, world-readable: the network process reads it).
/// Best effort: the outcome is also in the audit log and the journal.
fn write_result(host: &Host, version: &str, outcome: &str, message: &str) {
    let path = host.path(release_files::UPDATE_RESULT);
    let body = serde_json::json!({
        "version": version,
        "outcome": outcome,
        "message": message,
        "finishedAt": shared::timestamp::Timestamp::now().to_string(),
    })
    .to_string();
    let tmp = path.with_extension(format!("json.new-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = write_new(&tmp, body.as_bytes(), 0o644)
        .and_then(|()| fs::rename(&tmp, &path).map_err(|e| io_fail("replace", &path, e)));
    match written {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("/"))),
        Err(f) => {
            let _ = fs::remove_file(&tmp);
            crate::warn(&format!(
                "noderax-agent-priv: warning: the update's outcome could not be recorded: {}",
                f.message
            ));
        }
    }
}

/// Opens the staging directory itself without following a symlink there.
fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `name` inside the already opened directory: the staging area is
/// writable by another user, so names are resolved relative to the opened
/// directory, never through a path that could be re-pointed, and a symlink
/// or special file is refused.
fn open_staged(dir: &File, staged: &Path, name: &str) -> Result<Option<File>, Failure> {
    let mut cname = Vec::from(name.as_bytes());
    cname.push(0);
    // SAFETY: a NUL-terminated name and a directory descriptor we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            cname.as_ptr().cast(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(Failure::refused(format!(
            "cannot open {} ({e}); it must be a regular file, not a link",
            staged.join(name).display()
        )));
    }
    // SAFETY: fd is a descriptor just returned to us, owned by the File now.
    let file = unsafe { File::from_raw_fd(fd) };
    let md = file.metadata().map_err(|e| {
        Failure::refused(format!(
            "cannot inspect {}: {e}",
            staged.join(name).display()
        ))
    })?;
    if !md.is_file() {
        return Err(Failure::refused(format!(
            "{} is not a regular file",
            staged.join(name).display()
        )));
    }
    Ok(Some(file))
}

fn read_staged(
    dir: &File,
    staged: &Path,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, Failure> {
    match open_staged(dir, staged, name)? {
        Some(f) => host::read_bounded(f, max, &staged.join(name)).map(Some),
        None => Ok(None),
    }
}

/// Copies a staged file to `dest` (a new file), returning the hex SHA-256 of
/// exactly the bytes written.
fn copy_staged(dir: &File, staged: &Path, name: &str, dest: &Path) -> Result<String, Failure> {
    let src = open_staged(dir, staged, name)?.ok_or_else(|| {
        Failure::refused(format!(
            "{} is missing (the release has no artifact for this machine staged)",
            staged.join(name).display()
        ))
    })?;
    let mut out = new_file(dest, 0o600)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    let mut src = src.take(MAX_ARTIFACT + 1);
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| io_fail("read", &staged.join(name), e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_ARTIFACT {
            return Err(Failure::refused(format!(
                "{} is larger than {MAX_ARTIFACT} bytes",
                staged.join(name).display()
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| io_fail("write", dest, e))?;
    }
    out.sync_all().map_err(|e| io_fail("sync", dest, e))?;
    Ok(hex(&hasher.finalize()))
}

fn new_file(path: &Path, mode: u32) -> Result<File, Failure> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_fail("create", path, e))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let mut f = new_file(path, mode)?;
    f.write_all(bytes).map_err(|e| io_fail("write", path, e))?;
    f.sync_all().map_err(|e| io_fail("sync", path, e))
}

/// Makes renames in `dir` durable. Best effort: a failing fsync of a
/// directory leaves the rename done, just not yet on disk.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_fail(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::failed(format!(
        "cannot {what} {}: {e}",
        String::from_utf8_lossy(path.as_os_str().as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifest_rules() {
        let (a, e, p) = ("AB".repeat(32), "cd".repeat(32), "ef".repeat(32));
        let good = format!(
            r#"{{"version":"1.0.3","channel":"tag","artifacts":{{"amd64":{{"binaryUrl":"x","sha256":"{a}",
                "components":{{"noderax-agent-exec":{{"url":"y","sha256":"{e}"}},
                               "noderax-agent-priv":{{"url":"z","sha256":"{p}"}}}}}}}}}}"#
        );
        assert_eq!(
            manifest_digests(good.as_bytes(), "1.0.3", "amd64").unwrap(),
            [
                ("noderax-agent", "ab".repeat(32)),
                ("noderax-agent-exec", e.clone()),
                ("noderax-agent-priv", p.clone()),
            ]
        );
        let single = format!(
            r#"{{"version":"1.0.3","channel":"tag","artifacts":{{"amd64":{{"binaryUrl":"x","sha256":"{a}"}}}}}}"#
        );
        for (m, v, a, want) in [
            (good.as_str(), "1.0.4", "amd64", "not 1.0.4"),
            (
                good.as_str(),
                "1.0.3",
                "arm64",
                "no valid sha256 for noderax-agent (arm64)",
            ),
            (
                single.as_str(),
                "1.0.3",
                "amd64",
                "no valid sha256 for noderax-agent-exec (amd64); a release must carry all of",
            ),
            (
                r#"{"version":"1.0.3","channel":"main","artifacts":{}}"#,
                "1.0.3",
                "amd64",
                "channel",
            ),
            (
                r#"{"version":"1.0.3","channel":"tag","artifacts":{"amd64":{"sha256":"abc"}}}"#,
                "1.0.3",
                "amd64",
                "no valid sha256",
            ),
            ("[", "1.0.3", "amd64", "not valid JSON"),
        ] {
            let e = manifest_digests(m.as_bytes(), v, a).unwrap_err();
            assert!(e.message.contains(want), "{m}: {}", e.message);
        }
    }
}

//! `noderax-agent-priv`, the agent's root helper (ARCHITECTURE.md §2, §6, §9).
//!
//! The only code of the agent that runs as root. The executor reaches it as
//! `sudo -n /usr/local/libexec/noderax-agent-priv WORDS...`; it never reads
//! a shell string, never touches the network and ignores the environment it
//! was started with. Read in this order:
//!
//! - [`cli`]: the closed command surface (a pure parser, fuzzed).
//! - [`policy`]: who may call it and the host owner's root-access ceiling.
//! - [`apt`]: package operations with exact-name resolution and fixed flags.
//! - [`update`]: verified release install, atomic switch, readiness,
//!   rollback.
//! - [`audit`]: one record per invocation to syslog and a JSON-lines file.
//! - [`host`]: fixed paths and tools, the child environment, trust checks.
//!
//! Exit codes: 0 done; 1 failed while acting (the message says what state
//! the host is in); 2 refused before anything was changed.

pub mod apt;
pub mod audit;
pub mod cli;
pub mod host;
pub mod policy;
pub mod update;

#[cfg(test)]
mod it_apt;
#[cfg(test)]
mod it_update;
#[cfg(test)]
mod testkit;

use std::ffi::{OsStr, OsString};
use std::time::Instant;

use cli::Command;
use host::{Host, paths, tools};
use policy::Caller;

/// Exit code when an operation was attempted and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when a request was refused before anything changed.
pub const EXIT_REFUSED: u8 = 2;

/// Why an invocation did not succeed: a one-line message and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Refused; nothing was changed.
    pub fn refused(message: String) -> Self {
        Self {
            code: EXIT_REFUSED,
            message,
        }
    }

    /// Failed while acting.
    pub fn failed(message: String) -> Self {
        Self {
            code: EXIT_FAILED,
            message,
        }
    }
}

/// Runs one invocation: parse, check the caller, audit, act. `argv`
/// includes argv\[0\]. Prints the outcome and returns the exit code.
pub fn run(host: &Host, caller: &Caller, argv: &[OsString]) -> u8 {
    let started = Instant::now();
    let shown: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let program = argv.first().map_or(OsStr::new(""), OsString::as_os_str);
    let args: Vec<&OsStr> = argv.iter().skip(1).map(OsString::as_os_str).collect();

    let result = cli::parse(program, &args)
        .map_err(|r| Failure::refused(r.0))
        .and_then(|cmd| {
            if cmd == Command::Version {
                // Harmless and needed by anyone checking the install.
                return Ok(format!(
                    "noderax-agent-priv {}",
                    shared::build_info::summary()
                ));
            }
            policy::check_caller(host, caller)?;
            if cmd != Command::Check {
                // Nothing that changes the host runs unrecorded.
                audit::write(
                    host,
                    &audit::Record {
                        caller,
                        argv: &shown,
                        outcome: "started",
                        exit_code: 0,
                        message: "",
                        duration: started.elapsed(),
                    },
                )
                .map_err(|e| Failure::refused(e.message))?;
            }
            dispatch(host, &cmd)
        });

    let (outcome, code, message) = match &result {
        Ok(m) => ("ok", 0, m.as_str()),
        Err(f) if f.code == EXIT_REFUSED => ("refused", f.code, f.message.as_str()),
        Err(f) => ("failed", f.code, f.message.as_str()),
    };
    match &result {
        Ok(m) if !m.is_empty() => say(m),
        Ok(_) => {}
        Err(f) => warn(&format!("noderax-agent-priv: {outcome}: {}", f.message)),
    }
    let rec = audit::Record {
        caller,
        argv: &shown,
        outcome,
        exit_code: code,
        message,
        duration: started.elapsed(),
    };
    // A non-root `version` or a refused stranger cannot write the file;
    // that is expected and not worth a message.
    if let Err(e) = audit::write(host, &rec) {
        if caller.euid == 0 {
            warn(&format!("noderax-agent-priv: warning: {}", e.message));
        }
    }
    code
}

fn dispatch(host: &Host, cmd: &Command) -> Result<String, Failure> {
    if cmd.is_operational() {
        let ceiling = policy::read_ceiling(host)?;
        if !ceiling.operational {
            return Err(Failure::refused(format!(
                "the root access ceiling on this host is {:?}, which does not allow the \
                 operational scope; the host owner sets root_access_ceiling in {}",
                ceiling.profile,
                paths::CONFIG
            )));
        }
    }
    match cmd {
        Command::Apt { change, names } => {
            apt::change(host, *change, names)?;
            Ok(format!(
                "apt-get {} {}: done",
                change.verb(),
                names.join(" ")
            ))
        }
        Command::AptUpdate => {
            apt::update(host)?;
            Ok("apt-get update: done".into())
        }
        Command::RestartAgent => restart_agent(host),
        Command::Reboot => reboot(host),
        Command::UpdateApply { version, .. } => update::apply(host, version),
        Command::UpdateSwitch { version } => update::switch(host, version),
        Command::UpdateRollback => update::rollback(host),
        Command::Check => check(host),
        Command::Version => Ok(String::new()),
    }
}

/// Restarts the network process only (ARCHITECTURE.md §3): the executor,
/// which runs this very task, keeps running and reports its completion.
fn restart_agent(host: &Host) -> Result<String, Failure> {
    if !host.systemd_running() {
        return Err(Failure::refused(
            "systemd is not running, so there is no noderax-agent.service to restart".into(),
        ));
    }
    let mut cmd = host::command(&host.tool(tools::SYSTEMCTL)?);
    cmd.args(["restart", update::READY_UNIT]);
    host::run_streamed(cmd, "systemctl restart noderax-agent.service")?;
    Ok("noderax-agent.service restarted".into())
}

/// Delay before a requested reboot, so the task that asked for it can
/// still report its completion.
pub const REBOOT_DELAY_SECS: u32 = 15;

/// Schedules a reboot in [`REBOOT_DELAY_SECS`] through a transient timer.
fn reboot(host: &Host) -> Result<String, Failure> {
    if !host.systemd_running() {
        return Err(Failure::refused(
            "systemd is not running; this helper reboots only through systemd".into(),
        ));
    }
    let systemctl = host.tool(tools::SYSTEMCTL)?;
    let mut cmd = host::command(&host.tool(tools::SYSTEMD_RUN)?);
    cmd.args([
        "--quiet",
        "--collect",
        "--unit=noderax-agent-reboot",
        &format!("--on-active={REBOOT_DELAY_SECS}"),
        "--",
    ])
    .arg(&systemctl)
    .arg("reboot");
    host::run_streamed(cmd, "scheduling the reboot")?;
    Ok(format!("reboot scheduled in {REBOOT_DELAY_SECS} seconds"))
}

/// `check`: what this helper permits here, and whether its configuration
/// is usable. Fails (exit 1) when something needs fixing.
fn check(host: &Host) -> Result<String, Failure> {
    let mut out = vec![
        format!("noderax-agent-priv {}", shared::build_info::summary()),
        "commands: apt install|remove|purge -- NAME... (at most 64), apt update, \
         service restart-agent, system reboot, update apply|switch --version V, \
         update rollback, version, check"
            .to_owned(),
        format!(
            "callers: root, or through sudo the user {:?} or members of {}",
            policy::EXECUTOR_USER,
            policy::ADMIN_GROUPS.join("/")
        ),
    ];
    let mut problems = Vec::new();
    match policy::read_ceiling(host) {
        Ok(c) => out.push(format!(
            "root access ceiling: {} (operational commands {})",
            c.profile,
            if c.operational { "allowed" } else { "refused" }
        )),
        Err(e) => problems.push(e.message),
    }
    let key = host.path(paths::RELEASE_KEY);
    match update::release_key(host) {
        Ok(Some(_)) => out.push(format!(
            "updates: SHA-256 and minisign signature ({})",
            key.display()
        )),
        Ok(None) => out.push(format!(
            "updates: SHA-256 only (no release key at {})",
            key.display()
        )),
        Err(e) => problems.push(e.message),
    }
    out.push(format!(
        "systemd: {}",
        if host.systemd_running() {
            "running (long operations run in transient units)"
        } else {
            "not running (operations run directly; no restart, reboot or readiness check)"
        }
    ));
    for t in [
        tools::APT_GET,
        tools::APT_CACHE,
        tools::DPKG_QUERY,
        tools::SYSTEMCTL,
        tools::SYSTEMD_RUN,
    ] {
        match host.tool(t) {
            Ok(p) => out.push(format!("tool: {}", p.display())),
            Err(e) => out.push(format!("tool missing: {}", e.message)),
        }
    }
    out.push(format!(
        "audit log: {}",
        host.path(paths::AUDIT_FILE).display()
    ));
    if problems.is_empty() {
        Ok(out.join("\n"))
    } else {
        say(&out.join("\n"));
        Err(Failure::failed(problems.join("; ")))
    }
}

/// A line on stdout. Write errors are ignored on purpose: during an update
/// the reader (the executor's task pipe) goes away when the executor is
/// restarted, and the helper must still finish, roll back and audit
/// (`println!` would panic on the broken pipe).
pub(crate) fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A line on stderr; write errors are ignored for the same reason as [`say`].
pub(crate) fn warn(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

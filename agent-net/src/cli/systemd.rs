//! The agent's systemd units as the command line sees them: their names,
//! running `systemctl`, and reading the units' states.
//!
//! `systemctl` is taken from PATH (tests put a stand-in first), falling back
//! to its usual places. Whether systemd runs is decided by `systemctl`
//! itself failing, with `/run/systemd/system` (what `sd_booted(3)` checks)
//! only choosing the explanation, so a stand-in works where systemd does not
//! run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The network process.
pub const NET_UNIT: &str = "noderax-agent.service";
/// The executor's socket; it starts [`EXEC_UNIT`] on the first connection.
pub const EXEC_SOCKET: &str = "noderax-agent-exec.socket";
/// The executor.
pub const EXEC_UNIT: &str = "noderax-agent-exec.service";
/// Every unit of the agent, in the order `status` shows them.
pub const UNITS: [&str; 3] = [NET_UNIT, EXEC_SOCKET, EXEC_UNIT];

/// Exists when systemd is PID 1.
const BOOTED_MARKER: &str = "/run/systemd/system";
/// A local `systemctl` call that takes longer is hung (D-Bus trouble).
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether systemd is PID 1 on this host.
pub fn running() -> bool {
    Path::new(BOOTED_MARKER).is_dir()
}

/// Whether this process runs in `unit`'s control group (a task or terminal
/// of the executor runs in noderax-agent-exec.service's).
pub fn in_unit(unit: &str) -> bool {
    std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.rsplit(':').next())
            .any(|path| path.split('/').any(|c| c == unit))
    })
}

/// Why unit commands cannot work here, for messages.
pub const NOT_RUNNING: &str = "systemd is not running on this host (PID 1 is something else, e.g. in a container), so there are no units to manage; run the agent in the foreground with `noderax-agent run` instead";

/// `systemctl` on PATH, else in /usr/bin or /bin.
pub fn systemctl_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("systemctl"))
        .chain(["/usr/bin/systemctl", "/bin/systemctl"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Runs `systemctl ARGS` and returns its standard output; the error says
/// what failed, with systemctl's own message, and explains a host without
/// systemd.
pub fn systemctl_output(args: &[&str]) -> anyhow::Result<String> {
    let Some(bin) = systemctl_path() else {
        bail!("systemctl is not installed: {NOT_RUNNING}");
    };
    let shown = format!("systemctl {}", args.join(" "));
    let mut cmd = Command::new(&bin);
    cmd.args(args).stdin(Stdio::null());
    let out = super::doctor_cmd::run_with_timeout(cmd, SYSTEMCTL_TIMEOUT)
        .with_context(|| format!("`{shown}` could not run"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    if !running() {
        bail!("`{shown}` failed: {NOT_RUNNING}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let status = out.status.code().map_or_else(
        || "killed by a signal".to_owned(),
        |c| format!("exit status {c}"),
    );
    if said.is_empty() {
        bail!("`{shown}` failed ({status})");
    }
    bail!("`{shown}` failed ({status}): {said}");
}

/// Runs `systemctl ARGS`, discarding its output on success.
pub fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    systemctl_output(args).map(|_| ())
}

/// What systemd says about one unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    pub unit: String,
    /// `loaded`, `not-found`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// `running`, `listening`, `dead`, ...
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, ... (empty when not installed).
    pub unit_file_state: String,
}

impl UnitState {
    /// `active (running), enabled`, or `not installed`.
    pub fn describe(&self) -> String {
        if self.load_state == "not-found" {
            return "not installed".to_owned();
        }
        let mut s = format!("{} ({})", self.active_state, self.sub_state);
        if !self.unit_file_state.is_empty() {
            s.push_str(&format!(", {}", self.unit_file_state));
        }
        s
    }
}

/// The states of [`UNITS`] (`systemctl show`).
pub fn unit_states() -> anyhow::Result<Vec<UnitState>> {
    let mut args = vec![
        "show",
        "--property=Id,LoadState,ActiveState,SubState,UnitFileState",
        "--",
    ];
    args.extend(UNITS);
    let text = systemctl_output(&args)?;
    let states = parse_show(&text);
    if states.len() != UNITS.len() {
        bail!(
            "`systemctl show` described {} units instead of {}: {text:?}",
            states.len(),
            UNITS.len()
        );
    }
    // In the order asked for; `Id` names the unit.
    Ok(UNITS
        .iter()
        .zip(states)
        .map(|(unit, mut s)| {
            if s.unit.is_empty() {
                s.unit = (*unit).to_owned();
            }
            s
        })
        .collect())
}

/// `systemctl show` output: one `Key=Value` block per unit, blocks separated
/// by an empty line.
fn parse_show(text: &str) -> Vec<UnitState> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        if block.trim().is_empty() {
            continue;
        }
        let mut s = UnitState {
            unit: String::new(),
            load_state: String::new(),
            active_state: String::new(),
            sub_state: String::new(),
            unit_file_state: String::new(),
        };
        for line in block.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_owned();
            match k {
                "Id" => s.unit = v,
                "LoadState" => s.load_state = v,
                "ActiveState" => s.active_state = v,
                "SubState" => s.sub_state = v,
                "UnitFileState" => s.unit_file_state = v,
                _ => {}
            }
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show() {
        let text = "Id=noderax-agent.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n\
                    Id=noderax-agent-exec.socket\nLoadState=loaded\nActiveState=active\nSubState=listening\nUnitFileState=enabled\n\n\
                    Id=noderax-agent-exec.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n";
        let s = parse_show(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].describe(), "active (running), enabled");
        assert_eq!(s[1].unit, "noderax-agent-exec.socket");
        assert_eq!(s[1].describe(), "active (listening), enabled");
        assert_eq!(s[2].describe(), "not installed");
    }
}

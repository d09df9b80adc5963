//! `noderax-agent start|stop|restart` and the unit states in `status`, as
//! real processes with a stand-in `systemctl` first on PATH that records
//! how it was called and answers as told.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use testbed::test_support::{describe as text, is_root};

/// A directory with the stand-in systemctl and a config for `status`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// `show` prints `show_output`; every call exits with `status` after
    /// printing `stderr` to standard error.
    fn new(show_output: &str, status: i32, stderr: &str) -> Self {
        let h = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let d = h.dir.path();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::fs::write(d.join("show.out"), show_output).unwrap();
        std::fs::write(d.join("stderr"), stderr).unwrap();
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\n[ \"$1\" = show ] && cat '{show}'\ncat '{err}' >&2\nexit {status}\n",
            log = d.join("calls").display(),
            show = d.join("show.out").display(),
            err = d.join("stderr").display(),
        );
        let bin = d.join("bin/systemctl");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("config.json"),
            serde_json::json!({
                "api_url": "http://127.0.0.1:9",
                "state_file": d.join("state/agent_identity.json"),
            })
            .to_string(),
        )
        .unwrap();
        h
    }

    /// PATH with the stand-in first.
    fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_noderax-agent"));
        cmd.args(args)
            .env_clear()
            .env("PATH", self.path_var())
            .env("NODERAX_CONFIG_FILE", self.dir.path().join("config.json"))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The stand-in's calls, one per line.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[test]
fn start_stop_restart_manage_the_agents_units() {
    if !is_root() {
        eprintln!(
            "skipped: the commands need root (the refusal is tested by refuses_without_root)"
        );
        return;
    }
    let h = Host::new("", 0, "");
    for (verb, want) in [
        (
            "start",
            "start noderax-agent-exec.socket noderax-agent.service",
        ),
        (
            "stop",
            "stop noderax-agent.service noderax-agent-exec.socket noderax-agent-exec.service",
        ),
        // The network process only: tasks keep running in the executor.
        ("restart", "restart noderax-agent.service"),
    ] {
        let out = h.run(&[verb]);
        assert!(out.status.success(), "{verb}: {}", text(&out));
        assert_eq!(h.calls().last().map(String::as_str), Some(want), "{verb}");
    }
    assert_eq!(h.calls().len(), 3);
    let out = h.run(&["restart"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tasks kept running in the executor"),
        "{}",
        text(&out)
    );
    let help = h.run(&["restart", "--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("noderax-agent.service) only"),
        "{}",
        text(&help)
    );
}

#[test]
fn a_failing_systemctl_is_explained() {
    if !is_root() {
        eprintln!("skipped: the commands need root");
        return;
    }
    let h = Host::new(
        "",
        1,
        "Failed to start noderax-agent.service: Unit noderax-agent.service not found.\n",
    );
    let out = h.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if systemd_running() {
        assert!(
            stderr.contains("Unit noderax-agent.service not found")
                && stderr.contains("journalctl -u noderax-agent.service"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("systemd is not running on this host")
                && stderr.contains("noderax-agent run"),
            "{stderr}"
        );
    }
}

#[test]
fn refuses_without_root() {
    let h = Host::new("", 0, "");
    let out = if is_root() {
        // As nobody, with the same stand-in first on PATH.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_noderax-agent"))
            .arg("stop")
            .env_clear()
            .env("PATH", h.path_var())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    } else {
        h.run(&["stop"])
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root: run `sudo noderax-agent stop`"),
        "{}",
        text(&out)
    );
    assert!(
        h.calls().is_empty(),
        "systemctl was called: {:?}",
        h.calls()
    );
}

#[test]
fn status_shows_the_units_states() {
    let show = "Id=noderax-agent.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n\
                Id=noderax-agent-exec.socket\nLoadState=loaded\nActiveState=active\nSubState=listening\nUnitFileState=enabled\n\n\
                Id=noderax-agent-exec.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nUnitFileState=static\n";
    let h = Host::new(show, 0, "");
    let out = h.run(&["status", "--no-api-check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "units:          noderax-agent.service active (running), enabled\n",
        "                noderax-agent-exec.socket active (listening), enabled\n",
        "                noderax-agent-exec.service inactive (dead), static\n",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{}", text(&out));
    }
    assert_eq!(
        h.calls(),
        [
            "show --property=Id,LoadState,ActiveState,SubState,UnitFileState -- noderax-agent.service noderax-agent-exec.socket noderax-agent-exec.service"
        ]
    );

    let out = h.run(&["status", "--no-api-check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["units"][1]["unit"], "noderax-agent-exec.socket");
    assert_eq!(v["units"][1]["subState"], "listening");
    assert_eq!(v["units"][2]["unitFileState"], "static");
    assert!(v["unitsError"].is_null());
}

#[test]
fn status_without_systemd_says_so() {
    if systemd_running() {
        eprintln!("skipped: systemd runs on this host");
        return;
    }
    let h = Host::new(
        "",
        1,
        "System has not been booted with systemd as init system (PID 1). Can't operate.\n",
    );
    let out = h.run(&["status", "--no-api-check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["units"].is_null());
    assert_eq!(
        v["unitsError"],
        "systemd is not running on this host (e.g. a container): no units"
    );
    let out = h.run(&["status", "--no-api-check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("units:          systemd is not running on this host"),
        "{}",
        text(&out)
    );
}

//! Scenario 3, privilege boundary. As `noderax` (from shell tasks):
//! `sudo -n apt-get ...`, `sudo -n -l` for anything but the helper, and the
//! helper with a `./x.deb` path, `-o` options, globs, a trailing `-` or an
//! unknown subcommand are all refused; `sudo -n <helper> apt install <pkg>`
//! from a local apt repository works and is in the helper's audit log. A
//! package install task from the control plane installs a package from
//! that repository.
//!
//! The repository is two tiny packages built on the host with dpkg-deb,
//! indexed with dpkg-scanpackages and served by the testbed under
//! `/cdn/apt/` (flat layout, unsigned, `[trusted=yes]` in the guest).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use shared::api::RootProfile;
use shared::api::task::TaskStatus;

use super::{CMD_TIMEOUT, Env, Outcome, Suite};

const HELPER: &str = "/usr/local/libexec/noderax-agent-priv";
/// Installed with `sudo -n helper apt install` from a shell task.
const PKG_SUDO: &str = "noderax-vm-hello";
/// Installed by a packageInstall task from the control plane.
const PKG_TASK: &str = "noderax-vm-greeting";
/// The agent reports the applied root profile with its next claim.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(180);
/// A task that runs apt in the guest (emulated CPU: dpkg is slow).
const APT_TASK_TIMEOUT: Duration = Duration::from_secs(600);

/// Attempts that must be refused: (name, command, exit status, words the
/// first line of output must contain).
fn refusals() -> Vec<(&'static str, String, i32, &'static str)> {
    vec![
        (
            "sudo apt-get",
            "sudo -n apt-get update".into(),
            1,
            "password is required",
        ),
        ("sudo -l for a shell", "sudo -n -l /bin/sh".into(), 1, ""),
        (
            "sudo a shell",
            "sudo -n /bin/sh -c id".into(),
            1,
            "password is required",
        ),
        (
            "helper with a .deb path",
            format!("sudo -n {HELPER} apt install -- ./x.deb"),
            2,
            "",
        ),
        (
            "helper with an -o option",
            format!("sudo -n {HELPER} apt install -o Dpkg::Options::=--force-all {PKG_SUDO}"),
            2,
            "",
        ),
        (
            "helper with an -o option after --",
            format!(
                "sudo -n {HELPER} apt install -- -oAPT::Get::AllowUnauthenticated=1 {PKG_SUDO}"
            ),
            2,
            "",
        ),
        (
            "helper with a glob",
            format!("sudo -n {HELPER} apt install -- 'noderax-vm-*'"),
            2,
            "",
        ),
        (
            "helper with a trailing -",
            format!("sudo -n {HELPER} apt install -- sudo-"),
            2,
            "",
        ),
        (
            "helper with an unknown subcommand",
            format!("sudo -n {HELPER} frobnicate"),
            2,
            "",
        ),
        (
            "helper with an unknown apt operation",
            format!("sudo -n {HELPER} apt source -- {PKG_SUDO}"),
            2,
            "",
        ),
    ]
}

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let (Some(dpkg_deb), Some(scan)) = (
        &suite.host_tools.dpkg_deb,
        &suite.host_tools.dpkg_scanpackages,
    ) else {
        bail!(
            "dpkg-deb and dpkg-scanpackages are needed on the host for the local apt repository (package dpkg-dev)"
        );
    };
    build_repository(&suite.layout.root, dpkg_deb, scan)?;
    let mut env = Env::boot(suite, "3-privilege").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, _suite: &Suite) -> anyhow::Result<Vec<String>> {
    let node = env.install_healthy().await?.node_id;
    env.vm
        .agent
        .write_file(
            "/etc/apt/sources.list.d/noderax-vm.list",
            format!("deb [trusted=yes] {}/cdn apt/\n", Env::api_url()).as_bytes(),
        )
        .await?;

    // Refusals, all in one task (each line: NAME<TAB>rc<TAB>first line).
    let mut script = String::from(
        "try() { name=$1; shift; out=$(sh -c \"$1\" 2>&1 </dev/null); rc=$?; \
         printf '%s\\t%s\\t%s\\n' \"$name\" \"$rc\" \"$(printf '%s' \"$out\" | head -n1)\"; }\n",
    );
    let attempts = refusals();
    for (name, cmd, _, _) in &attempts {
        script.push_str(&format!("try '{name}' '{}'\n", cmd.replace('\'', r"'\''")));
    }
    let out = env.shell_ok(&node, &script).await?;
    let mut problems = Vec::new();
    for (name, _, want_rc, want_text) in &attempts {
        let Some(line) = out.lines().find(|l| l.split('\t').next() == Some(name)) else {
            problems.push(format!("{name}: no result"));
            continue;
        };
        let f: Vec<&str> = line.splitn(3, '\t').collect();
        let rc: i32 = f.get(1).and_then(|r| r.parse().ok()).unwrap_or(-1);
        let text = f.get(2).copied().unwrap_or("");
        if rc != *want_rc || !text.contains(want_text) {
            problems.push(format!(
                "{name}: exit {rc} {text:?} (want exit {want_rc} mentioning {want_text:?})"
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "not refused as expected:\n{}",
        problems.join("\n")
    );

    // What sudo lets noderax do: the helper and nothing else.
    let listing = env.shell_ok(&node, "sudo -n -l").await?;
    let rules: Vec<&str> = listing
        .lines()
        .skip_while(|l| !l.contains("may run the following commands"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        rules == [format!("(root) NOPASSWD: {HELPER}")],
        "sudo -n -l for noderax lists more or other than the helper: {listing}"
    );

    // The helper installs from the local repository.
    let id = env.shell_task(
        &node,
        &format!(
            "sudo -n {HELPER} apt update && sudo -n {HELPER} apt install -- {PKG_SUDO} && \
             cat /usr/share/noderax-vm/{PKG_SUDO}"
        ),
    )?;
    let t = env.wait_task(&id, APT_TASK_TIMEOUT).await?;
    let out = env.output(&id);
    ensure!(
        t.status == TaskStatus::Success && out.contains(&format!("hello from {PKG_SUDO}")),
        "sudo -n helper apt install {PKG_SUDO} ended {:?}: {out}",
        t.status
    );
    let audit = String::from_utf8_lossy(
        &env.vm
            .agent
            .read_file("/var/log/noderax-agent/priv-audit.jsonl")
            .await?,
    )
    .into_owned();
    let records: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let install_ok = records.iter().any(|r| {
        r["outcome"] == "ok"
            && r["argv"].as_array().is_some_and(|a| {
                a.iter().any(|w| w == PKG_SUDO) && a.iter().any(|w| w == "install")
            })
    });
    ensure!(
        install_ok,
        "the audit log has no successful install of {PKG_SUDO}:\n{audit}"
    );
    let refused = records.iter().filter(|r| r["outcome"] == "refused").count();
    ensure!(
        refused >= 6,
        "the audit log records {refused} refusals, want at least 6:\n{audit}"
    );

    // A package install task from the control plane.
    env.tb.set_root_profile(&node, RootProfile::Operational)?;
    env.tb
        .wait_for(PROFILE_TIMEOUT, |tb| {
            tb.node(&node)
                .filter(|n| n.applied_profile().scopes().operational)
        })
        .await
        .with_context(|| {
            format!(
                "the agent did not apply the operational root profile: {:?}",
                env.tb.node(&node).and_then(|n| n.root_applied)
            )
        })?;
    let id = env
        .tb
        .create_task(&node, "packageInstall", json!({ "names": [PKG_TASK] }))?;
    let t = env.wait_task(&id, APT_TASK_TIMEOUT).await?;
    ensure!(
        t.status == TaskStatus::Success,
        "packageInstall {PKG_TASK} ended {:?} (result {}): {}",
        t.status,
        t.result.clone().unwrap_or_default(),
        env.output(&id)
    );
    let status = env
        .vm
        .agent
        .sh_ok(
            &format!("dpkg-query -W -f='${{Status}}' {PKG_TASK}"),
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        status == "install ok installed",
        "{PKG_TASK} after the packageInstall task: {status:?}"
    );
    Ok(vec![format!(
        "{} refusals checked, {refused} refusals audited",
        attempts.len()
    )])
}

/// `<root>/apt/`: the two packages, `Packages` and a `Release` naming it.
fn build_repository(root: &Path, dpkg_deb: &Path, scan: &Path) -> anyhow::Result<()> {
    let repo = root.join("apt");
    let build = root.join("apt-build");
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&repo)?;
    for pkg in [PKG_SUDO, PKG_TASK] {
        let dir = build.join(pkg);
        std::fs::create_dir_all(dir.join("DEBIAN"))?;
        std::fs::create_dir_all(dir.join("usr/share/noderax-vm"))?;
        std::fs::write(
            dir.join("DEBIAN/control"),
            format!(
                "Package: {pkg}\nVersion: 1.0\nArchitecture: all\nSection: misc\nPriority: optional\n\
                 Maintainer: Noderax VM suite <vm@noderax.invalid>\n\
                 Description: package of the Noderax VM suite's local repository\n"
            ),
        )?;
        std::fs::write(
            dir.join("usr/share/noderax-vm").join(pkg),
            format!("hello from {pkg}\n"),
        )?;
        host(
            Command::new(dpkg_deb)
                .args(["--build", "--root-owner-group"])
                .arg(&dir)
                .arg(repo.join(format!("{pkg}_1.0_all.deb"))),
        )?;
    }
    let packages = host(
        Command::new(scan)
            .args(["apt", "/dev/null"])
            .current_dir(root),
    )?;
    std::fs::write(repo.join("Packages"), &packages)?;
    let sum = host(Command::new("sha256sum").arg(repo.join("Packages")))?;
    let sum = String::from_utf8_lossy(&sum);
    let hash = sum
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?;
    std::fs::write(
        repo.join("Release"),
        format!(
            "Origin: noderax-vm\nLabel: noderax-vm\nDate: Thu, 01 Jan 2015 00:00:00 UTC\n\
             SHA256:\n {hash} {} Packages\n",
            packages.len()
        ),
    )?;
    std::fs::remove_dir_all(&build)?;
    Ok(())
}

/// Runs a host command, returning its stdout; fails with its stderr.
fn host(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

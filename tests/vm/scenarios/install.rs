//! Scenario 1, one-line install: the installer, fed a bootstrap token from
//! the testbed, installs from the local release layout over the bridge; the
//! testbed sees every progress stage in order ending in
//! `service_started`/`completed`; both users exist; the units are active;
//! files, owners and modes are as documented (README, installer); and
//! `systemd-analyze security` in the guest gives the network unit ≤ 2.0.

use anyhow::{Context as _, bail, ensure};

use super::{CMD_TIMEOUT, Env, Installed, Outcome, Suite, secs};

/// PROTOCOL.md §3's stages as the installer reports them (without
/// `dependencies_installing`, which only comes when curl, sudo or
/// ca-certificates are missing; the image has them).
const STAGES: [(&str, i64, &str); 7] = [
    ("installer_started", 8, "installing"),
    ("dependencies_ready", 30, "installing"),
    ("service_user_ready", 45, "installing"),
    ("binary_download_started", 60, "installing"),
    ("binary_downloaded", 74, "installing"),
    ("agent_bootstrapping", 88, "installing"),
    ("service_started", 100, "completed"),
];

/// The network unit's exposure must not exceed this (ARCHITECTURE.md §3).
const MAX_EXPOSURE: f64 = 2.0;

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let mut env = Env::boot(suite, "1-install").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, suite: &Suite) -> anyhow::Result<Vec<String>> {
    let installed = env.install().await?;
    let mut notes = vec![format!("install {}", secs(installed.duration))];
    check_progress(env, &installed)?;
    check_layout(env, &suite.layout.version, Method::Script).await?;
    check_binaries(env, suite).await?;
    let node = env.tb.node(&installed.node_id).context("node vanished")?;
    ensure!(
        node.agent_version.as_deref() == Some(suite.layout.version.as_str()),
        "the node reports agent version {:?}, the release is {}",
        node.agent_version,
        suite.layout.version
    );
    ensure!(
        !installed.output.contains(&installed.install_token),
        "the installer printed the bootstrap token"
    );
    for unit in ["noderax-agent.service", "noderax-agent-exec.service"] {
        let score = exposure(env, unit).await?;
        notes.push(format!("{unit} exposure {score:.1}"));
        if unit == "noderax-agent.service" {
            ensure!(
                score <= MAX_EXPOSURE,
                "systemd-analyze security rates {unit} {score}, above {MAX_EXPOSURE}"
            );
        }
    }
    // Last, so that a failure still reports the scores above.
    env.wait_healthy().await.with_context(|| notes.join("; "))?;
    Ok(notes)
}

pub fn check_progress(env: &Env, installed: &Installed) -> anyhow::Result<()> {
    let install = env
        .tb
        .install(&installed.install_token)
        .context("the node install vanished")?;
    let got: Vec<(String, Option<i64>, String)> = install
        .reports
        .iter()
        .filter(|r| r.stage != "dependencies_installing")
        .map(|r| (r.stage.clone(), r.progress_percent, r.status.clone()))
        .collect();
    let want: Vec<(String, Option<i64>, String)> = STAGES
        .iter()
        .map(|(s, p, st)| (s.to_string(), Some(*p), st.to_string()))
        .collect();
    ensure!(
        got == want,
        "progress reports (stage, percent, status) differ:\n got  {got:?}\n want {want:?}\ninstaller output:\n{}",
        installed.output
    );
    ensure!(
        install.reports.iter().all(|r| r.applied),
        "a progress report was not applied: {:?}",
        install.reports
    );
    ensure!(
        (install.status.as_str(), install.stage.as_str()) == ("completed", "service_started"),
        "the install ended as {}/{}",
        install.status,
        install.stage
    );
    Ok(())
}

/// How the agent was installed: the script lays files out itself, the
/// .deb puts its units where packages put theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Script,
    Deb,
}

/// Users, owners, modes, links and units as documented (README: installer,
/// root helper, systemd units, the .deb) for release `version`.
pub async fn check_layout(env: &mut Env, version: &str, method: Method) -> anyhow::Result<()> {
    let units = match method {
        Method::Script => "/etc/systemd/system",
        Method::Deb => "/lib/systemd/system",
    };
    let agent = &mut env.vm.agent;
    // Users: system accounts without login, locked, each in its own group.
    for (user, home) in [
        ("noderax-net", "/var/lib/noderax-agent"),
        ("noderax", "/home/noderax"),
    ] {
        let pw = agent
            .sh_ok(&format!("getent passwd {user}"), CMD_TIMEOUT)
            .await
            .with_context(|| format!("user {user} does not exist"))?;
        let f: Vec<&str> = pw.trim().split(':').collect();
        ensure!(f.len() == 7, "getent passwd {user}: {pw:?}");
        let uid: u32 = f[2].parse()?;
        ensure!(uid < 1000, "{user} is not a system user (uid {uid})");
        ensure!(
            (f[5], f[6]) == (home, "/usr/sbin/nologin"),
            "{user}: home {} shell {} (want {home}, /usr/sbin/nologin)",
            f[5],
            f[6]
        );
        let group = agent.sh_ok(&format!("id -gn {user}"), CMD_TIMEOUT).await?;
        ensure!(group.trim() == user, "{user}'s group is {}", group.trim());
        let shadow = agent
            .sh_ok(&format!("getent shadow {user}"), CMD_TIMEOUT)
            .await?;
        ensure!(
            shadow.split(':').nth(1).is_some_and(|p| p.starts_with('!')),
            "{user} is not locked: {shadow:?}"
        );
    }
    let groups = agent.sh_ok("id -Gn noderax", CMD_TIMEOUT).await?;
    ensure!(
        !groups.split_whitespace().any(|g| g == "noderax-net"),
        "noderax is in group noderax-net: {groups}"
    );

    // Owners and modes (README.md: installer, root helper, systemd units).
    let rel = format!("/opt/noderax-agent/releases/{version}");
    let want: Vec<(String, &str, &str, &str)> = [
        ("/etc/noderax-agent", "root", "root", "755"),
        (
            "/etc/noderax-agent/config.json",
            "root",
            "noderax-net",
            "640",
        ),
        ("/opt/noderax-agent", "root", "root", "755"),
        ("/opt/noderax-agent/releases", "root", "root", "755"),
        (rel.as_str(), "root", "root", "755"),
        (&format!("{rel}/noderax-agent"), "root", "root", "755"),
        (&format!("{rel}/noderax-agent-exec"), "root", "root", "755"),
        (&format!("{rel}/noderax-agent-priv"), "root", "root", "755"),
        ("/etc/sudoers.d/noderax-agent", "root", "root", "440"),
        (
            &format!("{units}/noderax-agent.service"),
            "root",
            "root",
            "644",
        ),
        (
            &format!("{units}/noderax-agent-exec.socket"),
            "root",
            "root",
            "644",
        ),
        (
            &format!("{units}/noderax-agent-exec.service"),
            "root",
            "root",
            "644",
        ),
        (
            "/var/lib/noderax-agent",
            "noderax-net",
            "noderax-net",
            "700",
        ),
        (
            "/var/lib/noderax-agent/agent_identity.json",
            "noderax-net",
            "noderax-net",
            "600",
        ),
        ("/var/lib/noderax-agent-exec", "noderax", "noderax", "700"),
        ("/home/noderax", "noderax", "noderax", "700"),
        ("/var/lib/noderax-agent-install", "root", "root", "755"),
        (
            "/var/lib/noderax-agent-install/manifest",
            "root",
            "root",
            "644",
        ),
        ("/run/noderax-agent", "root", "root", "755"),
        (
            "/run/noderax-agent/exec.sock",
            "noderax",
            "noderax-net",
            "660",
        ),
    ]
    .iter()
    .map(|(p, u, g, m)| (p.to_string(), *u, *g, *m))
    .collect();
    let paths: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
    let out = agent
        .sh_ok(
            &format!("stat -c '%n|%U|%G|%a|%F' {}", paths.join(" ")),
            CMD_TIMEOUT,
        )
        .await?;
    let mut wrong = Vec::new();
    for ((path, user, group, mode), line) in want.iter().zip(out.lines()) {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 5 || f[0] != path || (f[1], f[2], f[3]) != (*user, *group, *mode) {
            wrong.push(format!("{line} (want {user}:{group} {mode})"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "owners/modes differ:\n{}",
        wrong.join("\n")
    );
    ensure!(
        out.lines().last().is_some_and(|l| l.ends_with("|socket")),
        "exec.sock is not a socket: {out}"
    );
    for (link, target) in [
        ("/opt/noderax-agent/current", format!("releases/{version}")),
        (
            "/usr/local/bin/noderax-agent",
            "/opt/noderax-agent/current/noderax-agent".into(),
        ),
        (
            "/usr/local/libexec/noderax-agent-priv",
            "/opt/noderax-agent/current/noderax-agent-priv".into(),
        ),
        (
            "/usr/local/libexec/noderax-agent-self-update",
            "noderax-agent-priv".into(),
        ),
    ] {
        let got = agent
            .sh_ok(&format!("readlink {link}"), CMD_TIMEOUT)
            .await
            .with_context(|| format!("{link} is not a symbolic link"))?;
        ensure!(
            got.trim() == target,
            "{link} -> {} (want {target})",
            got.trim()
        );
    }

    // Units: enabled, active, running as their users.
    let enabled = agent
        .sh(
            "systemctl is-enabled noderax-agent.service noderax-agent-exec.socket",
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        enabled.stdout.split_whitespace().collect::<Vec<_>>() == ["enabled", "enabled"],
        "units not enabled: {}",
        enabled.describe()
    );
    let active = agent
        .sh(
            "systemctl is-active noderax-agent.service noderax-agent-exec.socket noderax-agent-exec.service",
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        active.stdout.split_whitespace().collect::<Vec<_>>() == ["active", "active", "active"],
        "units not active: {}",
        active.describe()
    );
    for (unit, user) in [
        ("noderax-agent.service", "noderax-net"),
        ("noderax-agent-exec.service", "noderax"),
    ] {
        let owner = agent
            .sh_ok(
                &format!("stat -c %U /proc/$(systemctl show -P MainPID {unit})"),
                CMD_TIMEOUT,
            )
            .await?;
        ensure!(owner.trim() == user, "{unit} runs as {}", owner.trim());
    }
    Ok(())
}

/// The installed programs are the released ones, byte for byte.
pub async fn check_binaries(env: &mut Env, suite: &Suite) -> anyhow::Result<()> {
    let v = &suite.layout.version;
    let sums = std::fs::read_to_string(suite.layout.root.join("releases/latest/SHA256SUMS"))?;
    let want = |artifact: &str| -> anyhow::Result<String> {
        sums.lines()
            .find(|l| l.ends_with(artifact))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .with_context(|| format!("{artifact} not in SHA256SUMS"))
    };
    for (installed, artifact) in [
        (
            format!("/opt/noderax-agent/releases/{v}/noderax-agent"),
            "noderax-agent-linux-amd64",
        ),
        (
            format!("/opt/noderax-agent/releases/{v}/noderax-agent-exec"),
            "noderax-agent-exec-linux-amd64",
        ),
        (
            "/usr/local/libexec/noderax-agent-priv".to_owned(),
            "noderax-agent-priv-linux-amd64",
        ),
    ] {
        let got = env
            .vm
            .agent
            .sh_ok(&format!("sha256sum {installed}"), CMD_TIMEOUT)
            .await?;
        let got = got.split_whitespace().next().unwrap_or_default();
        ensure!(
            got == want(artifact)?,
            "{installed} is not the released {artifact}"
        );
    }
    Ok(())
}

/// `systemd-analyze security UNIT`'s overall exposure in the guest.
pub async fn exposure(env: &mut Env, unit: &str) -> anyhow::Result<f64> {
    let out = env
        .vm
        .agent
        .sh(
            &format!("systemd-analyze security --no-pager {unit}"),
            CMD_TIMEOUT,
        )
        .await?;
    // "→ Overall exposure level for UNIT: 1.2 OK 🙂"
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("systemd-analyze security {unit}: {}", out.describe()))?;
    let score = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    match score {
        Some(s) => Ok(s),
        None => bail!("no score in {line:?}"),
    }
}

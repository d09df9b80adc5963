//! Scenario 5, self-update: the agent is installed with the release key
//! pinned and its updates pointed at the local layout; then three
//! `agent.update` rollouts, each on the real units, sudo and root helper:
//!
//! 1. a tampered release: refused at `verifying`, before the root helper
//!    is asked; nothing under /opt/noderax-agent changes;
//! 2. a broken release (its programs do not run): installed and switched
//!    to, its units never become ready, the helper rolls back on its own;
//!    the target fails with that reason and the old version is back online;
//! 3. the next version of the same sources: progress in order, both units
//!    restarted on the new programs, the node authenticates with the new
//!    version and the target completes; `previous` keeps the old release.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use testbed::model::Target;

use super::{CMD_TIMEOUT, Env, InstallOptions, Outcome, Suite, secs};
use crate::release::GUEST_BASE_URL;

/// One update: download over the bridge, install, restart, readiness
/// wait (60 s for a broken one), reconnect.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(600);

/// From the target's end to the helper's record of the switch (its
/// readiness wait is 5 checks 1 s apart after the units are up).
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What every update reports up to the hand-over to the root helper's unit.
const HANDED_OVER: [&str; 5] = [
    "dispatched",
    "downloading",
    "verifying",
    "installing",
    "restarting",
];

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let Some(next) = suite.layout.next.clone() else {
        return Ok(Outcome::Skip(
            "no next version was built (noderax-vm --next-bin-dir; tests/vm/run builds it)".into(),
        ));
    };
    let mut env = Env::boot(suite, "5-update").await?;
    let result = steps(&mut env, suite, &next).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, suite: &Suite, next: &str) -> anyhow::Result<Vec<String>> {
    let layout = &suite.layout;
    let old = layout.version.as_str();
    let node = env
        .install_with(&InstallOptions {
            release_key: true,
            ..InstallOptions::default()
        })
        .await?
        .node_id;
    // The installer downloads from NODERAX_AGENT_DOWNLOAD_BASE_URL but
    // leaves the agent's update source at its default (the public CDN,
    // unreachable here): point it at the layout, as an operator with a
    // mirror would, and make the GitHub fallback fail fast.
    env.vm
        .agent
        .sh_ok(
            &format!(
                "noderax-agent config set update_base_url {GUEST_BASE_URL} && \
                 noderax-agent config set update_github_api_url http://127.0.0.1:18080/no-github && \
                 noderax-agent restart"
            ),
            CMD_TIMEOUT,
        )
        .await?;
    env.wait_online(&node).await?;
    env.wait_healthy().await?;
    ensure!(
        guest_file(env, "/etc/noderax-agent/release.pub").await?
            == std::fs::read_to_string(&layout.public_key)?,
        "the installer did not pin the release key"
    );
    let mut notes = Vec::new();

    // 1. Tampered: refused before anything is handed to root.
    let started = Instant::now();
    let t = roll_out(env, &node, &layout.tampered).await?;
    ensure!(
        t.status == "failed" && t.history == ["dispatched", "downloading", "verifying", "failed"],
        "tampered release: target {} with history {:?} ({:?})",
        t.status,
        t.history,
        t.status_message
    );
    let why = t.status_message.clone().unwrap_or_default();
    ensure!(
        why.contains("tampered") || why.contains("SHA-256"),
        "tampered release: the reason does not say the artifact is altered: {why}"
    );
    notes.push(format!("tampered refused in {}", secs(started.elapsed())));
    ensure_links(env, old, None).await?;
    let releases = env
        .vm
        .agent
        .sh_ok("ls -A /opt/noderax-agent/releases", CMD_TIMEOUT)
        .await?;
    ensure!(
        releases.split_whitespace().collect::<Vec<_>>() == [old],
        "/opt/noderax-agent/releases holds {releases:?} (want only {old})"
    );
    let audit = env
        .vm
        .agent
        .sh(
            "cat /var/log/noderax-agent/priv-audit.jsonl 2>/dev/null",
            CMD_TIMEOUT,
        )
        .await?
        .stdout;
    ensure!(
        !audit.contains(&layout.tampered),
        "the root helper was asked about the tampered release:\n{audit}"
    );
    let staged = env
        .vm
        .agent
        .sh(
            &format!("ls -A /var/lib/noderax-agent/updates/{}", layout.tampered),
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        !staged.success(),
        "the tampered download is still staged: {}",
        staged.stdout
    );

    // 2. Broken: installed, not ready, rolled back by the helper.
    let started = Instant::now();
    let t = roll_out(env, &node, &layout.broken).await?;
    ensure!(
        t.status == "failed" && handed_over(&t),
        "broken release: target {} with history {:?} ({:?})",
        t.status,
        t.history,
        t.status_message
    );
    let why = t.status_message.clone().unwrap_or_default();
    ensure!(
        why.contains("rolled back"),
        "broken release: the target's reason does not say it was rolled back: {why}"
    );
    notes.push(format!(
        "broken rolled back in {} ({why})",
        secs(started.elapsed())
    ));
    let result = update_result_for(env, &layout.broken).await?;
    ensure!(
        result["outcome"] == "rolled_back",
        "update-result.json after the broken release: {result}"
    );
    env.wait_online(&node).await?;
    env.wait_healthy().await?;
    ensure_version(env, &node, old).await?;
    // Whether the broken release's directory is kept is the helper's
    // pruning policy; what matters is that the links are as before it.
    ensure_links(env, old, None).await?;
    env.shell_ok(&node, "echo after-rollback").await?;

    // 3. The next version.
    let pids_before = (
        env.main_pid("noderax-agent.service").await?,
        env.main_pid("noderax-agent-exec.service").await?,
    );
    let started = Instant::now();
    let t = roll_out(env, &node, next).await?;
    ensure!(
        t.status == "completed"
            && handed_over(&t)
            && t.history.last().map(String::as_str) == Some("completed")
            && !t.history.iter().any(|s| s == "failed"),
        "next version: target {} with history {:?} ({:?})",
        t.status,
        t.history,
        t.status_message
    );
    notes.push(format!("update to {next} in {}", secs(started.elapsed())));
    env.wait_healthy().await?;
    ensure_version(env, &node, next).await?;
    ensure_links(env, next, Some(old)).await?;
    // The helper records the outcome after its readiness wait, which may
    // end after the new agent has reconnected.
    let result = update_result_for(env, next).await?;
    ensure!(
        result["outcome"] == "current",
        "update-result.json after the update: {result}"
    );
    // Both units run the new release's programs, as their users.
    for (unit, program, user, before) in [
        (
            "noderax-agent.service",
            "noderax-agent",
            "noderax-net",
            pids_before.0,
        ),
        (
            "noderax-agent-exec.service",
            "noderax-agent-exec",
            "noderax",
            pids_before.1,
        ),
    ] {
        let pid = env.main_pid(unit).await?;
        ensure!(
            pid != 0 && pid != before,
            "{unit} was not restarted (pid {before} -> {pid})"
        );
        let out = env
            .vm
            .agent
            .sh_ok(
                &format!("readlink /proc/{pid}/exe; stat -c %U /proc/{pid}"),
                CMD_TIMEOUT,
            )
            .await?;
        let want = format!("/opt/noderax-agent/releases/{next}/{program}\n{user}");
        ensure!(
            out.trim() == want,
            "{unit} runs {:?} (want {want:?})",
            out.trim()
        );
    }
    let helper = env
        .vm
        .agent
        .sh_ok("/usr/local/libexec/noderax-agent-priv version", CMD_TIMEOUT)
        .await?;
    ensure!(
        helper.starts_with(&format!("noderax-agent-priv {next}")),
        "the root helper was not switched with the release: {helper}"
    );
    let out = env.shell_ok(&node, "echo after-update").await?;
    ensure!(out.contains("after-update"), "task after the update: {out}");
    Ok(notes)
}

/// The target reported every step up to the hand-over, in order.
fn handed_over(t: &Target) -> bool {
    t.history.len() >= HANDED_OVER.len()
        && t.history
            .iter()
            .zip(HANDED_OVER)
            .all(|(got, want)| got == want)
}

/// Starts a rollout of `version` to `node` and waits until its target is
/// completed or failed.
async fn roll_out(env: &Env, node: &str, version: &str) -> anyhow::Result<Target> {
    let rollout = env
        .tb
        .create_rollout(version, &[node], false)
        .with_context(|| format!("creating the rollout of {version}"))?;
    let target_id = env
        .tb
        .rollout(&rollout)
        .and_then(|r| r.targets.first().cloned())
        .context("the rollout has no target")?;
    let target = env
        .tb
        .wait_for(UPDATE_TIMEOUT, |tb| {
            tb.target(&target_id)
                .filter(|t| matches!(t.status.as_str(), "completed" | "failed" | "skipped"))
        })
        .await;
    match target {
        Some(t) if t.status == "skipped" => {
            bail!("the rollout of {version} skipped the node (offline, no arch, same version?)")
        }
        Some(t) => Ok(t),
        None => bail!(
            "the rollout of {version} did not finish within {UPDATE_TIMEOUT:?}: {:?}",
            env.tb.target(&target_id)
        ),
    }
}

async fn guest_file(env: &mut Env, path: &str) -> anyhow::Result<String> {
    let bytes = env.vm.agent.read_file(path).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The root helper's record of its switch to `version`, once written.
async fn update_result_for(env: &mut Env, version: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + RESULT_TIMEOUT;
    loop {
        let text = guest_file(env, shared::release_files::UPDATE_RESULT).await?;
        let result: Value =
            serde_json::from_str(&text).with_context(|| format!("update-result.json: {text:?}"))?;
        if result["version"] == version {
            return Ok(result);
        }
        if Instant::now() >= deadline {
            bail!("update-result.json is not about {version} after {RESULT_TIMEOUT:?}: {result}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The node reports `version` and the guest's agent is that version.
async fn ensure_version(env: &mut Env, node: &str, version: &str) -> anyhow::Result<()> {
    let reported = env.tb.node(node).and_then(|n| n.agent_version);
    ensure!(
        reported.as_deref() == Some(version),
        "the node reports agent version {reported:?} (want {version})"
    );
    let out = env
        .vm
        .agent
        .sh_ok("noderax-agent version | head -n1", CMD_TIMEOUT)
        .await?;
    ensure!(
        out.trim() == format!("noderax-agent {version}"),
        "noderax-agent version in the guest: {}",
        out.trim()
    );
    Ok(())
}

/// Where `/opt/noderax-agent/NAME` points (`None`: no such link).
async fn release_link(env: &mut Env, name: &str) -> anyhow::Result<Option<String>> {
    let out = env
        .vm
        .agent
        .sh(&format!("readlink /opt/noderax-agent/{name}"), CMD_TIMEOUT)
        .await?;
    Ok(out.success().then(|| out.stdout.trim().to_owned()))
}

/// `current` points at release `current`, `previous` at release `previous`
/// (or does not exist).
async fn ensure_links(env: &mut Env, current: &str, previous: Option<&str>) -> anyhow::Result<()> {
    let got = (
        release_link(env, "current").await?,
        release_link(env, "previous").await?,
    );
    let want = (
        Some(format!("releases/{current}")),
        previous.map(|p| format!("releases/{p}")),
    );
    ensure!(
        got == want,
        "(current, previous) -> {got:?} (want {want:?})"
    );
    Ok(())
}

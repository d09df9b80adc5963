//! Scenario 2, task lifecycle under systemd: a shell task, a package list
//! and a terminal session work; tasks run as `noderax`, the network process
//! as `noderax-net`; a shell task cannot get at the agent token (reading the
//! identity file, reading `/proc/<net pid>/environ`, ptrace-attaching to the
//! network process all fail, and no task output contains the token).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;
use shared::api::task::TaskStatus;
use testbed::model::SessionStatus;

use super::{CMD_TIMEOUT, Env, Outcome, Suite, TASK_TIMEOUT, secs};

const TERMINAL_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let mut env = Env::boot(suite, "2-tasks").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, _suite: &Suite) -> anyhow::Result<Vec<String>> {
    let installed = env.install_healthy().await?;
    let node = installed.node_id.clone();
    let mut notes = vec![format!("install {}", secs(installed.duration))];
    let token = env.tb.node(&node).context("node vanished")?.token;

    // Shell task: runs, as noderax, in noderax's home, output delivered.
    let out = env
        .shell_ok(&node, "id -un; id -gn; pwd; echo stderr-line >&2")
        .await?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    for want in ["noderax", "/home/noderax", "stderr-line"] {
        ensure!(
            lines.contains(&want),
            "shell task output lacks {want:?}: {out}"
        );
    }
    ensure!(
        !lines.contains(&"root") && !lines.contains(&"noderax-net"),
        "the shell task ran as another user: {out}"
    );
    // The network process and the executor, as seen in the guest.
    let net_pid = env.main_pid("noderax-agent.service").await?;
    let exec_pid = env.main_pid("noderax-agent-exec.service").await?;
    for (pid, user) in [(net_pid, "noderax-net"), (exec_pid, "noderax")] {
        let owner = env
            .vm
            .agent
            .sh_ok(&format!("stat -c %U /proc/{pid}"), CMD_TIMEOUT)
            .await?;
        ensure!(
            owner.trim() == user,
            "process {pid} runs as {}",
            owner.trim()
        );
    }

    // Package list.
    let t = env.run_task(&node, "packageList", json!({})).await?;
    ensure!(
        t.status == TaskStatus::Success,
        "packageList ended {:?}: {}",
        t.status,
        env.output(&t.id)
    );
    let packages = t
        .result
        .as_ref()
        .and_then(|r| r["packages"].as_array().cloned())
        .unwrap_or_default();
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for want in ["sudo", "systemd", "curl"] {
        ensure!(
            names.contains(&want),
            "packageList ({} packages) lacks {want}",
            names.len()
        );
    }
    notes.push(format!("{} packages listed", names.len()));

    // Terminal session.
    let sid = env.tb.open_terminal(&node, 100, 30, false)?;
    env.tb
        .wait_for(TERMINAL_TIMEOUT, |tb| {
            tb.terminal(&sid)
                .filter(|s| s.status == SessionStatus::Open)
        })
        .await
        .with_context(|| format!("terminal {sid} did not open: {:?}", env.tb.terminal(&sid)))?;
    env.tb
        .terminal_input(&sid, b"echo \"user=$(id -un) answer=$((6*7))\"\n")?;
    env.tb
        .wait_for(TERMINAL_TIMEOUT, |tb| {
            tb.terminal(&sid).filter(|s| {
                String::from_utf8_lossy(&s.transcript).contains("user=noderax answer=42")
            })
        })
        .await
        .with_context(|| {
            format!(
                "the terminal did not show the command's output; transcript: {:?}",
                env.tb
                    .terminal(&sid)
                    .map(|s| String::from_utf8_lossy(&s.transcript).into_owned())
            )
        })?;
    env.tb.stop_terminal(&sid, Some("vm scenario finished"))?;
    let closed = env
        .tb
        .wait_for(TERMINAL_TIMEOUT, |tb| {
            tb.terminal(&sid)
                .filter(|s| s.status == SessionStatus::Closed)
        })
        .await
        .with_context(|| format!("terminal {sid} did not close: {:?}", env.tb.terminal(&sid)))?;
    notes.push(format!(
        "terminal stopped and closed (exit code {})",
        closed
            .exit_code
            .map_or_else(|| "none".to_owned(), |c| c.to_string())
    ));

    // The token is out of a task's reach.
    let attempts = [
        (
            "identity file",
            "cat /var/lib/noderax-agent/agent_identity.json".to_owned(),
            "Permission denied",
        ),
        (
            "net process environment",
            format!("cat /proc/{net_pid}/environ"),
            "Permission denied",
        ),
        (
            "net process memory",
            format!("head -c 64 /proc/{net_pid}/mem"),
            "Permission denied",
        ),
        (
            // PTRACE_ATTACH (16) through the raw system call (101 on
            // x86_64); perl-base is on every Debian system.
            "ptrace",
            format!(
                "perl -e '$! = 0; my $r = syscall(101, 16, {net_pid}, 0, 0); \
                 printf \"ptrace attach: %d errno %d\\n\", $r, $!+0; exit($r == -1 ? 1 : 0)'"
            ),
            "ptrace attach: -1 errno 1",
        ),
    ];
    for (what, command, want) in attempts {
        let id = env.shell_task(&node, &command)?;
        let t = env.wait_task(&id, TASK_TIMEOUT).await?;
        let out = env.output(&id);
        ensure!(
            t.status == TaskStatus::Failed,
            "reading the token through the {what} did not fail ({:?}): {out}",
            t.status
        );
        ensure!(
            out.contains(want),
            "reading the token through the {what}: output lacks {want:?}: {out}"
        );
    }
    for t in env.tb.inner().state().tasks.values() {
        let text: String = t.logs.iter().map(|r| r.message.as_str()).collect();
        ensure!(
            !text.contains(&token)
                && !t
                    .result
                    .clone()
                    .unwrap_or_default()
                    .to_string()
                    .contains(&token),
            "task {} ({}) got hold of the agent token",
            t.id,
            t.task_type
        );
    }
    Ok(notes)
}

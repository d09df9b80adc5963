//! Scenario 4, crash isolation: `systemctl kill -s KILL noderax-agent.service`
//! while a task runs → the task keeps running in the executor and its
//! output arrives complete, in order, after systemd restarts the network
//! process; `systemctl restart noderax-agent-exec.service` while a task runs
//! → that task is reported failed with a reason, and the next one runs.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use shared::api::task::TaskStatus;

use super::{CMD_TIMEOUT, Env, Outcome, Suite, TASK_TIMEOUT};

/// Lines the long task prints, one every half second (~20 s natively).
const LINES: usize = 40;
/// Waiting for a task to be under way, or the network process to restart.
const PHASE_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let mut env = Env::boot(suite, "4-crash").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, _suite: &Suite) -> anyhow::Result<Vec<String>> {
    let node = env.install_healthy().await?.node_id;
    let mut notes = Vec::new();

    // 1. The network process is killed mid-task.
    let exec_pid = env.main_pid("noderax-agent-exec.service").await?;
    let net_pid = env.main_pid("noderax-agent.service").await?;
    let id = env.shell_task(
        &node,
        &format!("i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; sleep 0.5; done"),
    )?;
    env.tb
        .wait_for(PHASE_TIMEOUT, |tb| {
            let t = tb.task(&id)?;
            (t.status == TaskStatus::Running && t.logs.len() >= 2).then_some(())
        })
        .await
        .context("the long task did not start streaming output")?;
    env.vm
        .agent
        .sh_ok("systemctl kill -s KILL noderax-agent.service", CMD_TIMEOUT)
        .await?;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let new_net_pid = loop {
        let pid = env.main_pid("noderax-agent.service").await?;
        if pid != 0 && pid != net_pid {
            break pid;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "systemd did not restart noderax-agent.service within {PHASE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let t = env.wait_task(&id, TASK_TIMEOUT).await?;
    let out = env.output(&id);
    ensure!(
        t.status == TaskStatus::Success,
        "the task whose network process was killed ended {:?} (result {}): {out}",
        t.status,
        t.result.clone().unwrap_or_default()
    );
    let got: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let want: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    ensure!(
        got == want,
        "the output did not arrive complete and in order after the restart: {got:?}"
    );
    ensure!(
        env.main_pid("noderax-agent-exec.service").await? == exec_pid,
        "the executor was restarted too"
    );
    notes.push(format!(
        "net pid {net_pid} -> {new_net_pid}, task complete ({LINES} lines)"
    ));

    // 2. The executor is restarted mid-task.
    let id = env.shell_task(&node, "echo started; sleep 300; echo never")?;
    env.tb
        .wait_for(PHASE_TIMEOUT, |tb| {
            let t = tb.task(&id)?;
            (t.status == TaskStatus::Running && !t.logs.is_empty()).then_some(())
        })
        .await
        .context("the second long task did not start")?;
    env.vm
        .agent
        .sh_ok("systemctl restart noderax-agent-exec.service", CMD_TIMEOUT)
        .await?;
    let t = env.wait_task(&id, TASK_TIMEOUT).await?;
    let out = env.output(&id);
    let result = t.result.clone().unwrap_or_default();
    ensure!(
        t.status == TaskStatus::Failed,
        "the task whose executor was restarted ended {:?} (result {result}): {out}",
        t.status
    );
    ensure!(!out.contains("never"), "the task ran to its end: {out}");
    // The reason as the agent sent it (the `error` of its completion).
    let completed = format!("/tasks/{id}/completed");
    let reason = env
        .tb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&completed) && r.status < 300)
        .find_map(|r| r.body["error"].as_str().map(str::to_owned))
        .filter(|e| !e.trim().is_empty())
        .with_context(|| {
            format!("the failed task's completion carries no error: result {result}, output {out}")
        })?;
    notes.push(format!("executor restart: task failed: {reason}"));
    let next = env.shell_ok(&node, "echo next-task-ran").await?;
    ensure!(next.contains("next-task-ran"), "next task output: {next}");
    Ok(notes)
}

//! Scenario 7, reboot survival: after the guest reboots, the agent comes
//! back by itself (units enabled, started at boot), authenticates again and
//! runs the next task.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use shared::api::realtime::event::AGENT_AUTH;
use testbed::Direction;

use super::{CMD_TIMEOUT, Env, Outcome, Suite, secs};

const REBOOT_TIMEOUT: Duration = Duration::from_secs(400);
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let mut env = Env::boot(suite, "7-reboot").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, _suite: &Suite) -> anyhow::Result<Vec<String>> {
    let node = env.install_healthy().await?.node_id;
    let auths = |env: &Env| {
        env.tb
            .events()
            .iter()
            .filter(|e| e.direction == Direction::In && e.event == AGENT_AUTH)
            .count()
    };
    let before = auths(env);
    let started = Instant::now();
    env.vm.reboot(REBOOT_TIMEOUT).await?;
    let rebooted = started.elapsed();
    let active = env
        .vm
        .agent
        .sh(
            "systemctl is-active noderax-agent.service noderax-agent-exec.socket",
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        active.stdout.split_whitespace().collect::<Vec<_>>() == ["active", "active"],
        "after the reboot the units are not active: {}",
        active.describe()
    );
    env.tb
        .wait_for(RECONNECT_TIMEOUT, |tb| {
            let n = tb
                .events()
                .iter()
                .filter(|e| e.direction == Direction::In && e.event == AGENT_AUTH)
                .count();
            (n > before && tb.node(&node).is_some_and(|n| n.online)).then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "the agent did not authenticate again within {RECONNECT_TIMEOUT:?} of the reboot"
            )
        })?;
    let reconnected = started.elapsed();
    env.wait_healthy().await?;
    let out = env
        .shell_ok(
            &node,
            "echo after-reboot; cat /proc/sys/kernel/random/boot_id",
        )
        .await?;
    ensure!(out.contains("after-reboot"), "task after the reboot: {out}");
    Ok(vec![
        format!("rebooted in {}", secs(rebooted)),
        format!("reconnected {} after the reboot began", secs(reconnected)),
    ])
}

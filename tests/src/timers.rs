//! The server's background timers (PROTOCOL.md §4.1, §6.1, §9.1, §10.1):
//! stale-task sweeps, offline detection, the socket ping watchdog, terminal
//! open/exit timeouts and the rollout monitor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::api::task::TaskStatus;
use shared::timestamp::Timestamp;

use crate::Inner;
use crate::model::{SessionStatus, target_active};
use crate::realtime::LastActivity;

const TICK: Duration = Duration::from_millis(100);

pub async fn run(inner: Arc<Inner>) {
    let mut last_sweep = Instant::now();
    let mut last_monitor = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        if now.duration_since(last_sweep) >= inner.config.stale_sweep {
            last_sweep = now;
            if stale_sweep(&inner) {
                inner.tasks_changed.notify_waiters();
            }
        }
        if now.duration_since(last_monitor) >= inner.config.rollout_monitor {
            last_monitor = now;
            rollout_monitor(&inner);
        }
        offline_detector(&inner);
        ping_watchdog(&inner);
        terminal_timers(&inner);
    }
}

/// Re-queues expired leases and fails tasks stuck queued or running.
/// Returns whether anything became claimable.
fn stale_sweep(inner: &Inner) -> bool {
    let cfg = &inner.config;
    let now = Instant::now();
    let mut state = inner.state();
    let maintenance: std::collections::HashSet<String> = state
        .nodes
        .values()
        .filter(|n| n.maintenance)
        .map(|n| n.id.clone())
        .collect();
    let mut requeued = false;
    for task in state.tasks.values_mut() {
        match task.status {
            TaskStatus::Accepted | TaskStatus::Claimed
                if task.lease_until.is_some_and(|l| l <= now) =>
            {
                task.status = TaskStatus::Queued;
                task.claimed_by = None;
                task.claim_token = None;
                task.lease_until = None;
                requeued = true;
            }
            TaskStatus::Queued
                if !maintenance.contains(&task.node_id)
                    && now.duration_since(task.queued_since) >= cfg.queued_timeout =>
            {
                task.status = TaskStatus::Failed;
                task.finished_at = Some(Timestamp::now().to_string());
                task.result = Some(json!({"reason": "stale-timeout"}));
            }
            TaskStatus::Running
                if task
                    .running_since
                    .is_some_and(|t| now.duration_since(t) >= cfg.running_timeout) =>
            {
                task.status = TaskStatus::Failed;
                task.finished_at = Some(Timestamp::now().to_string());
                task.output = Some("Task timed out while running on agent.".into());
                task.result = Some(json!({"reason": "stale-timeout"}));
            }
            _ => {}
        }
    }
    requeued
}

fn offline_detector(inner: &Inner) {
    let after = inner.config.offline_after;
    for node in inner.state().nodes.values_mut() {
        if node.online && node.last_seen.is_some_and(|t| t.elapsed() >= after) {
            node.online = false;
        }
    }
}

fn ping_watchdog(inner: &Inner) {
    let Some(limit) = inner.config.ping_watchdog else {
        return;
    };
    let stale: Vec<_> = inner
        .sockets()
        .values()
        .filter(|s| {
            s.extensions
                .get::<LastActivity>()
                .is_some_and(|LastActivity(t)| t.lock().expect("activity lock").elapsed() >= limit)
        })
        .cloned()
        .collect();
    for s in stale {
        inner.recorder.event(
            crate::Direction::Out,
            "disconnect",
            &json!({"reason": "heartbeat-timeout"}),
            s.extensions
                .get::<crate::realtime::AuthedNode>()
                .map(|a| a.0),
        );
        let _ = s.disconnect();
    }
}

fn terminal_timers(inner: &Inner) {
    let cfg = &inner.config;
    for s in inner.state().sessions.values_mut() {
        match s.status {
            SessionStatus::Pending if s.started.elapsed() >= cfg.terminal_open_timeout => {
                s.status = SessionStatus::Failed;
                s.error = Some(
                    "Terminal session did not open before the startup timeout elapsed.".into(),
                );
            }
            SessionStatus::Terminating
                if s.stop_sent
                    .is_some_and(|t| t.elapsed() >= cfg.terminal_exit_timeout) =>
            {
                s.status = SessionStatus::Closed;
                s.reason = Some(s.stop_reason.clone().unwrap_or_else(|| {
                    "Termination completed after the remote shell stopped responding to exit confirmation.".into()
                }));
            }
            _ => {}
        }
    }
}

fn rollout_monitor(inner: &Inner) {
    let cfg = &inner.config;
    let mut state = inner.state();
    let active: Vec<String> = state
        .targets
        .values()
        .filter(|t| target_active(&t.status))
        .map(|t| t.id.clone())
        .collect();
    for id in active {
        let t = state.targets[&id].clone();
        let node = state.nodes.get(&t.node_id);
        if node.is_some_and(|n| n.online && n.agent_version.as_deref() == Some(&t.target_version)) {
            state.complete_target(&id);
            continue;
        }
        let task_failed = t
            .task_id
            .as_ref()
            .and_then(|tid| state.tasks.get(tid))
            .is_some_and(|task| matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled));
        let limit = match t.status.as_str() {
            "dispatched" => cfg.rollout_dispatched_timeout,
            "waiting_for_reconnect" => cfg.rollout_reconnect_timeout,
            _ => cfg.rollout_active_timeout,
        };
        let stalled = t.last_progress.elapsed() >= limit;
        if task_failed || stalled {
            let target = state.targets.get_mut(&id).expect("target exists");
            target.status = "failed".into();
            target.status_message = Some(if task_failed {
                "The update task failed.".into()
            } else {
                format!("No progress for {}s.", limit.as_secs())
            });
            target.history.push("failed".into());
            if let Some(r) = state.rollouts.get_mut(&t.rollout_id) {
                r.status = "paused".into();
            }
        }
    }
}

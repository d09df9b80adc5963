//! The `agent.update` task as the network process sees it (ARCHITECTURE.md
//! §6, PROTOCOL.md §10): progress reports to the rollout target, the record
//! that carries an update across the restart it causes, and what the
//! restarted process concludes from it.
//!
//! The flow, with the module that does each part:
//!
//! 1. [`crate::release_download`]: manifest and the three programs into
//!    `<state>/updates/VERSION/`, verified (`downloading` 20, `verifying` 45).
//! 2. here: [`PendingUpdate`] saved, `installing` 70; the dispatcher hands
//!    the task to the executor, which runs `sudo -n noderax-agent-priv
//!    update apply --version V`.
//! 3. the helper verifies again, installs, starts its switch unit and
//!    returns: the task succeeds with the hand-off result and `restarting`
//!    90 is reported; a refusal fails the task and reports `failed`.
//! 4. the switch restarts both units. The network process that starts next
//!    finds the pending record and [`settle`]s it: if it is the target
//!    version, `waiting_for_reconnect` 95 (the control plane completes the
//!    target when it sees the version, §10.5); if not, the helper's
//!    `update-result.json` says why (rolled back, failed) and `failed` is
//!    reported with that reason.
//!
//! The task's own completion never depends on the restart racing it: if
//! the executor was restarted before it could report the hand-off, the
//! settled outcome completes the task instead of "executor restarted".

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::api::update::{UpdateProgress, UpdateStatus};
use shared::atomic_file;
use shared::timestamp::Timestamp;
use tokio::sync::mpsc;

use crate::api_client::ApiClient;
use crate::backoff::Backoff;
use crate::log;
use crate::state_dir::StateDir;

/// How long a restarted network process waits for the helper's outcome of
/// an update it does not run the target version of, before reporting the
/// update failed. The control plane gives up on a silent target after 15
/// minutes (§10.1); this stays inside that.
pub const OUTCOME_WAIT: Duration = Duration::from_secs(12 * 60);
/// Between two looks at the helper's outcome file.
const OUTCOME_POLL: Duration = Duration::from_secs(2);
/// A progress report that keeps failing transiently is dropped after this.
const PROGRESS_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// An update handed (or about to be handed) to the root helper and not yet
/// settled: `<state>/updates/pending.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingUpdate {
    pub task_id: String,
    pub target_id: String,
    pub version: String,
    pub rollback: bool,
    /// The version that started it.
    pub from_version: String,
    /// When it was handed over: older helper outcomes are not about it.
    pub since: Timestamp,
}

impl PendingUpdate {
    fn path(state: &StateDir) -> PathBuf {
        state.updates().join("pending.json")
    }

    /// The pending update, if there is one. A record that cannot be read is
    /// an error naming the file.
    pub fn load(state: &StateDir) -> io::Result<Option<Self>> {
        let path = Self::path(state);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a pending update record: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    /// Stores it durably (replacing any earlier one).
    pub fn save(&self, state: &StateDir) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::create_dir_all(state.updates())?;
        atomic_file::write(&Self::path(state), &bytes, 0o600)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Forgets it, and the staged release it was about.
    pub fn clear(state: &StateDir, version: &str) {
        let _ = std::fs::remove_file(Self::path(state));
        if shared::validate::release_version(version).is_ok() {
            let _ = std::fs::remove_dir_all(state.updates().join(version));
        }
    }
}

/// The root helper's record of its last switch
/// (`shared::release_files::UPDATE_RESULT`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelperOutcome {
    pub version: String,
    /// `current`, `rolled_back` or `failed`.
    pub outcome: String,
    pub message: String,
    pub finished_at: Timestamp,
}

impl HelperOutcome {
    /// Reads the outcome file; absent or unreadable reads as none (the
    /// helper may not have written it yet).
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(o) => Some(o),
            Err(e) => {
                log::warn(format_args!(
                    "{} is not readable as an update outcome ({e}); ignoring it",
                    path.display()
                ));
                None
            }
        }
    }
}

/// How a pending update ended, as far as this process can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// This process is the target version.
    Running,
    /// The helper made the target current, but this process is not it: the
    /// units were not restarted (a host without systemd).
    InstalledNotRunning(String),
    /// It did not happen; the reason for the operator.
    Failed(String),
}

/// Decides a pending update from this process's version and the helper's
/// outcome; `None` while there is nothing to decide on yet.
pub fn decide(
    pending: &PendingUpdate,
    own_version: &str,
    outcome: Option<&HelperOutcome>,
) -> Option<Settled> {
    if own_version == pending.version {
        return Some(Settled::Running);
    }
    let o = outcome.filter(|o| o.version == pending.version && o.finished_at >= pending.since)?;
    Some(match o.outcome.as_str() {
        "current" => Settled::InstalledNotRunning(format!(
            "{} is installed and current, but this agent still runs {own_version}: {}",
            pending.version, o.message
        )),
        _ => Settled::Failed(format!(
            "the update to {} did not complete: {}",
            pending.version, o.message
        )),
    })
}

/// Waits (at most [`OUTCOME_WAIT`]) until `pending` can be decided, or until
/// it is no longer pending (the running task ended it). Returns the decision,
/// or `None` when the record went away.
pub async fn settle(
    state: &StateDir,
    outcome_file: &Path,
    own_version: &str,
    pending: &PendingUpdate,
) -> Option<Settled> {
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut said = false;
    loop {
        match PendingUpdate::load(state) {
            Ok(Some(p)) if p == *pending => {}
            _ => return None,
        }
        if let Some(s) = decide(
            pending,
            own_version,
            HelperOutcome::read(outcome_file).as_ref(),
        ) {
            return Some(s);
        }
        if !said {
            log::info(format_args!(
                "update to {} (task {}) is pending; waiting for the root helper's outcome in {}",
                pending.version,
                pending.task_id,
                outcome_file.display()
            ));
            said = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(Settled::Failed(format!(
                "the update to {} did not finish within {} minutes: the root helper recorded no \
                 outcome in {}; see `journalctl -u noderax-agent-update`",
                pending.version,
                OUTCOME_WAIT.as_secs() / 60,
                outcome_file.display()
            )));
        }
        tokio::time::sleep(OUTCOME_POLL).await;
    }
}

/// The progress statuses of §10.2 from `installing` on, with their
/// percentages and messages (`downloading` and `verifying` are
/// [`crate::release_download`]'s).
pub mod step {
    use super::UpdateStatus;

    pub fn installing(version: &str) -> (UpdateStatus, u8, String) {
        (
            UpdateStatus::Installing,
            70,
            format!("Installing agent {version} through the root helper."),
        )
    }

    pub fn restarting(version: &str) -> (UpdateStatus, u8, String) {
        (
            UpdateStatus::Restarting,
            90,
            format!(
                "Restarting noderax-agent-exec.service and noderax-agent.service to run {version}."
            ),
        )
    }

    pub fn waiting_for_reconnect(version: &str) -> (UpdateStatus, u8, String) {
        (
            UpdateStatus::WaitingForReconnect,
            95,
            format!("Agent {version} is running. Waiting for the control plane to confirm it."),
        )
    }

    pub fn installed_not_running(why: &str) -> (UpdateStatus, u8, String) {
        (UpdateStatus::WaitingForReconnect, 95, why.to_owned())
    }

    pub fn failed(percent: u8, why: &str) -> (UpdateStatus, u8, String) {
        (UpdateStatus::Failed, percent, why.to_owned())
    }
}

/// Sends one rollout target's progress reports, in order, each retried on
/// transient failures; a definitive refusal (400/404/409) drops that report.
#[derive(Clone)]
pub struct ProgressReporter {
    tx: mpsc::UnboundedSender<(UpdateStatus, u8, String)>,
}

impl ProgressReporter {
    /// Starts the sender task for `target_id`.
    pub fn start(client: ApiClient, target_id: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(UpdateStatus, u8, String)>();
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                post_progress(&client, &target_id, report).await;
            }
        });
        Self { tx }
    }

    /// Queues a report; it is sent after the ones before it.
    pub fn report(&self, (status, percent, message): (UpdateStatus, u8, String)) {
        log::info(format_args!(
            "update progress: {} {percent}%: {message}",
            status.as_str()
        ));
        let _ = self.tx.send((status, percent, message));
    }
}

/// Sends one progress report now, retrying transient failures for a while;
/// failures are logged, never returned (progress is advisory: the control
/// plane confirms an update by the version the agent reports).
pub async fn post_progress(
    client: &ApiClient,
    target_id: &str,
    (status, percent, message): (UpdateStatus, u8, String),
) {
    let route = shared::api::route::update_progress(target_id);
    let body = UpdateProgress {
        status,
        progress_percent: percent,
        message: Some(message),
    };
    let give_up = tokio::time::Instant::now() + PROGRESS_PATIENCE;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match client.post::<_, serde::de::IgnoredAny>(&route, &body).await {
            Ok(_) => return,
            Err(e) if e.is_transient() || e.status() == Some(401) => {
                if tokio::time::Instant::now() >= give_up {
                    log::error(format_args!(
                        "update progress {} for target {target_id} not delivered after {} minutes: {e}",
                        body.status.as_str(),
                        PROGRESS_PATIENCE.as_secs() / 60
                    ));
                    return;
                }
                let delay = backoff.next_delay(e.retry_after());
                log::warn(format_args!(
                    "update progress {} for target {target_id} failed ({e}); retrying in {:.1}s",
                    body.status.as_str(),
                    delay.as_secs_f64()
                ));
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                log::warn(format_args!(
                    "the control plane refused update progress {} for target {target_id}: {e}",
                    body.status.as_str()
                ));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(version: &str, since_ms: i64) -> PendingUpdate {
        PendingUpdate {
            task_id: "0b5c7d6e-1f2a-4b3c-8d9e-0f1a2b3c4d5e".into(),
            target_id: "b7f88611-b63e-4c95-9f37-4afb5c0cf275".into(),
            version: version.into(),
            rollback: false,
            from_version: "1.0.0".into(),
            since: Timestamp::from_unix_millis(since_ms),
        }
    }

    fn outcome(version: &str, outcome: &str, at_ms: i64) -> HelperOutcome {
        HelperOutcome {
            version: version.into(),
            outcome: outcome.into(),
            message: format!("{version} {outcome}"),
            finished_at: Timestamp::from_unix_millis(at_ms),
        }
    }

    #[test]
    fn running_the_target_version_settles_it_whatever_the_file_says() {
        let p = pending("1.0.1", 1000);
        assert_eq!(decide(&p, "1.0.1", None), Some(Settled::Running));
        let stale = outcome("1.0.1", "rolled_back", 10);
        assert_eq!(decide(&p, "1.0.1", Some(&stale)), Some(Settled::Running));
    }

    #[test]
    fn the_old_version_waits_for_a_fresh_outcome_about_this_version() {
        let p = pending("1.0.1", 1000);
        assert_eq!(decide(&p, "1.0.0", None), None);
        // Older than the hand-over, or about another version: not this update.
        assert_eq!(
            decide(&p, "1.0.0", Some(&outcome("1.0.1", "rolled_back", 999))),
            None
        );
        assert_eq!(
            decide(&p, "1.0.0", Some(&outcome("1.0.2", "rolled_back", 2000))),
            None
        );
        match decide(&p, "1.0.0", Some(&outcome("1.0.1", "rolled_back", 2000))) {
            Some(Settled::Failed(why)) => {
                assert!(why.contains("update to 1.0.1 did not complete"), "{why}");
                assert!(why.contains("1.0.1 rolled_back"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&p, "1.0.0", Some(&outcome("1.0.1", "current", 2000))),
            Some(Settled::InstalledNotRunning(_))
        ));
    }

    #[tokio::test]
    async fn settle_returns_none_once_the_record_is_gone_and_decides_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::for_state_file(&dir.path().join("agent_identity.json"));
        let result = dir.path().join("update-result.json");
        let p = pending("1.0.1", 1000);
        // No record: nothing to settle.
        assert_eq!(settle(&state, &result, "1.0.0", &p).await, None);
        p.save(&state).unwrap();
        assert_eq!(PendingUpdate::load(&state).unwrap(), Some(p.clone()));
        std::fs::write(
            &result,
            r#"{"version":"1.0.1","outcome":"rolled_back","message":"1.0.1 did not become ready (x); rolled back to 1.0.0","finishedAt":"2026-11-27T10:00:00.000Z"}"#,
        )
        .unwrap();
        match settle(&state, &result, "1.0.0", &p).await {
            Some(Settled::Failed(why)) => assert!(why.contains("rolled back to 1.0.0"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Clearing removes the record and the staged release.
        std::fs::create_dir_all(state.updates().join("1.0.1")).unwrap();
        PendingUpdate::clear(&state, "1.0.1");
        assert_eq!(PendingUpdate::load(&state).unwrap(), None);
        assert!(!state.updates().join("1.0.1").exists());
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::for_state_file(&dir.path().join("agent_identity.json"));
        std::fs::create_dir_all(state.updates()).unwrap();
        std::fs::write(state.updates().join("pending.json"), "{").unwrap();
        let e = PendingUpdate::load(&state).unwrap_err();
        assert!(e.to_string().contains("pending.json"), "{e}");
    }
}

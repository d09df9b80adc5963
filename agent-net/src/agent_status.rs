//! The running agent's state as `noderax-agent status` shows it. `run`
//! rewrites `status.json` in the state directory whenever something
//! changes (at most once a second); `status` reads it, so it works without
//! any socket into the running process and under any user that may read
//! the state directory. The file holds no secret.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shared::timestamp::Timestamp;

/// Written by `run`, read by `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// pid of the `run` process that wrote this.
    pub pid: u32,
    pub version: String,
    pub node_id: String,
    pub api_url: String,
    pub started_at: Option<Timestamp>,
    /// When this file was last written; a stale time means the agent is not running.
    pub updated_at: Option<Timestamp>,
    pub claim: ClaimState,
    pub realtime: RealtimeState,
    pub executor: ExecutorState,
    /// The root-access profile applied and reported.
    pub root_access_profile: String,
    /// Tasks handed to the executor and not yet finished.
    pub running_tasks: Vec<String>,
    /// Tasks whose events are not all delivered yet (the outbox).
    pub undelivered_tasks: u64,
    /// Bytes of task output stored on the node and not yet delivered.
    pub undelivered_bytes: u64,
    /// The most recent error of any component, with its time.
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimState {
    pub credentials_rejected: bool,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub tasks_claimed: u64,
    pub tasks_not_started: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeState {
    pub enabled: bool,
    pub authenticated: bool,
    pub connects: u64,
    pub last_error: Option<String>,
    pub last_server_error: Option<String>,
    pub open_terminals: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorState {
    /// `socket <path>` or `child process`.
    pub mode: String,
    pub connected: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub restarts: u64,
    pub last_error: Option<String>,
}

impl AgentStatus {
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        shared::atomic_file::write(path, &text, 0o644)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// `Ok(None)` when no agent has written a status yet.
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_status_loads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert_eq!(AgentStatus::load(&path).unwrap(), None);
        let s = AgentStatus {
            pid: 42,
            version: "1.2.3".into(),
            running_tasks: vec!["t1".into()],
            ..Default::default()
        };
        s.save(&path).unwrap();
        assert_eq!(AgentStatus::load(&path).unwrap(), Some(s));
    }
}

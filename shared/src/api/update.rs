//! Fleet self-update progress (PROTOCOL.md §10.3).

use serde::{Deserialize, Serialize};

use super::Schema;

/// Progress statuses the endpoint accepts. `completed` is not among them:
/// completion comes only from the agent reporting the new version (§10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStatus {
    Dispatched,
    Downloading,
    Verifying,
    Installing,
    Restarting,
    WaitingForReconnect,
    Failed,
}

impl UpdateStatus {
    /// Every status, in rollout order.
    pub const ALL: [UpdateStatus; 7] = [
        Self::Dispatched,
        Self::Downloading,
        Self::Verifying,
        Self::Installing,
        Self::Restarting,
        Self::WaitingForReconnect,
        Self::Failed,
    ];

    /// The wire name (`waiting_for_reconnect`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dispatched => "dispatched",
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Installing => "installing",
            Self::Restarting => "restarting",
            Self::WaitingForReconnect => "waiting_for_reconnect",
            Self::Failed => "failed",
        }
    }

    /// Still in progress (not `failed`).
    pub fn is_active(self) -> bool {
        self != Self::Failed
    }
}

/// `POST /agent-updates/targets/:targetId/progress`, success 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateProgress {
    pub status: UpdateStatus,
    /// 0–100, required.
    pub progress_percent: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Schema for UpdateProgress {
    const ACCEPTED: &'static [&'static str] = &["status", "progressPercent", "message"];
    const REQUIRED: &'static [&'static str] = &["status", "progressPercent"];
}

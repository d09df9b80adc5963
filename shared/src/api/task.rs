//! Task delivery over HTTP (PROTOCOL.md §6) and task payloads and results (§7).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DesiredRootAccess, RootAccessReport, Schema};
use crate::timestamp::Timestamp;

/// Longest `line` the logs route accepts, in code points (§6.5).
pub const MAX_LOG_LINE_CHARS: usize = 5000;
/// Longest `stream` the logs route accepts (§6.5).
pub const MAX_LOG_STREAM_CHARS: usize = 50;
/// Longest `output` the completed route accepts, in code points (§6.6).
pub const MAX_COMPLETED_OUTPUT_CHARS: usize = 200_000;
/// Longest `error` the completed route accepts (§6.6).
pub const MAX_COMPLETED_ERROR_CHARS: usize = 10_000;
/// Upper bound of the claim's `waitMs` (§6.2).
pub const MAX_CLAIM_WAIT_MS: u32 = 30_000;

/// `POST /agent/tasks/claim` (§6.2), success 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    /// The server clamps any number to 1.
    pub max_tasks: u32,
    /// Long-poll wait, clamped by the server to 0–30 000.
    pub wait_ms: u32,
    /// The applied root profile, sent with every claim (§11.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_access: Option<RootAccessReport>,
}

impl Schema for ClaimRequest {
    const ACCEPTED: &'static [&'static str] = &["maxTasks", "waitMs", "capabilities", "rootAccess"];
    const REQUIRED: &'static [&'static str] = &[];
}

/// Response of a claim: a task or `null`, and the desired root profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResponse {
    #[serde(default)]
    pub task: Option<ClaimedTask>,
    #[serde(default)]
    pub root_access: Option<DesiredRootAccess>,
}

/// A claimed task. The server sends the whole task row; the agent needs only
/// these three fields (§6.2). There is no timeout on HTTP-claimed tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedTask {
    pub id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl ClaimedTask {
    /// The task type, with unknown strings kept as [`TaskType::Other`].
    pub fn kind(&self) -> TaskType {
        TaskType::parse(&self.task_type)
    }
}

/// Task types the agent knows (§7). The server accepts any type string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskType {
    ShellExec,
    PackageList,
    PackageSearch,
    PackageInstall,
    PackageRemove,
    PackagePurge,
    AgentUpdate,
    LogScan,
    Other(String),
}

impl TaskType {
    /// Parses a wire name; unknown names become [`TaskType::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "shell.exec" => Self::ShellExec,
            "packageList" => Self::PackageList,
            "packageSearch" => Self::PackageSearch,
            "packageInstall" => Self::PackageInstall,
            "packageRemove" => Self::PackageRemove,
            "packagePurge" => Self::PackagePurge,
            "agent.update" => Self::AgentUpdate,
            "log.scan" => Self::LogScan,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ShellExec => "shell.exec",
            Self::PackageList => "packageList",
            Self::PackageSearch => "packageSearch",
            Self::PackageInstall => "packageInstall",
            Self::PackageRemove => "packageRemove",
            Self::PackagePurge => "packagePurge",
            Self::AgentUpdate => "agent.update",
            Self::LogScan => "log.scan",
            Self::Other(s) => s,
        }
    }
}

/// Body of `POST /agent/tasks/:id/accepted` and `.../started` (§6.3, §6.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskTransition {
    /// Must equal the route's task id.
    pub task_id: String,
    /// For `started`, becomes the task's `startedAt`.
    pub timestamp: Timestamp,
}

impl Schema for TaskTransition {
    const ACCEPTED: &'static [&'static str] = &["taskId", "timestamp"];
    const REQUIRED: &'static [&'static str] = &[];
}

/// `POST /agent/tasks/:id/logs` (§6.5): one entry per request, 1–5000
/// characters, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLog {
    pub task_id: String,
    pub stream: LogStream,
    pub line: String,
    /// When the line was produced.
    pub timestamp: Timestamp,
}

impl Schema for TaskLog {
    const ACCEPTED: &'static [&'static str] = &["taskId", "stream", "line", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["stream", "line"];
}

/// The `stream` of a log entry; `system` lines come from the agent itself
/// and are stored by the server with level `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    System,
}

/// Final status sent in `completed` (§6.6). The server stores `timeout` as
/// `failed` with `result.reason = "timeout"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompletionStatus {
    Success,
    Failed,
    Cancelled,
    Timeout,
}

/// `POST /agent/tasks/:id/completed` (§6.6). `taskId`, `status`, `exitCode`,
/// `durationMs` and `timestamp` are always sent; empty `output`, `error` and
/// `result` are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCompleted {
    pub task_id: String,
    pub status: CompletionStatus,
    /// The process exit code, `-1` when it never ran or died by a signal.
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Becomes `finishedAt` (the route rejects `completedAt`).
    pub timestamp: Timestamp,
    /// At most [`MAX_COMPLETED_OUTPUT_CHARS`] code points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// At most [`MAX_COMPLETED_ERROR_CHARS`] code points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Must be a JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Schema for TaskCompleted {
    const ACCEPTED: &'static [&'static str] = &[
        "taskId",
        "status",
        "exitCode",
        "durationMs",
        "timestamp",
        "output",
        "error",
        "result",
    ];
    const REQUIRED: &'static [&'static str] = &["status"];
}

/// Server-side task status (§6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Accepted,
    Claimed,
    Running,
    Success,
    Failed,
    Cancelled,
    #[serde(other)]
    Unknown,
}

impl TaskStatus {
    /// `success`, `failed` and `cancelled` are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Cancelled)
    }
}

/// `GET /agent/tasks/:id/control` (§6.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskControl {
    #[serde(default)]
    pub task_id: Option<String>,
    pub status: TaskStatus,
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default)]
    pub cancel_requested_at: Option<String>,
    #[serde(default)]
    pub cancel_reason: Option<String>,
}

/// Payload of `shell.exec` (§7.2). Keys the agent does not use (`title`,
/// `scheduleId`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellExecPayload {
    #[serde(default)]
    pub command: Option<String>,
    /// Interpreter; default `/bin/sh`.
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Overrides on top of the executor's clean base environment.
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    /// Go duration (`90s`).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default, rename = "runAsRoot")]
    pub run_as_root: Option<bool>,
    #[serde(default, rename = "rootScope")]
    pub root_scope: Option<String>,
}

/// Payload of `packageSearch` (§7.4): the API sends both keys with the
/// same string; `query` wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSearchPayload {
    #[serde(default)]
    pub term: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// Payload of `packageInstall`, `packageRemove`, `packagePurge` (§7.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChangePayload {
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub packages: Option<Vec<String>>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// `packageRemove` with `purge: true` purges.
    #[serde(default)]
    pub purge: Option<bool>,
}

impl PackageChangePayload {
    /// `package`, `packages` and `names` merged in that order, trimmed, with
    /// duplicates and empty strings removed (the API sends all three, §13
    /// item 23). The names are not validated here.
    pub fn merged_names(&self) -> Vec<String> {
        let all = self
            .package
            .iter()
            .chain(self.packages.iter().flatten())
            .chain(self.names.iter().flatten());
        let mut out: Vec<String> = Vec::new();
        for name in all.map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if !out.iter().any(|seen| seen == name) {
                out.push(name.to_owned());
            }
        }
        out
    }
}

/// Payload of `agent.update` (§7.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentUpdatePayload {
    pub target_version: String,
    pub target_id: String,
    #[serde(default)]
    pub rollback: bool,
}

/// One installed package in a `packageList` result (§7.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
}

/// `result` of `packageList`: `{"packages":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageListResult {
    pub packages: Vec<InstalledPackage>,
}

/// One hit of a `packageSearch` result (§7.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSearchHit {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
}

/// `result` of `packageSearch`: `{"results":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSearchResult {
    pub results: Vec<PackageSearchHit>,
}

/// `result` of `agent.update` once the update was handed to the root helper (§7.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateHandoff {
    /// Always `handoff`.
    pub status: String,
    pub target_id: String,
    pub target_version: String,
    pub rollback: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_response_with_and_without_task() {
        let full = r#"{"task":{"id":"ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8","workspaceId":"w","nodeId":"n",
            "targetTeamId":null,"type":"shell.exec","isInternal":false,"payload":{"command":"hostname"},
            "status":"accepted","result":null,"leaseUntil":"2026-04-22T10:01:00.000Z"},
            "outputTruncated":false,"rootAccess":{"profile":"off","updatedAt":null}}"#;
        let r: ClaimResponse = serde_json::from_str(full).unwrap();
        let task = r.task.unwrap();
        assert_eq!(task.kind(), TaskType::ShellExec);
        assert_eq!(task.payload["command"], "hostname");
        assert_eq!(
            r.root_access.unwrap().profile,
            super::super::RootProfile::Off
        );

        let empty = r#"{"task":null,"outputTruncated":false,"rootAccess":{"profile":"operational","updatedAt":"2026-04-05T10:00:00Z"}}"#;
        let r: ClaimResponse = serde_json::from_str(empty).unwrap();
        assert!(r.task.is_none());
    }

    #[test]
    fn task_types_round_trip() {
        for s in [
            "shell.exec",
            "packageList",
            "packageSearch",
            "packageInstall",
            "packageRemove",
            "packagePurge",
            "agent.update",
            "log.scan",
            "something.else",
        ] {
            assert_eq!(TaskType::parse(s).as_str(), s);
        }
        assert_eq!(TaskType::parse("x"), TaskType::Other("x".into()));
    }

    #[test]
    fn package_names_are_merged_and_deduplicated() {
        let p: PackageChangePayload = serde_json::from_str(
            r#"{"names":["nginx","curl"],"packages":["nginx","curl"],"package":"nginx","purge":false}"#,
        )
        .unwrap();
        assert_eq!(p.merged_names(), ["nginx", "curl"]);
        let p: PackageChangePayload =
            serde_json::from_str(r#"{"names":[" a ","", "b", "a"]}"#).unwrap();
        assert_eq!(p.merged_names(), ["a", "b"]);
    }

    #[test]
    fn control_response() {
        let c: TaskControl = serde_json::from_str(
            r#"{"taskId":"t","status":"running","cancelRequested":true,"cancelRequestedAt":"2026-03-23T10:12:00.000Z","cancelReason":"Stopped"}"#,
        )
        .unwrap();
        assert!(c.cancel_requested && !c.status.is_terminal());
        let c: TaskControl = serde_json::from_str(r#"{"status":"weird"}"#).unwrap();
        assert_eq!(c.status, TaskStatus::Unknown);
        assert!(TaskStatus::Cancelled.is_terminal());
    }

    #[test]
    fn shell_payload_ignores_unknown_keys_and_rejects_bad_types() {
        let p: ShellExecPayload = serde_json::from_str(
            r#"{"title":"t","command":"ls","runAsRoot":false,"scheduleId":"s","environment":{"A":"1"}}"#,
        )
        .unwrap();
        assert_eq!(p.command.as_deref(), Some("ls"));
        assert_eq!(p.environment.unwrap()["A"], "1");
        assert!(serde_json::from_str::<ShellExecPayload>(r#"{"command":42}"#).is_err());
    }
}

//! Socket.IO session events (PROTOCOL.md §8): authentication, keepalive,
//! errors and root-access updates. Terminal events are in [`super::terminal`],
//! metrics in [`super::metrics`].

use serde::{Deserialize, Serialize};

use super::{DesiredRootAccess, RootAccessReport, Schema};
use crate::timestamp::Timestamp;

/// Event names (§8.5).
pub mod event {
    pub const AGENT_AUTH: &str = "agent.auth";
    pub const AGENT_AUTH_ACK: &str = "agent.auth.ack";
    pub const AGENT_AUTH_ERROR: &str = "agent.auth.error";
    pub const AGENT_PING: &str = "agent.ping";
    pub const AGENT_METRICS: &str = "agent.metrics";
    pub const AGENT_ERROR: &str = "agent.error";
    pub const ROOT_ACCESS_UPDATED: &str = "root-access.updated";
    pub const TASK_DISPATCH: &str = "task.dispatch";
    pub const TERMINAL_START: &str = "terminal.start";
    pub const TERMINAL_INPUT: &str = "terminal.input";
    pub const TERMINAL_RESIZE: &str = "terminal.resize";
    pub const TERMINAL_STOP: &str = "terminal.stop";
    pub const TERMINAL_OPENED: &str = "terminal.opened";
    pub const TERMINAL_OUTPUT: &str = "terminal.output";
    pub const TERMINAL_EXITED: &str = "terminal.exited";
    pub const TERMINAL_ERROR: &str = "terminal.error";
}

/// Default Socket.IO namespace and path (§8.1).
pub const DEFAULT_NAMESPACE: &str = "/agent-realtime";
pub const DEFAULT_PATH: &str = "/socket.io/";

/// `agent.auth` (§8.3). All three versions are always sent: an auth that
/// brings the node online nulls the ones that are absent (§4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "agent.auth", rename_all = "camelCase")]
pub struct AgentAuth {
    pub node_id: String,
    pub agent_token: String,
    pub agent_version: String,
    pub platform_version: String,
    pub kernel_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_access: Option<RootAccessReport>,
}

impl Schema for AgentAuth {
    const ACCEPTED: &'static [&'static str] = &[
        "type",
        "nodeId",
        "agentToken",
        "agentVersion",
        "platformVersion",
        "kernelVersion",
        "rootAccess",
    ];
    const REQUIRED: &'static [&'static str] = &["type", "nodeId", "agentToken"];
}

/// `agent.auth.ack` (also the ack value of `agent.auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAuthAck {
    /// `false` is a failure even in an ack.
    pub authenticated: bool,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub root_access: Option<DesiredRootAccess>,
}

/// `agent.auth.error`, followed by a server-side disconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAuthError {
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default)]
    pub message: String,
}

/// `agent.ping` (§8.4), every `realtime_ping_interval` after auth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "agent.ping")]
pub struct AgentPing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

impl Schema for AgentPing {
    const ACCEPTED: &'static [&'static str] = &["type", "timestamp"];
    const REQUIRED: &'static [&'static str] = &["type"];
}

/// `agent.error`: an event was rejected (unknown name or failed validation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentError {
    /// `UNKNOWN_EVENT` for unsupported event names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The rejected event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// `root-access.updated` (§11.2): the desired profile changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootAccessUpdated {
    pub root_access: DesiredRootAccess,
}

/// `task.dispatch` (§8.7, deprecated). Only a hint to claim over HTTP now;
/// a task is never executed from this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDispatch {
    #[serde(default)]
    pub task: Option<serde_json::Value>,
}

//! Metrics samples (PROTOCOL.md §5): the `agent.metrics` socket event and
//! the HTTP fallback `POST /agent/metrics`.

use serde::{Deserialize, Serialize};

use super::Schema;
use crate::timestamp::Timestamp;

/// Cumulative since-boot counters of one network interface (§5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceCounters {
    pub interface: String,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    pub errors_in: u64,
    pub errors_out: u64,
    pub drop_in: u64,
    pub drop_out: u64,
}

/// The body shared by both metrics paths. Percentages are in 0–100 (the
/// collector sanitises NaN/∞ to 0). Per-interface counters go in `networks`
/// only: the socket moves an array `networkStats` there anyway and the HTTP
/// route refuses an array `networkStats`, so sending it twice (as the
/// original agent did) only doubles the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSample {
    pub node_id: String,
    /// Required by the server's DTO (≥ 32 characters) even on an
    /// authenticated socket; the server then ignores it.
    pub agent_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub disk_usage: f64,
    /// Highest sensor temperature in °C; omitted when no sensor is readable
    /// (0 would be indistinguishable from a real reading, §13 item 39).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub networks: Vec<InterfaceCounters>,
}

impl Schema for MetricsSample {
    // §5.2: the socket's keys without `type` and `timestamp`.
    const ACCEPTED: &'static [&'static str] = &[
        "nodeId",
        "agentToken",
        "agentVersion",
        "cpuUsage",
        "memoryUsage",
        "diskUsage",
        "temperature",
        "networkStats",
        "networks",
        "cpu",
        "memory",
        "disk",
        "collectedAt",
    ];
    const REQUIRED: &'static [&'static str] = &["nodeId", "agentToken"];
}

/// Socket event `agent.metrics` (§5.1): a [`MetricsSample`] plus `type` and
/// `timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "agent.metrics")]
pub struct AgentMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(flatten)]
    pub sample: MetricsSample,
}

impl Schema for AgentMetrics {
    const ACCEPTED: &'static [&'static str] = &[
        "type",
        "nodeId",
        "agentToken",
        "agentVersion",
        "timestamp",
        "cpuUsage",
        "memoryUsage",
        "diskUsage",
        "temperature",
        "networkStats",
        "networks",
        "cpu",
        "memory",
        "disk",
        "collectedAt",
    ];
    const REQUIRED: &'static [&'static str] = &["type", "nodeId", "agentToken"];
}

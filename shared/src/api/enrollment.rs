//! Enrollment and node-install routes (PROTOCOL.md §2.2, §2.3, §3) and the
//! HTTP heartbeat (§4.3).

use serde::{Deserialize, Serialize};

use super::{HostFacts, Schema};
use crate::timestamp::Timestamp;

/// `POST /enrollments/initiate` (§2.2), success 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateEnrollment {
    pub email: String,
    pub hostname: String,
    /// Free-form on the server; the agent sends [`HostFacts`] only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<HostFacts>,
}

impl Schema for InitiateEnrollment {
    const ACCEPTED: &'static [&'static str] = &["email", "hostname", "additionalInfo"];
    const REQUIRED: &'static [&'static str] = &["email", "hostname"];
}

/// Response of `POST /enrollments/initiate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentTicket {
    /// 43-character base64url token; poll `GET /enrollments/<token>`.
    pub token: String,
    pub expires_at: Timestamp,
}

/// Status of an enrollment (`GET /enrollments/<token>`, 200). The server's
/// enum is exactly `pending | approved | revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    pub status: EnrollmentState,
    /// Present once approved (on every poll after approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
}

/// The three states of an enrollment; anything else is read as `Unknown`
/// and treated as a failure by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentState {
    Pending,
    Approved,
    Revoked,
    #[serde(other)]
    Unknown,
}

/// `POST /node-installs/consume` (§2.3), success 201. `additionalInfo` is a
/// whitelisted nested object: [`HostFacts`] keys only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeBootstrapToken {
    pub token: String,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_info: Option<HostFacts>,
}

impl Schema for ConsumeBootstrapToken {
    const ACCEPTED: &'static [&'static str] = &["token", "hostname", "additionalInfo"];
    const REQUIRED: &'static [&'static str] = &["token", "hostname"];
}

/// Credentials issued by consume (§2.3) or by an approved enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredentials {
    pub node_id: String,
    pub agent_token: String,
}

/// Status of an installation as the installer reports it (§3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallStatus {
    Installing,
    Completed,
    Failed,
}

/// `POST /node-installs/progress` (§3), success 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallProgress {
    pub token: String,
    /// 2–64 characters, e.g. `binary_downloaded`.
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<InstallStatus>,
    /// 0–100; omitted keeps the previous value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    /// At most 500 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

impl Schema for InstallProgress {
    const ACCEPTED: &'static [&'static str] = &[
        "token",
        "stage",
        "status",
        "progressPercent",
        "statusMessage",
    ];
    const REQUIRED: &'static [&'static str] = &["token", "stage"];
}

/// `POST /agent/heartbeat` (§4.3), body-authenticated, success 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node_id: String,
    pub agent_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
}

impl Schema for Heartbeat {
    const ACCEPTED: &'static [&'static str] = &[
        "nodeId",
        "agentToken",
        "agentVersion",
        "platformVersion",
        "kernelVersion",
        "sentAt",
    ];
    const REQUIRED: &'static [&'static str] = &["nodeId", "agentToken"];
}

/// Response of the HTTP heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    pub acknowledged: bool,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub last_seen_at: Option<String>,
}

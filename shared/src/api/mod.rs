//! Serde types for the control-plane protocol (PROTOCOL.md): every HTTP
//! request and response and every Socket.IO event the agent sends or receives.
//!
//! Two rules shape these types:
//! - **Outgoing bodies never carry a key the server does not declare**
//!   (PROTOCOL.md §0.3 rule 1: unknown keys are rejected). Each outgoing type
//!   implements [`Schema`], the server's list of accepted and required keys
//!   transcribed from PROTOCOL.md; a unit test serializes every outgoing type
//!   and checks its keys against it. Empty optionals are omitted.
//! - **Incoming bodies are read leniently**: unknown keys are ignored so a
//!   newer server does not break the agent.
//!
//! Timestamps are [`Timestamp`](crate::timestamp::Timestamp) (ISO-8601 UTC
//! with milliseconds); JSON keys are camelCase as on the wire.

mod common;
pub mod enrollment;
pub mod metrics;
pub mod realtime;
pub mod release;
pub mod task;
pub mod terminal;
pub mod update;

pub use common::*;

/// The server's schema of one outgoing body: the keys its validation pipe
/// accepts and the keys it requires (PROTOCOL.md). Used by this crate's tests
/// and by the testbed, which rejects anything else the way the server does.
pub trait Schema {
    /// Every key the server accepts in this body.
    const ACCEPTED: &'static [&'static str];
    /// Keys the server requires.
    const REQUIRED: &'static [&'static str];
}

/// Route paths under `<api_url>/api/v1` (PROTOCOL.md §1.1).
pub mod route {
    /// Prefix of every HTTP route.
    pub const PREFIX: &str = "/api/v1";
    pub const ENROLLMENT_INITIATE: &str = "/enrollments/initiate";
    /// `GET /enrollments/<token>`.
    pub const ENROLLMENTS: &str = "/enrollments";
    pub const NODE_INSTALL_CONSUME: &str = "/node-installs/consume";
    pub const NODE_INSTALL_PROGRESS: &str = "/node-installs/progress";
    pub const HEARTBEAT: &str = "/agent/heartbeat";
    pub const METRICS: &str = "/agent/metrics";
    pub const TASK_CLAIM: &str = "/agent/tasks/claim";

    /// `/agent/tasks/<id>/<step>` for `accepted`, `started`, `logs`, `completed`, `control`.
    pub fn task(task_id: &str, step: &str) -> String {
        format!("/agent/tasks/{task_id}/{step}")
    }

    /// `/agent-updates/targets/<id>/progress`.
    pub fn update_progress(target_id: &str) -> String {
        format!("/agent-updates/targets/{target_id}/progress")
    }
}

#[cfg(test)]
mod schema_tests;

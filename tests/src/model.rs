//! The fake control plane's data: nodes, tasks and their logs, enrollments,
//! node installs, rollouts and terminal sessions. Plain data behind one
//! mutex; the rules that change it live in the route and timer modules.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use shared::api::RootProfile;
use shared::api::task::TaskStatus;
use shared::timestamp::Timestamp;

/// A new random UUID string.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// 64 lower-case hex characters, like the server's agent tokens.
pub fn new_agent_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A node as the server stores it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    #[serde(skip)]
    pub token: String,
    pub hostname: String,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub agent_version: Option<String>,
    pub platform_version: Option<String>,
    pub kernel_version: Option<String>,
    pub online: bool,
    pub last_seen_at: Option<Timestamp>,
    #[serde(skip)]
    pub last_seen: Option<Instant>,
    pub maintenance: bool,
    pub root_profile: RootProfile,
    pub root_profile_updated_at: Option<Timestamp>,
    /// The last applied report (`rootAccess` of auth or claim).
    pub root_applied: Option<Value>,
    /// Every metrics sample stored, oldest first.
    #[serde(skip)]
    pub metrics: Vec<Value>,
}

impl Node {
    /// The applied profile the node last reported (`off` if never).
    pub fn applied_profile(&self) -> RootProfile {
        self.root_applied
            .as_ref()
            .and_then(|r| r.get("appliedProfile"))
            .and_then(Value::as_str)
            .and_then(RootProfile::parse)
            .unwrap_or(RootProfile::Off)
    }

    /// The desired profile as sent to the agent.
    pub fn desired_root_access(&self) -> Value {
        serde_json::json!({
            "profile": self.root_profile.as_str(),
            "updatedAt": self.root_profile_updated_at.map(|t| t.to_string()),
        })
    }
}

/// One task-log row.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRow {
    pub id: u64,
    pub task_id: String,
    pub level: String,
    pub message: String,
    pub timestamp: Option<String>,
    pub created_at: Timestamp,
}

/// A task as the server stores it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub node_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub payload: Value,
    pub status: TaskStatus,
    pub result: Option<Value>,
    pub output: Option<String>,
    pub output_truncated: bool,
    pub claimed_by: Option<String>,
    pub claim_token: Option<String>,
    #[serde(skip)]
    pub lease_until: Option<Instant>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub cancel_requested_at: Option<Timestamp>,
    pub cancel_reason: Option<String>,
    pub created_at: Timestamp,
    #[serde(skip)]
    pub queued_since: Instant,
    #[serde(skip)]
    pub running_since: Option<Instant>,
    #[serde(skip)]
    pub logs: Vec<LogRow>,
}

impl Task {
    /// The task row as the claim response carries it.
    pub fn wire(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("task serializes");
        v["leaseUntil"] = Value::Null;
        v["workspaceId"] = Value::String("00000000-0000-4000-8000-000000000000".into());
        v["targetTeamId"] = Value::Null;
        v["templateId"] = Value::Null;
        v["templateName"] = Value::Null;
        v["isInternal"] = Value::Bool(false);
        v["updatedAt"] = Value::String(Timestamp::now().to_string());
        v
    }
}

/// Status of an e-mail enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentStatus {
    Pending,
    Approved,
    Revoked,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    pub token: String,
    pub email: String,
    pub hostname: String,
    pub additional_info: Option<Value>,
    pub status: EnrollmentStatus,
    pub expires_at: Timestamp,
    #[serde(skip)]
    pub expires: Instant,
    pub node_id: Option<String>,
    #[serde(skip)]
    pub agent_token: Option<String>,
}

/// One progress report of an installation, as received.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressReport {
    pub stage: String,
    pub status: String,
    pub progress_percent: Option<i64>,
    pub status_message: Option<String>,
    /// False when the server ignored it (installation already final).
    pub applied: bool,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Install {
    pub install_id: String,
    #[serde(skip)]
    pub token: String,
    pub node_name: String,
    pub hostname: Option<String>,
    pub node_id: Option<String>,
    pub status: String,
    pub stage: String,
    pub progress_percent: i64,
    pub status_message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub consumed_at: Option<Timestamp>,
    pub expires_at: Timestamp,
    #[serde(skip)]
    pub expires: Instant,
    pub created_at: Timestamp,
    pub reports: Vec<ProgressReport>,
}

impl Install {
    /// The response body of the progress route.
    pub fn wire(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("install serializes");
        if let Value::Object(m) = &mut v {
            m.remove("reports");
            m.insert("workspaceId".into(), Value::Null);
            m.insert("teamId".into(), Value::Null);
            m.insert("description".into(), Value::Null);
            m.insert(
                "updatedAt".into(),
                Value::String(Timestamp::now().to_string()),
            );
        }
        v
    }
}

/// Whether a rollout target status is an active one (§10.1): every
/// progress status except `failed`.
pub fn target_active(status: &str) -> bool {
    shared::api::update::UpdateStatus::ALL
        .iter()
        .any(|s| s.is_active() && s.as_str() == status)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub id: String,
    pub rollout_id: String,
    pub node_id: String,
    pub previous_version: Option<String>,
    pub target_version: String,
    pub status: String,
    pub progress_percent: i64,
    pub status_message: Option<String>,
    pub task_id: Option<String>,
    pub sequence: usize,
    pub completed_at: Option<Timestamp>,
    #[serde(skip)]
    pub last_progress: Instant,
    /// Every status reported, in order.
    pub history: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub id: String,
    pub target_version: String,
    pub rollback: bool,
    /// `active`, `paused`, `completed`, `cancelled`.
    pub status: String,
    pub targets: Vec<String>,
}

/// Terminal session states (§9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Pending,
    Open,
    Terminating,
    Closed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalSession {
    pub id: String,
    pub node_id: String,
    pub status: SessionStatus,
    pub cols: u16,
    pub rows: u16,
    pub run_as_root: bool,
    /// Decoded output, capped at the transcript limit.
    #[serde(skip)]
    pub transcript: Vec<u8>,
    pub transcript_bytes: usize,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub started: Instant,
    #[serde(skip)]
    pub stop_sent: Option<Instant>,
    pub stop_reason: Option<String>,
}

/// Everything the fake server knows.
#[derive(Debug, Default)]
pub struct State {
    pub nodes: BTreeMap<String, Node>,
    pub tasks: BTreeMap<String, Task>,
    /// Task ids in creation order (claims take the oldest).
    pub task_order: Vec<String>,
    pub enrollments: BTreeMap<String, Enrollment>,
    pub installs: BTreeMap<String, Install>,
    pub rollouts: BTreeMap<String, Rollout>,
    pub targets: BTreeMap<String, Target>,
    pub sessions: BTreeMap<String, TerminalSession>,
    pub next_log_id: u64,
}

impl State {
    /// Creates a node with fresh credentials.
    pub fn add_node(&mut self, hostname: &str) -> (String, String) {
        let id = new_id();
        let token = new_agent_token();
        self.nodes.insert(
            id.clone(),
            Node {
                id: id.clone(),
                token: token.clone(),
                hostname: hostname.trim().to_lowercase(),
                os: None,
                arch: None,
                agent_version: None,
                platform_version: None,
                kernel_version: None,
                online: false,
                last_seen_at: None,
                last_seen: None,
                maintenance: false,
                root_profile: RootProfile::Off,
                root_profile_updated_at: None,
                root_applied: None,
                metrics: Vec::new(),
            },
        );
        (id, token)
    }

    pub fn hostname_taken(&self, hostname: &str) -> bool {
        let h = hostname.trim().to_lowercase();
        self.nodes.values().any(|n| n.hostname == h)
    }

    /// Appends a log row to a task.
    pub fn add_log(
        &mut self,
        task_id: &str,
        level: &str,
        message: &str,
        timestamp: Option<String>,
    ) -> Option<LogRow> {
        self.next_log_id += 1;
        let row = LogRow {
            id: self.next_log_id,
            task_id: task_id.to_owned(),
            level: level.to_owned(),
            message: message.to_owned(),
            timestamp,
            created_at: Timestamp::now(),
        };
        let task = self.tasks.get_mut(task_id)?;
        task.logs.push(row.clone());
        Some(row)
    }

    /// Marks a node online with the version rule of §4.2: a message that
    /// brings the node online overwrites all three versions (absent ones
    /// become null); when already online only non-empty values are updated.
    pub fn mark_online(&mut self, node_id: &str, versions: Option<[Option<String>; 3]>) {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return;
        };
        let was_online = node.online;
        node.online = true;
        node.last_seen = Some(Instant::now());
        node.last_seen_at = Some(Timestamp::now());
        if let Some([agent, platform, kernel]) = versions {
            if !was_online {
                node.agent_version = agent;
                node.platform_version = platform;
                node.kernel_version = kernel;
            } else {
                let keep = |new: Option<String>, old: &mut Option<String>| {
                    if let Some(v) = new.filter(|v| !v.is_empty()) {
                        *old = Some(v);
                    }
                };
                keep(agent, &mut node.agent_version);
                keep(platform, &mut node.platform_version);
                keep(kernel, &mut node.kernel_version);
            }
        }
    }

    /// §10.5: a node reporting the target version completes its target.
    pub fn confirm_version(&mut self, node_id: &str) {
        let Some(version) = self
            .nodes
            .get(node_id)
            .and_then(|n| n.agent_version.clone())
        else {
            return;
        };
        let ids: Vec<String> = self
            .targets
            .values()
            .filter(|t| {
                t.node_id == node_id && t.target_version == version && target_active(&t.status)
            })
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.complete_target(&id);
        }
    }

    /// Completes a target, succeeds its task and dispatches the next one.
    pub fn complete_target(&mut self, target_id: &str) {
        let Some(t) = self.targets.get_mut(target_id) else {
            return;
        };
        t.status = "completed".into();
        t.progress_percent = 100;
        t.status_message = Some(format!("Agent reconnect confirmed {}.", t.target_version));
        t.completed_at = Some(Timestamp::now());
        t.history.push("completed".into());
        let (task_id, rollout_id) = (t.task_id.clone(), t.rollout_id.clone());
        if let Some(task) = task_id.and_then(|id| self.tasks.get_mut(&id))
            && !task.status.is_terminal()
        {
            task.status = TaskStatus::Success;
            task.finished_at = Some(Timestamp::now().to_string());
        }
        self.dispatch_next_target(&rollout_id);
    }

    /// Creates an `agent.update` task for the next pending target (§10.1).
    pub fn dispatch_next_target(&mut self, rollout_id: &str) {
        let Some(rollout) = self.rollouts.get(rollout_id).cloned() else {
            return;
        };
        if rollout.status != "active" {
            return;
        }
        let next = rollout
            .targets
            .iter()
            .find(|id| self.targets.get(*id).is_some_and(|t| t.status == "pending"))
            .cloned();
        let Some(target_id) = next else {
            if rollout.targets.iter().all(|id| {
                self.targets
                    .get(id)
                    .is_some_and(|t| !target_active(&t.status))
            }) && let Some(r) = self.rollouts.get_mut(rollout_id)
            {
                r.status = "completed".into();
            }
            return;
        };
        let (node_id, version) = {
            let t = &self.targets[&target_id];
            (t.node_id.clone(), t.target_version.clone())
        };
        let payload = serde_json::json!({
            "targetVersion": version,
            "targetId": target_id,
            "rollback": rollout.rollback,
        });
        let task_id = self.add_task(&node_id, "agent.update", payload);
        let t = self.targets.get_mut(&target_id).expect("target exists");
        t.status = "dispatched".into();
        t.progress_percent = 5;
        t.task_id = Some(task_id);
        t.last_progress = Instant::now();
        t.history.push("dispatched".into());
    }

    /// Queues a task without any gate (the rollout engine, internal use).
    pub fn add_task(&mut self, node_id: &str, task_type: &str, payload: Value) -> String {
        let id = new_id();
        self.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                node_id: node_id.to_owned(),
                task_type: task_type.to_owned(),
                payload,
                status: TaskStatus::Queued,
                result: None,
                output: None,
                output_truncated: false,
                claimed_by: None,
                claim_token: None,
                lease_until: None,
                started_at: None,
                finished_at: None,
                cancel_requested_at: None,
                cancel_reason: None,
                created_at: Timestamp::now(),
                queued_since: Instant::now(),
                running_since: None,
                logs: Vec::new(),
            },
        );
        self.task_order.push(id.clone());
        id
    }
}

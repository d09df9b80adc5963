//! The user side of the control plane, for tests and the demo: what an
//! operator does in the web UI (create tasks and installs, approve
//! enrollments, set root profiles, start rollouts, drive terminals) plus
//! fault injection and the recordings. Available as methods on
//! [`Testbed`] and as HTTP routes under [`PREFIX`]; the release "CDN" is
//! served under `/cdn/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::api::RootProfile;
use shared::api::task::TaskStatus;
use shared::timestamp::Timestamp;

use crate::model::{
    self, EnrollmentStatus, Install, LogRow, Node, Rollout, SessionStatus, Target, Task,
    TerminalSession,
};
use crate::{FaultAction, FaultRule, Inner, RecordedEvent, RecordedRequest, RouteMatch};

/// Prefix of the user-side HTTP routes.
pub const PREFIX: &str = "/__testbed";

/// Task types that change packages: refused unless the node's applied root
/// profile includes `operational` (§11.2).
const PACKAGE_MUTATIONS: &[&str] = &["packageInstall", "packageRemove", "packagePurge"];

/// Why a user-side action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    NotFound(String),
    /// The API would answer 400.
    Invalid(String),
    Conflict(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Invalid(m) | Self::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ControlError {}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
        };
        (status, Json(json!({"message": self.to_string()}))).into_response()
    }
}

type Result<T> = std::result::Result<T, ControlError>;

fn not_found(what: &str, id: &str) -> ControlError {
    ControlError::NotFound(format!("{what} {id} was not found"))
}

/// The user-side handle. [`crate::Testbed`] dereferences to it; it is cheap
/// to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) inner: Arc<Inner>,
}

impl Control {
    pub fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Every HTTP request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.recorder.requests()
    }

    /// Every Socket.IO event so far (both directions).
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.inner.recorder.events()
    }

    /// Adds a fault rule.
    pub fn add_fault(&self, rule: FaultRule) {
        self.inner.faults().add(rule);
    }

    /// Removes every fault rule and ends an outage.
    pub fn clear_faults(&self) {
        self.inner.faults().clear();
    }

    /// Refuses connections (and cuts open ones, sockets included) for `duration`.
    pub fn outage(&self, duration: Duration) {
        self.inner.faults().start_outage(duration);
        self.inner.outage_started.notify_waiters();
    }

    /// Disconnects the node's Socket.IO connection (server side).
    pub fn disconnect_node(&self, node_id: &str) -> bool {
        let s = self.inner.sockets().get(node_id).cloned();
        s.map(|s| s.disconnect().is_ok()).unwrap_or(false)
    }

    /// Deletes a node, as an operator does in the web UI before installing
    /// a machine again: its credentials stop working (§11.4, "node deleted")
    /// and its hostname may enroll anew. Returns whether it existed.
    pub fn delete_node(&self, node_id: &str) -> bool {
        let existed = self.inner.state().nodes.remove(node_id).is_some();
        self.disconnect_node(node_id);
        existed
    }

    /// Registers a node directly (as if it had enrolled) and returns its
    /// `(node_id, agent_token)`.
    pub fn create_node(&self, hostname: &str) -> (String, String) {
        self.inner.state().add_node(hostname)
    }

    pub fn node(&self, node_id: &str) -> Option<Node> {
        self.inner.state().nodes.get(node_id).cloned()
    }

    /// Metrics samples stored for the node, oldest first.
    pub fn metrics(&self, node_id: &str) -> Vec<Value> {
        self.node(node_id).map(|n| n.metrics).unwrap_or_default()
    }

    /// Sets the architecture the node reported at enrollment (rollouts
    /// consider only `amd64` and `arm64` nodes, §10.1).
    pub fn set_arch(&self, node_id: &str, arch: &str) -> Result<()> {
        let mut state = self.inner.state();
        let node = state
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| not_found("Node", node_id))?;
        node.arch = Some(arch.to_owned());
        Ok(())
    }

    pub fn set_maintenance(&self, node_id: &str, enabled: bool) -> Result<()> {
        let mut state = self.inner.state();
        let node = state
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| not_found("Node", node_id))?;
        node.maintenance = enabled;
        Ok(())
    }

    /// Sets the desired root profile and emits `root-access.updated`.
    pub fn set_root_profile(&self, node_id: &str, profile: RootProfile) -> Result<()> {
        let desired = {
            let mut state = self.inner.state();
            let node = state
                .nodes
                .get_mut(node_id)
                .ok_or_else(|| not_found("Node", node_id))?;
            node.root_profile = profile;
            node.root_profile_updated_at = Some(Timestamp::now());
            node.desired_root_access()
        };
        self.inner.emit_to_node(
            node_id,
            shared::api::realtime::event::ROOT_ACCESS_UPDATED,
            &json!({"type": "root-access.updated", "rootAccess": desired}),
        );
        Ok(())
    }

    /// Creates a node install and returns its bootstrap token (§2.3, §3).
    pub fn create_install(&self, node_name: &str) -> String {
        let token = format!("nbt_{}", uuid::Uuid::new_v4().simple());
        let install_id = model::new_id();
        let ttl = self.inner.config.token_ttl;
        self.inner.state().installs.insert(
            install_id.clone(),
            Install {
                install_id,
                token: token.clone(),
                node_name: node_name.to_owned(),
                hostname: None,
                node_id: None,
                status: "installing".into(),
                stage: "command_generated".into(),
                progress_percent: 5,
                status_message: None,
                started_at: None,
                consumed_at: None,
                expires_at: Timestamp::from_unix_millis(
                    Timestamp::now().unix_millis() + ttl.as_millis() as i64,
                ),
                expires: Instant::now() + ttl,
                created_at: Timestamp::now(),
                reports: Vec::new(),
            },
        );
        token
    }

    /// The installation a bootstrap token belongs to, with every report received.
    pub fn install(&self, token: &str) -> Option<Install> {
        self.inner
            .state()
            .installs
            .values()
            .find(|i| i.token == token)
            .cloned()
    }

    pub fn enrollments(&self) -> Vec<model::Enrollment> {
        self.inner.state().enrollments.values().cloned().collect()
    }

    /// Approves a pending enrollment, creating the node; returns its id.
    pub fn approve_enrollment(&self, token: &str) -> Result<String> {
        let mut state = self.inner.state();
        let e = state
            .enrollments
            .get(token)
            .cloned()
            .ok_or_else(|| not_found("Enrollment", token))?;
        if e.status != EnrollmentStatus::Pending || Instant::now() >= e.expires {
            return Err(ControlError::Conflict(format!(
                "Enrollment {token} is not pending"
            )));
        }
        if state.hostname_taken(&e.hostname) {
            return Err(ControlError::Conflict(
                "A node with this hostname already exists".into(),
            ));
        }
        let (node_id, agent_token) = state.add_node(&e.hostname);
        let info = e.additional_info.clone().unwrap_or(Value::Null);
        let field = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_owned);
        let node = state.nodes.get_mut(&node_id).expect("just added");
        node.os = field("os");
        node.arch = field("arch");
        node.agent_version = field("agentVersion");
        node.platform_version = field("platformVersion");
        node.kernel_version = field("kernelVersion");
        let e = state.enrollments.get_mut(token).expect("exists");
        e.status = EnrollmentStatus::Approved;
        e.node_id = Some(node_id.clone());
        e.agent_token = Some(agent_token);
        Ok(node_id)
    }

    pub fn revoke_enrollment(&self, token: &str) -> Result<()> {
        let mut state = self.inner.state();
        let e = state
            .enrollments
            .get_mut(token)
            .ok_or_else(|| not_found("Enrollment", token))?;
        e.status = EnrollmentStatus::Revoked;
        Ok(())
    }

    /// Queues a task the way the API's task creation does, including its
    /// gates: unknown node 404, maintenance 400, package mutations 400
    /// without an applied `operational` profile.
    pub fn create_task(&self, node_id: &str, task_type: &str, payload: Value) -> Result<String> {
        if task_type.trim().chars().count() < 2 {
            return Err(ControlError::Invalid(
                "type must be longer than or equal to 2 characters".into(),
            ));
        }
        if !payload.is_object() {
            return Err(ControlError::Invalid("payload must be an object".into()));
        }
        let id = {
            let mut state = self.inner.state();
            let node = state
                .nodes
                .get(node_id)
                .ok_or_else(|| not_found("Node", node_id))?;
            if node.maintenance {
                return Err(ControlError::Invalid(format!(
                    "Node {node_id} is in maintenance mode"
                )));
            }
            if PACKAGE_MUTATIONS.contains(&task_type)
                && !node.applied_profile().scopes().operational
            {
                return Err(ControlError::Invalid(format!(
                    "Node {node_id} root access profile does not allow package changes (applied: {})",
                    node.applied_profile()
                )));
            }
            state.add_task(node_id, task_type, payload)
        };
        self.inner.tasks_changed.notify_waiters();
        Ok(id)
    }

    /// Operator cancel (§6.1): before running the task is cancelled at once;
    /// while running, a cancel request is recorded for the agent to see.
    pub fn cancel_task(&self, task_id: &str, reason: &str) -> Result<()> {
        let mut state = self.inner.state();
        let task = state
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| not_found("Task", task_id))?;
        match task.status {
            s if s.is_terminal() => {
                return Err(ControlError::Conflict(format!(
                    "Task {task_id} is already finished"
                )));
            }
            TaskStatus::Running => {
                task.cancel_requested_at = Some(Timestamp::now());
                task.cancel_reason = Some(reason.to_owned());
            }
            _ => {
                task.status = TaskStatus::Cancelled;
                task.cancel_requested_at = Some(Timestamp::now());
                task.cancel_reason = Some(reason.to_owned());
                task.finished_at = Some(Timestamp::now().to_string());
            }
        }
        Ok(())
    }

    pub fn task(&self, task_id: &str) -> Option<Task> {
        self.inner.state().tasks.get(task_id).cloned()
    }

    /// The task-log history view: the first `limit` rows (1–100) in insertion
    /// order, exactly like the real API.
    pub fn task_logs(&self, task_id: &str, limit: usize) -> Vec<LogRow> {
        let limit = limit.clamp(1, 100);
        self.task_logs_all(task_id)
            .into_iter()
            .take(limit)
            .collect()
    }

    /// Every log row of a task (beyond what the API's history shows).
    pub fn task_logs_all(&self, task_id: &str) -> Vec<LogRow> {
        self.task(task_id).map(|t| t.logs).unwrap_or_default()
    }

    /// Waits until `check` returns something, polling every 20 ms.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&Control) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a task to reach a final state.
    pub async fn wait_task_done(&self, task_id: &str, timeout: Duration) -> Option<Task> {
        self.wait_for(timeout, |tb| {
            tb.task(task_id).filter(|t| t.status.is_terminal())
        })
        .await
    }

    /// Starts a rollout of `version` over `node_ids` (in order), dispatching
    /// the first eligible target (§10.1).
    pub fn create_rollout(
        &self,
        version: &str,
        node_ids: &[&str],
        rollback: bool,
    ) -> Result<String> {
        let mut state = self.inner.state();
        if state.rollouts.values().any(|r| r.status == "active") {
            return Err(ControlError::Conflict("Another rollout is active".into()));
        }
        let rollout_id = model::new_id();
        let mut targets = Vec::new();
        for (i, node_id) in node_ids.iter().enumerate() {
            let node = state
                .nodes
                .get(*node_id)
                .ok_or_else(|| not_found("Node", node_id))?;
            let eligible = node.online
                && !node.maintenance
                && matches!(node.arch.as_deref(), Some("amd64" | "arm64"))
                && node.agent_version.as_deref() != Some(version);
            let id = model::new_id();
            let target = Target {
                id: id.clone(),
                rollout_id: rollout_id.clone(),
                node_id: (*node_id).to_owned(),
                previous_version: node.agent_version.clone(),
                target_version: version.to_owned(),
                status: if eligible { "pending" } else { "skipped" }.into(),
                progress_percent: 0,
                status_message: None,
                task_id: None,
                sequence: i,
                completed_at: None,
                last_progress: Instant::now(),
                history: Vec::new(),
            };
            state.targets.insert(id.clone(), target);
            targets.push(id);
        }
        state.rollouts.insert(
            rollout_id.clone(),
            Rollout {
                id: rollout_id.clone(),
                target_version: version.to_owned(),
                rollback,
                status: "active".into(),
                targets,
            },
        );
        state.dispatch_next_target(&rollout_id);
        drop(state);
        self.inner.tasks_changed.notify_waiters();
        Ok(rollout_id)
    }

    pub fn rollout(&self, rollout_id: &str) -> Option<Rollout> {
        self.inner.state().rollouts.get(rollout_id).cloned()
    }

    pub fn target(&self, target_id: &str) -> Option<Target> {
        self.inner.state().targets.get(target_id).cloned()
    }

    /// Opens a terminal session: emits `terminal.start` (§9.1). Fails like
    /// the API when the node has no realtime route.
    pub fn open_terminal(
        &self,
        node_id: &str,
        cols: u16,
        rows: u16,
        run_as_root: bool,
    ) -> Result<String> {
        let id = model::new_id();
        {
            let mut state = self.inner.state();
            let node = state
                .nodes
                .get(node_id)
                .ok_or_else(|| not_found("Node", node_id))?;
            if !node.online {
                return Err(ControlError::Conflict(format!("Node {node_id} is offline")));
            }
            if run_as_root && !node.applied_profile().scopes().terminal {
                return Err(ControlError::Invalid(
                    "Root terminals require an applied terminal root access profile".into(),
                ));
            }
            state.sessions.insert(
                id.clone(),
                TerminalSession {
                    id: id.clone(),
                    node_id: node_id.to_owned(),
                    status: SessionStatus::Pending,
                    cols,
                    rows,
                    run_as_root,
                    transcript: Vec::new(),
                    transcript_bytes: 0,
                    exit_code: None,
                    reason: None,
                    error: None,
                    started: Instant::now(),
                    stop_sent: None,
                    stop_reason: None,
                },
            );
        }
        let sent = self.inner.emit_to_node(
            node_id,
            shared::api::realtime::event::TERMINAL_START,
            &json!({"type": "terminal.start", "sessionId": id, "cols": cols, "rows": rows,
                    "runAsRoot": run_as_root}),
        );
        if !sent {
            if let Some(s) = self.inner.state().sessions.get_mut(&id) {
                s.status = SessionStatus::Failed;
                s.error = Some("Node has no realtime route".into());
            }
            return Err(ControlError::Conflict(format!(
                "Node {node_id} has no realtime route"
            )));
        }
        Ok(id)
    }

    fn open_session(&self, session_id: &str) -> Result<String> {
        let state = self.inner.state();
        let s = state
            .sessions
            .get(session_id)
            .ok_or_else(|| not_found("Terminal session", session_id))?;
        if s.status != SessionStatus::Open {
            return Err(ControlError::Conflict(format!(
                "Terminal session {session_id} is not open"
            )));
        }
        Ok(s.node_id.clone())
    }

    /// Types `bytes` into an open session (`terminal.input`, base64).
    pub fn terminal_input(&self, session_id: &str, bytes: &[u8]) -> Result<()> {
        let node_id = self.open_session(session_id)?;
        let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
        if payload.len() > shared::api::terminal::MAX_INPUT_PAYLOAD_CHARS {
            return Err(ControlError::Invalid("payload is too long".into()));
        }
        self.inner.emit_to_node(
            &node_id,
            shared::api::realtime::event::TERMINAL_INPUT,
            &json!({"type": "terminal.input", "sessionId": session_id, "payload": payload}),
        );
        Ok(())
    }

    pub fn terminal_resize(&self, session_id: &str, cols: u16, rows: u16) -> Result<()> {
        let node_id = self.open_session(session_id)?;
        if !shared::api::terminal::COLS_RANGE.contains(&cols)
            || !shared::api::terminal::ROWS_RANGE.contains(&rows)
        {
            return Err(ControlError::Invalid(
                "cols must be 20–400 and rows 10–200".into(),
            ));
        }
        self.inner.emit_to_node(
            &node_id,
            shared::api::realtime::event::TERMINAL_RESIZE,
            &json!({"type": "terminal.resize", "sessionId": session_id, "cols": cols, "rows": rows}),
        );
        Ok(())
    }

    /// Sends `terminal.stop`; the server closes the session itself if no
    /// `terminal.exited` arrives within the termination timeout.
    pub fn stop_terminal(&self, session_id: &str, reason: Option<&str>) -> Result<()> {
        let node_id = {
            let mut state = self.inner.state();
            let s = state
                .sessions
                .get_mut(session_id)
                .ok_or_else(|| not_found("Terminal session", session_id))?;
            if matches!(s.status, SessionStatus::Closed | SessionStatus::Failed) {
                return Err(ControlError::Conflict(format!(
                    "Terminal session {session_id} is already finished"
                )));
            }
            s.status = SessionStatus::Terminating;
            s.stop_sent = Some(Instant::now());
            s.stop_reason = reason.map(str::to_owned);
            s.node_id.clone()
        };
        self.inner.emit_to_node(
            &node_id,
            shared::api::realtime::event::TERMINAL_STOP,
            &json!({"type": "terminal.stop", "sessionId": session_id, "reason": reason}),
        );
        Ok(())
    }

    pub fn terminal(&self, session_id: &str) -> Option<TerminalSession> {
        self.inner.state().sessions.get(session_id).cloned()
    }
}

// ---- HTTP routes ------------------------------------------------------------------

type Shared = State<Arc<Inner>>;

fn handle(inner: &Arc<Inner>) -> Control {
    Control::new(inner.clone())
}

pub fn router() -> Router<Arc<Inner>> {
    Router::new()
        .route("/nodes", post(http_create_node))
        .route("/nodes/{id}", get(http_node))
        .route("/nodes/{id}/maintenance", post(http_maintenance))
        .route("/nodes/{id}/root-access", post(http_root_access))
        .route("/nodes/{id}/disconnect", post(http_disconnect))
        .route("/node-installs", post(http_create_install))
        .route("/node-installs/{token}", get(http_install))
        .route("/enrollments", get(http_enrollments))
        .route("/enrollments/{token}/approve", post(http_approve))
        .route("/enrollments/{token}/revoke", post(http_revoke))
        .route("/tasks", post(http_create_task))
        .route("/tasks/{id}", get(http_task))
        .route("/tasks/{id}/logs", get(http_task_logs))
        .route("/tasks/{id}/cancel", post(http_cancel))
        .route("/rollouts", post(http_create_rollout))
        .route("/rollouts/{id}", get(http_rollout))
        .route("/terminals", post(http_open_terminal))
        .route("/terminals/{id}", get(http_terminal))
        .route("/terminals/{id}/input", post(http_terminal_input))
        .route("/terminals/{id}/resize", post(http_terminal_resize))
        .route("/terminals/{id}/stop", post(http_terminal_stop))
        .route("/faults", post(http_add_fault).delete(http_clear_faults))
        .route("/outage", post(http_outage))
        .route("/requests", get(http_requests))
        .route("/events", get(http_events))
}

fn json_of<T: serde::Serialize>(v: &T) -> Json<Value> {
    Json(serde_json::to_value(v).expect("serializable"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateNode {
    hostname: String,
}

async fn http_create_node(State(inner): Shared, Json(b): Json<CreateNode>) -> Json<Value> {
    let (node_id, agent_token) = handle(&inner).create_node(&b.hostname);
    Json(json!({"nodeId": node_id, "agentToken": agent_token}))
}

async fn http_node(State(inner): Shared, Path(id): Path<String>) -> Result<Json<Value>> {
    handle(&inner)
        .node(&id)
        .map(|n| json_of(&n))
        .ok_or_else(|| not_found("Node", &id))
}

#[derive(Deserialize)]
struct Maintenance {
    enabled: bool,
}

async fn http_maintenance(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<Maintenance>,
) -> Result<Json<Value>> {
    handle(&inner).set_maintenance(&id, b.enabled)?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct RootAccess {
    profile: String,
}

async fn http_root_access(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<RootAccess>,
) -> Result<Json<Value>> {
    let profile = RootProfile::parse(&b.profile)
        .ok_or_else(|| ControlError::Invalid(format!("unknown profile {:?}", b.profile)))?;
    handle(&inner).set_root_profile(&id, profile)?;
    Ok(Json(json!({"ok": true})))
}

async fn http_disconnect(State(inner): Shared, Path(id): Path<String>) -> Json<Value> {
    Json(json!({"disconnected": handle(&inner).disconnect_node(&id)}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInstall {
    node_name: String,
}

async fn http_create_install(State(inner): Shared, Json(b): Json<CreateInstall>) -> Json<Value> {
    Json(json!({"token": handle(&inner).create_install(&b.node_name)}))
}

async fn http_install(State(inner): Shared, Path(token): Path<String>) -> Result<Json<Value>> {
    handle(&inner)
        .install(&token)
        .map(|i| json_of(&i))
        .ok_or_else(|| not_found("Install", &token))
}

async fn http_enrollments(State(inner): Shared) -> Json<Value> {
    json_of(&handle(&inner).enrollments())
}

async fn http_approve(State(inner): Shared, Path(token): Path<String>) -> Result<Json<Value>> {
    let node_id = handle(&inner).approve_enrollment(&token)?;
    Ok(Json(json!({"nodeId": node_id})))
}

async fn http_revoke(State(inner): Shared, Path(token): Path<String>) -> Result<Json<Value>> {
    handle(&inner).revoke_enrollment(&token)?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateTask {
    node_id: String,
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default = "empty_object")]
    payload: Value,
}

fn empty_object() -> Value {
    json!({})
}

async fn http_create_task(
    State(inner): Shared,
    Json(b): Json<CreateTask>,
) -> Result<(StatusCode, Json<Value>)> {
    let tb = handle(&inner);
    let id = tb.create_task(&b.node_id, &b.task_type, b.payload)?;
    Ok((StatusCode::CREATED, json_of(&tb.task(&id))))
}

async fn http_task(State(inner): Shared, Path(id): Path<String>) -> Result<Json<Value>> {
    handle(&inner)
        .task(&id)
        .map(|t| json_of(&t))
        .ok_or_else(|| not_found("Task", &id))
}

#[derive(Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
}

async fn http_task_logs(
    State(inner): Shared,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Json<Value> {
    json_of(&handle(&inner).task_logs(&id, q.limit.unwrap_or(100)))
}

#[derive(Deserialize)]
struct Cancel {
    #[serde(default)]
    reason: String,
}

async fn http_cancel(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<Cancel>,
) -> Result<Json<Value>> {
    handle(&inner).cancel_task(&id, &b.reason)?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRollout {
    target_version: String,
    node_ids: Vec<String>,
    #[serde(default)]
    rollback: bool,
}

async fn http_create_rollout(
    State(inner): Shared,
    Json(b): Json<CreateRollout>,
) -> Result<Json<Value>> {
    let ids: Vec<&str> = b.node_ids.iter().map(String::as_str).collect();
    let id = handle(&inner).create_rollout(&b.target_version, &ids, b.rollback)?;
    Ok(Json(json!({"rolloutId": id})))
}

async fn http_rollout(State(inner): Shared, Path(id): Path<String>) -> Result<Json<Value>> {
    let tb = handle(&inner);
    let rollout = tb.rollout(&id).ok_or_else(|| not_found("Rollout", &id))?;
    let targets: Vec<Target> = rollout
        .targets
        .iter()
        .filter_map(|t| tb.target(t))
        .collect();
    Ok(Json(json!({"rollout": rollout, "targets": targets})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenTerminal {
    node_id: String,
    #[serde(default = "default_cols")]
    cols: u16,
    #[serde(default = "default_rows")]
    rows: u16,
    #[serde(default)]
    run_as_root: bool,
}

fn default_cols() -> u16 {
    shared::api::terminal::DEFAULT_COLS
}
fn default_rows() -> u16 {
    shared::api::terminal::DEFAULT_ROWS
}

async fn http_open_terminal(
    State(inner): Shared,
    Json(b): Json<OpenTerminal>,
) -> Result<Json<Value>> {
    let id = handle(&inner).open_terminal(&b.node_id, b.cols, b.rows, b.run_as_root)?;
    Ok(Json(json!({"sessionId": id})))
}

async fn http_terminal(State(inner): Shared, Path(id): Path<String>) -> Result<Json<Value>> {
    let s = handle(&inner)
        .terminal(&id)
        .ok_or_else(|| not_found("Terminal session", &id))?;
    let mut v = serde_json::to_value(&s).expect("session");
    v["transcript"] = json!(base64::engine::general_purpose::STANDARD.encode(&s.transcript));
    Ok(Json(v))
}

#[derive(Deserialize)]
struct TerminalInput {
    payload: String,
}

async fn http_terminal_input(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<TerminalInput>,
) -> Result<Json<Value>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&b.payload)
        .map_err(|_| ControlError::Invalid("payload must be base64".into()))?;
    handle(&inner).terminal_input(&id, &bytes)?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct Resize {
    cols: u16,
    rows: u16,
}

async fn http_terminal_resize(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<Resize>,
) -> Result<Json<Value>> {
    handle(&inner).terminal_resize(&id, b.cols, b.rows)?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct Stop {
    reason: Option<String>,
}

async fn http_terminal_stop(
    State(inner): Shared,
    Path(id): Path<String>,
    Json(b): Json<Stop>,
) -> Result<Json<Value>> {
    handle(&inner).stop_terminal(&id, b.reason.as_deref())?;
    Ok(Json(json!({"ok": true})))
}

/// `{"route": "/agent/tasks/claim", "count": 2, "probability": 1.0,
///   "latencyMs": 500 | "status": 503, "retryAfter": 2 | "drop": true |
///   "slowChunk": 16, "slowDelayMs": 50}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FaultSpec {
    route: String,
    count: Option<u32>,
    probability: Option<f64>,
    latency_ms: Option<u64>,
    status: Option<u16>,
    retry_after: Option<u64>,
    #[serde(default)]
    drop: bool,
    slow_chunk: Option<usize>,
    slow_delay_ms: Option<u64>,
}

async fn http_add_fault(State(inner): Shared, Json(b): Json<FaultSpec>) -> Result<Json<Value>> {
    let action = if let Some(ms) = b.latency_ms {
        FaultAction::Latency(Duration::from_millis(ms))
    } else if let Some(code) = b.status {
        FaultAction::Status {
            code,
            retry_after: b.retry_after,
        }
    } else if b.drop {
        FaultAction::DropConnection
    } else if let (Some(chunk), Some(ms)) = (b.slow_chunk, b.slow_delay_ms) {
        FaultAction::SlowResponse {
            chunk,
            delay: Duration::from_millis(ms),
        }
    } else {
        return Err(ControlError::Invalid(
            "a fault needs latencyMs, status, drop or slowChunk+slowDelayMs".into(),
        ));
    };
    inner.faults().add(FaultRule {
        route: RouteMatch::new(&b.route),
        action,
        remaining: b.count,
        probability: b.probability.unwrap_or(1.0),
    });
    Ok(Json(json!({"ok": true})))
}

async fn http_clear_faults(State(inner): Shared) -> Json<Value> {
    handle(&inner).clear_faults();
    Json(json!({"ok": true}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outage {
    duration_ms: u64,
}

async fn http_outage(State(inner): Shared, Json(b): Json<Outage>) -> Json<Value> {
    handle(&inner).outage(Duration::from_millis(b.duration_ms));
    Json(json!({"ok": true}))
}

async fn http_requests(State(inner): Shared) -> Json<Value> {
    json_of(&inner.recorder.requests())
}

async fn http_events(State(inner): Shared) -> Json<Value> {
    json_of(&inner.recorder.events())
}

// ---- release CDN ---------------------------------------------------------------------

/// Serves `release_dir` under `/cdn/` (catalog, manifests, SHA256SUMS,
/// artifacts, signatures), refusing any path that leaves the directory.
pub fn cdn_router() -> Router<Arc<Inner>> {
    Router::new().route("/cdn/{*path}", get(cdn_file))
}

async fn cdn_file(State(inner): Shared, Path(path): Path<String>) -> Response {
    let Some(dir) = inner.config.release_dir.clone() else {
        return (StatusCode::NOT_FOUND, "no release directory configured").into_response();
    };
    let safe = path
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
    if !safe {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    match tokio::fs::read(dir.join(&path)).await {
        Ok(bytes) => {
            let ctype = if path.ends_with(".json") {
                "application/json"
            } else {
                "application/octet-stream"
            };
            ([("content-type", ctype)], bytes).into_response()
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

//! The agent-facing HTTP routes under `/api/v1` (PROTOCOL.md §2–§7, §10.3),
//! with the server's validation, status codes and conflict tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use shared::api::enrollment::{ConsumeBootstrapToken, Heartbeat, InstallProgress};
use shared::api::metrics::MetricsSample;
use shared::api::task::{ClaimRequest, TaskCompleted, TaskLog, TaskStatus, TaskTransition};
use shared::api::update::UpdateProgress;
use shared::api::{HostFacts, RootAccessReport};
use shared::timestamp::Timestamp;

use crate::Inner;
use crate::error::{ApiError, ApiResult};
use crate::model::{self, EnrollmentStatus, ProgressReport, Task, target_active};
use crate::validate::{self, Check};

type Shared = State<Arc<Inner>>;
type Reply = ApiResult<(StatusCode, Json<Value>)>;

/// Routes relative to `/api/v1`.
pub fn router() -> Router<Arc<Inner>> {
    Router::new()
        .route("/enrollments/initiate", post(initiate_enrollment))
        .route("/enrollments/{token}", get(enrollment_status))
        .route("/node-installs/consume", post(consume_bootstrap_token))
        .route("/node-installs/progress", post(install_progress))
        .route("/agent/heartbeat", post(heartbeat))
        .route("/agent/metrics", post(http_metrics))
        .route("/agent/tasks/claim", post(claim))
        .route("/agent/tasks/{id}/accepted", post(accepted))
        .route("/agent/tasks/{id}/started", post(started))
        .route("/agent/tasks/{id}/logs", post(logs))
        .route("/agent/tasks/{id}/completed", post(completed))
        .route("/agent/tasks/{id}/control", get(control))
        .route(
            "/agent-updates/targets/{id}/progress",
            post(update_progress),
        )
}

/// Routes exempt from the throttle (§0.3 rule 7).
pub fn throttle_exempt(path: &str) -> bool {
    let p = path
        .strip_prefix(shared::api::route::PREFIX)
        .unwrap_or(path);
    p.starts_with("/agent/tasks/") || (p.starts_with("/agent-updates/") && p.ends_with("/progress"))
}

fn ok(status: StatusCode, v: Value) -> Reply {
    Ok((status, Json(v)))
}

/// Parses a request body; a missing body is `{}` as in NestJS.
fn json_body(bytes: &Bytes) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Unexpected token in JSON: {e}")))
}

/// The agent auth guard (§1.3). Returns the node id.
fn agent_auth(inner: &Inner, headers: &HeaderMap) -> ApiResult<String> {
    const MISSING: &str = "x-agent-node-id and Authorization: Bearer <agent-token> are required";
    let node_id = headers
        .get("x-agent-node-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let (Some(node_id), Some(auth)) = (node_id, auth) else {
        return Err(ApiError::unauthorized(MISSING));
    };
    // The server splits on a single space: `Bearer  x` (two spaces) fails.
    let parts: Vec<&str> = auth.split(' ').collect();
    let token = match parts.as_slice() {
        ["Bearer", token] if !token.is_empty() => *token,
        _ => return Err(ApiError::unauthorized(MISSING)),
    };
    let state = inner.state();
    match state.nodes.get(node_id) {
        Some(n) if n.token == token => Ok(node_id.to_owned()),
        _ => Err(ApiError::unauthorized("Invalid agent credentials")),
    }
}

/// Body authentication of heartbeat and HTTP metrics (§1.3).
fn body_auth(inner: &Inner, node_id: &str, token: &str) -> ApiResult<()> {
    let state = inner.state();
    match state.nodes.get(node_id) {
        None => Err(ApiError::not_found(format!("Node {node_id} was not found"))),
        Some(n) if n.token != token => Err(ApiError::unauthorized("Invalid agent credentials")),
        Some(_) => Ok(()),
    }
}

/// The node's own task, or the server's 404.
fn own_task<'a>(
    state: &'a mut model::State,
    task_id: &str,
    node_id: &str,
) -> ApiResult<&'a mut Task> {
    state
        .tasks
        .get_mut(task_id)
        .filter(|t| t.node_id == node_id)
        .ok_or_else(|| {
            ApiError::not_found(format!("Task {task_id} was not found for node {node_id}"))
        })
}

fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Queued => "queued",
        TaskStatus::Accepted => "accepted",
        TaskStatus::Claimed => "claimed",
        TaskStatus::Running => "running",
        TaskStatus::Success => "success",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Unknown => "unknown",
    }
}

/// `taskId` in a body must equal the route parameter.
fn check_task_id(c: &mut Check<'_>, route_id: &str) -> ApiResult<()> {
    if let Some(body_id) = c.uuid("taskId", false)
        && body_id != route_id
    {
        return Err(ApiError::bad_request(
            "taskId in request body must match route parameter",
        ));
    }
    Ok(())
}

// ---- enrollment (§2.2) -------------------------------------------------------

async fn initiate_enrollment(State(inner): Shared, body: Bytes) -> Reply {
    let body = json_body(&body)?;
    let mut c = validate::body::<shared::api::enrollment::InitiateEnrollment>(&body)?;
    let email = c
        .string("email", true, 1, 320)
        .map(|e| e.trim().to_lowercase());
    if let Some(e) = &email
        && !(e.contains('@') && e.rsplit('@').next().is_some_and(|d| d.contains('.')))
    {
        c.fail("email must be an email");
    }
    let hostname = c
        .string("hostname", true, 2, 255)
        .map(|h| h.trim().to_lowercase());
    let info = c.json_object("additionalInfo", false).cloned();
    c.finish()?;
    let (email, hostname) = (email.unwrap_or_default(), hostname.unwrap_or_default());
    let mut raw = [0u8; 32];
    raw[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    raw[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let expires_at = Timestamp::from_unix_millis(
        Timestamp::now().unix_millis() + inner.config.token_ttl.as_millis() as i64,
    );
    let mut state = inner.state();
    for e in state.enrollments.values_mut() {
        if e.status == EnrollmentStatus::Pending && e.email == email && e.hostname == hostname {
            e.status = EnrollmentStatus::Revoked;
        }
    }
    state.enrollments.insert(
        token.clone(),
        model::Enrollment {
            token: token.clone(),
            email,
            hostname,
            additional_info: info.map(Value::Object),
            status: EnrollmentStatus::Pending,
            expires_at,
            expires: Instant::now() + inner.config.token_ttl,
            node_id: None,
            agent_token: None,
        },
    );
    ok(
        StatusCode::CREATED,
        json!({"token": token, "expiresAt": expires_at.to_string()}),
    )
}

async fn enrollment_status(State(inner): Shared, Path(token): Path<String>) -> Reply {
    let mut state = inner.state();
    let Some(e) = state.enrollments.get_mut(&token) else {
        return Err(ApiError::not_found("Enrollment was not found"));
    };
    if e.status == EnrollmentStatus::Pending && Instant::now() >= e.expires {
        e.status = EnrollmentStatus::Revoked;
    }
    let body = match e.status {
        EnrollmentStatus::Approved => json!({
            "status": "approved",
            "nodeId": e.node_id,
            "agentToken": e.agent_token,
        }),
        EnrollmentStatus::Pending => json!({"status": "pending"}),
        EnrollmentStatus::Revoked => json!({"status": "revoked"}),
    };
    ok(StatusCode::OK, body)
}

// ---- node installs (§2.3, §3) -----------------------------------------------

fn host_facts_rules(c: &mut Check<'_>) {
    c.string("os", false, 0, 255);
    c.string("arch", false, 0, 64);
    c.string("agentVersion", false, 0, 64);
    c.string("platformVersion", false, 0, 120);
    c.string("kernelVersion", false, 0, 120);
}

async fn consume_bootstrap_token(State(inner): Shared, body: Bytes) -> Reply {
    let body = json_body(&body)?;
    let mut c = validate::body::<ConsumeBootstrapToken>(&body)?;
    let token = c
        .string("token", true, 8, usize::MAX)
        .map(|t| t.trim().to_owned());
    let hostname = c
        .string("hostname", true, 2, 255)
        .map(|h| h.trim().to_lowercase());
    c.nested::<HostFacts>("additionalInfo", host_facts_rules);
    let info = c.object().get("additionalInfo").cloned();
    c.finish()?;
    let (token, hostname) = (token.unwrap_or_default(), hostname.unwrap_or_default());
    let mut state = inner.state();
    let install = state
        .installs
        .values()
        .find(|i| i.token == token)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Bootstrap token was not found"))?;
    if install.consumed_at.is_some() {
        return Err(ApiError::conflict("Bootstrap token has already been used"));
    }
    if Instant::now() >= install.expires {
        return Err(ApiError::gone("Bootstrap token has expired"));
    }
    if state.hostname_taken(&hostname) {
        return Err(ApiError::conflict(
            "A node with this hostname already exists",
        ));
    }
    let (node_id, agent_token) = state.add_node(&hostname);
    let field = |k: &str| {
        info.as_ref()
            .and_then(|i| i.get(k))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_owned())
    };
    let node = state.nodes.get_mut(&node_id).expect("just added");
    node.os = field("os");
    node.arch = field("arch");
    node.agent_version = field("agentVersion");
    node.platform_version = field("platformVersion");
    node.kernel_version = field("kernelVersion");
    let i = state
        .installs
        .get_mut(&install.install_id)
        .expect("install exists");
    i.consumed_at = Some(Timestamp::now());
    i.node_id = Some(node_id.clone());
    i.hostname = Some(hostname);
    i.stage = "bootstrap_token_consumed".into();
    i.progress_percent = i.progress_percent.max(92);
    ok(
        StatusCode::CREATED,
        json!({"nodeId": node_id, "agentToken": agent_token}),
    )
}

async fn install_progress(State(inner): Shared, body: Bytes) -> Reply {
    let body = json_body(&body)?;
    let mut c = validate::body::<InstallProgress>(&body)?;
    let token = c
        .string("token", true, 8, usize::MAX)
        .map(|t| t.trim().to_owned());
    let stage = c.string("stage", true, 2, 64).map(|s| s.trim().to_owned());
    let status = c
        .one_of("status", false, &["installing", "completed", "failed"])
        .unwrap_or("installing")
        .to_owned();
    let percent = c.integer("progressPercent", false, 0, 100);
    let message = c
        .string("statusMessage", false, 0, 500)
        .map(str::to_owned)
        .filter(|m| !m.is_empty());
    c.finish()?;
    let (token, stage) = (token.unwrap_or_default(), stage.unwrap_or_default());
    let mut state = inner.state();
    let install = state
        .installs
        .values_mut()
        .find(|i| i.token == token)
        .ok_or_else(|| ApiError::not_found("Install token was not found"))?;
    if install.consumed_at.is_none() && Instant::now() >= install.expires {
        install.status = "expired".into();
        return Err(ApiError::gone("Install has expired"));
    }
    let is_final = matches!(install.status.as_str(), "completed" | "failed");
    let applied = !is_final || install.status == status;
    if applied {
        install.stage = stage.clone();
        install.status = status.clone();
        if let Some(p) = percent {
            install.progress_percent = p;
        }
        install.status_message = Some(
            message
                .clone()
                .unwrap_or_else(|| format!("Stage {stage} reported.")),
        );
        if install.started_at.is_none() {
            install.started_at = Some(Timestamp::now());
        }
    }
    install.reports.push(ProgressReport {
        stage,
        status,
        progress_percent: percent,
        status_message: message,
        applied,
        at: Timestamp::now(),
    });
    ok(StatusCode::CREATED, install.wire())
}

// ---- presence and metrics (§4.3, §5) -----------------------------------------

async fn heartbeat(State(inner): Shared, body: Bytes) -> Reply {
    let body = json_body(&body)?;
    let mut c = validate::body::<Heartbeat>(&body)?;
    let node_id = c.uuid("nodeId", true).map(str::to_owned);
    let token = c
        .string("agentToken", true, 32, usize::MAX)
        .map(str::to_owned);
    let versions = ["agentVersion", "platformVersion", "kernelVersion"]
        .map(|k| c.string(k, false, 1, usize::MAX).map(str::to_owned));
    c.iso_date("sentAt", false);
    c.finish()?;
    let (node_id, token) = (node_id.unwrap_or_default(), token.unwrap_or_default());
    body_auth(&inner, &node_id, &token)?;
    let mut state = inner.state();
    state.mark_online(&node_id, Some(versions));
    state.confirm_version(&node_id);
    let node = &state.nodes[&node_id];
    ok(
        StatusCode::OK,
        json!({
            "acknowledged": true,
            "nodeId": node_id,
            "status": "online",
            "lastSeenAt": node.last_seen_at.map(|t| t.to_string()),
        }),
    )
}

/// Validates a metrics sample for the socket (`socket = true`) or HTTP
/// route and returns it normalised as the server stores it (§5.1).
pub fn check_metrics(body: &Value, socket: bool) -> Result<Value, Vec<String>> {
    let accepted: &[&str] = if socket {
        <shared::api::metrics::AgentMetrics as shared::api::Schema>::ACCEPTED
    } else {
        <MetricsSample as shared::api::Schema>::ACCEPTED
    };
    // The gateway moves an array `networkStats` to `networks` first.
    let mut body = body.clone();
    if socket && let Some(obj) = body.as_object_mut() {
        match obj.get("networkStats") {
            Some(Value::Array(_)) => {
                let stats = obj.remove("networkStats").expect("present");
                if !matches!(obj.get("networks"), Some(Value::Array(_))) {
                    obj.insert("networks".into(), stats);
                }
            }
            Some(Value::Null) => {
                obj.remove("networkStats");
            }
            _ => {}
        }
    }
    let mut c = match validate::whitelist(&body, accepted) {
        Ok(c) => c,
        Err(e) => return Err(vec![e.message]),
    };
    if socket {
        c.one_of("type", true, &["agent.metrics"]);
        c.iso_date("timestamp", false);
    }
    c.iso_date("collectedAt", false);
    c.uuid("nodeId", true);
    c.string("agentToken", true, 32, usize::MAX);
    c.string("agentVersion", false, 0, usize::MAX);
    let usage = |c: &mut Check<'_>, key: &str, nested: &str, field: &str| -> Option<f64> {
        c.number(key, false, 0.0, 100.0).or_else(|| {
            c.object()
                .get(nested)
                .and_then(|n| n.get(field))
                .and_then(Value::as_f64)
        })
    };
    let cpu = usage(&mut c, "cpuUsage", "cpu", "usagePercent");
    let mem = usage(&mut c, "memoryUsage", "memory", "usedPercent");
    let disk = usage(&mut c, "diskUsage", "disk", "usedPercent");
    c.number("temperature", false, f64::MIN, f64::MAX);
    for k in ["cpu", "memory", "disk"] {
        c.json_object(k, false);
    }
    if c.object().contains_key("networkStats") {
        c.json_object("networkStats", false);
    }
    if let Some(n) = c.object().get("networks").filter(|n| !n.is_null()) {
        if !n.as_array().is_some_and(|a| a.iter().all(Value::is_object)) {
            c.fail("networks must be an array of objects");
        }
    }
    let obj = c.object().clone();
    let mut errors = c.into_errors();
    if errors.is_empty() {
        for (value, name) in [(cpu, "cpuUsage"), (mem, "memoryUsage"), (disk, "diskUsage")] {
            if value.is_none() {
                errors.push(format!("{name} is required"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let networks: Vec<Value> = obj
        .get("networks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sum = |k: &str| -> u64 { networks.iter().filter_map(|n| n.get(k)?.as_u64()).sum() };
    let network_stats = match obj.get("networkStats") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({
            "rxBytes": sum("bytesRecv"), "txBytes": sum("bytesSent"),
            "rxPackets": sum("packetsRecv"), "txPackets": sum("packetsSent"),
            "errorsIn": sum("errorsIn"), "errorsOut": sum("errorsOut"),
            "dropIn": sum("dropIn"), "dropOut": sum("dropOut"),
            "interfaces": networks,
        }),
    };
    Ok(json!({
        "id": model::new_id(),
        "nodeId": obj.get("nodeId"),
        "cpuUsage": cpu,
        "memoryUsage": mem,
        "diskUsage": disk,
        "temperature": obj.get("temperature").cloned().unwrap_or(Value::Null),
        "networkStats": network_stats,
        "agentVersion": obj.get("agentVersion").cloned().unwrap_or(Value::Null),
        "recordedAt": Timestamp::now().to_string(),
    }))
}

/// Stores a validated sample: marks the node online and updates only its
/// agent version (§4.2), then checks rollout confirmation.
pub fn store_metrics(inner: &Inner, node_id: &str, row: Value) {
    let mut state = inner.state();
    let version = row["agentVersion"].as_str().map(str::to_owned);
    state.mark_online(node_id, None);
    if let Some(node) = state.nodes.get_mut(node_id) {
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            node.agent_version = Some(v);
        }
        node.metrics.push(row);
    }
    state.confirm_version(node_id);
}

async fn http_metrics(State(inner): Shared, body: Bytes) -> Reply {
    let body = json_body(&body)?;
    let row = check_metrics(&body, false).map_err(ApiError::validation)?;
    let node_id = body["nodeId"].as_str().unwrap_or_default().to_owned();
    body_auth(
        &inner,
        &node_id,
        body["agentToken"].as_str().unwrap_or_default(),
    )?;
    store_metrics(&inner, &node_id, row.clone());
    ok(StatusCode::OK, row)
}

// ---- tasks (§6) ----------------------------------------------------------------

async fn claim(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let body = json_body(&body)?;
    let mut c = validate::body::<ClaimRequest>(&body)?;
    if c.object().contains_key("maxTasks") {
        c.number("maxTasks", false, f64::MIN, f64::MAX);
    }
    let wait_ms = if c.object().contains_key("waitMs") {
        c.number("waitMs", false, f64::MIN, f64::MAX)
            .map(|w| w.clamp(0.0, 30_000.0) as u64)
    } else {
        Some(15_000)
    };
    if let Some(caps) = c.object().get("capabilities")
        && !caps
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
    {
        c.fail("each value in capabilities must be a string");
    }
    c.nested::<RootAccessReport>("rootAccess", validate::root_access_rules);
    let report = c.object().get("rootAccess").cloned();
    c.finish()?;
    if let Some(report) = report
        && let Some(node) = inner.state().nodes.get_mut(&node_id)
    {
        node.root_applied = Some(report);
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms.unwrap_or(15_000));
    loop {
        // Register for wake-ups before looking, so a task queued in between is not missed.
        let changed = inner.tasks_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(task) = try_claim(&inner, &node_id) {
            return claim_reply(&inner, &node_id, Some(task));
        }
        let now = Instant::now();
        if now >= deadline {
            return claim_reply(&inner, &node_id, None);
        }
        // The server re-checks every 500 ms; a queued task also wakes us.
        let recheck = (now + Duration::from_millis(500)).min(deadline);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(recheck.into()) => {}
        }
    }
}

fn try_claim(inner: &Inner, node_id: &str) -> Option<Value> {
    let mut state = inner.state();
    if state.nodes.get(node_id).is_none_or(|n| n.maintenance) {
        return None;
    }
    let now = Instant::now();
    let id = state
        .task_order
        .iter()
        .find(|id| {
            let t = &state.tasks[*id];
            t.node_id == node_id
                && t.cancel_requested_at.is_none()
                && match t.status {
                    TaskStatus::Queued => true,
                    TaskStatus::Accepted | TaskStatus::Claimed => {
                        t.lease_until.is_some_and(|l| l <= now)
                    }
                    _ => false,
                }
        })?
        .clone();
    let task = state.tasks.get_mut(&id).expect("listed task exists");
    task.status = TaskStatus::Accepted;
    task.claimed_by = Some(node_id.to_owned());
    task.claim_token = Some(model::new_id());
    task.lease_until = Some(now + inner.config.claim_lease);
    Some(task.wire())
}

fn claim_reply(inner: &Inner, node_id: &str, task: Option<Value>) -> Reply {
    let desired = inner
        .state()
        .nodes
        .get(node_id)
        .map(|n| n.desired_root_access())
        .unwrap_or(Value::Null);
    ok(
        StatusCode::OK,
        json!({"task": task, "outputTruncated": false, "rootAccess": desired}),
    )
}

/// Validates the accepted/started body and returns the optional timestamp.
fn transition_body(body: &Bytes, task_id: &str) -> ApiResult<Option<String>> {
    let body = json_body(body)?;
    let mut c = validate::body::<TaskTransition>(&body)?;
    check_task_id(&mut c, task_id)?;
    let ts = c.iso_date("timestamp", false).map(str::to_owned);
    c.finish()?;
    Ok(ts)
}

async fn accepted(
    State(inner): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    transition_body(&body, &id)?;
    let mut state = inner.state();
    let task = &*own_task(&mut state, &id, &node_id)?;
    match task.status {
        TaskStatus::Queued => Err(ApiError::conflict(format!(
            "Task {id} is in queued state and cannot be accepted"
        ))),
        TaskStatus::Claimed => {
            if task.claimed_by.as_deref() != Some(&node_id)
                || task.lease_until.is_some_and(|l| l <= Instant::now())
            {
                return Err(ApiError::conflict(format!(
                    "Task {id} claim ownership was lost"
                )));
            }
            let row = state
                .add_log(&id, "info", "Task accepted by agent", None)
                .expect("task exists");
            ok(StatusCode::OK, serde_json::to_value(row).expect("row"))
        }
        _ => ok(
            StatusCode::OK,
            json!({"ok": true, "duplicate": true, "taskId": id}),
        ),
    }
}

async fn started(
    State(inner): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let ts = transition_body(&body, &id)?;
    let mut state = inner.state();
    let task = own_task(&mut state, &id, &node_id)?;
    match task.status {
        TaskStatus::Running => return ok(StatusCode::OK, task.wire()),
        s if s.is_terminal() => {
            return Err(ApiError::conflict(format!(
                "Task {id} is already {} and cannot be started",
                status_name(s)
            )));
        }
        TaskStatus::Queued => {
            return Err(ApiError::conflict(format!(
                "Task {id} must be accepted before it can be started"
            )));
        }
        _ => {}
    }
    if task.claimed_by.as_deref() != Some(&node_id) {
        return Err(ApiError::conflict(format!(
            "Task {id} is claimed by a different node"
        )));
    }
    if task.lease_until.is_none_or(|l| l <= Instant::now()) {
        return Err(ApiError::conflict(format!(
            "Task {id} lease expired before started transition"
        )));
    }
    task.status = TaskStatus::Running;
    task.started_at = Some(ts.unwrap_or_else(|| Timestamp::now().to_string()));
    task.lease_until = None;
    task.running_since = Some(Instant::now());
    ok(StatusCode::OK, task.wire())
}

async fn logs(
    State(inner): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let body = json_body(&body)?;
    let mut c = validate::body::<TaskLog>(&body)?;
    check_task_id(&mut c, &id)?;
    let stream = c.string("stream", true, 1, 50).map(str::to_owned);
    let line = c.string("line", true, 1, 5000).map(str::to_owned);
    let ts = c.iso_date("timestamp", false).map(str::to_owned);
    c.finish()?;
    let (stream, line) = (stream.unwrap_or_default(), line.unwrap_or_default());
    let mut state = inner.state();
    let task = own_task(&mut state, &id, &node_id)?;
    if task.status != TaskStatus::Running {
        return Err(ApiError::conflict(format!(
            "Task {id} is in {} state and cannot accept logs",
            status_name(task.status)
        )));
    }
    // The output column shows the latest line until completion.
    task.output = Some(line.clone());
    let level = match stream.as_str() {
        "stdout" | "stderr" => stream.as_str(),
        _ => "info",
    };
    let row = state.add_log(&id, level, &line, ts).expect("task exists");
    ok(StatusCode::OK, serde_json::to_value(row).expect("row"))
}

/// The first 8 000 UTF-16 code units of `s`.
fn first_utf16_units(s: &str, max: usize) -> (String, bool) {
    let mut units = 0;
    for (i, ch) in s.char_indices() {
        units += ch.len_utf16();
        if units > max {
            return (s[..i].to_owned(), true);
        }
    }
    (s.to_owned(), false)
}

async fn completed(
    State(inner): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let body = json_body(&body)?;
    let mut c = validate::body::<TaskCompleted>(&body)?;
    check_task_id(&mut c, &id)?;
    let status = c
        .one_of(
            "status",
            true,
            &["success", "failed", "cancelled", "canceled", "timeout"],
        )
        .map(str::to_owned);
    let exit_code = c.integer("exitCode", false, i64::MIN, i64::MAX);
    let duration = c.integer("durationMs", false, i64::MIN, i64::MAX);
    let ts = c.iso_date("timestamp", false).map(str::to_owned);
    let output = c.string("output", false, 0, 200_000).map(str::to_owned);
    let error = c.string("error", false, 0, 10_000).map(str::to_owned);
    let result = c.json_object("result", false).cloned();
    c.finish()?;
    let raw_status = status.unwrap_or_default();
    let new_status = match raw_status.as_str() {
        "success" => TaskStatus::Success,
        "cancelled" | "canceled" => TaskStatus::Cancelled,
        _ => TaskStatus::Failed,
    };
    let mut state = inner.state();
    let task = own_task(&mut state, &id, &node_id)?;
    if task.status.is_terminal() {
        if task.status == new_status {
            return ok(StatusCode::OK, task.wire());
        }
        return Err(ApiError::conflict(format!(
            "Task {id} is already {} and cannot transition to {}",
            status_name(task.status),
            status_name(new_status)
        )));
    }
    if task.status != TaskStatus::Running {
        return Err(ApiError::conflict(format!(
            "Task {id} is in {} state and cannot be completed",
            status_name(task.status)
        )));
    }
    let finished = ts.unwrap_or_else(|| Timestamp::now().to_string());
    task.status = new_status;
    task.finished_at = Some(finished.clone());
    if let Some(text) = output.or_else(|| error.clone()) {
        let (stored, truncated) = first_utf16_units(&text, 8_000);
        task.output = Some(stored);
        task.output_truncated = truncated;
    }
    task.result = match result {
        Some(r) => Some(Value::Object(r)),
        None => {
            let mut r = serde_json::Map::new();
            if let Some(e) = exit_code {
                r.insert("exitCode".into(), json!(e));
            }
            if let Some(d) = duration {
                r.insert("durationMs".into(), json!(d));
            }
            r.insert("completedAt".into(), json!(finished));
            if let Some(e) = &error {
                r.insert("error".into(), json!(e));
            }
            if raw_status == "timeout" {
                r.insert("reason".into(), json!("timeout"));
            }
            Some(Value::Object(r))
        }
    };
    let wire = task.wire();
    drop(state);
    inner.task_ended(&id);
    ok(StatusCode::OK, wire)
}

async fn control(State(inner): Shared, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let mut state = inner.state();
    let task = &*own_task(&mut state, &id, &node_id)?;
    let requested = task.status == TaskStatus::Running && task.cancel_requested_at.is_some();
    ok(
        StatusCode::OK,
        json!({
            "taskId": id,
            "status": status_name(task.status),
            "cancelRequested": requested,
            "cancelRequestedAt": task.cancel_requested_at.map(|t| t.to_string()),
            "cancelReason": task.cancel_reason,
        }),
    )
}

// ---- updates (§10.3) -------------------------------------------------------------

async fn update_progress(
    State(inner): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let node_id = agent_auth(&inner, &headers)?;
    let body = json_body(&body)?;
    let mut c = validate::body::<UpdateProgress>(&body)?;
    let statuses = shared::api::update::UpdateStatus::ALL.map(|s| s.as_str());
    let status = c.one_of("status", true, &statuses).map(str::to_owned);
    let percent = c.integer("progressPercent", true, 0, 100);
    let message = c.string("message", false, 0, usize::MAX).map(str::to_owned);
    c.finish()?;
    let (status, percent) = (status.unwrap_or_default(), percent.unwrap_or_default());
    let mut state = inner.state();
    let target = state
        .targets
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("Rollout target {id} was not found")))?;
    if target.node_id != node_id {
        return Err(ApiError::conflict(format!(
            "Rollout target {id} belongs to another node"
        )));
    }
    if !target_active(&target.status) && target.status != "pending" {
        return ok(
            StatusCode::OK,
            serde_json::to_value(target).expect("target"),
        );
    }
    let rollout_id = target.rollout_id.clone();
    let reports_target_version = state
        .nodes
        .get(&node_id)
        .and_then(|n| n.agent_version.as_deref())
        == Some(target.target_version.as_str());
    let t = state.targets.get_mut(&id).expect("target exists");
    t.status = status.clone();
    t.progress_percent = percent;
    t.status_message = message;
    t.last_progress = Instant::now();
    t.history.push(status.clone());
    if status == "failed"
        && let Some(r) = state.rollouts.get_mut(&rollout_id)
    {
        r.status = "paused".into();
    } else if status == "waiting_for_reconnect" && reports_target_version {
        state.complete_target(&id);
    }
    let t = &state.targets[&id];
    ok(StatusCode::OK, serde_json::to_value(t).expect("target"))
}

//! The Socket.IO gateway, namespace `/agent-realtime` (PROTOCOL.md §8, §9):
//! authentication, keepalive, metrics, terminal events, and what the server
//! does on disconnect.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};
use shared::api::RootAccessReport;
use shared::api::realtime::{AgentAuth, AgentPing, event};
use shared::api::terminal::{TerminalError, TerminalExited, TerminalOpened, TerminalOutput};
use socketioxide::extract::{AckSender, Data, Event, SocketRef};
use socketioxide::socket::DisconnectReason;

use crate::Inner;
use crate::model::SessionStatus;
use crate::recorder::Direction;
use crate::validate::{self, Check};

/// Set on a socket once `agent.auth` succeeded.
#[derive(Clone)]
pub struct AuthedNode(pub String);

/// Last `agent.ping`/`agent.metrics` on a socket (for the ping watchdog).
#[derive(Clone)]
pub struct LastActivity(pub Arc<Mutex<Instant>>);

/// Events the gateway accepts from agents.
const ACCEPTED_EVENTS: &[&str] = &[
    event::AGENT_AUTH,
    event::AGENT_PING,
    event::AGENT_METRICS,
    "task.accepted",
    "task.started",
    "task.log",
    "task.completed",
    event::TERMINAL_OPENED,
    event::TERMINAL_OUTPUT,
    event::TERMINAL_EXITED,
    event::TERMINAL_ERROR,
];

/// Registers the namespace handlers.
pub fn register(inner: &Arc<Inner>, io: &socketioxide::SocketIo, namespace: &'static str) {
    let inner = inner.clone();
    io.ns(namespace, move |s: SocketRef| {
        let inner = inner.clone();
        async move {
            s.extensions
                .insert(LastActivity(Arc::new(Mutex::new(Instant::now()))));
            for name in ACCEPTED_EVENTS {
                let inner = inner.clone();
                s.on(
                    *name,
                    move |s: SocketRef, Data(data): Data<Value>, ack: AckSender| {
                        let inner = inner.clone();
                        async move { dispatch(&inner, s, name, data, ack) }
                    },
                );
            }
            let fallback_inner = inner.clone();
            s.on_fallback(
                move |s: SocketRef, Event(name): Event, Data(data): Data<Value>| {
                    let inner = fallback_inner.clone();
                    async move {
                        let node = authed(&s);
                        inner.recorder.event(Direction::In, &name, &data, node);
                        emit(
                            &inner,
                            &s,
                            event::AGENT_ERROR,
                            &json!({"type": "agent.error", "code": "UNKNOWN_EVENT",
                                "message": format!("Unsupported event: {name}")}),
                        );
                    }
                },
            );
            let disconnect_inner = inner.clone();
            s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| {
                let inner = disconnect_inner.clone();
                async move { on_disconnect(&inner, &s, reason) }
            });
        }
    });
}

fn authed(s: &SocketRef) -> Option<String> {
    s.extensions.get::<AuthedNode>().map(|a| a.0)
}

/// Emits an event to one socket and records it.
pub fn emit(inner: &Inner, s: &SocketRef, name: &str, payload: &Value) {
    inner
        .recorder
        .event(Direction::Out, name, payload, authed(s));
    let _ = s.emit(name, payload);
}

fn touch(s: &SocketRef) {
    if let Some(LastActivity(t)) = s.extensions.get::<LastActivity>() {
        *t.lock().expect("activity lock") = Instant::now();
    }
}

fn dispatch(inner: &Arc<Inner>, s: SocketRef, name: &str, data: Value, ack: AckSender) {
    let node = authed(&s);
    inner
        .recorder
        .event(Direction::In, name, &data, node.clone());
    let Some(node_id) = node.filter(|_| name != event::AGENT_AUTH) else {
        if name == event::AGENT_AUTH {
            return auth(inner, s, &data, ack);
        }
        // Any accepted event before auth disconnects the socket (§8.3).
        let _ = ack.send(&json!({"ok": false, "message": "Socket is not authenticated"}));
        let _ = s.disconnect();
        return;
    };
    let reply = match name {
        event::AGENT_PING => ping(&s, &data),
        event::AGENT_METRICS => metrics(inner, &s, &node_id, &data),
        event::TERMINAL_OPENED
        | event::TERMINAL_OUTPUT
        | event::TERMINAL_EXITED
        | event::TERMINAL_ERROR => terminal_event(inner, &node_id, name, &data),
        _ => Err(format!(
            "{name}: socket task lifecycle events are not modelled by the testbed; use the HTTP routes"
        )),
    };
    match reply {
        Ok(v) => {
            let _ = ack.send(&v);
        }
        Err(message) => {
            let message: String = message.chars().take(300).collect();
            emit(
                inner,
                &s,
                event::AGENT_ERROR,
                &json!({"type": "agent.error", "eventType": name, "message": message}),
            );
            let _ = ack.send(&json!({"ok": false, "eventType": name, "message": message}));
        }
    }
}

fn schema_errors(c: Check<'_>) -> Result<(), String> {
    let errors = c.into_errors();
    if errors.is_empty() {
        Ok(())
    } else {
        Err("Bad Request Exception".into())
    }
}

fn auth(inner: &Arc<Inner>, s: SocketRef, data: &Value, ack: AckSender) {
    match authenticate(inner, &s, data) {
        Ok(body) => {
            emit(inner, &s, event::AGENT_AUTH_ACK, &body);
            let _ = ack.send(&body);
        }
        Err(message) => {
            let body =
                json!({"type": "agent.auth.error", "authenticated": false, "message": message});
            emit(inner, &s, event::AGENT_AUTH_ERROR, &body);
            let _ = ack.send(&body);
            let _ = s.disconnect();
        }
    }
}

/// Checks `agent.auth` and makes this socket the node's route; the ack body
/// on success, the error message otherwise.
fn authenticate(inner: &Arc<Inner>, s: &SocketRef, data: &Value) -> Result<Value, String> {
    let mut c =
        validate::body::<AgentAuth>(data).map_err(|_| "Bad Request Exception".to_owned())?;
    c.one_of("type", true, &[event::AGENT_AUTH]);
    c.uuid("nodeId", true);
    c.string("agentToken", true, 16, usize::MAX);
    c.string("agentVersion", false, 0, 64);
    c.string("platformVersion", false, 0, 120);
    c.string("kernelVersion", false, 0, 120);
    c.nested::<RootAccessReport>("rootAccess", validate::root_access_rules);
    schema_errors(c)?;
    let node_id = data["nodeId"].as_str().unwrap_or_default().to_owned();
    let token = data["agentToken"].as_str().unwrap_or_default();
    let str_field = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
    let desired = {
        let mut state = inner.state();
        let node = state
            .nodes
            .get_mut(&node_id)
            .ok_or_else(|| format!("Node {node_id} was not found"))?;
        if node.token != token {
            return Err("Invalid agent token".into());
        }
        if let Some(r) = data.get("rootAccess").filter(|r| r.is_object()) {
            node.root_applied = Some(r.clone());
        }
        state.mark_online(
            &node_id,
            Some([
                str_field("agentVersion"),
                str_field("platformVersion"),
                str_field("kernelVersion"),
            ]),
        );
        state.confirm_version(&node_id);
        state.nodes[&node_id].desired_root_access()
    };
    // A newer socket of the same node replaces the old one (§8.3).
    let previous = inner
        .sockets()
        .insert(node_id.clone(), s.clone())
        .filter(|old| old.id != s.id);
    if let Some(old) = previous {
        inner.recorder.event(
            Direction::Out,
            "disconnect",
            &json!({"reason": "socket-replaced-after-auth-reconnect"}),
            Some(node_id.clone()),
        );
        let _ = old.disconnect();
    }
    s.extensions.insert(AuthedNode(node_id.clone()));
    touch(s);
    Ok(
        json!({"type": "agent.auth.ack", "authenticated": true, "nodeId": node_id,
              "rootAccess": desired}),
    )
}

fn ping(s: &SocketRef, data: &Value) -> Result<Value, String> {
    let mut c =
        validate::body::<AgentPing>(data).map_err(|_| "Bad Request Exception".to_owned())?;
    c.one_of("type", true, &[event::AGENT_PING]);
    c.iso_date("timestamp", false);
    schema_errors(c)?;
    touch(s);
    Ok(json!({"ok": true, "type": "agent.ping",
              "timestamp": shared::timestamp::Timestamp::now().to_string()}))
}

fn metrics(
    inner: &Arc<Inner>,
    s: &SocketRef,
    node_id: &str,
    data: &Value,
) -> Result<Value, String> {
    let row = crate::agent_api::check_metrics(data, true).map_err(|errors| {
        if errors.iter().all(|e| e.ends_with(" is required")) {
            errors.join("; ")
        } else {
            "Bad Request Exception".into()
        }
    })?;
    crate::agent_api::store_metrics(inner, node_id, row);
    touch(s);
    Ok(json!({"ok": true, "type": "agent.metrics", "nodeId": node_id}))
}

fn terminal_event(
    inner: &Arc<Inner>,
    node_id: &str,
    name: &str,
    data: &Value,
) -> Result<Value, String> {
    let accepted = match name {
        event::TERMINAL_OPENED => <TerminalOpened as shared::api::Schema>::ACCEPTED,
        event::TERMINAL_OUTPUT => <TerminalOutput as shared::api::Schema>::ACCEPTED,
        event::TERMINAL_EXITED => <TerminalExited as shared::api::Schema>::ACCEPTED,
        _ => <TerminalError as shared::api::Schema>::ACCEPTED,
    };
    let mut c =
        validate::whitelist(data, accepted).map_err(|_| "Bad Request Exception".to_owned())?;
    if c.object().contains_key("type") {
        c.one_of("type", false, &[name]);
    }
    let session_id = c
        .string("sessionId", true, 1, usize::MAX)
        .map(str::to_owned);
    c.string("timestamp", false, 0, usize::MAX);
    let mut decoded = None;
    let mut exit_code = None;
    match name {
        event::TERMINAL_OPENED => {
            c.integer("cols", false, 20, 400);
            c.integer("rows", false, 10, 200);
        }
        event::TERMINAL_OUTPUT => {
            c.one_of("direction", true, &["stdout", "stderr", "system"]);
            if let Some(p) = c.string("payload", true, 0, 65_536) {
                match base64::engine::general_purpose::STANDARD.decode(p) {
                    Ok(bytes) => decoded = Some(bytes),
                    Err(_) => c.fail("payload must be base64 encoded"),
                }
            }
        }
        event::TERMINAL_EXITED => {
            // A non-number exit code is stored as null.
            exit_code = c.object().get("exitCode").and_then(Value::as_i64);
            c.string("reason", false, 0, 500);
        }
        _ => {
            c.string("message", true, 1, 1000);
        }
    }
    let obj = c.object().clone();
    schema_errors(c)?;
    let session_id = session_id.unwrap_or_default();
    let mut stop_overflow = false;
    let status = {
        let mut state = inner.state();
        let Some(session) = state
            .sessions
            .get_mut(&session_id)
            .filter(|s| s.node_id == node_id)
        else {
            return Err(format!("Terminal session {session_id} was not found"));
        };
        let done = matches!(
            session.status,
            SessionStatus::Closed | SessionStatus::Failed
        );
        match name {
            event::TERMINAL_OPENED if session.status == SessionStatus::Pending => {
                session.status = SessionStatus::Open;
                if let Some(c) = obj.get("cols").and_then(Value::as_u64) {
                    session.cols = c as u16;
                }
                if let Some(r) = obj.get("rows").and_then(Value::as_u64) {
                    session.rows = r as u16;
                }
            }
            event::TERMINAL_OUTPUT if !done => {
                let bytes = decoded.unwrap_or_default();
                let cap = inner.config.terminal_transcript_cap;
                if session.transcript_bytes < cap {
                    let room = cap - session.transcript_bytes;
                    session
                        .transcript
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                    session.transcript_bytes += bytes.len().min(room);
                    if bytes.len() > room && session.stop_sent.is_none() {
                        session.status = SessionStatus::Terminating;
                        session.stop_sent = Some(Instant::now());
                        session.stop_reason = Some("transcript-overflow".into());
                        stop_overflow = true;
                    }
                }
            }
            event::TERMINAL_EXITED if !done => {
                session.status = SessionStatus::Closed;
                session.exit_code = exit_code;
                let reason = obj.get("reason").and_then(Value::as_str).unwrap_or("");
                session.reason = Some(if reason.is_empty() {
                    "Terminal session exited.".to_owned()
                } else {
                    reason.to_owned()
                });
            }
            event::TERMINAL_ERROR if !done => {
                session.status = SessionStatus::Failed;
                session.error = obj
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            _ => {}
        }
        session.status
    };
    if stop_overflow {
        inner.emit_to_node(
            node_id,
            event::TERMINAL_STOP,
            &json!({"type": "terminal.stop", "sessionId": session_id, "reason": "transcript-overflow"}),
        );
    }
    Ok(json!({"ok": true, "sessionId": session_id, "status": status}))
}

fn on_disconnect(inner: &Arc<Inner>, s: &SocketRef, reason: DisconnectReason) {
    let Some(node_id) = authed(s) else {
        return;
    };
    inner.recorder.event(
        Direction::In,
        "disconnect",
        &json!({"reason": format!("{reason:?}")}),
        Some(node_id.clone()),
    );
    let mut sockets = inner.sockets();
    // Only the node's current route going away makes it offline (§4.1).
    if sockets.get(&node_id).is_some_and(|cur| cur.id == s.id) {
        sockets.remove(&node_id);
        drop(sockets);
        if let Some(node) = inner.state().nodes.get_mut(&node_id) {
            node.online = false;
        }
    }
}

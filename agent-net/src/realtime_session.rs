//! The realtime session (PROTOCOL.md §8): connect, authenticate, keep the
//! node visible with `agent.ping` and `agent.metrics`, apply root-access
//! updates, pass terminal events in both directions, and reconnect with
//! back-off when anything goes wrong (§8.8).
//!
//! - `agent.auth` carries all three versions (an auth that brings the node
//!   online nulls the absent ones, §4.2) and the applied root-access report,
//!   and asks for an ack: `authenticated: false`, `agent.auth.error`, a
//!   disconnect or silence for `request_timeout` all count as failure.
//! - A metrics sample goes out right after every auth, then every
//!   `metrics_interval`; samples are taken only while authenticated.
//! - Reconnect delay: `min(1 s · 2^min(attempt, 5), 30 s)` spread by
//!   ± `realtime_backoff_jitter`; the attempt count resets after an auth.
//! - Why a connection failed is kept in the status, classified (invalid
//!   URL, TLS/handshake, connection, namespace, authentication).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shared::api::metrics::{AgentMetrics, MetricsSample};
use shared::api::realtime::{AgentAuth, AgentPing, RootAccessUpdated, event};
use shared::identity::Identity;
use shared::timestamp::Timestamp;
use tokio::sync::{mpsc, watch};

use crate::backoff::Jitter;
use crate::host_facts::Host;
use crate::metrics::Collector;
use crate::root_access::RootAccess;
use crate::sio_client::{self, Incoming, SioClient, SioConfig};

/// Settings of the session.
#[derive(Clone)]
pub struct SessionSettings {
    pub sio: SioConfig,
    pub identity: Identity,
    pub host: Host,
    pub ping_interval: Duration,
    pub metrics_interval: Duration,
    /// Limit for the auth ack (`request_timeout`).
    pub auth_timeout: Duration,
    /// `realtime_backoff_jitter`, 0..1.
    pub jitter: f64,
}

/// The session's state for `noderax-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStatus {
    pub authenticated: bool,
    pub connects: u64,
    /// Why the last connection attempt or session ended.
    pub last_error: Option<String>,
    /// The last `agent.error` the server sent.
    pub last_server_error: Option<String>,
}

/// Server events the rest of the agent handles (terminal.*).
pub type ServerEvent = (String, Value);

/// Runs until `shutdown` becomes true.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    s: SessionSettings,
    root: Arc<Mutex<RootAccess>>,
    mut collector: Collector,
    mut outbound: mpsc::Receiver<(String, Value)>,
    inbound: mpsc::Sender<ServerEvent>,
    status: watch::Sender<SessionStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt: u32 = 0;
    let mut jitter = Jitter::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ended = tokio::select! {
            r = session(&s, &root, &mut collector, &mut outbound, &inbound, &status) => r,
            _ = shutdown.changed() => return,
        };
        status.send_modify(|st| {
            st.authenticated = false;
            st.last_error = Some(ended.reason.clone());
        });
        if ended.authenticated {
            attempt = 0;
        }
        let base = Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30));
        attempt = attempt.saturating_add(1);
        let delay = jitter.spread(base, s.jitter);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The start-up pre-flight of §8.2: an Engine.IO polling handshake on the
/// realtime path. It only informs the log; the session never depends on it.
pub async fn preflight(sio: &SioConfig, timeout: Duration) -> Result<(), String> {
    let url = sio_client::websocket_url(&sio.api_url, &sio.path)
        .map_err(|e| e.to_string())?
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1)
        .replace("transport=websocket", "transport=polling");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*sio.tls).clone())
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&body[..body.len().min(1024)]);
    if status.as_u16() == 200 && head.contains("\"sid\"") {
        Ok(())
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}

struct Ended {
    authenticated: bool,
    reason: String,
}

fn auth_payload(s: &SessionSettings, root: &Mutex<RootAccess>) -> Value {
    serde_json::to_value(AgentAuth {
        node_id: s.identity.node_id.clone(),
        agent_token: s.identity.agent_token.clone(),
        agent_version: shared::build_info::VERSION.to_owned(),
        platform_version: s.host.platform_version.clone(),
        kernel_version: s.host.kernel_version.clone(),
        root_access: Some(root.lock().expect("root lock").report()),
    })
    .expect("serializable")
}

async fn authenticate(
    client: &SioClient,
    events: &mut mpsc::Receiver<Incoming>,
    s: &SessionSettings,
    root: &Mutex<RootAccess>,
) -> Result<(), String> {
    let ack = client
        .emit_with_ack(event::AGENT_AUTH, &auth_payload(s, root), s.auth_timeout)
        .await;
    match ack {
        Ok(v) if v["authenticated"] == true => {
            if let Some(p) = v["rootAccess"]["profile"]
                .as_str()
                .and_then(shared::api::RootProfile::parse)
            {
                root.lock().expect("root lock").apply(p);
            }
            Ok(())
        }
        Ok(v) => Err(format!(
            "authentication error: {}",
            v["message"]
                .as_str()
                .unwrap_or("the control plane refused the agent's credentials")
        )),
        Err(e) => {
            // The error event usually arrives just before the disconnect.
            while let Ok(Some(Incoming::Event(name, payload))) =
                tokio::time::timeout(Duration::from_millis(100), events.recv()).await
            {
                if name == event::AGENT_AUTH_ERROR {
                    return Err(format!(
                        "authentication error: {}",
                        payload["message"].as_str().unwrap_or("refused")
                    ));
                }
            }
            Err(format!("authentication error: {e}"))
        }
    }
}

fn metrics_payload(s: &SessionSettings, collector: &mut Collector) -> Value {
    let sample = collector.sample();
    serde_json::to_value(AgentMetrics {
        timestamp: Some(Timestamp::now()),
        sample: MetricsSample {
            node_id: s.identity.node_id.clone(),
            agent_token: s.identity.agent_token.clone(),
            agent_version: Some(shared::build_info::VERSION.to_owned()),
            cpu_usage: sample.cpu_usage,
            memory_usage: sample.memory_usage,
            disk_usage: sample.disk_usage,
            temperature: sample.temperature,
            networks: sample.networks,
        },
    })
    .expect("serializable")
}

/// One connection, from connect to its end.
async fn session(
    s: &SessionSettings,
    root: &Mutex<RootAccess>,
    collector: &mut Collector,
    outbound: &mut mpsc::Receiver<(String, Value)>,
    inbound: &mpsc::Sender<ServerEvent>,
    status: &watch::Sender<SessionStatus>,
) -> Ended {
    let fail = |reason: String| Ended {
        authenticated: false,
        reason,
    };
    let (client, mut events) = match sio_client::connect(&s.sio).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(reason) = authenticate(&client, &mut events, s, root).await {
        return fail(reason);
    }
    status.send_modify(|st| {
        st.authenticated = true;
        st.connects += 1;
        st.last_error = None;
    });
    let mut ping = tokio::time::interval(s.ping_interval);
    let mut metrics = tokio::time::interval(s.metrics_interval);
    // Both tickers fire at once: the metrics sample right after auth.
    loop {
        let sent = tokio::select! {
            _ = ping.tick() => {
                let p = serde_json::to_value(AgentPing { timestamp: Some(Timestamp::now()) }).expect("serializable");
                client.emit(event::AGENT_PING, &p).await
            }
            _ = metrics.tick() => client.emit(event::AGENT_METRICS, &metrics_payload(s, collector)).await,
            out = outbound.recv() => match out {
                Some((name, payload)) => client.emit(&name, &payload).await,
                None => std::future::pending().await,
            },
            incoming = events.recv() => match incoming {
                Some(Incoming::Event(name, payload)) => {
                    match name.as_str() {
                        // Also delivered as the ack value, already handled.
                        event::AGENT_AUTH_ACK => {}
                        event::AGENT_AUTH_ERROR => {
                            let why = payload["message"].as_str().unwrap_or("refused").to_owned();
                            return Ended { authenticated: true, reason: format!("authentication error: {why}") };
                        }
                        event::AGENT_ERROR => {
                            let msg = format!(
                                "{}: {}",
                                payload["eventType"].as_str().or(payload["code"].as_str()).unwrap_or("agent.error"),
                                payload["message"].as_str().unwrap_or("")
                            );
                            status.send_modify(|st| st.last_server_error = Some(msg));
                        }
                        event::ROOT_ACCESS_UPDATED => {
                            let changed = serde_json::from_value::<RootAccessUpdated>(payload)
                                .map(|u| root.lock().expect("root lock").apply(u.root_access.profile))
                                .unwrap_or(false);
                            // Re-authenticate so the server sees the new applied profile now.
                            if changed && let Err(reason) = authenticate(&client, &mut events, s, root).await {
                                return Ended { authenticated: true, reason };
                            }
                        }
                        _ => {
                            let _ = inbound.send((name, payload)).await;
                        }
                    }
                    Ok(())
                }
                Some(Incoming::Closed(reason)) => return Ended { authenticated: true, reason },
                None => {
                    return Ended { authenticated: true, reason: "the connection closed".into() };
                }
            },
        };
        if sent.is_err() {
            return Ended {
                authenticated: true,
                reason: "the connection closed while sending".into(),
            };
        }
    }
}

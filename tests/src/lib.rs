//! The control-plane testbed: a faithful fake of the Noderax API and its
//! Socket.IO gateway (PROTOCOL.md), with fault injection, for the agent's
//! tests and the end-to-end demo.
//!
//! It enforces the server's rules — unknown keys rejected, length limits,
//! the task state machine with leases and stale timers, idempotency and
//! conflict tables — so traffic it accepts is traffic the real server
//! accepts. Start it with [`Testbed::start`]; drive the "user side" (create
//! tasks, approve enrollments, open terminals, inject faults) through the
//! returned handle or the HTTP routes under `/__testbed/`.
//!
//! Modules: [`agent_api`] (agent HTTP routes), [`realtime`] (Socket.IO),
//! [`control`] (user-side API), [`faults`], [`recorder`], [`timers`]
//! (stale sweeps, offline detection, terminal and rollout timers),
//! [`server`] (connections), [`validate`] (the server's validation pipe),
//! [`release_fixture`] (test releases for the `/cdn/` release server),
//! [`test_support`] (helpers of the suites that drive built programs).

pub mod agent_api;
pub mod config;
pub mod control;
pub mod error;
pub mod faults;
mod http_layer;
pub mod model;
pub mod realtime;
pub mod recorder;
pub mod release_fixture;
pub mod server;
pub mod test_support;
pub mod timers;
pub mod validate;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use tokio::sync::Notify;

pub use config::TestbedConfig;
pub use control::{Control, ControlError};
pub use error::ApiError;
pub use faults::{FaultAction, FaultRule, RouteMatch};
pub use recorder::{Direction, RecordedEvent, RecordedRequest};

/// Shared state of a running testbed.
pub struct Inner {
    pub config: TestbedConfig,
    state: Mutex<model::State>,
    /// Woken whenever a task is queued or changes, for long-poll claims.
    pub tasks_changed: Notify,
    faults: Mutex<faults::Faults>,
    pub recorder: recorder::Recorder,
    sockets: Mutex<HashMap<String, SocketRef>>,
    pub(crate) connections: server::Connections,
    pub(crate) outage_started: Notify,
    pub(crate) throttle_hits: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Inner {
    /// The data, locked. Never hold it across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, model::State> {
        self.state.lock().expect("testbed state lock")
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, faults::Faults> {
        self.faults.lock().expect("faults lock")
    }

    pub(crate) fn sockets(&self) -> MutexGuard<'_, HashMap<String, SocketRef>> {
        self.sockets.lock().expect("sockets lock")
    }

    pub(crate) fn outage_until(&self) -> Option<Instant> {
        self.faults().outage_until()
    }

    /// Disconnects every agent socket (outage).
    pub(crate) fn disconnect_all_sockets(&self) {
        let all: Vec<SocketRef> = self.sockets().values().cloned().collect();
        for s in all {
            let _ = s.disconnect();
        }
    }

    /// Emits `name` to the node's authenticated socket; false if it has none.
    pub fn emit_to_node(&self, node_id: &str, name: &str, payload: &Value) -> bool {
        let socket = self.sockets().get(node_id).cloned();
        match socket {
            Some(s) => {
                realtime::emit(self, &s, name, payload);
                true
            }
            None => false,
        }
    }

    /// Bookkeeping after a task reached a final state.
    pub(crate) fn task_ended(&self, _task_id: &str) {
        self.tasks_changed.notify_waiters();
    }
}

/// A running testbed. Dropping it stops the server. It dereferences to its
/// user-side [`Control`] handle.
pub struct Testbed {
    control: Control,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for Testbed {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.control.inner.connections.cut_all();
    }
}

impl Testbed {
    /// Binds `config.listen` and serves until dropped. Must be called inside
    /// a Tokio runtime.
    pub async fn start(config: TestbedConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(model::State::default()),
            tasks_changed: Notify::new(),
            faults: Mutex::new(faults::Faults::default()),
            recorder: recorder::Recorder::new(),
            sockets: Mutex::new(HashMap::new()),
            connections: server::Connections::default(),
            outage_started: Notify::new(),
            throttle_hits: Mutex::new(HashMap::new()),
        });
        let (sio_layer, io) = socketioxide::SocketIo::builder()
            .req_path(shared::api::realtime::DEFAULT_PATH.trim_end_matches('/'))
            .transports([socketioxide::TransportType::Websocket])
            .max_payload(1_000_000)
            .build_layer();
        realtime::register(&inner, &io, shared::api::realtime::DEFAULT_NAMESPACE);
        let app = Router::new()
            .nest(shared::api::route::PREFIX, agent_api::router())
            .nest(control::PREFIX, control::router())
            .merge(control::cdn_router())
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                http_layer::around,
            ))
            .layer(sio_layer)
            .with_state(inner.clone());
        let server = tokio::spawn(server::run(inner.clone(), listener, app));
        let timers = tokio::spawn(timers::run(inner.clone()));
        Ok(Self {
            control: Control::new(inner),
            addr,
            tasks: vec![server, timers],
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's `api_url`: `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shared state, for assertions this handle does not cover.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.control.inner
    }
}

//! Every HTTP request and Socket.IO event the testbed saw, with a
//! timestamp, for assertions.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

/// One HTTP exchange.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// Milliseconds since the testbed started.
    pub at_ms: u64,
    pub method: String,
    /// Path without the query, e.g. `/api/v1/agent/tasks/claim`.
    pub path: String,
    /// The JSON body, `Null` if none or not JSON.
    pub body: Value,
    /// Response status; 0 when the connection was dropped on purpose.
    pub status: u16,
    /// Set when a fault rule produced or shaped the response.
    pub fault: Option<String>,
    /// How long a latency fault really delayed this request, in µs.
    pub injected_latency_us: Option<u64>,
}

/// Direction of a Socket.IO event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Agent → server.
    In,
    /// Server → agent.
    Out,
}

/// One Socket.IO event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    pub at_ms: u64,
    pub direction: Direction,
    pub event: String,
    pub payload: Value,
    /// The node the socket was authenticated as, if it was.
    pub node_id: Option<String>,
}

/// Append-only log of requests and events.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    requests: Mutex<Vec<RecordedRequest>>,
    events: Mutex<Vec<RecordedEvent>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn request(&self, r: RecordedRequest) {
        self.requests.lock().expect("recorder lock").push(r);
    }

    pub fn event(
        &self,
        direction: Direction,
        event: &str,
        payload: &Value,
        node_id: Option<String>,
    ) {
        let e = RecordedEvent {
            at_ms: self.now_ms(),
            direction,
            event: event.to_owned(),
            payload: payload.clone(),
            node_id,
        };
        self.events.lock().expect("recorder lock").push(e);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("recorder lock").clone()
    }

    pub fn events(&self) -> Vec<RecordedEvent> {
        self.events.lock().expect("recorder lock").clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

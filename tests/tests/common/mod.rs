//! Protocol-level clients for testing the testbed without any agent code:
//! plain HTTP/1.1 (hyper's connection API) and a raw Engine.IO v4 /
//! Socket.IO v4 client over a WebSocket.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// An HTTP response: status, `Retry-After` if any, JSON body (`Null` if not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
    pub raw: Bytes,
}

/// Sends one request on a fresh connection. `Err` when the connection fails
/// or is closed without a response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Resp, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("accept", "application/json");
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(b).unwrap())
        }
        None => Bytes::new(),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes)).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let raw = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Ok(Resp {
        status,
        retry_after,
        body,
        raw,
    })
}

/// An agent's HTTP identity.
#[derive(Clone)]
pub struct Agent {
    pub addr: SocketAddr,
    pub node_id: String,
    pub token: String,
}

impl Agent {
    pub fn headers(&self) -> Vec<(&str, String)> {
        vec![
            ("authorization", format!("Bearer {}", self.token)),
            ("x-agent-node-id", self.node_id.clone()),
        ]
    }

    /// POST/GET under `/api/v1` with the agent headers.
    pub async fn call(&self, method: &str, route: &str, body: Option<Value>) -> Resp {
        let h = self.headers();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(
            self.addr,
            method,
            &format!("/api/v1{route}"),
            &h,
            body.as_ref(),
        )
        .await
        .expect("request")
    }

    pub async fn post(&self, route: &str, body: Value) -> Resp {
        self.call("POST", route, Some(body)).await
    }

    /// Claims with a short wait; returns the task id if one came.
    pub async fn claim(&self, wait_ms: u64) -> Option<String> {
        let r = self
            .post(
                "/agent/tasks/claim",
                json!({"maxTasks": 1, "waitMs": wait_ms}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["task"]["id"].as_str().map(str::to_owned)
    }

    pub async fn start(&self, task_id: &str) -> Resp {
        self.post(
            &format!("/agent/tasks/{task_id}/started"),
            json!({"taskId": task_id, "timestamp": now()}),
        )
        .await
    }
}

pub fn now() -> String {
    shared::timestamp::Timestamp::now().to_string()
}

/// A raw Socket.IO v4 client on namespace `/agent-realtime`.
pub struct Sio {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ack: u64,
    /// Events received while waiting for something else.
    pub inbox: Vec<(String, Value)>,
    pub closed: bool,
}

const NS: &str = "/agent-realtime";

impl Sio {
    /// Opens the WebSocket and connects to the namespace.
    pub async fn connect(addr: SocketAddr) -> Sio {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        let mut sio = Sio {
            ws,
            next_ack: 1,
            inbox: Vec::new(),
            closed: false,
        };
        let open = sio.next_text().await.expect("engine.io open");
        assert!(open.starts_with('0'), "{open}");
        sio.send_raw(&format!("40{NS},")).await;
        let connected = sio.next_text().await.expect("namespace connect");
        assert!(connected.starts_with(&format!("40{NS},")), "{connected}");
        sio
    }

    async fn send_raw(&mut self, text: &str) {
        let _ = self.ws.send(Message::Text(text.to_owned().into())).await;
    }

    /// The next text frame, answering Engine.IO pings; `None` when closed.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) if t.as_str() == "2" => self.send_raw("3").await,
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => {
                    self.closed = true;
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    /// Emits an event without an ack id.
    pub async fn emit(&mut self, event: &str, payload: Value) {
        let text = format!("42{NS},{}", json!([event, payload]));
        self.send_raw(&text).await;
    }

    /// Emits with an ack id and waits for the ack value; events that arrive
    /// meanwhile go to the inbox. `None` if the socket closed first.
    pub async fn emit_ack(&mut self, event: &str, payload: Value) -> Option<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let text = format!("42{NS},{id}{}", json!([event, payload]));
        self.send_raw(&text).await;
        let prefix = format!("43{NS},{id}");
        loop {
            let t = self.next_text().await?;
            if let Some(rest) = t.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(rest).expect("ack json");
                return Some(v[0].clone());
            }
            self.stash(&t);
        }
    }

    fn stash(&mut self, t: &str) {
        if t.starts_with(&format!("41{NS}")) {
            self.closed = true;
        } else if let Some(rest) = t.strip_prefix(&format!("42{NS},")) {
            let v: Value = serde_json::from_str(rest).expect("event json");
            self.inbox
                .push((v[0].as_str().unwrap().to_owned(), v[1].clone()));
        }
    }

    /// Waits for the named event (from the inbox or the wire).
    pub async fn expect(&mut self, event: &str) -> Option<Value> {
        if let Some(i) = self.inbox.iter().position(|(e, _)| e == event) {
            return Some(self.inbox.remove(i).1);
        }
        loop {
            let t = self.next_text().await?;
            self.stash(&t);
            if self.closed {
                return None;
            }
            if let Some(i) = self.inbox.iter().position(|(e, _)| e == event) {
                return Some(self.inbox.remove(i).1);
            }
        }
    }

    /// True once the server disconnected the namespace or closed the socket.
    pub async fn wait_closed(&mut self) -> bool {
        while !self.closed {
            match self.next_text().await {
                Some(t) => self.stash(&t),
                None => break,
            }
        }
        self.closed
    }

    /// Authenticates as `agent`; returns the ack value.
    pub async fn auth(&mut self, node_id: &str, token: &str) -> Option<Value> {
        self.emit_ack(
            "agent.auth",
            json!({"type": "agent.auth", "nodeId": node_id, "agentToken": token,
                   "agentVersion": "1.0.2", "platformVersion": "12", "kernelVersion": "6.1.0"}),
        )
        .await
    }
}

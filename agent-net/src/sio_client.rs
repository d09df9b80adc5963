//! A minimal Socket.IO v4 client (Engine.IO v4, WebSocket transport only)
//! for the realtime channel (PROTOCOL.md §8.1).
//!
//! Why not `rust_socketio`: it brings its own TLS stack (native-tls, i.e.
//! OpenSSL), so the agent's rustls configuration with `api_tls_ca_file`
//! could not apply to the socket (the original agent's defect §13 item 30),
//! and the binary would carry two TLS stacks. The protocol subset the agent
//! needs is small: one namespace, text packets, events with optional ack
//! ids, and answering Engine.IO pings. No reconnection here: the session
//! above decides when and how to reconnect (§8.8).
//!
//! Packets (text frames): Engine.IO `0` open (JSON with `pingInterval` and
//! `pingTimeout`), `2` ping → `3` pong, `1` close, `4` message. Socket.IO
//! inside a message: `0/ns,` connect (answered with `0/ns,{"sid":..}` or
//! `4/ns,{"message":..}`), `1/ns,` disconnect, `2/ns,[id][name,payload]`
//! event, `3/ns,id[value]` ack.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Where and how to connect.
#[derive(Clone)]
pub struct SioConfig {
    /// The control plane's `api_url`; only scheme, host and port are used (§8.1).
    pub api_url: String,
    /// `realtime_path`, e.g. `/socket.io/`.
    pub path: String,
    /// `realtime_namespace`, e.g. `/agent-realtime`.
    pub namespace: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Limit for opening the WebSocket and joining the namespace.
    pub connect_timeout: Duration,
}

/// Why a connection failed or ended, classified for logs and status (§8.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    #[error("invalid realtime URL: {0}")]
    InvalidUrl(String),
    #[error("TLS or proxy handshake failed: {0}")]
    Handshake(String),
    #[error("WebSocket connection failed: {0}")]
    Transport(String),
    #[error("the server refused namespace {namespace}: {message}")]
    NamespaceRefused { namespace: String, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the connection is closed")]
    Closed,
}

/// What arrives from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An event: its name and first argument (`Null` if none).
    Event(String, Value),
    /// The connection ended; no more items follow.
    Closed(String),
}

type AckMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected namespace. Cheap to clone; dropping every clone and the
/// receiver closes the connection.
#[derive(Clone)]
pub struct SioClient {
    out: mpsc::Sender<String>,
    acks: AckMap,
    next_ack: Arc<AtomicU64>,
    prefix: Arc<str>,
}

/// The WebSocket URL for `api_url`: scheme and authority only, then the path.
pub fn websocket_url(api_url: &str, path: &str) -> Result<String, SioError> {
    let (scheme, rest) = api_url
        .split_once("://")
        .ok_or_else(|| SioError::InvalidUrl(format!("{api_url:?} has no scheme")))?;
    let ws = match scheme {
        "https" => "wss",
        "http" => "ws",
        other => {
            return Err(SioError::InvalidUrl(format!(
                "scheme {other:?} is not http or https"
            )));
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(SioError::InvalidUrl(format!("{api_url:?} has no host")));
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok(format!(
        "{ws}://{authority}{path}?EIO=4&transport=websocket"
    ))
}

/// Opens the WebSocket and joins the namespace.
pub async fn connect(cfg: &SioConfig) -> Result<(SioClient, mpsc::Receiver<Incoming>), SioError> {
    let url = websocket_url(&cfg.api_url, &cfg.path)?;
    let timeout = cfg.connect_timeout;
    let connector = tokio_tungstenite::Connector::Rustls(cfg.tls.clone());
    let (mut ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_tls_with_config(&url, None, true, Some(connector)),
    )
    .await
    .map_err(|_| SioError::Timeout(timeout))?
    .map_err(classify)?;

    let prefix: Arc<str> = if cfg.namespace == "/" {
        "".into()
    } else {
        format!("{},", cfg.namespace).into()
    };
    // Engine.IO open packet, then the namespace handshake.
    let open = next_text(&mut ws, timeout).await?;
    let handshake: Value = open
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| {
            SioError::Protocol(format!("expected an Engine.IO open packet, got {open:?}"))
        })?;
    let ping_interval = handshake["pingInterval"].as_u64().unwrap_or(25_000);
    let ping_timeout = handshake["pingTimeout"].as_u64().unwrap_or(20_000);
    send(&mut ws, format!("40{prefix}")).await?;
    loop {
        let t = next_text(&mut ws, timeout).await?;
        if t == "2" {
            send(&mut ws, "3".into()).await?;
        } else if t.starts_with(&format!("40{prefix}")) {
            break;
        } else if let Some(body) = t.strip_prefix(&format!("44{prefix}")) {
            let message = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.to_owned());
            return Err(SioError::NamespaceRefused {
                namespace: cfg.namespace.clone(),
                message,
            });
        } else {
            return Err(SioError::Protocol(format!(
                "unexpected packet while joining: {t:?}"
            )));
        }
    }

    let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(256);
    let acks: AckMap = Arc::default();
    let client = SioClient {
        out: out_tx.clone(),
        acks: acks.clone(),
        next_ack: Arc::new(AtomicU64::new(1)),
        prefix: prefix.clone(),
    };
    // The server must ping within interval + timeout, or the link is dead.
    let silence = Duration::from_millis(ping_interval + ping_timeout);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let reason = loop {
            tokio::select! {
                frame = tokio::time::timeout(silence, stream.next()) => {
                    let text = match frame {
                        Err(_) => break format!("no Engine.IO ping for {silence:?}"),
                        Ok(None) => break "connection closed by the server".to_owned(),
                        Ok(Some(Err(e))) => break format!("connection lost: {e}"),
                        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                        Ok(Some(Ok(Message::Close(_)))) => break "connection closed by the server".to_owned(),
                        Ok(Some(Ok(_))) => continue,
                    };
                    match handle_packet(&text, &prefix, &acks) {
                        Packet::Ping => {
                            if sink.send(Message::Text("3".into())).await.is_err() {
                                break "connection lost while answering a ping".to_owned();
                            }
                        }
                        Packet::Event(name, payload) => {
                            if in_tx.send(Incoming::Event(name, payload)).await.is_err() {
                                break "client dropped".to_owned();
                            }
                        }
                        Packet::Disconnect => break "disconnected by the server".to_owned(),
                        Packet::Other => {}
                    }
                }
                out = out_rx.recv() => {
                    let Some(text) = out else {
                        let _ = sink.send(Message::Text(format!("41{prefix}").into())).await;
                        let _ = sink.close().await;
                        break "closed by the agent".to_owned();
                    };
                    if let Err(e) = sink.send(Message::Text(text.into())).await {
                        break format!("connection lost while sending: {e}");
                    }
                }
            }
        };
        // Pending acks will never come.
        acks.lock().expect("ack lock").clear();
        let _ = in_tx.send(Incoming::Closed(reason)).await;
    });
    Ok((client, in_rx))
}

enum Packet {
    Ping,
    Event(String, Value),
    Disconnect,
    Other,
}

fn handle_packet(text: &str, prefix: &str, acks: &AckMap) -> Packet {
    if text == "2" {
        return Packet::Ping;
    }
    if text == "1" {
        return Packet::Disconnect;
    }
    let Some(sio) = text.strip_prefix('4') else {
        return Packet::Other;
    };
    let (kind, rest) = sio.split_at(sio.len().min(1));
    let Some(body) = rest.strip_prefix(prefix) else {
        return Packet::Other;
    };
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    let (id, json) = body.split_at(digits);
    match kind {
        "1" => Packet::Disconnect,
        "2" => match serde_json::from_str::<Value>(json) {
            Ok(Value::Array(mut a)) if a.first().is_some_and(Value::is_string) => {
                let name = a.remove(0).as_str().unwrap_or_default().to_owned();
                Packet::Event(name, a.into_iter().next().unwrap_or(Value::Null))
            }
            _ => Packet::Other,
        },
        "3" => {
            if let (Ok(id), Ok(Value::Array(mut a))) =
                (id.parse::<u64>(), serde_json::from_str::<Value>(json))
                && let Some(tx) = acks.lock().expect("ack lock").remove(&id)
            {
                let _ = tx.send(if a.is_empty() {
                    Value::Null
                } else {
                    a.remove(0)
                });
            }
            Packet::Other
        }
        _ => Packet::Other,
    }
}

impl SioClient {
    /// Emits an event without asking for an acknowledgement.
    pub async fn emit(&self, name: &str, payload: &Value) -> Result<(), SioError> {
        let text = format!("42{}{}", self.prefix, serde_json::json!([name, payload]));
        self.out.send(text).await.map_err(|_| SioError::Closed)
    }

    /// Emits an event with an ack id and waits for the server's ack value.
    pub async fn emit_with_ack(
        &self,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, SioError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().expect("ack lock").insert(id, tx);
        let text = format!(
            "42{}{id}{}",
            self.prefix,
            serde_json::json!([name, payload])
        );
        if self.out.send(text).await.is_err() {
            self.acks.lock().expect("ack lock").remove(&id);
            return Err(SioError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(SioError::Closed),
            Err(_) => {
                self.acks.lock().expect("ack lock").remove(&id);
                Err(SioError::Timeout(timeout))
            }
        }
    }
}

async fn next_text<S>(ws: &mut S, timeout: Duration) -> Result<String, SioError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) => return Err(SioError::Timeout(timeout)),
            Ok(None) => return Err(SioError::Closed),
            Ok(Some(Err(e))) => return Err(classify(e)),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(Message::Close(_)))) => return Err(SioError::Closed),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn send<S>(ws: &mut S, text: String) -> Result<(), SioError>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    ws.send(Message::Text(text.into())).await.map_err(classify)
}

fn classify(e: tokio_tungstenite::tungstenite::Error) -> SioError {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Tls(t) => SioError::Handshake(t.to_string()),
        E::Url(u) => SioError::InvalidUrl(u.to_string()),
        E::Http(resp) => SioError::Handshake(format!(
            "HTTP {} instead of a WebSocket upgrade",
            resp.status()
        )),
        E::Io(io) => SioError::Transport(io.to_string()),
        other => SioError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_keep_only_scheme_and_authority() {
        let u = |a: &str| websocket_url(a, "/socket.io/");
        assert_eq!(
            u("https://api.example.com").unwrap(),
            "wss://api.example.com/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            u("http://127.0.0.1:8080/prefix").unwrap(),
            "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            websocket_url("https://a", "sio/").unwrap(),
            "wss://a/sio/?EIO=4&transport=websocket"
        );
        assert!(matches!(u("ftp://x"), Err(SioError::InvalidUrl(_))));
        assert!(matches!(u("https://"), Err(SioError::InvalidUrl(_))));
        assert!(matches!(u("nope"), Err(SioError::InvalidUrl(_))));
    }

    #[test]
    fn packets_are_parsed() {
        let acks: AckMap = Arc::default();
        let p = "/agent-realtime,";
        assert!(matches!(handle_packet("2", p, &acks), Packet::Ping));
        match handle_packet(
            r#"42/agent-realtime,["terminal.stop",{"reason":null}]"#,
            p,
            &acks,
        ) {
            Packet::Event(name, v) => {
                assert_eq!(name, "terminal.stop");
                assert!(v["reason"].is_null());
            }
            _ => panic!("not an event"),
        }
        assert!(matches!(
            handle_packet("41/agent-realtime,", p, &acks),
            Packet::Disconnect
        ));
        // Other namespaces and garbage are ignored, never a panic.
        for junk in [
            "42/other,[\"x\"]",
            "4",
            "",
            "42/agent-realtime,",
            "42/agent-realtime,{",
            "43/agent-realtime,x[",
            "9",
        ] {
            assert!(
                matches!(handle_packet(junk, p, &acks), Packet::Other),
                "{junk}"
            );
        }
        let (tx, mut rx) = oneshot::channel();
        acks.lock().unwrap().insert(7, tx);
        handle_packet(r#"43/agent-realtime,7[{"ok":true}]"#, p, &acks);
        assert_eq!(rx.try_recv().unwrap()["ok"], true);
    }
}

//! The Socket.IO gateway driven by a raw Engine.IO/Socket.IO client over a
//! WebSocket (no agent code): authentication, keepalive, metrics
//! validation, socket replacement, terminals and their server timers.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Sio, now};
use serde_json::json;
use testbed::model::SessionStatus;
use testbed::{Testbed, TestbedConfig};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn auth_ack_presence_and_versions() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-sock");
    let mut s = Sio::connect(tb.addr()).await;
    let ack = s
        .emit_ack(
            "agent.auth",
            json!({"type": "agent.auth", "nodeId": node, "agentToken": token,
                   "agentVersion": "1.0.2", "platformVersion": "12", "kernelVersion": "6.1.0",
                   "rootAccess": {"appliedProfile": "off", "lastAppliedAt": now()}}),
        )
        .await
        .unwrap();
    assert_eq!(ack["authenticated"], true);
    assert_eq!(ack["rootAccess"]["profile"], "off");
    let event = s.expect("agent.auth.ack").await.unwrap();
    assert_eq!(event["nodeId"], node);
    let n = tb.node(&node).unwrap();
    assert!(n.online);
    assert_eq!(n.platform_version.as_deref(), Some("12"));
    assert_eq!(n.root_applied.unwrap()["appliedProfile"], "off");

    let ping = s
        .emit_ack(
            "agent.ping",
            json!({"type": "agent.ping", "timestamp": now()}),
        )
        .await
        .unwrap();
    assert_eq!(
        (ping["ok"].clone(), ping["type"].clone()),
        (json!(true), json!("agent.ping"))
    );

    // Setting the desired profile pushes root-access.updated.
    tb.set_root_profile(&node, shared::api::RootProfile::Operational)
        .unwrap();
    let upd = s.expect("root-access.updated").await.unwrap();
    assert_eq!(upd["rootAccess"]["profile"], "operational");

    // The socket going away makes the node offline immediately.
    drop(s);
    let offline = tb
        .wait_for(Duration::from_secs(5), |tb| {
            tb.node(&node).filter(|n| !n.online)
        })
        .await;
    assert!(offline.is_some());
}

#[tokio::test]
async fn auth_failures_disconnect() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-bad");
    let cases = [
        (
            json!({"type": "agent.auth", "nodeId": node, "agentToken": "wrong-token-000000"}),
            "Invalid agent token",
        ),
        (
            json!({"type": "agent.auth", "nodeId": "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61", "agentToken": token}),
            "was not found",
        ),
        // HEAD's `location` is not a known key: auth fails (§11.3).
        (
            json!({"type": "agent.auth", "nodeId": node, "agentToken": token, "location": {"region": "x"}}),
            "Bad Request Exception",
        ),
        (
            json!({"nodeId": node, "agentToken": token}),
            "Bad Request Exception",
        ),
        (
            json!({"type": "agent.auth", "nodeId": node, "agentToken": "short"}),
            "Bad Request Exception",
        ),
    ];
    for (payload, message) in cases {
        let mut s = Sio::connect(tb.addr()).await;
        let ack = s.emit_ack("agent.auth", payload.clone()).await.unwrap();
        assert_eq!(ack["authenticated"], false, "{payload}");
        assert!(
            ack["message"].as_str().unwrap().contains(message),
            "{payload}: {ack}"
        );
        let err = s.expect("agent.auth.error").await;
        assert!(err.is_some(), "{payload}");
        assert!(s.wait_closed().await, "{payload}: socket stays open");
    }
    assert!(!tb.node(&node).unwrap().online);
}

#[tokio::test]
async fn events_before_auth_disconnect_but_unknown_events_do_not() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-order");

    let mut s = Sio::connect(tb.addr()).await;
    s.emit("agent.unknown", json!({})).await;
    let err = s.expect("agent.error").await.unwrap();
    assert_eq!(err["code"], "UNKNOWN_EVENT");
    assert_eq!(err["message"], "Unsupported event: agent.unknown");
    assert!(!s.closed, "an unknown event does not disconnect");

    let ack = s
        .emit_ack("agent.ping", json!({"type": "agent.ping"}))
        .await
        .expect("the refusal is acknowledged before the disconnect");
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["message"], "Socket is not authenticated");
    assert!(
        s.wait_closed().await,
        "an event before agent.auth disconnects"
    );

    // After auth, the same socket may keep going.
    let mut s = Sio::connect(tb.addr()).await;
    assert_eq!(s.auth(&node, &token).await.unwrap()["authenticated"], true);
    s.emit("agent.nope", json!({})).await;
    assert!(s.expect("agent.error").await.is_some());
    let ping = s
        .emit_ack("agent.ping", json!({"type": "agent.ping"}))
        .await
        .unwrap();
    assert_eq!(ping["ok"], true);
}

#[tokio::test]
async fn metrics_validation() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-m");
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&node, &token).await.unwrap();
    let good = json!({"type": "agent.metrics", "nodeId": node, "agentToken": token,
        "agentVersion": "1.0.2", "timestamp": now(), "cpuUsage": 12.5, "memoryUsage": 63.1,
        "diskUsage": 58.4, "temperature": 45.0,
        "networkStats": [{"interface": "eth0", "bytesSent": 2000, "bytesRecv": 1000, "packetsSent": 20,
                          "packetsRecv": 10, "errorsIn": 0, "errorsOut": 0, "dropIn": 0, "dropOut": 0}]});
    let ack = s.emit_ack("agent.metrics", good.clone()).await.unwrap();
    assert_eq!(ack["ok"], true, "{ack}");
    let stored = tb.metrics(&node);
    assert_eq!(stored.len(), 1);
    // The array networkStats was moved to networks and summarised.
    assert_eq!(stored[0]["networkStats"]["txBytes"], 2000);

    let mut no_type = good.clone();
    no_type.as_object_mut().unwrap().remove("type");
    let ack = s.emit_ack("agent.metrics", no_type).await.unwrap();
    assert_eq!(ack["ok"], false);
    let err = s.expect("agent.error").await.unwrap();
    assert_eq!(err["eventType"], "agent.metrics");

    let mut no_cpu = good.clone();
    no_cpu.as_object_mut().unwrap().remove("cpuUsage");
    s.emit_ack("agent.metrics", no_cpu).await.unwrap();
    let err = s.expect("agent.error").await.unwrap();
    assert_eq!(err["message"], "cpuUsage is required");

    let mut extra = good;
    extra["location"] = json!("x");
    assert_eq!(
        s.emit_ack("agent.metrics", extra).await.unwrap()["ok"],
        false
    );
    assert_eq!(
        tb.metrics(&node).len(),
        1,
        "rejected samples are not stored"
    );
    assert!(!s.closed, "a rejected event does not disconnect");
}

#[tokio::test]
async fn a_second_auth_for_the_node_replaces_the_first_socket() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-twice");
    let mut first = Sio::connect(tb.addr()).await;
    first.auth(&node, &token).await.unwrap();
    let mut second = Sio::connect(tb.addr()).await;
    second.auth(&node, &token).await.unwrap();
    assert!(
        first.wait_closed().await,
        "the older socket is disconnected"
    );
    assert!(
        tb.node(&node).unwrap().online,
        "the node stays online on the new socket"
    );
    let ping = second
        .emit_ack("agent.ping", json!({"type": "agent.ping"}))
        .await
        .unwrap();
    assert_eq!(ping["ok"], true);
}

#[tokio::test]
async fn terminal_round_trip() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("srv-term");
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&node, &token).await.unwrap();

    let session = tb.open_terminal(&node, 120, 34, false).unwrap();
    let start = s.expect("terminal.start").await.unwrap();
    assert_eq!(
        start,
        json!({"type": "terminal.start", "sessionId": session, "cols": 120, "rows": 34, "runAsRoot": false})
    );
    // Input is refused until the session is open.
    assert!(tb.terminal_input(&session, b"ls\n").is_err());

    let ack = s
        .emit_ack("terminal.opened", json!({"type": "terminal.opened", "sessionId": session, "cols": 120, "rows": 34, "timestamp": now()}))
        .await
        .unwrap();
    assert_eq!(ack["ok"], true);
    assert_eq!(tb.terminal(&session).unwrap().status, SessionStatus::Open);

    tb.terminal_input(&session, b"echo hi\n\x03").unwrap();
    let input = s.expect("terminal.input").await.unwrap();
    assert_eq!(input["payload"], b64(b"echo hi\n\x03"));
    tb.terminal_resize(&session, 160, 48).unwrap();
    let resize = s.expect("terminal.resize").await.unwrap();
    assert_eq!(
        (resize["cols"].clone(), resize["rows"].clone()),
        (json!(160), json!(48))
    );

    // Output: raw bytes in base64, split anywhere (even inside UTF-8).
    let text = "héllo\r\n".as_bytes();
    for part in [&text[..2], &text[2..]] {
        let ack = s
            .emit_ack(
                "terminal.output",
                json!({"type": "terminal.output", "sessionId": session,
                "direction": "stdout", "payload": b64(part), "timestamp": now()}),
            )
            .await
            .unwrap();
        assert_eq!(ack["ok"], true);
    }
    let bad = s
        .emit_ack(
            "terminal.output",
            json!({"sessionId": session, "direction": "stdout", "payload": "%%%"}),
        )
        .await
        .unwrap();
    assert_eq!(bad["ok"], false, "payload must be base64");
    let too_long = s
        .emit_ack(
            "terminal.output",
            json!({"sessionId": session, "direction": "stdout", "payload": "A".repeat(65_540)}),
        )
        .await
        .unwrap();
    assert_eq!(too_long["ok"], false);
    assert_eq!(tb.terminal(&session).unwrap().transcript, text);

    tb.stop_terminal(&session, Some("Operator requested stop"))
        .unwrap();
    let stop = s.expect("terminal.stop").await.unwrap();
    assert_eq!(stop["reason"], "Operator requested stop");
    s.emit_ack(
        "terminal.exited",
        json!({"type": "terminal.exited", "sessionId": session,
        "exitCode": 0, "reason": "Operator requested stop", "timestamp": now()}),
    )
    .await
    .unwrap();
    let t = tb.terminal(&session).unwrap();
    assert_eq!((t.status, t.exit_code), (SessionStatus::Closed, Some(0)));

    // An error report fails the session; unknown sessions are errors too.
    let other = tb.open_terminal(&node, 80, 24, false).unwrap();
    s.expect("terminal.start").await.unwrap();
    s.emit_ack(
        "terminal.error",
        json!({"sessionId": other, "message": "no shell could be started"}),
    )
    .await
    .unwrap();
    assert_eq!(tb.terminal(&other).unwrap().status, SessionStatus::Failed);
    let ack = s
        .emit_ack(
            "terminal.opened",
            json!({"sessionId": "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61"}),
        )
        .await
        .unwrap();
    assert_eq!(ack["ok"], false);
    let long = s
        .emit_ack(
            "terminal.error",
            json!({"sessionId": other, "message": "x".repeat(1001)}),
        )
        .await
        .unwrap();
    assert_eq!(
        long["ok"], false,
        "terminal.error message is at most 1000 characters"
    );
    // A root terminal needs an applied terminal profile.
    assert!(tb.open_terminal(&node, 80, 24, true).is_err());
}

#[tokio::test]
async fn terminal_server_timers_and_transcript_cap() {
    let tb = Testbed::start(TestbedConfig {
        terminal_open_timeout: Duration::from_millis(300),
        terminal_exit_timeout: Duration::from_millis(300),
        terminal_transcript_cap: 10,
        ..TestbedConfig::default()
    })
    .await
    .unwrap();
    let (node, token) = tb.create_node("srv-timers");
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&node, &token).await.unwrap();

    // No terminal.opened in time → failed.
    let never = tb.open_terminal(&node, 120, 34, false).unwrap();
    let failed = tb
        .wait_for(Duration::from_secs(5), |tb| {
            tb.terminal(&never)
                .filter(|t| t.status == SessionStatus::Failed)
        })
        .await
        .unwrap();
    assert!(failed.error.unwrap().contains("did not open"));

    // Stop without terminal.exited → closed by the server with the stop reason.
    let quiet = tb.open_terminal(&node, 120, 34, false).unwrap();
    s.emit_ack("terminal.opened", json!({"sessionId": quiet}))
        .await
        .unwrap();
    tb.stop_terminal(&quiet, Some("bye")).unwrap();
    let closed = tb
        .wait_for(Duration::from_secs(5), |tb| {
            tb.terminal(&quiet)
                .filter(|t| t.status == SessionStatus::Closed)
        })
        .await
        .unwrap();
    assert_eq!(closed.reason.as_deref(), Some("bye"));

    // Output beyond the transcript cap → terminal.stop transcript-overflow.
    let chatty = tb.open_terminal(&node, 120, 34, false).unwrap();
    s.emit_ack("terminal.opened", json!({"sessionId": chatty}))
        .await
        .unwrap();
    s.emit_ack(
        "terminal.output",
        json!({"sessionId": chatty, "direction": "stdout", "payload": b64(b"0123456789abc")}),
    )
    .await
    .unwrap();
    let mut stop = s.expect("terminal.stop").await.unwrap();
    while stop["sessionId"] != chatty {
        stop = s.expect("terminal.stop").await.unwrap();
    }
    assert_eq!(stop["reason"], "transcript-overflow");
    assert_eq!(tb.terminal(&chatty).unwrap().transcript, b"0123456789");
}

#[tokio::test]
async fn ping_watchdog_disconnects_a_silent_socket() {
    let tb = Testbed::start(TestbedConfig {
        ping_watchdog: Some(Duration::from_millis(400)),
        ..TestbedConfig::default()
    })
    .await
    .unwrap();
    let (node, token) = tb.create_node("srv-silent");
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&node, &token).await.unwrap();
    assert!(s.wait_closed().await);
    assert!(
        tb.events()
            .iter()
            .any(|e| e.payload["reason"] == "heartbeat-timeout")
    );
}

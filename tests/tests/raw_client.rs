//! One node's whole life against the testbed with no agent code: bootstrap,
//! socket auth, a task from claim to completion over HTTP, and a terminal
//! session from start to exit over Socket.IO.

mod common;

use base64::Engine as _;
use common::{Agent, Sio, now, request};
use serde_json::json;
use shared::api::task::TaskStatus;
use testbed::model::SessionStatus;
use testbed::{Testbed, TestbedConfig};

#[tokio::test]
async fn task_and_terminal_round_trip() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let bootstrap = tb.create_install("raw");
    let r = request(
        tb.addr(),
        "POST",
        "/api/v1/node-installs/consume",
        &[],
        Some(&json!({"token": bootstrap, "hostname": "raw-host",
                     "additionalInfo": {"os": "debian", "arch": "amd64", "agentVersion": "0.1.0"}})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201);
    let a = Agent {
        addr: tb.addr(),
        node_id: r.body["nodeId"].as_str().unwrap().into(),
        token: r.body["agentToken"].as_str().unwrap().into(),
    };
    let mut s = Sio::connect(tb.addr()).await;
    assert_eq!(
        s.auth(&a.node_id, &a.token).await.unwrap()["authenticated"],
        true
    );

    // Task: claim → accepted → started → logs → control → completed.
    let id = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "hostname"}))
        .unwrap();
    assert_eq!(a.claim(5000).await.as_deref(), Some(id.as_str()));
    let base = format!("/agent/tasks/{id}");
    assert_eq!(
        a.post(
            &format!("{base}/accepted"),
            json!({"taskId": id, "timestamp": now()})
        )
        .await
        .status,
        200
    );
    assert_eq!(a.start(&id).await.status, 200);
    for (stream, line) in [
        ("system", "running shell.exec command via /bin/sh"),
        ("stdout", "raw-host"),
        ("system", "command finished with exit code 0"),
    ] {
        let r = a
            .post(
                &format!("{base}/logs"),
                json!({"taskId": id, "stream": stream, "line": line, "timestamp": now()}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let c = a.call("GET", &format!("{base}/control"), None).await;
    assert_eq!(c.body["cancelRequested"], false);
    let r = a
        .post(
            &format!("{base}/completed"),
            json!({"taskId": id, "status": "success", "exitCode": 0,
            "durationMs": 12, "timestamp": now(), "output": "raw-host\n"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = tb.task(&id).unwrap();
    assert_eq!(t.status, TaskStatus::Success);
    assert_eq!(t.output.as_deref(), Some("raw-host\n"));
    let logs: Vec<String> = tb
        .task_logs(&id, 100)
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(
        logs,
        [
            "running shell.exec command via /bin/sh",
            "raw-host",
            "command finished with exit code 0"
        ]
    );

    // Terminal: start → opened → input → output → stop → exited.
    let session = tb.open_terminal(&a.node_id, 100, 30, false).unwrap();
    let start = s.expect("terminal.start").await.unwrap();
    assert_eq!(start["sessionId"], session);
    s.emit("terminal.opened", json!({"type": "terminal.opened", "sessionId": session, "cols": 100, "rows": 30, "timestamp": now()})).await;
    tb.wait_for(std::time::Duration::from_secs(5), |tb| {
        tb.terminal(&session)
            .filter(|t| t.status == SessionStatus::Open)
    })
    .await
    .expect("session opens");
    tb.terminal_input(&session, b"whoami\n").unwrap();
    let input = s.expect("terminal.input").await.unwrap();
    let typed = base64::engine::general_purpose::STANDARD
        .decode(input["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(typed, b"whoami\n");
    let echo = base64::engine::general_purpose::STANDARD.encode(b"whoami\r\nnoderax\r\n$ ");
    s.emit("terminal.output", json!({"type": "terminal.output", "sessionId": session, "direction": "stdout", "payload": echo, "timestamp": now()})).await;
    tb.stop_terminal(&session, None).unwrap();
    let stop = s.expect("terminal.stop").await.unwrap();
    assert!(stop["reason"].is_null());
    s.emit("terminal.exited", json!({"type": "terminal.exited", "sessionId": session, "exitCode": 0, "reason": "terminal session exited", "timestamp": now()})).await;
    let t = tb
        .wait_for(std::time::Duration::from_secs(5), |tb| {
            tb.terminal(&session)
                .filter(|t| t.status == SessionStatus::Closed)
        })
        .await
        .unwrap();
    assert_eq!(t.transcript, b"whoami\r\nnoderax\r\n$ ");
    assert_eq!(t.exit_code, Some(0));
    assert_eq!(t.reason.as_deref(), Some("terminal session exited"));
}

//! Control polling and the HTTP heartbeat against the testbed.

use std::time::Duration;

use noderax_agent::api_client::ApiClient;
use noderax_agent::control_watch::{self, ControlEvent};
use serde_json::json;
use shared::identity::Identity;
use testbed::{Testbed, TestbedConfig};
use tokio::sync::watch;

async fn setup(config: TestbedConfig) -> (Testbed, ApiClient, Identity) {
    let tb = Testbed::start(config).await.unwrap();
    let (node_id, agent_token) = tb.create_node("watcher");
    let id = Identity {
        node_id,
        agent_token,
    };
    let client = ApiClient::new(
        &tb.api_url(),
        noderax_agent::tls::client_config(None).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_identity(&id);
    (tb, client, id)
}

async fn running_task(tb: &Testbed, client: &ApiClient, node: &str) -> String {
    let id = tb
        .create_task(node, "shell.exec", json!({"command": "sleep 100"}))
        .unwrap();
    let _: serde_json::Value = client
        .post("/agent/tasks/claim", &json!({"waitMs": 0}))
        .await
        .unwrap();
    let _: serde_json::Value = client
        .post(&format!("/agent/tasks/{id}/started"), &json!({}))
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cancel_and_server_side_endings_are_seen() {
    let (tb, client, id) = setup(TestbedConfig {
        running_timeout: Duration::from_millis(600),
        stale_sweep: Duration::from_millis(100),
        ..TestbedConfig::default()
    })
    .await;
    let task = running_task(&tb, &client, &id.node_id).await;
    let watching = {
        let (client, task) = (client.clone(), task.clone());
        tokio::spawn(async move {
            control_watch::watch(&client, &task, Duration::from_millis(50)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !watching.is_finished(),
        "a running task without a cancel request keeps being watched"
    );
    tb.cancel_task(&task, "Stopped by operator").unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), watching)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        ControlEvent::CancelRequested {
            reason: Some("Stopped by operator".into())
        }
    );

    // The stale detector fails a task that runs too long: stop, no completion.
    let other = running_task(&tb, &client, &id.node_id).await;
    let ev = tokio::time::timeout(
        Duration::from_secs(5),
        control_watch::watch(&client, &other, Duration::from_millis(50)),
    )
    .await
    .unwrap();
    assert!(
        matches!(ev, ControlEvent::GoneOnServer { ref why } if why.contains("failed")),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_only_while_the_socket_is_down() {
    let (tb, client, id) = setup(TestbedConfig::default()).await;
    let (socket_tx, socket_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let host = noderax_agent::host_facts::Host::detect();
    let beat = tokio::spawn(noderax_agent::heartbeat::run(
        client,
        id.clone(),
        host.clone(),
        Duration::from_millis(100),
        socket_rx,
        stop_rx,
    ));
    let beats = |tb: &Testbed| {
        tb.requests()
            .iter()
            .filter(|r| r.path.ends_with("/agent/heartbeat"))
            .count()
    };
    tb.wait_for(Duration::from_secs(5), |_| (beats(&tb) >= 2).then_some(()))
        .await
        .unwrap();
    let node = tb.node(&id.node_id).unwrap();
    assert!(node.online, "the heartbeat keeps the node online");
    assert_eq!(
        node.kernel_version.as_deref(),
        Some(host.kernel_version.as_str())
    );
    assert!(
        tb.requests()
            .iter()
            .all(|r| r.status == 200 || !r.path.ends_with("/heartbeat"))
    );
    socket_tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let n = beats(&tb);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        beats(&tb),
        n,
        "no heartbeat while the socket is authenticated"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), beat)
        .await
        .unwrap()
        .unwrap();
}

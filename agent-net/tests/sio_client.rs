//! The agent's Socket.IO client against the testbed's socketioxide gateway.

use std::time::Duration;

use noderax_agent::sio_client::{self, Incoming, SioConfig, SioError};
use serde_json::json;
use testbed::{Testbed, TestbedConfig};

fn config(tb: &Testbed, namespace: &str) -> SioConfig {
    SioConfig {
        // A path prefix in api_url is dropped for the socket (§8.1).
        api_url: format!("{}/ignored-prefix", tb.api_url()),
        path: "/socket.io/".into(),
        namespace: namespace.into(),
        tls: noderax_agent::tls::client_config(None).unwrap(),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn auth_acks_and_server_events() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node, token) = tb.create_node("sio-client");
    let (client, mut events) = sio_client::connect(&config(&tb, "/agent-realtime"))
        .await
        .unwrap();
    let ack = client
        .emit_with_ack(
            "agent.auth",
            &json!({"type": "agent.auth", "nodeId": node, "agentToken": token,
                    "agentVersion": "1", "platformVersion": "12", "kernelVersion": "6"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ack["authenticated"], true);
    match events.recv().await.unwrap() {
        Incoming::Event(name, payload) => {
            assert_eq!(name, "agent.auth.ack");
            assert_eq!(payload["nodeId"], node);
        }
        other => panic!("{other:?}"),
    }
    // Plain emit, then a server-initiated event.
    client
        .emit("agent.ping", &json!({"type": "agent.ping"}))
        .await
        .unwrap();
    tb.set_root_profile(&node, shared::api::RootProfile::Operational)
        .unwrap();
    let Incoming::Event(name, payload) = events.recv().await.unwrap() else {
        panic!("closed")
    };
    assert_eq!(name, "root-access.updated");
    assert_eq!(payload["rootAccess"]["profile"], "operational");
    let pings = tb
        .events()
        .iter()
        .filter(|e| e.event == "agent.ping")
        .count();
    assert_eq!(pings, 1);

    // A server-side disconnect ends the stream with a reason.
    tb.disconnect_node(&node);
    match tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
    {
        Some(Incoming::Closed(reason)) => assert!(reason.contains("disconnected"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.emit("agent.ping", &json!({})).await,
        Err(SioError::Closed)
    );
}

#[tokio::test]
async fn an_unknown_namespace_is_refused() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let err = sio_client::connect(&config(&tb, "/nope"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SioError::NamespaceRefused { .. }), "{err}");
}

#[tokio::test]
async fn connection_failures_are_classified() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = SioConfig {
        api_url: format!("http://127.0.0.1:{port}"),
        path: "/socket.io/".into(),
        namespace: "/agent-realtime".into(),
        tls: noderax_agent::tls::client_config(None).unwrap(),
        connect_timeout: Duration::from_secs(2),
    };
    assert!(matches!(
        sio_client::connect(&cfg).await.err().unwrap(),
        SioError::Transport(_)
    ));
    // An HTTP server that is not Socket.IO: the upgrade is refused.
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let cfg = SioConfig {
        api_url: tb.api_url(),
        path: "/api/v1/".into(),
        ..cfg
    };
    assert!(matches!(
        sio_client::connect(&cfg).await.err().unwrap(),
        SioError::Handshake(_)
    ));
}

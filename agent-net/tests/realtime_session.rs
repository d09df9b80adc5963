//! The realtime session against the testbed's Socket.IO gateway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use noderax_agent::metrics::Collector;
use noderax_agent::realtime_session::{self, SessionSettings, SessionStatus};
use noderax_agent::root_access::RootAccess;
use noderax_agent::sio_client::SioConfig;
use serde_json::json;
use shared::api::RootProfile;
use shared::identity::Identity;
use testbed::{Direction, Testbed, TestbedConfig};
use tokio::sync::{mpsc, watch};

/// Generous: only a hang should reach it (a loaded machine is slow).
const WAIT: Duration = Duration::from_secs(30);

struct Session {
    tb: Testbed,
    node_id: String,
    status: watch::Receiver<SessionStatus>,
    out: mpsc::Sender<(String, serde_json::Value)>,
    inbound: mpsc::Receiver<(String, serde_json::Value)>,
    stop: watch::Sender<bool>,
    root: Arc<Mutex<RootAccess>>,
}

async fn start(token_override: Option<&str>) -> Session {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node_id, agent_token) = tb.create_node("realtime");
    let settings = SessionSettings {
        sio: SioConfig {
            api_url: tb.api_url(),
            path: "/socket.io/".into(),
            namespace: "/agent-realtime".into(),
            tls: noderax_agent::tls::client_config(None).unwrap(),
            connect_timeout: Duration::from_secs(5),
        },
        identity: Identity {
            node_id: node_id.clone(),
            agent_token: token_override.map(str::to_owned).unwrap_or(agent_token),
        },
        host: noderax_agent::host_facts::Host::detect(),
        ping_interval: Duration::from_millis(200),
        metrics_interval: Duration::from_millis(500),
        auth_timeout: Duration::from_secs(5),
        jitter: 0.2,
    };
    let root = Arc::new(Mutex::new(RootAccess::new(RootProfile::Operational)));
    let (out, out_rx) = mpsc::channel(16);
    let (in_tx, inbound) = mpsc::channel(16);
    let (status_tx, status) = watch::channel(SessionStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(realtime_session::run(
        settings,
        root.clone(),
        Collector::new(),
        out_rx,
        in_tx,
        status_tx,
        stop_rx,
    ));
    Session {
        tb,
        node_id,
        status,
        out,
        inbound,
        stop,
        root,
    }
}

fn count(tb: &Testbed, event: &str) -> usize {
    tb.events()
        .iter()
        .filter(|e| e.event == event && e.direction == Direction::In)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_pings_and_sends_valid_metrics() {
    let mut s = start(None).await;
    tokio::time::timeout(WAIT, s.status.wait_for(|st| st.authenticated))
        .await
        .unwrap()
        .unwrap();
    let node = s.tb.node(&s.node_id).unwrap();
    assert!(node.online);
    assert_eq!(
        node.agent_version.as_deref(),
        Some(shared::build_info::VERSION)
    );
    assert!(
        node.kernel_version.is_some() && node.platform_version.is_some(),
        "all three versions are sent"
    );
    assert_eq!(node.root_applied.unwrap()["appliedProfile"], "off");
    // A metrics sample right after auth, then periodic ones; all accepted.
    s.tb.wait_for(WAIT, |tb| (tb.metrics(&s.node_id).len() >= 3).then_some(()))
        .await
        .unwrap();
    assert!(count(&s.tb, "agent.ping") >= 5);
    assert!(
        !s.tb.events().iter().any(|e| e.event == "agent.error"),
        "every event passed validation"
    );
    let sample = &s.tb.metrics(&s.node_id)[0];
    assert!(sample["cpuUsage"].as_f64().unwrap() >= 0.0);

    // root-access.updated is applied and re-announced with a new agent.auth.
    s.tb.set_root_profile(&s.node_id, RootProfile::All).unwrap();
    s.tb.wait_for(WAIT, |tb| {
        (tb.node(&s.node_id).unwrap().root_applied.unwrap()["appliedProfile"] == "operational")
            .then_some(())
    })
    .await
    .expect("the applied profile reached the server");
    assert_eq!(
        s.root.lock().unwrap().applied_profile(),
        RootProfile::Operational
    );

    // Server events go to the rest of the agent; outbound events go out.
    let session = s.tb.open_terminal(&s.node_id, 120, 34, false).unwrap();
    let (name, payload) = tokio::time::timeout(WAIT, s.inbound.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (name.as_str(), payload["sessionId"].as_str()),
        ("terminal.start", Some(session.as_str()))
    );
    s.out
        .send((
            "terminal.opened".into(),
            json!({"type": "terminal.opened", "sessionId": session, "cols": 120, "rows": 34}),
        ))
        .await
        .unwrap();
    s.tb.wait_for(WAIT, |tb| {
        (tb.terminal(&session).unwrap().status == testbed::model::SessionStatus::Open).then_some(())
    })
    .await
    .unwrap();
    s.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_forced_disconnect() {
    let mut s = start(None).await;
    tokio::time::timeout(WAIT, s.status.wait_for(|st| st.authenticated))
        .await
        .unwrap()
        .unwrap();
    assert!(s.tb.disconnect_node(&s.node_id));
    tokio::time::timeout(WAIT, s.status.wait_for(|st| !st.authenticated))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        s.status.wait_for(|st| st.authenticated && st.connects == 2),
    )
    .await
    .expect("re-authenticated")
    .unwrap();
    assert!(s.tb.node(&s.node_id).unwrap().online);
    s.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_back_off_and_say_why() {
    let mut s = start(Some(
        "0000000000000000000000000000000000000000000000000000000000000000",
    ))
    .await;
    // Generous: only a hang should fail this wait.
    // (On a loaded machine an earlier attempt may time out first.)
    tokio::time::timeout(
        Duration::from_secs(30),
        s.status.wait_for(|st| {
            st.last_error.as_deref().is_some_and(|e| {
                e.contains("authentication error") && e.contains("Invalid agent token")
            })
        }),
    )
    .await
    .expect("the refusal is classified as an authentication error with the server's reason")
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 1 s, then 2 s (±20 %): at most three attempts in these ~3 s (a
    // slow machine makes fewer, never more).
    let auths = count(&s.tb, "agent.auth");
    assert!((1..=3).contains(&auths), "{auths} auth attempts");
    assert!(!s.tb.node(&s.node_id).unwrap().online);
    s.stop.send(true).unwrap();
}

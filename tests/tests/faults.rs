//! Every fault-injection knob, shown by its effect on a raw client.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Sio, request};
use serde_json::json;
use testbed::{FaultAction, FaultRule, RouteMatch, Testbed, TestbedConfig};

async fn setup() -> (Testbed, Agent) {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node_id, token) = tb.create_node("srv-faults");
    let a = Agent {
        addr: tb.addr(),
        node_id,
        token,
    };
    (tb, a)
}

fn rule(route: &str, action: FaultAction, remaining: Option<u32>) -> FaultRule {
    FaultRule {
        route: RouteMatch::new(route),
        action,
        remaining,
        probability: 1.0,
    }
}

async fn claim_status(a: &Agent) -> Result<common::Resp, String> {
    let h = a.headers();
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(
        a.addr,
        "POST",
        "/api/v1/agent/tasks/claim",
        &h,
        Some(&json!({"waitMs": 0})),
    )
    .await
}

#[tokio::test]
async fn latency_delays_only_matching_routes() {
    let (tb, a) = setup().await;
    tb.add_fault(rule(
        "/agent/tasks/claim",
        FaultAction::Latency(Duration::from_millis(400)),
        None,
    ));
    let t = Instant::now();
    assert_eq!(claim_status(&a).await.unwrap().status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    // Another route is not delayed by this rule (the lower bound above is
    // what the knob guarantees; here we only check the other route works).
    let r = a
        .call(
            "GET",
            "/agent/tasks/0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61/control",
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn scripted_statuses_with_retry_after() {
    let (tb, a) = setup().await;
    tb.add_fault(rule(
        "/agent/tasks/claim",
        FaultAction::Status {
            code: 503,
            retry_after: None,
        },
        Some(2),
    ));
    tb.add_fault(rule(
        "/agent/tasks/*/logs",
        FaultAction::Status {
            code: 429,
            retry_after: Some(7),
        },
        Some(1),
    ));
    for _ in 0..2 {
        let r = claim_status(&a).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body["message"], "Internal server error");
        assert_eq!(r.body["path"], "/api/v1/agent/tasks/claim");
    }
    assert_eq!(
        claim_status(&a).await.unwrap().status,
        200,
        "the script ran out"
    );
    let r = a
        .post(
            "/agent/tasks/abc/logs",
            json!({"stream": "stdout", "line": "x"}),
        )
        .await;
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("7")));
    let recorded: Vec<_> = tb
        .requests()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .map(|r| r.status)
        .collect();
    assert_eq!(recorded, [503, 503, 429]);
}

#[tokio::test]
async fn random_errors_hit_some_requests() {
    let (tb, a) = setup().await;
    tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/claim"),
        action: FaultAction::Status {
            code: 500,
            retry_after: None,
        },
        remaining: None,
        probability: 0.5,
    });
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(claim_status(&a).await.unwrap().status);
    }
    let failed = statuses.iter().filter(|s| **s == 500).count();
    // P(all 100 on one side) = 2^-99.
    assert!(failed > 0 && failed < 100, "{failed} of 100 failed");
    assert!(statuses.iter().all(|s| *s == 500 || *s == 200));
}

#[tokio::test]
async fn dropped_connections_get_no_response() {
    let (tb, a) = setup().await;
    tb.add_fault(rule(
        "/agent/tasks/claim",
        FaultAction::DropConnection,
        Some(1),
    ));
    let err = claim_status(&a).await.unwrap_err();
    assert!(err.starts_with("request:"), "{err}");
    assert_eq!(claim_status(&a).await.unwrap().status, 200);
    let first = &tb.requests()[0];
    assert_eq!(
        (first.status, first.fault.as_deref()),
        (0, Some("dropped connection"))
    );
}

#[tokio::test]
async fn slow_responses_trickle_the_body() {
    let (tb, a) = setup().await;
    tb.add_fault(rule(
        "/agent/tasks/claim",
        FaultAction::SlowResponse {
            chunk: 20,
            delay: Duration::from_millis(20),
        },
        Some(1),
    ));
    let t = Instant::now();
    let r = claim_status(&a).await.unwrap();
    let chunks = r.raw.len().div_ceil(20) as u32;
    assert!(chunks >= 3);
    assert!(t.elapsed() >= Duration::from_millis(20) * chunks);
    assert_eq!(r.status, 200);
    assert!(
        r.body["task"].is_null(),
        "the body arrives complete: {:?}",
        r.raw
    );
}

#[tokio::test]
async fn outage_refuses_connections_and_cuts_sockets() {
    let (tb, a) = setup().await;
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&a.node_id, &a.token).await.unwrap();
    tb.outage(Duration::from_millis(800));
    assert!(s.wait_closed().await, "the socket is cut");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = claim_status(&a).await.unwrap_err();
    assert!(err.contains("connect"), "connections are refused: {err}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        claim_status(&a).await.unwrap().status,
        200,
        "served again after the window"
    );
    assert!(!tb.node(&a.node_id).unwrap().online);
}

#[tokio::test]
async fn forced_socket_disconnect() {
    let (tb, a) = setup().await;
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&a.node_id, &a.token).await.unwrap();
    assert!(tb.disconnect_node(&a.node_id));
    assert!(s.wait_closed().await);
    let offline = tb
        .wait_for(Duration::from_secs(5), |tb| {
            tb.node(&a.node_id).filter(|n| !n.online)
        })
        .await;
    assert!(offline.is_some());
    assert!(
        !tb.disconnect_node(&a.node_id),
        "nothing left to disconnect"
    );
}

#[tokio::test]
async fn faults_over_the_user_side_http_api() {
    let (tb, a) = setup().await;
    let r = request(
        tb.addr(),
        "POST",
        "/__testbed/faults",
        &[],
        Some(&json!({"route": "/agent/tasks/claim", "status": 429, "retryAfter": 3, "count": 1})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = claim_status(&a).await.unwrap();
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("3")));
    request(
        tb.addr(),
        "POST",
        "/__testbed/faults",
        &[],
        Some(&json!({"route": "*", "status": 500})),
    )
    .await
    .unwrap();
    assert_eq!(claim_status(&a).await.unwrap().status, 500);
    request(tb.addr(), "DELETE", "/__testbed/faults", &[], None)
        .await
        .unwrap();
    assert_eq!(claim_status(&a).await.unwrap().status, 200);
}

#[tokio::test]
async fn everything_is_recorded_with_a_timestamp() {
    let (tb, a) = setup().await;
    let mut s = Sio::connect(tb.addr()).await;
    s.auth(&a.node_id, &a.token).await.unwrap();
    claim_status(&a).await.unwrap();
    a.post("/agent/tasks/claim", json!({"waitMs": 0, "bogus": true}))
        .await;
    let reqs = tb.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].status, 400);
    assert_eq!(reqs[1].body["bogus"], true);
    assert!(reqs[0].at_ms <= reqs[1].at_ms);
    let events = tb.events();
    let names: Vec<(&str, testbed::Direction)> = events
        .iter()
        .map(|e| (e.event.as_str(), e.direction))
        .collect();
    assert_eq!(
        names,
        [
            ("agent.auth", testbed::Direction::In),
            ("agent.auth.ack", testbed::Direction::Out)
        ]
    );
    assert_eq!(events[1].node_id.as_deref(), Some(a.node_id.as_str()));
}

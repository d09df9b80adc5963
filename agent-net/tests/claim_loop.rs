//! The claim loop against the testbed: tasks reach the sink only after
//! `started`, failures never cause a hot loop, credentials problems do not
//! stop claiming, and the concurrency bound holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use noderax_agent::api_client::ApiClient;
use noderax_agent::claim_loop::{self, ClaimSettings, ClaimStatus, TaskSink};
use noderax_agent::root_access::RootAccess;
use serde_json::json;
use shared::api::RootProfile;
use shared::api::task::{ClaimedTask, TaskStatus};
use shared::identity::Identity;
use testbed::{FaultAction, FaultRule, RouteMatch, Testbed, TestbedConfig};
use tokio::sync::{OwnedSemaphorePermit, watch};

/// Keeps every task it gets, with its slot, until told to release.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<(ClaimedTask, Option<OwnedSemaphorePermit>)>>,
}

impl Sink {
    fn ids(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.id.clone())
            .collect()
    }
    fn release_all(&self) {
        for (_, slot) in self.got.lock().unwrap().iter_mut() {
            slot.take();
        }
    }
}

impl TaskSink for Sink {
    async fn start(&self, task: ClaimedTask, slot: OwnedSemaphorePermit) {
        self.got.lock().unwrap().push((task, Some(slot)));
    }
}

struct Running {
    tb: Testbed,
    node_id: String,
    sink: Arc<Sink>,
    status: watch::Receiver<ClaimStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    root: Arc<Mutex<RootAccess>>,
}

async fn start(config: TestbedConfig, max_concurrent: usize, wait: Duration) -> Running {
    let tb = Testbed::start(config).await.unwrap();
    let (node_id, agent_token) = tb.create_node("claimer");
    let client = ApiClient::new(
        &tb.api_url(),
        noderax_agent::tls::client_config(None).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_identity(&Identity {
        node_id: node_id.clone(),
        agent_token,
    });
    let sink = Arc::new(Sink::default());
    let (status_tx, status) = watch::channel(ClaimStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let root = Arc::new(Mutex::new(RootAccess::new(RootProfile::Operational)));
    let settings = ClaimSettings {
        wait,
        request_timeout: Duration::from_secs(5),
        slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
    };
    let task = tokio::spawn(claim_loop::run(
        client,
        settings,
        sink.clone(),
        root.clone(),
        status_tx,
        stop_rx,
    ));
    Running {
        tb,
        node_id,
        sink,
        status,
        stop,
        task,
        root,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("stops promptly")
            .unwrap();
    }
    fn claims(&self) -> usize {
        self.tb
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/tasks/claim"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_tasks_are_started_then_handed_over() {
    let r = start(TestbedConfig::default(), 4, Duration::from_secs(10)).await;
    let id =
        r.tb.create_task(&r.node_id, "shell.exec", json!({"command": "true"}))
            .unwrap();
    let t = Instant::now();
    r.tb.wait_for(Duration::from_secs(5), |_| {
        r.sink.ids().contains(&id).then_some(())
    })
    .await
    .expect("handed over");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "picked up by the waiting long poll"
    );
    assert_eq!(
        r.tb.task(&id).unwrap().status,
        TaskStatus::Running,
        "started before the hand-over"
    );
    // Every claim reports the applied root profile; the desired one is applied.
    let claim =
        r.tb.requests()
            .into_iter()
            .find(|q| q.path.ends_with("/tasks/claim"))
            .unwrap();
    assert!(
        claim.body["rootAccess"]["appliedProfile"].is_string(),
        "{}",
        claim.body
    );
    assert_eq!(claim.body["waitMs"], 10_000);
    r.tb.set_root_profile(&r.node_id, RootProfile::All).unwrap();
    r.tb.wait_for(Duration::from_secs(15), |_| {
        (r.root.lock().unwrap().applied_profile() == RootProfile::Operational).then_some(())
    })
    .await
    .expect("desired profile applied within the ceiling");
    // Idle long polls are not an error and not a hot loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.claims() <= 3, "{} claims", r.claims());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_start_is_refused_is_never_run() {
    let r = start(
        TestbedConfig {
            claim_lease: Duration::from_millis(200),
            ..TestbedConfig::default()
        },
        4,
        Duration::from_secs(1),
    )
    .await;
    // `started` arrives after the lease has expired → 409.
    r.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/*/started"),
        action: FaultAction::Latency(Duration::from_millis(400)),
        remaining: Some(1),
        probability: 1.0,
    });
    let id =
        r.tb.create_task(&r.node_id, "shell.exec", json!({"command": "true"}))
            .unwrap();
    let mut status = r.status.clone();
    let st = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.tasks_not_started == 1),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(st.last_not_started.unwrap().contains("lease expired"));
    // The refused start handed nothing over; the re-claim after the lease
    // expiry starts it properly, and only once.
    r.tb.wait_for(Duration::from_secs(10), |_| {
        r.sink.ids().contains(&id).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(r.sink.ids(), [id]);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_not_a_hot_loop() {
    let r = start(TestbedConfig::default(), 4, Duration::from_secs(1)).await;
    r.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/claim"),
        action: FaultAction::Status {
            code: 429,
            retry_after: Some(1),
        },
        remaining: None,
        probability: 1.0,
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = r.claims();
    // Retry-After 1 s: at most about one claim per second.
    assert!((2..=6).contains(&n), "{n} claims in 4 s");
    assert!(r.status.borrow().consecutive_failures >= 2);
    r.tb.clear_faults();
    let id =
        r.tb.create_task(&r.node_id, "shell.exec", json!({"command": "true"}))
            .unwrap();
    r.tb.wait_for(Duration::from_secs(10), |_| {
        r.sink.ids().contains(&id).then_some(())
    })
    .await
    .expect("recovers");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_keep_being_retried() {
    let r = start(TestbedConfig::default(), 4, Duration::from_secs(1)).await;
    r.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/claim"),
        action: FaultAction::Status {
            code: 401,
            retry_after: None,
        },
        remaining: Some(2),
        probability: 1.0,
    });
    let mut status = r.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.credentials_rejected),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        status
            .borrow()
            .last_error
            .as_ref()
            .unwrap()
            .contains("credentials rejected")
    );
    let id =
        r.tb.create_task(&r.node_id, "shell.exec", json!({"command": "true"}))
            .unwrap();
    r.tb.wait_for(Duration::from_secs(30), |_| {
        r.sink.ids().contains(&id).then_some(())
    })
    .await
    .expect("claiming resumed");
    assert!(!r.status.borrow().credentials_rejected);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_tasks_than_slots() {
    let r = start(TestbedConfig::default(), 2, Duration::from_millis(500)).await;
    let ids: Vec<String> = (0..3)
        .map(|_| {
            r.tb.create_task(&r.node_id, "shell.exec", json!({"command": "true"}))
                .unwrap()
        })
        .collect();
    r.tb.wait_for(Duration::from_secs(5), |_| {
        (r.sink.ids().len() == 2).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        r.sink.ids().len(),
        2,
        "a third task was claimed without a free slot"
    );
    assert_eq!(r.tb.task(&ids[2]).unwrap().status, TaskStatus::Queued);
    r.sink.release_all();
    r.tb.wait_for(Duration::from_secs(5), |_| {
        (r.sink.ids().len() == 3).then_some(())
    })
    .await
    .expect("claimed once a slot freed");
    r.stop().await;
}

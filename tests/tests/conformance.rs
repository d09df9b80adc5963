//! Replays the examples and error tables of PROTOCOL.md against the testbed
//! over real HTTP. A case that passes here is traffic the real server
//! treats the same way.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, now, request};
use serde_json::{Value, json};
use testbed::{Testbed, TestbedConfig};

async fn testbed(config: TestbedConfig) -> Testbed {
    Testbed::start(config).await.expect("testbed starts")
}

fn agent(tb: &Testbed, hostname: &str) -> Agent {
    let (node_id, token) = tb.create_node(hostname);
    Agent {
        addr: tb.addr(),
        node_id,
        token,
    }
}

/// Queues a shell task, claims and starts it; returns its id.
async fn running_task(tb: &Testbed, a: &Agent) -> String {
    let id = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "hostname"}))
        .unwrap();
    assert_eq!(a.claim(1000).await.as_deref(), Some(id.as_str()));
    assert_eq!(a.start(&id).await.status, 200);
    id
}

fn message(r: &common::Resp) -> String {
    r.body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn request_validation_table() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-validate");
    let task = running_task(&tb, &a).await;
    let logs = format!("/agent/tasks/{task}/logs");
    let done = format!("/agent/tasks/{task}/completed");
    let other = "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61";
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "unknown property",
            logs.clone(),
            json!({"stream": "stdout", "line": "x", "level": "info"}),
            400,
            "property level should not exist",
        ),
        (
            "empty line",
            logs.clone(),
            json!({"stream": "stdout", "line": ""}),
            400,
            "line must be longer than or equal to 1 characters",
        ),
        (
            "line over 5000",
            logs.clone(),
            json!({"stream": "stdout", "line": "é".repeat(5001)}),
            400,
            "line must be shorter than or equal to 5000 characters",
        ),
        (
            "line of exactly 5000 code points",
            logs.clone(),
            json!({"stream": "stdout", "line": "é".repeat(5000)}),
            200,
            "",
        ),
        (
            "stream over 50",
            logs.clone(),
            json!({"stream": "s".repeat(51), "line": "x"}),
            400,
            "stream must be shorter than or equal to 50 characters",
        ),
        (
            "missing stream",
            logs.clone(),
            json!({"line": "x"}),
            400,
            "stream should not be empty",
        ),
        (
            "bad timestamp",
            logs.clone(),
            json!({"stream": "stdout", "line": "x", "timestamp": "yesterday"}),
            400,
            "timestamp must be a valid ISO 8601 date string",
        ),
        (
            "taskId mismatch",
            logs.clone(),
            json!({"taskId": other, "stream": "stdout", "line": "x"}),
            400,
            "taskId in request body must match route parameter",
        ),
        (
            "completedAt is not a key of completed",
            done.clone(),
            json!({"status": "success", "completedAt": now()}),
            400,
            "property completedAt should not exist",
        ),
        (
            "output over 200 000",
            done.clone(),
            json!({"status": "success", "output": "x".repeat(200_001)}),
            400,
            "output must be shorter than or equal to 200000 characters",
        ),
        (
            "error over 10 000",
            done.clone(),
            json!({"status": "failed", "error": "x".repeat(10_001)}),
            400,
            "error must be shorter than or equal to 10000 characters",
        ),
        (
            "result must be an object",
            done.clone(),
            json!({"status": "success", "result": [1]}),
            400,
            "result must be an object",
        ),
        (
            "unknown status",
            done.clone(),
            json!({"status": "done"}),
            400,
            "status must be one of",
        ),
        (
            "claim with unknown key",
            "/agent/tasks/claim".into(),
            json!({"maxTasks": 1, "limit": 5}),
            400,
            "property limit should not exist",
        ),
        (
            "claim with non-numeric maxTasks",
            "/agent/tasks/claim".into(),
            json!({"maxTasks": "abc", "waitMs": 0}),
            400,
            "maxTasks must be a number",
        ),
        (
            "claim with unknown root profile",
            "/agent/tasks/claim".into(),
            json!({"waitMs": 0, "rootAccess": {"appliedProfile": "root"}}),
            400,
            "rootAccess.appliedProfile must be one of",
        ),
        (
            "claim with an extra rootAccess key",
            "/agent/tasks/claim".into(),
            json!({"waitMs": 0, "rootAccess": {"appliedProfile": "off", "x": 1}}),
            400,
            "rootAccess.property x should not exist",
        ),
    ];
    for (name, route, body, status, msg) in cases {
        let r = a.post(&route, body).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        if status == 400 {
            assert!(message(&r).contains(msg), "{name}: {:?}", r.body);
            // The server's error body shape (§0.3 rule 6).
            assert_eq!(r.body["statusCode"], 400, "{name}");
            assert_eq!(r.body["error"], "Bad Request", "{name}");
            assert_eq!(r.body["path"], format!("/api/v1{route}"), "{name}");
            // `errors` accompanies class-validator failures only.
            assert_eq!(
                r.body["errors"].is_array(),
                name != "taskId mismatch",
                "{name}"
            );
            assert!(r.body["timestamp"].is_string(), "{name}");
        }
    }
}

#[tokio::test]
async fn agent_auth_guard() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-auth");
    let claim = |headers: Vec<(&'static str, String)>| {
        let addr = a.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(
                addr,
                "POST",
                "/api/v1/agent/tasks/claim",
                &h,
                Some(&json!({"waitMs": 0})),
            )
            .await
            .unwrap()
        }
    };
    let r = claim(vec![("authorization", format!("Bearer {}", a.token))]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        message(&r),
        "x-agent-node-id and Authorization: Bearer <agent-token> are required"
    );
    let r = claim(vec![
        ("authorization", format!("Bearer  {}", a.token)),
        ("x-agent-node-id", a.node_id.clone()),
    ])
    .await;
    assert_eq!(r.status, 401, "double space is refused");
    let r = claim(vec![
        ("authorization", "Bearer wrong".into()),
        ("x-agent-node-id", a.node_id.clone()),
    ])
    .await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (401, "Invalid agent credentials")
    );
    let r = claim(vec![
        ("authorization", format!("Bearer {}", a.token)),
        ("X-Agent-Node-Id", a.node_id.clone()),
    ])
    .await;
    assert_eq!(r.status, 200, "header names are case-insensitive");
}

#[tokio::test]
async fn claim_long_poll_lease_and_maintenance() {
    let tb = testbed(TestbedConfig {
        claim_lease: Duration::from_millis(400),
        ..TestbedConfig::default()
    })
    .await;
    let a = agent(&tb, "srv-claim");

    // Empty poll: task null, the desired root profile present.
    let r = a
        .post("/agent/tasks/claim", json!({"maxTasks": 1, "waitMs": 0}))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["task"].is_null());
    assert_eq!(r.body["rootAccess"]["profile"], "off");
    assert_eq!(r.body["outputTruncated"], false);

    // A long poll returns as soon as a task is queued, not at the end of its wait.
    let poll = {
        let a = a.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            (a.claim(20_000).await, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "true"}))
        .unwrap();
    let (claimed, waited) = poll.await.unwrap();
    assert_eq!(claimed.as_deref(), Some(id.as_str()));
    assert!(
        waited < Duration::from_secs(20),
        "returned at the end of waitMs"
    );
    let task = tb.task(&id).unwrap();
    assert_eq!(task.status, shared::api::task::TaskStatus::Accepted);
    assert_eq!(task.claimed_by.as_deref(), Some(a.node_id.as_str()));

    // `accepted` after a claim is an informational duplicate.
    let r = a
        .post(
            &format!("/agent/tasks/{id}/accepted"),
            json!({"taskId": id}),
        )
        .await;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(true)));

    // The lease expires: started → 409, and the task can be claimed again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = a.start(&id).await;
    assert_eq!(r.status, 409);
    assert!(
        message(&r).contains("lease expired before started transition"),
        "{:?}",
        r.body
    );
    assert_eq!(a.claim(0).await.as_deref(), Some(id.as_str()));
    assert_eq!(a.start(&id).await.status, 200);
    assert_eq!(
        a.start(&id).await.status,
        200,
        "started is idempotent while running"
    );

    // Maintenance: claims return nothing and queued tasks stay queued.
    let queued = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "true"}))
        .unwrap();
    tb.set_maintenance(&a.node_id, true).unwrap();
    assert_eq!(a.claim(600).await, None);
    assert!(tb.create_task(&a.node_id, "shell.exec", json!({})).is_err());
    tb.set_maintenance(&a.node_id, false).unwrap();
    assert_eq!(a.claim(0).await.as_deref(), Some(queued.as_str()));

    // Only the node's own tasks: another node gets 404.
    let b = agent(&tb, "srv-other");
    let r = b.start(&queued).await;
    assert_eq!(r.status, 404);
    assert!(message(&r).contains("was not found for node"));
}

#[tokio::test]
async fn lifecycle_conflicts_and_idempotency() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-life");

    // accepted on a queued task → 409; started on a queued task → 409.
    let q = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "true"}))
        .unwrap();
    let r = a
        .post(&format!("/agent/tasks/{q}/accepted"), json!({}))
        .await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("is in queued state and cannot be accepted"));
    let r = a.start(&q).await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("must be accepted before it can be started"));
    // Logs before started → 409; completed before started → 409.
    assert_eq!(a.claim(0).await.as_deref(), Some(q.as_str()));
    let r = a
        .post(
            &format!("/agent/tasks/{q}/logs"),
            json!({"stream": "stdout", "line": "x"}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("is in accepted state and cannot accept logs"));
    let r = a
        .post(
            &format!("/agent/tasks/{q}/completed"),
            json!({"status": "success"}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("is in accepted state and cannot be completed"));
    // The operator cancels while accepted → started 409 (never execute it).
    tb.cancel_task(&q, "changed my mind").unwrap();
    let r = a.start(&q).await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("is already cancelled and cannot be started"));

    // completed twice with the same status → 200; with another → 409.
    let id = running_task(&tb, &a).await;
    let body = json!({"taskId": id, "status": "failed", "exitCode": 1, "durationMs": 7032,
                      "timestamp": now(), "output": "out", "error": "exit status 1"});
    let done = format!("/agent/tasks/{id}/completed");
    assert_eq!(a.post(&done, body.clone()).await.status, 200);
    assert_eq!(a.post(&done, body).await.status, 200);
    let r = a.post(&done, json!({"status": "timeout"})).await;
    assert_eq!(
        r.status, 200,
        "timeout is stored as failed, so it is the same status"
    );
    let r = a.post(&done, json!({"status": "success"})).await;
    assert_eq!(r.status, 409);
    assert!(message(&r).contains("is already failed and cannot transition to success"));
    let t = tb.task(&id).unwrap();
    assert_eq!(t.result.unwrap()["exitCode"], 1);
    // Logs after completion → 409.
    let r = a
        .post(
            &format!("/agent/tasks/{id}/logs"),
            json!({"stream": "stdout", "line": "late"}),
        )
        .await;
    assert_eq!(r.status, 409);

    // canceled → cancelled; timeout → failed with reason.
    let id = running_task(&tb, &a).await;
    let r = a
        .post(
            &format!("/agent/tasks/{id}/completed"),
            json!({"status": "canceled"}),
        )
        .await;
    assert_eq!(r.body["status"], "cancelled");
    let id = running_task(&tb, &a).await;
    a.post(
        &format!("/agent/tasks/{id}/completed"),
        json!({"status": "timeout", "exitCode": -1}),
    )
    .await;
    let t = tb.task(&id).unwrap();
    assert_eq!(t.status, shared::api::task::TaskStatus::Failed);
    assert_eq!(t.result.unwrap()["reason"], "timeout");
}

#[tokio::test]
async fn completed_output_storage_and_log_history() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-output");
    let id = running_task(&tb, &a).await;

    // 150 log rows in order; the history view shows only the first 100.
    for i in 0..150 {
        let r = a
            .post(&format!("/agent/tasks/{id}/logs"), json!({"stream": if i % 2 == 0 {"stdout"} else {"system"}, "line": format!("line {i}")}))
            .await;
        assert_eq!(r.status, 200);
    }
    let history = tb.task_logs(&id, 100);
    assert_eq!(history.len(), 100);
    assert_eq!(history[0].message, "line 0");
    assert_eq!(history[99].message, "line 99");
    assert_eq!(history[1].level, "info", "system lines are stored as info");
    assert_eq!(tb.task_logs_all(&id).len(), 150);
    // Until completion, the output column shows the latest line.
    assert_eq!(tb.task(&id).unwrap().output.as_deref(), Some("line 149"));

    // 200 000 characters are accepted; the server keeps the first 8 000.
    let output = "ab".repeat(100_000);
    let r = a
        .post(
            &format!("/agent/tasks/{id}/completed"),
            json!({"status": "success", "exitCode": 0, "output": output}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = tb.task(&id).unwrap();
    assert_eq!(t.output.as_ref().unwrap().len(), 8_000);
    assert!(t.output_truncated);
}

#[tokio::test]
async fn control_polling_and_operator_cancel() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-control");
    let id = running_task(&tb, &a).await;
    let r = a
        .call("GET", &format!("/agent/tasks/{id}/control"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["cancelRequested"], false);
    assert_eq!(r.body["status"], "running");
    tb.cancel_task(&id, "Stopped by operator from dashboard")
        .unwrap();
    let r = a
        .call("GET", &format!("/agent/tasks/{id}/control"), None)
        .await;
    assert_eq!(r.body["cancelRequested"], true);
    assert_eq!(r.body["cancelReason"], "Stopped by operator from dashboard");
    assert!(r.body["cancelRequestedAt"].is_string());
    // Not this node's task → 404.
    let b = agent(&tb, "srv-control-2");
    assert_eq!(
        b.call("GET", &format!("/agent/tasks/{id}/control"), None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn stale_timers() {
    let tb = testbed(TestbedConfig {
        queued_timeout: Duration::from_millis(600),
        running_timeout: Duration::from_millis(800),
        stale_sweep: Duration::from_millis(100),
        ..TestbedConfig::default()
    })
    .await;
    let a = agent(&tb, "srv-stale");
    let queued = tb
        .create_task(&a.node_id, "shell.exec", json!({"command": "true"}))
        .unwrap();
    let t = tb
        .wait_task_done(&queued, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(t.status, shared::api::task::TaskStatus::Failed);
    assert_eq!(t.result.unwrap()["reason"], "stale-timeout");

    let running = running_task(&tb, &a).await;
    let t = tb
        .wait_task_done(&running, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        t.output.as_deref(),
        Some("Task timed out while running on agent.")
    );
    // The agent's late completion is a conflict.
    let r = a
        .post(
            &format!("/agent/tasks/{running}/completed"),
            json!({"status": "success"}),
        )
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn bootstrap_consume_and_install_progress() {
    let tb = testbed(TestbedConfig::default()).await;
    let addr = tb.addr();
    let token = tb.create_install("web-1");
    let post = |path: &'static str, body: Value| async move {
        request(addr, "POST", path, &[], Some(&body)).await.unwrap()
    };
    let consume = |token: String, hostname: &'static str| {
        post(
            "/api/v1/node-installs/consume",
            json!({"token": token, "hostname": hostname,
                   "additionalInfo": {"os": "debian", "arch": "amd64", "agentVersion": "1.0.2",
                                      "platformVersion": "12", "kernelVersion": "6.1.0"}}),
        )
    };

    let stages = [
        ("installer_started", 8),
        ("dependencies_ready", 30),
        ("service_user_ready", 45),
        ("binary_download_started", 60),
        ("binary_downloaded", 74),
        ("agent_bootstrapping", 88),
    ];
    for (stage, pct) in stages {
        let r = post(
            "/api/v1/node-installs/progress",
            json!({"token": token, "stage": stage, "status": "installing", "progressPercent": pct}),
        )
        .await;
        assert_eq!(r.status, 201, "{stage}: {:?}", r.body);
        assert_eq!(r.body["stage"], stage);
    }
    // location is not a known key of additionalInfo (§11.3).
    let r = post(
        "/api/v1/node-installs/consume",
        json!({"token": token, "hostname": "srv-a", "additionalInfo": {"location": {"region": "x"}}}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        message(&r).contains("additionalInfo.property location should not exist"),
        "{:?}",
        r.body
    );

    let r = consume(token.clone(), "SRV-A").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let node_id = r.body["nodeId"].as_str().unwrap().to_owned();
    assert_eq!(r.body["agentToken"].as_str().unwrap().len(), 64);
    let node = tb.node(&node_id).unwrap();
    assert_eq!(node.hostname, "srv-a");
    assert_eq!(node.arch.as_deref(), Some("amd64"));
    let install = tb.install(&token).unwrap();
    assert_eq!(install.stage, "bootstrap_token_consumed");
    assert!(install.progress_percent >= 92);

    // Reuse → 409; unknown → 404; hostname taken → 409; expired → 410.
    let r = consume(token.clone(), "srv-b").await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (409, "Bootstrap token has already been used")
    );
    let r = consume("no-such-token".into(), "srv-b").await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (404, "Bootstrap token was not found")
    );
    let other = tb.create_install("web-2");
    let r = consume(other, "srv-a").await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (409, "A node with this hostname already exists")
    );

    // Completed is final: a later `installing` report is a silent no-op.
    let r = post(
        "/api/v1/node-installs/progress",
        json!({"token": token, "stage": "service_started", "status": "completed", "progressPercent": 100}),
    )
    .await;
    assert_eq!(r.body["status"], "completed");
    let r = post(
        "/api/v1/node-installs/progress",
        json!({"token": token, "stage": "late", "progressPercent": 10}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        (r.body["status"].clone(), r.body["stage"].clone()),
        (json!("completed"), json!("service_started"))
    );
    let reports = tb.install(&token).unwrap().reports;
    assert_eq!(reports.len(), stages.len() + 2);
    assert!(!reports.last().unwrap().applied);

    let short = testbed(TestbedConfig {
        token_ttl: Duration::from_millis(100),
        ..TestbedConfig::default()
    })
    .await;
    let t = short.create_install("late");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = request(
        short.addr(),
        "POST",
        "/api/v1/node-installs/consume",
        &[],
        Some(&json!({"token": t, "hostname": "srv-late"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn email_enrollment() {
    let tb = testbed(TestbedConfig::default()).await;
    let addr = tb.addr();
    let initiate = |hostname: &'static str| async move {
        request(
            addr,
            "POST",
            "/api/v1/enrollments/initiate",
            &[],
            Some(&json!({"email": " Admin@Example.com", "hostname": hostname,
                         "additionalInfo": {"os": "debian", "arch": "amd64", "agentVersion": "1.0.2"}})),
        )
        .await
        .unwrap()
    };
    let poll = |token: String| async move {
        request(
            addr,
            "GET",
            &format!("/api/v1/enrollments/{token}"),
            &[],
            None,
        )
        .await
        .unwrap()
    };
    let r = initiate("srv-mail").await;
    assert_eq!(r.status, 201);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);
    assert!(shared::timestamp::Timestamp::parse(r.body["expiresAt"].as_str().unwrap()).is_ok());
    assert_eq!(poll(token.clone()).await.body, json!({"status": "pending"}));
    let node_id = tb.approve_enrollment(&token).unwrap();
    let r = poll(token.clone()).await;
    assert_eq!(r.body["status"], "approved");
    assert_eq!(r.body["nodeId"], node_id);
    assert_eq!(
        poll(token).await.body["agentToken"].as_str().unwrap().len(),
        64,
        "credentials on every poll"
    );
    assert_eq!(poll("unknown".into()).await.status, 404);

    // A second initiate for the same e-mail + hostname revokes the first.
    let first = initiate("srv-mail-2").await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _second = initiate("srv-mail-2").await;
    assert_eq!(poll(first).await.body["status"], "revoked");
    let r = request(
        addr,
        "POST",
        "/api/v1/enrollments/initiate",
        &[],
        Some(&json!({"email": "nope", "hostname": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn heartbeat_presence_and_version_rule() {
    let tb = testbed(TestbedConfig {
        offline_after: Duration::from_millis(500),
        ..TestbedConfig::default()
    })
    .await;
    let a = agent(&tb, "srv-beat");
    let beat = |body: Value| {
        let addr = a.addr;
        async move {
            request(addr, "POST", "/api/v1/agent/heartbeat", &[], Some(&body))
                .await
                .unwrap()
        }
    };
    let r = beat(
        json!({"nodeId": a.node_id, "agentToken": a.token, "agentVersion": "1.0.2",
                        "platformVersion": "12", "kernelVersion": "6.1.0", "sentAt": now()}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["acknowledged"], true);
    let n = tb.node(&a.node_id).unwrap();
    assert!(n.online);
    assert_eq!(n.kernel_version.as_deref(), Some("6.1.0"));
    // Online: an absent version does not erase the stored one.
    beat(json!({"nodeId": a.node_id, "agentToken": a.token, "agentVersion": "1.0.3"})).await;
    let n = tb.node(&a.node_id).unwrap();
    assert_eq!(
        (n.agent_version.as_deref(), n.kernel_version.as_deref()),
        (Some("1.0.3"), Some("6.1.0"))
    );
    // Offline after the timeout; the message that brings it back nulls absent versions (§4.2).
    let offline = tb
        .wait_for(Duration::from_secs(5), |tb| {
            tb.node(&a.node_id).filter(|n| !n.online)
        })
        .await;
    assert!(offline.is_some());
    beat(json!({"nodeId": a.node_id, "agentToken": a.token, "agentVersion": "1.0.3"})).await;
    let n = tb.node(&a.node_id).unwrap();
    assert_eq!((n.platform_version, n.kernel_version), (None, None));

    let r = beat(json!({"nodeId": "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61", "agentToken": a.token}))
        .await;
    assert_eq!(r.status, 404);
    let r = beat(json!({"nodeId": a.node_id, "agentToken": "x".repeat(32)})).await;
    assert_eq!(r.status, 401);
    let r = beat(json!({"nodeId": a.node_id, "agentToken": "short"})).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn http_metrics_rules() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-metrics");
    let send = |body: Value| {
        let addr = a.addr;
        async move {
            request(addr, "POST", "/api/v1/agent/metrics", &[], Some(&body))
                .await
                .unwrap()
        }
    };
    let base = json!({"nodeId": a.node_id, "agentToken": a.token, "cpuUsage": 12.5,
                      "memoryUsage": 63.1, "diskUsage": 58.4,
                      "networks": [{"interface": "eth0", "bytesSent": 2000, "bytesRecv": 1000}]});
    let r = send(base.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["networkStats"]["rxBytes"], 1000);
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    assert_eq!(
        send(with("type", json!("agent.metrics"))).await.status,
        400,
        "type is socket-only"
    );
    assert_eq!(
        send(with("timestamp", json!(now()))).await.status,
        400,
        "timestamp is socket-only"
    );
    assert_eq!(
        send(with("networkStats", json!([]))).await.status,
        400,
        "networkStats must be an object"
    );
    assert_eq!(send(with("cpuUsage", json!(101))).await.status, 400);
    let mut no_cpu = base.clone();
    no_cpu.as_object_mut().unwrap().remove("cpuUsage");
    let r = send(no_cpu.clone()).await;
    assert_eq!(
        (r.status, message(&r).as_str()),
        (400, "cpuUsage is required")
    );
    no_cpu["cpu"] = json!({"usagePercent": 7.0});
    assert_eq!(
        send(no_cpu).await.status,
        200,
        "cpu.usagePercent is the fallback"
    );
    assert_eq!(tb.metrics(&a.node_id).len(), 2);
}

#[tokio::test]
async fn root_access_gates_package_tasks() {
    let tb = testbed(TestbedConfig::default()).await;
    let a = agent(&tb, "srv-root");
    let install =
        json!({"names": ["nginx"], "packages": ["nginx"], "package": "nginx", "purge": false});
    let err = tb
        .create_task(&a.node_id, "packageInstall", install.clone())
        .unwrap_err();
    assert!(
        err.to_string().contains("does not allow package changes"),
        "{err}"
    );
    // The agent reports an applied operational profile with its claim.
    let r = a
        .post(
            "/agent/tasks/claim",
            json!({"maxTasks": 1, "waitMs": 0, "rootAccess": {"appliedProfile": "operational",
                                                               "lastAppliedAt": now()}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        tb.create_task(&a.node_id, "packageInstall", install)
            .is_ok()
    );
    assert!(tb.create_task(&a.node_id, "packageList", json!({})).is_ok());
}

#[tokio::test]
async fn rollout_progress_and_version_confirmation() {
    let tb = testbed(TestbedConfig::fast()).await;
    let a = agent(&tb, "srv-update");
    let beat = |version: &'static str| {
        let (addr, node, token) = (a.addr, a.node_id.clone(), a.token.clone());
        async move {
            request(
                addr,
                "POST",
                "/api/v1/agent/heartbeat",
                &[],
                Some(&json!({"nodeId": node, "agentToken": token, "agentVersion": version})),
            )
            .await
            .unwrap()
        }
    };
    beat("1.0.2").await;
    tb.inner().state().nodes.get_mut(&a.node_id).unwrap().arch = Some("amd64".into());
    let rollout = tb.create_rollout("1.0.3", &[&a.node_id], false).unwrap();
    let task_id = a.claim(1000).await.expect("an agent.update task");
    let task = tb.task(&task_id).unwrap();
    assert_eq!(task.task_type, "agent.update");
    let target_id = task.payload["targetId"].as_str().unwrap().to_owned();
    assert_eq!(task.payload["targetVersion"], "1.0.3");
    assert_eq!(a.start(&task_id).await.status, 200);

    let progress = format!("/agent-updates/targets/{target_id}/progress");
    for (status, pct) in [
        ("downloading", 20),
        ("verifying", 45),
        ("installing", 70),
        ("restarting", 90),
    ] {
        let r = a
            .post(
                &progress,
                json!({"status": status, "progressPercent": pct, "message": "m"}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = a
        .post(
            &progress,
            json!({"status": "completed", "progressPercent": 100}),
        )
        .await;
    assert_eq!(r.status, 400, "completed is not a progress status");
    let r = a.post(&progress, json!({"status": "verifying"})).await;
    assert_eq!(r.status, 400, "progressPercent is required");
    let r = a
        .post(
            "/agent-updates/targets/0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61/progress",
            json!({"status": "verifying", "progressPercent": 1}),
        )
        .await;
    assert_eq!(r.status, 404);
    let b = agent(&tb, "srv-update-other");
    assert_eq!(
        b.post(
            &progress,
            json!({"status": "verifying", "progressPercent": 1})
        )
        .await
        .status,
        409
    );

    // The new version reported → target completed, task success.
    beat("1.0.3").await;
    let target = tb.target(&target_id).unwrap();
    assert_eq!(target.status, "completed");
    assert_eq!(
        target.history,
        [
            "dispatched",
            "downloading",
            "verifying",
            "installing",
            "restarting",
            "completed"
        ]
    );
    assert_eq!(
        tb.task(&task_id).unwrap().status,
        shared::api::task::TaskStatus::Success
    );
    assert_eq!(tb.rollout(&rollout).unwrap().status, "completed");
}

#[tokio::test]
async fn throttle_spares_task_routes() {
    let tb = testbed(TestbedConfig {
        throttle: Some((3, Duration::from_secs(60))),
        ..TestbedConfig::default()
    })
    .await;
    let a = agent(&tb, "srv-throttle");
    for i in 0..3 {
        let r = request(tb.addr(), "GET", "/api/v1/enrollments/x", &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "request {i}");
    }
    let r = request(tb.addr(), "GET", "/api/v1/enrollments/x", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    for _ in 0..5 {
        assert!(a.claim(0).await.is_none(), "task routes are not throttled");
    }
}

#[tokio::test]
async fn release_cdn_serves_files_inside_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("releases/1.0.3")).unwrap();
    std::fs::write(
        dir.path().join("releases/1.0.3/SHA256SUMS"),
        "abc  noderax-agent-linux-amd64\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("secret"), "no").unwrap();
    let tb = testbed(TestbedConfig {
        release_dir: Some(dir.path().join("releases")),
        ..TestbedConfig::default()
    })
    .await;
    let r = request(tb.addr(), "GET", "/cdn/1.0.3/SHA256SUMS", &[], None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.raw.as_ref()),
        (200, b"abc  noderax-agent-linux-amd64\n".as_ref())
    );
    let r = request(tb.addr(), "GET", "/cdn/../secret", &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = request(
        tb.addr(),
        "GET",
        "/cdn/1.0.3/%2e%2e/%2e%2e/secret",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn user_side_http_api_drives_the_same_state() {
    let tb = testbed(TestbedConfig::default()).await;
    let post = |path: String, body: Value| {
        let addr = tb.addr();
        async move {
            request(addr, "POST", &path, &[], Some(&body))
                .await
                .unwrap()
        }
    };
    let node = post("/__testbed/nodes".into(), json!({"hostname": "srv-ctl"}))
        .await
        .body;
    let node_id = node["nodeId"].as_str().unwrap().to_owned();
    let task = post(
        "/__testbed/tasks".into(),
        json!({"nodeId": node_id, "type": "shell.exec", "payload": {"command": "ls"}}),
    )
    .await;
    assert_eq!(task.status, 201, "{:?}", task.body);
    let task_id = task.body["id"].as_str().unwrap().to_owned();
    assert_eq!(tb.task(&task_id).unwrap().payload["command"], "ls");
    let r = post(
        format!("/__testbed/tasks/{task_id}/cancel"),
        json!({"reason": "r"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(
        tb.addr(),
        "GET",
        &format!("/__testbed/tasks/{task_id}"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.body["status"], "cancelled");
    let r = post(
        "/__testbed/tasks".into(),
        json!({"nodeId": node_id, "type": "packagePurge", "payload": {}}),
    )
    .await;
    assert_eq!(
        r.status, 400,
        "root-access gate applies to the HTTP route too"
    );
    let r = request(tb.addr(), "GET", "/__testbed/requests", &[], None)
        .await
        .unwrap();
    assert!(r.body.as_array().unwrap().len() >= 4);
}

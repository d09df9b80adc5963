//! Every outgoing body, serialized with all fields set, carries only keys the
//! server accepts (PROTOCOL.md §0.3 rule 1) and all keys it requires; with
//! every optional field empty, the optional keys are absent.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::enrollment::*;
use super::metrics::*;
use super::realtime::*;
use super::task::*;
use super::terminal::*;
use super::update::*;
use super::*;
use crate::timestamp::Timestamp;

const NODE: &str = "b7f88611-b63e-4c95-9f37-4afb5c0cf275";
const TASK: &str = "ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8";
const TOKEN: &str = "af0fe67dfb6d233db5462db4b8f19f65aa84fb304e2955546554a938d2f2b84f";

fn ts() -> Timestamp {
    Timestamp::from_unix_millis(1_775_150_771_123)
}

fn object<T: Serialize>(v: &T) -> serde_json::Map<String, Value> {
    match serde_json::to_value(v).unwrap() {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn keys<T: Serialize>(v: &T) -> BTreeSet<String> {
    object(v).keys().cloned().collect()
}

/// Full instance: every key accepted, every required key present.
/// Minimal instance: exactly `expected_minimal` keys.
fn check<T: Serialize + Schema>(full: &T, minimal: &T, expected_minimal: &[&str]) {
    let accepted: BTreeSet<&str> = T::ACCEPTED.iter().copied().collect();
    let full_keys = keys(full);
    for k in &full_keys {
        assert!(
            accepted.contains(k.as_str()),
            "{} sends key {k:?} the server does not declare",
            std::any::type_name::<T>()
        );
    }
    for k in T::REQUIRED {
        assert!(
            full_keys.contains(*k),
            "{} lacks required key {k}",
            std::any::type_name::<T>()
        );
    }
    let minimal_keys = keys(minimal);
    let want: BTreeSet<String> = expected_minimal.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        minimal_keys,
        want,
        "{}: empty optionals must be omitted",
        std::any::type_name::<T>()
    );
    for (k, v) in object(full) {
        assert!(!v.is_null(), "{k} is null");
    }
}

fn facts() -> HostFacts {
    HostFacts {
        os: Some("debian".into()),
        arch: Some("amd64".into()),
        agent_version: Some("1.0.2".into()),
        platform_version: Some("12".into()),
        kernel_version: Some("6.1.0-18-amd64".into()),
    }
}

fn report() -> RootAccessReport {
    RootAccessReport {
        applied_profile: Some(RootProfile::Operational),
        last_applied_at: Some(ts()),
        last_error: Some("helper missing".into()),
    }
}

#[test]
fn nested_objects() {
    check(&facts(), &HostFacts::default(), &[]);
    let empty = RootAccessReport {
        applied_profile: None,
        last_applied_at: None,
        last_error: None,
    };
    check(&report(), &empty, &[]);
}

#[test]
fn enrollment_bodies() {
    let full = InitiateEnrollment {
        email: "admin@example.com".into(),
        hostname: "srv-01".into(),
        additional_info: Some(facts()),
    };
    let min = InitiateEnrollment {
        additional_info: None,
        ..full.clone()
    };
    check(&full, &min, &["email", "hostname"]);

    let full = ConsumeBootstrapToken {
        token: "bootstrap-token".into(),
        hostname: "srv-01".into(),
        additional_info: Some(facts()),
    };
    let min = ConsumeBootstrapToken {
        additional_info: None,
        ..full.clone()
    };
    check(&full, &min, &["token", "hostname"]);
    // additionalInfo of consume is whitelisted too (§2.3).
    let info = object(&full)["additionalInfo"].clone();
    for k in info.as_object().unwrap().keys() {
        assert!(HostFacts::ACCEPTED.contains(&k.as_str()));
    }

    let full = InstallProgress {
        token: "bootstrap-token".into(),
        stage: "binary_downloaded".into(),
        status: Some(InstallStatus::Installing),
        progress_percent: Some(74),
        status_message: Some("Agent binary downloaded.".into()),
    };
    let min = InstallProgress {
        status: None,
        progress_percent: None,
        status_message: None,
        ..full.clone()
    };
    check(&full, &min, &["token", "stage"]);
    assert_eq!(object(&full)["status"], "installing");

    let full = Heartbeat {
        node_id: NODE.into(),
        agent_token: TOKEN.into(),
        agent_version: Some("1.0.2".into()),
        platform_version: Some("12".into()),
        kernel_version: Some("6.1.0".into()),
        sent_at: Some(ts()),
    };
    let min = Heartbeat {
        agent_version: None,
        platform_version: None,
        kernel_version: None,
        sent_at: None,
        ..full.clone()
    };
    check(&full, &min, &["nodeId", "agentToken"]);
}

fn sample() -> MetricsSample {
    MetricsSample {
        node_id: NODE.into(),
        agent_token: TOKEN.into(),
        agent_version: Some("1.0.2".into()),
        cpu_usage: 12.5,
        memory_usage: 63.1,
        disk_usage: 58.4,
        temperature: Some(45.0),
        networks: vec![InterfaceCounters {
            interface: "eth0".into(),
            bytes_sent: 2000,
            bytes_recv: 1000,
            packets_sent: 20,
            packets_recv: 10,
            ..Default::default()
        }],
    }
}

#[test]
fn metrics_bodies() {
    let min = MetricsSample {
        agent_version: None,
        temperature: None,
        networks: vec![],
        ..sample()
    };
    let always = [
        "nodeId",
        "agentToken",
        "cpuUsage",
        "memoryUsage",
        "diskUsage",
    ];
    check(&sample(), &min, &always);
    // The HTTP route refuses `type` and `timestamp` (§5.2).
    assert!(!MetricsSample::ACCEPTED.contains(&"type"));
    assert!(!MetricsSample::ACCEPTED.contains(&"timestamp"));

    let full = AgentMetrics {
        timestamp: Some(ts()),
        sample: sample(),
    };
    let min_ev = AgentMetrics {
        timestamp: None,
        sample: min,
    };
    let mut want = always.to_vec();
    want.push("type");
    check(&full, &min_ev, &want);
    let json = object(&full);
    assert_eq!(json["type"], "agent.metrics");
    assert_eq!(json["timestamp"], "2026-04-02T17:26:11.123Z");
    let iface = json["networks"][0].as_object().unwrap();
    let iface_keys: Vec<&str> = iface.keys().map(String::as_str).collect();
    for k in [
        "interface",
        "bytesSent",
        "bytesRecv",
        "packetsSent",
        "packetsRecv",
        "errorsIn",
        "errorsOut",
        "dropIn",
        "dropOut",
    ] {
        assert!(iface_keys.contains(&k), "{k}");
    }
    assert_eq!(iface.len(), 9);
}

#[test]
fn task_bodies() {
    let full = ClaimRequest {
        max_tasks: 1,
        wait_ms: 15_000,
        root_access: Some(report()),
    };
    let min = ClaimRequest {
        root_access: None,
        ..full.clone()
    };
    check(&full, &min, &["maxTasks", "waitMs"]);

    let t = TaskTransition {
        task_id: TASK.into(),
        timestamp: ts(),
    };
    check(&t, &t, &["taskId", "timestamp"]);

    let log = TaskLog {
        task_id: TASK.into(),
        stream: LogStream::System,
        line: "running shell.exec command via /bin/sh".into(),
        timestamp: ts(),
    };
    check(&log, &log, &["taskId", "stream", "line", "timestamp"]);
    assert_eq!(object(&log)["stream"], "system");

    let mut result = serde_json::Map::new();
    result.insert("packages".into(), Value::Array(vec![]));
    let full = TaskCompleted {
        task_id: TASK.into(),
        status: CompletionStatus::Failed,
        exit_code: 1,
        duration_ms: 7032,
        timestamp: ts(),
        output: Some("Reading package lists...\n".into()),
        error: Some("exit status 1".into()),
        result: Some(result),
    };
    let min = TaskCompleted {
        output: None,
        error: None,
        result: None,
        ..full.clone()
    };
    check(
        &full,
        &min,
        &["taskId", "status", "exitCode", "durationMs", "timestamp"],
    );
    // `completedAt` is rejected on this route (§6.6).
    assert!(!keys(&full).contains("completedAt"));
    for (status, wire) in [
        (CompletionStatus::Success, "success"),
        (CompletionStatus::Failed, "failed"),
        (CompletionStatus::Cancelled, "cancelled"),
        (CompletionStatus::Timeout, "timeout"),
    ] {
        assert_eq!(serde_json::to_value(status).unwrap(), wire);
    }

    let full = UpdateProgress {
        status: UpdateStatus::WaitingForReconnect,
        progress_percent: 95,
        message: Some("Restart requested.".into()),
    };
    let min = UpdateProgress {
        message: None,
        ..full.clone()
    };
    check(&full, &min, &["status", "progressPercent"]);
    assert_eq!(object(&full)["status"], "waiting_for_reconnect");
    for status in UpdateStatus::ALL {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
}

#[test]
fn realtime_events() {
    let full = AgentAuth {
        node_id: NODE.into(),
        agent_token: TOKEN.into(),
        agent_version: "1.0.2".into(),
        platform_version: "12".into(),
        kernel_version: "6.1.0".into(),
        root_access: Some(report()),
    };
    let min = AgentAuth {
        root_access: None,
        ..full.clone()
    };
    check(
        &full,
        &min,
        &[
            "type",
            "nodeId",
            "agentToken",
            "agentVersion",
            "platformVersion",
            "kernelVersion",
        ],
    );
    assert_eq!(object(&full)["type"], "agent.auth");
    assert_eq!(object(&full)["rootAccess"]["appliedProfile"], "operational");

    let full = AgentPing {
        timestamp: Some(ts()),
    };
    check(&full, &AgentPing { timestamp: None }, &["type"]);
    assert_eq!(object(&full)["type"], "agent.ping");
}

#[test]
fn terminal_events() {
    let opened = TerminalOpened {
        session_id: NODE.into(),
        cols: 120,
        rows: 34,
        timestamp: ts(),
    };
    check(
        &opened,
        &opened,
        &["type", "sessionId", "cols", "rows", "timestamp"],
    );
    assert_eq!(object(&opened)["type"], "terminal.opened");

    let out = TerminalOutput {
        session_id: NODE.into(),
        direction: TerminalDirection::Stdout,
        payload: "aGVsbG8=".into(),
        timestamp: ts(),
    };
    check(
        &out,
        &out,
        &["type", "sessionId", "direction", "payload", "timestamp"],
    );

    let full = TerminalExited {
        session_id: NODE.into(),
        exit_code: 0,
        reason: Some("terminal session exited".into()),
        timestamp: ts(),
    };
    let min = TerminalExited {
        reason: None,
        ..full.clone()
    };
    check(&full, &min, &["type", "sessionId", "exitCode", "timestamp"]);
    // Exit code 0 is sent, not omitted (§13 item 42).
    assert_eq!(object(&full)["exitCode"], 0);

    let err = TerminalError {
        session_id: NODE.into(),
        message: "terminal session was not found".into(),
        timestamp: ts(),
    };
    check(&err, &err, &["type", "sessionId", "message", "timestamp"]);
}

#[test]
fn incoming_events_parse_the_documented_examples() {
    let ack: AgentAuthAck = serde_json::from_str(
        r#"{"type":"agent.auth.ack","authenticated":true,"nodeId":"n","rootAccess":{"profile":"off","updatedAt":null}}"#,
    )
    .unwrap();
    assert!(ack.authenticated);
    let err: AgentAuthError = serde_json::from_str(
        r#"{"type":"agent.auth.error","authenticated":false,"message":"Invalid agent token"}"#,
    )
    .unwrap();
    assert_eq!(err.message, "Invalid agent token");
    let e: AgentError = serde_json::from_str(
        r#"{"type":"agent.error","code":"UNKNOWN_EVENT","message":"Unsupported event: x"}"#,
    )
    .unwrap();
    assert_eq!(e.code.as_deref(), Some("UNKNOWN_EVENT"));
    let u: RootAccessUpdated = serde_json::from_str(
        r#"{"type":"root-access.updated","rootAccess":{"profile":"all","updatedAt":"2026-04-05T10:00:00Z"}}"#,
    )
    .unwrap();
    assert_eq!(u.root_access.profile, RootProfile::All);

    let start: TerminalStart = serde_json::from_str(
        r#"{"type":"terminal.start","sessionId":"s","cols":120,"rows":34,"runAsRoot":false}"#,
    )
    .unwrap();
    assert_eq!((start.cols, start.rows), (Some(120), Some(34)));
    let stop: TerminalStop =
        serde_json::from_str(r#"{"type":"terminal.stop","sessionId":"s","reason":null}"#).unwrap();
    assert_eq!(stop.reason, None);
    let input: TerminalInput = serde_json::from_str(
        r#"{"type":"terminal.input","sessionId":"s","payload":"bHMgLWxhCg=="}"#,
    )
    .unwrap();
    assert_eq!(input.payload, "bHMgLWxhCg==");
    let resize: TerminalResize =
        serde_json::from_str(r#"{"type":"terminal.resize","sessionId":"s","cols":160,"rows":48}"#)
            .unwrap();
    assert_eq!((resize.cols, resize.rows), (160, 48));

    let status: EnrollmentStatus =
        serde_json::from_str(r#"{"status":"approved","nodeId":"n","agentToken":"t"}"#).unwrap();
    assert_eq!(status.status, EnrollmentState::Approved);
    let status: EnrollmentStatus = serde_json::from_str(r#"{"status":"exploded"}"#).unwrap();
    assert_eq!(status.status, EnrollmentState::Unknown);
    let ticket: EnrollmentTicket =
        serde_json::from_str(r#"{"token":"abc","expiresAt":"2026-03-19T14:15:00.000Z"}"#).unwrap();
    assert_eq!(ticket.expires_at.to_string(), "2026-03-19T14:15:00.000Z");
}

#[test]
fn release_manifest_rules() {
    let m: release::ReleaseManifest = serde_json::from_str(
        r#"{"version":"1.0.2","publishedAt":"2026-04-02T17:30:00Z","commit":"86a52ad","channel":"tag",
            "notes":[{"title":"Added","items":["x"]}],
            "artifacts":{"amd64":{"binaryUrl":"https://cdn/x","sha256":"ef79"}}}"#,
    )
    .unwrap();
    assert_eq!(m.artifact_for("amd64").unwrap().sha256, "ef79");
    assert!(m.artifact_for("arm64").unwrap_err().contains("no arm64"));
    let main = release::ReleaseManifest {
        channel: "main".into(),
        ..m
    };
    assert!(main.artifact_for("amd64").is_err());
    assert_eq!(release::artifact_name("arm64"), "noderax-agent-linux-arm64");
}

#[test]
fn release_manifest_components() {
    let sha = |c: char| c.to_string().repeat(64);
    let text = format!(
        r#"{{"version":"1.0.3","channel":"tag","artifacts":{{"amd64":{{
            "binaryUrl":"https://cdn/a","sha256":"{}",
            "components":{{"noderax-agent-exec":{{"url":"https://cdn/e","sha256":"{}"}},
                           "noderax-agent-priv":{{"url":"https://cdn/p","sha256":"{}"}}}}}}}}}}"#,
        sha('A'),
        sha('b'),
        sha('c')
    );
    let m: release::ReleaseManifest = serde_json::from_str(&text).unwrap();
    let d = m.downloads_for("amd64").unwrap();
    let got: Vec<(&str, &str, &str)> = d
        .iter()
        .map(|f| (f.program, f.url.as_str(), f.sha256.as_str()))
        .collect();
    let (a, b, c) = (sha('a'), sha('b'), sha('c'));
    assert_eq!(
        got,
        [
            ("noderax-agent", "https://cdn/a", a.as_str()),
            ("noderax-agent-exec", "https://cdn/e", b.as_str()),
            ("noderax-agent-priv", "https://cdn/p", c.as_str()),
        ]
    );
    // Round trip keeps the extension; a manifest without it still parses
    // (the control plane's view) but cannot be installed by this agent.
    let again: release::ReleaseManifest =
        serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(again, m);
    let mut single = m.clone();
    single
        .artifacts
        .get_mut("amd64")
        .unwrap()
        .components
        .clear();
    let e = single.downloads_for("amd64").unwrap_err();
    assert!(e.contains("does not publish noderax-agent-exec"), "{e}");
    assert!(
        !serde_json::to_string(&single)
            .unwrap()
            .contains("components")
    );
    let mut bad = m;
    bad.artifacts
        .get_mut("amd64")
        .unwrap()
        .components
        .get_mut("noderax-agent-priv")
        .unwrap()
        .sha256 = "xyz".into();
    let e = bad.downloads_for("amd64").unwrap_err();
    assert!(e.contains("no valid sha256 for noderax-agent-priv"), "{e}");
}

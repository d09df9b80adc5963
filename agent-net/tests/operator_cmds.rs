//! `noderax-agent task-output`, `status` and `doctor` as real processes,
//! with a temporary config and state directory (and the testbed control
//! plane where a live API matters).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use noderax_agent::agent_status::AgentStatus;
use noderax_agent::state_dir::StateDir;
use noderax_agent::task_journal::TaskJournal;
use noderax_agent::task_report::{ExitRecord, TaskRecord};
use shared::api::task::{CompletionStatus, LogStream};
use shared::identity::{self, Identity};
use shared::timestamp::Timestamp;
use testbed::{Testbed, TestbedConfig};

const TASK: &str = "3f1c2a9e-5b7d-4c1e-9a2b-0c4d5e6f7a8b";

/// A temporary agent set-up: `config.json` and `state/` in one directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(api_url: &str) -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let config = serde_json::json!({
            "api_url": api_url,
            "state_file": s.state_file(),
            "exec_socket": s.path().join("exec.sock"),
            "request_timeout": "5s",
        });
        std::fs::write(s.path().join("config.json"), config.to_string()).unwrap();
        s
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state_file(&self) -> PathBuf {
        self.path().join("state/agent_identity.json")
    }

    fn state(&self) -> StateDir {
        StateDir::for_state_file(&self.state_file())
    }

    fn enroll(&self, node_id: &str, token: &str) {
        identity::save(
            &self.state_file(),
            &Identity {
                node_id: node_id.into(),
                agent_token: token.into(),
            },
            Timestamp::now(),
        )
        .unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_noderax-agent"));
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NODERAX_CONFIG_FILE", self.path().join("config.json"))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run noderax-agent")
    }

    /// For tests with a testbed in this process's runtime.
    async fn run_async(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line of `check` in doctor's output.
fn check_line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}: ")))
        })
        .unwrap_or_else(|| panic!("no {check} line in\n{out}"))
}

fn level(line: &str) -> &str {
    line.split_whitespace().next().unwrap()
}

// ---- task-output -------------------------------------------------------------------

/// Writes a journal with binary bytes, a multi-MB stdout, all three
/// streams interleaved and a dropped record; returns what each stream holds
/// and everything in order.
fn write_task(s: &Setup, record: Option<TaskRecord>) -> (Vec<u8>, [Vec<u8>; 3]) {
    let dir = s.state().task(TASK);
    let mut j = TaskJournal::open(&dir).unwrap();
    let mut all = Vec::new();
    let mut per: [Vec<u8>; 3] = Default::default();
    let mut seq = 0;
    let mut put = |j: &mut TaskJournal, stream: LogStream, bytes: &[u8]| {
        seq += 1;
        j.append(stream, seq, bytes).unwrap();
        all.extend_from_slice(bytes);
        let i = match stream {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
            LogStream::System => 2,
        };
        per[i].extend_from_slice(bytes);
    };
    put(
        &mut j,
        LogStream::System,
        b"running shell.exec via /bin/sh\n",
    );
    put(&mut j, LogStream::Stdout, b"hello\n");
    put(&mut j, LogStream::Stderr, &[0, 0xff, 0xfe, b'\n', 0x80]);
    // 3 MiB plus a bit, every byte value, in 64 KiB chunks with stderr between.
    let big: Vec<u8> = (0..(3 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    for (n, chunk) in big.chunks(64 * 1024).enumerate() {
        put(&mut j, LogStream::Stdout, chunk);
        if n % 10 == 0 {
            put(
                &mut j,
                LogStream::Stderr,
                format!("progress {n}\n").as_bytes(),
            );
        }
    }
    // A euro sign split across two chunks of one stream.
    put(&mut j, LogStream::Stdout, b"price: \xe2\x82");
    put(&mut j, LogStream::Stderr, b"between\n");
    put(&mut j, LogStream::Stdout, b"\xac\n");
    seq += 1;
    j.append_dropped(LogStream::Stdout, seq, 4096).unwrap();
    j.sync().unwrap();
    j.set_delivered([100, 0, 0]).unwrap();
    drop(j);
    if let Some(r) = record {
        r.save(&dir).unwrap();
    }
    (all, per)
}

fn finished_record() -> TaskRecord {
    TaskRecord {
        task_id: TASK.into(),
        task_type: "shell.exec".into(),
        exit: Some(ExitRecord {
            status: CompletionStatus::Failed,
            exit_code: 3,
            duration_ms: 1500,
            error: Some("command exited with code 3".into()),
            result: None,
            finished_at: Timestamp::now(),
        }),
        completed_sent: false,
        ended: None,
    }
}

#[test]
fn task_output_prints_exactly_the_stored_bytes_in_order() {
    let s = Setup::new("http://127.0.0.1:9");
    let (all, _) = write_task(&s, Some(finished_record()));
    let journal = s.state().task(TASK).join("output.journal");
    // A record the agent is still writing: must be neither printed nor cut off.
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[1, 0, 99, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, b'x']);
    std::fs::write(&journal, &bytes).unwrap();

    let out = s.run(&["task-output", TASK]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == all, "stdout differs from the journal");
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "task-output changed the journal"
    );
    let summary = text(&out.stderr);
    for want in [
        "shell.exec",
        "failed, exit code 3",
        "command exited with code 3",
        &format!("output: {} bytes", all.len()),
        "4096 bytes were dropped",
        &format!("log delivered up to 100 of {} bytes", all.len()),
        "completion not accepted yet",
    ] {
        assert!(summary.contains(want), "{want:?} not in\n{summary}");
    }

    // Upper-case ids are the same task.
    let out = s.run(&["task-output", "-q", &TASK.to_uppercase()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == all);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn task_output_filters_streams_and_prints_json() {
    let s = Setup::new("http://127.0.0.1:9");
    let mut record = finished_record();
    record.completed_sent = true;
    let (_, per) = write_task(&s, Some(record));

    let out = s.run(&["task-output", TASK, "--stream", "stderr"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == per[1], "stderr filter");
    assert!(text(&out.stderr).contains("delivery to the control plane: complete"));

    let out = s.run(&[
        "task-output",
        TASK,
        "--stream",
        "system",
        "--stream",
        "stdout",
    ]);
    assert!(out.status.success());
    let mut want = per[2].clone();
    want.extend_from_slice(&per[0]); // the system note came first
    assert!(out.stdout == want, "system+stdout filter");

    let out = s.run(&["task-output", TASK, "--json", "--stream", "stdout"]);
    assert!(out.status.success());
    let mut joined = String::new();
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["stream"], "stdout");
        joined.push_str(v["text"].as_str().unwrap());
    }
    assert_eq!(joined, String::from_utf8_lossy(&per[0]));
    assert!(joined.ends_with("price: €\n"), "a split character survives");

    let out = s.run(&["task-output", TASK, "--stream", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn task_output_refuses_bad_ids_and_explains_missing_tasks() {
    let s = Setup::new("http://127.0.0.1:9");
    for bad in [
        "abc",
        "../../etc/passwd",
        "3f1c2a9e-5b7d-4c1e-9a2b-0c4d5e6f7a8",
    ] {
        let out = s.run(&["task-output", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains("is not a task id") && err.contains("UUID"),
            "{err}"
        );
    }
    let out = s.run(&["task-output", TASK]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let tasks = s.state().tasks();
    for want in [
        "no output of task",
        &tasks.join(TASK).display().to_string(),
        "does not exist",
        "task_output_retention (168h0m0s)",
        "512 MiB",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(!tasks.exists(), "nothing is created");

    // A task whose directory exists but has no output yet.
    let dir = s.state().task(TASK);
    let mut record = finished_record();
    record.exit = None;
    record.save(&dir).unwrap();
    let out = s.run(&["task-output", TASK]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("no exit recorded yet") && err.contains("none stored"),
        "{err}"
    );
    assert!(!dir.join("output.journal").exists(), "nothing is created");
}

// ---- status ------------------------------------------------------------------------

fn running_status(node_id: &str, api_url: &str) -> AgentStatus {
    let mut st = AgentStatus {
        pid: std::process::id(),
        version: shared::build_info::VERSION.into(),
        node_id: node_id.into(),
        api_url: api_url.into(),
        started_at: Some(Timestamp::now()),
        updated_at: Some(Timestamp::now()),
        root_access_profile: "operational".into(),
        running_tasks: vec![TASK.into()],
        undelivered_tasks: 2,
        undelivered_bytes: 12_345,
        ..Default::default()
    };
    st.realtime.enabled = true;
    st.realtime.authenticated = true;
    st.realtime.connects = 1;
    st.executor.mode = "child process".into();
    st.executor.connected = true;
    st.executor.pid = Some(4242);
    st.executor.version = Some(shared::build_info::VERSION.into());
    st
}

#[test]
fn status_without_a_status_file_says_not_running() {
    let s = Setup::new("http://127.0.0.1:9");
    let out = s.run(&["status", "--no-api-check"]);
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert!(o.contains("not running: no status file"), "{o}");
    assert!(o.contains("not enrolled"), "{o}");
    assert!(o.contains("unhealthy"), "{o}");

    let out = s.run(&["status", "--json", "--no-api-check"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agent"], "not-running");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["enrolled"], false);
    assert!(v["status"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_running_agent_and_rejected_credentials() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let s = Setup::new(&tb.api_url());
    let (node_id, token) = tb.create_node("status-host");
    s.enroll(&node_id, &token);
    let mut st = running_status(&node_id, &tb.api_url());
    st.claim.credentials_rejected = true;
    st.claim.consecutive_failures = 7;
    st.claim.last_error = Some("HTTP 401: Invalid agent credentials".into());
    st.last_error = Some("claim: HTTP 401: Invalid agent credentials".into());
    st.last_error_at = Some(Timestamp::now());
    st.save(&s.state().status_file()).unwrap();

    let out = s.run_async(&["status"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "credentials rejected is unhealthy"
    );
    let o = text(&out.stdout);
    assert!(!o.contains(&token), "status printed the token");
    for want in [
        format!("version:        {}", shared::build_info::VERSION),
        format!("{}", s.path().join("config.json").display()),
        format!("api_url:        {}", tb.api_url()),
        format!("node id:        {node_id} (enrolled"),
        format!("running, pid {}", std::process::id()),
        "CREDENTIALS REJECTED".to_owned(),
        "7 consecutive failures".to_owned(),
        "authenticated (1 connects)".to_owned(),
        "connected (child process, pid 4242".to_owned(),
        "root access:    operational".to_owned(),
        format!("running tasks:  1: {TASK}"),
        "2 tasks with undelivered events, 12345 bytes".to_owned(),
        "claim: HTTP 401: Invalid agent credentials".to_owned(),
        "API:            reachable".to_owned(),
        "unhealthy: credentials rejected by the control plane".to_owned(),
    ] {
        assert!(o.contains(&want), "{want:?} not in\n{o}");
    }

    let out = s.run_async(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stdout).contains(&token));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["agent"], "running");
    assert_eq!(v["nodeId"], node_id.as_str());
    assert_eq!(v["status"]["claim"]["credentialsRejected"], true);
    assert_eq!(v["api"]["reachable"], true);
    assert_eq!(v["healthy"], false);

    // Healthy once the credentials are accepted again.
    st.claim = Default::default();
    st.last_error = None;
    st.save(&s.state().status_file()).unwrap();
    let out = s.run_async(&["status"]).await;
    let o = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{o}");
    assert!(o.contains("health:         healthy"), "{o}");

    // A status written by a process that is gone.
    st.pid = dead_pid();
    st.save(&s.state().status_file()).unwrap();
    let out = s.run_async(&["status", "--no-api-check"]).await;
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert!(
        o.contains(&format!("not running: pid {} has exited", st.pid)),
        "{o}"
    );
    assert!(o.contains("last state:     as pid"), "{o}");
}

/// The pid of a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn status_reports_an_unreachable_api() {
    let s = Setup::new(&format!("http://127.0.0.1:{}", closed_port()));
    let out = s.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert!(o.contains("UNREACHABLE: connection refused"), "{o}");
}

/// A local port nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---- doctor ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_against_the_testbed() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let s = Setup::new(&tb.api_url());
    let (node_id, token) = tb.create_node("doctor-host");
    s.enroll(&node_id, &token);

    let out = s.run_async(&["doctor"]).await;
    let o = text(&out.stdout);
    assert!(!o.contains(&token), "doctor printed the token");
    for check in [
        "config",
        "config file mode",
        "identity",
        "state file",
        "state directory",
        "dns",
        "tcp",
        "http",
        "realtime",
        "executor",
    ] {
        assert_eq!(level(check_line(&o, check)), "ok", "{check} in\n{o}");
    }
    assert!(check_line(&o, "identity").contains(&node_id));
    assert!(check_line(&o, "http").contains("accepted the agent's credentials"));
    assert!(check_line(&o, "realtime").contains("namespace /agent-realtime joined"));
    // Plain http is allowed, with a warning.
    assert_eq!(level(check_line(&o, "tls")), "warn", "{o}");
    let failed = o.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }), "{o}");
    // The realtime check never authenticated (that would replace a running
    // agent's session); the credentials were checked with a read-only GET.
    assert!(
        !tb.events().iter().any(|e| e.event == "agent.auth"),
        "doctor sent agent.auth"
    );
    assert!(
        tb.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with("/control") && r.status == 404)
    );

    let out = s.run_async(&["doctor", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "realtime" && c["level"] == "ok")
    );

    // The token readable by others.
    std::fs::set_permissions(s.state_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.run_async(&["doctor"]).await;
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    let line = check_line(&o, "state file");
    assert_eq!(level(line), "FAIL", "{o}");
    assert!(
        line.contains("0644") && line.contains("chmod 600"),
        "{line}"
    );
    std::fs::set_permissions(s.state_file(), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A secret in a group-readable config file.
    let config = s.path().join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["agent_token"] = serde_json::Value::String(token.clone());
    std::fs::write(&config, c.to_string()).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = s.run_async(&["doctor"]).await;
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    let line = check_line(&o, "config file mode");
    assert_eq!(level(line), "FAIL", "{o}");
    assert!(
        line.contains("agent_token") && line.contains("chmod 600"),
        "{line}"
    );

    // Credentials the control plane does not know.
    std::fs::write(
        &config,
        serde_json::json!({
            "api_url": tb.api_url(),
            "state_file": s.state_file(),
            "exec_socket": s.path().join("exec.sock"),
        })
        .to_string(),
    )
    .unwrap();
    s.enroll(&node_id, &"0".repeat(64));
    let out = s.run_async(&["doctor"]).await;
    let o = text(&out.stdout);
    let line = check_line(&o, "http");
    assert_eq!(level(line), "FAIL", "{o}");
    assert!(line.contains("rejected the agent's credentials"), "{line}");
}

#[test]
fn doctor_fails_for_an_unreachable_api() {
    let port = closed_port();
    let s = Setup::new(&format!("http://127.0.0.1:{port}"));
    s.enroll(TASK, &"a".repeat(64));
    let out = s.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    assert_eq!(level(check_line(&o, "dns")), "ok", "{o}");
    let tcp = check_line(&o, "tcp");
    assert_eq!(level(tcp), "FAIL", "{o}");
    assert!(tcp.contains("connection refused"), "{tcp}");
    for check in ["http", "realtime"] {
        let line = check_line(&o, check);
        assert_eq!(level(line), "FAIL", "{o}");
        assert!(line.contains("not tried"), "{line}");
    }
    assert!(text(&out.stderr).contains("failed"));

    // An api_url whose host does not resolve.
    let s = Setup::new("https://noderax-doctor-test.invalid");
    let out = s.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let o = text(&out.stdout);
    let dns = check_line(&o, "dns");
    assert_eq!(level(dns), "FAIL", "{o}");
    assert!(
        dns.contains("does not resolve") || dns.contains("no DNS answer"),
        "{dns}"
    );
}

#[test]
fn doctor_follows_the_helpers_link_and_checks_the_directories_on_the_way() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the helper and its directories must be root's");
        return;
    }
    let s = Setup::new(&format!("http://127.0.0.1:{}", closed_port()));
    // The installed layout: libexec/noderax-agent-priv -> current/... and
    // current -> releases/1.0.0, in a root-owned 0700 directory in /tmp.
    let layout = tempfile::tempdir_in("/tmp").unwrap();
    let l = layout.path();
    let release = l.join("releases/1.0.0");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::create_dir(l.join("libexec")).unwrap();
    let helper = release.join("noderax-agent-priv");
    std::fs::write(&helper, "#!/bin/sh\n").unwrap();
    for d in [l.join("releases"), release.clone(), l.join("libexec")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("releases/1.0.0", l.join("current")).unwrap();
    std::os::unix::fs::symlink(
        l.join("current/noderax-agent-priv"),
        l.join("libexec/noderax-agent-priv"),
    )
    .unwrap();
    let link = l.join("libexec/noderax-agent-priv");
    let args = [
        "doctor",
        "--sudo",
        "/nonexistent/sudo",
        "--helper",
        link.to_str().unwrap(),
    ];

    let o = text(&s.run(&args).stdout);
    let line = check_line(&o, "root helper");
    assert_eq!(level(line), "ok", "{o}");
    assert!(
        line.contains(&format!("-> {}", helper.display())) && line.contains("mode 0755"),
        "{line}"
    );

    // A release directory others can write: the helper could be replaced.
    std::fs::set_permissions(&release, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = text(&s.run(&args).stdout);
    let line = check_line(&o, "root helper");
    assert_eq!(level(line), "FAIL", "{o}");
    assert!(
        line.contains(&format!(
            "{} (owner root (uid 0), mode 0777)",
            release.display()
        )),
        "{line}"
    );
}

#[test]
fn doctor_shakes_hands_with_the_executor_only_when_no_agent_runs() {
    use shared::ipc::{self, ExecMessage, Hello, Inventory, NetMessage, TaskState};
    use std::os::unix::net::UnixListener;

    let s = Setup::new(&format!("http://127.0.0.1:{}", closed_port()));
    let sock = s.path().join("exec.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // A stand-in executor: Hello, then the inventory, then wait for the end.
    let fake = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let hello = Hello {
            agent_version: "9.9.9-fake".into(),
            pid: 4242,
            ..Hello::current()
        };
        ipc::write_message(&mut conn, &ExecMessage::Hello(hello)).unwrap();
        let theirs: Option<NetMessage> = ipc::read_message(&mut conn).unwrap();
        let inventory = Inventory {
            tasks: vec![TaskState {
                task_id: TASK.into(),
                last_seq: 3,
                exit: None,
            }],
            terminals: Vec::new(),
        };
        ipc::write_message(&mut conn, &ExecMessage::Inventory(inventory)).unwrap();
        let after: Option<NetMessage> = ipc::read_message(&mut conn).unwrap_or(None);
        (theirs, after, listener)
    });
    let out = s.run(&["doctor"]);
    let o = text(&out.stdout);
    let line = check_line(&o, "executor");
    assert_eq!(level(line), "ok", "{o}");
    for want in ["version 9.9.9-fake", "pid 4242", "1 tasks running"] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    let (theirs, after, listener) = fake.join().unwrap();
    match theirs {
        Some(NetMessage::Hello(h)) => assert_eq!(h.agent_version, shared::build_info::VERSION),
        other => panic!("doctor sent {other:?} instead of Hello"),
    }
    assert!(after.is_none(), "doctor sent a request: {after:?}");

    // With an agent running, the executor's single session is left alone.
    s.enroll(TASK, &"a".repeat(64));
    running_status(TASK, "http://x")
        .save(&s.state().status_file())
        .unwrap();
    let out = s.run(&["doctor"]);
    let o = text(&out.stdout);
    let line = check_line(&o, "executor");
    assert_eq!(level(line), "ok", "{o}");
    assert!(line.contains("not connecting"), "{line}");
    assert!(line.contains("reports the executor connected"), "{line}");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().err().map(|e| e.kind()),
        Some(std::io::ErrorKind::WouldBlock),
        "doctor connected to the executor while an agent runs"
    );
}

#[test]
fn the_example_config_uses_only_real_keys() {
    use shared::config::{Location, load};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.json");
    let loaded = load(
        &Location::Explicit { path, from: "test" },
        &std::collections::BTreeMap::new(),
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.require_runnable().unwrap();
}

// ---- update by hand ------------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A testbed whose CDN publishes release `version` (tampered or not), a
/// set-up pointing at it, and a stand-in root helper that records its
/// arguments and what was staged.
async fn update_setup(version: &str, tamper: bool) -> (Testbed, tempfile::TempDir, Setup, PathBuf) {
    let cdn = tempfile::tempdir().unwrap();
    let tb = Testbed::start(TestbedConfig {
        release_dir: Some(cdn.path().to_owned()),
        ..TestbedConfig::default()
    })
    .await
    .unwrap();
    let base = format!("{}/cdn", tb.api_url());
    testbed::release_fixture::publish(cdn.path(), &base, version, tamper);
    let s = Setup::new(&tb.api_url());
    let config = serde_json::json!({
        "api_url": tb.api_url(),
        "state_file": s.state_file(),
        "update_base_url": base,
        "update_github_api_url": format!("{}/no-github", tb.api_url()),
    });
    std::fs::write(s.path().join("config.json"), config.to_string()).unwrap();
    std::fs::create_dir_all(s.state().root()).unwrap();
    let helper = s.path().join("helper");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncd {updates}/$4 && ls -ln >> {log}\n",
            log = s.path().join("helper.log").display(),
            updates = s.state().updates().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (tb, cdn, s, helper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_by_hand_stages_a_verified_release_for_the_root_helper() {
    let (_tb, _cdn, s, helper) = update_setup("9.9.9", false).await;
    let helper_arg = format!("--helper={}", helper.display());
    if !is_root() {
        let out = s
            .run_async(&["update", "--target-version", "9.9.9", &helper_arg])
            .await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("run it as root"),
            "{}",
            text(&out.stderr)
        );
        return;
    }
    // The state directory belongs to the network user; what root stages
    // there is handed to it.
    std::os::unix::fs::chown(s.state().root(), Some(4242), Some(4242)).unwrap();
    // The original agent's request file, read once and deleted.
    let request = s.path().join("update-request.json");
    std::fs::write(&request, r#"{"targetVersion":"9.9.9"}"#).unwrap();
    let out = s
        .run_async(&[
            "update",
            "--request-file",
            request.to_str().unwrap(),
            &helper_arg,
        ])
        .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(!request.exists(), "the request is consumed");
    for step in [
        "downloading 20%",
        "verifying 45%",
        "installing 70%",
        "restarting 90%",
    ] {
        assert!(stdout.contains(step), "{step} missing from:\n{stdout}");
    }
    let log = std::fs::read_to_string(s.path().join("helper.log")).unwrap();
    assert!(log.starts_with("update apply --version 9.9.9\n"), "{log}");
    let arch = shared::release_files::host_arch().unwrap();
    for program in shared::release_files::PROGRAMS {
        let name = shared::release_files::artifact_name(program, arch);
        let line = log
            .lines()
            .find(|l| l.ends_with(&name))
            .unwrap_or_else(|| panic!("{name} not staged: {log}"));
        assert!(
            line.contains(" 4242 4242 "),
            "owned by the state's owner: {line}"
        );
    }

    // A tampered release: refused, the helper is never asked.
    let (_tb, _cdn, s, helper) = update_setup("9.9.9", true).await;
    let out = s
        .run_async(&[
            "update",
            "--target-version",
            "9.9.9",
            &format!("--helper={}", helper.display()),
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("tampered"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.path().join("helper.log").exists());
    assert!(!s.state().updates().join("9.9.9").exists());
}

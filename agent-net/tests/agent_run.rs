//! The real agent: `noderax-agent run` and `noderax-agent-exec` as separate
//! processes over a real socket, against the testbed control plane. These
//! are the acceptance tests of the network process (issue 5): task
//! lifecycles, terminals, the 1 000 000-line task, a 60-second outage,
//! `kill -9` of either process, credentials and throttling faults, lease
//! expiry, and a socket cut during a terminal session.
//!
//! Both binaries must be built (`cargo build --workspace`; nextest and
//! `scripts/test.sh` do that).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use noderax_agent::agent_status::AgentStatus;
use serde_json::{Value, json};
use shared::api::task::TaskStatus;
use shared::identity::Identity;
use shared::timestamp::Timestamp;
use testbed::{FaultAction, FaultRule, RouteMatch, Testbed, TestbedConfig};

/// Generous limits: only a hang should ever reach them (the outage test
/// needs 60 s of outage plus up to 30 s of back-off plus delivery).
const WAIT: Duration = Duration::from_secs(240);

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_noderax-agent"))
}

fn exec_bin() -> PathBuf {
    let p = agent_bin().with_file_name("noderax-agent-exec");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How the agent reaches its executor in a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExecMode {
    /// The agent starts the executor as its child.
    Child,
    /// The test starts the executor on a socket, as systemd would.
    Socket,
}

/// A testbed, a node identity and a state directory for one agent.
struct Node {
    tb: Testbed,
    node_id: String,
    dir: tempfile::TempDir,
    agent: Option<Child>,
    executor: Option<Child>,
    mode: ExecMode,
    /// Stand-ins for sudo and the root helper (self-update tests); without
    /// them package changes and updates fail cleanly.
    root_helper: Option<(PathBuf, PathBuf)>,
    /// The testbed's release CDN directory, if it serves one.
    cdn: Option<tempfile::TempDir>,
}

impl Node {
    async fn start(config: TestbedConfig, mode: ExecMode) -> Self {
        Self::start_with(config, mode, json!({})).await
    }

    /// `extra`: config keys added to (or replacing) the defaults below.
    async fn start_with(config: TestbedConfig, mode: ExecMode, extra: Value) -> Self {
        let mut node = Self::prepare(config, mode, extra).await;
        node.launch();
        node
    }

    /// The testbed, identity and config, but no process yet.
    async fn prepare(config: TestbedConfig, mode: ExecMode, extra: Value) -> Self {
        let tb = Testbed::start(config).await.unwrap();
        let (node_id, agent_token) = tb.create_node("e2e-node");
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        shared::identity::save(
            &state.join("agent_identity.json"),
            &Identity {
                node_id: node_id.clone(),
                agent_token,
            },
            Timestamp::now(),
        )
        .unwrap();
        let mut config = json!({
            "api_url": tb.api_url(),
            "state_file": state.join("agent_identity.json"),
            "exec_socket": dir.path().join("exec.sock"),
            "log_level": "debug",
            "request_timeout": "5s",
            "kill_grace": "2s",
            "shutdown_timeout": "5s",
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Self {
            tb,
            node_id,
            dir,
            agent: None,
            executor: None,
            mode,
            root_helper: None,
            cdn: None,
        }
    }

    /// Starts the executor (socket mode) and the agent.
    fn launch(&mut self) {
        if self.mode == ExecMode::Socket {
            self.start_executor();
        }
        self.start_agent();
    }

    /// Changes keys of the agent's config file.
    fn set_config(&self, keys: Value) {
        let path = self.dir.path().join("config.json");
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for (k, v) in keys.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    fn start_executor(&mut self) {
        let sock = self.dir.path().join("exec.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(exec_bin())
            .arg("--listen")
            .arg(&sock)
            .arg("--state-dir")
            .arg(self.dir.path().join("exec"))
            .arg("--kill-grace")
            .arg("2s")
            .args(self.helper_args())
            .stdin(Stdio::null())
            .stderr(self.log("exec.log"))
            .spawn()
            .unwrap();
        self.executor = Some(child);
        // The socket exists once the executor listens.
        for _ in 0..500 {
            if sock.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the executor did not create {}", sock.display());
    }

    fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// The executor's root helper options: the stand-ins, or none at all
    /// (package changes and updates then fail cleanly).
    fn helper_args(&self) -> Vec<String> {
        match &self.root_helper {
            Some((sudo, helper)) => vec![
                format!("--sudo={}", sudo.display()),
                format!("--helper={}", helper.display()),
            ],
            None => vec!["--helper=/nonexistent/noderax-agent-priv".into()],
        }
    }

    fn start_agent_with(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--config-file")
            .arg(self.dir.path().join("config.json"))
            .arg("run")
            .arg("--exec-program")
            .arg(exec_bin())
            .arg("--executor")
            .arg(match self.mode {
                ExecMode::Child => "child",
                ExecMode::Socket => "socket",
            })
            // Where a stand-in root helper records an update's outcome.
            .env(
                "NODERAX_TEST_UPDATE_RESULT_FILE",
                self.dir.path().join("update-result.json"),
            );
        for arg in self.helper_args() {
            cmd.arg(format!("--exec-arg={arg}"));
        }
        if is_root() {
            cmd.arg("--allow-root");
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log("agent.log"))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn kill9_agent(&mut self) {
        let mut c = self.agent.take().expect("agent running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn status(&self) -> Option<AgentStatus> {
        AgentStatus::load(&self.dir.path().join("state/status.json"))
            .ok()
            .flatten()
    }

    /// Waits until `f` holds for the agent's status file.
    async fn wait_status(&self, what: &str, f: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.status().filter(|s| f(s)) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}\nagent log:\n{}",
                self.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) {
        self.wait_status("executor connected and socket authenticated", |s| {
            s.executor.connected && s.realtime.authenticated
        })
        .await;
    }

    fn task(&self, task_type: &str, payload: Value) -> String {
        self.tb
            .create_task(&self.node_id, task_type, payload)
            .unwrap()
    }

    fn shell(&self, command: &str) -> String {
        self.task("shell.exec", json!({ "command": command }))
    }

    async fn done(&self, id: &str) -> testbed::model::Task {
        match self.tb.wait_task_done(id, WAIT).await {
            Some(t) => t,
            None => panic!(
                "task {id} did not finish: {:?}\nagent log:\n{}",
                self.tb.task(id).map(|t| (t.status, t.logs.len())),
                self.agent_log()
            ),
        }
    }

    async fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}\nagent log:\n{}",
                self.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The task's log messages as stored by the control plane.
    fn messages(&self, id: &str) -> Vec<testbed::model::LogRow> {
        self.tb.task_logs_all(id)
    }

    /// The control plane never had to reject a payload or event of this agent.
    fn assert_no_rejections(&self) {
        let bad: Vec<_> = self
            .tb
            .requests()
            .into_iter()
            .filter(|r| r.status == 400 || r.status == 422)
            .map(|r| format!("{} {} -> {}: {}", r.method, r.path, r.status, r.body))
            .collect();
        assert!(bad.is_empty(), "rejected requests: {bad:#?}");
        let errors: Vec<_> = self
            .tb
            .events()
            .into_iter()
            .filter(|e| e.event == "agent.error")
            .map(|e| e.payload.to_string())
            .collect();
        assert!(errors.is_empty(), "agent.error events: {errors:#?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in [self.agent.as_mut(), self.executor.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Processes whose command line contains `marker` (checked in /proc).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Arguments are NUL-separated in /proc; compare with spaces.
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ")
            && cmd.contains(marker)
            && !cmd.contains("noderax-agent")
            && !cmd.contains("agent_run")
        {
            found.push(pid);
        }
    }
    found
}

fn text(rows: &[testbed::model::LogRow]) -> String {
    rows.iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_through_their_whole_lifecycle() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;

    // Package changes need the operational profile, applied by the agent.
    node.tb
        .set_root_profile(&node.node_id, shared::api::RootProfile::Operational)
        .unwrap();
    node.wait_status("operational applied", |s| {
        s.root_access_profile == "operational"
    })
    .await;
    let ok = node.shell("echo hello; echo oops >&2");
    let fail = node.shell("echo before; exit 3");
    let list = node.task("packageList", json!({}));
    let search = node.task("packageSearch", json!({"query": "coreutils"}));
    let unknown = node.task("frobnicate.now", json!({}));
    let invalid = node.task("shell.exec", json!({"command": 42}));
    let install = node.task("packageInstall", json!({"names": ["bad name;rm"]}));

    let t = node.done(&ok).await;
    assert_eq!(t.status, TaskStatus::Success);
    let rows = node.messages(&ok);
    assert_eq!(
        rows.iter()
            .map(|r| (r.level.as_str(), r.message.as_str()))
            .collect::<Vec<_>>(),
        vec![("stdout", "hello"), ("stderr", "oops")]
    );
    assert_eq!(t.result.as_ref().unwrap()["exitCode"], 0);

    let t = node.done(&fail).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.result.as_ref().unwrap()["exitCode"], 3);
    assert_eq!(text(&node.messages(&fail)), "before");

    let t = node.done(&list).await;
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    let packages = t.result.as_ref().unwrap()["packages"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        packages.iter().any(|p| p["name"] == "coreutils"),
        "the real dpkg database lists coreutils"
    );

    let t = node.done(&search).await;
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    assert!(t.result.as_ref().unwrap()["results"].is_array());

    for (id, why) in [
        (&unknown, "frobnicate.now"),
        (&invalid, "invalid task payload"),
        (&install, "bad name;rm"),
    ] {
        let t = node.done(id).await;
        assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
        let result = t.result.as_ref().unwrap();
        assert_eq!(result["exitCode"], -1, "{t:?}");
        assert!(
            result["error"].as_str().unwrap().contains(why),
            "error names the problem: {t:?}"
        );
    }
    // The agent is still there and working after all that.
    let again = node.shell("echo still-alive");
    assert_eq!(node.done(&again).await.status, TaskStatus::Success);
    node.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_stop_the_whole_process_group() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;

    let cancel_marker = "31.4159";
    let cancelled = node.shell(&format!(
        "sleep {cancel_marker} & sleep {cancel_marker}; echo never"
    ));
    node.wait_for("the task's processes run", || {
        (processes_with(&format!("sleep {cancel_marker}")).len() >= 2).then_some(())
    })
    .await;
    node.tb
        .cancel_task(&cancelled, "Stopped by operator")
        .unwrap();
    let t = node.done(&cancelled).await;
    assert_eq!(t.status, TaskStatus::Cancelled, "{t:?}");
    assert!(
        processes_with(cancel_marker).is_empty(),
        "no process of the task survives"
    );

    let timeout_marker = "27.1828";
    let timed_out = node.task(
        "shell.exec",
        json!({"command": format!("sleep {timeout_marker} & sleep {timeout_marker}"), "timeout_seconds": 1}),
    );
    let t = node.done(&timed_out).await;
    // The server stores `timeout` as failed with reason "timeout" (§6.6).
    assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
    assert_eq!(t.result.as_ref().unwrap()["reason"], "timeout", "{t:?}");
    assert!(
        processes_with(timeout_marker).is_empty(),
        "no process of the task survives"
    );
    node.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_lines_arrive_complete_in_order_in_valid_entries() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;
    let id = node.shell("seq 1 1000000");
    let t = node.done(&id).await;
    assert_eq!(t.status, TaskStatus::Success);
    let rows = node.messages(&id);
    assert!(rows.iter().all(|r| r.level == "stdout"));
    assert!(
        rows.iter().all(|r| {
            let n = r.message.chars().count();
            (1..=5000).contains(&n)
        }),
        "every entry has 1..=5000 characters"
    );
    let lines: Vec<&str> = rows.iter().flat_map(|r| r.message.split('\n')).collect();
    assert_eq!(lines.len(), 1_000_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.parse::<usize>() == Ok(i + 1)),
        "every line once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_outage_mid_task_loses_and_duplicates_nothing() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;
    // Half the output, a pause in which the control plane goes away, the rest.
    let id = node.shell("seq 1 500000; sleep 3; seq 500001 1000000");
    node.wait_for("the first lines arrive", || {
        (!node.messages(&id).is_empty()).then_some(())
    })
    .await;
    node.tb.outage(Duration::from_secs(60));
    let t = node.done(&id).await;
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    let rows = node.messages(&id);
    let lines: Vec<&str> = rows.iter().flat_map(|r| r.message.split('\n')).collect();
    assert_eq!(lines.len(), 1_000_000, "nothing lost, nothing twice");
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l.parse::<usize>() == Ok(i + 1)),
        "in order"
    );
    // Refused connections were retried, not given up.
    assert!(node.agent_log().contains("agent running"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_network_process_mid_task_loses_nothing() {
    let mut node = Node::start(TestbedConfig::default(), ExecMode::Socket).await;
    node.ready().await;
    let id = node.shell("for i in $(seq 1 60); do echo line $i; sleep 0.05; done");
    node.wait_for("some lines arrive", || {
        (node.messages(&id).len() >= 5).then_some(())
    })
    .await;
    node.kill9_agent();
    // The task keeps running in the executor while the agent is away.
    tokio::time::sleep(Duration::from_millis(800)).await;
    node.start_agent();
    let t = node.done(&id).await;
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    let all = text(&node.messages(&id));
    let expected: Vec<String> = (1..=60).map(|i| format!("line {i}")).collect();
    assert_eq!(
        all.split('\n').collect::<Vec<_>>(),
        expected,
        "once each, in order"
    );
    assert!(node.agent_log().contains("resuming delivery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_executor_fails_its_task_clearly_and_the_next_one_runs() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    let st = node
        .wait_status("executor connected", |s| s.executor.connected)
        .await;
    let exec_pid = st.executor.pid.unwrap();
    let id = node.shell("echo started; sleep 60");
    node.wait_for("the task runs", || {
        (!node.messages(&id).is_empty()).then_some(())
    })
    .await;
    // SAFETY: kill(2) on the executor's pid.
    assert_eq!(unsafe { libc::kill(exec_pid as i32, libc::SIGKILL) }, 0);
    let t = node.done(&id).await;
    assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
    let error = t.result.as_ref().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("executor"),
        "the error says what happened: {error}"
    );
    assert!(error.contains("signal 9"), "and how: {error}");
    node.wait_status("executor restarted", |s| {
        s.executor.connected && s.executor.pid != Some(exec_pid)
    })
    .await;
    let next = node.shell("echo next");
    assert_eq!(node.done(&next).await.status, TaskStatus::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_are_retried_until_accepted_again() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;
    node.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/claim"),
        action: FaultAction::Status {
            code: 401,
            retry_after: None,
        },
        remaining: None,
        probability: 1.0,
    });
    // Cut the current long poll so the next claim meets the fault.
    node.tb.outage(Duration::from_millis(200));
    let st = node
        .wait_status("credentials rejected shown", |s| {
            s.claim.credentials_rejected
        })
        .await;
    assert!(
        st.claim
            .last_error
            .unwrap()
            .contains("credentials rejected"),
        "status says so"
    );
    node.tb.clear_faults();
    let id = node.shell("echo back");
    assert_eq!(node.done(&id).await.status, TaskStatus::Success);
    node.wait_status("credentials accepted again", |s| {
        !s.claim.credentials_rejected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_causes_no_hot_loop() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;
    node.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/claim"),
        action: FaultAction::Status {
            code: 429,
            retry_after: None,
        },
        remaining: None,
        probability: 1.0,
    });
    node.tb.outage(Duration::from_millis(200));
    let claims = |tb: &Testbed| {
        tb.requests()
            .iter()
            .filter(|r| r.path.ends_with("/tasks/claim") && r.status == 429)
            .count()
    };
    node.wait_for("the storm is met", || (claims(&node.tb) > 0).then_some(()))
        .await;
    let start = claims(&node.tb);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = claims(&node.tb) - start;
    // Exponential back-off from 1 s (full jitter, cap 60 s): a handful of
    // attempts in 20 s. A hot loop would make thousands.
    assert!(during <= 20, "{during} claims in 20 s under 429");
    node.tb.clear_faults();
    let id = node.shell("echo recovered");
    assert_eq!(node.done(&id).await.status, TaskStatus::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_lease_expired_before_started_is_never_run() {
    let node = Node::start(TestbedConfig::fast(), ExecMode::Child).await;
    node.ready().await;
    // `started` is held until the 3 s lease has expired.
    node.tb.add_fault(FaultRule {
        route: RouteMatch::new("/agent/tasks/*/started"),
        action: FaultAction::Latency(Duration::from_secs(5)),
        remaining: Some(1),
        probability: 1.0,
    });
    let marker = node.dir.path().join("ran");
    let id = node.shell(&format!("touch {}", marker.display()));
    node.wait_for("started answered", || {
        node.tb
            .requests()
            .iter()
            .any(|r| r.path.ends_with(&format!("/tasks/{id}/started")) && r.status != 0)
            .then_some(())
    })
    .await;
    let started = node
        .tb
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with(&format!("/tasks/{id}/started")))
        .unwrap();
    assert!(
        matches!(started.status, 404 | 409),
        "the lease expired: {started:?}"
    );
    node.wait_status("the refusal is counted", |s| s.claim.tasks_not_started >= 1)
        .await;
    // The server may re-queue the task and a later claim may run it; what
    // must hold is that every hand-over to the executor followed a
    // successful `started`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted_starts = node
        .tb
        .requests()
        .iter()
        .filter(|r| {
            r.path.ends_with(&format!("/tasks/{id}/started")) && (200..300).contains(&r.status)
        })
        .count();
    let hand_overs = node
        .agent_log()
        .lines()
        .filter(|l| l.contains(&id) && l.contains("claimed, timeout"))
        .count();
    assert_eq!(
        hand_overs,
        accepted_starts,
        "only started tasks were run\n{}",
        node.agent_log()
    );
    if accepted_starts == 0 {
        assert!(!marker.exists(), "the refused task did not run");
        // Its directory, set up while `started` was in flight, is gone.
        let task_dir = node.dir.path().join("state/tasks").join(&id);
        assert!(!task_dir.exists(), "{} was left behind", task_dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_echo_take_ctrl_c_and_survive_a_socket_cut() {
    let node = Node::start(TestbedConfig::default(), ExecMode::Child).await;
    node.ready().await;
    let sid = node
        .tb
        .open_terminal(&node.node_id, 120, 34, false)
        .unwrap();
    let transcript = |sid: &str| {
        String::from_utf8_lossy(&node.tb.terminal(sid).unwrap().transcript).into_owned()
    };
    node.wait_for("terminal opened", || {
        (node.tb.terminal(&sid).unwrap().status == testbed::model::SessionStatus::Open)
            .then_some(())
    })
    .await;
    node.tb.terminal_input(&sid, b"echo hi-$((6*7))\n").unwrap();
    node.wait_for("echo output", || {
        transcript(&sid).contains("hi-42").then_some(())
    })
    .await;

    // Ctrl-C interrupts a foreground command in the session.
    // A marker no other test's process has ("sleep 100" would also match
    // a parallel test's "sleep 1000", and ^C could then come before this
    // sleep started).
    node.tb
        .terminal_input(&sid, b"sleep 97.31; echo not-interrupted\n")
        .unwrap();
    node.wait_for("sleep running", || {
        (!processes_with("sleep 97.31").is_empty()).then_some(())
    })
    .await;
    node.tb.terminal_input(&sid, &[0x03]).unwrap();
    node.tb
        .terminal_input(&sid, b"echo after-$((1+1))\n")
        .unwrap();
    node.wait_for("prompt back after Ctrl-C", || {
        transcript(&sid).contains("after-2").then_some(())
    })
    .await;
    // The typed line is echoed ("...; echo not-interrupted"); its output
    // would be a line of its own.
    assert!(!transcript(&sid).contains("\nnot-interrupted"));

    // The socket is cut; the session lives on and keeps working.
    assert!(node.tb.disconnect_node(&node.node_id));
    node.wait_status("socket re-authenticated", |s| {
        s.realtime.connects >= 2 && s.realtime.authenticated
    })
    .await;
    node.tb
        .terminal_input(&sid, b"echo again-$((2+3))\n")
        .unwrap();
    node.wait_for("output after the reconnect", || {
        transcript(&sid).contains("again-5").then_some(())
    })
    .await;

    node.tb.stop_terminal(&sid, Some("done")).unwrap();
    let s = node
        .wait_for("terminal closed", || {
            let s = node.tb.terminal(&sid).unwrap();
            (s.status == testbed::model::SessionStatus::Closed).then_some(s)
        })
        .await;
    assert_eq!(s.reason.as_deref(), Some("done"));
    assert!(s.exit_code.is_some(), "exited always carries an exit code");
    node.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_cleanly_and_running_tasks_carry_on() {
    let mut node = Node::start(TestbedConfig::default(), ExecMode::Socket).await;
    node.ready().await;
    let id = node.shell("for i in $(seq 1 40); do echo line $i; sleep 0.05; done");
    node.wait_for("the task runs", || {
        (!node.messages(&id).is_empty()).then_some(())
    })
    .await;
    let mut agent = node.agent.take().unwrap();
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = node
        .wait_for("the agent exits", || agent.try_wait().unwrap())
        .await;
    assert!(status.success(), "exit status {status:?}");
    assert!(node.agent_log().contains("SIGTERM received"));
    // The executor still has the task; the next agent delivers it.
    node.start_agent();
    let t = node.done(&id).await;
    assert_eq!(t.status, TaskStatus::Success, "{t:?}");
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(
        text(&node.messages(&id)).split('\n').collect::<Vec<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_outbox_bound_is_dropped_and_reported_exactly() {
    let node = Node::start_with(
        TestbedConfig::default(),
        ExecMode::Child,
        json!({"outbox_max_bytes": 100000}),
    )
    .await;
    node.ready().await;
    // 1 010 000 bytes produced while the control plane is away.
    let id = node.shell("sleep 1; head -c 1000000 /dev/zero | tr '\\0' x | fold -w 100");
    node.wait_for("the task started", || {
        (node.tb.task(&id).unwrap().status == TaskStatus::Running).then_some(())
    })
    .await;
    node.tb.outage(Duration::from_secs(4));
    let t = node.done(&id).await;
    let error = t.result.as_ref().unwrap()["error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let dropped: u64 = error
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the completion reports the drop: {t:?}"));
    assert!(error.contains("bytes of output were dropped"), "{error}");
    let kept: u64 = node
        .messages(&id)
        .iter()
        .map(|r| r.message.len() as u64 + 1)
        .sum();
    assert_eq!(kept + dropped, 1_010_000, "kept and dropped add up exactly");
    assert!(
        dropped >= 1_010_000 - 100_000 - 256 * 1024,
        "the bound held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_running_as_the_wrong_user_is_refused() {
    let mut node = Node::start(TestbedConfig::default(), ExecMode::Socket).await;
    node.wait_status("executor connected", |s| s.executor.connected)
        .await;
    node.kill9_agent();
    // This executor runs as the test's user, not as `nobody`.
    node.start_agent_with(&["--exec-user", "nobody"]);
    let st = node
        .wait_status("the executor refused", |s| {
            s.pid != 0
                && s.executor
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("must run as uid"))
        })
        .await;
    assert!(!st.executor.connected);
    // Tasks wait rather than run on an untrusted executor.
    let id = node.shell("echo should-not-run");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node.messages(&id).is_empty());
}

// ---- self-update ---------------------------------------------------------------------

const NEW_VERSION: &str = "9.9.9";

fn write_exec(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Node {
    /// An agent whose executor reaches a stand-in root helper through a
    /// stand-in sudo, with releases served by the testbed's CDN.
    async fn for_updates(tamper: bool) -> Self {
        let cdn = tempfile::tempdir().unwrap();
        let config = TestbedConfig {
            release_dir: Some(cdn.path().to_owned()),
            ..TestbedConfig::default()
        };
        let mut node = Self::prepare(config, ExecMode::Socket, json!({})).await;
        let base = format!("{}/cdn", node.tb.api_url());
        testbed::release_fixture::publish(cdn.path(), &base, NEW_VERSION, tamper);
        node.set_config(json!({
            "update_base_url": base,
            "update_github_api_url": format!("{}/no-github", node.tb.api_url()),
        }));
        let sudo = node.dir.path().join("sudo");
        write_exec(&sudo, "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        // Records what it was asked and the digests of what was staged.
        let helper = node.dir.path().join("noderax-agent-priv");
        write_exec(
            &helper,
            &format!(
                "#!/bin/sh\necho \"$*\" >> {log}\n\
                 cd {state}/updates/$4 && sha256sum * >> {log}\n\
                 echo 'noderax-agent-priv: step: restarting: handed to the noderax-agent-update unit'\n",
                log = node.dir.path().join("helper.log").display(),
                state = node.dir.path().join("state").display(),
            ),
        );
        node.root_helper = Some((sudo, helper));
        node.cdn = Some(cdn);
        node.launch();
        node
    }

    fn restart_both(&mut self) {
        self.kill9_agent();
        if let Some(mut c) = self.executor.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }

    fn helper_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("helper.log")).unwrap_or_default()
    }

    /// Starts a rollout of [`NEW_VERSION`] to this node; returns its target id.
    async fn roll_out(&self) -> String {
        // Nodes made by the testbed did not enroll, so no arch was reported.
        let arch = shared::release_files::host_arch().unwrap();
        self.tb.set_arch(&self.node_id, arch).unwrap();
        self.wait_for("the node is online", || {
            self.tb.node(&self.node_id).filter(|n| n.online).map(|_| ())
        })
        .await;
        let rollout = self
            .tb
            .create_rollout(NEW_VERSION, &[&self.node_id], false)
            .unwrap();
        self.tb.rollout(&rollout).unwrap().targets[0].clone()
    }

    async fn target_reaches(&self, target: &str, status: &str) -> testbed::model::Target {
        self.wait_for(&format!("target {status}"), || {
            self.tb
                .target(target)
                .filter(|t| t.history.iter().any(|h| h == status))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_downloaded_verified_handed_over_and_settled_after_the_restart() {
    let mut node = Node::for_updates(false).await;
    node.ready().await;
    let target = node.roll_out().await;
    let t = node.target_reaches(&target, "restarting").await;
    assert_eq!(
        t.history,
        [
            "dispatched",
            "downloading",
            "verifying",
            "installing",
            "restarting"
        ]
    );
    let task_id = t.task_id.clone().unwrap();
    let task = node.done(&task_id).await;
    assert_eq!(task.status, TaskStatus::Success, "{task:?}");
    let result = task.result.clone().unwrap();
    assert_eq!(result["status"], "handoff", "{result}");
    assert_eq!(result["targetVersion"], NEW_VERSION);
    assert_eq!(result["targetId"], target.as_str());

    // The helper was asked once, and found all three programs staged with
    // the published digests.
    let log = node.helper_log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], format!("update apply --version {NEW_VERSION}"));
    let arch = shared::release_files::host_arch().unwrap();
    for program in shared::release_files::PROGRAMS {
        let name = shared::release_files::artifact_name(program, arch);
        let sha = testbed::release_fixture::sha256_hex(
            testbed::release_fixture::program_body(program, NEW_VERSION).as_bytes(),
        );
        assert!(
            lines.contains(&format!("{sha}  {name}").as_str()),
            "{name} staged as published: {log}"
        );
    }
    let state = node.dir.path().join("state");
    assert!(state.join("updates/pending.json").is_file());

    // The helper's switch fails and rolls back, then restarts the units:
    // the old agent comes back and reports why.
    std::fs::write(
        node.dir.path().join("update-result.json"),
        json!({
            "version": NEW_VERSION,
            "outcome": "rolled_back",
            "message": format!("{NEW_VERSION} did not become ready (noderax-agent.service not active for 5 consecutive checks within 60s); rolled back to 0.1.0"),
            "finishedAt": Timestamp::now().to_string(),
        })
        .to_string(),
    )
    .unwrap();
    node.restart_both();
    let t = node.target_reaches(&target, "failed").await;
    let why = t.status_message.clone().unwrap_or_default();
    assert!(
        why.contains("did not become ready") && why.contains("rolled back"),
        "the operator sees the helper's reason: {why}"
    );
    assert_eq!(t.status, "failed");
    node.wait_for("the pending record and staged release are gone", || {
        (!state.join("updates/pending.json").exists()
            && !state.join(format!("updates/{NEW_VERSION}")).exists())
        .then_some(())
    })
    .await;
    // The task stays as it was reported: the hand-off happened.
    assert_eq!(node.tb.task(&task_id).unwrap().status, TaskStatus::Success);
    node.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_release_is_refused_before_the_root_helper_is_asked() {
    let node = Node::for_updates(true).await;
    node.ready().await;
    let target = node.roll_out().await;
    let t = node.target_reaches(&target, "failed").await;
    assert_eq!(
        t.history,
        ["dispatched", "downloading", "verifying", "failed"]
    );
    let why = t.status_message.clone().unwrap_or_default();
    assert!(why.contains("tampered"), "{why}");
    let task = node.done(&t.task_id.clone().unwrap()).await;
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    assert!(
        task.result.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("tampered"),
        "{task:?}"
    );
    assert_eq!(node.helper_log(), "", "the helper never ran");
    let staged = node.dir.path().join(format!("state/updates/{NEW_VERSION}"));
    assert!(!staged.exists(), "nothing of the download is left");
    // The agent carries on.
    let id = node.shell("echo after");
    assert_eq!(node.done(&id).await.status, TaskStatus::Success);
    node.assert_no_rejections();
}

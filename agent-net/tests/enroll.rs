//! `noderax-agent bootstrap` and `enroll` as real processes against the
//! testbed control plane.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use testbed::{FaultAction, FaultRule, RouteMatch, Testbed, TestbedConfig};

fn agent_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_noderax-agent"));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NODERAX_CONFIG_FILE", dir.join("config.json"))
        .stdin(Stdio::null());
    cmd
}

async fn run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = agent_cmd(dir, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn bootstrap(tb: &Testbed, dir: &Path, token: &str) -> Output {
    let state = dir.join("state/agent_identity.json");
    run(
        dir,
        &[
            "bootstrap",
            "--non-interactive",
            "--api-url",
            &tb.api_url(),
            "--bootstrap-token",
            token,
            "--state-file",
            state.to_str().unwrap(),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_stores_the_identity_and_is_idempotent() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = tb.create_install("boot");
    let out = bootstrap(&tb, dir.path(), &token).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("enrolled as node"));

    let state = dir.path().join("state/agent_identity.json");
    let id = shared::identity::load(&state).unwrap().unwrap();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let node = tb
        .node(&id.node_id)
        .expect("the node exists on the control plane");
    let host = noderax_agent::host_facts::Host::detect();
    assert_eq!(node.hostname, host.hostname);
    assert_eq!(node.arch.as_deref(), Some(shared::api::host_arch()));
    assert_eq!(
        node.agent_version.as_deref(),
        Some(shared::build_info::VERSION)
    );
    assert_eq!(
        tb.install(&token).unwrap().stage,
        "bootstrap_token_consumed"
    );
    // The config now points at the control plane; the token is not in it.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(config.contains(&tb.api_url()), "{config}");
    assert!(!config.contains(&id.agent_token));

    // Running it again (an installer re-run) does not consume anything.
    let consumes = |tb: &Testbed| {
        tb.requests()
            .iter()
            .filter(|r| r.path.ends_with("/node-installs/consume"))
            .count()
    };
    let before = consumes(&tb);
    let out = bootstrap(&tb, dir.path(), &token).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("already enrolled"));
    assert_eq!(consumes(&tb), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_bootstrap_tokens_fail_once_with_a_clear_message() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    // Unknown token.
    let dir = tempfile::tempdir().unwrap();
    let out = bootstrap(&tb, dir.path(), "no-such-token").await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bootstrap token was not found") && err.contains("new install command"),
        "{err}"
    );
    assert!(!dir.path().join("state/agent_identity.json").exists());

    // Used token.
    let token = tb.create_install("twice");
    let first = tempfile::tempdir().unwrap();
    assert!(bootstrap(&tb, first.path(), &token).await.status.success());
    let second = tempfile::tempdir().unwrap();
    let out = bootstrap(&tb, second.path(), &token).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already been used"),
        "{}",
        text(&out.stderr)
    );

    // Each dead token was tried exactly once (no retry loop on 4xx).
    let consumes = tb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/node-installs/consume"))
        .count();
    assert_eq!(consumes, 3);

    // Expired token.
    let short = Testbed::start(TestbedConfig {
        token_ttl: Duration::from_millis(50),
        ..TestbedConfig::default()
    })
    .await
    .unwrap();
    let token = short.create_install("late");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = bootstrap(&short, dir.path(), &token).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    tb.add_fault(FaultRule {
        route: RouteMatch::new("/node-installs/consume"),
        action: FaultAction::Status {
            code: 503,
            retry_after: None,
        },
        remaining: Some(2),
        probability: 1.0,
    });
    let token = tb.create_install("flaky");
    let dir = tempfile::tempdir().unwrap();
    let out = bootstrap(&tb, dir.path(), &token).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let statuses: Vec<u16> = tb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/node-installs/consume"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_enrollment_approved_and_revoked() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = tb.api_url();
    let state = dir.path().join("agent_identity.json");
    let args = [
        "enroll",
        "--email",
        "Admin@Example.com",
        "--api-url",
        api.as_str(),
        "--state-file",
        state.to_str().unwrap(),
    ];
    let child = agent_cmd(dir.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let enrollment = tb
        .wait_for(Duration::from_secs(10), |tb| {
            tb.enrollments().into_iter().next()
        })
        .await
        .expect("the agent requested an enrollment");
    assert_eq!(enrollment.email, "admin@example.com");
    // The pending request is kept so an interrupted enroll resumes (written
    // once the answer arrives, just after the testbed recorded the request).
    let pending = dir.path().join("pending_enrollment.json");
    tb.wait_for(Duration::from_secs(30), |_| pending.exists().then_some(()))
        .await
        .expect("the pending enrollment is stored");
    let node_id = tb.approve_enrollment(&enrollment.token).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&enrollment.token),
        "the token is shown to the operator"
    );
    assert_eq!(
        shared::identity::load(&state).unwrap().unwrap().node_id,
        node_id
    );
    assert!(!dir.path().join("pending_enrollment.json").exists());

    // A revoked enrollment ends with a clear error and is forgotten.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent_identity.json");
    let args = [
        "enroll",
        "--email",
        "ops@example.com",
        "--api-url",
        api.as_str(),
        "--state-file",
        state.to_str().unwrap(),
    ];
    let child = agent_cmd(dir.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pending = tb
        .wait_for(Duration::from_secs(10), |tb| {
            tb.enrollments()
                .into_iter()
                .find(|e| e.email == "ops@example.com")
        })
        .await
        .unwrap();
    tb.revoke_enrollment(&pending.token).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.exists());
    assert!(!dir.path().join("pending_enrollment.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_a_terminal_needs_an_email() {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["enroll", "--api-url", &tb.api_url()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--email is required"),
        "{}",
        text(&out.stderr)
    );
    assert!(tb.enrollments().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_leaves_a_config_that_already_says_it_alone() {
    use std::os::unix::fs::MetadataExt as _;
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/agent_identity.json");
    // As the installer writes it: root-owned, unwritable for noderax-net.
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"api_url": tb.api_url(), "state_file": state}).to_string(),
    )
    .unwrap();
    let before = std::fs::metadata(&config).unwrap().ino();
    let out = bootstrap(&tb, dir.path(), &tb.create_install("boot")).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("could not write"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&config).unwrap().ino(),
        before,
        "the config file was not rewritten"
    );
}

//! `noderax-agent run` (also `noderax-agent` without a command, as the
//! original agent behaved): the long-running network process.
//!
//! Start-up order: configuration → leave root (or refuse to run as root) →
//! identity → executor link → dispatcher (which resumes unfinished tasks) →
//! claim loop, realtime session, heartbeat, status file → READY=1.
//! SIGTERM/SIGINT: stop claiming and the socket, keep running tasks (they
//! belong to the executor), deliver what is finished within
//! `shutdown_timeout`, exit 0. Anything undelivered stays on disk for the
//! next start.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use shared::config::{self, Config, Location, ProcessEnv};
use shared::identity::{self, Identity};
use shared::timestamp::Timestamp;
use tokio::sync::{mpsc, watch};

use noderax_agent::agent_status::{AgentStatus, ClaimState, ExecutorState, RealtimeState};
use noderax_agent::api_client::ApiClient;
use noderax_agent::claim_loop::{self, ClaimSettings, ClaimStatus};
use noderax_agent::dispatcher::{self, DispatchSettings, DispatchStatus, UpdateSettings};
use noderax_agent::exec_link::{self, ExecEndpoint};
use noderax_agent::host_facts::Host;
use noderax_agent::realtime_session::{self, SessionSettings, SessionStatus};
use noderax_agent::release_download::ReleaseSource;
use noderax_agent::root_access::RootAccess;
use noderax_agent::sd_notify::Notifier;
use noderax_agent::sio_client::SioConfig;
use noderax_agent::state_dir::StateDir;
use noderax_agent::{
    control_watch, enrollment, heartbeat, log, metrics, privilege_drop, task_retention,
};

/// How the executor is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorMode {
    /// The socket `exec_socket` if it exists (systemd), else a child process.
    Auto,
    /// Connect to `exec_socket` (socket-activated executor).
    Socket,
    /// Start noderax-agent-exec as a child process on a socketpair.
    Child,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// When started as root: become this user (e.g. noderax-net) before
    /// doing anything else, with every capability dropped.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Run as root anyway. Only for demos and tests in throw-away machines:
    /// the network process then holds the token and full privileges at once.
    #[arg(long)]
    allow_root: bool,
    /// How to reach the executor.
    #[arg(long, value_enum, default_value_t = ExecutorMode::Auto)]
    executor: ExecutorMode,
    /// Socket mode: the user the executor must run as (checked with
    /// SO_PEERCRED on every connection), e.g. noderax.
    #[arg(long, value_name = "USER")]
    exec_user: Option<String>,
    /// The executor program for child mode (default: noderax-agent-exec
    /// beside this binary).
    #[arg(long, value_name = "PATH")]
    exec_program: Option<PathBuf>,
    /// Extra argument for the child executor, e.g. --exec-arg=--helper=/path;
    /// repeat for several.
    #[arg(long = "exec-arg", value_name = "ARG", allow_hyphen_values = true)]
    exec_args: Vec<OsString>,
}

impl Default for RunArgs {
    fn default() -> Self {
        Self {
            user: None,
            allow_root: false,
            executor: ExecutorMode::Auto,
            exec_user: None,
            exec_program: None,
            exec_args: Vec::new(),
        }
    }
}

/// Log lines of one stream produced within this window share a log entry.
const COALESCE_WINDOW: Duration = Duration::from_millis(200);
/// Longest wait between two writes of status.json.
const STATUS_REFRESH: Duration = Duration::from_secs(10);

pub fn run(args: &RunArgs, cli_config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let location = Location::resolve(cli_config, &ProcessEnv);
    let loaded = config::load(&location, &ProcessEnv)?;
    let cfg = loaded.config.clone();
    log::set_level(cfg.log_level);
    leave_root(args)?;
    if cfg.api_url.is_empty() {
        bail!(
            "api_url is not configured; enroll first (`noderax-agent bootstrap --api-url URL --bootstrap-token TOKEN`) or `noderax-agent config set api_url URL`"
        );
    }
    match loaded.path.as_deref() {
        Some(p) => log::info(format_args!("configuration from {}", p.display())),
        None => log::info("no config file found; using defaults and environment"),
    }
    let tls = noderax_agent::tls::client_config(cfg.api_tls_ca_file.as_deref())?;
    let base_client = ApiClient::new(&cfg.api_url, tls.clone(), cfg.request_timeout)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let identity = rt.block_on(obtain_identity(&loaded, &base_client))?;
    log::info(format_args!(
        "noderax-agent {} starting as node {} against {}",
        shared::build_info::VERSION,
        identity.node_id,
        cfg.api_url
    ));
    let endpoint = executor_endpoint(args, &cfg)?;
    let client = base_client.with_identity(&identity);
    rt.block_on(serve(cfg, identity, client, tls, endpoint))
}

/// Refuses to keep root unless told to.
fn leave_root(args: &RunArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    match (&args.user, is_root, args.allow_root) {
        (Some(user), true, _) => {
            let acct = privilege_drop::become_user(user)
                .with_context(|| format!("could not drop root privileges to user {user:?}"))?;
            log::info(format_args!(
                "running as user {user} (uid {}, gid {}), all capabilities dropped",
                acct.uid, acct.gid
            ));
        }
        (Some(user), false, _) => {
            log::warn(format_args!(
                "--user {user} ignored: the agent is not running as root"
            ));
        }
        (None, true, true) => log::warn(
            "RUNNING AS ROOT (--allow-root): the network process holds the agent token with full privileges. Use this only for demos and tests; production runs as noderax-net under the shipped systemd units.",
        ),
        (None, true, false) => bail!(
            "refusing to run as root: pass --user noderax-net to drop privileges, use the shipped systemd units, or --allow-root for a throw-away demo"
        ),
        (None, false, _) => {}
    }
    Ok(())
}

/// §2.5: environment > state file > config file; else an enrollment token
/// from the config is waited on (10 minutes) and the result stored.
async fn obtain_identity(loaded: &config::Loaded, client: &ApiClient) -> anyhow::Result<Identity> {
    let cfg = &loaded.config;
    let state = identity::load(&cfg.state_file)?;
    if let Some(resolved) = identity::resolve(loaded, state) {
        for w in &resolved.warnings {
            log::warn(w);
        }
        log::info(format_args!("identity from {}", resolved.source));
        return Ok(resolved.identity);
    }
    if cfg.enrollment_token.is_empty() {
        bail!(
            "agent identity is missing: no node_id/agent_token in the environment or config and no state file at {}; run `noderax-agent bootstrap --api-url URL --bootstrap-token TOKEN` or `noderax-agent enroll`",
            cfg.state_file.display()
        );
    }
    log::info(
        "no identity yet; waiting for the enrollment of the configured enrollment_token to be approved (up to 10 minutes)",
    );
    let id = enrollment::wait_for_approval(
        client,
        &cfg.enrollment_token,
        Duration::from_secs(5),
        Duration::from_secs(600),
        |_| {},
    )
    .await
    .context("enrollment with the configured enrollment_token did not complete")?;
    identity::save(&cfg.state_file, &id, Timestamp::now())
        .context("enrolled, but the identity could not be stored")?;
    log::info(format_args!(
        "enrolled as node {}; identity stored in {}",
        id.node_id,
        cfg.state_file.display()
    ));
    Ok(id)
}

fn executor_endpoint(args: &RunArgs, cfg: &Config) -> anyhow::Result<ExecEndpoint> {
    use std::os::unix::fs::FileTypeExt as _;
    let socket_exists =
        std::fs::metadata(&cfg.exec_socket).is_ok_and(|m| m.file_type().is_socket());
    let use_socket = match args.executor {
        ExecutorMode::Socket => true,
        ExecutorMode::Child => false,
        ExecutorMode::Auto => socket_exists,
    };
    if use_socket {
        let peer_uid = match &args.exec_user {
            Some(user) => Some(
                privilege_drop::account(user)
                    .with_context(|| format!("--exec-user {user:?}"))?
                    .uid,
            ),
            None => None,
        };
        return Ok(ExecEndpoint::Socket {
            path: cfg.exec_socket.clone(),
            peer_uid,
        });
    }
    let program = match &args.exec_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("could not find this program's path to locate noderax-agent-exec; pass --exec-program")?
            .with_file_name("noderax-agent-exec"),
    };
    let state = StateDir::for_state_file(&cfg.state_file);
    let mut child_args: Vec<OsString> = vec![
        "--state-dir".into(),
        state.root().join("exec").into_os_string(),
        "--kill-grace".into(),
        format!("{}ms", cfg.kill_grace.as_millis()).into(),
        "--max-tasks".into(),
        cfg.max_concurrent_tasks.to_string().into(),
        "--root-access-ceiling".into(),
        cfg.root_access_ceiling.as_str().into(),
    ];
    child_args.extend(args.exec_args.iter().cloned());
    Ok(ExecEndpoint::Child {
        program,
        args: child_args,
    })
}

async fn serve(
    cfg: Config,
    identity: Identity,
    client: ApiClient,
    tls: Arc<rustls::ClientConfig>,
    endpoint: ExecEndpoint,
) -> anyhow::Result<ExitCode> {
    let state = StateDir::for_state_file(&cfg.state_file);
    std::fs::create_dir_all(state.tasks()).with_context(|| {
        format!(
            "could not create {}; the state directory must be writable by the agent's user",
            state.tasks().display()
        )
    })?;
    let host = Host::detect();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let root = Arc::new(Mutex::new(RootAccess::new(cfg.root_access_ceiling)));

    let (link_tx, link_rx) = mpsc::channel(1024);
    let (exec_status_tx, exec_status) = watch::channel(ExecutorState::default());
    let link = exec_link::start(endpoint, link_tx, exec_status_tx, shutdown.clone());

    let (server_tx, server_rx) = mpsc::channel(256);
    let (socket_out_tx, socket_out_rx) = mpsc::channel(cfg.realtime_queue_size.max(16) as usize);
    let (session_tx, session_status) = watch::channel(SessionStatus::default());
    let (socket_up_tx, socket_up) = watch::channel(false);
    let (dispatch_tx, dispatch_status) = watch::channel(DispatchStatus::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(
        cfg.max_concurrent_tasks.max(1) as usize
    ));
    let (sink, dispatcher) = dispatcher::start(
        DispatchSettings {
            state: state.clone(),
            default_timeout: cfg.task_timeout,
            coalesce_window: COALESCE_WINDOW,
            control_interval: control_watch::INTERVAL,
            outbox_max_bytes: cfg.outbox_max_bytes,
            terminal_queue: cfg.realtime_queue_size as usize,
            slots: slots.clone(),
            updates: UpdateSettings {
                source: ReleaseSource::from_config(&cfg)
                    .map(Arc::new)
                    .map_err(|e| format!("self-updates cannot download releases: {e}")),
                own_version: shared::build_info::VERSION.to_owned(),
                outcome_file: update_outcome_file(),
            },
        },
        client.clone(),
        link,
        link_rx,
        root.clone(),
        server_rx,
        socket_out_tx,
        socket_up.clone(),
        dispatch_tx,
        shutdown.clone(),
    );

    let (claim_tx, claim_status) = watch::channel(ClaimStatus::default());
    tokio::spawn(claim_loop::run(
        client.clone(),
        ClaimSettings {
            wait: cfg.task_poll_interval,
            request_timeout: cfg.request_timeout,
            slots,
        },
        Arc::new(sink),
        root.clone(),
        claim_tx,
        shutdown.clone(),
    ));

    // The socket is always used: the config forces realtime_enabled on,
    // as the original agent did (terminals and presence depend on it).
    let sio = SioConfig {
        api_url: cfg.api_url.clone(),
        path: cfg.realtime_path.clone(),
        namespace: cfg.realtime_namespace.clone(),
        tls: tls.clone(),
        connect_timeout: cfg.request_timeout,
    };
    match realtime_session::preflight(&sio, cfg.request_timeout).await {
        Ok(()) => log::info("realtime pre-flight passed"),
        Err(why) => log::info(format_args!(
            "realtime pre-flight did not pass ({why}); not fatal, connecting over WebSocket anyway"
        )),
    }
    tokio::spawn(realtime_session::run(
        SessionSettings {
            sio,
            identity: identity.clone(),
            host: host.clone(),
            ping_interval: cfg.realtime_ping_interval,
            metrics_interval: cfg.metrics_interval,
            auth_timeout: cfg.request_timeout,
            jitter: cfg.realtime_backoff_jitter,
        },
        root.clone(),
        metrics::Collector::new(),
        socket_out_rx,
        server_tx,
        session_tx,
        shutdown.clone(),
    ));
    // The heartbeat and the terminal queue follow the authenticated state.
    let mut st = session_status.clone();
    tokio::spawn(async move {
        loop {
            let up = st.borrow_and_update().authenticated;
            socket_up_tx.send_if_modified(|v| std::mem::replace(v, up) != up);
            if st.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(heartbeat::run(
        client.clone(),
        identity.clone(),
        host,
        cfg.heartbeat_interval,
        socket_up,
        shutdown.clone(),
    ));

    let status_path = state.status_file();
    let base_status = AgentStatus {
        pid: std::process::id(),
        version: shared::build_info::VERSION.to_owned(),
        node_id: identity.node_id.clone(),
        api_url: cfg.api_url.clone(),
        started_at: Some(Timestamp::now()),
        realtime: RealtimeState {
            enabled: cfg.realtime_enabled,
            ..Default::default()
        },
        ..Default::default()
    };
    let status_task = tokio::spawn(write_status(
        status_path.clone(),
        base_status,
        root.clone(),
        claim_status,
        session_status,
        exec_status,
        dispatch_status,
        shutdown.clone(),
    ));

    // Stored outputs within their age and size bounds: at start, then hourly.
    {
        let state = state.clone();
        let (age, bytes) = (cfg.task_output_retention, cfg.task_output_max_bytes);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let st = state.clone();
                let pruned = tokio::task::spawn_blocking(move || {
                    task_retention::prune(&st, age, bytes, std::time::SystemTime::now())
                })
                .await
                .unwrap_or_default();
                if pruned.tasks > 0 {
                    log::info(format_args!(
                        "removed {} stored task output(s), {} bytes, beyond task_output_retention/task_output_max_bytes",
                        pruned.tasks, pruned.bytes
                    ));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let notifier = Notifier::from_env();
    if let Err(e) = notifier.notify("READY=1") {
        log::warn(format_args!("could not notify systemd of readiness: {e}"));
    }
    if let Some(period) = Notifier::watchdog_period() {
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let n = Notifier::from_env();
            loop {
                let _ = n.notify("WATCHDOG=1");
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    log::info("agent running");

    let why = wait_for_signal().await?;
    log::info(format_args!(
        "{why} received: stopping claims and the socket; running tasks continue in the executor; delivering finished tasks for up to {}s",
        cfg.shutdown_timeout.as_secs()
    ));
    let _ = notifier.notify("STOPPING=1");
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(cfg.shutdown_timeout, dispatcher).await {
        Ok(_) => log::info("all finished tasks delivered"),
        Err(_) => log::warn(
            "shutdown_timeout reached with task events still undelivered; they stay on disk and are sent at the next start",
        ),
    }
    let _ = status_task.await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("could not handle SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Keeps status.json current: on every change (at most once a second) and
/// at least every [`STATUS_REFRESH`] so a stale file shows a dead agent.
#[allow(clippy::too_many_arguments)]
async fn write_status(
    path: PathBuf,
    base: AgentStatus,
    root: Arc<Mutex<RootAccess>>,
    mut claim: watch::Receiver<ClaimStatus>,
    mut session: watch::Receiver<SessionStatus>,
    mut exec: watch::Receiver<ExecutorState>,
    mut dispatch: watch::Receiver<DispatchStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_error: Option<String> = None;
    let mut last_error_at = None;
    let mut reported_write_error = false;
    loop {
        let c = claim.borrow_and_update().clone();
        let s = session.borrow_and_update().clone();
        let e = exec.borrow_and_update().clone();
        let d = dispatch.borrow_and_update().clone();
        let newest = c
            .last_error
            .clone()
            .map(|m| format!("claim: {m}"))
            .or_else(|| {
                s.last_error
                    .clone()
                    .filter(|_| !s.authenticated)
                    .map(|m| format!("realtime: {m}"))
            })
            .or_else(|| {
                e.last_error
                    .clone()
                    .filter(|_| !e.connected)
                    .map(|m| format!("executor: {m}"))
            });
        if newest.is_some() && newest != last_error {
            last_error = newest;
            last_error_at = Some(Timestamp::now());
        }
        let status = AgentStatus {
            updated_at: Some(Timestamp::now()),
            claim: ClaimState {
                credentials_rejected: c.credentials_rejected,
                consecutive_failures: c.consecutive_failures,
                last_error: c.last_error.clone(),
                tasks_claimed: c.tasks_claimed,
                tasks_not_started: c.tasks_not_started,
            },
            realtime: RealtimeState {
                enabled: base.realtime.enabled,
                authenticated: s.authenticated,
                connects: s.connects,
                last_error: s.last_error.clone(),
                last_server_error: s.last_server_error.clone(),
                open_terminals: d.open_terminals,
            },
            executor: e,
            root_access_profile: root
                .lock()
                .expect("root lock")
                .applied_profile()
                .as_str()
                .to_owned(),
            running_tasks: d.running_tasks.clone(),
            undelivered_tasks: d.undelivered_tasks,
            undelivered_bytes: d.undelivered_bytes,
            last_error: last_error.clone(),
            last_error_at,
            ..base.clone()
        };
        match status.save(&path) {
            Ok(()) => reported_write_error = false,
            Err(err) if !reported_write_error => {
                reported_write_error = true;
                log::warn(format_args!(
                    "could not write {}: {err}; `noderax-agent status` will show stale data",
                    path.display()
                ));
            }
            Err(_) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_REFRESH) => {}
            _ = claim.changed() => {}
            _ = session.changed() => {}
            _ = exec.changed() => {}
            _ = dispatch.changed() => {}
            _ = shutdown.changed() => {}
        }
        // At most one write a second, however busy the agent is.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The root helper's update outcome file. Debug builds let the integration
/// tests, which stand in for the helper, put it elsewhere
/// (`scripts/check-release-build.sh` checks release builds cannot).
fn update_outcome_file() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os("NODERAX_TEST_UPDATE_RESULT_FILE") {
        return PathBuf::from(p);
    }
    PathBuf::from(shared::release_files::UPDATE_RESULT)
}

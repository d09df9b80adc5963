//! `noderax-agent status`: what the agent on this host is doing, from the
//! configuration, the identity and the `status.json` the running agent
//! rewrites on every change and at least every 10 s (no socket into the
//! running process), the states of its systemd units, plus a live check
//! that the control plane is reachable.
//!
//! Also the helpers `doctor` shares: where the agent's files are, whether
//! the agent runs, user names, and the API probe.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use shared::config::{self, Location, ProcessEnv};
use shared::identity;
use shared::timestamp::Timestamp;

use noderax_agent::agent_status::AgentStatus;
use noderax_agent::api_client::{ApiClient, CallError, TransportKind};
use noderax_agent::state_dir::StateDir;

use super::systemd::UnitState;

/// A status older than this means the agent is not running or hung (`run`
/// rewrites it at least every 10 s).
pub(super) const STALE_AFTER: Duration = Duration::from_secs(30);
/// Upper bound of the live API check (request_timeout applies when shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const EXIT_HELP: &str = "Exit status: 0 when the agent is running and healthy (status.json fresh, its pid alive, credentials accepted, executor connected, realtime session authenticated, API reachable); 1 otherwise (the output lists the problems); 2 usage error.";

#[derive(Debug, Args)]
#[command(after_help = EXIT_HELP)]
pub struct StatusArgs {
    /// Print one JSON object instead of text (the agent token is never included).
    #[arg(long)]
    json: bool,
    /// Skip the live reachability check of the control plane.
    #[arg(long)]
    no_api_check: bool,
}

/// The configuration and identity as the agent would see them.
pub(super) struct Setup {
    pub loaded: config::Loaded,
    pub state: StateDir,
    /// The identity in use and where it came from, or why it is unusable.
    pub identity: Result<Option<identity::Resolved>, String>,
}

pub(super) fn load_setup(cli_path: Option<&Path>) -> Result<Setup, config::ConfigError> {
    let location = Location::resolve(cli_path, &ProcessEnv);
    let loaded = config::load(&location, &ProcessEnv)?;
    let state = StateDir::for_state_file(&loaded.config.state_file);
    let identity = identity::load(&loaded.config.state_file)
        .map(|from_file| identity::resolve(&loaded, from_file))
        .map_err(|e| e.to_string());
    Ok(Setup {
        loaded,
        state,
        identity,
    })
}

/// Whether the agent that wrote `status.json` is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Liveness {
    Running {
        pid: u32,
    },
    NotRunning(String),
    /// The pid exists but the status is stale.
    NotResponding(String),
}

impl Liveness {
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }
}

pub(super) fn liveness(status: Option<&AgentStatus>, status_file: &Path) -> Liveness {
    let Some(st) = status else {
        return Liveness::NotRunning(format!(
            "no status file at {} (the agent has not run with this state directory; start it with `systemctl start noderax-agent` or `noderax-agent run`)",
            status_file.display()
        ));
    };
    let now = Timestamp::now().unix_millis();
    // A time in the future (clock step) counts as fresh.
    let age = st
        .updated_at
        .map(|t| Duration::from_millis(now.saturating_sub(t.unix_millis()).max(0) as u64));
    let fresh = age.is_some_and(|a| a <= STALE_AFTER);
    let seen = match (st.updated_at, age) {
        (Some(t), Some(a)) => format!("last update {t}, {} ago", ago(a)),
        _ => "no update time recorded".to_owned(),
    };
    match (fresh, pid_alive(st.pid)) {
        (true, true) => Liveness::Running { pid: st.pid },
        (false, true) => Liveness::NotResponding(format!(
            "pid {} exists but has not updated {} ({seen}): the agent is hung, or the pid now belongs to another process; see `journalctl -u noderax-agent` and restart it",
            st.pid,
            status_file.display()
        )),
        (_, false) => Liveness::NotRunning(format!(
            "pid {} has exited ({seen}); start it with `systemctl start noderax-agent` or `noderax-agent run`",
            st.pid
        )),
    }
}

/// `kill(pid, 0)`: the process exists (EPERM: it exists but is another user's).
pub(super) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The login name of `uid`, if it has one.
pub(super) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwuid_r writes
    // strings only into `buf`, which outlives their use below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf` and is NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `name (uid N)` or `uid N`.
pub(super) fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

pub(super) fn current_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

pub(super) fn ago(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s}s")
    } else if s < 2 * 3600 {
        format!("{}m", s / 60)
    } else if s < 2 * 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// Scheme, host (without IPv6 brackets) and port of a normalised `api_url`.
pub(super) fn host_port(api_url: &str) -> Option<(bool, String, u16)> {
    let (scheme, rest) = api_url.split_once("://")?;
    let https = scheme == "https";
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    (!host.is_empty()).then_some((https, host, port))
}

/// The outcome of one HTTP request to the control plane.
pub(super) struct ApiProbe {
    /// The server answered (any HTTP status).
    pub reachable: bool,
    pub status: Option<u16>,
    pub detail: String,
}

/// What a transport failure means for an operator, and what to do.
pub(super) fn explain_transport(
    kind: TransportKind,
    message: &str,
    api_url: &str,
    timeout: Duration,
) -> String {
    let (host, port) = host_port(api_url)
        .map(|(_, h, p)| (h, p))
        .unwrap_or_else(|| (api_url.to_owned(), 0));
    match kind {
        TransportKind::Dns => format!(
            "DNS failure: {host} could not be resolved ({message}); check the host name in api_url and the resolver (/etc/resolv.conf)"
        ),
        TransportKind::Connect if message.contains("refused") => format!(
            "connection refused by {host}:{port}: nothing listens there (is the API down, the port wrong, or a firewall rejecting?)"
        ),
        TransportKind::Connect => format!(
            "could not connect to {host}:{port} ({message}); check routing, firewall and proxy settings"
        ),
        TransportKind::Tls => format!(
            "TLS failure ({message}); if the API uses a private CA, set api_tls_ca_file to its PEM bundle; check the host's clock"
        ),
        TransportKind::Timeout => format!(
            "no answer from {host}:{port} within {}; a firewall may be dropping the traffic, or the API is overloaded",
            shared::go_duration::format(timeout)
        ),
        TransportKind::Other => format!("the request failed: {message}"),
    }
}

/// Builds a client for `api_url` with the agent's TLS settings.
pub(super) fn api_client(cfg: &config::Config, timeout: Duration) -> anyhow::Result<ApiClient> {
    let tls = noderax_agent::tls::client_config(cfg.api_tls_ca_file.as_deref())?;
    Ok(ApiClient::new(&cfg.api_url, tls, timeout)?)
}

/// `GET route` and a verdict on reachability.
pub(super) async fn probe(
    client: &ApiClient,
    route: &str,
    api_url: &str,
    timeout: Duration,
) -> ApiProbe {
    match client.get::<serde_json::Value>(route).await {
        Ok(_) => ApiProbe {
            reachable: true,
            status: Some(200),
            detail: "the API answered".into(),
        },
        Err(CallError::Decode(_)) => ApiProbe {
            reachable: true,
            status: Some(200),
            detail: "the API answered (not with JSON)".into(),
        },
        Err(CallError::Status {
            status, message, ..
        }) => ApiProbe {
            reachable: true,
            status: Some(status),
            detail: format!("the API answered HTTP {status} ({message})"),
        },
        Err(CallError::Transport { kind, message }) => ApiProbe {
            reachable: false,
            status: None,
            detail: explain_transport(kind, &message, api_url, timeout),
        },
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

pub fn run(args: &StatusArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let setup = load_setup(cli_path)
        .context("could not load the configuration; `noderax-agent doctor` checks it key by key")?;
    let cfg = &setup.loaded.config;
    let status_file = setup.state.status_file();
    let (status, status_error) = match AgentStatus::load(&status_file) {
        Ok(s) => (s, None),
        Err(e) => (
            None,
            Some(format!(
                "could not read {}: {e} (run as the agent's user or root)",
                status_file.display()
            )),
        ),
    };
    let live = match &status_error {
        Some(e) => Liveness::NotRunning(e.clone()),
        None => liveness(status.as_ref(), &status_file),
    };

    let api = if args.no_api_check {
        None
    } else if cfg.api_url.is_empty() {
        Some(ApiProbe {
            reachable: false,
            status: None,
            detail: "api_url is not set (noderax-agent config set api_url https://...)".into(),
        })
    } else {
        let timeout = cfg.request_timeout.min(PROBE_TIMEOUT);
        Some(match api_client(cfg, timeout) {
            Ok(client) => {
                let rt = runtime()?;
                let p = rt.block_on(probe(&client, "", &cfg.api_url, timeout));
                rt.shutdown_background();
                p
            }
            Err(e) => ApiProbe {
                reachable: false,
                status: None,
                detail: format!("{e:#}"),
            },
        })
    };

    // Shown, not judged: `run` in a terminal is healthy without units.
    let units = super::systemd::unit_states().map_err(|e| {
        if super::systemd::running() {
            format!("{e:#}")
        } else {
            "systemd is not running on this host (e.g. a container): no units".to_owned()
        }
    });

    // Why this is not "running and healthy".
    let mut problems = Vec::new();
    match &live {
        Liveness::Running { .. } => {}
        Liveness::NotRunning(_) => problems.push("the agent is not running".to_owned()),
        Liveness::NotResponding(_) => problems.push("the agent is not responding".to_owned()),
    }
    if let Err(e) = &setup.identity {
        problems.push(format!("identity unusable: {e}"));
    } else if matches!(setup.identity, Ok(None)) {
        problems.push("not enrolled".to_owned());
    }
    if let (true, Some(st)) = (live.is_running(), &status) {
        if st.claim.credentials_rejected {
            problems.push("credentials rejected by the control plane".to_owned());
        }
        if !st.executor.connected {
            problems.push("executor not connected".to_owned());
        }
        if !st.realtime.authenticated {
            problems.push("realtime session not authenticated".to_owned());
        }
    }
    if api.as_ref().is_some_and(|a| !a.reachable) {
        problems.push("control plane unreachable (see API)".to_owned());
    }
    let healthy = problems.is_empty();

    if args.json {
        print_json(
            &setup,
            status.as_ref(),
            &live,
            &units,
            api.as_ref(),
            &problems,
        )?;
    } else {
        print_text(
            &setup,
            status.as_ref(),
            &live,
            &units,
            api.as_ref(),
            &problems,
        )?;
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn config_file(setup: &Setup) -> Option<PathBuf> {
    setup.loaded.path.clone()
}

/// The units' states, or why there are none.
type Units = Result<Vec<UnitState>, String>;

fn print_json(
    setup: &Setup,
    status: Option<&AgentStatus>,
    live: &Liveness,
    units: &Units,
    api: Option<&ApiProbe>,
    problems: &[String],
) -> anyhow::Result<()> {
    let cfg = &setup.loaded.config;
    let (state, detail, pid) = match live {
        Liveness::Running { pid } => ("running", None, Some(*pid)),
        Liveness::NotRunning(d) => ("not-running", Some(d.clone()), None),
        Liveness::NotResponding(d) => ("not-responding", Some(d.clone()), None),
    };
    let (node_id, source, identity_error) = match &setup.identity {
        Ok(Some(r)) => (
            Some(r.identity.node_id.clone()),
            Some(r.source.to_string()),
            None,
        ),
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e.clone())),
    };
    let doc = json!({
        "version": shared::build_info::VERSION,
        "configFile": config_file(setup).map(|p| p.display().to_string()),
        "apiUrl": (!cfg.api_url.is_empty()).then(|| cfg.api_url.clone()),
        "stateFile": cfg.state_file.display().to_string(),
        "enrolled": node_id.is_some(),
        "nodeId": node_id,
        "identitySource": source,
        "identityError": identity_error,
        "agent": state,
        "agentDetail": detail,
        "pid": pid,
        "statusFile": setup.state.status_file().display().to_string(),
        // As the agent last wrote it; holds no secret.
        "status": status,
        "units": units.as_ref().ok(),
        "unitsError": units.as_ref().err(),
        "api": api.map(|a| json!({
            "reachable": a.reachable,
            "httpStatus": a.status,
            "detail": a.detail,
        })),
        "healthy": problems.is_empty(),
        "problems": problems,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

fn print_text(
    setup: &Setup,
    status: Option<&AgentStatus>,
    live: &Liveness,
    units: &Units,
    api: Option<&ApiProbe>,
    problems: &[String],
) -> anyhow::Result<()> {
    let cfg = &setup.loaded.config;
    let mut out = std::io::stdout().lock();
    // An empty key continues the previous row.
    let mut row = |k: &str, v: &str| {
        let label = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        writeln!(out, "{label:<15} {v}")
    };
    row("version", shared::build_info::VERSION)?;
    row(
        "config file",
        &config_file(setup).map_or_else(
            || "none (defaults and environment only)".to_owned(),
            |p| p.display().to_string(),
        ),
    )?;
    row(
        "api_url",
        if cfg.api_url.is_empty() {
            "<unset> (noderax-agent config set api_url https://...)"
        } else {
            &cfg.api_url
        },
    )?;
    let identity = match &setup.identity {
        Ok(Some(r)) => format!("{} (enrolled; from {})", r.identity.node_id, r.source),
        Ok(None) => format!(
            "not enrolled: no identity in {} (run `noderax-agent bootstrap` or `noderax-agent enroll`)",
            cfg.state_file.display()
        ),
        Err(e) => format!("unusable: {e}"),
    };
    row("node id", &identity)?;
    let agent = match live {
        Liveness::Running { pid } => {
            let since = status
                .and_then(|s| s.started_at)
                .map_or_else(String::new, |t| format!(", since {t}"));
            format!("running, pid {pid}{since}")
        }
        Liveness::NotRunning(d) => format!("not running: {d}"),
        Liveness::NotResponding(d) => format!("not responding: {d}"),
    };
    row("agent", &agent)?;
    match units {
        Ok(states) => {
            for (i, u) in states.iter().enumerate() {
                let line = format!("{} {}", u.unit, u.describe());
                if i == 0 {
                    row("units", &line)?;
                } else {
                    row("", &line)?;
                }
            }
        }
        Err(e) => row("units", e)?,
    }
    if let Some(st) = status {
        if !live.is_running() {
            row(
                "last state",
                &format!(
                    "as pid {} (version {}) left it; the lines below are not current",
                    st.pid, st.version
                ),
            )?;
        }
        let c = &st.claim;
        let mut claim = if c.credentials_rejected {
            "CREDENTIALS REJECTED: the control plane answers 401 (node deleted or token revoked); the agent keeps retrying. Re-enroll: remove the state file and run `noderax-agent bootstrap`".to_owned()
        } else if c.consecutive_failures > 0 {
            format!("failing ({} consecutive failures)", c.consecutive_failures)
        } else {
            "ok".to_owned()
        };
        if c.credentials_rejected && c.consecutive_failures > 0 {
            claim.push_str(&format!(
                "; {} consecutive failures",
                c.consecutive_failures
            ));
        }
        claim.push_str(&format!(
            "; {} tasks claimed, {} not started",
            c.tasks_claimed, c.tasks_not_started
        ));
        if let Some(e) = &c.last_error {
            claim.push_str(&format!("; last error: {e}"));
        }
        row("claim", &claim)?;
        let r = &st.realtime;
        let mut realtime = if r.authenticated {
            format!("authenticated ({} connects)", r.connects)
        } else {
            format!("not connected ({} connects so far)", r.connects)
        };
        if r.open_terminals > 0 {
            realtime.push_str(&format!(", {} open terminals", r.open_terminals));
        }
        if let Some(e) = &r.last_error {
            realtime.push_str(&format!("; last error: {e}"));
        }
        if let Some(e) = &r.last_server_error {
            realtime.push_str(&format!("; last agent.error from the server: {e}"));
        }
        row("realtime", &realtime)?;
        let x = &st.executor;
        let mut executor = format!(
            "{} ({}",
            if x.connected {
                "connected"
            } else {
                "NOT CONNECTED"
            },
            if x.mode.is_empty() {
                "mode unknown"
            } else {
                &x.mode
            }
        );
        if let Some(pid) = x.pid {
            executor.push_str(&format!(", pid {pid}"));
        }
        if let Some(v) = &x.version {
            executor.push_str(&format!(", version {v}"));
        }
        executor.push_str(&format!(", {} restarts)", x.restarts));
        if let Some(e) = &x.last_error {
            executor.push_str(&format!("; last error: {e}"));
        }
        row("executor", &executor)?;
        row(
            "root access",
            if st.root_access_profile.is_empty() {
                "unknown"
            } else {
                &st.root_access_profile
            },
        )?;
        let tasks = if st.running_tasks.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{}: {}",
                st.running_tasks.len(),
                st.running_tasks.join(", ")
            )
        };
        row("running tasks", &tasks)?;
        row(
            "outbox",
            &format!(
                "{} tasks with undelivered events, {} bytes of output undelivered",
                st.undelivered_tasks, st.undelivered_bytes
            ),
        )?;
        let last = match (&st.last_error, st.last_error_at) {
            (Some(e), Some(t)) => format!("{t}: {e}"),
            (Some(e), None) => e.clone(),
            (None, _) => "none".to_owned(),
        };
        row("last error", &last)?;
    }
    match api {
        Some(a) if a.reachable => row("API", &format!("reachable: {}", a.detail))?,
        Some(a) => row("API", &format!("UNREACHABLE: {}", a.detail))?,
        None => row("API", "not checked (--no-api-check)")?,
    }
    if problems.is_empty() {
        row("health", "healthy")?;
    } else {
        row("health", &format!("unhealthy: {}", problems.join("; ")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_api_urls() {
        assert_eq!(
            host_port("https://api.example.com"),
            Some((true, "api.example.com".into(), 443))
        );
        assert_eq!(
            host_port("http://127.0.0.1:8080/prefix"),
            Some((false, "127.0.0.1".into(), 8080))
        );
        assert_eq!(
            host_port("https://[::1]:9443"),
            Some((true, "::1".into(), 9443))
        );
        assert_eq!(host_port("https://[::1]"), Some((true, "::1".into(), 443)));
        assert_eq!(host_port("https://"), None);
        assert_eq!(host_port("https://h:notaport"), None);
    }

    #[test]
    fn a_fresh_status_of_a_live_pid_is_running() {
        let path = Path::new("/nonexistent/status.json");
        assert!(matches!(liveness(None, path), Liveness::NotRunning(_)));
        let mut st = AgentStatus {
            pid: std::process::id(),
            updated_at: Some(Timestamp::now()),
            ..Default::default()
        };
        assert!(liveness(Some(&st), path).is_running());
        st.updated_at = Some(Timestamp::from_unix_millis(
            Timestamp::now().unix_millis() - 60_000,
        ));
        assert!(matches!(
            liveness(Some(&st), path),
            Liveness::NotResponding(_)
        ));
        st.pid = 0;
        assert!(matches!(liveness(Some(&st), path), Liveness::NotRunning(_)));
    }
}

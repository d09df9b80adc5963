//! `noderax-agent doctor`: checks everything the agent needs on this host,
//! one line per check (`ok|warn|FAIL  <check>: <detail>`), each failure
//! saying what to do.
//!
//! Two deliberate limits keep it from disturbing a running agent:
//! - the realtime check opens the WebSocket and joins the namespace but
//!   does not send `agent.auth`: the control plane keeps one authenticated
//!   socket per node and would force-disconnect the running agent's session
//!   (PROTOCOL.md §8.3). The credentials are checked over HTTP instead,
//!   with a read-only request.
//! - the executor socket is not connected to while an agent runs: the
//!   executor serves one peer at a time and a new connection takes over
//!   from the current one. Then the running agent's `status.json` reports
//!   the executor instead.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use shared::config::{self, KEYS, Location, Origin, ProcessEnv};
use shared::identity::{self, Identity};
use shared::ipc::{self, ExecMessage, Hello, NetMessage};

use noderax_agent::agent_status::AgentStatus;
use noderax_agent::sio_client::{self, SioConfig, SioError};

use super::status_cmd::{
    Liveness, api_client, current_uid, describe_uid, host_port, liveness, probe, runtime, user_name,
};

/// A task id no task has: the control route answers 404 for it once the
/// credentials are accepted, and 401 when they are not. Nothing changes.
const PROBE_TASK_ID: &str = "00000000-0000-4000-8000-000000000000";
/// Limit for the executor handshake and for `sudo -l`.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
#[command(
    after_help = "Each check prints one line: `ok|warn|FAIL  CHECK: DETAIL`, and every warning or failure says what to do. Run it as the agent's user (noderax-net when installed) or as root. Exit status: 0 when no check failed (warnings allowed), 1 otherwise, 2 usage error."
)]
pub struct DoctorArgs {
    /// Print one JSON object with every check instead of lines.
    #[arg(long)]
    json: bool,
    /// The sudo binary the executor uses (noderax-agent-exec --sudo).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/sudo")]
    sudo: PathBuf,
    /// The root helper the executor runs through sudo (noderax-agent-exec --helper).
    #[arg(long, value_name = "PATH", default_value = shared::config::HELPER_PATH)]
    helper: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// Collects checks; prints each at once unless the output is JSON.
struct Report {
    json: bool,
    checks: Vec<(Level, &'static str, String)>,
}

impl Report {
    fn add(&mut self, level: Level, check: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{:<4}  {check}: {detail}", level.as_str());
            let _ = out.flush();
        }
        self.checks.push((level, check, detail));
    }

    fn finish(self) -> anyhow::Result<ExitCode> {
        let count = |l: Level| self.checks.iter().filter(|c| c.0 == l).count();
        let failed = count(Level::Fail) > 0;
        if self.json {
            let checks: Vec<_> = self
                .checks
                .iter()
                .map(|(l, c, d)| json!({"level": l.as_str(), "check": c, "detail": d}))
                .collect();
            let doc = json!({"ok": !failed, "checks": checks});
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&doc)?
            )?;
        } else {
            eprintln!(
                "doctor: {} ok, {} warnings, {} failed",
                count(Level::Ok),
                count(Level::Warn),
                count(Level::Fail)
            );
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn mode_str(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

pub fn run(args: &DoctorArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut r = Report {
        json: args.json,
        checks: Vec::new(),
    };
    let location = Location::resolve(cli_path, &ProcessEnv);
    let loaded = match config::load(&location, &ProcessEnv) {
        Ok(l) => l,
        Err(e) => {
            r.add(
                Level::Fail,
                "config",
                format!(
                    "{e}. Fix it (`noderax-agent config set KEY VALUE` validates a value before writing it) and run doctor again"
                ),
            );
            r.add(
                Level::Fail,
                "remaining checks",
                "not run: they need a valid configuration",
            );
            return r.finish();
        }
    };
    check_config(&mut r, &location, &loaded);
    let cfg = &loaded.config;
    let identity = check_identity(&mut r, &loaded);
    check_state_dir(&mut r, cfg);
    let status_file =
        noderax_agent::state_dir::StateDir::for_state_file(&cfg.state_file).status_file();
    let status = AgentStatus::load(&status_file).ok().flatten();
    let live = liveness(status.as_ref(), &status_file);
    if cfg.api_url.is_empty() {
        r.add(
            Level::Fail,
            "network",
            "not checked: api_url is not set (noderax-agent config set api_url https://...)",
        );
    } else {
        check_network(&mut r, cfg, identity.as_ref())?;
    }
    check_executor(&mut r, cfg, status.as_ref(), &live);
    check_sudo(&mut r, args, cfg);
    r.finish()
}

// ---- configuration and files -------------------------------------------------

fn check_config(r: &mut Report, location: &Location, loaded: &config::Loaded) {
    let from_file = KEYS
        .iter()
        .filter(|k| loaded.origin(k.name) == Origin::File)
        .count();
    let from_env = KEYS
        .iter()
        .filter(|k| matches!(loaded.origin(k.name), Origin::Env(_)))
        .count();
    match &loaded.path {
        Some(p) => {
            let how = match location {
                Location::Explicit { from, .. } => format!("named by {from}"),
                _ => "first found in the search order".to_owned(),
            };
            r.add(
                Level::Ok,
                "config",
                format!(
                    "{} ({how}) is valid: {from_file} keys from the file, {from_env} from the environment",
                    p.display()
                ),
            );
        }
        None => {
            let level = if loaded.config.api_url.is_empty() {
                Level::Fail
            } else {
                Level::Warn
            };
            r.add(
                level,
                "config",
                format!(
                    "no config file: none of {} exists and {} is not set ({from_env} keys from the environment). Create one with `noderax-agent config set api_url https://...` (config.example.json shows a minimal one)",
                    config::SEARCH_PATH.join(", "),
                    config::CONFIG_FILE_ENV
                ),
            );
        }
    }
    for w in &loaded.warnings {
        r.add(Level::Warn, "config", w.clone());
    }
    if let Some(path) = &loaded.path {
        let secrets: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.kind == config::Kind::Secret && loaded.origin(k.name) == Origin::File)
            .map(|k| k.name)
            .collect();
        check_file_mode(r, "config file mode", path, &secrets);
    }
}

/// Group/world permissions of a file; `secrets` names what it holds.
fn check_file_mode(r: &mut Report, check: &'static str, path: &Path, secrets: &[&str]) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            r.add(
                Level::Fail,
                check,
                format!("cannot inspect {}: {e}", path.display()),
            );
            return;
        }
    };
    let mode = meta.mode();
    let owner = describe_uid(meta.uid());
    let p = path.display();
    if mode & 0o002 != 0 {
        r.add(
            Level::Fail,
            check,
            format!(
                "{p} is world-writable (mode {}): any user can change it; run `chmod 600 {p}`",
                mode_str(mode)
            ),
        );
    } else if !secrets.is_empty() && mode & 0o044 != 0 {
        r.add(
            Level::Fail,
            check,
            format!(
                "{p} holds {} and is readable by group or others (mode {}, owner {owner}): run `chmod 600 {p}`",
                secrets.join(", "),
                mode_str(mode)
            ),
        );
    } else if mode & 0o020 != 0 {
        r.add(
            Level::Warn,
            check,
            format!(
                "{p} is group-writable (mode {}): members of its group can change it; run `chmod g-w {p}`",
                mode_str(mode)
            ),
        );
    } else {
        let held = if secrets.is_empty() {
            "holds no secret".to_owned()
        } else {
            format!("holds {}", secrets.join(", "))
        };
        r.add(
            Level::Ok,
            check,
            format!("{p}: mode {}, owner {owner}, {held}", mode_str(mode)),
        );
    }
}

fn check_identity(r: &mut Report, loaded: &config::Loaded) -> Option<Identity> {
    let cfg = &loaded.config;
    let state_file = &cfg.state_file;
    let from_file = match identity::load(state_file) {
        Ok(i) => i,
        Err(e) => {
            r.add(Level::Fail, "identity", e.to_string());
            return None;
        }
    };
    let in_state_file = from_file.is_some();
    let resolved = identity::resolve(loaded, from_file);
    match &resolved {
        Some(res) => {
            r.add(
                Level::Ok,
                "identity",
                format!("node {} (from {})", res.identity.node_id, res.source),
            );
            for w in &res.warnings {
                r.add(Level::Warn, "identity", w.clone());
            }
        }
        None if !cfg.enrollment_token.is_empty() => r.add(
            Level::Warn,
            "identity",
            format!(
                "not enrolled yet: an enrollment_token is set, so `noderax-agent run` waits for its approval (10 minutes at most) and stores the identity in {}",
                state_file.display()
            ),
        ),
        None => r.add(
            Level::Fail,
            "identity",
            format!(
                "not enrolled: no identity in {} (nor NODE_ID/AGENT_TOKEN); run `noderax-agent bootstrap --api-url URL --bootstrap-token TOKEN` (token from the web UI's install command) or `noderax-agent enroll`",
                state_file.display()
            ),
        ),
    }
    if in_state_file {
        check_state_file(r, state_file);
    }
    resolved.map(|res| res.identity)
}

fn check_state_file(r: &mut Report, path: &Path) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            r.add(
                Level::Fail,
                "state file",
                format!("cannot inspect {}: {e}", path.display()),
            );
            return;
        }
    };
    let (mode, uid, me) = (meta.mode(), meta.uid(), current_uid());
    let p = path.display();
    if mode & 0o077 != 0 {
        r.add(
            Level::Fail,
            "state file",
            format!(
                "{p} holds the agent token and has mode {} (must be 0600): other users, including tasks, may read it; run `chmod 600 {p}`",
                mode_str(mode)
            ),
        );
    } else if uid == me {
        r.add(
            Level::Ok,
            "state file",
            format!(
                "{p}: mode {}, owned by {}",
                mode_str(mode),
                describe_uid(uid)
            ),
        );
    } else if me == 0 {
        r.add(
            Level::Ok,
            "state file",
            format!(
                "{p}: mode {}, owned by {} (the agent must run as that user; `sudo -u {} noderax-agent doctor` checks with its permissions)",
                mode_str(mode),
                describe_uid(uid),
                user_name(uid).unwrap_or_else(|| uid.to_string())
            ),
        );
    } else {
        r.add(
            Level::Warn,
            "state file",
            format!(
                "{p} is owned by {}, not by {} who runs doctor: run doctor as the agent's user; if the agent runs as you, run `sudo chown {} {p}`",
                describe_uid(uid),
                describe_uid(me),
                user_name(me).unwrap_or_else(|| me.to_string())
            ),
        );
    }
}

fn check_state_dir(r: &mut Report, cfg: &config::Config) {
    let state = noderax_agent::state_dir::StateDir::for_state_file(&cfg.state_file);
    let me = describe_uid(current_uid());
    for (dir, what) in [
        (state.root().to_owned(), "state directory"),
        (state.tasks(), "task outputs"),
    ] {
        let meta = match std::fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if what == "state directory" {
                    r.add(
                        Level::Warn,
                        "state directory",
                        format!(
                            "{} does not exist yet; enrollment creates it (the agent's user must be able to create it)",
                            dir.display()
                        ),
                    );
                    return;
                }
                continue;
            }
            Err(e) => {
                r.add(
                    Level::Fail,
                    "state directory",
                    format!("cannot inspect {}: {e}", dir.display()),
                );
                return;
            }
        };
        let d = dir.display();
        if !meta.is_dir() {
            r.add(
                Level::Fail,
                "state directory",
                format!("{d} ({what}) is not a directory; move it away"),
            );
            return;
        }
        if meta.mode() & 0o002 != 0 {
            r.add(
                Level::Fail,
                "state directory",
                format!(
                    "{d} ({what}) is world-writable (mode {}): other users could replace the agent's files; run `chmod o-w {d}`",
                    mode_str(meta.mode())
                ),
            );
            return;
        }
        if !writable(&dir) {
            r.add(
                Level::Fail,
                "state directory",
                format!(
                    "{d} ({what}) is not writable by {me} (owner {}, mode {}): the agent cannot store task output or its status; run doctor as the agent's user, or `chown -R AGENT_USER {}`",
                    describe_uid(meta.uid()),
                    mode_str(meta.mode()),
                    state.root().display()
                ),
            );
            return;
        }
    }
    r.add(
        Level::Ok,
        "state directory",
        format!("{} is writable by {me}", state.root().display()),
    );
}

fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

// ---- network -------------------------------------------------------------------

fn check_network(
    r: &mut Report,
    cfg: &config::Config,
    identity: Option<&Identity>,
) -> anyhow::Result<()> {
    let timeout = cfg.request_timeout;
    let Some((https, host, port)) = host_port(&cfg.api_url) else {
        r.add(
            Level::Fail,
            "dns",
            format!(
                "api_url {} has no usable host and port; fix it with `noderax-agent config set api_url https://HOST`",
                cfg.api_url
            ),
        );
        return Ok(());
    };
    let rt = runtime()?;
    let result = network_checks(r, cfg, identity, &rt, https, &host, port, timeout);
    rt.shutdown_background();
    result
}

#[allow(clippy::too_many_arguments)]
fn network_checks(
    r: &mut Report,
    cfg: &config::Config,
    identity: Option<&Identity>,
    rt: &tokio::runtime::Runtime,
    https: bool,
    host: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let not_tried = |r: &mut Report, why: &str| {
        for check in ["tcp", "tls", "http", "realtime"] {
            if !r.checks.iter().any(|c| c.1 == check) {
                r.add(Level::Fail, check, format!("not tried: {why}"));
            }
        }
    };
    // DNS
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        r.add(
            Level::Ok,
            "dns",
            format!("{host} is an IP address, nothing to resolve"),
        );
        vec![SocketAddr::new(ip, port)]
    } else {
        let lookup = rt.block_on(async {
            tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await
        });
        match lookup {
            Ok(Ok(a)) => {
                let a: Vec<SocketAddr> = a.collect();
                let list: Vec<String> = a.iter().map(|x| x.ip().to_string()).collect();
                r.add(
                    Level::Ok,
                    "dns",
                    format!("{host} resolves to {}", list.join(", ")),
                );
                a
            }
            Ok(Err(e)) => {
                r.add(
                    Level::Fail,
                    "dns",
                    format!(
                        "{host} does not resolve ({e}); check the host name in api_url and the resolver (/etc/resolv.conf)"
                    ),
                );
                Vec::new()
            }
            Err(_) => {
                r.add(
                    Level::Fail,
                    "dns",
                    format!(
                        "no DNS answer for {host} within {}; check the resolver (/etc/resolv.conf)",
                        shared::go_duration::format(timeout)
                    ),
                );
                Vec::new()
            }
        }
    };
    if addrs.is_empty() {
        not_tried(r, "the API's host name did not resolve");
        return Ok(());
    }
    // TCP
    let mut errors = Vec::new();
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some((s, *addr));
                break;
            }
            Err(e) => errors.push(format!("{addr}: {}", explain_connect(&e, timeout))),
        }
    }
    let Some((mut stream, addr)) = stream else {
        r.add(
            Level::Fail,
            "tcp",
            format!("could not connect to {host}:{port}: {}", errors.join("; ")),
        );
        not_tried(r, "no TCP connection to the API");
        return Ok(());
    };
    r.add(Level::Ok, "tcp", format!("connected to {addr}"));
    // TLS
    let tls = match noderax_agent::tls::client_config(cfg.api_tls_ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            r.add(
                Level::Fail,
                "tls",
                format!("{e}; fix or unset api_tls_ca_file"),
            );
            not_tried(r, "the TLS configuration is unusable");
            return Ok(());
        }
    };
    let roots = match &cfg.api_tls_ca_file {
        Some(p) => format!("system roots plus api_tls_ca_file {}", p.display()),
        None => "system roots".to_owned(),
    };
    if https {
        match tls_handshake(&mut stream, tls.clone(), host, timeout) {
            Ok(what) => r.add(
                Level::Ok,
                "tls",
                format!("{what} with {host}; certificate trusted ({roots})"),
            ),
            Err(e) => {
                r.add(
                    Level::Fail,
                    "tls",
                    format!(
                        "handshake with {host} failed: {e}. If the API uses a private CA, set api_tls_ca_file to its PEM bundle (now: {roots}); check that the host's clock is right and that no proxy intercepts TLS"
                    ),
                );
                not_tried(r, "the TLS handshake failed");
                return Ok(());
            }
        }
    } else {
        r.add(
            Level::Warn,
            "tls",
            format!(
                "not used: api_url is {}, so the agent token and task output cross the network unencrypted; use https:// outside a lab",
                cfg.api_url
            ),
        );
    }
    drop(stream);
    // HTTP
    match api_client(cfg, timeout) {
        Ok(client) => {
            let (client, route) = match identity {
                Some(id) => (
                    client.with_identity(id),
                    shared::api::route::task(PROBE_TASK_ID, "control"),
                ),
                None => (client, String::new()),
            };
            let p = rt.block_on(probe(&client, &route, &cfg.api_url, timeout));
            let level = match (p.reachable, p.status) {
                (false, _) => Level::Fail,
                (true, Some(401 | 403)) if identity.is_some() => Level::Fail,
                (true, Some(s)) if s == 429 || s >= 500 => Level::Warn,
                _ => Level::Ok,
            };
            let detail = match (level, identity.is_some(), p.status) {
                (Level::Fail, true, Some(s)) => format!(
                    "the control plane rejected the agent's credentials (HTTP {s}; {}): the node was deleted or its token revoked. Re-enroll: move the state file away and run `noderax-agent bootstrap`",
                    p.detail
                ),
                (Level::Fail, _, _) => p.detail,
                (Level::Warn, _, _) => format!(
                    "{}: the API is reachable but not healthy right now; try again later",
                    p.detail
                ),
                (Level::Ok, true, status) => format!(
                    "the API accepted the agent's credentials (read-only GET /api/v1{route} for a task that does not exist answered HTTP {})",
                    status.unwrap_or(200)
                ),
                (Level::Ok, false, _) => format!(
                    "{} to GET {}/api/v1; credentials not checked: not enrolled",
                    p.detail, cfg.api_url
                ),
            };
            r.add(level, "http", detail);
        }
        Err(e) => r.add(Level::Fail, "http", format!("{e:#}")),
    }
    // Realtime
    let sio = SioConfig {
        api_url: cfg.api_url.clone(),
        path: cfg.realtime_path.clone(),
        namespace: cfg.realtime_namespace.clone(),
        tls,
        connect_timeout: timeout,
    };
    let url = sio_client::websocket_url(&sio.api_url, &sio.path).unwrap_or_default();
    let result = rt.block_on(async {
        let (client, mut events) = sio_client::connect(&sio).await?;
        // Leave cleanly: the client sends the namespace disconnect and closes.
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
        Ok::<(), SioError>(())
    });
    match result {
        Ok(()) => r.add(
            Level::Ok,
            "realtime",
            format!(
                "Socket.IO handshake at {url} and namespace {} joined; not authenticated on purpose (an agent.auth from here would replace the running agent's session on the control plane; the credentials were checked over HTTP)",
                cfg.realtime_namespace
            ),
        ),
        Err(e) => {
            let hint = match &e {
                SioError::InvalidUrl(_) => "check api_url".to_owned(),
                SioError::Handshake(m) if m.contains("HTTP 404") => format!(
                    "no Socket.IO server at realtime_path {}; check realtime_path",
                    cfg.realtime_path
                ),
                SioError::Handshake(_) => "check api_tls_ca_file and any proxy between this host and the API (it must pass WebSocket upgrades)".to_owned(),
                SioError::NamespaceRefused { .. } => format!(
                    "check realtime_namespace (now {})",
                    cfg.realtime_namespace
                ),
                SioError::Protocol(_) => "this is not a Socket.IO v4 server; check api_url and realtime_path".to_owned(),
                SioError::Timeout(_) | SioError::Transport(_) | SioError::Closed => {
                    "check that WebSocket connections to the API are allowed (firewall, proxy)".to_owned()
                }
            };
            r.add(
                Level::Fail,
                "realtime",
                format!("{url}: {e}; {hint}"),
            );
        }
    }
    Ok(())
}

fn explain_connect(e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens there (is the API down, the port in api_url wrong, or a firewall rejecting?)".to_owned()
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => format!(
            "no answer within {}: a firewall may be dropping the traffic",
            shared::go_duration::format(timeout)
        ),
        _ => format!("{e}; check routing and firewall"),
    }
}

/// A TLS handshake on `stream`; returns `TLS 1.3 (suite)`.
fn tls_handshake(
    stream: &mut TcpStream,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    timeout: Duration,
) -> Result<String, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
    let mut conn = rustls::ClientConnection::new(tls, name).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(stream).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer within {}", shared::go_duration::format(timeout))
            }
            _ => e.to_string(),
        })?;
    }
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_owned(),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!(" ({:?})", s.suite()))
        .unwrap_or_default();
    conn.send_close_notify();
    let _ = conn.complete_io(stream);
    Ok(format!("{version}{suite}"))
}

// ---- executor --------------------------------------------------------------------

fn check_executor(
    r: &mut Report,
    cfg: &config::Config,
    status: Option<&AgentStatus>,
    live: &Liveness,
) {
    const CHECK: &str = "executor";
    let sock = &cfg.exec_socket;
    let s = sock.display();
    let reported = status.filter(|_| live.is_running()).map(|st| {
        let x = &st.executor;
        let mut d = format!(
            "the running agent (pid {}) reports the executor {} ({}",
            st.pid,
            if x.connected {
                "connected"
            } else {
                "NOT connected"
            },
            if x.mode.is_empty() {
                "mode unknown"
            } else {
                &x.mode
            }
        );
        if let Some(v) = &x.version {
            d.push_str(&format!(", version {v}"));
        }
        if let Some(p) = x.pid {
            d.push_str(&format!(", pid {p}"));
        }
        d.push(')');
        if let Some(e) = x.last_error.as_ref().filter(|_| !x.connected) {
            d.push_str(&format!("; last error: {e}"));
        }
        (x.connected, d)
    });
    let meta = match std::fs::symlink_metadata(sock) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let systemd = Path::new("/run/systemd/system").is_dir();
            let (mut level, mut d) = if systemd {
                (
                    Level::Warn,
                    format!(
                        "{s} does not exist: noderax-agent-exec.socket is not active (`systemctl enable --now noderax-agent-exec.socket`); without it `noderax-agent run` starts the executor as its own child, which also works"
                    ),
                )
            } else {
                (
                    Level::Ok,
                    format!(
                        "{s} does not exist: without systemd, `noderax-agent run` starts the executor as its own child over a socketpair, which is fine"
                    ),
                )
            };
            if let Some((connected, rep)) = reported {
                d.push_str(&format!("; {rep}"));
                if !connected {
                    level = Level::Warn;
                }
            }
            r.add(level, CHECK, d);
            return;
        }
        Err(e) => {
            r.add(Level::Fail, CHECK, format!("cannot inspect {s}: {e}"));
            return;
        }
    };
    if !meta.file_type().is_socket() {
        r.add(
            Level::Fail,
            CHECK,
            format!(
                "{s} exists but is not a socket; remove it and restart noderax-agent-exec.socket"
            ),
        );
        return;
    }
    let perms = format!(
        "owner {}, group {}, mode {}",
        describe_uid(meta.uid()),
        meta.gid(),
        mode_str(meta.mode())
    );
    if let Some((connected, rep)) = reported {
        r.add(
            if connected { Level::Ok } else { Level::Warn },
            CHECK,
            format!(
                "{s} exists ({perms}); not connecting to it because the executor serves one peer at a time and a new connection would take over from the running agent; {rep}"
            ),
        );
        return;
    }
    match executor_handshake(sock) {
        Ok(d) => r.add(Level::Ok, CHECK, format!("{s} ({perms}): {d}")),
        Err(d) => r.add(Level::Fail, CHECK, format!("{s} ({perms}): {d}")),
    }
}

/// Connects, exchanges `Hello`, reads the `Inventory`, disconnects (the
/// executor keeps its tasks running when a peer leaves).
fn executor_handshake(sock: &Path) -> Result<String, String> {
    use std::os::unix::net::UnixStream;
    let me = describe_uid(current_uid());
    let mut stream = UnixStream::connect(sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "nobody listens on it (a stale socket): `systemctl restart noderax-agent-exec.socket`, or remove it if the executor runs as a child".to_owned(),
        std::io::ErrorKind::PermissionDenied => format!(
            "{me} may not connect: run doctor as the agent's user (noderax-net when installed), which must be in the socket's group"
        ),
        _ => format!("could not connect: {e}"),
    })?;
    stream
        .set_read_timeout(Some(LOCAL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(LOCAL_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let timed_out = |e: &ipc::CodecError| matches!(e, ipc::CodecError::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    let hello = match ipc::read_message::<_, ExecMessage>(&mut stream) {
        Ok(Some(ExecMessage::Hello(h))) => h,
        Ok(None) => {
            return Err(format!(
                "the executor closed the connection without a handshake: it refuses {me} (it accepts only the users given with --peer-user/--peer-uid, noderax-net when installed); run doctor as the agent's user"
            ));
        }
        Ok(Some(other)) => {
            return Err(format!(
                "the executor's first message was not Hello but {other:?}; install noderax-agent and noderax-agent-exec from the same release"
            ));
        }
        Err(e) if timed_out(&e) => {
            return Err(format!(
                "no handshake within {}: the executor is not answering; see `systemctl status noderax-agent-exec` and its journal",
                shared::go_duration::format(LOCAL_TIMEOUT)
            ));
        }
        Err(e) => return Err(format!("the handshake failed: {e}")),
    };
    ipc::check_peer(&hello).map_err(|e| e.to_string())?;
    ipc::write_message(&mut stream, &NetMessage::Hello(Hello::current()))
        .map_err(|e| format!("could not send the handshake: {e}"))?;
    let ours = if hello.agent_version == shared::build_info::VERSION {
        "same as this noderax-agent".to_owned()
    } else {
        format!(
            "this noderax-agent is {}; install both from the same release",
            shared::build_info::VERSION
        )
    };
    let what = format!(
        "the executor answered the handshake: version {} ({ours}), pid {}, IPC protocol {}.{}",
        hello.agent_version, hello.pid, hello.protocol_major, hello.protocol_minor
    );
    match ipc::read_message::<_, ExecMessage>(&mut stream) {
        Ok(Some(ExecMessage::Inventory(inv))) => {
            let running = inv.tasks.iter().filter(|t| t.exit.is_none()).count();
            Ok(format!(
                "{what}; {running} tasks running, {} terminals open",
                inv.terminals.len()
            ))
        }
        Ok(_) | Err(_) => Ok(format!("{what}; it sent no inventory")),
    }
}

// ---- sudo and the root helper ------------------------------------------------------

fn check_sudo(r: &mut Report, args: &DoctorArgs, cfg: &config::Config) {
    let helper = &args.helper;
    let h = helper.display();
    if !cfg.root_access_ceiling.scopes().operational {
        r.add(
            Level::Ok,
            "sudo",
            format!(
                "not needed: root_access_ceiling is {}, so package tasks are refused on this host by design",
                cfg.root_access_ceiling
            ),
        );
        return;
    }
    match std::fs::metadata(helper) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.add(
                Level::Warn,
                "root helper",
                format!(
                    "{h} is not installed: package tasks (install, remove, purge, apt update) and self-update will fail; the installer puts it there together with /etc/sudoers.d/noderax-agent"
                ),
            );
            return;
        }
        Err(e) => {
            r.add(
                Level::Fail,
                "root helper",
                format!("cannot inspect {h}: {e}"),
            );
            return;
        }
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => {
            r.add(
                Level::Fail,
                "root helper",
                format!(
                    "{h} is owned by {} with mode {}: whoever can write it becomes root; run `chown root:root {h} && chmod 755 {h}`",
                    describe_uid(m.uid()),
                    mode_str(m.mode())
                ),
            );
        }
        Ok(m) => match replaceable_on_the_way(helper) {
            Some(dir) => r.add(
                Level::Fail,
                "root helper",
                format!(
                    "{h} is reached through {dir}, which someone other than root can change: whoever can replace what is in it becomes root; make every directory on the way root-owned and not group or world writable"
                ),
            ),
            None => {
                // Installed, it is a link into the current release.
                let shown = match std::fs::canonicalize(helper) {
                    Ok(real) if real != *helper => format!("{h} -> {}", real.display()),
                    _ => h.to_string(),
                };
                r.add(
                    Level::Ok,
                    "root helper",
                    format!("{shown}: owner root, mode {}", mode_str(m.mode())),
                );
            }
        },
    }
    let sudo = &args.sudo;
    if !sudo.exists() {
        r.add(
            Level::Warn,
            "sudo",
            format!(
                "{} is not installed: the executor reaches the root helper only through sudo, so package tasks will fail; install it (`apt-get install sudo`)",
                sudo.display()
            ),
        );
        return;
    }
    // The executor's user: the socket's owner under systemd, else the
    // agent's (which starts the executor as its child), else ours.
    let exec_uid = std::fs::metadata(&cfg.exec_socket)
        .or_else(|_| std::fs::metadata(&cfg.state_file))
        .map(|m| m.uid())
        .unwrap_or_else(|_| current_uid());
    let me = current_uid();
    let user = user_name(exec_uid).unwrap_or_else(|| format!("#{exec_uid}"));
    let mut cmd = std::process::Command::new(sudo);
    cmd.env("LC_ALL", "C").arg("-n").arg("-l");
    if exec_uid != me {
        cmd.arg("-U").arg(&user);
    }
    cmd.arg(helper).args(["apt", "update"]);
    cmd.stdin(std::process::Stdio::null());
    let shown = format!(
        "sudo -n -l{} {h} apt update",
        if exec_uid != me {
            format!(" -U {user}")
        } else {
            String::new()
        }
    );
    let out = match run_with_timeout(cmd, LOCAL_TIMEOUT) {
        Ok(o) => o,
        Err(e) => {
            r.add(Level::Fail, "sudo", format!("`{shown}` could not run: {e}"));
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let rule = format!("{user} ALL=(root) NOPASSWD: {h}");
    if out.status.success() {
        r.add(
            Level::Ok,
            "sudo",
            format!("sudo lets {user} run the root helper without a password (`{shown}`: {first})"),
        );
    } else if text.contains("password is required") {
        r.add(
            Level::Fail,
            "sudo",
            format!(
                "sudo wants a password for {user} to run {h}, but the executor runs it with sudo -n, so package tasks will fail; add `{rule}` to /etc/sudoers.d/noderax-agent"
            ),
        );
    } else if exec_uid != me && me != 0 {
        r.add(
            Level::Warn,
            "sudo",
            format!(
                "could not check {user}'s sudo rights as {} (`{shown}`: {first}); run doctor as root or as {user}",
                describe_uid(me)
            ),
        );
    } else {
        r.add(
            Level::Fail,
            "sudo",
            format!(
                "sudo does not let {user} run {h} (`{shown}`: {}): package tasks will fail; add `{rule}` to /etc/sudoers.d/noderax-agent (the installer writes it)",
                if first.is_empty() { "denied" } else { first }
            ),
        );
    }
}

/// The first directory, following `path` and every link on the way
/// (`/usr/local/libexec/noderax-agent-priv` -> `/opt/noderax-agent/current/...`
/// -> `releases/V/...`), in which someone other than root could replace the
/// entry looked up: not root-owned, or group/world writable without the
/// sticky bit protecting a root-owned entry. Described for a message.
fn replaceable_on_the_way(path: &Path) -> Option<String> {
    use std::path::Component;
    // Components still to resolve, the next one last.
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let push = |pending: &mut Vec<std::ffi::OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    let mut cur = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().ok()?
    };
    push(&mut pending, path);
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let dir = match std::fs::metadata(&cur) {
            Ok(m) => m,
            Err(e) => return Some(format!("{} ({e})", cur.display())),
        };
        let next = cur.join(&name);
        let entry = std::fs::symlink_metadata(&next).ok();
        let sticky_protects =
            dir.mode() & 0o1000 != 0 && entry.as_ref().is_some_and(|e| e.uid() == 0);
        if dir.uid() != 0 || (dir.mode() & 0o022 != 0 && !sticky_protects) {
            return Some(format!(
                "{} (owner {}, mode {})",
                cur.display(),
                describe_uid(dir.uid()),
                mode_str(dir.mode())
            ));
        }
        match entry {
            Some(e) if e.file_type().is_symlink() => {
                links += 1;
                let target = match std::fs::read_link(&next) {
                    Ok(t) if links <= 40 => t,
                    _ => {
                        return Some(format!(
                            "{} (a link that cannot be followed)",
                            next.display()
                        ));
                    }
                };
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                push(&mut pending, &target);
            }
            _ => cur = next,
        }
    }
    None
}

/// Runs a command, killing it after `timeout`.
pub(super) fn run_with_timeout(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::io::Result<std::process::Output> {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => {
            // Our own child, not reaped yet (the waiting thread has not returned).
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: plain kill(2) of our child's pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}", shared::go_duration::format(timeout)),
            ))
        }
    }
}

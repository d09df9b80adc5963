//! `noderax-agent-exec`: the executor's command line and start-up. The
//! work is done by the library modules (see `agent_exec`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use shared::api::RootProfile;
use shared::build_info;
use shared::config::Config;
use shared::ipc::{Outcome, TaskExit};

use agent_exec::ipc_server::{self, Endpoint};
use agent_exec::output_buffer::Bounds;
use agent_exec::process_ledger::{Kind, Ledger};
use agent_exec::settings::Settings;
use agent_exec::task_registry::Registry;
use agent_exec::terminals::Terminals;
use agent_exec::{child_env, log, process_group};

/// First fd systemd passes with socket activation (sd_listen_fds(3)).
const SD_LISTEN_FDS_START: i32 = 3;

/// The Noderax agent's executor. It is started by systemd (socket activation
/// on /run/noderax-agent/exec.sock) or by `noderax-agent` itself with
/// `--ipc-fd`; it is not meant to be run by hand.
#[derive(Debug, Parser)]
#[command(name = "noderax-agent-exec", disable_version_flag = true)]
struct Cli {
    /// Print the version and exit.
    #[arg(short = 'v', long)]
    version: bool,
    /// Serve one already connected socket (a socketpair end) on this fd;
    /// the executor exits when that peer goes away.
    #[arg(long, value_name = "FD", conflicts_with = "listen")]
    ipc_fd: Option<i32>,
    /// Listen on this socket path (development; under systemd the socket
    /// comes from socket activation, LISTEN_FDS).
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// uid allowed to connect; repeat for several. Default (without
    /// --peer-user either): the executor's own uid.
    #[arg(long = "peer-uid", value_name = "UID")]
    peer_uids: Vec<u32>,
    /// User allowed to connect (e.g. noderax-net); repeat for several.
    #[arg(long = "peer-user", value_name = "NAME")]
    peer_users: Vec<String>,
    /// Directory for spill files of unacknowledged output.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/noderax-agent/exec"
    )]
    state_dir: PathBuf,
    /// Between SIGTERM and SIGKILL on timeout or cancel (Go duration). Default: config key kill_grace.
    #[arg(long, value_name = "DURATION")]
    kill_grace: Option<String>,
    /// Tasks allowed to run at once. Default: config key max_concurrent_tasks.
    #[arg(long, value_name = "N")]
    max_tasks: Option<usize>,
    /// Unacknowledged output kept in memory per task, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    output_memory_bytes: usize,
    /// Unacknowledged output kept in the spill file per task, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    output_spill_bytes: u64,
    /// The sudo binary used to reach the root helper.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/sudo")]
    sudo: PathBuf,
    /// The root helper (`noderax-agent-priv`).
    #[arg(long, value_name = "PATH", default_value = shared::config::HELPER_PATH)]
    helper: PathBuf,
    /// Most root access this host allows (config key root_access_ceiling);
    /// package changes need one that includes `operational`, as does the
    /// profile each task is handed over with.
    #[arg(long, value_name = "PROFILE")]
    root_access_ceiling: Option<String>,
    #[command(flatten)]
    test_hooks: TestHooks,
}

/// Options for the integration tests only. They exist in debug builds
/// alone: a release binary has none of them and cannot be made to behave
/// differently (scripts/check-release-build.sh checks for their names).
#[cfg(debug_assertions)]
#[derive(Debug, clap::Args)]
struct TestHooks {
    /// TEST ONLY: make this terminal start mode fail (ctty, no-ctty,
    /// minimal) to exercise the fallbacks; repeat for several.
    #[arg(
        long = "test-refuse-pty-mode",
        value_name = "MODE",
        value_parser = parse_pty_mode,
        hide = true
    )]
    refuse_pty_modes: Vec<shared::ipc::PtyMode>,
}

#[cfg(debug_assertions)]
fn parse_pty_mode(s: &str) -> Result<shared::ipc::PtyMode, String> {
    use shared::ipc::PtyMode;
    match s {
        "ctty" => Ok(PtyMode::ControllingTty),
        "no-ctty" => Ok(PtyMode::NoControllingTty),
        "minimal" => Ok(PtyMode::Minimal),
        _ => Err("expected ctty, no-ctty or minimal".into()),
    }
}

#[cfg(not(debug_assertions))]
#[derive(Debug, clap::Args)]
struct TestHooks {}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let defaults = Config::default();
    let kill_grace = match &cli.kill_grace {
        Some(s) => shared::go_duration::parse(s).with_context(|| {
            format!("--kill-grace {s:?} is not a duration such as 10s or 1m30s")
        })?,
        None => defaults.kill_grace,
    };
    let root_access_ceiling = match &cli.root_access_ceiling {
        Some(s) => RootProfile::parse(s).with_context(|| {
            format!("--root-access-ceiling {s:?} is not a profile (off, operational, ...)")
        })?,
        None => defaults.root_access_ceiling,
    };
    let max_tasks = cli
        .max_tasks
        .unwrap_or(defaults.max_concurrent_tasks as usize);
    if max_tasks == 0 {
        bail!("--max-tasks must be at least 1");
    }
    let user = child_env::User::current();
    // SAFETY: getuid cannot fail.
    let own_uid = unsafe { libc::getuid() };
    let mut allowed_uids = cli.peer_uids.clone();
    for name in &cli.peer_users {
        allowed_uids.push(child_env::uid_of(name).with_context(|| {
            format!("--peer-user {name:?}: no such user; create it or pass --peer-uid")
        })?);
    }
    if allowed_uids.is_empty() {
        allowed_uids.push(own_uid);
    }
    Ok(Settings {
        allowed_uids,
        state_dir: cli.state_dir.clone(),
        kill_grace,
        max_tasks,
        output_bounds: Bounds {
            memory: cli.output_memory_bytes,
            spill: cli.output_spill_bytes,
        },
        sudo: cli.sudo.clone(),
        helper: cli.helper.clone(),
        root_access_ceiling,
        login_shell: std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| user.shell.clone()),
        user,
        #[cfg(debug_assertions)]
        test_refuse_pty_modes: cli.test_hooks.refuse_pty_modes.clone(),
    })
}

/// The listener passed by systemd, if this process is its target.
fn activated_listener() -> anyhow::Result<Option<std::os::unix::net::UnixListener>> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    let n: i32 = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if n != 1 {
        bail!(
            "systemd passed {n} sockets (LISTEN_FDS); the executor's socket unit must define exactly one"
        );
    }
    check_open(SD_LISTEN_FDS_START, "LISTEN_FDS")?;
    // SAFETY: systemd hands over fd 3 to this process (LISTEN_PID matched),
    // it is open (checked), and nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    set_cloexec(&fd)?;
    Ok(Some(std::os::unix::net::UnixListener::from(fd)))
}

/// Refuses to take ownership of an fd that is not open: owning a closed
/// number would later close some unrelated file that reused it.
fn check_open(fd: i32, from: &str) -> anyhow::Result<()> {
    // SAFETY: F_GETFD only queries the descriptor.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        bail!(
            "{from} names fd {fd}, but it is not open in this process: {}; the starter must pass the socket without close-on-exec",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn set_cloexec(fd: &OwnedFd) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd we own. Children must not inherit the socket.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc != 0 {
        bail!(
            "could not mark fd {} close-on-exec: {}",
            fd.as_raw_fd(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The socket before the event loop exists.
enum StdEndpoint {
    Listener(std::os::unix::net::UnixListener),
    Connected(std::os::unix::net::UnixStream),
}

/// Finds the socket first, so a mistaken start changes nothing on disk.
fn std_endpoint(cli: &Cli) -> anyhow::Result<StdEndpoint> {
    if let Some(fd) = cli.ipc_fd {
        if fd < 3 {
            bail!(
                "--ipc-fd {fd} is stdin/stdout/stderr; pass the socketpair end on fd 3 or higher"
            );
        }
        check_open(fd, "--ipc-fd")?;
        // SAFETY: the parent passed this open fd to us for exactly this purpose.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(&owned)?;
        let std_stream = std::os::unix::net::UnixStream::from(owned);
        std_stream
            .set_nonblocking(true)
            .with_context(|| format!("--ipc-fd {fd} is not a usable socket"))?;
        return Ok(StdEndpoint::Connected(std_stream));
    }
    let listener = if let Some(l) = activated_listener()? {
        l
    } else if let Some(path) = &cli.listen {
        // Bound under a temporary name and renamed into place, so the path
        // appears only once the socket listens (no ECONNREFUSED window).
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp)
            .with_context(|| format!("could not listen on {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("could not move the socket to {}", path.display()))?;
        listener
    } else {
        bail!(
            "no IPC socket: start the executor through its systemd socket unit, or pass --ipc-fd FD or --listen PATH"
        );
    };
    listener.set_nonblocking(true)?;
    Ok(StdEndpoint::Listener(listener))
}

/// Hands the socket to the event loop (must run inside it).
fn endpoint(std: StdEndpoint) -> anyhow::Result<Endpoint> {
    Ok(match std {
        StdEndpoint::Listener(l) => Endpoint::Listener(
            tokio::net::UnixListener::from_std(l).context("the IPC listener is not usable")?,
        ),
        StdEndpoint::Connected(s) => Endpoint::Connected(
            tokio::net::UnixStream::from_std(s).context("--ipc-fd is not a Unix stream socket")?,
        ),
    })
}

async fn shutdown(registry: &Registry, terminals: &Terminals, reason: &str, kill_grace: Duration) {
    terminals.close_all(reason);
    registry.cancel_all(reason);
    // Runners send SIGTERM, wait the grace period, then SIGKILL; give them
    // that long plus a little to reap and report.
    let limit = tokio::time::Instant::now() + kill_grace + Duration::from_secs(10);
    while !(registry.all_ended() && terminals.is_empty()) && tokio::time::Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pgid in registry.running_groups() {
        let _ = process_group::signal(pgid, libc::SIGKILL);
    }
}

/// Spill files of a previous incarnation hold output nobody can ask for any
/// more (its sequence state died with it).
fn remove_stale_spill_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "spill") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Arc::new(settings(&cli)?);
    let std_endpoint = std_endpoint(&cli)?;
    let spill_dir = settings.spill_dir();
    // Task output and the process record are for the executor alone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spill_dir)
        .with_context(|| {
            format!(
                "could not create the spill directory {}; create it owned by the executor's user or pass --state-dir",
                spill_dir.display()
            )
        })?;
    // What a crashed predecessor left: kill it, and tell the network process.
    let ledger = Arc::new(Ledger::new(&settings.state_dir));
    let leftovers = ledger.reap_previous()?;
    remove_stale_spill_files(&spill_dir);
    let registry = Registry::with_ledger(ledger.clone());
    for left in &leftovers {
        log::warn(&format!(
            "killed {} process(es) {:?} left running by a previous executor for {} {}",
            left.pids.len(),
            left.pids,
            match left.kind {
                Kind::Task => "task",
                Kind::Session | Kind::Process => "terminal",
            },
            left.id
        ));
        if left.kind == Kind::Task && shared::validate::uuid(&left.id).is_ok() {
            registry.insert_ended(
                TaskExit {
                    task_id: left.id.clone(),
                    last_seq: 0,
                    outcome: Outcome::Failed,
                    exit_code: -1,
                    duration: Duration::ZERO,
                    error: Some(format!(
                        "executor exited while the task ran; the executor that started next killed its remaining processes {:?}",
                        left.pids
                    )),
                    result_json: None,
                    dropped_bytes: 0,
                },
                &spill_dir,
                settings.output_bounds,
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the event loop")?;
    runtime.block_on(async {
        let endpoint = endpoint(std_endpoint)?;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("could not install the SIGTERM handler")?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("could not install the SIGINT handler")?;
        let terminals = Terminals::new();
        log::info(&format!(
            "started (version {}), serving tasks for uid(s) {:?}",
            build_info::VERSION,
            settings.allowed_uids
        ));
        let reason = tokio::select! {
            () = ledger.run_writer() => "process ledger writer stopped",
            () = ipc_server::serve(endpoint, registry.clone(), terminals.clone(), settings.clone()) => "executor's IPC peer is gone",
            _ = sigterm.recv() => "executor is shutting down (SIGTERM)",
            _ = sigint.recv() => "executor is shutting down (SIGINT)",
        };
        log::info(&format!("{reason}; stopping running tasks"));
        shutdown(&registry, &terminals, reason, settings.kill_grace).await;
        // Everything was stopped: an empty record, so the next start has
        // nothing to kill.
        if let Err(e) = ledger.flush() {
            log::warn(&e.to_string());
        }
        anyhow::Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("noderax-agent-exec {}", build_info::summary());
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

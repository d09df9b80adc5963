//! The network process's end of the IPC connection to the executor
//! (ARCHITECTURE.md §4).
//!
//! Two ways to reach the executor:
//! - [`ExecEndpoint::Socket`]: under systemd the executor is socket
//!   activated; this side connects to the socket and reconnects whenever
//!   the connection ends. The executor and its tasks outlive this process.
//! - [`ExecEndpoint::Child`]: without systemd the executor is started as a
//!   child on one end of a socketpair (`--ipc-fd 3`) and started again, with
//!   back-off, whenever it exits.
//!
//! The link knows nothing about tasks: it reports [`LinkEvent::Up`] with the
//! executor's inventory after every handshake, every message, and
//! [`LinkEvent::Down`] with the reason. Messages handed to [`ExecLink::send`]
//! while the link is down are discarded: whoever sends them re-synchronises
//! from the next inventory.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use shared::ipc::{self, ExecMessage, FrameDecoder, Hello, Inventory, NetMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use crate::agent_status::ExecutorState;
use crate::backoff::Backoff;
use crate::log;

/// How long the executor may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The fd number the child executor finds its socket on.
const CHILD_IPC_FD: i32 = 3;

/// Where the executor is.
#[derive(Debug, Clone)]
pub enum ExecEndpoint {
    /// Connect to a socket-activated executor; with `peer_uid`, only an
    /// executor running as that uid is accepted (SO_PEERCRED).
    Socket {
        path: PathBuf,
        peer_uid: Option<u32>,
    },
    /// Start `program args... --ipc-fd 3` as a child.
    Child {
        program: PathBuf,
        args: Vec<OsString>,
    },
}

impl ExecEndpoint {
    fn describe(&self) -> String {
        match self {
            Self::Socket { path, .. } => format!("socket {}", path.display()),
            Self::Child { program, .. } => format!("child process {}", program.display()),
        }
    }
}

/// What the link reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// A connection completed the handshake.
    Up {
        hello: Hello,
        inventory: Inventory,
    },
    Message(ExecMessage),
    /// The connection ended. `executor_exited` is set when the child
    /// executor itself is gone (its tasks went with it).
    Down {
        reason: String,
        executor_exited: bool,
    },
}

/// Sends requests to the executor over the current connection.
#[derive(Debug, Clone)]
pub struct ExecLink {
    tx: mpsc::UnboundedSender<NetMessage>,
}

impl ExecLink {
    /// Queues a message for the current connection; discarded when there is none.
    pub fn send(&self, msg: NetMessage) {
        let _ = self.tx.send(msg);
    }
}

/// Starts the link; it runs until `shutdown` becomes true.
pub fn start(
    endpoint: ExecEndpoint,
    events: mpsc::Sender<LinkEvent>,
    status: watch::Sender<ExecutorState>,
    shutdown: watch::Receiver<bool>,
) -> ExecLink {
    let (tx, rx) = mpsc::unbounded_channel();
    status.send_modify(|s| s.mode = endpoint.describe());
    tokio::spawn(run(endpoint, rx, events, status, shutdown));
    ExecLink { tx }
}

/// Why one connection ended.
struct Ended {
    reason: String,
    executor_exited: bool,
    /// How long the connection was up (zero if the handshake failed).
    up_for: Duration,
}

async fn run(
    endpoint: ExecEndpoint,
    mut outgoing: mpsc::UnboundedReceiver<NetMessage>,
    events: mpsc::Sender<LinkEvent>,
    status: watch::Sender<ExecutorState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Requests meant for the previous connection are stale.
        while outgoing.try_recv().is_ok() {}
        let ended = tokio::select! {
            e = connection(&endpoint, &mut outgoing, &events, &status, first) => e,
            _ = shutdown.changed() => return,
        };
        first = false;
        let Some(ended) = ended else {
            return; // the event receiver is gone: the agent is stopping
        };
        status.send_modify(|s| {
            s.connected = false;
            s.pid = None;
            s.last_error = Some(ended.reason.clone());
            if ended.executor_exited {
                s.restarts += 1;
            }
        });
        if events
            .send(LinkEvent::Down {
                reason: ended.reason.clone(),
                executor_exited: ended.executor_exited,
            })
            .await
            .is_err()
        {
            return;
        }
        if ended.up_for >= Duration::from_secs(10) {
            backoff.reset();
        }
        let delay = backoff.next_delay(None);
        log::warn(format_args!(
            "executor connection ({}) ended: {}; retrying in {:.1}s",
            endpoint.describe(),
            ended.reason,
            delay.as_secs_f64()
        ));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection from connect (or child start) to its end. `None` when
/// the agent is stopping.
async fn connection(
    endpoint: &ExecEndpoint,
    outgoing: &mut mpsc::UnboundedReceiver<NetMessage>,
    events: &mpsc::Sender<LinkEvent>,
    status: &watch::Sender<ExecutorState>,
    first: bool,
) -> Option<Ended> {
    let fail = |reason: String, executor_exited: bool, up_since: Option<std::time::Instant>| {
        Some(Ended {
            reason,
            executor_exited,
            up_for: up_since.map(|t| t.elapsed()).unwrap_or_default(),
        })
    };
    let (stream, mut child) = match endpoint {
        ExecEndpoint::Socket { path, peer_uid } => match UnixStream::connect(path).await {
            Ok(s) => {
                if let Some(expected) = peer_uid {
                    match s.peer_cred() {
                        Ok(cred) if cred.uid() == *expected => {}
                        // Socket activation: SO_PEERCRED names whoever
                        // called listen(), which is systemd itself (pid 1,
                        // root), not the executor it hands the connection
                        // to. Only root can listen at the socket's path
                        // (systemd creates /run/noderax-agent root-owned),
                        // so this is the unit's socket and User= of its
                        // service decides who serves it.
                        Ok(cred) if cred.uid() == 0 && cred.pid() == Some(1) => {}
                        Ok(cred) => {
                            return fail(
                                format!(
                                    "refused the process behind {} (pid {:?}): it runs as uid {}, but the executor must run as uid {expected} (--exec-user)",
                                    path.display(),
                                    cred.pid(),
                                    cred.uid()
                                ),
                                false,
                                None,
                            );
                        }
                        Err(e) => {
                            return fail(
                                format!(
                                    "could not check who serves {} (SO_PEERCRED): {e}",
                                    path.display()
                                ),
                                false,
                                None,
                            );
                        }
                    }
                }
                (s, None)
            }
            Err(e) => {
                let hint = if first {
                    " (is noderax-agent-exec.socket active? `systemctl status noderax-agent-exec.socket`)"
                } else {
                    ""
                };
                return fail(
                    format!("could not connect to {}: {e}{hint}", path.display()),
                    false,
                    None,
                );
            }
        },
        ExecEndpoint::Child { program, args } => match spawn_child(program, args) {
            Ok((s, c)) => (s, Some(c)),
            Err(e) => {
                return fail(
                    format!(
                        "could not start the executor {}: {e}; install noderax-agent-exec beside noderax-agent or pass --exec-program",
                        program.display()
                    ),
                    true,
                    None,
                );
            }
        },
    };
    let is_child = child.is_some();
    let child_exit = async {
        match child.as_mut() {
            Some(c) => match c.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("waiting for it failed: {e}"),
            },
            None => std::future::pending().await,
        }
    };
    tokio::pin!(child_exit);

    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];

    let handshake = async {
        wr.write_all(&ipc::codec::encode(&NetMessage::Hello(Hello::current()))?)
            .await?;
        let hello = match read_message(&mut rd, &mut decoder, &mut buf).await? {
            ExecMessage::Hello(h) => h,
            other => return Err(LinkError::Unexpected(variant(&other))),
        };
        ipc::check_peer(&hello)?;
        let inventory = match read_message(&mut rd, &mut decoder, &mut buf).await? {
            ExecMessage::Inventory(i) => i,
            other => return Err(LinkError::Unexpected(variant(&other))),
        };
        Ok((hello, inventory))
    };
    let (hello, inventory) = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return fail(format!("handshake failed: {e}"), false, None),
            Err(_) => return fail(format!("the executor did not answer the handshake within {HANDSHAKE_TIMEOUT:?}"), false, None),
        },
        why = &mut child_exit => return fail(format!("the executor exited during the handshake: {why}"), true, None),
    };
    log::info(format_args!(
        "connected to the executor (pid {}, version {}) over {}; it has {} task(s) and {} terminal(s)",
        hello.pid,
        hello.agent_version,
        endpoint.describe(),
        inventory.tasks.len(),
        inventory.terminals.len()
    ));
    status.send_modify(|s| {
        s.connected = true;
        s.pid = Some(hello.pid);
        s.version = Some(hello.agent_version.clone());
    });
    let up_since = Some(std::time::Instant::now());
    events.send(LinkEvent::Up { hello, inventory }).await.ok()?;

    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            msg = outgoing.recv() => {
                let msg = msg?;
                out.clear();
                push_frame(&mut out, &msg);
                // Everything already queued goes out in the same write.
                while out.len() < 256 * 1024 {
                    match outgoing.try_recv() {
                        Ok(m) => push_frame(&mut out, &m),
                        Err(_) => break,
                    }
                }
                if let Err(e) = wr.write_all(&out).await {
                    return fail(format!("writing to the executor failed: {e}"), false, up_since);
                }
            }
            msg = read_message(&mut rd, &mut decoder, &mut buf) => match msg {
                Ok(m) => events.send(LinkEvent::Message(m)).await.ok()?,
                Err(e) => {
                    // A child that closed its end is usually exiting: report its exit status.
                    if is_child
                        && let Ok(why) = tokio::time::timeout(Duration::from_secs(2), &mut child_exit).await
                    {
                        return fail(format!("the executor exited: {why}"), true, up_since);
                    }
                    return fail(e.to_string(), false, up_since);
                }
            },
            why = &mut child_exit => return fail(format!("the executor exited: {why}"), true, up_since),
        }
    }
}

fn push_frame(out: &mut Vec<u8>, msg: &NetMessage) {
    match ipc::codec::encode(msg) {
        Ok(frame) => out.extend_from_slice(&frame),
        // Only an oversized message can fail; the senders bound every field.
        Err(e) => log::error(format_args!("IPC message not sent: {e}")),
    }
}

fn variant(m: &ExecMessage) -> String {
    let s = format!("{m:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_owned()
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("the executor closed the connection")]
    Closed,
    #[error(transparent)]
    Codec(#[from] ipc::CodecError),
    #[error("I/O on the executor socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Incompatible(#[from] ipc::IncompatiblePeer),
    #[error("the executor sent {0} where the handshake was expected")]
    Unexpected(String),
}

async fn read_message(
    rd: &mut tokio::net::unix::OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<ExecMessage, LinkError> {
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(m);
        }
        let n = rd.read(buf).await?;
        if n == 0 {
            return Err(if decoder.buffered() == 0 {
                LinkError::Closed
            } else {
                ipc::CodecError::Truncated.into()
            });
        }
        decoder.push(&buf[..n]);
    }
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => st.to_string(),
    }
}

/// Starts the executor with one end of a socketpair as fd 3.
fn spawn_child(
    program: &PathBuf,
    args: &[OsString],
) -> std::io::Result<(UnixStream, tokio::process::Child)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let theirs: OwnedFd = theirs.into();
    let raw = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .arg("--ipc-fd")
        .arg(CHILD_IPC_FD.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if raw == CHILD_IPC_FD {
                // dup2 onto itself keeps close-on-exec set; clear it instead.
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CHILD_IPC_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((UnixStream::from_std(ours)?, child))
}

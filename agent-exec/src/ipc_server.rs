//! The executor's end of the IPC socket (ARCHITECTURE.md §4).
//!
//! Two ways to get a peer:
//! - [`Endpoint::Listener`]: a listening socket (systemd socket activation,
//!   or `--listen PATH` for development). Connections come and go; tasks keep
//!   running in between. A new, allowed peer takes over from the current one,
//!   so a network process that restarted is never locked out by its dead
//!   predecessor's half-open connection; there is one active peer at a time.
//! - [`Endpoint::Connected`]: an inherited socketpair end (foreground mode,
//!   agent-net's child). When that peer goes away nobody can reconnect, so the
//!   executor stops its tasks and exits.
//!
//! Every connection: the peer's uid (SO_PEERCRED) must be allowed, else it is
//! closed and logged; both sides send `Hello` and the major versions must
//! match; then the executor sends `Inventory`, then serves requests.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use shared::ipc::{self, ExecMessage, FrameDecoder, Hello, NetMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::log;
use crate::settings::Settings;
use crate::task_registry::Registry;
use crate::task_runner;
use crate::terminals::Terminals;

/// How long a peer may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where peers come from.
pub enum Endpoint {
    Listener(UnixListener),
    Connected(UnixStream),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer closed the connection")]
    Closed,
    #[error(transparent)]
    Codec(#[from] ipc::CodecError),
    #[error("I/O on the IPC socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent no Hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("peer's first message was not Hello")]
    NoHello,
    #[error(transparent)]
    Incompatible(#[from] ipc::IncompatiblePeer),
    #[error("peer sent Hello again in the middle of a session")]
    RepeatedHello,
}

/// The uid and pid of the process at the other end.
pub fn peer_credentials(stream: &UnixStream) -> std::io::Result<(u32, i32)> {
    let mut cred: libc::ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.pid))
}

fn peer_allowed(stream: &UnixStream, settings: &Settings) -> bool {
    match peer_credentials(stream) {
        Ok((uid, _)) if settings.allowed_uids.contains(&uid) => true,
        Ok((uid, pid)) => {
            log::warn(&format!(
                "refused IPC peer pid {pid} uid {uid}: only uid(s) {:?} may connect (--peer-uid)",
                settings.allowed_uids
            ));
            false
        }
        Err(e) => {
            log::warn(&format!(
                "refused IPC peer: its credentials (SO_PEERCRED) could not be read: {e}"
            ));
            false
        }
    }
}

/// Serves peers until the endpoint is exhausted (a connected socket's peer
/// left) or accepting fails.
pub async fn serve(
    endpoint: Endpoint,
    registry: Arc<Registry>,
    terminals: Arc<Terminals>,
    settings: Arc<Settings>,
) {
    match endpoint {
        Endpoint::Connected(stream) => {
            if peer_allowed(&stream, &settings) {
                let result = session(stream, &registry, &terminals, &settings).await;
                registry.disconnect();
                log::info(&format!("IPC peer gone: {}", describe(result)));
            }
        }
        Endpoint::Listener(listener) => {
            let mut next: Option<UnixStream> = None;
            loop {
                let stream = match next.take() {
                    Some(s) => s,
                    None => match accept_allowed(&listener, &settings).await {
                        Ok(s) => s,
                        Err(e) => {
                            log::error(&format!(
                                "accepting IPC connections failed: {e}; the executor stops"
                            ));
                            return;
                        }
                    },
                };
                tokio::select! {
                    result = session(stream, &registry, &terminals, &settings) => {
                        log::info(&format!("IPC peer gone: {}; waiting for a new connection", describe(result)));
                    }
                    newer = accept_allowed(&listener, &settings) => match newer {
                        Ok(s) => {
                            log::info("a new IPC peer connected; it replaces the current one");
                            next = Some(s);
                        }
                        Err(e) => {
                            log::error(&format!("accepting IPC connections failed: {e}; the executor stops"));
                            registry.disconnect();
                            return;
                        }
                    },
                }
                registry.disconnect();
            }
        }
    }
}

fn describe(result: Result<(), SessionError>) -> String {
    match result {
        Ok(()) | Err(SessionError::Closed) => "connection closed".into(),
        Err(e) => e.to_string(),
    }
}

async fn accept_allowed(
    listener: &UnixListener,
    settings: &Settings,
) -> std::io::Result<UnixStream> {
    loop {
        let (stream, _) = listener.accept().await?;
        if peer_allowed(&stream, settings) {
            return Ok(stream);
        }
    }
}

async fn write_all_messages(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    msgs: &[ExecMessage],
) -> Result<(), SessionError> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&ipc::codec::encode(m)?);
    }
    w.write_all(&out).await?;
    Ok(())
}

async fn read_message(
    r: &mut tokio::net::unix::OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<NetMessage, SessionError> {
    loop {
        if let Some(m) = decoder.next_message()? {
            return Ok(m);
        }
        let n = r.read(buf).await?;
        if n == 0 {
            return Err(if decoder.buffered() == 0 {
                SessionError::Closed
            } else {
                ipc::CodecError::Truncated.into()
            });
        }
        decoder.push(&buf[..n]);
    }
}

async fn session(
    stream: UnixStream,
    registry: &Arc<Registry>,
    terminals: &Arc<Terminals>,
    settings: &Arc<Settings>,
) -> Result<(), SessionError> {
    let (mut rd, mut wr) = stream.into_split();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    write_all_messages(&mut wr, &[ExecMessage::Hello(Hello::current())]).await?;
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut rd, &mut decoder, &mut buf))
        .await
        .map_err(|_| SessionError::HelloTimeout)??;
    let NetMessage::Hello(peer) = hello else {
        return Err(SessionError::NoHello);
    };
    if let Err(e) = ipc::check_peer(&peer) {
        log::error(&e.to_string());
        return Err(e.into());
    }
    log::info(&format!(
        "IPC peer pid {} (version {}) connected",
        peer.pid, peer.agent_version
    ));
    let mut inventory = registry.connect();
    inventory.terminals = terminals.inventory();
    write_all_messages(&mut wr, &[ExecMessage::Inventory(inventory)]).await?;

    let writer = {
        let registry = registry.clone();
        async move {
            loop {
                let batch = registry.next_batch();
                if batch.is_empty() {
                    registry.wait_for_work().await;
                    continue;
                }
                write_all_messages(&mut wr, &batch).await?;
            }
        }
    };
    let reader = async {
        loop {
            let msg = read_message(&mut rd, &mut decoder, &mut buf).await?;
            handle(msg, registry, terminals, settings)?;
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

fn refuse(registry: &Registry, request: &str, reason: String) {
    log::warn(&format!("refused {request}: {reason}"));
    registry.send(ExecMessage::Refused {
        request: request.to_owned(),
        reason,
    });
}

fn handle(
    msg: NetMessage,
    registry: &Arc<Registry>,
    terminals: &Arc<Terminals>,
    settings: &Arc<Settings>,
) -> Result<(), SessionError> {
    match msg {
        NetMessage::Hello(_) => return Err(SessionError::RepeatedHello),
        NetMessage::RunTask(run) => {
            let request = format!("RunTask {}", run.task_id);
            if let Err(e) = shared::validate::uuid(&run.task_id) {
                refuse(
                    registry,
                    &request,
                    format!("{e}; task ids are the control plane's UUIDs"),
                );
            } else if let Err(e) = task_runner::start(registry, settings, run) {
                refuse(registry, &request, e.to_string());
            }
        }
        NetMessage::CancelTask { task_id, reason } => {
            let reason = if reason.trim().is_empty() {
                "task cancelled by control request".to_owned()
            } else {
                reason
            };
            if let Err(e) = registry.cancel(&task_id, reason) {
                refuse(registry, &format!("CancelTask {task_id}"), e.to_string());
            }
        }
        NetMessage::AckOutput { task_id, seq } => {
            if let Err(e) = registry.ack(&task_id, seq) {
                refuse(
                    registry,
                    &format!("AckOutput {task_id} {seq}"),
                    e.to_string(),
                );
            }
        }
        NetMessage::Replay { task_id, after_seq } => {
            if let Err(e) = registry.replay(&task_id, after_seq) {
                refuse(
                    registry,
                    &format!("Replay {task_id} {after_seq}"),
                    e.to_string(),
                );
            }
        }
        NetMessage::ForgetTask { task_id } => {
            if let Err(e) = registry.forget(&task_id) {
                refuse(registry, &format!("ForgetTask {task_id}"), e.to_string());
            }
        }
        NetMessage::TerminalOpen(open) => terminals.open(registry, settings, open),
        NetMessage::TerminalInput { session_id, bytes } => {
            terminals.input(registry, &session_id, bytes)
        }
        NetMessage::TerminalResize {
            session_id,
            cols,
            rows,
        } => terminals.resize(registry, &session_id, cols, rows),
        NetMessage::TerminalClose { session_id, reason } => {
            terminals.close(registry, &session_id, reason)
        }
        // Terminal output is a live stream that is not kept for replay
        // (see `terminals`), so an acknowledgement frees nothing.
        NetMessage::TerminalAck { .. } => {}
    }
    Ok(())
}

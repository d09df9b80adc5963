//! Runs one child process for a task and supervises it to the end.
//!
//! - The child starts in a session of its own ([`crate::session_spawn`]:
//!   `posix_spawn` with `POSIX_SPAWN_SETSID`), so the whole tree can be
//!   signalled as one process group; stdin is `/dev/null`; the environment
//!   is exactly what the caller passes (see [`crate::child_env`]).
//! - stdout and stderr are read as raw bytes in chunks of at most
//!   [`MAX_OUTPUT_CHUNK`]; there is no line splitting, so no line length can
//!   stall a pipe. Both pipes are read to EOF before the exit is reported.
//! - Timeout and cancellation send SIGTERM to the group, wait the grace
//!   period (or until everything has ended), then send SIGKILL to the group,
//!   so a command can clean up but no grandchild survives.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::ipc::{MAX_OUTPUT_CHUNK, Outcome, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::process_group;
use crate::session_spawn::{self, Spawn};

/// Where output chunks go as they are read.
pub type Sink = Arc<dyn Fn(OutputStream, Vec<u8>) + Send + Sync>;

/// Most stdout kept for parsing when [`Launch::collect_stdout`] is set
/// (`dpkg-query` of a large host is a few MB).
pub const MAX_COLLECTED_STDOUT: usize = 256 * 1024 * 1024;
/// How much of the end of stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// After SIGKILL, how long pipes held by an escaped process (one that left
/// the task's session) may stay open before reading stops.
const PIPE_DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Keep stdout for the caller to parse instead of streaming it.
    pub collect_stdout: bool,
}

/// Time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub kill_grace: Duration,
}

/// How the process ended.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub exit_code: i32,
    pub duration: Duration,
    pub error: Option<String>,
    /// stdout when [`Launch::collect_stdout`] was set.
    pub stdout: Vec<u8>,
    /// The last few KiB of stderr.
    pub stderr_tail: Vec<u8>,
}

enum Stop {
    Timeout,
    Cancel(String),
}

struct Pumped {
    collected: Vec<u8>,
    overflow: bool,
}

async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: OutputStream,
    sink: Sink,
    collect: bool,
    tail: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
) -> Pumped {
    let mut out = Pumped {
        collected: Vec::new(),
        overflow: false,
    };
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                sink(
                    OutputStream::System,
                    format!("reading the task's {stream:?} failed: {e}\n").into_bytes(),
                );
                break;
            }
        };
        let bytes = &buf[..n];
        if let Some(tail) = &tail {
            let mut t = tail.lock().expect("stderr tail lock");
            t.extend_from_slice(bytes);
            if t.len() > STDERR_TAIL {
                let cut = t.len() - STDERR_TAIL;
                t.drain(..cut);
            }
        }
        if collect {
            if out.collected.len() + n <= MAX_COLLECTED_STDOUT {
                out.collected.extend_from_slice(bytes);
            } else {
                out.overflow = true;
            }
        } else {
            sink(stream, bytes.to_vec());
        }
    }
    out
}

/// Starts the process, calls `started(pid)` once it runs, supervises it and
/// returns how it ended. Never panics on process errors: a start failure is
/// a `Failed` outcome with exit code -1.
pub async fn run(
    launch: Launch,
    limits: Limits,
    sink: Sink,
    cancel: &mut mpsc::UnboundedReceiver<String>,
    started: impl FnOnce(u32),
) -> Finished {
    let start = Instant::now();
    let mut child = match session_spawn::spawn(&Spawn {
        program: &launch.program,
        args: &launch.args,
        env: &launch.env,
        cwd: launch.cwd.as_deref(),
    }) {
        Ok(c) => c,
        Err(e) => {
            let place = launch
                .cwd
                .as_ref()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            return Finished {
                outcome: Outcome::Failed,
                exit_code: -1,
                duration: Duration::ZERO,
                error: Some(format!("could not start {}{place}: {e}", launch.program)),
                stdout: Vec::new(),
                stderr_tail: Vec::new(),
            };
        }
    };
    let pid = child.id();
    let pgid = pid as i32;
    started(pid);

    let stderr_tail = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out_task = tokio::spawn(pump(
        child.stdout.take().expect("stdout is piped"),
        OutputStream::Stdout,
        sink.clone(),
        launch.collect_stdout,
        None,
    ));
    let err_task = tokio::spawn(pump(
        child.stderr.take().expect("stderr is piped"),
        OutputStream::Stderr,
        sink.clone(),
        false,
        Some(stderr_tail.clone()),
    ));
    let out_abort = out_task.abort_handle();
    let err_abort = err_task.abort_handle();
    let drain = async move {
        let out = out_task.await.ok();
        let _ = err_task.await;
        out
    };
    tokio::pin!(drain);

    let deadline = tokio::time::sleep(limits.timeout);
    tokio::pin!(deadline);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut ended_at = None;
    let mut drained: Option<Option<Pumped>> = None;
    let mut stop = None;
    while status.is_none() || drained.is_none() {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                ended_at = Some(Instant::now());
                status = Some(s);
            }
            d = &mut drain, if drained.is_none() => drained = Some(d),
            _ = &mut deadline => { stop = Some(Stop::Timeout); break; }
            reason = cancel.recv() => {
                stop = Some(Stop::Cancel(reason.unwrap_or_else(|| "task cancelled".into())));
                break;
            }
        }
    }

    let mut escaped_note = None;
    if stop.is_some() {
        let _ = process_group::signal(pgid, libc::SIGTERM);
        let grace = tokio::time::sleep(limits.kill_grace);
        tokio::pin!(grace);
        while status.is_none() || drained.is_none() {
            tokio::select! {
                s = child.wait(), if status.is_none() => {
                    ended_at = Some(Instant::now());
                    status = Some(s);
                }
                d = &mut drain, if drained.is_none() => drained = Some(d),
                _ = &mut grace => break,
            }
        }
        // Also after a clean exit within the grace period: members that
        // closed their pipes and ignored SIGTERM must not survive.
        let _ = process_group::signal(pgid, libc::SIGKILL);
        if status.is_none() {
            status = Some(child.wait().await);
            ended_at = Some(Instant::now());
        }
        if drained.is_none() {
            match tokio::time::timeout(PIPE_DRAIN_AFTER_KILL, &mut drain).await {
                Ok(d) => drained = Some(d),
                Err(_) => {
                    out_abort.abort();
                    err_abort.abort();
                    escaped_note = Some(
                        "a process outside the task's process group kept its output open; reading stopped",
                    );
                    drained = Some(None);
                }
            }
        }
    }

    let duration = ended_at.unwrap_or_else(Instant::now) - start;
    let status = status.expect("loop ends with a status or a stop that waits for one");
    let pumped = drained.flatten();
    let stdout_overflow = pumped.as_ref().is_some_and(|p| p.overflow);
    let stdout = pumped.map(|p| p.collected).unwrap_or_default();
    if let Some(note) = escaped_note {
        sink(OutputStream::System, format!("{note}\n").into_bytes());
    }
    let stderr_tail = std::mem::take(&mut *stderr_tail.lock().expect("stderr tail lock"));

    let (outcome, exit_code, mut error) = match (&stop, &status) {
        (Some(Stop::Timeout), _) => (
            Outcome::TimedOut,
            -1,
            Some(format!(
                "task timed out after {}; its process group was sent SIGTERM, then SIGKILL after {}",
                shared::go_duration::format(limits.timeout),
                shared::go_duration::format(limits.kill_grace)
            )),
        ),
        (Some(Stop::Cancel(reason)), _) => (Outcome::Cancelled, -1, Some(reason.clone())),
        (None, Ok(s)) => describe_status(*s),
        (None, Err(e)) => (
            Outcome::Failed,
            -1,
            Some(format!("waiting for the task's process failed: {e}")),
        ),
    };
    if stdout_overflow && error.is_none() {
        error = Some(format!(
            "output to parse exceeded {MAX_COLLECTED_STDOUT} bytes"
        ));
    }
    let outcome = if stdout_overflow {
        Outcome::Failed
    } else {
        outcome
    };
    Finished {
        outcome,
        exit_code,
        duration,
        error,
        stdout,
        stderr_tail,
    }
}

/// Maps a wait status to outcome, exit code and error (PROTOCOL.md §7.9).
pub fn describe_status(s: ExitStatus) -> (Outcome, i32, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(0), _) => (Outcome::Success, 0, None),
        (Some(code), _) => (Outcome::Failed, code, Some(format!("exit status {code}"))),
        (None, Some(sig)) => (
            Outcome::Failed,
            -1,
            Some(format!("signal: {}", process_group::signal_name(sig))),
        ),
        (None, None) => (Outcome::Failed, -1, Some("ended without a status".into())),
    }
}

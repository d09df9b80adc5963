//! One interactive shell on a pseudo-terminal (PROTOCOL.md §9).
//!
//! Why not portable-pty: its spawn path reads `/dev/fd` between fork and
//! exec, which allocates; in a multi-threaded process another thread may
//! hold the allocator's lock at fork time and the child then deadlocks.
//! Here the PTY is opened with `openpty(3)` in the parent, the slave becomes
//! the child's stdin/stdout/stderr through `std::process::Command` (which
//! prepares everything before it forks), and the only code that runs
//! between fork and exec is `setsid()`, `ioctl(0, TIOCSCTTY)` or
//! `setpgid(0, 0)` — all async-signal-safe, none allocates. The stress test
//! opens and closes hundreds of sessions while tasks run.
//!
//! Start modes, tried in order per shell (§9.4): [`PtyMode::ControllingTty`]
//! (new session, the PTY is the controlling terminal: job control, Ctrl-C
//! reaches the foreground job), [`PtyMode::NoControllingTty`] (own process
//! group only), [`PtyMode::Minimal`]. A reduced mode is logged and reported
//! in `TerminalOpened`. Debug builds can be told to refuse modes
//! (`--test-refuse-pty-mode`) so the tests exercise the fallbacks.
//!
//! Output is flushed every 25 ms or as soon as 1 KiB is pending, in events
//! of at most [`MAX_EVENT_BYTES`] (65 536 base64 characters); after 25 ms
//! without an event the first bytes go out at once, so an echo is not
//! delayed by the timer. Stopping kills
//! the whole session (every job; in the minimal mode, which has no group of
//! its own, the shell's process tree), and `TerminalExited` always carries
//! an exit code.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shared::ipc::{ExecMessage, PtyMode};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::process_group;
use crate::task_registry::Registry;

/// Flush pending output after this long (§9.4).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(25);
/// Flush as soon as this much output is pending (§9.4).
pub const FLUSH_BYTES: usize = 1024;
/// Raw bytes whose standard base64 is exactly 65 536 characters.
pub const MAX_EVENT_BYTES: usize = 65_536 / 4 * 3;
/// Messages waiting for the peer beyond which the PTY is not read, so a
/// chatty shell waits instead of filling the executor's memory.
const MAX_QUEUED_MESSAGES: usize = 512;
/// Typed input waiting for the shell beyond which the session is failed:
/// a shell that reads nothing must not make the executor hold unbounded input.
const MAX_PENDING_INPUT: usize = 1024 * 1024;
/// After the shell exits, how long output of processes still holding the
/// terminal is read before the session is closed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Requests to a running session.
#[derive(Debug)]
pub enum Control {
    Input(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
    },
    /// Stop the session; the reason becomes `TerminalExited.reason`.
    Stop(Option<String>),
}

/// A started shell.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub master: OwnedFd,
    pub mode: PtyMode,
    pub pid: i32,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a PTY pair of the given size; both ends close-on-exec, the master
/// non-blocking.
fn open_pty(cols: u16, rows: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = winsize(cols, rows);
    // SAFETY: out-pointers to live integers; no name buffer; a valid winsize.
    cvt(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty succeeded, so both are fresh fds owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on fds we own.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    // SAFETY: as above.
    let flags = cvt(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok((master, slave))
}

/// Sets the terminal size; the kernel sends SIGWINCH to the foreground job.
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(|_| ())
}

/// How a start refused on purpose fails: EPERM, what a host (container,
/// seccomp policy) that does not allow the step typically answers. Builds
/// the error from a number only, so it is safe between fork and exec.
fn refused() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// Starts `<shell> -i` on a new PTY in `mode`.
///
/// `refuse` is a test hook ([`crate::settings::Settings::pty_mode_refused`],
/// never true in release builds): the start then fails in the child, at the
/// step a host that does not allow the mode would refuse, so the fallback
/// goes through the same failure path (spawn error, child reaped, PTY
/// closed) as it would in production.
pub fn spawn(
    shell: &str,
    env: &[(String, String)],
    cwd: &str,
    mode: PtyMode,
    cols: u16,
    rows: u16,
    refuse: bool,
) -> io::Result<Spawned> {
    let (master, slave) = open_pty(cols, rows)?;
    let mut cmd = tokio::process::Command::new(shell);
    cmd.arg("-i")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(false);
    match mode {
        // SAFETY (all closures): they run between fork and exec and only
        // make async-signal-safe syscalls; nothing allocates or locks. The
        // slave is already on fd 0 when they run.
        PtyMode::ControllingTty => unsafe {
            cmd.pre_exec(move || {
                cvt(libc::setsid())?;
                if refuse {
                    // Where hosts that refuse this mode refuse it.
                    return Err(refused());
                }
                cvt(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
                Ok(())
            });
        },
        PtyMode::NoControllingTty => unsafe {
            cmd.pre_exec(move || {
                if refuse {
                    return Err(refused());
                }
                cvt(libc::setpgid(0, 0))?;
                Ok(())
            });
        },
        PtyMode::Minimal if refuse => unsafe {
            cmd.pre_exec(|| Err(refused()));
        },
        PtyMode::Minimal => {}
    }
    let child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(Spawned {
        child,
        master,
        mode,
        pid,
    })
}

/// A session's shell, for killing what belongs to the session.
#[derive(Debug, Clone, Copy)]
struct Shell {
    mode: PtyMode,
    pid: i32,
    /// Its exit status was collected: the pid may name another process now.
    reaped: bool,
}

impl Shell {
    /// Kills what belongs to the session, as far as the mode allows.
    fn kill(&self) {
        match self.mode {
            PtyMode::ControllingTty => {
                let _ = process_group::signal(self.pid, libc::SIGKILL);
                process_group::kill_session(self.pid);
            }
            PtyMode::NoControllingTty => {
                let _ = process_group::signal(self.pid, libc::SIGKILL);
            }
            // The shell shares the executor's group and session, so only its
            // process tree can be told apart, and only while the shell is
            // unreaped; after that what it left behind is out of reach.
            PtyMode::Minimal if !self.reaped => process_group::kill_tree(self.pid),
            PtyMode::Minimal => {}
        }
    }
}

/// Writes queued input until the terminal would block; what is left waits
/// for the master to become writable.
fn write_pending(master: &OwnedFd, input: &mut VecDeque<u8>) {
    while !input.is_empty() {
        let (front, _) = input.as_slices();
        // SAFETY: writing from a live slice of the given length.
        let n = unsafe { libc::write(master.as_raw_fd(), front.as_ptr().cast(), front.len()) };
        if n > 0 {
            input.drain(..n as usize);
        } else {
            // Would block (the writable arm takes over) or the terminal is
            // gone (the exit follows); either way stop here.
            return;
        }
    }
}

/// Reports an error for a running session and kills it (§13 item 44).
fn fail_session(
    registry: &Registry,
    session_id: &str,
    stop_reason: &mut Option<String>,
    shell: Shell,
    message: String,
) {
    registry.send(ExecMessage::TerminalError {
        session_id: session_id.to_owned(),
        message: message.clone(),
    });
    stop_reason.get_or_insert(message);
    shell.kill();
}

struct Output<'a> {
    registry: &'a Registry,
    session_id: &'a str,
    seq: &'a AtomicU64,
    pending: Vec<u8>,
}

impl Output<'_> {
    fn flush(&mut self) {
        for chunk in self.pending.chunks(MAX_EVENT_BYTES) {
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            self.registry.send(ExecMessage::TerminalOutput {
                session_id: self.session_id.to_owned(),
                seq,
                bytes: chunk.to_vec(),
            });
        }
        self.pending.clear();
    }
}

/// Serves a started session until its shell has exited and its output is
/// read; returns `TerminalExited`'s exit code and reason.
pub async fn serve(
    spawned: Spawned,
    session_id: &str,
    registry: &Registry,
    seq: &Arc<AtomicU64>,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> (i32, String) {
    let Spawned {
        mut child,
        master,
        mode,
        pid,
    } = spawned;
    let mut shell = Shell {
        mode,
        pid,
        reaped: false,
    };
    // SAFETY: an OwnedFd always returns the same open fd, and the AsyncFd
    // owns it for its whole life.
    let registered =
        unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) };
    let master = match registered {
        Ok(m) => m,
        Err(e) => {
            shell.kill();
            let _ = child.wait().await;
            return (-1, format!("terminal could not be watched: {e}"));
        }
    };
    let mut out = Output {
        registry,
        session_id,
        seq,
        pending: Vec::new(),
    };
    let mut input: VecDeque<u8> = VecDeque::new();
    let mut flush_at: Option<Instant> = None;
    let mut last_flush = Instant::now()
        .checked_sub(FLUSH_INTERVAL)
        .unwrap_or_else(Instant::now);
    let mut status: Option<io::Result<std::process::ExitStatus>> = None;
    let mut drain_until: Option<Instant> = None;
    let mut eof = false;
    let mut stop_reason: Option<String> = None;
    let mut controls_open = true;
    let mut buf = vec![0u8; 4096];
    let far = Instant::now() + Duration::from_secs(86_400 * 365);

    while !(eof && status.is_some()) {
        let congested = registry.queued() > MAX_QUEUED_MESSAGES;
        tokio::select! {
            guard = master.readable(), if !eof && !congested => {
                let Ok(mut guard) = guard else { eof = true; continue };
                // SAFETY: reading into a live buffer of the given length.
                let n = unsafe { libc::read(master.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    out.pending.extend_from_slice(&buf[..n as usize]);
                } else if n == 0 {
                    eof = true;
                } else {
                    let err = io::Error::last_os_error();
                    match err.kind() {
                        io::ErrorKind::WouldBlock => guard.clear_ready(),
                        io::ErrorKind::Interrupted => {}
                        // EIO: every slave fd is closed, the normal end on Linux.
                        _ => eof = true,
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(5)), if congested && !eof => {}
            guard = master.writable(), if !input.is_empty() => {
                let Ok(mut guard) = guard else { input.clear(); continue };
                let (front, _) = input.as_slices();
                // SAFETY: writing from a live slice of the given length.
                let n = unsafe { libc::write(master.get_ref().as_raw_fd(), front.as_ptr().cast(), front.len()) };
                if n >= 0 {
                    input.drain(..n as usize);
                } else if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                } else {
                    // The terminal is gone; the exit follows.
                    input.clear();
                }
            }
            msg = control.recv(), if controls_open => match msg {
                Some(Control::Input(bytes)) if input.len() + bytes.len() > MAX_PENDING_INPUT => {
                    fail_session(registry, session_id, &mut stop_reason, shell, format!(
                        "terminal input is not being read: more than {MAX_PENDING_INPUT} bytes are waiting"
                    ));
                    input.clear();
                }
                Some(Control::Input(bytes)) => {
                    input.extend(bytes);
                    // Write now rather than on the next turn of the loop: a
                    // typed key's echo is on the critical path.
                    write_pending(master.get_ref(), &mut input);
                }
                Some(Control::Resize { cols, rows }) => {
                    if let Err(e) = resize(master.get_ref(), cols, rows) {
                        fail_session(registry, session_id, &mut stop_reason, shell, format!(
                            "terminal resize to {cols}x{rows} failed: {e}"
                        ));
                    }
                }
                Some(Control::Stop(reason)) => {
                    stop_reason.get_or_insert_with(|| reason.unwrap_or_else(|| "terminal session stopped".into()));
                    shell.kill();
                }
                None => controls_open = false,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                shell.reaped = true;
                // Whatever still runs in the session would be unsupervised.
                shell.kill();
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => {
                out.flush();
                last_flush = Instant::now();
                flush_at = None;
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() && !eof => {
                eof = true;
            }
        }
        if out.pending.len() >= FLUSH_BYTES {
            out.flush();
            last_flush = Instant::now();
            flush_at = None;
        } else if !out.pending.is_empty() && flush_at.is_none() {
            // Leading edge: after a quiet period the first bytes (a typed
            // character's echo) go out at once; within 25 ms of the last
            // event they wait, so a stream of small writes still becomes
            // at most one event per 25 ms.
            let due = last_flush + FLUSH_INTERVAL;
            if Instant::now() >= due {
                out.flush();
                last_flush = Instant::now();
            } else {
                flush_at = Some(due);
            }
        }
    }
    out.flush();
    let status = status.expect("loop ends with a status");
    let (code, described) = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(0), _) => (0, None),
                (Some(c), _) => (c, Some(format!("exit status {c}"))),
                (None, Some(sig)) => (
                    -1,
                    Some(format!("signal: {}", process_group::signal_name(sig))),
                ),
                (None, None) => (-1, None),
            }
        }
        Err(e) => (-1, Some(format!("waiting for the shell failed: {e}"))),
    };
    let reason = stop_reason
        .or(described)
        .unwrap_or_else(|| "terminal session exited".into());
    (code, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_never_exceeds_the_base64_limit() {
        assert_eq!(MAX_EVENT_BYTES.div_ceil(3) * 4, 65_536);
    }

    #[test]
    fn a_pty_pair_has_the_requested_size() {
        let (master, slave) = open_pty(123, 45).unwrap();
        let mut ws = winsize(0, 0);
        // SAFETY: TIOCGWINSZ writes a winsize to the pointer.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (123, 45));
        resize(&master, 200, 60).unwrap();
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (200, 60));
    }
}

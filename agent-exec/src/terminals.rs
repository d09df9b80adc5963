//! The executor's terminal sessions (PROTOCOL.md §9) and their requests.
//!
//! Sessions belong to the executor, not to a connection: they survive a
//! reconnect of the network process and appear in its `Inventory`. Their
//! output is a live stream: what is produced while no peer is connected is
//! not kept (replaying minutes-old screen output is wrong, §13 item 34).
//!
//! Every problem with a session is reported as `TerminalError`, and a
//! session that an error was reported for is killed, so the control plane
//! (which marks it failed) never leaves a shell behind (§13 item 44).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shared::ipc::{ExecMessage, PtyMode, TerminalOpen, TerminalState};
use tokio::sync::mpsc;

use crate::child_env::{self, DEFAULT_PATH};
use crate::log;
use crate::process_ledger::Kind;
use crate::pty_session::{self, Control};
use crate::settings::Settings;
use crate::task_registry::Registry;

/// Default size when the request says 0 (§9.4).
pub const DEFAULT_COLS: u16 = 120;
pub const DEFAULT_ROWS: u16 = 34;
/// Open sessions at most; each holds a PTY and a shell.
pub const MAX_SESSIONS: usize = 64;
/// `terminal.error` messages are at most 1000 characters (§9.3).
const MAX_ERROR_CHARS: usize = 1000;

struct Handle {
    control: mpsc::UnboundedSender<Control>,
    seq: Arc<AtomicU64>,
}

/// All open sessions.
#[derive(Default)]
pub struct Terminals {
    sessions: Mutex<HashMap<String, Handle>>,
}

/// Checks a requested size; 0 means the default.
pub fn checked_size(cols: u16, rows: u16) -> Result<(u16, u16), String> {
    let cols = if cols == 0 { DEFAULT_COLS } else { cols };
    let rows = if rows == 0 { DEFAULT_ROWS } else { rows };
    if !(20..=400).contains(&cols) || !(10..=200).contains(&rows) {
        return Err(format!(
            "terminal size is invalid: {cols}x{rows} (columns 20-400, rows 10-200)"
        ));
    }
    Ok((cols, rows))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `shell` is meant for interactive use: listed in `/etc/shells`
/// when that file exists (Debian lists neither nologin nor false), else not
/// one of those two.
fn interactive_shell(shell: &str, etc_shells: Option<&str>) -> bool {
    let name = shell.rsplit('/').next().unwrap_or(shell);
    if matches!(name, "nologin" | "false") {
        return false;
    }
    match etc_shells {
        Some(list) if shell.starts_with('/') => list
            .lines()
            .map(str::trim)
            .any(|l| !l.starts_with('#') && l == shell),
        _ => true,
    }
}

/// Shells to try, in the order of §9.4: `$SHELL`, then `bash`, `zsh`, `sh`
/// through `PATH`, then the usual absolute paths; existing ones only,
/// without duplicates.
pub fn shell_candidates(env_shell: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |p: String| {
        if is_executable(Path::new(&p)) && !out.contains(&p) {
            out.push(p);
        }
    };
    let etc_shells = std::fs::read_to_string("/etc/shells").ok();
    // The executor's user is a system account whose login shell is
    // nologin: that would print "This account is currently not available."
    // and end the terminal.
    if let Some(shell) =
        env_shell.filter(|s| !s.is_empty() && interactive_shell(s, etc_shells.as_deref()))
    {
        if shell.starts_with('/') {
            add(shell.to_owned());
        } else {
            for dir in DEFAULT_PATH.split(':') {
                add(format!("{dir}/{shell}"));
            }
        }
    }
    for name in ["bash", "zsh", "sh"] {
        if let Some(p) = DEFAULT_PATH
            .split(':')
            .map(|dir| format!("{dir}/{name}"))
            .find(|p| is_executable(Path::new(p)))
        {
            add(p);
        }
    }
    for p in [
        "/bin/bash",
        "/usr/bin/bash",
        "/bin/zsh",
        "/usr/bin/zsh",
        "/bin/sh",
        "/usr/bin/sh",
    ] {
        add(p.to_owned());
    }
    out
}

fn short(mut msg: String) -> String {
    if msg.chars().count() > MAX_ERROR_CHARS {
        msg = msg.chars().take(MAX_ERROR_CHARS - 1).collect::<String>() + "…";
    }
    msg
}

impl Terminals {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn error(&self, registry: &Registry, session_id: &str, message: String) {
        // Killing a session we report an error for (§13 item 44).
        if let Some(h) = self
            .sessions
            .lock()
            .expect("terminals lock")
            .get(session_id)
        {
            let _ = h.control.send(Control::Stop(Some(message.clone())));
        }
        registry.send(ExecMessage::TerminalError {
            session_id: session_id.to_owned(),
            message: short(message),
        });
    }

    /// Sessions and their last output sequence numbers.
    pub fn inventory(&self) -> Vec<TerminalState> {
        let mut v: Vec<TerminalState> = self
            .sessions
            .lock()
            .expect("terminals lock")
            .iter()
            .map(|(id, h)| TerminalState {
                session_id: id.clone(),
                last_seq: h.seq.load(Ordering::SeqCst),
            })
            .collect();
        v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        v
    }

    /// Starts a session and reports `TerminalOpened` or `TerminalError`.
    pub fn open(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        settings: &Settings,
        open: TerminalOpen,
    ) {
        let TerminalOpen {
            session_id,
            cols,
            rows,
        } = open;
        let (cols, rows) = match checked_size(cols, rows) {
            Ok(size) => size,
            Err(e) => return self.error(registry, &session_id, e),
        };
        {
            let sessions = self.sessions.lock().expect("terminals lock");
            if sessions.contains_key(&session_id) {
                drop(sessions);
                return self.error(
                    registry,
                    &session_id,
                    "terminal session already exists".into(),
                );
            }
            if sessions.len() >= MAX_SESSIONS {
                drop(sessions);
                return self.error(
                    registry,
                    &session_id,
                    format!("{MAX_SESSIONS} terminal sessions are open, the executor's maximum; close one first"),
                );
            }
        }
        let home = &settings.user.home;
        let cwd = if Path::new(home).is_dir() {
            home.as_str()
        } else {
            "/"
        };
        let mut last_error = String::from("no shell found");
        let mut spawned = None;
        'shells: for shell in shell_candidates(settings.login_shell.as_deref()) {
            let mut env = child_env::build(
                &settings.user,
                &shell,
                &[("TERM".into(), "xterm-256color".into())],
            );
            // A terminal has a real width; COLUMNS would override it.
            env.retain(|(k, _)| k != "COLUMNS");
            for mode in [
                PtyMode::ControllingTty,
                PtyMode::NoControllingTty,
                PtyMode::Minimal,
            ] {
                let refuse = settings.pty_mode_refused(mode);
                match pty_session::spawn(&shell, &env, cwd, mode, cols, rows, refuse) {
                    Ok(s) => {
                        spawned = Some(s);
                        break 'shells;
                    }
                    Err(e) => {
                        log::warn(&format!(
                            "terminal {session_id}: {shell} could not start in mode {mode:?}: {e}"
                        ));
                        last_error = format!("{shell} ({mode:?}): {e}");
                    }
                }
            }
        }
        let Some(spawned) = spawned else {
            return self.error(
                registry,
                &session_id,
                format!("could not start a shell for the terminal: {last_error}"),
            );
        };
        let mode = spawned.mode;
        if mode != PtyMode::ControllingTty {
            log::warn(&format!(
                "terminal {session_id} runs in mode {mode:?}: no job control, Ctrl-C does not reach the foreground job"
            ));
        }
        let kind = match mode {
            PtyMode::ControllingTty => Kind::Session,
            PtyMode::NoControllingTty | PtyMode::Minimal => Kind::Process,
        };
        registry.record_process(kind, &session_id, spawned.pid);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let seq = Arc::new(AtomicU64::new(0));
        self.sessions.lock().expect("terminals lock").insert(
            session_id.clone(),
            Handle {
                control: tx,
                seq: seq.clone(),
            },
        );
        registry.send(ExecMessage::TerminalOpened {
            session_id: session_id.clone(),
            cols,
            rows,
            mode,
        });
        let this = self.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let (exit_code, reason) =
                pty_session::serve(spawned, &session_id, &registry, &seq, &mut rx).await;
            this.sessions
                .lock()
                .expect("terminals lock")
                .remove(&session_id);
            registry.send(ExecMessage::TerminalExited {
                session_id,
                exit_code,
                reason: Some(reason),
            });
        });
    }

    fn control(&self, registry: &Registry, session_id: &str, control: Control) {
        let sent = self
            .sessions
            .lock()
            .expect("terminals lock")
            .get(session_id)
            .map(|h| h.control.send(control).is_ok());
        if sent != Some(true) {
            self.error(
                registry,
                session_id,
                "terminal session was not found".into(),
            );
        }
    }

    pub fn input(&self, registry: &Registry, session_id: &str, bytes: Vec<u8>) {
        self.control(registry, session_id, Control::Input(bytes));
    }

    pub fn resize(&self, registry: &Registry, session_id: &str, cols: u16, rows: u16) {
        match checked_size(cols, rows) {
            Ok((cols, rows)) => self.control(registry, session_id, Control::Resize { cols, rows }),
            Err(e) => self.error(registry, session_id, e),
        }
    }

    pub fn close(&self, registry: &Registry, session_id: &str, reason: Option<String>) {
        self.control(registry, session_id, Control::Stop(reason));
    }

    /// Stops every session (executor shutdown).
    pub fn close_all(&self, reason: &str) {
        for h in self.sessions.lock().expect("terminals lock").values() {
            let _ = h.control.send(Control::Stop(Some(reason.to_owned())));
        }
    }

    /// Whether every session has ended.
    pub fn is_empty(&self) -> bool {
        self.sessions.lock().expect("terminals lock").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_accounts_login_shells_are_not_used_for_terminals() {
        let debian =
            "# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n";
        for (shell, list, ok) in [
            ("/usr/sbin/nologin", Some(debian), false),
            ("/usr/sbin/nologin", None, false),
            ("/bin/false", None, false),
            ("/bin/bash", Some(debian), true),
            ("/opt/odd/shell", Some(debian), false),
            ("/opt/odd/shell", None, true),
            ("bash", Some(debian), true),
        ] {
            assert_eq!(interactive_shell(shell, list), ok, "{shell} with {list:?}");
        }
        // nologin as $SHELL (User=noderax under systemd): never a candidate.
        let c = shell_candidates(Some("/usr/sbin/nologin"));
        assert!(!c.iter().any(|s| s.ends_with("nologin")), "{c:?}");
        assert!(!c.is_empty(), "a real shell remains: {c:?}");
    }

    #[test]
    fn sizes_default_and_are_bounded() {
        assert_eq!(checked_size(0, 0), Ok((120, 34)));
        assert_eq!(checked_size(400, 200), Ok((400, 200)));
        assert!(checked_size(19, 34).unwrap_err().contains("invalid"));
        assert!(checked_size(120, 201).is_err());
    }

    #[test]
    fn shells_are_existing_and_unique() {
        let shells = shell_candidates(Some("sh"));
        assert!(!shells.is_empty());
        assert!(shells.iter().all(|s| Path::new(s).exists()));
        let mut dedup = shells.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), shells.len());
        assert!(shells[0].ends_with("/sh"));
        assert!(
            shell_candidates(Some("/nonexistent"))
                .iter()
                .all(|s| s != "/nonexistent")
        );
    }

    #[test]
    fn errors_are_cut_to_the_protocol_limit() {
        assert_eq!(short("x".repeat(5000)).chars().count(), 1000);
    }
}

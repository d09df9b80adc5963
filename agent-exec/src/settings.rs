//! The executor's settings, fixed at start from its command line.
//!
//! The executor does not read the agent's config file: that file belongs to
//! the network user (it may hold secrets), and the executor must not be able
//! to read it. Whoever starts the executor (the systemd unit, or agent-net in
//! foreground mode) passes the few values it needs; the defaults are the
//! config file's defaults (`kill_grace`, `max_concurrent_tasks`,
//! `root_access_ceiling`).

use std::path::PathBuf;
use std::time::Duration;

use shared::api::RootProfile;
use shared::ipc::PtyMode;

use crate::child_env::User;
use crate::output_buffer::Bounds;

/// Everything the executor's behaviour depends on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// uids allowed to connect (SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    /// Spill files of unacknowledged output live under `<state_dir>/output`.
    pub state_dir: PathBuf,
    pub kill_grace: Duration,
    pub max_tasks: usize,
    pub output_bounds: Bounds,
    /// `sudo` binary used to reach the root helper.
    pub sudo: PathBuf,
    /// The root helper (`noderax-agent-priv`).
    pub helper: PathBuf,
    /// The most root access this host allows; package changes need
    /// `operational` here and in the profile their `RunTask` carries.
    pub root_access_ceiling: RootProfile,
    /// Who the executor runs as (for the child environment).
    pub user: User,
    /// First choice of terminal shell: `$SHELL` of the executor, else the
    /// user's login shell (PROTOCOL.md §9.4).
    pub login_shell: Option<String>,
    /// Test hook, debug builds only (`--test-refuse-pty-mode`): terminal
    /// start modes made to fail so the tests can exercise the fallbacks of
    /// PROTOCOL.md §9.4 on a host where every mode works.
    #[cfg(debug_assertions)]
    pub test_refuse_pty_modes: Vec<PtyMode>,
}

impl Settings {
    /// Directory of spill files.
    pub fn spill_dir(&self) -> PathBuf {
        self.state_dir.join("output")
    }

    /// Whether a test asked for terminal start `mode` to fail. Always false
    /// in release builds, which cannot be asked.
    pub fn pty_mode_refused(&self, mode: PtyMode) -> bool {
        #[cfg(debug_assertions)]
        return self.test_refuse_pty_modes.contains(&mode);
        #[cfg(not(debug_assertions))]
        {
            let _ = mode;
            false
        }
    }
}

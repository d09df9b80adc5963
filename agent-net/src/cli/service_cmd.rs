//! `noderax-agent start|stop|restart`: the installed agent's systemd units
//! (ARCHITECTURE.md §3), as the original agent's command line managed its
//! one unit.
//!
//! - start: the executor's socket, then the network process (the executor
//!   itself starts on the network process's first connection).
//! - stop: the network process, the executor's socket and the executor;
//!   running tasks and terminals end.
//! - restart: the network process only. Tasks and terminals keep running in
//!   the executor and their output is delivered after the restart; this is
//!   what the control plane's restart command does too.

use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::systemd::{self, EXEC_SOCKET, EXEC_UNIT, NET_UNIT};

/// Which service command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }

    fn units(self) -> &'static [&'static str] {
        match self {
            Self::Start => &[EXEC_SOCKET, NET_UNIT],
            Self::Stop => &[NET_UNIT, EXEC_SOCKET, EXEC_UNIT],
            Self::Restart => &[NET_UNIT],
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop => "stopped (running tasks and terminals ended)",
            Self::Restart => "restarted (the network process; tasks kept running in the executor)",
        }
    }
}

pub fn run(action: Action) -> anyhow::Result<ExitCode> {
    let verb = action.verb();
    if super::status_cmd::current_uid() != 0 {
        bail!("managing the agent's units needs root: run `sudo noderax-agent {verb}`");
    }
    let units = action.units();
    let mut args = vec![verb];
    args.extend(units);
    let result = systemd::systemctl(&args);
    if systemd::running() {
        result.with_context(|| {
            format!(
                "could not {verb} the agent; `systemctl status {NET_UNIT} {EXEC_UNIT}` and `journalctl -u {NET_UNIT}` say why"
            )
        })?;
    } else {
        result?;
    }
    println!("{}: {}", units.join(", "), action.done());
    Ok(ExitCode::SUCCESS)
}

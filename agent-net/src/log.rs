//! Log lines on stderr, which systemd sends to the journal: one line per
//! event, written in one piece, `noderax-agent[pid]: level: message`. The
//! level is set once from the config key `log_level`; messages below it are
//! skipped.

use std::fmt::Display;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use shared::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(1);

fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 0,
        LogLevel::Info => 1,
        LogLevel::Warn => 2,
        LogLevel::Error => 3,
    }
}

/// Sets the lowest level that is printed.
pub fn set_level(level: LogLevel) {
    LEVEL.store(rank(level), Ordering::Relaxed);
}

fn line(level: LogLevel, msg: &dyn Display) {
    if rank(level) >= LEVEL.load(Ordering::Relaxed) {
        // Formatted first, then one write: stderr is unbuffered, and
        // `eprintln!` makes a write per piece (a dozen for one line), which
        // cost the hand-over of every task a few hundred microseconds and
        // let lines of the executor, which shares this stderr, cut into ours.
        let text = format!(
            "noderax-agent[{}]: {}: {msg}\n",
            std::process::id(),
            level.as_str()
        );
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

pub fn debug(msg: impl Display) {
    line(LogLevel::Debug, &msg);
}

pub fn info(msg: impl Display) {
    line(LogLevel::Info, &msg);
}

pub fn warn(msg: impl Display) {
    line(LogLevel::Warn, &msg);
}

pub fn error(msg: impl Display) {
    line(LogLevel::Error, &msg);
}

//! Log lines on stderr, which systemd sends to the journal. One line per
//! event, prefixed with the level so `journalctl -p` style filtering and
//! grepping work without a logging framework.

use std::io::Write as _;

fn line(level: &str, msg: &str) {
    // One write per line: `eprintln!` writes piece by piece to the
    // unbuffered stderr, which the network process may share.
    let text = format!(
        "noderax-agent-exec[{}]: {level}: {msg}\n",
        std::process::id()
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
}

pub fn info(msg: &str) {
    line("info", msg);
}

pub fn warn(msg: &str) {
    line("warn", msg);
}

pub fn error(msg: &str) {
    line("error", msg);
}

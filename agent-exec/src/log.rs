//! Log lines on stderr, which systemd sends to the journal. One line per
//! event, prefixed with the level so `journalctl -p` style filtering and
//! grepping work without a logging framework.

fn line(level: &str, msg: &str) {
    eprintln!("noderax-agent-exec[{}]: {level}: {msg}", std::process::id());
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

//! Terminal helpers of the test driver: open, type, read until a marker,
//! wait for the session's end, and find its processes in /proc.

use std::time::{Duration, Instant};

use shared::ipc::{ExecMessage, NetMessage, PtyMode, TerminalOpen};

use super::Client;

pub fn open(c: &mut Client, id: &str, cols: u16, rows: u16) {
    c.send(&NetMessage::TerminalOpen(TerminalOpen {
        session_id: id.into(),
        cols,
        rows,
    }));
}

pub fn input(c: &mut Client, id: &str, text: &[u8]) {
    c.send(&NetMessage::TerminalInput {
        session_id: id.into(),
        bytes: text.to_vec(),
    });
}

pub fn close(c: &mut Client, id: &str, reason: &str) {
    c.send(&NetMessage::TerminalClose {
        session_id: id.into(),
        reason: Some(reason.into()),
    });
}

/// Reads terminal messages of `id` until `until` holds for the output seen
/// so far (or an exit/error arrives); returns the output text.
pub fn read_until(c: &mut Client, id: &str, mut until: impl FnMut(&str) -> bool) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out; output so far: {text:?}"
        );
        match c.recv() {
            ExecMessage::TerminalOutput {
                session_id, bytes, ..
            } if session_id == id => {
                text.push_str(&String::from_utf8_lossy(&bytes));
                if until(&text) {
                    return text;
                }
            }
            ExecMessage::TerminalExited { session_id, .. }
            | ExecMessage::TerminalError { session_id, .. }
                if session_id == id =>
            {
                panic!("session ended early; output: {text:?}");
            }
            _ => {}
        }
    }
}

pub fn wait_opened(c: &mut Client, id: &str) -> PtyMode {
    loop {
        match c.recv() {
            ExecMessage::TerminalOpened {
                session_id, mode, ..
            } if session_id == id => return mode,
            ExecMessage::TerminalError {
                session_id,
                message,
            } if session_id == id => panic!("terminal error: {message}"),
            _ => {}
        }
    }
}

pub fn wait_exited(c: &mut Client, id: &str) -> (i32, Option<String>) {
    loop {
        if let ExecMessage::TerminalExited {
            session_id,
            exit_code,
            reason,
        } = c.recv()
            && session_id == id
        {
            return (exit_code, reason);
        }
    }
}

/// Sends a command and waits for a marker it prints (computed by the
/// shell, so the echo of the typed line does not match).
pub fn run_line(c: &mut Client, id: &str, line: &str, marker: &str) -> String {
    input(c, id, format!("{line}\n").as_bytes());
    read_until(c, id, |t| t.contains(marker))
}

pub fn shell_pid(c: &mut Client, id: &str) -> i32 {
    // The typed line echoes `PID=$$=$((1+1))`; only the shell's answer has
    // digits between the markers.
    fn find(t: &str) -> Option<i32> {
        t.split("PID=").skip(1).find_map(|rest| {
            let (num, tail) = rest.split_once('=')?;
            tail.starts_with('2').then(|| num.parse().ok()).flatten()
        })
    }
    input(c, id, b"echo PID=$$=$((1+1))\n");
    find(&read_until(c, id, |t| find(t).is_some())).unwrap()
}

/// A live (non-zombie) process from /proc: pid, parent, group, session and
/// start time (which tells it from a later process that reuses the pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Device number of the controlling terminal, 0 if there is none.
    pub tty_nr: i32,
    pub start: u64,
}

pub fn proc_stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime priority nice num_threads
    // itrealvalue starttime
    if f.len() < 20 || f[0] == "Z" {
        return None;
    }
    Some(Proc {
        pid,
        ppid: f[1].parse().ok()?,
        pgrp: f[2].parse().ok()?,
        session: f[3].parse().ok()?,
        tty_nr: f[4].parse().ok()?,
        start: f[19].parse().ok()?,
    })
}

pub fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

pub fn session_members(sid: i32) -> Vec<i32> {
    all_procs()
        .into_iter()
        .filter(|p| p.session == sid)
        .map(|p| p.pid)
        .collect()
}

/// `pid` and every live descendant of it.
pub fn process_tree(pid: i32) -> Vec<Proc> {
    let procs = all_procs();
    let mut tree: Vec<Proc> = procs.iter().copied().filter(|p| p.pid == pid).collect();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].pid;
        tree.extend(procs.iter().copied().filter(|p| p.ppid == parent));
        i += 1;
    }
    tree
}

/// Those of `procs` that still run (same pid and start time).
pub fn still_running(procs: &[Proc]) -> Vec<Proc> {
    procs
        .iter()
        .copied()
        .filter(|p| proc_stat(p.pid).is_some_and(|now| now.start == p.start))
        .collect()
}

//! Signals to a task's whole process group.
//!
//! Every child is started with `setsid()`, so its pid is also its process
//! group id and every descendant that does not start a session of its own
//! shares it. Signalling `-pgid` therefore reaches grandchildren such as the
//! `sleep` in `sh -c 'sleep 1000 & sleep 1000'`.

/// Sends `signal` to every process of group `pgid`. A group that no longer
/// exists is not an error: there is nothing left to signal.
pub fn signal(pgid: i32, signal: libc::c_int) -> std::io::Result<()> {
    if pgid <= 1 {
        // Never let a bogus id turn into kill(-1) / kill(0): that would hit
        // every process of the user or the executor's own group.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: plain syscall with integer arguments.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sends SIGKILL to every process of session `sid` (found in /proc).
///
/// A shell with job control puts each job in a process group of its own, so
/// killing the shell's group would leave `sleep 1000 &` behind; the session
/// holds them all. Repeated a few times so a process forked while the first
/// pass ran is caught too (a SIGKILLed process forks no more).
pub fn kill_session(sid: i32) {
    if sid <= 1 {
        return;
    }
    for _ in 0..3 {
        let members = session_members(sid);
        if members.is_empty() {
            return;
        }
        for pid in members {
            // SAFETY: plain syscall; the pid was read from /proc just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Live (non-zombie) processes whose session id is `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain anything.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp session ...
        if fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string() {
            out.push(pid);
        }
    }
    out
}

/// Name of a signal for messages (`SIGKILL`), or its number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ids_that_would_widen_the_target() {
        assert!(signal(0, 0).is_err());
        assert!(signal(1, 0).is_err());
        assert!(signal(-5, 0).is_err());
    }

    #[test]
    fn names_common_signals() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }
}

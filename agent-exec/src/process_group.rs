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

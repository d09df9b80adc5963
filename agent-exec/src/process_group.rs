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

/// One live (non-zombie) process from /proc: pid, parent, session.
struct ProcEntry {
    pid: i32,
    ppid: i32,
    session: i32,
}

/// Every live process, read from `/proc/<pid>/stat`.
fn live_processes() -> Vec<ProcEntry> {
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
        if fields.len() > 3
            && fields[0] != "Z"
            && let (Ok(ppid), Ok(session)) = (fields[1].parse(), fields[3].parse())
        {
            out.push(ProcEntry { pid, ppid, session });
        }
    }
    out
}

/// Live (non-zombie) processes whose session id is `sid`.
pub fn session_members(sid: i32) -> Vec<i32> {
    live_processes()
        .into_iter()
        .filter(|p| p.session == sid)
        .map(|p| p.pid)
        .collect()
}

/// Sends SIGKILL to `pid` and every descendant of it (found in /proc by
/// their parent links).
///
/// For a process without a group or session of its own (a terminal shell
/// started in the minimal mode shares the executor's) this is the only way
/// to reach what it started. The tree is stopped first, walk after walk
/// until no new member turns up: a stopped process can neither fork a child
/// the walk misses nor die and hand its children to init before they are
/// found. Best effort all the same: whatever left the tree before (a double
/// fork) is out of reach. `pid` must be a child the caller has not reaped
/// yet, or it may name an unrelated process.
pub fn kill_tree(pid: i32) {
    // SAFETY: getpid cannot fail.
    let own = unsafe { libc::getpid() };
    if pid <= 1 || pid == own {
        return;
    }
    let mut stopped: Vec<i32> = Vec::new();
    // Bounded, so a process that forks without end cannot keep us here;
    // SIGSTOP is pending for each member found, so forks end quickly.
    for _ in 0..32 {
        let new: Vec<i32> = tree(pid, own)
            .into_iter()
            .filter(|p| !stopped.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        for p in new {
            // SAFETY: plain syscall; the pid was read from /proc just now
            // and, being in the tree, is not reaped by anyone but its parent.
            unsafe { libc::kill(p, libc::SIGSTOP) };
            stopped.push(p);
        }
    }
    for p in stopped {
        // SAFETY: as above; a stopped process stays in the tree.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// `root` and its live descendants, never `own` (the executor).
fn tree(root: i32, own: i32) -> Vec<i32> {
    // (pid, ppid) of every live process.
    let procs: Vec<(i32, i32)> = live_processes()
        .into_iter()
        .map(|p| (p.pid, p.ppid))
        .collect();
    let mut out: Vec<i32> = procs
        .iter()
        .filter(|(pid, _)| *pid == root)
        .map(|(pid, _)| *pid)
        .collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (pid, ppid) in &procs {
            if *ppid == parent && *pid != own && !out.contains(pid) {
                out.push(*pid);
            }
        }
        i += 1;
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
    fn kill_tree_reaches_grandchildren_but_never_the_caller() {
        use std::os::unix::process::CommandExt;
        // Not this test process's own child group: the shell's children
        // stay in the tree through their parent links alone.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1000 & sleep 1001 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid = child.id() as i32;
        // SAFETY: getpid cannot fail.
        let own = unsafe { libc::getpid() };
        let members = tree(pid, own);
        assert_eq!(members.len(), 3, "{members:?}");
        assert_eq!(members[0], pid);
        // The walk never includes the caller, even from its parent down.
        // SAFETY: getppid cannot fail.
        assert!(!tree(unsafe { libc::getppid() }, own).contains(&own));
        kill_tree(pid);
        child.wait().unwrap();
        // The sleeps were reparented when the shell died; once killed they
        // are gone (or zombies of init, which /proc shows as state Z).
        for p in &members[1..] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
            }) {
                assert!(std::time::Instant::now() < deadline, "{p} survived");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    #[test]
    fn names_common_signals() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }
}

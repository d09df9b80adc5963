//! Terminal start-mode fallbacks (PROTOCOL.md §9.4) through the real
//! executor. Every mode works on this machine, so the debug-only option
//! `--test-refuse-pty-mode` makes the preferred modes fail, in the child,
//! where a host that does not allow them would refuse them.

// The option exists in debug builds only (release binaries have no test hooks).
#![cfg(debug_assertions)]

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::term::{
    Proc, close, input, open, proc_stat, process_tree, read_until, run_line, shell_pid,
    still_running, wait_exited, wait_opened,
};
use common::{Client, Exec};
use shared::ipc::{ExecMessage, NetMessage, PtyMode};

const SID: &str = "44444444-4444-4444-8444-444444444444";

/// An executor whose terminals use bash and which refuses `modes`. It runs
/// in a session of its own: a shell started without a session of its own
/// would otherwise find the test runner's terminal, if it has one, and
/// take it over for job control.
fn start(modes: &[&str]) -> Exec {
    let mut args = Vec::new();
    for m in modes {
        args.extend(["--test-refuse-pty-mode", m]);
    }
    Exec::start_with(&args, |cmd| {
        cmd.env("SHELL", "/bin/bash");
        // SAFETY: setsid is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// Typed input reaches a program that reads it, and its output comes back.
/// Both lines go at once: the terminal hands the shell one line per read,
/// so the second waits for `read`.
fn input_and_output_work(c: &mut Client) {
    input(
        c,
        SID,
        b"read line; echo \"read:$line:$((1+1))\"\nhello there\n",
    );
    read_until(c, SID, |t| t.contains("read:hello there:2"));
}

/// Waits (up to 30 s, only so a broken run does not hang) until the shell
/// `pid` has at least `n` processes in its tree, itself included.
fn wait_tree(pid: i32, n: usize) -> Vec<Proc> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tree = process_tree(pid);
        if tree.len() >= n {
            return tree;
        }
        assert!(Instant::now() < deadline, "only {tree:?} started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_refused_controlling_tty_falls_back_to_no_controlling_tty() {
    let exec = start(&["ctty"]);
    let mut c = exec.connect();
    open(&mut c, SID, 100, 30);
    assert_eq!(wait_opened(&mut c, SID), PtyMode::NoControllingTty);
    let log = exec.log();
    assert!(
        log.contains(&format!(
            "terminal {SID}: /bin/bash could not start in mode ControllingTty: Operation not permitted"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "terminal {SID} runs in mode NoControllingTty: no job control"
        )),
        "{log}"
    );

    // The shell really runs that way: a process group of its own, inside
    // the executor's session, and no controlling terminal.
    let pid = shell_pid(&mut c, SID);
    let shell = proc_stat(pid).unwrap();
    let executor = proc_stat(exec.child.id() as i32).unwrap();
    assert_eq!(shell.pgrp, pid);
    assert_eq!(shell.session, executor.session);
    assert_eq!(shell.tty_nr, 0);

    input_and_output_work(&mut c);
    c.send(&NetMessage::TerminalResize {
        session_id: SID.into(),
        cols: 150,
        rows: 50,
    });
    run_line(&mut c, SID, "stty size", "50 150");
    input(&mut c, SID, b"exit 3\n");
    assert_eq!(
        wait_exited(&mut c, SID),
        (3, Some("exit status 3".to_owned()))
    );
}

#[test]
fn with_both_refused_the_minimal_mode_still_works() {
    let exec = start(&["ctty", "no-ctty"]);
    let mut c = exec.connect();
    open(&mut c, SID, 100, 30);
    assert_eq!(wait_opened(&mut c, SID), PtyMode::Minimal);
    let log = exec.log();
    for mode in ["ControllingTty", "NoControllingTty"] {
        assert!(
            log.contains(&format!(
                "/bin/bash could not start in mode {mode}: Operation not permitted"
            )),
            "{log}"
        );
    }
    assert!(
        log.contains(&format!(
            "terminal {SID} runs in mode Minimal: no job control"
        )),
        "{log}"
    );

    // No attributes of its own: the executor's group and session.
    let pid = shell_pid(&mut c, SID);
    let shell = proc_stat(pid).unwrap();
    let executor = proc_stat(exec.child.id() as i32).unwrap();
    assert_eq!(
        (shell.pgrp, shell.session),
        (executor.pgrp, executor.session)
    );
    assert_eq!(shell.tty_nr, 0);

    input_and_output_work(&mut c);
    run_line(&mut c, SID, "stty size", "30 100");
    input(&mut c, SID, b"exit\n");
    assert_eq!(
        wait_exited(&mut c, SID),
        (0, Some("terminal session exited".to_owned()))
    );
}

#[test]
fn stop_kills_the_shell_and_its_jobs_in_every_mode() {
    for (refused, mode) in [
        (&[][..], PtyMode::ControllingTty),
        (&["ctty"][..], PtyMode::NoControllingTty),
        (&["ctty", "no-ctty"][..], PtyMode::Minimal),
    ] {
        let exec = start(refused);
        let mut c = exec.connect();
        open(&mut c, SID, 80, 24);
        assert_eq!(wait_opened(&mut c, SID), mode);
        let pid = shell_pid(&mut c, SID);
        // Two background jobs and one in the foreground.
        run_line(
            &mut c,
            SID,
            "sleep 1000 & sleep 1001 & echo bg-$((7*6)); sleep 1002",
            "bg-42",
        );
        let tree = wait_tree(pid, 4);
        close(&mut c, SID, "Operator requested stop");
        let (code, reason) = wait_exited(&mut c, SID);
        assert_eq!(code, -1, "{mode:?}");
        assert_eq!(reason.as_deref(), Some("Operator requested stop"));
        assert_eq!(
            still_running(&tree),
            Vec::new(),
            "{mode:?}: left running after stop"
        );

        // The executor (which shares its group with a minimal shell) is
        // untouched and still serves terminals in that mode.
        assert!(proc_stat(exec.child.id() as i32).is_some());
        open(&mut c, SID, 80, 24);
        assert_eq!(wait_opened(&mut c, SID), mode);
        run_line(&mut c, SID, "echo again-$((6*7))", "again-42");
    }
}

#[test]
fn when_every_mode_is_refused_the_open_fails_and_leaves_nothing_behind() {
    let exec = start(&["ctty", "no-ctty", "minimal"]);
    let mut c = exec.connect();
    open(&mut c, SID, 80, 24);
    let message = loop {
        match c.recv() {
            ExecMessage::TerminalError {
                session_id,
                message,
            } if session_id == SID => break message,
            ExecMessage::TerminalOpened { mode, .. } => panic!("opened in {mode:?}"),
            _ => {}
        }
    };
    assert!(
        message.starts_with("could not start a shell for the terminal: ")
            && message.ends_with("(Minimal): Operation not permitted (os error 1)"),
        "{message}"
    );
    // Every failed start was reaped: the executor has no child at all.
    let exec_pid = exec.child.id() as i32;
    let tree = process_tree(exec_pid);
    assert_eq!(tree.len(), 1, "{tree:?}");
    // And the session is not on record.
    drop(c);
    let c = exec.connect();
    assert!(c.inventory.terminals.is_empty());
}

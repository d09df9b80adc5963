//! PTY terminals through the real executor: job control (Ctrl-C), resize,
//! stop, exit codes, errors, and many sessions opened and closed while
//! tasks run.

mod common;

use std::time::{Duration, Instant};

use common::term::{input, open, run_line, session_members, shell_pid, wait_exited, wait_opened};
use common::{Client, Exec, shell, task_id};
use shared::ipc::{ExecMessage, NetMessage, Outcome, PtyMode};

const SID: &str = "11111111-1111-4111-8111-111111111111";

#[test]
fn ctrl_c_interrupts_the_foreground_job_and_resize_reaches_stty() {
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("SHELL", "/bin/bash");
    });
    let mut c = exec.connect();
    open(&mut c, SID, 100, 30);
    assert_eq!(wait_opened(&mut c, SID), PtyMode::ControllingTty);
    run_line(&mut c, SID, "echo ready-$((40+2))", "ready-42");

    input(&mut c, SID, b"sleep 100\n");
    std::thread::sleep(Duration::from_millis(300));
    input(&mut c, SID, &[0x03]);
    // 130 = 128 + SIGINT: the sleep died of Ctrl-C (it would have ended
    // with 0 after its 100 s otherwise).
    run_line(&mut c, SID, "echo status-$?-done", "status-130-done");

    run_line(&mut c, SID, "stty size; echo size-$((1))", "30 100");
    c.send(&NetMessage::TerminalResize {
        session_id: SID.into(),
        cols: 150,
        rows: 50,
    });
    run_line(&mut c, SID, "stty size", "50 150");
    let env = run_line(&mut c, SID, "echo term-$TERM-pager-$PAGER-", "-pager-cat-");
    assert!(env.contains("term-xterm-256color-"), "{env}");

    input(&mut c, SID, b"exit 3\n");
    let (code, reason) = wait_exited(&mut c, SID);
    assert_eq!(code, 3);
    assert_eq!(reason.as_deref(), Some("exit status 3"));
}

#[test]
fn stop_kills_every_job_of_the_session_and_exit_zero_is_reported() {
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("SHELL", "/bin/bash");
    });
    let mut c = exec.connect();
    open(&mut c, SID, 0, 0);
    wait_opened(&mut c, SID);
    let pid = shell_pid(&mut c, SID);
    // Background jobs get process groups of their own under job control.
    run_line(
        &mut c,
        SID,
        "sleep 1000 & sleep 1001 & echo bg-$((7*6))",
        "bg-42",
    );
    assert!(session_members(pid).len() >= 3);
    c.send(&NetMessage::TerminalClose {
        session_id: SID.into(),
        reason: Some("Operator requested stop".into()),
    });
    let (code, reason) = wait_exited(&mut c, SID);
    assert_eq!(code, -1);
    assert_eq!(reason.as_deref(), Some("Operator requested stop"));
    assert_eq!(session_members(pid), Vec::<i32>::new());

    let second = "22222222-2222-4222-8222-222222222222";
    open(&mut c, second, 80, 24);
    wait_opened(&mut c, second);
    input(&mut c, second, b"exit\n");
    let (code, reason) = wait_exited(&mut c, second);
    assert_eq!(code, 0);
    assert_eq!(reason.as_deref(), Some("terminal session exited"));
}

#[test]
fn problems_are_reported_as_terminal_errors() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();
    let error = |c: &mut Client| loop {
        if let ExecMessage::TerminalError { message, .. } = c.recv() {
            return message;
        }
    };
    input(&mut c, SID, b"ls\n");
    assert_eq!(error(&mut c), "terminal session was not found");
    open(&mut c, SID, 10, 34);
    assert!(error(&mut c).contains("terminal size is invalid"));
    open(&mut c, SID, 80, 24);
    wait_opened(&mut c, SID);
    open(&mut c, SID, 80, 24);
    assert_eq!(error(&mut c), "terminal session already exists");
    // The session an error was reported for is killed.
    let (code, _) = wait_exited(&mut c, SID);
    assert_eq!(code, -1);
}

#[test]
fn five_hundred_sessions_open_and_close_while_tasks_run() {
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("SHELL", "/bin/sh");
    });
    let mut c = exec.connect();
    c.run(
        &task_id(1),
        shell("i=0; while [ $i -lt 200 ]; do seq 1 2000; sleep 0.01; i=$((i+1)); done"),
        Duration::from_secs(300),
    );
    let mut task_bytes = 0usize;
    let mut task_exit = None;
    let mut opened = 0;
    let mut exited = 0;
    let total = 500;
    let batch = 20;
    let ids: Vec<String> = (0..total)
        .map(|i| format!("33333333-3333-4333-8333-{i:012}"))
        .collect();
    let started = Instant::now();
    for chunk in ids.chunks(batch) {
        for id in chunk {
            open(&mut c, id, 80, 24);
        }
        let mut open_now = 0;
        while open_now < chunk.len() {
            match c.recv() {
                ExecMessage::TerminalOpened {
                    session_id, mode, ..
                } => {
                    assert_eq!(mode, PtyMode::ControllingTty);
                    opened += 1;
                    open_now += 1;
                    c.send(&NetMessage::TerminalClose {
                        session_id,
                        reason: None,
                    });
                }
                ExecMessage::TerminalError { message, .. } => panic!("{message}"),
                ExecMessage::TerminalExited { .. } => exited += 1,
                ExecMessage::TaskOutput(o) => {
                    task_bytes += o.bytes.len();
                    c.send(&NetMessage::AckOutput {
                        task_id: o.task_id,
                        seq: o.seq,
                    });
                }
                ExecMessage::TaskExited(e) => task_exit = Some(e),
                _ => {}
            }
        }
    }
    while exited < total || task_exit.is_none() {
        match c.recv() {
            ExecMessage::TerminalExited { .. } => exited += 1,
            ExecMessage::TaskOutput(o) => {
                task_bytes += o.bytes.len();
                c.send(&NetMessage::AckOutput {
                    task_id: o.task_id,
                    seq: o.seq,
                });
            }
            ExecMessage::TaskExited(e) => task_exit = Some(e),
            _ => {}
        }
    }
    assert_eq!(opened, total);
    assert!(started.elapsed() < Duration::from_secs(240));
    let seq_bytes: usize = (1..=2000).map(|i: usize| i.to_string().len() + 1).sum();
    assert_eq!(task_bytes, seq_bytes * 200);
    assert_eq!(task_exit.unwrap().outcome, Outcome::Success);
    // No shell, no PTY child left: the executor has no children any more.
    let exec_pid = exec.child.id().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let children: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().nth(1) == Some(exec_pid.as_str()))
                .unwrap_or(false)
        })
        .collect();
    assert!(children.is_empty(), "leftover children: {children:?}");
}

#[test]
fn large_terminal_output_is_complete_and_split_into_protocol_sized_events() {
    use shared::ipc::MAX_OUTPUT_CHUNK;
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("SHELL", "/bin/sh");
    });
    let mut c = exec.connect();
    open(&mut c, SID, 80, 24);
    wait_opened(&mut c, SID);
    // 300 000 'Q' (written as octal so the echoed command line has none)
    // without newlines, then a marker computed by the shell.
    input(
        &mut c,
        SID,
        b"head -c 300000 /dev/zero | tr '\\0' '\\121'; echo; echo end-$((6*7))\n",
    );
    let mut a_count = 0usize;
    let mut largest = 0usize;
    let mut text_tail = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text_tail.contains("end-42") {
        assert!(Instant::now() < deadline);
        if let ExecMessage::TerminalOutput { bytes, .. } = c.recv() {
            largest = largest.max(bytes.len());
            a_count += bytes.iter().filter(|b| **b == b'Q').count();
            text_tail.push_str(&String::from_utf8_lossy(&bytes));
            if text_tail.len() > 200 {
                text_tail = text_tail[text_tail.len() - 100..].to_owned();
            }
        }
    }
    assert_eq!(a_count, 300_000);
    // Each event stays within the 65 536 base64 characters of terminal.output.
    assert!(largest <= 49_152, "{largest}");
    assert!(largest < MAX_OUTPUT_CHUNK);
}

#[test]
fn input_nobody_reads_fails_the_session_instead_of_piling_up() {
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("SHELL", "/bin/sh");
    });
    let mut c = exec.connect();
    open(&mut c, SID, 80, 24);
    wait_opened(&mut c, SID);
    run_line(&mut c, SID, "stty -echo; sleep 100; echo x-$((1))", "stty");
    // 2 MiB typed while `sleep` reads nothing: the terminal takes a few KiB.
    for _ in 0..64 {
        input(&mut c, SID, &[b'z'; 32 * 1024]);
    }
    let message = loop {
        if let ExecMessage::TerminalError {
            session_id,
            message,
        } = c.recv()
            && session_id == SID
        {
            break message;
        }
    };
    assert!(message.contains("not being read"), "{message}");
    let (code, reason) = wait_exited(&mut c, SID);
    assert_eq!(code, -1);
    assert!(reason.unwrap().contains("not being read"));
}

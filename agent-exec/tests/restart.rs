//! An executor that starts after its predecessor crashed kills what the
//! predecessor left running and reports it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, group_members, shell, task_id};
use shared::ipc::{ExecMessage, NetMessage, Outcome, TerminalOpen};

fn start(state: &Path, socket: &Path, log: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(common::BIN)
        .arg("--listen")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .env("SHELL", "/bin/bash")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn leftovers_of_a_crashed_executor_are_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("exec.sock");
    let mut first = start(&state, &socket, &dir.path().join("first.log"));
    let mut c = Client::connect(&socket);
    c.run(
        &task_id(1),
        shell("sleep 1000 & sleep 1000"),
        Duration::from_secs(600),
    );
    let task_pid = loop {
        if let ExecMessage::TaskStarted { pid, .. } = c.recv() {
            break pid;
        }
    };
    let sid = "44444444-4444-4444-8444-444444444444";
    c.send(&NetMessage::TerminalOpen(TerminalOpen {
        session_id: sid.into(),
        cols: 80,
        rows: 24,
    }));
    loop {
        if let ExecMessage::TerminalOpened { .. } = c.recv() {
            break;
        }
    }
    c.send(&NetMessage::TerminalInput {
        session_id: sid.into(),
        // Ignoring SIGHUP, this job survives the hang-up that the shell
        // gets when the dead executor's PTY master closes.
        bytes: b"(trap '' HUP; sleep 1002) & echo started-$((1+1))\n".to_vec(),
    });
    let mut text = String::new();
    while !text.contains("started-2") {
        if let ExecMessage::TerminalOutput { bytes, .. } = c.recv() {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let task_procs = common::wait_members(task_pid, 2);
    assert!(task_procs.len() >= 2);

    // The executor dies without a chance to clean up.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(c);
    assert!(
        task_procs.iter().all(|p| alive(*p)),
        "the task outlives a crashed executor (own session)"
    );

    let log = dir.path().join("second.log");
    let mut second = start(&state, &socket, &log);
    let mut c = Client::connect(&socket);
    assert!(
        task_procs.iter().all(|p| !alive(*p)),
        "leftovers were killed"
    );
    assert_eq!(group_members(task_pid), Vec::<u32>::new());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("for task {}", task_id(1))), "{text}");
    assert!(text.contains(&format!("for terminal {sid}")), "{text}");
    // The network process learns about the task from the Inventory.
    let state = c
        .inventory
        .tasks
        .iter()
        .find(|t| t.task_id == task_id(1))
        .expect("reported in the inventory");
    let exit = state.exit.as_ref().unwrap();
    assert_eq!(exit.outcome, Outcome::Failed);
    assert!(
        exit.error.as_deref().unwrap().contains("killed"),
        "{exit:?}"
    );
    c.send(&NetMessage::ForgetTask {
        task_id: task_id(1),
    });
    // The next task runs normally.
    c.run(&task_id(2), shell("echo fine"), Duration::from_secs(60));
    assert_eq!(c.collect(&task_id(2)).stdout, b"fine\n");
    second.kill().unwrap();
    second.wait().unwrap();
}

//! Timeouts, cancellation and the kill grace period, checked against /proc.

mod common;

use std::time::{Duration, Instant};

use common::{Exec, group_members, shell, task_id};
use shared::ipc::{ExecMessage, NetMessage, Outcome};

const MINUTE: Duration = Duration::from_secs(60);

fn wait_started(c: &mut common::Client, id: &str) -> u32 {
    loop {
        if let ExecMessage::TaskStarted { task_id, pid } = c.recv()
            && task_id == id
        {
            return pid;
        }
    }
}

#[test]
fn timeout_kills_the_whole_group_including_background_grandchildren() {
    let exec = Exec::start(&["--kill-grace", "2s"]);
    let mut c = exec.connect();
    c.run(
        &task_id(1),
        shell("sleep 1000 & sleep 1000"),
        Duration::from_millis(500),
    );
    let pid = wait_started(&mut c, &task_id(1));
    assert!(
        common::wait_members(pid, 2).len() >= 2,
        "the shell and its background sleep run in the task's group"
    );
    let got = c.collect(&task_id(1));
    let exit = got.exit();
    assert_eq!(exit.outcome, Outcome::TimedOut);
    assert_eq!(exit.exit_code, -1);
    assert!(
        exit.error.as_deref().unwrap().contains("timed out"),
        "{exit:?}"
    );
    assert_eq!(
        group_members(pid),
        Vec::<u32>::new(),
        "nothing of the task survives"
    );
}

#[test]
fn cancel_kills_the_whole_group_and_reports_the_reason() {
    let exec = Exec::start(&["--kill-grace", "2s"]);
    let mut c = exec.connect();
    c.run(&task_id(2), shell("sleep 1000 & sleep 1000 & wait"), MINUTE);
    let pid = wait_started(&mut c, &task_id(2));
    assert!(common::wait_members(pid, 3).len() >= 3);
    c.send(&NetMessage::CancelTask {
        task_id: task_id(2),
        reason: "operator cancelled".into(),
    });
    let got = c.collect(&task_id(2));
    assert_eq!(got.exit().outcome, Outcome::Cancelled);
    assert_eq!(got.exit().error.as_deref(), Some("operator cancelled"));
    assert_eq!(group_members(pid), Vec::<u32>::new());
}

#[test]
fn a_command_that_traps_sigterm_gets_its_grace_period_to_clean_up() {
    let exec = Exec::start(&["--kill-grace", "5s"]);
    let mut c = exec.connect();
    c.run(
        &task_id(3),
        shell("trap 'echo got TERM; sleep 1; echo cleaned up; exit 7' TERM; echo ready; while :; do sleep 0.1; done"),
        MINUTE,
    );
    let mut out = common::Collected::default();
    c.collect_into(&task_id(3), &mut out, |o| o.stdout.ends_with(b"ready\n"));
    let cancelled_at = Instant::now();
    c.send(&NetMessage::CancelTask {
        task_id: task_id(3),
        reason: "stop".into(),
    });
    c.send(&NetMessage::AckOutput {
        task_id: task_id(3),
        seq: out.last_seq,
    });
    c.collect_into(&task_id(3), &mut out, |_| false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("got TERM\ncleaned up\n"), "{text}");
    assert_eq!(out.exit().outcome, Outcome::Cancelled);
    // It ended by itself within the grace period, not at its end.
    assert!(cancelled_at.elapsed() < Duration::from_secs(4));
    assert_eq!(group_members(out.pid.unwrap()), Vec::<u32>::new());
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_when_the_grace_period_ends() {
    let exec = Exec::start(&["--kill-grace", "1s"]);
    let mut c = exec.connect();
    c.run(
        &task_id(4),
        shell("trap '' TERM; (trap '' TERM; sleep 1000) & echo ready; sleep 1000"),
        MINUTE,
    );
    let mut out = common::Collected::default();
    c.collect_into(&task_id(4), &mut out, |o| o.stdout.ends_with(b"ready\n"));
    let pid = out.pid.unwrap();
    c.send(&NetMessage::AckOutput {
        task_id: task_id(4),
        seq: out.last_seq,
    });
    let cancelled_at = Instant::now();
    c.send(&NetMessage::CancelTask {
        task_id: task_id(4),
        reason: "stop".into(),
    });
    c.collect_into(&task_id(4), &mut out, |_| false);
    assert_eq!(out.exit().outcome, Outcome::Cancelled);
    assert!(cancelled_at.elapsed() >= Duration::from_secs(1));
    assert_eq!(group_members(pid), Vec::<u32>::new());
}

#[test]
fn when_the_socketpair_peer_goes_away_the_executor_stops_its_tasks_and_exits() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["--ipc-fd", "3", "--kill-grace", "1s", "--state-dir"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it puts our end on fd 3 (without
    // close-on-exec) in the child only.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    let mut c = common::Client::over(ours);
    assert_eq!(c.inventory.tasks.len(), 0);
    c.run(&task_id(5), shell("echo hi; sleep 1000"), MINUTE);
    let pid = wait_started(&mut c, &task_id(5));
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "executor did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(group_members(pid), Vec::<u32>::new());
}

#[test]
fn sigterm_to_the_executor_stops_its_tasks_and_leaves_an_empty_record() {
    let mut exec = Exec::start(&["--kill-grace", "1s"]);
    let mut c = exec.connect();
    c.run(&task_id(6), shell("sleep 1000 & sleep 1000"), MINUTE);
    let pid = wait_started(&mut c, &task_id(6));
    assert!(common::wait_members(pid, 2).len() >= 2);
    // The record is written by the ledger's writer task, just after the
    // spawn: wait for it.
    let record = exec.dir.path().join("state/processes");
    let line = format!("task {} {pid} ", task_id(6));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&record)
        .unwrap_or_default()
        .contains(&line)
    {
        assert!(Instant::now() < deadline, "a running task is on record");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(exec.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = exec.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "executor did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(group_members(pid), Vec::<u32>::new());
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "");
}

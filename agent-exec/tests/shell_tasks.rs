//! Shell tasks through the real executor over a real socket: complete and
//! ordered output, exit status mapping, the clean environment, limits.

mod common;

use std::time::Duration;

use common::{Exec, checksum, shell, task_id};
use shared::ipc::{NetMessage, Outcome, TaskSpec};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_million_lines_arrive_complete_and_in_order() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();
    c.run(&task_id(1), shell("seq 1 1000000"), MINUTE);
    let got = c.collect(&task_id(1));
    let mut expected = String::new();
    for i in 1..=1_000_000 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }
    assert_eq!(got.stdout.len(), expected.len());
    assert_eq!(checksum(&got.stdout), checksum(expected.as_bytes()));
    assert!(got.stdout == expected.as_bytes());
    assert_eq!(got.exit().outcome, Outcome::Success);
    assert_eq!(got.exit().exit_code, 0);
    assert_eq!(got.exit().dropped_bytes, 0);
}

#[test]
fn a_single_five_megabyte_line_is_not_cut() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();
    c.run(
        &task_id(2),
        shell("head -c 5000000 /dev/zero | tr '\\0' x; echo"),
        MINUTE,
    );
    let got = c.collect(&task_id(2));
    assert_eq!(got.stdout.len(), 5_000_001);
    assert!(got.stdout[..5_000_000].iter().all(|b| *b == b'x'));
    assert_eq!(got.stdout[5_000_000], b'\n');
    assert_eq!(got.exit().outcome, Outcome::Success);
}

#[test]
fn binary_data_on_both_streams_is_delivered_byte_for_byte() {
    let exec = Exec::start(&[]);
    let data: Vec<u8> = (0u32..3_000_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = exec.dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let mut c = exec.connect();
    c.run(
        &task_id(3),
        shell(&format!("cat {0}; cat {0} >&2", file.display())),
        MINUTE,
    );
    let got = c.collect(&task_id(3));
    assert_eq!(got.stdout.len(), data.len());
    assert_eq!(checksum(&got.stdout), checksum(&data));
    assert!(got.stdout == data);
    assert!(got.stderr == data);
    assert_eq!(got.exit().outcome, Outcome::Success);
}

#[test]
fn exit_codes_signals_and_start_failures_map_to_outcomes() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();

    c.run(
        &task_id(10),
        shell("echo out; echo err >&2; exit 3"),
        MINUTE,
    );
    let got = c.collect(&task_id(10));
    assert_eq!(got.stdout, b"out\n");
    assert_eq!(got.stderr, b"err\n");
    assert_eq!(got.exit().outcome, Outcome::Failed);
    assert_eq!(got.exit().exit_code, 3);
    assert_eq!(got.exit().error.as_deref(), Some("exit status 3"));
    assert!(got.pid.is_some(), "TaskStarted precedes the output");

    c.run(&task_id(11), shell("kill -KILL $$"), MINUTE);
    let got = c.collect(&task_id(11));
    assert_eq!(got.exit().exit_code, -1);
    assert_eq!(got.exit().error.as_deref(), Some("signal: SIGKILL"));

    c.run(
        &task_id(12),
        TaskSpec::Shell {
            command: "true".into(),
            shell: Some("/nonexistent/shell".into()),
            working_dir: None,
            environment: Vec::new(),
        },
        MINUTE,
    );
    let got = c.collect(&task_id(12));
    assert_eq!(got.exit().outcome, Outcome::Failed);
    assert_eq!(got.exit().exit_code, -1);
    let err = got.exit().error.clone().unwrap();
    assert!(err.contains("could not start /nonexistent/shell"), "{err}");

    c.run(&task_id(13), shell("   "), MINUTE);
    let got = c.collect(&task_id(13));
    assert_eq!(
        got.exit().error.as_deref(),
        Some("invalid task payload: shell.exec payload requires a command")
    );
    assert_eq!(got.exit().exit_code, -1);
}

#[test]
fn children_get_the_documented_environment_and_never_the_executors() {
    let exec = Exec::start_with(&[], |cmd| {
        cmd.env("NODERAX_AGENT_TOKEN", "secret-token")
            .env("AGENT_TOKEN", "secret-token");
    });
    let mut c = exec.connect();
    let workdir = exec.dir.path().to_owned();
    c.run(
        &task_id(20),
        TaskSpec::Shell {
            command: "env | sort; pwd; ls -l /proc/self/fd/0".into(),
            shell: Some("/bin/bash".into()),
            working_dir: Some(workdir.display().to_string()),
            // An empty HOME keeps the login shell from reading the test
            // machine's ~/.profile, so what is printed is the executor's base.
            environment: vec![
                ("EXTRA".into(), "1".into()),
                ("PAGER".into(), "more".into()),
                ("HOME".into(), workdir.display().to_string()),
            ],
        },
        MINUTE,
    );
    let got = c.collect(&task_id(20));
    let text = got.stdout_text();
    assert!(!text.contains("secret-token"), "{text}");
    for needle in [
        "COLUMNS=100000",
        "PAGER=more",
        "EXTRA=1",
        "SHELL=/bin/bash",
        "LANG=C.UTF-8",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "USER=",
        "LOGNAME=",
        "/dev/null",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
    assert!(
        text.contains(&format!("\n{}\n", workdir.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("HOME={}\n", workdir.display())),
        "{text}"
    );
    let vars = text.lines().filter(|l| l.contains('=')).count();
    // The base (8) + EXTRA + what any shell adds itself (PWD, SHLVL, _).
    assert!(vars <= 12, "unexpected variables in {text}");
}

#[test]
fn the_task_limit_and_unique_ids_are_enforced() {
    let exec = Exec::start(&["--max-tasks", "1"]);
    let mut c = exec.connect();
    c.run(&task_id(30), shell("sleep 30"), MINUTE);
    c.run(&task_id(30), shell("true"), MINUTE);
    c.run(&task_id(31), shell("true"), MINUTE);
    c.run("not-a-uuid", shell("true"), MINUTE);
    let mut refused = Vec::new();
    while refused.len() < 3 {
        if let shared::ipc::ExecMessage::Refused { request, reason } = c.recv() {
            refused.push(format!("{request}: {reason}"));
        }
    }
    assert!(refused[0].contains("already known"), "{refused:?}");
    assert!(refused[1].contains("maximum"), "{refused:?}");
    assert!(refused[2].contains("UUID"), "{refused:?}");
    c.send(&NetMessage::CancelTask {
        task_id: task_id(30),
        reason: "done".into(),
    });
    let got = c.collect(&task_id(30));
    assert_eq!(got.exit().outcome, Outcome::Cancelled);
    c.send(&NetMessage::ForgetTask {
        task_id: task_id(30),
    });
    c.run(&task_id(31), shell("echo second"), MINUTE);
    let got = c.collect(&task_id(31));
    assert_eq!(got.stdout, b"second\n");
}

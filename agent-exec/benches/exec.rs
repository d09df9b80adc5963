//! Benchmark of the real `noderax-agent-exec` over a real socket, as the
//! network process uses it. Prints a table; asserts nothing about speed.
//!
//! - spawn: `RunTask` sent → `TaskStarted` received. The executor sends
//!   `TaskStarted` after `spawn` returned, which happens only once the
//!   child has exec'd, so this is RunTask → exec plus one message back.
//! - throughput: `head -c 1G /dev/zero` → all `TaskOutput` received and
//!   acknowledged, in MB/s (10^6 bytes).
//! - echo: one byte typed into a terminal → its echo received. Keys are
//!   typed 30 ms apart, like a fast typist; output within 25 ms of the last
//!   event is batched by design (PROTOCOL.md §9.4).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Exec, shell, task_id};
use shared::ipc::{ExecMessage, NetMessage, TerminalOpen};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn spawn_latency(exec: &Exec, runs: u32) -> Vec<Duration> {
    let mut c = exec.connect();
    let mut out = Vec::new();
    for i in 0..runs {
        let id = task_id(100_000 + i);
        let sent = Instant::now();
        c.run(&id, shell("exit 0"), Duration::from_secs(60));
        loop {
            match c.recv() {
                ExecMessage::TaskStarted { task_id, .. } if task_id == id => {
                    out.push(sent.elapsed());
                }
                ExecMessage::TaskExited(e) if e.task_id == id => break,
                _ => {}
            }
        }
        c.send(&NetMessage::ForgetTask { task_id: id });
    }
    out.sort();
    out
}

fn throughput(exec: &Exec) -> (u64, Duration) {
    let mut c = exec.connect();
    let id = task_id(1);
    let sent = Instant::now();
    c.run(&id, shell("head -c 1G /dev/zero"), Duration::from_secs(600));
    let mut bytes = 0u64;
    loop {
        match c.recv() {
            ExecMessage::TaskOutput(o) => {
                bytes += o.bytes.len() as u64;
                c.send(&NetMessage::AckOutput {
                    task_id: o.task_id,
                    seq: o.seq,
                });
            }
            ExecMessage::TaskExited(e) if e.task_id == id => {
                assert_eq!(e.dropped_bytes, 0);
                break;
            }
            _ => {}
        }
    }
    (bytes, sent.elapsed())
}

fn echo_round_trip(exec: &Exec, keys: u32) -> Vec<Duration> {
    let mut c = exec.connect();
    let sid = "55555555-5555-4555-8555-555555555555";
    c.send(&NetMessage::TerminalOpen(TerminalOpen {
        session_id: sid.into(),
        cols: 120,
        rows: 34,
    }));
    // Wait for the shell's prompt to settle.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 65536];
        let _ = std::io::Read::read(&mut c.stream, &mut buf);
    }
    let mut c = {
        drop(c);
        exec.connect()
    };
    let mut out = Vec::new();
    for i in 0..keys {
        std::thread::sleep(Duration::from_millis(30));
        // Alternate a letter and a backspace so the line never grows.
        let key: &[u8] = if i % 2 == 0 { b"x" } else { b"\x7f" };
        let sent = Instant::now();
        c.send(&NetMessage::TerminalInput {
            session_id: sid.into(),
            bytes: key.to_vec(),
        });
        loop {
            if let ExecMessage::TerminalOutput { session_id, .. } = c.recv()
                && session_id == sid
            {
                out.push(sent.elapsed());
                break;
            }
        }
    }
    c.send(&NetMessage::TerminalClose {
        session_id: sid.into(),
        reason: None,
    });
    out.sort();
    out
}

fn main() {
    // `cargo bench -p agent-exec -- [spawn] [echo] [throughput]` runs only
    // the named measurements; `cargo bench` itself passes `--bench`.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let exec = Exec::start_with(&["--max-tasks", "8"], |cmd| {
        cmd.env("SHELL", "/bin/sh");
    });
    println!("noderax-agent-exec benchmark ({})", common::BIN);
    println!();
    println!("| measurement | runs | p50 | p99 | target |");
    println!("|---|---|---|---|---|");
    if run("spawn") {
        let spawn = spawn_latency(&exec, 1000);
        println!(
            "| task spawn, RunTask → exec (TaskStarted) | {} | {} | {} | p50 ≤ 2 ms |",
            spawn.len(),
            ms(percentile(&spawn, 0.5)),
            ms(percentile(&spawn, 0.99))
        );
    }
    if run("echo") {
        let echo = echo_round_trip(&exec, 300);
        println!(
            "| terminal echo round trip | {} | {} | {} | p99 ≤ 2 ms |",
            echo.len(),
            ms(percentile(&echo, 0.5)),
            ms(percentile(&echo, 0.99))
        );
    }
    if run("throughput") {
        let (bytes, took) = throughput(&exec);
        println!();
        println!(
            "output throughput, `head -c 1G /dev/zero`: {bytes} bytes in {:.2} s = {:.0} MB/s (target ≥ 200 MB/s)",
            took.as_secs_f64(),
            bytes as f64 / took.as_secs_f64() / 1e6
        );
    }
}

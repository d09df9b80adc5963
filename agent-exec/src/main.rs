//! `noderax-agent-exec`: the executor. Runs tasks and terminals for the
//! network process over the IPC socket (ARCHITECTURE.md §2–§4) as the
//! unprivileged user `noderax`.
//!
//! This build knows its version only; serving the IPC socket is the
//! executor issue's work.

use std::process::ExitCode;

use shared::build_info;

const USAGE: &str = "usage: noderax-agent-exec [--version | --help]

The Noderax agent's executor. It is started by systemd (socket activation on
/run/noderax-agent/exec.sock) or by `noderax-agent` itself; it is not meant to
be run by hand.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version" | "-v" | "version"] => {
            println!("noderax-agent-exec {}", build_info::summary());
            ExitCode::SUCCESS
        }
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => {
            eprintln!(
                "noderax-agent-exec {}: this build cannot serve the executor socket yet; nothing was started",
                build_info::VERSION
            );
            ExitCode::from(2)
        }
        [other, ..] => {
            eprintln!("noderax-agent-exec: unknown argument {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

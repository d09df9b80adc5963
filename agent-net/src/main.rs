//! `noderax-agent`: the Noderax node agent's network process and its
//! command-line interface.
//!
//! This process is the only one that talks to the control plane; it runs as
//! the unprivileged user `noderax-net` and hands all work to the executor
//! (`noderax-agent-exec`). See ARCHITECTURE.md.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}

//! `noderax-agent-priv`: the root helper, reached only as
//! `sudo -n /usr/local/libexec/noderax-agent-priv ...` (ARCHITECTURE.md §2, §6).
//!
//! It accepts a closed set of commands given as argv words, never a shell
//! string. This build implements `version`; every other word is refused with
//! exit code 2 and a one-line reason.

use std::process::ExitCode;

use shared::build_info;

/// Exit code of a refused command line.
const REFUSED: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let words: Option<Vec<&str>> = args.iter().map(|a| a.to_str()).collect();
    match words.as_deref() {
        Some(["version"]) => {
            println!("noderax-agent-priv {}", build_info::summary());
            ExitCode::SUCCESS
        }
        Some([]) => refuse("no command given (known: version)"),
        Some([first, ..]) => refuse(&format!(
            "unknown command {:?} (known: version)",
            first.escape_debug().to_string()
        )),
        None => refuse("arguments must be valid UTF-8"),
    }
}

fn refuse(reason: &str) -> ExitCode {
    eprintln!("noderax-agent-priv: refused: {reason}");
    ExitCode::from(REFUSED)
}

//! `noderax-agent-priv`: the root helper, reached only as
//! `sudo -n /usr/local/libexec/noderax-agent-priv ...` (ARCHITECTURE.md §2, §6),
//! and under its second name `noderax-agent-self-update` (PROTOCOL.md §12).
//! Everything is in the library (`agent_priv`); this only fixes the process
//! state nothing should be inherited for.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Files the helper creates get exactly the modes it asks for, whatever
    // umask the caller had, and no relative path means the caller's cwd.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    let _ = std::env::set_current_dir("/");
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let host = agent_priv::host::Host::system();
    let caller = agent_priv::policy::Caller::current();
    ExitCode::from(agent_priv::run(&host, &caller, &argv))
}

//! Feeds arbitrary argument vectors to the root helper's command-line
//! parser (`agent_priv::cli::parse`): it must never panic, and whatever it
//! accepts must satisfy the helper's invariants — only valid, unique package
//! names, at most 64 of them, and a valid release version.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use agent_priv::cli::{self, Command};
use libfuzzer_sys::fuzz_target;
use shared::validate;

fuzz_target!(|data: &[u8]| {
    // First byte picks the program name, the rest is NUL-separated argv.
    let (alias, rest) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => (false, data),
    };
    let program = if alias {
        "/usr/local/libexec/noderax-agent-self-update"
    } else {
        "/usr/local/libexec/noderax-agent-priv"
    };
    let args: Vec<&OsStr> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(|b| *b == 0).map(OsStr::from_bytes).collect()
    };
    match cli::parse(OsStr::new(program), &args) {
        Ok(Command::Apt { names, .. }) => {
            assert!(!names.is_empty() && names.len() <= cli::MAX_PACKAGES);
            for (i, n) in names.iter().enumerate() {
                assert!(validate::package_name(n).is_ok(), "{n:?}");
                assert!(!n.starts_with('-') && !n.contains('/') && !n.contains('='));
                assert!(!names[..i].contains(n), "duplicate {n:?}");
            }
        }
        Ok(Command::UpdateApply { version, target_id }) => {
            assert!(validate::release_version(&version).is_ok());
            assert!(!version.contains('/') && !version.contains(".."));
            if let Some(id) = target_id {
                assert!(validate::uuid(&id).is_ok());
            }
        }
        Ok(_) => {}
        Err(r) => assert!(!r.0.contains('\n') && r.0.len() < 1024, "{r:?}"),
    }
});

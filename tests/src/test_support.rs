//! Small helpers shared by the integration suites that drive the built
//! programs and host tools (installer, release layout, service commands).

use std::path::PathBuf;
use std::process::Output;

/// `tool` on `PATH`, if installed.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `tool` on `PATH`, or a panic naming the Debian package to install.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    on_path(tool).unwrap_or_else(|| {
        panic!("{tool} not found: install the `{package}` package (./scripts/setup-debian.sh does)")
    })
}

/// The directory of the running test binary's profile (`target/debug`),
/// which holds the workspace's programs after a workspace build; panics
/// naming any of `programs` that is missing.
pub fn workspace_bin_dir(programs: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binaries live in target/PROFILE/deps")
        .to_owned();
    for b in programs {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            dir.join(b).display()
        );
    }
    dir
}

/// A finished process for an assertion message: exit status and both streams.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

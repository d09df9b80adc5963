//! The built `noderax-agent-priv` binary (compiled without `cfg(test)`, as
//! installed) has no test hooks: no way to move its root, tools or failure
//! points, and it refuses hostile input by itself.
//!
//! Hostile invocations run as `nobody` (through `setpriv`), so this test
//! never lets the real binary act on or log to the machine running it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Absolute: the tests set a hostile PATH for the child.
const SETPRIV: &str = "/usr/bin/setpriv";
const BIN: &str = env!("CARGO_BIN_EXE_noderax-agent-priv");

/// Strings that exist only in `#[cfg(test)]` code of the helper (the
/// test-only host constructor and failure point). If they are in the
/// binary, test hooks were compiled into it.
const TEST_ONLY_MARKERS: [&str; 2] = ["injected failure before the switch", "fake apt-get: "];

#[test]
fn the_binary_contains_no_test_hooks() {
    let bytes = std::fs::read(BIN).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = ["update.rs", "testkit.rs"]
        .map(|f| std::fs::read_to_string(src.join(f)).unwrap())
        .join("\n");
    for marker in TEST_ONLY_MARKERS {
        // The marker is real (present in the test-only source) ...
        assert!(
            sources.contains(marker),
            "marker {marker:?} no longer in the sources"
        );
        // ... and absent from what gets installed.
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "test-only code {marker:?} is compiled into {BIN}"
        );
    }
    // Positive control: a string of the shipped code is found the same way.
    let shipped = b"is not in the apt cache under exactly that name";
    assert!(bytes.windows(shipped.len()).any(|w| w == shipped));
}

/// A copy of the binary that `nobody` can reach (the build directory may
/// sit under a directory only root can enter), removed with the guard.
fn reachable_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("noderax-agent-priv");
    std::fs::copy(BIN, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, copy)
}

fn as_nobody(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let (_dir, bin) = reachable_copy();
    let out = Command::new(SETPRIV)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("setpriv (util-linux) runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hostile_input_is_refused_with_a_one_line_reason() {
    for (args, want) in [
        (
            &["apt", "install", "--", "./evil.deb"][..],
            "invalid package name \"./evil.deb\"",
        ),
        (&["apt", "install", "--", "ngin*"], "invalid package name"),
        (&["apt", "install", "nginx"], "needs `--`"),
        (&["sh", "-c", "id"], "unknown command line"),
        (
            &["update", "apply", "--version", "../../etc"],
            "invalid release version",
        ),
        (&[], "no command given"),
    ] {
        let (code, out, err) = as_nobody(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("noderax-agent-priv: refused: "), "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn variables_a_hook_might_read_change_nothing() {
    // Whatever an attacker sets, a non-root caller is refused before any
    // path or tool is looked at, and `version` works for anyone.
    let envs = [
        ("PATH", "/tmp/evil"),
        ("NODERAX_PRIV_ROOT", "/tmp/evil"),
        ("NODERAX_ROOT_ACCESS_CEILING", "all"),
        ("APT_CONFIG", "/tmp/evil.conf"),
        ("SUDO_UID", "0"),
        ("LD_PRELOAD", "/tmp/evil.so"),
    ];
    let (code, _, err) = as_nobody(&["apt", "update"], &envs);
    assert_eq!(code, 2);
    assert!(err.contains("must run as root"), "{err}");
    let (code, out, _) = as_nobody(&["version"], &envs);
    assert_eq!(code, 0);
    assert!(out.starts_with("noderax-agent-priv "), "{out}");
}

/// During an update the executor that reads the helper's output is
/// restarted; the helper must carry on (and exit normally) when its stdout
/// and stderr are broken pipes instead of panicking with exit 101.
#[test]
fn a_broken_output_pipe_does_not_stop_the_helper() {
    use std::os::fd::FromRawFd;
    let (_dir, bin) = reachable_copy();
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned here.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(read_end); // nobody will ever read: every write gets EPIPE
    let status = Command::new(SETPRIV)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .arg("version")
        .stdout(write_end.try_clone().unwrap())
        .stderr(write_end)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

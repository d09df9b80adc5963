//! Starts a task's program as the leader of a new session, with
//! `posix_spawn`.
//!
//! Tokio's (and std's) `Command` forks as soon as a `pre_exec` hook is set,
//! and `setsid()` can only be set that way on stable Rust (`setsid()` on
//! `CommandExt` is unstable: rust-lang/rust#105376). A fork copies the
//! executor's page tables, `exec` tears them down again, and the executor's
//! only thread waits for both: 0.6–1.0 ms per start on the 2-CPU test VM,
//! against 0.15–0.3 ms for `posix_spawn`, which `Command` uses only without
//! such a hook. glibc's `posix_spawn` creates the session itself
//! (`POSIX_SPAWN_SETSID`, glibc 2.26; `posix_spawn_file_actions_addchdir_np`,
//! glibc 2.29: both within the glibc 2.31 the release binaries are built for),
//! so this module calls it directly and keeps what `Command` guaranteed:
//! - stdin is `/dev/null`; stdout and stderr are pipes, read through Tokio;
//! - the environment is exactly the one given; a program name without a
//!   slash is looked up in the child's `PATH` (the one in that environment);
//! - the working directory is changed in the child, before `exec`;
//! - the signal mask is emptied and SIGPIPE, which Rust's runtime ignores,
//!   is reset to its default, as `Command` does;
//! - an `exec` failure (no such program, not executable, bad directory) is
//!   an error from [`spawn`], not a child that exits 127.
//!
//! The exit is collected with `waitpid` on this child's pid only, woken by
//! SIGCHLD: Tokio's own reaper waits for its own children by pid too, so
//! neither takes the other's exit status. A [`SessionChild`] dropped before
//! its exit was collected leaves a zombie until the executor exits; the
//! process runner always collects it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use tokio::net::unix::pipe;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::child_env::DEFAULT_PATH;

/// A started process: the leader of its own session and process group.
pub struct SessionChild {
    pid: libc::pid_t,
    /// The read end of the child's stdout, until taken.
    pub stdout: Option<pipe::Receiver>,
    /// The read end of the child's stderr, until taken.
    pub stderr: Option<pipe::Receiver>,
    sigchld: Signal,
    exit: Option<ExitStatus>,
}

impl SessionChild {
    /// The child's pid, which is also its session and process group id.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the child to exit and collects its status. Cancel-safe:
    /// calling it again after a dropped call loses nothing.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.exit {
                return Ok(status);
            }
            let mut raw = 0;
            // SAFETY: waitpid on our own child's pid with a valid out pointer.
            match unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) } {
                0 => {
                    // Still running: any child's exit wakes this, then check again.
                    if self.sigchld.recv().await.is_none() {
                        return Err(io::Error::other("the SIGCHLD listener stopped"));
                    }
                }
                -1 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                _ => self.exit = Some(ExitStatus::from_raw(raw)),
            }
        }
    }
}

/// What to start: `program` (looked up in `env`'s `PATH` when it has no
/// slash) with `args`, exactly the environment `env`, in `cwd` if given.
pub struct Spawn<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a Path>,
}

/// Starts the process; it is running (`exec` succeeded) when this returns.
pub fn spawn(s: &Spawn<'_>) -> io::Result<SessionChild> {
    let program = resolve(s.program, s.env)?;
    let argv_owned: Vec<CString> = std::iter::once(Ok(cstring(s.program.as_bytes())?))
        .chain(s.args.iter().map(|a| cstring(a.as_bytes())))
        .collect::<io::Result<_>>()?;
    let envp_owned: Vec<CString> = s
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let argv = null_terminated(&argv_owned);
    let envp = null_terminated(&envp_owned);
    let cwd = s
        .cwd
        .map(|d| cstring(d.as_os_str().as_bytes()))
        .transpose()?;
    let dev_null = c"/dev/null";

    let (out_read, out_write) = pipe_pair()?;
    let (err_read, err_write) = pipe_pair()?;
    // Everything that can fail is done before the child exists, so a failure
    // never leaves one behind; the SIGCHLD listener first of all, so its exit
    // cannot be missed.
    let sigchld = signal(SignalKind::child())?;
    let stdout = pipe::Receiver::from_owned_fd(out_read)?;
    let stderr = pipe::Receiver::from_owned_fd(err_read)?;

    let mut actions = FileActions::new()?;
    let mut attr = SpawnAttr::new()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer passed below is valid for the duration of the
    // call: the CStrings and pointer arrays live in this frame, the attr and
    // file actions are initialised (and destroyed by their guards), and
    // posix_spawn returns only after the child has exec'd or failed (glibc
    // uses CLONE_VFORK), so nothing is freed while the child reads it. The
    // pipe fds are open: they are owned by the OwnedFds above.
    let rc = unsafe {
        let a = actions.as_mut_ptr();
        check(libc::posix_spawn_file_actions_addopen(
            a,
            0,
            dev_null.as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        // dup2 clears close-on-exec on the copies; the originals (pipe2 with
        // O_CLOEXEC) close at exec, so the child holds exactly fds 0–2 of these.
        check(libc::posix_spawn_file_actions_adddup2(
            a,
            out_write.as_raw_fd(),
            1,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(
            a,
            err_write.as_raw_fd(),
            2,
        ))?;
        if let Some(dir) = &cwd {
            check(libc::posix_spawn_file_actions_addchdir_np(a, dir.as_ptr()))?;
        }
        let at = attr.as_mut_ptr();
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(at, &empty))?;
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(at, &pipe_only))?;
        let flags = libc::POSIX_SPAWN_SETSID as libc::c_int
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        check(libc::posix_spawnattr_setflags(at, flags as libc::c_short))?;
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            actions.as_mut_ptr(),
            attr.as_mut_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    check(rc)?;
    // The child has its copies; ours must close so EOF comes when it exits.
    drop((out_write, err_write));
    Ok(SessionChild {
        pid,
        stdout: Some(stdout),
        stderr: Some(stderr),
        sigchld,
        exit: None,
    })
}

/// The path to exec: `program` itself when it has a slash, else the first
/// executable file of that name in the child's `PATH` (absent: the same
/// default `execvp` would use for children, here [`DEFAULT_PATH`]).
fn resolve(program: &str, env: &[(String, String)]) -> io::Result<CString> {
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the program name is empty",
        ));
    }
    if program.contains('/') {
        return cstring(program.as_bytes());
    }
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in search.split(':') {
        // An empty entry means the current directory, as for execvp.
        let candidate: PathBuf = Path::new(if dir.is_empty() { "." } else { dir }).join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return cstring(candidate.as_os_str().as_bytes());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program:?} was not found in PATH {search:?}"),
    ))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                OsStr::from_bytes(bytes).to_string_lossy()
            ),
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// A pipe as (read end, write end), both close-on-exec.
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// posix_spawn functions return the error number instead of setting errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<libc::posix_spawn_file_actions_t>);

impl FileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: a zeroed value is valid storage for init to fill in.
        let mut a = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `a` is valid, writable storage.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut *a) })?;
        Ok(Self(a))
    }

    fn as_mut_ptr(&mut self) -> *mut libc::posix_spawn_file_actions_t {
        &mut *self.0
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut *self.0) };
    }
}

/// `posix_spawnattr_t`, destroyed on drop.
struct SpawnAttr(Box<libc::posix_spawnattr_t>);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        // SAFETY: a zeroed value is valid storage for init to fill in.
        let mut a = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `a` is valid, writable storage.
        check(unsafe { libc::posix_spawnattr_init(&mut *a) })?;
        Ok(Self(a))
    }

    fn as_mut_ptr(&mut self) -> *mut libc::posix_spawnattr_t {
        &mut *self.0
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut *self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    async fn read_all(mut r: pipe::Receiver) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        s
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[tokio::test]
    async fn runs_in_a_new_session_with_exactly_the_given_environment() {
        let args = vec![
            "-c".to_owned(),
            // Session id, pid, the whole environment, and a line on stderr.
            "cut -d' ' -f6 /proc/$$/stat; echo $$; env | sort; echo oops >&2; read x; echo \"stdin:$x\""
                .to_owned(),
        ];
        let env = env(&[("PATH", DEFAULT_PATH), ("ONLY", "this")]);
        let mut child = spawn(&Spawn {
            program: "sh",
            args: &args,
            env: &env,
            cwd: None,
        })
        .unwrap();
        let out = read_all(child.stdout.take().unwrap()).await;
        let err = read_all(child.stderr.take().unwrap()).await;
        let status = child.wait().await.unwrap();
        assert!(status.success(), "{status:?} {err}");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let pid = child.id().to_string();
        assert_eq!(lines[0], pid, "the child leads its own session");
        assert_eq!(lines[1], pid);
        // `sh` adds PWD (and may add SHLVL); nothing of the executor's own.
        let vars: Vec<&str> = lines[2..lines.len() - 1]
            .iter()
            .map(|l| l.split('=').next().unwrap())
            .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_" | "OLDPWD"))
            .collect();
        assert_eq!(vars, ["ONLY", "PATH"]);
        assert_eq!(lines[lines.len() - 1], "stdin:", "stdin is /dev/null");
        assert_eq!(err, "oops\n");
        // Collected once; asking again gives the same status.
        assert_eq!(child.wait().await.unwrap().code(), Some(0));
    }

    #[tokio::test]
    async fn exit_codes_signals_and_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let args = vec!["-c".to_owned(), "pwd; exit 3".to_owned()];
        let env = env(&[("PATH", DEFAULT_PATH)]);
        let mut child = spawn(&Spawn {
            program: "/bin/sh",
            args: &args,
            env: &env,
            cwd: Some(dir.path()),
        })
        .unwrap();
        let out = read_all(child.stdout.take().unwrap()).await;
        assert_eq!(
            Path::new(out.trim()).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert_eq!(child.wait().await.unwrap().code(), Some(3));

        let args = vec!["-c".to_owned(), "kill -TERM $$".to_owned()];
        let mut child = spawn(&Spawn {
            program: "/bin/sh",
            args: &args,
            env: &env,
            cwd: None,
        })
        .unwrap();
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn start_failures_are_errors() {
        let env = env(&[("PATH", "/nonexistent")]);
        let err = |program: &str, cwd: Option<&Path>| {
            spawn(&Spawn {
                program,
                args: &[],
                env: &env,
                cwd,
            })
            .err()
            .map(|e| e.kind())
        };
        // Looked up in the child's PATH, where there is no `sh`.
        assert_eq!(err("sh", None), Some(io::ErrorKind::NotFound));
        assert_eq!(err("/no/such/program", None), Some(io::ErrorKind::NotFound));
        assert_eq!(
            err("/bin/sh", Some(Path::new("/no/such/dir"))),
            Some(io::ErrorKind::NotFound)
        );
        assert_eq!(err("", None), Some(io::ErrorKind::InvalidInput));
        assert_eq!(err("/bin/s\0h", None), Some(io::ErrorKind::InvalidInput));
    }
}

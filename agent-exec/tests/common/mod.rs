//! Test driver: starts the real `noderax-agent-exec` binary and talks to it
//! over a real Unix socket with the shared IPC codec, like agent-net does.

#![allow(dead_code)]

pub mod term;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::api::RootProfile;
use shared::ipc::{
    self, ExecMessage, Hello, Inventory, NetMessage, OutputStream, RunTask, TaskExit, TaskSpec,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_noderax-agent-exec");

/// A running executor listening on a socket in a temporary directory.
pub struct Exec {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub socket: PathBuf,
}

impl Exec {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    pub fn start_with(extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("exec.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("--listen")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "executor did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { dir, child, socket }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn spill_dir(&self) -> PathBuf {
        self.dir.path().join("state/output")
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer side of one connection.
pub struct Client {
    pub stream: UnixStream,
    decoder: ipc::FrameDecoder,
    pub inventory: Inventory,
    pub peer: Hello,
}

impl Client {
    pub fn connect(path: &Path) -> Self {
        Self::over(UnixStream::connect(path).unwrap())
    }

    /// Handshake on an already connected stream.
    pub fn over(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut c = Self {
            stream,
            decoder: ipc::FrameDecoder::new(),
            inventory: Inventory::default(),
            peer: Hello::current(),
        };
        c.send(&NetMessage::Hello(Hello::current()));
        match c.recv() {
            ExecMessage::Hello(h) => c.peer = h,
            other => panic!("expected Hello, got {other:?}"),
        }
        match c.recv() {
            ExecMessage::Inventory(i) => c.inventory = i,
            other => panic!("expected Inventory, got {other:?}"),
        }
        c
    }

    pub fn send(&mut self, msg: &NetMessage) {
        ipc::write_message(&mut self.stream, msg).unwrap();
    }

    /// Next message; panics on timeout or end of stream.
    pub fn recv(&mut self) -> ExecMessage {
        self.try_recv().expect("executor closed the connection")
    }

    /// Next message, `None` at end of stream.
    pub fn try_recv(&mut self) -> Option<ExecMessage> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            let n = self.stream.read(&mut buf).expect("read from executor");
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Starts a task handed over with the `operational` root profile, the
    /// one package changes and updates need.
    pub fn run(&mut self, task_id: &str, spec: TaskSpec, timeout: Duration) {
        self.run_with_profile(task_id, spec, timeout, RootProfile::Operational);
    }

    /// Starts a task as agent-net would under `root_profile`, the profile it
    /// applied from the control plane's desired one.
    pub fn run_with_profile(
        &mut self,
        task_id: &str,
        spec: TaskSpec,
        timeout: Duration,
        root_profile: RootProfile,
    ) {
        self.send(&NetMessage::RunTask(RunTask {
            task_id: task_id.into(),
            spec,
            timeout,
            root_profile,
        }));
    }

    /// Collects a task's output until its exit, acknowledging every chunk
    /// and checking that sequence numbers are contiguous.
    pub fn collect(&mut self, task_id: &str) -> Collected {
        let mut out = Collected::default();
        self.collect_into(task_id, &mut out, |_| false);
        out
    }

    /// Like [`Self::collect`] but returns early when `stop` says so (after
    /// the chunk that made it true was recorded, without acknowledging it).
    pub fn collect_into(
        &mut self,
        task_id: &str,
        out: &mut Collected,
        mut stop: impl FnMut(&Collected) -> bool,
    ) {
        loop {
            match self.recv() {
                ExecMessage::TaskOutput(o) if o.task_id == task_id => {
                    assert_eq!(
                        o.seq,
                        out.last_seq + 1,
                        "sequence numbers must be contiguous"
                    );
                    out.last_seq = o.seq;
                    match o.stream {
                        OutputStream::Stdout => out.stdout.extend_from_slice(&o.bytes),
                        OutputStream::Stderr => out.stderr.extend_from_slice(&o.bytes),
                        OutputStream::System => out.system.extend_from_slice(&o.bytes),
                    }
                    if stop(out) {
                        return;
                    }
                    self.send(&NetMessage::AckOutput {
                        task_id: task_id.into(),
                        seq: o.seq,
                    });
                }
                ExecMessage::TaskStarted { task_id: id, pid } if id == task_id => {
                    out.pid = Some(pid);
                }
                ExecMessage::TaskExited(e) if e.task_id == task_id => {
                    assert_eq!(e.last_seq, out.last_seq, "exit must follow all output");
                    out.exit = Some(e);
                    return;
                }
                ExecMessage::Refused { request, reason } => {
                    out.refused.push(format!("{request}: {reason}"));
                    if request.contains(task_id) && request.starts_with("RunTask") {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}

/// What a task produced.
#[derive(Debug, Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub system: Vec<u8>,
    pub last_seq: u64,
    pub pid: Option<u32>,
    pub exit: Option<TaskExit>,
    pub refused: Vec<String>,
}

impl Collected {
    pub fn exit(&self) -> &TaskExit {
        self.exit
            .as_ref()
            .unwrap_or_else(|| panic!("no exit: {self:?}"))
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn shell(command: &str) -> TaskSpec {
    TaskSpec::Shell {
        command: command.into(),
        shell: None,
        working_dir: None,
        environment: Vec::new(),
    }
}

/// A task id (UUID) distinct per `n`.
pub fn task_id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Processes whose process group is `pgid`, from /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...; a zombie is already dead.
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to 10 s) until group `pgid` has at least `n` processes, so a
/// loaded machine that is slow to fork does not fail a test; returns them.
pub fn wait_members(pgid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = group_members(pgid);
        if members.len() >= n || Instant::now() > deadline {
            return members;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FNV-1a, enough to compare large outputs in assertion messages.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

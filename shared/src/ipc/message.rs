//! IPC messages. Typed enums, not JSON: the executor acts only on a closed
//! set of requests whose fields it validates.
//!
//! Output is sequenced and acknowledged: the executor numbers every output
//! chunk of a task or terminal (`seq` starts at 1) and keeps it until
//! agent-net acknowledges that it has stored it durably; after a reconnect
//! agent-net asks for a replay from its last stored sequence number.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Hello;
use crate::api::RootProfile;

/// Largest `bytes` of one output chunk, so a chunk always fits in a frame.
pub const MAX_OUTPUT_CHUNK: usize = 256 * 1024;

/// agent-net → agent-exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetMessage {
    Hello(Hello),
    /// Start a task. Refused if its id is already known or the task limit is reached.
    RunTask(RunTask),
    /// Stop a task: SIGTERM to its process group, SIGKILL after the grace period.
    CancelTask {
        task_id: String,
        reason: String,
    },
    /// Output up to and including `seq` is stored durably; the executor may drop it.
    AckOutput {
        task_id: String,
        seq: u64,
    },
    /// Send the task's output again from the chunk after `after_seq`.
    Replay {
        task_id: String,
        after_seq: u64,
    },
    /// The task's exit is stored durably; the executor forgets the task.
    ForgetTask {
        task_id: String,
    },
    TerminalOpen(TerminalOpen),
    TerminalInput {
        session_id: String,
        #[serde(with = "raw_bytes")]
        bytes: Vec<u8>,
    },
    TerminalResize {
        session_id: String,
        cols: u16,
        rows: u16,
    },
    /// Stop a terminal: its process group is killed.
    TerminalClose {
        session_id: String,
        reason: Option<String>,
    },
    /// Terminal output up to and including `seq` was delivered.
    TerminalAck {
        session_id: String,
        seq: u64,
    },
}

/// A task to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTask {
    /// The control plane's task id (a UUID; the executor checks it).
    pub task_id: String,
    pub spec: TaskSpec,
    /// Measured from the moment the executor starts the task.
    pub timeout: Duration,
    /// The root-access profile agent-net applies at hand-over (ARCHITECTURE.md
    /// §9); the executor re-checks package changes and updates against it
    /// as well as against its own ceiling.
    pub root_profile: RootProfile,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskSpec {
    /// `<shell> -lc <command>` in a clean environment plus `environment`.
    Shell {
        command: String,
        /// Default `/bin/sh`.
        shell: Option<String>,
        working_dir: Option<String>,
        environment: Vec<(String, String)>,
    },
    /// Installed packages from dpkg's database.
    PackageList,
    /// Search apt's cache.
    PackageSearch { terms: Vec<String> },
    /// Install, remove or purge through the root helper.
    PackageChange { op: PackageOp, names: Vec<String> },
    /// Hand a downloaded, verified release to the root helper.
    ApplyUpdate {
        version: String,
        target_id: String,
        rollback: bool,
    },
}

/// A package operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageOp {
    Install,
    Remove,
    Purge,
}

/// Open a PTY shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalOpen {
    pub session_id: String,
    pub cols: u16,
    pub rows: u16,
}

/// agent-exec → agent-net.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecMessage {
    Hello(Hello),
    /// Sent after every handshake: what is running or finished but not yet
    /// forgotten, so agent-net can resume after its own restart.
    Inventory(Inventory),
    /// The task's process was started.
    TaskStarted {
        task_id: String,
        pid: u32,
    },
    TaskOutput(TaskOutput),
    /// The task ended; `last_seq` is its final output chunk.
    TaskExited(TaskExit),
    /// A request could not be carried out (unknown task, limit reached, ...).
    Refused {
        request: String,
        reason: String,
    },
    TerminalOpened {
        session_id: String,
        cols: u16,
        rows: u16,
        mode: PtyMode,
    },
    TerminalOutput {
        session_id: String,
        seq: u64,
        #[serde(with = "raw_bytes")]
        bytes: Vec<u8>,
    },
    TerminalExited {
        session_id: String,
        exit_code: i32,
        reason: Option<String>,
    },
    TerminalError {
        session_id: String,
        message: String,
    },
}

/// Running and finished-but-unforgotten work of the executor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub tasks: Vec<TaskState>,
    pub terminals: Vec<TerminalState>,
}

/// One task in an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub task_id: String,
    /// Highest output sequence number produced so far (0: none).
    pub last_seq: u64,
    /// Set once the task has ended.
    pub exit: Option<TaskExit>,
}

/// One terminal in an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalState {
    pub session_id: String,
    pub last_seq: u64,
}

/// Which stream a chunk came from; `System` is the executor's own notes
/// (`running shell.exec command via /bin/sh`, parse errors, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
    System,
}

/// One chunk of task output, raw bytes as the process wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    pub task_id: String,
    pub seq: u64,
    pub stream: OutputStream,
    #[serde(with = "raw_bytes")]
    pub bytes: Vec<u8>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskExit {
    pub task_id: String,
    pub last_seq: u64,
    pub outcome: Outcome,
    /// The process exit code; `-1` if it never started or died by a signal.
    pub exit_code: i32,
    /// From process start to exit; 0 if it never started.
    pub duration: Duration,
    /// Human-readable cause for anything but success (`exit status 2`, ...).
    pub error: Option<String>,
    /// A JSON object for the completion's `result` (package list, search, update hand-off).
    pub result_json: Option<String>,
    /// Output bytes that had to be dropped because a bound was hit (normally 0).
    pub dropped_bytes: u64,
}

/// Final state of a task as the executor saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Success,
    Failed,
    Cancelled,
    TimedOut,
}

/// How a terminal's shell was started (PROTOCOL.md §9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PtyMode {
    /// New session with the PTY as controlling terminal: full job control.
    ControllingTty,
    /// Own process group, no controlling terminal: no job control.
    NoControllingTty,
    /// Plain child process.
    Minimal,
}

/// Output and input bytes as one byte string rather than a sequence of
/// integers: bincode then writes one length and copies the bytes as they are,
/// instead of encoding every byte on its own (three bytes each from 251 up).
/// The executor's output throughput depends on it.
mod raw_bytes {
    use std::fmt;

    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Never trust a claimed length for the allocation.
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

//! The executor's tasks and what the current connection still has to send.
//!
//! A task lives here from `RunTask` until `ForgetTask`, independent of any
//! connection: tasks keep running while the network process is away, and
//! their output waits in their [`OutputBuffer`].
//!
//! Sending is pull-based: the connection's writer asks [`Registry::next_batch`]
//! for what to send next, so output is never queued twice and a slow peer
//! costs buffer space, not a growing channel. Per connection every task has a
//! cursor (the last sequence number sent on it):
//! - a task started while the connection is up streams from the beginning;
//! - a task that existed before the connection was made is paused until the
//!   peer asks for `Replay { after_seq }` with what it has stored, so nothing
//!   is sent twice and nothing is skipped.
//!
//! `TaskExited` is sent once every chunk up to the task's last sequence number
//! has been sent on the connection, so it always comes after the output.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use shared::ipc::{ExecMessage, Inventory, OutputStream, TaskExit, TaskOutput, TaskState};
use tokio::sync::{Notify, mpsc};

use crate::output_buffer::{Bounds, OutputBuffer};
use crate::process_ledger::{Kind, Ledger};

/// Bytes of output put into one batch for the writer (a few frames).
const BATCH_BYTES: usize = 2 * 1024 * 1024;

struct Task {
    buffer: OutputBuffer,
    exit: Option<TaskExit>,
    pgid: Option<i32>,
    cancel: mpsc::UnboundedSender<String>,
    /// Last seq sent on the current connection; `None`: waiting for `Replay`.
    cursor: Option<u64>,
    exit_sent: bool,
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<String, Task>,
    connected: bool,
    /// Messages other than output and exits, in order, for the current connection.
    queue: VecDeque<ExecMessage>,
    /// Where the round robin over tasks continues.
    next_task: Option<String>,
}

/// Why a request about a task was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("task {0} is already known to the executor; a task id can run only once")]
    Duplicate(String),
    #[error(
        "{0} tasks are running, the configured maximum (max_concurrent_tasks); wait for one to finish"
    )]
    Limit(usize),
    #[error("task {0} is not known to the executor (never started, or already forgotten)")]
    Unknown(String),
    #[error("task {0} is still running; cancel it and wait for its exit before forgetting it")]
    StillRunning(String),
    #[error(
        "task {task}: output up to seq {acked} was acknowledged and dropped; replay resumes after it"
    )]
    AlreadyAcked { task: String, acked: u64 },
    #[error("task {task}: seq {seq} is beyond the last output chunk {last}")]
    BeyondLast { task: String, seq: u64, last: u64 },
}

/// Shared state of all tasks; cheap to clone through `Arc`.
pub struct Registry {
    state: Mutex<State>,
    wake: Notify,
    /// On-disk record of running processes, for the next incarnation.
    ledger: Option<Arc<Ledger>>,
}

impl Registry {
    /// A registry that keeps no on-disk record (tests).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ledger: None,
        })
    }

    /// A registry that records every started process in `ledger`.
    pub fn with_ledger(ledger: Arc<Ledger>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            ledger: Some(ledger),
        })
    }

    /// Records a started process (task or terminal) for crash recovery.
    pub fn record_process(&self, kind: Kind, id: &str, pid: i32) {
        if let Some(l) = &self.ledger {
            l.add(kind, id, pid);
        }
    }

    /// Forgets a process record once the task or terminal has ended.
    pub fn forget_process(&self, id: &str) {
        if let Some(l) = &self.ledger {
            l.remove(id);
        }
    }

    /// Adds a task that already ended (a leftover of a previous incarnation),
    /// so the network process learns about it from the `Inventory`.
    pub fn insert_ended(&self, exit: TaskExit, spill_dir: &std::path::Path, bounds: Bounds) {
        let (tx, _) = mpsc::unbounded_channel();
        let id = exit.task_id.clone();
        self.lock().tasks.insert(
            id.clone(),
            Task {
                buffer: OutputBuffer::new(spill_dir.join(format!("{id}.spill")), bounds),
                exit: Some(exit),
                pgid: None,
                cancel: tx,
                cursor: None,
                exit_sent: false,
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the data is still
        // consistent enough to keep supervising processes.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until there may be something to send.
    pub async fn wait_for_work(&self) {
        self.wake.notified().await;
    }

    /// A new connection was established: pause every existing task until
    /// the peer asks for a replay, and describe what exists.
    pub fn connect(&self) -> Inventory {
        let mut s = self.lock();
        s.connected = true;
        s.queue.clear();
        let mut inventory = Inventory::default();
        for (id, task) in s.tasks.iter_mut() {
            task.cursor = None;
            task.exit_sent = false;
            inventory.tasks.push(TaskState {
                task_id: id.clone(),
                last_seq: task.buffer.last_seq(),
                exit: task.exit.clone(),
            });
        }
        inventory
    }

    /// The connection is gone; tasks keep running, messages are not queued.
    pub fn disconnect(&self) {
        let mut s = self.lock();
        s.connected = false;
        s.queue.clear();
    }

    /// Queues a message for the current connection (dropped without one).
    pub fn send(&self, msg: ExecMessage) {
        let mut s = self.lock();
        if s.connected {
            s.queue.push_back(msg);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Messages waiting in the queue for the current connection.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Registers a new task. Returns its cancel receiver.
    pub fn insert(
        &self,
        task_id: &str,
        spill_dir: &std::path::Path,
        bounds: Bounds,
        max_running: usize,
    ) -> Result<mpsc::UnboundedReceiver<String>, RegistryError> {
        let mut s = self.lock();
        if s.tasks.contains_key(task_id) {
            return Err(RegistryError::Duplicate(task_id.into()));
        }
        let running = s.tasks.values().filter(|t| t.exit.is_none()).count();
        if running >= max_running {
            return Err(RegistryError::Limit(running));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let connected = s.connected;
        s.tasks.insert(
            task_id.to_owned(),
            Task {
                buffer: OutputBuffer::new(spill_dir.join(format!("{task_id}.spill")), bounds),
                exit: None,
                pgid: None,
                cancel: tx,
                cursor: connected.then_some(0),
                exit_sent: false,
            },
        );
        Ok(rx)
    }

    /// Records the process group of a started task.
    pub fn set_pgid(&self, task_id: &str, pgid: i32) {
        if let Some(t) = self.lock().tasks.get_mut(task_id) {
            t.pgid = Some(pgid);
        }
        self.record_process(Kind::Task, task_id, pgid);
    }

    /// Process groups of running tasks (for shutdown).
    pub fn running_groups(&self) -> Vec<i32> {
        self.lock()
            .tasks
            .values()
            .filter(|t| t.exit.is_none())
            .filter_map(|t| t.pgid)
            .collect()
    }

    /// Stores an output chunk of a task.
    pub fn push_output(&self, task_id: &str, stream: OutputStream, bytes: Vec<u8>) {
        let mut s = self.lock();
        if let Some(t) = s.tasks.get_mut(task_id) {
            t.buffer.push(stream, bytes);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Records a task's end. `last_seq` and `dropped_bytes` are filled in here.
    pub fn finish(&self, mut exit: TaskExit) {
        self.forget_process(&exit.task_id);
        let mut s = self.lock();
        if let Some(t) = s.tasks.get_mut(&exit.task_id) {
            if t.buffer.dropped() > 0 {
                let note = format!(
                    "{} bytes of output were dropped: {}\n",
                    t.buffer.dropped(),
                    t.buffer.drop_reason().unwrap_or("bound reached")
                );
                // Best effort: with every bound full the note is left out,
                // and the count below still says what happened.
                t.buffer.push_note(note.into_bytes());
            }
            exit.last_seq = t.buffer.last_seq();
            exit.dropped_bytes = t.buffer.dropped();
            t.exit = Some(exit);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Asks a running task to stop.
    pub fn cancel(&self, task_id: &str, reason: String) -> Result<(), RegistryError> {
        let s = self.lock();
        let t = s
            .tasks
            .get(task_id)
            .ok_or_else(|| RegistryError::Unknown(task_id.into()))?;
        if t.exit.is_none() {
            // The runner may have just finished; then there is nothing to stop.
            let _ = t.cancel.send(reason);
        }
        Ok(())
    }

    /// Asks every running task to stop (executor shutdown).
    pub fn cancel_all(&self, reason: &str) {
        for t in self.lock().tasks.values() {
            if t.exit.is_none() {
                let _ = t.cancel.send(reason.to_owned());
            }
        }
    }

    /// Whether every task has ended.
    pub fn all_ended(&self) -> bool {
        self.lock().tasks.values().all(|t| t.exit.is_some())
    }

    /// The peer stored output up to `seq`.
    pub fn ack(&self, task_id: &str, seq: u64) -> Result<(), RegistryError> {
        let mut s = self.lock();
        let t = s
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| RegistryError::Unknown(task_id.into()))?;
        let last = t.buffer.last_seq();
        if t.buffer.ack(seq) {
            Ok(())
        } else {
            Err(RegistryError::BeyondLast {
                task: task_id.into(),
                seq,
                last,
            })
        }
    }

    /// The peer has stored output up to `after_seq` and wants the rest.
    pub fn replay(&self, task_id: &str, after_seq: u64) -> Result<(), RegistryError> {
        let mut s = self.lock();
        let t = s
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| RegistryError::Unknown(task_id.into()))?;
        let last = t.buffer.last_seq();
        let acked = t.buffer.acked();
        let result = if after_seq > last {
            t.cursor = Some(last);
            Err(RegistryError::BeyondLast {
                task: task_id.into(),
                seq: after_seq,
                last,
            })
        } else if after_seq < acked {
            t.cursor = Some(acked);
            Err(RegistryError::AlreadyAcked {
                task: task_id.into(),
                acked,
            })
        } else {
            t.cursor = Some(after_seq);
            Ok(())
        };
        t.exit_sent = false;
        drop(s);
        self.wake.notify_one();
        result
    }

    /// Drops an ended task and its buffered output.
    pub fn forget(&self, task_id: &str) -> Result<(), RegistryError> {
        let mut s = self.lock();
        match s.tasks.get(task_id) {
            None => Err(RegistryError::Unknown(task_id.into())),
            Some(t) if t.exit.is_none() => Err(RegistryError::StillRunning(task_id.into())),
            Some(_) => {
                s.tasks.remove(task_id);
                Ok(())
            }
        }
    }

    /// The next messages to write on the current connection, in order.
    /// Empty when there is nothing to send.
    pub fn next_batch(&self) -> Vec<ExecMessage> {
        let mut s = self.lock();
        let mut out: Vec<ExecMessage> = s.queue.drain(..).collect();
        let mut budget = BATCH_BYTES;
        // Round robin: start after the task served last, so one task with
        // endless output cannot starve the others.
        let ids: Vec<String> = {
            let start = s.next_task.clone();
            let (after, before): (Vec<&String>, Vec<&String>) = s
                .tasks
                .keys()
                .partition(|k| start.as_ref().is_some_and(|st| *k > st));
            after.into_iter().chain(before).cloned().collect()
        };
        for id in ids {
            if budget == 0 {
                break;
            }
            let t = s.tasks.get_mut(&id).expect("id from the map");
            let Some(mut cursor) = t.cursor else { continue };
            let last = t.buffer.last_seq();
            // Chunks below the ack floor are gone; the peer has them.
            cursor = cursor.max(t.buffer.acked());
            while cursor < last && budget > 0 {
                match t.buffer.get(cursor + 1) {
                    Ok(Some((stream, bytes))) => {
                        budget = budget.saturating_sub(bytes.len());
                        cursor += 1;
                        out.push(ExecMessage::TaskOutput(TaskOutput {
                            task_id: id.clone(),
                            seq: cursor,
                            stream,
                            bytes,
                        }));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The spill file went away underneath us: say so on
                        // the task's own stream instead of stalling forever.
                        cursor += 1;
                        out.push(ExecMessage::TaskOutput(TaskOutput {
                            task_id: id.clone(),
                            seq: cursor,
                            stream: OutputStream::System,
                            bytes: format!("output chunk {cursor} could not be read back from the spill file: {e}\n").into_bytes(),
                        }));
                    }
                }
            }
            t.cursor = Some(cursor);
            if cursor >= last
                && !t.exit_sent
                && let Some(exit) = &t.exit
            {
                t.exit_sent = true;
                out.push(ExecMessage::TaskExited(exit.clone()));
            }
            s.next_task = Some(id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared::ipc::Outcome;

    use super::*;

    const ID: &str = "00000000-0000-4000-8000-000000000001";

    fn exit() -> TaskExit {
        TaskExit {
            task_id: ID.into(),
            last_seq: 0,
            outcome: Outcome::Success,
            exit_code: 0,
            duration: Duration::ZERO,
            error: None,
            result_json: None,
            dropped_bytes: 0,
        }
    }

    fn seqs(batch: &[ExecMessage]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match m {
                ExecMessage::TaskOutput(o) => format!("out{}", o.seq),
                ExecMessage::TaskExited(e) => format!("exit{}", e.last_seq),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn replays_exactly_what_was_not_stored_after_a_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new();
        let bounds = Bounds {
            memory: 1 << 20,
            spill: 1 << 20,
        };
        r.connect();
        let _rx = r.insert(ID, dir.path(), bounds, 4).unwrap();
        r.push_output(ID, OutputStream::Stdout, b"a".to_vec());
        r.push_output(ID, OutputStream::Stdout, b"b".to_vec());
        assert_eq!(seqs(&r.next_batch()), ["out1", "out2"]);
        r.ack(ID, 1).unwrap();
        r.disconnect();
        r.push_output(ID, OutputStream::Stderr, b"c".to_vec());
        r.finish(exit());
        let inv = r.connect();
        assert_eq!(inv.tasks.len(), 1);
        assert_eq!(inv.tasks[0].last_seq, 3);
        assert!(inv.tasks[0].exit.is_some());
        // Paused until the peer says what it has.
        assert!(r.next_batch().is_empty());
        r.replay(ID, 2).unwrap();
        assert_eq!(seqs(&r.next_batch()), ["out3", "exit3"]);
        assert!(r.next_batch().is_empty());
        assert_eq!(
            r.replay(ID, 0),
            Err(RegistryError::AlreadyAcked {
                task: ID.into(),
                acked: 1
            })
        );
        assert_eq!(seqs(&r.next_batch()), ["out2", "out3", "exit3"]);
        assert_eq!(r.forget(ID), Ok(()));
        assert_eq!(r.forget(ID), Err(RegistryError::Unknown(ID.into())));
    }

    #[test]
    fn enforces_the_limit_and_unique_ids() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new();
        let bounds = Bounds {
            memory: 10,
            spill: 10,
        };
        let _a = r.insert(ID, dir.path(), bounds, 1).unwrap();
        assert_eq!(
            r.insert(ID, dir.path(), bounds, 5).unwrap_err(),
            RegistryError::Duplicate(ID.into())
        );
        let other = "00000000-0000-4000-8000-000000000002";
        assert_eq!(
            r.insert(other, dir.path(), bounds, 1).unwrap_err(),
            RegistryError::Limit(1)
        );
        assert_eq!(r.forget(ID), Err(RegistryError::StillRunning(ID.into())));
        r.finish(exit());
        assert!(r.insert(other, dir.path(), bounds, 1).is_ok());
    }
}

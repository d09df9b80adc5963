//! The hub between the control plane and the executor: claimed tasks go to
//! the executor, their output and exits come back into each task's journal
//! and record on disk, and the per-task reporters deliver them
//! (ARCHITECTURE.md §4–§5). Terminal events are routed through the same loop
//! because they share the executor connection ([`crate::terminal_bridge`]).
//!
//! Everything runs on one task, so there is no lock ordering to get wrong;
//! the slow parts (HTTP delivery, control polling) run in their own tasks
//! and report back through the input channel.
//!
//! Durability rules:
//! - a task's directory, record and journal exist before `RunTask` is sent,
//!   and are synced right after it (see [`make_durable`] for why that order);
//! - output is appended and synced before `AckOutput` lets the executor
//!   drop it;
//! - the exit is stored before `ForgetTask`;
//! - after a restart of either process the executor's inventory decides:
//!   tasks it still has are replayed from the journal's last sequence
//!   number; tasks it no longer has are completed `failed` with the reason;
//! - except an `agent.update` handed to the root helper: its own restart of
//!   the units ends it, and the outcome the helper records decides
//!   ([`crate::self_update`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::api::task::{ClaimedTask, CompletionStatus, LogStream};
use shared::ipc::{
    ExecMessage, Inventory, NetMessage, Outcome, OutputStream, RunTask, TaskExit, TaskSpec,
};
use shared::timestamp::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, watch};
use tokio::task::AbortHandle;

use crate::api_client::ApiClient;
use crate::claim_loop::TaskSink;
use crate::control_watch::{self, ControlEvent};
use crate::exec_link::{ExecLink, LinkEvent};
use crate::log;
use crate::realtime_session::ServerEvent;
use crate::release_download::{self, ReleaseSource};
use crate::root_access::RootAccess;
use crate::self_update::{self, PendingUpdate, ProgressReporter, Settled};
use crate::state_dir::StateDir;
use crate::task_journal::TaskJournal;
use crate::task_report::{Delivery, ExitRecord, TaskRecord, TaskReporter, sync_new_task};
use crate::task_spec;
use crate::terminal_bridge::TerminalBridge;

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub state: StateDir,
    /// `task_timeout`: for tasks whose payload names none.
    pub default_timeout: Duration,
    /// Lines of one stream arriving within this window share a log entry.
    pub coalesce_window: Duration,
    /// How often a running task's control endpoint is polled.
    pub control_interval: Duration,
    /// `outbox_max_bytes`: undelivered output kept on disk at most.
    pub outbox_max_bytes: u64,
    /// `realtime_queue_size`: terminal events kept while the socket is down.
    pub terminal_queue: usize,
    /// The claim loop's task slots: tasks resumed from disk take theirs.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Self-updates: where releases come from and how to tell the outcome.
    pub updates: UpdateSettings,
}

/// What the dispatcher needs for `agent.update` tasks.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    /// Where releases are downloaded from; `Err` says why updates cannot
    /// work on this node (the tasks fail with it).
    pub source: Result<Arc<ReleaseSource>, String>,
    /// The version this process runs (what the control plane compares).
    pub own_version: String,
    /// The root helper's outcome file (`shared::release_files::UPDATE_RESULT`).
    pub outcome_file: PathBuf,
}

/// What `status` shows about tasks and terminals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchStatus {
    pub running_tasks: Vec<String>,
    pub undelivered_tasks: u64,
    pub undelivered_bytes: u64,
    pub open_terminals: u64,
}

/// Requests into the loop from the other tasks.
enum Input {
    /// Claimed, `started` in flight: set up its directory meanwhile.
    Prepare { task_id: String, task_type: String },
    /// `started` was refused: remove what `Prepare` set up.
    Abandon { task_id: String },
    Claimed {
        task: ClaimedTask,
        slot: OwnedSemaphorePermit,
    },
    Control {
        task_id: String,
        event: ControlEvent,
    },
    Delivered {
        task_id: String,
        result: std::io::Result<Delivery>,
    },
    /// An update's release is downloaded and verified, or why not (with
    /// the progress percentage reached).
    UpdatePrepared {
        task_id: String,
        result: Result<(), (u8, String)>,
    },
    /// A pending update's outcome is known.
    UpdateSettled {
        pending: PendingUpdate,
        settled: Settled,
    },
}

/// The claim loop's way in: claimed tasks go to the dispatcher.
#[derive(Clone)]
pub struct ClaimedTasks {
    tx: mpsc::Sender<Input>,
}

impl TaskSink for ClaimedTasks {
    async fn prepare(&self, task: &ClaimedTask) {
        // Best effort: if this does not get through, `start` sets up.
        let _ = self
            .tx
            .send(Input::Prepare {
                task_id: task.id.clone(),
                task_type: task.task_type.clone(),
            })
            .await;
    }

    async fn abandon(&self, task_id: &str) {
        let _ = self
            .tx
            .send(Input::Abandon {
                task_id: task_id.to_owned(),
            })
            .await;
    }

    async fn start(&self, task: ClaimedTask, slot: OwnedSemaphorePermit) {
        let id = task.id.clone();
        if self.tx.send(Input::Claimed { task, slot }).await.is_err() {
            log::error(format_args!(
                "task {id} was claimed while the agent is stopping; the control plane will time it out"
            ));
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// An update whose release is being downloaded; then handed over.
    Preparing(RunTask),
    /// Waiting for the executor to be reachable.
    Pending(RunTask),
    /// The executor has it (or had it before a restart of this process).
    Handed,
    /// The exit is stored; only delivery remains.
    Exited,
}

struct Task {
    dir: PathBuf,
    journal: Arc<Mutex<TaskJournal>>,
    wake: Arc<Notify>,
    phase: Phase,
    slot: Option<OwnedSemaphorePermit>,
    control: Option<AbortHandle>,
    reporter: Option<AbortHandle>,
    /// Delivery ended (completed accepted, or 404/409).
    delivered: bool,
    /// The control plane no longer wants anything from this task.
    gone_on_server: bool,
    /// An operator's cancel reason, for the completion's `error`.
    cancel_reason: Option<String>,
    /// Set for `agent.update` tasks.
    update: Option<UpdateTask>,
    /// The download of an update's release.
    preparing: Option<AbortHandle>,
}

/// An `agent.update` task's target.
struct UpdateTask {
    version: String,
    target_id: String,
    rollback: bool,
    progress: ProgressReporter,
}

impl UpdateTask {
    /// The completion's `result` once the helper has the update (§7.6).
    fn handoff(&self) -> serde_json::Map<String, serde_json::Value> {
        let h = shared::api::task::UpdateHandoff {
            status: "handoff".into(),
            target_id: self.target_id.clone(),
            target_version: self.version.clone(),
            rollback: self.rollback,
        };
        match serde_json::to_value(h) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

impl Task {
    fn new(
        dir: PathBuf,
        journal: TaskJournal,
        phase: Phase,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            dir,
            journal: Arc::new(Mutex::new(journal)),
            wake: Arc::new(Notify::new()),
            phase,
            slot,
            control: None,
            reporter: None,
            delivered: false,
            gone_on_server: false,
            cancel_reason: None,
            update: None,
            preparing: None,
        }
    }

    /// Changes the task's `task.json`.
    fn update_record(&self, change: impl FnOnce(&mut TaskRecord)) -> std::io::Result<()> {
        let mut r = TaskRecord::load(&self.dir)?
            .ok_or_else(|| std::io::Error::other("task.json is missing"))?;
        change(&mut r);
        r.save(&self.dir)
    }
}

/// The dispatcher's state; [`run`] drives it.
struct Dispatcher {
    s: DispatchSettings,
    client: ApiClient,
    link: ExecLink,
    link_up: bool,
    /// Why the executor connection last ended, for failed tasks' errors.
    last_down: Option<String>,
    root: Arc<Mutex<RootAccess>>,
    tasks: HashMap<String, Task>,
    terminals: TerminalBridge,
    input: mpsc::Sender<Input>,
    /// Journals written since the last sync, with the highest seq each.
    dirty: HashSet<String>,
    /// A pending update's outcome is being waited for.
    settling: bool,
    /// Directories set up while `started` was in flight, by task id.
    prepared: HashMap<String, (PathBuf, TaskJournal)>,
}

/// Starts a dispatcher; returns the claim loop's sink. Tasks left
/// unfinished by an earlier run are resumed from the state directory.
#[allow(clippy::too_many_arguments)]
pub fn start(
    s: DispatchSettings,
    client: ApiClient,
    link: ExecLink,
    link_events: mpsc::Receiver<LinkEvent>,
    root: Arc<Mutex<RootAccess>>,
    server_events: mpsc::Receiver<ServerEvent>,
    socket_out: mpsc::Sender<(String, serde_json::Value)>,
    socket_up: watch::Receiver<bool>,
    status: watch::Sender<DispatchStatus>,
    shutdown: watch::Receiver<bool>,
) -> (ClaimedTasks, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let mut d = Dispatcher {
        terminals: TerminalBridge::new(s.terminal_queue),
        s,
        client,
        link,
        link_up: false,
        last_down: None,
        root,
        tasks: HashMap::new(),
        input: tx.clone(),
        dirty: HashSet::new(),
        settling: false,
        prepared: HashMap::new(),
    };
    d.recover();
    d.settle_pending_update();
    let handle = tokio::spawn(d.run(
        rx,
        link_events,
        server_events,
        socket_out,
        socket_up,
        status,
        shutdown,
    ));
    (ClaimedTasks { tx }, handle)
}

/// Makes a newly claimed task's directory durable, on a blocking thread so
/// that the hand-over is not held up by it (three fsyncs, about 1 ms here,
/// more on a busy disk).
///
/// Why the hand-over need not wait (the rule is that the directory, record
/// and journal *exist* before `RunTask`):
/// - a crash of either process, with the machine still up: everything
///   written is in the page cache, so a restarted agent finds the record and
///   the journal and resumes as before — this is the case where the
///   executor keeps running the task, and the reason for the rule;
/// - a power loss or kernel crash before this finishes: the task's processes
///   die too. The agent may then come back without the task's directory and
///   the control plane ends the task by its own timeout, instead of getting
///   a `failed` completion. That window is this function's run time, right
///   after the hand-over;
/// - everything later is unchanged: output is acknowledged to the executor
///   only after the journal is synced, and the exit is stored with an
///   atomic, synced write.
fn make_durable(id: &str, dir: PathBuf) {
    let id = id.to_owned();
    tokio::spawn(async move {
        // Not even the blocking thread's start (after 10 s idle) goes
        // before the link writes `RunTask`.
        tokio::task::yield_now().await;
        let synced = tokio::task::spawn_blocking(move || {
            sync_new_task(&dir).map_err(|e| format!("{}: {e}", dir.display()))
        })
        .await;
        if let Ok(Err(e)) = synced {
            log::error(format_args!(
                "task {id}: making its directory durable failed ({e}); a power loss could lose the task's record; check the disk"
            ));
        }
    });
}

fn stream_of(s: OutputStream) -> LogStream {
    match s {
        OutputStream::Stdout => LogStream::Stdout,
        OutputStream::Stderr => LogStream::Stderr,
        OutputStream::System => LogStream::System,
    }
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut link_events: mpsc::Receiver<LinkEvent>,
        mut server_events: mpsc::Receiver<ServerEvent>,
        socket_out: mpsc::Sender<(String, serde_json::Value)>,
        mut socket_up: watch::Receiver<bool>,
        status: watch::Sender<DispatchStatus>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut stopping = false;
        loop {
            self.publish(&status);
            self.flush_terminal_events(&socket_out, *socket_up.borrow());
            if stopping && self.flushed() {
                return;
            }
            tokio::select! {
                Some(ev) = link_events.recv() => {
                    self.on_link(ev);
                    // Take everything already waiting, then sync once: one
                    // fsync per burst, not per chunk.
                    while let Ok(ev) = link_events.try_recv() {
                        self.on_link(ev);
                    }
                    self.sync_and_ack();
                }
                Some(input) = inputs.recv() => self.on_input(input),
                Some((name, payload)) = server_events.recv() => {
                    let up = self.link_up;
                    for m in self.terminals.from_server(&name, payload, up) {
                        self.link.send(m);
                    }
                }
                Ok(()) = socket_up.changed() => {}
                r = shutdown.changed(), if !stopping => {
                    if r.is_err() || *shutdown.borrow() {
                        stopping = true;
                    }
                }
            }
        }
    }

    /// True once every finished task's events are delivered: what SIGTERM
    /// waits for (running tasks belong to the executor and resume later).
    fn flushed(&self) -> bool {
        self.tasks
            .values()
            .all(|t| t.delivered || !matches!(t.phase, Phase::Exited))
    }

    fn publish(&self, status: &watch::Sender<DispatchStatus>) {
        let mut running: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| !matches!(t.phase, Phase::Exited))
            .map(|(id, _)| id.clone())
            .collect();
        running.sort();
        let next = DispatchStatus {
            running_tasks: running,
            undelivered_tasks: self.tasks.values().filter(|t| !t.delivered).count() as u64,
            undelivered_bytes: self.undelivered_bytes(),
            open_terminals: self.terminals.open_sessions() as u64,
        };
        status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    fn flush_terminal_events(
        &mut self,
        out: &mpsc::Sender<(String, serde_json::Value)>,
        socket_up: bool,
    ) {
        if !socket_up {
            return;
        }
        let events = self.terminals.take_outgoing();
        let mut rest = Vec::new();
        for e in events {
            if !rest.is_empty() {
                rest.push(e);
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(e)) = out.try_send(e) {
                rest.push(e);
            }
        }
        self.terminals.requeue_front(rest);
    }

    /// Output stored on disk that the control plane does not have yet: the
    /// outbox that `outbox_max_bytes` bounds.
    fn undelivered_bytes(&self) -> u64 {
        self.tasks
            .values()
            .filter(|t| !t.delivered)
            .map(|t| {
                let j = t.journal.lock().expect("journal lock");
                let (r, d) = (j.received(), j.delivered());
                (0..3).map(|i| r[i].saturating_sub(d[i])).sum::<u64>()
            })
            .sum()
    }

    // ---- tasks -------------------------------------------------------

    /// Loads tasks an earlier run left undelivered or running.
    fn recover(&mut self) {
        let dir = self.s.state.tasks();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            if shared::validate::uuid(&id).is_err() {
                continue;
            }
            let record = match TaskRecord::load(&path) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    log::error(format_args!(
                        "task {id}: {} is unreadable ({e}); its events cannot be delivered; remove the directory once inspected",
                        path.display()
                    ));
                    continue;
                }
            };
            if record.done() {
                continue;
            }
            let journal = match TaskJournal::open(&path) {
                Ok(j) => j,
                Err(e) => {
                    log::error(format_args!(
                        "task {id}: its output journal in {} cannot be opened: {e}",
                        path.display()
                    ));
                    continue;
                }
            };
            let phase = if record.exit.is_some() {
                Phase::Exited
            } else {
                Phase::Handed
            };
            log::info(format_args!(
                "task {id}: resuming delivery ({})",
                if record.exit.is_some() {
                    "finished, events not all delivered"
                } else {
                    "was running when the agent stopped"
                }
            ));
            let running = matches!(phase, Phase::Handed);
            // A task still running in the executor counts against the limit.
            let slot = running
                .then(|| self.s.slots.clone().try_acquire_owned().ok())
                .flatten();
            let mut task = Task::new(path, journal, phase, slot);
            if let Ok(Some(p)) = PendingUpdate::load(&self.s.state)
                && p.task_id == id
            {
                task.update = Some(UpdateTask {
                    progress: ProgressReporter::start(self.client.clone(), p.target_id.clone()),
                    version: p.version,
                    target_id: p.target_id,
                    rollback: p.rollback,
                });
            }
            self.tasks.insert(id.clone(), task);
            self.spawn_reporter(&id);
            if running {
                self.spawn_control(&id);
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Prepare { task_id, task_type } => self.prepare(task_id, task_type),
            Input::Abandon { task_id } => self.abandon(&task_id),
            Input::Claimed { task, slot } => self.claimed(task, slot),
            Input::Control { task_id, event } => self.control(&task_id, event),
            Input::Delivered { task_id, result } => self.delivered(&task_id, result),
            Input::UpdatePrepared { task_id, result } => self.update_prepared(&task_id, result),
            Input::UpdateSettled { pending, settled } => self.update_settled(pending, settled),
        }
    }

    fn claimed(&mut self, task: ClaimedTask, slot: OwnedSemaphorePermit) {
        let id = task.id.clone();
        if let Err(e) = shared::validate::uuid(&id) {
            log::error(format_args!(
                "claimed task id {id:?} is not a UUID ({e}); it cannot be stored and is not run"
            ));
            return;
        }
        if self.tasks.contains_key(&id) {
            log::warn(format_args!(
                "task {id} was claimed again while this agent still has it; the second claim is ignored"
            ));
            return;
        }
        let prepared = self.prepared.remove(&id);
        let (dir, journal) = match prepared.map_or_else(|| self.set_up(&id, &task.task_type), Ok) {
            Ok(set_up) => set_up,
            Err((dir, e)) => {
                // Without a place to store output the task must not run:
                // its output could not be delivered.
                log::error(format_args!(
                    "task {id} not run: its directory {} could not be set up: {e}; check that the state directory is writable",
                    dir.display()
                ));
                return;
            }
        };
        // `Exited` until the spec is known: a task that cannot run never runs.
        self.tasks.insert(
            id.clone(),
            Task::new(dir.clone(), journal, Phase::Exited, Some(slot)),
        );
        self.start_or_refuse(&task, &id);
        // After the hand-over: neither the fsyncs nor the reporter's start-up
        // (it reads files) should delay the task's process.
        make_durable(&id, dir);
        self.spawn_reporter(&id);
    }

    /// Writes a new task's record and opens its journal. Not synced: see
    /// [`make_durable`] for why that may wait until the task is handed over.
    fn set_up(
        &self,
        id: &str,
        task_type: &str,
    ) -> Result<(PathBuf, TaskJournal), (PathBuf, std::io::Error)> {
        let dir = self.s.state.task(id);
        let record = TaskRecord {
            task_id: id.to_owned(),
            task_type: task_type.to_owned(),
            exit: None,
            completed_sent: false,
            ended: None,
        };
        match record.create(&dir).and_then(|()| TaskJournal::open(&dir)) {
            Ok(j) => Ok((dir, j)),
            Err(e) => Err((dir, e)),
        }
    }

    /// Sets up a task's directory while its `started` is in flight, so the
    /// hand-over after it does not wait for the disk. Only a directory that
    /// does not exist yet: one that does belongs to an earlier claim, and
    /// [`claimed`](Self::claimed) deals with it as before. If this process
    /// dies before `started` is answered, the next one finds the directory
    /// and, as for any task its executor does not know, completes it
    /// `failed`; the control plane refuses that (409) if `started` never
    /// went through, and the task is claimed again after its lease.
    fn prepare(&mut self, id: String, task_type: String) {
        if shared::validate::uuid(&id).is_err()
            || self.tasks.contains_key(&id)
            || self.prepared.contains_key(&id)
            || self.s.state.task(&id).exists()
        {
            return;
        }
        match self.set_up(&id, &task_type) {
            Ok(set_up) => {
                self.prepared.insert(id, set_up);
            }
            // `claimed` tries again and reports it if it still fails.
            Err((dir, e)) => log::debug(format_args!(
                "task {id}: setting up {} ahead of `started` failed: {e}",
                dir.display()
            )),
        }
    }

    /// Removes a prepared directory: the task's `started` was refused and
    /// it will not run.
    fn abandon(&mut self, id: &str) {
        if let Some((dir, journal)) = self.prepared.remove(id) {
            drop(journal);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                log::warn(format_args!(
                    "task {id} was not run, but its directory {} could not be removed: {e}",
                    dir.display()
                ));
            }
        }
    }

    /// Hands a newly claimed task to the executor, or ends it when it
    /// cannot run.
    fn start_or_refuse(&mut self, task: &ClaimedTask, id: &str) {
        let id = id.to_owned();
        match task_spec::spec_for(task, self.s.default_timeout) {
            Err(not_runnable) => {
                log::warn(format_args!(
                    "task {id} ({}) not run: {not_runnable}",
                    task.task_type
                ));
                self.finish_locally(&id, CompletionStatus::Failed, not_runnable.0);
            }
            Ok((spec, timeout)) => {
                let run = RunTask {
                    task_id: id.clone(),
                    spec,
                    timeout,
                    root_profile: self.root.lock().expect("root lock").applied_profile(),
                };
                if let TaskSpec::ApplyUpdate {
                    version,
                    target_id,
                    rollback,
                } = &run.spec
                {
                    log::info(format_args!(
                        "task {id} ({}) claimed: downloading release {version} first",
                        task.task_type
                    ));
                    let update = UpdateTask {
                        progress: ProgressReporter::start(self.client.clone(), target_id.clone()),
                        version: version.clone(),
                        target_id: target_id.clone(),
                        rollback: *rollback,
                    };
                    self.prepare_update(&id, run, update);
                    self.spawn_control(&id);
                    return;
                }
                let t = self.tasks.get_mut(&id).expect("inserted above");
                if self.link_up {
                    self.link.send(NetMessage::RunTask(run));
                    t.phase = Phase::Handed;
                    log::info(format_args!(
                        "task {id} ({}) claimed, timeout {}s: handed to the executor",
                        task.task_type,
                        timeout.as_secs()
                    ));
                } else {
                    log::warn(format_args!(
                        "task {id} ({}) claimed, timeout {}s; it waits for the executor: {}",
                        task.task_type,
                        timeout.as_secs(),
                        self.last_down.as_deref().unwrap_or("not connected yet")
                    ));
                    t.phase = Phase::Pending(run);
                }
                self.spawn_control(&id);
            }
        }
    }

    fn spawn_reporter(&mut self, id: &str) {
        self.spawn_reporter_after(id, Duration::ZERO);
    }

    /// Starts delivering a task's events (again, after `delay`).
    fn spawn_reporter_after(&mut self, id: &str, delay: Duration) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let dir = t.dir.clone();
        let journal = t.journal.clone();
        let wake = t.wake.clone();
        let client = self.client.clone();
        let window = self.s.coalesce_window;
        let input = self.input.clone();
        let task_id = id.to_owned();
        let handle = tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = match TaskReporter::new(&dir, client, journal, window) {
                Ok(mut r) => r.run(&wake).await,
                Err(e) => Err(e),
            };
            let _ = input.send(Input::Delivered { task_id, result }).await;
        });
        t.reporter = Some(handle.abort_handle());
    }

    fn spawn_control(&mut self, id: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let client = self.client.clone();
        let interval = self.s.control_interval;
        let input = self.input.clone();
        let task_id = id.to_owned();
        let handle = tokio::spawn(async move {
            let event = control_watch::watch(&client, &task_id, interval).await;
            let _ = input.send(Input::Control { task_id, event }).await;
        });
        t.control = Some(handle.abort_handle());
    }

    /// Ends a task that the executor does not (or no longer) run: a note in
    /// its output and its exit stored for delivery.
    fn finish_locally(&mut self, id: &str, status: CompletionStatus, error: String) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        {
            let mut j = t.journal.lock().expect("journal lock");
            let seq = j.last_seq() + 1;
            let line = format!("{error}\n");
            if let Err(e) = j
                .append(LogStream::System, seq, line.as_bytes())
                .and_then(|()| j.sync().map(|_| ()))
            {
                log::error(format_args!("task {id}: storing a note failed: {e}"));
            }
        }
        let exit = ExitRecord {
            status,
            exit_code: -1,
            duration_ms: 0,
            error: Some(error),
            result: None,
            finished_at: Timestamp::now(),
        };
        self.store_exit(id, exit);
    }

    /// Stores a task's exit and releases what it held.
    fn store_exit(&mut self, id: &str, exit: ExitRecord) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if let Err(e) = t.update_record(|r| r.exit = Some(exit.clone())) {
            log::error(format_args!(
                "task {id}: storing its exit in {} failed: {e}; the completion is sent once this is fixed and the agent restarts",
                t.dir.display()
            ));
        }
        log::info(format_args!(
            "task {id} ended: {:?}, exit code {}{}",
            exit.status,
            exit.exit_code,
            exit.error
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default()
        ));
        t.phase = Phase::Exited;
        t.slot = None;
        if let Some(c) = t.control.take() {
            c.abort();
        }
        t.wake.notify_one();
        if t.delivered {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(t) = self.tasks.remove(id) {
            if let Some(c) = t.control {
                c.abort();
            }
            if let Some(r) = t.reporter {
                r.abort();
            }
        }
        self.dirty.remove(id);
    }

    fn control(&mut self, id: &str, event: ControlEvent) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.control = None;
        match event {
            ControlEvent::CancelRequested { reason } => {
                let reason = reason.unwrap_or_else(|| "task cancelled by control request".into());
                log::info(format_args!("task {id}: cancel requested: {reason}"));
                t.cancel_reason = Some(reason.clone());
                match t.phase {
                    Phase::Preparing(_) => {
                        self.stop_preparing(id, &format!("update cancelled: {reason}"));
                        self.finish_locally(id, CompletionStatus::Cancelled, reason);
                    }
                    Phase::Pending(_) => {
                        self.finish_locally(id, CompletionStatus::Cancelled, reason);
                    }
                    Phase::Handed => self.link.send(NetMessage::CancelTask {
                        task_id: id.to_owned(),
                        reason,
                    }),
                    Phase::Exited => {}
                }
            }
            ControlEvent::GoneOnServer { why } => {
                log::warn(format_args!(
                    "task {id}: stopping it without a completion: {why}"
                ));
                t.gone_on_server = true;
                if let Err(e) = t.update_record(|r| r.ended = Some(why.clone())) {
                    log::error(format_args!("task {id}: recording its end failed: {e}"));
                }
                if let Some(r) = t.reporter.take() {
                    r.abort();
                }
                t.delivered = true;
                match t.phase {
                    Phase::Preparing(_) | Phase::Pending(_) => {
                        self.stop_preparing(id, &why);
                        if let Some(t) = self.tasks.get_mut(id) {
                            t.phase = Phase::Exited;
                            t.slot = None;
                        }
                        self.remove(id);
                    }
                    Phase::Handed => self.link.send(NetMessage::CancelTask {
                        task_id: id.to_owned(),
                        reason: why,
                    }),
                    Phase::Exited => self.remove(id),
                }
            }
        }
    }

    fn delivered(&mut self, id: &str, result: std::io::Result<Delivery>) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.reporter = None;
        match result {
            Ok(Delivery::Completed) => {
                t.delivered = true;
                if matches!(t.phase, Phase::Exited) {
                    self.remove(id);
                }
            }
            Ok(Delivery::Ended(why)) => {
                log::warn(format_args!(
                    "task {id}: the control plane ended its reporting: {why}"
                ));
                t.delivered = true;
                t.gone_on_server = true;
                match t.phase {
                    // Nobody wants its results any more: stop it.
                    Phase::Handed => self.link.send(NetMessage::CancelTask {
                        task_id: id.to_owned(),
                        reason: why,
                    }),
                    Phase::Preparing(_) | Phase::Pending(_) => {
                        self.stop_preparing(id, &why);
                        if let Some(t) = self.tasks.get_mut(id) {
                            t.phase = Phase::Exited;
                        }
                        self.remove(id);
                    }
                    Phase::Exited => self.remove(id),
                }
            }
            Err(e) => {
                log::error(format_args!(
                    "task {id}: delivery stopped on a local storage error: {e}; retrying in 30s"
                ));
                self.spawn_reporter_after(id, Duration::from_secs(30));
            }
        }
    }

    // ---- executor ----------------------------------------------------

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up { inventory, .. } => self.link_up(inventory),
            LinkEvent::Down {
                reason,
                executor_exited,
            } => {
                self.link_up = false;
                if executor_exited {
                    // Its tasks and shells died with it.
                    let ids: Vec<String> = self
                        .tasks
                        .iter()
                        .filter(|(_, t)| matches!(t.phase, Phase::Handed))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in ids {
                        self.executor_lost(&id, &reason);
                    }
                    self.terminals.executor_exited();
                }
                self.last_down = Some(reason);
            }
            LinkEvent::Message(m) => self.on_message(m),
        }
    }

    fn executor_lost(&mut self, id: &str, why: &str) {
        let t = self.tasks.get(id);
        if t.is_some_and(|t| t.update.is_some())
            && PendingUpdate::load(&self.s.state)
                .ok()
                .flatten()
                .is_some_and(|p| p.task_id == id)
        {
            // The helper's switch restarts the executor: expected, and the
            // recorded outcome, not the lost connection, decides the task.
            log::info(format_args!(
                "task {id}: the executor went away during the update ({why}); waiting for the update's outcome"
            ));
            self.settle_pending_update();
            return;
        }
        if t.is_some_and(|t| t.gone_on_server) {
            let _ = self.tasks.get_mut(id).map(|t| t.phase = Phase::Exited);
            self.remove(id);
            return;
        }
        self.finish_locally(
            id,
            CompletionStatus::Failed,
            format!(
                "the task was lost because the agent's executor stopped while it ran ({why}); output up to that point was kept and delivered"
            ),
        );
    }

    fn link_up(&mut self, inventory: Inventory) {
        self.link_up = true;
        let why = self
            .last_down
            .clone()
            .unwrap_or_else(|| "the executor restarted".into());
        let known: HashMap<&str, &shared::ipc::TaskState> = inventory
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t))
            .collect();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            let t = self.tasks.get_mut(&id).expect("listed above");
            match &t.phase {
                Phase::Pending(_) => {
                    let Phase::Pending(run) = std::mem::replace(&mut t.phase, Phase::Handed) else {
                        unreachable!("matched above")
                    };
                    self.link.send(NetMessage::RunTask(run));
                }
                Phase::Handed if known.contains_key(id.as_str()) => {
                    let after_seq = t.journal.lock().expect("journal lock").last_seq();
                    self.link.send(NetMessage::Replay {
                        task_id: id.clone(),
                        after_seq,
                    });
                }
                Phase::Handed => self.executor_lost(&id, &why),
                Phase::Preparing(_) | Phase::Exited => {}
            }
        }
        for state in &inventory.tasks {
            let id = &state.task_id;
            match self.tasks.get(id) {
                Some(t) if !matches!(t.phase, Phase::Exited) => {}
                // Its exit is stored already (or delivered): the executor may forget it.
                Some(_) => self.link.send(NetMessage::ForgetTask {
                    task_id: id.clone(),
                }),
                None => {
                    let stored = TaskRecord::load(&self.s.state.task(id))
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.exit.is_some() || r.done());
                    if stored {
                        self.link.send(NetMessage::ForgetTask {
                            task_id: id.clone(),
                        });
                    } else if state.exit.is_none() {
                        log::warn(format_args!(
                            "the executor runs task {id}, which this agent has no record of; stopping it"
                        ));
                        self.link.send(NetMessage::CancelTask {
                            task_id: id.clone(),
                            reason: "the network process has no record of this task".into(),
                        });
                    } else {
                        self.link.send(NetMessage::ForgetTask {
                            task_id: id.clone(),
                        });
                    }
                }
            }
        }
        self.terminals.executor_up(&inventory.terminals);
    }

    fn on_message(&mut self, m: ExecMessage) {
        match m {
            ExecMessage::TaskOutput(out) => {
                let undelivered = self.undelivered_bytes();
                let Some(t) = self.tasks.get_mut(&out.task_id) else {
                    log::debug(format_args!(
                        "output for unknown task {} ignored",
                        out.task_id
                    ));
                    return;
                };
                let mut j = t.journal.lock().expect("journal lock");
                if out.seq <= j.last_seq() {
                    return; // already stored (a replay overlap)
                }
                let len = out.bytes.len() as u64;
                let stream = stream_of(out.stream);
                let r = if undelivered + len > self.s.outbox_max_bytes {
                    j.append_dropped(stream, out.seq, len as u32)
                } else {
                    j.append(stream, out.seq, &out.bytes)
                };
                drop(j);
                match r {
                    Ok(()) => {
                        self.dirty.insert(out.task_id);
                    }
                    Err(e) => log::error(format_args!(
                        "task {}: storing output failed: {e}; it stays with the executor until storage works",
                        out.task_id
                    )),
                }
            }
            ExecMessage::TaskExited(exit) => self.exited(exit),
            ExecMessage::TaskStarted { task_id, pid } => {
                log::debug(format_args!("task {task_id} started as pid {pid}"));
            }
            ExecMessage::Refused { request, reason } => {
                log::warn(format_args!("the executor refused {request}: {reason}"));
                if let Some(id) = request.strip_prefix("RunTask ")
                    && self
                        .tasks
                        .get(id)
                        .is_some_and(|t| matches!(t.phase, Phase::Handed))
                {
                    let id = id.to_owned();
                    self.finish_locally(
                        &id,
                        CompletionStatus::Failed,
                        format!("the executor refused the task: {reason}"),
                    );
                }
            }
            ExecMessage::TerminalOpened {
                session_id,
                cols,
                rows,
                mode,
            } => {
                if let Some(note) = self.terminals.opened(&session_id, cols, rows, mode) {
                    log::warn(note);
                }
            }
            ExecMessage::TerminalOutput {
                session_id,
                seq,
                bytes,
            } => {
                if self.terminals.output(&session_id, &bytes) {
                    self.link.send(NetMessage::TerminalAck { session_id, seq });
                } else {
                    self.link.send(NetMessage::TerminalClose {
                        session_id,
                        reason: Some("the agent has no record of this session".into()),
                    });
                }
            }
            ExecMessage::TerminalExited {
                session_id,
                exit_code,
                reason,
            } => self
                .terminals
                .shell_exited(&session_id, exit_code, reason.as_deref()),
            ExecMessage::TerminalError {
                session_id,
                message,
            } => {
                for m in self.terminals.executor_error(&session_id, &message) {
                    self.link.send(m);
                }
            }
            ExecMessage::Hello(_) | ExecMessage::Inventory(_) => {
                log::warn("the executor repeated its handshake mid-session; ignored");
            }
        }
    }

    /// Makes stored output durable and tells the executor it may drop it.
    fn sync_and_ack(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let mut j = t.journal.lock().expect("journal lock");
            match j.sync() {
                Ok(_) => {
                    let seq = j.last_seq();
                    drop(j);
                    self.link.send(NetMessage::AckOutput { task_id: id, seq });
                    t.wake.notify_one();
                }
                Err(e) => log::error(format_args!(
                    "task {id}: syncing its journal failed: {e}; the executor keeps the output"
                )),
            }
        }
    }

    fn exited(&mut self, exit: TaskExit) {
        let id = exit.task_id.clone();
        // Output before the exit must be durable before the exit is stored.
        self.sync_and_ack();
        let Some(t) = self.tasks.get(&id) else {
            self.link.send(NetMessage::ForgetTask { task_id: id });
            return;
        };
        if matches!(t.phase, Phase::Exited) || t.gone_on_server {
            let gone = t.gone_on_server;
            self.link.send(NetMessage::ForgetTask {
                task_id: id.clone(),
            });
            if gone {
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.phase = Phase::Exited;
                }
                self.remove(&id);
            }
            return;
        }
        let stored_seq = t.journal.lock().expect("journal lock").last_seq();
        if stored_seq < exit.last_seq {
            // The executor sends every chunk before the exit; a gap means
            // the connection dropped in between. Ask again; it resends the exit.
            self.link.send(NetMessage::Replay {
                task_id: id,
                after_seq: stored_seq,
            });
            return;
        }
        let dropped = exit.dropped_bytes + t.journal.lock().expect("journal lock").dropped();
        let status = match exit.outcome {
            Outcome::Success => CompletionStatus::Success,
            Outcome::Failed => CompletionStatus::Failed,
            Outcome::Cancelled => CompletionStatus::Cancelled,
            Outcome::TimedOut => CompletionStatus::Timeout,
        };
        let mut error = match (exit.outcome, &t.cancel_reason) {
            (Outcome::Cancelled, Some(reason)) => Some(reason.clone()),
            _ => exit.error.clone(),
        };
        if dropped > 0 {
            let note = format!(
                "{dropped} bytes of output were dropped because a storage bound was reached (outbox_max_bytes); see `noderax-agent task-output {id}` for what was kept"
            );
            error = Some(match error {
                Some(e) => format!("{e}; {note}"),
                None => note,
            });
        }
        let result = match exit
            .result_json
            .as_deref()
            .map(serde_json::from_str::<serde_json::Value>)
        {
            None => None,
            Some(Ok(serde_json::Value::Object(m))) => Some(m),
            Some(_) => {
                error.get_or_insert_with(|| "the executor produced an unreadable result".into());
                None
            }
        };
        if let Some(u) = &t.update {
            if status == CompletionStatus::Success {
                u.progress.report(self_update::step::restarting(&u.version));
            } else {
                let why = error
                    .clone()
                    .unwrap_or_else(|| format!("the root helper did not install {}", u.version));
                u.progress.report(self_update::step::failed(70, &why));
                PendingUpdate::clear(&self.s.state, &u.version);
            }
        }
        let record = ExitRecord {
            status,
            exit_code: exit.exit_code,
            duration_ms: exit.duration.as_millis() as u64,
            error,
            result,
            finished_at: Timestamp::now(),
        };
        self.store_exit(&id, record);
        self.link.send(NetMessage::ForgetTask { task_id: id });
    }

    // ---- self-update -------------------------------------------------

    /// Downloads and verifies an update's release in the background; the
    /// task is handed to the executor once that is done.
    fn prepare_update(&mut self, id: &str, run: RunTask, update: UpdateTask) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let source = self.s.updates.source.clone();
        let staging = self.s.state.updates();
        let version = update.version.clone();
        let progress = update.progress.clone();
        let input = self.input.clone();
        let task_id = id.to_owned();
        let handle = tokio::spawn(async move {
            let result = async {
                let source = source.map_err(|why| (0, why))?;
                let arch = shared::release_files::host_arch().ok_or_else(|| {
                    (
                        0,
                        format!(
                            "no agent releases exist for the {} architecture",
                            std::env::consts::ARCH
                        ),
                    )
                })?;
                let mut reached = 0;
                let staged =
                    release_download::stage(&source, &version, arch, &staging, |s, p, m| {
                        reached = p;
                        progress.report((s, p, m));
                    })
                    .await;
                staged.map(|_| ()).map_err(|e| (reached, e.to_string()))
            }
            .await;
            let _ = input.send(Input::UpdatePrepared { task_id, result }).await;
        });
        t.preparing = Some(handle.abort_handle());
        t.update = Some(update);
        t.phase = Phase::Preparing(run);
    }

    /// Stops an update's download (the task is being ended for `why`).
    fn stop_preparing(&mut self, id: &str, why: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if let Some(h) = t.preparing.take() {
            h.abort();
        }
        if let (Phase::Preparing(_), Some(u)) = (&t.phase, &t.update) {
            u.progress.report(self_update::step::failed(20, why));
            let version = u.version.clone();
            let _ = std::fs::remove_dir_all(self.s.state.updates().join(version));
        }
    }

    fn update_prepared(&mut self, id: &str, result: Result<(), (u8, String)>) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        t.preparing = None;
        if !matches!(t.phase, Phase::Preparing(_)) {
            return; // ended meanwhile
        }
        let Some(u) = &t.update else {
            return;
        };
        let recorded = result.and_then(|()| {
            let pending = PendingUpdate {
                task_id: id.to_owned(),
                target_id: u.target_id.clone(),
                version: u.version.clone(),
                rollback: u.rollback,
                from_version: self.s.updates.own_version.clone(),
                since: Timestamp::now(),
            };
            pending.save(&self.s.state).map_err(|e| {
                (
                    45,
                    format!("the pending update could not be recorded ({e}); check that the state directory is writable"),
                )
            })
        });
        if let Err((percent, why)) = recorded {
            u.progress.report(self_update::step::failed(percent, &why));
            let _ = std::fs::remove_dir_all(self.s.state.updates().join(&u.version));
            log::warn(format_args!("task {id} (agent.update) failed: {why}"));
            self.finish_locally(id, CompletionStatus::Failed, why);
            return;
        }
        u.progress.report(self_update::step::installing(&u.version));
        let Phase::Preparing(run) = std::mem::replace(&mut t.phase, Phase::Handed) else {
            unreachable!("matched above")
        };
        if self.link_up {
            self.link.send(NetMessage::RunTask(run));
        } else {
            log::warn(format_args!(
                "task {id} waits for the executor: {}",
                self.last_down.as_deref().unwrap_or("not connected yet")
            ));
            t.phase = Phase::Pending(run);
        }
    }

    /// Waits in the background for the outcome of an update this process
    /// (or the one before it) handed to the root helper.
    fn settle_pending_update(&mut self) {
        if self.settling {
            return;
        }
        let pending = match PendingUpdate::load(&self.s.state) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                log::error(format_args!(
                    "{e}; the update it recorded cannot be settled; remove the file once inspected"
                ));
                return;
            }
        };
        self.settling = true;
        let state = self.s.state.clone();
        let outcome_file = self.s.updates.outcome_file.clone();
        let own = self.s.updates.own_version.clone();
        let input = self.input.clone();
        tokio::spawn(async move {
            let settled = self_update::settle(&state, &outcome_file, &own, &pending).await;
            if let Some(settled) = settled {
                let _ = input.send(Input::UpdateSettled { pending, settled }).await;
            }
        });
    }

    fn update_settled(&mut self, pending: PendingUpdate, settled: Settled) {
        self.settling = false;
        let progress = match self
            .tasks
            .get(&pending.task_id)
            .and_then(|t| t.update.as_ref())
        {
            Some(u) => u.progress.clone(),
            None => ProgressReporter::start(self.client.clone(), pending.target_id.clone()),
        };
        let (report, failure) = match &settled {
            Settled::Running => (
                self_update::step::waiting_for_reconnect(&pending.version),
                None,
            ),
            Settled::InstalledNotRunning(why) => {
                (self_update::step::installed_not_running(why), None)
            }
            Settled::Failed(why) => (self_update::step::failed(90, why), Some(why.clone())),
        };
        log::info(format_args!(
            "update to {} (task {}) settled: {settled:?}",
            pending.version, pending.task_id
        ));
        progress.report(report);
        PendingUpdate::clear(&self.s.state, &pending.version);
        let id = pending.task_id;
        let Some(t) = self.tasks.get(&id) else {
            return;
        };
        if matches!(t.phase, Phase::Exited) {
            return; // its hand-off was reported before the restart
        }
        match failure {
            Some(why) => self.finish_locally(&id, CompletionStatus::Failed, why),
            None => {
                let result = t.update.as_ref().map(UpdateTask::handoff);
                let exit = ExitRecord {
                    status: CompletionStatus::Success,
                    exit_code: 0,
                    duration_ms: 0,
                    error: None,
                    result,
                    finished_at: Timestamp::now(),
                };
                self.store_exit(&id, exit);
            }
        }
    }
}

//! Delivers one task's events to the control plane from what is stored on
//! disk (ARCHITECTURE.md §5): log entries in the order produced, one request
//! in flight, then the completion — resuming after a restart exactly where
//! the control plane's acknowledgements left off.
//!
//! Policy per request: 2xx advances the persisted position; 404 and 409 are
//! definitive (the task is gone, finished elsewhere or not running) and end
//! the task's stream; network errors, 429 and 5xx are retried with back-off
//! — for `completed`, for as long as it takes. A log line retried after an
//! ambiguous failure (the request may have been stored before the answer
//! was lost) can appear twice; losing it is the worse outcome.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use shared::api::task::{CompletionStatus, LogStream, TaskCompleted, TaskLog};
use shared::timestamp::Timestamp;
use tokio::sync::Notify;

use crate::api_client::{ApiClient, CallError};
use crate::backoff::Backoff;
use crate::log_entries::{Entry, EntryBuilder};
use crate::output_clip::Clipper;
use crate::task_journal::{JournalReader, Positions, TaskJournal};

const RECORD: &str = "task.json";
/// Where [`TaskRecord::create`] writes before renaming to [`RECORD`].
const RECORD_NEW: &str = ".task.json.new";
/// Entries built ahead of sending, at most (about 320 kB of text).
const FEED_BATCH_ENTRIES: usize = 64;
/// How often delivered positions are made durable while logs flow.
const DELIVERED_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `error` the API accepts (§6.6).
const MAX_ERROR_CHARS: usize = shared::api::task::MAX_COMPLETED_ERROR_CHARS;

/// How a task ended, as the executor reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: CompletionStatus,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// A JSON object for `result`.
    pub result: Option<serde_json::Map<String, serde_json::Value>>,
    pub finished_at: Timestamp,
}

/// A task's delivery state, kept in `task.json` beside its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub task_type: String,
    pub exit: Option<ExitRecord>,
    pub completed_sent: bool,
    /// Why delivery stopped early (a definitive 404/409), if it did.
    pub ended: Option<String>,
}

impl TaskRecord {
    pub fn load(dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(dir.join(RECORD)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces `task.json` atomically and durably (fsync of the file and
    /// the directory).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        shared::atomic_file::write(&dir.join(RECORD), &text, 0o600)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Writes the record of a newly claimed task without waiting for the
    /// disk: complete or absent after a crash of this process (written
    /// beside, then renamed), in the page cache until [`sync_new_task`]
    /// makes it durable. Creates `dir` (and `tasks/`) as needed.
    pub fn create(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::create_dir_all(dir)?;
        let text = serde_json::to_vec_pretty(self).expect("serializable");
        let tmp = dir.join(RECORD_NEW);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(&text)?;
        std::fs::rename(&tmp, dir.join(RECORD))
    }

    /// Nothing left to send.
    pub fn done(&self) -> bool {
        self.completed_sent || self.ended.is_some()
    }
}

/// Makes a task directory set up by [`TaskRecord::create`] and
/// [`TaskJournal::open`] durable: the record's content, the directory
/// entries of the record and the journal files, and the task directory's
/// own entry in `tasks/`. One fsync per directory covers every file
/// created in it, so this is three fsyncs however many files there are.
pub fn sync_new_task(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir.join(RECORD))?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// How delivery finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The completion was accepted.
    Completed,
    /// The control plane answered 404/409: the task is not ours to report any more.
    Ended(String),
}

/// Delivers one task. Output keeps arriving in the shared journal while it
/// runs; `wake` is notified whenever something new was stored.
pub struct TaskReporter {
    dir: PathBuf,
    client: ApiClient,
    journal: Arc<Mutex<TaskJournal>>,
    builder: EntryBuilder,
    reader: JournalReader,
    delivered: Positions,
    finished_builder: bool,
    backoff: Backoff,
    /// When the delivered positions were last synced.
    last_sync: Instant,
}

impl TaskReporter {
    /// Starts (or resumes) delivery of the task stored in `dir`.
    pub fn new(
        dir: &Path,
        client: ApiClient,
        journal: Arc<Mutex<TaskJournal>>,
        window: Duration,
    ) -> std::io::Result<Self> {
        let (delivered, reader) = {
            let j = journal.lock().expect("journal lock");
            (j.delivered(), j.reader(j.delivered())?)
        };
        Ok(Self {
            dir: dir.to_owned(),
            client,
            journal,
            builder: EntryBuilder::new(window, delivered),
            reader,
            delivered,
            finished_builder: false,
            last_sync: Instant::now(),
            // Capped at 30 s: after an outage delivery resumes within half a minute.
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        })
    }

    fn record(&self) -> std::io::Result<TaskRecord> {
        TaskRecord::load(&self.dir)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "task.json is missing")
        })
    }

    /// Delivers until the completion is accepted or the control plane ends
    /// the task. Returns early only on a local storage error.
    pub async fn run(&mut self, wake: &Notify) -> std::io::Result<Delivery> {
        let mut record = self.record()?;
        if let Some(reason) = &record.ended {
            return Ok(Delivery::Ended(reason.clone()));
        }
        if record.completed_sent {
            return Ok(Delivery::Completed);
        }
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut exhausted = self.feed()?;
            if record.exit.is_none() {
                // Re-read: the exit may have been stored since.
                record = self.record()?;
            }
            let now = Instant::now();
            if record.exit.is_some() && !self.finished_builder {
                // The exit is stored after all output: read to the end first.
                exhausted = self.feed()?;
                if exhausted {
                    self.builder.finish(now);
                    self.finished_builder = true;
                }
            }
            self.builder.tick(now);
            while let Some(entry) = self.builder.pop() {
                if let Some(reason) = self.send_log(&record, entry).await? {
                    return self.end(record, reason);
                }
            }
            if let Some(exit) = record.exit.clone().filter(|_| self.finished_builder) {
                self.journal
                    .lock()
                    .expect("journal lock")
                    .sync_delivered()?;
                return match self.send_completed(&record, &exit).await? {
                    None => {
                        record.completed_sent = true;
                        record.save(&self.dir)?;
                        Ok(Delivery::Completed)
                    }
                    Some(reason) => self.end(record, reason),
                };
            }
            if !exhausted {
                continue; // more stored output than one batch: keep going
            }
            let due = self.builder.due();
            tokio::select! {
                _ = notified => {}
                _ = async {
                    match due {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    fn end(&self, mut record: TaskRecord, reason: String) -> std::io::Result<Delivery> {
        record.ended = Some(reason.clone());
        record.save(&self.dir)?;
        Ok(Delivery::Ended(reason))
    }

    /// Moves newly stored output into the entry builder, a batch at a
    /// time so a large backlog is not held in memory as entries. Returns
    /// whether everything stored so far was read.
    fn feed(&mut self) -> std::io::Result<bool> {
        let now = Instant::now();
        let journal = self.journal.lock().expect("journal lock");
        while self.builder.ready_len() < FEED_BATCH_ENTRIES {
            match self.reader.next_chunk(&journal)? {
                Some((stream, bytes)) => self.builder.push(stream, &bytes, now),
                None => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Sends one entry, retrying transient failures. `Some(reason)` when the
    /// control plane ended the task's stream.
    async fn send_log(
        &mut self,
        record: &TaskRecord,
        entry: Entry,
    ) -> std::io::Result<Option<String>> {
        let end = entry.end;
        let body = TaskLog {
            task_id: record.task_id.clone(),
            stream: entry.stream,
            line: entry.line,
            timestamp: Timestamp::now(),
        };
        let route = shared::api::route::task(&record.task_id, "logs");
        loop {
            // The answer echoes the stored row, line included; only its
            // status matters, so the body is checked as JSON but not kept.
            match verdict(self.client.post::<_, IgnoredAny>(&route, &body).await) {
                // A refused entry would be refused forever: step over it
                // (it stays in the journal and in `task-output`).
                Verdict::Delivered | Verdict::Refused(_) => {
                    self.backoff.reset();
                    let i = match body.stream {
                        LogStream::Stdout => 0,
                        LogStream::Stderr => 1,
                        LogStream::System => 2,
                    };
                    self.delivered[i] = self.delivered[i].max(end);
                    let mut j = self.journal.lock().expect("journal lock");
                    j.record_delivered(self.delivered)?;
                    if self.last_sync.elapsed() >= DELIVERED_SYNC_INTERVAL {
                        j.sync_delivered()?;
                        self.last_sync = Instant::now();
                    }
                    return Ok(None);
                }
                Verdict::End(reason) => return Ok(Some(reason)),
                Verdict::Retry(after) => tokio::time::sleep(self.backoff.next_delay(after)).await,
            }
        }
    }

    async fn send_completed(
        &mut self,
        record: &TaskRecord,
        exit: &ExitRecord,
    ) -> std::io::Result<Option<String>> {
        let (output, dropped) = self.completion_output(&record.task_id)?;
        let mut error = exit.error.clone().unwrap_or_default();
        if dropped > 0 {
            if !error.is_empty() {
                error.push_str("; ");
            }
            error.push_str(&format!(
                "{dropped} bytes of output were dropped on the node because its output store was full"
            ));
        }
        let body = TaskCompleted {
            task_id: record.task_id.clone(),
            status: exit.status,
            exit_code: exit.exit_code,
            duration_ms: exit.duration_ms,
            timestamp: exit.finished_at,
            output: (!output.is_empty()).then_some(output),
            error: (!error.is_empty()).then(|| error.chars().take(MAX_ERROR_CHARS).collect()),
            result: exit.result.clone(),
        };
        let route = shared::api::route::task(&record.task_id, "completed");
        let mut body = body;
        loop {
            match verdict(self.client.post::<_, IgnoredAny>(&route, &body).await) {
                Verdict::Delivered => return Ok(None),
                Verdict::End(reason) => return Ok(Some(reason)),
                Verdict::Retry(after) => tokio::time::sleep(self.backoff.next_delay(after)).await,
                // Should never happen; still report the outcome without the
                // part the server refused rather than retry it forever.
                Verdict::Refused(reason) if body.output.is_some() || body.result.is_some() => {
                    body.output = None;
                    body.result = None;
                    body.error = Some(
                        format!("the control plane refused this task's completion details ({reason}); the full output is on the node")
                            .chars()
                            .take(MAX_ERROR_CHARS)
                            .collect(),
                    );
                }
                Verdict::Refused(reason) => return Ok(Some(reason)),
            }
        }
    }

    /// stdout as is and stderr lines prefixed `[stderr] ` (the original
    /// agent's format), clipped to the API's limit without loading it all.
    fn completion_output(&self, task_id: &str) -> std::io::Result<(String, u64)> {
        let journal = self.journal.lock().expect("journal lock");
        let mut reader = journal.reader([0; 3])?;
        let mut clipper = Clipper::new(shared::api::task::MAX_COMPLETED_OUTPUT_CHARS);
        let mut stderr_at_line_start = true;
        while let Some((stream, bytes)) = reader.next_chunk(&journal)? {
            let text = String::from_utf8_lossy(&bytes);
            match stream {
                LogStream::Stdout => clipper.push(&text),
                LogStream::Stderr => {
                    for piece in text.split_inclusive('\n') {
                        if stderr_at_line_start {
                            clipper.push("[stderr] ");
                        }
                        clipper.push(piece);
                        stderr_at_line_start = piece.ends_with('\n');
                    }
                }
                LogStream::System => {}
            }
        }
        Ok((clipper.finish(task_id), journal.dropped()))
    }
}

/// What to do after a request.
enum Verdict {
    Delivered,
    /// Transient (network, 401/403 while credentials are fixed, 429, 5xx).
    Retry(Option<Duration>),
    /// 404/409: the task's stream ends (§6.5, §6.6).
    End(String),
    /// Another 4xx: this body will never be accepted.
    Refused(String),
}

fn verdict(r: Result<IgnoredAny, CallError>) -> Verdict {
    match r {
        Ok(_) => Verdict::Delivered,
        // A 2xx whose body is not what we expected was still accepted.
        Err(CallError::Decode(_)) => Verdict::Delivered,
        Err(CallError::Status {
            status: status @ (404 | 409),
            message,
            ..
        }) => Verdict::End(format!("HTTP {status}: {message}")),
        Err(CallError::Status {
            status: status @ (400 | 413 | 422),
            message,
            ..
        }) => Verdict::Refused(format!("HTTP {status}: {message}")),
        Err(e) => Verdict::Retry(e.retry_after()),
    }
}

//! Claiming tasks over HTTP long polling (PROTOCOL.md §6.2–§6.4) without
//! the original agent's defects (§13 items 1–6):
//!
//! - the claim's HTTP timeout is `waitMs` plus `request_timeout`, and the
//!   client never retries a claim (a retried long poll orphans a claim);
//! - every failure backs off with full jitter — 404/409 and 429 included —
//!   and `Retry-After` is honoured, so there is no hot loop;
//! - 401/403 keep being retried with a long back-off and show as
//!   "credentials rejected" in the status; claiming never stops for the
//!   life of the process;
//! - at most `max_concurrent_tasks` run: a claim is made only with a free
//!   slot, and the slot travels with the task until it is done;
//! - `started` is sent before a task is handed over, and a task whose
//!   `started` was refused (404/409: cancelled, lease lost) is never run;
//! - the applied root-access report goes with every claim, and the desired
//!   profile in every response is applied.
//!
//! `accepted` is not sent: a claimed task already is `accepted` and the
//! server answers it as a no-op duplicate (§6.3).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::api::task::{ClaimRequest, ClaimResponse, ClaimedTask, TaskTransition};
use shared::timestamp::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::api_client::{ApiClient, CallError};
use crate::backoff::Backoff;
use crate::root_access::RootAccess;

/// Receives claimed tasks: [`prepare`](Self::prepare) while `started` is
/// in flight, then [`start`](Self::start) if it was accepted or
/// [`abandon`](Self::abandon) if not.
pub trait TaskSink: Send + Sync + 'static {
    /// A task was claimed and its `started` is on its way: work that does
    /// not run anything (setting up storage) can be done meanwhile.
    fn prepare(&self, _task: &ClaimedTask) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// `started` succeeded: run the task. The permit is the task's slot:
    /// drop it when the task's work is finished.
    fn start(
        &self,
        task: ClaimedTask,
        slot: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send;

    /// `started` was refused: the task must not run; undo [`prepare`](Self::prepare).
    fn abandon(&self, _task_id: &str) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    /// Long-poll wait (`task_poll_interval`, at most 30 s).
    pub wait: Duration,
    /// `request_timeout`.
    pub request_timeout: Duration,
    /// One permit per task that may run at once (`max_concurrent_tasks`);
    /// shared with the dispatcher, whose tasks resumed after a restart hold
    /// permits too.
    pub slots: Arc<Semaphore>,
}

/// What `noderax-agent status` shows about claiming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimStatus {
    /// The last claim was refused with 401/403.
    pub credentials_rejected: bool,
    /// Failures since the last successful claim.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub tasks_claimed: u64,
    /// Tasks not run because `started` was refused.
    pub tasks_not_started: u64,
    /// Why the last such task was not run.
    pub last_not_started: Option<String>,
}

/// Runs until `shutdown` becomes true.
pub async fn run<S: TaskSink>(
    client: ApiClient,
    settings: ClaimSettings,
    sink: Arc<S>,
    root: Arc<Mutex<RootAccess>>,
    status: watch::Sender<ClaimStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = settings.slots.clone();
    let mut errors = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut denied = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
    let wait_ms = settings.wait.as_millis().min(30_000) as u32;
    let timeout = settings.wait + settings.request_timeout;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = shutdown.changed() => return,
        };
        let body = ClaimRequest {
            max_tasks: 1,
            wait_ms,
            root_access: Some(root.lock().expect("root lock").report()),
        };
        let result = tokio::select! {
            r = client.post_with_timeout::<_, ClaimResponse>(shared::api::route::TASK_CLAIM, &body, timeout) => r,
            _ = shutdown.changed() => return,
        };
        let delay = match result {
            Ok(resp) => {
                errors.reset();
                denied.reset();
                status.send_modify(|s| {
                    s.credentials_rejected = false;
                    s.consecutive_failures = 0;
                    s.last_error = None;
                });
                if let Some(desired) = resp.root_access {
                    root.lock().expect("root lock").apply(desired.profile);
                }
                if let Some(task) = resp.task {
                    status.send_modify(|s| s.tasks_claimed += 1);
                    // `started` first; the sink prepares while it is in
                    // flight. The yield lets the request be written before
                    // the sink's work takes this thread.
                    let (started, ()) =
                        tokio::join!(start(&client, &task, settings.request_timeout), async {
                            tokio::task::yield_now().await;
                            sink.prepare(&task).await;
                        });
                    match started {
                        Ok(()) => {
                            sink.start(task, slot).await;
                            // Let the hand-over to the executor run before
                            // the next claim is built and sent: on this
                            // single-threaded runtime that work would
                            // otherwise sit between `started` and `RunTask`.
                            tokio::task::yield_now().await;
                        }
                        Err(why) => {
                            sink.abandon(&task.id).await;
                            status.send_modify(|s| {
                                s.tasks_not_started += 1;
                                s.last_not_started =
                                    Some(format!("task {} not run: {why}", task.id));
                            });
                        }
                    }
                }
                None
            }
            Err(e) => {
                let rejected = matches!(e.status(), Some(401 | 403));
                status.send_modify(|s| {
                    s.credentials_rejected = rejected;
                    s.consecutive_failures += 1;
                    s.last_error = Some(if rejected {
                        format!("credentials rejected by the control plane ({e}); still retrying")
                    } else {
                        e.to_string()
                    });
                });
                Some(if rejected {
                    denied.next_delay(e.retry_after())
                } else {
                    errors.next_delay(e.retry_after())
                })
            }
        };
        if let Some(d) = delay {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Sends `started`, retrying transient failures while the claim lease (60 s)
/// can still be valid. An error means the task must not run.
async fn start(
    client: &ApiClient,
    task: &ClaimedTask,
    request_timeout: Duration,
) -> Result<(), String> {
    let route = shared::api::route::task(&task.id, "started");
    let body = TaskTransition {
        task_id: task.id.clone(),
        timestamp: Timestamp::now(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let attempt = tokio::time::timeout(
            request_timeout,
            client.post::<_, serde::de::IgnoredAny>(&route, &body),
        )
        .await;
        let err = match attempt {
            Ok(Ok(_)) | Ok(Err(CallError::Decode(_))) => return Ok(()),
            Ok(Err(e)) if !e.is_transient() => {
                return Err(format!("the control plane refused to start it: {e}"));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {request_timeout:?}"),
        };
        let delay = backoff.next_delay(None);
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(format!(
                "could not report it started before its lease ran out: {err}"
            ));
        }
        tokio::time::sleep(delay).await;
    }
}

//! Watching a running task's control endpoint (PROTOCOL.md §6.7) every 2 s:
//! an operator's cancel request, or the server having finished the task by
//! itself (stale detector, cancel while not running), which the original
//! agent ignored (§13 item 11).

use std::time::Duration;

use shared::api::task::TaskControl;

use crate::api_client::ApiClient;

/// How often the original agent polls, and this one too.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Why the watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// The operator asked to cancel; stop the task and complete it `cancelled`.
    CancelRequested { reason: Option<String> },
    /// The server already considers the task finished (or it is gone):
    /// stop it and send no completion.
    GoneOnServer { why: String },
}

/// Polls until a cancel request or a final server state shows up. Errors
/// other than 404 are ignored (the next poll tries again); the caller
/// drops the future when the task ends on its own.
pub async fn watch(client: &ApiClient, task_id: &str, interval: Duration) -> ControlEvent {
    let route = shared::api::route::task(task_id, "control");
    loop {
        tokio::time::sleep(interval).await;
        match client.get::<TaskControl>(&route).await {
            Ok(c) if c.cancel_requested => {
                return ControlEvent::CancelRequested {
                    reason: c.cancel_reason.filter(|r| !r.trim().is_empty()),
                };
            }
            Ok(c) if c.status.is_terminal() => {
                return ControlEvent::GoneOnServer {
                    why: format!("the control plane already marks the task {:?}", c.status)
                        .to_lowercase(),
                };
            }
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {
                return ControlEvent::GoneOnServer {
                    why: "the control plane no longer knows the task".into(),
                };
            }
            Err(_) => {}
        }
    }
}

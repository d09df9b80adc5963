//! The network process's building blocks, kept in a library so they are
//! unit-tested apart from the command line.
//!
//! - [`api_client`], [`sio_client`], [`tls`], [`backoff`]: talking to the
//!   control plane over HTTP and Socket.IO.
//! - [`claim_loop`]: claiming tasks by long polling; [`control_watch`]:
//!   cancel requests of running tasks; [`heartbeat`]: HTTP presence while
//!   the socket is down.
//! - [`enrollment`], [`host_facts`]: obtaining the node identity.
//! - [`realtime_session`]: the Socket.IO session (auth, ping, metrics,
//!   root-access updates, terminal events, reconnect).
//! - [`metrics`]: host metrics for `agent.metrics`.
//! - [`log_entries`]: raw task output → log entries the API accepts.
//! - [`root_access`]: which root-access profile the agent applies and reports.
//! - [`output_clip`]: the `output` of a completion, within the API's limit.
//! - [`task_journal`]: a task's output stored durably on the node, with the
//!   position up to which the control plane has it.
//! - [`task_report`]: delivers a task's log entries and completion from disk;
//!   [`task_retention`]: removes old delivered outputs.
//! - [`task_spec`]: a claimed task's payload checked and turned into an
//!   executor request.
//! - [`self_update`]: the `agent.update` task's progress reports and the
//!   record that carries an update across the restart it causes.
//! - [`state_dir`]: the files of the state directory; [`agent_status`]: the
//!   running agent's `status.json`.
//! - [`release_download`]: downloading, verifying and staging a release for
//!   the self-update.

pub mod agent_status;
pub mod api_client;
pub mod backoff;
pub mod claim_loop;
pub mod control_watch;
pub mod dispatcher;
pub mod enrollment;
pub mod exec_link;
pub mod heartbeat;
pub mod host_facts;
pub mod log;
pub mod log_entries;
pub mod metrics;
pub mod output_clip;
pub mod privilege_drop;
pub mod realtime_session;
pub mod release_download;
pub mod root_access;
pub mod sd_notify;
pub mod self_update;
pub mod sio_client;
pub mod state_dir;
pub mod task_journal;
pub mod task_report;
pub mod task_retention;
pub mod task_spec;
pub mod terminal_bridge;
pub mod tls;

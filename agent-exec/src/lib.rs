//! The Noderax agent's executor, `noderax-agent-exec`: runs tasks for the
//! network process over the IPC socket (ARCHITECTURE.md §2–§4) as the
//! unprivileged user `noderax`.
//!
//! - [`ipc_server`]: socket, peer check, handshake, request dispatch;
//! - [`task_registry`]: tasks, acknowledged output, replay;
//! - [`task_runner`], [`process_runner`], [`session_spawn`], [`process_group`],
//!   [`child_env`]: turning a request into a supervised process;
//! - [`process_ledger`]: processes on record, killed after a crash;
//! - [`output_buffer`]: one task's unacknowledged output (memory, then spill file);
//! - [`package_list`], [`package_search`], [`package_change`]: package tasks
//!   and the root helper's argv;
//! - [`terminals`], [`pty_session`]: interactive shells on PTYs;
//! - [`settings`], [`log`]: start-up values and log lines.

pub mod child_env;
pub mod ipc_server;
pub mod log;
pub mod output_buffer;
pub mod package_change;
pub mod package_list;
pub mod package_search;
pub mod process_group;
pub mod process_ledger;
pub mod process_runner;
pub mod pty_session;
pub mod session_spawn;
pub mod settings;
pub mod task_registry;
pub mod task_runner;
pub mod terminals;

//! The network process's building blocks, kept in a library so they are
//! unit-tested apart from the command line.
//!
//! - [`log_entries`]: raw task output → log entries the API accepts.
//! - [`output_clip`]: the `output` of a completion, within the API's limit.
//! - [`task_journal`]: a task's output stored durably on the node, with the
//!   position up to which the control plane has it.

pub mod log_entries;
pub mod output_clip;
pub mod task_journal;

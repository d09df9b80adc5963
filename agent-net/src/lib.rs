//! The network process's building blocks, kept in a library so they are
//! unit-tested apart from the command line.
//!
//! - [`log_entries`]: raw task output → log entries the API accepts.
//! - [`output_clip`]: the `output` of a completion, within the API's limit.

pub mod log_entries;
pub mod output_clip;

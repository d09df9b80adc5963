//! Code shared by the Noderax agent's three processes.
//!
//! - [`api`]: the control plane's JSON protocol (PROTOCOL.md), one type per
//!   body or event, used by `agent-net` and the testbed.
//! - [`config`], [`identity`], [`atomic_file`]: the config file, the identity
//!   state file and how both are written.
//! - [`ipc`]: frames and messages between `agent-net` and `agent-exec`.
//! - [`validate`]: checks on untrusted strings (package names, versions,
//!   UUIDs) that the executor and the root helper both apply.
//! - [`release_files`]: the file names a release is made of.
//! - [`build_info`], [`timestamp`], [`go_duration`]: small formats.
//!
//! With `default-features = false` only the dependency-free modules remain,
//! which is what the root helper uses.

pub mod build_info;
mod civil;
pub mod go_duration;
pub mod release_files;
pub mod timestamp;
pub mod validate;

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "config")]
pub mod atomic_file;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "config")]
pub mod identity;
#[cfg(feature = "ipc")]
pub mod ipc;

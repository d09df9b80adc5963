//! Where the network process keeps its files: the directory of the identity
//! file (`state_file`; `/var/lib/noderax-agent` when installed).
//!
//! ```text
//! <state dir>/
//!   agent_identity.json        identity (config key state_file), 0600
//!   pending_enrollment.json    an e-mail enrollment waiting for approval
//!   status.json                what `noderax-agent run` is doing (status command)
//!   tasks/<task id>/           one task: task.json, output.journal, delivered
//!   updates/<version>/         a downloaded release, staged for the root helper
//!   updates/pending.json       an update handed to the helper, until settled
//! ```

use std::path::{Path, PathBuf};

/// The state directory of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory holding `state_file`.
    pub fn for_state_file(state_file: &Path) -> Self {
        let root = match state_file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All task directories live here.
    pub fn tasks(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// One task's directory. The id must already be validated as a UUID
    /// (it becomes a path component).
    pub fn task(&self, task_id: &str) -> PathBuf {
        self.tasks().join(task_id)
    }

    /// Releases staged for the root helper's `update apply`
    /// ([`crate::release_download`]) and the pending update record
    /// ([`crate::self_update`]).
    pub fn updates(&self) -> PathBuf {
        self.root.join("updates")
    }

    /// The running agent's status file.
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_the_identity_files_directory() {
        let d = StateDir::for_state_file(Path::new("/var/lib/noderax-agent/agent_identity.json"));
        assert_eq!(d.root(), Path::new("/var/lib/noderax-agent"));
        assert_eq!(
            d.task("3f1c"),
            Path::new("/var/lib/noderax-agent/tasks/3f1c")
        );
        assert_eq!(d.updates(), Path::new("/var/lib/noderax-agent/updates"));
        let bare = StateDir::for_state_file(Path::new("identity.json"));
        assert_eq!(bare.root(), Path::new("."));
    }
}

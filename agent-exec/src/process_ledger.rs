//! Which processes the executor started, kept on disk so that an executor
//! starting after a crash can kill what its previous incarnation left
//! running: nothing runs unsupervised.
//!
//! The file `<state_dir>/processes` has one line per running task or
//! terminal: `<kind> <id> <pid> <start time>`; the start time (clock ticks
//! since boot, `/proc/<pid>/stat` field 22) tells a recorded process from a
//! later one that got the same pid. Changes are made in memory and written
//! by [`Ledger::run_writer`] right after (coalesced, with a rename, never
//! fsynced: it guards against the executor dying, not the machine — a reboot
//! ends every process anyway), so recording a process never delays
//! reporting that it started.
//!
//! Every task and every `pty+ctty` terminal leads a session of its own
//! (setsid), so its leftovers are exactly the processes of that session.
//! While any process is in session S the kernel hands pid S to no new
//! process, so when the leader is gone, the members of S are ours.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::process_group;

/// What a recorded process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A task: leader of its own session.
    Task,
    /// A terminal shell leading its own session.
    Session,
    /// A terminal shell without a session of its own: only it can be killed.
    Process,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Session => "session",
            Kind::Process => "process",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Kind::Task, Kind::Session, Kind::Process]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    pid: i32,
    start: u64,
}

/// Something of a previous incarnation that was still running and was killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub kind: Kind,
    /// Task or terminal id.
    pub id: String,
    /// The processes that were killed.
    pub pids: Vec<i32>,
}

/// Why the ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("process ledger {path}: {source}; check that the executor owns its state directory")]
pub struct LedgerError {
    path: String,
    source: std::io::Error,
}

/// The on-disk record of running processes.
pub struct Ledger {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
    dirty: tokio::sync::Notify,
}

/// Start time of `pid` in clock ticks since boot, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the name start at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Ledger {
    /// The ledger in `state_dir`, empty.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("processes"),
            entries: Mutex::new(BTreeMap::new()),
            dirty: tokio::sync::Notify::new(),
        }
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) -> Result<(), LedgerError> {
        let mut text = String::new();
        for (id, e) in entries {
            text.push_str(&format!("{} {id} {} {}\n", e.kind.as_str(), e.pid, e.start));
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|source| LedgerError {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Records a started process under `id` (a task or session id).
    pub fn add(&self, kind: Kind, id: &str, pid: i32) {
        self.entries.lock().expect("ledger lock").insert(
            id.to_owned(),
            Entry {
                kind,
                pid,
                start: start_time(pid).unwrap_or(0),
            },
        );
        self.dirty.notify_one();
    }

    /// Forgets `id` once its processes have ended.
    pub fn remove(&self, id: &str) {
        if self
            .entries
            .lock()
            .expect("ledger lock")
            .remove(id)
            .is_some()
        {
            self.dirty.notify_one();
        }
    }

    /// Writes the current record to disk.
    pub fn flush(&self) -> Result<(), LedgerError> {
        let entries = self.entries.lock().expect("ledger lock").clone();
        self.save(&entries)
    }

    /// Writes the record after every change, forever.
    pub async fn run_writer(&self) {
        loop {
            self.dirty.notified().await;
            if let Err(e) = self.flush() {
                crate::log::warn(&format!(
                    "{e}; processes started now are not cleaned up should the executor crash"
                ));
            }
        }
    }

    /// Kills whatever the previous incarnation recorded and is still
    /// running, then starts an empty record. Returns what was killed.
    pub fn reap_previous(&self) -> Result<Vec<Leftover>, LedgerError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(LedgerError {
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        let mut killed = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [kind, id, pid, start] = fields[..] else {
                continue;
            };
            let (Some(kind), Ok(pid), Ok(start)) =
                (Kind::parse(kind), pid.parse::<i32>(), start.parse::<u64>())
            else {
                continue;
            };
            if pid <= 1 {
                continue;
            }
            let pids = kill_leftover(kind, pid, start);
            if !pids.is_empty() {
                killed.push(Leftover {
                    kind,
                    id: id.to_owned(),
                    pids,
                });
            }
        }
        let mut entries = self.entries.lock().expect("ledger lock");
        entries.clear();
        self.save(&entries)?;
        Ok(killed)
    }
}

fn kill_leftover(kind: Kind, pid: i32, start: u64) -> Vec<i32> {
    let leader_start = start_time(pid);
    let leader_is_ours = leader_start == Some(start);
    if leader_start.is_some() && !leader_is_ours {
        // The pid now belongs to an unrelated process.
        return Vec::new();
    }
    match kind {
        Kind::Task | Kind::Session => {
            let members = process_group::session_members(pid);
            process_group::kill_session(pid);
            members
        }
        Kind::Process if leader_is_ours => {
            // SAFETY: plain syscall on a pid verified by its start time.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            vec![pid]
        }
        Kind::Process => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_in_the_file_and_unrelated_pids_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::new(dir.path());
        let me = std::process::id() as i32;
        ledger.add(Kind::Process, "a", me);
        ledger.add(Kind::Task, "b", 999_999_999);
        ledger.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("processes")).unwrap();
        assert!(text.contains(&format!("process a {me} {}\n", start_time(me).unwrap())));
        ledger.remove("b");
        ledger.flush().unwrap();
        assert!(
            !std::fs::read_to_string(dir.path().join("processes"))
                .unwrap()
                .contains(" b ")
        );
        // Our own pid with a different start time is "someone else": untouched.
        std::fs::write(
            dir.path().join("processes"),
            format!("process x {me} 1\ntask gone 999999999 5\ngarbage\n"),
        )
        .unwrap();
        let again = Ledger::new(dir.path());
        assert_eq!(again.reap_previous().unwrap(), Vec::new());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("processes")).unwrap(),
            ""
        );
    }
}

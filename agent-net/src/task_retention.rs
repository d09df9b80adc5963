//! Keeps the task outputs stored on the node within `task_output_retention`
//! (age) and `task_output_max_bytes` (size), so `noderax-agent task-output`
//! works for recent tasks without the state directory growing forever.
//!
//! Only tasks whose delivery is finished are ever removed: an undelivered
//! task is the outbox, and the outbox has its own bound. Oldest go first;
//! age is the time the task's record was last written (its exit or its
//! delivery).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::state_dir::StateDir;
use crate::task_report::TaskRecord;

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: usize,
    pub bytes: u64,
}

struct Finished {
    dir: PathBuf,
    modified: SystemTime,
    bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Removes finished tasks older than `max_age`, then the oldest finished
/// ones until all stored tasks fit in `max_bytes`.
pub fn prune(state: &StateDir, max_age: Duration, max_bytes: u64, now: SystemTime) -> Pruned {
    let Ok(entries) = std::fs::read_dir(state.tasks()) else {
        return Pruned::default();
    };
    let mut finished = Vec::new();
    let mut total: u64 = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let bytes = dir_bytes(&dir);
        total += bytes;
        let done = matches!(TaskRecord::load(&dir), Ok(Some(r)) if r.done());
        if !done {
            continue;
        }
        let modified = std::fs::metadata(dir.join("task.json"))
            .and_then(|m| m.modified())
            .unwrap_or(now);
        finished.push(Finished {
            dir,
            modified,
            bytes,
        });
    }
    finished.sort_by_key(|f| f.modified);
    let mut pruned = Pruned::default();
    for f in finished {
        let expired = now.duration_since(f.modified).unwrap_or_default() > max_age;
        if !expired && total <= max_bytes {
            break;
        }
        if std::fs::remove_dir_all(&f.dir).is_ok() {
            total = total.saturating_sub(f.bytes);
            pruned.tasks += 1;
            pruned.bytes += f.bytes;
        }
    }
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: &StateDir, id: &str, done: bool, bytes: usize) {
        let dir = state.task(id);
        TaskRecord {
            task_id: id.into(),
            task_type: "shell.exec".into(),
            exit: None,
            completed_sent: done,
            ended: None,
        }
        .save(&dir)
        .unwrap();
        std::fs::write(dir.join("output.journal"), vec![b'x'; bytes]).unwrap();
    }

    #[test]
    fn old_and_excess_finished_tasks_go_undelivered_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::for_state_file(&tmp.path().join("agent_identity.json"));
        task(&state, "a", true, 1000);
        std::thread::sleep(Duration::from_millis(20));
        task(&state, "b", true, 1000);
        std::thread::sleep(Duration::from_millis(20));
        task(&state, "c", false, 5000);
        let now = SystemTime::now();

        // Within both bounds: nothing goes.
        assert_eq!(
            prune(&state, Duration::from_secs(3600), 1 << 20, now).tasks,
            0
        );
        // Over the size bound: the oldest finished task goes first, and the
        // undelivered one is never removed even though it is the biggest.
        let p = prune(&state, Duration::from_secs(3600), 6500, now);
        assert_eq!(p.tasks, 1);
        assert!(!state.task("a").exists());
        assert!(state.task("b").exists());
        let p = prune(&state, Duration::from_secs(3600), 0, now);
        assert_eq!(p.tasks, 1);
        assert!(state.task("c").exists());
        // Age: everything finished and older than the limit goes.
        task(&state, "d", true, 10);
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(
            prune(&state, Duration::from_secs(3600), 1 << 20, later).tasks,
            1
        );
        assert!(state.task("c").exists());
    }
}

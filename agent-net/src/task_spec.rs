//! From a claimed task to what the executor is asked to do (PROTOCOL.md §7):
//! the payload is read and checked here, so the executor only ever receives
//! a typed, validated [`TaskSpec`]. A task that cannot be run becomes a
//! clear error for its completion (`failed`, exit code −1), never a crash.

use std::time::Duration;

use shared::api::task::{
    AgentUpdatePayload, ClaimedTask, PackageChangePayload, PackageSearchPayload, ShellExecPayload,
    TaskType,
};
use shared::ipc::{PackageOp, TaskSpec};

/// Why a task cannot be run; the text goes into the completion's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotRunnable(pub String);

fn invalid(msg: impl std::fmt::Display) -> NotRunnable {
    NotRunnable(format!("invalid task payload: {msg}"))
}

/// The executor request for `task` and its timeout (§7.1: payload
/// `timeout_seconds`, then payload `timeout`, then `default_timeout`).
pub fn spec_for(
    task: &ClaimedTask,
    default_timeout: Duration,
) -> Result<(TaskSpec, Duration), NotRunnable> {
    let payload = if task.payload.is_null() {
        serde_json::json!({})
    } else {
        task.payload.clone()
    };
    if !payload.is_object() {
        return Err(invalid("the payload must be a JSON object"));
    }
    match task.kind() {
        TaskType::ShellExec => {
            let p: ShellExecPayload =
                serde_json::from_value(payload).map_err(|e| invalid(format!("shell.exec: {e}")))?;
            let command = p
                .command
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| invalid("shell.exec payload requires a command"))?;
            if p.run_as_root == Some(true) {
                return Err(NotRunnable(format!(
                    "unsupported execution environment: this agent does not run shell tasks as root (rootScope {:?}); its root access is limited to package operations through the root helper",
                    p.root_scope.unwrap_or_default()
                )));
            }
            let timeout = match (p.timeout_seconds, p.timeout.as_deref()) {
                (Some(s), _) if s > 0 => Duration::from_secs(s),
                (_, Some(t)) if !t.trim().is_empty() => shared::go_duration::parse(t.trim())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid(format!("timeout {t:?} is not a duration such as 90s"))
                    })?,
                _ => default_timeout,
            };
            let environment = p.environment.unwrap_or_default().into_iter().collect();
            Ok((
                TaskSpec::Shell {
                    command,
                    shell: p.shell.filter(|s| !s.trim().is_empty()),
                    working_dir: p.working_dir.filter(|w| !w.trim().is_empty()),
                    environment,
                },
                timeout,
            ))
        }
        TaskType::PackageList => Ok((TaskSpec::PackageList, default_timeout)),
        TaskType::PackageSearch => {
            let p: PackageSearchPayload = serde_json::from_value(payload)
                .map_err(|e| invalid(format!("packageSearch: {e}")))?;
            let query = p.query.or(p.term).unwrap_or_default();
            let terms: Vec<String> = query.split_whitespace().map(str::to_owned).collect();
            if terms.is_empty() {
                return Err(invalid("packageSearch needs a query"));
            }
            if let Some(t) = terms.iter().find(|t| t.starts_with('-')) {
                return Err(invalid(format!(
                    "search term {t:?} must not start with '-'"
                )));
            }
            Ok((TaskSpec::PackageSearch { terms }, default_timeout))
        }
        kind @ (TaskType::PackageInstall | TaskType::PackageRemove | TaskType::PackagePurge) => {
            let p: PackageChangePayload = serde_json::from_value(payload)
                .map_err(|e| invalid(format!("{}: {e}", kind.as_str())))?;
            let names = p.merged_names();
            if names.is_empty() {
                return Err(invalid(format!(
                    "{} needs at least one package name",
                    kind.as_str()
                )));
            }
            if names.len() > 64 {
                return Err(invalid(format!(
                    "{} names {} packages; at most 64 per task",
                    kind.as_str(),
                    names.len()
                )));
            }
            for n in &names {
                shared::validate::package_name(n).map_err(invalid)?;
            }
            let op = match kind {
                TaskType::PackageInstall => PackageOp::Install,
                TaskType::PackageRemove if p.purge == Some(true) => PackageOp::Purge,
                TaskType::PackageRemove => PackageOp::Remove,
                _ => PackageOp::Purge,
            };
            Ok((TaskSpec::PackageChange { op, names }, default_timeout))
        }
        TaskType::AgentUpdate => {
            let p: AgentUpdatePayload = serde_json::from_value(payload)
                .map_err(|e| invalid(format!("agent.update: {e}")))?;
            shared::validate::release_version(&p.target_version).map_err(invalid)?;
            shared::validate::uuid(&p.target_id).map_err(invalid)?;
            Ok((
                TaskSpec::ApplyUpdate {
                    version: p.target_version,
                    target_id: p.target_id,
                    rollback: p.rollback,
                },
                default_timeout,
            ))
        }
        TaskType::LogScan => Err(NotRunnable(
            "unsupported task type: log.scan is not implemented by this agent".into(),
        )),
        TaskType::Other(t) => Err(NotRunnable(format!("unsupported task type: {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(kind: &str, payload: serde_json::Value) -> ClaimedTask {
        ClaimedTask {
            id: "ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8".into(),
            task_type: kind.into(),
            payload,
        }
    }

    const TEN_MIN: Duration = Duration::from_secs(600);

    #[test]
    fn shell_tasks() {
        let (spec, timeout) = spec_for(
            &task(
                "shell.exec",
                json!({"command": "hostname", "title": "t", "environment": {"A": "1"}}),
            ),
            TEN_MIN,
        )
        .unwrap();
        assert_eq!(
            spec,
            TaskSpec::Shell {
                command: "hostname".into(),
                shell: None,
                working_dir: None,
                environment: vec![("A".into(), "1".into())],
            }
        );
        assert_eq!(timeout, TEN_MIN);
        let t = |p| spec_for(&task("shell.exec", p), TEN_MIN).map(|(_, t)| t);
        assert_eq!(
            t(json!({"command": "x", "timeout_seconds": 5})),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            t(json!({"command": "x", "timeout": "1m30s"})),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            t(json!({"command": "x", "timeout_seconds": 0, "timeout": ""})),
            Ok(TEN_MIN)
        );
        assert!(
            t(json!({"command": "x", "timeout": "soon"}))
                .unwrap_err()
                .0
                .contains("not a duration")
        );
    }

    #[test]
    fn refused_payloads_say_why() {
        let cases = [
            ("shell.exec", json!({}), "requires a command"),
            (
                "shell.exec",
                json!({"command": "   "}),
                "requires a command",
            ),
            ("shell.exec", json!({"command": 42}), "invalid task payload"),
            ("shell.exec", json!([1]), "must be a JSON object"),
            (
                "shell.exec",
                json!({"command": "id", "runAsRoot": true, "rootScope": "task"}),
                "does not run shell tasks as root",
            ),
            ("packageSearch", json!({"query": "  "}), "needs a query"),
            (
                "packageSearch",
                json!({"query": "nginx -o"}),
                "must not start with '-'",
            ),
            (
                "packageInstall",
                json!({"names": []}),
                "at least one package",
            ),
            (
                "packageInstall",
                json!({"names": ["./evil.deb"]}),
                "invalid package name",
            ),
            (
                "packageInstall",
                json!({"package": "-oDir::Etc=/tmp"}),
                "invalid package name",
            ),
            (
                "packageRemove",
                json!({"names": ["ngin*"]}),
                "invalid package name",
            ),
            (
                "agent.update",
                json!({"targetVersion": "../1", "targetId": "ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8"}),
                "invalid release version",
            ),
            (
                "agent.update",
                json!({"targetVersion": "1.0.3", "targetId": "x"}),
                "invalid UUID",
            ),
            ("agent.update", json!({}), "invalid task payload"),
            ("log.scan", json!({}), "log.scan is not implemented"),
            ("reboot.now", json!({}), "unsupported task type: reboot.now"),
        ];
        for (kind, payload, want) in cases {
            let err = spec_for(&task(kind, payload.clone()), TEN_MIN)
                .unwrap_err()
                .0;
            assert!(err.contains(want), "{kind} {payload}: {err}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("pkg{i}")).collect();
        assert!(
            spec_for(&task("packageInstall", json!({"names": many})), TEN_MIN)
                .unwrap_err()
                .0
                .contains("at most 64")
        );
    }

    #[test]
    fn package_tasks() {
        let spec = |kind, p| spec_for(&task(kind, p), TEN_MIN).unwrap().0;
        assert_eq!(
            spec(
                "packageInstall",
                json!({"names": ["nginx", "curl"], "packages": ["nginx", "curl"], "purge": false})
            ),
            TaskSpec::PackageChange {
                op: PackageOp::Install,
                names: vec!["nginx".into(), "curl".into()]
            }
        );
        assert_eq!(
            spec(
                "packageRemove",
                json!({"names": ["nginx"], "package": "nginx", "purge": true})
            ),
            TaskSpec::PackageChange {
                op: PackageOp::Purge,
                names: vec!["nginx".into()]
            }
        );
        assert_eq!(
            spec("packageRemove", json!({"names": ["g++"], "purge": false})),
            TaskSpec::PackageChange {
                op: PackageOp::Remove,
                names: vec!["g++".into()]
            }
        );
        assert_eq!(
            spec(
                "packageSearch",
                json!({"term": "nginx", "query": "nginx proxy"})
            ),
            TaskSpec::PackageSearch {
                terms: vec!["nginx".into(), "proxy".into()]
            }
        );
        assert_eq!(spec("packageList", json!({})), TaskSpec::PackageList);
        assert_eq!(
            spec("packageList", serde_json::Value::Null),
            TaskSpec::PackageList
        );
    }
}

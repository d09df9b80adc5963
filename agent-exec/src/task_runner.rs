//! Turns a `RunTask` into a supervised process and its `TaskExit`.
//!
//! Requests are checked before anything runs; an invalid one still gets a
//! `TaskExited` (outcome `Failed`, exit code -1, a message naming the
//! problem), never a crash and never a silently ignored task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shared::ipc::{ExecMessage, Outcome, OutputStream, RunTask, TaskExit, TaskSpec};
use tokio::sync::mpsc;

use crate::child_env;
use crate::process_runner::{self, Launch, Limits, Sink};
use crate::settings::Settings;
use crate::task_registry::{Registry, RegistryError};

/// Default shell of `shell.exec` (PROTOCOL.md §7.2).
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Turns a finished process into the task's `result_json`.
type ResultOf = Box<dyn FnOnce(&mut process_runner::Finished) -> Option<String> + Send>;

/// What a task spec turned into: a process to run (and how to read its
/// result), or a failure before anything ran.
pub struct Plan {
    pub launch: Launch,
    pub finish: ResultOf,
}

/// Registers and starts a task. `Err` means the request itself was refused
/// (duplicate id, limit reached, malformed id); the caller reports it.
pub fn start(
    registry: &Arc<Registry>,
    settings: &Arc<Settings>,
    request: RunTask,
) -> Result<(), RegistryError> {
    let RunTask {
        task_id,
        spec,
        timeout,
    } = request;
    let cancel = registry.insert(
        &task_id,
        &settings.spill_dir(),
        settings.output_bounds,
        settings.max_tasks,
    )?;
    let registry = registry.clone();
    let settings = settings.clone();
    tokio::spawn(async move {
        let exit = run(&registry, &settings, &task_id, spec, timeout, cancel).await;
        registry.finish(exit);
    });
    Ok(())
}

fn failed(task_id: &str, error: String) -> TaskExit {
    TaskExit {
        task_id: task_id.to_owned(),
        last_seq: 0,
        outcome: Outcome::Failed,
        exit_code: -1,
        duration: Duration::ZERO,
        error: Some(error),
        result_json: None,
        dropped_bytes: 0,
    }
}

async fn run(
    registry: &Arc<Registry>,
    settings: &Settings,
    task_id: &str,
    spec: TaskSpec,
    timeout: Duration,
    mut cancel: mpsc::UnboundedReceiver<String>,
) -> TaskExit {
    if timeout.is_zero() {
        return failed(
            task_id,
            "invalid task payload: the timeout must be longer than zero".into(),
        );
    }
    let plan = match plan(settings, spec) {
        Ok(p) => p,
        Err(e) => return failed(task_id, e),
    };
    let sink: Sink = {
        let registry = registry.clone();
        let id = task_id.to_owned();
        Arc::new(move |stream: OutputStream, bytes: Vec<u8>| {
            registry.push_output(&id, stream, bytes)
        })
    };
    let limits = Limits {
        timeout,
        kill_grace: settings.kill_grace,
    };
    let mut finished = process_runner::run(plan.launch, limits, sink, &mut cancel, |pid| {
        registry.set_pgid(task_id, pid as i32);
        registry.send(ExecMessage::TaskStarted {
            task_id: task_id.to_owned(),
            pid,
        });
    })
    .await;
    let result_json = (plan.finish)(&mut finished);
    TaskExit {
        task_id: task_id.to_owned(),
        last_seq: 0,
        outcome: finished.outcome,
        exit_code: finished.exit_code,
        duration: finished.duration,
        error: finished.error,
        result_json,
        dropped_bytes: 0,
    }
}

fn no_result() -> ResultOf {
    Box::new(|_| None)
}

/// Checks a spec and decides what to run.
fn plan(settings: &Settings, spec: TaskSpec) -> Result<Plan, String> {
    match spec {
        TaskSpec::Shell {
            command,
            shell,
            working_dir,
            environment,
        } => {
            if command.trim().is_empty() {
                return Err("invalid task payload: shell.exec payload requires a command".into());
            }
            let shell = shell
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_SHELL.to_owned());
            if let Some((key, _)) = environment
                .iter()
                .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
            {
                return Err(format!(
                    "invalid task payload: environment variable name {key:?} must be non-empty and contain no '=' or NUL"
                ));
            }
            if environment.iter().any(|(_, v)| v.contains('\0')) || command.contains('\0') {
                return Err(
                    "invalid task payload: command and environment must not contain NUL bytes"
                        .into(),
                );
            }
            let env = child_env::build(&settings.user, &shell, &environment);
            Ok(Plan {
                launch: Launch {
                    program: shell,
                    args: vec!["-lc".into(), command],
                    env,
                    cwd: working_dir.filter(|d| !d.is_empty()).map(PathBuf::from),
                    collect_stdout: false,
                },
                finish: no_result(),
            })
        }
        other => Err(format!(
            "unsupported task type: {} is not implemented by this executor build",
            spec_name(&other)
        )),
    }
}

/// The control plane's name of a task type, for messages.
pub fn spec_name(spec: &TaskSpec) -> &'static str {
    match spec {
        TaskSpec::Shell { .. } => "shell.exec",
        TaskSpec::PackageList => "packageList",
        TaskSpec::PackageSearch { .. } => "packageSearch",
        TaskSpec::PackageChange { .. } => "packageInstall/packageRemove/packagePurge",
        TaskSpec::ApplyUpdate { .. } => "agent.update",
    }
}

//! Turns a `RunTask` into a supervised process and its `TaskExit`.
//!
//! Requests are checked before anything runs; an invalid one still gets a
//! `TaskExited` (outcome `Failed`, exit code -1, a message naming the
//! problem), never a crash and never a silently ignored task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shared::api::RootProfile;
use shared::ipc::{ExecMessage, Outcome, OutputStream, RunTask, TaskExit, TaskSpec};
use tokio::sync::mpsc;

use crate::child_env;
use crate::process_runner::{self, Finished, Launch, Limits, Sink};
use crate::settings::Settings;
use crate::task_registry::{Registry, RegistryError};
use crate::{log, package_change, package_list, package_search};

/// Default shell of `shell.exec` (PROTOCOL.md §7.2).
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Turns a finished process into the task's `result_json`; may also turn
/// its outcome into a failure (unparsable output) and add notes to the
/// task's output through the sink.
type ResultOf = Box<dyn FnOnce(&mut Finished, &Sink) -> Option<String> + Send>;

/// Largest `result_json`: a `TaskExit` must fit in one IPC frame with room
/// for its other fields.
pub const MAX_RESULT_JSON: usize = shared::ipc::MAX_FRAME_LEN - 64 * 1024;

/// What a valid task spec turned into: the process to run and how to read
/// its result.
struct Plan {
    launch: Launch,
    finish: ResultOf,
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
        root_profile,
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
        let exit = run(
            &registry,
            &settings,
            &task_id,
            spec,
            timeout,
            root_profile,
            cancel,
        )
        .await;
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
    root_profile: RootProfile,
    mut cancel: mpsc::UnboundedReceiver<String>,
) -> TaskExit {
    if timeout.is_zero() {
        return failed(
            task_id,
            "invalid task payload: the timeout must be longer than zero".into(),
        );
    }
    let plan = match plan(settings, spec, root_profile) {
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
    let mut finished = process_runner::run(plan.launch, limits, sink.clone(), &mut cancel, |pid| {
        registry.send(ExecMessage::TaskStarted {
            task_id: task_id.to_owned(),
            pid,
        });
        // After the message: the on-disk record is for crash recovery and
        // need not delay the report.
        registry.set_pgid(task_id, pid as i32);
    })
    .await;
    let mut result_json = (plan.finish)(&mut finished, &sink);
    if let Some(json) = result_json.take_if(|j| j.len() > MAX_RESULT_JSON) {
        // It could never be sent: the exit must fit in one IPC frame.
        fail(
            &mut finished,
            format!(
                "the task's result is {} bytes, more than the {MAX_RESULT_JSON}-byte limit",
                json.len()
            ),
        );
    }
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
    Box::new(|_, _| None)
}

fn note(sink: &Sink, text: String) {
    sink(OutputStream::System, format!("{text}\n").into_bytes());
}

fn fail(finished: &mut Finished, error: String) {
    finished.outcome = Outcome::Failed;
    finished.error = Some(error);
}

/// A helper run that did not succeed: keep the exit code, and make the
/// error carry the helper's own message (timeouts and cancels keep theirs).
fn helper_failure(what: &str) -> impl FnOnce(&mut Finished) + Send + 'static {
    let what = what.to_owned();
    move |finished: &mut Finished| {
        if finished.outcome == Outcome::Failed {
            finished.error = Some(package_change::failure_message(
                &what,
                finished.error.as_deref(),
                &finished.stderr_tail,
            ));
        }
    }
}

/// Serialises a package list, leaving out descriptions (optional in the
/// API) when the whole list would not fit in one IPC frame.
fn package_list_json(
    mut list: shared::api::task::PackageListResult,
    sink: &Sink,
) -> Result<String, String> {
    let json = serde_json::to_string(&list).map_err(|e| e.to_string())?;
    if json.len() <= MAX_RESULT_JSON {
        return Ok(json);
    }
    for p in &mut list.packages {
        p.description = None;
    }
    let json = serde_json::to_string(&list).map_err(|e| e.to_string())?;
    if json.len() <= MAX_RESULT_JSON {
        note(
            sink,
            format!(
                "{} packages: descriptions left out so the list fits in one message",
                list.packages.len()
            ),
        );
        Ok(json)
    } else {
        Err(format!(
            "the list of {} installed packages is {} bytes even without descriptions, more than the {MAX_RESULT_JSON}-byte result limit",
            list.packages.len(),
            json.len()
        ))
    }
}

fn helper_launch(settings: &Settings, args: Vec<String>) -> Launch {
    Launch {
        program: settings.sudo.display().to_string(),
        args,
        env: child_env::build(&settings.user, DEFAULT_SHELL, &[]),
        cwd: None,
        collect_stdout: false,
    }
}

/// Refuses a root operation (before anything runs, so `sudo` is never
/// invoked) unless the applied profile and this host's ceiling both allow
/// the operational scope. Logged: a refused root operation is worth a look.
fn check_root(settings: &Settings, applied: RootProfile, what: &str) -> Result<(), String> {
    package_change::check_operational(applied, settings.root_access_ceiling).inspect_err(|e| {
        log::warn(&format!("refused {what}: {e}"));
    })
}

/// Checks a spec and decides what to run. `root_profile` is the profile
/// agent-net applied when it handed the task over.
fn plan(settings: &Settings, spec: TaskSpec, root_profile: RootProfile) -> Result<Plan, String> {
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
        TaskSpec::PackageList => Ok(Plan {
            launch: Launch {
                program: package_list::PROGRAM.into(),
                args: package_list::args(),
                env: child_env::build(&settings.user, DEFAULT_SHELL, &[]),
                cwd: None,
                collect_stdout: true,
            },
            finish: Box::new(|finished, sink| {
                if finished.outcome != Outcome::Success {
                    return None;
                }
                let parsed = package_list::parse(&finished.stdout).and_then(|list| {
                    note(sink, format!("{} installed packages", list.packages.len()));
                    package_list_json(list, sink)
                });
                match parsed {
                    Ok(json) => Some(json),
                    Err(e) => {
                        fail(finished, format!("package list could not be read: {e}"));
                        None
                    }
                }
            }),
        }),
        TaskSpec::PackageSearch { terms } => Ok(Plan {
            launch: Launch {
                program: package_search::PROGRAM.into(),
                args: package_search::args(&terms)?,
                env: child_env::build(&settings.user, DEFAULT_SHELL, &[]),
                cwd: None,
                collect_stdout: true,
            },
            finish: Box::new(|finished, sink| {
                if finished.outcome != Outcome::Success {
                    return None;
                }
                let (result, left_out) = package_search::parse(&finished.stdout);
                note(
                    sink,
                    format!("{} matching packages", result.results.len() + left_out),
                );
                if left_out > 0 {
                    note(
                        sink,
                        format!(
                            "only the first {} are returned; {left_out} more matched, refine the search",
                            package_search::MAX_HITS
                        ),
                    );
                }
                match serde_json::to_string(&result) {
                    Ok(json) => Some(json),
                    Err(e) => {
                        fail(finished, format!("search result could not be encoded: {e}"));
                        None
                    }
                }
            }),
        }),
        TaskSpec::PackageChange { op, names } => {
            // Checked first: without the scope the payload does not matter.
            check_root(
                settings,
                root_profile,
                &format!("apt {}", package_change::op_word(op)),
            )?;
            let names = package_change::checked_names(&names)?;
            let what = format!("apt {} via the root helper", package_change::op_word(op));
            let args = package_change::apt_args(&settings.helper, op, &names);
            let on_failure = helper_failure(&what);
            Ok(Plan {
                launch: helper_launch(settings, args),
                finish: Box::new(move |finished, _| {
                    on_failure(finished);
                    None
                }),
            })
        }
        TaskSpec::ApplyUpdate {
            version,
            target_id,
            rollback,
        } => {
            shared::validate::release_version(&version)
                .map_err(|e| format!("invalid task payload: {e}"))?;
            shared::validate::uuid(&target_id)
                .map_err(|e| format!("invalid task payload: targetId: {e}"))?;
            let args = package_change::update_args(&settings.helper, &version);
            let on_failure = helper_failure("agent update hand-off to the root helper");
            Ok(Plan {
                launch: helper_launch(settings, args),
                finish: Box::new(move |finished, _| {
                    on_failure(finished);
                    if finished.outcome != Outcome::Success {
                        // No hand-off result on failure: the original attached
                        // one anyway, which was misleading (§7.6).
                        return None;
                    }
                    let handoff = shared::api::task::UpdateHandoff {
                        status: "handoff".into(),
                        target_id,
                        target_version: version,
                        rollback,
                    };
                    serde_json::to_string(&handoff).ok()
                }),
            })
        }
    }
}

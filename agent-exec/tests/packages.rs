//! Package tasks through the real executor: the real dpkg database and apt
//! cache of this machine, and the root helper's argv through a recording
//! stand-in for `sudo`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Exec, task_id};
use shared::api::RootProfile;
use shared::api::task::{PackageListResult, PackageSearchResult, UpdateHandoff};
use shared::ipc::{Outcome, PackageOp, TaskSpec};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn package_list_matches_this_machines_dpkg_database() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();
    c.run(&task_id(1), TaskSpec::PackageList, MINUTE);
    let got = c.collect(&task_id(1));
    assert_eq!(got.exit().outcome, Outcome::Success, "{got:?}");
    let json = got.exit().result_json.clone().unwrap();
    assert!(
        json.starts_with(r#"{"packages":[{"name":""#),
        "{}",
        &json[..80]
    );
    let list: PackageListResult = serde_json::from_str(&json).unwrap();

    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Package} ${Version}\n"])
        .output()
        .unwrap();
    let text = String::from_utf8(status.stdout).unwrap();
    let installed: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("installed "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    assert!(installed.len() > 10);
    assert_eq!(list.packages.len(), installed.len());
    for (p, (name, version)) in list.packages.iter().zip(&installed) {
        assert_eq!((p.name.as_str(), p.version.as_str()), (*name, *version));
        assert!(!p.architecture.is_empty());
    }
    let dpkg = list.packages.iter().find(|p| p.name == "dpkg").unwrap();
    assert!(dpkg.description.as_deref().unwrap().contains("package"));
    // Output carries a note, not the raw listing.
    assert!(got.stdout.is_empty());
    assert!(String::from_utf8_lossy(&got.system).contains("installed packages"));
}

#[test]
fn package_search_reads_apts_cache_and_keeps_stderr_out_of_results() {
    let exec = Exec::start(&[]);
    let mut c = exec.connect();
    c.run(
        &task_id(2),
        TaskSpec::PackageSearch {
            terms: vec!["dpkg".into()],
        },
        MINUTE,
    );
    let got = c.collect(&task_id(2));
    assert_eq!(got.exit().outcome, Outcome::Success, "{got:?}");
    let result: PackageSearchResult =
        serde_json::from_str(got.exit().result_json.as_deref().unwrap()).unwrap();
    if result.results.is_empty() {
        // A machine without package lists (`apt-get update` never ran)
        // has nothing to find; the result is still well-formed.
        return;
    }
    assert!(
        result.results.iter().any(|h| h.name == "dpkg"),
        "{result:?}"
    );
    assert!(
        result.results.iter().all(|h| !h.name.starts_with('[')
            && !h.name.contains(' ')
            && !h.name.contains("WARNING"))
    );
    let hit = result.results.iter().find(|h| h.name == "dpkg").unwrap();
    assert!(hit.version.is_some());
}

/// A `sudo` stand-in that records its argv and answers like the helper.
fn fake_sudo(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("sudo-argv");
    let script = dir.join("fake-sudo");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\necho 'helper: working'\n\
             if grep -qx nope {log}; then echo 'E: Unable to locate package nope' >&2; exit 100; fi\n",
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn change(op: PackageOp, names: &[&str]) -> TaskSpec {
    TaskSpec::PackageChange {
        op,
        names: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

#[test]
fn package_changes_run_exactly_the_helper_argv_with_deduplicated_names() {
    let dir = tempfile::tempdir().unwrap();
    let (sudo, log) = fake_sudo(dir.path());
    let exec = Exec::start(&["--sudo", sudo.to_str().unwrap(), "--helper", "/opt/helper"]);
    let mut c = exec.connect();
    c.run(
        &task_id(3),
        change(
            PackageOp::Install,
            &["nginx", "curl", "nginx", "libc6:amd64", "curl"],
        ),
        MINUTE,
    );
    let got = c.collect(&task_id(3));
    assert_eq!(got.exit().outcome, Outcome::Success, "{got:?}");
    assert_eq!(got.stdout, b"helper: working\n");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "-n\n/opt/helper\napt\ninstall\n--\nnginx\ncurl\nlibc6:amd64\n"
    );

    c.run(&task_id(4), change(PackageOp::Purge, &["nope"]), MINUTE);
    let got = c.collect(&task_id(4));
    assert_eq!(got.exit().outcome, Outcome::Failed);
    assert_eq!(got.exit().exit_code, 100);
    let err = got.exit().error.clone().unwrap();
    assert!(
        err.contains("apt purge via the root helper: exit status 100"),
        "{err}"
    );
    assert!(err.contains("E: Unable to locate package nope"), "{err}");

    c.run(
        &task_id(5),
        TaskSpec::ApplyUpdate {
            version: "1.0.3".into(),
            target_id: task_id(99),
            rollback: false,
        },
        MINUTE,
    );
    let got = c.collect(&task_id(5));
    assert_eq!(got.exit().outcome, Outcome::Success, "{got:?}");
    let handoff: UpdateHandoff =
        serde_json::from_str(got.exit().result_json.as_deref().unwrap()).unwrap();
    assert_eq!(handoff.status, "handoff");
    assert_eq!(handoff.target_version, "1.0.3");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "-n\n/opt/helper\nupdate\napply\n--version\n1.0.3\n"
    );
}

#[test]
fn hostile_names_are_rejected_before_sudo_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let (sudo, log) = fake_sudo(dir.path());
    let exec = Exec::start(&["--sudo", sudo.to_str().unwrap()]);
    let mut c = exec.connect();
    let hostile: [&[&str]; 6] = [
        &["nginx", "$(touch /tmp/pwned)"],
        &["-oAPT::Update::Pre-Invoke::=id"],
        &["nginx;id"],
        &["--", "x"],
        &["nginx-"],
        &[],
    ];
    for (i, names) in hostile.iter().enumerate() {
        let id = task_id(10 + i as u32);
        c.run(&id, change(PackageOp::Remove, names), MINUTE);
        let got = c.collect(&id);
        assert_eq!(got.exit().outcome, Outcome::Failed, "{names:?}");
        assert_eq!(got.exit().exit_code, -1);
        assert!(got.pid.is_none(), "no process may start for {names:?}");
        let err = got.exit().error.clone().unwrap();
        assert!(err.starts_with("invalid task payload"), "{err}");
        assert!(!log.exists(), "sudo ran for {names:?}");
    }
    c.run(
        &task_id(20),
        TaskSpec::ApplyUpdate {
            version: "../../etc".into(),
            target_id: task_id(99),
            rollback: false,
        },
        MINUTE,
    );
    let got = c.collect(&task_id(20));
    assert!(
        got.exit()
            .error
            .as_deref()
            .unwrap()
            .contains("release version")
    );
    assert!(!log.exists());
}

/// Asserts a task was refused before any process started (so `sudo` never
/// ran) and returns its error.
fn refused_before_sudo(got: &common::Collected, sudo_log: &Path) -> String {
    assert_eq!(got.exit().outcome, Outcome::Failed, "{got:?}");
    assert_eq!(got.exit().exit_code, -1);
    assert!(got.pid.is_none(), "a process was started: {got:?}");
    assert!(!sudo_log.exists(), "sudo ran");
    let err = got.exit().error.clone().unwrap();
    assert!(
        err.starts_with(
            "unsupported execution environment: current root access profile does not allow operational scope"
        ),
        "{err}"
    );
    err
}

#[test]
fn package_changes_need_an_applied_profile_that_allows_operational() {
    let dir = tempfile::tempdir().unwrap();
    let (sudo, log) = fake_sudo(dir.path());
    // This host's ceiling allows everything: only the applied profile decides.
    let exec = Exec::start(&[
        "--sudo",
        sudo.to_str().unwrap(),
        "--root-access-ceiling",
        "all",
    ]);
    let mut c = exec.connect();
    let mut n = 40;
    for profile in RootProfile::ALL
        .into_iter()
        .filter(|p| !p.scopes().operational)
    {
        for op in [PackageOp::Install, PackageOp::Remove, PackageOp::Purge] {
            n += 1;
            c.run_with_profile(&task_id(n), change(op, &["nginx"]), MINUTE, profile);
            let err = refused_before_sudo(&c.collect(&task_id(n)), &log);
            assert!(
                err.contains(&format!(
                    "the root access profile applied from the control plane is {profile}"
                )),
                "{err}"
            );
            assert!(!err.contains("root_access_ceiling"), "{err}");
        }
    }
    // The profile is checked before the names: nothing about a hostile name
    // is even looked at.
    n += 1;
    c.run_with_profile(
        &task_id(n),
        change(PackageOp::Remove, &["$(id)"]),
        MINUTE,
        RootProfile::Off,
    );
    refused_before_sudo(&c.collect(&task_id(n)), &log);
    assert!(
        exec.log()
            .contains("refused apt install: unsupported execution environment")
    );

    // Every profile that includes operational lets the helper run.
    for profile in RootProfile::ALL
        .into_iter()
        .filter(|p| p.scopes().operational)
    {
        n += 1;
        c.run_with_profile(
            &task_id(n),
            change(PackageOp::Install, &["nginx"]),
            MINUTE,
            profile,
        );
        let got = c.collect(&task_id(n));
        assert_eq!(got.exit().outcome, Outcome::Success, "{profile}: {got:?}");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-n\n/usr/local/libexec/noderax-agent-priv\napt\ninstall\n--\nnginx\n"
        );
        std::fs::remove_file(&log).unwrap();
    }
}

#[test]
fn package_changes_are_refused_when_the_hosts_ceiling_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (sudo, log) = fake_sudo(dir.path());
    let exec = Exec::start(&[
        "--sudo",
        sudo.to_str().unwrap(),
        "--root-access-ceiling",
        "off",
    ]);
    let mut c = exec.connect();
    // Even a profile of `all` from the network process cannot go beyond the
    // host's ceiling.
    for (n, op) in [PackageOp::Install, PackageOp::Remove, PackageOp::Purge]
        .into_iter()
        .enumerate()
    {
        let id = task_id(30 + n as u32);
        c.run_with_profile(&id, change(op, &["nginx"]), MINUTE, RootProfile::All);
        let err = refused_before_sudo(&c.collect(&id), &log);
        assert!(
            err.contains("this host's root_access_ceiling is off"),
            "{err}"
        );
        assert!(!err.contains("control plane"), "{err}");
    }
    // Both sides refuse: both are named.
    c.run_with_profile(
        &task_id(33),
        change(PackageOp::Install, &["nginx"]),
        MINUTE,
        RootProfile::Off,
    );
    let err = refused_before_sudo(&c.collect(&task_id(33)), &log);
    assert!(
        err.contains("applied from the control plane is off")
            && err.contains("root_access_ceiling is off"),
        "{err}"
    );
}

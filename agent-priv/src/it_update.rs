//! Integration tests of `update apply` and `update rollback`, run as root in
//! a throwaway tree: a fake `systemctl is-active` runs the current release's
//! binary, so a broken release really fails readiness.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::host::FailPoint;
use crate::testkit::{Fake, executor, signing_key};
use crate::{EXIT_FAILED, EXIT_REFUSED};

/// What a failed update must leave behind: the old version current and
/// nothing half-built anywhere.
fn assert_unchanged(f: &Fake, current: &str, new: &str) {
    assert_eq!(f.link("current").as_deref(), Some(current));
    let releases: Vec<String> = fs::read_dir(f.p("opt/noderax-agent/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !releases.iter().any(|r| r.starts_with(".incoming")),
        "{releases:?}"
    );
    assert!(!releases.contains(&new.to_owned()), "{releases:?}");
    assert!(f.log("systemctl").is_empty(), "{:?}", f.log("systemctl"));
}

/// `update apply` as the executor runs it; when it succeeds, checks that it
/// started `update switch` in the update unit and runs that switch here (the
/// fake systemd-run only records it). Returns the exit code of the last step.
fn apply_and_switch(f: &Fake, version: &str) -> u8 {
    let before = f.log("self").len();
    let code = f.run(&["update", "apply", "--version", version]);
    if code != 0 {
        return code;
    }
    let started = f.log("self");
    if started.len() == before {
        // Already current: nothing was started.
        return code;
    }
    assert_eq!(
        started[before..],
        [format!("update switch --version {version}")]
    );
    f.run(&["update", "switch", "--version", version])
}

fn last_message(f: &Fake) -> String {
    f.audit().pop().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn apply_installs_side_by_side_then_the_update_unit_switches_and_restarts() {
    let f = Fake::new();
    f.with_systemd(false);
    f.install_current("1.0.0");
    let bin = Fake::agent_binary("1.0.1", true);
    f.stage("1.0.1", &bin, None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    // Installed, verified, not yet switched: that is the unit's job.
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    for program in shared::release_files::PROGRAMS {
        let installed = f.p(&format!("opt/noderax-agent/releases/1.0.1/{program}"));
        let md = fs::metadata(&installed).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755, "{program}");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 0);
    }
    assert_eq!(
        fs::read(f.p("opt/noderax-agent/releases/1.0.1/noderax-agent")).unwrap(),
        bin
    );
    let run = f.log("systemd-run");
    assert_eq!(run.len(), 1);
    assert!(
        run[0].starts_with("--quiet --collect --unit=noderax-agent-update "),
        "not waited for: {}",
        run[0]
    );
    assert!(
        run[0].ends_with(
            "-- $ROOT/usr/local/libexec/noderax-agent-priv update switch --version 1.0.1"
        )
    );
    assert_eq!(f.log("self"), ["update switch --version 1.0.1"]);
    assert!(f.log("systemctl").is_empty());

    // The switch, as it runs in the unit.
    f.with_systemd(true);
    assert_eq!(f.run(&["update", "switch", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    assert_eq!(f.link("previous").as_deref(), Some("1.0.0"));
    // The old release is kept for rollback.
    assert!(
        f.p("opt/noderax-agent/releases/1.0.0/noderax-agent")
            .is_file()
    );
    let ctl = f.log("systemctl");
    assert_eq!(
        ctl[0],
        "restart noderax-agent-exec.service noderax-agent.service"
    );
    // Both units, one per call, for three consecutive rounds.
    assert_eq!(
        ctl[1..],
        [
            "is-active --quiet noderax-agent-exec.service",
            "is-active --quiet noderax-agent.service"
        ]
        .repeat(3)
    );
    let result = f.update_result().unwrap();
    assert_eq!(result["version"], "1.0.1");
    assert_eq!(result["outcome"], "current");
    // Applying or switching to the current version again changes nothing.
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert!(last_message(&f).contains("already the current version"));
    assert_eq!(f.run(&["update", "switch", "--version", "1.0.1"]), 0);
    assert!(last_message(&f).contains("already the current version"));
    assert_eq!(f.log("systemctl").len(), 7);
    assert_eq!(f.log("self").len(), 1);
}

#[test]
fn a_release_without_the_executor_or_helper_is_refused() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    let arch = crate::update::host_arch().unwrap();
    fs::remove_file(
        f.staged("1.0.1")
            .join(format!("noderax-agent-exec-linux-{arch}")),
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(
        last_message(&f).contains("noderax-agent-exec-linux"),
        "{}",
        last_message(&f)
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");
    // Nor can an incomplete release be switched to by hand.
    fs::create_dir_all(f.p("opt/noderax-agent/releases/1.0.2")).unwrap();
    fs::write(f.p("opt/noderax-agent/releases/1.0.2/noderax-agent"), "x").unwrap();
    assert_eq!(
        f.run(&["update", "switch", "--version", "1.0.2"]),
        EXIT_REFUSED
    );
    assert!(last_message(&f).contains("incomplete"));
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
}

#[test]
fn a_release_whose_helper_does_not_run_is_not_switched_to() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    // Digests matched, but the program does not run on this host (say, a
    // build for another libc).
    let helper = f.p("opt/noderax-agent/releases/1.0.1/noderax-agent-priv");
    fs::write(&helper, "#!/bin/sh\nexit 127\n").unwrap();
    assert_eq!(
        f.run(&["update", "switch", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(
        last_message(&f).contains("does not run"),
        "{}",
        last_message(&f)
    );
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert!(f.log("systemctl").is_empty());
}

#[test]
fn a_tampered_executor_is_refused_like_the_agent() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    let arch = crate::update::host_arch().unwrap();
    fs::write(
        f.staged("1.0.1")
            .join(format!("noderax-agent-priv-linux-{arch}")),
        b"#!/bin/sh\nexec /bin/sh\n",
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    let msg = last_message(&f);
    assert!(msg.contains("for noderax-agent-priv"), "{msg}");
    assert!(msg.contains("tampered"), "{msg}");
    assert_unchanged(&f, "1.0.0", "1.0.1");
}

#[test]
fn tampered_artifact_is_refused_and_nothing_changes() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    let arch = crate::update::host_arch().unwrap();
    fs::write(
        f.staged("1.0.1")
            .join(format!("noderax-agent-linux-{arch}")),
        b"#!/bin/sh\nid > /tmp/pwned\n",
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(
        last_message(&f).contains("tampered"),
        "{}",
        last_message(&f)
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");
    assert_eq!(f.link("previous"), None);
}

#[test]
fn manifest_for_another_version_is_refused() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    // A validly digested 1.0.2 manifest staged under the 1.0.1 name.
    let m = fs::read_to_string(f.staged("1.0.1").join("release-manifest.json")).unwrap();
    fs::write(
        f.staged("1.0.1").join("release-manifest.json"),
        m.replace("\"version\":\"1.0.1\"", "\"version\":\"1.0.2\""),
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");
}

#[test]
fn with_a_release_key_only_correctly_signed_manifests_install() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    let key = signing_key(7);
    f.install_key(&key);

    // Missing signature.
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(last_message(&f).contains("no release-manifest.json.minisig"));
    assert_unchanged(&f, "1.0.0", "1.0.1");

    // Signed by another key.
    f.stage(
        "1.0.1",
        &Fake::agent_binary("1.0.1", true),
        Some(&signing_key(8)),
    );
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(
        last_message(&f).contains("does not verify"),
        "{}",
        last_message(&f)
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");

    // Right key, but the manifest was changed after signing (same digest).
    let manifest = f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), Some(&key));
    fs::write(
        f.staged("1.0.1").join("release-manifest.json"),
        manifest.replace("\"title\":\"Added\"", "\"title\":\"Fixed\""),
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");

    // Garbage signature file.
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), Some(&key));
    fs::write(
        f.staged("1.0.1").join("release-manifest.json.minisig"),
        "junk\n",
    )
    .unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");

    // Correctly signed.
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), Some(&key));
    assert_eq!(apply_and_switch(&f, "1.0.1"), 0, "{}", last_message(&f));
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    assert!(
        f.p("opt/noderax-agent/releases/1.0.1/release-manifest.json.minisig")
            .is_file()
    );
}

#[test]
fn a_release_key_the_network_user_could_replace_is_not_trusted() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    let key = signing_key(7);
    f.install_key(&key);
    std::os::unix::fs::chown(f.p("etc/noderax-agent/release.pub"), Some(997), None).unwrap();
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), Some(&key));
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");
}

#[test]
fn staged_symlinks_are_refused() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    let arch = crate::update::host_arch().unwrap();
    let art = f
        .staged("1.0.1")
        .join(format!("noderax-agent-linux-{arch}"));
    fs::remove_file(&art).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &art).unwrap();
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(
        last_message(&f).contains("not a link"),
        "{}",
        last_message(&f)
    );
    assert_unchanged(&f, "1.0.0", "1.0.1");
    // A missing staging directory is refused too.
    assert_eq!(
        f.run(&["update", "apply", "--version", "9.9.9"]),
        EXIT_REFUSED
    );
    assert!(last_message(&f).contains("no staged release"));
}

#[test]
fn failure_after_staging_leaves_the_previous_version_current() {
    let mut f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    f.host.fail_at = Some(FailPoint::BeforeSwitch);
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_FAILED
    );
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(f.link("previous"), None);
    assert!(f.log("systemctl").is_empty());
    // The complete release is there; a retry switches to it.
    f.host.fail_at = None;
    assert_eq!(apply_and_switch(&f, "1.0.1"), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
}

#[test]
fn readiness_failure_rolls_back_automatically() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", false), None);
    assert_eq!(apply_and_switch(&f, "1.0.1"), EXIT_FAILED);
    let msg = last_message(&f);
    assert!(msg.contains("1.0.1 did not become ready"), "{msg}");
    assert!(
        msg.contains("rolled back to 1.0.0: 1.0.0 is running again"),
        "{msg}"
    );
    // What the restarted (old) network process reports to the control plane.
    let result = f.update_result().unwrap();
    assert_eq!(result["version"], "1.0.1");
    assert_eq!(result["outcome"], "rolled_back");
    let why = result["message"].as_str().unwrap();
    assert!(
        why.contains("1.0.1 did not become ready") && why.contains("rolled back to 1.0.0"),
        "{why}"
    );
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(f.link("previous"), None);
    let restarts = f
        .log("systemctl")
        .iter()
        .filter(|l| l.starts_with("restart "))
        .count();
    assert_eq!(restarts, 2);
}

#[test]
fn rollback_restores_the_previous_version() {
    let f = Fake::new();
    f.with_systemd(true);
    assert_eq!(
        f.run(&["update", "rollback"]),
        EXIT_REFUSED,
        "nothing installed yet"
    );
    f.install_current("1.0.0");
    assert_eq!(f.run(&["update", "rollback"]), EXIT_REFUSED, "no previous");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(apply_and_switch(&f, "1.0.1"), 0);
    assert_eq!(f.run(&["update", "rollback"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(f.link("previous").as_deref(), Some("1.0.1"));
    // And forward again.
    assert_eq!(f.run(&["update", "rollback"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    // A third release prunes the oldest one.
    f.stage("1.0.2", &Fake::agent_binary("1.0.2", true), None);
    assert_eq!(apply_and_switch(&f, "1.0.2"), 0);
    assert!(!f.p("opt/noderax-agent/releases/1.0.0").exists());
    assert!(f.p("opt/noderax-agent/releases/1.0.1").exists());
}

#[test]
fn the_release_the_debian_package_installed_is_never_pruned() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    fs::create_dir_all(f.p("var/lib/dpkg/info")).unwrap();
    fs::write(
        f.p("var/lib/dpkg/info/noderax-agent.list"),
        "/.\n/opt\n/opt/noderax-agent\n/opt/noderax-agent/releases\n\
         /opt/noderax-agent/releases/1.0.0\n/opt/noderax-agent/releases/1.0.0/noderax-agent\n",
    )
    .unwrap();
    for v in ["1.0.1", "1.0.2", "1.0.3"] {
        f.stage(v, &Fake::agent_binary(v, true), None);
        assert_eq!(apply_and_switch(&f, v), 0, "{v}");
    }
    assert!(f.p("opt/noderax-agent/releases/1.0.0").is_dir(), "dpkg's");
    assert!(!f.p("opt/noderax-agent/releases/1.0.1").exists(), "pruned");
    assert_eq!(f.link("previous").as_deref(), Some("1.0.2"));
}

#[test]
fn self_update_alias_applies_the_same_way() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    let code = f.run_as(
        &executor(),
        "/usr/local/libexec/noderax-agent-self-update",
        &[
            "--target-version",
            "1.0.1",
            "--target-id",
            "b7f88611-b63e-4c95-9f37-4afb5c0cf275",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(f.log("self"), ["update switch --version 1.0.1"]);
    assert_eq!(f.run(&["update", "switch", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
}

#[test]
fn outside_its_own_unit_switch_and_rollback_rerun_themselves_in_one() {
    let f = Fake::new();
    f.with_systemd(false);
    f.install_current("1.0.0");
    for (args, shown) in [
        (
            &["update", "switch", "--version", "1.0.1"][..],
            "update switch --version 1.0.1",
        ),
        (&["update", "rollback"][..], "update rollback"),
    ] {
        assert_eq!(f.run(args), 0);
        let run = f.log("systemd-run");
        let last = run.last().unwrap();
        assert!(
            last.starts_with("--quiet --wait --pipe --collect --unit=noderax-agent-update "),
            "{last}"
        );
        assert!(last.ends_with(&format!(
            "-- $ROOT/usr/local/libexec/noderax-agent-priv {shown}"
        )));
        assert_eq!(f.log("self").last().unwrap(), shown);
    }
    // This process itself switched nothing.
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert!(f.log("systemctl").is_empty());
}

#[test]
fn without_systemd_apply_switches_without_restart() {
    let f = Fake::new();
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    assert!(f.log("systemctl").is_empty());
    assert!(f.log("systemd-run").is_empty());
    assert!(last_message(&f).contains("restart noderax-agent yourself"));
    assert_eq!(f.update_result().unwrap()["outcome"], "current");
}

#[test]
fn an_unreadable_release_key_refuses_updates_and_fails_check() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    fs::write(f.p("etc/noderax-agent/release.pub"), "not a key\n").unwrap();
    f.stage(
        "1.0.1",
        &Fake::agent_binary("1.0.1", true),
        Some(&signing_key(7)),
    );
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_REFUSED
    );
    assert!(last_message(&f).contains("is not a minisign public key"));
    assert_unchanged(&f, "1.0.0", "1.0.1");
    assert_eq!(f.run(&["check"]), EXIT_FAILED);
    f.install_key(&signing_key(7));
    assert_eq!(f.run(&["check"]), 0);
}

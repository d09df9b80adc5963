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

fn last_message(f: &Fake) -> String {
    f.audit().pop().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn apply_installs_side_by_side_switches_and_restarts() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    let bin = Fake::agent_binary("1.0.1", true);
    f.stage("1.0.1", &bin, None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    assert_eq!(f.link("previous").as_deref(), Some("1.0.0"));
    let installed = f.p("opt/noderax-agent/releases/1.0.1/noderax-agent");
    assert_eq!(fs::read(&installed).unwrap(), bin);
    let md = fs::metadata(&installed).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 0);
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
    assert!(
        ctl[1..]
            .iter()
            .all(|l| l == "is-active --quiet noderax-agent.service")
    );
    assert_eq!(ctl.len(), 1 + 3, "settle checks: {ctl:?}");
    // Applying the current version again changes nothing.
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert!(last_message(&f).contains("already the current version"));
    assert_eq!(f.log("systemctl").len(), 4);
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
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        0,
        "{}",
        last_message(&f)
    );
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
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
}

#[test]
fn readiness_failure_rolls_back_automatically() {
    let f = Fake::new();
    f.with_systemd(true);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", false), None);
    assert_eq!(
        f.run(&["update", "apply", "--version", "1.0.1"]),
        EXIT_FAILED
    );
    let msg = last_message(&f);
    assert!(msg.contains("1.0.1 did not become ready"), "{msg}");
    assert!(
        msg.contains("rolled back to 1.0.0: 1.0.0 is running again"),
        "{msg}"
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
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert_eq!(f.run(&["update", "rollback"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
    assert_eq!(f.link("previous").as_deref(), Some("1.0.1"));
    // And forward again.
    assert_eq!(f.run(&["update", "rollback"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    // A third release prunes the oldest one.
    f.stage("1.0.2", &Fake::agent_binary("1.0.2", true), None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.2"]), 0);
    assert!(!f.p("opt/noderax-agent/releases/1.0.0").exists());
    assert!(f.p("opt/noderax-agent/releases/1.0.1").exists());
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
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
}

#[test]
fn outside_its_own_unit_the_update_reruns_itself_in_one() {
    let f = Fake::new();
    f.with_systemd(false);
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    let run = f.log("systemd-run");
    assert_eq!(run.len(), 1);
    assert!(run[0].starts_with("--quiet --wait --pipe --collect --unit=noderax-agent-update "));
    assert!(
        run[0].ends_with(
            "-- $ROOT/usr/local/libexec/noderax-agent-priv update apply --version 1.0.1"
        )
    );
    assert_eq!(f.log("self"), ["update apply --version 1.0.1"]);
    // This process itself installed nothing.
    assert_eq!(f.link("current").as_deref(), Some("1.0.0"));
}

#[test]
fn without_systemd_apply_switches_without_restart() {
    let f = Fake::new();
    f.install_current("1.0.0");
    f.stage("1.0.1", &Fake::agent_binary("1.0.1", true), None);
    assert_eq!(f.run(&["update", "apply", "--version", "1.0.1"]), 0);
    assert_eq!(f.link("current").as_deref(), Some("1.0.1"));
    assert!(f.log("systemctl").is_empty());
    assert!(last_message(&f).contains("restart noderax-agent yourself"));
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

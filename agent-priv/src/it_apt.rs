//! Integration tests of the package and operational commands, run as root
//! in a throwaway tree with fake apt tools (see `testkit`).

use crate::host::CHILD_ENV;
use crate::policy::Caller;
use crate::testkit::Fake;
use crate::{EXIT_FAILED, EXIT_REFUSED};

const FLAGS: &str = "-y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold \
                     -o Dpkg::Use-Pty=0 -o APT::Get::allow-downgrades=false \
                     -o APT::Get::allow-remove-essential=false \
                     -o APT::Get::allow-change-held-packages=false";

#[test]
fn install_flow_runs_exactly_one_checked_apt_get() {
    let f = Fake::new();
    f.cache_pkg("nginx");
    f.cache_pkg("g++");
    assert_eq!(f.run(&["apt", "install", "--", "nginx", "g++", "nginx"]), 0);
    assert_eq!(
        f.log("apt-cache"),
        [
            "show --no-all-versions -- nginx",
            "show --no-all-versions -- g++"
        ]
    );
    assert_eq!(
        f.log("apt-get"),
        [
            format!("{FLAGS} -s install -- nginx g++"),
            format!("{FLAGS} install -- nginx g++"),
        ]
    );
    // apt-get saw the fixed environment and nothing of ours.
    let env = std::fs::read_to_string(f.p("fake/apt-get.env")).unwrap();
    let mut want: Vec<String> = CHILD_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.push("PWD=/".into());
    want.sort();
    let got: Vec<&str> = env
        .lines()
        .filter(|l| !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    assert_eq!(got, want);
    // Without systemd nothing goes through systemd-run.
    assert!(f.log("systemd-run").is_empty());
    let audit = f.audit();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["outcome"], "started");
    assert_eq!(audit[1]["outcome"], "ok");
    assert_eq!(audit[1]["argv"][5], "g++");
    assert_eq!(audit[1]["sudoUid"], "998");
}

#[test]
fn with_systemd_apt_runs_in_a_transient_unit() {
    let f = Fake::new();
    f.with_systemd(false);
    f.cache_pkg("curl");
    assert_eq!(f.run(&["apt", "install", "--", "curl"]), 0);
    let runs = f.log("systemd-run");
    assert_eq!(runs.len(), 1);
    let pid = std::process::id();
    assert_eq!(
        runs[0],
        format!(
            "--quiet --wait --pipe --collect --unit=noderax-agent-priv-{pid} \
             --description=noderax-agent-priv: apt-get --property=Type=exec \
             --setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin --setenv=LANG=C.UTF-8 \
             --setenv=DEBIAN_FRONTEND=noninteractive --setenv=HOME=/root \
             --setenv=NEEDRESTART_MODE=l --setenv=APT_LISTCHANGES_FRONTEND=none \
             -- $ROOT/usr/bin/apt-get {FLAGS} install -- curl"
        )
    );
    assert_eq!(
        f.log("apt-get").last().unwrap(),
        &format!("{FLAGS} install -- curl")
    );
}

#[test]
fn names_that_do_not_resolve_exactly_are_refused_before_apt_get_runs() {
    let f = Fake::new();
    f.cache_pkg("curl");
    // apt's regex fallback: "python3.11" not found, pattern matched others.
    f.cache(
        "python3.11",
        "Package: python3-11x\nArchitecture: amd64\n\nPackage: python3.11-dev\nArchitecture: amd64\n\n",
    );
    // A stanza for the right name plus another: still not exact.
    f.cache("mixed", "Package: mixed\n\nPackage: mixed2\n\n");
    f.cache("lib32z1:i386", "Package: lib32z1\nArchitecture: amd64\n\n");
    for name in ["python3.11", "mailer", "mixed", "lib32z1:i386"] {
        assert_eq!(
            f.run(&["apt", "install", "--", "curl", name]),
            EXIT_REFUSED,
            "{name}"
        );
    }
    assert!(f.log("apt-get").is_empty(), "{:?}", f.log("apt-get"));
    let last = f.audit().pop().unwrap();
    assert_eq!(last["outcome"], "refused");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("\"lib32z1:i386\" is not in the apt cache"),
        "{last}"
    );
}

#[test]
fn hostile_argv_is_refused_and_audited() {
    let f = Fake::new();
    for args in [
        &["apt", "install", "--", "./evil.deb"][..],
        &["apt", "install", "--", "nginx-"],
        &["apt", "remove", "--", "ngin*"],
        &["apt", "install", "--", "nginx=1.0"],
        &["apt", "install", "--", "nginx/sid"],
        &["apt", "install", "nginx"],
        &["sh", "-c", "id"],
    ] {
        assert_eq!(f.run(args), EXIT_REFUSED, "{args:?}");
    }
    assert!(f.log("apt-get").is_empty());
    assert!(f.log("apt-cache").is_empty());
    let audit = f.audit();
    assert_eq!(audit.len(), 7);
    assert!(audit.iter().all(|r| r["outcome"] == "refused"));
    assert_eq!(audit[0]["argv"][4], "./evil.deb");
}

#[test]
fn remove_and_purge_flows() {
    let f = Fake::new();
    f.dpkg("nginx", "ii ", false, "optional");
    f.dpkg("oldpkg", "rc ", false, "optional");
    f.simulate("remove", "Remv nginx [1.22]\n");
    assert_eq!(f.run(&["apt", "remove", "--", "nginx"]), 0);
    assert_eq!(
        f.log("apt-get").last().unwrap(),
        &format!("{FLAGS} remove -- nginx")
    );
    // Only config files left: nothing to remove, but purge is allowed.
    assert_eq!(f.run(&["apt", "remove", "--", "oldpkg"]), EXIT_REFUSED);
    assert_eq!(f.run(&["apt", "purge", "--", "oldpkg", "nginx"]), 0);
    assert_eq!(
        f.log("apt-get").last().unwrap(),
        &format!("{FLAGS} purge -- oldpkg nginx")
    );
    // Not installed at all.
    let before = f.log("apt-get").len();
    assert_eq!(f.run(&["apt", "purge", "--", "ghost"]), EXIT_REFUSED);
    assert_eq!(f.log("apt-get").len(), before);
}

#[test]
fn protected_packages_are_never_removed() {
    let f = Fake::new();
    f.dpkg("sudo", "ii ", false, "optional");
    f.dpkg("bash", "ii ", true, "required");
    f.dpkg("libpam0g", "ii ", false, "required");
    f.dpkg("libfoo", "ii ", false, "optional");
    f.dpkg("systemd", "ii ", false, "important");
    for name in ["sudo", "bash", "libpam0g"] {
        for verb in ["remove", "purge"] {
            assert_eq!(
                f.run(&["apt", verb, "--", name]),
                EXIT_REFUSED,
                "{verb} {name}"
            );
        }
    }
    // Removing an innocent package that takes a protected one with it.
    f.simulate("remove", "Remv libfoo [1]\nRemv systemd [252]\n");
    assert_eq!(f.run(&["apt", "remove", "--", "libfoo"]), EXIT_REFUSED);
    let msg = f.audit().pop().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("it would remove systemd"), "{msg}");
    // An install that would remove a protected package by conflict.
    f.cache_pkg("evil-conflict");
    f.simulate("install", "Inst evil-conflict [1]\nRemv sudo [1.9]\n");
    assert_eq!(
        f.run(&["apt", "install", "--", "evil-conflict"]),
        EXIT_REFUSED
    );
    // Only simulations ran.
    assert!(
        f.log("apt-get").iter().all(|l| l.contains(" -s ")),
        "{:?}",
        f.log("apt-get")
    );
}

#[test]
fn apt_failure_is_reported() {
    let f = Fake::new();
    f.cache_pkg("nginx");
    std::fs::write(f.p("fake/apt-get.exit"), "100").unwrap();
    assert_eq!(f.run(&["apt", "install", "--", "nginx"]), EXIT_FAILED);
    let last = f.audit().pop().unwrap();
    assert_eq!(last["outcome"], "failed");
    assert!(
        last["message"].as_str().unwrap().contains("apt-get failed"),
        "{last}"
    );
}

#[test]
fn apt_update_and_operational_commands() {
    let f = Fake::new();
    assert_eq!(f.run(&["apt", "update"]), 0);
    assert_eq!(f.log("apt-get"), [format!("{FLAGS} update")]);
    // Without systemd there is no unit to restart and no way to reboot.
    assert_eq!(f.run(&["service", "restart-agent"]), EXIT_REFUSED);
    assert_eq!(f.run(&["system", "reboot"]), EXIT_REFUSED);
    f.with_systemd(false);
    assert_eq!(f.run(&["service", "restart-agent"]), 0);
    assert_eq!(f.log("systemctl"), ["restart noderax-agent.service"]);
    assert_eq!(f.run(&["system", "reboot"]), 0);
    assert_eq!(
        f.log("systemd-run").last().unwrap(),
        "--quiet --collect --unit=noderax-agent-reboot --on-active=15 -- $ROOT/usr/bin/systemctl reboot"
    );
}

#[test]
fn the_ceiling_gates_operational_commands() {
    let f = Fake::new();
    f.with_systemd(false);
    f.cache_pkg("nginx");
    f.set_config(r#"{"api_url":"https://x","root_access_ceiling":"off"}"#);
    for args in [
        &["apt", "install", "--", "nginx"][..],
        &["apt", "update"],
        &["service", "restart-agent"],
        &["system", "reboot"],
    ] {
        assert_eq!(f.run(args), EXIT_REFUSED, "{args:?}");
    }
    assert!(f.log("apt-get").is_empty() && f.log("systemctl").is_empty());
    assert!(f.log("systemd-run").is_empty() && f.log("apt-cache").is_empty());
    let msg = f.audit().pop().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("ceiling on this host is \"off\""), "{msg}");

    // A ceiling in a file the network user could have written is not trusted.
    f.set_config(r#"{"root_access_ceiling":"operational"}"#);
    std::os::unix::fs::chown(f.p("etc/noderax-agent/config.json"), Some(997), None).unwrap();
    assert_eq!(f.run(&["apt", "update"]), EXIT_REFUSED);
    assert!(f.log("apt-get").is_empty());

    std::os::unix::fs::chown(f.p("etc/noderax-agent/config.json"), Some(0), None).unwrap();
    assert_eq!(f.run(&["apt", "update"]), 0);
}

#[test]
fn wrong_callers_are_refused_and_nothing_runs() {
    let f = Fake::new();
    f.cache_pkg("nginx");
    let mallory = Caller {
        ruid: 0,
        euid: 0,
        sudo_uid: Some("1005".into()),
    };
    let setuid = Caller {
        ruid: 1005,
        euid: 0,
        sudo_uid: Some("998".into()),
    };
    for c in [&mallory, &setuid] {
        let code = f.run_as(c, "noderax-agent-priv", &["apt", "install", "--", "nginx"]);
        assert_eq!(code, EXIT_REFUSED);
    }
    assert!(f.log("apt-cache").is_empty() && f.log("apt-get").is_empty());
    let audit = f.audit();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["sudoUid"], "1005");
    assert_eq!(audit[1]["uid"], 1005);
    assert!(audit.iter().all(|r| r["outcome"] == "refused"));
}

#[test]
fn check_reports_and_version_needs_no_root() {
    let f = Fake::new();
    assert_eq!(f.run(&["check"]), 0);
    let nobody = Caller {
        ruid: 65534,
        euid: 65534,
        sudo_uid: None,
    };
    assert_eq!(f.run_as(&nobody, "noderax-agent-priv", &["version"]), 0);
    assert_eq!(
        f.run_as(&nobody, "noderax-agent-priv", &["check"]),
        EXIT_REFUSED
    );
    f.set_config(r#"{"root_access_ceiling":"bogus"}"#);
    assert_eq!(f.run(&["check"]), EXIT_FAILED);
}

#[test]
fn nothing_runs_unrecorded() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fake::new();
    f.cache_pkg("nginx");
    let dir = f.p("var/log/noderax-agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(f.run(&["apt", "install", "--", "nginx"]), EXIT_REFUSED);
    assert!(f.log("apt-cache").is_empty() && f.log("apt-get").is_empty());
}

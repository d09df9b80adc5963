//! `packageInstall`, `packageRemove`, `packagePurge` (PROTOCOL.md §7.5)
//! and `agent.update` hand-off (§7.6): both go through the root helper.
//!
//! The executor never runs apt itself. It validates every name with
//! [`shared::validate::package_name`] (an allow-list) before anything runs,
//! removes duplicates (§13 item 23), re-checks that both the applied root
//! profile and this host's ceiling allow the `operational` scope, and then
//! runs exactly
//! `sudo -n <helper> apt <install|remove|purge> -- NAME...` — argv only, no
//! shell, no request file shared between tasks (§13 item 28). The helper
//! sets its own environment (sudo resets ours, §13 item 24).

use std::path::Path;

use shared::api::RootProfile;
use shared::ipc::PackageOp;

/// The helper's word for an operation.
pub fn op_word(op: PackageOp) -> &'static str {
    match op {
        PackageOp::Install => "install",
        PackageOp::Remove => "remove",
        PackageOp::Purge => "purge",
    }
}

/// Refuses root operations unless both sides allow the `operational` scope
/// (ARCHITECTURE.md §9): the profile agent-net applied from the control
/// plane's desired one (sent with every `RunTask`), and this host's own
/// ceiling. agent-net already narrows the first by the second; checking both
/// here means neither a stale or wrong profile from the network process nor
/// a lowered ceiling can be bypassed. The message names the side(s) that
/// refuse, so an operator knows whom to ask.
pub fn check_operational(applied: RootProfile, ceiling: RootProfile) -> Result<(), String> {
    let from_control_plane = || {
        format!(
            "the root access profile applied from the control plane is {applied}; an administrator must give this node a profile that includes operational"
        )
    };
    let from_host = || {
        format!("this host's root_access_ceiling is {ceiling}; only the host owner can raise it")
    };
    let why = match (applied.scopes().operational, ceiling.scopes().operational) {
        (true, true) => return Ok(()),
        (false, true) => from_control_plane(),
        (true, false) => from_host(),
        (false, false) => format!("{}, and {}", from_control_plane(), from_host()),
    };
    Err(format!(
        "unsupported execution environment: current root access profile does not allow operational scope ({why})"
    ))
}

/// Most names in one operation; the root helper refuses more.
pub const MAX_NAMES: usize = 64;

/// Validated, de-duplicated names in their original order.
pub fn checked_names(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for name in names.iter().map(|n| n.trim()) {
        shared::validate::package_name(name).map_err(|e| format!("invalid task payload: {e}"))?;
        if !out.iter().any(|seen| seen == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        return Err(
            "invalid task payload: a package operation needs at least one package name".into(),
        );
    }
    if out.len() > MAX_NAMES {
        return Err(format!(
            "invalid task payload: {} package names in one operation, at most {MAX_NAMES} are allowed; split it",
            out.len()
        ));
    }
    Ok(out)
}

/// `sudo` arguments for a package operation.
pub fn apt_args(helper: &Path, op: PackageOp, names: &[String]) -> Vec<String> {
    let mut args = vec![
        "-n".to_owned(),
        helper.display().to_string(),
        "apt".to_owned(),
        op_word(op).to_owned(),
        "--".to_owned(),
    ];
    args.extend(names.iter().cloned());
    args
}

/// `sudo` arguments for handing a verified release to the helper. A
/// rollback rollout names the version to return to, so it is installed like
/// any other (`update apply --version V`); the helper's own `update rollback`
/// restores whatever ran before, which need not be the version asked for.
pub fn update_args(helper: &Path, version: &str) -> Vec<String> {
    vec![
        "-n".to_owned(),
        helper.display().to_string(),
        "update".to_owned(),
        "apply".to_owned(),
        "--version".to_owned(),
        version.to_owned(),
    ]
}

/// The error of a failed helper run: what failed, how, and the helper's own
/// last words from stderr.
pub fn failure_message(what: &str, error: Option<&str>, stderr_tail: &[u8]) -> String {
    let tail = String::from_utf8_lossy(stderr_tail);
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(5);
    let said = lines[start..].join("; ");
    let how = error.unwrap_or("failed");
    let mut msg = if said.is_empty() {
        format!("{what}: {how}")
    } else {
        format!("{what}: {how}: {said}")
    };
    if msg.chars().count() > 2000 {
        msg = msg.chars().take(2000).collect::<String>() + "…";
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_deduplicated_in_order() {
        let names: Vec<String> = ["nginx", "curl", " nginx", "curl", "libc6:amd64"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            checked_names(&names).unwrap(),
            ["nginx", "curl", "libc6:amd64"]
        );
        for hostile in [
            "-oAPT::x=1",
            "nginx;rm -rf /",
            "$(id)",
            "a b",
            "Nginx",
            "nginx-",
            "",
        ] {
            let err = checked_names(&[hostile.to_owned()]).unwrap_err();
            assert!(
                err.starts_with("invalid task payload: invalid package name"),
                "{err}"
            );
        }
        assert!(checked_names(&[]).unwrap_err().contains("at least one"));
        let many: Vec<String> = (0..65).map(|i| format!("pkg{i}")).collect();
        assert!(checked_names(&many).unwrap_err().contains("at most 64"));
        assert_eq!(checked_names(&many[..64]).unwrap().len(), 64);
    }

    #[test]
    fn argv_is_exactly_the_helper_contract() {
        let args = apt_args(
            Path::new("/usr/local/libexec/noderax-agent-priv"),
            PackageOp::Purge,
            &["nginx".into(), "curl".into()],
        );
        assert_eq!(
            args,
            [
                "-n",
                "/usr/local/libexec/noderax-agent-priv",
                "apt",
                "purge",
                "--",
                "nginx",
                "curl"
            ]
        );
        assert_eq!(
            update_args(Path::new("/h"), "1.0.3"),
            ["-n", "/h", "update", "apply", "--version", "1.0.3"]
        );
    }

    #[test]
    fn both_the_applied_profile_and_the_ceiling_gate_operational_work() {
        use RootProfile::*;
        for applied in RootProfile::ALL {
            for ceiling in RootProfile::ALL {
                let allowed = applied.scopes().operational && ceiling.scopes().operational;
                assert_eq!(
                    check_operational(applied, ceiling).is_ok(),
                    allowed,
                    "{applied} / {ceiling}"
                );
            }
        }
        let err = check_operational(Off, Operational).unwrap_err();
        assert!(err.contains("does not allow operational scope"), "{err}");
        assert!(
            err.contains("applied from the control plane is off"),
            "{err}"
        );
        assert!(!err.contains("root_access_ceiling"), "{err}");
        let err = check_operational(All, Task).unwrap_err();
        assert!(err.contains("root_access_ceiling is task"), "{err}");
        assert!(!err.contains("control plane"), "{err}");
        let err = check_operational(Terminal, Off).unwrap_err();
        assert!(
            err.contains("applied from the control plane is terminal"),
            "{err}"
        );
        assert!(err.contains("root_access_ceiling is off"), "{err}");
    }

    #[test]
    fn failures_carry_the_helpers_message() {
        let msg = failure_message(
            "apt install via the root helper",
            Some("exit status 100"),
            b"Reading package lists...\nE: Unable to locate package nope\n",
        );
        assert_eq!(
            msg,
            "apt install via the root helper: exit status 100: Reading package lists...; E: Unable to locate package nope"
        );
    }
}

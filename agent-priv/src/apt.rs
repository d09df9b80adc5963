//! Package operations: `apt-get install|remove|purge` of validated names and
//! `apt-get update`, with fixed flags.
//!
//! Names are already valid Debian names (`cli`), but apt-get still has
//! fallbacks that a name alone does not close: a name it cannot find is
//! retried as a regular expression (`.` matches anything), a trailing `+`/`-`
//! is read as an install/remove modifier, and a virtual name silently picks a
//! provider. So before anything runs, every name must resolve to exactly
//! that package:
//!
//! - install: `apt-cache show --no-all-versions -- NAME` must print only
//!   stanzas whose `Package:` is NAME (and `Architecture:` the qualifier, if
//!   any). A regex or virtual fallback prints other names or nothing.
//! - remove/purge: `dpkg-query -W` must list NAME as installed (or, for
//!   purge, with configuration files left).
//!
//! Then `apt-get -s` (simulation, same flags) shows every package the real
//! run would remove, including reverse dependencies and conflicts; the
//! command is refused if any of them is Essential, Priority `required` or
//! one the agent itself needs ([`PROTECTED`]).

use std::ffi::OsStr;
use std::path::Path;

use crate::Failure;
use crate::cli::AptChange;
use crate::host::{self, Host, tools};

/// Packages the agent needs to keep working and to be repaired remotely:
/// removing any of them (directly or as a side effect) is refused.
pub const PROTECTED: [&str; 14] = [
    "apt",
    "base-files",
    "ca-certificates",
    "dpkg",
    "init",
    "libc-bin",
    "libc6",
    "libpam-runtime",
    "login",
    "noderax-agent",
    "passwd",
    "sudo",
    "systemd",
    "systemd-sysv",
];

/// How long apt-get waits for the dpkg lock held by another package
/// manager (unattended-upgrades, say) before giving up, in seconds.
pub const LOCK_TIMEOUT_SECS: u32 = 300;

/// The flags every apt-get invocation gets, before the sub-command. The
/// `allow-*` options are spelt out as `false` so that a setting in
/// /etc/apt/apt.conf.d cannot turn them on.
pub fn fixed_flags() -> Vec<String> {
    vec![
        "-y".into(),
        "-o".into(),
        format!("DPkg::Lock::Timeout={LOCK_TIMEOUT_SECS}"),
        // Keep the admin's modified config files on upgrade, never prompt.
        "-o".into(),
        "Dpkg::Options::=--force-confold".into(),
        // Plain line output for streaming, no progress bars.
        "-o".into(),
        "Dpkg::Use-Pty=0".into(),
        "-o".into(),
        "APT::Get::allow-downgrades=false".into(),
        "-o".into(),
        "APT::Get::allow-remove-essential=false".into(),
        "-o".into(),
        "APT::Get::allow-change-held-packages=false".into(),
    ]
}

/// apt-get's arguments for a package change (after the program path).
pub fn change_argv(change: AptChange, names: &[String], simulate: bool) -> Vec<String> {
    let mut v = fixed_flags();
    if simulate {
        v.push("-s".into());
    }
    v.push(change.verb().into());
    v.push("--".into());
    v.extend(names.iter().cloned());
    v
}

/// apt-get's arguments for refreshing the package lists.
pub fn update_argv() -> Vec<String> {
    let mut v = fixed_flags();
    v.push("update".into());
    v
}

/// Checks, then runs `apt-get <change> -- names`.
pub fn change(host: &Host, change: AptChange, names: &[String]) -> Result<(), Failure> {
    match change {
        AptChange::Install => resolve_available(host, names)?,
        AptChange::Remove | AptChange::Purge => resolve_installed(host, change, names)?,
    }
    check_simulation(host, change, names)?;
    let apt = host.tool(tools::APT_GET)?;
    run_detachable(host, &apt, &change_argv(change, names, false), "apt-get")
}

/// Runs `apt-get update`.
pub fn update(host: &Host) -> Result<(), Failure> {
    let apt = host.tool(tools::APT_GET)?;
    run_detachable(host, &apt, &update_argv(), "apt-get update")
}

/// Runs `program args` in a transient unit when systemd is PID 1 (so that
/// an executor restart cannot kill dpkg half-way), else directly. Output is
/// streamed either way.
pub fn run_detachable(
    host: &Host,
    program: &Path,
    args: &[String],
    what: &str,
) -> Result<(), Failure> {
    if host.systemd_running() {
        let run = host.tool(tools::SYSTEMD_RUN)?;
        let mut argv: Vec<&OsStr> = vec![program.as_os_str()];
        argv.extend(args.iter().map(OsStr::new));
        let unit = format!("noderax-agent-priv-{}", std::process::id());
        let mut cmd = host::command(&run);
        cmd.args(host::detached_argv(
            &unit,
            &format!("noderax-agent-priv: {what}"),
            &argv,
        ));
        host::run_streamed(cmd, what)
    } else {
        let mut cmd = host::command(program);
        cmd.args(args);
        host::run_streamed(cmd, what)
    }
}

/// Every name must be exactly one package in the apt cache.
fn resolve_available(host: &Host, names: &[String]) -> Result<(), Failure> {
    let apt_cache = host.tool(tools::APT_CACHE)?;
    for name in names {
        let mut cmd = host::command(&apt_cache);
        cmd.args(["show", "--no-all-versions", "--", name]);
        let (ok, out) = host::run_captured(cmd, "apt-cache show")?;
        let (pkg, arch) = split_arch(name);
        let stanzas = stanzas(&out);
        let exact = ok
            && !stanzas.is_empty()
            && stanzas.iter().all(|s| {
                field(s, "Package") == Some(pkg)
                    && arch.is_none_or(|a| field(s, "Architecture") == Some(a))
            });
        if !exact {
            return Err(Failure::refused(format!(
                "package {name:?} is not in the apt cache under exactly that name \
                 (virtual packages and patterns are not accepted); check the name, \
                 or run `apt update` first"
            )));
        }
    }
    Ok(())
}

/// What dpkg knows about one installed (or config-files) package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpkgEntry {
    pub package: String,
    pub arch: String,
    /// `db:Status-Abbrev`, e.g. `ii ` or `rc `.
    pub status: String,
    pub essential: bool,
    pub priority: String,
}

impl DpkgEntry {
    /// dpkg's package state letter is not `n` (not installed).
    fn known(&self) -> bool {
        !matches!(self.status.as_bytes().get(1), None | Some(b'n'))
    }

    /// Installed in some form beyond left-over config files.
    fn installed(&self) -> bool {
        self.known() && self.status.as_bytes().get(1) != Some(&b'c')
    }

    fn why_protected(&self) -> Option<&'static str> {
        if self.essential {
            Some("it is Essential")
        } else if self.priority == "required" {
            Some("it has Priority required")
        } else if PROTECTED.contains(&self.package.as_str()) {
            Some("the agent depends on it")
        } else {
            None
        }
    }
}

const DPKG_FORMAT: &str =
    "--showformat=${Package}\t${Architecture}\t${db:Status-Abbrev}\t${Essential}\t${Priority}\n";

/// `dpkg-query -W` for exact names. Unknown names are simply absent.
pub fn dpkg_entries(host: &Host, names: &[String]) -> Result<Vec<DpkgEntry>, Failure> {
    let dq = host.tool(tools::DPKG_QUERY)?;
    let mut cmd = host::command(&dq);
    cmd.args(["-W", DPKG_FORMAT, "--"]).args(names);
    // Exit status 1 only means some name is unknown; the output tells which.
    let (_, out) = host::run_captured(cmd, "dpkg-query")?;
    Ok(parse_dpkg(&out))
}

pub fn parse_dpkg(out: &str) -> Vec<DpkgEntry> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 5).then(|| DpkgEntry {
                package: f[0].to_owned(),
                arch: f[1].to_owned(),
                status: f[2].to_owned(),
                essential: f[3] == "yes",
                priority: f[4].to_owned(),
            })
        })
        .collect()
}

/// Every name must be installed exactly under that name (purge also accepts
/// packages with only configuration files left) and not be protected.
fn resolve_installed(host: &Host, change: AptChange, names: &[String]) -> Result<(), Failure> {
    let entries = dpkg_entries(host, names)?;
    for name in names {
        let (pkg, arch) = split_arch(name);
        let matching: Vec<&DpkgEntry> = entries
            .iter()
            .filter(|e| e.package == pkg && arch.is_none_or(|a| e.arch == a))
            .collect();
        let present = matching.iter().any(|e| match change {
            AptChange::Purge => e.known(),
            _ => e.installed(),
        });
        if !present {
            return Err(Failure::refused(format!(
                "package {name:?} is not installed under exactly that name; nothing to {}",
                change.verb()
            )));
        }
        if let Some(why) = matching.iter().find_map(|e| e.why_protected()) {
            return Err(Failure::refused(format!(
                "refusing to {} {name:?}: {why}",
                change.verb()
            )));
        }
    }
    Ok(())
}

/// Runs apt-get's simulation and refuses if the change would remove any
/// protected package, whichever way it comes about.
fn check_simulation(host: &Host, change: AptChange, names: &[String]) -> Result<(), Failure> {
    let apt = host.tool(tools::APT_GET)?;
    let mut cmd = host::command(&apt);
    cmd.args(change_argv(change, names, true));
    let (ok, out) = host::run_captured(cmd, "apt-get --simulate")?;
    if !ok {
        return Err(Failure::refused(format!(
            "apt-get cannot {} {} (its simulation failed; see the messages above)",
            change.verb(),
            names.join(" ")
        )));
    }
    let removed = simulated_removals(&out);
    if removed.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = removed.iter().map(|s| s.to_string()).collect();
    for e in dpkg_entries(host, &listed)? {
        if let Some(why) = e.why_protected() {
            return Err(Failure::refused(format!(
                "refusing to {} {}: it would remove {} and {why}",
                change.verb(),
                names.join(" "),
                e.package
            )));
        }
    }
    // A removal dpkg-query did not describe is still checked by name.
    if let Some(p) = removed.iter().find(|p| PROTECTED.contains(p)) {
        return Err(Failure::refused(format!(
            "refusing to {} {}: it would remove {p}, which the agent depends on",
            change.verb(),
            names.join(" ")
        )));
    }
    Ok(())
}

/// Package names (without `:arch`) on `Remv`/`Purg` lines of `apt-get -s`.
pub fn simulated_removals(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Remv ").or_else(|| l.strip_prefix("Purg ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|p| split_arch(p).0)
        .collect()
}

fn split_arch(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((p, a)) => (p, Some(a)),
        None => (name, None),
    }
}

/// Paragraphs of RFC 822-style output.
fn stanzas(out: &str) -> Vec<&str> {
    out.split("\n\n").filter(|s| !s.trim().is_empty()).collect()
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_argv_per_operation() {
        let flags = [
            "-y",
            "-o",
            "DPkg::Lock::Timeout=300",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            "Dpkg::Use-Pty=0",
            "-o",
            "APT::Get::allow-downgrades=false",
            "-o",
            "APT::Get::allow-remove-essential=false",
            "-o",
            "APT::Get::allow-change-held-packages=false",
        ];
        let names = vec!["nginx".to_owned(), "g++".to_owned()];
        for (change, verb) in [
            (AptChange::Install, "install"),
            (AptChange::Remove, "remove"),
            (AptChange::Purge, "purge"),
        ] {
            let mut want: Vec<&str> = flags.to_vec();
            want.extend([verb, "--", "nginx", "g++"]);
            assert_eq!(change_argv(change, &names, false), want);
            let mut sim: Vec<&str> = flags.to_vec();
            sim.extend(["-s", verb, "--", "nginx", "g++"]);
            assert_eq!(change_argv(change, &names, true), sim);
        }
        let mut want: Vec<&str> = flags.to_vec();
        want.push("update");
        assert_eq!(update_argv(), want);
    }

    #[test]
    fn simulation_output_is_parsed() {
        let out = "NOTE: This is only a simulation!\n\
                   Remv sudo [1.9.13p3-1+deb12u1]\n\
                   Purg libfoo:i386 [1.0]\n\
                   Inst nginx (1.22.1-9 Debian:12.5/stable [amd64])\n\
                   Conf nginx (1.22.1-9 Debian:12.5/stable [amd64])\n\
                   Remvx odd\n";
        assert_eq!(simulated_removals(out), ["sudo", "libfoo"]);
    }

    #[test]
    fn dpkg_entries_and_protection() {
        let out = "bash\tamd64\tii \tyes\trequired\n\
                   libpam0g\tamd64\tii \tno\trequired\n\
                   sudo\tamd64\tii \tno\timportant\n\
                   nginx\tamd64\trc \tno\toptional\n\
                   junk line\n";
        let e = parse_dpkg(out);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].why_protected(), Some("it is Essential"));
        assert_eq!(e[1].why_protected(), Some("it has Priority required"));
        assert_eq!(e[2].why_protected(), Some("the agent depends on it"));
        assert_eq!(e[3].why_protected(), None);
        assert!(e[3].known() && !e[3].installed());
        assert!(e[2].installed());
    }

    #[test]
    fn stanza_fields() {
        let out = "Package: nginx\nArchitecture: amd64\nVersion: 1\n\nPackage: nginx-full\nPackage-Type: x\n";
        let s = stanzas(out);
        assert_eq!(s.len(), 2);
        assert_eq!(field(s[0], "Package"), Some("nginx"));
        assert_eq!(field(s[0], "Architecture"), Some("amd64"));
        assert_eq!(field(s[1], "Package"), Some("nginx-full"));
    }
}

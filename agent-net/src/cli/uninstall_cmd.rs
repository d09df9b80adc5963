//! `noderax-agent uninstall`: removes what the installer's manifest lists
//! (see `install_manifest`) and nothing else.
//!
//! In this order: the units it enabled are disabled and stopped (the
//! executor too); the runtime paths (releases installed by self-update, the
//! `previous` link, the last update's result) go with their contents; with
//! `--purge` the state paths too; then the listed paths in reverse order of
//! creation, directories only when empty, kept state skipped; systemd is
//! reloaded; files left behind that belong to an account the installer
//! created are given to root (a later account with the same id must not be
//! able to read the identity); those accounts are deleted; the manifest goes
//! last, and only when everything else worked, so that a failed uninstall
//! can be repeated. Nothing is removed through a symbolic link
//! (`nofollow_fs`).
//!
//! `--root DIR` works on an installation made with `install.sh --root DIR`
//! (tests, images): units are disabled there, nothing is stopped.
//!
//! An installation from the Debian package (`install.sh --package deb`; the
//! manifest names the package) is refused before anything happens: dpkg owns
//! the agent's files and the package's maintainer scripts its accounts, links
//! and units, so `apt-get purge` is what removes it. The message names that
//! and the few paths the installer added beside the package.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;

use super::install_manifest::{self, Manifest};
use super::nofollow_fs::{Kind, Removed, Root};
use super::systemd::{self, EXEC_UNIT};

/// Where the installer puts the unit files.
const UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when everything listed was removed (or kept as asked); 1 when something could not be, in which case the manifest is kept and the command can be repeated."
)]
pub struct UninstallArgs {
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print what would be removed and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also remove the agent's state: the identity (the node must then be
    /// enrolled again), task output, the executor's spill files and the root
    /// helper's audit log.
    #[arg(long)]
    purge: bool,
    /// Uninstall from DIR as if it were / (an installation made with
    /// install.sh --root DIR): units are disabled there, nothing is stopped.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// An account of the root's database: name and numeric id.
fn account_id(root_dir: &Path, db: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(root_dir.join("etc").join(db)).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|id| id.parse().ok()))
            .flatten()
    })
}

/// What happened, for the summary and the exit status.
#[derive(Default)]
struct Outcome {
    removed: usize,
    kept: Vec<String>,
    failed: Vec<String>,
}

struct Uninstall<'a> {
    root: Root,
    root_dir: PathBuf,
    /// `--root` given.
    offline: bool,
    manifest: &'a Manifest,
    purge: bool,
    out: Outcome,
}

impl Uninstall<'_> {
    fn shown(&self, abs: &str) -> String {
        self.root.shown(abs).display().to_string()
    }

    fn fail(&mut self, what: String) {
        eprintln!("noderax-agent: error: {what}");
        self.out.failed.push(what);
    }

    /// Whether a unit's file is still installed (a repeated uninstall may
    /// have removed it already, and systemctl refuses unknown units).
    fn unit_installed(&self, unit: &str) -> bool {
        matches!(self.root.kind(&format!("{UNIT_DIR}/{unit}")), Ok(Some(_)))
    }

    fn units(&mut self) {
        let units: Vec<&str> = self
            .manifest
            .enabled_units
            .iter()
            .map(String::as_str)
            .filter(|u| self.unit_installed(u))
            .collect();
        if units.is_empty() {
            return;
        }
        let root_arg = format!("--root={}", self.root_dir.display());
        let with_units = |first: &[&'static str]| -> Vec<String> {
            first
                .iter()
                .map(|a| (*a).to_owned())
                .chain(units.iter().map(|u| (*u).to_owned()))
                .collect()
        };
        let mut calls: Vec<Vec<String>> = Vec::new();
        if self.offline {
            let mut c = vec![root_arg];
            c.extend(with_units(&["disable"]));
            calls.push(c);
        } else if systemd::running() {
            calls.push(with_units(&["disable", "--now"]));
            // Not enabled (socket-activated), but running.
            if self.unit_installed(EXEC_UNIT) {
                calls.push(vec!["stop".into(), EXEC_UNIT.into()]);
            }
        } else {
            // No systemd to stop anything; disabling only removes the links.
            calls.push(with_units(&["disable"]));
        }
        for args in calls {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            println!("+ systemctl {}", args.join(" "));
            if let Err(e) = systemd::systemctl(&args) {
                self.fail(format!("{e:#}"));
            }
        }
    }

    fn remove_tree(&mut self, abs: &str) {
        let dir = matches!(self.root.kind(abs), Ok(Some(Kind::Dir)));
        match self.root.remove_tree(abs) {
            Ok(Removed::Yes) => {
                let with = if dir { " with its contents" } else { "" };
                println!("removed {}{with}", self.shown(abs));
                self.out.removed += 1;
            }
            Ok(_) => {}
            Err(e) => self.fail(format!("could not remove {}: {e}", self.shown(abs))),
        }
    }

    fn remove_listed(&mut self, abs: &str) {
        match self.root.remove(abs) {
            Ok(Removed::Yes) => {
                println!("removed {}", self.shown(abs));
                self.out.removed += 1;
            }
            Ok(Removed::Missing) => {}
            Ok(Removed::NotEmpty) => {
                println!(
                    "kept {}: not empty (what is in it was not installed by the installer)",
                    self.shown(abs)
                );
                self.out.kept.push(self.shown(abs));
            }
            Err(e) => self.fail(format!("could not remove {}: {e}", self.shown(abs))),
        }
    }

    /// Where files of the removed accounts are left: the kept state, and
    /// listed directories that were not empty and belong to one of them
    /// (noderax's home with what tasks left there).
    fn kept_roots(&self, uids: &[u32]) -> Vec<String> {
        let m = self.manifest;
        let mut v: Vec<String> = Vec::new();
        if !self.purge {
            v.extend(m.state_paths.iter().cloned());
        }
        for p in &m.paths {
            let theirs =
                matches!(self.root.owner_mode(p), Ok(Some((uid, _, _))) if uids.contains(&uid));
            if theirs
                && matches!(self.root.kind(p), Ok(Some(Kind::Dir)))
                && !v.iter().any(|x| x == p)
            {
                v.push(p.clone());
            }
        }
        v
    }

    fn accounts(&mut self) {
        let m = self.manifest;
        let uids: Vec<u32> = m
            .created_users
            .iter()
            .filter_map(|u| account_id(&self.root_dir, "passwd", u))
            .collect();
        let gids: Vec<u32> = m
            .created_groups
            .iter()
            .filter_map(|g| account_id(&self.root_dir, "group", g))
            .collect();
        if !uids.is_empty() || !gids.is_empty() {
            for p in self.kept_roots(&uids) {
                match self.root.chown_tree_to_root(&p, &uids, &gids) {
                    Ok(0) => {}
                    Ok(n) => println!(
                        "gave {n} kept entries at or below {} to root (their accounts are removed)",
                        self.shown(&p)
                    ),
                    Err(e) => self.fail(format!(
                        "could not give the kept files in {} to root: {e}",
                        self.shown(&p)
                    )),
                }
            }
        }
        let prefix: Vec<String> = if self.offline {
            vec!["--prefix".into(), self.root_dir.display().to_string()]
        } else {
            Vec::new()
        };
        for user in &m.created_users {
            if account_id(&self.root_dir, "passwd", user).is_none() {
                continue;
            }
            self.tool("userdel", &prefix, user);
        }
        // userdel removes a user's own group when nobody else is in it.
        for group in &m.created_groups {
            if account_id(&self.root_dir, "group", group).is_none() {
                continue;
            }
            self.tool("groupdel", &prefix, group);
        }
    }

    fn tool(&mut self, tool: &str, prefix: &[String], name: &str) {
        let mut shown = vec![tool.to_owned()];
        shown.extend(prefix.iter().cloned());
        shown.push(name.to_owned());
        println!("+ {}", shown.join(" "));
        let out = Command::new(tool)
            .args(prefix)
            .arg(name)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => self.out.removed += 1,
            Ok(o) => self.fail(format!(
                "`{}` failed ({}): {}",
                shown.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => self.fail(format!("`{}` could not run: {e}", shown.join(" "))),
        }
    }
}

/// The plan, printed before anything happens (and all of `--dry-run`).
fn print_plan(root: &Root, m: &Manifest, purge: bool, offline: bool) {
    println!(
        "Uninstalling the Noderax agent (install manifest {}):",
        root.shown(install_manifest::PATH).display()
    );
    if !m.enabled_units.is_empty() {
        if offline {
            println!("  disable units: {}", m.enabled_units.join(" "));
        } else {
            println!(
                "  stop and disable units: {} (and stop {EXEC_UNIT})",
                m.enabled_units.join(" ")
            );
        }
    }
    let tree = |p: &str| match root.kind(p) {
        Ok(Some(Kind::Dir)) => Some("remove with its contents"),
        Ok(Some(_)) => Some("remove"),
        _ => None,
    };
    for p in &m.runtime_paths {
        if let Some(how) = tree(p) {
            println!("  {how}: {}", root.shown(p).display());
        }
    }
    for p in &m.state_paths {
        match tree(p) {
            Some(how) if purge => println!("  {how} (--purge): {}", root.shown(p).display()),
            Some(_) => println!(
                "  keep (state; --purge removes it): {}",
                root.shown(p).display()
            ),
            None => {}
        }
    }
    for p in m.paths.iter().rev() {
        if m.is_state(p) || m.is_runtime(p) {
            continue;
        }
        match root.kind(p) {
            Ok(Some(Kind::Dir)) => println!("  remove if empty: {}", root.shown(p).display()),
            Ok(Some(_)) => println!("  remove: {}", root.shown(p).display()),
            Ok(None) => {}
            Err(e) => println!("  cannot remove {}: {e}", root.shown(p).display()),
        }
    }
    if !m.created_users.is_empty() || !m.created_groups.is_empty() {
        println!(
            "  delete the accounts it created: users {}; groups {}",
            if m.created_users.is_empty() {
                "none".to_owned()
            } else {
                m.created_users.join(" ")
            },
            if m.created_groups.is_empty() {
                "none".to_owned()
            } else {
                m.created_groups.join(" ")
            },
        );
    }
}

/// Why an installation from the Debian package is not uninstalled here, and
/// what removes it.
fn package_refusal(root: &Root, m: &Manifest, package: &str) -> String {
    let beside: Vec<String> = m
        .paths
        .iter()
        .rev()
        .filter(|p| !m.is_state(p) && matches!(root.kind(p), Ok(Some(_))))
        .map(|p| root.shown(p).display().to_string())
        .collect();
    let mut msg = format!(
        "the agent was installed as the Debian package {package} (install.sh --package deb; see {}), whose files belong to dpkg: remove it with `apt-get purge {package}` (`apt-get remove {package}` keeps the config and the identity)",
        root.shown(install_manifest::PATH).display()
    );
    if !beside.is_empty() {
        msg.push_str(&format!(
            ", then delete what the installer added beside the package: {}",
            beside.join(" ")
        ));
    }
    msg.push_str("; nothing was removed");
    msg
}

fn confirm() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to confirm on: pass --yes to uninstall (--dry-run shows what would be removed)"
        );
    }
    eprint!("Remove the Noderax agent as listed above? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn run(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    if !args.dry_run && super::status_cmd::current_uid() != 0 {
        bail!(
            "uninstalling needs root: run `sudo noderax-agent uninstall` (--dry-run shows what it would remove)"
        );
    }
    let root_dir = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !root_dir.is_absolute() {
        bail!("--root {} must be an absolute path", root_dir.display());
    }
    let root =
        Root::open(&root_dir).with_context(|| format!("cannot open {}", root_dir.display()))?;
    let manifest = install_manifest::load(&root)?;
    if let Some(package) = &manifest.package {
        bail!("{}", package_refusal(&root, &manifest, package));
    }
    let offline = args.root.is_some();
    if !offline && !args.dry_run && systemd::in_unit(EXEC_UNIT) {
        bail!(
            "this runs inside {EXEC_UNIT} (an agent terminal or task): stopping the executor would end it half-way; run `noderax-agent uninstall` from a login shell"
        );
    }
    print_plan(&root, &manifest, args.purge, offline);
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirm()? {
        println!("nothing was changed");
        return Ok(ExitCode::FAILURE);
    }

    let mut u = Uninstall {
        root,
        root_dir,
        offline,
        manifest: &manifest,
        purge: args.purge,
        out: Outcome::default(),
    };
    u.units();
    for p in &manifest.runtime_paths {
        u.remove_tree(p);
    }
    if args.purge {
        for p in &manifest.state_paths {
            u.remove_tree(p);
        }
    }
    let own = [install_manifest::PATH, install_manifest::DIR];
    for p in manifest.paths.iter().rev() {
        if own.contains(&p.as_str()) || (!args.purge && manifest.is_state(p)) {
            continue;
        }
        u.remove_listed(p);
    }
    if !offline && systemd::running() {
        println!("+ systemctl daemon-reload");
        if let Err(e) = systemd::systemctl(&["daemon-reload"]) {
            u.fail(format!("{e:#}"));
        }
    }
    u.accounts();
    if !u.out.failed.is_empty() {
        eprintln!(
            "noderax-agent: {} step(s) failed (above); the install manifest {} is kept, so `noderax-agent uninstall` can be repeated once they are fixed",
            u.out.failed.len(),
            u.shown(install_manifest::PATH)
        );
        return Ok(ExitCode::FAILURE);
    }
    for p in own {
        u.remove_listed(p);
    }
    if !args.purge {
        for p in &manifest.state_paths {
            if matches!(u.root.kind(p), Ok(Some(_))) {
                u.out.kept.push(format!("{} (state)", u.shown(p)));
            }
        }
    }
    println!(
        "The Noderax agent is uninstalled: {} paths and accounts removed.",
        u.out.removed
    );
    if !u.out.kept.is_empty() {
        println!("Kept: {}", u.out.kept.join(", "));
        if !args.purge {
            println!(
                "(the state keeps this node's identity: a new installation resumes it; remove it with `rm -rf` when the node is gone for good)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

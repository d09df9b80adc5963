//! Scenario 6, .deb install and uninstall: the installer with `--package
//! deb` gives the same result as the script (users, owners, modes, links,
//! units, the released programs, a healthy agent that runs a task) and
//! `dpkg -V` finds nothing changed but the configured conffile
//! `/etc/noderax-agent/config.json`; `noderax-agent uninstall` refuses a
//! packaged agent and names `apt-get purge`, which then leaves the system
//! as it was before. Then the script installation: `noderax-agent uninstall
//! --yes --purge` leaves the system as it was before too.
//!
//! "As it was" is a file inventory of the root file system (path, type,
//! owner, group, mode, link target; the content of every file under
//! `/etc`), the users, groups and the units systemd knows, taken before the
//! first installation and after each removal, minus what the system itself
//! changes meanwhile (logs, caches, apt's and dpkg's own records).

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};

use super::install::{Method, check_binaries, check_layout, check_progress};
use super::{CMD_TIMEOUT, Env, InstallOptions, Outcome, Suite, secs};

/// Directories outside the inventory, and why: kernel and runtime file
/// systems; logs and caches; apt's and dpkg's own bookkeeping, which
/// records that a package was there (`dpkg -l` is checked instead);
/// systemd's and sudo's runtime state; root's home (the harness's files).
const PRUNED: [&str; 15] = [
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/systemd/timers",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/catalog",
    "/var/lib/private",
    "/root",
];

/// Files under /etc that user management rewrites without a change of
/// content that matters: shadow-utils' backups (`/etc/passwd-` holds the
/// state before the last change, so it names the removed users) and lock.
const ETC_UNSTABLE: [&str; 5] = [
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/.pwd.lock",
];

pub async fn run(suite: &Suite) -> anyhow::Result<Outcome> {
    let mut env = Env::boot(suite, "6-package").await?;
    let result = steps(&mut env, suite).await;
    env.conclude(result).await
}

async fn steps(env: &mut Env, suite: &Suite) -> anyhow::Result<Vec<String>> {
    let version = suite.layout.version.clone();
    let before = inventory(env).await?;
    let mut notes = Vec::new();

    // The .deb, through the installer.
    let installed = env
        .install_with(&InstallOptions {
            deb_version: Some(version.clone()),
            ..InstallOptions::default()
        })
        .await?;
    notes.push(format!("deb install {}", secs(installed.duration)));
    check_progress(env, &installed)?;
    check_layout(env, &version, Method::Deb).await?;
    check_binaries(env, suite).await?;
    let status = env
        .vm
        .agent
        .sh_ok(
            "dpkg-query -W -f='${Status} ${Version}' noderax-agent",
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(
        status.starts_with("install ok installed "),
        "dpkg has noderax-agent as {status:?}"
    );
    // The installer configured the node in the package's conffile, which
    // is what a conffile is for; every other packaged file must be intact.
    let verify = env
        .vm
        .agent
        .sh("dpkg -V noderax-agent", CMD_TIMEOUT)
        .await?;
    let changed: Vec<&str> = verify
        .stdout
        .lines()
        .filter(|l| !l.ends_with(" c /etc/noderax-agent/config.json"))
        .collect();
    ensure!(
        verify.success() && changed.is_empty(),
        "dpkg -V noderax-agent reports changed files: {}",
        verify.describe()
    );
    env.wait_healthy().await?;
    let out = env
        .shell_ok(&installed.node_id, "echo from-the-deb")
        .await?;
    ensure!(out.contains("from-the-deb"), "task output: {out}");

    // `noderax-agent uninstall` leaves a package to dpkg.
    let refused = env
        .vm
        .agent
        .sh("noderax-agent uninstall --yes --purge", CMD_TIMEOUT)
        .await?;
    let said = format!("{}{}", refused.stdout, refused.stderr);
    ensure!(
        !refused.success() && said.contains("apt-get purge noderax-agent"),
        "noderax-agent uninstall of the .deb: {}",
        refused.describe()
    );
    let purge = env
        .vm
        .agent
        .sh(
            "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q noderax-agent",
            CMD_TIMEOUT,
        )
        .await?;
    ensure!(purge.success(), "apt-get purge: {}", purge.describe());
    let gone = env
        .vm
        .agent
        .sh("dpkg-query -W -f='${Status}' noderax-agent", CMD_TIMEOUT)
        .await?;
    ensure!(
        !gone.stdout.contains("installed"),
        "after apt-get purge dpkg has noderax-agent as {:?}",
        gone.stdout
    );
    let after = inventory(env).await?;
    ensure_same(&before, &after, "apt-get purge noderax-agent")?;

    // The script, then `noderax-agent uninstall --yes --purge`. The
    // control plane refuses a second node of the same hostname, so the
    // operator deletes the first one (as in the web UI).
    ensure!(
        env.tb.delete_node(&installed.node_id),
        "the testbed lost node {}",
        installed.node_id
    );
    let installed = env.install_healthy().await?;
    notes.push(format!("script install {}", secs(installed.duration)));
    let out = env
        .shell_ok(&installed.node_id, "echo from-the-script")
        .await?;
    ensure!(out.contains("from-the-script"), "task output: {out}");
    let uninstall = env
        .vm
        .agent
        .sh("noderax-agent uninstall --yes --purge", CMD_TIMEOUT)
        .await?;
    ensure!(
        uninstall.success(),
        "noderax-agent uninstall --yes --purge: {}",
        uninstall.describe()
    );
    let after = inventory(env).await?;
    ensure_same(&before, &after, "noderax-agent uninstall --yes --purge")?;
    Ok(notes)
}

/// The guest's state that an installation may change, one line per item.
async fn inventory(env: &mut Env) -> anyhow::Result<BTreeSet<String>> {
    let prune = PRUNED
        .iter()
        .map(|p| format!("-path {p}"))
        .collect::<Vec<_>>()
        .join(" -o ");
    let unstable = ETC_UNSTABLE
        .iter()
        .map(|p| format!("-path {p}"))
        .collect::<Vec<_>>()
        .join(" -o ");
    let script = format!(
        "set -e\n\
         find / -xdev \\( {prune} -o {unstable} \\) -prune -o -printf 'file %p %y %u %g %m %l\\n'\n\
         find /etc -xdev \\( {unstable} \\) -prune -o -type f -exec sha256sum {{}} + | sed 's/^/content /'\n\
         getent passwd | sed 's/^/user /'\n\
         getent group | sed 's/^/group /'\n\
         systemctl list-unit-files --no-legend --no-pager | sed 's/^/unit /'\n"
    );
    let out = env
        .vm
        .agent
        .sh_ok(&script, CMD_TIMEOUT)
        .await
        .context("taking the guest's inventory")?;
    Ok(out.lines().map(str::to_owned).collect())
}

fn ensure_same(
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<()> {
    let gone: Vec<&String> = before.difference(after).collect();
    let left: Vec<&String> = after.difference(before).collect();
    ensure!(
        gone.is_empty() && left.is_empty(),
        "after {what} the system differs from before the installation:\n  left behind or changed:\n    {}\n  missing or changed:\n    {}",
        left.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n    "),
        gone.iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n    ")
    );
    Ok(())
}

//! `noderax-agent install`: installs the agent from the programs on this
//! host, exactly as the one-line installer does from a download.
//!
//! There is one implementation of installing: `installer/install.sh`,
//! embedded in this binary. This command lays the three programs out as a
//! release directory (their published names plus a `SHA256SUMS` computed
//! here) in a private temporary directory and runs the script on it with
//! `--release-dir DIR --local-release` (no signature: the programs are
//! already on this host, chosen by root). The programs are this binary and
//! `noderax-agent-exec` / `noderax-agent-priv` beside it, or those in
//! `--bin-dir`, under their plain or published (`-linux-ARCH`) names.
//!
//! Only the non-interactive form (PROTOCOL.md §12) is supported: the
//! installer enrolls with a bootstrap token. Interactive e-mail enrollment
//! needs a terminal during the installation and a way to install without an
//! identity, which the installer does not have; the command says so.

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use clap::Args;
use sha2::{Digest as _, Sha256};
use shared::release_files::{self, AGENT, PROGRAMS};

/// The installer script, byte for byte `installer/install.sh`.
pub const INSTALL_SH: &str = include_str!("../../../installer/install.sh");

/// Environment variables of the installer that would make it install
/// something other than these programs; the command's options replace them.
const OVERRIDDEN_ENV: [&str; 7] = [
    "NODERAX_AGENT_VERSION",
    // `NODERAX_AGENT_PACKAGE=deb` would make it install the release's .deb.
    "NODERAX_AGENT_PACKAGE",
    "NODERAX_AGENT_BINARY_URL",
    "NODERAX_AGENT_RELEASE_DIR",
    "NODERAX_AGENT_DOWNLOAD_BASE_URL",
    "NODERAX_AGENT_RELEASE_KEY",
    "NODERAX_AGENT_BOOTSTRAP_TOKEN",
];

const INTERACTIVE_REFUSED: &str = "interactive installation (asking for the API URL and enrolling by e-mail) is not supported by this agent: run `noderax-agent install --non-interactive --api-url URL --bootstrap-token TOKEN` with the bootstrap token of the install command in the web UI";

#[derive(Debug, Args)]
#[command(
    after_help = "Runs the embedded installer (installer/install.sh) on these programs: users, directories, config, sudoers drop-in, units, bootstrap as noderax-net, units started. Re-running upgrades in place and keeps the identity and the config. Every path it creates is listed in /var/lib/noderax-agent-install/manifest for `noderax-agent uninstall`."
)]
pub struct InstallArgs {
    /// Ask nothing (required unless --api-url and --bootstrap-token are both given).
    #[arg(long)]
    non_interactive: bool,
    /// Control-plane origin (a trailing /api/v1 is removed).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// The token of the install command in the web UI.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "NODERAX_BOOTSTRAP_TOKEN",
        hide_env_values = true
    )]
    bootstrap_token: Option<String>,
    /// debug|info|warn|error (default info; an existing config keeps its own unless given).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Where noderax-agent, noderax-agent-exec and noderax-agent-priv are
    /// (plain or published names) [default: this program's directory, and
    /// this program as noderax-agent].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Print every action of the installer without doing any of it.
    #[arg(long)]
    dry_run: bool,
    /// Install into DIR as if it were / (tests and images): nothing is
    /// started, units are only enabled in DIR.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// A private temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..100u32 {
            let dir = base.join(format!(
                "noderax-agent-install.{}.{nanos}.{attempt}",
                std::process::id()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "could not create a temporary directory in {}",
                            base.display()
                        )
                    });
                }
            }
        }
        bail!(
            "could not create a temporary directory in {}: every name is taken",
            base.display()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Where a program of the release is: `dir/NAME` or `dir/NAME-linux-ARCH`.
fn find_program(dir: &Path, program: &str, arch: &str) -> anyhow::Result<PathBuf> {
    for name in [
        program.to_owned(),
        release_files::artifact_name(program, arch),
    ] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{program} is not in {} (neither as {program} nor as {}): put the three programs of one release there, or name their directory with --bin-dir",
        dir.display(),
        release_files::artifact_name(program, arch)
    )
}

/// The three programs to install, in [`PROGRAMS`] order.
fn programs(bin_dir: Option<&Path>, arch: &str) -> anyhow::Result<Vec<PathBuf>> {
    let (dir, me) = match bin_dir {
        Some(d) => (d.to_owned(), None),
        None => {
            let me = std::env::current_exe().context(
                "cannot tell where this program is; name the programs' directory with --bin-dir",
            )?;
            let dir = me
                .parent()
                .context("this program has no directory; use --bin-dir")?
                .to_owned();
            (dir, Some(me))
        }
    };
    PROGRAMS
        .iter()
        .map(|program| match (&me, *program == AGENT) {
            (Some(me), true) => Ok(me.clone()),
            _ => find_program(&dir, program, arch),
        })
        .collect()
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Copies the programs into `release/` under their published names and
/// writes `SHA256SUMS` for them.
fn lay_out_release(scratch: &Path, programs: &[PathBuf], arch: &str) -> anyhow::Result<PathBuf> {
    let release = scratch.join("release");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&release)
        .with_context(|| format!("could not create {}", release.display()))?;
    let mut sums = String::new();
    for (program, src) in PROGRAMS.iter().zip(programs) {
        let name = release_files::artifact_name(program, arch);
        let dest = release.join(&name);
        fs::copy(src, &dest)
            .with_context(|| format!("could not copy {} to {}", src.display(), dest.display()))?;
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&dest)?));
    }
    fs::write(release.join(release_files::CHECKSUMS), sums)
        .context("could not write SHA256SUMS")?;
    Ok(release)
}

fn write_script(scratch: &Path) -> anyhow::Result<PathBuf> {
    let path = scratch.join("install.sh");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .with_context(|| format!("could not create {}", path.display()))?;
    f.write_all(INSTALL_SH.as_bytes())
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(path)
}

pub fn run(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    let (Some(api_url), Some(token)) = (&args.api_url, &args.bootstrap_token) else {
        if !args.non_interactive {
            bail!("{INTERACTIVE_REFUSED}");
        }
        bail!(
            "--non-interactive needs --api-url URL and --bootstrap-token TOKEN (the install command in the web UI shows both)"
        );
    };
    if !args.dry_run && super::status_cmd::current_uid() != 0 {
        bail!(
            "installing needs root: run `sudo noderax-agent install --non-interactive --api-url ... --bootstrap-token ...` (or add --dry-run to see what it would do)"
        );
    }
    let arch = release_files::host_arch().with_context(|| {
        format!(
            "no agent releases exist for the {} architecture (only amd64 and arm64)",
            std::env::consts::ARCH
        )
    })?;
    let programs = programs(args.bin_dir.as_deref(), arch)?;
    println!("installing from this host's programs:");
    for p in &programs {
        println!("  {}", p.display());
    }

    let scratch = Scratch::new()?;
    let release = lay_out_release(&scratch.0, &programs, arch)?;
    let script = write_script(&scratch.0)?;

    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--release-dir")
        .arg(&release)
        .arg("--local-release")
        .arg("--api-url")
        .arg(api_url);
    if let Some(level) = &args.log_level {
        cmd.arg("--log-level").arg(level);
    }
    if args.dry_run {
        cmd.arg("--dry-run");
    }
    if let Some(root) = &args.root {
        cmd.arg("--root").arg(root);
    }
    for var in OVERRIDDEN_ENV {
        cmd.env_remove(var);
    }
    // In the environment, not on the command line where `ps` shows it.
    cmd.env("NODERAX_AGENT_BOOTSTRAP_TOKEN", OsString::from(token))
        .stdin(Stdio::null());
    let status = cmd
        .status()
        .context("could not run the installer with bash; install bash (apt-get install bash)")?;
    drop(scratch);
    match status.code() {
        Some(0) => Ok(ExitCode::SUCCESS),
        // The installer has said what failed.
        Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        None => bail!("the installer was killed by a signal ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_under_plain_or_published_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("noderax-agent"), "a").unwrap();
        fs::write(d.join("noderax-agent-exec-linux-amd64"), "e").unwrap();
        let err = programs(Some(d), "amd64").unwrap_err().to_string();
        assert!(
            err.contains("noderax-agent-priv is not in") && err.contains("--bin-dir"),
            "{err}"
        );
        fs::write(d.join("noderax-agent-priv"), "p").unwrap();
        let found = programs(Some(d), "amd64").unwrap();
        assert_eq!(
            found,
            [
                d.join("noderax-agent"),
                d.join("noderax-agent-exec-linux-amd64"),
                d.join("noderax-agent-priv")
            ]
        );

        let scratch = tempfile::tempdir().unwrap();
        let release = lay_out_release(scratch.path(), &found, "amd64").unwrap();
        let sums = fs::read_to_string(release.join("SHA256SUMS")).unwrap();
        assert_eq!(
            sums,
            format!(
                "{}  noderax-agent-linux-amd64\n{}  noderax-agent-exec-linux-amd64\n{}  noderax-agent-priv-linux-amd64\n",
                // sha256 of "a", "e", "p"
                "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
                "3f79bb7b435b05321651daefd374cdc681dc06faa65e374e38337b88ca046dea",
                "148de9c5a7a44d19e56cd9ae1a554bf67847afb0c58f6e12fa29ac7ddfca9940",
            )
        );
        assert_eq!(
            fs::read(release.join("noderax-agent-exec-linux-amd64")).unwrap(),
            b"e"
        );
    }
}

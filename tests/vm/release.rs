//! The local release "CDN" the guest installs and updates from, written by
//! `scripts/build-release.sh` exactly as a release is published (README,
//! "Releases"), signed with a key made for the run. The testbed serves it
//! under `/cdn/`, which the guest reaches through the bridge.
//!
//! It holds four releases:
//! - `current`: the programs under test; `releases/latest/`, its `.deb` and
//!   the installer. Every scenario installs it.
//! - `next`: the same sources built with a newer version (scenario 5's
//!   successful update).
//! - `broken`: three small ELF programs (`broken-agent.c`) that report the
//!   version and fail at everything else, so the update's readiness wait
//!   fails and the root helper rolls back.
//! - `tampered`: like `broken`, with its agent binary altered after the
//!   release was signed, so it no longer matches the manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use shared::release_files;

/// The guest's view of the layout: the bridge's port on its loopback.
pub const GUEST_BASE_URL: &str = "http://127.0.0.1:18080/cdn/releases";

/// What [`build`] needs.
pub struct Inputs<'a> {
    /// The repository (scripts/build-release.sh, CHANGELOG.md, the installer).
    pub repo: &'a Path,
    /// The release builds of the three programs under test.
    pub bin_dir: &'a Path,
    /// The same programs built with a newer version (scenario 5), if built.
    pub next_bin_dir: Option<&'a Path>,
    /// The `noderax-release` program (built by the workspace's release build).
    pub release_tool: &'a Path,
    /// Scratch space; the layout is `<work>/cdn`.
    pub work: &'a Path,
}

/// A release layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory served as `/cdn/`.
    pub root: PathBuf,
    /// The version of the programs under test (their release directory's name).
    pub version: String,
    /// The newer version of the same programs, when it was built.
    pub next: Option<String>,
    /// A release whose programs do not run.
    pub broken: String,
    /// A release whose agent binary no longer matches its manifest.
    pub tampered: String,
    /// The minisign public key that signed every release (`/cdn/minisign.pub`).
    pub public_key: PathBuf,
}

/// The version `noderax-agent version` reports (first line, without the name).
pub fn reported_version(agent: &Path) -> anyhow::Result<String> {
    let out = Command::new(agent)
        .arg("version")
        .output()
        .with_context(|| format!("running {} version", agent.display()))?;
    if !out.status.success() {
        bail!(
            "{} version failed: {}",
            agent.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("noderax-agent "))
        .map(str::to_owned)
        .with_context(|| format!("unexpected output of noderax-agent version: {text:?}"))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn check_programs(dir: &Path) -> anyhow::Result<()> {
    for p in release_files::PROGRAMS {
        if !dir.join(p).is_file() {
            bail!(
                "{} is missing: build the release binaries first (tests/vm/run does)",
                dir.join(p).display()
            );
        }
    }
    Ok(())
}

/// Builds the layout (replacing `<work>/cdn`).
pub fn build(inputs: &Inputs) -> anyhow::Result<Layout> {
    check_programs(inputs.bin_dir)?;
    let version = reported_version(&inputs.bin_dir.join(release_files::AGENT))?;
    let next = match inputs.next_bin_dir {
        Some(dir) => {
            check_programs(dir)?;
            let next = reported_version(&dir.join(release_files::AGENT))?;
            ensure!(
                next != version,
                "{} holds version {next} too: build the next release with another version",
                dir.display()
            );
            Some(next)
        }
        None => None,
    };
    let broken = format!("{version}-broken");
    let tampered = format!("{version}-tampered");

    let work = inputs.work;
    let root = work.join("cdn");
    for d in [&root, &work.join("dist"), &work.join("stub")] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(work)?;

    // A password-less key for this run only.
    let key = work.join("minisign.key");
    let public_key = work.join("minisign.pub");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&public_key);
    run(
        Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(&public_key)
            .arg("-s")
            .arg(&key),
        "minisign -G (the run's signing key)",
    )?;

    let stub_dir = |v: &str| -> anyhow::Result<PathBuf> {
        let dir = work.join("stub").join(v);
        std::fs::create_dir_all(&dir)?;
        let agent = dir.join(release_files::AGENT);
        run(
            Command::new("cc")
                .args(["-O2", "-Wall", "-Werror"])
                .arg(format!("-DVERSION=\"{v}\""))
                .arg("-o")
                .arg(&agent)
                .arg(inputs.repo.join("tests/vm/broken-agent.c")),
            "cc broken-agent.c (the broken release; package build-essential)",
        )?;
        for p in [release_files::EXECUTOR, release_files::HELPER] {
            std::fs::copy(&agent, dir.join(p))?;
        }
        Ok(dir)
    };

    let mut releases: Vec<(String, PathBuf, bool)> =
        vec![(version.clone(), inputs.bin_dir.to_owned(), true)];
    if let (Some(v), Some(dir)) = (&next, inputs.next_bin_dir) {
        releases.push((v.clone(), dir.to_owned(), false));
    }
    releases.push((broken.clone(), stub_dir(&broken)?, false));
    releases.push((tampered.clone(), stub_dir(&tampered)?, false));

    for (v, bins, with_deb) in &releases {
        let out = work.join("dist").join(v);
        let mut cmd = Command::new(inputs.repo.join("scripts/build-release.sh"));
        cmd.args(["--version", v, "--base-url", GUEST_BASE_URL])
            .arg("--bin-dir")
            .arg(bins)
            .arg("--out")
            .arg(&out)
            .arg("--release-tool")
            .arg(inputs.release_tool)
            .arg("--minisign-key")
            .arg(&key)
            // The stubs have no Debian package; compressing the real one
            // with xz costs a minute of the suite for nothing.
            .args(["--deb-compression", "gzip"]);
        if !with_deb {
            cmd.arg("--no-deb");
        }
        run(&mut cmd, &format!("scripts/build-release.sh --version {v}"))?;
        let top = out.join("noderax-agent");
        if v == &version {
            // The installer, latest/, the catalog: the installed release's.
            run(
                Command::new("cp").arg("-a").arg(&top).arg(&root),
                "copying the release layout",
            )?;
        } else {
            run(
                Command::new("cp")
                    .arg("-a")
                    .arg(top.join("releases").join(v))
                    .arg(root.join("releases")),
                "copying a release directory",
            )?;
        }
    }
    std::fs::copy(&public_key, root.join("minisign.pub"))?;

    // Altered after signing: the manifest's digest no longer matches.
    let arch = release_files::host_arch().context("this host's architecture")?;
    let victim = root
        .join("releases")
        .join(&tampered)
        .join(release_files::artifact_name(release_files::AGENT, arch));
    let mut bytes = std::fs::read(&victim)?;
    bytes.extend_from_slice(b"\ntampered after signing\n");
    std::fs::write(&victim, bytes)?;

    Ok(Layout {
        root: root.clone(),
        version,
        next,
        broken,
        tampered,
        public_key: root.join("minisign.pub"),
    })
}

//! The local release "CDN" the guest installs from, laid out as the real one
//! (notes/update-design.md, "Object layout"): `install.sh` at the top and
//! `releases/{latest,VERSION}/` with the three programs under their
//! published names and `SHA256SUMS`. The testbed serves the directory under
//! `/cdn/`, which the guest reaches through the bridge.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Built programs and their published artifact names (`-linux-<arch>` added).
const PROGRAMS: [&str; 3] = ["noderax-agent", "noderax-agent-exec", "noderax-agent-priv"];

/// A release layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory served as `/cdn/`.
    pub root: PathBuf,
    /// The version the built agent reports (its release directory's name).
    pub version: String,
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

/// Lays out `bin_dir`'s three programs and `installer` under `root`
/// (emptied first) for architecture `arch` (`amd64`).
pub fn build(bin_dir: &Path, installer: &Path, root: &Path, arch: &str) -> anyhow::Result<Layout> {
    for p in PROGRAMS {
        if !bin_dir.join(p).is_file() {
            bail!(
                "{} is missing: build the release binaries first (cargo build --release --workspace; tests/vm/run does)",
                bin_dir.join(p).display()
            );
        }
    }
    let version = reported_version(&bin_dir.join("noderax-agent"))?;
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("emptying {}", root.display()))?;
    }
    std::fs::create_dir_all(root)?;
    std::fs::copy(installer, root.join("install.sh"))
        .with_context(|| format!("copying {}", installer.display()))?;
    for dir_name in ["latest", version.as_str()] {
        let dir = root.join("releases").join(dir_name);
        std::fs::create_dir_all(&dir)?;
        let mut names = Vec::new();
        for p in PROGRAMS {
            let name = format!("{p}-linux-{arch}");
            std::fs::copy(bin_dir.join(p), dir.join(&name))
                .with_context(|| format!("copying {p} into {}", dir.display()))?;
            names.push(name);
        }
        let out = Command::new("sha256sum")
            .args(&names)
            .current_dir(&dir)
            .output()
            .context("running sha256sum")?;
        if !out.status.success() {
            bail!("sha256sum failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(dir.join("SHA256SUMS"), out.stdout)?;
    }
    Ok(Layout {
        root: root.to_owned(),
        version,
    })
}

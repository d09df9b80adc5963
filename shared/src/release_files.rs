//! Names of the files that make up a release, shared by everything that
//! builds, publishes, downloads, stages or installs one (the release script,
//! the installer's tests, agent-net's self-update and the root helper).
//!
//! A release is three programs. PROTOCOL.md §10.4 publishes only
//! `noderax-agent-linux-ARCH`; this agent publishes the executor and the
//! root helper beside it (`noderax-agent-exec-linux-ARCH`,
//! `noderax-agent-priv-linux-ARCH`, in the same `SHA256SUMS`) and lists them
//! in the manifest under `artifacts.ARCH.components` (see
//! `api::release::ReleaseArtifact`), so that an update replaces all three
//! together. The control plane reads only `binaryUrl` and `sha256`.
//!
//! Installed, a release is the directory `/opt/noderax-agent/releases/VERSION`
//! holding [`PROGRAMS`] under their plain names, the manifest and, when
//! published, its signature.

/// The network process (`binaryUrl` in the manifest).
pub const AGENT: &str = "noderax-agent";
/// The executor.
pub const EXECUTOR: &str = "noderax-agent-exec";
/// The root helper.
pub const HELPER: &str = "noderax-agent-priv";
/// Every program of a release; the first is the manifest's main artifact.
pub const PROGRAMS: [&str; 3] = [AGENT, EXECUTOR, HELPER];
/// Programs listed under `artifacts.ARCH.components`.
pub const COMPONENTS: [&str; 2] = [EXECUTOR, HELPER];

/// `releases/VERSION/release-manifest.json`.
pub const MANIFEST: &str = "release-manifest.json";
/// Detached minisign signature of the manifest, when published.
pub const SIGNATURE: &str = "release-manifest.json.minisig";
/// `sha256sum` listing of every artifact of a release.
pub const CHECKSUMS: &str = "SHA256SUMS";

/// Where the installer puts the root helper (a link to
/// `current/noderax-agent-priv`); sudoers names this path, and the executor
/// and `doctor` default to it.
pub const HELPER_PATH: &str = "/usr/local/libexec/noderax-agent-priv";
/// Minisign public key of the release signer, installed by the installer's
/// `--release-key`. When it exists every self-update's manifest must carry a
/// valid signature by it (checked by agent-net when it downloads and again by
/// the root helper when it installs).
pub const RELEASE_KEY_PATH: &str = "/etc/noderax-agent/release.pub";
/// Where releases are installed: `releases/VERSION/`, `current`, `previous`.
pub const INSTALL_DIR: &str = "/opt/noderax-agent";
/// The root helper's outcome of the last switch to a release (JSON, written
/// by the helper, read by the restarted network process):
/// `{"version":"V","outcome":"current|rolled_back|failed","message":"...","finishedAt":"..."}`.
pub const UPDATE_RESULT: &str = "/opt/noderax-agent/update-result.json";

/// The published file name of `program` for `arch`:
/// `noderax-agent-exec-linux-amd64`.
pub fn artifact_name(program: &str, arch: &str) -> String {
    format!("{program}-linux-{arch}")
}

/// The release architecture name of the machine this runs on
/// (PROTOCOL.md §10.4), or `None` where no release is built.
pub fn host_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(artifact_name(AGENT, "amd64"), "noderax-agent-linux-amd64");
        assert_eq!(
            artifact_name(HELPER, "arm64"),
            "noderax-agent-priv-linux-arm64"
        );
        assert_eq!(&PROGRAMS[1..], &COMPONENTS);
    }
}

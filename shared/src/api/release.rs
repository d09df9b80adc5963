//! Release metadata published next to the binaries (PROTOCOL.md §10.4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::release_files;

/// The main artifact's file name for an architecture: `noderax-agent-linux-amd64`.
pub fn artifact_name(arch: &str) -> String {
    release_files::artifact_name(release_files::AGENT, arch)
}

/// `releases/<version>/release-manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseManifest {
    pub version: String,
    #[serde(default)]
    pub published_at: String,
    #[serde(default)]
    pub commit: String,
    /// Only `tag` releases are installable.
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub notes: Vec<ReleaseNotes>,
    /// By architecture (`amd64`, `arm64`).
    #[serde(default)]
    pub artifacts: BTreeMap<String, ReleaseArtifact>,
}

/// One section of release notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseNotes {
    pub title: String,
    pub items: Vec<String>,
}

/// Where one architecture's binary is and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseArtifact {
    pub binary_url: String,
    /// Lower- or upper-case hex SHA-256.
    pub sha256: String,
    /// This agent's addition to §10.4: the executor and the root helper
    /// built with `noderax-agent`, by program name
    /// ([`release_files::COMPONENTS`]). The control plane ignores the field;
    /// a release without it cannot be installed by this agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ReleaseFile>,
}

/// One more file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseFile {
    pub url: String,
    /// Lower- or upper-case hex SHA-256.
    pub sha256: String,
}

/// A file to download for an installation: the program's name, where it is
/// published and its expected lower-case hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramDownload {
    pub program: &'static str,
    pub url: String,
    pub sha256: String,
}

/// `releases/catalog.json`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseCatalog {
    #[serde(default)]
    pub generated_at: String,
    pub releases: Vec<ReleaseManifest>,
}

impl ReleaseManifest {
    /// The agent's validity rule: a version, channel `tag`, and an artifact
    /// for `arch`. Returns that artifact.
    pub fn artifact_for(&self, arch: &str) -> Result<&ReleaseArtifact, String> {
        if self.version.is_empty() {
            return Err("release manifest has no version".into());
        }
        if self.channel != "tag" {
            return Err(format!(
                "release {} is on channel {:?}, only \"tag\" releases are installable",
                self.version, self.channel
            ));
        }
        self.artifacts
            .get(arch)
            .filter(|a| !a.binary_url.is_empty() && !a.sha256.is_empty())
            .ok_or_else(|| format!("release {} has no {arch} artifact", self.version))
    }

    /// Every program this agent installs from the release for `arch`
    /// ([`release_files::PROGRAMS`] order), each with a well-formed digest.
    /// A release that lacks one of them (such as one of the original Go
    /// agent, which is a single binary) is refused with a message that says so.
    pub fn downloads_for(&self, arch: &str) -> Result<Vec<ProgramDownload>, String> {
        let artifact = self.artifact_for(arch)?;
        let mut out = Vec::with_capacity(release_files::PROGRAMS.len());
        let mut push = |program: &'static str, url: &str, sha256: &str| {
            if url.is_empty() {
                return Err(format!(
                    "release {} has no URL for {program} ({arch})",
                    self.version
                ));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "release {} has no valid sha256 for {program} ({arch})",
                    self.version
                ));
            }
            out.push(ProgramDownload {
                program,
                url: url.to_owned(),
                sha256: sha256.to_ascii_lowercase(),
            });
            Ok(())
        };
        push(release_files::AGENT, &artifact.binary_url, &artifact.sha256)?;
        for program in release_files::COMPONENTS {
            let Some(file) = artifact.components.get(program) else {
                return Err(format!(
                    "release {} does not publish {program} for {arch} (artifacts.{arch}.components); \
                     it was not built for this agent's three-process layout and cannot be installed by it",
                    self.version
                ));
            };
            push(program, &file.url, &file.sha256)?;
        }
        Ok(out)
    }
}

//! Release metadata published next to the binaries (PROTOCOL.md §10.4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Artifact file name for an architecture: `noderax-agent-linux-amd64`.
pub fn artifact_name(arch: &str) -> String {
    format!("noderax-agent-linux-{arch}")
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
}

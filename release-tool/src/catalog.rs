//! `releases/catalog.json`: every installable release, newest first
//! (PROTOCOL.md §10.4). A new release is merged into the published catalog:
//! an entry with the same version is replaced (a republished tag), every
//! other entry is kept as it was.

use shared::api::release::{ReleaseCatalog, ReleaseManifest};
use shared::timestamp::Timestamp;

use crate::version_order;

/// The control plane's rule for a catalog entry (PROTOCOL.md §10.4):
/// `version`, `publishedAt`, `commit` non-empty, channel `tag`, at least one
/// artifact with `binaryUrl` and `sha256`, and notes, each with an item.
pub fn check_listable(m: &ReleaseManifest) -> Result<(), String> {
    let fail = |problem: String| -> Result<(), String> {
        let v = if m.version.is_empty() {
            "(no version)"
        } else {
            &m.version
        };
        Err(format!(
            "release {v} cannot be listed in the catalog: {problem}"
        ))
    };
    if m.version.is_empty() {
        return fail("no version".into());
    }
    if m.published_at.is_empty() {
        return fail("no publishedAt".into());
    }
    if m.commit.is_empty() {
        return fail("no commit".into());
    }
    if m.channel != "tag" {
        return fail(format!(
            "channel {:?}: only tag releases are listed (main builds never are)",
            m.channel
        ));
    }
    if !m
        .artifacts
        .values()
        .any(|a| !a.binary_url.is_empty() && !a.sha256.is_empty())
    {
        return fail("no artifact with binaryUrl and sha256".into());
    }
    if m.notes.is_empty() {
        return fail("no release notes (CHANGELOG.md section without entries?)".into());
    }
    if let Some(n) = m.notes.iter().find(|n| n.items.is_empty()) {
        return fail(format!("notes group {:?} has no items", n.title));
    }
    Ok(())
}

/// The releases of a published catalog: `{"generatedAt":...,"releases":[...]}`
/// or a bare array (both are accepted by the control plane).
pub fn parse(text: &str) -> Result<Vec<ReleaseManifest>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("catalog is not JSON: {e}"))?;
    if value.is_array() {
        serde_json::from_value(value).map_err(|e| format!("catalog array: {e}"))
    } else {
        serde_json::from_value::<ReleaseCatalog>(value)
            .map(|c| c.releases)
            .map_err(|e| format!("catalog object: {e}"))
    }
}

/// The result of a merge and what is worth telling the operator.
#[derive(Debug)]
pub struct Merged {
    pub catalog: ReleaseCatalog,
    pub notes: Vec<String>,
}

/// Adds (or replaces) `release` in `existing`, sorted newest first.
pub fn merge(
    existing: Vec<ReleaseManifest>,
    release: ReleaseManifest,
    generated_at: &str,
) -> Result<Merged, String> {
    check_listable(&release)?;
    Timestamp::parse(generated_at).map_err(|e| format!("generatedAt: {e}"))?;
    let mut notes = Vec::new();
    let mut releases: Vec<ReleaseManifest> = Vec::with_capacity(existing.len() + 1);
    for old in existing {
        if old.version == release.version {
            notes.push(format!(
                "replacing the catalog entry of {} (published {}, commit {})",
                old.version, old.published_at, old.commit
            ));
            continue;
        }
        if releases.iter().any(|r| r.version == old.version) {
            notes.push(format!(
                "dropping a second catalog entry for {}",
                old.version
            ));
            continue;
        }
        if let Err(e) = check_listable(&old) {
            notes.push(format!("kept as published, although {e}"));
        }
        releases.push(old);
    }
    releases.push(release);
    releases.sort_by(|a, b| version_order::compare(&b.version, &a.version));
    Ok(Merged {
        catalog: ReleaseCatalog {
            generated_at: generated_at.to_owned(),
            releases,
        },
        notes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shared::api::release::{ReleaseArtifact, ReleaseNotes};

    use super::*;

    fn release(version: &str, commit: &str) -> ReleaseManifest {
        let mut artifacts = BTreeMap::new();
        artifacts.insert(
            "amd64".to_owned(),
            ReleaseArtifact {
                binary_url: format!("https://x/{version}/noderax-agent-linux-amd64"),
                sha256: "a".repeat(64),
                components: BTreeMap::new(),
            },
        );
        ReleaseManifest {
            version: version.into(),
            published_at: "2026-11-27T10:00:00Z".into(),
            commit: commit.into(),
            channel: "tag".into(),
            notes: vec![ReleaseNotes {
                title: "Added".into(),
                items: vec!["x".into()],
            }],
            artifacts,
        }
    }

    #[test]
    fn merges_newest_first_and_replaces_the_same_version() {
        let existing = vec![
            release("1.0.10", "c1"),
            release("1.0.2", "c2"),
            release("0.9.0", "c3"),
        ];
        let text = serde_json::to_string(&ReleaseCatalog {
            generated_at: "2026-01-01T00:00:00Z".into(),
            releases: existing,
        })
        .unwrap();
        let parsed = parse(&text).unwrap();
        let merged = merge(parsed, release("1.0.9", "new"), "2026-11-27T10:00:01Z").unwrap();
        let order: Vec<&str> = merged
            .catalog
            .releases
            .iter()
            .map(|r| r.version.as_str())
            .collect();
        assert_eq!(order, ["1.0.10", "1.0.9", "1.0.2", "0.9.0"]);
        assert!(merged.notes.is_empty(), "{:?}", merged.notes);

        let again = merge(
            merged.catalog.releases,
            release("1.0.9", "newer"),
            "2026-11-27T11:00:00Z",
        )
        .unwrap();
        assert_eq!(again.catalog.releases.len(), 4);
        assert_eq!(again.catalog.releases[1].commit, "newer");
        assert!(again.notes[0].contains("replacing"), "{:?}", again.notes);
        assert_eq!(again.catalog.generated_at, "2026-11-27T11:00:00Z");
    }

    #[test]
    fn bare_arrays_and_empty_input() {
        let text = serde_json::to_string(&vec![release("1.0.0", "c")]).unwrap();
        assert_eq!(parse(&text).unwrap().len(), 1);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("{\"releases\": 3}").is_err());
        assert!(parse("<html>").is_err());
    }

    #[test]
    fn only_listable_releases_are_added() {
        let mut main = release("main-abc1234", "c");
        main.channel = "main".into();
        let e = merge(vec![], main, "2026-11-27T10:00:00Z").unwrap_err();
        assert!(e.contains("main builds never are"), "{e}");
        let mut silent = release("1.0.0", "c");
        silent.notes.clear();
        assert!(merge(vec![], silent, "2026-11-27T10:00:00Z").is_err());
        let mut bad = release("1.0.0", "c");
        bad.notes[0].items.clear();
        assert!(check_listable(&bad).unwrap_err().contains("no items"));
    }
}

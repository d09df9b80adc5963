//! Writing `release-manifest.json` (PROTOCOL.md §10.4 plus this agent's
//! `components`, see `shared::release_files`).
//!
//! Every URL is `<base>/<version>/<artifact>`, where `<base>` is the release
//! base URL the installer (`NODERAX_AGENT_DOWNLOAD_BASE_URL`) and the agent
//! (`update_base_url`) use, `https://cdn.noderax.net/noderax-agent/releases`
//! by default. Digests come from the release's `SHA256SUMS`.

use std::collections::BTreeMap;

use shared::api::release::{ReleaseArtifact, ReleaseFile, ReleaseManifest, ReleaseNotes};
use shared::release_files::{self, AGENT, COMPONENTS};
use shared::timestamp::Timestamp;
use shared::validate;

use crate::catalog;
use crate::checksums::Sums;

/// Architectures releases are built for (PROTOCOL.md §10.4).
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];
/// `tag` releases are installable and go into the catalog; `main` builds
/// (version `main-<sha>`) only refresh `releases/latest`.
pub const CHANNELS: [&str; 2] = ["tag", "main"];

/// What a manifest is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub version: &'a str,
    pub commit: &'a str,
    pub channel: &'a str,
    pub published_at: &'a str,
    pub base_url: &'a str,
    pub arches: &'a [String],
    pub sums: &'a Sums,
    pub notes: Vec<ReleaseNotes>,
}

/// Builds the manifest and checks it the way its readers will: the agent
/// (`downloads_for` every architecture) and, for `tag` releases, the control
/// plane's catalog rule.
pub fn build(input: Input<'_>) -> Result<ReleaseManifest, String> {
    validate::release_version(input.version).map_err(|e| e.to_string())?;
    if input.commit.len() != 40
        || !input
            .commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "commit {:?} is not a full 40-digit lower-case git commit id",
            input.commit
        ));
    }
    if !CHANNELS.contains(&input.channel) {
        return Err(format!(
            "channel {:?} is not one of {CHANNELS:?}",
            input.channel
        ));
    }
    Timestamp::parse(input.published_at).map_err(|e| format!("publishedAt: {e}"))?;
    let base = base_url(input.base_url)?;
    if input.arches.is_empty() {
        return Err("no architecture given".into());
    }

    let mut artifacts = BTreeMap::new();
    for arch in input.arches {
        if !ARCHES.contains(&arch.as_str()) {
            return Err(format!("architecture {arch:?} is not one of {ARCHES:?}"));
        }
        let file = |program: &str| -> Result<ReleaseFile, String> {
            let name = release_files::artifact_name(program, arch);
            let sha256 = input
                .sums
                .get(&name)
                .ok_or_else(|| format!("SHA256SUMS lists no {name}"))?;
            Ok(ReleaseFile {
                url: format!("{base}/{}/{name}", input.version),
                sha256: sha256.clone(),
            })
        };
        let main = file(AGENT)?;
        let components = COMPONENTS
            .iter()
            .map(|p| Ok(((*p).to_owned(), file(p)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let artifact = ReleaseArtifact {
            binary_url: main.url,
            sha256: main.sha256,
            components,
        };
        if artifacts.insert(arch.clone(), artifact).is_some() {
            return Err(format!("architecture {arch} given twice"));
        }
    }

    let manifest = ReleaseManifest {
        version: input.version.to_owned(),
        published_at: input.published_at.to_owned(),
        commit: input.commit.to_owned(),
        channel: input.channel.to_owned(),
        notes: input.notes,
        artifacts,
    };
    if manifest.channel == "tag" {
        for arch in input.arches {
            manifest.downloads_for(arch)?;
        }
        catalog::check_listable(&manifest)?;
    }
    Ok(manifest)
}

/// An http(s) URL without a trailing `/`, query or fragment.
fn base_url(url: &str) -> Result<&str, String> {
    let u = url.trim_end_matches('/');
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && !r.contains(|c: char| c.is_whitespace() || c.is_control() || "?#\"'\\".contains(c))
    });
    if ok {
        Ok(u)
    } else {
        Err(format!(
            "base URL {url:?} is not an http(s) URL like https://cdn.noderax.net/noderax-agent/releases"
        ))
    }
}

/// `publishedAt` for a release made now: RFC 3339 UTC to the second.
pub fn now() -> String {
    let ms = Timestamp::now().unix_millis();
    let secs = Timestamp::from_unix_millis(ms - ms.rem_euclid(1000)).to_string();
    secs.replace(".000Z", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums() -> Sums {
        let mut s = Sums::new();
        for (i, arch) in ARCHES.iter().enumerate() {
            for (j, p) in release_files::PROGRAMS.iter().enumerate() {
                s.insert(
                    release_files::artifact_name(p, arch),
                    format!("{i}{j}").repeat(32),
                );
            }
        }
        s
    }

    fn input<'a>(sums: &'a Sums, arches: &'a [String]) -> Input<'a> {
        Input {
            version: "1.2.0",
            commit: "0123456789abcdef0123456789abcdef01234567",
            channel: "tag",
            published_at: "2026-11-27T10:00:00Z",
            base_url: "https://cdn.example.com/noderax-agent/releases/",
            arches,
            sums,
            notes: vec![ReleaseNotes {
                title: "Added".into(),
                items: vec!["x".into()],
            }],
        }
    }

    #[test]
    fn manifest_lists_three_programs_per_arch() {
        let sums = sums();
        let arches = vec!["amd64".to_owned(), "arm64".to_owned()];
        let m = build(input(&sums, &arches)).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json["artifacts"]["arm64"]["binaryUrl"],
            "https://cdn.example.com/noderax-agent/releases/1.2.0/noderax-agent-linux-arm64"
        );
        assert_eq!(
            json["artifacts"]["amd64"]["components"]["noderax-agent-priv"]["url"],
            "https://cdn.example.com/noderax-agent/releases/1.2.0/noderax-agent-priv-linux-amd64"
        );
        let d = m.downloads_for("arm64").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].sha256, "12".repeat(32));
        // What the agent reads back is what was written.
        let back: ReleaseManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn refuses_bad_input() {
        let sums = sums();
        let arches = vec!["amd64".to_owned()];
        let ok = input(&sums, &arches);
        let riscv = vec!["riscv64".to_owned()];
        let twice = vec!["amd64".to_owned(), "amd64".to_owned()];
        let mut partial = sums.clone();
        partial.remove("noderax-agent-exec-linux-amd64");
        let cases: Vec<(Input<'_>, &str)> = vec![
            (
                Input {
                    version: "../x",
                    ..ok.clone()
                },
                "release version",
            ),
            (
                Input {
                    commit: "abc1234",
                    ..ok.clone()
                },
                "commit",
            ),
            (
                Input {
                    channel: "beta",
                    ..ok.clone()
                },
                "channel",
            ),
            (
                Input {
                    published_at: "yesterday",
                    ..ok.clone()
                },
                "publishedAt",
            ),
            (
                Input {
                    base_url: "cdn.example.com",
                    ..ok.clone()
                },
                "base URL",
            ),
            (
                Input {
                    notes: vec![],
                    ..ok.clone()
                },
                "notes",
            ),
            (
                Input {
                    arches: &riscv,
                    ..ok.clone()
                },
                "architecture",
            ),
            (
                Input {
                    arches: &twice,
                    ..ok.clone()
                },
                "twice",
            ),
            (
                Input {
                    sums: &partial,
                    ..ok.clone()
                },
                "noderax-agent-exec-linux-amd64",
            ),
        ];
        for (case, want) in cases {
            let e = build(case).unwrap_err();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn main_builds_need_no_notes() {
        let sums = sums();
        let arches = vec!["amd64".to_owned()];
        let m = build(Input {
            version: "main-abc1234",
            channel: "main",
            notes: vec![],
            ..input(&sums, &arches)
        })
        .unwrap();
        assert_eq!(m.channel, "main");
    }

    #[test]
    fn now_is_rfc3339_seconds() {
        let t = now();
        assert!(Timestamp::parse(&t).is_ok(), "{t}");
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
    }
}

//! Release notes from `CHANGELOG.md` ([Keep a Changelog] layout).
//!
//! A release's notes are the `## [VERSION]` section (`## [agent-vVERSION]`
//! is accepted too); builds that have none, such as `main-<sha>` builds and
//! local development builds, take `## [Unreleased]`. Inside a section every
//! `### Title` starts a group and every top-level `- ` (or `* `) bullet is an
//! item; indented lines continue the item before them (wrapped text, nested
//! bullets). The items keep their Markdown as written: the web UI and the
//! GitHub Release show it.
//!
//! [Keep a Changelog]: https://keepachangelog.com/en/1.1.0/

use shared::api::release::ReleaseNotes;

/// Title of items that come before any `###` heading.
const UNTITLED: &str = "Changes";

/// One `## ` section of the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section<'a> {
    /// What the heading names: `1.2.0`, `Unreleased`.
    pub name: &'a str,
    /// The lines after the heading, up to the next `## ` heading.
    pub body: Vec<&'a str>,
}

/// Which section was chosen for a version, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen<'a> {
    /// The version's own section.
    Version(Section<'a>),
    /// `[Unreleased]`, because the version has no section.
    Unreleased(Section<'a>),
}

impl<'a> Chosen<'a> {
    pub fn section(&self) -> &Section<'a> {
        match self {
            Chosen::Version(s) | Chosen::Unreleased(s) => s,
        }
    }
}

/// Every `## ` section, in file order.
pub fn sections(text: &str) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            out.push(Section {
                name: heading_name(heading),
                body: Vec::new(),
            });
        } else if let Some(current) = out.last_mut() {
            current.body.push(line);
        }
    }
    out
}

/// `[1.2.0] - 2026-11-27` → `1.2.0`; `1.2.0 (2026-11-27)` → `1.2.0`.
fn heading_name(heading: &str) -> &str {
    let h = heading.trim();
    if let Some(rest) = h.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return rest[..end].trim();
        }
    }
    h.split_whitespace().next().unwrap_or("")
}

/// The section for `version`. With `strict`, a missing section is an error
/// (tag releases must say what they change); otherwise `[Unreleased]` stands in.
pub fn choose<'a>(text: &'a str, version: &str, strict: bool) -> Result<Chosen<'a>, String> {
    let all = sections(text);
    let tagged = format!("agent-v{version}");
    if let Some(s) = all.iter().find(|s| s.name == version || s.name == tagged) {
        return Ok(Chosen::Version(s.clone()));
    }
    if strict {
        return Err(format!(
            "CHANGELOG.md has no section for {version}: rename `## [Unreleased]` to \
             `## [{version}] - YYYY-MM-DD` (and start a new empty [Unreleased]) before tagging agent-v{version}"
        ));
    }
    all.into_iter()
        .find(|s| s.name.eq_ignore_ascii_case("unreleased"))
        .map(Chosen::Unreleased)
        .ok_or_else(|| {
            format!("CHANGELOG.md has neither a section for {version} nor an [Unreleased] section")
        })
}

/// The section as release notes: `[{title, items}]`, groups without items
/// left out, in file order.
pub fn notes(section: &Section<'_>) -> Vec<ReleaseNotes> {
    let mut groups: Vec<ReleaseNotes> = Vec::new();
    let mut title: Option<String> = None;
    let mut item: Option<String> = None;

    fn flush(groups: &mut Vec<ReleaseNotes>, title: &Option<String>, item: &mut Option<String>) {
        let Some(text) = item.take() else { return };
        let title = title.clone().unwrap_or_else(|| UNTITLED.to_owned());
        match groups.last_mut() {
            Some(g) if g.title == title => g.items.push(text),
            _ => groups.push(ReleaseNotes {
                title,
                items: vec![text],
            }),
        }
    }

    for line in &section.body {
        if let Some(t) = line.strip_prefix("### ") {
            flush(&mut groups, &title, &mut item);
            let t = t.trim();
            title = (!t.is_empty()).then(|| t.to_owned());
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            flush(&mut groups, &title, &mut item);
            continue;
        }
        let indented = trimmed.len() != line.len();
        let bullet = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "));
        match (indented, bullet, item.as_mut()) {
            (false, Some(text), _) => {
                flush(&mut groups, &title, &mut item);
                item = Some(text.trim().to_owned());
            }
            (true, _, Some(current)) => {
                current.push(' ');
                current.push_str(trimmed.trim_end());
            }
            // Prose between bullets is not a note.
            _ => flush(&mut groups, &title, &mut item),
        }
    }
    flush(&mut groups, &title, &mut item);
    groups
}

/// The section as Markdown for a GitHub Release body: its lines without
/// link reference definitions (`[1.2.0]: https://...`), trimmed of blank
/// lines at both ends.
pub fn markdown(section: &Section<'_>) -> String {
    let lines: Vec<&str> = section
        .body
        .iter()
        .copied()
        .filter(|l| !is_link_definition(l))
        .collect();
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    match (start, end) {
        (Some(s), Some(e)) => lines[s..=e].join("\n") + "\n",
        _ => String::new(),
    }
}

fn is_link_definition(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
        .is_some_and(|(label, _)| !label.is_empty() && !label.contains(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# Changelog\n\nIntro text.\n\n## [Unreleased]\n\n### Added\n\
        - New `thing`,\n  wrapped onto a second line.\n- Second item.\n\n\
        ### Fixed\n- A bug\n  - nested detail\n\n## [1.2.0] - 2026-11-27\n\
        Some prose that is not a note.\n\n- Untitled item.\n### Removed\n* Old flag.\n\
        ### Empty\n\n[Unreleased]: https://example.com/compare\n[1.2.0]: https://example.com/1.2.0\n";

    #[test]
    fn sections_and_names() {
        let names: Vec<&str> = sections(TEXT).iter().map(|s| s.name).collect();
        assert_eq!(names, ["Unreleased", "1.2.0"]);
        assert_eq!(heading_name("1.0.3 (2026-01-01)"), "1.0.3");
        assert_eq!(heading_name("[agent-v1.0.3]"), "agent-v1.0.3");
    }

    #[test]
    fn unreleased_notes() {
        let chosen = choose(TEXT, "0.1.0-dev", false).unwrap();
        assert!(matches!(chosen, Chosen::Unreleased(_)));
        assert_eq!(
            notes(chosen.section()),
            vec![
                ReleaseNotes {
                    title: "Added".into(),
                    items: vec![
                        "New `thing`, wrapped onto a second line.".into(),
                        "Second item.".into()
                    ],
                },
                ReleaseNotes {
                    title: "Fixed".into(),
                    items: vec!["A bug - nested detail".into()],
                },
            ]
        );
    }

    #[test]
    fn version_notes_skip_prose_and_empty_groups() {
        let chosen = choose(TEXT, "1.2.0", true).unwrap();
        assert!(matches!(chosen, Chosen::Version(_)));
        assert_eq!(
            notes(chosen.section()),
            vec![
                ReleaseNotes {
                    title: UNTITLED.into(),
                    items: vec!["Untitled item.".into()],
                },
                ReleaseNotes {
                    title: "Removed".into(),
                    items: vec!["Old flag.".into()],
                },
            ]
        );
        let md = markdown(chosen.section());
        assert!(md.starts_with("Some prose"), "{md}");
        assert!(md.ends_with("### Empty\n"), "{md}");
        assert!(!md.contains("https://example.com"), "{md}");
    }

    #[test]
    fn tag_prefixed_heading_matches() {
        let text = "## [agent-v2.0.0]\n### Added\n- x\n";
        assert!(matches!(
            choose(text, "2.0.0", true).unwrap(),
            Chosen::Version(_)
        ));
    }

    #[test]
    fn strict_requires_the_version() {
        let e = choose(TEXT, "9.9.9", true).unwrap_err();
        assert!(e.contains("no section for 9.9.9"), "{e}");
        let e = choose("# Changelog\n## [1.0.0]\n- x\n", "2.0.0", false).unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }

    #[test]
    fn link_definitions() {
        assert!(is_link_definition("[1.2.0]: https://x"));
        assert!(!is_link_definition("[not a link] text"));
        assert!(!is_link_definition("- [x]: y"));
    }
}

//! `packageSearch` (PROTOCOL.md §7.4): search apt's cache.
//!
//! `apt-cache search --full` prints complete control records (`Package:`,
//! `Version:`, `Description:`), a stable machine-readable format, unlike
//! `apt search`, which warns that its output is not a stable interface and
//! whose warning on stderr became a bogus result in the original agent
//! (§13 item 21). Terms follow `--`, so a term starting with `-` is a
//! pattern, never an option. Only stdout is parsed.

use shared::api::task::{PackageSearchHit, PackageSearchResult};

pub const PROGRAM: &str = "apt-cache";
/// Most hits returned; the rest is counted in a note. Keeps the result
/// well inside one IPC frame and readable in the control plane's UI.
pub const MAX_HITS: usize = 1000;
/// Most terms and longest term accepted.
const MAX_TERMS: usize = 32;
const MAX_TERM_LEN: usize = 255;

/// Checks the terms and builds the arguments of [`PROGRAM`].
pub fn args(terms: &[String]) -> Result<Vec<String>, String> {
    let terms: Vec<&str> = terms
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return Err("invalid task payload: packageSearch needs a search term".into());
    }
    if terms.len() > MAX_TERMS {
        return Err(format!(
            "invalid task payload: packageSearch takes at most {MAX_TERMS} terms, got {}",
            terms.len()
        ));
    }
    if let Some(t) = terms
        .iter()
        .find(|t| t.len() > MAX_TERM_LEN || t.contains('\0'))
    {
        return Err(format!(
            "invalid task payload: search term {:?}… is longer than {MAX_TERM_LEN} bytes or contains NUL",
            t.chars().take(40).collect::<String>()
        ));
    }
    let mut args = vec!["search".to_owned(), "--full".to_owned(), "--".to_owned()];
    args.extend(terms.iter().map(|t| (*t).to_owned()));
    Ok(args)
}

/// Parses `apt-cache search --full` output. A package listed in several
/// versions (several sources) appears once, with the first version apt
/// printed. Returns the result and how many hits were left out.
pub fn parse(stdout: &[u8]) -> (PackageSearchResult, usize) {
    let text = String::from_utf8_lossy(stdout);
    let mut results: Vec<PackageSearchHit> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut left_out = 0;
    for record in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut description = None;
        for line in record.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_owned());
            } else if let Some(v) = line
                .strip_prefix("Description: ")
                .or_else(|| line.strip_prefix("Description-en: "))
            {
                description.get_or_insert_with(|| v.trim().to_owned());
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        if results.len() >= MAX_HITS {
            left_out += 1;
            continue;
        }
        results.push(PackageSearchHit {
            name,
            version,
            description,
        });
    }
    (PackageSearchResult { results }, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_once_per_package() {
        let out = b"Package: nginx\nVersion: 1.22.1-9\nArchitecture: amd64\nDescription: small, powerful, scalable web/proxy server\nDescription-md5: x\n\n\
Package: nginx\nVersion: 1.22.1-8\nDescription: older\n\n\
Package: libnginx-mod-http-echo\nVersion: 1:0.63\nDescription-en: Bring echo to nginx\n";
        let (r, left_out) = parse(out);
        assert_eq!(left_out, 0);
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0].name, "nginx");
        assert_eq!(r.results[0].version.as_deref(), Some("1.22.1-9"));
        assert_eq!(
            r.results[0].description.as_deref(),
            Some("small, powerful, scalable web/proxy server")
        );
        assert_eq!(
            r.results[1].description.as_deref(),
            Some("Bring echo to nginx")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.starts_with(r#"{"results":[{"name":"nginx","version":"1.22.1-9","description":"#)
        );
    }

    #[test]
    fn terms_follow_a_double_dash_and_are_checked() {
        assert_eq!(
            args(&["nginx".into(), " -x ".into()]).unwrap(),
            ["search", "--full", "--", "nginx", "-x"]
        );
        assert!(
            args(&[" ".into()])
                .unwrap_err()
                .contains("needs a search term")
        );
        assert!(
            args(&vec!["a".to_owned(); 33])
                .unwrap_err()
                .contains("at most 32")
        );
    }

    #[test]
    fn caps_the_number_of_hits_and_counts_the_rest() {
        let out: String = (0..MAX_HITS + 5)
            .map(|i| format!("Package: p{i}\nVersion: 1\n\n"))
            .collect();
        let (r, left_out) = parse(out.as_bytes());
        assert_eq!(r.results.len(), MAX_HITS);
        assert_eq!(left_out, 5);
    }
}

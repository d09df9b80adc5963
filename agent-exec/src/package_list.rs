//! `packageList` (PROTOCOL.md §7.3): installed packages from dpkg's database.
//!
//! `dpkg-query -W` with an explicit, tab-separated format is machine-readable
//! (unlike `dpkg -l`, whose columns depend on the terminal width), and
//! `${db:Status-Status}` says exactly whether a package is installed, so
//! config-only leftovers (`rc`) and half-installed packages are not reported
//! (§13 item 22). Only stdout is parsed; stderr is streamed as output and
//! never mixed into the result (§13 item 21).

use shared::api::task::{InstalledPackage, PackageListResult};

/// The program and its arguments.
pub const PROGRAM: &str = "dpkg-query";
const FORMAT: &str =
    "${db:Status-Status}\\t${Package}\\t${Version}\\t${Architecture}\\t${binary:Summary}\\n";

/// Arguments of [`PROGRAM`].
pub fn args() -> Vec<String> {
    vec![
        "-W".into(),
        format!("-f={}", FORMAT.replace("\\t", "\t").replace("\\n", "\n")),
    ]
}

/// Parses `dpkg-query` output in [`args`]' format. Lines of packages that
/// are not installed are skipped; a line that does not have the expected
/// fields is an error naming it.
pub fn parse(stdout: &[u8]) -> Result<PackageListResult, String> {
    let text = String::from_utf8_lossy(stdout);
    let mut packages = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.splitn(5, '\t').collect();
        let [status, name, version, arch, summary] = fields[..] else {
            return Err(format!(
                "dpkg-query output line {} has {} fields instead of 5: {:?}",
                n + 1,
                fields.len(),
                line.chars().take(200).collect::<String>()
            ));
        };
        if status != "installed" {
            continue;
        }
        if name.is_empty() {
            return Err(format!(
                "dpkg-query output line {} has no package name",
                n + 1
            ));
        }
        packages.push(InstalledPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: arch.to_owned(),
            description: Some(summary.trim().to_owned()).filter(|s| !s.is_empty()),
        });
    }
    Ok(PackageListResult { packages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_installed_packages_only_and_every_field() {
        let out = b"installed\tnginx\t1.24.0-2ubuntu7\tamd64\tsmall, powerful, scalable web/proxy server\n\
config-files\told-pkg\t1.0\tamd64\tremoved but configured\n\
half-installed\tbroken\t2.0\tall\tx\n\
installed\tcurl\t8.5.0\tamd64\t\n\
installed\tlibc6\t2.36-9\tamd64\ttab\tin summary\n";
        let r = parse(out).unwrap();
        let names: Vec<&str> = r.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["nginx", "curl", "libc6"]);
        assert_eq!(r.packages[0].version, "1.24.0-2ubuntu7");
        assert_eq!(r.packages[0].architecture, "amd64");
        assert_eq!(
            r.packages[0].description.as_deref(),
            Some("small, powerful, scalable web/proxy server")
        );
        assert_eq!(r.packages[1].description, None);
        assert_eq!(
            r.packages[2].description.as_deref(),
            Some("tab\tin summary")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"packages":[{"name":"nginx","version":"1.24.0-2ubuntu7","architecture":"amd64","description":"#));
        assert!(json.contains(r#"{"name":"curl","version":"8.5.0","architecture":"amd64"}"#));
    }

    #[test]
    fn a_malformed_line_is_an_error_not_a_bogus_package() {
        let err = parse(b"installed\tnginx\n").unwrap_err();
        assert!(err.contains("line 1 has 2 fields"), "{err}");
    }

    #[test]
    fn the_format_is_tab_separated() {
        let a = args();
        assert_eq!(a[0], "-W");
        assert!(a[1].starts_with("-f=${db:Status-Status}\t${Package}\t"));
        assert!(a[1].ends_with("${binary:Summary}\n"));
    }
}

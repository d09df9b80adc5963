//! What the agent reports about its host at enrollment and in every
//! `agent.auth` (PROTOCOL.md §2.1, §4.2): lower-case hostname, distribution
//! id and version from os-release, kernel release, Go-style architecture.

use shared::api::HostFacts;

/// The host's facts as reported to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub hostname: String,
    /// Distribution id (`debian`), `linux` when unknown.
    pub os: String,
    /// Distribution version (`12`), empty when unknown.
    pub platform_version: String,
    pub kernel_version: String,
    pub arch: &'static str,
}

impl Host {
    /// Reads the running system.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let os_release = {
            let etc = read("/etc/os-release");
            if etc.is_empty() {
                read("/usr/lib/os-release")
            } else {
                etc
            }
        };
        let (os, platform_version) = parse_os_release(&os_release);
        Self {
            hostname: read("/proc/sys/kernel/hostname").trim().to_lowercase(),
            os,
            platform_version,
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            arch: shared::api::host_arch(),
        }
    }

    /// The `additionalInfo` of enrollment and consume.
    pub fn facts(&self) -> HostFacts {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        HostFacts {
            os: Some(self.os.clone()),
            arch: Some(self.arch.to_owned()),
            agent_version: Some(shared::build_info::VERSION.to_owned()),
            platform_version: non_empty(&self.platform_version),
            kernel_version: non_empty(&self.kernel_version),
        }
    }
}

/// `(ID, VERSION_ID)` from os-release text; `("linux", "")` when absent.
pub fn parse_os_release(text: &str) -> (String, String) {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
            .find(|v| !v.is_empty())
    };
    (
        value("ID").unwrap_or_else(|| "linux".into()).to_lowercase(),
        value("VERSION_ID").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_variants() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(parse_os_release(debian), ("debian".into(), "12".into()));
        let ubuntu = "ID=ubuntu\nID_LIKE=debian\nVERSION_ID='24.04'\n";
        assert_eq!(parse_os_release(ubuntu), ("ubuntu".into(), "24.04".into()));
        assert_eq!(parse_os_release(""), ("linux".into(), String::new()));
        assert_eq!(
            parse_os_release("ID_LIKE=debian\n"),
            ("linux".into(), String::new())
        );
    }

    #[test]
    fn this_host() {
        let h = Host::detect();
        assert!(!h.hostname.is_empty());
        assert_eq!(h.hostname, h.hostname.to_lowercase());
        assert!(!h.kernel_version.is_empty());
        let f = h.facts();
        assert_eq!(
            f.agent_version.as_deref(),
            Some(shared::build_info::VERSION)
        );
    }
}

//! Types used by several routes and events: host facts, architecture, root
//! access profiles (PROTOCOL.md §11.2) and the server's error body (§0.3).

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// CPU architecture in the Go names the control plane expects (PROTOCOL.md
/// §2.1): fleet updates only accept nodes that report exactly `amd64` or `arm64`.
pub fn host_arch() -> &'static str {
    go_arch_name(std::env::consts::ARCH)
}

/// Maps a Rust architecture name (`std::env::consts::ARCH`) to Go's.
pub fn go_arch_name(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        // arm, riscv64, s390x, mips64 ... are spelled the same in Go.
        other => other,
    }
}

/// Host facts sent at enrollment (PROTOCOL.md §2.1), as `additionalInfo` of
/// e-mail enrollment and node-install consume. Consume whitelists exactly
/// these keys; never add one (e.g. `location`, §11.3) without the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    /// Distribution id (`debian`, `ubuntu`), else `linux`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// `amd64`, `arm64`, ... ([`host_arch`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Distribution version (`12`, `24.04`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    /// Kernel release (`6.8.0-57-generic`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
}

impl super::Schema for HostFacts {
    const ACCEPTED: &'static [&'static str] = &[
        "os",
        "arch",
        "agentVersion",
        "platformVersion",
        "kernelVersion",
    ];
    const REQUIRED: &'static [&'static str] = &[];
}

/// Root access profiles (PROTOCOL.md §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootProfile {
    Off,
    Operational,
    Task,
    Terminal,
    OperationalTask,
    OperationalTerminal,
    TaskTerminal,
    All,
}

/// The privileged surfaces a profile enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootScopes {
    /// Package changes, `apt-get update`, agent restart, reboot.
    pub operational: bool,
    /// Root `shell.exec`.
    pub task: bool,
    /// Root terminals.
    pub terminal: bool,
}

impl RootProfile {
    /// Every profile, in the order of the table in PROTOCOL.md §11.2.
    pub const ALL: [RootProfile; 8] = [
        Self::Off,
        Self::Operational,
        Self::Task,
        Self::Terminal,
        Self::OperationalTask,
        Self::OperationalTerminal,
        Self::TaskTerminal,
        Self::All,
    ];

    /// The wire name (`operational_task`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Operational => "operational",
            Self::Task => "task",
            Self::Terminal => "terminal",
            Self::OperationalTask => "operational_task",
            Self::OperationalTerminal => "operational_terminal",
            Self::TaskTerminal => "task_terminal",
            Self::All => "all",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The surfaces this profile enables.
    pub fn scopes(self) -> RootScopes {
        let (operational, task, terminal) = match self {
            Self::Off => (false, false, false),
            Self::Operational => (true, false, false),
            Self::Task => (false, true, false),
            Self::Terminal => (false, false, true),
            Self::OperationalTask => (true, true, false),
            Self::OperationalTerminal => (true, false, true),
            Self::TaskTerminal => (false, true, true),
            Self::All => (true, true, true),
        };
        RootScopes {
            operational,
            task,
            terminal,
        }
    }

    /// The profile that enables exactly `scopes`.
    pub fn from_scopes(scopes: RootScopes) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| p.scopes() == scopes)
            .unwrap_or(Self::Off)
    }

    /// The largest profile within both `self` and `other` (surface-wise AND).
    pub fn intersect(self, other: Self) -> Self {
        let (a, b) = (self.scopes(), other.scopes());
        Self::from_scopes(RootScopes {
            operational: a.operational && b.operational,
            task: a.task && b.task,
            terminal: a.terminal && b.terminal,
        })
    }
}

impl std::fmt::Display for RootProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The *desired* profile the server sends in the auth ack, every claim
/// response and `root-access.updated` (PROTOCOL.md §11.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredRootAccess {
    pub profile: RootProfile,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The *applied* profile the agent reports in `agent.auth` and every claim
/// (PROTOCOL.md §11.2). `lastError` is omitted when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootAccessReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_profile: Option<RootProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl super::Schema for RootAccessReport {
    const ACCEPTED: &'static [&'static str] = &["appliedProfile", "lastAppliedAt", "lastError"];
    const REQUIRED: &'static [&'static str] = &[];
}

/// The server's error body (PROTOCOL.md §0.3 rule 6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiErrorBody {
    #[serde(default)]
    pub status_code: Option<u16>,
    /// Validation messages joined with `"; "`.
    #[serde(default)]
    pub message: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub errors: Option<Vec<String>>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl ApiErrorBody {
    /// The most useful text in the body: `message`, else `error`.
    pub fn text(&self) -> Option<String> {
        match &self.message {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Array(items)) if !items.is_empty() => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => self.error.clone().filter(|e| !e.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_names_are_gos() {
        assert_eq!(go_arch_name("x86_64"), "amd64");
        assert_eq!(go_arch_name("aarch64"), "arm64");
        assert_eq!(go_arch_name("riscv64"), "riscv64");
        assert!(["amd64", "arm64"].contains(&host_arch()) || !host_arch().contains('_'));
    }

    #[test]
    fn profiles_round_trip_and_intersect() {
        for p in RootProfile::ALL {
            assert_eq!(RootProfile::parse(p.as_str()), Some(p));
            assert_eq!(RootProfile::from_scopes(p.scopes()), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
        use RootProfile::*;
        assert_eq!(All.intersect(Operational), Operational);
        assert_eq!(OperationalTerminal.intersect(TaskTerminal), Terminal);
        assert_eq!(Task.intersect(Operational), Off);
        assert_eq!(RootProfile::parse("root"), None);
    }

    #[test]
    fn error_body_text() {
        let body: ApiErrorBody = serde_json::from_str(
            r#"{"statusCode":400,"path":"/x","timestamp":"t","message":"line must be longer","error":"Bad Request","errors":["line must be longer"]}"#,
        )
        .unwrap();
        assert_eq!(body.text().as_deref(), Some("line must be longer"));
        let body: ApiErrorBody =
            serde_json::from_str(r#"{"message":["a","b"],"error":"Bad Request"}"#).unwrap();
        assert_eq!(body.text().as_deref(), Some("a; b"));
        let body: ApiErrorBody = serde_json::from_str(r#"{"error":"Conflict"}"#).unwrap();
        assert_eq!(body.text().as_deref(), Some("Conflict"));
    }
}

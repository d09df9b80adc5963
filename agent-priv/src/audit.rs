//! The audit trail: one record per invocation — caller, command line,
//! outcome, duration — to the system log and to a root-owned, append-only
//! JSON-lines file.
//!
//! The system log is reached by writing to `/dev/log` directly (one Unix
//! datagram per record), so no logging daemon or library is needed; when no
//! socket listens the file still gets the record. The file is opened with
//! `O_APPEND | O_NOFOLLOW` in a root-owned directory that is not writable by
//! anyone else, created with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use shared::timestamp::Timestamp;

use crate::Failure;
use crate::host::{self, Host, paths};
use crate::policy::Caller;

/// syslog facility `authpriv` (10): the log for privilege changes.
const FACILITY: u8 = 10;
/// Severities used: informational for success, warning otherwise.
const INFO: u8 = 6;
const WARNING: u8 = 4;

/// One invocation's record.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub caller: &'a Caller,
    /// argv\[0\] and every argument, lossily decoded.
    pub argv: &'a [String],
    /// `started`, `ok`, `refused` or `failed`.
    pub outcome: &'a str,
    pub exit_code: u8,
    pub message: &'a str,
    pub duration: Duration,
}

impl Record<'_> {
    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "time": Timestamp::now().to_string(),
            "pid": std::process::id(),
            "uid": self.caller.ruid,
            "euid": self.caller.euid,
            "sudoUid": self.caller.sudo_uid,
            "argv": self.argv,
            "outcome": self.outcome,
            "exitCode": self.exit_code,
            "message": self.message,
            "durationMs": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        })
        .to_string()
    }

    /// The syslog datagram (RFC 3164 without a timestamp, which the local
    /// log daemon or journald adds).
    pub fn to_syslog(&self) -> String {
        let severity = if self.outcome == "ok" || self.outcome == "started" {
            INFO
        } else {
            WARNING
        };
        format!(
            "<{}>noderax-agent-priv[{}]: {}",
            FACILITY * 8 + severity,
            std::process::id(),
            self.to_json()
        )
    }
}

/// Writes `rec` to the system log and the audit file. The file must work;
/// the system log is best effort (a host may run no log daemon).
pub fn write(host: &Host, rec: &Record<'_>) -> Result<(), Failure> {
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(rec.to_syslog().as_bytes(), host.path(paths::SYSLOG));
    }
    let dir = host.path(paths::AUDIT_DIR);
    let file = host.path(paths::AUDIT_FILE);
    let fail = |e: String| {
        Failure::failed(format!(
            "cannot write the audit log {}: {e}; it must be a root-owned file in a root-owned \
             directory that nobody else can write",
            file.display()
        ))
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|e| fail(e.to_string()))?;
    }
    host::check_trusted(&dir).map_err(|e| fail(e.message))?;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&file)
        .map_err(|e| fail(e.to_string()))?;
    host::check_trusted(&file).map_err(|e| fail(e.message))?;
    let mut line = rec.to_json();
    line.push('\n');
    // One write call per record: O_APPEND makes it land whole at the end.
    f.write_all(line.as_bytes())
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn caller() -> Caller {
        Caller {
            ruid: 0,
            euid: 0,
            sudo_uid: Some("998".into()),
        }
    }

    #[test]
    fn records_go_to_the_file_and_the_log_socket() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::under(dir.path());
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        let log = UnixDatagram::bind(dir.path().join("dev/log")).unwrap();
        log.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let argv = vec!["noderax-agent-priv".to_owned(), "apt\n\"update".to_owned()];
        let c = caller();
        let rec = Record {
            caller: &c,
            argv: &argv,
            outcome: "refused",
            exit_code: 2,
            message: "ceiling is off",
            duration: Duration::from_millis(12),
        };
        write(&host, &rec).unwrap();
        write(
            &host,
            &Record {
                outcome: "ok",
                exit_code: 0,
                ..rec.clone()
            },
        )
        .unwrap();

        let text =
            fs::read_to_string(dir.path().join("var/log/noderax-agent/priv-audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["argv"][1], "apt\n\"update");
        assert_eq!(lines[0]["outcome"], "refused");
        assert_eq!(lines[0]["sudoUid"], "998");
        assert_eq!(lines[0]["durationMs"], 12);
        assert_eq!(lines[1]["outcome"], "ok");
        let md = fs::metadata(dir.path().join("var/log/noderax-agent/priv-audit.jsonl")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);

        let mut buf = [0u8; 4096];
        let n = log.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(msg.starts_with("<84>noderax-agent-priv["), "{msg}");
        assert!(msg.contains("\"outcome\":\"refused\""), "{msg}");
        let n = log.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("<86>"));
    }

    #[test]
    fn an_untrusted_audit_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::under(dir.path());
        let adir = dir.path().join("var/log/noderax-agent");
        fs::create_dir_all(&adir).unwrap();
        fs::set_permissions(&adir, fs::Permissions::from_mode(0o777)).unwrap();
        let c = caller();
        let rec = Record {
            caller: &c,
            argv: &[],
            outcome: "ok",
            exit_code: 0,
            message: "",
            duration: Duration::ZERO,
        };
        let e = write(&host, &rec).unwrap_err();
        assert!(
            e.message.contains("cannot write the audit log"),
            "{}",
            e.message
        );
        assert!(!adir.join("priv-audit.jsonl").exists());
    }
}

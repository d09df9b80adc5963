//! systemd's readiness and watchdog protocol (sd_notify(3)), without
//! libsystemd: one datagram per state change to `$NOTIFY_SOCKET`. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The notification socket systemd gave this process, if any.
pub struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`; an abstract address starts with `@`.
    pub fn from_env() -> Self {
        let addr = std::env::var_os("NOTIFY_SOCKET").and_then(|raw| {
            let raw = raw.to_string_lossy().into_owned();
            if let Some(name) = raw.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()
            } else if raw.starts_with('/') {
                SocketAddr::from_pathname(&raw).ok()
            } else {
                None
            }
        });
        Self { addr }
    }

    pub fn enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// Sends `state` (e.g. `READY=1`); errors are returned for logging.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some(addr) = &self.addr else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), addr)?;
        Ok(())
    }

    /// Half the watchdog interval systemd expects (`WATCHDOG_USEC`), when
    /// the watchdog is enabled for this process.
    pub fn watchdog_period() -> Option<Duration> {
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.trim() != std::process::id().to_string()
        {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_on_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            addr: Some(SocketAddr::from_pathname(&path).unwrap()),
        };
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        // Without a socket nothing is sent and nothing fails.
        assert!(Notifier { addr: None }.notify("READY=1").is_ok());
    }
}

//! Timers and limits of the fake control plane. Defaults are the real
//! server's (PROTOCOL.md Appendix A); tests shorten them to seconds.

use std::path::PathBuf;
use std::time::Duration;

/// How the testbed behaves.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: std::net::SocketAddr,
    /// Lease of a claimed task before it can be claimed again (§6.1, 60 s).
    pub claim_lease: Duration,
    /// How often the stale sweeper runs (15 s).
    pub stale_sweep: Duration,
    /// A queued task nobody claimed fails after this (120 s).
    pub queued_timeout: Duration,
    /// A running task fails after this (1800 s).
    pub running_timeout: Duration,
    /// A node without auth/metrics/heartbeat goes offline after this (90 s).
    pub offline_after: Duration,
    /// Disconnect a socket without ping/metrics for this long (45 s); `None`
    /// as in the API snapshot without Redis.
    pub ping_watchdog: Option<Duration>,
    /// `terminal.opened` must arrive within this (15 s).
    pub terminal_open_timeout: Duration,
    /// `terminal.exited` must arrive this long after `terminal.stop` (10 s).
    pub terminal_exit_timeout: Duration,
    /// Decoded terminal output kept per session before `transcript-overflow` (10 MiB).
    pub terminal_transcript_cap: usize,
    /// Enrollment and node-install token lifetime (15 min).
    pub token_ttl: Duration,
    /// Rollout monitor period (15 s).
    pub rollout_monitor: Duration,
    /// A target without progress for this long fails: dispatched (2 min),
    /// waiting_for_reconnect (5 min), other active states (15 min).
    pub rollout_dispatched_timeout: Duration,
    pub rollout_reconnect_timeout: Duration,
    pub rollout_active_timeout: Duration,
    /// Requests per window and client IP on the throttled routes (§0.3 rule 7);
    /// `None` (the default) disables throttling.
    pub throttle: Option<(u32, Duration)>,
    /// Directory served as the release "CDN" under `/cdn/`.
    pub release_dir: Option<PathBuf>,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            claim_lease: Duration::from_secs(60),
            stale_sweep: Duration::from_secs(15),
            queued_timeout: Duration::from_secs(120),
            running_timeout: Duration::from_secs(1800),
            offline_after: Duration::from_secs(90),
            ping_watchdog: None,
            terminal_open_timeout: Duration::from_secs(15),
            terminal_exit_timeout: Duration::from_secs(10),
            terminal_transcript_cap: 10 << 20,
            token_ttl: Duration::from_secs(15 * 60),
            rollout_monitor: Duration::from_secs(15),
            rollout_dispatched_timeout: Duration::from_secs(120),
            rollout_reconnect_timeout: Duration::from_secs(300),
            rollout_active_timeout: Duration::from_secs(900),
            throttle: None,
            release_dir: None,
        }
    }
}

impl TestbedConfig {
    /// Real timers divided so a test sees them in seconds: lease 3 s, sweep
    /// 250 ms, queued 6 s, running 30 s, offline 5 s, terminal 3 s / 2 s.
    pub fn fast() -> Self {
        Self {
            claim_lease: Duration::from_secs(3),
            stale_sweep: Duration::from_millis(250),
            queued_timeout: Duration::from_secs(6),
            running_timeout: Duration::from_secs(30),
            offline_after: Duration::from_secs(5),
            terminal_open_timeout: Duration::from_secs(3),
            terminal_exit_timeout: Duration::from_secs(2),
            rollout_monitor: Duration::from_millis(250),
            rollout_dispatched_timeout: Duration::from_secs(10),
            rollout_reconnect_timeout: Duration::from_secs(10),
            rollout_active_timeout: Duration::from_secs(10),
            ..Self::default()
        }
    }
}

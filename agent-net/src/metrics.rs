//! Host metrics for `agent.metrics` (PROTOCOL.md §5.1), read straight from
//! procfs, sysfs and `statvfs(2)`.
//!
//! Only what is sent is read, and nothing blocks: CPU usage is the busy share
//! of CPU time between two consecutive samples (the first sample uses the
//! time since boot), not a 200 ms sleep per sample as in the original agent.
//! The `sysinfo` crate the issue suggests refreshes far more state than is
//! sent; four small files and one system call are cheaper on small VMs.
//! Temperature is the highest sensor reading, or absent when no sensor is
//! readable (never a fake 0 °C, §13 item 39).

use std::path::{Path, PathBuf};

use shared::api::metrics::InterfaceCounters;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub cpu_usage: f64,
    pub memory_usage: f64,
    pub disk_usage: f64,
    pub temperature: Option<f64>,
    pub networks: Vec<InterfaceCounters>,
}

/// Reads samples; keeps the previous CPU counters between calls.
pub struct Collector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    disk_path: PathBuf,
    prev_cpu: Option<(u64, u64)>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    /// Reads the running system (`/proc`, `/sys`, the filesystem at `/`).
    pub fn new() -> Self {
        Self::with_roots("/proc".into(), "/sys".into(), "/".into())
    }

    /// Reads other roots (tests).
    pub fn with_roots(proc_root: PathBuf, sys_root: PathBuf, disk_path: PathBuf) -> Self {
        Self {
            proc_root,
            sys_root,
            disk_path,
            prev_cpu: None,
        }
    }

    /// Takes a sample. Values that cannot be read are 0 (percentages) or
    /// absent (temperature); a sample is always produced.
    pub fn sample(&mut self) -> Sample {
        let cpu = self.cpu_usage();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        Sample {
            cpu_usage: cpu,
            memory_usage: sanitize(memory_usage(&read(&self.proc_root.join("meminfo")))),
            disk_usage: sanitize(disk_usage(&self.disk_path).unwrap_or(0.0)),
            temperature: max_temperature(&self.sys_root),
            networks: parse_net_dev(&read(&self.proc_root.join("net/dev"))),
        }
    }

    fn cpu_usage(&mut self) -> f64 {
        let text = std::fs::read_to_string(self.proc_root.join("stat")).unwrap_or_default();
        let Some((busy, total)) = parse_cpu_line(&text) else {
            return 0.0;
        };
        let (prev_busy, prev_total) = self.prev_cpu.replace((busy, total)).unwrap_or((0, 0));
        let (db, dt) = (
            busy.saturating_sub(prev_busy),
            total.saturating_sub(prev_total),
        );
        if dt == 0 {
            return 0.0;
        }
        sanitize(db as f64 * 100.0 / dt as f64)
    }
}

/// NaN and infinities become 0; the rest is clamped to 0–100 (§5.1).
pub fn sanitize(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// `(busy, total)` jiffies from the aggregate `cpu` line of /proc/stat.
/// Busy excludes idle and iowait; guest time is already in user/nice.
fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn memory_usage(meminfo: &str) -> f64 {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0.0 => (total - avail) * 100.0 / total,
        _ => 0.0,
    }
}

/// Used share of the filesystem as `df` computes it: used / (used + available to users).
fn disk_usage(path: &Path) -> Option<f64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
    let avail = st.f_bavail as f64;
    (used + avail > 0.0).then(|| used * 100.0 / (used + avail))
}

/// Per-interface counters from /proc/net/dev (loopback included, as the
/// original agent reported it).
fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if v.len() < 16 {
                return None;
            }
            Some(InterfaceCounters {
                interface: name.trim().to_owned(),
                bytes_recv: v[0],
                packets_recv: v[1],
                errors_in: v[2],
                drop_in: v[3],
                bytes_sent: v[8],
                packets_sent: v[9],
                errors_out: v[10],
                drop_out: v[11],
            })
        })
        .collect()
}

/// Highest temperature in °C over hwmon sensors and thermal zones.
fn max_temperature(sys_root: &Path) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut consider = |path: PathBuf| {
        let milli: f64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let c = milli / 1000.0;
        // Implausible readings (disconnected sensors report -273 or huge values).
        if (-60.0..=200.0).contains(&c) {
            best = Some(best.map_or(c, |b: f64| b.max(c)));
        }
        Some(())
    };
    if let Ok(dirs) = std::fs::read_dir(sys_root.join("class/hwmon")) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let name = f.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with("temp") && name.ends_with("_input") {
                        consider(f.path());
                    }
                }
            }
        }
    }
    if let Ok(zones) = std::fs::read_dir(sys_root.join("class/thermal")) {
        for z in zones.flatten() {
            if z.file_name().to_string_lossy().starts_with("thermal_zone") {
                consider(z.path().join("temp"));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("proc/net")).unwrap();
        std::fs::write(
            p.join("proc/meminfo"),
            "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n",
        )
        .unwrap();
        std::fs::write(
            p.join("proc/net/dev"),
            "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  eth0: 5000 50 1 2 0 0 0 0 7000 70 3 4 0 0 0 0\n",
        )
        .unwrap();
        dir
    }

    fn write_stat(root: &Path, user: u64, idle: u64) {
        std::fs::write(
            root.join("proc/stat"),
            format!("cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n"),
        )
        .unwrap();
    }

    #[test]
    fn cpu_is_measured_between_samples_without_sleeping() {
        let dir = fake_root();
        let p = dir.path();
        let mut c = Collector::with_roots(p.join("proc"), p.join("sys"), p.to_owned());
        write_stat(p, 100, 300);
        assert_eq!(c.sample().cpu_usage, 25.0, "first sample: since boot");
        write_stat(p, 175, 325);
        assert_eq!(
            c.sample().cpu_usage,
            75.0,
            "75 of the 100 new jiffies were busy"
        );
        write_stat(p, 175, 325);
        assert_eq!(c.sample().cpu_usage, 0.0, "no time passed");
    }

    #[test]
    fn memory_disk_networks() {
        let dir = fake_root();
        let p = dir.path();
        write_stat(p, 1, 1);
        let s = Collector::with_roots(p.join("proc"), p.join("sys"), p.to_owned()).sample();
        assert_eq!(s.memory_usage, 75.0);
        assert!(s.disk_usage > 0.0 && s.disk_usage <= 100.0);
        assert_eq!(s.networks.len(), 2);
        let eth = &s.networks[1];
        assert_eq!(
            (
                eth.interface.as_str(),
                eth.bytes_recv,
                eth.bytes_sent,
                eth.errors_in,
                eth.drop_out
            ),
            ("eth0", 5000, 7000, 1, 4)
        );
    }

    #[test]
    fn temperature_is_the_highest_plausible_reading_or_absent() {
        let dir = fake_root();
        let p = dir.path();
        write_stat(p, 1, 1);
        let mut c = Collector::with_roots(p.join("proc"), p.join("sys"), p.to_owned());
        assert_eq!(c.sample().temperature, None, "no sensor: absent, not 0");
        std::fs::create_dir_all(p.join("sys/class/hwmon/hwmon0")).unwrap();
        std::fs::write(p.join("sys/class/hwmon/hwmon0/temp1_input"), "45000\n").unwrap();
        std::fs::write(p.join("sys/class/hwmon/hwmon0/temp2_input"), "-273000\n").unwrap();
        std::fs::create_dir_all(p.join("sys/class/thermal/thermal_zone0")).unwrap();
        std::fs::write(p.join("sys/class/thermal/thermal_zone0/temp"), "51500\n").unwrap();
        assert_eq!(c.sample().temperature, Some(51.5));
    }

    #[test]
    fn unreadable_sources_give_zero_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let s = Collector::with_roots(p.join("none"), p.join("none"), p.join("none")).sample();
        assert_eq!((s.cpu_usage, s.memory_usage, s.disk_usage), (0.0, 0.0, 0.0));
        assert!(s.networks.is_empty());
        assert_eq!(sanitize(f64::NAN), 0.0);
        assert_eq!(sanitize(150.0), 100.0);
    }

    #[test]
    fn this_host_gives_a_sane_sample() {
        let mut c = Collector::new();
        let s = c.sample();
        for v in [s.cpu_usage, s.memory_usage, s.disk_usage] {
            assert!((0.0..=100.0).contains(&v));
        }
        assert!(s.memory_usage > 0.0);
        assert!(s.networks.iter().any(|n| n.interface == "lo"));
    }
}

//! End-to-end benchmark of the real agent: release `noderax-agent run`
//! with its child `noderax-agent-exec`, against the in-process testbed
//! control plane. Prints a table; asserts nothing about speed, but fails if
//! a shipped log line is missing, duplicated or out of order.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench-bins cargo build --release -p agent-net -p agent-exec
//! export NODERAX_BENCH_BIN_DIR=target/bench-bins/release      # relative to the workspace
//! cargo bench -p agent-net --bench agent                       # 5-minute idle window
//! cargo bench -p agent-net --bench agent -- --idle-secs 20     # quick run
//! cargo bench -p agent-net --bench agent -- latency logs       # only these parts
//! ```
//!
//! The binaries are built apart because `cargo bench` rebuilds
//! `target/release/noderax-agent` with the dev-dependencies' crate features
//! unified in; without `NODERAX_BENCH_BIN_DIR` that build and the
//! `noderax-agent-exec` beside it are used.
//!
//! Options (after `--`): `--idle-secs N` (or `NODERAX_BENCH_IDLE_SECS`,
//! default 300), `--tasks N` (latency samples, default 200), `--lines N`
//! (log-shipping lines, default 200 000), `--log-latency-ms N` (injected
//! per logs request, default 2); names `idle`, `latency`, `logs` select
//! parts.
//!
//! What is measured (BENCHMARKS.md explains it in more detail):
//! - idle: after the agent is ready (executor connected, socket
//!   authenticated) and 10 s of settling, a window of `--idle-secs` with no
//!   task: VmRSS of both processes at its end, utime+stime of both over it
//!   (% of one core), HTTP requests the testbed recorded in it per minute.
//! - latency: from the bench's CLOCK_REALTIME just before it queues a task
//!   (the agent's waiting long-poll claim is answered at once) to (1) the
//!   moment the agent's debug line for the executor's `TaskStarted` (sent
//!   once the task's `/bin/sh` was exec'd) arrives on the agent's stderr
//!   pipe — the target's "process running" — and (2) the CLOCK_REALTIME the
//!   task's own command prints (`date +%s%N`, run by `/bin/sh -lc` as every
//!   shell task is, after the login profile). For (2) the same command
//!   started directly by this process is measured too: that floor
//!   (fork/exec of the shell, the login profile, `date`) is not the agent's.
//! - logs: a task printing N numbered 80-character lines, with a fixed
//!   latency injected on every logs request; lines/s from the testbed
//!   accepting `started` to the last line stored there; every line is
//!   checked to be present exactly once and in order. The testbed records
//!   how long its latency fault really held each request.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use noderax_agent::agent_status::AgentStatus;
use serde_json::json;
use shared::api::task::TaskStatus;
use shared::identity::{self, Identity};
use shared::timestamp::Timestamp;
use testbed::{Direction, FaultAction, FaultRule, RouteMatch, Testbed, TestbedConfig};

const SETTLE: Duration = Duration::from_secs(10);
const WARMUP_TASKS: usize = 3;
/// What the executor gives a shell task besides HOME/USER/LOGNAME.
const TASK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Opts {
    idle_secs: u64,
    tasks: usize,
    lines: u64,
    log_latency_ms: u64,
    parts: Vec<String>,
}

impl Opts {
    fn parse() -> anyhow::Result<Self> {
        let mut o = Opts {
            idle_secs: match std::env::var("NODERAX_BENCH_IDLE_SECS") {
                Ok(v) => v.parse().context("NODERAX_BENCH_IDLE_SECS")?,
                Err(_) => 300,
            },
            tasks: 200,
            lines: 200_000,
            log_latency_ms: 2,
            parts: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| -> anyhow::Result<u64> {
                args.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .parse()
                    .with_context(|| format!("{name} needs a number"))
            };
            match a.as_str() {
                "--idle-secs" => o.idle_secs = value("--idle-secs")?,
                "--tasks" => o.tasks = value("--tasks")? as usize,
                "--lines" => o.lines = value("--lines")?,
                "--log-latency-ms" => o.log_latency_ms = value("--log-latency-ms")?,
                // `cargo bench` passes --bench.
                s if s.starts_with("--") => {}
                "idle" | "latency" | "logs" => o.parts.push(a),
                other => bail!("unknown argument {other:?}; parts are idle, latency, logs"),
            }
        }
        if o.tasks == 0 || o.lines == 0 {
            bail!("--tasks and --lines must be at least 1");
        }
        Ok(o)
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }
}

// ---- /proc ------------------------------------------------------------------------

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// utime + stime in clock ticks (all threads, live and exited).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

// ---- statistics ---------------------------------------------------------------------

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

struct Summary {
    mean: f64,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn summarize(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    Summary {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        min: v[0],
        max: v[v.len() - 1],
    }
}

// ---- the agent under test -------------------------------------------------------------

struct Binaries {
    agent: PathBuf,
    exec: PathBuf,
}

impl Binaries {
    /// `NODERAX_BENCH_BIN_DIR` (relative to the workspace root), else the
    /// `noderax-agent` this bench was built with and the executor beside it.
    fn locate() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (agent, exec) = match std::env::var_os("NODERAX_BENCH_BIN_DIR") {
            Some(dir) => {
                let dir = root.join(dir);
                (dir.join("noderax-agent"), dir.join("noderax-agent-exec"))
            }
            None => {
                eprintln!(
                    "note: NODERAX_BENCH_BIN_DIR is not set: using the noderax-agent built for this bench (release profile, but with the dev-dependencies' extra crate features) and the noderax-agent-exec beside it"
                );
                let agent = PathBuf::from(env!("CARGO_BIN_EXE_noderax-agent"));
                let exec = agent.with_file_name("noderax-agent-exec");
                (agent, exec)
            }
        };
        for bin in [&agent, &exec] {
            if !bin.is_file() {
                bail!(
                    "{} does not exist: build the release binaries first (see BENCHMARKS.md): `CARGO_TARGET_DIR=target/bench-bins cargo build --release -p agent-net -p agent-exec`, then `NODERAX_BENCH_BIN_DIR=target/bench-bins/release cargo bench -p agent-net --bench agent`",
                    bin.display()
                );
            }
            if bin.parent().and_then(Path::file_name) != Some("release".as_ref()) {
                eprintln!(
                    "WARNING: {} is not in a release directory; the numbers would not be the release build's",
                    bin.display()
                );
            }
            // A stale binary would silently measure old code.
            let built = std::fs::metadata(bin)?.modified()?;
            let newest = ["agent-net/src", "agent-exec/src", "shared/src"]
                .iter()
                .filter_map(|d| newest_mtime(&root.join(d)))
                .max();
            if newest.is_some_and(|n| n > built) {
                eprintln!(
                    "WARNING: {} is older than the sources; rebuild it with `cargo build --release -p agent-net -p agent-exec`",
                    bin.display()
                );
            }
        }
        Ok(Self { agent, exec })
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let m = if e.path().is_dir() {
            newest_mtime(&e.path())
        } else {
            e.metadata().ok()?.modified().ok()
        };
        newest = newest.max(m);
    }
    newest
}

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    exec_pid: u32,
    /// When the agent logged each task's `TaskStarted` (task id → ns).
    exec_started: ExecStarted,
}

/// Task id → CLOCK_REALTIME (ns) at which the agent's log line saying the
/// executor started the task's process reached this process.
type ExecStarted = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i128>>>;

/// The agent's debug line for the executor's `TaskStarted` (dispatcher.rs).
const STARTED_AS_PID: &str = " started as pid ";

/// Copies the agent's stderr into `agent.log`, stamping when each
/// `TaskStarted` line arrives. The agent writes that line as soon as it has
/// read the executor's `TaskStarted`, which the executor sends once `exec`
/// of the task's program succeeded; the pipe adds some microseconds.
fn pump_agent_log(
    stderr: std::process::ChildStderr,
    mut file: std::fs::File,
    started: ExecStarted,
) {
    use std::io::{BufRead as _, Write as _};
    let mut lines = std::io::BufReader::new(stderr);
    let mut line = String::new();
    while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
        let at = wall_ns();
        if let Some((head, _)) = line.split_once(STARTED_AS_PID)
            && let Some(id) = head.rsplit(' ').next()
        {
            started.lock().expect("lock").insert(id.to_owned(), at);
        }
        let _ = file.write_all(line.as_bytes());
        line.clear();
    }
}

impl Agent {
    async fn start(bins: &Binaries, tb: &Testbed) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("agent-bench").tempdir()?;
        let state = dir.path().join("state");
        let state_file = state.join("agent_identity.json");
        let (node_id, agent_token) = tb.create_node("bench-node");
        identity::save(
            &state_file,
            &Identity {
                node_id,
                agent_token,
            },
            Timestamp::now(),
        )?;
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({
                "api_url": tb.api_url(),
                "state_file": state_file,
                // Debug: the `TaskStarted` line is what claim → exec is
                // measured to. The agent logs little else at this level.
                "log_level": "debug",
            }))?,
        )?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let mut cmd = Command::new(&bins.agent);
        cmd.arg("--config-file")
            .arg(&config)
            .args(["run", "--executor", "child", "--exec-program"])
            .arg(&bins.exec)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", TASK_PATH)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped());
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--allow-root");
        }
        let mut child = cmd.spawn().context("could not start noderax-agent")?;
        let exec_started = ExecStarted::default();
        let stderr = child.stderr.take().expect("piped");
        let pumped = exec_started.clone();
        std::thread::spawn(move || pump_agent_log(stderr, log, pumped));
        let mut agent = Self {
            child,
            dir,
            exec_pid: 0,
            exec_started,
        };
        let status_path = state.join("status.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = agent.child.try_wait()? {
                bail!(
                    "noderax-agent exited ({exit}) during start-up:\n{}",
                    agent.log_tail()
                );
            }
            if let Ok(Some(s)) = AgentStatus::load(&status_path)
                && s.executor.connected
                && s.realtime.authenticated
                && let Some(pid) = s.executor.pid
            {
                agent.exec_pid = pid;
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not get ready (executor connected, socket authenticated) within 30 s:\n{}",
                    agent.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Both processes still alive and the executor the same one.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(exit) = self.child.try_wait()? {
            bail!("noderax-agent exited ({exit}):\n{}", self.log_tail());
        }
        if comm(self.exec_pid).as_deref() != Some("noderax-agent-e") {
            bail!(
                "the executor (pid {}) is gone:\n{}",
                self.exec_pid,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGTERM to the agent, then to its executor if that outlives it.
    fn stop(mut self) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(25);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if comm(self.exec_pid).as_deref() == Some("noderax-agent-e") {
            // SAFETY: the executor our agent started, checked by name.
            unsafe { libc::kill(self.exec_pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

// ---- measurements ---------------------------------------------------------------------

struct Row {
    what: String,
    value: String,
    target: String,
    result: String,
}

fn row(what: impl Into<String>, value: impl Into<String>, target: &str, result: &str) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: target.into(),
        result: result.into(),
    }
}

async fn idle(
    tb: &Testbed,
    agent: &mut Agent,
    secs: u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    eprintln!(
        "idle: settling {} s, then a {secs} s window",
        SETTLE.as_secs()
    );
    tokio::time::sleep(SETTLE).await;
    agent.check_alive()?;
    let (net, exec) = (agent.pid(), agent.exec_pid);
    let recorder = &tb.inner().recorder;
    let from_ms = recorder.now_ms();
    let t0 = Instant::now();
    let c0 = (cpu_ticks(net), cpu_ticks(exec));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let c1 = (cpu_ticks(net), cpu_ticks(exec));
    let window = t0.elapsed().as_secs_f64();
    let to_ms = recorder.now_ms();
    agent.check_alive()?;
    let rss = (status_kib(net, "VmRSS"), status_kib(exec, "VmRSS"));
    let (Some(rn), Some(re)) = rss else {
        bail!("could not read VmRSS of the agent's processes");
    };
    let total = rn + re;
    rows.push(row(
        format!("idle RSS after {secs} s, noderax-agent + noderax-agent-exec (VmRSS)"),
        format!(
            "{} + {} = **{}** ({:.1} MB)",
            mib(rn),
            mib(re),
            mib(total),
            total as f64 * 1024.0 / 1e6
        ),
        "≤ 12 MB together",
        verdict((total * 1024) as f64 <= 12e6),
    ));
    let (Some(a0), Some(e0), Some(a1), Some(e1)) = (c0.0, c0.1, c1.0, c1.1) else {
        bail!("could not read /proc/<pid>/stat of the agent's processes");
    };
    let pct = |t: u64| t as f64 / clk_tck() / window * 100.0;
    let (pa, pe) = (pct(a1 - a0), pct(e1 - e0));
    rows.push(row(
        format!("idle CPU over {window:.0} s, utime+stime of both"),
        format!(
            "{pa:.3} % + {pe:.3} % = **{:.3} %** of one core ({} ticks of 1/{} s)",
            pa + pe,
            (a1 - a0) + (e1 - e0),
            clk_tck()
        ),
        "≤ 0.2 %",
        verdict(pa + pe <= 0.2),
    ));
    let per_min = 60.0 / ((to_ms - from_ms) as f64 / 1000.0);
    let mut by_route: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0;
    for r in tb.requests() {
        if r.at_ms >= from_ms && r.at_ms <= to_ms {
            n += 1;
            let name = r.path.rsplit('/').next().unwrap_or("").to_owned();
            *by_route.entry(name).or_default() += 1;
        }
    }
    let detail: Vec<String> = by_route
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 * per_min))
        .collect();
    rows.push(row(
        "idle HTTP requests per minute",
        format!(
            "**{:.1}**/min ({}; {n} in the window)",
            n as f64 * per_min,
            if detail.is_empty() {
                "none".into()
            } else {
                detail.join(", ")
            }
        ),
        "(report)",
        "—",
    ));
    let mut ev: BTreeMap<String, usize> = BTreeMap::new();
    for e in tb.events() {
        if e.direction == Direction::In && e.at_ms >= from_ms && e.at_ms <= to_ms {
            *ev.entry(e.event).or_default() += 1;
        }
    }
    let detail: Vec<String> = ev
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", *v as f64 * per_min))
        .collect();
    rows.push(row(
        "idle Socket.IO events per minute, agent → server (context)",
        format!(
            "{:.1}/min ({})",
            ev.values().sum::<usize>() as f64 * per_min,
            detail.join(", ")
        ),
        "—",
        "—",
    ));
    Ok(())
}

/// Environment of a shell task, as the executor builds it for root.
fn task_env(cmd: &mut Command) {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    // SAFETY: geteuid cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 {
        "root".to_owned()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    cmd.env_clear()
        .env("HOME", home)
        .env("USER", &user)
        .env("LOGNAME", &user)
        .env("SHELL", "/bin/sh")
        .env("PATH", TASK_PATH)
        .env("LANG", "C.UTF-8")
        .env("PAGER", "cat")
        .env("COLUMNS", "100000");
}

/// The task's command started directly by this process, as the executor
/// would (`/bin/sh -lc`, the same environment): spawn → the time it prints.
fn direct_shell_ms() -> anyhow::Result<f64> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-lc", "date +%s%N"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    task_env(&mut cmd);
    let t0 = wall_ns();
    let mut child = cmd.spawn()?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    child.wait()?;
    let printed: i128 = out.trim().parse().context("date output")?;
    Ok((printed - t0) as f64 / 1e6)
}

async fn latency(
    tb: &Testbed,
    node_id: &str,
    agent: &mut Agent,
    n: usize,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    eprintln!("latency: {WARMUP_TASKS} warm-up + {n} shell tasks, one at a time");
    let mut total = Vec::new();
    let mut to_started = Vec::new();
    let mut to_exec = Vec::new();
    let mut floor = Vec::new();
    for i in 0..WARMUP_TASKS + n {
        // The agent's claim is parked in its long poll; give it a moment
        // after the previous task so the next claim surely is.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0_ns = wall_ns();
        let t0 = Instant::now();
        let id = tb
            .create_task(node_id, "shell.exec", json!({"command": "date +%s%N"}))
            .map_err(|e| anyhow::anyhow!("create_task: {e}"))?;
        let Some(task) = tb.wait_task_done(&id, Duration::from_secs(30)).await else {
            agent.check_alive()?;
            bail!("task {id} did not finish within 30 s");
        };
        if task.status != TaskStatus::Success {
            bail!("task {id} ended {:?}: {:?}", task.status, task.output);
        }
        let line = task
            .logs
            .iter()
            .find(|r| r.level == "stdout")
            .with_context(|| format!("task {id} logged no stdout line"))?;
        let printed: i128 = line
            .message
            .trim()
            .parse()
            .with_context(|| format!("task {id} printed {:?}", line.message))?;
        let started = task
            .running_since
            .context("task has no running_since")?
            .duration_since(t0);
        // The log line is written before the task's output is even read,
        // so it is there by the time the task is done; a moment's grace for
        // the pipe.
        let mut exec_ns = None;
        for _ in 0..100 {
            exec_ns = agent.exec_started.lock().expect("lock").get(&id).copied();
            if exec_ns.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let exec_ns = exec_ns.with_context(|| {
            format!("the agent logged no `{STARTED_AS_PID}` line for task {id}")
        })?;
        if i >= WARMUP_TASKS {
            total.push((printed - t0_ns) as f64 / 1e6);
            to_exec.push((exec_ns - t0_ns) as f64 / 1e6);
            to_started.push(started.as_secs_f64() * 1e3);
            // Interleaved, so both see the same load on the machine.
            floor.push(direct_shell_ms()?);
        }
    }
    let t = summarize(total);
    let e = summarize(to_exec);
    let s = summarize(to_started);
    let f = summarize(floor);
    rows.push(row(
        format!(
            "claim → process running: task queued (claim answered) → the task's `/bin/sh` exec'd (the executor's `TaskStarted`, as the agent logs it), {n} tasks, p50 / p99 (min–max)"
        ),
        format!(
            "**{}** / {} ({}–{})",
            ms(e.p50),
            ms(e.p99),
            ms(e.min),
            ms(e.max)
        ),
        "p50 ≤ 10 ms",
        verdict(e.p50 <= 10.0),
    ));
    rows.push(row(
        "… of which: task queued → `started` accepted by the testbed, p50 / p99",
        format!("{} / {}", ms(s.p50), ms(s.p99)),
        "—",
        "—",
    ));
    rows.push(row(
        format!(
            "claim → the task's first command ran: task queued → its `date +%s%N` under `sh -lc` (login profile included), same {n} tasks, p50 / p99 (min–max)"
        ),
        format!(
            "**{}** / {} ({}–{})",
            ms(t.p50),
            ms(t.p99),
            ms(t.min),
            ms(t.max)
        ),
        "(p50 ≤ 10 ms, if the target is read this way)",
        verdict(t.p50 <= 10.0),
    ));
    rows.push(row(
        "… floor not due to the agent: `sh -lc 'date +%s%N'` spawned directly by the bench (interleaved), p50 / p99 (min–max)",
        format!(
            "{} / {} ({}–{})",
            ms(f.p50),
            ms(f.p99),
            ms(f.min),
            ms(f.max)
        ),
        "—",
        "—",
    ));
    rows.push(row(
        "… the agent's share at p50 (total p50 − floor p50)",
        ms(t.p50 - f.p50),
        "—",
        "—",
    ));
    Ok(())
}

/// One log-shipping run's outcome (already checked for loss and order).
struct Shipped {
    secs: f64,
    entries: usize,
    max_chars: usize,
    other_rows: usize,
    task_ms: Option<u64>,
    /// How long the testbed's latency fault really held each logs request, ms.
    injected_ms: Vec<f64>,
}

/// Runs a task printing `lines` numbered 80-character lines, with `latency`
/// injected on every logs request (none: no fault rule at all), and checks
/// that every line arrived once and in order.
async fn ship(
    tb: &Testbed,
    node_id: &str,
    agent: &mut Agent,
    lines: u64,
    latency: Option<Duration>,
) -> anyhow::Result<Shipped> {
    if let Some(d) = latency {
        tb.add_fault(FaultRule {
            route: RouteMatch::new("/agent/tasks/*/logs"),
            action: FaultAction::Latency(d),
            remaining: None,
            probability: 1.0,
        });
    }
    let last = format!("{lines:080}");
    let id = tb
        .create_task(
            node_id,
            "shell.exec",
            json!({"command": format!("seq -f '%080.0f' 1 {lines}"), "timeout_seconds": 3600}),
        )
        .map_err(|e| anyhow::anyhow!("create_task: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let (started, stored) = loop {
        {
            let state = tb.inner().state();
            let t = &state.tasks[&id];
            if let Some(s) = t.running_since
                && t.logs
                    .last()
                    .is_some_and(|r| r.level == "stdout" && r.message.ends_with(&last))
            {
                break (s, Instant::now());
            }
            if t.status.is_terminal() && t.status != TaskStatus::Success {
                bail!("log task ended {:?}: {:?}", t.status, t.output);
            }
            // Completion is sent only after every log entry: the last line
            // will not come any more. The check below says what is wrong.
            if t.status == TaskStatus::Success {
                break (t.running_since.unwrap_or_else(Instant::now), Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("the last line did not arrive within 30 minutes");
        }
        agent.check_alive()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let secs = stored.duration_since(started).as_secs_f64();
    let task = tb
        .wait_task_done(&id, Duration::from_secs(120))
        .await
        .context("log task did not complete")?;
    tb.clear_faults();
    // Zero loss: every line once, in order, and nothing else on stdout.
    let mut expected = 1u64;
    let mut bad: Option<String> = None;
    let (mut entries, mut max_chars, mut other_rows) = (0, 0, 0);
    for r in &task.logs {
        if r.level != "stdout" {
            other_rows += 1;
            continue;
        }
        entries += 1;
        max_chars = max_chars.max(r.message.chars().count());
        for l in r.message.split('\n') {
            if bad.is_none() && l != format!("{expected:080}") {
                bad = Some(format!("line {expected} expected, got {l:?}"));
            }
            expected += 1;
        }
    }
    let received = expected - 1;
    if let Some(b) = &bad {
        bail!("log shipping lost or reordered lines: {b} ({received} lines received)");
    }
    if received != lines {
        bail!("log shipping: {received} lines received, {lines} sent");
    }
    let requests = tb.requests();
    let task_ms = requests
        .iter()
        .find(|r| r.path.ends_with(&format!("{id}/completed")))
        .and_then(|r| r.body["durationMs"].as_u64());
    let logs_path = format!("{id}/logs");
    let injected_ms = requests
        .iter()
        .filter(|r| r.path.ends_with(&logs_path))
        .filter_map(|r| r.injected_latency_us)
        .map(|us| us as f64 / 1e3)
        .collect();
    Ok(Shipped {
        secs,
        entries,
        max_chars,
        other_rows,
        task_ms,
        injected_ms,
    })
}

async fn logs(
    tb: &Testbed,
    node_id: &str,
    agent: &mut Agent,
    lines: u64,
    latency_ms: u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    eprintln!("logs: {lines} lines of 80 characters, no injected latency (baseline)");
    let base = ship(tb, node_id, agent, lines, None).await?;
    eprintln!("logs: {lines} lines of 80 characters, {latency_ms} ms injected per logs request");
    let latency = (latency_ms > 0).then(|| Duration::from_millis(latency_ms));
    let s = ship(tb, node_id, agent, lines, latency).await?;
    let rate = lines as f64 / s.secs;
    rows.push(row(
        format!(
            "log shipping: {lines} × 80-char lines, {latency_ms} ms injected per logs request; `started` accepted → last line stored"
        ),
        format!(
            "**{rate:.0} lines/s** ({:.2} s); {lines}/{lines} lines, in order, no duplicates",
            s.secs
        ),
        "≥ 20 000 lines/s, zero loss",
        verdict(rate >= 20_000.0),
    ));
    rows.push(row(
        "… logs requests, lines per request, mean time per request",
        format!(
            "{} requests, {:.1} lines ({} chars max), {:.2} ms each",
            s.entries,
            lines as f64 / s.entries as f64,
            s.max_chars,
            s.secs * 1000.0 / s.entries as f64
        ),
        "—",
        "—",
    ));
    // What the testbed's latency fault really held each request, measured
    // by the testbed around its wait.
    if !s.injected_ms.is_empty() {
        let inj = summarize(s.injected_ms.clone());
        rows.push(row(
            format!(
                "… the testbed's injected {latency_ms} ms really lasted (measured around the wait, {} requests), mean / p50 / p99",
                s.injected_ms.len()
            ),
            format!("{} / {} / {}", ms(inj.mean), ms(inj.p50), ms(inj.p99)),
            "—",
            "—",
        ));
        rows.push(row(
            "… so the rest of each request (agent, loopback HTTP, testbed handler), mean: time per request − injected",
            ms(s.secs * 1000.0 / s.entries as f64 - inj.mean),
            "≤ 1.05 ms for 20 000 lines/s",
            "—",
        ));
    }
    rows.push(row(
        "… the same without any injected latency (baseline): lines/s, mean time per request",
        format!(
            "{:.0} lines/s ({:.2} s), {:.2} ms per request",
            lines as f64 / base.secs,
            base.secs,
            base.secs * 1000.0 / base.entries as f64
        ),
        "—",
        "—",
    ));
    rows.push(row(
        "… the task's own run time (executor's durationMs), with / without latency",
        format!(
            "{} / {}",
            s.task_ms.map_or("?".into(), |d| format!("{d} ms")),
            base.task_ms.map_or("?".into(), |d| format!("{d} ms"))
        ),
        "—",
        "—",
    ));
    if s.other_rows + base.other_rows > 0 {
        rows.push(row(
            "… non-stdout log rows of those tasks",
            (s.other_rows + base.other_rows).to_string(),
            "—",
            "—",
        ));
    }
    Ok(())
}

/// fsync cost on the state directory's file system: the agent syncs its
/// journal and its delivered position (a 36-byte write) as it goes.
fn fsync_probe(dir: &Path) -> anyhow::Result<Summary> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("fsync-probe"))?;
    let mut v = Vec::new();
    for i in 0..200u64 {
        let t = Instant::now();
        f.write_all_at(&[i as u8; 36], (i % 2) * 64)?;
        f.sync_data()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    let _ = std::fs::remove_file(dir.join("fsync-probe"));
    Ok(summarize(v))
}

/// What the dispatcher does on disk for every claimed task, measured with
/// the agent's own code: before `RunTask`, `task.json` written and the
/// journal opened, nothing synced; right after it, on a blocking thread,
/// the three fsyncs that make that durable.
fn task_setup_probe(dir: &Path) -> anyhow::Result<(Summary, Summary)> {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for i in 0..100u32 {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let task_dir = dir.join("tasks").join(&id);
        let t = Instant::now();
        noderax_agent::task_report::TaskRecord {
            task_id: id,
            task_type: "shell.exec".into(),
            exit: None,
            completed_sent: false,
            ended: None,
        }
        .create(&task_dir)?;
        noderax_agent::task_journal::TaskJournal::open(&task_dir)?;
        before.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        noderax_agent::task_report::sync_new_task(&task_dir)?;
        after.push(t.elapsed().as_secs_f64() * 1e3);
        std::fs::remove_dir_all(&task_dir)?;
    }
    Ok((summarize(before), summarize(after)))
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let version = Command::new(&bins.agent)
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', "; ")
        })
        .unwrap_or_default();
    let load_before = loadavg();
    let tb = Testbed::start(TestbedConfig::default()).await?;
    let mut agent = Agent::start(&bins, &tb).await?;
    let node_id = tb
        .inner()
        .state()
        .nodes
        .keys()
        .next()
        .cloned()
        .expect("one node");
    eprintln!(
        "agent ready: noderax-agent pid {}, noderax-agent-exec pid {}, state in {}",
        agent.pid(),
        agent.exec_pid,
        agent.state_dir().display()
    );
    let mut rows = Vec::new();
    let result = async {
        if opts.wants("idle") {
            idle(&tb, &mut agent, opts.idle_secs, &mut rows).await?;
        }
        if opts.wants("latency") {
            latency(&tb, &node_id, &mut agent, opts.tasks, &mut rows).await?;
        }
        if opts.wants("logs") {
            logs(
                &tb,
                &node_id,
                &mut agent,
                opts.lines,
                opts.log_latency_ms,
                &mut rows,
            )
            .await?;
        }
        agent.check_alive()?;
        let (net, exec) = (agent.pid(), agent.exec_pid);
        let kib = |pid, key| status_kib(pid, key).unwrap_or(0);
        rows.push(row(
            "RSS at the end, agent + executor (VmRSS; peak VmHWM) (context)",
            format!(
                "{} + {} (peak {} + {})",
                mib(kib(net, "VmRSS")),
                mib(kib(exec, "VmRSS")),
                mib(kib(net, "VmHWM")),
                mib(kib(exec, "VmHWM"))
            ),
            "—",
            "—",
        ));
        let f = fsync_probe(&agent.state_dir())?;
        rows.push(row(
            "fdatasync of a 36-byte write on the state dir's file system, mean / p50 / p99 (context)",
            format!("{} / {} / {}", ms(f.mean), ms(f.p50), ms(f.p99)),
            "—",
            "—",
        ));
        let probe = tempfile::Builder::new()
            .prefix("setup-probe")
            .tempdir_in(agent.dir.path())?;
        let (before, after) = task_setup_probe(probe.path())?;
        rows.push(row(
            "the agent's disk work per claimed task before RunTask (TaskRecord::create + TaskJournal::open, not synced), mean / p50 / p99 (context)",
            format!("{} / {} / {}", ms(before.mean), ms(before.p50), ms(before.p99)),
            "—",
            "—",
        ));
        rows.push(row(
            "… and after the hand-over, off its path (sync_new_task: three fsyncs), mean / p50 / p99 (context)",
            format!("{} / {} / {}", ms(after.mean), ms(after.p50), ms(after.p99)),
            "—",
            "—",
        ));
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("agent log (last lines):\n{}", agent.log_tail());
    }
    agent.stop();
    result?;
    println!();
    println!("noderax-agent end-to-end benchmark — {}", Timestamp::now());
    println!(
        "machine: {} CPUs, {}; kernel {}; load average {} before, {} after",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        load_before,
        loadavg()
    );
    println!("agent: {} ({version})", bins.agent.display());
    println!("executor: {}", bins.exec.display());
    println!();
    println!("| measurement | value | target | result |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.value, r.target, r.result);
    }
    Ok(())
}

fn main() -> ExitCode {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("usage error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

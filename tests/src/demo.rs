//! `noderax-demo`: the whole agent against the embedded testbed control
//! plane, the way an operator meets it. It enrolls with a bootstrap token
//! (`noderax-agent bootstrap`), starts `noderax-agent run` (which starts
//! `noderax-agent-exec`), runs a shell task, lists the installed packages,
//! opens a web terminal and types a command, then prints what the control
//! plane recorded. The binaries are taken from the directory this program
//! is in (`target/release` after `scripts/demo.sh`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use testbed::model::SessionStatus;
use testbed::{Testbed, TestbedConfig};

const WAIT: Duration = Duration::from_secs(60);

fn step(title: &str) {
    println!("\n== {title}");
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let dir = exe
        .parent()
        .context("this program has no directory")?
        .to_owned();
    for b in ["noderax-agent", "noderax-agent-exec"] {
        if !dir.join(b).exists() {
            bail!(
                "{} is missing; build the workspace first (scripts/demo.sh does)",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

async fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bins = bin_dir()?;
    let agent_bin = bins.join("noderax-agent");
    let work = tempfile_dir()?;
    let cfg = work.join("config.json");
    let state_file = work.join("state/agent_identity.json");

    step("control plane");
    let tb = Testbed::start(TestbedConfig::default())
        .await
        .map_err(|e| anyhow::anyhow!("starting the testbed: {e}"))?;
    let token = tb.create_install("demo-node");
    println!("testbed listening on {}", tb.api_url());
    println!("node install created; bootstrap token {token}");

    step("noderax-agent bootstrap");
    let out = Command::new(&agent_bin)
        .arg("--config-file")
        .arg(&cfg)
        .args([
            "bootstrap",
            "--api-url",
            &tb.api_url(),
            "--bootstrap-token",
            &token,
        ])
        .arg("--state-file")
        .arg(&state_file)
        .output()
        .context("running noderax-agent bootstrap")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("bootstrap failed");
    }
    let identity = shared::identity::load(&state_file)?.context("no identity after bootstrap")?;
    let node_id = identity.node_id;

    step("noderax-agent run");
    let log_path = work.join("agent.log");
    let mut run = Command::new(&agent_bin);
    run.arg("--config-file")
        .arg(&cfg)
        .args(["run", "--executor", "child"]);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // A demo in a throw-away machine; the shipped units never do this.
        run.arg("--allow-root");
    }
    let agent = Agent(
        run.stdin(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("starting noderax-agent run")?,
    );
    wait("the node to come online", || {
        tb.node(&node_id).filter(|n| n.online).map(|_| ())
    })
    .await?;
    println!(
        "node {node_id} is online (agent pid {}, log {})",
        agent.0.id(),
        log_path.display()
    );

    step("shell task");
    let id = tb.create_task(
        &node_id,
        "shell.exec",
        json!({"command": "echo \"hello from $(hostname)\"; id -un; uname -sr; echo to stderr >&2"}),
    )?;
    let t = tb
        .wait_task_done(&id, WAIT)
        .await
        .context("the shell task did not finish")?;
    println!(
        "task {id}: {:?}, result {}",
        t.status,
        t.result.clone().unwrap_or_default()
    );
    for row in tb.task_logs_all(&id) {
        for line in row.message.lines() {
            println!("  [{}] {line}", row.level);
        }
    }

    step("package list");
    let id = tb.create_task(&node_id, "packageList", json!({}))?;
    let t = tb
        .wait_task_done(&id, WAIT)
        .await
        .context("the package list did not finish")?;
    let packages = t
        .result
        .as_ref()
        .and_then(|r| r["packages"].as_array().cloned())
        .unwrap_or_default();
    println!(
        "task {id}: {:?}, {} installed packages, e.g.:",
        t.status,
        packages.len()
    );
    for p in packages.iter().take(5) {
        println!(
            "  {} {} ({})",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["architecture"].as_str().unwrap_or("?")
        );
    }

    step("web terminal");
    let sid = tb.open_terminal(&node_id, 100, 30, false)?;
    wait("the terminal to open", || {
        tb.terminal(&sid)
            .filter(|s| s.status == SessionStatus::Open)
            .map(|_| ())
    })
    .await?;
    tb.terminal_input(&sid, b"echo \"the answer is $((6*7))\"\n")?;
    wait("the command's output", || {
        tb.terminal(&sid)
            .filter(|s| String::from_utf8_lossy(&s.transcript).contains("the answer is 42"))
            .map(|_| ())
    })
    .await?;
    tb.stop_terminal(&sid, Some("demo finished"))?;
    let s = wait("the terminal to close", || {
        tb.terminal(&sid)
            .filter(|s| s.status == SessionStatus::Closed)
    })
    .await?;
    println!(
        "session {sid}: {:?}, exit code {:?}, reason {:?}",
        s.status, s.exit_code, s.reason
    );
    println!("transcript (control characters removed):");
    for line in printable(&s.transcript)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        println!("  | {line}");
    }

    step("what the control plane recorded");
    let mut routes: std::collections::BTreeMap<String, usize> = Default::default();
    for r in tb.requests() {
        *routes
            .entry(format!("{} {}", r.method, generic(&r.path)))
            .or_default() += 1;
    }
    for (route, n) in routes {
        println!("  {n:>4}  {route}");
    }
    let mut events: std::collections::BTreeMap<String, usize> = Default::default();
    for e in tb.events() {
        *events
            .entry(format!("{:?} {}", e.direction, e.event))
            .or_default() += 1;
    }
    for (event, n) in events {
        println!("  {n:>4}  socket {event}");
    }
    let node = tb.node(&node_id).context("node vanished")?;
    println!(
        "  node: online={} agentVersion={:?} platformVersion={:?} kernelVersion={:?}",
        node.online, node.agent_version, node.platform_version, node.kernel_version
    );

    step("stopping");
    let pid = agent.0.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut agent = agent;
    let status = wait("the agent to stop", || agent.0.try_wait().ok().flatten()).await?;
    println!(
        "noderax-agent exited with {status}; its log: {}",
        log_path.display()
    );
    println!("\ndemo finished: enrollment, shell task, package list and terminal all worked");
    Ok(())
}

/// Task ids in paths become `:id` so the counts group by route.
fn generic(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.len() == 36 && seg.matches('-').count() == 4 {
                ":id"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Terminal bytes without escape sequences, for printing.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ ... final byte in @..~
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A fresh directory under the system temp dir for this demo's files.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("noderax-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

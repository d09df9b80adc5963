//! The scenarios of issue 8 and what they share: a fresh testbed and a
//! fresh machine per scenario ([`Env::boot`]), the one-line installation
//! ([`Env::install`]) and task helpers over the testbed's user side.
//!
//! A scenario returns [`Outcome::Pass`] with notes worth printing (scores,
//! sub-step durations), [`Outcome::Skip`] with the reason, or an error,
//! which is its failure.

mod crash;
mod install;
mod package;
mod privilege;
mod reboot;
mod tasks;
mod update;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use shared::api::task::TaskStatus;
use testbed::model::Task;
use testbed::{Testbed, TestbedConfig};

use crate::machine::{GUEST_BRIDGE_PORT, Machine, MachineConfig};
use crate::release::Layout;

/// Boot: start of QEMU to systemd `running` (measured 14–16 s idle; the
/// machine is shared).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The whole one-line installation in the guest.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// From `service_started` to the node being online in the testbed.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(180);
/// From online to `noderax-agent status` healthy (executor connected).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// One small task (claim, run, deliver).
pub const TASK_TIMEOUT: Duration = Duration::from_secs(300);
/// A quick command through the guest agent.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// What every scenario gets.
pub struct Suite {
    /// Machine settings; `dir` and `forward_to` are set per scenario.
    pub machine: MachineConfig,
    pub layout: Layout,
    /// Per-scenario directories (logs, sockets) go under it.
    pub work: PathBuf,
    /// Host programs some scenarios need.
    pub host_tools: HostTools,
}

/// Host programs found on `PATH` (`None` when missing).
#[derive(Debug, Clone)]
pub struct HostTools {
    pub dpkg_deb: Option<PathBuf>,
    pub dpkg_scanpackages: Option<PathBuf>,
}

pub enum Outcome {
    Pass(Vec<String>),
    Skip(String),
}

/// A scenario's number (as in issue 8) and name.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub number: u8,
    pub name: &'static str,
}

pub const ALL: [Scenario; 7] = [
    Scenario {
        number: 1,
        name: "one-line install",
    },
    Scenario {
        number: 2,
        name: "task lifecycle under systemd",
    },
    Scenario {
        number: 3,
        name: "privilege boundary",
    },
    Scenario {
        number: 4,
        name: "crash isolation",
    },
    Scenario {
        number: 5,
        name: "self-update",
    },
    Scenario {
        number: 6,
        name: ".deb install and uninstall",
    },
    Scenario {
        number: 7,
        name: "reboot survival",
    },
];

/// Runs one scenario.
pub async fn run(suite: &Suite, s: Scenario) -> anyhow::Result<Outcome> {
    match s.number {
        1 => install::run(suite).await,
        2 => tasks::run(suite).await,
        3 => privilege::run(suite).await,
        4 => crash::run(suite).await,
        5 => update::run(suite).await,
        6 => package::run(suite).await,
        7 => reboot::run(suite).await,
        n => bail!("no scenario {n}"),
    }
}

/// A scenario's world: its own testbed and its own freshly booted machine.
pub struct Env {
    pub tb: Testbed,
    pub vm: Machine,
}

/// How [`Env::install_with`] installs.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Pass the layout's signing key (`--release-key`): the installer checks
    /// the download's signature and pins the key for updates.
    pub release_key: bool,
    /// Install this version's .deb (`--package deb --version V`).
    pub deb_version: Option<String>,
}

/// The agent installed by [`Env::install`].
pub struct Installed {
    pub node_id: String,
    /// The bootstrap token the installation consumed.
    pub install_token: String,
    /// The installer's output (stdout and stderr).
    pub output: String,
    pub duration: Duration,
}

impl Env {
    /// The control plane's URL as the guest sees it (through the bridge).
    pub fn api_url() -> String {
        format!("http://127.0.0.1:{GUEST_BRIDGE_PORT}")
    }

    /// Starts a testbed serving the release layout and boots a machine
    /// whose bridge leads to it.
    pub async fn boot(suite: &Suite, dir_name: &str) -> anyhow::Result<Self> {
        let tb = Testbed::start(TestbedConfig {
            release_dir: Some(suite.layout.root.clone()),
            ..TestbedConfig::default()
        })
        .await
        .context("starting the testbed")?;
        let cfg = MachineConfig {
            dir: suite.work.join(dir_name),
            forward_to: tb.addr(),
            ..suite.machine.clone()
        };
        let mut vm = Machine::start(&cfg).await?;
        vm.wait_booted(BOOT_TIMEOUT).await?;
        Ok(Self { tb, vm })
    }

    /// The one-line installation an operator pastes (README, Installer),
    /// with the download base pointed at the local release layout, run as
    /// root in the guest. Fails unless it exits 0 and the node comes online.
    pub async fn install(&mut self) -> anyhow::Result<Installed> {
        self.install_with(&InstallOptions::default()).await
    }

    /// [`Env::install`] with options: the release key (fetched from the
    /// layout first, as an operator would download it) and `--package deb`.
    pub async fn install_with(&mut self, opts: &InstallOptions) -> anyhow::Result<Installed> {
        let token = self.tb.create_install("noderax-vm");
        let api = Self::api_url();
        let mut script = String::new();
        let mut extra = String::new();
        if opts.release_key {
            script.push_str(&format!(
                "curl -fsSL -o /root/release.pub {api}/cdn/minisign.pub && "
            ));
            extra.push_str(" --release-key /root/release.pub");
        }
        if let Some(version) = &opts.deb_version {
            extra.push_str(&format!(" --package deb --version {version}"));
        }
        script.push_str(&format!(
            "curl -fsSL {api}/cdn/install.sh | NODERAX_AGENT_DOWNLOAD_BASE_URL={api}/cdn/releases \
             bash -s -- --api-url {api} --bootstrap-token {token}{extra}"
        ));
        let started = Instant::now();
        let out = self
            .vm
            .agent
            .exec(
                &["/bin/bash", "-o", "pipefail", "-c", &script],
                None,
                INSTALL_TIMEOUT,
            )
            .await
            .context("running the installer in the guest")?;
        let duration = started.elapsed();
        let output = format!("{}{}", out.stdout, out.stderr);
        if !out.success() {
            bail!("the installer failed in the guest: {}", out.describe());
        }
        let install = self
            .tb
            .install(&token)
            .context("the testbed lost the node install")?;
        let node_id = install.node_id.clone().with_context(|| {
            format!("the installer succeeded but the bootstrap token was not consumed; output:\n{output}")
        })?;
        self.wait_online(&node_id).await?;
        Ok(Installed {
            node_id,
            install_token: token,
            output,
            duration,
        })
    }

    /// [`Env::install`], then [`Env::wait_healthy`]: for scenarios that run
    /// tasks, which fail fast and say why when the agent cannot.
    pub async fn install_healthy(&mut self) -> anyhow::Result<Installed> {
        let installed = self.install().await?;
        self.wait_healthy().await?;
        Ok(installed)
    }

    /// Waits until `noderax-agent status` (as root) exits 0: the agent runs
    /// and is connected to the control plane and to its executor.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let status = self
                .vm
                .agent
                .sh("noderax-agent status", CMD_TIMEOUT)
                .await?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "noderax-agent status did not report a healthy agent within {HEALTHY_TIMEOUT:?} ({}):\n{}",
                    status
                        .code
                        .map_or("no exit status".into(), |c| format!("exit status {c}")),
                    status.stdout.trim_end()
                );
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// Waits until the node is online (authenticated on the realtime socket).
    pub async fn wait_online(&mut self, node_id: &str) -> anyhow::Result<()> {
        let online = self
            .tb
            .wait_for(ONLINE_TIMEOUT, |tb| {
                tb.node(node_id).filter(|n| n.online).map(|_| ())
            })
            .await;
        if online.is_none() {
            let status = self
                .vm
                .agent
                .sh(
                    "systemctl status --no-pager --lines=30 noderax-agent.service noderax-agent-exec.service",
                    CMD_TIMEOUT,
                )
                .await
                .map(|o| o.stdout)
                .unwrap_or_default();
            bail!(
                "node {node_id} did not come online within {ONLINE_TIMEOUT:?}; in the guest:\n{status}"
            );
        }
        Ok(())
    }

    /// Queues a shell task.
    pub fn shell_task(&self, node_id: &str, command: &str) -> anyhow::Result<String> {
        Ok(self
            .tb
            .create_task(node_id, "shell.exec", json!({ "command": command }))?)
    }

    /// Waits for a task to finish.
    pub async fn wait_task(&self, task_id: &str, timeout: Duration) -> anyhow::Result<Task> {
        self.tb
            .wait_task_done(task_id, timeout)
            .await
            .with_context(|| {
                let t = self.tb.task(task_id);
                format!(
                    "task {task_id} did not finish within {timeout:?} (status {:?})",
                    t.map(|t| t.status)
                )
            })
    }

    /// Runs a task to completion and returns it.
    pub async fn run_task(
        &self,
        node_id: &str,
        task_type: &str,
        payload: Value,
    ) -> anyhow::Result<Task> {
        let id = self.tb.create_task(node_id, task_type, payload)?;
        self.wait_task(&id, TASK_TIMEOUT).await
    }

    /// Runs a shell task that must succeed; returns its output.
    pub async fn shell_ok(&self, node_id: &str, command: &str) -> anyhow::Result<String> {
        let id = self.shell_task(node_id, command)?;
        let t = self.wait_task(&id, TASK_TIMEOUT).await?;
        let out = self.output(&id);
        if t.status != TaskStatus::Success {
            bail!(
                "shell task `{command}` ended {:?} (result {}); output:\n{out}",
                t.status,
                t.result.unwrap_or_default()
            );
        }
        Ok(out)
    }

    /// A task's output as the control plane received it (its log rows).
    pub fn output(&self, task_id: &str) -> String {
        self.tb
            .task_logs_all(task_id)
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The main pid of a unit in the guest (0 when it is not running).
    pub async fn main_pid(&mut self, unit: &str) -> anyhow::Result<u32> {
        let out = self
            .vm
            .agent
            .sh_ok(
                &format!("systemctl show --property=MainPID --value {unit}"),
                CMD_TIMEOUT,
            )
            .await?;
        out.trim()
            .parse()
            .with_context(|| format!("MainPID of {unit}: {out:?}"))
    }

    /// Ends a scenario: on success powers the machine off cleanly; on
    /// failure saves the guest's journal next to the console log and adds
    /// the agent units' last journal lines to the error.
    pub async fn conclude(
        mut self,
        result: anyhow::Result<Vec<String>>,
    ) -> anyhow::Result<Outcome> {
        match result {
            Ok(notes) => {
                self.vm.shutdown().await;
                Ok(Outcome::Pass(notes))
            }
            Err(e) => {
                let saved = self.save_journal().await;
                let units = self
                    .vm
                    .agent
                    .sh(
                        "journalctl --no-pager -o short-monotonic -n 25 -u noderax-agent.service \
                         -u noderax-agent-exec.service -u noderax-agent-exec.socket",
                        CMD_TIMEOUT,
                    )
                    .await
                    .map(|o| o.stdout)
                    .unwrap_or_else(|e| format!("(journal unavailable: {e:#})"));
                Err(anyhow::anyhow!(
                    "{e:#}\n  guest journal: {saved}\n  last lines of the agent units:\n{}",
                    units
                        .lines()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        }
    }

    async fn save_journal(&mut self) -> String {
        let path = self.vm.dir().join("journal.log");
        match self
            .vm
            .agent
            .sh("journalctl -b --no-pager -o short-monotonic", CMD_TIMEOUT)
            .await
        {
            Ok(out) => match std::fs::write(&path, out.stdout) {
                Ok(()) => path.display().to_string(),
                Err(e) => format!("could not write {}: {e}", path.display()),
            },
            Err(e) => format!("not available ({e:#})"),
        }
    }
}

/// "12.3 s" for notes.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

//! One virtual machine of the suite: QEMU (software emulation, direct kernel
//! boot of the guest image, a throw-away `snapshot=on` disk), its vsock
//! backend `vhost-device-vsock`, the [`Bridge`] to the testbed and the
//! [`GuestAgent`] connection. Everything it starts is stopped when it is
//! dropped, whatever the reason (scenario failure, panic, signal); the
//! child processes also get SIGKILL from the kernel if the harness dies
//! (`PR_SET_PDEATHSIG`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::bridge::Bridge;
use crate::qga::GuestAgent;

/// The guest's port that reaches the host (fixed in the image, see
/// tests/vm/build-image.sh BRIDGE_PORT).
pub const GUEST_BRIDGE_PORT: u16 = 18080;
/// The guest's context id on the vsock bus (the host is 2).
const GUEST_CID: u32 = 3;

/// The guest image built by tests/vm/build-image.sh.
#[derive(Debug, Clone)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
}

impl Image {
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let image = Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("rootfs.img"),
        };
        for f in [&image.kernel, &image.initrd, &image.disk] {
            if !f.is_file() {
                bail!(
                    "{} is missing: build the image with tests/vm/build-image.sh (tests/vm/run does)",
                    f.display()
                );
            }
        }
        Ok(image)
    }
}

/// How to start a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub image: Image,
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    /// Directory for this machine's sockets and logs (short: unix socket
    /// paths are limited to 107 bytes).
    pub dir: PathBuf,
    /// Where the guest's 127.0.0.1:GUEST_BRIDGE_PORT leads on the host.
    pub forward_to: SocketAddr,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// A running machine.
pub struct Machine {
    qemu: Child,
    vsock: Child,
    _bridge: Bridge,
    pub agent: GuestAgent,
    console: PathBuf,
    dir: PathBuf,
}

/// A child process that the kernel kills when the harness dies, with its
/// output in `log`.
fn spawn_guarded(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn read_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Machine {
    /// Starts the vsock backend, the bridge and QEMU. The guest is booting
    /// when this returns; see [`Machine::wait_booted`].
    pub async fn start(cfg: &MachineConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let vhost_socket = cfg.dir.join("vhost.sock");
        let uds = cfg.dir.join("vsock");
        let qga_socket = cfg.dir.join("qga.sock");
        let console = cfg.dir.join("console.log");
        for stale in [&vhost_socket, &qga_socket] {
            let _ = std::fs::remove_file(stale);
        }

        let vsock = spawn_guarded(
            Command::new(&cfg.vhost_vsock)
                .arg("--guest-cid")
                .arg(GUEST_CID.to_string())
                .arg("--socket")
                .arg(&vhost_socket)
                .arg("--uds-path")
                .arg(&uds),
            &cfg.dir.join("vhost-device-vsock.log"),
        )
        .with_context(|| format!("starting {}", cfg.vhost_vsock.display()))?;
        let bridge = Bridge::start(&uds, GUEST_BRIDGE_PORT, cfg.forward_to)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vhost_socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "vhost-device-vsock did not create {} within 20 s: {}",
                    vhost_socket.display(),
                    read_tail(&cfg.dir.join("vhost-device-vsock.log"), 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mem = format!("{}M", cfg.memory_mib);
        let mut qemu = Command::new(&cfg.qemu);
        qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
            // /dev/kvm here cannot run stock kernels (VM-TESTING.md).
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &cfg.cpus.to_string(), "-m", &mem])
            // vhost-user needs the guest memory shareable with the backend.
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            ])
            .args(["-machine", "q35,memory-backend=mem"])
            .arg("-kernel")
            .arg(&cfg.image.kernel)
            .arg("-initrd")
            .arg(&cfg.image.initrd)
            .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                cfg.image.disk.display()
            ))
            .args(["-nic", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("socket,id=vsock0,path={}", vhost_socket.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=qga0,path={},server=on,wait=off",
                qga_socket.display()
            ))
            .args(["-device", "virtio-serial-pci"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
        let qemu = spawn_guarded(&mut qemu, &cfg.dir.join("qemu.log"))
            .with_context(|| format!("starting {}", cfg.qemu.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !qga_socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "QEMU did not create {} within 20 s: {}",
                    qga_socket.display(),
                    read_tail(&cfg.dir.join("qemu.log"), 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            qemu,
            vsock,
            _bridge: bridge,
            agent: GuestAgent::new(qga_socket),
            console,
            dir: cfg.dir.clone(),
        })
    }

    /// The last lines of the guest's serial console and of QEMU's output,
    /// for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "guest console ({}):\n{}\nqemu ({}):\n{}",
            self.console.display(),
            read_tail(&self.console, 25),
            self.dir.join("qemu.log").display(),
            read_tail(&self.dir.join("qemu.log"), 10)
        )
    }

    /// This machine's directory (logs, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails if QEMU or the vsock backend has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.qemu.try_wait()? {
            bail!("QEMU exited ({st}):\n{}", self.diagnostics());
        }
        if let Some(st) = self.vsock.try_wait()? {
            bail!(
                "vhost-device-vsock exited ({st}): {}",
                read_tail(&self.dir.join("vhost-device-vsock.log"), 10)
            );
        }
        Ok(())
    }

    /// Waits until the guest agent answers and systemd has finished booting
    /// (`systemctl is-system-running --wait` says `running`).
    pub async fn wait_booted(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            match self.agent.wait_ready(Duration::from_secs(10)).await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the guest did not boot within {timeout:?}\n{}",
                        self.diagnostics()
                    )));
                }
                Err(_) => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        let out = self
            .agent
            .sh("systemctl is-system-running --wait", left)
            .await?;
        if out.stdout.trim() != "running" {
            let failed = self
                .agent
                .sh(
                    "systemctl --failed --no-legend --no-pager",
                    Duration::from_secs(60),
                )
                .await
                .map(|o| o.stdout)
                .unwrap_or_default();
            bail!(
                "the guest booted into state {:?}; failed units: {}",
                out.stdout.trim(),
                failed.trim()
            );
        }
        Ok(())
    }

    /// The guest's boot id (changes with every boot).
    pub async fn boot_id(&mut self) -> anyhow::Result<String> {
        let id = self
            .agent
            .read_file("/proc/sys/kernel/random/boot_id")
            .await?;
        Ok(String::from_utf8_lossy(&id).trim().to_owned())
    }

    /// Reboots the guest (`systemctl reboot`) and waits until it has booted
    /// again: a new boot id and systemd `running`.
    pub async fn reboot(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let before = self.boot_id().await?;
        // The command may not get to answer before the guest goes down.
        let _ = self
            .agent
            .send_no_reply(
                "guest-exec",
                json!({"path": "/bin/systemctl", "arg": ["reboot"]}),
            )
            .await;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "the guest did not come back from a reboot within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            if self
                .agent
                .wait_ready(Duration::from_secs(10))
                .await
                .is_err()
            {
                continue;
            }
            match self.boot_id().await {
                Ok(id) if id != before => break,
                _ => continue,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_booted(left.max(Duration::from_secs(60))).await
    }

    /// Powers the guest off cleanly (guest-shutdown), killing QEMU if it has
    /// not exited within 60 s. Dropping a machine kills it without this.
    pub async fn shutdown(mut self) {
        let _ = self
            .agent
            .send_no_reply("guest-shutdown", json!({"mode": "powerdown"}))
            .await;
        if tokio::time::timeout(Duration::from_secs(60), self.qemu.wait())
            .await
            .is_err()
        {
            let _ = self.qemu.start_kill();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // kill_on_drop would do this too; done explicitly and reaped so no
        // QEMU outlives its scenario.
        for child in [&mut self.qemu, &mut self.vsock] {
            if let Ok(None) = child.try_wait() {
                let _ = child.start_kill();
                // SIGKILL takes effect at once; reap it (try_wait is waitpid
                // with WNOHANG), giving up after 5 s.
                for _ in 0..100 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

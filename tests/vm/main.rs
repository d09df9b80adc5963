//! `noderax-vm`: the end-to-end suite on a real Debian 12 system with
//! systemd as PID 1 (issue 8). Every scenario boots a fresh QEMU machine
//! from the suite's image (throw-away disk), starts its own testbed control
//! plane on the host's loopback, reaches the guest through the guest agent
//! and lets the guest reach the testbed through a vsock bridge. It prints
//! one PASS/FAIL/SKIP line per scenario and the closing count; the exit
//! status is 1 when a scenario failed.
//!
//! Run it through `tests/vm/run`, which installs QEMU, builds the image,
//! the vsock backend and the release binaries, then calls this with their
//! paths (tests/vm/README.md).

mod bridge;
mod machine;
mod qga;
mod release;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;

use machine::{Image, MachineConfig};
use scenarios::{HostTools, Outcome, Suite};

/// End-to-end scenarios of the Noderax agent in a Debian 12 VM (QEMU).
#[derive(Debug, Parser)]
#[command(name = "noderax-vm")]
struct Args {
    /// Directory with vmlinuz, initrd.img and rootfs.img (tests/vm/build-image.sh).
    #[arg(long, value_name = "DIR")]
    image: PathBuf,
    /// The vhost-device-vsock program (tests/vm/setup-host.sh builds it).
    #[arg(long, value_name = "PATH")]
    vhost_vsock: PathBuf,
    /// The QEMU system emulator.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Directory with the release builds of noderax-agent, noderax-agent-exec
    /// and noderax-agent-priv: the programs under test.
    #[arg(long, value_name = "DIR")]
    bin_dir: PathBuf,
    /// The same three programs built with a newer version, for the
    /// self-update scenario (skipped without it).
    #[arg(long, value_name = "DIR")]
    next_bin_dir: Option<PathBuf>,
    /// The release tool (noderax-release) scripts/build-release.sh uses.
    #[arg(long, value_name = "PATH")]
    release_tool: PathBuf,
    /// Directory for the release layout and each scenario's logs and sockets.
    #[arg(long, value_name = "DIR")]
    work: PathBuf,
    /// Run only these scenarios (numbers as in issue 8, comma-separated).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    only: Vec<u8>,
    /// Guest memory.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn prepare(args: &Args) -> anyhow::Result<Suite> {
    let qemu = which(&args.qemu).with_context(|| {
        format!(
            "{} not found: install qemu-system-x86 (tests/vm/setup-host.sh does)",
            args.qemu.display()
        )
    })?;
    if !args.vhost_vsock.is_file() {
        bail!(
            "{} not found: tests/vm/setup-host.sh builds vhost-device-vsock",
            args.vhost_vsock.display()
        );
    }
    let image = Image::in_dir(&args.image)?;
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let work = args.work.canonicalize()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let layout = release::build(&release::Inputs {
        repo: &repo,
        bin_dir: &args.bin_dir,
        next_bin_dir: args.next_bin_dir.as_deref(),
        release_tool: &args.release_tool,
        work: &work.join("release"),
    })?;
    Ok(Suite {
        machine: MachineConfig {
            image,
            qemu,
            vhost_vsock: args.vhost_vsock.clone(),
            dir: work.clone(),
            forward_to: "127.0.0.1:9".parse().expect("valid address"),
            memory_mib: args.memory_mib,
            cpus: args.cpus,
        },
        layout,
        work: work.join("run"),
        host_tools: HostTools {
            dpkg_deb: which(Path::new("dpkg-deb")),
            dpkg_scanpackages: which(Path::new("dpkg-scanpackages")),
        },
    })
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let suite = prepare(&args)?;
    println!(
        "vm: release {} from {}, image {}, logs under {}",
        suite.layout.version,
        args.bin_dir.display(),
        args.image.display(),
        suite.work.display()
    );
    let started = Instant::now();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for s in scenarios::ALL {
        if !args.only.is_empty() && !args.only.contains(&s.number) {
            continue;
        }
        let t = Instant::now();
        let outcome = scenarios::run(&suite, s).await;
        let took = scenarios::secs(t.elapsed());
        match outcome {
            Ok(Outcome::Pass(notes)) => {
                passed += 1;
                let notes = if notes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", notes.join("; "))
                };
                println!("vm: PASS {} {} ({took}){notes}", s.number, s.name);
            }
            Ok(Outcome::Skip(reason)) => {
                skipped += 1;
                println!("vm: SKIP {} {} ({took}): {reason}", s.number, s.name);
            }
            Err(e) => {
                failed += 1;
                println!("vm: FAIL {} {} ({took}): {e:#}", s.number, s.name);
            }
        }
    }
    println!("vm: total {}", scenarios::secs(started.elapsed()));
    println!("vm: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the testbed, the bridge and the scenario share it, and
    // every child process is spawned from it (PR_SET_PDEATHSIG follows the
    // spawning thread).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("noderax-vm: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            // Leaving the select drops the running scenario, which stops
            // its machine and testbed.
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); the machine was stopped"),
            _ = term.recv() => bail!("terminated (SIGTERM); the machine was stopped"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("noderax-vm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `noderax-testbed`: runs the fake control plane standalone, creates a node
//! install and prints the bootstrap token and the command that starts an
//! agent against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use testbed::{Testbed, TestbedConfig};

/// A fake Noderax control plane (HTTP API + Socket.IO gateway) for tests and demos.
///
/// User-side routes (create tasks, approve enrollments, open terminals, inject
/// faults) are under /__testbed/; see the testbed crate's documentation.
#[derive(Debug, Parser)]
#[command(name = "noderax-testbed", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name of the node install to create.
    #[arg(long, default_value = "demo-node")]
    node_name: String,
    /// Directory served as the release CDN under /cdn/.
    #[arg(long, value_name = "DIR")]
    release_dir: Option<PathBuf>,
    /// Use second-scale timers (leases, stale and terminal timeouts) instead of the real ones.
    #[arg(long)]
    fast_timers: bool,
    /// Throttle the non-task routes to this many requests per minute and client IP.
    #[arg(long, value_name = "N")]
    throttle: Option<u32>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = if args.fast_timers {
        TestbedConfig::fast()
    } else {
        TestbedConfig::default()
    };
    let config = TestbedConfig {
        listen: args.listen,
        release_dir: args.release_dir,
        throttle: args.throttle.map(|n| (n, Duration::from_secs(60))),
        ..base
    };
    let testbed = Testbed::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("could not listen on {}: {e}", args.listen))?;
    let token = testbed.create_install(&args.node_name);
    println!("noderax-testbed listening on {}", testbed.api_url());
    println!("bootstrap token: {token}");
    println!();
    println!("start an agent against it:");
    println!(
        "  noderax-agent bootstrap --non-interactive --api-url {} --bootstrap-token {token}",
        testbed.api_url()
    );
    println!("  noderax-agent run");
    println!();
    println!(
        "user-side API: {}/__testbed/ (tasks, terminals, faults, requests, events)",
        testbed.api_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

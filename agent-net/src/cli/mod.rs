//! Command-line interface: argument parsing and the subcommands. Each
//! subcommand lives in its own module (`*_cmd`); the others are what they
//! share (systemd units, the install manifest, link-safe file removal, the
//! executor's drop-in).

mod config_cmd;
mod doctor_cmd;
mod enroll_cmd;
mod executor_unit;
mod install_cmd;
mod install_manifest;
mod nofollow_fs;
mod run_cmd;
mod service_cmd;
mod status_cmd;
mod systemd;
mod task_output_cmd;
mod uninstall_cmd;
mod update_cmd;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shared::build_info;

/// The Noderax node agent.
///
/// Enrolls this machine with a Noderax control plane, keeps it visible,
/// claims and runs tasks and serves web terminals. Configuration is read from
/// NODERAX_CONFIG_FILE or the first existing file of: ./config.local.json,
/// ./config.json, ./config/config.json, /usr/local/etc/noderax-agent/config.json,
/// /etc/noderax-agent/config.json; environment variables override the file
/// (see `noderax-agent config show`).
#[derive(Debug, Parser)]
#[command(
    name = "noderax-agent",
    disable_version_flag = true,
    after_help = "Documentation: README.md (configuration table) and ARCHITECTURE.md."
)]
pub struct Cli {
    /// Use this config file instead of NODERAX_CONFIG_FILE and the search order.
    #[arg(long, global = true, value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Print version, commit and build date, then exit.
    #[arg(short = 'v', long = "version", action = clap::ArgAction::SetTrue)]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: claim and run tasks, report them, keep the node online
    /// and serve terminals (the default without a command).
    Run(run_cmd::RunArgs),
    /// Print version, commit and build date.
    Version,
    /// Show or change the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Enroll with a bootstrap token from the install command (used by the
    /// installer); stores the identity in the state file.
    Bootstrap(enroll_cmd::BootstrapArgs),
    /// Enroll interactively: request approval for an administrator's e-mail
    /// address and wait (up to 10 minutes; re-running resumes).
    Enroll(enroll_cmd::EnrollArgs),
    /// Show what the agent is doing; exit 1 when it is not running or not healthy.
    ///
    /// Identity, whether the agent runs (from the status.json it rewrites on
    /// every change and at least every 10 s), claiming, realtime session, executor, root access,
    /// running tasks, undelivered output, last error, and a live check that
    /// the control plane is reachable.
    Status(status_cmd::StatusArgs),
    /// Check this host's set-up, one ok|warn|FAIL line per check; exit 1 on any FAIL.
    ///
    /// Config, identity and the modes of files holding secrets, the state
    /// directory, DNS, TCP, TLS, HTTP and the realtime handshake to the
    /// control plane, the executor socket, sudo for the root helper.
    Doctor(doctor_cmd::DoctorArgs),
    /// Print a task's full output as kept on this node.
    ///
    /// The control plane keeps only part of long outputs; the node keeps
    /// all of it for task_output_retention. Raw bytes go to stdout in the
    /// order produced, a summary (type, exit, sizes, delivery) to stderr.
    TaskOutput(task_output_cmd::TaskOutputArgs),
    /// Update this node's agent to a published release (as root).
    ///
    /// Downloads the release manifest and the three programs from
    /// update_base_url (GitHub Releases as the fallback), verifies their
    /// SHA-256 digests (and the manifest's signature when
    /// /etc/noderax-agent/release.pub exists), and hands them to the root
    /// helper, which verifies them again, installs them beside the running
    /// version, restarts the agent and rolls back if the new version does
    /// not become ready. The previous version is kept.
    Update(update_cmd::UpdateArgs),
    /// Install the agent on this host from this program and its siblings
    /// (root; the same installation as the one-line installer).
    ///
    /// `install --non-interactive --api-url URL --bootstrap-token TOKEN`
    /// creates the users, directories, config, sudoers drop-in and units,
    /// enrolls with the token and starts the agent.
    Install(install_cmd::InstallArgs),
    /// Remove what the installer installed, as listed in its manifest, and
    /// nothing else (root); the state is kept unless --purge.
    Uninstall(uninstall_cmd::UninstallArgs),
    /// Start the agent's units: the executor's socket and the network
    /// process (root, systemd).
    Start,
    /// Stop the agent's units: network process, executor socket and
    /// executor; running tasks and terminals end (root, systemd).
    Stop,
    /// Restart the network process (noderax-agent.service) only; running
    /// tasks and terminals keep running in the executor (root, systemd).
    ///
    /// To restart the executor as well (ending running tasks): `noderax-agent
    /// stop`, then `noderax-agent start`.
    Restart,
}

/// Parses the command line, runs the command and maps errors to exit codes:
/// 0 success, 1 failure (the message says what failed and what to do),
/// 2 usage error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (&cli.command, cli.version) {
        (_, true) | (Some(Command::Version), _) => print_version(),
        (Some(Command::Config(cmd)), false) => config_cmd::run(cmd, cli.config_file.as_deref()),
        (Some(Command::Bootstrap(args)), false) => {
            enroll_cmd::bootstrap(args, cli.config_file.as_deref())
        }
        (Some(Command::Enroll(args)), false) => {
            enroll_cmd::enroll(args, cli.config_file.as_deref())
        }
        (Some(Command::Run(args)), false) => run_cmd::run(args, cli.config_file.as_deref()),
        (Some(Command::Status(args)), false) => status_cmd::run(args, cli.config_file.as_deref()),
        (Some(Command::Doctor(args)), false) => doctor_cmd::run(args, cli.config_file.as_deref()),
        (Some(Command::TaskOutput(args)), false) => {
            task_output_cmd::run(args, cli.config_file.as_deref())
        }
        (Some(Command::Update(args)), false) => update_cmd::run(args, cli.config_file.as_deref()),
        (Some(Command::Install(args)), false) => install_cmd::run(args),
        (Some(Command::Uninstall(args)), false) => uninstall_cmd::run(args),
        (Some(Command::Start), false) => service_cmd::run(service_cmd::Action::Start),
        (Some(Command::Stop), false) => service_cmd::run(service_cmd::Action::Stop),
        (Some(Command::Restart), false) => service_cmd::run(service_cmd::Action::Restart),
        // No command: run, as the original agent did.
        (None, false) => run_cmd::run(&run_cmd::RunArgs::default(), cli.config_file.as_deref()),
    };
    match result {
        Ok(code) => code,
        // `noderax-agent config show | head`: the reader left; not an error.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("noderax-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_version() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "noderax-agent {}", build_info::VERSION)?;
    writeln!(out, "commit:     {}", build_info::COMMIT)?;
    writeln!(out, "built:      {}", build_info::BUILD_DATE)?;
    writeln!(out, "arch:       {}", shared::api::host_arch())?;
    Ok(ExitCode::SUCCESS)
}

//! `noderax-agent bootstrap` and `noderax-agent enroll`: obtain the node
//! identity and store it in the state file (PROTOCOL.md §2.2, §2.3).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use shared::config::{self, Location, ProcessEnv};
use shared::identity;
use shared::timestamp::Timestamp;

use noderax_agent::api_client::ApiClient;
use noderax_agent::enrollment::{self, EnrollError, Waiting};
use noderax_agent::host_facts::Host;

/// Options both commands share.
#[derive(Debug, Args)]
pub struct Common {
    /// Control-plane URL (written to the config file as api_url).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// Identity file to write (default: state_file from the configuration).
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Log level to write to the config file.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The token from the install command generated in the web UI.
    #[arg(long, value_name = "TOKEN", env = "NODERAX_BOOTSTRAP_TOKEN")]
    bootstrap_token: String,
    /// Accepted for compatibility with the original installer; bootstrap never prompts.
    #[arg(long)]
    non_interactive: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// E-mail address of the administrator who will approve this node
    /// (asked for when omitted and a terminal is attached).
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// How often the enrollment is polled and for how long (§2.2).
const POLL_INTERVAL: Duration = Duration::from_secs(5);
const POLL_LIMIT: Duration = Duration::from_secs(10 * 60);

struct Prepared {
    config_path: PathBuf,
    api_url: String,
    state_file: PathBuf,
    client: ApiClient,
}

/// Resolves config, URL and state file; `Ok(None)` when already enrolled.
fn prepare(common: &Common, cli_path: Option<&Path>) -> anyhow::Result<Option<Prepared>> {
    let location = Location::resolve(cli_path, &ProcessEnv);
    // A named config file that does not exist yet is created on success.
    let loaded = match config::load(&location, &ProcessEnv) {
        Err(config::ConfigError::ExplicitMissing { .. }) => {
            config::load(&Location::NotFound, &ProcessEnv)?
        }
        other => other?,
    };
    let api_url = match &common.api_url {
        Some(u) => {
            config::normalize_api_url(u).map_err(|e| anyhow::anyhow!("--api-url {u:?}: {e}"))?
        }
        None if !loaded.config.api_url.is_empty() => loaded.config.api_url.clone(),
        None => bail!("no control-plane URL: pass --api-url or set api_url in the config file"),
    };
    let state_file = common
        .state_file
        .clone()
        .unwrap_or_else(|| loaded.config.state_file.clone());
    if let Some(id) = identity::load(&state_file)? {
        println!(
            "already enrolled as node {} (identity in {}); to enroll again, remove that file first",
            id.node_id,
            state_file.display()
        );
        return Ok(None);
    }
    let tls = noderax_agent::tls::client_config(loaded.config.api_tls_ca_file.as_deref())?;
    let client = ApiClient::new(&api_url, tls, loaded.config.request_timeout)?;
    let is_root = unsafe { libc::geteuid() } == 0;
    Ok(Some(Prepared {
        config_path: location.write_target(is_root),
        api_url,
        state_file,
        client,
    }))
}

/// Stores the identity, then records api_url (and the other given options)
/// in the config file so `noderax-agent run` finds the control plane.
fn finish(p: &Prepared, common: &Common, id: &identity::Identity) -> anyhow::Result<ExitCode> {
    identity::save(&p.state_file, id, Timestamp::now()).with_context(|| {
        format!(
            "enrolled as node {}, but the identity could not be stored",
            id.node_id
        )
    })?;
    println!(
        "enrolled as node {}; identity stored in {} (mode 0600)",
        id.node_id,
        p.state_file.display()
    );
    let mut settings = vec![("api_url", p.api_url.clone())];
    if let Some(l) = &common.log_level {
        settings.push(("log_level", l.clone()));
    }
    if let Some(s) = &common.state_file {
        settings.push(("state_file", s.display().to_string()));
    }
    // The installer's config is root-owned and already names the API: do
    // not try (and warn about failing) to write what is there already.
    let in_file: Option<serde_json::Value> = std::fs::read(&p.config_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    for (key, value) in settings {
        if in_file
            .as_ref()
            .is_some_and(|f| f[key].as_str() == Some(value.as_str()))
        {
            continue;
        }
        if let Err(e) = config::set_in_file(&p.config_path, key, &value, &ProcessEnv) {
            eprintln!(
                "noderax-agent: warning: could not write {key} to {}: {e}; set it with `noderax-agent config set {key} {value}`",
                p.config_path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

pub fn bootstrap(args: &BootstrapArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(p) = prepare(&args.common, cli_path)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let host = Host::detect();
    let id = runtime()?
        .block_on(enrollment::bootstrap(
            &p.client,
            &host,
            &args.bootstrap_token,
        ))
        .with_context(|| format!("bootstrap against {} failed", p.api_url))?;
    finish(&p, &args.common, &id)
}

pub fn enroll(args: &EnrollArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(p) = prepare(&args.common, cli_path)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let host = Host::detect();
    let pending_path = enrollment::pending_path(&p.state_file);
    let rt = runtime()?;
    let pending =
        match enrollment::load_pending(&pending_path).filter(|x| x.hostname == host.hostname) {
            Some(pending) => {
                println!(
                    "resuming the enrollment requested by {} (valid until {})",
                    pending.email, pending.expires_at
                );
                pending
            }
            None => {
                let email = match &args.email {
                    Some(e) => e.clone(),
                    None => ask_email()?,
                };
                let pending = rt
                    .block_on(enrollment::initiate(&p.client, &host, &email))
                    .with_context(|| format!("enrollment request to {} failed", p.api_url))?;
                enrollment::save_pending(&pending_path, &pending)?;
                pending
            }
        };
    println!(
        "Enrollment of {} requested for {}. Ask an administrator to approve it in the web UI.\n  token: {}\n  valid until: {}",
        pending.hostname, pending.email, pending.token, pending.expires_at
    );
    let spinner = std::io::stderr().is_terminal();
    let started = Instant::now();
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut frame = 0usize;
    let result = rt.block_on(enrollment::wait_for_approval(
        &p.client,
        &pending.token,
        POLL_INTERVAL,
        POLL_LIMIT,
        |w| {
            let left = POLL_LIMIT.saturating_sub(started.elapsed()).as_secs();
            let note = match &w {
                Waiting::Pending => "waiting for approval".to_owned(),
                Waiting::Retrying(why) => format!("control plane unreachable, retrying ({why})"),
            };
            if spinner {
                frame = (frame + 1) % frames.len();
                eprint!(
                    "\r\x1b[2K{} {note} ({}m{:02}s left)",
                    frames[frame],
                    left / 60,
                    left % 60
                );
                let _ = std::io::stderr().flush();
            } else if let Waiting::Retrying(_) = w {
                eprintln!("noderax-agent: {note}");
            }
        },
    ));
    if spinner {
        eprint!("\r\x1b[2K");
    }
    match result {
        Ok(id) => {
            enrollment::forget_pending(&pending_path);
            finish(&p, &args.common, &id)
        }
        Err(e) => {
            if matches!(e, EnrollError::Revoked | EnrollError::EnrollmentNotFound) {
                enrollment::forget_pending(&pending_path);
            }
            Err(anyhow::Error::new(e).context("enrollment did not complete"))
        }
    }
}

fn ask_email() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("--email is required when no terminal is attached");
    }
    eprint!("Administrator e-mail address: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let email = line.trim().to_owned();
    if !email.contains('@') {
        bail!("{email:?} is not an e-mail address");
    }
    Ok(email)
}

//! `noderax-agent update`: a self-update by hand (PROTOCOL.md §12), on the
//! same path an `agent.update` task takes (ARCHITECTURE.md §6): the release
//! is downloaded and verified into the state directory, then handed to the
//! root helper (`update apply`), which verifies it again, installs it beside
//! the running version and switches to it in a unit of its own, rolling back
//! if it does not become ready.
//!
//! With `--target-id` the rollout target's progress is reported as the task
//! would, and the restarted agent settles it (`waiting_for_reconnect` or
//! `failed` with the helper's reason). `--request-file` reads the request
//! the original agent's self-update helper left
//! (`{"targetVersion":..,"targetId":..,"rollback":..}`) and deletes it.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Deserialize;
use shared::api::update::UpdateStatus;
use shared::config::{self, HELPER_PATH, Location, ProcessEnv};
use shared::identity::{self, Identity};
use shared::timestamp::Timestamp;

use noderax_agent::api_client::ApiClient;
use noderax_agent::release_download::{self, ReleaseSource};
use noderax_agent::self_update::{self, PendingUpdate, step};
use noderax_agent::state_dir::StateDir;

#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// The release to install, exactly as published (`1.0.3`, no `v`).
    #[arg(long, value_name = "VERSION", required_unless_present = "request_file")]
    target_version: Option<String>,
    /// The rollout target to report progress to (its UUID); without it
    /// nothing is reported to the control plane.
    #[arg(long, value_name = "UUID")]
    target_id: Option<String>,
    /// Accepted for compatibility with the original agent: the target
    /// version is installed either way (rolling back is installing an
    /// older version; `noderax-agent-priv update rollback` returns to the
    /// previous one without a download).
    #[arg(long)]
    rollback: bool,
    /// Accepted for compatibility: the switch always runs in a unit of its
    /// own so that it survives the restart it causes.
    #[arg(long, hide = true)]
    apply_now: bool,
    /// Read the request from this JSON file (and delete it), as the original
    /// self-update helper did.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["target_version", "target_id", "rollback"]
    )]
    request_file: Option<PathBuf>,
    /// The root helper that installs the release.
    #[arg(long, value_name = "PATH", default_value = HELPER_PATH)]
    helper: PathBuf,
}

/// The original agent's request file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestFile {
    target_version: String,
    #[serde(default)]
    target_id: Option<String>,
    #[serde(default)]
    rollback: bool,
}

/// What to install and whom to tell.
struct Request {
    version: String,
    target_id: Option<String>,
    rollback: bool,
}

pub fn run(args: &UpdateArgs, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "an update installs into /opt/noderax-agent through the root helper; run it as root \
             (sudo noderax-agent update --target-version VERSION)"
        );
    }
    let req = request(args)?;
    let location = Location::resolve(cli_path, &ProcessEnv);
    let loaded = config::load(&location, &ProcessEnv)
        .context("could not load the configuration, which says where releases come from")?;
    let cfg = loaded.config;
    let state = StateDir::for_state_file(&cfg.state_file);
    let source =
        ReleaseSource::from_config(&cfg).context("could not set up downloads of releases")?;
    let reporter = match &req.target_id {
        Some(id) => Some((reporting_client(&cfg)?, id.clone())),
        None => None,
    };
    let arch = shared::release_files::host_arch().with_context(|| {
        format!(
            "no agent releases exist for the {} architecture",
            std::env::consts::ARCH
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let say = |s: &(UpdateStatus, u8, String)| println!("{} {}%: {}", s.0.as_str(), s.1, s.2);
    rt.block_on(async {
        let post = |s: (UpdateStatus, u8, String)| {
            let reporter = reporter.clone();
            async move {
                if let Some((client, id)) = reporter {
                    self_update::post_progress(&client, &id, s).await;
                }
            }
        };
        let report = |s: (UpdateStatus, u8, String)| {
            say(&s);
            post(s)
        };
        let mut steps = Vec::new();
        let staged =
            release_download::stage(&source, &req.version, arch, &state.updates(), |s, p, m| {
                let s = (s, p, m);
                say(&s);
                steps.push(s);
            })
            .await;
        // Posted after the fact: `stage` reports synchronously.
        let reached = steps.last().map_or(0, |s| s.1);
        for s in steps {
            post(s).await;
        }
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                report(step::failed(reached, &e.to_string())).await;
                bail!("{e}");
            }
        };
        println!(
            "downloaded and verified {} from {} ({})",
            staged.version,
            staged.manifest_url,
            match staged.signature {
                release_download::SignatureCheck::Verified => "signature verified",
                release_download::SignatureCheck::NoKey { .. } =>
                    "digests only: no release key installed",
            }
        );
        give_to_state_owner(&state, &staged.dir)?;
        if let Some(id) = &req.target_id {
            let pending = PendingUpdate {
                task_id: String::new(),
                target_id: id.clone(),
                version: req.version.clone(),
                rollback: req.rollback,
                from_version: shared::build_info::VERSION.to_owned(),
                since: Timestamp::now(),
            };
            pending
                .save(&state)
                .context("could not record the pending update")?;
            give_to_state_owner(&state, &state.updates().join("pending.json"))?;
        }
        report(step::installing(&req.version)).await;
        let status = std::process::Command::new(&args.helper)
            .args(["update", "apply", "--version", &req.version])
            .status()
            .with_context(|| format!("could not run the root helper {}", args.helper.display()))?;
        if !status.success() {
            let why = format!(
                "the root helper did not install {} ({status}); its message is above",
                req.version
            );
            report(step::failed(70, &why)).await;
            PendingUpdate::clear(&state, &req.version);
            bail!("{why}");
        }
        report(step::restarting(&req.version)).await;
        println!(
            "{} is installed; the noderax-agent-update unit switches to it and restarts the agent \
             (journalctl -u noderax-agent-update)",
            req.version
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn request(args: &UpdateArgs) -> anyhow::Result<Request> {
    let req = match &args.request_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("could not read the request file {}", path.display()))?;
            // Read once: a request is not repeated by a later run.
            let _ = std::fs::remove_file(path);
            let r: RequestFile = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not an update request ({{\"targetVersion\":\"1.0.3\",\"targetId\":\"UUID\"}})",
                    path.display()
                )
            })?;
            Request {
                version: r.target_version,
                target_id: r.target_id.filter(|t| !t.is_empty()),
                rollback: r.rollback,
            }
        }
        None => Request {
            version: args.target_version.clone().unwrap_or_default(),
            target_id: args.target_id.clone(),
            rollback: args.rollback,
        },
    };
    shared::validate::release_version(&req.version)
        .with_context(|| format!("cannot update to {:?}", req.version))?;
    if let Some(id) = &req.target_id {
        shared::validate::uuid(id)
            .with_context(|| format!("--target-id {id:?} is not a rollout target id"))?;
    }
    Ok(req)
}

/// A client with the node's credentials, for progress reports.
fn reporting_client(cfg: &config::Config) -> anyhow::Result<ApiClient> {
    let identity = if !cfg.node_id.is_empty() && !cfg.agent_token.is_empty() {
        Identity {
            node_id: cfg.node_id.clone(),
            agent_token: cfg.agent_token.clone(),
        }
    } else {
        identity::load(&cfg.state_file)
            .context("could not read the node identity to report progress with")?
            .with_context(|| {
                format!(
                    "this node has no identity in {} yet, so progress cannot be reported; \
                     leave out --target-id",
                    cfg.state_file.display()
                )
            })?
    };
    let tls = noderax_agent::tls::client_config(cfg.api_tls_ca_file.as_deref())?;
    Ok(ApiClient::new(&cfg.api_url, tls, cfg.request_timeout)?.with_identity(&identity))
}

/// Files this command (root) leaves in the state directory belong to the
/// directory's owner, the network process's user, which cleans them up.
fn give_to_state_owner(state: &StateDir, path: &Path) -> anyhow::Result<()> {
    let owner = std::fs::metadata(state.root())
        .with_context(|| format!("cannot inspect {}", state.root().display()))?;
    let (uid, gid) = (owner.uid(), owner.gid());
    let mut todo = vec![path.to_owned()];
    while let Some(p) = todo.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to uid {uid}", p.display()))?;
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(())
}

//! `noderax-agent config show|set|path`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use shared::config::{self, KEYS, Location, ProcessEnv};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, where each value comes from
    /// (default, file or environment variable) and what it means. Secrets are
    /// masked.
    Show {
        /// Print one JSON object instead of a table (secrets still masked).
        #[arg(long)]
        json: bool,
    },
    /// Validate VALUE and write KEY to the config file atomically (other keys
    /// are kept). Creates the file if there is none: /etc/noderax-agent/config.json
    /// as root, ./config.json otherwise.
    #[command(after_long_help = keys_help())]
    Set {
        /// A key from the list below.
        key: String,
        /// The new value; durations in Go syntax (30s, 1m30s, 10m0s).
        value: String,
    },
    /// Print the config file in use (exit 1 if there is none) and the search order.
    Path,
    /// Print the systemd drop-in that passes kill_grace, max_concurrent_tasks
    /// and root_access_ceiling from the config file to the executor.
    ///
    /// The socket-activated executor cannot read the config; the installer
    /// writes this to /etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf
    /// and `config set` of one of these keys rewrites it there. Only keys the
    /// file sets are passed; the environment is ignored.
    ExecutorUnit,
}

fn keys_help() -> String {
    let mut s = String::from("Keys:\n");
    for key in KEYS {
        let default = if key.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", key.default)
        };
        s.push_str(&format!(
            "  {:<26} {}{default}\n      {}\n",
            key.name,
            key.allowed(),
            key.doc
        ));
    }
    s
}

pub fn run(cmd: &ConfigCommand, cli_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let location = Location::resolve(cli_path, &ProcessEnv);
    match cmd {
        ConfigCommand::Show { json } => show(&location, *json),
        ConfigCommand::Set { key, value } => set(&location, key, value),
        ConfigCommand::Path => path(&location),
        ConfigCommand::ExecutorUnit => executor_unit(&location),
    }
}

fn executor_unit(location: &Location) -> anyhow::Result<ExitCode> {
    let loaded = super::executor_unit::load_file(location)?;
    std::io::stdout()
        .lock()
        .write_all(super::executor_unit::text(&loaded).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn show(location: &Location, json: bool) -> anyhow::Result<ExitCode> {
    let loaded = config::load(location, &ProcessEnv)?;
    for warning in &loaded.warnings {
        eprintln!("noderax-agent: warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut map = serde_json::Map::new();
        for key in KEYS {
            map.insert(
                key.name.to_owned(),
                serde_json::json!({
                    "value": key.display(&loaded.config),
                    "origin": loaded.origin(key.name).to_string(),
                }),
            );
        }
        let doc = serde_json::json!({
            "file": loaded.path.as_ref().map(|p| p.display().to_string()),
            "keys": map,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &loaded.path {
        Some(p) => writeln!(out, "config file: {}", p.display())?,
        None => writeln!(out, "config file: none (defaults and environment only)")?,
    }
    writeln!(out)?;
    writeln!(out, "{:<26} {:<40} ORIGIN", "KEY", "VALUE")?;
    for key in KEYS {
        writeln!(
            out,
            "{:<26} {:<40} {}",
            key.name,
            key.display(&loaded.config),
            loaded.origin(key.name)
        )?;
    }
    if loaded.require_runnable().is_err() {
        writeln!(
            out,
            "\napi_url is not set: the agent cannot run until it is (noderax-agent config set api_url https://...)."
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn set(location: &Location, key: &str, value: &str) -> anyhow::Result<ExitCode> {
    let is_root = unsafe { libc::geteuid() } == 0;
    let target = location.write_target(is_root);
    let shown = config::set_in_file(&target, key, value, &ProcessEnv)
        .with_context(|| format!("config set {key} failed; nothing was written"))?;
    println!("{key} = {shown} (written to {})", target.display());
    // Say so when the environment will override what was just written.
    let spec = KEYS
        .iter()
        .find(|k| k.name == key)
        .expect("set_in_file checked the key");
    if let Some(var) = spec
        .env
        .iter()
        .find(|v| std::env::var(v).is_ok_and(|x| !x.trim().is_empty()))
    {
        eprintln!(
            "noderax-agent: warning: environment variable {var} is set and overrides {key} from the file"
        );
    }
    match super::executor_unit::after_config_set(key, &target) {
        Ok(Some(note)) => eprintln!("noderax-agent: note: {note}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("noderax-agent: error: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn path(location: &Location) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let code = match location {
        Location::Explicit { path, from } => {
            writeln!(out, "{}", path.display())?;
            if !path.exists() {
                eprintln!(
                    "noderax-agent: note: {} (from {from}) does not exist yet",
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Location::Found(path) => {
            writeln!(out, "{}", path.display())?;
            ExitCode::SUCCESS
        }
        Location::NotFound => {
            eprintln!(
                "noderax-agent: no config file found; create one with `noderax-agent config set api_url URL` or set {}",
                config::CONFIG_FILE_ENV
            );
            ExitCode::FAILURE
        }
    };
    eprintln!(
        "search order (first existing wins, unless --config-file or {} names a file):",
        config::CONFIG_FILE_ENV
    );
    for p in config::SEARCH_PATH {
        eprintln!("  {p}");
    }
    Ok(code)
}

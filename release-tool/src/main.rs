//! `noderax-release`: the release metadata that `scripts/build-release.sh`
//! publishes, written with the types the agent reads it with.
//!
//! - `notes`: a version's release notes from CHANGELOG.md, as the
//!   manifest's JSON (`[{title, items}]`) or as Markdown for the GitHub Release.
//! - `manifest`: `release-manifest.json` from SHA256SUMS.
//! - `catalog`: `catalog.json` with a new release merged in.
//!
//! Output goes to stdout, diagnostics to stderr; exit 1 with a message
//! that says what to fix on any error, 2 on a usage error.

mod catalog;
mod changelog;
mod checksums;
mod manifest;
mod version_order;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use shared::api::release::{ReleaseManifest, ReleaseNotes};

#[derive(Debug, Parser)]
#[command(name = "noderax-release", version = shared::build_info::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a version's release notes from CHANGELOG.md.
    Notes {
        #[arg(long)]
        version: String,
        #[command(flatten)]
        source: NotesSource,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Print release-manifest.json for a release directory's SHA256SUMS.
    Manifest {
        #[arg(long)]
        version: String,
        /// The full git commit the binaries were built from.
        #[arg(long)]
        commit: String,
        #[arg(long, default_value = "tag")]
        channel: String,
        /// RFC 3339 time of publication (default: now).
        #[arg(long)]
        published_at: Option<String>,
        /// Release base URL: artifacts are at <base>/<version>/<file>.
        #[arg(long)]
        base_url: String,
        /// The release's SHA256SUMS.
        #[arg(long)]
        sums: PathBuf,
        /// Architecture to list (amd64, arm64); repeat for several.
        #[arg(long = "arch", required = true)]
        arches: Vec<String>,
        #[command(flatten)]
        source: NotesSource,
    },
    /// Print catalog.json: the published catalog with a release merged in.
    Catalog {
        /// The new release's release-manifest.json.
        #[arg(long)]
        manifest: PathBuf,
        /// The catalog published so far (omit for the first release).
        #[arg(long)]
        existing: Option<PathBuf>,
        /// RFC 3339 time (default: now).
        #[arg(long)]
        generated_at: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct NotesSource {
    #[arg(long, default_value = "CHANGELOG.md")]
    changelog: PathBuf,
    /// Require the version's own section (tag releases); without it a
    /// version with no section gets [Unreleased].
    #[arg(long)]
    strict_notes: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Markdown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("noderax-release: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Notes {
            version,
            source,
            format,
        } => {
            let text = read(&source.changelog)?;
            let chosen = choose(&text, &version, &source)?;
            Ok(match format {
                Format::Json => json(&changelog::notes(chosen.section()))?,
                Format::Markdown => changelog::markdown(chosen.section()),
            })
        }
        Command::Manifest {
            version,
            commit,
            channel,
            published_at,
            base_url,
            sums,
            arches,
            source,
        } => {
            let sums_text = read(&sums)?;
            let sums_map =
                checksums::parse(&sums_text).map_err(|e| anyhow!("{}: {e}", sums.display()))?;
            let text = read(&source.changelog)?;
            let notes: Vec<ReleaseNotes> = match choose(&text, &version, &source) {
                Ok(chosen) => changelog::notes(chosen.section()),
                // A build of main is never listed: notes are optional there.
                Err(e) if channel == "main" => {
                    eprintln!("noderax-release: {e:#}; the main build's manifest has no notes");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let published_at = published_at.unwrap_or_else(manifest::now);
            let m = manifest::build(manifest::Input {
                version: &version,
                commit: &commit,
                channel: &channel,
                published_at: &published_at,
                base_url: &base_url,
                arches: &arches,
                sums: &sums_map,
                notes,
            })
            .map_err(|e| anyhow!("release-manifest.json for {version}: {e}"))?;
            json(&m)
        }
        Command::Catalog {
            manifest: manifest_path,
            existing,
            generated_at,
        } => {
            let release: ReleaseManifest = serde_json::from_str(&read(&manifest_path)?)
                .with_context(|| {
                    format!("{} is not a release manifest", manifest_path.display())
                })?;
            let old = match &existing {
                Some(p) => catalog::parse(&read(p)?).map_err(|e| {
                    anyhow!(
                        "{}: {e}; refusing to replace a catalog that cannot be read \
                         (fix or remove it in the bucket first)",
                        p.display()
                    )
                })?,
                None => Vec::new(),
            };
            let generated_at = generated_at.unwrap_or_else(manifest::now);
            let merged = catalog::merge(old, release, &generated_at).map_err(|e| anyhow!(e))?;
            for n in &merged.notes {
                eprintln!("noderax-release: catalog: {n}");
            }
            json(&merged.catalog)
        }
    }
}

fn choose<'a>(
    text: &'a str,
    version: &str,
    source: &NotesSource,
) -> anyhow::Result<changelog::Chosen<'a>> {
    let chosen = changelog::choose(text, version, source.strict_notes).map_err(|e| anyhow!(e))?;
    if let changelog::Chosen::Unreleased(_) = chosen {
        eprintln!(
            "noderax-release: {} has no section for {version}; using [Unreleased]",
            source.changelog.display()
        );
    }
    Ok(chosen)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

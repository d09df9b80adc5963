//! Downloading, verifying and staging a release for the self-update
//! (PROTOCOL.md §10.2 and §10.4, the `agent.update` task).
//!
//! [`stage`] fetches the release manifest of a version, checks it, downloads
//! the three programs it lists for this machine's architecture and leaves
//! them, with the manifest and its signature, where the root helper's
//! `update apply` picks them up:
//!
//! ```text
//! <staging root>/VERSION/release-manifest.json          exactly the bytes downloaded
//! <staging root>/VERSION/release-manifest.json.minisig  when published
//! <staging root>/VERSION/noderax-agent-linux-ARCH
//! <staging root>/VERSION/noderax-agent-exec-linux-ARCH
//! <staging root>/VERSION/noderax-agent-priv-linux-ARCH
//! ```
//!
//! The staging root is `<state dir>/updates` ([`crate::state_dir::StateDir::updates`]).
//!
//! **Where the manifest comes from.** `<update_base_url>/VERSION/release-manifest.json`
//! first. If that fails in any way (transport, a non-2xx status, an oversized
//! or unparsable body, another version), the GitHub release tagged
//! `agent-vVERSION` of `update_github_api_url`: its asset named
//! `release-manifest.json`. The signature is taken from the same place as the
//! manifest; a 404 there (or no such asset) means the release is unsigned.
//!
//! **What is checked, before anything is written.** The manifest is for
//! exactly VERSION, on channel `tag`, and lists all three programs for the
//! architecture with well-formed digests ([`ReleaseManifest::downloads_for`]).
//! When a release key exists ([`shared::config::RELEASE_KEY_PATH`]) the
//! manifest's minisign signature is required and must verify (prehashed
//! signatures only, as current minisign makes them) *before* any artifact URL
//! taken from the manifest is requested; without a key only the digests are
//! checked, which is logged. The root helper does all of this again on its
//! own copy: this side's checks are for a clear, early error, not the trust
//! boundary.
//!
//! **Limits.** The manifest and the GitHub release object: 1 MiB and 30 s
//! each. **Artifacts** are streamed to `NAME.part` while hashed (SHA-256),
//! at most 512 MiB (the root helper's limit too) and 10 minutes each, and
//! renamed to `NAME` once every digest matched. A
//! transient failure of one artifact (connection, 429, 5xx) is retried twice
//! with back-off; a timeout is not, since one attempt may already take ten
//! minutes and the rollout gives up on a target after fifteen without progress.
//!
//! **The staging root** belongs to this module: a directory of a version
//! that is staged again is replaced, and directories of *other* versions are
//! removed, because a staged release is only of use to the update that staged
//! it (one update runs at a time; the helper has copied what it needs before
//! the next one starts). Entries whose names are not release versions are
//! left alone. On any error the version's directory is removed, so a
//! directory that exists after `stage` returned `Ok` is complete. Running two
//! `stage` calls on one root at the same time is the caller's to prevent.

use std::fmt;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use shared::api::ApiErrorBody;
use shared::api::release::ReleaseManifest;
use shared::api::update::UpdateStatus;
use shared::config::{Config, RELEASE_KEY_PATH};
use shared::release_files::{self, MANIFEST, SIGNATURE};
use shared::validate;
use tokio::io::AsyncWriteExt as _;

use crate::api_client::{CallError, ClientError, TransportKind, classify};
use crate::backoff::Backoff;
use crate::log;

/// Largest manifest, and largest GitHub release description, accepted.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest signature file accepted (a real one is about 300 bytes).
const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Largest release key file accepted.
const MAX_KEY_BYTES: u64 = 4096;
/// Largest artifact accepted: far above any real agent binary, low enough to
/// bound the disk a bad manifest can fill. The root helper has the same limit.
const MAX_ARTIFACT_BYTES: u64 = 512 << 20;
/// Whole-request limit for the manifest, the signature and the GitHub API.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-request limit of one artifact download (PROTOCOL.md §10.2).
const ARTIFACT_TIMEOUT: Duration = Duration::from_secs(600);
/// Attempts per artifact when failures are transient.
const ARTIFACT_ATTEMPTS: u32 = 3;
/// The GitHub API wants a user agent; this is the original agent's (§10.4).
const GITHUB_USER_AGENT: &str = "noderax-agent";
const GITHUB_ACCEPT: &str = "application/vnd.github+json";
const OCTET_STREAM: &str = "application/octet-stream";

/// Where releases are downloaded from, and the key that must have signed them.
#[derive(Debug, Clone)]
pub struct ReleaseSource {
    http: reqwest::Client,
    base_url: String,
    github_api_url: String,
    release_key: PathBuf,
}

impl ReleaseSource {
    /// `update_base_url` and `update_github_api_url` of the config, over TLS
    /// set up as for the control plane (system roots plus `api_tls_ca_file`),
    /// and the installed release key.
    pub fn from_config(cfg: &Config) -> Result<Self, ClientError> {
        let tls = crate::tls::client_config(cfg.api_tls_ca_file.as_deref())?;
        Self::new(&cfg.update_base_url, &cfg.update_github_api_url, tls)
    }

    /// Releases under `base_url` (`<base_url>/VERSION/...`), falling back to
    /// the GitHub repository API URL `github_api_url`; both without a
    /// trailing `/` (as the config stores them). The release key is looked
    /// for at [`RELEASE_KEY_PATH`].
    pub fn new(
        base_url: &str,
        github_api_url: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .user_agent(format!("noderax-agent/{}", shared::build_info::VERSION))
            .connect_timeout(METADATA_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            github_api_url: github_api_url.trim_end_matches('/').to_owned(),
            release_key: PathBuf::from(RELEASE_KEY_PATH),
        })
    }

    /// Looks for the release key at `path` instead. The key is read by each
    /// [`stage`], so one installed while the agent runs applies to the next
    /// update.
    pub fn with_release_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.release_key = path.into();
        self
    }
}

/// What was checked about the manifest's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verified with the installed release key.
    Verified,
    /// No release key is installed, so only the digests were checked;
    /// `published` says whether a signature was found (and staged) anyway.
    NoKey { published: bool },
}

/// A release ready for the root helper's `update apply --version VERSION`.
#[derive(Debug, Clone)]
pub struct Staged {
    pub version: String,
    /// `<staging root>/VERSION`.
    pub dir: PathBuf,
    pub manifest: ReleaseManifest,
    /// Where the manifest was downloaded from (the CDN or a GitHub asset).
    pub manifest_url: String,
    pub signature: SignatureCheck,
}

/// Why a release could not be staged. Every message names the URL, file or
/// digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot stage a release: {0}")]
    InvalidRequest(String),
    #[error(
        "no usable release manifest for {version}: {primary_url}: {primary_reason}; \
         GitHub fallback {fallback_url}: {fallback_reason}"
    )]
    ManifestUnavailable {
        version: String,
        primary_url: String,
        primary_reason: String,
        fallback_url: String,
        fallback_reason: String,
    },
    #[error("release manifest {url} cannot be installed: {reason}")]
    ManifestRefused { url: String, reason: String },
    #[error(
        "the release key {} is not usable: {reason}; it must be a minisign public key \
         readable by the agent's user (mode 0644)",
        path.display()
    )]
    ReleaseKey { path: PathBuf, reason: String },
    #[error(
        "release {version} is not signed ({looked_at}), but a release key is installed at {}: \
         unsigned releases are refused; publish the release with its {SIGNATURE}",
        key.display()
    )]
    Unsigned {
        version: String,
        looked_at: String,
        key: PathBuf,
    },
    #[error(
        "cannot download the signature {url}: {reason}; a release key is installed at {}, \
         so the signature is required",
        key.display()
    )]
    SignatureUnavailable {
        url: String,
        reason: String,
        key: PathBuf,
    },
    #[error(
        "the signature {url} of the release manifest {manifest_url} does not verify with the \
         release key {}: {reason}; the release is refused",
        key.display()
    )]
    BadSignature {
        url: String,
        manifest_url: String,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot download {file} from {url}: {reason}")]
    ArtifactUnavailable {
        file: String,
        url: String,
        reason: String,
    },
    #[error(
        "SHA-256 of {file} (from {url}) is {actual}, but the release manifest says {expected}: \
         the download is corrupt or tampered with; nothing was staged"
    )]
    DigestMismatch {
        file: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "cannot {action} {}: {source} (the update staging directory must be writable by the \
         agent's user)",
        path.display()
    )]
    Staging {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Downloads, verifies and stages release `version` for `arch` (`amd64`,
/// `arm64`) under `staging_root` (see the module documentation).
///
/// `progress` is told `(downloading, 20, "Fetching the official agent
/// VERSION release manifest.")` before the manifest is fetched and
/// `(verifying, 45, "Verifying the official ARCH binaries' checksums.")`
/// once the artifacts are downloaded, before their digests are compared.
pub async fn stage(
    source: &ReleaseSource,
    version: &str,
    arch: &str,
    staging_root: &Path,
    mut progress: impl FnMut(UpdateStatus, u8, String),
) -> Result<Staged, DownloadError> {
    validate::release_version(version).map_err(|e| DownloadError::InvalidRequest(e.to_string()))?;
    if arch.is_empty()
        || !arch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(DownloadError::InvalidRequest(format!(
            "invalid architecture {:?}: release architectures are named like amd64 or arm64",
            arch.chars().take(32).collect::<String>()
        )));
    }

    progress(
        UpdateStatus::Downloading,
        20,
        format!("Fetching the official agent {version} release manifest."),
    );
    let key = load_release_key(&source.release_key)?;
    let fetched = fetch_manifest(source, version).await?;
    let signature = fetch_signature(source, &fetched, key.is_some()).await?;
    let signature_check = match &key {
        Some(key) => {
            verify_signature(source, key, version, &fetched, signature.as_ref())?;
            SignatureCheck::Verified
        }
        None => {
            log::info(format_args!(
                "no release key at {}: release {version} is checked by its SHA-256 digests only",
                source.release_key.display()
            ));
            SignatureCheck::NoKey {
                published: signature.is_some(),
            }
        }
    };
    let refused = |reason: String| DownloadError::ManifestRefused {
        url: fetched.url.clone(),
        reason,
    };
    let downloads = fetched.manifest.downloads_for(arch).map_err(refused)?;
    if let Some(d) = downloads
        .iter()
        .find(|d| !(d.url.starts_with("https://") || d.url.starts_with("http://")))
    {
        return Err(refused(format!(
            "the URL of {} ({:?}) is not an http(s) URL",
            d.program, d.url
        )));
    }

    let dir = VersionDir::create(staging_root, version)?;
    write_new(&dir.path.join(MANIFEST), &fetched.bytes)?;
    if let Some(sig) = &signature {
        write_new(&dir.path.join(SIGNATURE), &sig.bytes)?;
    }
    let mut files = Vec::with_capacity(downloads.len());
    for d in &downloads {
        let name = release_files::artifact_name(d.program, arch);
        let part = dir.path.join(format!("{name}.part"));
        let actual = download_artifact(source, &d.url, &part)
            .await
            .map_err(|e| match e {
                ArtifactFailure::Fetch(e) => DownloadError::ArtifactUnavailable {
                    file: name.clone(),
                    url: d.url.clone(),
                    reason: e.to_string(),
                },
                ArtifactFailure::Write(e) => DownloadError::Staging {
                    action: "write",
                    path: part.clone(),
                    source: e,
                },
            })?;
        files.push((d, name, part, actual));
    }

    progress(
        UpdateStatus::Verifying,
        45,
        format!("Verifying the official {arch} binaries' checksums."),
    );
    for (d, name, part, actual) in files {
        if !actual.eq_ignore_ascii_case(&d.sha256) {
            return Err(DownloadError::DigestMismatch {
                file: name,
                url: d.url.clone(),
                expected: d.sha256.clone(),
                actual,
            });
        }
        let dest = dir.path.join(&name);
        std::fs::rename(&part, &dest).map_err(|e| DownloadError::Staging {
            action: "rename into place",
            path: dest,
            source: e,
        })?;
    }
    log::info(format_args!(
        "release {version} for {arch} staged in {} (manifest from {})",
        dir.path.display(),
        fetched.url
    ));
    Ok(Staged {
        version: version.to_owned(),
        dir: dir.keep(),
        manifest: fetched.manifest,
        manifest_url: fetched.url,
        signature: signature_check,
    })
}

// ---- manifest and signature --------------------------------------------------

/// A manifest for the requested version, as downloaded.
struct FetchedManifest {
    bytes: Vec<u8>,
    manifest: ReleaseManifest,
    url: String,
    /// Where its signature would be: a URL (a 404 there means unsigned), or
    /// `None` when the release lists no signature at all.
    signature_url: Option<String>,
    /// Why the release counts as unsigned if no signature is found there.
    unsigned_because: String,
}

/// A downloaded signature and where it came from.
struct FetchedSignature {
    bytes: Vec<u8>,
    url: String,
}

async fn fetch_manifest(
    source: &ReleaseSource,
    version: &str,
) -> Result<FetchedManifest, DownloadError> {
    let primary_url = format!("{}/{version}/{MANIFEST}", source.base_url);
    let primary =
        match get_bounded(source, &primary_url, "application/json", MAX_MANIFEST_BYTES).await {
            Ok(bytes) => parse_manifest(&bytes, version).map(|m| (bytes, m)),
            Err(e) => Err(e.to_string()),
        };
    let primary_reason = match primary {
        Ok((bytes, manifest)) => {
            let signature_url = format!("{}/{version}/{SIGNATURE}", source.base_url);
            return Ok(FetchedManifest {
                bytes,
                manifest,
                url: primary_url,
                unsigned_because: format!("{signature_url} does not exist"),
                signature_url: Some(signature_url),
            });
        }
        Err(reason) => reason,
    };
    let fallback_url = format!("{}/releases/tags/agent-v{version}", source.github_api_url);
    log::warn(format_args!(
        "release manifest {primary_url}: {primary_reason}; trying GitHub ({fallback_url})"
    ));
    fetch_from_github(source, &fallback_url, version)
        .await
        .map_err(|fallback_reason| DownloadError::ManifestUnavailable {
            version: version.to_owned(),
            primary_url,
            primary_reason,
            fallback_url,
            fallback_reason,
        })
}

/// The parts of GitHub's release object used here.
#[derive(Deserialize)]
struct GithubRelease {
    #[serde(default)]
    assets: Vec<GithubAsset>,
}

#[derive(Deserialize)]
struct GithubAsset {
    name: String,
    browser_download_url: String,
}

/// The manifest asset of the GitHub release at `release_url`; the error is
/// the reason, naming the asset URL when that was the part that failed.
async fn fetch_from_github(
    source: &ReleaseSource,
    release_url: &str,
    version: &str,
) -> Result<FetchedManifest, String> {
    let req = source
        .http
        .get(release_url)
        .header("accept", GITHUB_ACCEPT)
        .header("user-agent", GITHUB_USER_AGENT);
    let body = read_bounded(req, MAX_MANIFEST_BYTES, METADATA_TIMEOUT)
        .await
        .map_err(|e| match e {
            FetchError::Status { status, .. } if status == reqwest::StatusCode::NOT_FOUND => {
                format!("{e} (no release is tagged agent-v{version})")
            }
            e => e.to_string(),
        })?;
    let release: GithubRelease =
        serde_json::from_slice(&body).map_err(|e| format!("not a GitHub release object ({e})"))?;
    let asset = |name: &str| {
        release
            .assets
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.browser_download_url.clone())
    };
    let url = asset(MANIFEST)
        .ok_or_else(|| format!("the release agent-v{version} has no {MANIFEST} asset"))?;
    let bytes = get_bounded(source, &url, OCTET_STREAM, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let manifest = parse_manifest(&bytes, version).map_err(|e| format!("{url}: {e}"))?;
    Ok(FetchedManifest {
        bytes,
        manifest,
        url,
        signature_url: asset(SIGNATURE),
        unsigned_because: format!("the GitHub release {release_url} has no {SIGNATURE} asset"),
    })
}

fn parse_manifest(bytes: &[u8], version: &str) -> Result<ReleaseManifest, String> {
    let manifest: ReleaseManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid release manifest ({e})"))?;
    if manifest.version != version {
        return Err(format!(
            "it is the manifest of version {:?}, not of {version}",
            manifest.version
        ));
    }
    Ok(manifest)
}

/// The signature published with the manifest, `None` when there is none.
/// Without a release key nothing depends on it, so a failure to fetch it is
/// only logged (the release is staged without it).
async fn fetch_signature(
    source: &ReleaseSource,
    manifest: &FetchedManifest,
    required: bool,
) -> Result<Option<FetchedSignature>, DownloadError> {
    let Some(url) = &manifest.signature_url else {
        return Ok(None);
    };
    match get_bounded(source, url, OCTET_STREAM, MAX_SIGNATURE_BYTES).await {
        Ok(bytes) => Ok(Some(FetchedSignature {
            bytes,
            url: url.clone(),
        })),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) if required => Err(DownloadError::SignatureUnavailable {
            url: url.clone(),
            reason: e.to_string(),
            key: source.release_key.clone(),
        }),
        Err(e) => {
            log::warn(format_args!(
                "signature {url}: {e}; no release key is installed, so the release is staged without it"
            ));
            Ok(None)
        }
    }
}

/// The release key, if one is installed: a minisign public key file, or its
/// bare base64 line (what the root helper accepts too).
fn load_release_key(path: &Path) -> Result<Option<minisign_verify::PublicKey>, DownloadError> {
    let bad = |reason: String| DownloadError::ReleaseKey {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    let mut text = String::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if text.len() as u64 > MAX_KEY_BYTES {
        return Err(bad(format!("it is larger than {MAX_KEY_BYTES} bytes")));
    }
    let text = text.trim();
    if text.lines().count() == 1 {
        minisign_verify::PublicKey::from_base64(text)
    } else {
        minisign_verify::PublicKey::decode(text)
    }
    .map(Some)
    .map_err(|e| bad(e.to_string()))
}

fn verify_signature(
    source: &ReleaseSource,
    key: &minisign_verify::PublicKey,
    version: &str,
    manifest: &FetchedManifest,
    signature: Option<&FetchedSignature>,
) -> Result<(), DownloadError> {
    let Some(signature) = signature else {
        return Err(DownloadError::Unsigned {
            version: version.to_owned(),
            looked_at: manifest.unsigned_because.clone(),
            key: source.release_key.clone(),
        });
    };
    let bad = |reason: String| DownloadError::BadSignature {
        url: signature.url.clone(),
        manifest_url: manifest.url.clone(),
        key: source.release_key.clone(),
        reason,
    };
    let sig = minisign_verify::Signature::decode(&String::from_utf8_lossy(&signature.bytes))
        .map_err(|e| bad(format!("it is not a minisign signature ({e})")))?;
    // Legacy (not prehashed) signatures are refused, as by the root helper:
    // current minisign never makes them.
    key.verify(&manifest.bytes, &sig, false)
        .map_err(|e| bad(e.to_string()))
}

// ---- HTTP ---------------------------------------------------------------------

/// Why one HTTP download failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("HTTP {status}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status {
        status: reqwest::StatusCode,
        /// The `message` of a JSON error body (GitHub sends one).
        detail: Option<String>,
    },
    #[error("{0}")]
    Transport(CallError),
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

impl FetchError {
    fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND)
    }

    /// Worth another attempt soon: a broken connection, 429 or 5xx. A
    /// timeout is not (see the module documentation).
    fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                *status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            Self::Transport(CallError::Transport { kind, .. }) => *kind != TransportKind::Timeout,
            Self::Transport(_) | Self::TooLarge { .. } => false,
        }
    }
}

/// Sends `req` within `timeout` (for the whole exchange, body included) and
/// returns the response if its status is 2xx.
async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, FetchError> {
    let mut resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| FetchError::Transport(classify(e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // A short look at the body for a JSON `message`; the rest is not read.
    let mut body = Vec::new();
    while body.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let detail = serde_json::from_slice::<ApiErrorBody>(&body)
        .ok()
        .and_then(|b| b.text())
        .filter(|t| {
            !status
                .canonical_reason()
                .is_some_and(|r| r.eq_ignore_ascii_case(t))
        })
        .map(|t| t.chars().take(200).collect());
    Err(FetchError::Status { status, detail })
}

/// The whole body of `req`, at most `limit` bytes.
async fn read_bounded(
    req: reqwest::RequestBuilder,
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let mut resp = send(req, timeout).await?;
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(FetchError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Transport(classify(e)))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(FetchError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `GET url` with `Accept: accept`, at most `limit` bytes, the metadata timeout.
async fn get_bounded(
    source: &ReleaseSource,
    url: &str,
    accept: &str,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let req = source.http.get(url).header("accept", accept);
    read_bounded(req, limit, METADATA_TIMEOUT).await
}

/// Why an artifact could not be downloaded to its `.part` file.
enum ArtifactFailure {
    Fetch(FetchError),
    Write(io::Error),
}

/// Downloads `url` to `part`, retrying transient failures; returns the
/// lower-case hex SHA-256 of the file.
async fn download_artifact(
    source: &ReleaseSource,
    url: &str,
    part: &Path,
) -> Result<String, ArtifactFailure> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut attempt = 1;
    loop {
        match download_once(source, url, part).await {
            Err(ArtifactFailure::Fetch(e)) if e.is_transient() && attempt < ARTIFACT_ATTEMPTS => {
                let delay = backoff.next_delay(None);
                log::warn(format_args!(
                    "download of {url} failed ({e}); attempt {} of {ARTIFACT_ATTEMPTS} in {} ms",
                    attempt + 1,
                    delay.as_millis()
                ));
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn download_once(
    source: &ReleaseSource,
    url: &str,
    part: &Path,
) -> Result<String, ArtifactFailure> {
    let fetch = ArtifactFailure::Fetch;
    let req = source.http.get(url).header("accept", OCTET_STREAM);
    let mut resp = send(req, ARTIFACT_TIMEOUT).await.map_err(fetch)?;
    let limit = MAX_ARTIFACT_BYTES;
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(fetch(FetchError::TooLarge { limit }));
    }
    // Truncated, not created new: a failed earlier attempt leaves its part.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .await
        .map_err(ArtifactFailure::Write)?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| fetch(FetchError::Transport(classify(e))))?
    {
        total += chunk.len() as u64;
        if total > limit {
            return Err(fetch(FetchError::TooLarge { limit }));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(ArtifactFailure::Write)?;
    }
    // Also waits for tokio's background write to finish.
    file.sync_all().await.map_err(ArtifactFailure::Write)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---- the staging directory --------------------------------------------------

/// `<staging root>/VERSION` while it is being filled: removed when dropped
/// unless [`VersionDir::keep`] was called, so an error (or a cancelled
/// update) leaves nothing half-staged.
struct VersionDir {
    path: PathBuf,
    keep: bool,
}

impl VersionDir {
    /// Creates the staging root if needed (0700), removes what an earlier
    /// stage left there (see the module documentation) and creates an empty
    /// directory for `version` (0700).
    fn create(root: &Path, version: &str) -> Result<Self, DownloadError> {
        let staging = |action, path: &Path| {
            let path = path.to_owned();
            move |source| DownloadError::Staging {
                action,
                path,
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(staging("create", root))?;
        let path = root.join(version);
        remove_entry(&path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(staging("remove the earlier staging directory", &path))?;
        for entry in std::fs::read_dir(root)
            .map_err(staging("list", root))?
            .flatten()
        {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && validate::release_version(name).is_ok() {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => log::info(format_args!(
                        "removed release {name} staged by an earlier update"
                    )),
                    Err(e) => log::warn(format_args!(
                        "cannot remove the stale staging directory {}: {e}",
                        entry.path().display()
                    )),
                }
            }
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(staging("create", &path))?;
        Ok(Self { path, keep: false })
    }

    /// The finished directory, kept.
    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for VersionDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes a directory tree, or a file or symlink, without following links.
fn remove_entry(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), DownloadError> {
    use std::io::Write as _;
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|source| DownloadError::Staging {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_known_answer() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn transient_failures_are_the_retryable_ones() {
        let status = |s: u16| FetchError::Status {
            status: reqwest::StatusCode::from_u16(s).unwrap(),
            detail: None,
        };
        let transport = |kind| {
            FetchError::Transport(CallError::Transport {
                kind,
                message: "x".into(),
            })
        };
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(status(404).is_not_found());
        assert!(!status(403).is_transient());
        assert!(transport(TransportKind::Connect).is_transient());
        assert!(transport(TransportKind::Other).is_transient());
        assert!(!transport(TransportKind::Timeout).is_transient());
        assert!(!FetchError::TooLarge { limit: 1 }.is_transient());
    }

    #[test]
    fn stale_versions_are_removed_and_other_entries_kept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("1.0.0")).unwrap();
        std::fs::write(r.join("1.0.0/noderax-agent-linux-amd64.part"), b"x").unwrap();
        std::fs::create_dir_all(r.join("1.2.0")).unwrap();
        std::fs::write(r.join("1.2.0/leftover"), b"x").unwrap();
        std::fs::create_dir_all(r.join(".not-a-version")).unwrap();
        std::fs::write(r.join("notes.txt"), b"x").unwrap();
        let dir = VersionDir::create(r, "1.2.0").unwrap();
        assert!(!r.join("1.0.0").exists());
        assert!(r.join(".not-a-version").is_dir());
        assert!(r.join("notes.txt").is_file());
        assert_eq!(std::fs::read_dir(&dir.path).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = dir.path.clone();
        drop(dir);
        assert!(!path.exists(), "an unfinished directory is removed");
        let kept = VersionDir::create(r, "1.2.0").unwrap().keep();
        assert!(kept.is_dir());
    }

    #[test]
    fn a_symlink_in_place_of_the_version_is_removed_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("precious"), b"x").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("1.2.0")).unwrap();
        let dir = VersionDir::create(root.path(), "1.2.0").unwrap();
        assert!(
            !std::fs::symlink_metadata(&dir.path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(elsewhere.path().join("precious").is_file());
    }

    #[test]
    fn release_keys_in_both_forms_and_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("release.pub");
        assert!(load_release_key(&missing).unwrap().is_none());
        // minisign's documented example key.
        let b64 = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let file = format!("untrusted comment: minisign public key E7620F1842B4E81F\n{b64}\n");
        std::fs::write(&missing, file).unwrap();
        assert!(load_release_key(&missing).unwrap().is_some());
        std::fs::write(&missing, format!("{b64}\n")).unwrap();
        assert!(load_release_key(&missing).unwrap().is_some());
        std::fs::write(&missing, "not a key\n").unwrap();
        let err = load_release_key(&missing).unwrap_err().to_string();
        assert!(
            err.contains("release.pub") && err.contains("minisign public key"),
            "{err}"
        );
    }
}

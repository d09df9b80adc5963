//! `release_download::stage` against a local HTTP server playing the release
//! CDN (`/cdn/VERSION/...`), the GitHub API (`/gh/repos/noderax/noderax-agent/
//! releases/tags/agent-vVERSION`) and GitHub's asset downloads (`/gh-dl/...`).
//!
//! Signed releases are signed with the `minisign` CLI (package minisign,
//! installed by scripts/setup-debian.sh); the tests that need it fail naming
//! the package when it is missing.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use noderax_agent::release_download::{
    DownloadError, ReleaseSource, SignatureCheck, Staged, stage,
};
use sha2::{Digest as _, Sha256};
use shared::api::update::UpdateStatus;
use shared::config::Config;

const V: &str = "1.2.0";
const ARCH: &str = "amd64";
const PROGRAMS: [&str; 3] = ["noderax-agent", "noderax-agent-exec", "noderax-agent-priv"];
const GH_REPO: &str = "/gh/repos/noderax/noderax-agent";

// ---- a scripted HTTP server ------------------------------------------------------

#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    accept: String,
    user_agent: String,
}

#[derive(Default)]
struct Script {
    /// By path: replies in order; the last one repeats.
    replies: HashMap<String, VecDeque<Reply>>,
    seen: Vec<Seen>,
}

struct Server {
    url: String,
    script: Arc<Mutex<Script>>,
}

impl Server {
    async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = axum::Router::new()
            .fallback(respond)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, script }
    }

    /// Answers `path` with `status` and `body` from now on.
    fn serve(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.script_replies(
            path,
            vec![Reply {
                status,
                body: body.into(),
            }],
        );
    }

    fn script_replies(&self, path: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), replies.into());
    }

    fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }

    /// How often `path` was requested.
    fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    fn source(&self, key: &Path) -> ReleaseSource {
        let cfg = Config {
            update_base_url: format!("{}/cdn", self.url),
            update_github_api_url: format!("{}{GH_REPO}", self.url),
            ..Config::default()
        };
        ReleaseSource::from_config(&cfg)
            .unwrap()
            .with_release_key(key)
    }
}

async fn respond(State(script): State<Arc<Mutex<Script>>>, req: Request) -> Response {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut script = script.lock().unwrap();
    script.seen.push(Seen {
        path: req.uri().path().to_owned(),
        accept: header("accept"),
        user_agent: header("user-agent"),
    });
    let reply = match script.replies.get_mut(req.uri().path()) {
        Some(queue) if queue.len() > 1 => queue.pop_front(),
        Some(queue) => queue.front().cloned(),
        None => None,
    };
    match reply {
        Some(r) => (StatusCode::from_u16(r.status).unwrap(), r.body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such object").into_response(),
    }
}

// ---- releases ----------------------------------------------------------------

/// A published release: the artifacts' contents and the manifest's bytes.
struct Release {
    artifacts: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Release {
    /// Three programs of a few hundred KiB each (several chunks on the wire),
    /// downloadable under `url_base`, and a manifest listing them.
    fn new(version: &str, url_base: &str) -> Self {
        let artifacts: Vec<(String, Vec<u8>)> = PROGRAMS
            .iter()
            .map(|p| {
                let name = format!("{p}-linux-{ARCH}");
                let body = format!("{name} {version}\n").repeat(10_000).into_bytes();
                (name, body)
            })
            .collect();
        let url = |i: usize| format!("{url_base}/{}", artifacts[i].0);
        let manifest = serde_json::json!({
            "version": version,
            "publishedAt": "2026-11-27T10:00:00Z",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "channel": "tag",
            "notes": [{"title": "Added", "items": ["Self-update of all three programs."]}],
            "artifacts": {
                ARCH: {
                    "binaryUrl": url(0),
                    // Upper case: the comparison ignores case.
                    "sha256": sha256(&artifacts[0].1).to_uppercase(),
                    "components": {
                        PROGRAMS[1]: {"url": url(1), "sha256": sha256(&artifacts[1].1)},
                        PROGRAMS[2]: {"url": url(2), "sha256": sha256(&artifacts[2].1)},
                    }
                }
            }
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        Self {
            artifacts,
            manifest,
        }
    }

    /// Publishes on the CDN: `/cdn/VERSION/...`.
    fn on_cdn(version: &str, server: &Server) -> Self {
        let r = Self::new(version, &format!("{}/cdn/{version}", server.url));
        server.serve(
            &format!("/cdn/{version}/release-manifest.json"),
            200,
            r.manifest.clone(),
        );
        for (name, body) in &r.artifacts {
            server.serve(&format!("/cdn/{version}/{name}"), 200, body.clone());
        }
        r
    }

    /// Publishes as a GitHub release tagged `agent-vVERSION`, with the
    /// signature asset when `signature` is given.
    fn on_github(version: &str, server: &Server, signature: Option<Vec<u8>>) -> Self {
        let dl = format!("/gh-dl/agent-v{version}");
        let r = Self::new(version, &format!("{}{dl}", server.url));
        let mut assets = vec![serde_json::json!({
            "name": "release-manifest.json",
            "browser_download_url": format!("{}{dl}/release-manifest.json", server.url),
        })];
        server.serve(
            &format!("{dl}/release-manifest.json"),
            200,
            r.manifest.clone(),
        );
        if let Some(sig) = signature {
            assets.push(serde_json::json!({
                "name": "release-manifest.json.minisig",
                "browser_download_url":
                    format!("{}{dl}/release-manifest.json.minisig", server.url),
            }));
            server.serve(&format!("{dl}/release-manifest.json.minisig"), 200, sig);
        }
        for (name, body) in &r.artifacts {
            assets.push(serde_json::json!({
                "name": name,
                "browser_download_url": format!("{}{dl}/{name}", server.url),
            }));
            server.serve(&format!("{dl}/{name}"), 200, body.clone());
        }
        let release =
            serde_json::json!({"tag_name": format!("agent-v{version}"), "assets": assets});
        server.serve(
            &format!("{GH_REPO}/releases/tags/agent-v{version}"),
            200,
            serde_json::to_vec(&release).unwrap(),
        );
        r
    }
}

// ---- minisign ------------------------------------------------------------------

/// A password-less minisign key pair made by the minisign CLI.
struct Signer {
    dir: tempfile::TempDir,
}

impl Signer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(minisign())
            .args(["-G", "-W", "-p"])
            .arg(dir.path().join("key.pub"))
            .arg("-s")
            .arg(dir.path().join("key.sec"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "minisign -G: {out:?}");
        Self { dir }
    }

    fn public_key(&self) -> PathBuf {
        self.dir.path().join("key.pub")
    }

    /// A detached signature of `data`, as `minisign -S` writes it.
    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let file = self.dir.path().join("release-manifest.json");
        std::fs::write(&file, data).unwrap();
        let sig = self.dir.path().join("release-manifest.json.minisig");
        let out = Command::new(minisign())
            .arg("-S")
            .arg("-s")
            .arg(self.dir.path().join("key.sec"))
            .arg("-m")
            .arg(&file)
            .arg("-x")
            .arg(&sig)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "minisign -S: {out:?}");
        std::fs::read(sig).unwrap()
    }
}

fn minisign() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("minisign"))
        .find(|p| p.is_file())
        .expect(
            "minisign not found: install the `minisign` package (./scripts/setup-debian.sh does)",
        )
}

// ---- helpers ---------------------------------------------------------------------

/// A staging root and a path where no release key exists (unless a test
/// puts one there).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("updates")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("release.pub")
    }
}

type Progress = Vec<(UpdateStatus, u8, String)>;

async fn run(
    server: &Server,
    host: &Host,
    version: &str,
) -> (Result<Staged, DownloadError>, Progress) {
    let mut progress = Vec::new();
    let result = stage(
        &server.source(&host.key()),
        version,
        ARCH,
        &host.staging(),
        |s, p, m| progress.push((s, p, m)),
    )
    .await;
    (result, progress)
}

/// The staged directory holds exactly the manifest (byte for byte), the
/// signature when given, and the three artifacts with the served contents.
fn assert_staged(dir: &Path, release: &Release, signature: Option<&[u8]>) {
    let mut expected: Vec<String> = release.artifacts.iter().map(|(n, _)| n.clone()).collect();
    expected.push("release-manifest.json".into());
    if signature.is_some() {
        expected.push("release-manifest.json.minisig".into());
    }
    expected.sort();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, expected);
    assert_eq!(
        std::fs::read(dir.join("release-manifest.json")).unwrap(),
        release.manifest
    );
    if let Some(sig) = signature {
        assert_eq!(
            std::fs::read(dir.join("release-manifest.json.minisig")).unwrap(),
            sig
        );
    }
    for (name, body) in &release.artifacts {
        let staged = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(sha256(&staged), sha256(body), "{name}");
    }
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the staging directory is private");
}

fn expected_progress() -> Progress {
    vec![
        (
            UpdateStatus::Downloading,
            20,
            format!("Fetching the official agent {V} release manifest."),
        ),
        (
            UpdateStatus::Verifying,
            45,
            format!("Verifying the official {ARCH} binaries' checksums."),
        ),
    ]
}

fn artifact_paths(prefix: &str) -> Vec<String> {
    PROGRAMS
        .iter()
        .map(|p| format!("{prefix}/{p}-linux-{ARCH}"))
        .collect()
}

// ---- tests -------------------------------------------------------------------------

#[tokio::test]
async fn stages_the_three_programs_from_the_cdn() {
    let server = Server::start().await;
    let host = Host::new();
    let release = Release::on_cdn(V, &server);
    // Leftovers of earlier updates: an interrupted stage of this version and
    // another version's directory.
    std::fs::create_dir_all(host.staging().join(V)).unwrap();
    std::fs::write(
        host.staging()
            .join(V)
            .join("noderax-agent-linux-amd64.part"),
        b"half",
    )
    .unwrap();
    std::fs::create_dir_all(host.staging().join("1.1.0")).unwrap();

    let (result, progress) = run(&server, &host, V).await;
    let staged = result.unwrap();

    assert_eq!(staged.version, V);
    assert_eq!(staged.dir, host.staging().join(V));
    assert_eq!(
        staged.manifest_url,
        format!("{}/cdn/{V}/release-manifest.json", server.url)
    );
    assert_eq!(staged.manifest.version, V);
    assert_eq!(staged.signature, SignatureCheck::NoKey { published: false });
    assert_staged(&staged.dir, &release, None);
    assert!(
        !host.staging().join("1.1.0").exists(),
        "stale versions are removed"
    );
    assert_eq!(progress, expected_progress());

    let seen = server.seen();
    assert!(
        seen.iter().all(|s| !s.path.starts_with("/gh")),
        "GitHub is only the fallback: {seen:?}"
    );
    for path in artifact_paths(&format!("/cdn/{V}")) {
        let s = seen.iter().find(|s| s.path == path).expect(&path);
        assert_eq!(s.accept, "application/octet-stream", "{path}");
    }
}

#[tokio::test]
async fn falls_back_to_the_github_release_and_its_signature_asset() {
    let server = Server::start().await;
    let host = Host::new();
    let signer = Signer::new();
    std::fs::copy(signer.public_key(), host.key()).unwrap();
    let manifest = Release::new(V, &format!("{}/gh-dl/agent-v{V}", server.url)).manifest;
    let signature = signer.sign(&manifest);
    let release = Release::on_github(V, &server, Some(signature.clone()));
    // The CDN has nothing: every path answers 404.

    let (result, progress) = run(&server, &host, V).await;
    let staged = result.unwrap();

    assert_eq!(
        staged.manifest_url,
        format!("{}/gh-dl/agent-v{V}/release-manifest.json", server.url)
    );
    assert_eq!(staged.signature, SignatureCheck::Verified);
    assert_staged(&staged.dir, &release, Some(&signature));
    assert_eq!(progress, expected_progress());

    let seen = server.seen();
    let api = seen
        .iter()
        .find(|s| s.path == format!("{GH_REPO}/releases/tags/agent-v{V}"))
        .expect("the GitHub API was asked");
    assert_eq!(api.accept, "application/vnd.github+json");
    assert_eq!(api.user_agent, "noderax-agent");
    assert_eq!(server.hits(&format!("/cdn/{V}/release-manifest.json")), 1);
    assert_eq!(
        server.hits(&format!("/cdn/{V}/release-manifest.json.minisig")),
        0,
        "the signature comes from where the manifest came from"
    );
}

#[tokio::test]
async fn when_both_sources_fail_the_error_names_both() {
    let server = Server::start().await;
    let host = Host::new();
    server.serve(&format!("/cdn/{V}/release-manifest.json"), 503, "busy");
    server.serve(
        &format!("{GH_REPO}/releases/tags/agent-v{V}"),
        403,
        r#"{"message":"API rate limit exceeded for 203.0.113.7.","documentation_url":"https://docs.github.com"}"#,
    );

    let (result, progress) = run(&server, &host, V).await;
    let err = result.unwrap_err();

    assert!(
        matches!(err, DownloadError::ManifestUnavailable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for want in [
        format!("{}/cdn/{V}/release-manifest.json", server.url),
        "HTTP 503".into(),
        format!("{}{GH_REPO}/releases/tags/agent-v{V}", server.url),
        "HTTP 403 Forbidden: API rate limit exceeded for 203.0.113.7.".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} missing from: {msg}");
    }
    assert_eq!(progress, expected_progress()[..1]);
    assert!(!host.staging().join(V).exists());
}

#[tokio::test]
async fn a_manifest_of_another_version_is_not_used() {
    let server = Server::start().await;
    let host = Host::new();
    // The CDN's directory for V holds the manifest of 1.1.0 (a bad upload).
    let wrong = Release::new("1.1.0", &format!("{}/cdn/1.1.0", server.url));
    server.serve(
        &format!("/cdn/{V}/release-manifest.json"),
        200,
        wrong.manifest,
    );
    server.serve(
        &format!("{GH_REPO}/releases/tags/agent-v{V}"),
        404,
        r#"{"message":"Not Found"}"#,
    );

    let err = run(&server, &host, V).await.0.unwrap_err().to_string();
    assert!(
        err.contains(r#"it is the manifest of version "1.1.0", not of 1.2.0"#),
        "{err}"
    );
    // GitHub's 404 carries {"message":"Not Found"}; the reason says what it means.
    assert!(
        err.contains("HTTP 404 Not Found (no release is tagged agent-v1.2.0)"),
        "{err}"
    );
    assert!(!host.staging().join(V).exists());

    // With the right one on GitHub, that one is used.
    let release = Release::on_github(V, &server, None);
    let staged = run(&server, &host, V).await.0.unwrap();
    assert!(
        staged.manifest_url.contains("/gh-dl/"),
        "{}",
        staged.manifest_url
    );
    assert_staged(&staged.dir, &release, None);
}

#[tokio::test]
async fn a_tampered_artifact_is_refused_and_nothing_is_left_staged() {
    let server = Server::start().await;
    let host = Host::new();
    let release = Release::on_cdn(V, &server);
    let (exec_name, exec_body) = &release.artifacts[1];
    let mut tampered = exec_body.clone();
    tampered[0] ^= 1;
    server.serve(&format!("/cdn/{V}/{exec_name}"), 200, tampered.clone());

    let (result, progress) = run(&server, &host, V).await;
    let err = result.unwrap_err();

    assert!(
        matches!(err, DownloadError::DigestMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for want in [
        exec_name.clone(),
        sha256(exec_body),
        sha256(&tampered),
        "corrupt or tampered with".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} missing from: {msg}");
    }
    assert_eq!(progress, expected_progress());
    assert!(
        !host.staging().join(V).exists(),
        "the version directory is removed"
    );
}

#[tokio::test]
async fn a_release_without_the_executor_and_helper_is_refused() {
    let server = Server::start().await;
    let host = Host::new();
    // A release of the original single-binary agent.
    let body = b"the go agent".to_vec();
    let manifest = serde_json::json!({
        "version": V,
        "channel": "tag",
        "artifacts": {ARCH: {
            "binaryUrl": format!("{}/cdn/{V}/noderax-agent-linux-{ARCH}", server.url),
            "sha256": sha256(&body),
        }}
    });
    server.serve(
        &format!("/cdn/{V}/release-manifest.json"),
        200,
        manifest.to_string(),
    );
    server.serve(&format!("/cdn/{V}/noderax-agent-linux-{ARCH}"), 200, body);

    let err = run(&server, &host, V).await.0.unwrap_err();

    assert!(
        matches!(err, DownloadError::ManifestRefused { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("does not publish noderax-agent-exec for amd64")
            && msg.contains("cannot be installed"),
        "{msg}"
    );
    assert_eq!(
        server.hits(&format!("/cdn/{V}/noderax-agent-linux-{ARCH}")),
        0
    );
    assert!(!host.staging().join(V).exists());
}

#[tokio::test]
async fn a_signed_release_verifies_with_the_installed_key() {
    let server = Server::start().await;
    let host = Host::new();
    let signer = Signer::new();
    std::fs::copy(signer.public_key(), host.key()).unwrap();
    let release = Release::on_cdn(V, &server);
    let signature = signer.sign(&release.manifest);
    server.serve(
        &format!("/cdn/{V}/release-manifest.json.minisig"),
        200,
        signature.clone(),
    );

    let staged = run(&server, &host, V).await.0.unwrap();

    assert_eq!(staged.signature, SignatureCheck::Verified);
    assert_staged(&staged.dir, &release, Some(&signature));
}

#[tokio::test]
async fn without_a_key_a_published_signature_is_staged_unchecked() {
    let server = Server::start().await;
    let host = Host::new();
    let release = Release::on_cdn(V, &server);
    let signature = Signer::new().sign(&release.manifest);
    server.serve(
        &format!("/cdn/{V}/release-manifest.json.minisig"),
        200,
        signature.clone(),
    );

    let staged = run(&server, &host, V).await.0.unwrap();

    assert_eq!(staged.signature, SignatureCheck::NoKey { published: true });
    assert_staged(&staged.dir, &release, Some(&signature));
}

#[tokio::test]
async fn with_a_key_an_unsigned_release_is_refused_before_any_download() {
    let server = Server::start().await;
    let host = Host::new();
    std::fs::copy(Signer::new().public_key(), host.key()).unwrap();
    Release::on_cdn(V, &server);

    let err = run(&server, &host, V).await.0.unwrap_err();

    assert!(matches!(err, DownloadError::Unsigned { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not signed")
            && msg.contains(&format!("/cdn/{V}/release-manifest.json.minisig"))
            && msg.contains(host.key().to_str().unwrap()),
        "{msg}"
    );
    for path in artifact_paths(&format!("/cdn/{V}")) {
        assert_eq!(server.hits(&path), 0, "{path} was requested");
    }
    assert!(!host.staging().join(V).exists());

    // The same for a GitHub release without the signature asset.
    let cdn_manifest = format!("/cdn/{V}/release-manifest.json");
    server.serve(&cdn_manifest, 404, "no such object");
    Release::on_github(V, &server, None);
    let err = run(&server, &host, V).await.0.unwrap_err();
    assert!(matches!(err, DownloadError::Unsigned { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "the GitHub release {}{GH_REPO}/releases/tags/agent-v{V} has no \
             release-manifest.json.minisig asset",
            server.url
        )),
        "{err}"
    );
    for path in artifact_paths(&format!("/gh-dl/agent-v{V}")) {
        assert_eq!(server.hits(&path), 0, "{path} was requested");
    }

    // A signature that cannot be fetched is not taken for "unsigned".
    Release::on_cdn(V, &server);
    server.serve(
        &format!("/cdn/{V}/release-manifest.json.minisig"),
        500,
        "oops",
    );
    let err = run(&server, &host, V).await.0.unwrap_err();
    assert!(
        matches!(err, DownloadError::SignatureUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

#[tokio::test]
async fn a_bad_signature_is_refused_before_any_download() {
    let server = Server::start().await;
    let host = Host::new();
    let signer = Signer::new();
    std::fs::copy(signer.public_key(), host.key()).unwrap();
    let release = Release::on_cdn(V, &server);
    let sig_path = format!("/cdn/{V}/release-manifest.json.minisig");

    let cases = [
        ("another key", Signer::new().sign(&release.manifest)),
        ("another manifest", signer.sign(b"{\"version\":\"1.2.0\"}")),
        ("garbage", b"not a signature\n".to_vec()),
    ];
    for (case, signature) in cases {
        server.serve(&sig_path, 200, signature);
        let err = run(&server, &host, V).await.0.unwrap_err();
        assert!(
            matches!(err, DownloadError::BadSignature { .. }),
            "{case}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("does not verify") && msg.contains(&sig_path),
            "{case}: {msg}"
        );
        assert!(!host.staging().join(V).exists(), "{case}");
    }
    for path in artifact_paths(&format!("/cdn/{V}")) {
        assert_eq!(server.hits(&path), 0, "{path} was requested");
    }
}

#[tokio::test]
async fn an_oversized_manifest_is_refused() {
    let server = Server::start().await;
    let host = Host::new();
    let mut huge = b"{\"version\":\"1.2.0\"}".to_vec();
    huge.resize(1024 * 1024 + 1, b' ');
    server.serve(&format!("/cdn/{V}/release-manifest.json"), 200, huge);

    let err = run(&server, &host, V).await.0.unwrap_err().to_string();

    assert!(
        err.contains("release-manifest.json: the response is larger than 1048576 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn a_transient_artifact_failure_is_retried() {
    let server = Server::start().await;
    let host = Host::new();
    let release = Release::on_cdn(V, &server);
    let (name, body) = &release.artifacts[2];
    let path = format!("/cdn/{V}/{name}");
    server.script_replies(
        &path,
        vec![
            Reply {
                status: 503,
                body: b"try again".to_vec(),
            },
            Reply {
                status: 200,
                body: body.clone(),
            },
        ],
    );

    let staged = run(&server, &host, V).await.0.unwrap();

    assert_staged(&staged.dir, &release, None);
    assert_eq!(server.hits(&path), 2);
}

#[tokio::test]
async fn a_missing_artifact_names_the_file_and_url() {
    let server = Server::start().await;
    let host = Host::new();
    let release = Release::on_cdn(V, &server);
    let (name, _) = &release.artifacts[1];
    let path = format!("/cdn/{V}/{name}");
    server.serve(&path, 404, "gone");

    let err = run(&server, &host, V).await.0.unwrap_err();

    assert!(
        matches!(err, DownloadError::ArtifactUnavailable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(name.as_str()) && msg.contains(&path) && msg.contains("HTTP 404"),
        "{msg}"
    );
    assert_eq!(server.hits(&path), 1, "a 404 is not retried");
    assert!(!host.staging().join(V).exists());
}

#[tokio::test]
async fn an_invalid_version_is_refused_before_any_request() {
    let server = Server::start().await;
    let host = Host::new();

    for version in ["../../etc", "1.2.0/x", ""] {
        let (result, progress) = run(&server, &host, version).await;
        let err = result.unwrap_err();
        assert!(matches!(err, DownloadError::InvalidRequest(_)), "{err:?}");
        assert!(err.to_string().contains("invalid release version"), "{err}");
        assert!(progress.is_empty());
    }
    assert!(server.seen().is_empty());
    assert!(!host.staging().exists());
}

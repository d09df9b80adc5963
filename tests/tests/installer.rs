//! The installer script `installer/install.sh` (issue 7, item 2).
//!
//! - `shellcheck` finds nothing.
//! - Its embedded unit files are byte for byte those of `systemd/`, and its
//!   small helpers (URL normalisation, SHA256SUMS parsing, the `sudo -l`
//!   check) behave, called by sourcing the script.
//! - `--dry-run` prints the plan, which must equal the reviewed
//!   `installer/testdata/dry-run.expected` (after removing what depends on
//!   the machine), and changes nothing, on this host or under `--root`.
//! - A real installation into a throwaway root (`--root DIR`), downloading
//!   from the testbed's release CDN and enrolling against the testbed:
//!   every progress stage of PROTOCOL.md §3 arrives in order, every file
//!   has its owner and mode, the manifest lists exactly what was created; a
//!   re-run keeps identity and config, an upgrade switches `current`.
//! - A checksum mismatch, or a signature by the wrong key, aborts before
//!   anything is installed and is reported as `failed`; so is a failing
//!   command, named as it was shown.
//! - `--package deb`: its arguments are checked first; against a release
//!   built by `scripts/build-release.sh` from the debug binaries, its
//!   `--dry-run` downloads and verifies the real `.deb` and prints the
//!   reviewed plan `installer/testdata/dry-run-deb.expected`; a checksum
//!   mismatch, a signature by the wrong key or a package of another version
//!   is refused before the plan reaches apt-get. A file-by-file
//!   installation refuses a host where dpkg has the package, and
//!   `noderax-agent uninstall` leaves a package installation to apt-get.
//!   (apt-get installing it for real needs a booted system: the VM suite.)
//!
//! shellcheck, visudo (package sudo) and minisign must be installed
//! (scripts/setup-debian.sh installs them); a test that needs one fails
//! naming the package otherwise.
//!
//! The installations need root (they chown files to the fake root's users
//! and run the bootstrap as one of them) and the agent's binaries
//! (`cargo build --workspace`; nextest and scripts/test.sh build them).
//! Without root they are skipped with a message. The systemd side (units
//! started, `sudo -l` as noderax) is exercised in the VM suite (issue 8).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::model::Install;
use testbed::test_support::{describe as text, is_root, require_tool, workspace_bin_dir};
use testbed::{Testbed, TestbedConfig};

/// Set to rewrite installer/testdata/dry-run*.expected from this host's output.
const UPDATE_ENV: &str = "NODERAX_UPDATE_EXPECTED";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

fn script() -> PathBuf {
    repo().join("installer/install.sh")
}

fn skip_unless_root() -> bool {
    if !is_root() {
        eprintln!(
            "skipped: installing into a throwaway root needs root (chown, useradd --prefix, setpriv)"
        );
        return true;
    }
    false
}

fn host_arch() -> &'static str {
    shared::release_files::host_arch().expect("releases exist for amd64 and arm64 only")
}

/// The installer with a clean set of its own variables.
fn installer(args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("NODERAX_") {
            cmd.env_remove(k);
        }
    }
    for k in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

async fn run_async(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("bash runs"))
        .await
        .unwrap()
}

/// Calls a function of the script after sourcing it (main is not run).
fn call(function_and_args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(". \"$0\" && \"$@\"")
        .arg(script())
        .args(function_and_args)
        .env("NODERAX_INSTALLER_SOURCE_ONLY", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// ---- static checks ------------------------------------------------------------

#[test]
fn shellcheck_is_clean() {
    let shellcheck = require_tool("shellcheck", "shellcheck");
    let out = Command::new(shellcheck).arg(script()).output().unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", text(&out));
}

#[test]
fn embedded_units_are_the_shipped_ones() {
    for unit in [
        "noderax-agent.service",
        "noderax-agent-exec.socket",
        "noderax-agent-exec.service",
    ] {
        let (ok, embedded) = call(&["unit_text", unit], None);
        assert!(ok, "unit_text {unit} failed");
        let shipped = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        assert!(
            embedded == shipped,
            "installer/install.sh embeds a different {unit} than systemd/{unit}: \
             paste systemd/{unit} into unit_text() in the installer"
        );
    }
}

#[test]
fn helper_functions() {
    for (input, want) in [
        ("api.example.com", Some("https://api.example.com")),
        (
            "https://api.example.com/api/v1/",
            Some("https://api.example.com"),
        ),
        (" 'https://x.example/v1' ", Some("https://x.example")),
        ("http://127.0.0.1:8080", Some("http://127.0.0.1:8080")),
        ("https://x.example/prefix", Some("https://x.example/prefix")),
        ("ftp://x.example", None),
        ("https://", None),
        ("https://a b.example", None),
        ("https://x.example/\"", None),
    ] {
        let (ok, out) = call(&["normalize_api_url", input], None);
        match want {
            Some(w) => assert!(ok && out == w, "normalize_api_url {input:?} gave {out:?}"),
            None => assert!(!ok, "normalize_api_url accepted {input:?} as {out:?}"),
        }
    }

    for (v, ok_want) in [
        ("1.0.3", true),
        ("2026.5.3", true),
        ("main-abc1234", true),
        ("0.1.0-dev", true),
        ("../x", false),
        ("-x", false),
        ("a..b", false),
        ("a/b", false),
        ("", false),
    ] {
        let (ok, _) = call(&["release_version_ok", v], None);
        assert_eq!(ok, ok_want, "release_version_ok {v:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let sums = dir.path().join("SHA256SUMS");
    let a = "a".repeat(64);
    let b = "B".repeat(64);
    std::fs::write(
        &sums,
        format!(
            "{a}  noderax-agent-linux-amd64\n{b} *noderax-agent-exec-linux-amd64\n{a}  twice\n{a}  twice\nshort  short\n"
        ),
    )
    .unwrap();
    let s = sums.to_str().unwrap();
    assert_eq!(
        call(&["sums_entry", s, "noderax-agent-linux-amd64"], None),
        (true, format!("{a}\n"))
    );
    assert_eq!(
        call(&["sums_entry", s, "noderax-agent-exec-linux-amd64"], None),
        (true, format!("{}\n", b.to_lowercase()))
    );
    for missing in [
        "noderax-agent",
        "twice",
        "short",
        "noderax-agent-linux-arm64",
    ] {
        assert!(!call(&["sums_entry", s, missing], None).0, "{missing}");
    }

    let head = "Matching Defaults entries for noderax on h:\n    env_reset, secure_path=/usr/bin\n\n\
                User noderax may run the following commands on h:\n";
    let helper = "    (root) NOPASSWD: /usr/local/libexec/noderax-agent-priv\n";
    assert!(call(&["check_sudo_listing"], Some(&format!("{head}{helper}"))).0);
    let (ok, extra) = call(
        &["check_sudo_listing"],
        Some(&format!("{head}{helper}    (ALL : ALL) ALL\n")),
    );
    assert!(!ok && extra.contains("(ALL : ALL) ALL"), "{extra}");
    assert!(
        !call(
            &["check_sudo_listing"],
            Some("User noderax is not allowed to run sudo on h.\n")
        )
        .0
    );
    assert!(
        !call(
            &["check_sudo_listing"],
            Some(&format!(
                "{head}    (root) NOPASSWD: /usr/local/libexec/noderax-agent-priv apt *\n"
            ))
        )
        .0
    );
}

// ---- dry run ------------------------------------------------------------------

/// What a dry run on this host must not change: the layout and the users.
fn host_snapshot() -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = [
        "/etc/noderax-agent",
        "/opt/noderax-agent",
        "/var/lib/noderax-agent",
        "/var/lib/noderax-agent-exec",
        "/var/lib/noderax-agent-install",
        "/home/noderax",
        "/usr/local/libexec/noderax-agent-priv",
        "/usr/local/bin/noderax-agent",
        "/etc/sudoers.d/noderax-agent",
        "/etc/systemd/system/noderax-agent.service",
        "/etc/systemd/system/noderax-agent-exec.socket",
        "/etc/systemd/system/noderax-agent-exec.service",
    ]
    .iter()
    .map(|p| (p.to_string(), std::fs::symlink_metadata(p).is_ok()))
    .collect();
    for user in ["noderax", "noderax-net"] {
        let found = Command::new("getent")
            .args(["passwd", user])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        v.push((format!("user {user}"), found));
    }
    // dpkg knows the package (installed, or its conffiles left).
    let known = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "noderax-agent"])
        .output()
        .map(|o| o.status.success() && o.stdout != b"not-installed")
        .unwrap_or(false);
    v.push(("package noderax-agent".to_owned(), known));
    v
}

/// System directories a Debian host may or may not have; the installer
/// creates (and lists) them only when missing, so their lines depend on the
/// machine.
const SHARED_DIRS: [&str; 6] = [
    "/var/lib",
    "/home",
    "/usr/local/libexec",
    "/usr/local/bin",
    "/etc/sudoers.d",
    "/etc/systemd/system",
];

/// The dry-run output without what depends on this machine.
fn normalize_plan(out: &str) -> String {
    let arch = host_arch();
    let mut lines = Vec::new();
    for line in out.lines() {
        if line.starts_with("host: ") {
            continue;
        }
        let shared = SHARED_DIRS.iter().any(|d| {
            line == format!("+ install -d -o root -g root -m 0755 {d}")
                || line == format!("|   {d}")
        });
        if shared {
            continue;
        }
        lines.push(
            line.replace(&format!("-linux-{arch}"), "-linux-ARCH")
                .replace(&format!(", {arch})"), ", ARCH)"),
        );
    }
    lines.join("\n") + "\n"
}

#[test]
fn dry_run_prints_the_reviewed_plan_and_changes_nothing() {
    let before = host_snapshot();
    let out = installer(&[
        "--dry-run",
        "--api-url",
        "https://api.example.com/api/v1/",
        "--bootstrap-token",
        "nbt_0123456789abcdef0123456789abcdef",
        "--version",
        "1.2.3",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host_snapshot(), before, "the dry run changed this host");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("nbt_0123456789abcdef"),
        "the plan shows the bootstrap token"
    );

    // The essentials, so that a failure names what is missing.
    for want in [
        "useradd --system --gid noderax-net --home-dir /var/lib/noderax-agent --no-create-home --shell /usr/sbin/nologin",
        "useradd --system --gid noderax --home-dir /home/noderax --no-create-home --shell /usr/sbin/nologin",
        "+ install -d -o root -g root -m 0755 /etc/noderax-agent",
        "+ install -d -o noderax-net -g noderax-net -m 0700 /var/lib/noderax-agent",
        "+ install -d -o noderax -g noderax -m 0700 /var/lib/noderax-agent-exec",
        "+ install -d -o noderax -g noderax -m 0700 /home/noderax",
        "+ write /etc/noderax-agent/config.json (root:noderax-net 0640)",
        "|     \"api_url\": \"https://api.example.com\",",
        "/opt/noderax-agent/releases/1.2.3/noderax-agent",
        "+ install -o root -g root -m 0755 /tmp/noderax-install.XXXXXXXX/noderax-agent-priv-linux-",
        "(root:root 0440)",
        "|   noderax ALL=(root) NOPASSWD: /usr/local/libexec/noderax-agent-priv",
        "+ visudo -cf /etc/sudoers.d/.noderax-agent.new-PID",
        "+ mv -f /etc/sudoers.d/.noderax-agent.new-PID /etc/sudoers.d/noderax-agent",
        "sudo -n -l -U noderax",
        "+ write /etc/systemd/system/noderax-agent.service (root:root 0644)",
        "+ write /etc/systemd/system/noderax-agent-exec.socket (root:root 0644)",
        "+ write /etc/systemd/system/noderax-agent-exec.service (root:root 0644)",
        "+ systemctl daemon-reload",
        "bootstrap --non-interactive --api-url https://api.example.com --state-file /var/lib/noderax-agent/agent_identity.json",
        "setpriv --reuid=noderax-net --regid=noderax-net --clear-groups --inh-caps=-all -- /opt/noderax-agent/current/noderax-agent bootstrap",
        "+ systemctl enable --now noderax-agent-exec.socket noderax-agent.service",
        "==> [100%] service_started",
        "|   /var/lib/noderax-agent-install/manifest",
    ] {
        assert!(stdout.contains(want), "the plan lacks {want:?}:\n{stdout}");
    }
    // Visudo runs before the file is moved into place.
    let visudo = stdout.find("+ visudo -cf").unwrap();
    let moved = stdout.find("/etc/sudoers.d/noderax-agent\n").unwrap();
    assert!(
        visudo < moved,
        "visudo must check the file before it is moved into place"
    );

    compare_with_expected("dry-run.expected", &normalize_plan(&stdout), &before);
}

/// The normalized plan against the reviewed `installer/testdata/NAME`
/// (rewritten instead with UPDATE_ENV set). Not compared on a host that has
/// (part of) an installation, whose plan differs.
fn compare_with_expected(name: &str, plan: &str, before: &[(String, bool)]) {
    let expected_file = repo().join("installer/testdata").join(name);
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::write(&expected_file, plan).unwrap();
        eprintln!("wrote {}", expected_file.display());
        return;
    }
    if before.iter().any(|(_, exists)| *exists) {
        eprintln!(
            "not compared with {}: this host already has (part of) an installation: {:?}",
            expected_file.display(),
            before
                .iter()
                .filter(|(_, e)| *e)
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
        );
        return;
    }
    let expected = std::fs::read_to_string(&expected_file).unwrap();
    if plan != expected {
        let got =
            std::env::temp_dir().join(format!("installer-{name}.{}.actual", std::process::id()));
        std::fs::write(&got, plan).unwrap();
        panic!(
            "the dry-run plan differs from {} (this run's is in {}; after reviewing the \
             difference, {UPDATE_ENV}=1 rewrites the expected file)",
            expected_file.display(),
            got.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_under_a_root_creates_and_reports_nothing() {
    let tb = Testbed::start(TestbedConfig::fast()).await.unwrap();
    let token = tb.create_install("dry");
    let root = FakeRoot::new();
    let before = root.tree();
    let mut cmd = installer(&[
        "--dry-run",
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(root.tree(), before, "the dry run changed the root");
    let install = tb.install(&token).unwrap();
    assert!(
        install.reports.is_empty(),
        "the dry run reported progress: {:?}",
        install.reports
    );
    assert!(tb.requests().is_empty(), "the dry run made requests");
}

// ---- installations into a throwaway root ----------------------------------------

/// A directory laid out as a minimal Debian root: the directories a real
/// host has, empty account databases, os-release.
struct FakeRoot {
    dir: tempfile::TempDir,
}

/// Present before the installer runs (a fresh Debian system has them).
const SKELETON: [&str; 11] = [
    "etc",
    "etc/sudoers.d",
    "etc/systemd",
    "etc/systemd/system",
    "opt",
    "var",
    "var/lib",
    "var/log",
    "home",
    "usr/local/bin",
    "usr/local",
];

impl FakeRoot {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        // noderax-net runs the bootstrap from inside it.
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in SKELETON {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::create_dir_all(r.join("usr")).unwrap();
        for (f, mode) in [
            ("passwd", 0o644),
            ("group", 0o644),
            ("shadow", 0o640),
            ("gshadow", 0o640),
        ] {
            let p = r.join("etc").join(f);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(
            r.join("etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        Self { dir }
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// An installed path inside the root.
    fn path(&self, abs: &str) -> PathBuf {
        self.dir.path().join(abs.trim_start_matches('/'))
    }

    /// uid of a user of the root's passwd (gid of its group).
    fn id(&self, db: &str, name: &str) -> u32 {
        let text = std::fs::read_to_string(self.path(&format!("/etc/{db}"))).unwrap();
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0] == name).then(|| f[2].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{name} is not in /etc/{db}:\n{text}"))
    }

    fn passwd_entry(&self, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.path("/etc/passwd")).unwrap();
        text.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f[0] == name)
            .unwrap_or_else(|| panic!("{name} is not in /etc/passwd"))
    }

    /// Every path in the root (as installed, `/etc/...`) with its type,
    /// owner, mode and, for links, target.
    fn tree(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![self.dir.path().to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = format!(
                    "/{}",
                    e.path().strip_prefix(self.dir.path()).unwrap().display()
                );
                let link = std::fs::read_link(e.path())
                    .map(|t| format!(" -> {}", t.display()))
                    .unwrap_or_default();
                out.insert(format!(
                    "{rel} {}:{} {:o}{link}",
                    md.uid(),
                    md.gid(),
                    md.mode()
                ));
                if md.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out
    }

    /// Every path in the root (as installed), without attributes.
    fn paths(&self) -> BTreeSet<String> {
        self.tree()
            .into_iter()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    }

    /// The manifest's path lines, in order.
    fn manifest(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("/var/lib/noderax-agent-install/manifest"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    fn manifest_field(&self, key: &str) -> String {
        std::fs::read_to_string(self.path("/var/lib/noderax-agent-install/manifest"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("the manifest has no {key} field"))
    }

    /// Asserts owner, group and permission bits of an installed path.
    fn assert_attrs(&self, abs: &str, uid: u32, gid: u32, mode: u32) {
        let md = std::fs::symlink_metadata(self.path(abs)).unwrap_or_else(|e| panic!("{abs}: {e}"));
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (uid, gid, mode),
            "{abs}: owner, group, mode (mode {:o})",
            md.mode() & 0o7777
        );
    }

    fn link(&self, abs: &str) -> String {
        std::fs::read_link(self.path(abs))
            .unwrap_or_else(|e| panic!("{abs} is not a link: {e}"))
            .display()
            .to_string()
    }
}

/// A release directory `<dir>/<name>/` as the CDN lays it out: the three
/// binaries for this architecture and SHA256SUMS (with `corrupt`, the
/// executor's digest is wrong).
fn make_release(dir: &Path, name: &str, agent: &Path, corrupt: bool) {
    let arch = host_arch();
    let rel = dir.join(name);
    std::fs::create_dir_all(&rel).unwrap();
    let bins = bin_dir();
    let files = [
        (format!("noderax-agent-linux-{arch}"), agent.to_owned()),
        (
            format!("noderax-agent-exec-linux-{arch}"),
            bins.join("noderax-agent-exec"),
        ),
        (
            format!("noderax-agent-priv-linux-{arch}"),
            bins.join("noderax-agent-priv"),
        ),
    ];
    for (artifact, src) in &files {
        std::fs::copy(src, rel.join(artifact)).unwrap();
    }
    let out = Command::new("sha256sum")
        .args(files.iter().map(|(a, _)| a.as_str()))
        .current_dir(&rel)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut sums = String::from_utf8(out.stdout).unwrap();
    if corrupt {
        let exec = format!("noderax-agent-exec-linux-{arch}");
        sums = sums
            .lines()
            .map(|l| {
                if l.ends_with(&exec) {
                    format!("{}{}", "0".repeat(64), &l[64..])
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    std::fs::write(rel.join("SHA256SUMS"), sums).unwrap();
}

/// The version the built agent reports (the release directory's name).
fn built_version() -> String {
    let out = Command::new(bin_dir().join("noderax-agent"))
        .arg("version")
        .output()
        .unwrap();
    let first = String::from_utf8(out.stdout).unwrap();
    first
        .lines()
        .next()
        .unwrap()
        .strip_prefix("noderax-agent ")
        .unwrap()
        .to_owned()
}

fn stages(install: &Install) -> Vec<(String, Option<i64>, String)> {
    install
        .reports
        .iter()
        .map(|r| (r.stage.clone(), r.progress_percent, r.status.clone()))
        .collect()
}

fn testbed_with_releases(dir: &Path) -> TestbedConfig {
    TestbedConfig {
        release_dir: Some(dir.to_owned()),
        ..TestbedConfig::fast()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_into_a_root_reporting_every_stage_and_upgrades_in_place() {
    if skip_unless_root() {
        return;
    }
    require_tool("visudo", "sudo");
    let releases = tempfile::tempdir().unwrap();
    let version = built_version();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        false,
    );
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    let token = tb.create_install("installer-node");
    let root = FakeRoot::new();
    let skeleton = root.paths();

    let mut cmd = installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &format!("{}/api/v1", tb.api_url()),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains(&token),
        "the installer printed the bootstrap token"
    );

    // Progress: PROTOCOL.md §3's stages in order, ending completed.
    let install = tb.install(&token).unwrap();
    let mut want: Vec<(String, Option<i64>, String)> = [
        ("installer_started", 8),
        ("dependencies_ready", 30),
        ("service_user_ready", 45),
        ("binary_download_started", 60),
        ("binary_downloaded", 74),
        ("agent_bootstrapping", 88),
    ]
    .iter()
    .map(|(s, p)| (s.to_string(), Some(*p), "installing".to_owned()))
    .collect();
    want.push(("service_started".into(), Some(100), "completed".into()));
    let mut got = stages(&install);
    // Only when curl, sudo or ca-certificates were missing (never under --root).
    got.retain(|(s, _, _)| s != "dependencies_installing");
    assert_eq!(got, want, "{}", text(&out));
    assert!(install.reports.iter().all(|r| r.applied));
    assert_eq!(
        (
            install.status.as_str(),
            install.stage.as_str(),
            install.progress_percent
        ),
        ("completed", "service_started", 100)
    );
    let node_id = install.node_id.clone().expect("the token was consumed");

    // Users: system accounts, no login, locked.
    let (net, exec) = (
        root.id("passwd", "noderax-net"),
        root.id("passwd", "noderax"),
    );
    let (net_g, exec_g) = (root.id("group", "noderax-net"), root.id("group", "noderax"));
    assert!(net < 1000 && exec < 1000 && net != exec);
    let net_pw = root.passwd_entry("noderax-net");
    let exec_pw = root.passwd_entry("noderax");
    assert_eq!(
        (net_pw[3].as_str(), net_pw[5].as_str(), net_pw[6].as_str()),
        (
            net_g.to_string().as_str(),
            "/var/lib/noderax-agent",
            "/usr/sbin/nologin"
        )
    );
    assert_eq!(
        (
            exec_pw[3].as_str(),
            exec_pw[5].as_str(),
            exec_pw[6].as_str()
        ),
        (
            exec_g.to_string().as_str(),
            "/home/noderax",
            "/usr/sbin/nologin"
        )
    );
    let shadow = std::fs::read_to_string(root.path("/etc/shadow")).unwrap();
    for user in ["noderax", "noderax-net"] {
        let pw = shadow
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{user}:")))
            .unwrap();
        assert!(pw.starts_with('!'), "{user} is not locked: {pw}");
    }

    // Owners and modes (README.md: layout, root helper, units).
    let v = &version;
    for (path, uid, gid, mode) in [
        ("/etc/noderax-agent", 0, 0, 0o755),
        ("/etc/noderax-agent/config.json", 0, net_g, 0o640),
        ("/opt/noderax-agent", 0, 0, 0o755),
        ("/opt/noderax-agent/releases", 0, 0, 0o755),
        (&format!("/opt/noderax-agent/releases/{v}"), 0, 0, 0o755),
        (
            &format!("/opt/noderax-agent/releases/{v}/noderax-agent"),
            0,
            0,
            0o755,
        ),
        (
            &format!("/opt/noderax-agent/releases/{v}/noderax-agent-exec"),
            0,
            0,
            0o755,
        ),
        (
            &format!("/opt/noderax-agent/releases/{v}/noderax-agent-priv"),
            0,
            0,
            0o755,
        ),
        ("/usr/local/libexec", 0, 0, 0o755),
        ("/etc/sudoers.d/noderax-agent", 0, 0, 0o440),
        ("/etc/systemd/system/noderax-agent.service", 0, 0, 0o644),
        ("/etc/systemd/system/noderax-agent-exec.socket", 0, 0, 0o644),
        (
            "/etc/systemd/system/noderax-agent-exec.service",
            0,
            0,
            0o644,
        ),
        (
            "/etc/systemd/system/noderax-agent-exec.service.d",
            0,
            0,
            0o755,
        ),
        (
            "/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf",
            0,
            0,
            0o644,
        ),
        ("/var/lib/noderax-agent", net, net_g, 0o700),
        (
            "/var/lib/noderax-agent/agent_identity.json",
            net,
            net_g,
            0o600,
        ),
        ("/var/lib/noderax-agent-exec", exec, exec_g, 0o700),
        ("/home/noderax", exec, exec_g, 0o700),
        ("/var/lib/noderax-agent-install", 0, 0, 0o755),
        ("/var/lib/noderax-agent-install/manifest", 0, 0, 0o644),
    ] {
        root.assert_attrs(path, uid, gid, mode);
    }
    assert_eq!(
        root.link("/opt/noderax-agent/current"),
        format!("releases/{v}")
    );
    assert_eq!(
        root.link("/usr/local/bin/noderax-agent"),
        "/opt/noderax-agent/current/noderax-agent"
    );
    // The helper's sudoers path follows `current`, so an update or a
    // rollback switches it with the release.
    assert_eq!(
        root.link("/usr/local/libexec/noderax-agent-priv"),
        "/opt/noderax-agent/current/noderax-agent-priv"
    );
    assert_eq!(
        root.link("/usr/local/libexec/noderax-agent-self-update"),
        "noderax-agent-priv"
    );
    let bins = bin_dir();
    for (installed, built) in [
        (
            format!("/opt/noderax-agent/releases/{v}/noderax-agent"),
            "noderax-agent",
        ),
        (
            format!("/opt/noderax-agent/releases/{v}/noderax-agent-exec"),
            "noderax-agent-exec",
        ),
        (
            format!("/opt/noderax-agent/releases/{v}/noderax-agent-priv"),
            "noderax-agent-priv",
        ),
    ] {
        assert!(
            std::fs::read(root.path(&installed)).unwrap()
                == std::fs::read(bins.join(built)).unwrap(),
            "{installed} is not {built}"
        );
    }
    for unit in [
        "noderax-agent.service",
        "noderax-agent-exec.socket",
        "noderax-agent-exec.service",
    ] {
        assert_eq!(
            std::fs::read_to_string(root.path(&format!("/etc/systemd/system/{unit}"))).unwrap(),
            std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap(),
            "{unit}"
        );
    }
    assert_eq!(
        root.link("/etc/systemd/system/multi-user.target.wants/noderax-agent.service"),
        "/etc/systemd/system/noderax-agent.service"
    );
    assert_eq!(
        root.link("/etc/systemd/system/sockets.target.wants/noderax-agent-exec.socket"),
        "/etc/systemd/system/noderax-agent-exec.socket"
    );

    // The sudoers drop-in grants noderax the helper and nothing else, and
    // sudo accepts it.
    let sudoers = std::fs::read_to_string(root.path("/etc/sudoers.d/noderax-agent")).unwrap();
    let rules: Vec<&str> = sudoers
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules,
        ["noderax ALL=(root) NOPASSWD: /usr/local/libexec/noderax-agent-priv"]
    );
    let visudo = Command::new("visudo")
        .arg("-cf")
        .arg(root.path("/etc/sudoers.d/noderax-agent"))
        .output()
        .unwrap();
    assert!(visudo.status.success(), "{}", text(&visudo));
    assert!(
        !std::fs::read_dir(root.path("/etc/sudoers.d"))
            .unwrap()
            .any(|e| e.unwrap().file_name() != "noderax-agent"),
        "a temporary sudoers file was left behind"
    );

    // Config: what the installer knows, nothing else; identity from the testbed.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path("/etc/noderax-agent/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config,
        serde_json::json!({
            "api_url": tb.api_url(),
            "state_file": "/var/lib/noderax-agent/agent_identity.json",
            "log_level": "info",
        })
    );
    let identity: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path("/var/lib/noderax-agent/agent_identity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(identity["node_id"], node_id.as_str());

    // The manifest lists exactly what the installer created, each once.
    let manifest = root.manifest();
    let listed: BTreeSet<String> = manifest.iter().cloned().collect();
    assert_eq!(listed.len(), manifest.len(), "duplicates: {manifest:?}");
    let created: BTreeSet<String> = root
        .paths()
        .difference(&skeleton)
        .filter(|p| {
            // useradd's backups; systemctl enable's links (enabled-units).
            !p.ends_with('-') && !p.contains(".wants")
        })
        .cloned()
        .collect();
    assert_eq!(listed, created, "manifest (left) vs created paths (right)");
    assert_eq!(root.manifest_field("created-users"), "noderax-net noderax");
    assert_eq!(root.manifest_field("created-groups"), "noderax-net noderax");
    assert_eq!(
        root.manifest_field("enabled-units"),
        "noderax-agent-exec.socket noderax-agent.service"
    );
    for parent_first in [
        ("/opt/noderax-agent", "/opt/noderax-agent/releases"),
        (
            "/var/lib/noderax-agent",
            "/var/lib/noderax-agent/agent_identity.json",
        ),
        (
            "/usr/local/libexec",
            "/usr/local/libexec/noderax-agent-priv",
        ),
    ] {
        let pos = |p: &str| manifest.iter().position(|m| m == p).unwrap();
        assert!(
            pos(parent_first.0) < pos(parent_first.1),
            "{parent_first:?}"
        );
    }

    // The config sets none of the executor's settings: its drop-in is there
    // (listed, so that `config set` can rewrite it) and overrides nothing.
    let dropin = "/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf";
    let settings = std::fs::read_to_string(root.path(dropin)).unwrap();
    assert!(
        settings.lines().all(|l| l.starts_with('#')) && settings.contains("at their\n# defaults"),
        "{settings}"
    );

    // Re-running upgrades in place: same release, identity and config kept,
    // nothing new; the bootstrap token is not used again.
    let identity_before =
        std::fs::read(root.path("/var/lib/noderax-agent/agent_identity.json")).unwrap();
    let config_before = std::fs::read(root.path("/etc/noderax-agent/config.json")).unwrap();
    let tree_before = root.tree();
    let mut cmd = installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already enrolled"));
    let tree_after = root.tree();
    assert_eq!(
        tree_after.difference(&tree_before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "a re-run of the same release changed the root"
    );
    assert_eq!(root.manifest(), manifest);

    // Settings the executor shares with the network process, set in the
    // config: a re-run passes them to the executor in the drop-in.
    let config_path = root.path("/etc/noderax-agent/config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&config_before).unwrap();
    c["kill_grace"] = "45s".into();
    c["max_concurrent_tasks"] = 2.into();
    c["root_access_ceiling"] = "off".into();
    std::fs::write(&config_path, c.to_string()).unwrap();
    let mut cmd = installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let settings = std::fs::read_to_string(root.path(dropin)).unwrap();
    let exec_start = "/opt/noderax-agent/current/noderax-agent-exec --peer-user noderax-net \
        --state-dir /var/lib/noderax-agent-exec --helper /usr/local/libexec/noderax-agent-priv";
    let added = "--kill-grace 45s --max-tasks 2 --root-access-ceiling off";
    assert!(
        settings.ends_with(&format!(
            "[Service]\nExecStart=\nExecStart={exec_start} {added}\nTimeoutStopSec=65s\n"
        )),
        "{settings}"
    );
    root.assert_attrs(dropin, 0, 0, 0o644);
    // The executor takes those options.
    let out = Command::new(bin_dir().join("noderax-agent-exec"))
        .args(added.split(' '))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(root.manifest(), manifest);
    let config_before = std::fs::read(&config_path).unwrap();

    // An upgrade from a local release directory: a new release beside the
    // old one, `current` and `previous` switched, identity and config kept.
    let next = "9.9.9-test";
    let fake_agent = releases.path().join("fake-agent");
    // Reports the new version; everything else is the real agent's.
    std::fs::write(
        &fake_agent,
        format!(
            "#!/bin/sh\n[ \"$1\" = version ] && echo 'noderax-agent {next}' && exit 0\nexec '{}' \"$@\"\n",
            bin_dir().join("noderax-agent").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake_agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    make_release(releases.path(), next, &fake_agent, false);
    let release_dir = releases.path().to_str().unwrap().to_owned();
    let out = run_async(installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
        "--release-dir",
        &release_dir,
        "--version",
        next,
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        root.link("/opt/noderax-agent/current"),
        format!("releases/{next}")
    );
    assert_eq!(
        root.link("/opt/noderax-agent/previous"),
        format!("releases/{v}")
    );
    root.assert_attrs(
        &format!("/opt/noderax-agent/releases/{next}/noderax-agent"),
        0,
        0,
        0o755,
    );
    assert_eq!(
        std::fs::read(root.path("/var/lib/noderax-agent/agent_identity.json")).unwrap(),
        identity_before
    );
    assert_eq!(
        std::fs::read(root.path("/etc/noderax-agent/config.json")).unwrap(),
        config_before
    );
    let upgraded = root.manifest();
    assert_eq!(
        &upgraded[..manifest.len()],
        &manifest[..],
        "earlier entries kept in order"
    );
    for new in [
        format!("/opt/noderax-agent/releases/{next}"),
        format!("/opt/noderax-agent/releases/{next}/noderax-agent"),
        "/opt/noderax-agent/previous".into(),
    ] {
        assert!(
            upgraded.contains(&new),
            "{new} not in the manifest: {upgraded:?}"
        );
    }
    // The published version must be the one the binary reports.
    let out = run_async(installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
        "--release-dir",
        &format!("{release_dir}/{next}"),
        "--version",
        "9.9.8",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("report version 9.9.9-test"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_aborts_before_anything_is_installed() {
    if skip_unless_root() {
        return;
    }
    let releases = tempfile::tempdir().unwrap();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        true,
    );
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    let token = tb.create_install("mismatch");
    let root = FakeRoot::new();
    let mut cmd = installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA-256 mismatch for noderax-agent-exec-linux-"),
        "{}",
        text(&out)
    );

    let install = tb.install(&token).unwrap();
    let last = install.reports.last().expect("reports");
    assert_eq!(
        (
            last.stage.as_str(),
            last.status.as_str(),
            last.progress_percent
        ),
        ("failed", "failed", Some(60)),
        "{:?}",
        stages(&install)
    );
    assert!(
        last.status_message
            .as_deref()
            .is_some_and(|m| m.contains("SHA-256 mismatch") && m.contains("nothing was installed")),
        "{:?}",
        last.status_message
    );
    assert_eq!(
        (install.status.as_str(), install.progress_percent),
        ("failed", 60)
    );
    assert!(install.node_id.is_none(), "the token was consumed");
    assert!(
        !stages(&install)
            .iter()
            .any(|(s, _, _)| s == "binary_downloaded"),
        "{:?}",
        stages(&install)
    );

    // Nothing of the release, no config, sudoers, units or identity.
    let releases_dir = std::fs::read_dir(root.path("/opt/noderax-agent/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect::<Vec<_>>();
    assert!(releases_dir.is_empty(), "{releases_dir:?}");
    for absent in [
        "/opt/noderax-agent/current",
        "/usr/local/libexec/noderax-agent-priv",
        "/usr/local/bin/noderax-agent",
        "/etc/noderax-agent/config.json",
        "/etc/sudoers.d/noderax-agent",
        "/etc/systemd/system/noderax-agent.service",
        "/etc/systemd/system/noderax-agent-exec.socket",
        "/etc/systemd/system/noderax-agent-exec.service",
        "/var/lib/noderax-agent/agent_identity.json",
    ] {
        assert!(
            std::fs::symlink_metadata(root.path(absent)).is_err(),
            "{absent} exists"
        );
    }
    // What was created (users, directories) is in the manifest.
    for listed in root.manifest() {
        assert!(
            root.path(&listed).exists(),
            "{listed} is listed but missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_signature_is_checked_with_the_given_key() {
    if skip_unless_root() {
        return;
    }
    let minisign = require_tool("minisign", "minisign");
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    for name in ["signer", "other"] {
        let out = Command::new(&minisign)
            .args(["-G", "-W", "-p"])
            .arg(k.join(format!("{name}.pub")))
            .arg("-s")
            .arg(k.join(format!("{name}.key")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let releases = tempfile::tempdir().unwrap();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        false,
    );
    let sums = releases.path().join("latest/SHA256SUMS");
    let out = Command::new(&minisign)
        .arg("-S")
        .arg("-s")
        .arg(k.join("signer.key"))
        .arg("-m")
        .arg(&sums)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    let run = |root: &FakeRoot, token: &str, key: &Path| {
        let mut cmd = installer(&[
            "--root",
            root.dir(),
            "--api-url",
            &tb.api_url(),
            "--bootstrap-token",
            token,
            "--release-key",
            key.to_str().unwrap(),
        ]);
        cmd.env(
            "NODERAX_AGENT_DOWNLOAD_BASE_URL",
            format!("{}/cdn", tb.api_url()),
        );
        run_async(cmd)
    };

    // Signed by another key: refused before anything is installed.
    let token = tb.create_install("signed");
    let root = FakeRoot::new();
    let out = run(&root, &token, &k.join("other.pub")).await;
    assert!(!out.status.success(), "{}", text(&out));
    let install = tb.install(&token).unwrap();
    assert_eq!(install.status, "failed");
    let message = install
        .reports
        .last()
        .unwrap()
        .status_message
        .clone()
        .unwrap();
    assert!(
        message.contains("signature of SHA256SUMS does not verify"),
        "{message}"
    );
    assert!(!root.path("/etc/noderax-agent/release.pub").exists());
    assert!(!root.path("/opt/noderax-agent/current").exists());

    // The signer's key: installed, and the key is kept for the root helper.
    let token = tb.create_install("signed-ok");
    let root = FakeRoot::new();
    let out = run(&root, &token, &k.join("signer.pub")).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("signature of SHA256SUMS verified"),
        "{stdout}"
    );
    assert_eq!(tb.install(&token).unwrap().status, "completed");
    root.assert_attrs("/etc/noderax-agent/release.pub", 0, 0, 0o644);
    assert_eq!(
        std::fs::read(root.path("/etc/noderax-agent/release.pub")).unwrap(),
        std::fs::read(k.join("signer.pub")).unwrap()
    );
    assert!(
        root.manifest()
            .contains(&"/etc/noderax-agent/release.pub".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_reported_with_its_words() {
    if skip_unless_root() {
        return;
    }
    let tb = Testbed::start(TestbedConfig::fast()).await.unwrap();
    let token = tb.create_install("broken");
    let root = FakeRoot::new();
    // A file where the config directory goes: `install -d` fails.
    std::fs::write(root.path("/etc/noderax-agent"), "").unwrap();
    let out = run_async(installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]))
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    let install = tb.install(&token).unwrap();
    let last = install.reports.last().unwrap();
    let want = format!(
        "creating the service users and directories: `install -d -o root -g root -m 0755 {}` failed (exit status 1)",
        root.path("/etc/noderax-agent").display()
    );
    assert_eq!(
        (
            last.stage.as_str(),
            last.status.as_str(),
            last.progress_percent
        ),
        ("failed", "failed", Some(30))
    );
    assert_eq!(last.status_message.as_deref(), Some(want.as_str()));
    assert_eq!(install.status, "failed");
}

// ---- noderax-agent install / uninstall ---------------------------------------------

/// `noderax-agent` with a clean set of the installer's variables.
fn agent_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join("noderax-agent"));
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("NODERAX_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Paths of the root without the account databases' backups (`passwd-`,
/// written by useradd and userdel).
fn inventory(root: &FakeRoot) -> BTreeSet<String> {
    root.paths()
        .into_iter()
        .filter(|p| !p.ends_with('-'))
        .collect()
}

/// Installs with install.sh from the testbed's CDN into a fresh root.
async fn installed_root(tb: &Testbed, name: &str) -> FakeRoot {
    let token = tb.create_install(name);
    let root = FakeRoot::new();
    let mut cmd = installer(&[
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--bootstrap-token",
        &token,
    ]);
    cmd.env(
        "NODERAX_AGENT_DOWNLOAD_BASE_URL",
        format!("{}/cdn", tb.api_url()),
    );
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    root
}

fn write_owned(root: &FakeRoot, abs: &str, content: &str, uid: u32, gid: u32) {
    let p = root.path(abs);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noderax_agent_install_installs_this_hosts_programs() {
    if skip_unless_root() {
        return;
    }
    require_tool("visudo", "sudo");
    let tb = Testbed::start(TestbedConfig::fast()).await.unwrap();
    let token = tb.create_install("cli-install");
    let root = FakeRoot::new();
    let skeleton = root.paths();
    let bins = bin_dir();

    // Refused without --non-interactive and the token: e-mail enrollment
    // during an installation is not supported.
    let out = agent_cli(&["install", "--root", root.dir()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--non-interactive --api-url URL --bootstrap-token TOKEN"),
        "{}",
        text(&out)
    );
    assert_eq!(root.paths(), skeleton);

    // The token from the environment (NODERAX_BOOTSTRAP_TOKEN), not the
    // command line; the programs from --bin-dir.
    let scratch_before = scratch_dirs();
    let mut cmd = agent_cli(&[
        "install",
        "--non-interactive",
        "--root",
        root.dir(),
        "--api-url",
        &tb.api_url(),
        "--log-level",
        "debug",
        "--bin-dir",
        bins.to_str().unwrap(),
    ]);
    cmd.env("NODERAX_BOOTSTRAP_TOKEN", &token);
    // The installer's own choice of package is not this command's.
    cmd.env("NODERAX_AGENT_PACKAGE", "deb");
    let out = run_async(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(&token), "the token was printed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("signature not checked: binaries from this host (--local-release)"),
        "{stdout}"
    );

    // The same installation as the one-line installer's, reported the same way.
    let install = tb.install(&token).unwrap();
    assert_eq!(
        (install.status.as_str(), install.progress_percent),
        ("completed", 100),
        "{:?}",
        stages(&install)
    );
    let mut got: Vec<String> = stages(&install).into_iter().map(|(s, _, _)| s).collect();
    got.retain(|s| s != "dependencies_installing");
    assert_eq!(
        got,
        [
            "installer_started",
            "dependencies_ready",
            "service_user_ready",
            "binary_download_started",
            "binary_downloaded",
            "agent_bootstrapping",
            "service_started"
        ]
    );
    let v = built_version();
    for program in ["noderax-agent", "noderax-agent-exec", "noderax-agent-priv"] {
        let installed = format!("/opt/noderax-agent/releases/{v}/{program}");
        root.assert_attrs(&installed, 0, 0, 0o755);
        assert!(
            std::fs::read(root.path(&installed)).unwrap()
                == std::fs::read(bins.join(program)).unwrap(),
            "{installed} is not {program}"
        );
    }
    assert_eq!(
        root.link("/usr/local/libexec/noderax-agent-priv"),
        "/opt/noderax-agent/current/noderax-agent-priv"
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path("/etc/noderax-agent/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["log_level"], "debug");
    assert!(
        root.path("/var/lib/noderax-agent/agent_identity.json")
            .is_file()
    );
    let listed: BTreeSet<String> = root.manifest().into_iter().collect();
    let created: BTreeSet<String> = root
        .paths()
        .difference(&skeleton)
        .filter(|p| !p.ends_with('-') && !p.contains(".wants"))
        .cloned()
        .collect();
    assert_eq!(listed, created, "manifest (left) vs created paths (right)");
    // Its temporary release directory is gone.
    let after = scratch_dirs();
    assert!(
        after.difference(&scratch_before).next().is_none(),
        "left behind: {:?}",
        after.difference(&scratch_before).collect::<Vec<_>>()
    );
}

/// The temporary directories of `noderax-agent install`.
fn scratch_dirs() -> BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("noderax-agent-install."))
        .collect()
}

/// What the running agent and the root helper add to an installation:
/// a release installed by self-update (with a link out of the root in it),
/// the `previous` link, the update result, task state, spill files, the
/// audit log.
fn simulate_runtime(root: &FakeRoot, outside: &Path) {
    let (net, net_g) = (
        root.id("passwd", "noderax-net"),
        root.id("group", "noderax-net"),
    );
    let (exec, exec_g) = (root.id("passwd", "noderax"), root.id("group", "noderax"));
    write_owned(
        root,
        "/opt/noderax-agent/releases/9.9.9/noderax-agent",
        "new",
        0,
        0,
    );
    std::os::unix::fs::symlink(
        outside,
        root.path("/opt/noderax-agent/releases/9.9.9/escape"),
    )
    .unwrap();
    std::os::unix::fs::symlink("releases/9.9.9", root.path("/opt/noderax-agent/previous")).unwrap();
    write_owned(root, "/opt/noderax-agent/update-result.json", "{}", 0, 0);
    write_owned(
        root,
        "/var/log/noderax-agent/priv-audit.jsonl",
        "{}\n",
        0,
        0,
    );
    write_owned(
        root,
        "/var/lib/noderax-agent/tasks/t1/journal",
        "out",
        net,
        net_g,
    );
    write_owned(
        root,
        "/var/lib/noderax-agent-exec/spill-1",
        "spill",
        exec,
        exec_g,
    );
    std::os::unix::fs::symlink(outside, root.path("/var/lib/noderax-agent-exec/escape")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_exactly_what_the_manifest_lists() {
    if skip_unless_root() {
        return;
    }
    require_tool("visudo", "sudo");
    let releases = tempfile::tempdir().unwrap();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        false,
    );
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    let skeleton = inventory(&FakeRoot::new());
    let root = installed_root(&tb, "uninstall").await;

    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    simulate_runtime(&root, outside.path());
    let exec = root.id("passwd", "noderax");
    let exec_g = root.id("group", "noderax");
    // Not the installer's: an operator's file beside the agent, one in the
    // agent's config directory, one a task left in noderax's home.
    write_owned(&root, "/opt/unrelated.txt", "mine", 0, 0);
    write_owned(&root, "/etc/noderax-agent/operator-notes", "mine", 0, 0);
    write_owned(&root, "/home/noderax/made-by-a-task", "task", exec, exec_g);
    let identity = std::fs::read(root.path("/var/lib/noderax-agent/agent_identity.json")).unwrap();
    let before = inventory(&root);

    // What must be left: the skeleton, the unrelated files with the
    // directories holding them, and the state (kept without --purge).
    let mut want: BTreeSet<String> = skeleton.clone();
    for p in [
        "/opt/unrelated.txt",
        "/etc/noderax-agent",
        "/etc/noderax-agent/operator-notes",
        "/home/noderax",
        "/home/noderax/made-by-a-task",
    ] {
        want.insert(p.to_owned());
    }
    for p in &before {
        if [
            "/var/lib/noderax-agent",
            "/var/lib/noderax-agent-exec",
            "/var/log/noderax-agent",
        ]
        .iter()
        .any(|s| p == s || p.starts_with(&format!("{s}/")))
        {
            want.insert(p.clone());
        }
    }
    for p in [
        "/usr/local/libexec",
        "/var/log/noderax-agent",
        "/var/log/noderax-agent/priv-audit.jsonl",
    ] {
        assert!(before.contains(p), "{p}");
    }

    let out = run_async(agent_cli(&["uninstall", "--root", root.dir(), "--yes"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let after = inventory(&root);
    assert_eq!(
        after.symmetric_difference(&want).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "left behind (in the root, not expected) or wrongly removed (expected, not in the root):\n{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(outside.path().join("precious")).unwrap(),
        b"keep me"
    );
    // The state is kept as it was, given to root: the accounts are gone and
    // a later account with their ids must not read the identity.
    assert_eq!(
        std::fs::read(root.path("/var/lib/noderax-agent/agent_identity.json")).unwrap(),
        identity
    );
    for (p, mode) in [
        ("/var/lib/noderax-agent", 0o700),
        ("/var/lib/noderax-agent/agent_identity.json", 0o600),
        ("/var/lib/noderax-agent/tasks/t1/journal", 0o644),
        ("/var/lib/noderax-agent-exec/spill-1", 0o644),
        ("/home/noderax/made-by-a-task", 0o644),
    ] {
        root.assert_attrs(p, 0, 0, mode);
    }
    for db in ["passwd", "group", "shadow", "gshadow"] {
        let t = std::fs::read_to_string(root.path(&format!("/etc/{db}"))).unwrap();
        assert!(
            !t.contains("noderax"),
            "/etc/{db} still has the agent's accounts:\n{t}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kept ") && stdout.contains("/etc/noderax-agent: not empty"),
        "{stdout}"
    );

    // Nothing is left to uninstall.
    let out = run_async(agent_cli(&["uninstall", "--root", root.dir(), "--yes"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no install manifest"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_checks_before_it_acts_and_purges_the_state() {
    if skip_unless_root() {
        return;
    }
    require_tool("visudo", "sudo");
    let releases = tempfile::tempdir().unwrap();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        false,
    );
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    // The bare skeleton every fake root starts as.
    let skeleton = inventory(&FakeRoot::new());
    let root = installed_root(&tb, "purge").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    simulate_runtime(&root, outside.path());
    let manifest_path = root.path("/var/lib/noderax-agent-install/manifest");
    let tree = root.tree();

    // A dry run names what would go and changes nothing.
    let out = run_async(agent_cli(&["uninstall", "--root", root.dir(), "--dry-run"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "remove: ",
        "/usr/local/libexec/noderax-agent-priv",
        "keep (state; --purge removes it): ",
        "remove with its contents: ",
        "delete the accounts it created: users noderax-net noderax",
        "dry run: nothing was changed",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
    assert_eq!(root.tree(), tree);

    // Without a terminal it needs --yes.
    let out = run_async(agent_cli(&["uninstall", "--root", root.dir()])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --yes"),
        "{}",
        text(&out)
    );
    assert_eq!(root.tree(), tree);

    // A manifest entry outside the rules refuses the whole manifest.
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    for bad in ["/etc/../etc/passwd", "etc/passwd", "/"] {
        std::fs::write(&manifest_path, format!("{original}{bad}\n")).unwrap();
        let out = run_async(agent_cli(&["uninstall", "--root", root.dir(), "--yes"])).await;
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("invalid line") && stderr.contains("nothing was removed"),
            "{bad}: {stderr}"
        );
    }
    // So does one that others could have written.
    std::fs::write(&manifest_path, &original).unwrap();
    std::fs::set_permissions(&manifest_path, std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = run_async(agent_cli(&["uninstall", "--root", root.dir(), "--yes"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&manifest_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(root.tree(), tree);

    // A directory on a listed path replaced by a link out of the root: what
    // is behind it is not touched, the step fails, the manifest is kept.
    let sudoers_d = root.path("/etc/sudoers.d");
    std::fs::rename(&sudoers_d, root.path("/etc/sudoers.d.moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &sudoers_d).unwrap();
    std::fs::write(outside.path().join("noderax-agent"), "not the agent's").unwrap();
    let out = run_async(agent_cli(&[
        "uninstall",
        "--root",
        root.dir(),
        "--yes",
        "--purge",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} is a symbolic link; nothing below it is touched",
            sudoers_d.display()
        )) && stderr.contains("the install manifest")
            && stderr.contains("is kept"),
        "{}",
        text(&out)
    );
    assert!(outside.path().join("noderax-agent").exists());
    assert!(manifest_path.exists());

    // Repeated once the link is gone, it finishes (units and accounts are
    // already gone): --purge took the state too; the bare skeleton is left.
    std::fs::remove_file(&sudoers_d).unwrap();
    std::fs::rename(root.path("/etc/sudoers.d.moved"), &sudoers_d).unwrap();
    let out = run_async(agent_cli(&[
        "uninstall",
        "--root",
        root.dir(),
        "--yes",
        "--purge",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let after = inventory(&root);
    assert_eq!(
        after.symmetric_difference(&skeleton).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(outside.path().join("precious")).unwrap(),
        b"keep me"
    );
}

// ---- --package deb ------------------------------------------------------------------

/// The Debian version scripts/build-release.sh gives a release version.
fn deb_version(v: &str) -> String {
    v.replace(['-', '_'], "~")
}

/// A release of the debug binaries as scripts/build-release.sh publishes
/// it, .deb included (uncompressed: seconds), signed with `key`; returns
/// its `releases/` directory.
fn build_deb_release(out: &Path, base: &str, key: &Path) -> PathBuf {
    let bins = bin_dir();
    let tool = bins.join("noderax-release");
    assert!(
        tool.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        tool.display()
    );
    require_tool("dpkg-deb", "dpkg");
    require_tool("visudo", "sudo");
    let out_dir = out.to_str().unwrap();
    let version = built_version();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/build-release.sh"))
        .args(["--version", &version, "--out", out_dir, "--base-url", base])
        .args(["--deb-compression", "none"])
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--release-tool")
        .arg(&tool)
        .arg("--minisign-key")
        .arg(key)
        .env_remove("MINISIGN_SECRET_KEY")
        .env_remove("MINISIGN_PASSWORD");
    let built = cmd.output().unwrap();
    assert!(built.status.success(), "build-release.sh: {}", text(&built));
    out.join("noderax-agent/releases")
}

/// Two throw-away minisign key pairs, `signer` and `other`.
fn minisign_keys(dir: &Path) {
    let minisign = require_tool("minisign", "minisign");
    for name in ["signer", "other"] {
        let out = Command::new(&minisign)
            .args(["-G", "-W", "-p"])
            .arg(dir.join(format!("{name}.pub")))
            .arg("-s")
            .arg(dir.join(format!("{name}.key")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// The temporary directory a plan names (`+ mkdir DIR (temporary, ...)`).
fn plan_tmp(stdout: &str) -> PathBuf {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("+ mkdir ")?
                .split_once(" (temporary")?
                .0
                .into()
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no temporary directory in:\n{stdout}"))
}

/// A `--package deb` plan without what depends on this machine and build:
/// the temporary directory's name, the release base URL, the versions.
fn normalize_deb_plan(out: &str, base: &str, version: &str) -> String {
    let tmp = plan_tmp(out);
    let arch = host_arch();
    // The Debian version where the package is named (it equals the release
    // version when that has no pre-release part), then the release version.
    let debver = deb_version(version);
    normalize_plan(out)
        .replace(tmp.to_str().unwrap(), "/tmp/noderax-install.XXXXXXXX")
        .replace(base, "<base>")
        .replace(
            &format!("noderax-agent_{debver}_{arch}.deb"),
            "noderax-agent_<debver>_ARCH.deb",
        )
        .replace(
            &format!("noderax-agent {debver} {arch})"),
            "noderax-agent <debver> ARCH)",
        )
        .replace(version, "<version>")
}

#[test]
fn package_deb_refuses_what_the_package_cannot_do() {
    for (args, env, want) in [
        (vec![], Some("deb"), "needs a release version"),
        (vec!["--package", "deb"], None, "needs a release version"),
        (
            vec!["--package", "rpm", "--version", "1.0.0"],
            None,
            "expected deb",
        ),
        (vec![], Some("rpm"), "expected deb"),
        (
            vec!["--package", "deb", "--version", "main-abc1234"],
            None,
            "has no .deb",
        ),
        (
            vec![
                "--package",
                "deb",
                "--version",
                "1.0.0",
                "--binary-url",
                "https://cdn.example/x/noderax-agent-linux-amd64",
            ],
            None,
            "--binary-url names a binary",
        ),
        (
            vec!["--package", "deb", "--version", "1.0.0", "--root", "/tmp"],
            None,
            "cannot install into --root",
        ),
        (
            vec![
                "--package",
                "deb",
                "--version",
                "1.0.0",
                "--release-dir",
                "/tmp",
                "--local-release",
            ],
            None,
            "excludes --package deb",
        ),
    ] {
        let mut cmd = installer(&args);
        cmd.args([
            "--dry-run",
            "--api-url",
            "https://api.example.com",
            "--bootstrap-token",
            "nbt_0123456789abcdef",
        ]);
        if let Some(v) = env {
            cmd.env("NODERAX_AGENT_PACKAGE", v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?}: {}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?} {env:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: it went on: {}",
            text(&out)
        );
    }
    // The package gives noderax its own home.
    let mut cmd = installer(&["--package", "deb", "--version", "1.0.0", "--dry-run"]);
    cmd.args(["--api-url", "https://api.example.com", "--bootstrap-token"])
        .arg("nbt_0123456789abcdef")
        .env("NODERAX_AGENT_SERVICE_HOME", "/srv/noderax");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the package gives noderax the home /home/noderax"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_deb_dry_run_verifies_the_real_package_and_prints_the_reviewed_plan() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    minisign_keys(w);
    let version = built_version();
    let arch = host_arch();
    let deb_name = format!("noderax-agent_{}_{arch}.deb", deb_version(&version));
    let releases = w.join("out/noderax-agent/releases");
    // The testbed serves the layout as the release CDN.
    let tb = Testbed::start(testbed_with_releases(&releases))
        .await
        .unwrap();
    let base = format!("{}/cdn", tb.api_url());
    let releases = {
        let (out, base, key) = (w.join("out"), base.clone(), w.join("signer.key"));
        tokio::task::spawn_blocking(move || build_deb_release(&out, &base, &key))
            .await
            .unwrap()
    };
    let dry_run = |extra: &[&str], base_url: Option<&str>| {
        let mut cmd = installer(&[
            "--dry-run",
            "--package",
            "deb",
            "--api-url",
            "https://api.example.com/api/v1/",
            "--bootstrap-token",
            "nbt_0123456789abcdef0123456789abcdef",
        ]);
        cmd.args(extra);
        if let Some(b) = base_url {
            cmd.env("NODERAX_AGENT_DOWNLOAD_BASE_URL", b);
        }
        cmd.env("NODERAX_AGENT_VERSION", &version);
        run_async(cmd)
    };

    // From the release CDN: downloaded and verified for real, then the plan.
    let before = host_snapshot();
    let out = dry_run(&[], Some(&base)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(host_snapshot(), before, "the dry run changed this host");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.contains("nbt_0123456789abcdef"),
        "the plan shows the token"
    );
    assert!(
        !plan_tmp(&stdout).exists(),
        "the temporary directory is left behind"
    );
    let served: Vec<String> = tb.requests().iter().map(|r| r.path.clone()).collect();
    for file in ["SHA256SUMS", "SHA256SUMS.minisig", deb_name.as_str()] {
        let path = format!("/cdn/{version}/{file}");
        assert!(
            served.contains(&path),
            "{path} was not downloaded: {served:?}"
        );
    }
    for want in [
        "note: signature not checked: SHA256SUMS.minisig is published, but no release key was given",
        "==> [ 45%] service_user_ready: Checked the service users noderax and noderax-net",
        "==> [ 74%] binary_downloaded",
        &format!(
            "apt-get install -y -q -o Dpkg::Options::=--force-confold '{}",
            plan_tmp(&stdout).display()
        ),
        "config set api_url https://api.example.com\n",
        "+ write /etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf",
        "sudo -n -l -U noderax",
        "bootstrap --non-interactive --api-url https://api.example.com",
        "+ systemctl enable --now noderax-agent-exec.socket noderax-agent.service",
        "|   # package: noderax-agent\n",
        "|   # runtime-paths: \n",
    ] {
        assert!(stdout.contains(want), "the plan lacks {want:?}:\n{stdout}");
    }
    // The package owns what it ships: users, links, units, the release, the
    // config and sudoers conffiles are not the installer's.
    let manifest: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("|   /"))
        .collect();
    assert_eq!(
        manifest,
        [
            "var/lib/noderax-agent-install",
            "var/lib/noderax-agent-install/manifest",
            "etc/systemd/system/noderax-agent-exec.service.d",
            "etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf",
            "var/lib/noderax-agent/agent_identity.json",
        ],
        "{stdout}"
    );
    let commands: Vec<&str> = stdout.lines().filter(|l| l.starts_with("+ ")).collect();
    for absent in [
        "useradd",
        "groupadd",
        "ln -sfn",
        "visudo",
        "/etc/sudoers.d/",
        "/etc/systemd/system/noderax-agent.service ",
        "/etc/systemd/system/noderax-agent-exec.socket ",
        "/etc/systemd/system/noderax-agent-exec.service ",
        "/opt/noderax-agent/releases",
    ] {
        assert!(
            !commands.iter().any(|c| c.contains(absent)),
            "the plan does {absent:?}:\n{stdout}"
        );
    }
    compare_with_expected(
        "dry-run-deb.expected",
        &normalize_deb_plan(&stdout, &base, &version),
        &before,
    );

    // From a local release directory, signed: the signer's key verifies...
    let rel = releases.join(&version);
    let key = |name: &str| w.join(format!("{name}.pub")).to_str().unwrap().to_owned();
    let release_dir = releases.to_str().unwrap().to_owned();
    let out = dry_run(
        &[
            "--release-dir",
            &release_dir,
            "--release-key",
            &key("signer"),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("binary_downloaded: Agent ")
            && stdout.contains("(SHA-256 and signature verified)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("signature of SHA256SUMS verified with"),
        "{stdout}"
    );

    // ... another key does not, and nothing reaches apt-get.
    let refused = |out: &Output, why: &str| {
        assert_eq!(out.status.code(), Some(1), "{why}: {}", text(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(why) && stderr.contains("nothing was installed"),
            "{}",
            text(out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("apt-get install") && !stdout.contains("binary_downloaded"),
            "it went on after refusing: {stdout}"
        );
        assert!(
            !plan_tmp(&stdout).exists(),
            "the temporary directory is left behind"
        );
    };
    let out = dry_run(
        &[
            "--release-dir",
            &release_dir,
            "--release-key",
            &key("other"),
        ],
        None,
    )
    .await;
    refused(&out, "the signature of SHA256SUMS does not verify");

    // A release directory whose SHA256SUMS does not match the package.
    let bad = w.join("bad");
    let bad_rel = bad.join(&version);
    std::fs::create_dir_all(&bad_rel).unwrap();
    std::fs::hard_link(rel.join(&deb_name), bad_rel.join(&deb_name)).unwrap();
    let sums = std::fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    let sums: String = sums
        .lines()
        .map(|l| {
            if l.ends_with(&deb_name) {
                format!("{}{}\n", "0".repeat(64), &l[64..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(bad_rel.join("SHA256SUMS"), sums).unwrap();
    let bad_dir = bad.to_str().unwrap().to_owned();
    let out = dry_run(&["--release-dir", &bad_dir], None).await;
    refused(&out, &format!("SHA-256 mismatch for {deb_name}"));

    // A genuine package published as another version: its control fields
    // say what it is.
    let other = w.join("other/9.9.9");
    std::fs::create_dir_all(&other).unwrap();
    let other_name = format!("noderax-agent_9.9.9_{arch}.deb");
    std::fs::hard_link(rel.join(&deb_name), other.join(&other_name)).unwrap();
    let out = Command::new("sha256sum")
        .arg(&other_name)
        .current_dir(&other)
        .output()
        .unwrap();
    std::fs::write(other.join("SHA256SUMS"), &out.stdout).unwrap();
    let other_dir = w.join("other").to_str().unwrap().to_owned();
    let out = dry_run(&["--release-dir", &other_dir, "--version", "9.9.9"], None).await;
    refused(
        &out,
        &format!("says Version: {}, not 9.9.9", deb_version(&version)),
    );
}

#[test]
fn a_file_by_file_install_refuses_a_host_with_the_package() {
    for (status, want) in [
        (
            "install ok installed",
            "the noderax-agent package 1.0.0 is installed",
        ),
        (
            "deinstall ok config-files",
            "purge it first (apt-get purge noderax-agent)",
        ),
    ] {
        let root = FakeRoot::new();
        std::fs::create_dir_all(root.path("/var/lib/dpkg")).unwrap();
        std::fs::write(
            root.path("/var/lib/dpkg/status"),
            format!(
                "Package: noderax-agent\nStatus: {status}\nVersion: 1.0.0\nArchitecture: amd64\n\
                 Maintainer: x\nDescription: x\n\n"
            ),
        )
        .unwrap();
        let tree = root.tree();
        let out = installer(&[
            "--dry-run",
            "--root",
            root.dir(),
            "--api-url",
            "https://api.example.com",
            "--bootstrap-token",
            "nbt_0123456789abcdef",
        ])
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{}",
            text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("installer_started"),
            "{}",
            text(&out)
        );
        assert_eq!(root.tree(), tree);
    }
}

#[test]
fn uninstall_leaves_a_package_installation_to_apt() {
    if skip_unless_root() {
        return;
    }
    // The manifest a --package deb installation writes (its own text).
    let listed = [
        "/var/lib/noderax-agent-install",
        "/var/lib/noderax-agent-install/manifest",
        "/etc/systemd/system/noderax-agent-exec.service.d",
        "/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf",
        "/var/lib/noderax-agent/agent_identity.json",
    ];
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$0\" && PACKAGE=deb && MANIFEST_PATHS=(\"$@\") && manifest_text")
        .arg(script())
        .args(listed)
        .env("NODERAX_INSTALLER_SOURCE_ONLY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let root = FakeRoot::new();
    for p in listed {
        if p.ends_with(".d") || p.ends_with("-install") {
            std::fs::create_dir_all(root.path(p)).unwrap();
        } else {
            write_owned(&root, p, "x", 0, 0);
        }
    }
    std::fs::write(
        root.path("/var/lib/noderax-agent-install/manifest"),
        &out.stdout,
    )
    .unwrap();
    // What the package installed.
    write_owned(
        &root,
        "/opt/noderax-agent/releases/1.0.0/noderax-agent",
        "x",
        0,
        0,
    );
    let tree = root.tree();
    for extra in [&["--yes"][..], &["--dry-run"], &["--yes", "--purge"]] {
        let mut args = vec!["uninstall", "--root", root.dir()];
        args.extend_from_slice(extra);
        let out = agent_cli(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for want in [
            "installed as the Debian package noderax-agent",
            "remove it with `apt-get purge noderax-agent`",
            &format!(
                "then delete what the installer added beside the package: {} {} {} {}; nothing was removed",
                root.path("/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf")
                    .display(),
                root.path("/etc/systemd/system/noderax-agent-exec.service.d")
                    .display(),
                root.path("/var/lib/noderax-agent-install/manifest")
                    .display(),
                root.path("/var/lib/noderax-agent-install").display(),
            ),
        ] {
            assert!(stderr.contains(want), "{extra:?}: {want:?} not in {stderr}");
        }
        assert_eq!(root.tree(), tree, "{extra:?} changed the root");
    }
}

/// Runs `steps` (functions of install.sh, `&&`-joined) as `--package deb`
/// would, on an installation in `root`: the package's files extracted in
/// `extract`, and a `systemctl` that only logs its arguments to `log`.
fn package_steps(root: &FakeRoot, extract: &Path, stub_dir: &Path, steps: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". \"$0\" && ROOT=$1 && PACKAGE=deb && TAG=test && DEB_EXTRACT=$2 && \
             PATH=$3:$PATH && {steps}"
        ))
        .arg(script())
        .arg(root.dir())
        .arg(extract)
        .arg(stub_dir)
        .env("NODERAX_INSTALLER_SOURCE_ONLY", "1")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_deb_takes_over_an_installation_by_this_script() {
    if skip_unless_root() {
        return;
    }
    require_tool("visudo", "sudo");
    let releases = tempfile::tempdir().unwrap();
    make_release(
        releases.path(),
        "latest",
        &bin_dir().join("noderax-agent"),
        false,
    );
    let tb = Testbed::start(testbed_with_releases(releases.path()))
        .await
        .unwrap();
    let root = installed_root(&tb, "to-package").await;
    let work = tempfile::tempdir().unwrap();
    let extract = work.path().join("package");
    let packaged_sudoers = std::fs::read(repo().join("packaging/deb/sudoers")).unwrap();
    std::fs::create_dir_all(extract.join("etc/sudoers.d")).unwrap();
    std::fs::write(
        extract.join("etc/sudoers.d/noderax-agent"),
        &packaged_sudoers,
    )
    .unwrap();
    let stubs = work.path().join("bin");
    std::fs::create_dir(&stubs).unwrap();
    let log = work.path().join("systemctl.log");
    std::fs::write(
        stubs.join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >>'{}'\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        stubs.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let units = [
        "noderax-agent-exec.socket",
        "noderax-agent-exec.service",
        "noderax-agent.service",
    ];
    let unit_path = |u: &str| format!("/etc/systemd/system/{u}");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let tree = root.tree();
    let manifest = std::fs::read(root.path("/var/lib/noderax-agent-install/manifest")).unwrap();

    // apt-get fails: the retired unit copies come back, enabled again.
    let out = package_steps(
        &root,
        &extract,
        &stubs,
        "check_package_accounts && retire_script_units && restore_script_units",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        logged(),
        "disable noderax-agent-exec.socket noderax-agent.service\ndaemon-reload\n\
         enable noderax-agent-exec.socket noderax-agent.service\n"
    );
    assert_eq!(root.tree(), tree, "not restored:\n{}", text(&out));
    std::fs::remove_file(&log).unwrap();

    // apt-get succeeds: the copies stay retired, the sudoers drop-in is the
    // package's text (so that dpkg takes it over unchanged), the accounts
    // and the /usr/local directory the installer created are the package's
    // to remove (twice: nothing recorded twice).
    let steps = "check_package_accounts && adopt_packaged_sudoers && retire_script_units && \
                 hand_over_to_package && hand_over_to_package";
    let out = package_steps(&root, &extract, &stubs, steps);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        logged(),
        "disable noderax-agent-exec.socket noderax-agent.service\n"
    );
    for u in units {
        assert!(
            std::fs::symlink_metadata(root.path(&unit_path(u))).is_err(),
            "{u} is still in /etc/systemd/system"
        );
        assert_eq!(
            std::fs::read_to_string(root.path(&format!(
                "/var/lib/noderax-agent-install/units-before-package/{u}"
            )))
            .unwrap(),
            std::fs::read_to_string(repo().join("systemd").join(u)).unwrap()
        );
    }
    assert!(
        std::fs::read(root.path("/etc/sudoers.d/noderax-agent")).unwrap() == packaged_sudoers,
        "the sudoers drop-in is not the package's"
    );
    root.assert_attrs("/etc/sudoers.d/noderax-agent", 0, 0, 0o440);
    let created = std::fs::read_to_string(root.path("/var/lib/noderax-agent-deb/created")).unwrap();
    assert_eq!(
        created,
        "user noderax-net\nuser noderax\ngroup noderax-net\ngroup noderax\nemptydir /usr/local/libexec\n"
    );
    // The earlier manifest still describes what is installed until apt-get
    // has succeeded (install_package writes this run's then).
    assert_eq!(
        std::fs::read(root.path("/var/lib/noderax-agent-install/manifest")).unwrap(),
        manifest
    );

    // Someone else's unit file in /etc/systemd/system would override the
    // package's: refused before anything changes.
    let fresh = FakeRoot::new();
    std::fs::write(
        fresh.path(&unit_path("noderax-agent.service")),
        "[Service]\n",
    )
    .unwrap();
    let out = package_steps(&fresh, &extract, &stubs, "check_package_accounts");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "/etc/systemd/system/noderax-agent.service exists and is not from this installer"
        ),
        "{}",
        text(&out)
    );
}

/// target/debug: the agent's programs after a workspace build.
fn bin_dir() -> PathBuf {
    workspace_bin_dir(&shared::release_files::PROGRAMS)
}

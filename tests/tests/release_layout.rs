//! The release layout `scripts/build-release.sh` writes, the `.deb` in it and
//! the release workflow (issue 7, items 4 and 5).
//!
//! - A release is built from the workspace's debug binaries (`--bin-dir`)
//!   with a throw-away minisign key, its URLs pointing at the testbed's
//!   release "CDN", which serves the layout: both SHA256SUMS verify with
//!   `sha256sum -c`; the manifest parses as `ReleaseManifest`, every
//!   download it names is served and has the digest it states; every
//!   signature verifies with `minisign -V` (and a changed manifest does
//!   not); `catalog.json` parses as `ReleaseCatalog`, and a second build
//!   merges into it newest first; `install.sh` is the installer.
//! - The `.deb`: control fields, the exact file list with owners, modes and
//!   links (nothing under /usr/local), the extracted files equal their
//!   sources, `md5sums` covers every file but the conffiles, `conffiles`
//!   lists the config, the sudoers drop-in and the release key, the
//!   maintainer scripts pass `sh -n` and shellcheck and do what they must.
//! - The scripts are shellcheck-clean, bad arguments and binaries of
//!   another version are refused, and `.github/workflows/release.yml` parses
//!   as YAML with its triggers, the one script, and the R2 secrets only
//!   where they are needed.
//!
//! Needs the workspace's binaries (`cargo build --workspace`; nextest and
//! scripts/test.sh build them), dpkg-deb, minisign, shellcheck, visudo,
//! curl and python3 with PyYAML (scripts/setup-debian.sh installs them).
//! Root is not needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use shared::api::release::{ReleaseCatalog, ReleaseManifest};
use shared::release_files::{self, PROGRAMS};
use shared::timestamp::Timestamp;
use testbed::test_support::{describe as text, require_tool, workspace_bin_dir};
use testbed::{Testbed, TestbedConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

fn host_arch() -> &'static str {
    release_files::host_arch().expect("releases exist for amd64 and arm64 only")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The version the built agent reports.
fn built_version() -> String {
    let out = run(Command::new(bin_dir().join("noderax-agent")).arg("version"));
    stdout(&out)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("noderax-agent "))
        .expect("`noderax-agent version` starts with the version")
        .to_owned()
}

fn head_commit() -> String {
    let out = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo()));
    stdout(&out).trim().to_owned()
}

/// scripts/build-release.sh with the workspace's binaries and release tool.
fn build_release(args: &[&str]) -> Command {
    let bins = bin_dir();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/build-release.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--release-tool")
        .arg(bins.join("noderax-release"))
        .args(args)
        .env_remove("MINISIGN_SECRET_KEY")
        .env_remove("MINISIGN_PASSWORD");
    cmd
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    stdout(&out)[..64].to_owned()
}

/// File name → digest of a SHA256SUMS file.
fn sums(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (d, n) = l.split_once("  ").expect("sha256sum format");
            (n.to_owned(), d.to_owned())
        })
        .collect()
}

/// The Debian version build-release.sh gives a release version.
fn deb_version(v: &str) -> String {
    v.replace(['-', '_'], "~")
}

/// A throw-away minisign key pair without a password.
fn minisign_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (public, secret) = (dir.join("test.pub"), dir.join("test.key"));
    run(Command::new(require_tool("minisign", "minisign"))
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret));
    (public, secret)
}

fn verifies(public: &Path, file: &Path) -> bool {
    Command::new("minisign")
        .args(["-V", "-q", "-p"])
        .arg(public)
        .arg("-m")
        .arg(file)
        .output()
        .unwrap()
        .status
        .success()
}

async fn fetch(url: &str, dest: &Path) {
    let mut cmd = Command::new(require_tool("curl", "curl"));
    cmd.args(["-fsS", "--noproxy", "*", "-o"])
        .arg(dest)
        .arg(url);
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
}

// ---- the layout ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_release_layout_verifies_and_is_served() {
    require_tool("dpkg-deb", "dpkg");
    require_tool("visudo", "sudo");
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    let top = out_dir.join("noderax-agent");
    let (public, secret) = minisign_key(work.path());
    let version = built_version();
    let arch = host_arch();

    // The testbed serves <top>/releases under /cdn/: the release base URL.
    let tb = Testbed::start(TestbedConfig {
        release_dir: Some(top.join("releases")),
        ..TestbedConfig::fast()
    })
    .await
    .unwrap();
    let base = format!("{}/cdn", tb.api_url());

    let mut cmd = build_release(&[
        "--version",
        &version,
        "--base-url",
        &base,
        "--out",
        out_dir.to_str().unwrap(),
        "--deb-compression",
        "none",
    ]);
    cmd.arg("--minisign-key").arg(&secret);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));

    let rel = top.join("releases").join(&version);
    let latest = top.join("releases/latest");
    let deb_name = format!("noderax-agent_{}_{arch}.deb", deb_version(&version));
    let artifacts: Vec<String> = PROGRAMS
        .iter()
        .map(|p| release_files::artifact_name(p, arch))
        .collect();

    // What is where.
    let listing = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let mut want: BTreeSet<String> = artifacts.iter().cloned().collect();
    want.extend(["SHA256SUMS".into(), "SHA256SUMS.minisig".into()]);
    assert_eq!(listing(&latest), want, "releases/latest");
    want.extend([
        release_files::MANIFEST.into(),
        release_files::SIGNATURE.into(),
        deb_name.clone(),
    ]);
    assert_eq!(listing(&rel), want, "releases/{version}");
    assert_eq!(
        listing(&top),
        BTreeSet::from(["install.sh".to_owned(), "releases".to_owned()])
    );
    assert_eq!(
        std::fs::read(top.join("install.sh")).unwrap(),
        std::fs::read(repo().join("installer/install.sh")).unwrap(),
        "install.sh is not the installer"
    );
    // Checksums: each directory's SHA256SUMS lists exactly its artifacts.
    for dir in [&rel, &latest] {
        let out = run(Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(dir));
        assert_eq!(
            stdout(&out).lines().filter(|l| l.ends_with(": OK")).count(),
            sums(&dir.join("SHA256SUMS")).len()
        );
    }
    let latest_sums = sums(&latest.join("SHA256SUMS"));
    assert_eq!(
        latest_sums.keys().cloned().collect::<BTreeSet<_>>(),
        artifacts.iter().cloned().collect::<BTreeSet<_>>()
    );
    let rel_sums = sums(&rel.join("SHA256SUMS"));
    assert_eq!(rel_sums.len(), artifacts.len() + 1);
    assert!(rel_sums.contains_key(&deb_name), "{rel_sums:?}");
    for a in &artifacts {
        let program = a.strip_suffix(&format!("-linux-{arch}")).unwrap();
        assert_eq!(
            rel_sums[a],
            sha256(&bin_dir().join(program)),
            "{a} is not the binary it was made from"
        );
        assert_eq!(latest_sums[a], rel_sums[a], "latest/{a}");
    }

    // The manifest, as the agent reads it, served where it says.
    let manifest_text = std::fs::read_to_string(rel.join(release_files::MANIFEST)).unwrap();
    let manifest: ReleaseManifest = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(manifest.version, version);
    assert_eq!(manifest.channel, "tag");
    assert_eq!(manifest.commit, head_commit());
    Timestamp::parse(&manifest.published_at).unwrap();
    assert_eq!(
        manifest.artifacts.keys().collect::<Vec<_>>(),
        [arch],
        "only this machine's architecture was built"
    );
    assert!(manifest.downloads_for("riscv64").is_err());
    // Notes: CHANGELOG.md's [Unreleased] (no section for a -dev version).
    assert!(!manifest.notes.is_empty());
    assert!(manifest.notes.iter().all(|n| !n.items.is_empty()));
    assert_eq!(manifest.notes[0].title, "Added");
    let notes_md = std::fs::read_to_string(out_dir.join("release-notes.md")).unwrap();
    assert!(notes_md.starts_with("### Added\n"), "{notes_md}");
    let downloads = manifest.downloads_for(arch).unwrap();
    assert_eq!(
        downloads.iter().map(|d| d.program).collect::<Vec<_>>(),
        PROGRAMS
    );
    for d in &downloads {
        let name = release_files::artifact_name(d.program, arch);
        assert_eq!(d.url, format!("{base}/{version}/{name}"));
        assert_eq!(d.sha256, rel_sums[&name], "{name}: manifest and SHA256SUMS");
        let got = work.path().join(format!("fetched-{name}"));
        fetch(&d.url, &got).await;
        assert_eq!(sha256(&got), d.sha256, "{} served other bytes", d.url);
        std::fs::remove_file(&got).unwrap();
    }
    let served = work.path().join("served-manifest.json");
    fetch(
        &format!("{base}/{version}/{}", release_files::MANIFEST),
        &served,
    )
    .await;
    assert_eq!(std::fs::read_to_string(&served).unwrap(), manifest_text);

    // Signatures, with the key the build was given.
    assert_eq!(
        std::fs::read(out_dir.join("minisign.pub")).unwrap(),
        std::fs::read(&public).unwrap()
    );
    for f in [
        rel.join(release_files::MANIFEST),
        rel.join("SHA256SUMS"),
        latest.join("SHA256SUMS"),
    ] {
        assert!(verifies(&public, &f), "{} does not verify", f.display());
    }
    let tampered = work.path().join("tampered.json");
    std::fs::write(&tampered, manifest_text.replace("\"tag\"", "\"main\"")).unwrap();
    std::fs::copy(
        rel.join(release_files::SIGNATURE),
        work.path().join("tampered.json.minisig"),
    )
    .unwrap();
    assert!(
        !verifies(&public, &tampered),
        "a changed manifest still verifies"
    );

    // The catalog: this release alone, then merged with a second build.
    let catalog_path = top.join("releases/catalog.json");
    let catalog: ReleaseCatalog =
        serde_json::from_str(&std::fs::read_to_string(&catalog_path).unwrap()).unwrap();
    Timestamp::parse(&catalog.generated_at).unwrap();
    assert_eq!(catalog.releases, vec![manifest.clone()]);

    let mut older = manifest.clone();
    older.version = "0.0.1".into();
    let mut newer = manifest.clone();
    newer.version = "999.0.0".into();
    let published = work.path().join("published-catalog.json");
    std::fs::write(
        &published,
        serde_json::to_string(&ReleaseCatalog {
            generated_at: "2026-01-01T00:00:00Z".into(),
            releases: vec![newer, older],
        })
        .unwrap(),
    )
    .unwrap();
    let out2 = work.path().join("out2");
    let mut cmd = build_release(&[
        "--version",
        &version,
        "--no-deb",
        "--out",
        out2.to_str().unwrap(),
        "--catalog",
        published.to_str().unwrap(),
        "--published-at",
        "2026-11-27T10:00:00Z",
    ]);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    let merged: ReleaseCatalog = serde_json::from_str(
        &std::fs::read_to_string(out2.join("noderax-agent/releases/catalog.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        merged
            .releases
            .iter()
            .map(|r| r.version.as_str())
            .collect::<Vec<_>>(),
        ["999.0.0", version.as_str(), "0.0.1"],
        "newest first"
    );
    assert_eq!(merged.releases[1].published_at, "2026-11-27T10:00:00Z");
    assert!(
        merged.releases[1].artifacts[arch]
            .binary_url
            .starts_with("https://cdn.noderax.net/noderax-agent/releases/"),
        "the default base URL"
    );
    let unsigned = out2.join("noderax-agent/releases").join(&version);
    assert!(!unsigned.join(release_files::SIGNATURE).exists());
    assert!(!unsigned.join(&deb_name).exists());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(", signed"),
        "built without a key, yet reported signed"
    );

    check_deb(&rel.join(&deb_name), &version, work.path());
}

// ---- the .deb ---------------------------------------------------------------------

/// `dpkg-deb -c` lines as `TYPE+MODE OWNER PATH[ -> TARGET]`.
fn deb_listing(deb: &Path) -> BTreeSet<String> {
    let out = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // perms owner size date time path [-> target]
            format!("{} {} {}", f[0], f[1], f[5..].join(" "))
        })
        .collect()
}

fn check_deb(deb: &Path, version: &str, work: &Path) {
    let arch = host_arch();
    let field = |name: &str| -> String {
        let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
        stdout(&out).trim().to_owned()
    };
    assert_eq!(field("Package"), "noderax-agent");
    assert_eq!(field("Version"), deb_version(version));
    assert_eq!(field("Architecture"), arch);
    let depends = field("Depends");
    for want in [
        "libc6 (>= 2.",
        "sudo",
        "passwd",
        "ca-certificates",
        "systemd",
        "init-system-helpers",
    ] {
        assert!(depends.contains(want), "Depends lacks {want}: {depends}");
    }

    // Every path, owner, mode and link: nothing else, nothing under /usr/local.
    let rel = format!("./opt/noderax-agent/releases/{version}/");
    let mut want: BTreeSet<String> = [
        "./",
        "./etc/",
        "./etc/noderax-agent/",
        "./etc/sudoers.d/",
        "./lib/",
        "./lib/systemd/",
        "./lib/systemd/system/",
        "./opt/",
        "./opt/noderax-agent/",
        "./opt/noderax-agent/releases/",
        rel.as_str(),
        "./usr/",
        "./usr/share/",
        "./usr/share/doc/",
        "./usr/share/doc/noderax-agent/",
    ]
    .iter()
    .map(|d| format!("drwxr-xr-x root/root {d}"))
    .collect();
    for (mode, path) in [
        ("-rw-r-----", "./etc/noderax-agent/config.json".to_owned()),
        ("-rw-r--r--", "./etc/noderax-agent/release.pub".to_owned()),
        ("-r--r-----", "./etc/sudoers.d/noderax-agent".to_owned()),
        ("-rw-r--r--", format!("{rel}{}", release_files::MANIFEST)),
        ("-rw-r--r--", format!("{rel}{}", release_files::SIGNATURE)),
        (
            "-rw-r--r--",
            "./usr/share/doc/noderax-agent/copyright".to_owned(),
        ),
        (
            "-rw-r--r--",
            "./usr/share/doc/noderax-agent/README.Debian".to_owned(),
        ),
    ] {
        want.insert(format!("{mode} root/root {path}"));
    }
    for p in PROGRAMS {
        want.insert(format!("-rwxr-xr-x root/root {rel}{p}"));
    }
    for u in UNITS {
        want.insert(format!("-rw-r--r-- root/root ./lib/systemd/system/{u}"));
    }
    want.insert(format!(
        "lrwxrwxrwx root/root ./opt/noderax-agent/current -> releases/{version}"
    ));
    let got = deb_listing(deb);
    assert_eq!(
        got,
        want,
        "the .deb's file list\nunexpected: {:?}\nmissing: {:?}",
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );

    // The files are their sources.
    let root = work.join("deb-root");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    let same = |installed: &str, source: &Path| {
        assert!(
            std::fs::read(root.join(installed.trim_start_matches("./"))).unwrap()
                == std::fs::read(source).unwrap(),
            "{installed} differs from {}",
            source.display()
        );
    };
    for p in PROGRAMS {
        same(&format!("{rel}{p}"), &bin_dir().join(p));
    }
    for u in UNITS {
        same(
            &format!("./lib/systemd/system/{u}"),
            &repo().join("systemd").join(u),
        );
    }
    let packaging = repo().join("packaging/deb");
    same("./etc/sudoers.d/noderax-agent", &packaging.join("sudoers"));
    same(
        "./etc/noderax-agent/config.json",
        &packaging.join("config.json"),
    );
    same(
        &format!("{rel}{}", release_files::MANIFEST),
        &deb.parent().unwrap().join(release_files::MANIFEST),
    );
    run(Command::new("visudo")
        .arg("-cf")
        .arg(root.join("etc/sudoers.d/noderax-agent")));
    let sudoers = std::fs::read_to_string(packaging.join("sudoers")).unwrap();
    assert_eq!(
        sudoers
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect::<Vec<_>>(),
        [format!(
            "noderax ALL=(root) NOPASSWD: {}",
            shared::config::HELPER_PATH
        )],
        "the drop-in grants exactly the installer's rule"
    );
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("etc/noderax-agent/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["state_file"],
        "/var/lib/noderax-agent/agent_identity.json"
    );

    // Control area: conffiles, md5sums (what dpkg -V checks), scripts.
    let control = work.join("deb-control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "/etc/noderax-agent/config.json",
            "/etc/sudoers.d/noderax-agent",
            "/etc/noderax-agent/release.pub",
        ])
    );
    let md5sums = std::fs::read_to_string(control.join("md5sums")).unwrap();
    let listed: BTreeSet<String> = md5sums
        .lines()
        .map(|l| format!("/{}", l.split_once("  ").unwrap().1))
        .collect();
    let regular: BTreeSet<String> = got
        .iter()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            l.split(' ')
                .nth(2)
                .unwrap()
                .trim_start_matches('.')
                .to_owned()
        })
        .filter(|p| !conffiles.lines().any(|c| c == p))
        .collect();
    assert_eq!(
        listed, regular,
        "md5sums lists every file but the conffiles"
    );
    std::fs::copy(control.join("md5sums"), work.join("md5sums")).unwrap();
    run(Command::new("md5sum")
        .args(["--quiet", "-c"])
        .arg(work.join("md5sums"))
        .current_dir(&root));

    let shellcheck = require_tool("shellcheck", "shellcheck");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        same_bytes(&path, &packaging.join(script));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script} mode");
        run(Command::new("sh").arg("-n").arg(&path));
        run(Command::new(&shellcheck).args(["-s", "sh"]).arg(&path));
    }
    let script = |name: &str| std::fs::read_to_string(control.join(name)).unwrap();
    let postinst = script("postinst");
    for line in [
        "#!/bin/sh",
        "set -e",
        // The installer's users, directories and modes.
        "NET_USER=noderax-net",
        "EXEC_USER=noderax",
        "useradd --system --gid \"$name\" --home-dir \"$home\" --no-create-home",
        "--shell \"$NOLOGIN\" --comment \"$3\" \"$name\"",
        "NOLOGIN=/usr/sbin/nologin",
        "own_dir \"$NET_HOME\" \"$NET_USER\" 0700",
        "own_dir \"$EXEC_STATE_DIR\" \"$EXEC_USER\" 0700",
        "own_dir \"$EXEC_HOME\" \"$EXEC_USER\" 0700",
        // The config readable by noderax-net only, kept so by dpkg.
        "dpkg-statoverride --update --add root \"$NET_USER\" 0640 \"$CONFIG_FILE\"",
        // The sudoers drop-in checked.
        "if ! visudo -cf \"$SUDOERS_FILE\" >/dev/null; then",
        // The helper follows `current`.
        "HELPER=/usr/local/libexec/noderax-agent-priv",
        "set_link \"$INSTALL_DIR/current/noderax-agent-priv\" \"$HELPER\"",
        "set_link \"$INSTALL_DIR/current/noderax-agent\" /usr/local/bin/noderax-agent",
        // Units enabled; started only with an identity.
        "UNITS=\"noderax-agent-exec.socket noderax-agent.service\"",
        "deb-systemd-helper enable \"$unit\"",
        "if [ ! -s \"$STATE_FILE\" ]; then",
        "bootstrap --non-interactive",
        "deb-systemd-invoke start noderax-agent-exec.socket noderax-agent.service",
    ] {
        assert!(postinst.contains(line), "postinst lacks {line:?}");
    }
    let prerm = script("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop noderax-agent.service noderax-agent-exec.service")
    );
    let postrm = script("postrm");
    for line in [
        "rm -rf /opt/noderax-agent /var/lib/noderax-agent /var/lib/noderax-agent-exec",
        "/var/log/noderax-agent",
        "CREATED=/var/lib/noderax-agent-deb/created",
        "userdel \"$name\"",
        "groupdel \"$name\"",
        "dpkg-statoverride --remove \"$name\"",
        "deb-systemd-helper purge $UNITS",
        "deb-systemd-helper mask $UNITS",
        "unlink_ours /usr/local/libexec/noderax-agent-priv /opt/noderax-agent/current/noderax-agent-priv",
        "rm -f \"$EXEC_DROPIN_DIR/10-settings.conf\"",
        "grep -qx '# package: noderax-agent' \"$INSTALL_MANIFEST\"",
    ] {
        assert!(postrm.contains(line), "postrm lacks {line:?}");
    }
}

const UNITS: [&str; 3] = [
    "noderax-agent.service",
    "noderax-agent-exec.socket",
    "noderax-agent-exec.service",
];

fn same_bytes(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

// ---- refusals -----------------------------------------------------------------------

#[test]
fn binaries_of_another_version_are_refused() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = build_release(&[
        "--version",
        "9.9.9",
        "--no-deb",
        "--out",
        out_dir.path().to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "reports 'noderax-agent {}', not 'noderax-agent 9.9.9'",
            built_version()
        )),
        "{err}"
    );
    assert!(
        !out_dir.path().join("noderax-agent").exists(),
        "a layout was written for binaries of another version"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let script = repo().join("scripts/build-release.sh");
    let help = run(Command::new("bash").arg(&script).arg("--help"));
    assert!(stdout(&help).starts_with("Usage: scripts/build-release.sh --version V"));
    for (args, want) in [
        (vec![], "--version is required"),
        (vec!["--version", "../1.0"], "is not a release version"),
        (
            vec!["--version", "1.0.0", "--arch", "riscv64"],
            "only amd64 and arm64",
        ),
        (
            vec!["--version", "1.0.0", "--channel", "beta"],
            "--channel must be tag or main",
        ),
        (
            vec!["--version", "1.0.0", "--base-url", "cdn.example.com"],
            "is not an http(s) URL",
        ),
        (vec!["--version", "main-abc1234"], "pass --no-deb"),
        (
            vec![
                "--version",
                "main-abc1234",
                "--channel",
                "main",
                "--catalog",
                "/etc/hostname",
            ],
            "main builds are never listed",
        ),
        (
            vec![
                "--version",
                "1.0.0",
                "--arch",
                "amd64",
                "--arch",
                "arm64",
                "--bin-dir",
                "/tmp",
            ],
            "write --bin-dir ARCH=DIR",
        ),
        (
            vec!["--version", "1.0.0", "--frobnicate"],
            "unknown argument",
        ),
    ] {
        let out = Command::new("bash")
            .arg(&script)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

// ---- static checks ------------------------------------------------------------------

#[test]
fn release_scripts_are_shellcheck_clean() {
    let shellcheck = require_tool("shellcheck", "shellcheck");
    let out = Command::new(&shellcheck)
        .arg(repo().join("scripts/build-release.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", text(&out));
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo().join("packaging/deb").join(script);
        run(Command::new("sh").arg("-n").arg(&path));
        let out = Command::new(&shellcheck)
            .args(["-s", "sh"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "shellcheck {script}:\n{}", text(&out));
    }
}

/// The workflow as JSON, parsed by PyYAML.
fn workflow() -> Value {
    let path = repo().join(".github/workflows/release.yml");
    let code = "import json, sys, yaml\n\
                json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    for python in ["python3", "/usr/bin/python3"] {
        if let Ok(out) = Command::new(python).arg("-c").arg(code).arg(&path).output() {
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).unwrap();
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("No module named 'yaml'"),
                "{} is not valid YAML: {err}",
                path.display()
            );
        }
    }
    panic!("python3 with PyYAML is needed: install python3-yaml (./scripts/setup-debian.sh does)")
}

#[test]
fn release_workflow_parses_and_publishes_through_the_script() {
    let wf = workflow();
    // PyYAML reads the key `on` as the boolean true (YAML 1.1).
    let on = wf.get("on").or_else(|| wf.get("true")).expect("triggers");
    assert_eq!(on["push"]["branches"], serde_json::json!(["main"]));
    assert_eq!(on["push"]["tags"], serde_json::json!(["agent-v*"]));
    assert_eq!(on["workflow_dispatch"]["inputs"]["tag"]["required"], true);
    assert_eq!(wf["concurrency"]["cancel-in-progress"], false);

    let jobs = wf["jobs"].as_object().unwrap();
    let steps_text = |job: &str| -> String { serde_json::to_string(&jobs[job]["steps"]).unwrap() };
    let build = steps_text("build");
    assert!(build.contains("./scripts/build-release.sh"), "build job");
    assert!(build.contains("--binaries-only") && build.contains("--zig="));
    assert!(
        !serde_json::to_string(&jobs["build"])
            .unwrap()
            .contains("secrets."),
        "the build job must not see secrets (third-party build scripts run there)"
    );
    let publish_job = serde_json::to_string(&jobs["publish"]).unwrap();
    let publish = steps_text("publish");
    assert!(
        publish.contains("./scripts/build-release.sh"),
        "publish job"
    );
    assert!(publish.contains("--bin-dir amd64=bin/amd64 --bin-dir arm64=bin/arm64"));
    assert!(publish.contains("--strict-notes") && publish.contains("--max-glibc"));
    for secret in [
        "R2_ACCOUNT_ID",
        "R2_ACCESS_KEY_ID",
        "R2_SECRET_ACCESS_KEY",
        "R2_BUCKET",
        "MINISIGN_SECRET_KEY",
    ] {
        assert!(
            publish_job.contains(&format!("secrets.{secret}")),
            "publish does not use {secret}"
        );
    }
    for want in [
        "aws s3api head-bucket",
        "NoSuchBucket",
        "not a URL or a custom domain",
        "releases/catalog.json",
        "releases/latest/",
        "install.sh",
        "gh release create",
        "--notes-file dist/release-notes.md",
    ] {
        assert!(publish.contains(want), "publish lacks {want:?}");
    }
    assert_eq!(jobs["publish"]["permissions"]["contents"], "write");
}

/// target/debug: the agent's programs and the release tool after a
/// workspace build.
fn bin_dir() -> PathBuf {
    workspace_bin_dir(&[PROGRAMS[0], PROGRAMS[1], PROGRAMS[2], "noderax-release"])
}

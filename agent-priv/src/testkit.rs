//! Test-only: a throwaway root tree with fake `apt-get`, `apt-cache`,
//! `dpkg-query`, `systemctl` and `systemd-run`, release staging and minisign
//! signing. The fakes record their argv (and apt-get its environment) under
//! `fake/` so tests can assert exactly what the helper ran.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use shared::release_files::{self, PROGRAMS};

use crate::host::Host;
use crate::policy::Caller;

pub const EXECUTOR_UID: u32 = 998;

/// Serialises tests that write executables and run them. With `cargo test`
/// (threads in one process) a child forked by one test inherits, until it
/// execs, the write descriptor of a script another test is creating, and
/// executing that script then fails with ETXTBSY. (nextest runs each test in
/// its own process and is unaffected.)
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct Fake {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    root: PathBuf,
    pub host: Host,
}

impl Fake {
    pub fn new() -> Self {
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        for d in [
            "usr/bin",
            "usr/local/libexec",
            "etc/noderax-agent",
            "fake/cache",
            "fake/dpkg",
            "var/lib/noderax-agent/updates",
            "proc/self",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/bash\n\
                 noderax:x:{EXECUTOR_UID}:{EXECUTOR_UID}::/var/lib/noderax-agent:/usr/sbin/nologin\n\
                 mallory:x:1005:1005::/home/mallory:/bin/bash\n"
            ),
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        fs::write(
            root.join("proc/self/cgroup"),
            "0::/system.slice/noderax-agent-exec.service\n",
        )
        .unwrap();
        let r = root.display().to_string();
        let script = |name: &str, body: &str| {
            let p = root.join("usr/bin").join(name);
            fs::write(
                &p,
                format!("#!/bin/sh\necho \"$*\" >> {r}/fake/{name}.log\n{body}"),
            )
            .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "apt-cache",
            &format!(
                "for a; do last=\"$a\"; done\n\
                 if [ -f \"{r}/fake/cache/$last\" ]; then cat \"{r}/fake/cache/$last\"; \
                 else echo 'E: No packages found' >&2; exit 100; fi\n"
            ),
        );
        script(
            "dpkg-query",
            &format!(
                "shift 3\nrc=0\nfor n; do\n\
                 if [ -f \"{r}/fake/dpkg/$n\" ]; then cat \"{r}/fake/dpkg/$n\"; \
                 else echo \"dpkg-query: no packages found matching $n\" >&2; rc=1; fi\n\
                 done\nexit $rc\n"
            ),
        );
        script(
            "apt-get",
            &format!(
                "sim=0; verb=''; prev=''\n\
                 for a; do\n\
                   [ \"$a\" = -s ] && sim=1\n\
                   [ \"$a\" = -- ] && verb=\"$prev\"\n\
                   prev=\"$a\"\n\
                 done\n\
                 [ -z \"$verb\" ] && verb=\"$prev\"\n\
                 if [ $sim = 1 ]; then cat \"{r}/fake/simulate-$verb\" 2>/dev/null; exit 0; fi\n\
                 env | sort > {r}/fake/apt-get.env\n\
                 echo \"fake apt-get: $verb done\"\n\
                 exit $(cat {r}/fake/apt-get.exit 2>/dev/null || echo 0)\n"
            ),
        );
        script(
            "systemctl",
            &format!(
                "case \"$1\" in\n\
                 is-active) exec {r}/opt/noderax-agent/current/noderax-agent selftest ;;\n\
                 restart) exit $(cat {r}/fake/systemctl-restart.exit 2>/dev/null || echo 0) ;;\n\
                 esac\nexit 0\n"
            ),
        );
        script(
            "systemd-run",
            "for a; do case \"$a\" in --on-active=*) exit 0 ;; esac; done\n\
             while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
        );
        // Stands in for the installed helper when an update re-runs itself
        // in its own unit.
        let me = root.join("usr/local/libexec/noderax-agent-priv");
        fs::write(
            &me,
            format!("#!/bin/sh\necho \"$*\" >> {r}/fake/self.log\n"),
        )
        .unwrap();
        fs::set_permissions(&me, fs::Permissions::from_mode(0o755)).unwrap();
        let host = Host::under(&root);
        Self {
            _serial: serial,
            _dir: dir,
            root,
            host,
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Pretend systemd is PID 1 and this process already runs in the
    /// update unit (so updates do not re-run themselves).
    pub fn with_systemd(&self, in_update_unit: bool) {
        fs::create_dir_all(self.p("run/systemd/system")).unwrap();
        let unit = if in_update_unit {
            "noderax-agent-update"
        } else {
            "noderax-agent-exec"
        };
        fs::write(
            self.p("proc/self/cgroup"),
            format!("0::/system.slice/{unit}.service\n"),
        )
        .unwrap();
    }

    /// Lines a fake tool logged (its argv, one invocation per line), with
    /// the root prefix shown as `$ROOT`.
    pub fn log(&self, tool: &str) -> Vec<String> {
        let r = self.root.display().to_string();
        fs::read_to_string(self.p(&format!("fake/{tool}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&r, "$ROOT"))
            .collect()
    }

    pub fn set_config(&self, json: &str) {
        fs::write(self.p("etc/noderax-agent/config.json"), json).unwrap();
    }

    /// `apt-cache show` output for `name`.
    pub fn cache(&self, name: &str, stanza: &str) {
        fs::write(self.p(&format!("fake/cache/{name}")), stanza).unwrap();
    }

    pub fn cache_pkg(&self, name: &str) {
        self.cache(
            name,
            &format!("Package: {name}\nArchitecture: amd64\nVersion: 1.0-1\n\n"),
        );
    }

    /// A dpkg-query line for `name`.
    pub fn dpkg(&self, name: &str, status: &str, essential: bool, priority: &str) {
        let ess = if essential { "yes" } else { "no" };
        fs::write(
            self.p(&format!("fake/dpkg/{name}")),
            format!("{name}\tamd64\t{status}\t{ess}\t{priority}\n"),
        )
        .unwrap();
    }

    pub fn simulate(&self, verb: &str, out: &str) {
        fs::write(self.p(&format!("fake/simulate-{verb}")), out).unwrap();
    }

    /// Runs the helper as the executor through sudo would.
    pub fn run(&self, args: &[&str]) -> u8 {
        self.run_as(&executor(), "/usr/local/libexec/noderax-agent-priv", args)
    }

    pub fn run_as(&self, caller: &Caller, argv0: &str, args: &[&str]) -> u8 {
        let mut argv: Vec<OsString> = vec![argv0.into()];
        argv.extend(args.iter().map(OsString::from));
        crate::run(&self.host, caller, &argv)
    }

    /// Audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.p("var/log/noderax-agent/priv-audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    // ---- releases ----

    /// A fake agent binary: `selftest` (what the fake `systemctl is-active`
    /// runs) succeeds only for a working release.
    pub fn agent_binary(version: &str, works: bool) -> Vec<u8> {
        format!(
            "#!/bin/sh\n# noderax-agent {version}\nexit {}\n",
            if works { 0 } else { 1 }
        )
        .into_bytes()
    }

    /// A fake executor or helper binary of a release (never run).
    pub fn component_binary(program: &str, version: &str) -> Vec<u8> {
        format!("#!/bin/sh\n# {program} {version}\nexit 0\n").into_bytes()
    }

    /// Installs `version` as if by the installer and makes it current.
    pub fn install_current(&self, version: &str) {
        let dir = self.p(&format!("opt/noderax-agent/releases/{version}"));
        fs::create_dir_all(&dir).unwrap();
        for program in PROGRAMS {
            let bin = dir.join(program);
            let body = if program == release_files::AGENT {
                Self::agent_binary(version, true)
            } else {
                Self::component_binary(program, version)
            };
            fs::write(&bin, body).unwrap();
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let link = self.p("opt/noderax-agent/current");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("releases/{version}"), link).unwrap();
    }

    /// The version a link in /opt/noderax-agent points to.
    pub fn link(&self, name: &str) -> Option<String> {
        fs::read_link(self.p(&format!("opt/noderax-agent/{name}")))
            .ok()
            .map(|t| {
                t.to_string_lossy()
                    .trim_start_matches("releases/")
                    .to_owned()
            })
    }

    pub fn staged(&self, version: &str) -> PathBuf {
        self.p(&format!("var/lib/noderax-agent/updates/{version}"))
    }

    /// Stages a release as agent-net would: manifest naming every program's
    /// SHA-256, the three programs (`binary` as noderax-agent), and a
    /// signature when `key` is given. Returns the manifest.
    pub fn stage(&self, version: &str, binary: &[u8], key: Option<&SigningKey>) -> String {
        let dir = self.staged(version);
        fs::create_dir_all(&dir).unwrap();
        let arch = crate::update::host_arch().unwrap();
        let mut files = Vec::new();
        for program in PROGRAMS {
            let body = if program == release_files::AGENT {
                binary.to_vec()
            } else {
                Self::component_binary(program, version)
            };
            let sha = crate::update::hex(&Sha256::digest(&body));
            fs::write(dir.join(release_files::artifact_name(program, arch)), body).unwrap();
            files.push(sha);
        }
        let manifest = format!(
            r#"{{"version":"{version}","publishedAt":"2026-04-02T17:30:00Z","commit":"{c}","channel":"tag","notes":[{{"title":"Added","items":["x"]}}],"artifacts":{{"{arch}":{{"binaryUrl":"https://example.invalid/{version}","sha256":"{a}","components":{{"noderax-agent-exec":{{"url":"https://example.invalid/e","sha256":"{e}"}},"noderax-agent-priv":{{"url":"https://example.invalid/p","sha256":"{p}"}}}}}}}}}}"#,
            c = "a".repeat(40),
            a = files[0],
            e = files[1],
            p = files[2],
        );
        fs::write(dir.join("release-manifest.json"), &manifest).unwrap();
        if let Some(k) = key {
            fs::write(
                dir.join("release-manifest.json.minisig"),
                minisign_signature(k, manifest.as_bytes()),
            )
            .unwrap();
        }
        // The staging area belongs to the network user, not root.
        for entry in fs::read_dir(&dir).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(997), Some(997)).unwrap();
        }
        manifest
    }

    /// The switch's recorded outcome (`update-result.json`), if any.
    pub fn update_result(&self) -> Option<serde_json::Value> {
        fs::read_to_string(self.p("opt/noderax-agent/update-result.json"))
            .ok()
            .map(|t| serde_json::from_str(&t).unwrap())
    }

    pub fn install_key(&self, key: &SigningKey) {
        fs::write(
            self.p("etc/noderax-agent/release.pub"),
            minisign_public_key(key),
        )
        .unwrap();
    }
}

pub fn executor() -> Caller {
    Caller {
        ruid: 0,
        euid: 0,
        sudo_uid: Some(EXECUTOR_UID.to_string()),
    }
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const KEY_ID: [u8; 8] = *b"noderax1";

/// A minisign public key file for `key` (algorithm `Ed`).
pub fn minisign_public_key(key: &SigningKey) -> String {
    let mut bin = b"Ed".to_vec();
    bin.extend(KEY_ID);
    bin.extend(key.verifying_key().to_bytes());
    format!("untrusted comment: minisign public key\n{}\n", base64(&bin))
}

/// A minisign signature (prehashed `ED`: Ed25519 over BLAKE2b-512 of the
/// data, plus the global signature over signature and trusted comment).
pub fn minisign_signature(key: &SigningKey, data: &[u8]) -> String {
    use blake2::Digest as _;
    let prehash = blake2::Blake2b512::digest(data);
    let sig = key.sign(&prehash).to_bytes();
    let trusted = "timestamp:1775151000\tfile:release-manifest.json";
    let mut global_msg = sig.to_vec();
    global_msg.extend(trusted.as_bytes());
    let global = key.sign(&global_msg).to_bytes();
    let mut bin = b"ED".to_vec();
    bin.extend(KEY_ID);
    bin.extend(sig);
    format!(
        "untrusted comment: signature from minisign secret key\n{}\ntrusted comment: {trusted}\n{}\n",
        base64(&bin),
        base64(&global)
    )
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648_vectors() {
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

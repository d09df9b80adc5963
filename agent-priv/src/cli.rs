//! The helper's command surface: argv words in, one [`Command`] out.
//!
//! A pure function with no I/O so it can be unit-tested exhaustively and
//! fuzzed (`fuzz/fuzz_targets/priv_args.rs`). The grammar is a closed set;
//! every word is matched exactly, nothing is interpreted as a path, an option
//! or a pattern, and anything else is a [`Refusal`] with a one-line reason.
//!
//! ```text
//! noderax-agent-priv apt install|remove|purge -- NAME...   (1..=64 names)
//! noderax-agent-priv apt update
//! noderax-agent-priv service restart-agent
//! noderax-agent-priv system reboot
//! noderax-agent-priv update apply --version V
//! noderax-agent-priv update switch --version V
//! noderax-agent-priv update rollback
//! noderax-agent-priv version
//! noderax-agent-priv check
//! noderax-agent-self-update --target-version V --target-id UUID [--rollback]
//! ```

use std::ffi::OsStr;
use std::fmt;

use shared::validate;

/// Most package names one command may carry (after de-duplication the
/// count is still at most this). Bounds the argv handed to apt-get.
pub const MAX_PACKAGES: usize = 64;

/// Most argument words looked at: three copies of every name plus the
/// command words.
pub const MAX_ARGS: usize = 3 * MAX_PACKAGES + 3;

/// The original self-update helper's file name; invoked under this name the
/// helper accepts the original's flags (PROTOCOL.md §10.2, §12).
pub const SELF_UPDATE_NAME: &str = "noderax-agent-self-update";

/// What apt-get does to the named packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptChange {
    Install,
    Remove,
    Purge,
}

impl AptChange {
    /// The apt-get sub-command.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Remove => "remove",
            Self::Purge => "purge",
        }
    }
}

/// One validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Valid, unique package names (at most [`MAX_PACKAGES`]), in the order given.
    Apt {
        change: AptChange,
        names: Vec<String>,
    },
    AptUpdate,
    RestartAgent,
    Reboot,
    /// Install the release staged for `version`. `target_id` is the rollout
    /// target (only given through the self-update alias); it is logged.
    UpdateApply {
        version: String,
        target_id: Option<String>,
    },
    /// Make the installed release `version` current (what `apply` starts in
    /// the update unit; also usable by hand).
    UpdateSwitch {
        version: String,
    },
    UpdateRollback,
    Version,
    Check,
}

impl Command {
    /// Whether the command needs the `operational` root-access scope.
    pub fn is_operational(&self) -> bool {
        matches!(
            self,
            Self::Apt { .. } | Self::AptUpdate | Self::RestartAgent | Self::Reboot
        )
    }
}

/// Why a command line was refused; one line, safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const USAGE: &str = "known: apt install|remove|purge -- NAME..., apt update, \
                     service restart-agent, system reboot, update apply --version V, \
                     update switch --version V, update rollback, version, check";

/// Parses the arguments after argv\[0\]. `program` is argv\[0\]; only its file
/// name matters, and only to select the self-update alias.
pub fn parse(program: &OsStr, args: &[&OsStr]) -> Result<Command, Refusal> {
    // Bound the work done on hostile input before looking at any word. The
    // control plane repeats each name up to three times (PROTOCOL.md §7.5),
    // so that many words may still de-duplicate to an acceptable list.
    if args.len() > MAX_ARGS {
        return Err(Refusal(format!(
            "too many arguments ({}); at most {MAX_PACKAGES} package names per command",
            args.len()
        )));
    }
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.to_str() {
            Some(w) => words.push(w),
            None => {
                return Err(Refusal(format!("argument {} is not valid UTF-8", i + 1)));
            }
        }
    }
    let name = program.as_encoded_bytes();
    let base = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
    if base == SELF_UPDATE_NAME.as_bytes() {
        return parse_self_update(&words);
    }
    match words.as_slice() {
        ["version"] => Ok(Command::Version),
        ["check"] => Ok(Command::Check),
        ["apt", "update"] => Ok(Command::AptUpdate),
        ["apt", verb @ ("install" | "remove" | "purge"), rest @ ..] => {
            let change = match *verb {
                "install" => AptChange::Install,
                "remove" => AptChange::Remove,
                _ => AptChange::Purge,
            };
            match rest {
                ["--", names @ ..] => Ok(Command::Apt {
                    change,
                    names: package_names(names)?,
                }),
                _ => Err(Refusal(format!(
                    "`apt {verb}` needs `--` and then the package names: apt {verb} -- NAME..."
                ))),
            }
        }
        ["service", "restart-agent"] => Ok(Command::RestartAgent),
        ["system", "reboot"] => Ok(Command::Reboot),
        ["update", "apply", "--version", v] => {
            validate::release_version(v).map_err(|e| Refusal(e.to_string()))?;
            Ok(Command::UpdateApply {
                version: (*v).to_owned(),
                target_id: None,
            })
        }
        ["update", "switch", "--version", v] => {
            validate::release_version(v).map_err(|e| Refusal(e.to_string()))?;
            Ok(Command::UpdateSwitch {
                version: (*v).to_owned(),
            })
        }
        ["update", "rollback"] => Ok(Command::UpdateRollback),
        [] => Err(Refusal(format!("no command given ({USAGE})"))),
        _ => Err(Refusal(format!(
            "unknown command line {} ({USAGE})",
            shown(&words)
        ))),
    }
}

/// `--target-version V --target-id ID [--rollback]`, flags in any order, each
/// once. `--rollback` is accepted for compatibility and changes nothing: the
/// original updater also installed `--target-version` regardless.
fn parse_self_update(words: &[&str]) -> Result<Command, Refusal> {
    let usage = "usage: noderax-agent-self-update --target-version V --target-id UUID [--rollback]";
    let mut version = None;
    let mut target = None;
    let mut rollback = false;
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let slot = match *w {
            "--target-version" => &mut version,
            "--target-id" => &mut target,
            "--rollback" if !rollback => {
                rollback = true;
                continue;
            }
            _ => {
                return Err(Refusal(format!(
                    "unexpected argument {} ({usage})",
                    shown(&[w])
                )));
            }
        };
        if slot.is_some() {
            return Err(Refusal(format!("{w} given twice ({usage})")));
        }
        match it.next() {
            Some(v) => *slot = Some(*v),
            None => return Err(Refusal(format!("{w} needs a value ({usage})"))),
        }
    }
    let (Some(v), Some(id)) = (version, target) else {
        return Err(Refusal(format!(
            "--target-version and --target-id are required ({usage})"
        )));
    };
    validate::release_version(v).map_err(|e| Refusal(e.to_string()))?;
    validate::uuid(id).map_err(|e| Refusal(e.to_string()))?;
    Ok(Command::UpdateApply {
        version: v.to_owned(),
        target_id: Some(id.to_owned()),
    })
}

/// Validates every name, drops repeats (the control plane sends each name
/// two or three times, PROTOCOL.md §13 item 23) and bounds the count.
fn package_names(words: &[&str]) -> Result<Vec<String>, Refusal> {
    if words.is_empty() {
        return Err(Refusal("no package names after `--`".into()));
    }
    let mut names: Vec<String> = Vec::with_capacity(words.len());
    for w in words {
        validate::package_name(w).map_err(|e| Refusal(e.to_string()))?;
        if !names.iter().any(|n| n == w) {
            names.push((*w).to_owned());
        }
    }
    if names.len() > MAX_PACKAGES {
        return Err(Refusal(format!(
            "too many package names ({}); at most {MAX_PACKAGES} per command",
            names.len()
        )));
    }
    Ok(names)
}

/// A bounded, escaped rendering of untrusted words for a one-line message.
pub fn shown(words: &[&str]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{:?}", w.chars().take(64).collect::<String>()));
        if out.len() > 200 {
            // Cut at a character boundary: the words may be any UTF-8.
            let cut = (0..=200)
                .rev()
                .find(|i| out.is_char_boundary(*i))
                .unwrap_or(0);
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, Refusal> {
        let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        parse(OsStr::new("/usr/local/libexec/noderax-agent-priv"), &os)
    }

    fn refused(args: &[&str]) -> String {
        match p(args) {
            Err(Refusal(r)) => {
                assert!(!r.contains('\n'), "multi-line reason for {args:?}: {r}");
                r
            }
            Ok(c) => panic!("{args:?} accepted as {c:?}"),
        }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(p(&["version"]), Ok(Command::Version));
        assert_eq!(p(&["check"]), Ok(Command::Check));
        assert_eq!(p(&["apt", "update"]), Ok(Command::AptUpdate));
        assert_eq!(p(&["service", "restart-agent"]), Ok(Command::RestartAgent));
        assert_eq!(p(&["system", "reboot"]), Ok(Command::Reboot));
        assert_eq!(p(&["update", "rollback"]), Ok(Command::UpdateRollback));
        assert_eq!(
            p(&["update", "switch", "--version", "1.0.3"]),
            Ok(Command::UpdateSwitch {
                version: "1.0.3".into()
            })
        );
        assert_eq!(
            p(&["update", "apply", "--version", "1.0.3"]),
            Ok(Command::UpdateApply {
                version: "1.0.3".into(),
                target_id: None
            })
        );
        for (verb, change) in [
            ("install", AptChange::Install),
            ("remove", AptChange::Remove),
            ("purge", AptChange::Purge),
        ] {
            assert_eq!(
                p(&["apt", verb, "--", "nginx", "g++", "libc6:i386"]),
                Ok(Command::Apt {
                    change,
                    names: vec!["nginx".into(), "g++".into(), "libc6:i386".into()]
                })
            );
        }
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        assert_eq!(
            p(&[
                "apt", "install", "--", "nginx", "curl", "nginx", "curl", "nginx"
            ]),
            Ok(Command::Apt {
                change: AptChange::Install,
                names: vec!["nginx".into(), "curl".into()]
            })
        );
    }

    #[test]
    fn hostile_package_names_are_refused() {
        for bad in [
            "-o",
            "-oDir::Etc=/tmp",
            "--allow-unauthenticated",
            "-y",
            "./x.deb",
            "/tmp/x.deb",
            "x.deb/",
            "../evil",
            "ngin*",
            "ngin?",
            "ngin[x]",
            "^nginx$",
            "ngin.*",
            "(nginx)",
            "nginx|curl",
            "nginx-",
            "nginx=1.0",
            "nginx=1.0-1",
            "nginx/bookworm",
            "nginx/bookworm-backports",
            "ngi nx",
            "nginx\n",
            "ngi\u{0}nx",
            "ngi\u{1b}[31mnx",
            "nginx\u{7f}",
            "Nginx",
            "",
            "~nginx",
            "?installed",
            "nginx:",
            "nginx:../x",
        ] {
            let r = refused(&["apt", "install", "--", "curl", bad]);
            assert!(r.starts_with("invalid package name"), "{bad:?}: {r}");
        }
    }

    #[test]
    fn options_and_missing_separator_are_refused() {
        assert!(refused(&["apt", "install", "nginx"]).contains("needs `--`"));
        assert!(refused(&["apt", "install", "-y", "--", "nginx"]).contains("needs `--`"));
        assert!(refused(&["apt", "install", "--"]).contains("no package names"));
        assert!(refused(&["apt", "install", "--", "--", "nginx"]).contains("invalid"));
        refused(&["apt", "upgrade"]);
        refused(&["apt", "dist-upgrade"]);
        refused(&["apt", "update", "--", "x"]);
        refused(&["apt-get", "install", "--", "nginx"]);
        refused(&["apt", "source", "--", "nginx"]);
        refused(&["apt", "INSTALL", "--", "nginx"]);
        refused(&["version", "--help"]);
        refused(&["--version"]);
        refused(&["-h"]);
        refused(&["check", "extra"]);
        refused(&["service", "restart", "ssh"]);
        refused(&["service", "restart-agent", "now"]);
        refused(&["system", "reboot", "now"]);
        refused(&["system", "poweroff"]);
        refused(&["shell", "id"]);
        refused(&["sh", "-c", "id"]);
        assert!(refused(&[]).starts_with("no command given"));
    }

    #[test]
    fn update_versions_are_validated() {
        for bad in ["../1.0", "1.0/../../etc", "", "-1", "1.0\n", "1 0", "a/b"] {
            refused(&["update", "apply", "--version", bad]);
        }
        refused(&["update", "apply", "1.0.3"]);
        refused(&["update", "apply", "--version"]);
        refused(&["update", "apply", "--version", "1.0.3", "--force"]);
        refused(&["update", "apply", "--version=1.0.3"]);
        refused(&["update", "rollback", "1.0.2"]);
        refused(&["update", "switch", "--version", "../1.0.3"]);
        refused(&["update", "switch", "1.0.3"]);
    }

    #[test]
    fn too_many_names_are_refused() {
        let mut args = vec!["apt", "install", "--"];
        let names: Vec<String> = (0..65).map(|i| format!("pkg{i}")).collect();
        args.extend(names.iter().map(String::as_str));
        assert!(refused(&args).contains("at most 64"));
        // 64 distinct names are fine; repeats beyond do not count.
        args.truncate(3 + 64);
        assert!(p(&args).is_ok());
        args.push("pkg0");
        assert!(p(&args).is_ok());
        // Each name three times, as the control plane sends them.
        let mut tripled = vec!["apt", "install", "--"];
        for n in names.iter().take(64) {
            tripled.extend([n.as_str(), n.as_str(), n.as_str()]);
        }
        assert_eq!(tripled.len(), MAX_ARGS);
        match p(&tripled) {
            Ok(Command::Apt { names, .. }) => assert_eq!(names.len(), 64),
            other => panic!("{other:?}"),
        }
        tripled.push("pkg0");
        assert!(refused(&tripled).contains("too many arguments"));
        let many: Vec<&str> = std::iter::repeat_n("x", 1000).collect();
        assert!(refused(&many).contains("too many arguments"));
    }

    #[test]
    fn non_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"ngin\xffx");
        let args = [
            OsStr::new("apt"),
            OsStr::new("install"),
            OsStr::new("--"),
            bad,
        ];
        assert_eq!(
            parse(OsStr::new("noderax-agent-priv"), &args),
            Err(Refusal("argument 4 is not valid UTF-8".into()))
        );
    }

    #[test]
    fn self_update_alias() {
        let id = "b7f88611-b63e-4c95-9f37-4afb5c0cf275";
        let alias = OsStr::new("/usr/local/libexec/noderax-agent-self-update");
        let run = |args: &[&str]| {
            let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            parse(alias, &os)
        };
        let want = Ok(Command::UpdateApply {
            version: "1.0.3".into(),
            target_id: Some(id.into()),
        });
        assert_eq!(run(&["--target-version", "1.0.3", "--target-id", id]), want);
        assert_eq!(
            run(&["--target-id", id, "--rollback", "--target-version", "1.0.3"]),
            want
        );
        for bad in [
            &["--target-version", "1.0.3"][..],
            &["--target-version", "1.0.3", "--target-id", "x"],
            &["--target-version", "../x", "--target-id", id],
            &[
                "--target-version",
                "1.0.3",
                "--target-id",
                id,
                "--target-id",
                id,
            ],
            &[
                "--target-version",
                "1.0.3",
                "--target-id",
                id,
                "--rollback",
                "--rollback",
            ],
            &["--target-version", "1.0.3", "--target-id"],
            &["--request-file", "/tmp/x"],
            &["update", "apply", "--version", "1.0.3"],
            &[],
        ] {
            assert!(run(bad).is_err(), "{bad:?} accepted");
        }
        // The alias grammar applies only to that exact file name.
        let other = OsStr::new("/tmp/noderax-agent-self-update-x");
        assert!(parse(other, &[OsStr::new("--target-version")]).is_err());
        assert_eq!(parse(other, &[OsStr::new("version")]), Ok(Command::Version));
    }

    #[test]
    fn reasons_are_bounded_and_escaped() {
        let long = "x".repeat(10_000);
        let r = refused(&[&long, "\n\u{1b}"]);
        assert!(r.len() < 500, "{}", r.len());
        assert!(!r.contains('\u{1b}'));
    }

    #[test]
    fn bounded_reasons_cut_at_character_boundaries() {
        // Found by the fuzz target: a byte cut inside a multi-byte character.
        for pad in 0..4 {
            let word = format!("{}{}", "x".repeat(pad), "ᾡ".repeat(100));
            let r = refused(&[&word, &word]);
            assert!(r.contains('…'), "{r}");
        }
    }

    #[test]
    fn operational_scope() {
        assert!(p(&["apt", "update"]).unwrap().is_operational());
        assert!(p(&["system", "reboot"]).unwrap().is_operational());
        assert!(!p(&["update", "rollback"]).unwrap().is_operational());
        assert!(!p(&["check"]).unwrap().is_operational());
    }
}

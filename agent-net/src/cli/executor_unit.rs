//! The systemd drop-in that gives the socket-activated executor the settings
//! it shares with the network process.
//!
//! `noderax-agent-exec.service` runs as `noderax`, which cannot read the
//! config (`root:noderax-net 0640`: it holds the network process's settings
//! and is no business of the user tasks run as). So `kill_grace`,
//! `max_concurrent_tasks` and `root_access_ceiling` reach the executor as
//! arguments: the drop-in replaces the unit's `ExecStart=` with the same
//! command plus `--kill-grace`, `--max-tasks` and `--root-access-ceiling` for
//! each of those keys the config file sets, and raises `TimeoutStopSec=` with
//! `kill_grace`. Keys left at their defaults are not passed, so the executor's
//! own defaults (the same table, `shared::config::KEYS`) apply after an update.
//!
//! The installer writes the drop-in (from this module's text, through
//! `noderax-agent config executor-unit`) and lists it in its manifest;
//! `noderax-agent config set` rewrites it when one of the keys changes.
//! The environment is ignored: the executor never sees the network unit's.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use shared::config::{self, Loaded, Location, Origin};

/// The drop-in's path (the installer lists it in its manifest).
pub const DROPIN: &str = "/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf";

/// Config keys the executor takes as arguments, with the executor's option.
pub const SETTINGS: [(&str, &str); 3] = [
    ("kill_grace", "--kill-grace"),
    ("max_concurrent_tasks", "--max-tasks"),
    ("root_access_ceiling", "--root-access-ceiling"),
];

/// The shipped executor unit, whose `ExecStart=` the drop-in extends.
const EXEC_UNIT: &str = include_str!("../../../systemd/noderax-agent-exec.service");

/// What the unit's `TimeoutStopSec=` allows beyond `kill_grace`: the executor
/// exits at most 10 s after the grace, and the rest of the unit then gets
/// SIGKILL (the shipped 30 s is the default grace of 10 s plus this).
const STOP_MARGIN: Duration = Duration::from_secs(20);

/// The unit's own `ExecStart=` command line.
fn base_exec_start() -> &'static str {
    EXEC_UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("systemd/noderax-agent-exec.service has an ExecStart= line (a test checks it)")
}

/// A systemd time span in whole seconds or, when it has a fraction, milliseconds.
fn timespan(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

/// The drop-in for the file layer of a configuration (see the module docs).
pub fn text(file: &Loaded) -> String {
    let mut out = String::from(
        "# Written by the Noderax agent (installer, `noderax-agent config set`) from\n\
         # /etc/noderax-agent/config.json; `noderax-agent config executor-unit`\n\
         # prints it. The executor cannot read that file, so the settings it shares\n\
         # with the network process are passed as arguments here. Do not edit:\n\
         # change them with `noderax-agent config set KEY VALUE`.\n",
    );
    let c = &file.config;
    let mut args = Vec::new();
    for (key, option) in SETTINGS {
        if file.origin(key) != Origin::File {
            continue;
        }
        let value = match key {
            "kill_grace" => shared::go_duration::format(c.kill_grace),
            "max_concurrent_tasks" => c.max_concurrent_tasks.to_string(),
            _ => c.root_access_ceiling.as_str().to_owned(),
        };
        args.push(format!("{option} {value}"));
    }
    if args.is_empty() {
        out.push_str(
            "# kill_grace, max_concurrent_tasks and root_access_ceiling are at their\n\
             # defaults: nothing to override.\n",
        );
        return out;
    }
    out.push_str("[Service]\nExecStart=\n");
    out.push_str(&format!(
        "ExecStart={} {}\n",
        base_exec_start(),
        args.join(" ")
    ));
    if file.origin("kill_grace") == Origin::File {
        out.push_str(&format!(
            "TimeoutStopSec={}\n",
            timespan(c.kill_grace + STOP_MARGIN)
        ));
    }
    out
}

/// The file layer of the config at `location`: the file's keys over the
/// defaults, no environment.
pub fn load_file(location: &Location) -> anyhow::Result<Loaded> {
    Ok(config::load_file_layer(location)?)
}

/// After `config set KEY` wrote `config_path`: when KEY is one of
/// [`SETTINGS`], the file is the installed config and the installer's
/// drop-in exists, rewrites the drop-in and reloads systemd. Returns what to
/// tell the operator, if anything.
pub fn after_config_set(key: &str, config_path: &Path) -> anyhow::Result<Option<String>> {
    if config_path != Path::new(config::INSTALLED_CONFIG_FILE) {
        return Ok(None);
    }
    rewrite(key, config_path, Path::new(DROPIN))
}

fn rewrite(key: &str, config_path: &Path, dropin: &Path) -> anyhow::Result<Option<String>> {
    if !SETTINGS.iter().any(|(k, _)| *k == key) {
        return Ok(None);
    }
    let shown = dropin.display();
    if !dropin.exists() {
        return Ok(Some(format!(
            "{shown} does not exist (the agent was not installed by this version's installer), so the socket-activated executor does not get {key}; re-run the installer, or put `noderax-agent config executor-unit`'s output there and run `systemctl daemon-reload`"
        )));
    }
    let loaded = load_file(&Location::Explicit {
        path: config_path.to_owned(),
        from: "config set",
    })?;
    shared::atomic_file::write(dropin, text(&loaded).as_bytes(), 0o644)
        .with_context(|| format!("{key} is written, but the executor's drop-in is not"))?;
    let reload = if super::systemd::running() {
        match super::systemd::systemctl(&["daemon-reload"]) {
            Ok(()) => "systemd reloaded; ".to_owned(),
            Err(e) => format!("`systemctl daemon-reload` failed ({e:#}): run it; "),
        }
    } else {
        String::new()
    };
    Ok(Some(format!(
        "{shown} rewritten; {reload}the executor uses {key} from its next start (`systemctl restart noderax-agent-exec.service` ends running tasks)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(json: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        load_file(&Location::Explicit { path, from: "test" }).unwrap()
    }

    #[test]
    fn the_unit_has_one_exec_start_naming_the_executor() {
        let lines: Vec<&str> = EXEC_UNIT
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(base_exec_start().starts_with("/opt/noderax-agent/current/noderax-agent-exec "));
        // None of the options the drop-in adds is in the unit already.
        for (_, option) in SETTINGS {
            assert!(!base_exec_start().contains(option), "{option}");
        }
    }

    #[test]
    fn defaults_override_nothing() {
        let t = text(&loaded(
            r#"{"api_url":"https://api.example.com","log_level":"info"}"#,
        ));
        assert!(!t.contains("[Service]"), "{t}");
        assert!(t.lines().all(|l| l.starts_with('#')), "{t}");
    }

    #[test]
    fn keys_the_file_sets_become_arguments() {
        let t = text(&loaded(
            r#"{"kill_grace":"1m30s","max_concurrent_tasks":8,"root_access_ceiling":"off"}"#,
        ));
        let want = format!(
            "[Service]\nExecStart=\nExecStart={} --kill-grace 1m30s --max-tasks 8 --root-access-ceiling off\nTimeoutStopSec=110s\n",
            base_exec_start()
        );
        assert!(t.ends_with(&want), "{t}");

        let t = text(&loaded(r#"{"max_concurrent_tasks":2}"#));
        assert!(t.contains(" --max-tasks 2\n"), "{t}");
        assert!(
            !t.contains("--kill-grace") && !t.contains("TimeoutStopSec"),
            "{t}"
        );

        let t = text(&loaded(r#"{"kill_grace":"1.5s"}"#));
        assert!(
            t.contains("--kill-grace 1.5s\nTimeoutStopSec=21500ms\n"),
            "{t}"
        );
    }

    #[test]
    fn config_set_rewrites_an_installed_drop_in() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let dropin = dir.path().join("10-settings.conf");
        std::fs::write(&config, r#"{"max_concurrent_tasks":6}"#).unwrap();
        // Not installed by the installer: said, not created.
        let note = rewrite("max_concurrent_tasks", &config, &dropin)
            .unwrap()
            .unwrap();
        assert!(
            note.contains("does not exist") && !dropin.exists(),
            "{note}"
        );
        std::fs::write(&dropin, "old").unwrap();
        // Other keys leave it alone.
        assert!(rewrite("log_level", &config, &dropin).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&dropin).unwrap(), "old");
        let note = rewrite("max_concurrent_tasks", &config, &dropin)
            .unwrap()
            .unwrap();
        assert!(note.contains("rewritten"), "{note}");
        let t = std::fs::read_to_string(&dropin).unwrap();
        assert!(t.contains(" --max-tasks 6\n"), "{t}");
        // Only the installed config's keys reach the installed drop-in.
        assert!(
            after_config_set("max_concurrent_tasks", &config)
                .unwrap()
                .is_none()
        );
    }
}

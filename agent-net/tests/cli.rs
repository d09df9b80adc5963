//! The `noderax-agent` binary's command line, run as a real process.

use std::path::Path;
use std::process::{Command, Output};

fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_noderax-agent"));
    cmd.args(args).current_dir(dir).env_clear();
    cmd.env("NODERAX_CONFIG_FILE", dir.join("config.json"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run noderax-agent")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_prints_version_commit_and_build_date() {
    let dir = tempfile::tempdir().unwrap();
    let first = agent(dir.path(), &["version"], &[]);
    assert!(first.status.success());
    let text = stdout(&first);
    assert!(
        text.starts_with(&format!("noderax-agent {}\n", shared::build_info::VERSION)),
        "{text}"
    );
    assert!(
        text.contains(&format!("commit:     {}", shared::build_info::COMMIT)),
        "{text}"
    );
    let date = text
        .lines()
        .find_map(|l| l.strip_prefix("built:      "))
        .unwrap();
    assert!(shared::timestamp::Timestamp::parse(date).is_ok(), "{date}");
    for flag in ["-v", "--version"] {
        let o = agent(dir.path(), &[flag], &[]);
        assert!(o.status.success());
        assert_eq!(stdout(&o), text, "{flag}");
    }
}

#[test]
fn config_set_then_show_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent(
        dir.path(),
        &["config", "set", "api_url", "api.example.com/api/v1"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("api_url = https://api.example.com"));
    let o = agent(dir.path(), &["config", "set", "task_timeout", "1m30s"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = "af0fe67dfb6d233db5462db4b8f19f65aa84fb304e2955546554a938d2f2b84f";
    let o = agent(dir.path(), &["config", "set", "agent_token", token], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(token), "set echoes the secret");

    let file = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(file.contains(r#""task_timeout": "1m30s""#), "{file}");

    let o = agent(dir.path(), &["config", "show"], &[("LOG_LEVEL", "debug")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let show = stdout(&o);
    assert!(!show.contains(token), "show prints the secret:\n{show}");
    let line = |key: &str| {
        show.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in\n{show}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("api_url"), "api_url https://api.example.com file");
    assert_eq!(line("task_timeout"), "task_timeout 1m30s file");
    assert_eq!(line("agent_token"), "agent_token <set, 64 characters> file");
    assert_eq!(line("log_level"), "log_level debug env LOG_LEVEL");
    // Only keys that were set are written; the rest stay defaults.
    assert_eq!(line("request_timeout"), "request_timeout 10s default");
    assert!(!file.contains("request_timeout"), "{file}");

    let o = agent(dir.path(), &["config", "show", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["keys"]["task_timeout"]["value"], "1m30s");
    assert!(!stdout(&o).contains(token));
}

#[test]
fn config_set_rejects_bad_values_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        agent(
            dir.path(),
            &["config", "set", "api_url", "https://a.example"],
            &[]
        )
        .status
        .success()
    );
    let before = std::fs::read(dir.path().join("config.json")).unwrap();
    for (key, value, expect) in [
        ("task_timeout", "10", "missing unit"),
        ("log_level", "loud", "debug, info, warn, error"),
        ("realtime_backoff_jitter", "2", "between 0 and 1"),
        ("api_url", "ftp://x", "http or https"),
        ("no_such_key", "1", "unknown config key"),
    ] {
        let o = agent(dir.path(), &["config", "set", key, value], &[]);
        assert_eq!(o.status.code(), Some(1), "{key}={value}");
        let err = stderr(&o);
        assert!(err.contains(expect), "{key}={value}: {err}");
        assert!(err.contains("nothing was written"), "{err}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("config.json")).unwrap(),
        before
    );
}

#[test]
fn config_path_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent(dir.path(), &["config", "path"], &[]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        dir.path().join("config.json").display().to_string()
    );
    assert!(stderr(&o).contains("does not exist yet"));

    std::fs::write(dir.path().join("config.json"), "{\"api_url\": ").unwrap();
    let o = agent(dir.path(), &["config", "show"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not valid JSON"), "{}", stderr(&o));

    // A bad environment value names the variable.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let o = agent(dir.path(), &["config", "show"], &[("TASK_TIMEOUT", "soon")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("TASK_TIMEOUT"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        agent(dir.path(), &["frobnicate"], &[]).status.code(),
        Some(2)
    );
    assert_eq!(
        agent(dir.path(), &["config", "set", "api_url"], &[])
            .status
            .code(),
        Some(2)
    );
}

/// Without a command the agent runs, as the original did; unconfigured, it
/// stops at once with an error that says what to do.
#[test]
fn no_command_runs_the_agent_and_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let o = agent(dir.path(), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let expected = if root {
        "refusing to run as root"
    } else {
        "api_url is not configured"
    };
    assert!(stderr(&o).contains(expected), "{}", stderr(&o));
    let mut args = vec!["run"];
    if root {
        args.push("--allow-root");
    }
    let o = agent(dir.path(), &args, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("api_url is not configured"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("noderax-agent bootstrap"),
        "{}",
        stderr(&o)
    );

    // A named config file that does not exist is an error, not a default.
    let o = agent(
        dir.path(),
        &["--config-file", "x.json", "run", "--allow-root"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("x.json"), "{}", stderr(&o));
}

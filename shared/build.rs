//! Embeds build metadata (`shared::build_info`).
//!
//! - `NODERAX_VERSION`: the release version, reported byte for byte to the
//!   control plane, which compares it with rollout target versions
//!   (PROTOCOL.md §10.5). Release builds must set it (`1.0.3`, no `v`).
//!   Unset, the version is `<crate version>-dev`.
//! - `NODERAX_COMMIT`: the commit; unset, `git rev-parse HEAD` is asked.
//! - `SOURCE_DATE_EPOCH`: the build date for reproducible builds; unset, now.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

// The crate's own dependency-free modules, so the build script applies the
// same rules as the code (a build script cannot depend on its own crate).
#[allow(dead_code)]
#[path = "src/civil.rs"]
mod civil;
#[allow(dead_code)]
#[path = "src/validate.rs"]
mod validate;

fn main() {
    for var in ["NODERAX_VERSION", "NODERAX_COMMIT", "SOURCE_DATE_EPOCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // Re-run when HEAD moves so the embedded commit stays right.
    // Paths come from `git rev-parse --git-path`, which knows where a
    // worktree keeps HEAD and where the shared refs are. A path that does
    // not exist would make cargo re-run this script (and rebuild every crate
    // after it) on every build, so only existing ones are watched; a packed
    // ref is watched through packed-refs.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            for candidate in [head_ref.as_str(), "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", candidate])
                    && std::path::Path::new(&path).exists()
                {
                    println!("cargo:rerun-if-changed={path}");
                    break;
                }
            }
        }
    }

    let version = match std::env::var("NODERAX_VERSION") {
        Ok(v) if !v.is_empty() => {
            if let Err(why) = validate::release_version(&v) {
                panic!("NODERAX_VERSION={v:?} is not a usable release version: {why}");
            }
            v
        }
        _ => format!("{}-dev", std::env::var("CARGO_PKG_VERSION").unwrap()),
    };
    let commit = std::env::var("NODERAX_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });

    println!("cargo:rustc-env=NODERAX_BUILD_VERSION={version}");
    println!("cargo:rustc-env=NODERAX_BUILD_COMMIT={commit}");
    println!(
        "cargo:rustc-env=NODERAX_BUILD_DATE={}",
        iso_date(epoch as i64)
    );
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn iso_date(secs: i64) -> String {
    let (y, m, d) = civil::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

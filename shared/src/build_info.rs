//! What this build is: version, commit and build date, embedded by `build.rs`.
//!
//! [`VERSION`] is the string every process reports to the control plane; the
//! control plane compares it byte for byte with rollout target versions
//! (PROTOCOL.md §10.5), so release builds set it with `NODERAX_VERSION`.

/// The release version (`NODERAX_VERSION` at build time, else `<crate version>-dev`).
pub const VERSION: &str = env!("NODERAX_BUILD_VERSION");
/// The git commit the binary was built from, or `unknown`.
pub const COMMIT: &str = env!("NODERAX_BUILD_COMMIT");
/// The build date, `YYYY-MM-DDTHH:MM:SSZ` (`SOURCE_DATE_EPOCH` when set).
pub const BUILD_DATE: &str = env!("NODERAX_BUILD_DATE");

/// One line for `--version` output and logs: `1.0.3 (commit 86a52ad, built 2026-04-02T17:30:00Z)`.
pub fn summary() -> String {
    let short = COMMIT.get(..7).unwrap_or(COMMIT);
    format!("{VERSION} (commit {short}, built {BUILD_DATE})")
}

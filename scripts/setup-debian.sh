#!/usr/bin/env bash
# Installs what building and testing the agent needs on a Debian or Ubuntu
# machine, and nothing that is already there (safe to run again).
#
#   - Debian packages: a C toolchain (some crates build C), git, curl, CA
#     certificates, pkg-config, and systemd for `systemd-analyze` (the unit
#     checks in tests/tests/systemd_units.rs; it need not be PID 1), and
#     for the installer's tests (tests/tests/installer.rs) sudo (visudo),
#     minisign and the shell linter (package shellcheck); for the release
#     layout's (tests/tests/release_layout.rs) also python3-yaml, which
#     parses the release workflow (dpkg-deb and readelf come with dpkg and
#     build-essential).
#   - A Rust toolchain with rustfmt and clippy (rustup) if cargo is missing.
#   - cargo-nextest (the test runner) if missing.
#
# Needs root (or sudo) only when a Debian package is missing.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else log "need root to run: $*"; exit 1
    fi
}

packages=(build-essential ca-certificates curl git minisign pkg-config python3-yaml shellcheck sudo systemd)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null 2>&1; then
    log "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest (test runner)"
    cargo install cargo-nextest --locked
fi

#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests of every
# crate (the integration tests start the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
# The suites in tests/ drive programs of other packages (the agent's three,
# noderax-release); nextest builds only the binaries of packages whose own
# tests need them, so build every binary first (incremental, usually quick).
cargo build --workspace --bins --locked
exec cargo nextest run --workspace --profile ci "$@"

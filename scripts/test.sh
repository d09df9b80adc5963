#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests of every
# crate (the integration tests start the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
exec cargo nextest run --workspace --profile ci "$@"

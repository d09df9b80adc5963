#!/usr/bin/env bash
# Runs the whole agent end to end against the embedded testbed control
# plane: enrollment with a bootstrap token, a shell task, a package list and
# a web terminal, then prints what the control plane recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --workspace --locked
exec target/release/noderax-demo

#!/usr/bin/env bash
# Builds the release binaries and shows what the agent offers so far.
# (Once the testbed control plane and the network process exist, this runs
# the agent end to end against the embedded testbed.)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
# shellcheck disable=SC1091
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --workspace --locked
bin=target/release
"$bin/noderax-agent" version
echo
"$bin/noderax-agent" --help
echo
"$bin/noderax-agent-exec" --version
"$bin/noderax-agent-priv" version

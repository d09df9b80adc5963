#!/usr/bin/env bash
# Builds the release binaries with a version set the way a release sets it
# and checks that all three report exactly that version: the control plane
# compares it byte for byte with rollout targets (PROTOCOL.md §10.5).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-0.0.0-release-check}"
NODERAX_VERSION="$version" cargo build --release --workspace --locked
bin="${CARGO_TARGET_DIR:-target}/release"
fail=0
check() {
    local got="$1" want="$2"
    if [ "$got" != "$want" ]; then
        echo "release check: expected '$want', got '$got'" >&2
        fail=1
    fi
}
check "$("$bin/noderax-agent" version | head -n1)" "noderax-agent $version"
check "$("$bin/noderax-agent-exec" --version | cut -d' ' -f1-2)" "noderax-agent-exec $version"
check "$("$bin/noderax-agent-priv" version | cut -d' ' -f1-2)" "noderax-agent-priv $version"
"$bin/noderax-agent" version | grep -q '^commit: *[0-9a-f]\{40\}$' || { echo "release check: no commit in version output" >&2; fail=1; }
"$bin/noderax-agent" version | grep -q '^built: *[0-9]\{4\}-[0-9][0-9]-[0-9][0-9]T' || { echo "release check: no build date" >&2; fail=1; }
# The root helper's test hooks (fake root, injected failures) are #[cfg(test)]
# only; their strings must not be in the release binary.
if grep -q -a -e "injected failure before the switch" -e "fake apt-get: " "$bin/noderax-agent-priv"; then
    echo "release check: test-only code is compiled into noderax-agent-priv" >&2
    fail=1
fi
# The executor's test hook (--test-refuse-pty-mode: terminal start modes made
# to fail) exists only in builds with debug assertions. The release binary
# must neither accept the option nor contain its strings.
if "$bin/noderax-agent-exec" --test-refuse-pty-mode ctty --version >/dev/null 2>&1; then
    echo "release check: noderax-agent-exec accepts the test-only --test-refuse-pty-mode" >&2
    fail=1
fi
if grep -q -a -e "test-refuse-pty-mode" -e "expected ctty, no-ctty or minimal" "$bin/noderax-agent-exec"; then
    echo "release check: test-only code is compiled into noderax-agent-exec" >&2
    fail=1
fi
# The network process's test hook (NODERAX_TEST_UPDATE_RESULT_FILE: where the
# tests' stand-in root helper records an update's outcome) is debug-only too.
if grep -q -a -e "NODERAX_TEST_UPDATE_RESULT_FILE" "$bin/noderax-agent"; then
    echo "release check: test-only code is compiled into noderax-agent" >&2
    fail=1
fi
ls -l "$bin/noderax-agent" "$bin/noderax-agent-exec" "$bin/noderax-agent-priv"
exit "$fail"

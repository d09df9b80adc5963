#!/usr/bin/env bash
# Installs what the VM suite needs on the (Debian 12) host, touching nothing
# under /etc/apt (see ../../shared VM-TESTING notes in tests/vm/README.md):
#
#   - qemu-system-x86 from bookworm-backports: the host's qemu-utils may
#     already be the backports version, which conflicts with bookworm's
#     QEMU. A private apt configuration under BUILD_DIR/apt lists the
#     mirror the host's apt already uses (read from its sources at run
#     time) plus that mirror's bookworm-backports suite.
#   - debootstrap (image build), dpkg-dev (dpkg-scanpackages, for the
#     guest's local apt repository) and e2fsprogs (mkfs.ext4 -d) from the
#     host's own sources.
#   - vhost-device-vsock (the userspace vsock backend; the host kernel has no
#     vhost-vsock), built with `cargo install` into CACHE_DIR keyed by its
#     version, so it is built once per machine.
#
# Usage: setup-host.sh BUILD_DIR CACHE_DIR
# Prints the path of vhost-device-vsock as its last line. Safe to run again.
set -euo pipefail

build_dir=$1
cache_dir=$2
readonly VHOST_VSOCK_VERSION=0.3.0

log() { printf 'vm setup: %s\n' "$*" >&2; }
die() { printf 'vm setup: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (apt-get install, debootstrap); run it as root"

# shellcheck disable=SC1091
codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[[ -n $codename ]] || die "cannot read VERSION_CODENAME from /etc/os-release"

# host_mirror: the URI the host's apt uses for the suite $codename (deb822
# *.sources or one-line *.list), the first one found.
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # Paragraphs separated by blank lines; fields Types, URIs, Suites.
        awk -v want="$codename" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "" && enabled != "no") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "types:"   { $1 = ""; types = $0 }
            tolower($1) == "uris:"    { $1 = ""; sub(/^ +/, ""); uris = $0 }
            tolower($1) == "suites:"  { $1 = ""; suites = $0 }
            tolower($1) == "enabled:" { enabled = tolower($2) }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk -v want="$codename" '$1 == "deb" && $3 == want { print $2; exit }'
    done
}

mirror=$(host_mirror | head -n1)
mirror=${mirror%/}
[[ $mirror =~ ^https?:// ]] || die "no apt source for '$codename' found in /etc/apt/sources.list{,.d}: the VM image and QEMU come from the mirror the host uses"
log "host mirror: $mirror"
mkdir -p "$build_dir"
printf '%s\n' "$mirror" >"$build_dir/mirror"

dpkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# apt's output goes to stderr: stdout carries only the result (last line).
apt_host() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" >&2
}

missing=()
for p in debootstrap dpkg-dev e2fsprogs zstd; do dpkg_installed "$p" || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} from the host's apt sources"
    apt_host update -qq
    apt_host install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! dpkg_installed qemu-system-x86 || ! command -v qemu-system-x86_64 >/dev/null; then
    apt_dir=$build_dir/apt
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/archives/partial"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -f $keyring ]] || die "$keyring is missing (package debian-archive-keyring)"
    cat >"$apt_dir/sources.list.d/vm.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $codename $codename-backports
Components: main
Signed-By: $keyring
SOURCES
    private=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives")
    log "installing qemu-system-x86 from $codename-backports (private apt configuration in $apt_dir)"
    apt_host "${private[@]}" update -qq
    apt_host "${private[@]}" install -y -qq --no-install-recommends -t "$codename-backports" \
        qemu-system-x86
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is still missing after installing qemu-system-x86"

vsock_root=$cache_dir/vhost-device-vsock-$VHOST_VSOCK_VERSION
vsock_bin=$vsock_root/bin/vhost-device-vsock
if [[ ! -x $vsock_bin ]]; then
    command -v cargo >/dev/null || die "cargo is needed to build vhost-device-vsock (scripts/setup-debian.sh installs it)"
    log "building vhost-device-vsock $VHOST_VSOCK_VERSION into $vsock_root (once per machine)"
    mkdir -p "$cache_dir"
    # Its own target directory: never the project's, and removed afterwards.
    CARGO_TARGET_DIR=$cache_dir/vhost-device-vsock-build \
        cargo install --quiet --locked --version "$VHOST_VSOCK_VERSION" --root "$vsock_root.new" vhost-device-vsock >&2
    rm -rf "$vsock_root" "$cache_dir/vhost-device-vsock-build"
    mv "$vsock_root.new" "$vsock_root"
fi
printf '%s\n' "$vsock_bin"

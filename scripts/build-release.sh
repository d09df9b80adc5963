#!/usr/bin/env bash
# Builds a release of the Noderax agent and lays it out exactly as it is
# published (README.md, "Releases"; .github/workflows/release.yml runs this
# script too, so CI and local builds share one path):
#
#   OUT/noderax-agent/                      the bucket's noderax-agent/ prefix
#     install.sh                            copy of installer/install.sh
#     releases/catalog.json                 tag releases: the catalog with this one merged in
#     releases/latest/                      the binaries, SHA256SUMS[.minisig]
#     releases/VERSION/                     the binaries, SHA256SUMS[.minisig],
#                                           release-manifest.json[.minisig], the .debs
#   OUT/release-notes.md                    GitHub Release body (CHANGELOG.md section)
#   OUT/minisign.pub                        public key of the signature, when signed
#
# Binaries per architecture: noderax-agent-linux-ARCH,
# noderax-agent-exec-linux-ARCH, noderax-agent-priv-linux-ARCH
# (shared::release_files). Run with --help for the options.
set -euo pipefail

readonly PROGRAMS=(noderax-agent noderax-agent-exec noderax-agent-priv)
readonly PACKAGES=(-p agent-net -p agent-exec -p agent-priv)
readonly DEFAULT_BASE_URL=https://cdn.noderax.net/noderax-agent/releases
readonly UNITS=(noderax-agent.service noderax-agent-exec.socket noderax-agent-exec.service)
readonly DEB_NAME=noderax-agent
readonly DEB_MAINTAINER="Noderax agent maintainers <agent@noderax.net>"
# Packages the agent needs at run time besides the C library: sudo (the root
# helper is reached through it), passwd (useradd & co. in postinst),
# ca-certificates (the system trust store the agent's TLS reads), systemd
# (the units) and init-system-helpers (deb-systemd-helper/-invoke).
readonly DEB_DEPENDS="sudo, passwd, ca-certificates, systemd, init-system-helpers"

usage() {
    cat <<'EOF'
Usage: scripts/build-release.sh --version V [options]

Builds (or takes prebuilt) noderax-agent, noderax-agent-exec and
noderax-agent-priv and writes the published release layout to OUT: the
binaries, SHA256SUMS, release-manifest.json, catalog.json, .deb packages,
install.sh, and minisign signatures when a key is given.

  --version V          release version (1.2.0, main-abc1234); embedded in the
                       binaries (NODERAX_VERSION) and checked in them
  --out DIR            output directory (default: dist); what this script
                       writes there is replaced
  --arch ARCH          amd64 or arm64; repeat for both (default: this machine's)
  --bin-dir [ARCH=]DIR take the binaries from DIR (noderax-agent,
                       noderax-agent-exec, noderax-agent-priv) instead of
                       building them; ARCH= when building several
  --zig[=GLIBC]        cross-build with cargo-zigbuild against glibc GLIBC
                       (default 2.31: Debian 11, Ubuntu 20.04); without it only
                       this machine's architecture is built, with plain cargo
  --max-glibc X.Y      fail if a binary needs a newer glibc (default: the
                       --zig version, unchecked otherwise)
  --binaries-only      build and check the binaries into OUT/bin/ARCH (and the
                       release tool into OUT/bin), then stop
  --base-url URL       release base URL written into the manifest; artifacts
                       are at URL/VERSION/FILE (default
                       https://cdn.noderax.net/noderax-agent/releases)
  --channel tag|main   tag (default): installable, listed in the catalog,
                       packaged as .deb; main: a build of main, latest/ only
  --commit SHA         the commit in the manifest (default: git rev-parse HEAD)
  --published-at T     RFC 3339 publication time (default: now)
  --strict-notes       CHANGELOG.md must have a section for V (else [Unreleased])
  --catalog FILE       the published catalog.json to merge this release into
                       (default: a catalog of this release alone)
  --minisign-key FILE  password-less minisign secret key: signs the manifest
                       and SHA256SUMS; or MINISIGN_SECRET_KEY (the key file's
                       text) with MINISIGN_PASSWORD in the environment
  --no-deb             no .deb packages
  --deb-compression C  xz (default), gzip or none
  --release-tool PATH  the noderax-release binary (default: built with cargo)
  -h, --help           this text

Environment: CARGO_TARGET_DIR (default target), SOURCE_DATE_EPOCH (default:
the commit's time), MINISIGN_SECRET_KEY, MINISIGN_PASSWORD.
EOF
}

say() { printf 'build-release: %s\n' "$*" >&2; }
die() {
    printf 'build-release: error: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'build-release: %s (see --help)\n' "$*" >&2
    exit 2
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
VERSION=""
OUT=""
ARCHES=()
declare -A BIN_DIRS=()
ZIG=0
GLIBC=2.31
MAX_GLIBC=""
BINARIES_ONLY=0
BASE_URL=$DEFAULT_BASE_URL
CHANNEL=tag
COMMIT=""
PUBLISHED_AT=""
STRICT_NOTES=0
CATALOG_IN=""
MINISIGN_KEY_FILE=""
NO_DEB=0
DEB_COMPRESSION=xz
RELEASE_TOOL=""
WORK=""
SIGNING=0

# shared::validate::release_version
release_version_ok() {
    [[ ${#1} -le 64 && $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ && $1 != *..* ]]
}

host_arch() {
    case $(uname -m) in
        x86_64 | amd64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) echo unsupported ;;
    esac
}

cpu_of() {
    case $1 in
        amd64) echo x86_64 ;;
        arm64) echo aarch64 ;;
    esac
}

parse_args() {
    local v arch
    while [[ $# -gt 0 ]]; do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --binaries-only) BINARIES_ONLY=1; shift; continue ;;
            --strict-notes) STRICT_NOTES=1; shift; continue ;;
            --no-deb) NO_DEB=1; shift; continue ;;
            --zig) ZIG=1; shift; continue ;;
            --zig=*) ZIG=1; GLIBC=${1#--zig=}; shift; continue ;;
            --version | --out | --arch | --bin-dir | --max-glibc | --base-url | --channel | --commit | \
                --published-at | --catalog | --minisign-key | --deb-compression | --release-tool)
                [[ $# -ge 2 ]] || usage_error "$1 needs a value"
                v=$2 ;;
            *) usage_error "unknown argument: $1" ;;
        esac
        case $1 in
            --version) VERSION=$v ;;
            --out) OUT=$v ;;
            --arch) ARCHES+=("$v") ;;
            --bin-dir)
                if [[ $v =~ ^(amd64|arm64)=(.+)$ ]]; then
                    arch=${BASH_REMATCH[1]}
                    BIN_DIRS[$arch]=${BASH_REMATCH[2]}
                else
                    BIN_DIRS[any]=$v
                fi
                ;;
            --max-glibc) MAX_GLIBC=$v ;;
            --base-url) BASE_URL=${v%/} ;;
            --channel) CHANNEL=$v ;;
            --commit) COMMIT=$v ;;
            --published-at) PUBLISHED_AT=$v ;;
            --catalog) CATALOG_IN=$v ;;
            --minisign-key) MINISIGN_KEY_FILE=$v ;;
            --deb-compression) DEB_COMPRESSION=$v ;;
            --release-tool) RELEASE_TOOL=$v ;;
        esac
        shift 2
    done

    [[ -n $VERSION ]] || usage_error "--version is required"
    release_version_ok "$VERSION" ||
        usage_error "version $VERSION is not a release version (letters, digits, '.', '_', '-'; at most 64; no '..')"
    case $CHANNEL in tag | main) ;; *) usage_error "--channel must be tag or main" ;; esac
    [[ $BASE_URL =~ ^https?://[^/?#[:space:]]+(/[^?#[:space:]]*)?$ ]] ||
        usage_error "--base-url $BASE_URL is not an http(s) URL"
    case $DEB_COMPRESSION in xz | gzip | none) ;; *) usage_error "--deb-compression must be xz, gzip or none" ;; esac
    [[ $GLIBC =~ ^2\.[0-9]+$ ]] || usage_error "--zig=$GLIBC: expected a glibc version like 2.31"
    [[ -z $MAX_GLIBC || $MAX_GLIBC =~ ^2\.[0-9]+$ ]] || usage_error "--max-glibc $MAX_GLIBC: expected a version like 2.31"
    [[ $ZIG == 0 || -n $MAX_GLIBC ]] || MAX_GLIBC=$GLIBC

    local a h
    h=$(host_arch)
    for a in "${!BIN_DIRS[@]}"; do
        [[ $a == any ]] || in_arches "$a" || ARCHES+=("$a")
    done
    [[ ${#ARCHES[@]} -gt 0 ]] || ARCHES=("$h")
    for a in "${ARCHES[@]}"; do
        case $a in amd64 | arm64) ;; *) usage_error "--arch $a: only amd64 and arm64 are released" ;; esac
    done
    if [[ -n ${BIN_DIRS[any]:-} ]]; then
        [[ ${#ARCHES[@]} -eq 1 ]] || usage_error "--bin-dir DIR with several architectures: write --bin-dir ARCH=DIR"
        BIN_DIRS[${ARCHES[0]}]=${BIN_DIRS[any]}
        unset 'BIN_DIRS[any]'
    fi
    for a in "${ARCHES[@]}"; do
        if [[ -z ${BIN_DIRS[$a]:-} && $ZIG == 0 && $a != "$h" ]]; then
            usage_error "$a binaries cannot be built on this $h machine with plain cargo: pass --zig or --bin-dir $a=DIR"
        fi
    done

    if [[ $CHANNEL == main ]]; then
        [[ -z $CATALOG_IN ]] || usage_error "--catalog: main builds are never listed in the catalog"
        NO_DEB=1
    fi
    [[ -z $CATALOG_IN || -f $CATALOG_IN ]] || usage_error "--catalog $CATALOG_IN is not a file"
    [[ -z $MINISIGN_KEY_FILE || -f $MINISIGN_KEY_FILE ]] || usage_error "--minisign-key $MINISIGN_KEY_FILE is not a file"
    if [[ -n $MINISIGN_KEY_FILE || -n ${MINISIGN_SECRET_KEY:-} ]]; then SIGNING=1; fi
    if [[ $NO_DEB == 0 ]] && ! deb_version "$VERSION" >/dev/null; then
        usage_error "version $VERSION cannot be a Debian package version (it must start with a digit); pass --no-deb"
    fi

    OUT=${OUT:-$REPO/dist}
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    if [[ -n $CATALOG_IN ]]; then CATALOG_IN=$(realpath -- "$CATALOG_IN"); fi
    if [[ -n $MINISIGN_KEY_FILE ]]; then MINISIGN_KEY_FILE=$(realpath -- "$MINISIGN_KEY_FILE"); fi
    if [[ -n $RELEASE_TOOL ]]; then
        [[ -x $RELEASE_TOOL ]] || usage_error "--release-tool $RELEASE_TOOL is not an executable"
        RELEASE_TOOL=$(realpath -- "$RELEASE_TOOL")
    fi
    for a in "${!BIN_DIRS[@]}"; do
        [[ -d ${BIN_DIRS[$a]} ]] || usage_error "--bin-dir ${BIN_DIRS[$a]} is not a directory"
        BIN_DIRS[$a]=$(realpath -- "${BIN_DIRS[$a]}")
    done
}

in_arches() {
    local a
    for a in "${ARCHES[@]}"; do [[ $a == "$1" ]] && return 0; done
    return 1
}

# deb_version V: the Debian version of release V. A pre-release after '-'
# or '_' sorts before its release in dpkg only after '~' (1.2.0~rc1 <
# 1.2.0), and Debian versions start with a digit.
deb_version() {
    local d=${1//[-_]/\~}
    [[ $d =~ ^[0-9][A-Za-z0-9.~]*$ ]] || return 1
    printf '%s\n' "$d"
}

have() { command -v "$1" >/dev/null 2>&1; }

target_dir() {
    local t=${CARGO_TARGET_DIR:-target}
    [[ $t == /* ]] || t=$REPO/$t
    printf '%s\n' "$t"
}

# ---- the release tool -----------------------------------------------------------

release_tool() {
    if [[ -n $RELEASE_TOOL ]]; then return 0; fi
    say "building the release tool (noderax-release)"
    # Without NODERAX_VERSION: it is a build tool, and a version in the
    # environment would invalidate the debug build of the whole workspace.
    (cd "$REPO" && env -u NODERAX_VERSION -u NODERAX_COMMIT \
        cargo build --locked --quiet -p release-tool --bin noderax-release) ||
        die "building noderax-release failed"
    RELEASE_TOOL=$(target_dir)/debug/noderax-release
}

# ---- binaries -------------------------------------------------------------------

build_binaries() { # ARCH -> prints the directory holding the binaries
    local arch=$1 triple dir
    local -a envs=(NODERAX_VERSION="$VERSION" NODERAX_COMMIT="$COMMIT" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH")
    if [[ -n ${BIN_DIRS[$arch]:-} ]]; then
        printf '%s\n' "${BIN_DIRS[$arch]}"
        return 0
    fi
    if [[ $ZIG == 1 ]]; then
        triple=$(cpu_of "$arch")-unknown-linux-gnu
        have cargo-zigbuild || die "--zig needs cargo-zigbuild and zig (pip install cargo-zigbuild; rustup target add $triple)"
        say "building $arch release binaries: cargo zigbuild --target $triple.$GLIBC"
        (cd "$REPO" && env "${envs[@]}" cargo zigbuild --release --locked --bins "${PACKAGES[@]}" \
            --target "$triple.$GLIBC" >&2) || die "cargo zigbuild for $arch failed"
        dir=$(target_dir)/$triple/release
    else
        say "building $arch release binaries: cargo build --release"
        (cd "$REPO" && env "${envs[@]}" cargo build --release --locked --bins "${PACKAGES[@]}" >&2) ||
            die "cargo build --release failed"
        dir=$(target_dir)/release
    fi
    printf '%s\n' "$dir"
}

# run_arch ARCH CMD...: runs a binary of ARCH, through qemu-user when it is
# not this machine's architecture. Returns 127 when it cannot run here.
run_arch() {
    local arch=$1 cpu q
    shift
    if [[ $arch == "$(host_arch)" ]]; then
        "$@"
        return
    fi
    cpu=$(cpu_of "$arch")
    for q in "qemu-$cpu-static" "qemu-$cpu"; do
        if have "$q"; then
            # glibc-linked binaries need the target's loader and libc
            # (Debian: libc6-arm64-cross).
            QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/$cpu-linux-gnu} "$q" "$@"
            return
        fi
    done
    return 127
}

# check_binaries ARCH DIR: present, report VERSION, need no newer glibc.
check_binaries() {
    local arch=$1 dir=$2 p got want rc
    for p in "${PROGRAMS[@]}"; do
        [[ -f $dir/$p && -x $dir/$p ]] || die "$dir/$p is missing or not executable"
        [[ $(head -c 4 "$dir/$p" | od -An -c | tr -d ' ') == '177ELF' ]] || die "$dir/$p is not an ELF binary"
    done
    rc=0
    got=$(run_arch "$arch" "$dir/noderax-agent" version 2>&1 | head -n1) || rc=$?
    if [[ $rc == 127 && $arch != "$(host_arch)" ]]; then
        say "warning: cannot run $arch binaries here (no qemu-$(cpu_of "$arch")-static): their version is not checked"
    else
        want="noderax-agent $VERSION"
        [[ $got == "$want" ]] || die "$dir/noderax-agent reports '$got', not '$want' (built without NODERAX_VERSION=$VERSION?)"
        got=$(run_arch "$arch" "$dir/noderax-agent-exec" --version 2>&1 | head -n1 | cut -d' ' -f1-2)
        [[ $got == "noderax-agent-exec $VERSION" ]] || die "$dir/noderax-agent-exec reports '$got', not version $VERSION"
        got=$(run_arch "$arch" "$dir/noderax-agent-priv" version 2>&1 | head -n1 | cut -d' ' -f1-2)
        [[ $got == "noderax-agent-priv $VERSION" ]] || die "$dir/noderax-agent-priv reports '$got', not version $VERSION"
    fi
    if [[ -n $MAX_GLIBC ]]; then
        for p in "${PROGRAMS[@]}"; do
            got=$(glibc_needed "$dir/$p")
            if [[ -n $got && $(printf '%s\n%s\n' "$got" "$MAX_GLIBC" | sort -V | tail -n1) != "$MAX_GLIBC" ]]; then
                die "$dir/$p needs glibc $got, newer than $MAX_GLIBC: it would not run on Debian 11 / Ubuntu 20.04 (build with --zig=$MAX_GLIBC)"
            fi
        done
        say "$arch binaries need at most glibc $MAX_GLIBC"
    fi
}

# glibc_needed FILE: the newest GLIBC_x.y symbol version FILE needs (empty
# for a static binary).
glibc_needed() {
    have readelf || die "readelf is missing: install binutils"
    readelf -V --wide "$1" 2>/dev/null | grep -o 'GLIBC_2\.[0-9.]*' | sed 's/^GLIBC_//' | sort -V | tail -n1
}

# deb_depends DIR: Depends for the binaries' shared libraries.
deb_depends() {
    local dir=$1 p lib libs glibc="" v
    libs=$(for p in "${PROGRAMS[@]}"; do
        readelf -d --wide "$dir/$p" | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p'
    done | sort -u)
    local -a deps=()
    for lib in $libs; do
        case $lib in
            libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | ld-linux*.so.*)
                for p in "${PROGRAMS[@]}"; do
                    v=$(glibc_needed "$dir/$p")
                    if [[ -n $v ]]; then glibc=$(printf '%s\n%s\n' "$glibc" "$v" | sort -V | tail -n1); fi
                done
                ;;
            libgcc_s.so.1) in_list "libgcc-s1 | libgcc1" "${deps[@]}" || deps+=("libgcc-s1 | libgcc1") ;;
            *) die "the binaries need $lib, which the .deb does not know a package for; add it to deb_depends in $0" ;;
        esac
    done
    if [[ -n $glibc ]]; then deps=("libc6 (>= $glibc)" "${deps[@]}"); fi
    local IFS=,
    printf '%s' "${deps[*]}" | sed 's/,/, /g'
}

in_list() {
    local w=$1 x
    shift
    for x in "$@"; do [[ $x == "$w" ]] && return 0; done
    return 1
}

# ---- signatures -----------------------------------------------------------------

setup_signing() {
    [[ $SIGNING == 1 ]] || return 0
    have minisign || die "signing needs minisign (apt-get install minisign)"
    if [[ -z $MINISIGN_KEY_FILE ]]; then
        MINISIGN_KEY_FILE=$WORK/minisign.key
        (umask 077 && printf '%s\n' "$MINISIGN_SECRET_KEY" >"$MINISIGN_KEY_FILE")
    fi
    # The public key of the secret key, to verify every signature made here
    # (and for the workflow to compare with the one installers are given).
    minisign -R -s "$MINISIGN_KEY_FILE" -p "$WORK/minisign.pub" <<<"${MINISIGN_PASSWORD:-}" >/dev/null 2>&1 ||
        die "minisign cannot read the secret key (wrong MINISIGN_PASSWORD, or a password-protected --minisign-key without it?)"
}

sign() { # FILE
    [[ $SIGNING == 1 ]] || return 0
    local f=$1
    rm -f -- "$f.minisig"
    # The password on stdin (minisign reads it from there when it is not a
    # terminal; a password-less key reads nothing).
    minisign -S -s "$MINISIGN_KEY_FILE" -m "$f" -x "$f.minisig" \
        -t "noderax-agent $VERSION ${f##*/}" <<<"${MINISIGN_PASSWORD:-}" >/dev/null 2>&1 ||
        die "signing $f failed"
    minisign -V -q -p "$WORK/minisign.pub" -m "$f" -x "$f.minisig" >/dev/null ||
        die "the signature of $f does not verify"
}

# ---- layout ---------------------------------------------------------------------

# write_sums DIR NAME...: SHA256SUMS in DIR for the named files.
write_sums() {
    local dir=$1
    shift
    (cd "$dir" && sha256sum -- "$@" >SHA256SUMS.new && mv -f SHA256SUMS.new SHA256SUMS)
}

link_or_copy() { ln -f -- "$1" "$2" 2>/dev/null || cp -f -- "$1" "$2"; }

build_deb() { # ARCH BIN_DIR REL_DIR -> the .deb's file name
    local arch=$1 bins=$2 rel=$3 debver root deb depends p u size
    debver=$(deb_version "$VERSION")
    deb=${DEB_NAME}_${debver}_$arch.deb
    root=$WORK/deb-$arch
    rm -rf -- "$root"
    # Nothing under /usr/local: postinst makes the links there (Debian
    # Policy 9.1.2; dpkg would otherwise own and later remove /usr/local/bin).
    install -d -m 0755 "$root/DEBIAN" "$root/opt/noderax-agent/releases/$VERSION" "$root/etc/noderax-agent" \
        "$root/etc/sudoers.d" "$root/lib/systemd/system" "$root/usr/share/doc/$DEB_NAME"
    for p in "${PROGRAMS[@]}"; do
        install -m 0755 "$bins/$p" "$root/opt/noderax-agent/releases/$VERSION/$p"
    done
    install -m 0644 "$rel/release-manifest.json" "$root/opt/noderax-agent/releases/$VERSION/"
    if [[ $SIGNING == 1 ]]; then
        install -m 0644 "$rel/release-manifest.json.minisig" "$root/opt/noderax-agent/releases/$VERSION/"
        # Pins the signer: the root helper then refuses unsigned updates.
        install -m 0644 "$WORK/minisign.pub" "$root/etc/noderax-agent/release.pub"
    fi
    ln -s "releases/$VERSION" "$root/opt/noderax-agent/current"
    install -m 0640 "$REPO/packaging/deb/config.json" "$root/etc/noderax-agent/config.json"
    install -m 0440 "$REPO/packaging/deb/sudoers" "$root/etc/sudoers.d/noderax-agent"
    have visudo || die "visudo is missing (package sudo): the sudoers drop-in must be checked"
    visudo -cf "$root/etc/sudoers.d/noderax-agent" >/dev/null ||
        die "visudo rejects packaging/deb/sudoers"
    for u in "${UNITS[@]}"; do
        install -m 0644 "$REPO/systemd/$u" "$root/lib/systemd/system/$u"
    done
    install -m 0644 "$REPO/packaging/deb/copyright" "$REPO/packaging/deb/README.Debian" \
        "$root/usr/share/doc/$DEB_NAME/"
    for p in postinst prerm postrm; do
        install -m 0755 "$REPO/packaging/deb/$p" "$root/DEBIAN/$p"
    done
    {
        echo /etc/noderax-agent/config.json
        echo /etc/sudoers.d/noderax-agent
        [[ $SIGNING == 0 ]] || echo /etc/noderax-agent/release.pub
    } >"$root/DEBIAN/conffiles"
    # dpkg -V compares the installed files with these digests (conffiles
    # are tracked by dpkg itself, as debhelper's dh_md5sums leaves them out).
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
        while IFS= read -r f; do
            grep -qxF "/$f" DEBIAN/conffiles || md5sum -- "$f"
        done) >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

    depends=$(deb_depends "$bins")
    size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
    cat >"$root/DEBIAN/control" <<EOF
Package: $DEB_NAME
Version: $debver
Architecture: $arch
Maintainer: $DEB_MAINTAINER
Installed-Size: $size
Depends: ${depends:+$depends, }$DEB_DEPENDS
Section: admin
Priority: optional
Homepage: https://github.com/noderax/noderax-agent-rs
Description: Noderax node agent (privilege-separated)
 Enrolls this server with a Noderax control plane, keeps it visible, runs
 tasks and package operations, serves web terminals and updates itself.
 Three programs: noderax-agent (network process, user noderax-net),
 noderax-agent-exec (executor, user noderax) and the root helper
 noderax-agent-priv, reached only through sudo.
 .
 After installing, enroll the node with a bootstrap token and start it:
 see /usr/share/doc/noderax-agent/README.Debian.
EOF
    chmod 0644 "$root/DEBIAN/control"
    local -a z=(-Z"$DEB_COMPRESSION")
    [[ $DEB_COMPRESSION == none ]] || z+=(-z9)
    dpkg-deb --root-owner-group "${z[@]}" --build "$root" "$rel/$deb" >/dev/null ||
        die "dpkg-deb failed for $arch"
    rm -rf -- "$root"
    printf '%s\n' "$deb"
}

main() {
    parse_args "$@"
    umask 022
    export LC_ALL=C
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/noderax-release.XXXXXXXX")
    trap 'rm -rf -- "$WORK"' EXIT

    if [[ -z $COMMIT ]]; then
        COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null) || die "not a git checkout: pass --commit SHA"
        if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
            say "note: the work tree has uncommitted changes; the release names commit $COMMIT"
        fi
    fi
    [[ $COMMIT =~ ^[0-9a-f]{40}$ ]] || die "--commit $COMMIT is not a full 40-digit lower-case commit id"
    if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
        SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct "$COMMIT" 2>/dev/null || date +%s)
    fi
    export SOURCE_DATE_EPOCH

    release_tool
    local arch
    declare -A dirs=()
    for arch in "${ARCHES[@]}"; do
        dirs[$arch]=$(build_binaries "$arch")
        check_binaries "$arch" "${dirs[$arch]}"
    done

    if [[ $BINARIES_ONLY == 1 ]]; then
        rm -rf -- "${OUT:?}/bin"
        for arch in "${ARCHES[@]}"; do
            install -d "$OUT/bin/$arch"
            for p in "${PROGRAMS[@]}"; do
                install -m 0755 "${dirs[$arch]}/$p" "$OUT/bin/$arch/$p"
            done
        done
        install -m 0755 "$RELEASE_TOOL" "$OUT/bin/noderax-release"
        say "binaries in $OUT/bin/{$(IFS=,; echo "${ARCHES[*]}")}, release tool in $OUT/bin/noderax-release"
        return 0
    fi

    local top=$OUT/noderax-agent rel latest p a name
    rel=$top/releases/$VERSION
    latest=$top/releases/latest
    rm -rf -- "$top" "$OUT/release-notes.md" "$OUT/minisign.pub"
    install -d "$rel" "$latest"
    setup_signing

    local -a artifacts=()
    for arch in "${ARCHES[@]}"; do
        for p in "${PROGRAMS[@]}"; do
            name=$p-linux-$arch
            install -m 0755 "${dirs[$arch]}/$p" "$rel/$name"
            link_or_copy "$rel/$name" "$latest/$name"
            artifacts+=("$name")
        done
    done
    write_sums "$rel" "${artifacts[@]}"

    local -a notes_args=(--changelog "$REPO/CHANGELOG.md")
    [[ $STRICT_NOTES == 0 ]] || notes_args+=(--strict-notes)
    local -a arch_args=()
    for a in "${ARCHES[@]}"; do arch_args+=(--arch "$a"); done
    [[ -z $PUBLISHED_AT ]] || arch_args+=(--published-at "$PUBLISHED_AT")
    "$RELEASE_TOOL" manifest --version "$VERSION" --commit "$COMMIT" --channel "$CHANNEL" \
        --base-url "$BASE_URL" --sums "$rel/SHA256SUMS" "${arch_args[@]}" "${notes_args[@]}" \
        >"$rel/release-manifest.json" ||
        die "writing release-manifest.json failed"
    if ! "$RELEASE_TOOL" notes --version "$VERSION" "${notes_args[@]}" --format markdown \
        >"$OUT/release-notes.md" 2>/dev/null; then
        [[ $CHANNEL == main ]] || die "extracting the release notes failed"
        : >"$OUT/release-notes.md"
    fi
    sign "$rel/release-manifest.json"

    # latest/ holds the binaries; its SHA256SUMS lists exactly them.
    cp -f "$rel/SHA256SUMS" "$latest/SHA256SUMS"
    sign "$latest/SHA256SUMS"

    local -a debs=()
    if [[ $NO_DEB == 0 ]]; then
        have dpkg-deb || die "dpkg-deb is missing (package dpkg); or pass --no-deb"
        for arch in "${ARCHES[@]}"; do
            debs+=("$(build_deb "$arch" "${dirs[$arch]}" "$rel")")
            say "built $rel/${debs[-1]}"
        done
    fi
    # The version directory's SHA256SUMS lists its binaries and packages.
    if [[ ${#debs[@]} -gt 0 ]]; then
        (cd "$rel" && sha256sum -- "${debs[@]}" >>SHA256SUMS)
    fi
    sign "$rel/SHA256SUMS"

    if [[ $CHANNEL == tag ]]; then
        local -a existing=()
        [[ -z $CATALOG_IN ]] || existing=(--existing "$CATALOG_IN")
        "$RELEASE_TOOL" catalog --manifest "$rel/release-manifest.json" "${existing[@]}" \
            >"$top/releases/catalog.json" || die "writing catalog.json failed"
    fi
    install -m 0644 "$REPO/installer/install.sh" "$top/install.sh"
    [[ $SIGNING == 0 ]] || install -m 0644 "$WORK/minisign.pub" "$OUT/minisign.pub"


    say "release $VERSION ($CHANNEL, ${ARCHES[*]}, commit ${COMMIT:0:7}) in $top$([[ $SIGNING == 1 ]] && echo ', signed')"
    (cd "$OUT" && find noderax-agent -type f | LC_ALL=C sort | while read -r f; do
        printf '  %10s  %s\n' "$(stat -c %s "$f")" "$f"
    done) >&2
}

main "$@"

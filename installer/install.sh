#!/usr/bin/env bash
# Noderax agent installer: installs the privilege-separated agent on a Debian
# or Ubuntu host with systemd and enrolls it with a bootstrap token. This is
# the command the web UI generates:
#
#   curl -fsSL https://cdn.noderax.net/noderax-agent/install.sh |
#       sudo bash -s -- --api-url 'https://api.example.com' --bootstrap-token 'TOKEN'
#
# Run with --help for the options. In the order of the progress stages it
# reports to the control plane (PROTOCOL.md §3):
#
#   installer_started        checks: root, Linux, Debian/Ubuntu, systemd, arch
#   dependencies_installing  apt-get installs curl, sudo, ca-certificates
#                            (only what is missing; minisign too when a
#                            release key is configured)
#   dependencies_ready
#   service_user_ready       system users noderax (executor, tasks) and
#                            noderax-net (network process), no login, locked;
#                            the directories with their owners and modes
#   binary_download_started  noderax-agent, noderax-agent-exec and
#                            noderax-agent-priv for this architecture and
#                            SHA256SUMS (+ SHA256SUMS.minisig), verified
#   binary_downloaded        installed under /opt/noderax-agent/releases/V
#                            (all three programs), `current` switched; the
#                            root helper's path linked into `current`, config,
#                            sudoers drop-in (visudo -cf, then sudo -l), units
#                            and the executor's settings drop-in
#   agent_bootstrapping      `noderax-agent bootstrap` as noderax-net
#   service_started          units enabled and started, agent active
#   failed                   on any error, with the reason
#
# Re-running upgrades in place: the identity and the config are kept. Every
# path it creates is listed in /var/lib/noderax-agent-install/manifest for
# `noderax-agent uninstall`. --dry-run prints every action without doing
# it. The layout is README.md's ("Processes and privileges", "Root helper",
# "systemd units"); the units below are copies of systemd/*.
#
# --package deb (NODERAX_AGENT_PACKAGE=deb) installs the release's .deb
# instead of laying the files out itself, with the same stages:
#
#   service_user_ready       checks only: the package's postinst creates (or
#                            adopts) the users and the directories
#   binary_download_started  noderax-agent_<debver>_<arch>.deb of --version V
#                            and SHA256SUMS (+ .minisig), verified; also under
#                            --dry-run, into the temporary directory
#   binary_downloaded        apt-get install of the file (dependencies
#                            resolved, changed conffiles kept); the unit
#                            copies of an earlier installation by this script
#                            retired first; config, the executor's settings
#                            drop-in, the sudo -l check
#   agent_bootstrapping ...  as above
#
# dpkg owns what the package ships, so the manifest never lists it; it says
# `package: noderax-agent`, and `noderax-agent uninstall` then refuses and
# names `apt-get purge noderax-agent`. The accounts an earlier installation
# by this script created are handed to the package (its postrm's list), so
# that a purge removes them.
#
# Artifacts: the release directory <base>/<version|latest>/ holds
# noderax-agent-linux-<arch> (PROTOCOL.md §10.4) and, a PROPOSAL not yet
# agreed with the release workflow, noderax-agent-exec-linux-<arch> and
# noderax-agent-priv-linux-<arch>, all three listed in the same SHA256SUMS,
# and optionally SHA256SUMS.minisig (a minisign signature of SHA256SUMS).

# Fixed layout. The units, the root helper and the executor use these paths
# and users, so they cannot be overridden (see check_layout_overrides).
readonly INSTALL_DIR=/opt/noderax-agent
readonly RELEASES_DIR=/opt/noderax-agent/releases
readonly UPDATE_LOCK=/opt/noderax-agent/.update.lock
readonly CONFIG_DIR=/etc/noderax-agent
readonly CONFIG_FILE=/etc/noderax-agent/config.json
readonly RELEASE_KEY_FILE=/etc/noderax-agent/release.pub
readonly STATE_DIR=/var/lib/noderax-agent
readonly STATE_FILE=/var/lib/noderax-agent/agent_identity.json
readonly EXEC_STATE_DIR=/var/lib/noderax-agent-exec
# The root helper's path as sudoers names it: a link to the helper of the
# current release, so switching `current` (an update, a rollback) switches
# the helper with the rest of the release.
readonly HELPER=/usr/local/libexec/noderax-agent-priv
readonly HELPER_TARGET=/opt/noderax-agent/current/noderax-agent-priv
readonly HELPER_ALIAS=/usr/local/libexec/noderax-agent-self-update
readonly CLI_LINK=/usr/local/bin/noderax-agent
readonly SUDOERS_DIR=/etc/sudoers.d
readonly SUDOERS_FILE=/etc/sudoers.d/noderax-agent
# The original agent's per-profile grants (PROTOCOL.md §11.2); they give
# noderax more than the helper, which this agent never wants.
readonly LEGACY_SUDOERS_FILE=/etc/sudoers.d/noderax-agent-root-access
readonly UNIT_DIR=/etc/systemd/system
# The executor's settings from the config (kill_grace, max_concurrent_tasks,
# root_access_ceiling) as arguments: the executor cannot read the config.
readonly EXEC_DROPIN_DIR=/etc/systemd/system/noderax-agent-exec.service.d
readonly EXEC_DROPIN=/etc/systemd/system/noderax-agent-exec.service.d/10-settings.conf
readonly MANIFEST_DIR=/var/lib/noderax-agent-install
readonly MANIFEST_FILE=/var/lib/noderax-agent-install/manifest
readonly EXEC_USER=noderax
readonly NET_USER=noderax-net
# noderax's home: tasks and terminal shells start in it (WorkingDirectory=-~
# of the executor unit). Not the state directory of either process.
readonly DEFAULT_EXEC_HOME=/home/noderax
readonly NET_HOME=/var/lib/noderax-agent
readonly NOLOGIN=/usr/sbin/nologin
readonly UNITS=(noderax-agent-exec.socket noderax-agent-exec.service noderax-agent.service)
readonly ENABLE_UNITS=(noderax-agent-exec.socket noderax-agent.service)
readonly MAIN_UNIT=noderax-agent.service
readonly DEFAULT_BASE_URL=https://cdn.noderax.net/noderax-agent/releases
# --package deb: the package, the list of what its postinst created (its
# postrm removes that on purge; packaging/deb/postinst) and where the unit
# copies of an earlier installation wait while apt-get runs.
readonly DEB_PACKAGE=noderax-agent
readonly DEB_CREATED=/var/lib/noderax-agent-deb/created
readonly DEB_EXEC_HOME=/home/noderax
readonly RETIRED_UNIT_DIR=/var/lib/noderax-agent-install/units-before-package
readonly SAFE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Shown instead of the temporary directory by --dry-run.
readonly DRY_TMP=/tmp/noderax-install.XXXXXXXX

# Options and state (set by parse_args and along the way).
DRY_RUN=0
ROOT=""
API_URL=""
TOKEN=""
LOG_LEVEL=info
LOG_LEVEL_GIVEN=0
REQ_VERSION=latest
BINARY_URL=""
RELEASE_SRC_DIR=""
RELEASE_KEY_SRC=""
# --local-release: the release directory was assembled on this host from
# binaries root already runs (noderax-agent install); it carries no signature.
LOCAL_RELEASE=0
EXEC_HOME=$DEFAULT_EXEC_HOME
ARCH=""
VERSION=""
TMP=""
# Suffix of temporary names; a fixed word under --dry-run.
TAG=$$
RELEASE_SRC=""
STEP="starting"
# The last command run() showed, for the failure report.
SHOWN=""
PROGRESS=0
REPORTING=0
SIG_NOTE=""
MANIFEST_PATHS=()
CREATED_USERS=()
CREATED_GROUPS=()
ENABLED=()
# The manifest's `package` field: set when the agent is the Debian package.
MANIFEST_PACKAGE=""
OWN_UID="" OWN_GID=""
# --package: none (the installer lays out the files) or deb.
PACKAGE=none
# --package deb: the Debian version of the release, the .deb's name, the
# paths it ships (dpkg owns them: never listed in the manifest), where its
# config and sudoers drop-in are extracted to, the package's version before
# this run, whether the agent was running, and what an earlier installation
# by this script had listed.
DEB_VERSION=""
DEB_FILE=""
declare -A DEB_OWNED=()
DEB_EXTRACT=""
PKG_BEFORE=""
WAS_ACTIVE=0
# The manifest may be written (under --package deb only once apt-get has
# installed the package: until then it still describes what is installed).
MANIFEST_OPEN=1
OLD_PATHS=()
OLD_USERS=()
OLD_GROUPS=()
OLD_ENABLED=()
RETIRED_UNITS=()
RETIRED_ENABLED=()

usage() {
    cat <<'EOF'
Usage: install.sh --api-url URL --bootstrap-token TOKEN [options]

Installs the Noderax agent (noderax-agent, noderax-agent-exec and the root
helper noderax-agent-priv) on this Debian or Ubuntu host with systemd,
enrolls it with the bootstrap token and starts it. Re-running upgrades in
place and keeps the identity and the config.

Options:
  --api-url URL          control-plane origin (a trailing /api/v1 is removed)
  --bootstrap-token TOK  the token of the install command from the web UI
  --log-level LEVEL      debug|info|warn|error (default info)
  --version V            release to install, or latest (default latest)
  --binary-url URL       the noderax-agent binary's URL; SHA256SUMS and the
                         other binaries are taken from the same directory
  --release-dir DIR      install from a local directory instead of downloading:
                         DIR holds SHA256SUMS and the binaries, or DIR/<version>/ does
  --release-key FILE     minisign public key of the release signer: SHA256SUMS
                         must carry a valid signature by it; installed as
                         /etc/noderax-agent/release.pub, after which the root
                         helper also requires signed updates
  --local-release        with --release-dir: DIR was assembled on this host
                         from binaries already on it (`noderax-agent install`
                         does this), so no signature is required even when a
                         release key is configured; its SHA256SUMS still is
  --dry-run              print every action without doing any of it (with
                         --package deb the package is still downloaded and
                         verified, into a temporary directory)
  --root DIR             install into DIR as if it were / (tests and images):
                         users go to DIR/etc/passwd, units are enabled with
                         systemctl --root, nothing is started and sudo -l is
                         not checked
  --package deb|none     deb: install the release's Debian package
                         noderax-agent_<debver>_<arch>.deb with apt-get
                         (needs --version V: latest/ has no .deb; excludes
                         --binary-url, --local-release and --root); its
                         SHA256SUMS (and signature) are checked as for the
                         binaries. Remove such an installation with
                         apt-get purge noderax-agent.
                         none (default): lay the files out as described above
  -h, --help             this text

Environment (options win): NODERAX_AGENT_BOOTSTRAP_TOKEN (keeps the token off
the command line), NODERAX_AGENT_VERSION, NODERAX_AGENT_PACKAGE, NODERAX_AGENT_LOG_LEVEL,
NODERAX_AGENT_DOWNLOAD_BASE_URL (default https://cdn.noderax.net/noderax-agent/releases),
NODERAX_AGENT_BINARY_URL, NODERAX_AGENT_RELEASE_DIR, NODERAX_AGENT_RELEASE_KEY,
NODERAX_AGENT_SERVICE_HOME (home of the executor user noderax, default
/home/noderax). NODERAX_AGENT_SERVICE_USER, NODERAX_AGENT_INSTALL_DIR,
NODERAX_AGENT_CONFIG_DIR and NODERAX_AGENT_STATE_DIR are accepted only with
their default values: the units and the root helper use fixed users and paths.
EOF
}

# ---- output -----------------------------------------------------------------

say() { printf '%s\n' "$*"; }
note() { printf 'note: %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# The words of a command as a shell would read them back.
quote_words() {
    local out="" w q="'"
    for w in "$@"; do
        if [[ -n $w && $w =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=" $w"
        else
            out+=" '${w//$q/$q\\$q$q}'"
        fi
    done
    printf '%s' "${out# }"
}

# run CMD...: prints the command, then runs it (not under --dry-run).
run() {
    SHOWN=$(quote_words "$@")
    say "+ $SHOWN"
    [[ $DRY_RUN == 1 ]] || "$@" </dev/null
}

# Whether the release is really fetched and checked: always, but under
# --dry-run only with --package deb (whose plan depends on the package).
fetching_for_real() { [[ $DRY_RUN == 0 || $PACKAGE == deb ]]; }

# run_read CMD...: prints the command and runs it when the release is
# fetched for real: for what only reads the release or writes into the
# temporary directory.
run_read() {
    SHOWN=$(quote_words "$@")
    say "+ $SHOWN"
    if fetching_for_real; then "$@" </dev/null; fi
}

# run_shown TEXT CMD...: prints TEXT (the command with user names instead
# of numeric ids, secrets masked), then runs CMD.
run_shown() {
    SHOWN=$1
    say "+ $1"
    shift
    [[ $DRY_RUN == 1 ]] || "$@" </dev/null
}

# ---- failure and progress ---------------------------------------------------

json_escape() {
    local v
    v=$(printf '%s' "$1" | tr '\n\r\t' '   ' | tr -d '\000-\037')
    v=${v//\\/\\\\}
    v=${v//\"/\\\"}
    printf '%s' "$v"
}

# report STAGE PERCENT STATUS MESSAGE: POST /api/v1/node-installs/progress
# (PROTOCOL.md §3). A failed report never stops the installation.
report() {
    local stage=$1 percent=$2 status=$3 message=$4 payload
    PROGRESS=$percent
    printf '==> [%3d%%] %s: %s\n' "$percent" "$stage" "$message"
    [[ $REPORTING == 1 && $DRY_RUN == 0 ]] || return 0
    if ! command -v curl >/dev/null 2>&1; then
        warn "curl is not installed yet: stage $stage not reported"
        return 0
    fi
    payload=$(printf '{"token":"%s","stage":"%s","status":"%s","progressPercent":%d,"statusMessage":"%s"}' \
        "$(json_escape "$TOKEN")" "$stage" "$status" "$percent" "$(json_escape "${message:0:500}")")
    # The token goes in the body on stdin, not on curl's command line.
    curl -fsS -o /dev/null --connect-timeout 10 --max-time 20 \
        -H 'Content-Type: application/json' -H 'Accept: application/json' \
        --data-binary @- "$API_URL/api/v1/node-installs/progress" <<<"$payload" ||
        warn "could not report stage $stage to $API_URL (the installation continues)"
}

die() {
    local msg=$*
    trap - ERR
    printf 'error: %s\n' "$msg" >&2
    if [[ $REPORTING == 1 && $DRY_RUN == 0 ]]; then
        report failed "$PROGRESS" failed "$msg" >/dev/null
    fi
    exit 1
}

on_err() {
    local rc=$1 cmd=$2
    # In a subshell: leave the report to the shell that waits for it.
    if [[ $BASHPID != "$$" ]]; then exit "$rc"; fi
    # A command of run/run_shown: name it as it was shown.
    [[ $cmd == '"$@"'* ]] && cmd=$SHOWN
    die "$STEP: \`$cmd\` failed (exit status $rc)"
}

cleanup() {
    if [[ -n $TMP && $TMP != "$DRY_TMP" && -d $TMP ]]; then rm -rf -- "$TMP"; fi
}

# ---- small helpers ----------------------------------------------------------

# The path as it is on this machine (under --root DIR: DIR/path).
p() { printf '%s%s' "$ROOT" "$1"; }

# Trims white space and one pair of surrounding quotes (the original
# installer's normalisation of pasted values).
normalize_value() {
    local v=$1
    v=${v#"${v%%[![:space:]]*}"}
    v=${v%"${v##*[![:space:]]}"}
    if [[ ${#v} -ge 2 && ( ($v == \"*\" ) || ($v == \'*\') ) ]]; then
        v=${v:1:${#v}-2}
    fi
    printf '%s' "$v"
}

# normalize_api_url URL: PROTOCOL.md §1.1 — https:// when no scheme, no
# trailing /, no trailing /api/v1 or /v1; http or https with a host.
normalize_api_url() {
    local u
    u=$(normalize_value "$1")
    [[ $u == *://* ]] || u="https://$u"
    while [[ $u == */ ]]; do u=${u%/}; done
    u=${u%/api/v1}
    u=${u%/v1}
    while [[ $u == */ ]]; do u=${u%/}; done
    [[ $u =~ ^https?://[^/?#[:space:]\"\'\\]+(/[^[:space:]\"\'\\]*)?$ ]] || return 1
    printf '%s' "$u"
}

# release_version_ok V: shared::validate::release_version.
release_version_ok() {
    [[ ${#1} -le 64 && $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ && $1 != *..* ]]
}

# Exactly one line of `sudo -l -U noderax` output after the heading, and it
# is the helper: noderax may run the helper as root and nothing else.
check_sudo_listing() {
    local line in_cmds=0 ok=0 other=()
    while IFS= read -r line; do
        line=$(normalize_value "$line")
        if [[ $line == *"may run the following commands"* ]]; then
            in_cmds=1
            continue
        fi
        [[ $in_cmds == 1 && -n $line ]] || continue
        if [[ $line == "(root) NOPASSWD: $HELPER" ]]; then
            ok=1
        else
            other+=("$line")
        fi
    done
    if [[ ${#other[@]} -gt 0 ]]; then
        printf '%s\n' "${other[@]}"
        return 1
    fi
    [[ $ok == 1 ]]
}

# sums_entry SUMS NAME: the lower-case digest SHA256SUMS gives NAME
# (PROTOCOL.md §10.4: "<hex>  <name>", a '*' before the name tolerated).
sums_entry() {
    awk -v n="$2" '
        ($2 == n || $2 == "*" n) && length($1) == 64 && $1 ~ /^[0-9A-Fa-f]+$/ { print tolower($1); c++ }
        END { exit (c == 1 ? 0 : 1) }' "$1"
}

have() { command -v "$1" >/dev/null 2>&1; }

# Account database lookups, in DIR/etc under --root.
db_line() { # db name
    if [[ -n $ROOT ]]; then
        [[ -f $ROOT/etc/$1 ]] && grep -m1 "^$2:" "$ROOT/etc/$1"
    else
        getent "$1" "$2"
    fi
}

field() { # line index
    local IFS=:
    local -a f
    read -r -a f <<<"$1"
    printf '%s' "${f[$2]:-}"
}

# ---- the manifest -------------------------------------------------------------

manifest_load() {
    local f line
    f=$(p "$MANIFEST_FILE")
    [[ -f $f ]] || return 0
    while IFS= read -r line; do
        case $line in
            "# created-groups: "*) read -r -a CREATED_GROUPS <<<"${line#*: }" ;;
            "# created-users: "*) read -r -a CREATED_USERS <<<"${line#*: }" ;;
            "# enabled-units: "*) read -r -a ENABLED <<<"${line#*: }" ;;
            "# package: "*) MANIFEST_PACKAGE=${line#*: } ;;
            /*) MANIFEST_PATHS+=("$line") ;;
        esac
    done <"$f"
}

in_list() { # word list...
    local w=$1 x
    shift
    for x in "$@"; do [[ $x == "$w" ]] && return 0; done
    return 1
}

manifest_text() {
    cat <<'EOF'
# Noderax agent install manifest, format 1.
# Written by the Noderax agent installer (installer/install.sh) and read by
# `noderax-agent uninstall`, which removes what is listed here and nothing else.
# Every line that does not start with '#' is one absolute path the installer
# created or wrote (or, for the agent's own directories, took over from an
# earlier installation), in the order it did so: remove them in reverse order,
# directories only once empty; skip a listed path that no longer exists.
# System directories that existed before (/usr/local/bin, /etc/sudoers.d, ...)
# are never listed.
# Fields ('# key: value', values separated by spaces):
#   created-groups, created-users  accounts the installer added (accounts that
#                                  existed before are not listed)
#   enabled-units                  units it enabled: `systemctl disable --now`
#   runtime-paths                  what the agent and the root helper create
#                                  while they run, not listed path by path
#                                  (releases installed by self-update, the
#                                  `previous` link, the last update's result):
#                                  removed with everything in them
#   state-paths                    the agent's state (identity, tasks, the
#                                  executor's spill files, the root helper's
#                                  audit log): kept, with the listed paths in
#                                  them, unless `noderax-agent uninstall --purge`
#   package                        the agent is this Debian package (install.sh
#                                  --package deb): dpkg owns its files and its
#                                  maintainer scripts the accounts, links and
#                                  units, none of which are listed; uninstall
#                                  refuses and names `apt-get purge PACKAGE`
# Nothing is removed through a symbolic link.
EOF
    say "# created-groups: ${CREATED_GROUPS[*]}"
    say "# created-users: ${CREATED_USERS[*]}"
    say "# enabled-units: ${ENABLED[*]}"
    if [[ $PACKAGE == deb ]]; then
        # Releases, `previous` and the update result lie in dpkg's
        # /opt/noderax-agent: the package's purge removes them.
        say "# runtime-paths: "
        say "# package: $DEB_PACKAGE"
    else
        say "# runtime-paths: $RELEASES_DIR $INSTALL_DIR/previous $INSTALL_DIR/update-result.json"
    fi
    say "# state-paths: $STATE_DIR $EXEC_STATE_DIR /var/log/noderax-agent"
    printf '%s\n' "${MANIFEST_PATHS[@]}"
}

manifest_save() {
    [[ $DRY_RUN == 0 && $MANIFEST_OPEN == 1 ]] || return 0
    local f tmp
    f=$(p "$MANIFEST_FILE")
    [[ -d ${f%/*} ]] || return 0
    tmp="${f%/*}/.manifest.new-$TAG"
    manifest_text >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$f"
}

manifest_add() {
    # What dpkg installed is dpkg's to remove.
    [[ -z ${DEB_OWNED[$1]:-} ]] || return 0
    in_list "$1" "${MANIFEST_PATHS[@]}" || MANIFEST_PATHS+=("$1")
    manifest_save
}

# ---- files, directories, links ----------------------------------------------

# owner_ids USER GROUP -> OWN_UID OWN_GID (numeric; under --root from
# DIR/etc/passwd, so nothing depends on this machine's accounts).
owner_ids() {
    local line
    OWN_UID=$1 OWN_GID=$2
    if [[ $1 != root ]]; then
        line=$(db_line passwd "$1") || line=""
        [[ -n $line ]] && OWN_UID=$(field "$line" 2)
    else
        OWN_UID=0
    fi
    if [[ $2 != root ]]; then
        line=$(db_line group "$2") || line=""
        [[ -n $line ]] && OWN_GID=$(field "$line" 2)
    else
        OWN_GID=0
    fi
    if [[ $DRY_RUN == 0 && ! ( $OWN_UID =~ ^[0-9]+$ && $OWN_GID =~ ^[0-9]+$ ) ]]; then
        die "$STEP: user $1 or group $2 does not exist"
    fi
}

not_a_link() {
    [[ ! -L $(p "$1") ]] || die "$1 is a symbolic link; it must be a plain directory or file (move it away and re-run)"
}

# own_dir PATH USER GROUP MODE: a directory of the agent, with exactly this
# owner and mode; listed in the manifest.
own_dir() {
    local path=$1 user=$2 group=$3 mode=$4 real cur
    real=$(p "$path")
    not_a_link "$path"
    owner_ids "$user" "$group"
    if [[ ! -d $real ]]; then
        run_shown "install -d -o $user -g $group -m $mode $real" \
            install -d -o "$OWN_UID" -g "$OWN_GID" -m "$mode" "$real"
    else
        cur=$(stat -c '%u:%g %a' "$real")
        if [[ $cur != "$OWN_UID:$OWN_GID ${mode#0}" ]]; then
            run_shown "chown $user:$group $real" chown "$OWN_UID:$OWN_GID" "$real"
            run chmod "$mode" "$real"
        fi
    fi
    manifest_add "$path"
}

# shared_dir PATH: a system directory the agent only puts files in; created
# (and then listed) only when missing.
shared_dir() {
    local real
    real=$(p "$1")
    [[ -d $real ]] && return 0
    run install -d -o root -g root -m 0755 "$real"
    manifest_add "$1"
}

# write_file PATH USER GROUP MODE SHOW < CONTENT: writes through a temporary
# file in the same directory and a rename. SHOW: the content under
# --dry-run ("-": print it).
write_file() {
    local path=$1 user=$2 group=$3 mode=$4 show=$5 real tmp content
    content=$(cat)
    real=$(p "$path")
    not_a_link "$path"
    owner_ids "$user" "$group"
    if [[ -f $real && $(stat -c '%u:%g %a' "$real") == "$OWN_UID:$OWN_GID ${mode#0}" ]] &&
        [[ $(cat "$real") == "$content" ]]; then
        manifest_add "$path"
        return 0
    fi
    say "+ write $real ($user:$group $mode)"
    if [[ $DRY_RUN == 1 ]]; then
        if [[ $show == - ]]; then
            printf '%s\n' "$content" | sed 's/^/|   /'
        else
            say "|   ($show)"
        fi
    else
        tmp="${real%/*}/.${real##*/}.new-$TAG"
        rm -f -- "$tmp"
        printf '%s\n' "$content" >"$tmp"
        chown "$OWN_UID:$OWN_GID" "$tmp"
        chmod "$mode" "$tmp"
        mv -f -- "$tmp" "$real"
    fi
    manifest_add "$path"
}

# install_file SRC PATH MODE: a root-owned copy, replaced by a rename.
install_file() {
    local src=$1 path=$2 mode=$3 real
    real=$(p "$path")
    if [[ $DRY_RUN == 0 && -f $real && ! -L $real ]] && cmp -s "$src" "$real" &&
        [[ $(stat -c '%u:%g %a' "$real") == "0:0 ${mode#0}" ]]; then
        manifest_add "$path"
        return 0
    fi
    run install -o root -g root -m "$mode" "$src" "${real%/*}/.${real##*/}.new-$TAG"
    run mv -f "${real%/*}/.${real##*/}.new-$TAG" "$real"
    manifest_add "$path"
}

# set_link PATH TARGET: a symbolic link, replaced atomically.
set_link() {
    local path=$1 target=$2 real tmp
    real=$(p "$path")
    if [[ -L $real && $(readlink "$real") == "$target" ]]; then
        manifest_add "$path"
        return 0
    fi
    [[ ! -d $real || -L $real ]] || die "$path is a directory; it must be a symbolic link (move it away and re-run)"
    tmp="${real%/*}/.${real##*/}.new-$TAG"
    run ln -sfn "$target" "$tmp"
    run mv -Tf "$tmp" "$real"
    manifest_add "$path"
}

# as_user USER HOME [VAR=VALUE...] -- CMD...: runs CMD in / as USER (no
# supplementary groups, no capabilities) with only the given environment.
# Prints nothing: show_as_user prints it, with user names and the bootstrap
# token masked.
as_user() {
    local user=$1 home=$2
    shift 2
    local -a envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    owner_ids "$user" "$user"
    (cd / && env -i PATH="$SAFE_PATH" HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 "${envs[@]}" \
        setpriv --reuid="$OWN_UID" --regid="$OWN_GID" --clear-groups --inh-caps=-all -- "$@")
}

show_as_user() {
    local user=$1 home=$2 e
    shift 2
    local -a envs=()
    while [[ $1 != -- ]]; do
        e=$1
        [[ $e == NODERAX_BOOTSTRAP_TOKEN=* ]] && e="NODERAX_BOOTSTRAP_TOKEN=<bootstrap token>"
        envs+=("$e")
        shift
    done
    shift
    SHOWN="cd / && $(quote_words env -i PATH="$SAFE_PATH" HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 "${envs[@]}" \
        setpriv --reuid="$user" --regid="$user" --clear-groups --inh-caps=-all -- "$@")"
    say "+ $SHOWN"
}

# ---- phases -------------------------------------------------------------------

parse_args() {
    local v
    REQ_VERSION=$(normalize_value "${NODERAX_AGENT_VERSION:-latest}")
    v=$(normalize_value "${NODERAX_AGENT_LOG_LEVEL:-}")
    if [[ -n $v ]]; then LOG_LEVEL=$v; LOG_LEVEL_GIVEN=1; fi
    BINARY_URL=$(normalize_value "${NODERAX_AGENT_BINARY_URL:-}")
    RELEASE_SRC_DIR=$(normalize_value "${NODERAX_AGENT_RELEASE_DIR:-}")
    RELEASE_KEY_SRC=$(normalize_value "${NODERAX_AGENT_RELEASE_KEY:-}")
    TOKEN=$(normalize_value "${NODERAX_AGENT_BOOTSTRAP_TOKEN:-}")
    PACKAGE=$(normalize_value "${NODERAX_AGENT_PACKAGE:-}")
    while [[ $# -gt 0 ]]; do
        case $1 in
            --dry-run) DRY_RUN=1; shift; continue ;;
            --local-release) LOCAL_RELEASE=1; shift; continue ;;
            -h | --help) usage; exit 0 ;;
            --api-url | --bootstrap-token | --log-level | --version | --binary-url | --release-dir | --release-key | --root | --package)
                [[ $# -ge 2 ]] || { usage >&2; say "error: $1 needs a value" >&2; exit 2; }
                v=$(normalize_value "$2") ;;
            *) usage >&2; say "error: unknown argument: $1" >&2; exit 2 ;;
        esac
        case $1 in
            --api-url) API_URL=$v ;;
            --bootstrap-token) TOKEN=$v ;;
            --log-level) LOG_LEVEL=$v; LOG_LEVEL_GIVEN=1 ;;
            --version) REQ_VERSION=$v ;;
            --binary-url) BINARY_URL=$v ;;
            --release-dir) RELEASE_SRC_DIR=$v ;;
            --release-key) RELEASE_KEY_SRC=$v ;;
            --root) ROOT=$v ;;
            --package) PACKAGE=$v ;;
        esac
        shift 2
    done
    if [[ -z $API_URL || -z $TOKEN ]]; then
        usage >&2
        say "error: --api-url and --bootstrap-token are required" >&2
        exit 2
    fi
    local raw=$API_URL
    API_URL=$(normalize_api_url "$raw") || { say "error: --api-url $raw is not an http(s) URL with a host" >&2; exit 2; }
    if [[ ${#TOKEN} -lt 8 || $TOKEN =~ [[:space:][:cntrl:]] ]]; then
        say "error: the bootstrap token must be at least 8 characters without spaces" >&2
        exit 2
    fi
    case $LOG_LEVEL in
        debug | info | warn | error) ;;
        *) say "error: log level $LOG_LEVEL is not one of debug, info, warn, error" >&2; exit 2 ;;
    esac
    [[ -n $REQ_VERSION ]] || REQ_VERSION=latest
    if [[ $REQ_VERSION != latest ]] && ! release_version_ok "$REQ_VERSION"; then
        say "error: version $REQ_VERSION is not a release version (letters, digits, '.', '_', '-')" >&2
        exit 2
    fi
    if [[ -n $BINARY_URL && ! $BINARY_URL =~ ^https?://[^[:space:]]+/[^/[:space:]]+$ ]]; then
        say "error: --binary-url $BINARY_URL is not an http(s) URL of a file" >&2
        exit 2
    fi
    if [[ -n $BINARY_URL && -n $RELEASE_SRC_DIR ]]; then
        say "error: --binary-url and --release-dir exclude each other" >&2
        exit 2
    fi
    if [[ -n $RELEASE_SRC_DIR && ! -d $RELEASE_SRC_DIR ]]; then
        say "error: --release-dir $RELEASE_SRC_DIR is not a directory" >&2
        exit 2
    fi
    if [[ $LOCAL_RELEASE == 1 && ( -z $RELEASE_SRC_DIR || -n $RELEASE_KEY_SRC ) ]]; then
        say "error: --local-release needs --release-dir and excludes --release-key" >&2
        exit 2
    fi
    if [[ -n $RELEASE_KEY_SRC ]]; then
        [[ -f $RELEASE_KEY_SRC ]] || { say "error: --release-key $RELEASE_KEY_SRC is not a file" >&2; exit 2; }
        RELEASE_KEY_SRC=$(realpath -- "$RELEASE_KEY_SRC")
    fi
    if [[ -n $RELEASE_SRC_DIR ]]; then RELEASE_SRC_DIR=$(realpath -- "$RELEASE_SRC_DIR"); fi
    if [[ -n $ROOT ]]; then
        [[ $ROOT == /* && -d $ROOT ]] || { say "error: --root $ROOT is not an existing absolute directory" >&2; exit 2; }
        while [[ $ROOT == */ ]]; do ROOT=${ROOT%/}; done
    fi
    check_layout_overrides
    check_package_args
}

# deb_version V: the Debian version of release V, as scripts/build-release.sh
# names the package (a pre-release after '-' or '_' becomes '~', which sorts
# before the release in dpkg; Debian versions start with a digit).
deb_version() {
    local d=${1//[-_]/\~}
    [[ $d =~ ^[0-9][A-Za-z0-9.~]*$ ]] || return 1
    printf '%s' "$d"
}

# --package: what the .deb cannot do is refused before anything happens.
check_package_args() {
    case ${PACKAGE:-none} in
        none) PACKAGE=none; return 0 ;;
        deb) ;;
        *) say "error: --package $PACKAGE: expected deb (install the release's .deb) or none (the default)" >&2; exit 2 ;;
    esac
    if [[ $REQ_VERSION == latest ]]; then
        say "error: --package deb needs a release version (--version V or NODERAX_AGENT_VERSION=V): releases/latest/ publishes no .deb (releases/catalog.json lists the versions)" >&2
        exit 2
    fi
    DEB_VERSION=$(deb_version "$REQ_VERSION") || {
        say "error: release $REQ_VERSION has no .deb (a Debian version starts with a digit); install it without --package deb" >&2
        exit 2
    }
    if [[ -n $BINARY_URL ]]; then
        say "error: --binary-url names a binary; --package deb downloads noderax-agent_${DEB_VERSION}_<arch>.deb from the release directory of --version (NODERAX_AGENT_DOWNLOAD_BASE_URL or --release-dir)" >&2
        exit 2
    fi
    if [[ $LOCAL_RELEASE == 1 ]]; then
        say "error: --local-release installs this host's programs file by file; it excludes --package deb" >&2
        exit 2
    fi
    if [[ -n $ROOT ]]; then
        say "error: --package deb installs with apt-get into this system; it cannot install into --root $ROOT" >&2
        exit 2
    fi
    if [[ $EXEC_HOME != "$DEB_EXEC_HOME" ]]; then
        say "error: NODERAX_AGENT_SERVICE_HOME=$EXEC_HOME is not supported with --package deb: the package gives $EXEC_USER the home $DEB_EXEC_HOME" >&2
        exit 2
    fi
}

# The original installer's layout variables (PROTOCOL.md §12) are honoured
# only with their defaults: the units, the root helper (which trusts fixed
# root-owned paths) and the executor's sudo rule name these users and paths.
check_layout_overrides() {
    local name want have_v pair
    for pair in NODERAX_AGENT_SERVICE_USER=$EXEC_USER NODERAX_AGENT_INSTALL_DIR=$INSTALL_DIR \
        NODERAX_AGENT_CONFIG_DIR=$CONFIG_DIR NODERAX_AGENT_STATE_DIR=$STATE_DIR; do
        name=${pair%%=*}
        want=${pair#*=}
        have_v=$(normalize_value "${!name:-}")
        have_v=${have_v%/}
        if [[ -n $have_v && $have_v != "$want" ]]; then
            say "error: $name=$have_v is not supported: this agent's users and paths are fixed ($want) because the systemd units and the root helper depend on them" >&2
            exit 2
        fi
    done
    have_v=$(normalize_value "${NODERAX_AGENT_SERVICE_HOME:-}")
    have_v=${have_v%/}
    if [[ -n $have_v && $have_v != "$STATE_DIR" ]]; then
        if [[ $have_v != /* || $have_v =~ [[:space:]] || $have_v == / ||
            $have_v == "$STATE_DIR"/* || $have_v == "$EXEC_STATE_DIR" || $have_v == "$EXEC_STATE_DIR"/* ||
            $have_v == "$INSTALL_DIR" || $have_v == "$INSTALL_DIR"/* || $have_v == "$CONFIG_DIR" || $have_v == "$CONFIG_DIR"/* ]]; then
            say "error: NODERAX_AGENT_SERVICE_HOME=$have_v: the home of $EXEC_USER must be an absolute path outside the agent's directories" >&2
            exit 2
        fi
        EXEC_HOME=$have_v
    fi
    # The original's default home, /var/lib/noderax-agent, is now the network
    # process's private state directory: noderax keeps its own home.
}

check_host() {
    STEP="checking this host"
    local os_file id="" like="" pretty="" m
    if [[ $EUID -ne 0 ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            say "host: not running as root: a real installation would stop here (run it with sudo)"
        else
            say "error: run the installer as root, e.g. curl -fsSL https://cdn.noderax.net/noderax-agent/install.sh | sudo bash -s -- --api-url '$API_URL' --bootstrap-token '<token>'" >&2
            exit 1
        fi
    fi
    # Failures from here on are reported to the control plane.
    REPORTING=1
    [[ $(uname -s) == Linux ]] || die "only Linux hosts are supported"
    os_file=$(p /etc/os-release)
    [[ -r $os_file ]] || os_file=/etc/os-release
    [[ -r $os_file ]] || die "cannot read /etc/os-release to detect the distribution"
    # shellcheck disable=SC1090
    IFS='|' read -r id like pretty < <(. "$os_file" && printf '%s|%s|%s\n' "${ID:-}" "${ID_LIKE:-}" "${PRETTY_NAME:-${ID:-}}")
    case " $id $like " in
        *" debian "* | *" ubuntu "*) ;;
        *) die "this installer supports Debian and Ubuntu only (this is ${pretty:-unknown})" ;;
    esac
    m=$(uname -m)
    case $m in
        x86_64 | amd64) ARCH=amd64 ;;
        aarch64 | arm64) ARCH=arm64 ;;
        *) die "no agent releases exist for the $m architecture (only amd64 and arm64)" ;;
    esac
    say "host: $pretty, $m ($ARCH)"
    have apt-get || die "apt-get is required on the target host"
    check_package_state
    if [[ -n $ROOT ]]; then
        say "host: --root $ROOT: systemd is not used (units are only enabled in $ROOT)"
    elif [[ -d /run/systemd/system ]]; then
        say "host: systemd is PID 1"
    elif [[ $DRY_RUN == 1 ]]; then
        say "host: systemd is not running as PID 1: a real installation would stop here"
    else
        die "systemd is not running as PID 1 on this host; the agent runs as systemd units"
    fi
}

# package_status: "STATUS VERSION" of the noderax-agent package in dpkg's
# database (under --root, DIR's), empty when dpkg never heard of it.
package_status() {
    local admin
    admin=$(p /var/lib/dpkg)
    [[ -f $admin/status ]] && have dpkg-query || return 0
    dpkg-query --admindir="$admin" -W -f='${db:Status-Status} ${Version}' "$DEB_PACKAGE" 2>/dev/null || true
}

# The two ways of installing must not mix: dpkg would remove (on purge) or
# overwrite (on upgrade) what this script wrote in its place, and this
# script's manifest would list dpkg's files.
check_package_state() {
    local st status version t
    if [[ $PACKAGE == deb ]]; then
        for t in dpkg dpkg-query dpkg-deb tar; do
            have "$t" || die "$t is not available on this host (--package deb needs it)"
        done
    fi
    st=$(package_status)
    status=${st%% *}
    version=${st#* }
    case $status in
        "" | not-installed) return 0 ;;
        installed) PKG_BEFORE=$version ;;
    esac
    if [[ $PACKAGE == none ]]; then
        if [[ $status == config-files ]]; then
            die "the removed noderax-agent package left its configuration files (dpkg still owns /etc/noderax-agent/config.json and /etc/sudoers.d/noderax-agent): purge it first (apt-get purge noderax-agent), or install with --package deb --version V"
        fi
        if [[ $status != installed ]]; then
            die "dpkg has the noderax-agent package $version in state $status, so it owns the agent's files: finish or undo that (dpkg --audit; apt-get purge noderax-agent), or install with --package deb --version V"
        fi
        die "the noderax-agent package $version is installed, so dpkg owns the agent's files: upgrade with --package deb --version V, or remove the package first (apt-get purge noderax-agent)"
    fi
    if [[ -z $PKG_BEFORE ]]; then
        say "host: the noderax-agent package is in dpkg state $status"
        return 0
    fi
    if dpkg --compare-versions "$PKG_BEFORE" gt "$DEB_VERSION"; then
        die "the installed noderax-agent package $PKG_BEFORE is newer than $DEB_VERSION: the installer does not downgrade (apt-get install --allow-downgrades ./noderax-agent_${DEB_VERSION}_$ARCH.deb does)"
    fi
    say "host: the noderax-agent package $PKG_BEFORE is installed"
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# A release key is configured: given now, or installed by an earlier run.
# A local release (--local-release) is not checked against it.
release_key() {
    if [[ $LOCAL_RELEASE == 1 ]]; then
        return 1
    elif [[ -n $RELEASE_KEY_SRC ]]; then
        printf '%s' "$RELEASE_KEY_SRC"
    elif [[ -f $(p "$RELEASE_KEY_FILE") ]]; then
        p "$RELEASE_KEY_FILE"
    else
        return 1
    fi
}

install_dependencies() {
    STEP="installing the required packages"
    local missing=() t
    have curl || missing+=(curl)
    if ! have sudo || ! have visudo; then missing+=(sudo); fi
    pkg_installed ca-certificates || missing+=(ca-certificates)
    if release_key >/dev/null && ! have minisign; then missing+=(minisign); fi
    if [[ ${#missing[@]} -gt 0 ]]; then
        report dependencies_installing 18 installing "Installing required operating system packages: ${missing[*]}."
        if [[ -n $ROOT && $DRY_RUN == 0 ]]; then
            die "--root: install ${missing[*]} on this machine first"
        fi
        run env DEBIAN_FRONTEND=noninteractive apt-get update -q
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [[ $DRY_RUN == 0 ]]; then
        for t in curl sudo visudo setpriv flock sha256sum install getent useradd groupadd usermod systemctl; do
            have "$t" || die "$t is not available on this host"
        done
    fi
    report dependencies_ready 30 installing "Required operating system packages are ready."
}

ensure_group() {
    local name=$1 prefix=()
    [[ -n $ROOT ]] && prefix=(--prefix "$ROOT")
    db_line group "$name" >/dev/null && return 0
    run groupadd "${prefix[@]}" --system "$name"
    in_list "$name" "${CREATED_GROUPS[@]}" || CREATED_GROUPS+=("$name")
    manifest_save
}

# ensure_user NAME HOME COMMENT: a system account without login, locked.
ensure_user() {
    local name=$1 home=$2 comment=$3 line uid shell cur_home pw prefix=()
    [[ -n $ROOT ]] && prefix=(--prefix "$ROOT")
    if line=$(db_line passwd "$name"); then
        uid=$(field "$line" 2)
        cur_home=$(field "$line" 5)
        shell=$(field "$line" 6)
        if [[ $uid -ge 1000 && $uid -ne 65534 ]]; then
            die "user $name exists and is not a system account (uid $uid); the agent needs its own system user $name: rename or remove that account and re-run"
        fi
        if [[ $cur_home != "$home" ]]; then
            run usermod "${prefix[@]}" --home "$home" "$name"
        fi
        case $shell in
            /usr/sbin/nologin | /sbin/nologin | /bin/false | /usr/bin/false) ;;
            *) run usermod "${prefix[@]}" --shell "$NOLOGIN" "$name" ;;
        esac
        pw=$(field "$(db_line shadow "$name" || true)" 1)
        if [[ $pw != '!'* && $pw != '*'* ]]; then
            run usermod "${prefix[@]}" --lock "$name"
        fi
        return 0
    fi
    run useradd "${prefix[@]}" --system --gid "$name" --home-dir "$home" --no-create-home \
        --shell "$NOLOGIN" --comment "$comment" "$name"
    in_list "$name" "${CREATED_USERS[@]}" || CREATED_USERS+=("$name")
    manifest_save
}

# noderax in group noderax-net (primary or supplementary)?
exec_in_net_group() {
    local net exec_line
    net=$(db_line group "$NET_USER") || return 1
    exec_line=$(db_line passwd "$EXEC_USER") || return 1
    [[ $(field "$exec_line" 3) == "$(field "$net" 2)" ]] && return 0
    [[ ,$(field "$net" 3), == *,"$EXEC_USER",* ]]
}

create_accounts_and_dirs() {
    STEP="creating the service users and directories"
    manifest_load
    shared_dir /var/lib
    own_dir "$MANIFEST_DIR" root root 0755
    manifest_add "$MANIFEST_FILE"
    ensure_group "$NET_USER"
    ensure_user "$NET_USER" "$NET_HOME" "Noderax agent network process"
    ensure_group "$EXEC_USER"
    ensure_user "$EXEC_USER" "$EXEC_HOME" "Noderax agent executor"
    if exec_in_net_group; then
        die "user $EXEC_USER is a member of group $NET_USER: tasks could then read the agent's config and reach its socket; remove it (gpasswd -d $EXEC_USER $NET_USER) and re-run"
    fi

    own_dir "$CONFIG_DIR" root root 0755
    own_dir "$INSTALL_DIR" root root 0755
    own_dir "$RELEASES_DIR" root root 0755
    own_dir "$STATE_DIR" "$NET_USER" "$NET_USER" 0700
    own_dir "$EXEC_STATE_DIR" "$EXEC_USER" "$EXEC_USER" 0700
    [[ -n ${EXEC_HOME%/*} ]] && shared_dir "${EXEC_HOME%/*}"
    own_dir "$EXEC_HOME" "$EXEC_USER" "$EXEC_USER" 0700
    shared_dir /usr/local/libexec
    shared_dir /usr/local/bin
    shared_dir "$SUDOERS_DIR"
    shared_dir "$UNIT_DIR"
    # An earlier install (the original agent's) may have left the state
    # directory's files to another owner: it all belongs to noderax-net.
    owner_ids "$NET_USER" "$NET_USER"
    if [[ $DRY_RUN == 0 ]] && find "$(p "$STATE_DIR")" ! -user "$OWN_UID" -print -quit 2>/dev/null | grep -q .; then
        run_shown "chown -R $NET_USER:$NET_USER $(p "$STATE_DIR")" chown -R "$OWN_UID:$OWN_GID" "$(p "$STATE_DIR")"
    fi
    report service_user_ready 45 installing "Service users $EXEC_USER and $NET_USER and their directories are ready."
}

# The checks of --package deb at service_user_ready: the package's postinst
# creates (or adopts) the users and directories, so this only refuses early,
# with the way out, what postinst would refuse later, and what would defeat
# the package's units. Nothing is changed yet.
check_package_accounts() {
    STEP="checking the service users"
    local name line uid u
    for name in "$NET_USER" "$EXEC_USER"; do
        line=$(db_line passwd "$name") || continue
        uid=$(field "$line" 2)
        if [[ $uid -ge 1000 && $uid -ne 65534 ]]; then
            die "user $name exists and is not a system account (uid $uid); the agent needs its own system user $name: rename or remove that account and re-run"
        fi
    done
    if exec_in_net_group; then
        die "user $EXEC_USER is a member of group $NET_USER: tasks could then read the agent's config and reach its socket; remove it (gpasswd -d $EXEC_USER $NET_USER) and re-run"
    fi
    if line=$(db_line passwd "$EXEC_USER") && [[ $(field "$line" 5) != "$DEB_EXEC_HOME" ]]; then
        note "the package sets the home of $EXEC_USER to $DEB_EXEC_HOME (it is $(field "$line" 5))"
    fi
    manifest_load
    # An earlier installation by this script: what it listed decides what
    # is retired or handed over once the package is in; this run's manifest
    # starts empty (see install_package).
    OLD_PATHS=("${MANIFEST_PATHS[@]}")
    OLD_USERS=("${CREATED_USERS[@]}")
    OLD_GROUPS=("${CREATED_GROUPS[@]}")
    OLD_ENABLED=("${ENABLED[@]}")
    MANIFEST_PATHS=() CREATED_USERS=() CREATED_GROUPS=() ENABLED=()
    MANIFEST_OPEN=0
    # A unit file in /etc/systemd/system overrides the package's in
    # /lib/systemd/system. The installer's own copies are retired; anyone
    # else's (the original Go agent's) is not the installer's to remove.
    # Once the package is installed, such a file is its administrator's
    # override (systemctl edit --full) and stays.
    for u in "${UNITS[@]}"; do
        if [[ -e $(p "$UNIT_DIR/$u") ]] && ! in_list "$UNIT_DIR/$u" "${OLD_PATHS[@]}"; then
            if [[ -n $PKG_BEFORE ]]; then
                note "$UNIT_DIR/$u overrides the package's unit in /lib/systemd/system (kept: it is not the installer's)"
                continue
            fi
            die "$UNIT_DIR/$u exists and is not from this installer (not in $MANIFEST_FILE): it would override the package's unit in /lib/systemd/system; move it away (systemctl disable $u; mv $UNIT_DIR/$u /root/) and re-run"
        fi
    done
    report service_user_ready 45 installing "Checked the service users $EXEC_USER and $NET_USER; the noderax-agent package creates them (or adopts the existing ones) and their directories."
}

# fetch NAME DEST [optional]: from the release directory or URL.
fetch() {
    local name=$1 dest=$2 optional=${3:-}
    if [[ -n $RELEASE_SRC_DIR ]]; then
        if [[ ! -f $RELEASE_SRC/$name ]]; then
            [[ -n $optional ]] && return 1
            die "$RELEASE_SRC/$name is missing"
        fi
        run_read install -m 0600 "$RELEASE_SRC/$name" "$dest"
    elif [[ -n $optional ]]; then
        say "+ $(quote_words curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$dest" "$RELEASE_SRC/$name") (if published)"
        fetching_for_real || return 1
        curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$dest" "$RELEASE_SRC/$name" 2>/dev/null </dev/null
    else
        run_read curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$dest" "$RELEASE_SRC/$name"
    fi
}

verify_signature() {
    local key sums=$TMP/SHA256SUMS
    if [[ $LOCAL_RELEASE == 1 ]]; then
        SIG_NOTE="signature not checked: binaries from this host (--local-release)"
        note "$SIG_NOTE"
        return 0
    fi
    if ! key=$(release_key); then
        if ! fetching_for_real; then
            SIG_NOTE="signature not checked (no release key: pass --release-key FILE)"
        elif [[ -f $sums.minisig ]]; then
            SIG_NOTE="signature not checked: SHA256SUMS.minisig is published, but no release key was given (--release-key FILE)"
        else
            SIG_NOTE="signature not checked: no release key given and no SHA256SUMS.minisig published"
        fi
        note "$SIG_NOTE"
        return 0
    fi
    if fetching_for_real && [[ ! -f $sums.minisig ]]; then
        die "a release key is configured ($key) but the release has no SHA256SUMS.minisig; refusing an unsigned release"
    fi
    if ! have minisign && fetching_for_real; then
        [[ $DRY_RUN == 0 ]] || die "a release key is configured ($key) but minisign is not installed (a dry run installs nothing: install minisign first)"
        die "a release key is configured ($key) but minisign is not installed"
    fi
    run_read minisign -V -p "$key" -m "$sums" -x "$sums.minisig" ||
        die "the signature of SHA256SUMS does not verify with $key: the release is corrupt or not from the expected signer; nothing was installed"
    SIG_NOTE="signature of SHA256SUMS verified with $key"
}

# Sets RELEASE_SRC: the release directory, local or a URL.
release_source() {
    if [[ -n $RELEASE_SRC_DIR ]]; then
        if [[ -f $RELEASE_SRC_DIR/SHA256SUMS ]]; then
            RELEASE_SRC=$RELEASE_SRC_DIR
        else
            RELEASE_SRC=$RELEASE_SRC_DIR/$REQ_VERSION
        fi
    elif [[ -n $BINARY_URL ]]; then
        RELEASE_SRC=${BINARY_URL%/*}
    else
        local base
        base=$(normalize_value "${NODERAX_AGENT_DOWNLOAD_BASE_URL:-$DEFAULT_BASE_URL}")
        while [[ $base == */ ]]; do base=${base%/}; done
        [[ $base =~ ^https?://[^[:space:]]+$ ]] || die "NODERAX_AGENT_DOWNLOAD_BASE_URL=$base is not an http(s) URL"
        RELEASE_SRC=$base/$REQ_VERSION
    fi
    if [[ $RELEASE_SRC == http://* && -z $(release_key || true) ]]; then
        warn "downloading over plain http without a release key: the checksums protect against corruption, not tampering"
    fi
}

# The temporary directory for the download (a placeholder under --dry-run,
# unless the release is fetched for real).
make_tmp() {
    if fetching_for_real; then
        TMP=$(mktemp -d /tmp/noderax-install.XXXXXXXX)
        # noderax-net runs the downloaded binary (version) from here, and
        # apt's _apt user reads the package from here.
        chmod 0711 "$TMP"
    else
        TMP=$DRY_TMP
    fi
    say "+ mkdir $TMP (temporary, removed at exit)"
}

# check_sums NAME...: the downloaded files against the downloaded SHA256SUMS.
check_sums() {
    local name want got
    say "+ check the SHA-256 of $* against SHA256SUMS"
    fetching_for_real || return 0
    for name in "$@"; do
        want=$(sums_entry "$TMP/SHA256SUMS" "$name") ||
            die "SHA256SUMS from $RELEASE_SRC lists $name not exactly once; nothing was installed"
        got=$(sha256sum "$TMP/$name" | cut -d' ' -f1)
        [[ $got == "$want" ]] ||
            die "SHA-256 mismatch for $name from $RELEASE_SRC: got $got, SHA256SUMS says $want; the download is corrupt or tampered with, nothing was installed"
    done
}

download_and_verify() {
    STEP="downloading the agent"
    local agent_name="noderax-agent-linux-$ARCH" name out reported
    local -a names
    release_source
    [[ -n $BINARY_URL ]] && agent_name=${BINARY_URL##*/}
    names=("$agent_name" "noderax-agent-exec-linux-$ARCH" "noderax-agent-priv-linux-$ARCH")
    report binary_download_started 60 installing "Downloading the Noderax agent ($REQ_VERSION, $ARCH) from $RELEASE_SRC."
    make_tmp
    fetch SHA256SUMS "$TMP/SHA256SUMS"
    fetch SHA256SUMS.minisig "$TMP/SHA256SUMS.minisig" optional || true
    for name in "${names[@]}"; do
        fetch "$name" "$TMP/$name"
    done

    STEP="verifying the download"
    verify_signature
    check_sums "${names[@]}"
    [[ $DRY_RUN == 1 ]] || chmod 0755 "$TMP/$agent_name"

    # The release's own version names its directory (the root helper's
    # updates and the control plane's rollouts compare it byte for byte).
    STEP="reading the version of the downloaded agent"
    show_as_user "$NET_USER" "$(p "$NET_HOME")" -- "$TMP/$agent_name" version
    if [[ $DRY_RUN == 1 ]]; then
        if [[ $REQ_VERSION == latest ]]; then VERSION="<version>"; else VERSION=$REQ_VERSION; fi
    else
        out=$(as_user "$NET_USER" "$(p "$NET_HOME")" -- "$TMP/$agent_name" version 2>&1) ||
            die "the downloaded noderax-agent does not run on this host: ${out:0:300}"
        reported=$(head -n1 <<<"$out")
        reported=${reported#noderax-agent }
        release_version_ok "$reported" || die "the downloaded noderax-agent reports an invalid version: ${out:0:200}"
        if [[ $REQ_VERSION != latest && $reported != "$REQ_VERSION" ]]; then
            die "the binaries published as version $REQ_VERSION report version $reported; nothing was installed"
        fi
        VERSION=$reported
    fi
    local what="SHA-256 verified"
    [[ $SIG_NOTE == "signature of"* ]] && what="SHA-256 and signature verified"
    report binary_downloaded 74 installing "Agent $VERSION binaries downloaded ($what). Installing them and bootstrapping node credentials next."
}

# --package deb: noderax-agent_<debver>_<arch>.deb of the requested release
# and its SHA256SUMS (+ signature), verified, and the package's control
# fields checked. Under --dry-run too: nothing is installed, and the rest of
# the plan needs to know what the package ships.
download_and_verify_package() {
    STEP="downloading the agent package"
    local deb field want got
    DEB_FILE=${DEB_PACKAGE}_${DEB_VERSION}_$ARCH.deb
    release_source
    report binary_download_started 60 installing "Downloading the Noderax agent package $DEB_FILE ($REQ_VERSION) from $RELEASE_SRC."
    make_tmp
    deb=$TMP/$DEB_FILE
    fetch SHA256SUMS "$TMP/SHA256SUMS"
    fetch SHA256SUMS.minisig "$TMP/SHA256SUMS.minisig" optional || true
    fetch "$DEB_FILE" "$deb"

    STEP="verifying the download"
    verify_signature
    check_sums "$DEB_FILE"
    say "+ dpkg-deb --field $deb Package Version Architecture (must be $DEB_PACKAGE $DEB_VERSION $ARCH)"
    for field in Package Version Architecture; do
        case $field in
            Package) want=$DEB_PACKAGE ;;
            Version) want=$DEB_VERSION ;;
            Architecture) want=$ARCH ;;
        esac
        got=$(dpkg-deb --field "$deb" "$field" 2>&1) ||
            die "$DEB_FILE from $RELEASE_SRC is not a Debian package (dpkg-deb: ${got:0:200}); nothing was installed"
        [[ $got == "$want" ]] ||
            die "$DEB_FILE from $RELEASE_SRC says $field: $got, not $want; nothing was installed"
    done
    # What dpkg will own: never listed in the manifest. The conffiles are
    # taken out for the plan and for an earlier installation's sudoers
    # drop-in (see adopt_packaged_sudoers).
    say "+ dpkg-deb --fsys-tarfile $deb | tar -t (what the package ships)"
    while IFS= read -r field; do
        field=${field#.}
        field=${field%/}
        [[ -n $field ]] && DEB_OWNED[$field]=1
    done < <(dpkg-deb --fsys-tarfile "$deb" | tar -t)
    [[ -n ${DEB_OWNED[$RELEASES_DIR/$REQ_VERSION/noderax-agent]:-} ]] ||
        die "$DEB_FILE does not ship $RELEASES_DIR/$REQ_VERSION/noderax-agent: it is not release $REQ_VERSION; nothing was installed"
    local -a members=(".$CONFIG_FILE" ".$SUDOERS_FILE")
    [[ -z ${DEB_OWNED[$RELEASE_KEY_FILE]:-} ]] || members+=(".$RELEASE_KEY_FILE")
    DEB_EXTRACT=$TMP/package
    mkdir "$DEB_EXTRACT"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$DEB_EXTRACT" "${members[@]}" ||
        die "$DEB_FILE lacks $CONFIG_FILE or $SUDOERS_FILE: it is not a package this installer knows; nothing was installed"
    # apt-get reads the file as its unprivileged user _apt.
    chmod 0644 "$deb"
    VERSION=$REQ_VERSION
    local what="SHA-256 verified"
    [[ $SIG_NOTE == "signature of"* ]] && what="SHA-256 and signature verified"
    report binary_downloaded 74 installing "Agent $VERSION package downloaded ($what). Installing it and bootstrapping node credentials next."
}

# --package deb: apt-get installs the verified package (resolving its
# dependencies; --force-confold keeps conffiles changed locally, such as
# the config an earlier installation wrote). Before that, the unit copies of
# an earlier installation by this script are retired and its sudoers drop-in
# becomes the package's; after it, its accounts are handed to the package
# and this run's manifest replaces the earlier one.
install_package() {
    STEP="installing the noderax-agent package"
    local real got deb=$TMP/$DEB_FILE
    # One installer or update at a time (the root helper takes this lock
    # too); nothing can be updating before /opt/noderax-agent exists. The
    # lock file is the helper's as well, and the package's purge removes it.
    if [[ -d $(p "$INSTALL_DIR") ]]; then
        if [[ $DRY_RUN == 0 ]]; then
            real=$(p "$UPDATE_LOCK")
            [[ -e $real ]] || install -o root -g root -m 0600 /dev/null "$real"
            exec 9>>"$real"
            flock -n 9 || die "another installation or update is running (lock $UPDATE_LOCK); wait for it and re-run"
        fi
        say "+ flock $UPDATE_LOCK"
    fi
    if [[ $DRY_RUN == 0 ]] && systemctl is-active --quiet "$MAIN_UNIT" 2>/dev/null; then WAS_ACTIVE=1; fi
    if [[ $MANIFEST_PACKAGE != "$DEB_PACKAGE" ]]; then
        # The sudoers text first: if visudo refused it, nothing else would
        # have changed. Nothing but apt-get comes between retiring the
        # units and putting them back.
        adopt_packaged_sudoers
        retire_script_units
    fi

    STEP="installing the noderax-agent package"
    if ! run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "$deb"; then
        if [[ ${#RETIRED_UNITS[@]} -gt 0 ]]; then
            restore_script_units
            die "apt-get could not install $DEB_FILE (see its output above); the units of the earlier installation are back in $UNIT_DIR. If dpkg left the package half-installed (dpkg --audit), fix the cause and re-run"
        fi
        die "apt-get could not install $DEB_FILE (see its output above); if dpkg left the package half-installed (dpkg --audit), fix the cause and re-run"
    fi
    if [[ $DRY_RUN == 0 ]]; then
        got=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$DEB_PACKAGE" 2>&1) || true
        [[ $got == "installed $DEB_VERSION" ]] ||
            die "apt-get succeeded, but dpkg reports $DEB_PACKAGE as '$got', not 'installed $DEB_VERSION'"
    fi
    if [[ ${#RETIRED_UNITS[@]} -gt 0 || -d $(p "$RETIRED_UNIT_DIR") ]]; then
        run rm -rf "$(p "$RETIRED_UNIT_DIR")"
    fi
    if [[ -n $PKG_BEFORE && $PKG_BEFORE != "$DEB_VERSION" ]]; then
        say "upgraded the package from $PKG_BEFORE to $DEB_VERSION"
    fi
    if [[ $DRY_RUN == 0 ]] && ! have_identity; then
        note "the package left this node to be enrolled (its message above): the installer does that next"
    fi
    hand_over_to_package

    # From here on the manifest lists this installation: only what the
    # installer adds beside the package. What an earlier installation by
    # this script listed is now dpkg's (the release, `current`, the config
    # and sudoers conffiles), the package's maintainer scripts' (links in
    # /usr/local, the state directories, the accounts handed over above),
    # retired (the unit copies), or the agent's data under /opt/noderax-agent,
    # which the package's purge removes; the release key it installed stays
    # listed unless the package ships one.
    MANIFEST_OPEN=1
    shared_dir /var/lib
    own_dir "$MANIFEST_DIR" root root 0755
    manifest_add "$MANIFEST_FILE"
    if in_list "$RELEASE_KEY_FILE" "${OLD_PATHS[@]}" && [[ -e $(p "$RELEASE_KEY_FILE") ]]; then
        manifest_add "$RELEASE_KEY_FILE"
    fi
}

# The unit copies an earlier installation by this script put in
# /etc/systemd/system (and listed) would override the package's units in
# /lib/systemd/system: disabled (their links point at the copies; the
# running agent keeps running) and moved aside until apt-get has succeeded.
retire_script_units() {
    local u
    for u in "${UNITS[@]}"; do
        if in_list "$UNIT_DIR/$u" "${OLD_PATHS[@]}" && [[ -f $(p "$UNIT_DIR/$u") && ! -L $(p "$UNIT_DIR/$u") ]]; then
            RETIRED_UNITS+=("$u")
        fi
    done
    [[ ${#RETIRED_UNITS[@]} -gt 0 ]] || return 0
    STEP="retiring the unit files of the earlier installation"
    note "the package's units in /lib/systemd/system replace the copies in $UNIT_DIR of the earlier installation"
    for u in "${OLD_ENABLED[@]}"; do
        if in_list "$u" "${RETIRED_UNITS[@]}"; then RETIRED_ENABLED+=("$u"); fi
    done
    if [[ ${#RETIRED_ENABLED[@]} -gt 0 ]]; then
        run systemctl disable "${RETIRED_ENABLED[@]}"
    fi
    run install -d -o root -g root -m 0700 "$(p "$RETIRED_UNIT_DIR")"
    for u in "${RETIRED_UNITS[@]}"; do
        run mv -f "$(p "$UNIT_DIR/$u")" "$(p "$RETIRED_UNIT_DIR/$u")"
    done
}

# apt-get failed: the earlier installation gets its units back.
restore_script_units() {
    local u
    for u in "${RETIRED_UNITS[@]}"; do
        run mv -f "$(p "$RETIRED_UNIT_DIR/$u")" "$(p "$UNIT_DIR/$u")" ||
            warn "could not put $UNIT_DIR/$u back: it is in $RETIRED_UNIT_DIR"
    done
    run systemctl daemon-reload || warn "systemctl daemon-reload failed"
    if [[ ${#RETIRED_ENABLED[@]} -gt 0 ]]; then
        run systemctl enable "${RETIRED_ENABLED[@]}" || warn "could not enable ${RETIRED_ENABLED[*]} again"
    fi
    rmdir "$(p "$RETIRED_UNIT_DIR")" 2>/dev/null || true
}

# The sudoers drop-in of an earlier installation by this script grants what
# the package's conffile grants. Given the package's text (checked with
# visudo -cf first), dpkg takes it over as unchanged: no conffile prompt, no
# .dpkg-dist beside it, and `dpkg -V` checks it.
adopt_packaged_sudoers() {
    local real tmp src=$DEB_EXTRACT$SUDOERS_FILE
    in_list "$SUDOERS_FILE" "${OLD_PATHS[@]}" || return 0
    real=$(p "$SUDOERS_FILE")
    [[ -f $real && ! -L $real ]] || return 0
    cmp -s "$src" "$real" && return 0
    STEP="handing the sudoers drop-in to the package"
    tmp=$(p "$SUDOERS_DIR")/.noderax-agent.new-$TAG
    run install -o root -g root -m 0440 "$src" "$tmp"
    if ! run visudo -cf "$tmp"; then
        rm -f -- "$tmp"
        die "visudo rejects the package's $SUDOERS_FILE; nothing was changed in $SUDOERS_DIR"
    fi
    run mv -f "$tmp" "$real"
}

# The accounts, and the directories in /usr/local, that an earlier
# installation by this script created become the package's: recorded where
# its postinst records what it creates, so that apt-get purge removes them
# as if the package had created them (packaging/deb/postrm).
hand_over_to_package() {
    local x f
    local -a lines=()
    for x in "${OLD_USERS[@]}"; do lines+=("user $x"); done
    for x in "${OLD_GROUPS[@]}"; do lines+=("group $x"); done
    for x in /usr/local/bin /usr/local/libexec; do
        if in_list "$x" "${OLD_PATHS[@]}"; then lines+=("emptydir $x"); fi
    done
    [[ ${#lines[@]} -gt 0 ]] || return 0
    STEP="handing the accounts of the earlier installation to the package"
    f=$(p "$DEB_CREATED")
    x=$(printf '%s, ' "${lines[@]}")
    say "+ append to $f (apt-get purge removes what it lists): ${x%, }"
    [[ $DRY_RUN == 0 ]] || return 0
    install -d -o root -g root -m 0755 "${f%/*}"
    for x in "${lines[@]}"; do
        grep -qxF "$x" "$f" 2>/dev/null || printf '%s\n' "$x" >>"$f"
    done
}

install_release() {
    STEP="installing release $VERSION"
    local rel=$RELEASES_DIR/$VERSION agent_src="$TMP/noderax-agent-linux-$ARCH" real cur_target old_version="" staging
    [[ -n $BINARY_URL ]] && agent_src="$TMP/${BINARY_URL##*/}"
    # One installer or update at a time: the root helper takes this lock too.
    if [[ $DRY_RUN == 0 ]]; then
        real=$(p "$UPDATE_LOCK")
        [[ -e $real ]] || install -o root -g root -m 0600 /dev/null "$real"
        exec 9>>"$real"
        flock -n 9 || die "another installation or update is running (lock $UPDATE_LOCK); wait for it and re-run"
    fi
    say "+ flock $UPDATE_LOCK"
    manifest_add "$UPDATE_LOCK"

    real=$(p "$rel")
    if [[ $DRY_RUN == 0 && -d $real ]] && cmp -s "$agent_src" "$real/noderax-agent" &&
        cmp -s "$TMP/noderax-agent-exec-linux-$ARCH" "$real/noderax-agent-exec" &&
        cmp -s "$TMP/noderax-agent-priv-linux-$ARCH" "$real/noderax-agent-priv"; then
        say "release $VERSION is already installed in $real"
    else
        staging=$RELEASES_DIR/.installer-$VERSION-$TAG
        run install -d -o root -g root -m 0755 "$(p "$staging")"
        run install -o root -g root -m 0755 "$agent_src" "$(p "$staging")/noderax-agent"
        run install -o root -g root -m 0755 "$TMP/noderax-agent-exec-linux-$ARCH" "$(p "$staging")/noderax-agent-exec"
        run install -o root -g root -m 0755 "$TMP/noderax-agent-priv-linux-$ARCH" "$(p "$staging")/noderax-agent-priv"
        run install -o root -g root -m 0644 "$TMP/SHA256SUMS" "$(p "$staging")/SHA256SUMS"
        if [[ -d $real ]]; then
            run mv -T "$real" "$(p "$RELEASES_DIR")/.replaced-$VERSION-$TAG"
            run mv -T "$(p "$staging")" "$real"
            run rm -rf "$(p "$RELEASES_DIR")/.replaced-$VERSION-$TAG"
        else
            run mv -T "$(p "$staging")" "$real"
        fi
    fi
    manifest_add "$rel"
    manifest_add "$rel/noderax-agent"
    manifest_add "$rel/noderax-agent-exec"
    manifest_add "$rel/noderax-agent-priv"
    manifest_add "$rel/SHA256SUMS"

    cur_target=$(readlink "$(p "$INSTALL_DIR/current")" 2>/dev/null || true)
    [[ $cur_target == releases/* ]] && old_version=${cur_target#releases/}
    if [[ -n $old_version && $old_version != "$VERSION" ]]; then
        set_link "$INSTALL_DIR/previous" "releases/$old_version"
    fi
    set_link "$INSTALL_DIR/current" "releases/$VERSION"
    if [[ -n $old_version && $old_version != "$VERSION" ]]; then
        say "upgraded from $old_version to $VERSION ($INSTALL_DIR/previous keeps $old_version)"
    fi

    STEP="installing the root helper"
    # Replaces the plain file an earlier installer put there, atomically.
    set_link "$HELPER" "$HELPER_TARGET"
    set_link "$HELPER_ALIAS" noderax-agent-priv
    set_link "$CLI_LINK" "$INSTALL_DIR/current/noderax-agent"
}

# packaged_or_real PATH: PATH on this machine or, in a dry run of --package
# deb where it does not exist yet, the package's copy (what apt-get would
# put there).
packaged_or_real() {
    local real
    real=$(p "$1")
    if [[ ! -e $real && $PACKAGE == deb && $DRY_RUN == 1 && -e $DEB_EXTRACT$1 ]]; then
        printf '%s' "$DEB_EXTRACT$1"
    else
        printf '%s' "$real"
    fi
}

config_value() { # key: a string value from the config file, best effort
    sed -n "s/^[[:space:]]*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$(packaged_or_real "$CONFIG_FILE")" 2>/dev/null | head -n1
}

have_identity() { [[ -s $(p "$STATE_FILE") ]] || [[ $DRY_RUN == 1 && -e $(p "$STATE_FILE") ]]; }

# With --package deb the config is the package's conffile (dpkg keeps local
# changes: --force-confold), set up like an existing one below; its owner and
# mode come from the package's dpkg-statoverride, which says the same.
write_config() {
    STEP="writing the configuration"
    local real cur cli
    real=$(p "$CONFIG_FILE")
    cli=$(p "$INSTALL_DIR/current/noderax-agent")
    if [[ ! -e $(packaged_or_real "$CONFIG_FILE") ]]; then
        # Only what the installer knows; every other key keeps its default
        # (README.md, Configuration). Root-owned so that only root changes
        # it (the root helper trusts nothing else), readable by noderax-net.
        # (With the package: its administrator deleted the conffile, which
        # dpkg does not undo.)
        write_file "$CONFIG_FILE" root "$NET_USER" 0640 - <<EOF
{
  "api_url": "$API_URL",
  "state_file": "$STATE_FILE",
  "log_level": "$LOG_LEVEL"
}
EOF
    else
        not_a_link "$CONFIG_FILE"
        cur=$(config_value api_url)
        if have_identity; then
            say "keeping $CONFIG_FILE and the identity in $STATE_FILE"
            if [[ -n $cur && $cur != "$API_URL" ]]; then
                warn "$CONFIG_FILE has api_url $cur, not $API_URL: kept, because this node is enrolled there (remove $STATE_FILE and re-run to enroll with $API_URL)"
            fi
        else
            # Not enrolled yet: point the existing config at this control plane.
            if [[ $cur != "$API_URL" ]]; then
                run env -i PATH="$SAFE_PATH" "$cli" --config-file "$real" config set api_url "$API_URL"
            fi
            if [[ $(config_value state_file) != "$STATE_FILE" ]]; then
                run env -i PATH="$SAFE_PATH" "$cli" --config-file "$real" config set state_file "$STATE_FILE"
            fi
        fi
        if [[ $LOG_LEVEL_GIVEN == 1 && $(config_value log_level) != "$LOG_LEVEL" ]]; then
            run env -i PATH="$SAFE_PATH" "$cli" --config-file "$real" config set log_level "$LOG_LEVEL"
        fi
        owner_ids root "$NET_USER"
        if [[ $DRY_RUN == 1 && $PACKAGE == none ]] ||
            [[ -e $real && $(stat -c '%u:%g %a' "$real") != "0:$OWN_GID 640" ]]; then
            run_shown "chown root:$NET_USER $real" chown "0:$OWN_GID" "$real"
            run chmod 0640 "$real"
        fi
        if grep -qE '"agent_token"[[:space:]]*:[[:space:]]*"[^"]' "$real" 2>/dev/null; then
            warn "$CONFIG_FILE still holds agent_token (an older install): the identity is in $STATE_FILE; remove node_id and agent_token from the config"
        fi
        manifest_add "$CONFIG_FILE"
    fi
    if [[ -n $RELEASE_KEY_SRC && -n ${DEB_OWNED[$RELEASE_KEY_FILE]:-} ]]; then
        # The package ships its signer's key as a conffile: not replaced.
        if ! cmp -s "$RELEASE_KEY_SRC" "$(packaged_or_real "$RELEASE_KEY_FILE")"; then
            warn "$RELEASE_KEY_FILE (the package's conffile) is not the key of --release-key $RELEASE_KEY_SRC: the root helper accepts only updates signed with the key in $RELEASE_KEY_FILE"
        fi
    elif [[ -n $RELEASE_KEY_SRC ]]; then
        install_file "$RELEASE_KEY_SRC" "$RELEASE_KEY_FILE" 0644
    fi
}

write_sudoers() {
    STEP="writing the sudoers drop-in"
    local real tmp
    real=$(p "$SUDOERS_FILE")
    # A name with a dot: sudo's includedir skips it until it is renamed.
    tmp=$(p "$SUDOERS_DIR")/.noderax-agent.new-$TAG
    not_a_link "$SUDOERS_FILE"
    say "+ write $tmp (root:root 0440)"
    local content
    content=$(cat <<EOF
# Installed by the Noderax agent installer; re-running it rewrites this file
# and \`noderax-agent uninstall\` removes it. The executor (user $EXEC_USER) may
# run the root helper as root without a password, and nothing else: the
# helper checks its caller and every argument itself (README.md, Root helper).
$EXEC_USER ALL=(root) NOPASSWD: $HELPER
EOF
)
    if [[ $DRY_RUN == 1 ]]; then
        printf '%s\n' "$content" | sed 's/^/|   /'
    else
        rm -f -- "$tmp"
        printf '%s\n' "$content" >"$tmp"
        chown 0:0 "$tmp"
        chmod 0440 "$tmp"
    fi
    if ! run visudo -cf "$tmp"; then
        rm -f -- "$tmp"
        die "visudo rejected the sudoers drop-in; nothing was changed in $SUDOERS_DIR"
    fi
    run mv -f "$tmp" "$real"
    manifest_add "$SUDOERS_FILE"
    if [[ -e $(p "$LEGACY_SUDOERS_FILE") ]]; then
        note "removing $LEGACY_SUDOERS_FILE of the original agent: it grants $EXEC_USER more than the root helper"
        run rm -f "$(p "$LEGACY_SUDOERS_FILE")"
    fi
    if [[ -n $ROOT ]]; then
        note "--root: sudo -l is not checked (sudo reads this machine's /etc/sudoers)"
        return 0
    fi
    check_sudo_grants
}

# noderax may run the root helper as root, and nothing else, as sudo itself
# sees it (other drop-ins could grant more).
check_sudo_grants() {
    STEP="checking what $EXEC_USER may run through sudo"
    local listing extra
    say "+ LC_ALL=C sudo -n -l -U $EXEC_USER (must list $HELPER and nothing else)"
    [[ $DRY_RUN == 1 ]] && return 0
    listing=$(LC_ALL=C sudo -n -l -U "$EXEC_USER" 2>&1 </dev/null) ||
        die "sudo -n -l -U $EXEC_USER failed: ${listing:0:300}"
    if ! extra=$(check_sudo_listing <<<"$listing"); then
        if [[ -n $extra ]]; then
            die "sudo lets $EXEC_USER run more than the root helper: $(tr '\n' ';' <<<"$extra") — remove those grants (they are not from this installer) and re-run"
        fi
        die "sudo does not let $EXEC_USER run $HELPER after installing $SUDOERS_FILE: ${listing:0:300}"
    fi
    say "sudo: $EXEC_USER may run $HELPER as root, and nothing else"
}

# The unit files, byte for byte the repository's systemd/* (a test compares
# them).
unit_text() {
    case $1 in
        noderax-agent.service)
            cat <<'UNIT'
# The Noderax agent's network process (crate agent-net): the only process
# that talks to the control plane. It holds the agent token and nothing else
# of value, so it runs as its own user in a strict sandbox (ARCHITECTURE.md
# §2, §3). Target: `systemd-analyze security --offline=true` exposure <= 2.0.
#
# Work is done by the executor, reached over the socket of
# noderax-agent-exec.socket. The root helper restarts this unit by name
# (`service restart-agent`, and after an update together with
# noderax-agent-exec.service), so keep the names.

[Unit]
Description=Noderax agent (network process)
Documentation=https://github.com/noderax/noderax-agent-rs
# The executor's socket exists before this starts; stopping the socket stops
# this unit too. The executor itself is started by socket activation.
Requires=noderax-agent-exec.socket
After=noderax-agent-exec.socket
Wants=network-online.target
After=network-online.target
# Never give up restarting: a start limit would leave the node dark until
# someone logs in. Restarts are spaced by RestartSec= below, and repeated
# `service restart-agent` tasks must not be able to trip a limit either.
StartLimitIntervalSec=0

[Service]
Type=notify
# READY=1 comes after the identity is loaded and every loop is started;
# WATCHDOG=1 then every WATCHDOG_USEC/2 (30 s) from the event loop, so a
# wedged loop is killed and restarted.
WatchdogSec=60s
# Start-up waits for the realtime pre-flight (request_timeout). With a pending
# enrollment_token and no identity, `run` waits for the approval (up to 10
# minutes) before READY=1 and is restarted when this expires; it resumes
# waiting on the next start.
TimeoutStartSec=3min
# SIGTERM: stop claiming, deliver finished task events for up to
# shutdown_timeout (20 s), exit 0. Raise this with shutdown_timeout.
TimeoutStopSec=45s
Restart=always
RestartSec=5s

ExecStart=/opt/noderax-agent/current/noderax-agent run --executor socket --exec-user noderax
Environment=NODERAX_CONFIG_FILE=/etc/noderax-agent/config.json
# Relative paths (a config without state_file) land in the state directory.
WorkingDirectory=/var/lib/noderax-agent

User=noderax-net
Group=noderax-net
UMask=0077

# /var/lib/noderax-agent: identity (agent_identity.json), tasks/, outbox,
# status.json, staged updates (updates/VERSION/). The only writable path.
# systemd creates it owned by noderax-net with this mode.
StateDirectory=noderax-agent
StateDirectoryMode=0700
# /etc/noderax-agent (config.json, release.pub) is read-only through
# ProtectSystem=strict. It is deliberately not ConfigurationDirectory=: the
# installer owns its owner and mode (the root helper trusts config.json only
# when it and the directory are root-owned and not group/world writable).
# /run/noderax-agent is deliberately not RuntimeDirectory= either: it belongs
# to the socket unit (root-owned, so only root can replace exec.sock), and a
# RuntimeDirectory= would chown it and delete it, socket included, on stop.

# --- Sandbox --------------------------------------------------------------
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
# Everything read-only but the state directory; connecting to
# /run/noderax-agent/exec.sock and to $NOTIFY_SOCKET needs no write access
# to the file system.
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
PrivateDevices=yes
PrivateIPC=yes
# Metrics and host facts need a few global files, which sets the limits here:
#   /proc/stat (CPU), /proc/meminfo (memory), /proc/net/dev (interfaces; the
#   host's network namespace, so no PrivateNetwork=), /proc/sys/kernel/
#   {hostname,osrelease}, /sys/class/{hwmon,thermal} (temperatures),
#   statvfs("/") (disk), /etc/os-release.
# ProcSubset=pid would hide /proc/stat, /proc/meminfo and /proc/sys, so /proc
# keeps all its files (ProcSubset=all, the default); ProtectProc=invisible
# still hides other users' processes. ProtectKernelTunables= only makes
# /proc/sys and /sys read-only, which is all the agent needs.
ProtectProc=invisible
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
# A UTS namespace with a copy of the host name: a host renamed while the
# agent runs is reported under its new name after the next restart.
ProtectHostname=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RemoveIPC=yes
KeyringMode=private
# Not PrivateUsers=: inside a user namespace every other uid reads as
# "nobody", including the executor's in SO_PEERCRED, which would make the
# peer check of ARCHITECTURE.md §3 impossible on this side.
# AF_UNIX: executor socket, sd_notify, name resolution through nss/resolved;
# AF_INET/AF_INET6: the control plane. No AF_NETLINK: nothing enumerates
# interfaces through netlink (counters come from /proc/net/dev), and name
# resolution does not need it (getaddrinfo without AI_ADDRCONFIG).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# A filtered call fails with EPERM (what an unprivileged process gets for
# most of them anyway) instead of killing the agent.
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
Also=noderax-agent-exec.socket
UNIT
            ;;
        noderax-agent-exec.socket)
            cat <<'UNIT'
# The executor's IPC socket (ARCHITECTURE.md §3, §4). systemd listens on it
# from boot, so it exists before either service starts, and starts
# noderax-agent-exec.service on the first connection. It survives restarts
# of both services: the network process reconnects to the same path.

[Unit]
Description=Noderax agent executor socket
Documentation=https://github.com/noderax/noderax-agent-rs

[Socket]
ListenStream=/run/noderax-agent/exec.sock
# Only the network user may connect: the socket is owned by the executor's
# user with group noderax-net and no access for others. The executor also
# checks every peer with SO_PEERCRED (--peer-user noderax-net).
SocketUser=noderax
SocketGroup=noderax-net
SocketMode=0660
# /run/noderax-agent is created by systemd as root:root 0755: any user can
# reach the socket path, but only root can remove or replace the socket.
DirectoryMode=0755
RemoveOnStop=yes
# One executor serves every connection (Accept=no is the default; the
# executor refuses anything but exactly one listening fd).
Accept=no
Service=noderax-agent-exec.service

[Install]
WantedBy=sockets.target
UNIT
            ;;
        noderax-agent-exec.service)
            cat <<'UNIT'
# The Noderax agent's executor (crate agent-exec): runs tasks and terminal
# shells as user noderax for the network process, which connects through
# noderax-agent-exec.socket. It never sees the agent token.
#
# Root is reached only as `sudo -n /usr/local/libexec/noderax-agent-priv ...`
# (ARCHITECTURE.md §2). sudo is set-uid root, so this unit must leave the
# kernel's set-uid path intact, and the helper and whatever it runs inherit
# this unit's process state. That rules out, with the reason for each:
#
#   NoNewPrivileges=yes        set-uid is ignored, so sudo cannot become
#                              root.
#   Directives that imply NoNewPrivileges= for a non-root User= (systemd
#   installs seccomp filters only under no_new_privs):
#     SystemCallFilter=, SystemCallArchitectures=, SystemCallLog=,
#     RestrictAddressFamilies=, RestrictNamespaces=, RestrictRealtime=,
#     RestrictSUIDSGID=, RestrictFileSystems=, MemoryDenyWriteExecute=,
#     LockPersonality=, PrivateDevices=, ProtectKernelTunables=,
#     ProtectKernelModules=, ProtectKernelLogs=, ProtectClock=,
#     ProtectHostname=, DynamicUser=.
#   Directives that need a private mount namespace, which sudo and the
#   helper would inherit (root inside it sees read-only or missing paths,
#   so a root operation could fail half-way):
#     ProtectSystem=, ProtectHome=, PrivateTmp=, PrivateMounts=,
#     ProtectControlGroups=, ProtectProc=, ProcSubset=, ReadOnlyPaths=,
#     ReadWritePaths=, InaccessiblePaths=, TemporaryFileSystem=, BindPaths=,
#     PrivateIPC=. Tasks and terminals are also an operator's login on the
#     host: they must see its real /tmp and /home.
#   PrivateUsers=              root in a user namespace is not root on the
#                              host: sudo and the helper would be powerless.
#   CapabilityBoundingSet=     bounds what set-uid sudo gets: sudo needs
#                              CAP_SETUID/SETGID/AUDIT_WRITE (and PAM more),
#                              and root would not be confined anyway (uid 0
#                              asks PID 1 to run things, as the helper does
#                              with systemd-run). It would also break
#                              file-capability programs tasks use (ping).
#   PrivateNetwork=, IPAddressDeny=, SocketBindDeny=
#                              tasks legitimately use the network.
# What remains is applied below.

[Unit]
Description=Noderax agent executor (tasks and terminals)
Documentation=https://github.com/noderax/noderax-agent-rs
Requires=noderax-agent-exec.socket
After=noderax-agent-exec.socket
# A start limit would fail the socket unit too (service-start-limit-hit),
# and it would stop listening until someone intervenes. Attempts are spaced
# by RestartSec= and by the network process's reconnect back-off (0.2-30 s).
StartLimitIntervalSec=0

[Service]
Type=simple
# The socket comes from noderax-agent-exec.socket (LISTEN_FDS). Other
# settings are arguments because the executor does not read the network
# user's config file: keep --kill-grace, --max-tasks and
# --root-access-ceiling in step with kill_grace, max_concurrent_tasks and
# root_access_ceiling there (defaults: 10s, 4, operational) with a drop-in
# (`systemctl edit noderax-agent-exec.service`).
ExecStart=/opt/noderax-agent/current/noderax-agent-exec --peer-user noderax-net --state-dir /var/lib/noderax-agent-exec --helper /usr/local/libexec/noderax-agent-priv
Restart=always
RestartSec=2s

# Stopping: SIGTERM to the executor only; it closes the terminals, sends
# SIGTERM to every task's process group, waits kill_grace (10 s) and kills
# what is left, then exits (at most kill_grace + 10 s). Once it has exited,
# whatever is still in the unit (processes a task detached, e.g. with nohup)
# gets SIGKILL. TimeoutStopSec= leaves room for that; raise it with
# --kill-grace. (With KillMode=control-group every task would get a second
# SIGTERM from systemd at the same moment, and sudo would relay it too.)
KillMode=mixed
TimeoutStopSec=30s
# A task the kernel's OOM killer hits fails on its own; the executor and the
# other tasks keep running (the default, stop, would stop the whole unit).
OOMPolicy=continue

User=noderax
Group=noderax
# Tasks start in noderax's home directory, as a login shell would (in /
# if it does not exist).
WorkingDirectory=-~
# The umask of a login: tasks create files as an operator's shell does
# (the helper sets its own umask).
UMask=0022

# /var/lib/noderax-agent-exec: spill files of unacknowledged output and the
# record of running processes; created by systemd for noderax (no mount
# namespace is needed for that).
StateDirectory=noderax-agent-exec
StateDirectoryMode=0700

# --- What remains of the sandbox ---------------------------------------
# Device access through the cgroup device controller (no namespace, no
# no_new_privs): /dev/null, zero, full, random, urandom, tty, ptmx and the
# pseudo-terminals, which is what tasks, terminals and sudo use. Hardware
# (disks, /dev/fuse, ...) is unreachable, even to root through sudo; the
# helper's apt-get runs in a transient unit of its own and is not affected.
DevicePolicy=closed
# SysV/POSIX IPC objects of noderax go away when the executor stops.
RemoveIPC=yes
KeyringMode=private
UNIT
            ;;
        *) return 1 ;;
    esac
}

write_units() {
    STEP="installing the systemd units"
    local u
    for u in "${UNITS[@]}"; do
        write_file "$UNIT_DIR/$u" root root 0644 "the embedded copy of systemd/$u" < <(unit_text "$u")
    done
    write_exec_settings
    if [[ -z $ROOT ]]; then
        run systemctl daemon-reload
    fi
}

# The executor is socket-activated as noderax and cannot read the config
# (root:noderax-net 0640), so the settings it shares with the network process
# (kill_grace, max_concurrent_tasks, root_access_ceiling) reach it as
# arguments in a drop-in. The installed agent writes the drop-in's text from
# the config (only keys the config sets; none: comments only), so this and
# `noderax-agent config set` produce the same file. Always written, so that
# it is in the manifest when `config set` rewrites it later.
write_exec_settings() {
    local cli cfg content
    cli=$(p "$INSTALL_DIR/current/noderax-agent")
    cfg=$(p "$CONFIG_FILE")
    own_dir "$EXEC_DROPIN_DIR" root root 0755
    if [[ $DRY_RUN == 1 ]]; then
        content="(dry run)"
    else
        content=$(env -i PATH="$SAFE_PATH" "$cli" --config-file "$cfg" config executor-unit) ||
            die "$STEP: \`noderax-agent config executor-unit\` could not read $CONFIG_FILE (see above)"
    fi
    write_file "$EXEC_DROPIN" root root 0644 \
        "\`noderax-agent config executor-unit\`: kill_grace, max_concurrent_tasks and root_access_ceiling from $CONFIG_FILE" \
        <<<"$content"
}

bootstrap_identity() {
    STEP="bootstrapping the node identity"
    local real tmpcfg log cli
    real=$(p "$STATE_FILE")
    cli=$(p "$INSTALL_DIR/current/noderax-agent")
    owner_ids "$NET_USER" "$NET_USER"
    if have_identity; then
        grep -q '"node_id"' "$real" 2>/dev/null || [[ $DRY_RUN == 1 ]] ||
            die "$STATE_FILE exists but holds no identity; move it away to enroll again, then re-run"
        say "already enrolled: keeping the identity in $STATE_FILE (the bootstrap token is not used)"
    else
        # bootstrap records api_url in the config file it reads; the real one
        # is root-owned and already says so, so it gets a private copy.
        tmpcfg=$TMP/bootstrap-config
        run_shown "install -d -o $NET_USER -g $NET_USER -m 0700 $tmpcfg" \
            install -d -o "$OWN_UID" -g "$OWN_GID" -m 0700 "$tmpcfg"
        run_shown "install -o $NET_USER -g $NET_USER -m 0600 $(p "$CONFIG_FILE") $tmpcfg/config.json" \
            install -o "$OWN_UID" -g "$OWN_GID" -m 0600 "$(p "$CONFIG_FILE")" "$tmpcfg/config.json"
        show_as_user "$NET_USER" "$(p "$NET_HOME")" NODERAX_CONFIG_FILE="$tmpcfg/config.json" \
            NODERAX_BOOTSTRAP_TOKEN="$TOKEN" -- \
            "$cli" bootstrap --non-interactive --api-url "$API_URL" --state-file "$real"
        if [[ $DRY_RUN == 0 ]]; then
            log=$TMP/bootstrap.log
            if ! as_user "$NET_USER" "$(p "$NET_HOME")" NODERAX_CONFIG_FILE="$tmpcfg/config.json" \
                NODERAX_BOOTSTRAP_TOKEN="$TOKEN" -- \
                "$cli" bootstrap --non-interactive --api-url "$API_URL" --state-file "$real" >"$log" 2>&1; then
                cat "$log" >&2
                die "noderax-agent bootstrap failed: $(grep -v '^[[:space:]]*$' "$log" | tail -n1 | sed 's/^noderax-agent: error: //')"
            fi
            cat "$log"
            [[ -s $real ]] || die "noderax-agent bootstrap succeeded but wrote no $STATE_FILE"
        fi
    fi
    if [[ $DRY_RUN == 0 && $(stat -c '%u:%g %a' "$real") != "$OWN_UID:$OWN_GID 600" ]]; then
        run_shown "chown $NET_USER:$NET_USER $real" chown "$OWN_UID:$OWN_GID" "$real"
        run chmod 0600 "$real"
    fi
    manifest_add "$STATE_FILE"
}

wait_active() {
    local streak=0 i
    say "+ systemctl is-active $MAIN_UNIT (until active for 3 s, at most 90 s)"
    [[ $DRY_RUN == 1 ]] && return 0
    for ((i = 0; i < 90; i++)); do
        if systemctl is-active --quiet "$MAIN_UNIT"; then
            streak=$((streak + 1))
            [[ $streak -ge 3 ]] && return 0
        else
            streak=0
        fi
        sleep 1
    done
    unit_failed "$MAIN_UNIT did not become active within 90 s"
}

# unit_failed WHAT: shows the unit's state and dies with its last log line.
unit_failed() {
    systemctl status --no-pager --lines=20 "$MAIN_UNIT" noderax-agent-exec.service >&2 || true
    die "$1; last log line: $(journalctl -u "$MAIN_UNIT" -n 1 -o cat --no-pager 2>/dev/null | tail -n1) (see journalctl -u $MAIN_UNIT)"
}

start_units() {
    STEP="starting the agent"
    local was_active=0
    if [[ $PACKAGE == none ]]; then
        # (The package's units are enabled by its postinst, and disabled and
        # purged by its maintainer scripts.)
        ENABLED=("${ENABLE_UNITS[@]}")
        manifest_save
    fi
    if [[ -n $ROOT ]]; then
        run systemctl --root="$ROOT" enable "${ENABLE_UNITS[@]}"
        note "--root: the units are enabled in $ROOT but not started"
        return 0
    fi
    if [[ $PACKAGE == deb ]]; then
        # Whether it ran before apt-get; the package's postinst has already
        # restarted it if it upgraded the package.
        was_active=$WAS_ACTIVE
        if [[ -n $PKG_BEFORE && $PKG_BEFORE != "$DEB_VERSION" ]]; then was_active=0; fi
    elif systemctl is-active --quiet "$MAIN_UNIT" 2>/dev/null; then
        was_active=1
    fi
    run systemctl enable --now "${ENABLE_UNITS[@]}" || unit_failed "the units did not start"
    if [[ $was_active == 1 ]]; then
        # An upgrade: the running processes still run the previous binaries.
        run systemctl restart noderax-agent-exec.service "$MAIN_UNIT" || unit_failed "the units did not restart"
    fi
    wait_active
}

main() {
    set -Eeuo pipefail
    umask 022
    export LC_ALL=C
    # visudo, useradd & co. live in sbin, which a non-login root shell may
    # not have on its PATH.
    export PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"
    trap 'on_err $? "$BASH_COMMAND"' ERR
    trap cleanup EXIT
    trap 'die "interrupted"' INT TERM HUP
    # Nothing below reads the script's stdin (`curl ... | sudo bash` feeds
    # the script itself there).
    parse_args "$@"
    if [[ $DRY_RUN == 1 ]]; then
        TAG=PID
        say "Noderax agent installer: dry run, nothing is changed; progress would be reported to $API_URL/api/v1/node-installs/progress"
        if [[ $PACKAGE == deb ]]; then
            say "(--package deb: the package is still downloaded and verified, into a temporary directory removed at exit)"
        fi
    fi
    check_host
    report installer_started 8 installing "Installer started on the target server."
    install_dependencies
    if [[ $PACKAGE == deb ]]; then
        check_package_accounts
        download_and_verify_package
        install_package
        write_config
        write_exec_settings
        run systemctl daemon-reload
        check_sudo_grants
    else
        create_accounts_and_dirs
        download_and_verify
        install_release
        write_config
        write_sudoers
        write_units
    fi
    report agent_bootstrapping 88 installing "Bootstrapping node credentials as noderax-net."
    bootstrap_identity
    start_units
    STEP="finishing"
    if [[ -n $ROOT ]]; then
        report service_started 100 completed "Agent $VERSION installed in $ROOT (--root: units enabled, not started)."
    elif [[ $PACKAGE == deb ]]; then
        report service_started 100 completed "Agent $VERSION installed successfully from the noderax-agent package and the noderax-agent service is running."
    else
        report service_started 100 completed "Agent $VERSION installed successfully and the noderax-agent service is running."
    fi
    say "${SIG_NOTE:+$SIG_NOTE; }install manifest: $MANIFEST_FILE"
    if [[ $DRY_RUN == 1 ]]; then
        say "manifest $MANIFEST_FILE would read:"
        manifest_text | sed 's/^/|   /'
    elif [[ $PACKAGE == deb ]]; then
        say "Noderax agent $VERSION is installed as the package $DEB_PACKAGE $DEB_VERSION. Check it with: noderax-agent status; remove it with: apt-get purge $DEB_PACKAGE"
    else
        say "Noderax agent $VERSION is installed. Check it with: noderax-agent status"
    fi
}

if [[ -z ${NODERAX_INSTALLER_SOURCE_ONLY:-} ]]; then
    main "$@"
    exit 0
fi

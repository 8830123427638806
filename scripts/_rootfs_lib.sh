# shellcheck shell=bash
# Shared by scripts/arm64_check.sh and scripts/boot_check.sh (sourced, never run): reporting by phase, a
# cached Debian tree that is never deleted through a mount point, and the Debian mirror apt already uses.
# The caller sets CHECK_NAME ("arm64 check", "boot check") and LOG_NAME ("arm64_check", "boot_check").

PHASES=()
PHASE=""
PHASE_T0=""
PHASE_WIDTH=${PHASE_WIDTH:-46}
T_START=$EPOCHREALTIME
say() { printf '%s\n' "$*"; }
indent() { sed 's/^/    | /'; }
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
phase() { # phase NAME: ends the previous phase, starts the next
    end_phase ok
    PHASE=$1
    PHASE_T0=$EPOCHREALTIME
    say ""
    say "== $PHASE"
}
end_phase() {
    [[ -n $PHASE ]] || return 0
    PHASES+=("$(printf "%-${PHASE_WIDTH}s %8s s  %s" "$PHASE" "$(seconds_since "$PHASE_T0")" "$1")")
    PHASE=""
}
fail() { # fail MESSAGE...: the one clear line that says what failed, then exit 1
    local where=$PHASE
    end_phase FAILED
    say "" >&2
    # shellcheck disable=SC2016 # the quotes are literal, inside double quotes
    say "$CHECK_NAME FAILED${where:+ at '$where'}: $*" >&2
    exit 1
}
sha_of() { sha256sum | cut -c1-16; }

mounts_under() { # every mount point at or below $1, deepest first
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | awk '{ print length, $0 }' |
        sort -rn | cut -d' ' -f2-
}
unmount_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "$LOG_NAME: could not unmount $m" >&2
    done
}
safe_remove() { # rm -rf a cached tree, never through a mount point
    [[ -e $1 ]] || return 0
    unmount_under "$1"
    if [[ -n $(mounts_under "$1") ]]; then
        say "$LOG_NAME: refusing to delete $1: still mounted: $(mounts_under "$1" | tr '\n' ' ')" >&2
        exit 2
    fi
    rm -rf --one-file-system "$1"
}

debian_mirror() { # debian_mirror SUITE: the first mirror apt's sources name for SUITE (never a host written here)
    local suite=$1 f found
    found=$(
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -f $f ]] || continue
            # deb822: a paragraph with Types: deb and the suite among its Suites.
            awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
                { types = ""; uri = ""; suites = ""
                  for (i = 1; i <= NF; i++) {
                      if ($i ~ /^Types:/) types = $i
                      if ($i ~ /^URIs:/) { uri = $i; sub(/^URIs:[ \t]*/, "", uri); sub(/[ \t].*/, "", uri) }
                      if ($i ~ /^Suites:/) suites = $i " " }
                  if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]") && uri != "") print uri }' "$f"
        done
        # one-line format: deb [options] URI SUITE COMPONENTS...
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f $f ]] || continue
            awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                                                  if ($(i + 1) == suite) print $i }' "$f"
        done
    )
    printf '%s' "${found%%$'\n'*}"
}
install_host_packages() { # install_host_packages PKG...: apt-get update + install, one caller at a time
    # CI runs the boot and arm64 checks side by side; on a machine without their tools both would run apt-get at
    # once and the second stop on apt's lists lock. A host-wide lock file serialises them (the second waits,
    # then installs what is still missing); apt's own lock timeout covers any other apt user.
    local lock=/var/lock/faceagent-host-packages.lock
    (
        flock 8 || exit 1
        apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
    ) 8>"$lock"
}
use_apt_proxy() { # debootstrap does not read apt's proxy setting: pass it on
    local proxy
    proxy=$(apt-config dump 2>/dev/null | awk -F'"' '/^Acquire::http::Proxy /{ print $2 }')
    if [[ -n $proxy && -z ${http_proxy:-} ]]; then export http_proxy=$proxy; fi
}
print_summary() { # print_summary LABEL [CONTEXT]: time per phase, then the plain closing line CI reads
    [[ ${#PHASES[@]} -gt 0 ]] || return 0
    say ""
    say "== time per phase (${2:+$2; }$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
    printf '  %s\n' "${PHASES[@]}"
    say "  $(printf "%-${PHASE_WIDTH}s %8s s" total "$(seconds_since "$T_START")")"
    local passed failed # each phase is one check
    passed=$(printf '%s\n' "${PHASES[@]}" | grep -c ' ok$' || true)
    failed=$(printf '%s\n' "${PHASES[@]}" | grep -c ' FAILED$' || true)
    say "$1: $passed passed, $failed failed"
}

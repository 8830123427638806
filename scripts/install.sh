#!/usr/bin/env bash
# Install faceagent as a systemd service on Raspberry Pi OS Bookworm (64-bit), or remove it. Idempotent:
# running it again upgrades the package and changes nothing else that is already in place.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/install.sh [OPTIONS]

Installs, from this checkout: the system packages (python3-venv, python3-picamera2), the `faceagent` system
user (in group video), a venv at /opt/faceagent/venv that sees the system picamera2, the faceagent package
with its models, /etc/faceagent/faceagent.toml (only if absent: never overwritten), /var/lib/faceagent, and
the systemd unit, which it enables (and restarts when systemd is running). With no camera configured the
agent uses a Pi camera that picamera2 finds, or runs without one and says so in its status and log.

  --dry-run                  print every action without doing it
  --root DIR                 act on the system image at DIR (a mounted SD card, a chroot, a test tree);
                             --prefix DIR is the same option
  --steps LIST               only these steps, comma-separated, in this order:
                             packages,user,venv,package,config,unit,enable
  --with-mosquitto-clients   also install mosquitto_pub / mosquitto_sub (debugging)
  --no-start                 enable the unit but do not (re)start it
  --uninstall                stop and remove the unit and /opt/faceagent; keeps /etc/faceagent and
                             /var/lib/faceagent (configuration and gallery)
  --purge                    with --uninstall: also remove them and the faceagent user
  -h, --help                 this text
EOF
}

readonly SERVICE_USER=faceagent
readonly OPT_DIR=/opt/faceagent
readonly VENV="$OPT_DIR/venv"
readonly CONFIG_DIR=/etc/faceagent
readonly STATE_DIR=/var/lib/faceagent
readonly UNIT_DIR=/etc/systemd/system
readonly UNIT=faceagent.service
readonly ALL_STEPS="packages,user,venv,package,config,unit,enable"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

DRY_RUN=0
ROOT=/
STEPS=$ALL_STEPS
MOSQUITTO_CLIENTS=0
START=1
UNINSTALL=0
PURGE=0
ROOT_OPTIONS=()

say() { printf 'faceagent-install: %s\n' "$*"; }
warn() { printf 'faceagent-install: warning: %s\n' "$*" >&2; }
die() {
    printf 'faceagent-install: error: %s\n' "$*" >&2
    exit 1
}

# A problem that stops a real run; a dry run reports it and goes on, to show the rest.
fail() {
    if ((DRY_RUN)); then warn "a real run would stop here: $*"; else die "$*"; fi
}

# A command as it could be pasted into a shell: only words that need it are quoted.
show() {
    local word out=()
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("$word"); else out+=("$(printf '%q' "$word")"); fi
    done
    printf '%s' "${out[*]}"
}

# Every change goes through run: printed, and done unless --dry-run.
run() {
    if ((DRY_RUN)); then
        printf 'would run: %s\n' "$(show "$@")"
    else
        printf '+ %s\n' "$(show "$@")"
        "$@"
    fi
}

target() { printf '%s%s' "${ROOT%/}" "$1"; } # a path inside the system being installed

# Commands that must run inside the target system (its apt, its python3).
in_target() {
    if [[ $ROOT == / ]]; then
        run "$@"
    else
        run chroot "$ROOT" "$@"
    fi
}

systemd_running() { [[ $ROOT == / && -d /run/systemd/system ]]; }

# uid:gid of the service user in the target's /etc/passwd (names would resolve against this host's)
user_ids() {
    local passwd
    passwd="$(target /etc/passwd)"
    [[ -f $passwd ]] || return 0
    awk -F: -v u="$SERVICE_USER" '$1 == u { print $3 ":" $4 }' "$passwd"
}

has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

parse_args() {
    while (($#)); do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --root | --prefix)
                (($# >= 2)) || die "$1 needs a directory"
                ROOT=$2
                shift
                ;;
            --steps)
                (($# >= 2)) || die "--steps needs a list, e.g. config,unit"
                STEPS=$2
                shift
                ;;
            --with-mosquitto-clients) MOSQUITTO_CLIENTS=1 ;;
            --no-start) START=0 ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    local step
    for step in ${STEPS//,/ }; do
        [[ ",$ALL_STEPS," == *",$step,"* ]] || die "unknown step '$step' (steps: $ALL_STEPS)"
    done
    ((PURGE == 0 || UNINSTALL)) || die "--purge goes with --uninstall"
    [[ -d $ROOT ]] || die "--root $ROOT is not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    [[ $ROOT == / ]] || ROOT_OPTIONS=(--root "$ROOT") # for useradd, usermod, userdel, systemctl
}

preflight() {
    if ((EUID != 0)); then
        ((DRY_RUN)) || die "run as root: sudo $0 $*"
        warn "not root: a real run needs sudo"
    fi
    [[ -f $REPO/pyproject.toml && -d $REPO/agent ]] || die "$REPO is not a faceagent checkout"
    if [[ $ROOT == / ]] && ((!DRY_RUN)); then
        local codename arch
        codename="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null)"
        arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
        [[ $codename == bookworm && $arch == arm64 ]] ||
            warn "made for Raspberry Pi OS Bookworm 64-bit (arm64); this is ${codename:-unknown}/$arch: going on anyway"
    fi
    say "$( ((UNINSTALL)) && echo removing || echo installing) faceagent in $ROOT$( ((DRY_RUN)) && echo ' (dry run: nothing is changed)')"
}

# ------------------------------------------------------------------------------------------ steps

picamera2_available() {
    local candidate
    if [[ $ROOT == / ]]; then
        candidate="$(apt-cache policy python3-picamera2 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    else
        candidate="$(chroot "$ROOT" apt-cache policy python3-picamera2 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    fi
    [[ -n $candidate && $candidate != "(none)" ]]
}

step_packages() {
    local wanted=(python3-venv python3-picamera2) missing=() package
    ((MOSQUITTO_CLIENTS)) && wanted+=(mosquitto-clients)
    for package in "${wanted[@]}"; do
        dpkg-query --admindir="$(target /var/lib/dpkg)" -W -f='${Status}' "$package" 2>/dev/null |
            grep -q 'install ok installed' || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        say "system packages present: ${wanted[*]}"
        return
    fi
    in_target apt-get update
    if ((!DRY_RUN)) && [[ " ${missing[*]} " == *" python3-picamera2 "* ]] && ! picamera2_available; then
        warn "python3-picamera2 is not in this system's apt sources (not Raspberry Pi OS?):" \
            "going on without it; the Pi camera source will be missing, USB/file/RTSP sources still work"
        local kept=()
        for package in "${missing[@]}"; do [[ $package == python3-picamera2 ]] || kept+=("$package"); done
        missing=("${kept[@]}")
        ((${#missing[@]})) || return 0
    fi
    # --no-install-recommends: picamera2 recommends a GUI stack (Qt, OpenGL) that a headless device does not need
    in_target env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
        die "apt-get could not install ${missing[*]}; python3-picamera2 comes from the Raspberry Pi OS archive"
}

step_user() {
    grep -q '^video:' "$(target /etc/group)" 2>/dev/null || fail "no group 'video' in $(target /etc/group)"
    if [[ -z $(user_ids) ]]; then
        run useradd "${ROOT_OPTIONS[@]}" --system --user-group --groups video --home-dir "$STATE_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "faceagent service" "$SERVICE_USER"
    elif ! awk -F: -v u="$SERVICE_USER" '$1 == "video" && ("," $4 ",") ~ ("," u ",") { found = 1 } END { exit !found }' \
        "$(target /etc/group)"; then
        run usermod "${ROOT_OPTIONS[@]}" --append --groups video "$SERVICE_USER"
    else
        say "user $SERVICE_USER present, in group video"
    fi
}

step_venv() {
    if [[ -x $(target "$VENV/bin/python") ]]; then
        grep -qx 'include-system-site-packages = true' "$(target "$VENV/pyvenv.cfg")" ||
            warn "$VENV does not see the system site-packages: picamera2 will be missing (remove it and rerun)"
        say "venv present: $VENV"
        return
    fi
    run install -d -m 0755 "$(target "$OPT_DIR")"
    # --system-site-packages: picamera2 and libcamera's Python bindings come from apt, not PyPI
    in_target python3 -m venv --system-site-packages "$VENV"
}

step_package() {
    local source=$REPO staged=""
    if [[ $ROOT != / ]]; then # pip runs inside the target, so it needs the source there
        staged=/tmp/faceagent-src
        run rm -rf "$(target "$staged")"
        run install -d -m 0755 "$(target "$staged")"
        run cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/agent" "$REPO/models" "$(target "$staged")/"
        source=$staged
    fi
    # [litert] only: picamera2 is the apt package, never the PyPI one (it would shadow the system build)
    in_target "$VENV/bin/pip" install --upgrade --no-cache-dir "${source}[litert]"
    [[ -z $staged ]] || run rm -rf "$(target "$staged")"
    in_target "$VENV/bin/faceagent" models verify
    in_target "$VENV/bin/faceagent" --version
}

step_config() {
    local config ids
    config="$(target "$CONFIG_DIR/faceagent.toml")"
    ids="$(user_ids)"
    ids=${ids:-$SERVICE_USER:$SERVICE_USER} # only in a dry run before the user exists
    run install -d -m 0755 "$(target "$CONFIG_DIR")"
    run install -d -m 0700 -o "${ids%:*}" -g "${ids#*:}" "$(target "$STATE_DIR")"
    if [[ -e $config ]]; then
        say "kept $CONFIG_DIR/faceagent.toml (an existing configuration is never overwritten)"
    else
        # 0600, the service user's: it may hold the broker password
        run install -m 0600 -o "${ids%:*}" -g "${ids#*:}" "$REPO/faceagent.example.toml" "$config"
    fi
}

step_unit() {
    local unit
    unit="$(target "$UNIT_DIR/$UNIT")"
    if cmp -s "$REPO/systemd/$UNIT" "$unit"; then
        say "unit unchanged: $UNIT_DIR/$UNIT"
        return
    fi
    run install -D -m 0644 "$REPO/systemd/$UNIT" "$unit"
    if systemd_running; then run systemctl daemon-reload; fi
}

# The configured [camera] source, "" when none (the agent then uses a Pi camera it finds, or runs without one).
configured_camera() {
    local config
    config="$(target "$CONFIG_DIR/faceagent.toml")"
    [[ -r $config && -x $(target "$VENV/bin/python") ]] || return 0
    "$(target "$VENV/bin/python")" -c 'import sys, tomllib
print(str(tomllib.load(open(sys.argv[1], "rb")).get("camera", {}).get("source", "")).strip())' "$config" 2>/dev/null || true
}

step_enable() {
    # enable only makes symlinks, so it works offline, in a chroot and with --root
    run systemctl "${ROOT_OPTIONS[@]}" enable "$UNIT"
    if systemd_running && ((START)); then
        # Without a camera the agent still comes up (READY, status "camera: not configured"), so this succeeds.
        run systemctl restart "$UNIT" || die "faceagent did not start: see journalctl -u $UNIT -b"
        ((DRY_RUN)) || say "faceagent is $(systemctl is-active "$UNIT"): $(systemctl show -p StatusText --value "$UNIT")"
    elif ((START)); then
        say "systemd is not running here: faceagent starts at the next boot"
    fi
    if ((!DRY_RUN)) && [[ -z $(configured_camera) ]]; then
        say "no [camera] source in $CONFIG_DIR/faceagent.toml: the agent uses the Pi camera when picamera2 finds one;"
        say "otherwise it runs and reports \"camera: not configured\". Next step: set [camera] source (and [mqtt] url),"
        say "then: sudo systemctl restart $UNIT"
    fi
}

uninstall() {
    if [[ -e $(target "$UNIT_DIR/$UNIT") ]]; then
        if systemd_running; then
            run systemctl disable --now "$UNIT"
        else
            run systemctl "${ROOT_OPTIONS[@]}" disable "$UNIT"
        fi
        run rm -f "$(target "$UNIT_DIR/$UNIT")"
        if systemd_running; then run systemctl daemon-reload; fi
    fi
    run rm -rf "$(target "$OPT_DIR")"
    if ((PURGE)); then
        run rm -rf "$(target "$CONFIG_DIR")" "$(target "$STATE_DIR")"
        if [[ -n $(user_ids) ]]; then
            run userdel "${ROOT_OPTIONS[@]}" "$SERVICE_USER"
        fi
    else
        say "kept $CONFIG_DIR and $STATE_DIR (configuration and gallery); --purge removes them"
    fi
    say "system packages (python3-venv, python3-picamera2) are left installed: other software may use them"
}

main() {
    parse_args "$@"
    preflight "$@"
    if ((UNINSTALL)); then
        uninstall
        return
    fi
    local step
    for step in ${ALL_STEPS//,/ }; do
        if has_step "$step"; then
            say "step $step"
            "step_$step"
        fi
    done
    say "done. Check: systemctl status $UNIT; journalctl -u $UNIT -f"
    say "manage the gallery as the service user: sudo -u $SERVICE_USER $VENV/bin/faceagent gallery list"
}

main "$@"

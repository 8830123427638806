#!/usr/bin/env bash
# faceagent booted for real: the unit under systemd as PID 1, in a Debian Bookworm container.
#
#   sudo scripts/boot_check.sh [--cache DIR] [--clean] [--keep] [--mirror URL] [--stay SECONDS]
#
# 1. Builds (once; cached by its inputs) a Bookworm rootfs with systemd, sudo and Mosquitto (debootstrap,
#    the host's architecture) and boots a fresh copy of it with `systemd-nspawn -b` (systemd is PID 1).
# 2. Inside: the README's device install verbatim (`sudo scripts/install.sh`, the first line of the sh block
#    under "Running on a device"), which must exit 0 and leave the unit active with "camera: not configured"
#    in its status and log, not crash-looping. Then an operator key (`faceagent ctl keygen`), a config (the
#    bundled clip as a file source, the local broker, signed commands required), an enrollment as the service
#    user, and these checks on the running unit:
#    READY (seconds from exec to READY); up --stay seconds (default 120) with one PID and advancing watchdog
#    pings; retained `online` and a `face_recognized` event on the broker; the sandbox in force (service uid,
#    no capabilities, seccomp, no_new_privs, read-only /); a signed MQTT `restart` answered and done in place
#    (same PID, no start counted), a second one refused as rate_limited; SIGSTOP: killed by the watchdog and
#    back; `systemctl restart`; `systemctl stop` publishes retained `offline` and leaves the unit inactive
#    (not failed); the unit's journal holds no refusal by the hardening (EPERM/EACCES/EROFS messages,
#    SIGSYS, systemd's 2xx set-up errors).
# Cache (default /var/cache/faceagent-boot as root): rootfs-<key>/ (debootstrap result, keyed by
# SCRIPT_VERSION, suite, architecture, variant and package list); each run boots a copy, run-root/, which is
# deleted at the next run (--keep also leaves it after a pass). --clean rebuilds the cached rootfs.
# The container shares the host's network (the Debian mirror for apt, the host's pip index for the install);
# the host's local pip wheel folders are bind-mounted read-only where pip.conf names them.
# Exit status: 0 passed; 1 a check failed (the message says which); 2 bad usage or environment.
set -euo pipefail

SCRIPT_VERSION=1 # bump when the way the rootfs is built changes: it is part of the cache key
SUITE=bookworm
VARIANT=minbase
# Not python3-venv: the install's own `packages` step must fetch it, as on a fresh Pi.
INCLUDE=systemd,systemd-sysv,dbus,python3,mosquitto,mosquitto-clients,sudo,ca-certificates,procps
HOST_PACKAGES=(systemd-container debootstrap rsync)
IN_ROOT=/srv/faceagent # inside the container: main/ (the checkout), media/ (clip, photo), out/
DEVICE=boot-check
STAY=120

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $EUID -eq 0 ]]; then CACHE=/var/cache/faceagent-boot; else CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/faceagent-boot; fi
CACHE=${FACEAGENT_BOOT_CACHE:-$CACHE}
CLEAN=0
KEEP=0
MIRROR=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --cache) CACHE=$2; shift 2 ;;
        --clean) CLEAN=1; shift ;;
        --keep) KEEP=1; shift ;;
        --mirror) MIRROR=$2; shift 2 ;;
        --stay) STAY=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "boot_check: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $STAY =~ ^[0-9]+$ ]] || { echo "boot_check: --stay needs whole seconds, got '$STAY'" >&2; exit 2; }

# ----------------------------------------------------------------------------- reporting (as arm64_check.sh)

CHECK_NAME="boot check"
LOG_NAME=boot_check
PHASE_WIDTH=52
# shellcheck source=scripts/_rootfs_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_rootfs_lib.sh"

# ----------------------------------------------------------------------------- container and cleanup

RUN_ROOT=""
NSPAWN_PID=""
LEADER=""

power_off() { # the container's systemd shuts down cleanly; nspawn exits with it
    [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null || return 0
    [[ -n $LEADER ]] && kill -RTMIN+4 "$LEADER" 2>/dev/null # systemd: poweroff
    local i
    for ((i = 0; i < 60; i++)); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || return 0
        sleep 0.5
    done
    say "boot_check: the container did not power off within 30 s: killing systemd-nspawn ($NSPAWN_PID)" >&2
    kill "$NSPAWN_PID" 2>/dev/null
    sleep 2
    kill -9 "$NSPAWN_PID" 2>/dev/null || true
}
cleanup() {
    local status=$?
    set +e
    trap - ERR
    power_off
    [[ -n $PHASE ]] && end_phase "$([[ $status == 0 ]] && echo ok || echo FAILED)"
    if [[ -n $RUN_ROOT && -d $RUN_ROOT ]]; then
        if [[ $status == 0 && $KEEP == 0 ]]; then
            safe_remove "$RUN_ROOT"
        else
            say "  the container's tree is kept for inspection: $RUN_ROOT (journal: journalctl -D $RUN_ROOT/var/log/journal)"
        fi
    fi
    print_summary boot
    exit $status
}
trap cleanup EXIT
trap 'fail "unexpected error (line $LINENO: $BASH_COMMAND)"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# inside 'shell command': run in the booted container (all its namespaces), as root, output to stdout
inside() {
    nsenter --target "$LEADER" --all /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb /bin/bash -o pipefail -c "$1"
}
unit() { inside "systemctl show -p $1 --value faceagent.service"; } # one property of the unit
LOGS=""
logged() { # logged NAME 'shell command': inside, output to $LOGS/NAME.log
    inside "$2" >"$LOGS/$1.log" 2>&1
}
wait_until() { # wait_until SECONDS 'shell command (inside)': true once it succeeds, false at the deadline
    local deadline=$((SECONDS + $1))
    while ((SECONDS < deadline)); do
        inside "$2" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}
mqtt_log() { cat "$RUN_ROOT$IN_ROOT/out/mqtt.log" 2>/dev/null || true; } # "retain topic payload" lines
status_lines() { mqtt_log | awk -v t="faceagent/$DEVICE/status" '$2 == t'; }
count_status() { status_lines | grep -c "$1" || true; }
# What a new subscriber gets for the status topic: the retained message, "1 payload" (1: the retain flag).
retained_status() { inside "mosquitto_sub -h 127.0.0.1 -t faceagent/$DEVICE/status -C 1 -W 5 -F '%r %p'" 2>/dev/null || true; }
ctl() { # ctl ARGS...: the operator's side, signed, from inside the container
    inside "/opt/faceagent/venv/bin/faceagent ctl $* --mqtt mqtt://127.0.0.1:1883 --sign-key /root/operator.pem --json"
}

# ----------------------------------------------------------------------------- preconditions

[[ $EUID -eq 0 ]] || { say "boot_check: needs root (debootstrap, systemd-nspawn): sudo $0 $*" >&2; exit 2; }
# The README's device install, verbatim: the first line of the first ```sh block under "## Running on a device".
README_INSTALL=$(awk '/^## Running on a device/ { found = 1 } found && /^```sh[[:space:]]*$/ { inside = 1; next }
                      inside { print; exit }' "$REPO/README.md" | sed 's/[[:space:]]*#.*$//')
[[ -n $README_INSTALL ]] ||
    { say "boot_check: no \`\`\`sh block under '## Running on a device' in $REPO/README.md" >&2; exit 2; }

say "faceagent boot check: $REPO"
say "  cache $CACHE; the unit stays up ${STAY} s"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    say "  another boot check holds $CACHE/.lock: waiting for it"
    flock 9
fi

phase "host tools (systemd-nspawn, debootstrap)"
missing=()
for tool in debootstrap systemd-nspawn nsenter rsync; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "  missing: ${missing[*]}: apt-get install ${HOST_PACKAGES[*]}"
    install_host_packages "${HOST_PACKAGES[@]}"
fi
say "  $(systemd-nspawn --version | head -1), debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null)"
ARCH=$(dpkg --print-architecture)

# The Debian mirror apt already uses here (never a host name written in this repository); as arm64_check.sh.
[[ -n $MIRROR ]] || MIRROR=$(debian_mirror "$SUITE")
[[ -n $MIRROR ]] || fail "no '$SUITE' Debian source in /etc/apt/sources.list{,.d}: pass --mirror URL"
use_apt_proxy
say "  Debian mirror (from apt's sources): $MIRROR"

# ----------------------------------------------------------------------------- the cached rootfs

BASE_KEY=$(printf 'v%s %s %s %s %s\n' "$SCRIPT_VERSION" "$SUITE" "$ARCH" "$VARIANT" "$INCLUDE" | sha_of)
BASE=$CACHE/rootfs-$BASE_KEY
if [[ $CLEAN == 1 ]]; then
    say "  --clean: deleting the cached rootfs in $CACHE"
    for old in "$CACHE"/rootfs-* "$CACHE/run-root"; do safe_remove "$old"; done
fi

phase "$ARCH $SUITE rootfs with systemd (debootstrap)"
if [[ -f $BASE/.boot-check-key ]] && [[ $(cat "$BASE/.boot-check-key") == "$BASE_KEY" ]]; then
    say "  cached: $BASE (key $BASE_KEY)"
else
    safe_remove "$BASE"
    safe_remove "$BASE.tmp"
    mkdir -p "$CACHE/logs"
    say "  debootstrap --arch=$ARCH --variant=$VARIANT --include=$INCLUDE $SUITE $BASE $MIRROR"
    if ! debootstrap --arch="$ARCH" --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$BASE.tmp" "$MIRROR" \
        >"$CACHE/logs/debootstrap.log" 2>&1; then
        tail -n 25 "$CACHE/logs/debootstrap.log" | indent
        fail "debootstrap of the $SUITE rootfs failed (log: $CACHE/logs/debootstrap.log)"
    fi
    rm -f "$BASE.tmp/etc/machine-id" "$BASE.tmp/var/lib/dbus/machine-id" # each boot makes its own
    echo "$BASE_KEY" >"$BASE.tmp/.boot-check-key"
    mv "$BASE.tmp" "$BASE"
    say "  built $BASE ($(du -sh --one-file-system "$BASE" | cut -f1))"
fi

phase "fresh container: copy of the rootfs, checkout, pip settings"
RUN_ROOT=$CACHE/run-root
safe_remove "$RUN_ROOT"
cp -a --reflink=auto "$BASE" "$RUN_ROOT"
mkdir -p "$RUN_ROOT$IN_ROOT/main" "$RUN_ROOT$IN_ROOT/media" "$RUN_ROOT$IN_ROOT/out"
rsync -a --exclude=/.venv --exclude=/.git --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
    --exclude=/build --exclude=/dist "$REPO/" "$RUN_ROOT$IN_ROOT/main/"
install -m 0644 "$REPO/samples/hamilton_clip.mp4" "$REPO/samples/hamilton_frame_0100.jpg" "$RUN_ROOT$IN_ROOT/media/"
chmod 0755 "$RUN_ROOT$IN_ROOT" "$RUN_ROOT$IN_ROOT/media"
echo "faceagent-boot" >"$RUN_ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 faceagent-boot\n' >"$RUN_ROOT/etc/hosts" # sudo resolves its host name
# The host's pip settings (sudo, as the README runs it, reads only /etc/pip.conf): same index, trusted hosts,
# proxy, CA bundle; the local folders and file:// indexes they name are bound read-only at the same paths.
BINDS=()
while IFS= read -r line; do
    case $line in
        bind\ *) BINDS+=("--bind-ro=${line#bind }") ;;
        *) say "  $line" ;;
    esac
done < <(python3 "$REPO/scripts/_pip_for_rootfs.py" "$RUN_ROOT" /etc/faceagent-boot/host-ca.crt --local bind)

phase "boot: systemd-nspawn -b (systemd as PID 1)"
LOGS=$CACHE/last-run
safe_remove "$LOGS"
mkdir -p "$LOGS"
say "  systemd-nspawn -D $RUN_ROOT -b --register=no --keep-unit ${BINDS[*]}"
systemd-nspawn -D "$RUN_ROOT" -b --register=no --keep-unit --console=passive --resolv-conf=copy-host \
    "${BINDS[@]}" >"$LOGS/nspawn.log" 2>&1 &
NSPAWN_PID=$!
for ((i = 0; i < 60; i++)); do
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [[ -n $LEADER ]] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || { indent <"$LOGS/nspawn.log"; fail "systemd-nspawn exited at boot"; }
    sleep 0.5
done
[[ -n $LEADER ]] || { indent <"$LOGS/nspawn.log"; fail "no systemd in the container after 30 s"; }
for ((i = 0; i < 120; i++)); do # until PID 1 answers on its private socket
    inside 'test -S /run/systemd/private' 2>/dev/null && break
    sleep 0.5
done
system_state=$(inside 'timeout 90 systemctl is-system-running --wait' 2>&1) || true
say "  PID 1 in the container: $(inside 'cat /proc/1/comm') ($(inside 'systemctl --version | head -1')), system $system_state"
[[ $system_state == running || $system_state == degraded ]] || fail "the container did not finish booting: $system_state"
[[ $system_state == running ]] || inside 'systemctl --failed --no-legend' | indent
inside 'systemctl is-active mosquitto.service' >/dev/null || fail "the local broker (mosquitto.service) is not active"

# ----------------------------------------------------------------------------- the README install

phase "README device install: $README_INSTALL"
if ! logged install "cd $IN_ROOT/main && $README_INSTALL"; then
    tail -n 30 "$LOGS/install.log" | indent
    fail "the README's device install ($README_INSTALL) failed on a fresh system (log: $LOGS/install.log)"
fi
grep -E '^faceagent-install:' "$LOGS/install.log" | indent
[[ $(unit ActiveState) == active ]] || fail "after the install faceagent.service is $(unit ActiveState), not active"
say "  faceagent.service: $(unit ActiveState), status: $(unit StatusText)"
START_ORDER=$(unit After)
[[ " $START_ORDER " == *" mosquitto.service "* ]] || fail "the unit is not ordered after the local broker: After=$START_ORDER"
say "  ordered after the local broker (so stopped before it): After=$START_ORDER"

phase "fresh install: runs without a camera, says what to do, no restart loop"
sleep 12 # longer than RestartSec=: a crash loop would show by now
[[ $(unit ActiveState) == active && $(unit NRestarts) == 0 ]] ||
    fail "without a camera the unit is $(unit ActiveState) after $(unit NRestarts) restarts"
[[ $(unit StatusText) == *"not configured"* ]] || fail "the unit's status does not say the camera is not configured: $(unit StatusText)"
journal_hint=$(inside 'journalctl -u faceagent.service -b --no-pager -o cat | grep -m1 "camera not configured"' || true)
[[ $journal_hint == *"set [camera] source in /etc/faceagent/faceagent.toml"* ]] ||
    fail "the log does not say how to configure the camera: '$journal_hint'"
say "  active, 0 restarts; log: $journal_hint"

# ----------------------------------------------------------------------------- configure, enroll, start

phase "operator key, config (clip, local broker, signed commands), enrollment"
logged keygen '/opt/faceagent/venv/bin/faceagent ctl keygen /root/operator.pem' || { indent <"$LOGS/keygen.log"; fail "faceagent ctl keygen failed"; }
PUBLIC_KEY=$(sed -n 's/^public_keys = \["\(.*\)"\]$/\1/p' "$LOGS/keygen.log") # the TOML line keygen prints
[[ -n $PUBLIC_KEY ]] || { indent <"$LOGS/keygen.log"; fail "faceagent ctl keygen printed no public key"; }
cat >"$RUN_ROOT$IN_ROOT/out/faceagent.toml" <<EOF
# written by scripts/boot_check.sh
[mqtt]
url = "mqtt://127.0.0.1:1883"
device_id = "$DEVICE"
telemetry_interval_seconds = 10

[commands]
public_keys = ["$PUBLIC_KEY"]

[camera]
source = "file:$IN_ROOT/media/hamilton_clip.mp4"
loop = true
fps = 15.0
EOF
inside "install -m 0600 -o faceagent -g faceagent $IN_ROOT/out/faceagent.toml /etc/faceagent/faceagent.toml"
logged config_check 'sudo -u faceagent /opt/faceagent/venv/bin/faceagent config check /etc/faceagent/faceagent.toml' ||
    { indent <"$LOGS/config_check.log"; fail "faceagent config check refused the config"; }
logged enroll "sudo -u faceagent /opt/faceagent/venv/bin/faceagent --config /etc/faceagent/faceagent.toml enroll \
    --name 'Lin-Manuel Miranda' $IN_ROOT/media/hamilton_frame_0100.jpg" ||
    { indent <"$LOGS/enroll.log"; fail "enrollment as the service user failed"; }
indent <"$LOGS/enroll.log"
# Everything on the broker from here on, with the retain flag: "retain topic payload" per line.
inside "systemd-run --quiet --unit=boot-check-mqtt -p StandardOutput=file:$IN_ROOT/out/mqtt.log \
    mosquitto_sub -h 127.0.0.1 -t 'faceagent/#' -F '%r %t %p'"

phase "systemctl restart: READY"
inside 'systemctl restart faceagent.service' || fail "systemctl restart faceagent failed: $(unit Result)"
exec_at=$(unit ExecMainStartTimestampMonotonic)
ready_at=$(unit ActiveEnterTimestampMonotonic)
READY_S=$(awk -v a="$exec_at" -v b="$ready_at" 'BEGIN { printf "%.2f", (b - a) / 1e6 }')
say "  READY ${READY_S} s after the agent's exec; status: $(unit StatusText)"
[[ $(unit StatusText) == *"frames flowing"* || $(unit StatusText) == *fps* ]] ||
    fail "READY without frames from the clip: $(unit StatusText)"

phase "the sandbox in force"
PID=$(unit MainPID)
uid=$(inside "awk '/^Uid:/ { print \$2 }' /proc/$PID/status")
service_uid=$(inside 'id -u faceagent')
caps=$(inside "awk '/^CapEff:|^CapBnd:|^CapAmb:/ { printf \"%s%s \", \$1, \$2 }' /proc/$PID/status")
seccomp=$(inside "awk '/^Seccomp:/ { print \$2 }' /proc/$PID/status")
nnp=$(inside "awk '/^NoNewPrivs:/ { print \$2 }' /proc/$PID/status")
root_mount=$(inside "awk '\$5 == \"/\" { print \$6 }' /proc/$PID/mountinfo")
say "  uid $uid (faceagent: $service_uid), $caps seccomp $seccomp, no_new_privs $nnp, / mounted $root_mount"
[[ $uid == "$service_uid" ]] || fail "the agent runs as uid $uid, not the faceagent user ($service_uid)"
[[ $caps == "CapEff:0000000000000000 CapBnd:0000000000000000 CapAmb:0000000000000000 " ]] || fail "capabilities left: $caps"
[[ $seccomp == 2 && $nnp == 1 ]] || fail "no seccomp filter ($seccomp) or no no_new_privs ($nnp)"
[[ $root_mount == ro* ]] || fail "/ is writable for the agent ($root_mount)"

phase "up ${STAY} s: one PID, watchdog pings, online, face_recognized"
first_ping=$(unit WatchdogTimestampMonotonic)
deadline=$((SECONDS + STAY))
while ((SECONDS < deadline)); do
    sleep 10
    [[ $(unit MainPID) == "$PID" && $(unit ActiveState) == active ]] ||
        fail "the agent did not stay up: $(unit ActiveState), PID $(unit MainPID) (was $PID), result $(unit Result)"
done
last_ping=$(unit WatchdogTimestampMonotonic)
say "  PID $PID for ${STAY} s, $(unit NRestarts) restarts; last watchdog ping $(awk -v a="$first_ping" -v b="$last_ping" \
    'BEGIN { printf "%.0f", (b - a) / 1e6 }') s after the first one; status: $(unit StatusText)"
((last_ping > first_ping)) || fail "no watchdog ping in ${STAY} s (WatchdogTimestampMonotonic stayed $first_ping)"
retained=$(retained_status)
[[ $retained =~ ^1\ .*\"state\":\ *\"online\" ]] || fail "the broker holds no retained online status: '${retained:0:200}'"
recognized=$(mqtt_log | awk -v t="faceagent/$DEVICE/events/face_recognized" '$2 == t' | grep -c 'Lin-Manuel Miranda' || true)
((recognized > 0)) || fail "no face_recognized event for the enrolled person in ${STAY} s"
say "  retained online: yes; face_recognized events: $recognized"

phase "signed MQTT restart: in place, not a start; a second one refused"
online_before=$(count_status '"state": *"online"')
ctl call "$DEVICE" restart >"$LOGS/restart1.log" 2>&1 || { indent <"$LOGS/restart1.log"; fail "the signed MQTT restart was not accepted"; }
grep -q '"restarting": *true' "$LOGS/restart1.log" || { indent <"$LOGS/restart1.log"; fail "no restarting reply"; }
deadline=$((SECONDS + 60))
until (($(count_status '"state": *"online"') > online_before)) && [[ $(unit ActiveState) == active ]] &&
    [[ $(unit StatusText) == *"frames flowing"* || $(unit StatusText) == *fps* ]]; do
    ((SECONDS < deadline)) || fail "60 s after the MQTT restart: $(unit ActiveState), status $(unit StatusText)"
    sleep 1
done
[[ $(unit MainPID) == "$PID" && $(unit NRestarts) == 0 ]] ||
    fail "the MQTT restart was a new start: PID $(unit MainPID) (was $PID), $(unit NRestarts) restarts"
say "  first: $(tr -d '\n' <"$LOGS/restart1.log" | cut -c1-150)"
ctl call "$DEVICE" restart >"$LOGS/restart2.log" 2>&1 && { indent <"$LOGS/restart2.log"; fail "a second restart within 60 s ran"; }
grep -q 'rate_limited' "$LOGS/restart2.log" || { indent <"$LOGS/restart2.log"; fail "the second restart was not refused as rate_limited"; }
say "  second, once it was back: $(grep -o 'restart refused[^"]*' "$LOGS/restart2.log" | head -1)"
sleep 2
[[ $(unit MainPID) == "$PID" && $(unit ActiveState) == active ]] || fail "the refused restart changed the unit: $(unit ActiveState)"
say "  back in place: PID $PID, 0 restarts, status: $(unit StatusText)"

phase "frozen loop (SIGSTOP): killed by the watchdog, back"
inside "kill -STOP $PID"
stopped_at=$SECONDS
wait_until 90 "pid=\$(systemctl show -p MainPID --value faceagent.service); test \"\$pid\" != $PID -a \"\$pid\" != 0 && \
    test \"\$(systemctl show -p ActiveState --value faceagent.service)\" = active" ||
    fail "the frozen agent was not restarted within 90 s: $(unit ActiveState), PID $(unit MainPID), result $(unit Result)"
inside 'journalctl -u faceagent.service -b --no-pager -o cat' >"$LOGS/journal.log"
grep -q 'Watchdog timeout' "$LOGS/journal.log" || fail "the journal does not show a watchdog timeout"
PID=$(unit MainPID)
say "  $(grep -m1 'Watchdog timeout' "$LOGS/journal.log"); back as PID $PID after $((SECONDS - stopped_at)) s, $(unit NRestarts) restart(s)"

phase "systemctl restart"
inside 'systemctl restart faceagent.service' || fail "systemctl restart failed: $(unit Result)"
[[ $(unit ActiveState) == active && $(unit MainPID) != "$PID" ]] || fail "after systemctl restart: $(unit ActiveState)"
PID=$(unit MainPID)
say "  active, PID $PID, status: $(unit StatusText)"

phase "systemctl stop: offline published, inactive (not failed)"
offline_before=$(count_status '"state": *"offline"')
inside 'systemctl stop faceagent.service' || fail "systemctl stop failed"
sleep 1
state=$(unit ActiveState)
[[ $state == inactive ]] || fail "after stop the unit is $state ($(unit Result))"
(($(count_status '"state": *"offline"') > offline_before)) || fail "no offline status published at the stop"
retained=$(retained_status)
[[ $retained =~ ^1\ .*\"state\":\ *\"offline\".*\"reason\":\ *\"stopped\" ]] ||
    fail "the broker's retained status is not offline (stopped): '${retained:0:200}'"
say "  $state, result $(unit Result); last status: retained offline (stopped)"

phase "journal: no refusal by the hardening"
inside 'journalctl -u faceagent.service -b --no-pager -o cat' >"$LOGS/journal.log"
inside 'journalctl -b --no-pager -o short-monotonic' >"$LOGS/journal-all.log" || true
mqtt_log >"$LOGS/mqtt.log"
refusals=$(grep -E 'Operation not permitted|Permission denied|Read-only file system|EPERM|EACCES|EROFS|signal=SYS|status=2[0-9]{2}/|code=killed, status=31' \
    "$LOGS/journal.log" || true)
if [[ -n $refusals ]]; then
    printf '%s\n' "$refusals" | head -n 20 | indent
    fail "the unit's journal shows refusals by the hardening (above; whole journal: $LOGS/journal.log)"
fi
say "  $(wc -l <"$LOGS/journal.log") lines from faceagent.service, none a refusal (the syscall filter answers EPERM"
say "  silently: OpenBLAS's mbind and glibc's clone3 fall back, as the unit says)"
end_phase ok

say ""
say "What only a Pi can show: the camera (picamera2, libcamera, the device-cgroup policy on /dev/video*,"
say "/dev/media*, /dev/dma_heap), MemoryMax=/TasksMax= under the Pi's memory pressure, speed, the Pi's kernel."
say "boot check PASSED. Logs: $LOGS"

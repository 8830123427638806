#!/usr/bin/env bash
# Installs everything the tests need on Debian / Raspberry Pi OS, then runs the whole suite.
#   system: mosquitto (the tests start their own brokers on free 127.0.0.1 ports), openssl (test
#           certificates), systemd (systemd-analyze verifies the unit), shellcheck (the installer),
#           python3-seccomp (the unit's syscall filter rebuilt in a test), chromium and chromium-driver (the
#           operator's console in a real headless browser); apt, as root or through sudo
#   python: a .venv with the package and its [test] extra (pytest and pytest-xdist, and ruff, import-linter and
#           mypy, run first)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v openssl >/dev/null || missing+=(openssl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v shellcheck >/dev/null || missing+=(shellcheck)
dpkg -s python3-seccomp >/dev/null 2>&1 || missing+=(python3-seccomp)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
# The house rules first (seconds): style, the wings' import contracts, types (pyproject.toml).
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-logo --no-cache
.venv/bin/mypy
# Two pytest-xdist workers (most tests wait on real time: replayed clips, agents, brokers), each test file whole
# on one of them: a module's fixtures are made once, and the fuzz modules count what all their tests tried.
# Arguments after these win (`-n 0`: one process).
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"

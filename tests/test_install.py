"""The installer (scripts/install.sh) and the unit (systemd/faceagent.service), checked without a running systemd.

The unit is checked by systemd's own tools (`systemd-analyze verify`, `security`), and its syscall, W^X and
socket limits are rebuilt with libseccomp around the real agent to show that recognition and MQTT still work
inside them. The installer's steps that need no apt, pip or systemd run for real in a throwaway --root tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import build_parser
from tests.support.broker import Broker
from tests.support.data import REPO, SAMPLE

pytestmark = pytest.mark.slow  # the installer and the systemd unit: install.sh, systemd-analyze, its sandbox

SCRIPT = REPO / "scripts" / "install.sh"
UNIT = REPO / "systemd" / "faceagent.service"
AGENT = Path(sys.executable).parent / "faceagent"
EXPECTED_ACTIONS = [
    "apt-get install -y --no-install-recommends python3-venv python3-picamera2",
    "useradd --root {root} --system --user-group --groups video",
    "python3 -m venv --system-site-packages /opt/faceagent/venv",
    "/opt/faceagent/venv/bin/pip install --upgrade",
    "faceagent.example.toml {root}/etc/faceagent/faceagent.toml",
    "systemd/faceagent.service {root}/etc/systemd/system/faceagent.service",
    "systemctl --root {root} enable faceagent.service",
]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="useradd --root and chown need root")


def install(*args: str | Path, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(user or []), "bash", str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A minimal system image: the account files useradd --root edits, with a `video` group."""
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (image / "etc" / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (image / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (image / "etc" / "gshadow").write_text("root:*::\nvideo:!::\n")
    return image


def snapshot(folder: Path) -> list[tuple[str, int, int, bytes]]:
    return sorted(
        (str(p.relative_to(folder)), p.lstat().st_mode, p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in folder.rglob("*")
    )


# ------------------------------------------------------------------------------------------ installer


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_the_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_lists_every_action(tmp_path: Path) -> None:
    result = install("--dry-run", "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    for action in EXPECTED_ACTIONS:
        assert action.format(root=tmp_path) in result.stdout, action


def test_dry_run_changes_nothing(root: Path) -> None:
    before = snapshot(root)
    result = install("--dry-run", "--root", root)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("+ ")]  # nothing executed
    assert snapshot(root) == before


def test_dry_run_of_an_uninstall_changes_nothing(root: Path) -> None:
    before = snapshot(root)
    result = install("--dry-run", "--root", root, "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert f"would run: rm -rf {root}/opt/faceagent" in result.stdout
    assert snapshot(root) == before


def test_unknown_options_are_refused() -> None:
    result = install("--frobnicate")
    assert result.returncode == 1
    assert "unknown option --frobnicate" in result.stderr


def test_unknown_steps_are_refused(tmp_path: Path) -> None:
    result = install("--dry-run", "--root", tmp_path, "--steps", "config,teleport")
    assert result.returncode == 1
    assert "unknown step 'teleport'" in result.stderr


@needs_root
def test_a_real_run_needs_root() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s", "--", "--root", "/tmp"]
    result = subprocess.run(command, input=SCRIPT.read_text(), capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 1
    assert "run as root" in result.stderr


@needs_root
def test_the_user_step_creates_the_service_user_in_video(root: Path) -> None:
    assert install("--root", root, "--steps", "user").returncode == 0
    assert re.search(r"^faceagent:x:\d+:\d+:", (root / "etc" / "passwd").read_text(), re.M)
    assert re.search(r"^video:x:44:faceagent$", (root / "etc" / "group").read_text(), re.M)


@needs_root
def test_the_user_step_twice_adds_no_second_user(root: Path) -> None:
    install("--root", root, "--steps", "user")
    again = install("--root", root, "--steps", "user")
    assert "user faceagent present, in group video" in again.stdout
    assert len(re.findall(r"^faceagent:", (root / "etc" / "passwd").read_text(), re.M)) == 1


@needs_root
def test_the_config_step_writes_a_private_config(root: Path) -> None:
    result = install("--root", root, "--steps", "user,config")
    config = root / "etc" / "faceagent" / "faceagent.toml"
    assert result.returncode == 0, result.stderr
    assert config.read_bytes() == (REPO / "faceagent.example.toml").read_bytes()
    assert (config.stat().st_mode & 0o777, config.stat().st_uid) == (0o600, _uid(root, "faceagent"))
    assert (root / "var" / "lib" / "faceagent").stat().st_mode & 0o777 == 0o700


@needs_root
def test_the_config_step_never_overwrites_a_config(root: Path) -> None:
    install("--root", root, "--steps", "user,config")
    config = root / "etc" / "faceagent" / "faceagent.toml"
    config.write_text('[mqtt]\ndevice_id = "mine"\n')
    stamp = config.stat().st_mtime_ns
    again = install("--root", root, "--steps", "config")
    assert again.returncode == 0, again.stderr
    assert "kept /etc/faceagent/faceagent.toml" in again.stdout
    assert (config.read_text(), config.stat().st_mtime_ns) == ('[mqtt]\ndevice_id = "mine"\n', stamp)


@needs_root
def test_the_unit_is_installed_and_enabled_offline(root: Path) -> None:
    result = install("--root", root, "--steps", "unit,enable")
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "faceagent.service"
    assert result.returncode == 0, result.stderr
    assert (root / "etc" / "systemd" / "system" / "faceagent.service").read_bytes() == UNIT.read_bytes()
    assert os.readlink(wants) == "/etc/systemd/system/faceagent.service"


@needs_root
def test_an_install_without_a_camera_prints_the_step_that_finishes_it(root: Path) -> None:
    result = install("--root", root, "--steps", "user,config,unit,enable")
    assert result.returncode == 0, result.stderr
    assert "no [camera] source in /etc/faceagent/faceagent.toml" in result.stdout
    assert "Next step: set [camera] source" in result.stdout and "sudo systemctl restart faceagent" in result.stdout


@needs_root
def test_installing_the_unit_twice_changes_nothing(root: Path) -> None:
    install("--root", root, "--steps", "user,config,unit,enable")
    before = snapshot(root)
    again = install("--root", root, "--steps", "user,config,unit,enable")
    assert again.returncode == 0, again.stderr
    assert "unit unchanged" in again.stdout
    assert snapshot(root) == before


@needs_root
def test_uninstall_keeps_config_and_data(root: Path) -> None:
    install("--root", root, "--steps", "user,config,unit,enable")
    result = install("--root", root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc" / "systemd" / "system" / "faceagent.service").exists()
    assert not (root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "faceagent.service").is_symlink()
    assert (root / "etc" / "faceagent" / "faceagent.toml").is_file()
    assert (root / "var" / "lib" / "faceagent").is_dir()


@needs_root
def test_uninstall_purge_removes_config_data_and_user(root: Path) -> None:
    install("--root", root, "--steps", "user,config,unit,enable")
    result = install("--root", root, "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc" / "faceagent").exists()
    assert not (root / "var" / "lib" / "faceagent").exists()
    assert not re.search(r"^faceagent:", (root / "etc" / "passwd").read_text(), re.M)


def _uid(root: Path, name: str) -> int:
    line = next(x for x in (root / "etc" / "passwd").read_text().splitlines() if x.startswith(name + ":"))
    return int(line.split(":")[2])


# ------------------------------------------------------------------------------------------ the unit


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    return tool


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify also checks that ExecStart= exists, so the venv path points at a stand-in executable here."""
    tool = _systemd_analyze()
    stand_in = tmp_path / "faceagent"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "faceagent.service"
    unit.write_text(UNIT.read_text().replace("/opt/faceagent/venv/bin/faceagent", str(stand_in)))
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_units_commands_parse_with_the_cli() -> None:
    commands = re.findall(r"^ExecStart(?:Pre)?=[-+]*/opt/faceagent/venv/bin/faceagent (.*)$", UNIT.read_text(), re.M)
    assert len(commands) == 2
    for line in commands:
        assert callable(build_parser().parse_args(line.split()).handler), line


def test_the_unit_exposure_score_is_low() -> None:
    tool = _systemd_analyze()
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    score = re.search(r"Overall exposure level for faceagent.service: ([\d.]+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.0  # 1.5 when written; systemd calls up to 3.9 "OK"


# ------------------------------------------------------------------------------------------ the sandbox

SANDBOX = """
import errno, mmap, os, socket, subprocess, sys
sys.path.append("/usr/lib/python3/dist-packages")
import seccomp

def expand(group):
    lines = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True).stdout
    names = set()
    for line in lines.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= expand(word) if word.startswith("@") else {word}
    return names

allow, deny, families, mdwe, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "yes", sys.argv[5:]
allowed = set().union(*map(expand, allow.split())) - set().union(*map(expand, deny.split()))
special = {"mmap", "mprotect", "pkey_mprotect", "socket"}
sandbox = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in sorted(allowed - special):
    try:
        sandbox.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):
        pass  # a name this architecture does not have
W, X = mmap.PROT_WRITE, mmap.PROT_EXEC
for prot in ((0, W, X) if mdwe else (0, W, X, W | X)):
    sandbox.add_rule(seccomp.ALLOW, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, W | X, prot))
for call in ("mprotect", "pkey_mprotect"):
    for prot in ((0,) if mdwe else (0, X)):
        sandbox.add_rule(seccomp.ALLOW, call, seccomp.Arg(2, seccomp.MASKED_EQ, X, prot))
for family in families.split():
    sandbox.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, getattr(socket, family)))
sandbox.load()
os.execv(command[0], command)
"""

PUBLISH = """
import sys, paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_start()
client.publish("faceagent/sandbox", b"inside", qos=1).wait_for_publish(10)
client.disconnect()
client.loop_stop()
print("published")
"""


def test_the_unit_starts_after_a_local_broker_without_requiring_one() -> None:
    assert "mosquitto.service" in " ".join(_unit_values("After"))  # and so stops before it at shutdown
    pulled_in = " ".join(_unit_values("Wants") + _unit_values("Requires") + _unit_values("BindsTo"))
    assert "mosquitto" not in pulled_in


def test_the_start_limit_lets_restarts_a_minute_apart_through() -> None:
    """systemd counts every start: the window must be short enough that an occasional watchdog restart or
    `systemctl restart` never adds up to a `failed` unit, while a start that fails at once still does."""
    interval, burst = int(_unit_values("StartLimitIntervalSec")[0]), int(_unit_values("StartLimitBurst")[0])
    restart_sec = int(_unit_values("RestartSec")[0])
    assert interval / 60 < burst  # one start a minute never reaches the limit
    assert burst * restart_sec <= interval  # a crash at start-up (one start per RestartSec) does


def _unit_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.M)


def in_sandbox(tmp_path: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    """`command` under the unit's SystemCallFilter=, MemoryDenyWriteExecute= and RestrictAddressFamilies=."""
    _systemd_analyze()
    probe = "import sys; sys.path.append('/usr/lib/python3/dist-packages'); import seccomp"
    if subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode != 0:
        pytest.skip("python3-seccomp not installed (apt-get install python3-seccomp)")
    filters = _unit_values("SystemCallFilter")
    allow = " ".join(f for f in filters if not f.startswith("~"))
    deny = " ".join(f[1:] for f in filters if f.startswith("~"))
    (families,) = _unit_values("RestrictAddressFamilies")
    (mdwe,) = _unit_values("MemoryDenyWriteExecute")
    helper = tmp_path / "sandbox.py"
    helper.write_text(SANDBOX)
    argv = ["/usr/bin/python3", str(helper), allow, deny, families, mdwe, *map(str, command)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_the_sandbox_really_refuses_writable_executable_memory(tmp_path: Path) -> None:
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    result = in_sandbox(tmp_path, sys.executable, "-c", probe)
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr


def test_recognition_runs_inside_the_units_sandbox(tmp_path: Path) -> None:
    result = in_sandbox(tmp_path, AGENT, "identify", "--json", SAMPLE)
    assert result.returncode == 0, result.stderr
    assert '"score"' in result.stdout


def test_mqtt_works_inside_the_units_sandbox(tmp_path: Path, broker: Broker) -> None:
    result = in_sandbox(tmp_path, sys.executable, "-c", PUBLISH, str(broker.port))
    assert (result.returncode, result.stdout.strip()) == (0, "published"), result.stderr

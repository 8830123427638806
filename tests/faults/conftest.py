"""Fault-suite helpers: a real `faceagent run` process, its config, and what it delivered."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broker import Broker, Observer
from tests.command_fixtures import OPERATOR_TOML

REPO = Path(__file__).resolve().parents[2]
DEVICE = "fault-1"
CLIP_ENROL = "sequence/hamilton_clip/enroll/Lin-Manuel_Miranda.png"
EVENT_TOPICS = [f"faceagent/{DEVICE}/events/face_recognized", f"faceagent/{DEVICE}/events/face_unknown"]


def write_config(folder: Path, broker: Broker, *, fps: float = 30, loop: bool = True, extra: str = "") -> Path:
    """The agent's settings; it trusts the test operator's command key (tests.command_fixtures)."""
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 5\ntelemetry_interval_seconds = 1\n'
        f"[camera]\nfps = {fps}\nloop = {'true' if loop else 'false'}\n"
        '[events]\ncamera_id = "stage"\ncooldown_seconds = 0\nunknown_cooldown_seconds = 0\n' + OPERATOR_TOML + extra
    )
    return config


def agent_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def enroll(shared_data: Path, db: Path, config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "enroll", "--db", str(db),
         "--name", "Lin-Manuel Miranda", "--json", str(shared_data / CLIP_ENROL)],
        capture_output=True, text=True, timeout=120, env=agent_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def start_agent(config: Path, db: Path, source: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "agent", "--config", str(config), "--db", str(db), "run", "--source", str(source)]
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=stderr, env=agent_env())


def stop(process: subprocess.Popen, *, timeout: float = 30) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def outbox(db: Path) -> list[tuple[int, str]]:
    """(seq, id) of every event SQLite holds (the unsent outbox), read the way a reader after a crash would."""
    if not db.exists():
        return []
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                return [(int(s), str(i)) for s, i in conn.execute("SELECT seq, id FROM events ORDER BY seq")]
        except sqlite3.OperationalError:
            time.sleep(0.05)
    raise AssertionError(f"could not read {db}")


def integrity(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def delivered(observer: Observer) -> list[str]:
    """event_id of every event message, in arrival order, duplicates included."""
    return [json.loads(m.payload)["event_id"] for m in list(observer.messages) if m.topic in EVENT_TOPICS]


def first_seen_order(ids: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)


@pytest.fixture(scope="session")
def frames(shared_data: Path) -> Path:
    return shared_data / "sequence/hamilton_clip/frames"


FAKES = REPO / "tests" / "fakes"  # `import picamera2` in an agent started with `fake_camera_env` finds the fake


def fake_camera_env(frames: Path, unplugged: Path) -> dict[str, str]:
    """agent_env with tests/fakes/picamera2 first on the path, serving `frames`, unplugged while `unplugged` exists."""
    return agent_env() | {
        "PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}",
        "FAKE_PICAMERA2_FRAMES": str(frames),
        "FAKE_PICAMERA2_UNPLUGGED": str(unplugged),
    }


def start_agent_with(
    config: Path, db: Path, source: str, env: dict[str, str], *, log: Path | None = None
) -> subprocess.Popen:
    """start_agent with any source string (e.g. "picamera2") and environment."""
    command = [sys.executable, "-m", "agent", "--config", str(config), "--db", str(db), "run", "--source", source]
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def ctl_call(broker_url: str, command: str) -> subprocess.CompletedProcess[str]:
    """`faceagent ctl call` of one command to DEVICE, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "ctl", "call", "--mqtt", broker_url, "--timeout", "10", "--json",
         DEVICE, command],
        capture_output=True, text=True, timeout=60, env=agent_env(),
    )  # fmt: skip

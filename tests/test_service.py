"""`faceagent run` end to end: a real process, a real Mosquitto, real footage, real SQLite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import Broker, Observer
from tests.command_fixtures import OPERATOR_TOML

CLIP_ENROL = "sequence/hamilton_clip/enroll/Lin-Manuel_Miranda.png"
DEVICE = "stage-1"


def write_config(tmp_path: Path, broker: Broker, *, loop: bool, fps: float) -> Path:
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 5\ntelemetry_interval_seconds = 1\n'
        f"[camera]\nfps = {fps}\nloop = {'true' if loop else 'false'}\n"
        '[events]\ncamera_id = "stage"\n' + OPERATOR_TOML
    )
    return config


def enrol_miranda(shared_data: Path, db: Path, config: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "enroll", "--db", str(db),
         "--name", "Lin-Manuel Miranda", "--json", str(shared_data / CLIP_ENROL)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stderr.split("(")[1].split(")")[0]


def start_agent(config: Path, db: Path, source: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "agent", "--config", str(config), "--db", str(db), "run", "--source", str(source)]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def longest_number_list(document: object) -> int:
    if isinstance(document, dict):
        return max((longest_number_list(v) for v in document.values()), default=0)
    if isinstance(document, list):
        numbers = sum(isinstance(v, int | float) for v in document)
        return max([numbers, *(longest_number_list(v) for v in document)])
    return 0


def assert_no_biometric_data_left(observer: Observer) -> int:
    """Everything the device published (not the operator's requests): no image bytes, no embeddings."""
    published = [m for m in observer.messages if not (("/cmd/" in m.topic) and not m.topic.endswith("/reply"))]
    for message in published:
        for signature in (b"\xff\xd8\xff", b"\x89PNG", b"/9j/", b"iVBORw0KGgo"):  # JPEG, PNG, and as base64
            assert signature not in message.payload, message.topic
        assert longest_number_list(message.json()) < 64, message.topic  # an embedding has 128 numbers
    return len(published)


def events(observer: Observer, kind: str) -> list[dict]:
    return [m.json() for m in observer.messages if m.topic == f"faceagent/{DEVICE}/events/{kind}"]


def status(observer: Observer) -> list[dict]:
    return [m.json() for m in observer.on(f"faceagent/{DEVICE}/status")]


@pytest.mark.slow
def test_run_recognises_the_enrolled_person_and_publishes_every_event(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    config = write_config(tmp_path, broker, loop=False, fps=0)
    db = tmp_path / "gallery.db"
    person_id = enrol_miranda(shared_data, db, config)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    frames = shared_data / "sequence/hamilton_clip/frames"
    agent = start_agent(config, db, frames, "--replay-all", "--print-events")
    stdout, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert observer.wait_for(lambda _: len(events(observer, "face_recognized")) + len(events(observer, "face_unknown"))
                             >= len(printed), timeout=10)  # fmt: skip
    recognized = events(observer, "face_recognized")
    assert [e["person_id"] for e in recognized] == [person_id]
    published = {e["event_id"] for e in recognized + events(observer, "face_unknown")}
    assert published == {e["event_id"] for e in printed}  # nothing lost on the way to the broker
    assert status(observer)[-1]["state"] == "offline" and status(observer)[-1]["reason"] == "stopped"


@pytest.mark.slow
def test_sigterm_publishes_offline_and_exits_0(tmp_path: Path, broker: Broker, observe, shared_data: Path) -> None:
    config = write_config(tmp_path, broker, loop=True, fps=15)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = start_agent(config, tmp_path / "gallery.db", shared_data / "sequence/hamilton_clip/frames")
    try:
        assert observer.wait_for(lambda _: any(s["state"] == "online" for s in status(observer)), timeout=60)
        assert observer.wait_for(lambda _: bool(observer.on(f"faceagent/{DEVICE}/telemetry")), timeout=30)
        assert observer.wait_for(lambda _: any(s.get("camera") for s in status(observer)), timeout=30)
        online = next(s for s in status(observer) if s.get("camera"))
        assert online["gallery"]["people_needing_reenrolment"] == 0 and online["camera"]["state"] == "ok"
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert observer.wait_for(lambda _: status(observer)[-1]["state"] == "offline", timeout=10)
    telemetry = observer.on(f"faceagent/{DEVICE}/telemetry")[-1].json()
    assert telemetry["fps"] > 0 and "total" in telemetry["latency_ms"]


@pytest.mark.slow
def test_ctl_enrols_a_person_whom_the_running_agent_then_recognises(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, operator_key_file: Path
) -> None:
    config = write_config(tmp_path, broker, loop=True, fps=30)
    observer = observe(broker, ["#"])  # everything on the broker, the operator's photos included
    agent = start_agent(config, tmp_path / "gallery.db", shared_data / "sequence/hamilton_clip/frames")
    try:
        assert observer.wait_for(lambda _: any(s["state"] == "online" for s in status(observer)), timeout=60)
        ctl = subprocess.run(
            [sys.executable, "-m", "agent", "ctl", "enroll", "--mqtt", broker.url, "--timeout", "60",
             "--device", DEVICE, "--name", "Lin-Manuel Miranda", "--sign-key", str(operator_key_file),
             str(shared_data / CLIP_ENROL)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ctl.returncode == 0, ctl.stdout + ctl.stderr
        assert observer.wait_for(lambda _: bool(events(observer, "face_recognized")), timeout=120)
        assert events(observer, "face_recognized")[0]["name"] == "Lin-Manuel Miranda"
        assert assert_no_biometric_data_left(observer) > 5
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    assert agent.returncode == 0

"""`faceagent run` end to end: a real process, a real Mosquitto, real footage, real SQLite."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from tests.support.agent_process import agent_config, agent_env, ctl_call, enroll_cli, faceagent, start_agent
from tests.support.broker import Broker, Observer
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES, DEFAULT_EMBEDDER_ID, DEFAULT_THRESHOLD

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "stage-1"


def write_config(tmp_path: Path, broker: Broker, *, loop: bool, fps: float) -> Path:
    return agent_config(tmp_path, broker, DEVICE, loop=loop, fps=fps)


def run_agent(config: Path, db: Path, source: Path, *extra: str) -> subprocess.Popen[str]:
    """`faceagent run` with its output kept for the test to read."""
    return start_agent(config, db, source, *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


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


def test_run_recognizes_the_enrolled_person_and_publishes_every_event(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    config = write_config(tmp_path, broker, loop=False, fps=0)
    db = tmp_path / "gallery.db"
    person_id = enroll_cli(config, db, "Lin-Manuel Miranda", shared_data / CLIP_ENROLL)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    frames = shared_data / CLIP_FRAMES
    agent = run_agent(config, db, frames, "--replay-all", "--print-events")
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


def test_sigterm_publishes_offline_and_exits_0(tmp_path: Path, broker: Broker, observe, shared_data: Path) -> None:
    config = write_config(tmp_path, broker, loop=True, fps=15)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = run_agent(config, tmp_path / "gallery.db", shared_data / CLIP_FRAMES)
    try:
        assert observer.wait_for(lambda _: any(s["state"] == "online" for s in status(observer)), timeout=60)
        assert observer.wait_for(lambda _: bool(observer.on(f"faceagent/{DEVICE}/telemetry")), timeout=30)
        assert observer.wait_for(lambda _: any(s.get("camera") for s in status(observer)), timeout=30)
        online = next(s for s in status(observer) if s.get("camera"))
        assert online["gallery"]["people_needing_reenrollment"] == 0 and online["camera"]["state"] == "ok"
        in_use = {
            "value": DEFAULT_THRESHOLD,
            "source": f"embedder {DEFAULT_EMBEDDER_ID}",
        }  # nothing set: the embedder's figures
        assert online["gallery"]["matching"]["gallery.threshold"] == in_use
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert observer.wait_for(lambda _: status(observer)[-1]["state"] == "offline", timeout=10)
    telemetry = observer.on(f"faceagent/{DEVICE}/telemetry")[-1].json()
    assert telemetry["fps"] > 0 and "total" in telemetry["latency_ms"]


def test_ctl_enrolls_a_person_whom_the_running_agent_then_recognizes(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, operator_key_file: Path
) -> None:
    config = write_config(tmp_path, broker, loop=True, fps=30)
    observer = observe(broker, ["#"])  # everything on the broker, the operator's photos included
    agent = run_agent(config, tmp_path / "gallery.db", shared_data / CLIP_FRAMES)
    try:
        assert observer.wait_for(lambda _: any(s["state"] == "online" for s in status(observer)), timeout=60)
        ctl = faceagent(
            "ctl", "enroll", "--mqtt", broker.url, "--timeout", "60", "--device", DEVICE,
            "--name", "Lin-Manuel Miranda", "--sign-key", str(operator_key_file), str(shared_data / CLIP_ENROLL),
        )  # fmt: skip
        assert ctl.returncode == 0, ctl.stdout + ctl.stderr
        assert observer.wait_for(lambda _: bool(events(observer, "face_recognized")), timeout=120)
        assert events(observer, "face_recognized")[0]["name"] == "Lin-Manuel Miranda"
        assert assert_no_biometric_data_left(observer) > 5
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    assert agent.returncode == 0


class NotifySocket:
    """systemd's end of `$NOTIFY_SOCKET`: a real datagram socket; `lines()` is everything received so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def lines(self) -> list[str]:
        while True:
            try:
                self.received.extend(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                return self.received

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines()):
                return True
        return False


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    with tempfile.TemporaryDirectory(prefix="fa-notify-") as folder:  # short: sun_path holds 108 bytes
        manager = NotifySocket(Path(folder) / "notify")
        yield manager
        manager.sock.close()


def ctl_reply(broker: Broker, key: Path, command: str) -> dict:
    return json.loads(ctl_call(broker.url, DEVICE, command, sign_key=key, wait=30).stdout)["reply"]


def start_under_systemd(command: list[str], notify: NotifySocket) -> subprocess.Popen[str]:
    """The agent as the unit starts it: NOTIFY_SOCKET and a 30 s watchdog meant for its own PID (set by exec)."""
    env = agent_env() | {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "30000000"}
    launcher = "import os, sys; os.environ['WATCHDOG_PID'] = str(os.getpid()); os.execv(sys.executable, sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", launcher, sys.executable, *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_mqtt_restart_reexecutes_in_place_and_a_second_one_is_refused(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, notify_socket: NotifySocket, operator_key_file: Path
) -> None:
    config = write_config(tmp_path, broker, loop=True, fps=15)  # trusts the test operator's key
    key = operator_key_file
    observer = observe(broker, [f"faceagent/{DEVICE}/status"])
    frames = shared_data / CLIP_FRAMES
    db = tmp_path / "gallery.db"
    command = ["-m", "agent", "--config", str(config), "--db", str(db), "run", "--source", str(frames)]
    agent = start_under_systemd(command, notify_socket)
    try:
        assert notify_socket.wait_for(lambda lines: "READY=1" in lines, timeout=60), "no READY: see the log below"
        assert ctl_reply(broker, key, "restart")["data"] == {"restarting": True}
        # systemd sees a reload of the same process (not a stop and a new start), then READY again
        assert notify_socket.wait_for(lambda lines: lines.count("READY=1") == 2, timeout=60)
        lines = notify_socket.lines()
        assert "RELOADING=1" in lines[lines.index("READY=1") : len(lines) - lines[::-1].index("READY=1")]
        assert "STOPPING=1" not in lines and agent.poll() is None
        refused = ctl_reply(broker, key, "restart")
        assert refused["status"] == "error" and refused["error"]["code"] == "rate_limited", refused
        assert "retry in" in refused["error"]["message"]
        assert observer.wait_for(lambda _: [s["state"] for s in status(observer)].count("online") >= 2, timeout=30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert notify_socket.lines().count("READY=1") == 2  # the refused restart did nothing


def test_without_a_camera_the_agent_runs_and_says_how_to_configure_one(
    tmp_path: Path, broker: Broker, observe, notify_socket: NotifySocket
) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\ntelemetry_interval_seconds = 1\n')
    observer = observe(broker, [f"faceagent/{DEVICE}/status"])
    command = ["-m", "agent", "--config", str(config), "--db", str(tmp_path / "gallery.db"), "run"]
    agent = start_under_systemd(command, notify_socket)
    try:
        assert notify_socket.wait_for(lambda lines: "READY=1" in lines, timeout=60), "no READY without a camera"
        assert any(line.startswith("STATUS=camera not configured") for line in notify_socket.lines())
        assert observer.wait_for(lambda _: any((s.get("camera") or {}).get("state") for s in status(observer)), 30)
        camera = next(s["camera"] for s in status(observer) if s.get("camera"))
        assert camera["state"] == "not configured" and f"set [camera] source in {config}" in camera["last_error"]
        time.sleep(3)
        assert agent.poll() is None  # still running: no exit for systemd to restart in a loop
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert "camera not configured" in stderr and "sudo systemctl restart faceagent" in stderr


PREVIOUS_DEFAULT = "fused-dlib-mobileface-int8"  # the default before MobileFace's mixed build


def run_on_a_previous_default_gallery(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, models: str = ""
) -> tuple[str, Path, Path]:
    """The performer enrolled under the previous default, then `faceagent run` on the clip with the default (and
    `models`, lines of [models]); they must be named. (stderr, config, gallery)."""
    config = write_config(tmp_path, broker, loop=False, fps=0)
    config.write_text(config.read_text() + "[models]\n" + models)
    previous = tmp_path / "previous.toml"
    previous.write_text(config.read_text() + f'embedder = "{PREVIOUS_DEFAULT}"\n')
    db = tmp_path / "gallery.db"
    person_id = enroll_cli(previous, db, "Lin-Manuel Miranda", shared_data / CLIP_ENROLL)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = run_agent(config, db, shared_data / CLIP_FRAMES, "--replay-all", "--print-events")
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr
    assert observer.wait_for(lambda _: events(observer, "face_recognized"), timeout=10)
    assert {e["person_id"] for e in events(observer, "face_recognized")} == {person_id}
    return stderr, config, db


def test_a_gallery_enrolled_under_the_previous_default_is_carried_over_at_start_and_recognized(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    """A device upgraded to a default that carries its previous default's templates: the agent copies them before
    its first load (audited), so the person is named at full strength with nobody to re-enroll."""
    _, config, db = run_on_a_previous_default_gallery(tmp_path, broker, observe, shared_data)
    listed = json.loads(faceagent("gallery", "list", "--json", "--db", str(db), config=config).stdout)
    assert listed["model_id"] == DEFAULT_EMBEDDER_ID and listed["people_needing_reenrollment"] == 0
    with GalleryStore.open(db) as store:
        audit = store.audit_log(20)
    assert any(entry["action"] == "templates.carry" and entry["actor"] == "faceagent" for entry in audit)


def test_a_failed_carry_over_is_logged_and_the_agent_starts_on_the_gallery_as_it_is(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, models_copy: Path
) -> None:
    """The copy before the first load cannot stop the agent: here the manifest's list is unreadable, and the
    person enrolled under the previous default is still named, on the dlib part of their templates."""
    manifest = json.loads((models_copy / "manifest.json").read_text())
    default = next(m for m in manifest["models"] if m["id"] == manifest["defaults"]["embedder"])
    default["carries_templates_of"] = PREVIOUS_DEFAULT  # not a list of {id, sha256}
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    stderr, _, db = run_on_a_previous_default_gallery(
        tmp_path, broker, observe, shared_data, f'dir = "{models_copy}"\n'
    )
    assert "the step before the first load failed" in stderr and "carries_templates_of" in stderr
    with GalleryStore.open(db) as store:
        assert store.count_needing_reenrollment(DEFAULT_EMBEDDER_ID) == 1  # nothing copied

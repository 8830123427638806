"""Enrollment from the camera end to end: `faceagent run` as a real process on a replayed camera (a folder of
frames, looped), a real Mosquitto, `faceagent ctl enroll --from-camera` as the operator runs it, real SQLite.

The scenes: the Hamilton clip's performer alone (Lin-Manuel Miranda, frames 83-211), and two real LFW faces
composed side by side. Every message on the broker (`#`: the operator's requests too) is sniffed for image bytes
and embeddings, and every file of the state directory for image bytes and blobs beyond an embedding's size."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.agent_process import agent_config, enroll_cli, faceagent, start_agent
from tests.support.broker import Broker, Observer
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES, DEFAULT_DIMENSIONS
from tests.support.scenes import two_faces

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "door-1"
MIRANDA_SHOT = range(83, 212)
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"/9j/", b"iVBORw0KGgo")  # JPEG, PNG, and both as base64
# The default embedder's float32 vector: the largest blob the gallery may hold.
EMBEDDING_BYTES = 4 * DEFAULT_DIMENSIONS


def one_person(shared_data: Path, folder: Path) -> Path:
    folder.mkdir()
    for index in MIRANDA_SHOT:
        name = f"frame_{index:04d}.jpg"
        shutil.copy(shared_data / CLIP_FRAMES / name, folder / name)
    return folder


def two_people(shared_data: Path, folder: Path) -> Path:
    folder.mkdir()
    for index in range(30):
        Image.fromarray(two_faces(shared_data, shift=index % 6)).save(folder / f"frame_{index:04d}.jpg", quality=90)
    return folder


def ctl_enroll_from_camera(broker: Broker, key: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return faceagent(
        "ctl", "enroll", "--mqtt", broker.url, "--timeout", "20", "--device", DEVICE, "--sign-key", str(key),
        "--name", name, "--consent-ref", "form-17", "--from-camera", "--seconds", "30", *extra, timeout=120,
    )  # fmt: skip


def online(observer: Observer) -> bool:
    return any(m.json().get("state") == "online" for m in observer.on(f"faceagent/{DEVICE}/status"))


class Stage:
    """A device running on a looped folder of frames, its state directory, and a sniffer on `#`."""

    def __init__(self, tmp_path: Path, broker: Broker, observer: Observer, extra: str = "") -> None:
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        self.db = self.state / "gallery.db"
        self.broker, self.observer = broker, observer
        self.config = agent_config(tmp_path, broker, DEVICE, fps=15, loop=True, extra=extra)
        self.agent: subprocess.Popen[str] | None = None

    def run(self, frames: Path) -> None:
        self.agent = start_agent(self.config, self.db, frames, log=self.state.parent / "agent.log")
        assert self.observer.wait_for(lambda _: online(self.observer), timeout=90), self.log()

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(60)
            self.agent = None

    def log(self) -> str:
        return (self.state.parent / "agent.log").read_text()

    def people(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db) as db:
            return list(db.execute("SELECT id, name FROM people"))


@pytest.fixture
def stage(tmp_path: Path, broker: Broker, observe) -> Iterator[Stage]:
    stage = Stage(tmp_path, broker, observe(broker, ["#"]))
    yield stage
    stage.stop()


def longest_number_list(document: object) -> int:
    if isinstance(document, dict):
        return max((longest_number_list(v) for v in document.values()), default=0)
    if isinstance(document, list):
        return max([sum(isinstance(v, int | float) for v in document), *map(longest_number_list, document)])
    return 0


def assert_no_image_on_the_wire(observer: Observer) -> int:
    """Every message on the broker, requests and replies alike: no image bytes, no embedding (128 numbers)."""
    for message in observer.messages:
        for signature in IMAGE_SIGNATURES:
            assert signature not in message.payload, message.topic
        try:
            document = json.loads(message.payload) if message.payload else None
        except ValueError:
            document = None
        assert longest_number_list(document) < 64, message.topic
    return len(observer.messages)


def assert_no_image_on_disk(state: Path, *, chips: bool) -> None:
    """No image file or image bytes in the state directory; in the gallery, no blob larger than an embedding
    outside `templates.chip`, which holds chips only when they were opted into."""
    for path in state.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(signature in content for signature in IMAGE_SIGNATURES[:2]), path
    with sqlite3.connect(state / "gallery.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                if (table, column) == ("templates", "chip"):
                    continue
                sql = f"SELECT COUNT(*) FROM {table} WHERE typeof({column}) = 'blob' AND length({column}) > ?"
                assert db.execute(sql, [EMBEDDING_BYTES]).fetchone()[0] == 0, (table, column)
        kept = db.execute("SELECT COUNT(*) FROM templates WHERE chip IS NOT NULL").fetchone()[0]
        total = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        assert kept == (total if chips else 0)


def test_enrolled_from_the_camera_then_recognized_in_a_later_replay(
    stage: Stage, tmp_path: Path, shared_data: Path, operator_key_file: Path
) -> None:
    stage.run(one_person(shared_data, tmp_path / "one"))
    ctl = ctl_enroll_from_camera(stage.broker, operator_key_file, "Lin-Manuel Miranda")
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr + stage.log()
    assert "IN_PROGRESS" in ctl.stdout and "SUCCEEDED: enrolled Lin-Manuel Miranda" in ctl.stdout
    stage.stop()
    ((person_id, _),) = stage.people()
    replay = agent_config(tmp_path / "state", stage.broker, DEVICE, fps=0, loop=False)
    run = start_agent(replay, stage.db, shared_data / CLIP_FRAMES, "--replay-all", "--print-events",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    recognized = [line for line in stdout.splitlines() if '"face_recognized"' in line]
    assert recognized and all(person_id in line for line in recognized)
    assert assert_no_image_on_the_wire(stage.observer) > 5
    assert_no_image_on_disk(stage.state, chips=False)


def test_chips_are_kept_on_disk_only_when_opted_in(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, operator_key_file: Path
) -> None:
    stage = Stage(tmp_path, broker, observe(broker, ["#"]), extra="[gallery]\nkeep_chips = true\n")
    try:
        stage.run(one_person(shared_data, tmp_path / "one"))
        ctl = ctl_enroll_from_camera(broker, operator_key_file, "Lin-Manuel Miranda", "--views", "3")
        assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    finally:
        stage.stop()
    assert_no_image_on_disk(stage.state, chips=True)
    assert_no_image_on_the_wire(stage.observer)


def test_two_people_in_view_are_refused(
    stage: Stage, tmp_path: Path, shared_data: Path, operator_key_file: Path
) -> None:
    stage.run(two_people(shared_data, tmp_path / "two"))
    ctl = ctl_enroll_from_camera(stage.broker, operator_key_file, "Colin Powell")
    assert ctl.returncode == 1, ctl.stdout + ctl.stderr
    assert "FAILED: two faces in view" in ctl.stdout
    assert stage.people() == []
    assert_no_image_on_the_wire(stage.observer)


def test_a_face_already_enrolled_is_refused_as_a_conflict(
    stage: Stage, tmp_path: Path, shared_data: Path, operator_key_file: Path
) -> None:
    enroll_cli(stage.config, stage.db, "Lin-Manuel Miranda", shared_data / CLIP_ENROLL)
    stage.run(one_person(shared_data, tmp_path / "one"))
    ctl = ctl_enroll_from_camera(stage.broker, operator_key_file, "Somebody Else")
    assert ctl.returncode == 1, ctl.stdout + ctl.stderr
    assert "FAILED: conflict: this face already matches another enrolled person" in ctl.stdout
    assert [name for _, name in stage.people()] == ["Lin-Manuel Miranda"]

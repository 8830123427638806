"""Templates that keep up, end to end: a real `faceagent run` replaying the Hamilton clip over a real Mosquitto,
Lin-Manuel Miranda enrolled from his photo. With `gallery.adapt` on, his recognized tracks give him adaptive
templates (shown by `faceagent ctl people`, taken back by `ctl correct wrong-person` on their event); off, none."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import agent_config, faceagent, start_agent, stop_agent
from tests.support.broker import Broker, Observer
from tests.support.commands import write_operator_key
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "stage-1"
RECOGNIZED = f"faceagent/{DEVICE}/events/face_recognized"
STATUS = f"faceagent/{DEVICE}/status"


@dataclass
class Stage:
    broker: Broker
    db: Path
    log: Path
    key: Path
    events: Observer
    miranda: str

    def recognized(self, count: int) -> list[str]:
        """Event ids of the first `count` recognitions of Miranda the device published."""

        def ids(messages: list) -> list[str]:
            return [m.json()["event_id"] for m in messages if m.topic == RECOGNIZED]

        assert self.events.wait_for(lambda m: len(ids(m)) >= count, 120), self.log.read_text()[-3000:]
        return ids(list(self.events.messages))

    def adaptive(self) -> list[tuple[str, str]]:
        """(person id, event id) of every adaptive template in the gallery."""
        with GalleryStore.open(self.db) as store:
            sql = "SELECT person_id, event_id FROM templates WHERE source = 'adaptive' ORDER BY id"
            return [tuple(row) for row in store.db.execute(sql)]

    def ctl(self, *command: str, after: tuple[str, ...] = ()) -> dict[str, Any]:
        """`faceagent ctl <command> ... --json <device> <after>`, signed by the operator: the device's reply."""
        common = ["--mqtt", self.broker.url, "--timeout", "20", "--sign-key", str(self.key), "--json"]
        result = faceagent("ctl", *command, *common, DEVICE, *after, timeout=90)
        assert result.stdout, result.stderr
        return json.loads(result.stdout.splitlines()[-1])["reply"]


@contextmanager
def stage(folder: Path, pipeline: FacePipeline, shared_data: Path, *, adapt: bool) -> Iterator[Stage]:
    """The agent replaying the clip with Miranda enrolled; every decision an event (no cooldowns)."""
    broker = Broker(folder / "broker").start()
    events = "cooldown_seconds = 0\nunknown_cooldown_seconds = 0\n"
    config = agent_config(
        folder, broker, DEVICE, fps=15, events=events, extra=f"[gallery]\nadapt = {str(adapt).lower()}\n"
    )
    db = folder / "gallery.db"
    settings = Settings()
    with GalleryStore.open(db) as store:
        photo = shared_data / CLIP_ENROLL
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery), settings)
        miranda = enroller.enroll([(photo.name, photo)], actor="test", name="Lin-Manuel Miranda").person.id
    observer = Observer(broker, [f"faceagent/{DEVICE}/events/#", STATUS])
    log = folder / "agent.log"
    agent = start_agent(config, db, shared_data / CLIP_FRAMES, log=log)
    try:
        yield Stage(broker, db, log, write_operator_key(folder), observer, miranda)
    finally:
        stop_agent(agent)
        observer.close()
        broker.kill()


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def test_with_adapt_on_a_recognized_performer_gains_an_adaptive_template(
    tmp_path: Path, pipeline: FacePipeline, shared_data: Path
) -> None:
    with stage(tmp_path, pipeline, shared_data, adapt=True) as door:
        door.recognized(1)
        assert eventually(lambda: bool(door.adaptive()), 90), door.log.read_text()[-3000:]
        person_id, event_id = door.adaptive()[0]
        assert person_id == door.miranda
        assert eventually(lambda: event_id in door.recognized(1), 30)  # made from a published recognition
        (row,) = door.ctl("people")["data"]["people"]
        assert row["id"] == door.miranda and sum(row["adaptive_templates"].values()) >= 1
        with GalleryStore.open(door.db) as store:
            audit = store.audit_log()
        assert any(entry["action"] == "template.adapt" and entry["actor"] == "adaptation" for entry in audit)


def test_wrong_person_on_its_event_takes_the_adaptive_template_back(
    tmp_path: Path, pipeline: FacePipeline, shared_data: Path
) -> None:
    with stage(tmp_path, pipeline, shared_data, adapt=True) as door:
        assert eventually(lambda: bool(door.adaptive()), 120), door.log.read_text()[-3000:]
        _, event_id = door.adaptive()[0]
        reply = door.ctl("correct", "wrong-person", after=(event_id,))
        assert reply["status"] == "ok" and reply["data"]["templates_deleted"] == 1, reply
        assert event_id not in [event for _, event in door.adaptive()]


def test_with_adapt_off_recognitions_add_no_template(tmp_path: Path, pipeline: FacePipeline, shared_data: Path) -> None:
    with stage(tmp_path, pipeline, shared_data, adapt=False) as door:
        door.recognized(5)  # with adapt on, templates come within the first recognitions (the test above)
        time.sleep(2)  # what the gallery thread would have had queued
        assert door.adaptive() == []
        (row,) = door.ctl("people")["data"]["people"]
        assert row["adaptive_templates"] == {}

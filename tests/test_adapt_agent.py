"""Templates that keep up, end to end: a real `faceagent run` replaying the Hamilton clip over a real Mosquitto,
Lin-Manuel Miranda enrolled from his photo. With `gallery.adapt` on, his recognized tracks give him adaptive
templates (shown by `faceagent ctl people`, taken back by `ctl correct wrong-person` on their event); off, none."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import faceagent
from tests.support.stage import Stage, miranda_on_stage

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "stage-1"
RECOGNIZED = f"faceagent/{DEVICE}/events/face_recognized"


class Door(Stage):
    """The stage (tests/support/stage.py) with Miranda's recognitions and the adaptive templates in sight."""

    def recognized(self, count: int) -> list[str]:
        """Event ids of the first `count` (or more) recognitions the device published."""

        def ids(messages: list) -> list[str]:
            return [m.json()["event_id"] for m in messages if m.topic == RECOGNIZED]

        assert self.events.wait_for(lambda m: len(ids(m)) >= count, 120), self.log.read_text()[-3000:]
        return ids(list(self.events.messages))

    def adaptive(self) -> list[tuple]:
        """(person id, event id) of every adaptive template in the gallery."""
        return self.gallery("SELECT person_id, event_id FROM templates WHERE source = 'adaptive' ORDER BY id")

    def ctl(self, *command: str, after: tuple[str, ...] = ()) -> dict[str, Any]:
        """`faceagent ctl <command> ... --json <device> <after>`, signed by the operator: the device's reply."""
        common = ["--mqtt", self.broker.url, "--timeout", "20", "--sign-key", str(self.key), "--json"]
        result = faceagent("ctl", *command, *common, DEVICE, *after, timeout=90)
        assert result.stdout, result.stderr
        return json.loads(result.stdout.splitlines()[-1])["reply"]


@contextmanager
def stage(folder: Path, pipeline: FacePipeline, shared_data: Path, *, adapt: bool) -> Iterator[Door]:
    # adapt_min_distance 0.15: a window the clip's views of Miranda fall in (the default 0.3 takes only near misses)
    extra = f"[gallery]\nadapt = {str(adapt).lower()}\nadapt_min_distance = 0.15\n"
    with miranda_on_stage(folder, pipeline, shared_data, DEVICE, extra=extra) as ready:
        yield Door(**vars(ready))


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
        assert ("adaptation",) in door.gallery("SELECT actor FROM audit WHERE action = 'template.adapt'")


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

"""Corrections by event id, end to end: a real `faceagent run` replaying the Hamilton clip over a real Mosquitto,
Lin-Manuel Miranda enrolled; the operator reads events and answers them with `faceagent ctl correct ...`
(signed by the test operator key). What each correction leaves in the gallery, and what it refuses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import faceagent
from tests.support.stage import Stage, miranda_on_stage

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "door-1"


class Door(Stage):
    """The stage (tests/support/stage.py) and what the operator does on it: read events, correct them."""

    def event_ids(self, event_type: str, count: int = 1, *, newest: bool = False) -> list[str]:
        """Ids of `count` events of `event_type` the device published, the first (or the newest) ones."""

        def found(messages: list) -> list[str]:
            return [m.json()["event_id"] for m in messages if m.topic.endswith(f"/events/{event_type}")]

        assert self.events.wait_for(lambda m: len(found(m)) >= count, 120), self.log.read_text()[-3000:]
        ids = found(list(self.events.messages))
        return ids[::-1][:count] if newest else ids[:count]

    def correct(self, *args: str, signed: bool = True) -> dict[str, Any]:
        """`faceagent ctl correct ... --json`: the device's reply."""
        signing = ["--sign-key", str(self.key)] if signed else []
        kind, rest = args[0], args[1:]
        command = ["ctl", "correct", kind, "--mqtt", self.broker.url, "--timeout", "20", *signing, "--json"]
        result = faceagent(*command, DEVICE, *rest, timeout=90)
        assert result.stdout, result.stderr
        return json.loads(result.stdout.splitlines()[-1])["reply"]


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline, shared_data: Path) -> Iterator[Door]:
    with miranda_on_stage(tmp_path_factory.mktemp("door"), pipeline, shared_data, DEVICE) as stage:
        yield Door(**vars(stage))


def test_an_unknown_event_id_is_not_found(door: Door) -> None:
    reply = door.correct("wrong-person", "01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert reply["error"]["code"] == "not_found" and "feedback.window_minutes" in reply["error"]["message"]


def test_a_malformed_event_id_is_a_bad_request(door: Door) -> None:
    assert door.correct("wrong-person", "not-an-event")["error"]["code"] == "bad_request"


def test_corrections_need_an_operator_signature(door: Door) -> None:
    (event_id,) = door.event_ids("face_recognized")
    assert door.correct("wrong-person", event_id, signed=False)["error"]["code"] == "unauthorized"
    assert door.gallery("SELECT COUNT(*) FROM negatives") == [(0,)]


def test_wrong_person_on_a_stranger_is_refused(door: Door) -> None:
    (event_id,) = door.event_ids("face_unknown")
    reply = door.correct("wrong-person", event_id)
    assert reply["error"]["code"] == "conflict" and "named nobody" in reply["error"]["message"]


def test_is_person_refuses_a_stranger_that_does_not_match_the_person(door: Door) -> None:
    """The photo path's mismatch check (or its quality gate): nobody's face joins someone else's unasked."""
    (event_id,) = door.event_ids("face_unknown")
    reply = door.correct("is-person", event_id, door.miranda)
    assert reply["error"]["code"] == "bad_request" and "nothing enrolled" in reply["error"]["message"]
    assert door.gallery("SELECT COUNT(*) FROM templates WHERE event_id IS NOT NULL") == [(0,)]


def _enrolled_from_an_unknown_event(door: Door) -> tuple[str, dict[str, Any]]:
    """enroll_from_event on the device's unknown events in turn until one has a view the gate takes. Most of the
    clip's unknown faces are turned or faint; the clip loops, so the newest events are tried as they come, for a
    few loops (which faces a loaded machine's frame loop keeps varies from run to run)."""
    replies: list[dict[str, Any]] = []
    tried: set[str] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        fresh = [e for e in door.event_ids("face_unknown", len(tried) + 1, newest=True) if e not in tried]
        for event_id in fresh[:12]:
            tried.add(event_id)
            reply = door.correct("enroll", event_id, "--name", "Stranger One", "--consent-ref", "form-42")
            if reply["status"] == "ok":
                return event_id, reply
            replies.append(reply)
    raise AssertionError(f"no unknown event could be enrolled in {len(tried)} tried: {replies[-6:]}")


def test_enroll_from_event_makes_a_person_of_an_unknown_face_then_erasure_forgets_the_track(door: Door) -> None:
    event_id, reply = _enrolled_from_an_unknown_event(door)
    person_id = reply["data"]["person"]["id"]
    assert reply["data"]["created"] and reply["data"]["templates_added"] >= 1
    stored = door.gallery("SELECT DISTINCT source, event_id FROM templates WHERE person_id = ?", person_id)
    assert stored == [("event", event_id)]
    assert door.gallery("SELECT consent_reference FROM people WHERE id = ?", person_id) == [("form-42",)]
    actions = {row[0] for row in door.gallery("SELECT action FROM audit WHERE target = ?", person_id)}
    assert {"person.enroll", "command.enroll_from_event"} <= actions
    assert "embedding" not in json.dumps(reply)

    deleted = faceagent(
        "ctl", "delete", "--mqtt", door.broker.url, "--sign-key", str(door.key), "--json",
        "--device", DEVICE, "--person-id", person_id, timeout=90,
    )  # fmt: skip
    assert json.loads(deleted.stdout.splitlines()[-1])["reply"]["data"]["deleted"]["feedback_entries"] >= 1
    again = door.correct("is-person", event_id, door.miranda, "--force")
    assert again["error"]["code"] == "not_found"  # the erased person's track left the window with them


def test_an_erasure_from_the_command_line_forgets_the_persons_tracks_too(door: Door) -> None:
    """Another process erases the person: once the agent's gallery thread sees it, their track is gone."""
    event_id, reply = _enrolled_from_an_unknown_event(door)
    erased = faceagent("person", "delete", "--db", str(door.db), reply["data"]["person"]["id"])
    assert erased.returncode == 0, erased.stderr
    # wrong_person changes nothing here (the event named nobody): "conflict" while the track is held.
    deadline = time.monotonic() + 60
    while (probe := door.correct("wrong-person", event_id))["error"]["code"] == "conflict":
        assert time.monotonic() < deadline, "the erased person's track stayed in the window"
    assert probe["error"]["code"] == "not_found"
    assert door.correct("is-person", event_id, door.miranda, "--force")["error"]["code"] == "not_found"


def test_wrong_person_stores_a_negative_of_the_person_named_and_refuses_a_second_time(door: Door) -> None:
    (event_id,) = door.event_ids("face_recognized")
    reply = door.correct("wrong-person", event_id)
    assert reply["status"] == "ok", reply
    assert reply["data"]["person_id"] == door.miranda and reply["data"]["templates_deleted"] == 0
    negatives = door.gallery("SELECT id, person_id, event_id FROM negatives")
    assert negatives == [(reply["data"]["negative_id"], door.miranda, event_id)]
    audited = door.gallery(
        "SELECT action FROM audit WHERE target = ? AND details LIKE ?", door.miranda, f"%{event_id}%"
    )
    assert {"person.wrong_person", "command.wrong_person"} <= {row[0] for row in audited}
    assert door.correct("wrong-person", event_id)["error"]["code"] == "conflict"

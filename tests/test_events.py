"""Events: payloads, cooldowns, and the outbox write that precedes every returned event."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import EventSettings
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.recognition.events import RECOGNIZED, UNKNOWN, EventEmitter, build_event
from agent.tracking.tracker import Track
from agent.vision.detector import Face

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ADA = Match("p_ada", "Ada", 0.31234567, 0.1, True)
BOB = Match("p_bob", "Bob", 0.3, 0.2, True)
STRANGER = Match("p_ada", "Ada", 0.7, 0.01, False)


class RecordingStore:
    """Just the outbox call of GalleryStore; `fail` makes it refuse writes."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.fail = False

    def add_event(
        self, event_type: str, payload: dict, *, event_id: str, person_id: str | None, created_at: str
    ) -> None:
        if self.fail:
            raise OSError("disk full")
        self.rows.append(
            {"type": event_type, "payload": payload, "id": event_id, "person_id": person_id, "created_at": created_at}
        )


def track(track_id: int = 7, frames: int = 12) -> Track:
    face = Face(box=(0.0, 0.0, 80.0, 80.0), score=0.9, keypoints=np.zeros((6, 2)))
    return Track(track_id, face, 1, frames, T0, T0 + timedelta(seconds=0.4), frames=frames)


def emitter(store: RecordingStore, camera: str = "door", **settings: Any) -> EventEmitter:
    return EventEmitter(EventSettings(**settings), store, camera_id=camera, model_id="dlib-resnet29-int8")  # type: ignore[arg-type]


def seconds(value: float) -> datetime:
    return T0 + timedelta(seconds=value)


# ---------------------------------------------------------------------------------------- payloads


def test_a_recognized_payload_has_exactly_the_agreed_fields() -> None:
    event = build_event(track(), ADA, camera_id="door", model_id="m1", at=seconds(1))
    assert list(event) == [
        "schema", "event_id", "type", "person_id", "name", "distance", "margin",
        "track_id", "first_seen", "last_seen", "frames", "camera_id", "model_id", "at",
    ]  # fmt: skip


def test_a_recognized_payload_carries_the_decision_and_the_track() -> None:
    event = build_event(track(), ADA, camera_id="door", model_id="m1", at=seconds(1))
    assert event | {"event_id": None} == {
        "schema": 1, "event_id": None, "type": RECOGNIZED, "person_id": "p_ada", "name": "Ada",
        "distance": 0.3123, "margin": 0.1, "track_id": 7, "first_seen": "2024-05-01T12:00:00.000Z",
        "last_seen": "2024-05-01T12:00:00.400Z", "frames": 12, "camera_id": "door", "model_id": "m1",
        "at": "2024-05-01T12:00:01.000Z",
    }  # fmt: skip


def test_an_unknown_payload_names_nobody_and_gives_no_distance() -> None:
    event = build_event(track(), STRANGER, camera_id="door", model_id="m1", at=seconds(1))
    assert event["type"] == UNKNOWN
    assert not {"person_id", "name", "distance", "margin"} & set(event)


def test_no_payload_carries_an_embedding_or_an_image() -> None:
    for match in (ADA, STRANGER):
        event = build_event(track(), match, camera_id="door", model_id="m1", at=seconds(1))
        assert all(isinstance(v, str | int | float | type(None)) for v in event.values())


def test_an_infinite_margin_becomes_null_so_the_payload_is_strict_json() -> None:
    only_one_person = Match("p_ada", "Ada", 0.3, math.inf, True)
    event = build_event(track(), only_one_person, camera_id="door", model_id="m1", at=seconds(1))
    assert json.loads(json.dumps(event, allow_nan=False))["margin"] is None


def test_event_ids_are_unique() -> None:
    ids = {build_event(track(), ADA, camera_id="door", model_id="m1", at=seconds(1))["event_id"] for _ in range(100)}
    assert len(ids) == 100


# ---------------------------------------------------------------------------------------- cooldowns


def test_a_repeat_within_the_cooldown_is_suppressed_and_counted() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    first, second = events.emit(track(1), ADA, seconds(0)), events.emit(track(2), ADA, seconds(59))
    assert (first is not None, second, events.suppressed) == (True, None, 1)


def test_the_same_person_is_reported_again_once_the_cooldown_has_passed() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    events.emit(track(1), ADA, seconds(0))
    assert events.emit(track(2), ADA, seconds(60)) is not None


def test_suppressed_decisions_do_not_extend_the_cooldown() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    events.emit(track(1), ADA, seconds(0))
    events.emit(track(2), ADA, seconds(50))
    assert events.emit(track(3), ADA, seconds(61)) is not None


def test_one_persons_cooldown_does_not_silence_another() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    events.emit(track(1), ADA, seconds(0))
    assert events.emit(track(2), BOB, seconds(1)) is not None


def test_cooldowns_are_per_camera() -> None:
    store = RecordingStore()
    door, hall = emitter(store, "door"), emitter(store, "hall")
    door.emit(track(1), ADA, seconds(0))
    assert hall.emit(track(1), ADA, seconds(1)) is not None


def test_unknowns_share_their_own_shorter_cooldown() -> None:
    events = emitter(RecordingStore(), unknown_cooldown_seconds=10)
    results = [events.emit(track(i), STRANGER, seconds(s)) is not None for i, s in enumerate((0, 9, 10))]
    assert results == [True, False, True]


def test_a_known_person_does_not_silence_unknowns() -> None:
    events = emitter(RecordingStore())
    events.emit(track(1), ADA, seconds(0))
    assert events.emit(track(2), STRANGER, seconds(1)) is not None


def test_unknown_events_can_be_switched_off_without_counting_as_suppressed() -> None:
    events = emitter(RecordingStore(), unknown_events=False)
    assert (events.emit(track(), STRANGER, seconds(0)), events.suppressed) == (None, 0)


def test_a_clock_that_went_backwards_does_not_silence_a_person() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    events.emit(track(1), ADA, seconds(100))
    assert events.emit(track(2), ADA, seconds(5)) is not None


def test_old_cooldown_entries_are_dropped_when_many_people_pile_up() -> None:
    events = emitter(RecordingStore(), cooldown_seconds=60)
    events.cooldown.max_keys = 10
    for i in range(11):
        events.emit(track(i), Match(f"p_{i}", "X", 0.3, 0.1, True), seconds(100 * i))
    assert len(events.cooldown) == 1


# ---------------------------------------------------------------------------------------- outbox


def test_the_returned_event_is_already_in_the_outbox() -> None:
    store = RecordingStore()
    event = emitter(store).emit(track(), ADA, seconds(3))
    assert store.rows == [
        {"type": RECOGNIZED, "payload": event, "id": event["event_id"], "person_id": "p_ada", "created_at": event["at"]}
    ]


def test_an_unknown_event_is_stored_without_a_person() -> None:
    store = RecordingStore()
    emitter(store).emit(track(), STRANGER, seconds(3))
    assert store.rows[0]["person_id"] is None


def test_an_event_the_outbox_refused_does_not_start_the_cooldown() -> None:
    store = RecordingStore()
    events = emitter(store)
    store.fail = True
    with pytest.raises(OSError):
        events.emit(track(1), ADA, seconds(0))
    store.fail = False
    assert events.emit(track(2), ADA, seconds(1)) is not None


def test_events_land_in_a_real_gallery_outbox(tmp_path: Path) -> None:
    with GalleryStore.open(tmp_path / "gallery.db") as store:
        person = store.add_person("Ada")
        match = Match(person.id, "Ada", 0.3, math.inf, True)
        event = EventEmitter(EventSettings(), store, camera_id="door", model_id="m1").emit(track(), match, seconds(2))
        (pending,) = store.pending_events()
    assert (pending["id"], pending["type"], pending["payload"]) == (event["event_id"], RECOGNIZED, event)

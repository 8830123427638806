"""The three corrections through the real dispatcher, store, live matcher (`GallerySync`) and pipeline; the
decided tracks are made of real photos' detections and embeddings, as the recognizer leaves them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent.config import FeedbackSettings
from agent.gallery.store import GalleryStore
from agent.recognition.events import build_event
from agent.recognition.feedback import FeedbackWindow
from agent.tracking.tracker import Track
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, most_central
from tests.support.commands import Device, data, error, image_arg, make_device
from tests.support.data import POWELL, POWELL_PROBE, bush, powell

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline, shared_data: Path) -> Device:
    """Colin Powell enrolled from one photo; a feedback window the tests fill."""
    made = make_device(tmp_path, pipeline)
    made.services.feedback = FeedbackWindow(FeedbackSettings())
    reply = made.call("enroll", {"name": "Colin Powell", "images": [image_arg(powell(shared_data, POWELL[0]))]})
    assert reply["status"] == "ok", reply
    return made


def powell_id(device: Device) -> str:
    with GalleryStore.open(device.store_path) as store:
        return store.list_people()[0].id


def decided(device: Device, pipeline: FacePipeline, photos: list[Path], *, model_id: str | None = None) -> str:
    """A track of one view per photo, decided by the live matcher as the recognizer decides (the photo
    threshold); its event id, with the track in the device's feedback window."""
    track = Track(id=1, face=None, first_frame=1, last_frame=len(photos), first_seen=T0, last_seen=T0)  # type: ignore[arg-type]
    for index, photo in enumerate(photos):
        rgb = load_image(photo)
        face = most_central(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
        assert face is not None, photo
        track.face = face
        track.add_embedding(pipeline.embed_face(rgb, face).embedding, 1.0 + index, index)
    mean = np.mean([e / np.linalg.norm(e) for e in track.embeddings], axis=0)
    match = device.matcher.search(mean)
    model = model_id or pipeline.embedder.info.model_id
    event = build_event(track, match, camera_id="door", model_id=model, at=T0)
    window = device.services.feedback
    assert window is not None
    window.record(track, match, event, metric="cosine", quality=device.current[0].quality)
    return event["event_id"]


def powell_views(shared_data: Path) -> list[Path]:
    return [powell(shared_data, number) for number in (*POWELL[1:], POWELL_PROBE)]


def test_is_person_adds_a_missed_tracks_views_as_templates_the_live_matcher_holds(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, powell_views(shared_data))
    person_id = powell_id(device)
    before = len(device.matcher)
    reply = device.call("is_person", {"event_id": event_id, "person_id": person_id})
    assert reply["status"] == "ok", reply
    added = data(reply)["templates_added"]
    assert added >= 1 and len(device.matcher) == before + added
    with GalleryStore.open(device.store_path) as store:
        rows = store.db.execute("SELECT source, event_id FROM templates WHERE source != 'photo'").fetchall()
    assert [tuple(row) for row in rows] == [("event", event_id)] * added
    assert any(r["action"] == "person.enroll" and r["details"].get("event_id") == event_id for r in device.audit())


def test_is_person_refuses_someone_elses_face_unless_forced(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, [bush(shared_data)])
    request = {"event_id": event_id, "person_id": powell_id(device)}
    refused = device.call("is_person", request)
    assert error(refused) == "bad_request" and "not the same person" in refused["error"]["message"]
    assert "George" not in refused["error"]["message"]  # a refusal names nobody
    assert device.call("is_person", request | {"force": True})["status"] == "ok"


def test_wrong_person_makes_the_live_matcher_stop_naming_that_face(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    """The track's mean becomes a negative: the same face is no longer named, Powell's own photo still is."""
    event_id = decided(device, pipeline, powell_views(shared_data)[:2])
    window = device.services.feedback
    entry = window.get(event_id) if window is not None else None
    assert entry is not None and entry.person_id == powell_id(device)  # named, so it can be corrected
    reply = device.call("wrong_person", {"event_id": event_id})
    assert reply["status"] == "ok", reply
    assert not device.matcher.search(entry.mean).accepted
    enrolled_rgb = load_image(powell(shared_data, POWELL[0]))
    enrolled = most_central(pipeline.detect(enrolled_rgb), enrolled_rgb.shape[1], enrolled_rgb.shape[0])
    assert enrolled is not None
    assert device.matcher.search(pipeline.embed_face(enrolled_rgb, enrolled).embedding).accepted


def test_wrong_person_takes_back_the_adaptive_templates_made_from_the_event(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, powell_views(shared_data)[:2])
    person_id = powell_id(device)
    with GalleryStore.open(device.store_path) as store, device.gallery.writing(store) as changed:
        store.add_template(
            person_id, np.ones(pipeline.embedder.info.dimensions, np.float32), model_id=pipeline.embedder.info.model_id,
            model_sha256="0" * 64, quality={}, source="adaptive", event_id=event_id,
        )  # fmt: skip
        changed.add(person_id)
    held = len(device.matcher)
    reply = device.call("wrong_person", {"event_id": event_id})
    assert data(reply)["templates_deleted"] == 1 and len(device.matcher) == held - 1


def test_enroll_from_event_refuses_a_recognition_until_wrong_person_corrected_it(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, powell_views(shared_data)[:2])
    request = {"event_id": event_id, "name": "Not Powell", "consent": {"reference": "form-1"}, "force": True}
    assert error(device.call("enroll_from_event", request)) == "conflict"
    assert device.call("wrong_person", {"event_id": event_id})["status"] == "ok"
    reply = device.call("enroll_from_event", request)
    assert reply["status"] == "ok" and data(reply)["created"], reply


def test_an_event_of_another_embedder_cannot_be_corrected(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, [bush(shared_data)], model_id="an-older-embedder")
    reply = device.call("is_person", {"event_id": event_id, "person_id": powell_id(device), "force": True})
    assert error(reply) == "conflict" and "an-older-embedder" in reply["error"]["message"]


def test_corrections_are_refused_when_the_window_is_off(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, [bush(shared_data)])
    device.services.feedback = FeedbackWindow(FeedbackSettings(window_minutes=0))
    reply = device.call("enroll_from_event", {"event_id": event_id, "name": "X", "consent": {"reference": "f"}})
    assert error(reply) == "conflict" and "window_minutes = 0" in reply["error"]["message"]


def test_an_agent_without_a_window_says_so(device: Device) -> None:
    device.services.feedback = None
    reply = device.call("wrong_person", {"event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA"})
    assert error(reply) == "conflict" and "keeps no decided tracks" in reply["error"]["message"]


def test_erasing_a_person_over_mqtt_forgets_their_tracks(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    event_id = decided(device, pipeline, powell_views(shared_data)[:2])
    reply = device.call("delete_person", {"person_id": powell_id(device)})
    assert data(reply)["deleted"]["feedback_entries"] == 1
    assert error(device.call("wrong_person", {"event_id": event_id})) == "not_found"


def test_the_negative_lives_as_long_as_the_settings_say(
    device: Device, pipeline: FacePipeline, shared_data: Path
) -> None:
    device.current[0] = dataclasses.replace(device.current[0], feedback=FeedbackSettings(negative_days=2.0))
    event_id = decided(device, pipeline, powell_views(shared_data)[:2])
    assert device.call("wrong_person", {"event_id": event_id})["status"] == "ok"
    with GalleryStore.open(device.store_path) as store:
        created, expires = store.db.execute("SELECT created_at, expires_at FROM negatives").fetchone()
    gap = datetime.fromisoformat(expires) - datetime.fromisoformat(created)
    assert gap.days == 2

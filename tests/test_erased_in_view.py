"""A person erased while their face is in view: the open track named as them is judged again.

Decided tracks are followed without new embeddings, so without this a face named just before an erasure kept
its name for as long as it stayed in view: the erased person held a live decision, and a re-enrollment of the
same face went unnoticed until the track ended. Real clip frames, the real models, a real gallery file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from agent.recognition.enrollment import Enroller
from agent.recognition.recognizer import Recognizer
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from agent.wire import FaceEvent
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES, POWELL

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MIRANDA_SHOT = range(83, 212)  # the performer alone, in one shot
NAMED_BY = 40  # frames of the shot after which his track is named (checked, not assumed)


@dataclass
class Stage:
    store: GalleryStore
    matcher: Matcher
    sync: GallerySync
    enroller: Enroller
    recognizer: Recognizer
    photo: Path

    def enroll(self, name: str, photo: Path | None = None) -> str:
        photo = photo or self.photo
        with self.sync.writing(self.store) as changed:
            person = self.enroller.enroll([(photo.name, photo)], actor="test", name=name).person
            changed.add(person.id)
        return person.id

    def erase(self, person_id: str) -> None:
        with self.sync.writing(self.store) as changed:
            self.store.delete_person(person_id, actor="test")
            changed.add(person_id)

    def play(self, frames: Iterable[tuple[int, object]]) -> list[FaceEvent]:
        events: list[FaceEvent] = []
        for index, frame in frames:
            events += self.recognizer.process(frame, T0 + timedelta(seconds=index / 30)).events  # type: ignore[arg-type]
        return events


@pytest.fixture
def stage(pipeline: FacePipeline, shared_data: Path, tmp_path: Path) -> Iterator[Stage]:
    settings = Settings()
    matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
    with GalleryStore.open(tmp_path / "gallery.db") as store:
        sync = GallerySync(store, matcher, pipeline.embedder.info.model_id)
        enroller = Enroller(pipeline, store, matcher, settings, add_to_matcher=False)
        recognizer = Recognizer(pipeline, matcher, store, settings, "stage")
        yield Stage(store, matcher, sync, enroller, recognizer, shared_data / CLIP_ENROLL)


@pytest.fixture
def shot(shared_data: Path) -> list[tuple[int, object]]:
    return [(i, load_image(shared_data / CLIP_FRAMES / f"frame_{i:04d}.jpg")) for i in MIRANDA_SHOT]


def recognized(events: list[FaceEvent], person_id: str) -> list[FaceEvent]:
    return [e for e in events if e["type"] == "face_recognized" and e.get("person_id") == person_id]


def test_the_track_of_an_erased_person_is_judged_again_and_named_no_more(
    stage: Stage, shot: list[tuple[int, object]]
) -> None:
    person_id = stage.enroll("Lin-Manuel Miranda")
    before = stage.play(shot[:NAMED_BY])
    (named,) = recognized(before, person_id)
    stage.erase(person_id)
    after = stage.play(shot[NAMED_BY:])
    (track,) = stage.recognizer.tracker.active
    assert track.id == named["track_id"]  # the same face, still in view
    assert stage.recognizer.stats.restarted == 1
    assert track.decision is not None and not track.decision.accepted
    assert not recognized(after, person_id)
    assert [e["type"] for e in after if e["track_id"] == track.id] == ["face_unknown"]


def test_the_face_of_an_erased_person_enrolled_anew_is_named_as_the_new_person_while_in_view(
    stage: Stage, shot: list[tuple[int, object]]
) -> None:
    erased = stage.enroll("Lin-Manuel Miranda")
    stage.play(shot[:NAMED_BY])
    stage.erase(erased)
    anew = stage.enroll("Visitor")
    after = stage.play(shot[NAMED_BY:])
    (track,) = stage.recognizer.tracker.active
    assert track.decision is not None and track.decision.person_id == anew
    assert not recognized(after, erased) and len(recognized(after, anew)) == 1


def test_a_named_track_whose_person_stays_is_not_judged_again(
    stage: Stage, shot: list[tuple[int, object]], shared_data: Path
) -> None:
    person_id = stage.enroll("Lin-Manuel Miranda")
    events = stage.play(shot[:NAMED_BY])
    powell = stage.enroll("Colin Powell", shared_data / f"faces-lfw/Colin_Powell/Colin_Powell_{POWELL[0]}.jpg")
    stage.erase(powell)  # changes to the gallery that do not concern him
    events += stage.play(shot[NAMED_BY:])
    assert stage.recognizer.stats.restarted == 0
    assert len(recognized(events, person_id)) == 1

"""The live capture window on real frames: the Hamilton clip's performer alone (Lin-Manuel Miranda, frames
83-211), two real LFW faces composed into one frame, and the real recognizer feeding the window as it would
on the device (its `views` hook), against a real SQLite gallery."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from agent.identity import Consent
from agent.recognition.capture import (
    CONFLICT,
    POSE_STEP,
    TWO_FACES,
    CaptureRequest,
    CaptureStatus,
    CaptureWindow,
    enroll_capture,
)
from agent.recognition.enrollment import Enroller
from agent.recognition.recognizer import Recognizer, TrackView
from agent.vision.embedder import EmbedderInfo
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES
from tests.support.scenes import two_faces

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MIRANDA_SHOT = range(83, 212)
NOTHING_SHOT = range(46, 83)  # no detectable face
CONSENT = Consent("Lin-Manuel Miranda", "2025-06-01T12:00:00.000Z", "form-17")


class Clock:
    """A clock the test moves: the window's deadline without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A recognizer over a real gallery, with `window` as its views hook."""

    pipeline: FacePipeline
    store: GalleryStore
    matcher: Matcher
    settings: Settings
    sync: GallerySync
    clock: Clock

    def window(self, views: int = 5, seconds: float = 20.0, person_id: str | None = None) -> CaptureWindow:
        name = None if person_id else "Lin-Manuel Miranda"
        request = CaptureRequest("test", CONSENT, name=name, person_id=person_id, views=views, seconds=seconds)
        return CaptureWindow("c1", request, self.settings, metric=self.matcher.metric, clock=self.clock)

    def feed(self, window: CaptureWindow, frames: Iterable[np.ndarray]) -> int:
        """Frames through a recognizer watched by `window` until it stops wanting views; how many it took."""
        recognizer = Recognizer(self.pipeline, self.matcher, self.store, self.settings, "stage", views=window)
        used = 0
        for index, frame in enumerate(frames):
            if not window.wants_views():
                break
            recognizer.process(frame, T0 + timedelta(seconds=index / 30))
            used += 1
        return used

    def enroller(self) -> Enroller:
        return Enroller(self.pipeline, self.store, self.matcher, self.settings, add_to_matcher=False)


def clip(shared_data: Path, shot: range) -> Iterable[np.ndarray]:
    for index in shot:
        yield load_image(shared_data / CLIP_FRAMES / f"frame_{index:04d}.jpg")


@pytest.fixture
def rig(pipeline: FacePipeline, tmp_path: Path) -> Iterable[Rig]:
    settings = Settings()
    matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
    with GalleryStore.open(tmp_path / "gallery.db") as store:
        sync = GallerySync(store, matcher, pipeline.embedder.info.model_id)
        yield Rig(pipeline, store, matcher, settings, sync, Clock())


def enroll_miranda(rig: Rig, shared_data: Path) -> str:
    photo = shared_data / CLIP_ENROLL
    with rig.sync.writing(rig.store) as changed:
        result = rig.enroller().enroll([(photo.name, photo)], actor="test", name="Lin-Manuel Miranda")
        changed.add(result.person.id)
    return result.person.id


# ------------------------------------------------------------------------------------ the window


def test_the_performer_alone_gives_the_views_asked_for(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=5)
    used = rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    assert window.views_ready and window.report()["views"] == 5, window.report()
    assert used < len(MIRANDA_SHOT)  # done before the shot ends


def test_the_views_held_differ_in_pose_and_each_passes_the_gate(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=5)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    views = window.take_views()
    poses = [view.pose for view in views]
    assert all(view.quality.ok for view in views)
    for a, b in itertools.combinations(poses, 2):
        assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= POSE_STEP


def test_the_views_held_are_no_near_duplicates_of_each_other(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=5)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    units = [v.candidate.embedding / np.linalg.norm(v.candidate.embedding) for v in window.take_views()]
    closest = min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(units, 2))
    assert closest >= rig.enroller().figures().duplicate_distance  # the embedder's, as the window resolves it


def test_two_faces_in_view_refuse_the_capture(rig: Rig, shared_data: Path) -> None:
    window = rig.window()
    frame = two_faces(shared_data)
    assert len([f for f in rig.pipeline.detect(frame) if f.width >= rig.settings.quality.min_face_px]) == 2
    rig.feed(window, [frame] * 10)
    assert window.status is CaptureStatus.FAILED and window.reason == TWO_FACES
    assert window.take_views() == []


def test_one_frame_with_two_faces_does_not_end_the_capture(rig: Rig, shared_data: Path) -> None:
    window = rig.window()
    frames = [two_faces(shared_data), *clip(shared_data, MIRANDA_SHOT)]
    rig.feed(window, frames)
    assert window.views_ready, window.report()


def test_a_face_already_enrolled_as_someone_else_is_refused(rig: Rig, shared_data: Path) -> None:
    enroll_miranda(rig, shared_data)
    window = rig.window()  # a new person, but the face is Miranda's
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    assert window.status is CaptureStatus.FAILED and window.reason == CONFLICT


class ArmedLater:
    """The recognizer's views hook, armed with a window only once the test says so."""

    def __init__(self) -> None:
        self.window: CaptureWindow | None = None

    def wants_views(self) -> bool:
        return self.window is not None and self.window.wants_views()

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None:
        if self.window is not None:
            self.window.observe(views, model)


def test_a_track_named_before_its_person_was_erased_is_no_conflict(rig: Rig, shared_data: Path) -> None:
    """Erase Miranda while his track is still in view and named: enrolling that face anew is not a conflict
    with the person just erased (the console's camera enrollment met this after erasing everyone)."""
    person_id = enroll_miranda(rig, shared_data)
    hook = ArmedLater()
    recognizer = Recognizer(rig.pipeline, rig.matcher, rig.store, rig.settings, "stage", views=hook)
    frames = list(clip(shared_data, MIRANDA_SHOT))
    for index, frame in enumerate(frames[:40]):
        recognizer.process(frame, T0 + timedelta(seconds=index / 30))
    (track,) = recognizer.tracker.active
    assert track.decision is not None and track.decision.accepted and track.decision.person_id == person_id
    rig.store.delete_person(person_id, actor="test")
    rig.matcher.remove_person(person_id)
    request = CaptureRequest("test", CONSENT, name="Visitor", views=3, seconds=20.0)
    hook.window = CaptureWindow("c1", request, rig.settings, metric="cosine", clock=rig.clock)
    for index, frame in enumerate(frames[40:], start=40):
        if not hook.wants_views():
            break
        recognizer.process(frame, T0 + timedelta(seconds=index / 30))
    assert hook.window.views_ready, hook.window.report()


def test_more_views_of_the_person_enrolled_are_no_conflict(rig: Rig, shared_data: Path) -> None:
    person_id = enroll_miranda(rig, shared_data)
    window = rig.window(person_id=person_id)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    assert window.views_ready, window.report()


def test_the_window_ends_with_too_few_views(rig: Rig, shared_data: Path) -> None:
    window = rig.window(seconds=20)
    rig.feed(window, clip(shared_data, NOTHING_SHOT))
    rig.clock.now = 20.0
    rig.feed(window, clip(shared_data, NOTHING_SHOT))
    assert window.status is CaptureStatus.FAILED and window.reason is not None
    assert window.reason.startswith("too few views: 0 of 5")


def test_a_window_nobody_feeds_expires(rig: Rig) -> None:
    window = rig.window(seconds=20)
    rig.clock.now = 19.9
    assert not window.expire()
    rig.clock.now = 20.0
    assert window.expire() and window.status is CaptureStatus.FAILED


def test_too_few_views_says_why_views_were_refused(rig: Rig, shared_data: Path) -> None:
    strict = replace(rig.settings, quality=replace(rig.settings.quality, min_face_px=400.0))
    window = CaptureWindow("c1", CaptureRequest("test", CONSENT, name="x"), strict, metric="cosine", clock=rig.clock)
    rig.feed(window, itertools.islice(clip(shared_data, MIRANDA_SHOT), 10))
    rig.clock.now = 20.0
    window.expire()
    assert window.reason is not None and "face too small (10)" in window.reason


def test_a_cancelled_window_drops_its_views_and_wants_no_more(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=10)
    rig.feed(window, itertools.islice(clip(shared_data, MIRANDA_SHOT), 20))
    assert window.report()["views"] > 0
    assert window.cancel()
    assert window.status is CaptureStatus.CANCELED and not window.wants_views() and window.take_views() == []


def test_the_report_counts_views_while_collecting(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=10)
    rig.feed(window, itertools.islice(clip(shared_data, MIRANDA_SHOT), 20))
    report = window.report()
    assert report["status"] == "IN_PROGRESS" and report["step"] == "collecting"
    assert 0 < report["views"] < 10 and report["views_needed"] == 10


# ------------------------------------------------------------------------------------ the recognizer's hook


class Watcher:
    """A views hook that wants every frame and counts the faces it was shown."""

    def __init__(self) -> None:
        self.shown: list[TrackView] = []

    def wants_views(self) -> bool:
        return True

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None:
        self.shown += views


def test_a_decided_track_is_embedded_on_every_frame_while_watched(rig: Rig, shared_data: Path) -> None:
    enroll_miranda(rig, shared_data)
    frames = list(itertools.islice(clip(shared_data, MIRANDA_SHOT), 40))
    plain = Recognizer(rig.pipeline, rig.matcher, rig.store, rig.settings, "stage")
    watcher = Watcher()
    watched = Recognizer(rig.pipeline, rig.matcher, rig.store, rig.settings, "stage", views=watcher)
    for index, frame in enumerate(frames):
        plain.process(frame, T0 + timedelta(seconds=index / 30))
        watched.process(frame, T0 + timedelta(seconds=index / 30))
    assert plain.stats.recognized == watched.stats.recognized == 1
    assert plain.stats.embeddings < 10 <= len(frames) - 5 <= watched.stats.embeddings
    assert len(watcher.shown) == watched.stats.faces
    assert all(view.decision is not None for view in watcher.shown[-5:])


# ------------------------------------------------------------------------------------ storing


def test_a_full_window_is_stored_as_templates_of_a_new_person(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=5)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    enroll_capture(window, rig.enroller(), rig.sync)
    report = window.report()
    assert report["status"] == "SUCCEEDED" and report["created"] and report["templates_added"] == 5
    person_id = report["person"]["id"]
    assert len(rig.matcher) == 5 and rig.matcher.person_ids() == {person_id}  # the live matcher followed
    record = rig.store.audit_log(1)[0]
    assert record["action"] == "person.enroll_camera" and record["target"] == person_id
    assert record["details"]["status"] == "SUCCEEDED" and record["details"]["consent_reference"] == "form-17"


def test_templates_from_the_camera_say_so(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=3)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    enroll_capture(window, rig.enroller(), rig.sync)
    sources = [row["source"] for row in rig.store.db.query("SELECT source FROM templates")]
    assert sources == ["camera"] * 3


@pytest.mark.parametrize("keep", [False, True])
def test_chips_are_kept_only_when_the_settings_say_so(rig: Rig, shared_data: Path, keep: bool) -> None:
    rig.settings = replace(rig.settings, gallery=replace(rig.settings.gallery, keep_chips=keep))
    window = rig.window(views=3)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    enroll_capture(window, rig.enroller(), rig.sync)
    assert window.status is CaptureStatus.SUCCEEDED, window.report()
    chips = [row["chip"] for row in rig.store.db.query("SELECT chip FROM templates")]
    assert len(chips) == 3 and all((chip is not None) == keep for chip in chips)


def test_views_that_match_someone_enrolled_meanwhile_are_not_stored(rig: Rig, shared_data: Path) -> None:
    window = rig.window(views=5)
    rig.feed(window, clip(shared_data, MIRANDA_SHOT))
    enroll_miranda(rig, shared_data)  # while the views waited to be stored
    enroll_capture(window, rig.enroller(), rig.sync)
    assert window.status is CaptureStatus.FAILED and window.reason == CONFLICT
    assert len(rig.store.list_people()) == 1
    assert rig.store.audit_log(1)[0]["action"] == "person.enroll_camera"


def test_a_refused_window_is_audited_and_stores_nothing(rig: Rig, shared_data: Path) -> None:
    window = rig.window()
    rig.feed(window, [two_faces(shared_data)] * 3)
    enroll_capture(window, rig.enroller(), rig.sync)
    record = rig.store.audit_log(1)[0]
    assert record["action"] == "person.enroll_camera" and record["details"]["reason"] == TWO_FACES
    assert rig.store.list_people() == []

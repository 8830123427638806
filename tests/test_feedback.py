"""The feedback window: decided tracks by event id, in memory only, for `feedback.window_minutes`, bounded, and
forgotten with their person."""

from __future__ import annotations

import threading
import tracemalloc
from datetime import UTC, datetime

import numpy as np
import pytest

from agent.config import FeedbackSettings, QualitySettings
from agent.identity import Match, new_event_id
from agent.recognition.events import build_event
from agent.recognition.feedback import BEST_VIEWS, FeedbackWindow
from agent.tracking.decision import mean_embedding
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from agent.wire import FaceEvent

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
QUALITY = QualitySettings()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def face(width: float = 120.0, score: float = 0.95) -> Face:
    eye = width * 0.4
    points = np.array(
        [[-eye / 2, 0], [eye / 2, 0], [0, 0.3 * width], [0, 0.5 * width], [-width / 2, 0], [width / 2, 0]]
    )
    return Face(box=(140.0, 140.0, 140.0 + width, 140.0 + width), score=score, keypoints=points + 200.0)


def track(views: int = 6, seed: int = 0, **view: float) -> Track:
    """A track of `views` embedded views whose view scores grow with their index."""
    rng = np.random.default_rng(seed)
    decided = Track(id=seed, face=face(), first_frame=1, last_frame=views, first_seen=T0, last_seen=T0)
    for i in range(views):
        decided.face = face(width=view.get("width", 120.0), score=view.get("score", 0.95))
        decided.add_embedding(rng.normal(size=128).astype(np.float32), float(i), i)
    return decided


def named(person_id: str | None) -> Match:
    return Match(person_id, person_id, 0.2, 0.1, person_id is not None)


def record(window: FeedbackWindow, person_id: str | None = "p_ada", **kw: float) -> FaceEvent:
    decided = track(**kw)  # type: ignore[arg-type]
    match = named(person_id)
    event = build_event(decided, match, camera_id="cam0", model_id="m", at=T0)
    window.record(decided, match, event, metric="cosine", quality=QUALITY)
    return event


def test_an_event_keeps_its_mean_and_best_views_best_first() -> None:
    window = FeedbackWindow(FeedbackSettings())
    decided = track(views=6)
    event = build_event(decided, named("p_ada"), camera_id="cam0", model_id="m", at=T0)
    window.record(decided, named("p_ada"), event, metric="cosine", quality=QUALITY)
    entry = window.get(event["event_id"])
    assert entry is not None and (entry.person_id, entry.camera_id, entry.model_id) == ("p_ada", "cam0", "m")
    assert np.allclose(entry.mean, mean_embedding(decided.embeddings, "cosine"), atol=1e-3)  # kept as float16
    assert [v.score for v in entry.views] == [5.0, 4.0, 3.0] and len(entry.views) == BEST_VIEWS
    assert np.allclose(entry.views[0].embedding, decided.embeddings[5], rtol=1e-3, atol=1e-3)
    assert entry.views[0].refusal is None and entry.views[0].quality["face_px"] == 120.0


def test_an_unknown_decision_names_nobody() -> None:
    window = FeedbackWindow(FeedbackSettings())
    event = record(window, None)
    entry = window.get(event["event_id"])
    assert entry is not None and entry.person_id is None


def test_a_view_the_photo_gate_refuses_carries_the_reason() -> None:
    window = FeedbackWindow(FeedbackSettings())
    entry = window.get(record(window, width=30.0)["event_id"])
    assert entry is not None and all(v.refusal and "face too small" in v.refusal for v in entry.views)


def test_an_entry_expires_with_the_window() -> None:
    clock = Clock()
    window = FeedbackWindow(FeedbackSettings(window_minutes=15), clock=clock)
    event_id = record(window)["event_id"]
    clock.now += 15 * 60 - 1
    assert window.get(event_id) is not None
    clock.now += 2
    assert window.get(event_id) is None and len(window) == 0


def test_a_window_of_zero_minutes_keeps_nothing() -> None:
    window = FeedbackWindow(FeedbackSettings(window_minutes=0))
    assert not window.enabled
    assert window.get(record(window)["event_id"]) is None and len(window) == 0


def test_the_oldest_entries_go_beyond_max_entries() -> None:
    window = FeedbackWindow(FeedbackSettings(max_entries=3))
    ids = [record(window, seed=i)["event_id"] for i in range(5)]
    assert [window.get(event_id) is not None for event_id in ids] == [False, False, True, True, True]
    assert window.dropped == 2


def test_erasure_forgets_the_entries_naming_the_person_or_corrected_to_them() -> None:
    window = FeedbackWindow(FeedbackSettings())
    ada, grace, stranger = record(window, "p_ada"), record(window, "p_grace"), record(window, None)
    window.corrected(stranger["event_id"], "p_ada")
    assert window.forget_person("p_ada") == 2
    assert [window.get(e["event_id"]) is not None for e in (ada, grace, stranger)] == [False, True, False]


def test_a_track_decided_before_an_erasure_and_recorded_after_it_is_not_kept() -> None:
    window = FeedbackWindow(FeedbackSettings())
    window.forget_person("p_ada")
    assert window.get(record(window, "p_ada")["event_id"]) is None
    assert window.get(record(window, None)["event_id"]) is not None


def test_people_gone_from_the_gallery_are_forgotten() -> None:
    window = FeedbackWindow(FeedbackSettings())
    ada, grace = record(window, "p_ada"), record(window, "p_grace")
    assert window.forget_absent({"p_grace"}) == 1
    assert window.get(ada["event_id"]) is None and window.get(grace["event_id"]) is not None


def test_the_frame_loop_and_the_command_worker_can_use_it_at_once() -> None:
    window = FeedbackWindow(FeedbackSettings(max_entries=50))
    errors: list[BaseException] = []

    def fill() -> None:
        try:
            for i in range(300):
                record(window, "p_ada" if i % 2 else None, seed=i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fill) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(300):
        window.forget_person("p_ada")
        window.get(new_event_id())
    for thread in threads:
        thread.join()
    assert errors == [] and len(window) <= 50


@pytest.mark.parametrize("tracks_per_minute", [100])
def test_the_window_at_100_tracks_a_minute_for_15_minutes_stays_under_its_stated_bound(tracks_per_minute: int) -> None:
    """The bound docs/learning.md states: 1,500 entries of 10-embedding tracks in at most 3 MB (traced)."""
    window = FeedbackWindow(FeedbackSettings())
    tracks = [track(views=10, seed=i) for i in range(tracks_per_minute * 15)]
    events = [build_event(t, named("p_ada"), camera_id="cam0", model_id="m", at=T0) for t in tracks]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for decided, event in zip(tracks, events, strict=True):
            window.record(decided, named("p_ada"), event, metric="cosine", quality=QUALITY)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(window) == 1500
    print(f"feedback window: {len(window)} entries hold {held / 1e6:.2f} MB ({held / len(window):.0f} B each)")
    assert held <= 3 * 1024 * 1024, f"{held / 1e6:.2f} MB"

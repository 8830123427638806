"""Replay of the Hamilton clip through the real pipeline, gallery, matcher, tracker and outbox.

Both enrollment photos of the clip are enrolled: Lin-Manuel Miranda, and Alex Lacamoire, who is in the
clip too (frames 21-45, in profile at the piano). With two people the margin rule is exercised, and the
nearest wrong answer for Miranda's face, and for Lacamoire's, is a real enrolled person. The clip's
shots, read off the frames (cuts at 21, 83 and 212): Lacamoire 21-45, nothing detectable 46-82,
Miranda 83-211, the audience (Barack and Michelle Obama among them) 212-275.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.recognition.enrollment import Enroller
from agent.recognition.recognizer import Recognizer, RecognizerStats
from agent.sources.base import HiRes
from agent.tracking.tracker import Track
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline

pytestmark = pytest.mark.slow  # the replay runs the real models over 275 frames (about 5-10 s)

FPS = 29.97
T0 = datetime(2024, 5, 1, 20, 0, tzinfo=UTC)
LACAMOIRE_SHOT = range(21, 46)
MIRANDA_SHOT = range(83, 212)
AUDIENCE_SHOT = range(212, 276)


def frame_time(index: int) -> datetime:
    """Timestamp of 1-based frame `index` (frame_0001.jpg is at T0)."""
    return T0 + timedelta(seconds=(index - 1) / FPS)


@dataclass
class Replay:
    frames: int
    people: dict[str, str]  # name -> person id
    decisions: list[tuple[Track, Match]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    stats: RecognizerStats | None = None
    suppressed: int = 0


@pytest.fixture(scope="module")
def replay(pipeline: FacePipeline, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Replay:
    clip = shared_data / "sequence" / "hamilton_clip"
    settings = Settings()
    frames = sorted((clip / "frames").glob("frame_*.jpg"))
    matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
    with GalleryStore.open(tmp_path_factory.mktemp("replay") / "gallery.db") as store:
        enroller = Enroller(pipeline, store, matcher, settings)
        people = {}
        for name in ("Lin-Manuel Miranda", "Alex Lacamoire"):
            photo = clip / "enroll" / f"{name.replace(' ', '_')}.png"
            outcome = enroller.enroll([(photo.name, photo)], actor="test", name=name)
            people[name] = outcome.person.id
        result = Replay(len(frames), people)
        recognizer = Recognizer(
            pipeline, matcher, store, settings, "stage", on_decision=lambda t, m: result.decisions.append((t, m))
        )
        for index, path in enumerate(frames, start=1):
            result.events += recognizer.process(load_image(path), frame_time(index)).events
        result.events += recognizer.flush(frame_time(len(frames) + 1))
        result.outbox = store.pending_events(limit=10_000)
    result.stats, result.suppressed = recognizer.stats, recognizer.events.suppressed
    by_type = Counter(e["type"] for e in result.events)
    decided = [(t.id, t.first_frame, t.last_frame, m.name if m.accepted else "unknown", round(m.distance, 3))
               for t, m in result.decisions]  # fmt: skip
    print(
        f"\nHamilton replay: {result.frames} frames, {result.stats.faces} face detections, "
        f"{recognizer.tracker.started} tracks, {result.stats.embeddings} embeddings, {result.stats.cuts} cuts, "
        f"{len(result.decisions)} decisions {decided}, events {dict(by_type)}, "
        f"suppressed by cooldown {result.suppressed}"
    )
    return result


def test_miranda_is_recognized_on_his_shot(replay: Replay) -> None:
    on_shot = [m for t, m in replay.decisions if t.first_frame in MIRANDA_SHOT]
    assert on_shot and all(m.accepted and m.name == "Lin-Manuel Miranda" for m in on_shot)


def test_recognized_events_name_miranda(replay: Replay) -> None:
    recognized = [e for e in replay.events if e["type"] == "face_recognized"]
    assert recognized and {e["person_id"] for e in recognized} == {replay.people["Lin-Manuel Miranda"]}


def test_every_other_decision_is_unknown(replay: Replay) -> None:
    others = [(t.first_frame, m) for t, m in replay.decisions if t.first_frame not in MIRANDA_SHOT]
    assert others and all(not m.accepted for _, m in others)


def test_lacamoire_in_profile_is_never_taken_for_miranda(replay: Replay) -> None:
    at_piano = [m for t, m in replay.decisions if t.first_frame in LACAMOIRE_SHOT]
    assert at_piano and all(not (m.accepted and m.name == "Lin-Manuel Miranda") for m in at_piano)


def test_the_audience_is_unknown(replay: Replay) -> None:
    audience = [m for t, m in replay.decisions if t.first_frame in AUDIENCE_SHOT]
    assert audience and not any(m.accepted for m in audience)


def test_miranda_is_named_before_his_track_spends_its_embedding_budget(replay: Replay) -> None:
    (track,) = [t for t, m in replay.decisions if m.accepted]
    tracking = Settings().tracking
    assert tracking.decision_embeddings <= len(track.embeddings) < tracking.max_embeddings_per_track


def test_a_long_stranger_track_gathers_more_evidence_before_unknown(replay: Replay) -> None:
    """Unknown is declared late: the longest audience track keeps embedding past the point where a
    match could have been named, until its budget is spent or it ends."""
    longest = max((t for t, _ in replay.decisions if t.first_frame in AUDIENCE_SHOT), key=lambda t: t.frames)
    tracking = Settings().tracking
    assert tracking.decision_embeddings < len(longest.embeddings) <= tracking.max_embeddings_per_track


def test_far_fewer_events_than_frames(replay: Replay) -> None:
    assert 0 < len(replay.events) <= replay.frames / 20


def test_every_event_returned_is_in_the_outbox(replay: Replay) -> None:
    assert [row["payload"] for row in replay.outbox] == replay.events


def test_event_times_are_the_frames_times(replay: Replay) -> None:
    (event,) = [e for e in replay.events if e["type"] == "face_recognized"]
    assert event["first_seen"] == "2024-05-01T20:00:02.736Z"  # frame 83: 82 / 29.97 s after T0


def test_tracking_embeds_a_small_fraction_of_the_faces(replay: Replay) -> None:
    assert replay.stats is not None
    assert replay.stats.embeddings <= replay.stats.faces / 5


def test_no_track_spans_a_cut(replay: Replay) -> None:
    shots = (LACAMOIRE_SHOT, MIRANDA_SHOT, AUDIENCE_SHOT)
    assert all(any(t.first_frame in s and t.last_frame in s for s in shots) for t, _ in replay.decisions)


def test_naive_timestamps_are_refused(pipeline: FacePipeline, sample_frame: Any, tmp_path: Path) -> None:
    with GalleryStore.open(tmp_path / "gallery.db") as store:
        recognizer = Recognizer(pipeline, Matcher(metric="cosine", threshold=0.4, margin=0.0), store, Settings(), "c")
        with pytest.raises(ValueError, match="timezone-aware"):
            recognizer.process(sample_frame, datetime(2024, 1, 1))


def test_small_faces_are_embedded_from_the_high_resolution_stream(
    pipeline: FacePipeline, shared_data: Path, tmp_path: Path
) -> None:
    """Detection on a half-size frame, embedding from the full-size one: the same vector as a pipeline
    that saw the full frame, which a chip upscaled from the small frame does not give."""
    full = load_image(shared_data / "sequence/hamilton_clip/frames/frame_0150.jpg")
    small = np.asarray(Image.fromarray(full).resize((320, 180), Image.Resampling.BOX))
    settings = Settings()
    with GalleryStore.open(tmp_path / "g.db") as store:
        matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
        recognizer = Recognizer(pipeline, matcher, store, settings, "cam")
        (face,) = pipeline.detect(small)
        recognizer._hires = HiRes(full, (2.0, 2.0))
        from_hires = recognizer._embed(Image.fromarray(small), face)
        assert recognizer.stats.hires_crops == 1
    (direct,) = pipeline.detect(full)
    reference = pipeline.embed_face(full, direct).embedding
    upscaled = pipeline.embed_face(small, face).embedding
    assert np.linalg.norm(from_hires - reference) < np.linalg.norm(upscaled - reference)


def test_a_decided_track_is_followed_without_the_second_pass(
    pipeline: FacePipeline, shared_data: Path, tmp_path: Path
) -> None:
    """Miranda's shot, frame by frame: his face gets the detector's second pass until his track is named,
    then none, and the first-pass boxes still continue the same track (no new track opens)."""
    clip = shared_data / "sequence" / "hamilton_clip"
    settings = Settings()
    with GalleryStore.open(tmp_path / "g.db") as store:
        matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
        photo = clip / "enroll" / "Lin-Manuel_Miranda.png"
        Enroller(pipeline, store, matcher, settings).enroll([(photo.name, photo)], actor="test", name="Miranda")
        recognizer = Recognizer(pipeline, matcher, store, settings, "stage")
        refined: list[int] = []  # second passes per frame
        for index in range(120, 150):
            before = pipeline.detector.refined
            result = recognizer.process(load_image(clip / "frames" / f"frame_{index:04d}.jpg"), frame_time(index))
            assert result.faces == 1
            refined.append(pipeline.detector.refined - before)
        (track,) = recognizer.tracker.active
    assert track.decision is not None and track.decision.accepted
    decided_at = track.last_embed_frame
    assert decided_at is not None and decided_at < 30 - 5  # named with frames to spare
    assert refined[:decided_at] == [1] * decided_at
    assert refined[decided_at:] == [0] * (30 - decided_at)
    assert recognizer.tracker.started == 1 and track.frames == 30

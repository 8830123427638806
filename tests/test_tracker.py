"""Tracker, embed policy and the multi-embedding decision, on synthetic boxes and embeddings."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import TrackingSettings
from agent.gallery.matcher import Matcher
from agent.identity import Match
from agent.tracking.decision import decide, mean_embedding, same_person
from agent.tracking.tracker import Track, Tracker, iou_matrix
from agent.vision.detector import Face

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def face_at(x: float, y: float, size: float = 80.0, score: float = 0.9) -> Face:
    """A face whose box's top-left corner is (x, y); keypoints roughly where BlazeFace puts them."""
    points = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.5, 0.8], [0.1, 0.45], [0.9, 0.45]]) * size
    return Face(box=(x, y, x + size, y + size), score=score, keypoints=points + np.array([x, y]))


def at(frame: int) -> datetime:
    return T0 + timedelta(seconds=frame / 30)


def run(tracker: Tracker, frames: list[list[Face]], start: int = 1) -> list[list[Track]]:
    return [tracker.update(faces, start + i, at(start + i)) for i, faces in enumerate(frames)]


# ---------------------------------------------------------------------------------------- association


def test_a_slowly_moving_face_keeps_one_track() -> None:
    tracker = Tracker(TrackingSettings())
    seen = run(tracker, [[face_at(100 + 4 * i, 50 + 2 * i)] for i in range(20)])
    assert {tracks[0].id for tracks in seen} == {1}


def test_two_faces_keep_their_own_tracks_in_either_detection_order() -> None:
    tracker = Tracker(TrackingSettings())
    left, right = face_at(0, 0), face_at(300, 0)
    first = tracker.update([left, right], 1, at(1))
    second = tracker.update([face_at(302, 1), face_at(2, 1)], 2, at(2))
    assert [t.id for t in second] == [first[1].id, first[0].id]


def test_a_face_arriving_later_gets_a_new_larger_id() -> None:
    tracker = Tracker(TrackingSettings())
    first = tracker.update([face_at(0, 0)], 1, at(1))
    second = tracker.update([face_at(0, 0), face_at(400, 0)], 2, at(2))
    assert second[1].id > first[0].id


def test_fast_motion_without_overlap_is_followed_by_centre_distance() -> None:
    tracker = Tracker(TrackingSettings())
    seen = run(tracker, [[face_at(80 * i, 0)] for i in range(5)])  # one face width per frame: IoU 0
    assert {tracks[0].id for tracks in seen} == {1}


def test_a_jump_beyond_the_centre_gate_starts_a_new_track() -> None:
    tracker = Tracker(TrackingSettings(), centre_gate=1.5)
    seen = run(tracker, [[face_at(0, 0)], [face_at(200, 0)]])  # 2.5 face widths
    assert seen[1][0].id != seen[0][0].id


def test_a_face_of_very_different_size_is_not_the_same_track() -> None:
    tracker = Tracker(TrackingSettings())
    seen = run(tracker, [[face_at(0, 0, size=80)], [face_at(0, 0, size=200)]])
    assert seen[1][0].id != seen[0][0].id


def test_a_refused_fallback_pair_starts_a_new_track() -> None:
    tracker = Tracker(TrackingSettings())
    first = tracker.update([face_at(0, 0)], 1, at(1))
    second = tracker.update([face_at(80, 0)], 2, at(2), confirm=lambda track, face: False)
    assert second[0].id != first[0].id


def test_overlapping_pairs_are_not_put_to_confirm() -> None:
    asked: list[int] = []
    tracker = Tracker(TrackingSettings())
    tracker.update([face_at(0, 0)], 1, at(1))
    tracker.update([face_at(5, 0)], 2, at(2), confirm=lambda track, face: asked.append(track.id) or False)
    assert asked == []


def test_a_face_missed_for_a_few_frames_continues_its_track() -> None:
    tracker = Tracker(TrackingSettings(max_age_frames=5))
    seen = run(tracker, [[face_at(0, 0)], [], [], [], [face_at(3, 0)]])
    assert seen[4][0].id == seen[0][0].id


def test_a_track_closes_after_max_age_frames_unseen() -> None:
    tracker = Tracker(TrackingSettings(max_age_frames=3))
    run(tracker, [[face_at(0, 0)], [], []])
    assert tracker.pop_closed() == []
    tracker.update([], 4, at(4))
    assert [t.id for t in tracker.pop_closed()] == [1]


def test_a_closed_tracks_id_is_never_reused() -> None:
    tracker = Tracker(TrackingSettings(max_age_frames=1))
    seen = run(tracker, [[face_at(0, 0)], [], [face_at(0, 0)]])
    assert seen[2][0].id == 2


def test_a_track_records_its_times_and_frame_count() -> None:
    tracker = Tracker(TrackingSettings())
    seen = run(tracker, [[face_at(0, 0)], [face_at(1, 0)], [], [face_at(2, 0)]], start=10)
    track = seen[-1][0]
    assert (track.first_seen, track.last_seen, track.frames) == (at(10), at(13), 3)


def test_close_all_hands_back_every_track_and_starts_afresh() -> None:
    tracker = Tracker(TrackingSettings())
    tracker.update([face_at(0, 0), face_at(300, 0)], 1, at(1))
    assert len(tracker.close_all()) == 2
    assert tracker.update([face_at(0, 0)], 2, at(2))[0].id == 3


def test_frame_indexes_must_increase() -> None:
    tracker = Tracker(TrackingSettings())
    tracker.update([], 5, at(5))
    with pytest.raises(ValueError, match="does not follow"):
        tracker.update([], 5, at(5))


def test_iou_matrix_of_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


boxes = st.tuples(st.floats(-100, 700), st.floats(-100, 500), st.floats(0, 300), st.floats(0.5, 1.0)).map(
    lambda v: face_at(v[0], v[1], size=v[2], score=v[3])
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(boxes, max_size=6), max_size=25), st.integers(1, 5))
def test_random_box_sequences_never_crash_and_keep_ids_unique(frames: list[list[Face]], max_age: int) -> None:
    tracker = Tracker(TrackingSettings(max_age_frames=max_age))
    highest = 0
    for index, faces in enumerate(frames, start=1):
        tracks = tracker.update(faces, index, at(index))
        ids = [t.id for t in tracks]
        assert len(ids) == len(set(ids)) == len(faces)  # no two faces of one frame share a track
        new = [i for i in ids if i > highest]
        assert new == sorted(new) and all(i == highest + k + 1 for k, i in enumerate(new))
        highest = max([highest, *ids])
        closed = {t.id for t in tracker.pop_closed()}
        assert not closed & {t.id for t in tracker.active}
    assert len({t.id for t in tracker.active}) == len(tracker.active)


# ---------------------------------------------------------------------------------------- embed policy


def new_track() -> Track:
    return Track(1, face_at(0, 0), 1, 1, at(1), at(1))


def test_a_new_track_wants_an_embedding() -> None:
    assert new_track().wants_embedding(1, 1.0, TrackingSettings())


def test_no_new_embedding_before_embed_every_frames() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    assert not track.wants_embedding(5, 1.0, TrackingSettings(embed_every_frames=5))


def test_a_new_embedding_after_embed_every_frames() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    assert track.wants_embedding(6, 1.0, TrackingSettings(embed_every_frames=5))


def test_a_clearly_better_view_is_embedded_sooner() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    assert track.wants_embedding(2, 1.25, TrackingSettings(embed_every_frames=5, better_view_gain=1.2))


def test_a_slightly_better_view_waits() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    assert not track.wants_embedding(2, 1.1, TrackingSettings(embed_every_frames=5, better_view_gain=1.2))


def test_no_embedding_beyond_the_per_track_cap() -> None:
    track = new_track()
    for frame in range(1, 4):
        track.add_embedding(np.zeros(4), 1.0, frame)
    assert not track.wants_embedding(100, 9.0, TrackingSettings(max_embeddings_per_track=3))


def test_a_decided_track_wants_no_more_embeddings() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    track.decision = Match(None, None, 1.0, math.inf, False)
    assert not track.wants_embedding(100, 9.0, TrackingSettings())


def test_a_track_can_be_named_from_decision_embeddings_on() -> None:
    track = new_track()
    settings = TrackingSettings(decision_embeddings=3)
    readiness = []
    for frame in range(1, 4):
        track.add_embedding(np.zeros(4), 1.0, frame)
        readiness.append(track.can_be_named(settings))
    assert readiness == [False, False, True]


def test_a_cap_below_decision_embeddings_lets_the_cap_decide() -> None:
    track = new_track()
    track.add_embedding(np.zeros(4), 1.0, 1)
    track.add_embedding(np.zeros(4), 1.0, 2)
    assert track.can_be_named(TrackingSettings(decision_embeddings=5, max_embeddings_per_track=2))


# ---------------------------------------------------------------------------------------- decision


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def people() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: unit(rng.normal(size=128)) for name in ("ada", "bob", "stranger")}


def matcher_for(people: dict[str, np.ndarray], metric: str, threshold: float) -> Matcher:
    matcher = Matcher(metric=metric, threshold=threshold, margin=0.0)
    matcher.load((i, name, name.title(), people[name]) for i, name in enumerate(("ada", "bob")))
    return matcher


def noisy(centre: np.ndarray, count: int, spread: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [unit(centre + rng.normal(scale=spread, size=centre.shape)) for _ in range(count)]


def test_euclidean_mean_is_the_plain_average() -> None:
    vectors = [np.array([1.0, 0.0]), np.array([3.0, 2.0])]
    assert np.allclose(mean_embedding(vectors, "euclidean"), [2.0, 1.0])


def test_cosine_mean_averages_unit_vectors() -> None:
    vectors = [np.array([10.0, 0.0]), np.array([0.0, 1.0])]
    assert np.allclose(mean_embedding(vectors, "cosine"), [0.5, 0.5])


def test_no_embeddings_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        mean_embedding([], "euclidean")


def test_a_track_of_a_known_person_is_named(people: dict[str, np.ndarray]) -> None:
    match = decide(noisy(people["ada"], 3, 0.05, seed=1), matcher_for(people, "cosine", 0.6))
    assert (match.accepted, match.person_id) == (True, "ada")


def test_a_track_of_a_stranger_is_unknown(people: dict[str, np.ndarray]) -> None:
    match = decide(noisy(people["stranger"], 3, 0.05, seed=2), matcher_for(people, "cosine", 0.6))
    assert not match.accepted


def test_the_mean_names_a_person_no_single_noisy_frame_would(people: dict[str, np.ndarray]) -> None:
    matcher = matcher_for(people, "euclidean", 0.6)
    frames = noisy(people["ada"], 5, 0.09, seed=3)  # each frame ~0.77 away, their mean ~0.45
    assert not any(m.accepted for m in matcher.search_many(np.stack(frames)))
    assert decide(frames, matcher).person_id == "ada"


def test_same_person_accepts_another_view_of_the_track(people: dict[str, np.ndarray]) -> None:
    track = noisy(people["ada"], 3, 0.02, seed=4)
    assert same_person(track, noisy(people["ada"], 1, 0.02, seed=5)[0], matcher_for(people, "cosine", 0.6))


def test_same_person_refuses_someone_else(people: dict[str, np.ndarray]) -> None:
    track = noisy(people["ada"], 3, 0.02, seed=6)
    assert not same_person(track, people["bob"], matcher_for(people, "cosine", 0.6))

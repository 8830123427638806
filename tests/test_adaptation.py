"""The adaptation policy (`gallery.adapt`): which view of a decided track becomes an adaptive template, on real
faces. Colin Powell is enrolled (from three photos, or one), George W. Bush and Tony Blair are the others."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import BUILT_IN_MATCHING, GallerySettings
from agent.gallery.matcher import Matcher
from agent.identity import Match
from agent.recognition.adaptation import (
    DRIFT,
    NARROW_MARGIN,
    NEAR_OTHER,
    NO_DIVERSITY,
    NOT_HELD,
    NOT_RECOGNIZED,
    TOO_FAR,
    AdaptiveTemplate,
    RecognizedTrack,
    Refusal,
    consider,
)
from agent.tracking.decision import decide
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from tests.support.data import POWELL

# The defaults but a wider diversity window: these photos' views lie 0.15-0.3 from Powell's enrolled ones, so the
# default adapt_min_distance (0.3, docs/learning.md) would refuse them all before any other rule is reached.
RULES = dataclasses.replace(GallerySettings(), adapt_min_distance=0.15)
PHOTOS = {
    "powell": [f"Colin_Powell/Colin_Powell_{n}" for n in (*POWELL, "0049", "0095", "0182", "0198")],
    "bush": [f"George_W_Bush/George_W_Bush_{n}" for n in ("0007", "0016", "0065")],
    "blair": [f"Tony_Blair/Tony_Blair_{n}" for n in ("0032", "0048")],
}
Faces = dict[str, np.ndarray]  # "Colin_Powell_0040" -> its embedding


@pytest.fixture(scope="module")
def faces(shared_data: Path) -> Faces:
    """dlib's embeddings, by name: the windows and distances here are in its space (its figures are the built-in
    ones the rules resolve to); tests/test_matching.py shows another embedder's figures taking over."""
    pipeline = FacePipeline(PipelineOptions(embedder="dlib-resnet29-int8", threads=1))
    embedded = {}
    for name in (n for names in PHOTOS.values() for n in names):
        rgb = load_image(shared_data / "faces-lfw" / f"{name}.jpg")
        face = most_central(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
        assert face is not None, name
        embedded[name.split("/")[1]] = pipeline.embed_face(rgb, face).embedding
    return embedded


def powell(number: str) -> str:
    return f"Colin_Powell_{number}"


ENROLLED = [("powell", powell(n)) for n in POWELL] + [("bush", "George_W_Bush_0007"), ("blair", "Tony_Blair_0032")]


def gallery(faces: Faces, rows: Sequence[tuple[str, str]] = ENROLLED) -> Matcher:
    matcher = Matcher.for_gallery(RULES)
    for template_id, (person, photo) in enumerate(rows):
        matcher.add(template_id, person, person.title(), faces[photo])
    return matcher


def decided(matcher: Matcher, *views: np.ndarray, event_id: str | None = "E1") -> RecognizedTrack:
    """The track as the recognizer decides it: its mean embedding searched, `track_threshold` applied."""
    match = decide(views, matcher, BUILT_IN_MATCHING.track_threshold)
    return RecognizedTrack(match, views, [1.0] * len(views), event_id)


def forced(person: str, *views: np.ndarray, scores: Sequence[float] | None = None) -> RecognizedTrack:
    """A track decided for `person` with an infinite margin, whatever it shows (a wrong feed)."""
    match = Match(person, person.title(), 0.0, float("inf"), True)
    return RecognizedTrack(match, views, list(scores or [1.0] * len(views)))


def test_a_wide_margin_track_with_a_new_view_becomes_a_template_of_its_person(faces: Faces) -> None:
    matcher = gallery(faces)
    track = decided(matcher, faces[powell("0095")])
    assert track.match.person_id == "powell" and track.match.margin >= BUILT_IN_MATCHING.adapt_margin
    outcome = consider(track, matcher, [], RULES)
    assert isinstance(outcome, AdaptiveTemplate)
    assert (outcome.person_id, outcome.event_id, outcome.replaces) == ("powell", "E1", ())
    np.testing.assert_array_equal(outcome.embedding, faces[powell("0095")])


def test_an_unknown_track_adds_nothing(faces: Faces) -> None:
    matcher = gallery(faces, ENROLLED[:3])  # Powell only: Bush is a stranger
    track = decided(matcher, faces["George_W_Bush_0016"])
    assert not track.match.accepted
    assert consider(track, matcher, [], RULES) == Refusal(NOT_RECOGNIZED)


def test_a_margin_narrower_than_adapt_margin_adds_nothing(faces: Faces) -> None:
    matcher = gallery(faces)
    track = decided(matcher, faces[powell("0095")])
    wider = dataclasses.replace(RULES, adapt_margin=track.match.margin + 0.01)
    assert consider(track, matcher, [], wider) == Refusal(NARROW_MARGIN)


def test_a_view_the_person_already_has_adds_no_diversity(faces: Faces) -> None:
    matcher = gallery(faces)
    assert consider(decided(matcher, faces[powell(POWELL[1])]), matcher, [], RULES) == Refusal(NO_DIVERSITY)


def test_a_view_far_from_every_enrolled_template_is_refused(faces: Faces) -> None:
    matcher = gallery(faces, ENROLLED[:3])  # Bush's face, wrongly decided as Powell, with Bush not enrolled
    assert consider(forced("powell", faces["George_W_Bush_0016"]), matcher, [], RULES) == Refusal(TOO_FAR)


def test_a_view_near_another_person_is_refused_even_within_reach(faces: Faces) -> None:
    matcher = gallery(faces)
    reachable = dataclasses.replace(RULES, adapt_max_distance=4.0)  # only the guard can stop it now
    assert consider(forced("powell", faces["George_W_Bush_0016"]), matcher, [], reachable) == Refusal(NEAR_OTHER)


def test_without_the_guard_a_view_near_another_person_is_taken(faces: Faces) -> None:
    matcher = gallery(faces)
    unguarded = dataclasses.replace(RULES, adapt_max_distance=4.0, adapt_guard_distance=0.0)
    assert isinstance(consider(forced("powell", faces["George_W_Bush_0016"]), matcher, [], unguarded), AdaptiveTemplate)


def test_a_view_that_moves_the_centroid_towards_another_person_is_refused(faces: Faces) -> None:
    """Powell enrolled from one photo: his 0049 is clearly him, but would pull his centroid nearer Bush or Blair."""
    matcher = gallery(faces, [ENROLLED[0], *ENROLLED[3:]])
    track = decided(matcher, faces[powell("0049")])
    assert track.match.person_id == "powell" and track.match.margin >= BUILT_IN_MATCHING.adapt_margin
    assert consider(track, matcher, [], RULES) == Refusal(DRIFT)
    unguarded = dataclasses.replace(RULES, adapt_guard_distance=0.0)
    assert isinstance(consider(track, matcher, [], unguarded), AdaptiveTemplate)


@pytest.mark.parametrize(("cap", "replaced"), [(5, ()), (2, (10,)), (1, (10, 11))])
def test_at_the_cap_the_oldest_adaptive_templates_are_replaced(
    faces: Faces, cap: int, replaced: tuple[int, ...]
) -> None:
    matcher = gallery(faces)
    matcher.add(10, "powell", "Powell", faces[powell("0182")])  # adaptive, older
    matcher.add(11, "powell", "Powell", faces[powell("0198")])  # adaptive, newer
    capped = dataclasses.replace(RULES, adapt_templates=cap, adapt_guard_distance=0.0)
    outcome = consider(forced("powell", faces[powell("0095")]), matcher, [10, 11], capped)
    assert isinstance(outcome, AdaptiveTemplate) and outcome.replaces == replaced


def test_views_are_tried_best_view_score_first(faces: Faces) -> None:
    matcher = gallery(faces, ENROLLED[:3])
    known, stranger = faces[powell(POWELL[0])], faces["George_W_Bush_0016"]
    assert consider(forced("powell", known, stranger, scores=[0.9, 0.1]), matcher, [], RULES) == Refusal(NO_DIVERSITY)
    assert consider(forced("powell", known, stranger, scores=[0.1, 0.9]), matcher, [], RULES) == Refusal(TOO_FAR)


def test_a_lesser_view_is_taken_when_the_best_one_does_not_qualify(faces: Faces) -> None:
    matcher = gallery(faces)
    track = forced("powell", faces[powell(POWELL[0])], faces[powell("0095")], scores=[0.9, 0.2])
    outcome = consider(track, matcher, [], RULES)
    assert isinstance(outcome, AdaptiveTemplate)
    np.testing.assert_array_equal(outcome.embedding, faces[powell("0095")])


def test_a_person_erased_meanwhile_gets_nothing(faces: Faces) -> None:
    matcher = gallery(faces)
    matcher.remove_person("powell")
    assert consider(forced("powell", faces[powell("0095")]), matcher, [], RULES) == Refusal(NOT_HELD)


def test_embeddings_and_view_scores_must_pair_up(faces: Faces) -> None:
    with pytest.raises(ValueError, match="2 embeddings but 1 view scores"):
        RecognizedTrack(Match("powell", "Powell", 0.2, 0.3, True), [faces[powell("0095")]] * 2, [1.0])


def _nearest_other_of_centroid(rows: np.ndarray, matcher: Matcher, person: str) -> float:
    return float(matcher.nearest_other(rows.mean(axis=0, keepdims=True), person)[0])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    person=st.sampled_from(["powell", "bush", "blair"]),
    theirs=st.booleans(),
    picks=st.lists(st.integers(0, 13), min_size=1, max_size=4),
    min_distance=st.floats(0.0, 0.3),
    reach=st.floats(0.01, 0.6),
    guard=st.one_of(st.just(0.0), st.floats(0.2, 0.7)),
)
def test_whatever_is_fed_a_template_taken_obeys_every_rule(
    faces: Faces, person: str, theirs: bool, picks: list[int], min_distance: float, reach: float, guard: float
) -> None:
    """Any views (the person's or anyone's), decided for anyone with a wide margin: a template that is taken is at least
    adapt_min_distance from the person's templates, within adapt_max_distance of an enrolled one, and with the
    guard on at least adapt_guard_distance from the others and no nearer them with the person's centroid."""
    names = [name.split("/")[1] for name in PHOTOS[person]] if theirs else sorted(faces)  # their own, or anyone's
    views = [faces[names[i % len(names)]] for i in picks]
    rules = dataclasses.replace(
        RULES, adapt_min_distance=min_distance, adapt_max_distance=min_distance + reach, adapt_guard_distance=guard
    )
    matcher = gallery(faces)
    outcome = consider(forced(person, *views), matcher, [], rules)
    if isinstance(outcome, Refusal):
        return
    _, own = matcher.templates_of(person)
    view = outcome.embedding / np.linalg.norm(outcome.embedding)  # as the cosine matcher holds it
    own_distance = float(np.linalg.norm(own - view, axis=1).min())
    assert rules.adapt_min_distance <= own_distance < rules.adapt_max_distance
    if guard > 0:
        other = float(matcher.nearest_other(outcome.embedding[None, :], person)[0])
        assert other >= guard and other > own_distance
        before = _nearest_other_of_centroid(own, matcher, person)
        assert _nearest_other_of_centroid(np.vstack([own, view]), matcher, person) >= before

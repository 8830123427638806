"""Negatives in the live matcher: a probe closer to one of P's negatives than to P's nearest template is not
named P; the gallery's one writer keeps them as the file has them (recorded writes, other processes, erasure,
expiry)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import GallerySettings
from agent.gallery.matcher import Matcher, MatcherError
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from tests.support.data import EMBEDDER_ID as MODEL

DIM = 16


def unit(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def matcher(metric: str = "euclidean", threshold: float = 1.0) -> Matcher:
    return Matcher(metric=metric, threshold=threshold, margin=0.0)


def near(vector: np.ndarray, rng: np.random.Generator, spread: float = 0.05) -> np.ndarray:
    return (vector + rng.normal(0, spread, vector.shape)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), people=st.integers(1, 8), negatives=st.integers(0, 12))
def test_a_negative_takes_back_exactly_the_names_the_rule_says(seed: int, people: int, negatives: int) -> None:
    """Same best person, distance and margin as without negatives; named only if no negative of the best
    person is closer than the distance to them (brute force, float64)."""
    rng = np.random.default_rng(seed)
    templates, owners = unit(rng, 3 * people), np.arange(3 * people) % people
    negative_rows = [(i, f"p{rng.integers(people)}", near(v, rng, 0.3)) for i, v in enumerate(unit(rng, negatives))]
    plain, corrected = matcher(threshold=1.2), matcher(threshold=1.2)
    rows = [(i, f"p{o}", f"P{o}", v) for i, (v, o) in enumerate(zip(templates, owners, strict=True))]
    plain.load(rows)
    corrected.load(rows, negatives=negative_rows)
    for query in unit(rng, 10):
        before, after = plain.search(query), corrected.search(query)
        assert (after.person_id, after.distance, after.margin) == (before.person_id, before.distance, before.margin)
        theirs = [v for _, p, v in negative_rows if p == before.person_id]
        nearest = min((float(np.linalg.norm(v.astype(np.float64) - query)) for v in theirs), default=math.inf)
        assert after.accepted == (before.accepted and not nearest < before.distance)


def test_a_face_like_the_negative_is_no_longer_named_while_the_persons_own_face_still_is() -> None:
    rng = np.random.default_rng(1)
    ada, stranger = unit(rng, 2)
    lookalike = (0.6 * ada + 0.4 * stranger).astype(np.float32)  # named Ada before the correction
    m = matcher(threshold=0.9)
    m.load([(1, "p_ada", "Ada", ada)])
    assert m.search(lookalike).accepted
    m.add_negative(1, "p_ada", lookalike)
    assert not m.search(near(lookalike, rng, 0.01)).accepted
    assert m.search(near(ada, rng, 0.01)).accepted


def test_a_negative_of_someone_else_leaves_the_best_persons_name() -> None:
    rng = np.random.default_rng(2)
    ada, bob = unit(rng, 2)
    m = matcher(threshold=1.2)
    m.load([(1, "p_ada", "Ada", ada), (2, "p_bob", "Bob", bob)], negatives=[(1, "p_bob", near(ada, rng, 0.01))])
    match = m.search(near(ada, rng, 0.02))
    assert match.person_id == "p_ada" and match.accepted


def test_cosine_negatives_are_compared_as_unit_vectors() -> None:
    rng = np.random.default_rng(3)
    ada, stranger = unit(rng, 2)
    lookalike = (0.6 * ada + 0.4 * stranger).astype(np.float32)
    m = matcher("cosine", threshold=0.9)
    m.load([(1, "p_ada", "Ada", 3.0 * ada)], negatives=[(1, "p_ada", 7.0 * lookalike)])
    assert not m.search(0.5 * lookalike).accepted
    assert m.search(2.0 * ada).accepted


def test_erasing_a_person_drops_their_negatives() -> None:
    rng = np.random.default_rng(4)
    ada, bob = unit(rng, 2)
    m = matcher()
    m.load([(1, "p_ada", "Ada", ada), (2, "p_bob", "Bob", bob)], negatives=[(1, "p_ada", bob), (2, "p_bob", ada)])
    m.remove_person("p_ada")
    assert m.negative_count == 1


def test_replacing_people_replaces_their_negatives_and_keeps_the_others() -> None:
    rng = np.random.default_rng(5)
    ada, bob, face = unit(rng, 3)
    m = matcher()
    m.load([(1, "p_ada", "Ada", ada), (2, "p_bob", "Bob", bob)], negatives=[(1, "p_bob", ada)])
    m.replace_people({"p_ada"}, [(1, "p_ada", "Ada", ada)], [(2, "p_ada", face), (3, "p_ada", bob)])
    assert m.negative_count == 3
    m.replace_people({"p_ada"}, [(1, "p_ada", "Ada", ada)])
    assert m.negative_count == 1


@pytest.mark.parametrize(
    ("negatives", "message"),
    [
        ([(1, "p_bob", np.ones(DIM, np.float32))], "not asked for"),
        ([(1, "p_ada", np.ones(DIM + 1, np.float32))], "expected a finite embedding"),
        ([(1, "p_ada", np.full(DIM, np.nan, np.float32))], "expected a finite embedding"),
        ([(1, "p_ada", np.ones(DIM, np.float32)), (1, "p_ada", np.ones(DIM, np.float32))], "repeat an id"),
        ([(7, "p_ada", np.ones(DIM, np.float32))], "already held by someone else"),
    ],
)
def test_bad_negatives_are_refused_and_change_nothing(negatives: list, message: str) -> None:
    m = matcher()
    m.load([(1, "p_ada", "Ada", np.ones(DIM, np.float32))], negatives=[(7, "p_carl", np.ones(DIM, np.float32))])
    version = m.version
    with pytest.raises(MatcherError, match=message):
        m.replace_people({"p_ada"}, [(1, "p_ada", "Ada", np.ones(DIM, np.float32))], negatives)
    assert m.version == version and m.negative_count == 1


def test_taking_a_matcher_takes_its_negatives() -> None:
    aside, live = matcher(), matcher()
    aside.load([(1, "p_ada", "Ada", np.ones(DIM, np.float32))], negatives=[(1, "p_ada", np.zeros(DIM, np.float32))])
    live.take(aside)
    assert live.negative_count == 1


# ------------------------------------------------------------------------------ through GallerySync


def enroll(store: GalleryStore, name: str, vector: np.ndarray) -> str:
    person = store.add_person(name)
    store.add_template(person.id, vector, model_id=MODEL, model_sha256="0" * 64, quality={})
    return person.id


def add_negative(store: GalleryStore, person_id: str, vector: np.ndarray, **when: datetime) -> int:
    return store.add_negative(
        person_id, vector, model_id=MODEL, event_id="E1", ttl_days=1.0, cap=5, now=when.get("now")
    )


@pytest.fixture
def faces() -> tuple[np.ndarray, np.ndarray]:
    """Ada's face and a stranger's face that the defaults name as Ada (cosine 0.25 from her)."""
    rng = np.random.default_rng(6)
    ada, other = unit(rng, 2)
    other -= (other @ ada) * ada
    other /= np.linalg.norm(other)
    angle = 2 * math.asin(0.25 / 2)
    return ada, (math.cos(angle) * ada + math.sin(angle) * other).astype(np.float32)


def test_a_recorded_negative_reaches_the_live_matcher_at_once(tmp_path: Path, faces: tuple) -> None:
    ada_face, stranger = faces
    with GalleryStore.open(tmp_path / "g.db") as sync_store, GalleryStore.open(tmp_path / "g.db") as command_store:
        ada = enroll(command_store, "Ada", ada_face)
        live = Matcher.for_gallery(GallerySettings())
        live.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, live, MODEL, clock=lambda: 0.0)
        assert live.search(stranger).accepted
        with sync.writing(command_store) as changed:
            add_negative(command_store, ada, stranger)
            changed.add(ada)
        assert not live.search(stranger).accepted and live.search(ada_face).accepted


def test_a_negative_written_by_another_process_is_loaded_at_the_next_look(tmp_path: Path, faces: tuple) -> None:
    ada_face, stranger = faces
    ticks = iter([0.0, 3.0])
    with GalleryStore.open(tmp_path / "g.db") as sync_store, GalleryStore.open(tmp_path / "g.db") as cli_store:
        ada = enroll(cli_store, "Ada", ada_face)
        live = Matcher.for_gallery(GallerySettings())
        live.load(sync_store.iter_templates(MODEL))
        sync = GallerySync(sync_store, live, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        add_negative(cli_store, ada, stranger)
        assert sync.maybe_sync() is True
        assert live.negative_count == 1 and not live.search(stranger).accepted


def test_an_expired_negative_leaves_the_matcher_after_the_retention_purge(tmp_path: Path, faces: tuple) -> None:
    ada_face, stranger = faces
    ticks = iter([0.0, 3.0])
    with GalleryStore.open(tmp_path / "g.db") as store:
        ada = enroll(store, "Ada", ada_face)
        add_negative(store, ada, stranger)
        live = Matcher.for_gallery(GallerySettings())
        live.load(store.iter_templates(MODEL), negatives=store.negatives(MODEL))
        sync = GallerySync(store, live, MODEL, interval_seconds=2.0, clock=lambda: next(ticks))
        assert not live.search(stranger).accepted
        store.purge_expired(events_days=30, audit_days=365, now=datetime.now(UTC) + timedelta(days=2))
        assert sync.maybe_sync() is True
        assert live.negative_count == 0 and live.search(stranger).accepted

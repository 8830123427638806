"""Mean templates ([gallery] mean_offset): a person's distance is the nearer of their nearest template and their mean
template plus the offset; exact against brute force, and kept in step with every change to the gallery."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import GallerySettings, load_settings, matching
from agent.errors import ConfigError
from agent.gallery.matcher import Matcher
from agent.vision.embedder import stated_gallery
from agent.vision.modelstore import ModelStore

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gallery_rows(seed: int, templates: int, people: int) -> list[tuple[int, str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(templates, DIM)).astype(np.float32)
    owners = rng.integers(0, people, size=templates)
    return [(i, f"p{o}", f"name {o}", v) for i, (v, o) in enumerate(zip(vectors, owners, strict=True))]


def expected(rows: list, query: np.ndarray, metric: str, offset: float | None) -> list[tuple[float, str]]:
    """(distance, person) for every person, nearest first, in float64 from the rows as given."""
    prepare = unit if metric == "cosine" else (lambda x: x)
    q = prepare(query.astype(np.float64))
    by_person: dict[str, list[np.ndarray]] = {}
    for _, person, _, vector in rows:
        by_person.setdefault(person, []).append(prepare(vector.astype(np.float64)))
    ranked = []
    for person, vectors in by_person.items():
        nearest = min(float(np.linalg.norm(v - q)) for v in vectors)
        mean = np.mean(vectors, axis=0)
        mean = unit(mean) if metric == "cosine" else mean
        to_mean = float(np.linalg.norm(mean - q))
        distance = nearest if offset is None else min(nearest, to_mean + offset)
        ranked.append((distance, person))
    return sorted(ranked)


def matcher_of(metric: str, offset: float | None, threshold: float = 10.0, margin: float = 0.0) -> Matcher:
    return Matcher(metric=metric, threshold=threshold, margin=margin, mean_offset=offset)


OFFSETS = st.one_of(st.none(), st.just(0.0), st.floats(0.0, 0.5))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    templates=st.integers(1, 60),
    people=st.integers(1, 12),
    metric=st.sampled_from(["euclidean", "cosine"]),
    offset=OFFSETS,
)
def test_search_equals_brute_force_with_and_without_mean_templates(
    seed: int, templates: int, people: int, metric: str, offset: float | None
) -> None:
    rows = gallery_rows(seed, templates, people)
    matcher = matcher_of(metric, offset)
    matcher.load(rows)
    queries = np.random.default_rng(seed + 1).normal(size=(3, DIM)).astype(np.float32)
    for query, match in zip(queries, matcher.search_many(queries), strict=True):
        (best, person), *rest = expected(rows, query, metric, offset)
        assert match.distance == pytest.approx(best, abs=1e-4)
        if match.person_id != person:  # a tie within float32's precision may pick either
            assert rest and rest[0][0] == pytest.approx(best, abs=1e-4)
        second = rest[0][0] - best if rest else math.inf
        assert match.margin == pytest.approx(second, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(st.sampled_from(["add", "add new", "replace", "remove", "rename"]), min_size=1, max_size=12),
    offset=st.floats(0.0, 0.3),
    metric=st.sampled_from(["euclidean", "cosine"]),
)
def test_mean_templates_follow_every_change_as_a_fresh_load_would(
    seed: int, steps: list[str], offset: float, metric: str
) -> None:
    rng = np.random.default_rng(seed)
    rows = gallery_rows(seed, 20, 5)
    live = matcher_of(metric, offset)
    live.load(rows)
    next_id = len(rows)
    for step in steps:
        people = sorted({person for _, person, _, _ in rows})
        person = people[int(rng.integers(len(people)))] if people else "p0"
        vector = rng.normal(size=DIM).astype(np.float32)
        if step in ("add", "add new"):
            person = f"new{next_id}" if step == "add new" else person
            live.add(next_id, person, f"name of {person}", vector)
            rows.append((next_id, person, f"name of {person}", vector))
            next_id += 1
        elif step == "replace":  # what an adaptation or a re-enrollment leaves: the person's rows, rewritten
            theirs = [(next_id + k, person, "renamed", rng.normal(size=DIM).astype(np.float32)) for k in range(2)]
            next_id += 2
            live.replace_people([person], theirs)
            rows = [row for row in rows if row[1] != person] + theirs
        elif step == "remove":
            live.remove_person(person)
            rows = [row for row in rows if row[1] != person]
        else:
            live.rename(person, "someone else")
            rows = [(i, p, "someone else" if p == person else n, v) for i, p, n, v in rows]
    fresh = matcher_of(metric, offset)
    fresh.load(rows)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    for a, b in zip(live.search_many(queries), fresh.search_many(queries), strict=True):
        assert (a.person_id, a.name) == (b.person_id, b.name)
        assert a.distance == pytest.approx(b.distance, abs=1e-5)
        assert a.margin == pytest.approx(b.margin, abs=1e-5)


def test_with_one_template_each_mean_templates_change_nothing() -> None:
    rows = gallery_rows(7, 8, 8)
    rows = [row for k, row in enumerate(rows) if row[1] not in {r[1] for r in rows[:k]}]  # one template per person
    query = rows[0][3] + 0.1
    matches = []
    for offset in (None, 0.0, 0.06):
        matcher = matcher_of("cosine", offset)
        matcher.load(rows)
        matches.append(matcher.search(query))
    assert len({m.person_id for m in matches}) == 1
    assert [m.distance for m in matches] == pytest.approx([matches[0].distance] * len(matches), abs=1e-6)
    assert [m.margin for m in matches] == pytest.approx([matches[0].margin] * len(matches), abs=1e-6)


def test_the_mean_names_a_face_between_a_persons_photos_that_no_single_photo_is_near() -> None:
    """Alice's three photos surround the face; Bob's one photo is nearer than any of hers, farther than her mean
    plus a small offset, not a large one."""
    axis = np.eye(DIM, dtype=np.float32)
    face = unit(axis[0] + 0.0)
    alice = [unit(axis[0] + 0.9 * axis[k]) for k in (1, 2, 3)]
    bob = unit(axis[0] + 0.8 * axis[4])
    rows = [(k, "alice", "Alice", v) for k, v in enumerate(alice)] + [(3, "bob", "Bob", bob)]
    named = {}
    for offset in (None, 0.05, 0.5):
        matcher = matcher_of("cosine", offset, threshold=0.9)
        matcher.load(rows)
        named[offset] = matcher.search(face).person_id
    assert named == {None: "bob", 0.05: "alice", 0.5: "bob"}


def test_templates_only_searches_photos_alone() -> None:
    axis = np.eye(DIM, dtype=np.float32)
    alice = [unit(axis[0] + 0.9 * axis[k]) for k in (1, 2, 3)]
    rows = [(k, "alice", "Alice", v) for k, v in enumerate(alice)]
    matcher = matcher_of("cosine", 0.0)
    matcher.load(rows)
    face = unit(axis[0])  # nearer to her mean than to any photo
    assert matcher.search(face).distance < matcher.search(face, templates_only=True).distance - 0.1


def test_a_mean_that_cancels_out_is_no_nearer_than_a_unit_away() -> None:
    """Two opposite photos have a zero mean: it must neither crash the search nor pull any face in."""
    axis = np.eye(DIM, dtype=np.float32)
    matcher = matcher_of("cosine", 0.0, threshold=0.9)
    matcher.load([(1, "p", "P", axis[0]), (2, "p", "P", -axis[0])])
    match = matcher.search(axis[1])  # sqrt(2) from both photos
    assert match.distance == pytest.approx(1.0, abs=1e-6)  # the zero vector is 1 from every unit query
    assert not match.accepted


def test_the_default_embedders_stated_offset_is_in_force() -> None:
    spec = ModelStore(None).spec(None, "embedder")
    figures = matching(GallerySettings(), stated_gallery(spec.raw), spec.id)
    assert figures.mean_offset == spec.raw["gallery"]["mean_offset"] > 0
    assert figures.sources["mean_offset"] == f"embedder {spec.id}"
    assert matching(GallerySettings(mean_offset=0.2), stated_gallery(spec.raw), spec.id).mean_offset == 0.2


def test_without_a_stated_offset_templates_alone_score_and_swaps_keep_the_setting() -> None:
    assert Matcher.for_gallery(GallerySettings()).mean_offset is None  # the built-in figures state none
    set_here = Matcher.for_gallery(GallerySettings(mean_offset=0.2))
    live = Matcher.for_gallery(GallerySettings())
    live.take(set_here)
    assert live.mean_offset == 0.2


def test_a_bad_offset_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="mean_offset must be None or a number >= 0"):
        matcher_of("cosine", -0.1)
    path = tmp_path / "settings.toml"
    path.write_text("[gallery]\nmean_offset = -1\n")
    with pytest.raises(ConfigError, match="mean_offset"):
        load_settings(path)

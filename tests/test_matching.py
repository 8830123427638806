"""Matching figures per embedder: a figure set in [gallery] (file or set_config) wins, else the active embedder's
stated one (its manifest entry's `gallery`), else the built-in one; the matcher and the tracker decide with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import (
    BUILT_IN_MATCHING,
    DISTANCE_KEYS,
    FIGURE_KEYS,
    MATCHING_KEYS,
    GalleryFigures,
    GallerySettings,
    Settings,
    apply_remote,
    load_settings,
    matching,
)
from agent.errors import ModelError
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.recognition.adaptation import NO_DIVERSITY, AdaptiveTemplate, RecognizedTrack, Refusal, consider
from agent.recognition.enrollment import Enroller
from agent.tracking.decision import decide
from agent.vision.embedder import stated_gallery
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline
from tests.support.commands import make_device

FUSED = "fused-dlib-mobileface-mixed"
# The fused entry's guard and adaptation distances (scripts/measure_enroll_guard.py, scripts/bench_adapt.py).
FUSED_THRESHOLD, FUSED_MARGIN, FUSED_TRACK = 0.5738, 0.085, 0.489
FUSED_DUPLICATE, FUSED_CONFLICT = 0.122, FUSED_THRESHOLD
FUSED_ADAPT_MARGIN, FUSED_ADAPT_MIN, FUSED_ADAPT_MAX, FUSED_ADAPT_GUARD = 0.1275, 0.46, FUSED_THRESHOLD, 0.65
DLIB = "dlib-resnet29-int8"
FUSED_STATED = GalleryFigures(
    threshold=FUSED_THRESHOLD,
    margin=FUSED_MARGIN,
    track_threshold=FUSED_TRACK,
    duplicate_distance=FUSED_DUPLICATE,
    conflict_distance=FUSED_CONFLICT,
    adapt_margin=FUSED_ADAPT_MARGIN,
    adapt_min_distance=FUSED_ADAPT_MIN,
    adapt_max_distance=FUSED_ADAPT_MAX,
    adapt_guard_distance=FUSED_ADAPT_GUARD,
    mean_offset=0.05,
)
DLIB_STATED = GalleryFigures(threshold=0.35, margin=0.065, track_threshold=0.32)  # its distances: the built-in ones


def test_the_manifest_states_the_fused_and_dlib_figures(models_dir: Path) -> None:
    store = ModelStore(models_dir)
    stated = {model: stated_gallery(store.spec(model, "embedder").raw) for model in (FUSED, DLIB)}
    assert stated == {FUSED: FUSED_STATED, DLIB: DLIB_STATED}


def test_unset_figures_are_the_embedders_stated_ones(fused: FacePipeline) -> None:
    matcher = Matcher.for_gallery(GallerySettings(), fused.embedder)
    assert (matcher.threshold, matcher.margin, matcher.track_threshold) == (FUSED_THRESHOLD, FUSED_MARGIN, FUSED_TRACK)
    assert set(matcher.matching.sources.values()) == {f"embedder {FUSED}"}


def test_the_gallery_matcher_holds_its_embedders_size_and_the_fallback_its_members(fused: FacePipeline) -> None:
    matcher = Matcher.for_gallery(GallerySettings(), fused.embedder)
    assert matcher.dimensions == 384
    assert matcher.fallback is not None and matcher.fallback.matcher.dimensions == 128


def test_dlib_decides_as_before_with_nothing_set(dlib: FacePipeline) -> None:
    matcher = Matcher.for_gallery(GallerySettings(), dlib.embedder)
    assert (matcher.threshold, matcher.margin, matcher.track_threshold) == (0.35, 0.065, 0.32)
    assert matcher.matching == dataclasses.replace(matching(GallerySettings()), sources=matcher.matching.sources)


def test_without_a_stating_embedder_the_built_in_figures_apply() -> None:
    figures = matching(GallerySettings())
    assert (figures.threshold, figures.margin, figures.track_threshold) == (0.35, 0.065, 0.32)
    assert set(figures.sources.values()) == {"built-in"}


@given(
    st.dictionaries(st.sampled_from(FIGURE_KEYS), st.floats(min_value=0.01, max_value=2.0, allow_nan=False), min_size=1)
)
def test_a_figure_set_wins_over_the_embedders_and_the_others_stay_stated(set_here: dict[str, float]) -> None:
    figures = matching(dataclasses.replace(GallerySettings(), **set_here), FUSED_STATED, FUSED)
    for key in FIGURE_KEYS:
        expected = (set_here[key], "setting") if key in set_here else (getattr(FUSED_STATED, key), f"embedder {FUSED}")
        assert (getattr(figures, key), figures.sources[key]) == expected


def test_a_euclidean_gallery_ignores_figures_stated_in_cosine_units() -> None:
    figures = matching(GallerySettings(metric="euclidean"), FUSED_STATED, FUSED)
    assert set(figures.sources.values()) == {"built-in"}


def test_the_settings_file_and_the_remote_overlay_leave_unset_figures_unset(tmp_path: Path) -> None:
    path = tmp_path / "faceagent.toml"
    path.write_text("[gallery]\nmargin = 0.1\n")
    settings = apply_remote(load_settings(path), {"gallery.threshold": 0.5}, source="overlay")
    figures = matching(settings.gallery, FUSED_STATED, FUSED)
    in_use = {key: figures.sources[key] for key in MATCHING_KEYS}
    assert in_use == {"threshold": "setting", "margin": "setting", "track_threshold": f"embedder {FUSED}"}
    assert (figures.threshold, figures.margin, figures.track_threshold) == (0.5, 0.1, FUSED_TRACK)


def test_retune_keeps_the_embedders_figures_for_what_is_unset(fused: FacePipeline) -> None:
    matcher = Matcher.for_gallery(GallerySettings(threshold=0.3), fused.embedder)
    matcher.retune(GallerySettings(margin=0.2))
    assert (matcher.threshold, matcher.margin, matcher.track_threshold) == (FUSED_THRESHOLD, 0.2, FUSED_TRACK)


def test_a_sibling_for_another_embedder_keeps_only_what_was_set(dlib: FacePipeline, fused: FacePipeline) -> None:
    before = Matcher.for_gallery(GallerySettings(margin=0.05), dlib.embedder)
    after_update = before.sibling(fused.embedder)
    assert (after_update.threshold, after_update.margin, after_update.track_threshold) == (
        FUSED_THRESHOLD,
        0.05,
        FUSED_TRACK,
    )


def test_taking_another_embedders_matcher_takes_its_figures(dlib: FacePipeline, fused: FacePipeline) -> None:
    live = Matcher.for_gallery(GallerySettings(), dlib.embedder)
    live.take(Matcher.for_gallery(GallerySettings(), fused.embedder))
    assert (live.threshold, live.track_threshold, live.matching.sources["margin"]) == (
        FUSED_THRESHOLD,
        FUSED_TRACK,
        f"embedder {FUSED}",
    )


def test_a_track_is_decided_under_the_matchers_track_threshold() -> None:
    """A mean 0.4 from the only template: inside the single-photo threshold, outside the track threshold."""
    matcher = Matcher(metric="cosine", threshold=0.5, margin=0.0, track_threshold=0.3)
    matcher.add(1, "p1", "P", np.array([1.0, 0.0], dtype=np.float32))
    angle = 2 * np.arcsin(0.4 / 2)  # chord 0.4 between unit vectors
    view = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
    assert matcher.search(view).accepted and not decide([view, view], matcher).accepted


def test_get_config_shows_the_figures_in_use_and_where_they_came_from(dlib: FacePipeline, tmp_path: Path) -> None:
    device = make_device(tmp_path, dlib)
    assert device.call("set_config", {"values": {"gallery.margin": 0.07}})["status"] == "ok"
    reply = device.call("get_config")["data"]
    assert reply["settings"]["gallery"]["threshold"] is None  # unset: not a number the operator chose
    assert reply["matching"] == {
        "gallery.threshold": {"value": 0.35, "source": f"embedder {DLIB}"},
        "gallery.margin": {"value": 0.07, "source": "setting"},
        "gallery.track_threshold": {"value": 0.32, "source": f"embedder {DLIB}"},
    } | {f"gallery.{key}": {"value": getattr(BUILT_IN_MATCHING, key), "source": "built-in"} for key in DISTANCE_KEYS}


@pytest.mark.parametrize(
    "gallery",
    [
        {"threshold": 0.5, "margin": 0.1},
        {"threshold": "0.5", "margin": 0.1, "track_threshold": 0.4},
        {"threshold": 0.0, "margin": 0.1, "track_threshold": 0.4},
        {"threshold": 0.5, "margin": -0.1, "track_threshold": 0.4},
        {"threshold": 0.5, "margin": 0.1, "track_threshold": 0.4, "conflict": 0.5},
        {"threshold": 0.5, "margin": 0.1, "track_threshold": 0.4, "duplicate_distance": 2.5},
        {"threshold": 0.5, "margin": 0.1, "track_threshold": 0.4, "adapt_min_distance": 0.5, "adapt_max_distance": 0.4},
        [0.5, 0.1, 0.4],
    ],
)
def test_an_entry_stating_bad_figures_is_refused(gallery: Any) -> None:
    with pytest.raises(ModelError, match="gallery"):
        stated_gallery({"id": "x", "gallery": gallery})


def test_the_enrollment_guard_takes_its_embedders_distances(fused: FacePipeline, tmp_path: Path) -> None:
    settings = Settings(gallery=GallerySettings(duplicate_distance=0.2))
    with GalleryStore.open(tmp_path / "g.db") as store:
        figures = Enroller(fused, store, Matcher.for_gallery(settings.gallery, fused.embedder), settings).figures()
    assert (figures.conflict_distance, figures.sources["conflict_distance"]) == (FUSED_CONFLICT, f"embedder {FUSED}")
    assert (figures.duplicate_distance, figures.sources["duplicate_distance"]) == (0.2, "setting")


def test_adaptation_takes_the_distance_window_of_the_matchers_embedder(dlib: FacePipeline, fused: FacePipeline) -> None:
    """A view 0.33 from the person's one template: one dlib's window (0.3-0.35) takes, too near for the fused one."""
    angle = 2 * np.arcsin(0.33 / 2)  # chord 0.33 between unit vectors
    view = np.array([np.cos(angle), np.sin(angle), 0.0], dtype=np.float32)
    outcomes = {}
    for pipeline in (dlib, fused):
        matcher = Matcher.for_gallery(GallerySettings(), pipeline.embedder)
        matcher.add(1, "p", "P", np.array([1.0, 0.0, 0.0], dtype=np.float32))
        matcher.add(2, "q", "Q", np.array([0.0, -1.0, 0.0], dtype=np.float32))  # the view moves P away from Q
        track = RecognizedTrack(Match("p", "P", 0.33, float("inf"), True), [view], [1.0], "E1")
        outcomes[pipeline.embedder.info.model_id] = consider(track, matcher, [], GallerySettings())
    assert isinstance(outcomes[DLIB], AdaptiveTemplate)
    assert outcomes[FUSED] == Refusal(NO_DIVERSITY)

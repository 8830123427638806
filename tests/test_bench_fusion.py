"""scripts/bench_fusion.py's jitter study: the jittered keypoints are the face's own, scaled, turned and moved as
stated, so the study's rows (docs/recognition-v2.md, "Jittered chips in the template") measure what they name."""

from __future__ import annotations

import math
import sys
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.data import REPO
from tests.support.scripts import load_script

# A face's six BlazeFace keypoints in frame pixels: right eye, left eye, nose tip, mouth, two ear tragions.
KEYPOINTS = np.array([[210.0, 180.0], [262.0, 183.0], [236.0, 210.0], [235.0, 236.0], [180.0, 196.0], [292.0, 200.0]])


@pytest.fixture(scope="module")
def bench_fusion() -> ModuleType:
    """The script, whose own imports (_bench_common, bench_openset, ...) resolve from scripts/ as when it runs."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return load_script("bench_fusion")
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_the_identity_jitter_leaves_the_keypoints_where_they_are(bench_fusion: ModuleType) -> None:
    np.testing.assert_allclose(bench_fusion.jittered_keypoints(KEYPOINTS, 1.0, 0.0, 0.0, 0.0), KEYPOINTS)


@given(
    scale=st.floats(0.8, 1.2),
    degrees=st.floats(-15.0, 15.0),
    dx=st.floats(-0.2, 0.2),
    dy=st.floats(-0.2, 0.2),
)
def test_a_jitter_scales_turns_and_moves_the_face_as_stated(
    bench_fusion: ModuleType, scale: float, degrees: float, dx: float, dy: float
) -> None:
    moved = bench_fusion.jittered_keypoints(KEYPOINTS, scale, degrees, dx, dy)
    eye_distance = float(np.linalg.norm(KEYPOINTS[1] - KEYPOINTS[0]))

    def pairwise(points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points[:, None] - points[None], axis=-1)

    np.testing.assert_allclose(pairwise(moved), scale * pairwise(KEYPOINTS), atol=1e-9)
    np.testing.assert_allclose(
        moved[:4].mean(axis=0), KEYPOINTS[:4].mean(axis=0) + np.array([dx, dy]) * eye_distance, atol=1e-9
    )

    def eye_line(points: np.ndarray) -> float:
        return math.atan2(*(points[1] - points[0])[::-1])

    assert math.degrees(eye_line(moved) - eye_line(KEYPOINTS)) == pytest.approx(degrees, abs=1e-9)

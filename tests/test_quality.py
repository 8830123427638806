"""Face quality: size, detector score, sharpness and pose figures, and the reasons a face falls short."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.config import QualitySettings
from agent.recognition.quality import assess, pose, sharpness, view_score
from agent.vision.detector import Face
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES

# Explicit levels, so the expected messages do not follow changes to the shipped defaults.
GATE = QualitySettings(min_face_px=60, min_score=0.75, min_sharpness=30, max_yaw=0.35, max_roll_degrees=25)
SHARP_CHIP = np.random.default_rng(0).integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
FLAT_CHIP = np.full((150, 150, 3), 128, dtype=np.uint8)


def face(width: float = 120.0, score: float = 0.95, nose_shift: float = 0.0, roll_degrees: float = 0.0) -> Face:
    """A face centred at (200, 200); `nose_shift` moves the nose along the eye line, in eye distances."""
    eye = width * 0.4
    points = np.array(
        [
            [-eye / 2, 0],
            [eye / 2, 0],
            [nose_shift * eye, 0.3 * width],
            [0, 0.5 * width],
            [-width / 2, 0],
            [width / 2, 0],
        ]
    )
    angle = math.radians(roll_degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    keypoints = points @ rotation.T + 200
    half = width / 2
    return Face(box=(200 - half, 200 - half, 200 + half, 200 + half), score=score, keypoints=keypoints)


def test_a_large_sharp_frontal_face_passes() -> None:
    assert assess(face(), SHARP_CHIP, GATE).reasons == []


def test_a_frontal_level_face_has_zero_yaw_and_roll() -> None:
    report = assess(face(), None, GATE)
    assert (report.yaw, report.roll_degrees) == pytest.approx((0.0, 0.0))


def test_a_small_face_is_refused_with_its_size() -> None:
    assert assess(face(width=40), None, GATE).reasons == ["face too small: 40 px wide, minimum 60"]


def test_a_low_detector_score_is_refused() -> None:
    assert assess(face(score=0.6), None, GATE).reasons == ["detector score too low: 0.60, minimum 0.75"]


def test_a_blurred_chip_is_refused() -> None:
    assert assess(face(), FLAT_CHIP, GATE).reasons == ["too blurry: sharpness 0.0, minimum 30.0"]


def test_without_a_chip_sharpness_is_not_judged() -> None:
    report = assess(face(), None, GATE)
    assert (report.sharpness, report.ok) == (None, True)


def test_a_turned_face_is_refused_with_its_yaw() -> None:
    assert assess(face(nose_shift=0.5), None, GATE).reasons == ["face turned sideways: yaw 0.50, maximum 0.35"]


def test_yaw_is_signed_by_the_direction_of_the_turn() -> None:
    assert pose(face(nose_shift=0.2).keypoints)[0] == pytest.approx(0.2)
    assert pose(face(nose_shift=-0.2).keypoints)[0] == pytest.approx(-0.2)


def test_a_tilted_head_is_refused_with_its_roll() -> None:
    assert assess(face(roll_degrees=40), None, GATE).reasons == ["head tilted: roll 40 degrees, maximum 25"]


def test_tilting_a_frontal_face_does_not_make_it_look_turned() -> None:
    assert pose(face(roll_degrees=40).keypoints)[0] == pytest.approx(0.0, abs=1e-9)


def test_coincident_eyes_read_as_turned_without_crashing() -> None:
    degenerate = face()
    degenerate.keypoints[1] = degenerate.keypoints[0]
    report = assess(degenerate, None, GATE)
    assert math.isinf(report.yaw) and not report.ok and report.view_score == 0.0


def test_stored_figures_are_finite() -> None:
    degenerate = face()
    degenerate.keypoints[1] = degenerate.keypoints[0]
    assert "yaw" not in assess(degenerate, None, GATE).as_dict()


def test_sharpness_ignores_the_chip_border() -> None:
    bordered = FLAT_CHIP.copy()
    bordered[:20] = 0  # black fill where the face touched the frame edge
    assert sharpness(bordered) == 0.0


def test_a_frontal_view_scores_above_a_turned_one() -> None:
    assert view_score(face(), GATE) > view_score(face(nose_shift=0.3), GATE)


def test_a_larger_view_scores_above_a_smaller_one() -> None:
    assert view_score(face(width=100), GATE) > view_score(face(width=60), GATE)


def test_size_stops_counting_beyond_twice_the_minimum() -> None:
    assert view_score(face(width=300), GATE) == pytest.approx(view_score(face(width=120), GATE))


def test_the_per_frame_score_equals_the_reports() -> None:
    subject = face(width=90, score=0.8, nose_shift=0.1, roll_degrees=10)
    assert view_score(subject, GATE) == assess(subject, None, GATE).view_score


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, (6, 2), elements=st.floats(-1e4, 1e4)),
    st.floats(0, 2000),
    st.floats(0, 1),
    arrays(np.uint8, st.tuples(st.integers(0, 40), st.integers(0, 40), st.just(3))),
)
def test_any_keypoints_and_chip_give_a_report(
    keypoints: np.ndarray, width: float, score: float, chip: np.ndarray
) -> None:
    report = assess(Face((0.0, 0.0, width, width), score, keypoints), chip, GATE)
    assert report.view_score >= 0 and math.isfinite(report.view_score)
    assert all(isinstance(reason, str) for reason in report.reasons)


def test_the_hamilton_enrollment_photo_passes_the_shipped_gate(pipeline: FacePipeline, shared_data: Path) -> None:
    image = load_image(shared_data / CLIP_ENROLL)
    (found,) = pipeline.analyse(image)
    assert assess(found.face, found.chip, QualitySettings()).reasons == []


def test_a_blurred_audience_face_in_the_clip_is_refused_as_blurry(pipeline: FacePipeline, shared_data: Path) -> None:
    image = load_image(shared_data / CLIP_FRAMES / "frame_0240.jpg")
    blurriest = min(pipeline.analyse(image), key=lambda found: sharpness(found.chip))
    reasons = assess(blurriest.face, blurriest.chip, QualitySettings()).reasons
    assert any(reason.startswith("too blurry") for reason in reasons)

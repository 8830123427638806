"""BlazeFace: finds real faces, ignores non-faces, gives precise keypoints, any frame size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.vision.detector import ssd_anchor_centres, weighted_nms
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, PipelineOptions


def test_short_range_anchor_layout_matches_model() -> None:
    centres = ssd_anchor_centres(128, [8, 16, 16, 16], 2)
    assert centres.shape == (896, 2)
    assert np.allclose(centres[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(centres[512:518], [0.5 / 8, 0.5 / 8])


def test_full_range_anchor_layout_matches_model() -> None:
    assert ssd_anchor_centres(192, [4], 1).shape == (2304, 2)


def _reference_nms(geometry: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """The plain array formulation of MediaPipe's weighted NMS, which the fast one must match bit for bit."""
    order = np.argsort(-scores)
    geometry, scores = geometry[order], scores[order]
    boxes = geometry[:, :4]
    remaining = np.ones(len(scores), dtype=bool)
    results = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        width = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        height = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = width * height
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        overlap = remaining & (inter / np.maximum(areas[i] + areas - inter, 1e-9) > iou_threshold)
        overlap[i] = True
        weights = scores[overlap]
        results.append(((geometry[overlap] * weights[:, None]).sum(axis=0) / weights.sum(), float(scores[i])))
        remaining &= ~overlap
    return results


@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 40))
def test_weighted_nms_matches_the_array_formulation_exactly(seed: int, count: int) -> None:
    # Clusters of jittered boxes, as neighbouring anchors produce them, keypoints riding along.
    rng = np.random.default_rng(seed)
    faces = rng.uniform(0, 600, (3, 2))[rng.integers(0, 3, count)]
    sizes = rng.uniform(20, 200, (count, 1))
    corners = np.hstack([faces - sizes / 2, faces + sizes / 2]) + rng.normal(0, 0.15, (count, 4)) * sizes
    geometry = np.hstack([corners, rng.uniform(0, 600, (count, 12))])
    scores = 1 / (1 + np.exp(-rng.normal(1, 2, count)))
    fast, reference = weighted_nms(geometry, scores, 0.3), _reference_nms(geometry, scores, 0.3)
    assert len(fast) == len(reference)
    for (merged, score), (expected, expected_score) in zip(fast, reference, strict=True):
        assert score == expected_score
        np.testing.assert_array_equal(merged, expected)


def test_exact_multiple_letterbox_shortcut_gives_the_same_pixels() -> None:
    # The detector box-reduces 640x360 (and 1280x720, ...) frames directly; Pillow's resize with
    # reducing_gap=1 must come to the same pixels, or the shortcut changed the detector's input.
    rng = np.random.default_rng(0)
    for width, height in [(640, 360), (640, 480), (1280, 720), (1920, 1080), (384, 192), (128, 128)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        factor = width // 128
        resized = image.resize((width // factor, height // factor), Image.Resampling.BILINEAR, reducing_gap=1.0)
        assert image.reduce(factor).tobytes() == resized.tobytes()


@pytest.mark.slow
def test_finds_a_face_in_99_percent_of_lfw(pipeline: FacePipeline, lfw_faces: list[Path]) -> None:
    missed = [p.name for p in lfw_faces if not pipeline.detect(load_image(p))]
    found_rate = 1 - len(missed) / len(lfw_faces)
    print(f"LFW detection: {len(lfw_faces) - len(missed)}/{len(lfw_faces)} = {found_rate:.4f}; missed {missed[:10]}")
    assert found_rate >= 0.99


@pytest.mark.slow  # over the real photo set: a model's accuracy, not a unit
def test_finds_nothing_in_at_least_23_of_25_negatives(pipeline: FacePipeline, shared_data: Path) -> None:
    negatives = sorted((shared_data / "negatives").iterdir())
    negatives = [p for p in negatives if p.suffix.lower() in (".jpg", ".png")]
    assert len(negatives) == 25
    with_faces = [p.name for p in negatives if pipeline.detect(load_image(p))]
    print(f"negatives with a detection: {with_faces}")
    assert len(with_faces) <= 2


def test_keypoints_are_anatomically_ordered(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    right_eye, left_eye, nose, mouth = face.keypoints[:4]
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    x0, y0, x1, y1 = face.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face.keypoints[:4])


def test_two_faces_side_by_side_are_both_found(pipeline: FacePipeline, lfw_faces: list[Path]) -> None:
    left, right = load_image(lfw_faces[0]), load_image(lfw_faces[500])
    faces = pipeline.detect(np.concatenate([left, right], axis=1))
    assert len(faces) == 2
    assert sorted(f.centre[0] < 250 for f in faces) == [False, True]


def test_detections_follow_the_frame_when_mirrored(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    (mirrored,) = pipeline.detect(np.ascontiguousarray(sample_frame[:, ::-1]))
    width = sample_frame.shape[1]
    assert abs((width - mirrored.centre[0]) - face.centre[0]) < 0.05 * face.width


def test_grayscale_and_rgba_frames_are_accepted(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    grey = sample_frame.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([sample_frame, np.full(sample_frame.shape[:2], 255, np.uint8)])
    assert len(pipeline.detect(grey)) == 1
    assert len(pipeline.detect(rgba)) == 1


@pytest.mark.slow  # over the real photo set: a model's accuracy, not a unit
def test_full_range_detector_finds_faces_too_small_for_short_range(
    models_dir: Path, pipeline: FacePipeline, lfw_faces: list[Path]
) -> None:
    # 250x250 LFW photos in a 1200x900 canvas: each face is about 1/13 of the frame width.
    full = FacePipeline(PipelineOptions(models_dir=models_dir, detector="blazeface-full"))
    found = {"full": 0, "short": 0}
    for path in lfw_faces[::400][:20]:
        canvas = np.zeros((900, 1200, 3), dtype=np.uint8)
        canvas[300:550, 600:850] = load_image(path)
        for name, detector in (("full", full), ("short", pipeline)):
            faces = detector.detect(canvas)
            found[name] += len(faces) == 1 and 600 < faces[0].centre[0] < 850 and 300 < faces[0].centre[1] < 550
    print(f"small faces found of 20: {found}")
    assert found["full"] >= 18
    assert found["short"] <= 10


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 1500), width=st.integers(1, 1500), value=st.integers(0, 255))
def test_any_frame_size_runs_without_error(pipeline: FacePipeline, height: int, width: int, value: int) -> None:
    frame = np.full((height, width, 3), value, dtype=np.uint8)
    assert pipeline.detect(frame) == []


def test_huge_frame_is_handled(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    huge = np.zeros((4000, 6000, 3), dtype=np.uint8)
    huge[1000:1360, 2000:2640] = sample_frame
    faces = pipeline.detect(huge)
    assert len(faces) <= 1  # the face is ~1/60 of the frame: too small for short range, but no error

"""Alignment: a similarity transform onto the embedder's template, exact on synthetic data."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from agent.vision.aligner import invert_similarity, similarity_transform
from agent.vision.pipeline import FacePipeline


@given(
    angle=st.floats(-np.pi, np.pi),
    scale=st.floats(0.05, 20),
    tx=st.floats(-500, 500),
    ty=st.floats(-500, 500),
)
def test_similarity_transform_recovers_an_exact_transform(angle: float, scale: float, tx: float, ty: float) -> None:
    src = np.array([[10.0, 20.0], [60.0, 22.0], [35.0, 50.0], [36.0, 75.0]])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rotation.T + [tx, ty]
    matrix = similarity_transform(src, dst)
    assert np.allclose(matrix[:, :2], rotation, atol=1e-6 * scale + 1e-9)
    assert np.allclose(src @ matrix[:, :2].T + matrix[:, 2], dst, atol=1e-6 * max(1, scale))


def _lstsq_fit(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The textbook weighted least-squares fit, to check the closed-form solver against."""
    n = len(src)
    system = np.zeros((2 * n, 4))
    system[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    system[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    root = np.sqrt(weights.reshape(-1))
    (a, b, tx, ty), *_ = np.linalg.lstsq(system * root[:, None], dst.reshape(-1) * root, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


@given(
    seed=st.integers(0, 2**32 - 1),
    spread=st.floats(1, 2000),
    centre=st.floats(-5000, 5000),
    noise=st.floats(0, 20),
)
def test_weighted_fit_matches_least_squares(seed: int, spread: float, centre: float, noise: float) -> None:
    # Keypoints anywhere in a large frame, noisy (so the fit is not exact), uneven x/y weights.
    rng = np.random.default_rng(seed)
    template = np.array([[46.2, 46.55], [103.2, 46.88], [73.59, 76.9], [73.79, 106.71]])
    src = centre + spread * rng.uniform(-1, 1, (4, 2))
    dst = template + rng.normal(0, noise, (4, 2))
    weights = rng.uniform(0.05, 1, (4, 2))
    fitted = similarity_transform(src, dst, weights)
    reference = _lstsq_fit(src, dst, weights)
    scale = np.abs(reference[:, :2]).max()
    assert np.allclose(fitted[:, :2], reference[:, :2], rtol=0, atol=1e-9 * scale)
    # Translations are compared where they matter: where the fit puts the source points.
    assert np.allclose(src @ fitted[:, :2].T + fitted[:, 2], src @ reference[:, :2].T + reference[:, 2], atol=1e-6)


def test_degenerate_fit_falls_back_to_least_squares() -> None:
    src = np.full((4, 2), 7.0)  # all keypoints on one pixel: scale and rotation are undetermined
    dst = np.array([[46.2, 46.55], [103.2, 46.88], [73.59, 76.9], [73.79, 106.71]])
    weights = np.ones((4, 2))
    assert np.allclose(similarity_transform(src, dst, weights), _lstsq_fit(src, dst, weights))


def test_inverse_undoes_the_transform() -> None:
    matrix = similarity_transform(np.array([[0.0, 0], [1, 0], [0, 1]]), np.array([[5.0, 5], [5, 7], [3, 5]]))
    inverse = invert_similarity(matrix)
    point = np.array([3.0, -2.0])
    there = matrix[:, :2] @ point + matrix[:, 2]
    assert np.allclose(inverse[:, :2] @ there + inverse[:, 2], point)


def test_never_reflects() -> None:
    src = np.array([[0.0, 0], [1, 0], [0, 1]])
    mirrored = src * [-1, 1]
    matrix = similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) >= 0


def test_weights_pull_the_fit_towards_trusted_points() -> None:
    src = np.array([[0.0, 0], [10, 0], [5, 10]])
    dst = np.array([[0.0, 0], [10, 0], [5, 14]])  # the third point disagrees
    trusted = similarity_transform(src, dst, np.array([[1.0, 1], [1, 1], [1e-6, 1e-6]]))
    assert np.allclose(trusted[:, :2], np.eye(2), atol=1e-3)


def test_chip_puts_keypoints_on_the_template(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    aligner = pipeline.aligner
    chip = aligner.align(Image.fromarray(sample_frame), face.keypoints)
    assert chip.shape == (aligner.chip_size, aligner.chip_size, 3) and chip.dtype == np.uint8
    matrix = aligner.transform(face.keypoints)
    mapped = face.keypoints[list(aligner.keypoint_indices)] @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - aligner.template).max() < 0.1 * aligner.chip_size


def test_large_faces_are_downscaled_without_changing_geometry(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    aligner = pipeline.aligner
    small = aligner.align(Image.fromarray(sample_frame), face.keypoints).astype(np.float32)
    big_frame = Image.fromarray(sample_frame).resize((640 * 5, 360 * 5), Image.Resampling.BICUBIC)
    big = aligner.align(big_frame, face.keypoints * 5).astype(np.float32)
    # Same geometry, smoother source: the chips agree up to resampling noise.
    assert np.abs(big - small).mean() < 6.0


def test_faces_at_the_frame_edge_get_black_fill(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    shifted = face.keypoints - [face.box[0] + face.width, 0]  # move the face half out of the frame
    chip = pipeline.aligner.align(Image.fromarray(sample_frame), shifted)
    assert (chip[:, :10] == 0).all()

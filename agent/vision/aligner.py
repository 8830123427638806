"""Face alignment: a similarity transform that puts detector keypoints on the embedder's template.

The template comes from the embedder's manifest entry, so another embedder with another chip size or
template needs no code change. Coordinates are continuous pixels (pixel i spans [i, i+1)); template
points are given as pixel indices, as dlib does, hence the half-pixel shift.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.vision.detector import KEYPOINT_NAMES


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares rotation + uniform scale + translation (no reflection) mapping src to dst.

    `weights` (same shape as dst) lets steady points (eyes) count more than pose-dependent ones
    (the nose tip). Returns the 2x3 matrix [[a, -b, tx], [b, a, ty]].
    """
    w = None if weights is None else np.asarray(weights, dtype=np.float64).tolist()
    a, b, tx, ty = _fit_similarity(np.asarray(src, dtype=np.float64).tolist(), np.asarray(dst).tolist(), w)
    return np.array([[a, -b, tx], [b, a, ty]])


def _fit_similarity(
    src: list[list[float]], dst: list[list[float]], weights: list[list[float]] | None
) -> tuple[float, float, float, float]:
    """(a, b, tx, ty) by the 4x4 normal equations, solved in closed form on Python floats.

    A handful of points: array calls and an SVD would cost ten times the arithmetic. The source is
    centred first, so the equations stay well conditioned whatever the frame coordinates.
    """
    n = len(src)
    mx = sum(p[0] for p in src) / n
    my = sum(p[1] for p in src) / n
    m00 = m01 = m02 = m03 = m11 = m12 = m13 = m22 = m33 = r0 = r1 = r2 = r3 = 0.0
    for k, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        wx, wy = (1.0, 1.0) if weights is None else weights[k]
        x -= mx
        y -= my
        # Rows [x, -y, 1, 0] . p = u (weight wx) and [y, x, 0, 1] . p = v (weight wy).
        m00 += wx * x * x + wy * y * y
        m01 += (wy - wx) * x * y
        m02 += wx * x
        m03 += wy * y
        m11 += wx * y * y + wy * x * x
        m12 -= wx * y
        m13 += wy * x
        m22 += wx
        m33 += wy
        r0 += wx * x * u + wy * y * v
        r1 += wy * x * v - wx * y * u
        r2 += wx * u
        r3 += wy * v
    if m22 > 0 and m33 > 0:
        # Eliminate tx, ty (their equations are decoupled), then solve the 2x2 system for a, b.
        s00 = m00 - m02 * m02 / m22 - m03 * m03 / m33
        s01 = m01 - m02 * m12 / m22 - m03 * m13 / m33
        s11 = m11 - m12 * m12 / m22 - m13 * m13 / m33
        c0 = r0 - m02 * r2 / m22 - m03 * r3 / m33
        c1 = r1 - m12 * r2 / m22 - m13 * r3 / m33
        det = s00 * s11 - s01 * s01
        if det > 1e-12 * (s00 * s11 + s01 * s01):
            a = (c0 * s11 - c1 * s01) / det
            b = (s00 * c1 - s01 * c0) / det
            tx = (r2 - m02 * a - m12 * b) / m22
            ty = (r3 - m03 * a - m13 * b) / m33
            return a, b, tx - a * mx + b * my, ty - b * mx - a * my
    return _fit_similarity_lstsq(src, dst, weights)


def _fit_similarity_lstsq(
    src: list[list[float]], dst: list[list[float]], weights: list[list[float]] | None
) -> tuple[float, float, float, float]:
    """Degenerate input (coincident points, zero weights): the minimum-norm least-squares answer."""
    points = np.asarray(src, dtype=np.float64)
    n = len(points)
    system = np.zeros((2 * n, 4))
    system[0::2] = np.column_stack([points[:, 0], -points[:, 1], np.ones(n), np.zeros(n)])
    system[1::2] = np.column_stack([points[:, 1], points[:, 0], np.zeros(n), np.ones(n)])
    target = np.asarray(dst, dtype=np.float64).reshape(-1)
    if weights is not None:
        root = np.sqrt(np.asarray(weights, dtype=np.float64).reshape(-1))
        system, target = system * root[:, None], target * root
    (a, b, tx, ty), *_ = np.linalg.lstsq(system, target, rcond=None)
    return float(a), float(b), float(tx), float(ty)


def _inverse(a: float, b: float, tx: float, ty: float) -> tuple[float, float, float, float, float, float]:
    """The inverse of [[a, -b, tx], [b, a, ty]], row-major 2x3."""
    det = a * a + b * b
    ia, ib = a / det, b / det
    return ia, ib, -(ia * tx + ib * ty), -ib, ia, ib * tx - ia * ty


def invert_similarity(matrix: np.ndarray) -> np.ndarray:
    a, b, tx, ty = (float(v) for v in (matrix[0, 0], matrix[1, 0], matrix[0, 2], matrix[1, 2]))
    return np.array(_inverse(a, b, tx, ty)).reshape(2, 3)


@dataclass(frozen=True)
class Aligner:
    """Warps faces into chips of `chip_size` pixels, keypoints onto `template`."""

    chip_size: int
    template: np.ndarray  # (k, 2) continuous chip coordinates
    keypoint_indices: tuple[int, ...]
    weights: np.ndarray | None = None  # (k, 2) least-squares weights

    @classmethod
    def from_spec(cls, alignment: dict[str, Any]) -> Aligner:
        names = list(alignment["keypoints"])
        indices = tuple(KEYPOINT_NAMES.index(n) for n in names)
        template = np.asarray(alignment["template"], dtype=np.float64) + 0.5
        weights = np.asarray(alignment["weights"], dtype=np.float64) if "weights" in alignment else None
        return cls(int(alignment["chip_size"]), template, indices, weights)

    @functools.cached_property
    def _template_list(self) -> list[list[float]]:
        return self.template.tolist()

    @functools.cached_property
    def _weights_list(self) -> list[list[float]] | None:
        return None if self.weights is None else self.weights.tolist()

    def _fit(self, keypoints: np.ndarray) -> tuple[float, float, float, float]:
        points = np.asarray(keypoints, dtype=np.float64).tolist()
        src = [points[i] for i in self.keypoint_indices]
        return _fit_similarity(src, self._template_list, self._weights_list)

    def transform(self, keypoints: np.ndarray) -> np.ndarray:
        """Frame -> chip similarity matrix for a face's keypoints."""
        a, b, tx, ty = self._fit(keypoints)
        return np.array([[a, -b, tx], [b, a, ty]])

    def align(self, image: Image.Image, keypoints: np.ndarray) -> np.ndarray:
        """The chip (chip_size x chip_size x 3 uint8); areas outside the frame are black."""
        return np.asarray(self.align_image(image, keypoints))

    def align_image(self, image: Image.Image, keypoints: np.ndarray) -> Image.Image:
        """`align`'s chip as a Pillow image: its mirror image is a fifth of the cost of an array's."""
        a, b, tx, ty = self._fit(keypoints)
        data = _inverse(a, b, tx, ty)  # chip -> frame
        factor = int(math.hypot(data[0], data[3]))  # frame pixels per chip pixel
        if factor >= 2:
            # A face over twice the chip size: box-filter it down first, or bilinear sampling aliases.
            image, inverse = _reduce_region(image, np.array(data).reshape(2, 3), self.chip_size, factor)
            data = tuple(inverse.reshape(-1).tolist())
        return image.transform(
            (self.chip_size, self.chip_size),
            Image.Transform.AFFINE,
            data=data,
            resample=Image.Resampling.BILINEAR,
            fillcolor=(0, 0, 0),
        )


def _reduce_region(image: Image.Image, inverse: np.ndarray, size: int, factor: int) -> tuple[Image.Image, np.ndarray]:
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inverse.T
    x0 = max(0, int(np.floor(corners[:, 0].min())) - factor)
    y0 = max(0, int(np.floor(corners[:, 1].min())) - factor)
    x1 = min(image.width, int(np.ceil(corners[:, 0].max())) + factor)
    y1 = min(image.height, int(np.ceil(corners[:, 1].max())) + factor)
    if x1 - x0 < factor or y1 - y0 < factor:
        return image, inverse
    reduced = image.reduce(factor, box=(x0, y0, x1, y1))
    # reduced pixel coordinate r maps to frame coordinate x0 + factor * r.
    adjusted = inverse.copy()
    adjusted[:, :2] /= factor
    adjusted[:, 2] = (inverse[:, 2] - (x0, y0)) / factor
    return reduced, adjusted

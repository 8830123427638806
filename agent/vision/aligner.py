"""Face alignment: a similarity transform that puts detector keypoints on the embedder's template.

The template comes from the embedder's manifest entry, so another embedder with another chip size or
template needs no code change. Coordinates are continuous pixels (pixel i spans [i, i+1)); template
points are given as pixel indices, as dlib does, hence the half-pixel shift.
"""

from __future__ import annotations

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
    n = len(src)
    system = np.zeros((2 * n, 4))
    system[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    system[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    target = dst.reshape(-1)
    if weights is not None:
        root = np.sqrt(weights.reshape(-1))
        system, target = system * root[:, None], target * root
    (a, b, tx, ty), *_ = np.linalg.lstsq(system, target, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert_similarity(matrix: np.ndarray) -> np.ndarray:
    a, b = matrix[0, 0], matrix[1, 0]
    det = a * a + b * b
    rotation = np.array([[a, b], [-b, a]]) / det
    return np.column_stack([rotation, -rotation @ matrix[:, 2]])


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

    def transform(self, keypoints: np.ndarray) -> np.ndarray:
        """Frame -> chip similarity matrix for a face's keypoints."""
        points = np.asarray(keypoints, dtype=np.float64)[list(self.keypoint_indices)]
        return similarity_transform(points, self.template, self.weights)

    def align(self, image: Image.Image, keypoints: np.ndarray) -> np.ndarray:
        """The chip (chip_size x chip_size x 3 uint8); areas outside the frame are black."""
        inverse = invert_similarity(self.transform(keypoints))  # chip -> frame
        scale = float(np.hypot(inverse[0, 0], inverse[1, 0]))  # frame pixels per chip pixel
        factor = int(scale)
        if factor >= 2:
            # A face over twice the chip size: box-filter it down first, or bilinear sampling aliases.
            image, inverse = _reduce_region(image, inverse, self.chip_size, factor)
        chip = image.transform(
            (self.chip_size, self.chip_size),
            Image.Transform.AFFINE,
            data=tuple(inverse.reshape(-1)),
            resample=Image.Resampling.BILINEAR,
            fillcolor=(0, 0, 0),
        )
        return np.asarray(chip)


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

"""Face embeddings: an aligned chip in, an identity vector out, compared by the manifest's metric."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from agent.config import FIGURE_KEYS, MATCHING_KEYS, GalleryFigures
from agent.errors import ModelError
from agent.vision.aligner import Aligner
from agent.vision.runtime import TfliteModel

_POSITIVE = ("threshold", "track_threshold", "adapt_max_distance")  # figures that must be above 0 (as in RULES)


@dataclass(frozen=True)
class EmbedderInfo:
    """What a template needs to remember about the model that made it."""

    model_id: str
    sha256: str
    dimensions: int
    metric: str
    threshold: float
    gallery: GalleryFigures | None = None  # the matching figures its manifest entry states (cosine units)


def stated_gallery(spec: dict[str, Any]) -> GalleryFigures | None:
    """The entry's `gallery` figures (threshold, margin, track_threshold: the matcher's; and any of the guard's
    and adaptation's distances, DISTANCE_KEYS; all in cosine units), None when it states none; a ModelError for
    figures that are missing, unknown or out of range."""
    raw = spec.get("gallery")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not set(MATCHING_KEYS) <= set(raw) or not set(raw) <= set(FIGURE_KEYS):
        stated = ", ".join(MATCHING_KEYS)
        raise ModelError(f"embedder {spec.get('id')!r}: gallery must state {stated} and only {', '.join(FIGURE_KEYS)}")
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ModelError(f"embedder {spec.get('id')!r}: gallery.{key} must be a number, got {value!r}")
        if not (0 < value <= 2 if key in _POSITIVE else 0 <= value <= 2):
            raise ModelError(f"embedder {spec.get('id')!r}: gallery.{key} is outside the cosine range, got {value!r}")
    low, high = raw.get("adapt_min_distance"), raw.get("adapt_max_distance")
    if low is not None and high is not None and low >= high:
        raise ModelError(f"embedder {spec.get('id')!r}: gallery.adapt_min_distance must be below adapt_max_distance")
    return GalleryFigures(**{key: float(value) for key, value in raw.items()})


class FaceEmbedder(Protocol):
    """What the pipeline, enrollment and the matcher ask of an embedder: one model (`Embedder`) or several
    fused into one vector (`agent.vision.fusion.FusedEmbedder`)."""

    @property
    def info(self) -> EmbedderInfo: ...

    @property
    def model(self) -> TfliteModel:
        """Its clock counts every invoke the embedder makes; its input shape is the kept chip's."""
        ...

    @property
    def aligner(self) -> Aligner:
        """Makes the chip that is quality-checked and kept with a template."""
        ...

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """The vector for a chip made by `aligner` (templates rebuilt from kept chips)."""
        ...

    def embed_face(self, image: Image.Image, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chip, vector) for the face at `keypoints` (detector order) in `image`."""
        ...


class Embedder:
    """Runs an embedding model on chips of the size its manifest entry gives, aligned on its template."""

    def __init__(self, model: TfliteModel, spec: dict[str, Any]) -> None:
        if spec.get("threshold") is None:
            # A shipped model whose match threshold is not measured yet must not silently match with a guess.
            raise ModelError(f"embedder {spec.get('id')!r} has no measured threshold in the manifest; choose another")
        self.model = model
        if not isinstance(spec.get("alignment"), dict):
            raise ModelError(f"embedder {spec.get('id')!r} has no alignment template in the manifest")
        self.aligner = Aligner.from_spec(spec["alignment"])
        self.info = EmbedderInfo(
            model_id=str(spec["id"]),
            sha256=str(spec["sha256"]),
            dimensions=int(spec["output"]["shape"][-1]),
            metric=str(spec.get("metric", "euclidean")),
            threshold=float(spec["threshold"]),
            gallery=stated_gallery(spec),
        )
        self._input = np.empty(model.input_shape, dtype=np.float32)

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """A float32 vector for one chip (HxWx3 uint8, the model's input size)."""
        if chip.shape != self._input.shape[1:]:
            raise ValueError(f"chip shape {chip.shape} does not match the model input {self._input.shape[1:]}")
        self._input[0] = chip
        (output,) = self.model.run(self._input).values()
        return output[0].astype(np.float32, copy=True)

    def embed_face(self, image: Image.Image, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chip = self.aligner.align(image, keypoints)
        return chip, self.embed(chip)


def distance(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> float:
    """Distance between two embeddings under the embedder's metric (smaller is more alike)."""
    if metric == "euclidean":
        return float(np.linalg.norm(a - b))
    if metric == "cosine":
        return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    raise ValueError(f"unknown metric {metric!r}")

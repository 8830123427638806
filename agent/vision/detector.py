"""BlazeFace face detection: boxes, scores and 6 keypoints in frame pixels.

Two passes: the whole frame is letterboxed into the model's square input; then each face is cut out
as a square twice its size and detected again. The second pass sees the face 4-10x larger, which
makes keypoints (and so the alignment, and so recognition) several times more precise, and it
double-checks each detection, which removes most false positives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.vision.runtime import TfliteModel

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")


@dataclass(frozen=True)
class Face:
    """A detected face. Coordinates are continuous frame pixels (pixel i spans [i, i+1))."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: np.ndarray  # (6, 2) x, y in KEYPOINT_NAMES order

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "keypoints": {
                name: [round(float(x), 1), round(float(y), 1)]
                for name, (x, y) in zip(KEYPOINT_NAMES, self.keypoints, strict=True)
            },
        }


# [cx, cy, w, h, k...] @ this = [cx - w/2, cy - h/2, cx + w/2, cy + h/2, k...]. Exact, as the subtraction
# would be: each output sums at most two non-zero products, both exact (by 1 or 1/2), so it rounds once.
# One matrix product costs a fifth of the slicing and arithmetic it replaces.
_CENTRE_TO_CORNERS = np.eye(16)
_CENTRE_TO_CORNERS[2:4, 0:2] = -0.5 * np.eye(2)
_CENTRE_TO_CORNERS[0:2, 2:4] = np.eye(2)
_CENTRE_TO_CORNERS[2:4, 2:4] = 0.5 * np.eye(2)


def ssd_anchor_centres(input_size: int, strides: list[int], per_cell: int, offset: float = 0.5) -> np.ndarray:
    """MediaPipe SSD anchor centres (normalised), in the order the model emits them.

    Consecutive layers with the same stride share one grid, so their anchors interleave per cell.
    """
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        repeats = 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += 1
            layer += 1
        cells = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + offset) / cells, (ys + offset) / cells], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell * repeats, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(geometry: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: overlapping candidates are averaged by score, not discarded.

    `geometry` rows are [x0, y0, x1, y1, kx0, ky0, ...]; returns (geometry, score) per face.
    A frame gives a handful of candidates, so the overlap tests run on Python floats (the same
    IEEE operations, in the same order, as array code, at a fraction of its per-call cost).
    """
    order = np.argsort(-scores)
    geometry, scores = geometry[order], scores[order]
    boxes = geometry[:, :4].tolist()
    remaining = list(range(len(boxes)))
    results = []
    while remaining:
        i, *others = remaining
        x0, y0, x1, y1 = boxes[i]
        area = (x1 - x0) * (y1 - y0)
        overlap, remaining = [i], []
        for j in others:
            bx0, by0, bx1, by1 = boxes[j]
            width = (x1 if x1 < bx1 else bx1) - (x0 if x0 > bx0 else bx0)
            height = (y1 if y1 < by1 else by1) - (y0 if y0 > by0 else by0)
            inter = (width if width > 0.0 else 0.0) * (height if height > 0.0 else 0.0)
            union = area + (bx1 - bx0) * (by1 - by0) - inter
            (overlap if inter / (union if union > 1e-9 else 1e-9) > iou_threshold else remaining).append(j)
        weights = scores[overlap]
        merged = (geometry[overlap] * weights[:, None]).sum(axis=0) / weights.sum()
        results.append((merged, float(scores[i])))
    return results


class BlazeFaceDetector:
    """Runs a MediaPipe BlazeFace model described by a manifest entry."""

    def __init__(
        self, model: TfliteModel, spec: dict[str, Any], refine: bool = True, refiner: BlazeFaceDetector | None = None
    ) -> None:
        """`refiner` runs the second pass (default: this model). The full-range model finds small
        faces but not the large ones a 2x crop shows, so it hands its crops to the short-range one."""
        self.model = model
        self.size = int(spec["input"]["shape"][1])
        anchors = spec["anchors"]
        offset = anchors.get("offset", 0.5)
        self.anchors = ssd_anchor_centres(self.size, anchors["strides"], anchors["per_cell"], offset)
        # Tensor names differ between models ("regressors" vs "Identity"); the shapes do not.
        by_width = {int(d["shape"][-1]): d["name"] for d in model.output_details}
        self.scores_name, self.regressors_name = by_width[1], by_width[16]
        self.scale = float(spec["preprocessing"]["scale"])
        self.offset = float(spec["preprocessing"]["offset"])
        self.score_threshold = float(spec["score_threshold"])
        self.nms_iou = float(spec["nms_iou"])
        self.refine = refine
        self.refiner = refiner or self
        # uint8 -> model input: a float32 multiply, then add; the very values a lookup table of
        # x * scale + offset holds, at a third of the cost of np.take.
        self._scale = np.float32(self.scale)
        self._offset = np.float32(self.offset)
        # Separate buffers for the two passes: the letterbox padding is filled once per frame size.
        self._letterbox = np.empty((1, self.size, self.size, 3), dtype=np.float32)
        self._letterbox_layout: tuple[int, int, int, int] | None = None
        self._crop = np.empty((1, self.size, self.size, 3), dtype=np.float32)
        # Per anchor, what the regressors are relative to: the centre for box and keypoints, 0 for size.
        self._anchor_rows = np.zeros((len(self.anchors), 16))
        self._anchor_rows[:, 0:2] = self.anchors
        self._anchor_rows[:, 4:] = np.tile(self.anchors, 6)
        self.refined = 0  # faces given the second pass, for tests and benchmarks

    def detect(self, frame: np.ndarray | Image.Image, min_score: float | None = None) -> list[Face]:
        """Faces in an RGB uint8 frame (array or PIL image), best first."""
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        faces = self.first_pass(image, min_score)
        return sorted(self.second_pass(image, faces, min_score), key=lambda f: -f.score)

    def first_pass(self, image: Image.Image, min_score: float | None = None) -> list[Face]:
        """The whole frame's faces, unconfirmed and with coarse keypoints (what `detect` starts from)."""
        return self._detect_letterboxed(image, self.score_threshold if min_score is None else min_score)

    def second_pass(self, image: Image.Image, faces: list[Face], min_score: float | None = None) -> list[Face]:
        """First-pass `faces` detected again in their crops (when `refine` is on); unconfirmed ones dropped.
        Callers that follow a face already known pass only the faces that need the precision."""
        if not self.refine:
            return faces
        threshold = self.score_threshold if min_score is None else min_score
        self.refined += len(faces)
        return [r for r in (self.refiner.refine_face(image, f, threshold) for f in faces) if r is not None]

    def _normalise(self, pixels: Image.Image, out: np.ndarray) -> None:
        """RGB pixels -> the model's input range, written into `out` (no temporaries)."""
        np.multiply(np.asarray(pixels), self._scale, out=out, dtype=np.float32)
        out += self._offset

    def _detect_letterboxed(self, image: Image.Image, threshold: float) -> list[Face]:
        width, height = image.size
        scale = self.size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (self.size - new_w) // 2, (self.size - new_h) // 2
        factor = width // new_w
        if width == factor * new_w and height == factor * new_h:
            # An exact multiple (640x360, 1280x720, ...): the resize below would box-reduce, then copy.
            resized = image.reduce(factor)
        else:
            # reducing_gap=1: box-reduce by the integer part of the scale first, then a small bilinear
            # step: a third of the cost of a plain bilinear resize, and just as antialiased.
            resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=1.0)
        layout = (pad_x, pad_y, new_w, new_h)
        if layout != self._letterbox_layout:
            self._letterbox.fill(self.offset)
            self._letterbox_layout = layout
        self._normalise(resized, self._letterbox[0, pad_y : pad_y + new_h, pad_x : pad_x + new_w])
        # Undo the letterbox: model pixels -> frame pixels.
        return self._decode(self._letterbox, threshold, scale=1.0 / scale, shift=(-pad_x / scale, -pad_y / scale))

    def refine_face(self, image: Image.Image, face: Face, threshold: float) -> Face | None:
        """Detect again in a square crop twice the face's size; None when the face isn't confirmed."""
        cx, cy = face.centre
        half = max(face.width, face.height)
        x0, y0 = round(cx - half), round(cy - half)
        side = max(2, round(2 * half))
        crop = image.crop((x0, y0, x0 + side, y0 + side))
        crop = crop.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        self._normalise(crop, self._crop[0])
        factor = side / self.size
        candidates = self._decode(self._crop, threshold, scale=factor, shift=(x0, y0))
        if not candidates:
            return None
        # The face we were asked about sits in the middle of the crop; ignore neighbours.
        return min(candidates, key=lambda c: (c.centre[0] - cx) ** 2 + (c.centre[1] - cy) ** 2)

    def _decode(self, batch: np.ndarray, threshold: float, scale: float, shift: tuple[float, float]) -> list[Face]:
        outputs = self.model.run(batch)
        logits = outputs[self.scores_name].reshape(-1)
        keep = np.flatnonzero(logits > _logit(threshold))
        if keep.size == 0:
            return []
        # Rows [cx, cy, w, h, kx0, ky0, ...] in input fractions, then [x0, y0, x1, y1, kx0, ...] in frame
        # pixels: few array operations on the few kept rows (each costs more to call than to compute).
        rows = np.divide(outputs[self.regressors_name].reshape(-1, 16)[keep], self.size, dtype=np.float64)
        rows += self._anchor_rows[keep]
        geometry = rows @ _CENTRE_TO_CORNERS
        geometry *= self.size * scale
        points = geometry.reshape(len(keep), -1, 2)
        points += shift
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -80, 80, dtype=np.float64)))
        return [
            Face(box=tuple(g[:4].tolist()), score=s, keypoints=g[4:].reshape(-1, 2))
            for g, s in weighted_nms(geometry, scores, self.nms_iou)
        ]


@functools.lru_cache(maxsize=8)
def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))

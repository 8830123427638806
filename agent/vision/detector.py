"""BlazeFace face detection: boxes, scores and 6 keypoints in frame pixels.

Two passes: the whole frame is letterboxed into the model's square input; then each face is cut out
as a square twice its size and detected again. The second pass sees the face 4-10x larger, which
makes keypoints (and so the alignment, and so recognition) several times more precise, and it
double-checks each detection, which removes most false positives.
"""

from __future__ import annotations

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


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(geometry: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: overlapping candidates are averaged by score, not discarded.

    `geometry` rows are [x0, y0, x1, y1, kx0, ky0, ...]; returns (geometry, score) per face.
    """
    order = np.argsort(-scores)
    geometry, scores = geometry[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    results = []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        overlap = remaining & (_iou(geometry[i, :4], geometry[:, :4]) > iou_threshold)
        overlap[i] = True
        weights = scores[overlap]
        merged = (geometry[overlap] * weights[:, None]).sum(axis=0) / weights.sum()
        results.append((merged, float(scores[i])))
        remaining &= ~overlap
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
        self._input = np.empty((1, self.size, self.size, 3), dtype=np.float32)
        # uint8 -> model input in one table lookup, no float64 temporaries on the per-frame path.
        self._lut = np.arange(256, dtype=np.float32) * np.float32(self.scale) + np.float32(self.offset)

    def detect(self, frame: np.ndarray | Image.Image, min_score: float | None = None) -> list[Face]:
        """Faces in an RGB uint8 frame (array or PIL image), best first."""
        threshold = self.score_threshold if min_score is None else min_score
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        faces = self._detect_letterboxed(image, threshold)
        if self.refine:
            faces = [r for r in (self.refiner.refine_face(image, f, threshold) for f in faces) if r is not None]
        return sorted(faces, key=lambda f: -f.score)

    def _detect_letterboxed(self, image: Image.Image, threshold: float) -> list[Face]:
        width, height = image.size
        scale = self.size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        pad_x, pad_y = (self.size - new_w) // 2, (self.size - new_h) // 2
        # reducing_gap=1: box-reduce by the integer part of the scale first, then a small bilinear step:
        # a third of the cost of a plain bilinear resize, and just as antialiased.
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=1.0)
        self._input.fill(self.offset)
        window = self._input[0, pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        np.take(self._lut, np.asarray(resized), mode="clip", out=window)
        # Undo the letterbox: model pixels -> frame pixels.
        return self._decode(threshold, scale=1.0 / scale, shift=(-pad_x / scale, -pad_y / scale))

    def refine_face(self, image: Image.Image, face: Face, threshold: float) -> Face | None:
        """Detect again in a square crop twice the face's size; None when the face isn't confirmed."""
        cx, cy = face.centre
        half = max(face.width, face.height)
        x0, y0 = round(cx - half), round(cy - half)
        side = max(2, round(2 * half))
        crop = image.crop((x0, y0, x0 + side, y0 + side))
        crop = crop.resize((self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        np.take(self._lut, np.asarray(crop), mode="clip", out=self._input[0])
        factor = side / self.size
        candidates = self._decode(threshold, scale=factor, shift=(x0, y0))
        if not candidates:
            return None
        # The face we were asked about sits in the middle of the crop; ignore neighbours.
        return min(candidates, key=lambda c: (c.centre[0] - cx) ** 2 + (c.centre[1] - cy) ** 2)

    def _decode(self, threshold: float, scale: float, shift: tuple[float, float]) -> list[Face]:
        outputs = self.model.run(self._input)
        logits = outputs[self.scores_name][0, :, 0]
        keep = np.flatnonzero(logits > _logit(threshold))
        if keep.size == 0:
            return []
        raw = outputs[self.regressors_name][0, keep].astype(np.float64) / self.size
        centres = self.anchors[keep]
        points = raw[:, 4:].reshape(len(keep), -1, 2) + centres[:, None, :]
        cx, cy = raw[:, 0] + centres[:, 0], raw[:, 1] + centres[:, 1]
        half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        geometry = np.concatenate([boxes, points.reshape(len(keep), -1)], axis=1) * (self.size * scale)
        geometry[:, 0::2] += shift[0]
        geometry[:, 1::2] += shift[1]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep].astype(np.float64), -80, 80)))
        return [
            Face(box=tuple(float(v) for v in g[:4]), score=s, keypoints=g[4:].reshape(-1, 2))
            for g, s in weighted_nms(geometry, scores, self.nms_iou)
        ]


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))

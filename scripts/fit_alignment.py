"""Fit the alignment template (and per-point weights) for our detector's keypoints to dlib's chips.

dlib's descriptor was trained on chips cut by `dlib.get_face_chip(size=150, padding=0.25)` around
its own 5 landmarks. Our keypoints come from BlazeFace, whose points are not dlib's, so the best
template is where BlazeFace's points fall, on average, in dlib's own chips. This script measures
that on real faces and prints the template plus inverse-variance weights (the nose tip moves with
head pose far more than the eyes do, so it should count less in the fit).

Build/test-time only (needs dlib: pip install dlib-bin face_recognition_models). Run:
    python scripts/fit_alignment.py [--data ../shared/data] [--faces 300]
The printed JSON goes into the embedder's "alignment" entry (see scripts/build_models.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, PipelineOptions

SCALE = 4  # cut dlib chips 4x larger so BlazeFace sees the face at a comfortable size
CHIP = 150


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--faces", type=int, default=300)
    parser.add_argument("--stride", type=int, default=25, help="take every Nth LFW image (sorted by path)")
    args = parser.parse_args()
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        print("needs dlib and its models: pip install dlib-bin face_recognition_models", file=sys.stderr)
        return 2
    files = sorted((args.data / "faces-lfw").glob("*/*.jpg"))[:: args.stride][: args.faces]
    if not files:
        print(f"no LFW faces under {args.data}", file=sys.stderr)
        return 2
    finder = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    pipeline = FacePipeline(PipelineOptions())
    size, pad = CHIP * SCALE, CHIP * SCALE // 2
    points = []
    for path in files:
        frame = load_image(path)
        found = finder(frame, 1)
        if not found:
            continue
        shape = landmarks(frame, max(found, key=lambda r: r.area()))
        canvas = np.zeros((size + 2 * pad, size + 2 * pad, 3), np.uint8)
        canvas[pad : pad + size, pad : pad + size] = dlib.get_face_chip(frame, shape, size, 0.25)
        faces = pipeline.detect(canvas)
        if not faces:
            continue
        middle = pad + size / 2
        face = min(faces, key=lambda f: (f.centre[0] - middle) ** 2 + (f.centre[1] - middle) ** 2)
        points.append((face.keypoints[:4] - pad) / SCALE)
    stack = np.array(points)
    # Continuous coordinates -> dlib's pixel-index convention used by the manifest.
    template = stack.mean(axis=0) - 0.5
    spread = stack.std(axis=0)
    weights = (spread.min() / spread) ** 2
    print(f"faces used: {len(stack)} of {len(files)}", file=sys.stderr)
    print(f"keypoint spread (px, x/y): {np.round(spread, 2).tolist()}", file=sys.stderr)
    print(json.dumps({"template": np.round(template, 2).tolist(), "weights": np.round(weights, 3).tolist()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

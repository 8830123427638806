"""Helpers shared by `bench_accuracy.py` and `bench_speed.py`: data location, the comparison library, output.

Not part of the agent: these scripts run from a source checkout, in the project's venv.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import agent.vision
from agent.errors import FaceagentError
from agent.vision.detector import Face
from agent.vision.pipeline import FacePipeline, PipelineOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared data sits beside the checkout: <repo>/../shared/data.
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

# face_recognition's own default for `compare_faces(tolerance=...)`.
LIBRARY_THRESHOLD = 0.6


def resolve_data_dir(data: Path | None, required: Sequence[str]) -> Path:
    """The data folder, or exit with a message naming what is missing and how to point at it."""
    directory = (data or DEFAULT_DATA_DIR).resolve()
    missing = [name for name in required if not (directory / name).exists()]
    if missing:
        sys.exit(
            f"error: benchmark data not found: {directory} has no {', '.join(missing)}.\n"
            "The benchmarks use the shared LFW / Hamilton-clip data (see shared/data/PROVENANCE.md); "
            "pass --data DIR to point at the folder that holds it."
        )
    return directory


def load_pipeline(
    embedder: str | None, threads: int, detector: str | None = None, runtime: str | None = None
) -> FacePipeline:
    """A FacePipeline, or exit with the agent's own one-line explanation (e.g. models not built yet)."""
    try:
        return FacePipeline(PipelineOptions(embedder=embedder, detector=detector, threads=threads, runtime=runtime))
    except FaceagentError as exc:
        sys.exit(f"error: cannot load the faceagent pipeline (embedder {embedder or 'default'}): {exc}")


def import_face_recognition() -> ModuleType:
    """The `face_recognition` module, or exit saying how to install it without building dlib."""
    try:
        import face_recognition
    except ImportError as exc:
        sys.exit(
            f"error: the comparison library is not installed ({exc}).\n"
            "Install it without its dlib dependency (dlib-bin provides dlib): "
            "pip install --no-deps face_recognition Click"
        )
    return face_recognition


def library_versions() -> dict[str, str]:
    """Versions of the comparison library and what it runs on."""
    versions = {}
    for dist in ("face_recognition", "dlib-bin", "face_recognition_models"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def faces_from_library(locations: Sequence[tuple[int, int, int, int]]) -> list[Face]:
    """face_recognition's (top, right, bottom, left) boxes as `Face`s, so `most_central` can choose among them."""
    return [
        Face(box=(float(left), float(top), float(right), float(bottom)), score=1.0, keypoints=np.zeros((6, 2)))
        for top, right, bottom, left in locations
    ]


def json_digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def vision_code_digest() -> str:
    """A hash of the agent's vision code, so results (and cached embeddings) name the code that made them."""
    digest = hashlib.sha256()
    for source in sorted(Path(agent.vision.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def pipeline_description(pipeline: FacePipeline) -> dict[str, Any]:
    """Runtime, model identities and the manifest / code hashes of a loaded pipeline."""
    manifest = pipeline.store.directory / "manifest.json"
    return {
        "runtime": pipeline.runtime.describe(),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "vision_code_sha256": vision_code_digest(),
        "detector": {"id": pipeline.detector_spec.id, "sha256": pipeline.detector_spec.sha256},
        "embedder": {"id": pipeline.embedder_spec.id, "sha256": pipeline.embedder_spec.sha256},
        "metric": pipeline.embedder.info.metric,
        "threshold": pipeline.embedder.info.threshold,
    }


def model_label(model: dict[str, str]) -> str:
    return f"{model['id']} (sha256 {model['sha256'][:12]})"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table; the first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def verdict(ok: bool | None, label: str, detail: str) -> str:
    """One target line: PASS / FAIL, or SKIP when a system it needs was not run."""
    word = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    return f"{word}  {label}: {detail}"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def progress(message: str) -> None:
    """Progress goes to stderr so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)

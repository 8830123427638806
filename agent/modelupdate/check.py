"""The built-in test faces a model must get right before it goes live, checked in a child process.

Ground truth from the bundled footage: the performer in `hamilton_frame_0100.jpg` (the anchor) is the
performer in frames 110, 140 and 200 of `hamilton_clip.mp4`, and neither face in the audience at frames
225 and 230. Under the shipped dlib embedders (raw L2, threshold 0.6) the same-person distances are
0.34-0.46 and the others 0.70-0.79: a margin of about 0.1 either side, so a re-quantised model or a small
change of preprocessing still passes (the pianist's profile in frame 30, at 0.64, would leave too little).
A candidate passes when, at its own manifest metric and
threshold, it calls every same pair the same and every other pair different; its embeddings are finite, of
the declared dimension and of a plausible norm; and, when it keeps the live embedder's id (a drop-in
replacement whose templates stay valid), its anchor embedding matches the live model's. Scrambled weights
still give finite, input-dependent vectors (all these faces 0.06-0.20 apart): only the "different people
are different" half catches that, which is why both halves are required.

The check runs in a child process (`python -m agent.modelupdate.check`): a malformed model can crash the TFLite
runtime outright (a segfault, not an exception), and that must not take the live agent with it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from agent.config import ModelSettings
from agent.errors import FaceagentError
from agent.vision.embedder import distance
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline, PipelineOptions

ANCHOR = "hamilton_frame_0100.jpg"
CLIP = "hamilton_clip.mp4"
SAME_FRAMES = (110, 140, 200)
OTHER_FRAMES = (225, 230)
NORM_RANGE = (1e-2, 1e3)
CHECK_TIMEOUT_SECONDS = 300.0  # a Pi 4 needs about 15 s; a model that hangs the runtime is cut off


class CheckFailed(FaceagentError):
    """The candidate loaded but got the test faces wrong."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    step: str  # "load" (the pipeline could not be built) or "check" (it got the test faces wrong)
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)


def sample_file(name: str) -> Path:
    """A bundled sample: agent/_samples in a wheel, samples/ in the source checkout."""
    package = Path(__file__).resolve().parents[1]  # agent/, from agent/modelupdate/check.py
    for folder in (package / "_samples", package.parent / "samples"):
        if (folder / name).is_file():
            return folder / name
    raise FaceagentError(f"the sample {name} is missing from this installation: model updates cannot be checked")


def sample_faces() -> tuple[np.ndarray, list[tuple[int, np.ndarray]], list[tuple[int, np.ndarray]]]:
    """The anchor image, then (frame number, RGB frame) of the same person and of other people."""
    from agent.sources.pyav import PyavSource

    wanted = set(SAME_FRAMES + OTHER_FRAMES)
    frames: dict[int, np.ndarray] = {}
    source = PyavSource(str(sample_file(CLIP)), "file")
    source.open()
    try:
        for index in range(max(wanted) + 1):
            frame = source.read()
            if frame is None:
                raise FaceagentError(f"{CLIP} ends before frame {index}")
            if index in wanted:
                frames[index] = frame.image
    finally:
        source.close()
    anchor = load_image(sample_file(ANCHOR))
    return anchor, [(i, frames[i]) for i in SAME_FRAMES], [(i, frames[i]) for i in OTHER_FRAMES]


def _embedding(pipeline: FacePipeline, frame: np.ndarray, where: str) -> np.ndarray:
    found = pipeline.analyse(frame)
    if not found:
        raise CheckFailed(f"no face found in {where}")
    vector = found[0].embedding
    _plausible(pipeline, vector, where)
    return vector


def _plausible(pipeline: FacePipeline, vector: np.ndarray, where: str) -> None:
    dims = pipeline.embedder.info.dimensions
    if vector.shape != (dims,):
        raise CheckFailed(f"the embedding of {where} has shape {vector.shape}, the manifest says ({dims},)")
    if not np.isfinite(vector).all():
        raise CheckFailed(f"the embedding of {where} is not finite")
    norm = float(np.linalg.norm(vector))
    if not NORM_RANGE[0] <= norm <= NORM_RANGE[1]:
        raise CheckFailed(f"the embedding of {where} has norm {norm:.3g}, outside {NORM_RANGE[0]:g}-{NORM_RANGE[1]:g}")


def judge(candidate: FacePipeline, reference: FacePipeline | None) -> dict[str, float]:
    """Figures of a candidate that passes; CheckFailed says what it got wrong."""
    info = candidate.embedder.info
    anchor_frame, same, others = sample_faces()
    anchor = _embedding(candidate, anchor_frame, ANCHOR)
    same_d = [distance(anchor, _embedding(candidate, f, f"{CLIP} frame {i}"), info.metric) for i, f in same]
    other_d = []
    for index, frame in others:
        for found in candidate.analyse(frame):
            _plausible(candidate, found.embedding, f"{CLIP} frame {index}")
            other_d.append(distance(anchor, found.embedding, info.metric))
    if not other_d:
        raise CheckFailed(f"no face found in {CLIP} frames {', '.join(map(str, OTHER_FRAMES))}")
    figures = {"threshold": info.threshold, "same_max": max(same_d), "other_min": min(other_d)}
    if figures["same_max"] >= info.threshold:
        raise CheckFailed(f"the same person is {figures['same_max']:.3f} apart, not within its {info.threshold:g}")
    if figures["other_min"] < info.threshold:
        raise CheckFailed(f"different people are only {figures['other_min']:.3f} apart, within its {info.threshold:g}")
    if reference is not None and reference.embedder.info.model_id == info.model_id:
        drift = distance(_embedding(reference, anchor_frame, ANCHOR), anchor, info.metric)
        figures["drift"] = drift
        if drift >= info.threshold:
            raise CheckFailed(f"it keeps the id {info.model_id} but disagrees with the live model ({drift:.3f} apart)")
    return {name: round(float(value), 4) for name, value in figures.items()}


def _one_line(error: Exception) -> str:
    """The runtime's messages span lines ("...newer model?\nRegistration failed."); a reason is one line of a
    reply and of the journal."""
    return " ".join(str(error).split())


def check_directory(candidate: Path, reference: Path | None, models: ModelSettings) -> Verdict:
    """Build the candidate's pipeline and judge it (in this process)."""
    options = PipelineOptions(
        models_dir=candidate, detector=models.detector, embedder=models.embedder, runtime=models.runtime, threads=1
    )
    try:
        pipeline = FacePipeline(options)
        live = FacePipeline(replace(options, models_dir=reference)) if reference else None
    except (FaceagentError, ValueError, KeyError, TypeError) as exc:
        return Verdict(False, "load", f"it does not load: {_one_line(exc)}")
    try:
        return Verdict(True, "check", None, judge(pipeline, live))
    except (CheckFailed, ValueError) as exc:
        return Verdict(False, "check", f"it fails the test faces: {_one_line(exc)}")


def run_check(candidate: Path, reference: Path | None, models: ModelSettings) -> Verdict:
    """`check_directory` in a child process, so a crash or a hang of the runtime is only a failed check."""
    command = [sys.executable, "-m", "agent.modelupdate.check", str(candidate)]
    command += ["--reference", str(reference)] if reference else []
    for flag in ("detector", "embedder", "runtime"):
        value = getattr(models, flag)
        command += [f"--{flag}", value] if value else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(False, "check", f"the check did not finish within {CHECK_TIMEOUT_SECONDS:g} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return Verdict(**json.loads(lines[-1]))
    if done.returncode < 0:
        return Verdict(False, "load", f"it crashed the runtime ({signal.Signals(-done.returncode).name})")
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Verdict(False, "load", f"the check process failed (exit {done.returncode}): {tail[:200]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.modelupdate.check", description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path, help="a models directory with its manifest.json")
    parser.add_argument("--reference", type=Path, help="the live models directory")
    parser.add_argument("--detector")
    parser.add_argument("--embedder")
    parser.add_argument("--runtime")
    args = parser.parse_args(argv)
    models = ModelSettings(detector=args.detector, embedder=args.embedder, runtime=args.runtime)
    print(json.dumps(asdict(check_directory(args.candidate, args.reference, models))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

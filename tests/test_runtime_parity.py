"""ai-edge-litert (the default) and tflite-runtime (the fallback) run the shipped models to the same ends.

Both runtimes load the real models from the model store and see the same real LFW faces. Floating-point
models agree to rounding; the int8 ones do not quite, because litert's XNNPACK runs int8 kernels of its
own while tflite-runtime 2.14 falls back to the reference kernels. What must hold is that decisions do
not move: a gallery enrolled under tflite-runtime (every device before litert became the default) names
the same people under litert, except a probe that sat on the threshold.

Measured here (770 LFW faces, x86-64): detections identical (0.0 px); embeddings' cosine between the two
runtimes min 0.99913 / median 0.99952 for dlib-resnet29-int8, 0.98390 / 0.99417 for mobileface-v2-int8 (the
members of the default before), 1.000000 for both float32 models; over this test's 257 faces 0.99797 / 0.99916
for mobileface-v2-int8-mixed (the default's member: its last stages are float). Skipped, saying so, unless both
runtimes import.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import GallerySettings
from agent.gallery.matcher import Matcher
from agent.identity import Match
from agent.vision.aligner import Aligner
from agent.vision.detector import Face
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from agent.vision.runtime import Runtime, TfliteModel, installed_runtimes

pytestmark = pytest.mark.slow  # about 260 faces through both runtimes' pipelines: over a minute on a busy machine

# Lowest cosine between the two runtimes' embeddings of one face, a little under the minimum measured.
FLOAT_FLOOR = 0.99999
INT8_FLOOR = 0.98  # mobileface-v2-int8: min 0.98390 over 770 faces
FLOORS = {"dlib-resnet29-int8": 0.999, "mobileface-v2-int8-mixed": 0.996}  # min 0.99913 over 770 faces; 0.99797 / 257
# A decision may differ only where the probe sat this close to the threshold (or the margin to it) on a side.
DECISION_BAND = 0.03  # cosine distance; a probe's distance moved at most 0.011 here (160 probes)
ENROLLED = 80  # people in the gallery (their first photo), and as many probes of them plus as many strangers
EVERY_NTH_FACE = 30  # of the distinct images LFW's pairs use: about 260 faces


@dataclass(frozen=True)
class Seen:
    """One photo as the default pipeline of each runtime saw it (most central face)."""

    path: str
    image: Image.Image
    faces: tuple[Face, ...]  # per runtime, in `runtimes` order


@pytest.fixture(scope="module")
def runtimes() -> list[Runtime]:
    found = installed_runtimes()
    if len(found) < 2:
        names = ", ".join(r.describe() for r in found) or "none"
        pytest.skip(f"runtime parity needs ai-edge-litert and tflite-runtime both installed (here: {names}); "
                    "pip install -e '.[test]' installs both")  # fmt: skip
    return found


@pytest.fixture(scope="module")
def pipelines(runtimes: list[Runtime]) -> list[FacePipeline]:
    return [FacePipeline(PipelineOptions(runtime=r.name, threads=1)) for r in runtimes]


def _see(pipelines: list[FacePipeline], root: Path, paths: list[str]) -> list[Seen]:
    seen = []
    for path in paths:
        frame = load_image(root / path)
        faces = [most_central(p.detect(frame), frame.shape[1], frame.shape[0]) for p in pipelines]
        if all(face is not None for face in faces):
            seen.append(Seen(path, Image.fromarray(frame), tuple(f for f in faces if f is not None)))
    return seen


@pytest.fixture(scope="module")
def lfw_seen(pipelines: list[FacePipeline], shared_data: Path, lfw_faces: list[Path]) -> list[Seen]:
    paths = [str(p.relative_to(shared_data)) for p in lfw_faces[::EVERY_NTH_FACE]]
    return _see(pipelines, shared_data, paths)


def _embedder_ids() -> list[str]:
    store = ModelStore()
    # A fused entry runs its members, which are listed here on their own (its file holds no weights).
    return [spec.id for spec in store.specs.values() if spec.raw["role"] == "embedder" and "members" not in spec.raw]


def _floor(model_id: str, quantization: str) -> float:
    return FLOORS.get(model_id, INT8_FLOOR if quantization.startswith("int8") else FLOAT_FLOOR)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_both_runtimes_find_the_same_faces_at_the_same_points(lfw_seen: list[Seen]) -> None:
    assert len(lfw_seen) > 200
    worst = max(float(np.abs(s.faces[0].keypoints - s.faces[1].keypoints).max()) for s in lfw_seen)
    box_worst = max(float(np.abs(np.subtract(s.faces[0].box, s.faces[1].box)).max()) for s in lfw_seen)
    assert worst < 0.05 and box_worst < 0.05, f"keypoints differ by {worst:.3f} px, boxes by {box_worst:.3f} px"


@pytest.mark.parametrize("model_id", _embedder_ids())
def test_every_shipped_embedder_gives_the_same_embedding_under_both(
    model_id: str, runtimes: list[Runtime], lfw_seen: list[Seen]
) -> None:
    store = ModelStore()
    spec = store.spec(model_id, "embedder")
    aligner = Aligner.from_spec(spec.raw["alignment"])
    models = [TfliteModel(r.load(store.read_verified(spec), 1)) for r in runtimes]
    cosines = []
    for seen in lfw_seen:
        chip = aligner.align(seen.image, seen.faces[0].keypoints)[None].astype(np.float32)
        first, second = (next(iter(m.run(chip).values()))[0] for m in models)
        cosines.append(_cosine(first, second))
    floor = _floor(model_id, spec.raw.get("quantization", ""))
    print(f"{model_id}: cosine {runtimes[0].name} vs {runtimes[1].name} over {len(cosines)} faces: "
          f"min {min(cosines):.5f}, median {np.median(cosines):.5f} (floor {floor})")  # fmt: skip
    assert min(cosines) >= floor


def _gallery_and_probes(shared_data: Path) -> tuple[list[tuple[str, str]], list[tuple[str | None, str]]]:
    """(person, photo) to enroll, and (person or None for a stranger, photo) to identify, from ident_split.tsv."""
    with open(shared_data / "ident_split.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    gallery = [(r["identity"], r["path"]) for r in rows if r["role"] == "gallery"]
    step = len(gallery) // ENROLLED
    enrolled = gallery[::step][:ENROLLED]
    people = {person for person, _ in enrolled}
    probes: list[tuple[str | None, str]] = []
    for person, path in ((r["identity"], r["path"]) for r in rows if r["role"] == "probe"):
        if person in people and person not in {p for p, _ in probes}:
            probes.append((person, path))
    strangers = [r["path"] for r in rows if r["role"] == "distractor"]
    probes += [(None, path) for path in strangers[:: len(strangers) // ENROLLED][:ENROLLED]]
    return enrolled, probes


def _decision(match: Match) -> str | None:
    """Who the agent would name: nobody unless the match is accepted (the nearest stranger is no decision)."""
    return match.person_id if match.accepted else None


def _borderline(match: Match, matcher: Matcher) -> bool:
    near_threshold = abs(match.distance - matcher.threshold) <= DECISION_BAND
    return near_threshold or abs(match.margin - matcher.margin) <= DECISION_BAND


def test_a_gallery_enrolled_under_tflite_runtime_names_the_same_people_under_litert(
    pipelines: list[FacePipeline], runtimes: list[Runtime], shared_data: Path
) -> None:
    """The upgrade path: templates made by the fallback, probes embedded by each runtime, the real Matcher."""
    litert, tflite = (pipelines[[r.name for r in runtimes].index(n)] for n in ("ai-edge-litert", "tflite-runtime"))
    settings = GallerySettings()
    enrolled, probes = _gallery_and_probes(shared_data)
    matcher = Matcher.for_gallery(settings, tflite.embedder)
    people = dict(enrolled)
    for template_id, seen in enumerate(_see([tflite], shared_data, list(people.values())), 1):
        person = seen.path.split("/")[-2]
        matcher.add(template_id, person, person, tflite.embed_face(seen.image, seen.faces[0]).embedding)
    differ, shifts, named = [], [], 0
    for seen in _see(pipelines, shared_data, [path for _, path in probes]):
        by_litert = matcher.search(litert.embed_face(seen.image, seen.faces[0]).embedding)
        by_tflite = matcher.search(tflite.embed_face(seen.image, seen.faces[0]).embedding)
        shifts.append(abs(by_litert.distance - by_tflite.distance))
        named += by_litert.accepted
        if _decision(by_litert) != _decision(by_tflite):
            differ.append((seen.path, by_litert, by_tflite))
    print(f"{len(shifts)} probes against {len(matcher)} templates: {named} named under litert, "
          f"{len(differ)} decisions differ, largest distance shift {max(shifts):.4f}")  # fmt: skip
    assert named > len(shifts) // 4  # the gallery really names people: the comparison means something
    unexplained = [d for d in differ if not (_borderline(d[1], matcher) or _borderline(d[2], matcher))]
    assert not unexplained, f"decisions moved away from the threshold: {unexplained}"

"""What fusion should be: dlib and MobileFace alone and fused, on LFW 10-fold and the open-set split.

Run from the repository root, in the project venv (the first run detects and embeds 7,697 LFW images with
four models, both the chip and its mirror image, about 10 minutes on one thread; later runs read the cache):

    .venv/bin/python scripts/bench_fusion.py --out /tmp/bench_fusion.json
    .venv/bin/python scripts/bench_fusion.py --library      # face_recognition too (its cache: bench_accuracy.py)

Every image is detected once (BlazeFace short range with its second pass, the most central face); each
member embedder aligns that face on its own manifest template, as the agent does, and embeds the chip and
its mirror image. Vectors are compared by cosine. Systems:

* one embedder alone (unit vectors);
* feature fusion: the unit member vectors scaled by sqrt(weight) and concatenated (weights sum to 1), so the
  fused cosine is exactly the weighted sum of the members' cosines. Any affine per-model score normalisation
  (z-norm) followed by a weighted sum ranks like this for some weight, so the weight grid covers it;
* score fusion: each member scores a person on its own best template, then the weighted sum (differs from
  feature fusion only when a person has several templates);
* flip: the member vector is the mean of the chip's and its mirror's unit vectors;
* per-person aggregation with 3 templates: the best template (max similarity) or the mean template.

Figures, as in the issue: LFW 10-fold accuracy (bench_accuracy.py's protocol: threshold fitted on the other
nine folds); DIR at stranger FPIR <= 1% (bench_openset.py's protocol: a stranger is a probe of a non-enrolled
identity or a distractor; the threshold is the largest that accepts at most 1% of them) with 1 and 3 photos
at 1,557 and 200 enrolled (200: mean over seeds 0..4); track decisions at 200 enrolled (three probe photos of
one person form a track, decided on the mean of their unit vectors, as agent/tracking/decision.py does:
named tracks when at most 0.5% of stranger tracks are named). Pose proxy: LFW has few true profiles but
many turned faces; the yaw proxy is the nose tip's offset from the eyes' midpoint along the eye line, over
the eye distance (BlazeFace keypoints). Every identity with 2+ images enrolls its most frontal one and the
rest are probes, split into frontal (|yaw| < 0.1) and turned (|yaw| >= 0.25); strangers are the distractors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import format_table, json_digest, load_average, progress, resolve_data_dir, write_json
from bench_accuracy import Pair, cross_validate, data_fingerprint, embed_images, library_system, read_pairs
from bench_openset import (
    CHOICE_MARGINS,
    SIZES,
    Split,
    evaluate_rule,
    read_split,
    run_scenario,
    scenario,
    single_template,
)
from PIL import Image

from agent.config import GallerySettings, with_matching
from agent.errors import ImageError
from agent.vision.aligner import Aligner
from agent.vision.detector import BlazeFaceDetector
from agent.vision.embedder import stated_gallery
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import most_central
from agent.vision.runtime import TfliteModel, select_runtime

DEFAULT_CACHE = Path.home() / ".cache" / "faceagent-bench"
MEMBERS = {
    # the default, fused-dlib-mobileface-mixed: MobileFace's mixed int8 build (docs/recognition-v2.md, section 1)
    "mixed": ("dlib-resnet29-int8", "mobileface-v2-int8-mixed"),
    "int8": ("dlib-resnet29-int8", "mobileface-v2-int8"),
    "float32": ("dlib-resnet29-float32", "mobileface-v2-float32"),
    # dlib's partner in fused-dlib-mobilefacenet (docs/recognition-v2.md, section 6)
    "mobilefacenet": ("dlib-resnet29-int8", "mobilefacenet-float32"),
}
WEIGHTS = tuple(round(w, 2) for w in np.arange(0.0, 1.001, 0.1))  # dlib's weight; MobileFace has 1 - w
FPIR = 0.01
TRACK_FPIR = 0.005
SEEDS = 5
FRONTAL_YAW, TURNED_YAW = 0.1, 0.25
CACHE_FORMAT = 1


# ------------------------------------------------------------------------------------------------ faces


@dataclass(frozen=True)
class Detections:
    paths: list[str]
    found: np.ndarray  # (n,) bool
    keypoints: np.ndarray  # (n, 6, 2) frame coordinates of the most central face


def vision_files_digest(*names: str) -> str:
    root = Path(__file__).resolve().parent.parent / "agent" / "vision"
    return hashlib.sha256(b"".join((root / name).read_bytes() for name in names)).hexdigest()


def detect_all(store: ModelStore, images: Sequence[str], data: Path, cache: Path) -> Detections:
    """The most central face's keypoints in every image; cached by detector entry and detector code."""
    spec = store.spec("blazeface-short", "detector")
    key = {"detector": spec.raw, "code": vision_files_digest("detector.py", "image.py"), "format": CACHE_FORMAT}
    path = cache / f"fusion-detect-{json_digest(key)[:16]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            if stored["paths"].tolist() == list(images):
                return Detections(list(images), stored["found"], stored["keypoints"])
    progress(f"detecting faces in {len(images)} images -> {path}")
    detector = BlazeFaceDetector(TfliteModel(select_runtime().load(store.read_verified(spec), 1)), spec.raw)
    found = np.zeros(len(images), dtype=bool)
    keypoints = np.zeros((len(images), 6, 2))
    for i, name in enumerate(images):
        try:
            rgb = load_image(data / name)
        except ImageError as exc:
            progress(f"warning: {exc}")
            continue
        face = most_central(detector.detect(rgb), rgb.shape[1], rgb.shape[0])
        if face is not None:
            found[i], keypoints[i] = True, face.keypoints
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(images), found=found, keypoints=keypoints)
    return Detections(list(images), found, keypoints)


def embed_member(store: ModelStore, model_id: str, faces: Detections, data: Path, cache: Path) -> np.ndarray:
    """(n, 2, d) unit vectors: the chip's and its mirror image's; zeros where no face was found."""
    return embed_views(manifest_member(store, model_id), faces, data, cache)


def manifest_member(store: ModelStore, model_id: str) -> Member:
    spec = store.spec(model_id, "embedder")
    return Member(model_id, store.read_verified(spec), spec.raw["alignment"], int(spec.raw["output"]["shape"][-1]))


@dataclass(frozen=True)
class Member:
    """An embedder to bench: a manifest entry's, or a candidate's file with the alignment to try."""

    label: str  # names the cache file
    model: bytes
    alignment: dict[str, Any]
    dimensions: int


def views_cache_key(member: Member, faces: Detections) -> dict[str, Any]:
    """What a cached file of a member's chip and mirror vectors depends on."""
    return {
        "model": {"sha256": hashlib.sha256(member.model).hexdigest(), "alignment": member.alignment},
        "faces": hashlib.sha256(faces.keypoints.tobytes() + faces.found.tobytes()).hexdigest(),
        "code": vision_files_digest("aligner.py", "image.py"),
        "format": CACHE_FORMAT,
    }


def chip_and_mirror(model: TfliteModel, aligner: Aligner, image: Image.Image, keypoints: np.ndarray) -> np.ndarray:
    """(2, d) unit vectors of the face's chip and of its mirror image."""
    chip = aligner.align(image, keypoints).astype(np.float32)
    out = []
    for view in (chip, chip[:, ::-1]):
        (vector,) = model.run(np.ascontiguousarray(view[None])).values()
        out.append(vector[0] / np.linalg.norm(vector[0]))
    return np.array(out)


def cached_array(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at `path`, else `make()`'s, saved there."""
    if path.is_file():
        return np.load(path)
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def embed_views(member: Member, faces: Detections, data: Path, cache: Path) -> np.ndarray:
    """(n, 2, d) unit vectors: the chip's and its mirror image's; zeros where no face was found."""
    path = cache / f"fusion-{member.label}-{json_digest(views_cache_key(member, faces))[:16]}.npy"

    def make() -> np.ndarray:
        found = int(faces.found.sum())
        progress(f"embedding {found} faces with {member.label} (and their mirror images) -> {path}")
        model = TfliteModel(select_runtime().load(member.model, 1))
        aligner = Aligner.from_spec(member.alignment)
        out = np.zeros((len(faces.paths), 2, member.dimensions), dtype=np.float32)
        start = time.perf_counter()
        for i in np.flatnonzero(faces.found):
            with Image.open(data / faces.paths[i]) as im:
                out[i] = chip_and_mirror(model, aligner, im.convert("RGB"), faces.keypoints[i])
        progress(f"  {1000 * (time.perf_counter() - start) / max(found, 1):.1f} ms per face, both views")
        return out

    return cached_array(path, make)


# Small geometric jitters of the enrolled photo (scale, degrees, dx, dy in eye distances), as dlib's num_jitters
# does at random: whether averaging them into the template (enrollment is paid once) buys what a live face's
# mirror image buys. Named groups are the study's rows.
JITTERS = (
    (1.05, 0.0, 0.0, 0.0),
    (0.95, 0.0, 0.0, 0.0),
    (1.10, 0.0, 0.0, 0.0),
    (0.90, 0.0, 0.0, 0.0),
    (1.0, 5.0, 0.0, 0.0),
    (1.0, -5.0, 0.0, 0.0),
    (1.0, 0.0, 0.05, 0.0),
    (1.0, 0.0, -0.05, 0.0),
    (1.0, 0.0, 0.0, 0.05),
    (1.0, 0.0, 0.0, -0.05),
)
JITTER_GROUPS = {
    "scale x0.95, x1.05": (0, 1),
    "scale x0.9-x1.1": (0, 1, 2, 3),
    "rotation +-5 deg": (4, 5),
    "shift +-0.05 eye distance": (6, 7, 8, 9),
    "scale x0.95, x1.05 and rotation": (0, 1, 4, 5),
    "all ten": tuple(range(len(JITTERS))),
}


def jittered_keypoints(keypoints: np.ndarray, scale: float, degrees: float, dx: float, dy: float) -> np.ndarray:
    """The keypoints scaled and turned about the eyes' and mouth's centre, then moved, in eye distances; the chip
    aligned on them shows the face that much smaller, turned the other way and moved the other way."""
    eye_distance = float(np.linalg.norm(keypoints[1] - keypoints[0]))
    centre = keypoints[:4].mean(axis=0)
    turn = math.radians(degrees)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    return centre + scale * (keypoints - centre) @ rotation.T + np.array([dx, dy]) * eye_distance


def embed_jittered(member: Member, faces: Detections, data: Path, cache: Path) -> np.ndarray:
    """(n, len(JITTERS), 2, d) unit vectors of each jittered chip and its mirror image; cached like embed_views."""
    key = views_cache_key(member, faces) | {"jitters": JITTERS}
    path = cache / f"fusion-jitter-{member.label}-{json_digest(key)[:16]}.npy"

    def make() -> np.ndarray:
        progress(f"embedding {int(faces.found.sum())} faces x {len(JITTERS)} jitters with {member.label} -> {path}")
        model = TfliteModel(select_runtime().load(member.model, 1))
        aligner = Aligner.from_spec(member.alignment)
        out = np.zeros((len(faces.paths), len(JITTERS), 2, member.dimensions), dtype=np.float32)
        for i in np.flatnonzero(faces.found):
            with Image.open(data / faces.paths[i]) as im:
                rgb = im.convert("RGB")
            for j, jitter in enumerate(JITTERS):
                out[i, j] = chip_and_mirror(model, aligner, rgb, jittered_keypoints(faces.keypoints[i], *jitter))
        return out

    return cached_array(path, make)


def yaw_proxy(keypoints: np.ndarray) -> np.ndarray:
    """Nose tip offset from the eyes' midpoint along the eye line, in eye distances (0 = frontal)."""
    right, left, nose = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2]
    axis = left - right
    length = np.maximum(np.linalg.norm(axis, axis=1), 1e-6)
    return ((nose - (right + left) / 2) * axis).sum(1) / length**2


# ------------------------------------------------------------------------------------------------ systems


@dataclass(frozen=True)
class System:
    """Per-image member vectors (already flipped-averaged or not), weights and how persons are scored."""

    name: str
    members: list[np.ndarray]  # each (n, d) unit rows (zeros: no face); what templates are made of
    weights: tuple[float, ...]
    score_fusion: bool = False  # per-member best template, then the weighted sum
    euclidean: bool = False  # face_recognition's own protocol: raw vectors, similarity = -L2 distance
    query_members: list[np.ndarray] | None = None  # queries' member vectors when not made like templates

    def fused(self) -> np.ndarray:
        """The enrolled side's vectors (templates)."""
        return self._concatenate(self.members)

    def queries(self) -> np.ndarray:
        """The query side's vectors (probes, strangers, tracks): the templates' unless stated otherwise."""
        return self._concatenate(self.query_members or self.members)

    def _concatenate(self, members: list[np.ndarray]) -> np.ndarray:
        if self.euclidean:
            return members[0]
        return np.concatenate([math.sqrt(w) * m for w, m in zip(self.weights, members, strict=True)], axis=1)


def similarity(system: System, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs similarity of rows: cosine (unit rows), or minus the L2 distance for the library."""
    if not system.euclidean:
        return a @ b.T
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return -np.sqrt(np.clip(squared, 0.0, None))


def member_vectors(views: np.ndarray, flip: bool) -> np.ndarray:
    if not flip:
        return views[:, 0]
    mean = views.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------ figures


def lfw_accuracy(system: System, pairs: Sequence[Pair], index: dict[str, int], found: np.ndarray) -> float:
    templates, queries = system.fused(), system.queries()  # a pair's first photo is the enrolled one
    a = np.array([index[p.path_a] for p in pairs])
    b = np.array([index[p.path_b] for p in pairs])
    if system.euclidean:
        distances = np.linalg.norm(templates[a] - queries[b], axis=1)
    else:
        distances = 1.0 - (templates[a] * queries[b]).sum(1)
    distances[~(found[a] & found[b])] = np.nan
    return 100 * cross_validate(pairs, distances).mean


AGGREGATIONS = ("nearest", "mean", "mean score", "nearest_or_mean")  # the Matcher's names, and one it lacks


def aggregate(
    system: System, query_vectors: np.ndarray, templates: list[list[int]], aggregation: str, mean_offset: float = 0.0
) -> np.ndarray:
    """(queries, persons) cosine of unit query rows to each person under an aggregation but "nearest": "mean" is the
    unit mean template (the centroid's direction), "mean score" the mean of the template cosines (the raw mean
    template), "nearest_or_mean" the larger of the nearest template's and the centroid's, the centroid taken
    `mean_offset` further in L2 between unit vectors (as the Matcher's mean_offset)."""
    vectors = system.fused()
    sums = np.stack([vectors[t].sum(axis=0) for t in templates])
    if aggregation == "mean score":
        return query_vectors @ (sums / np.array([len(t) for t in templates])[:, None]).T
    centroid = query_vectors @ unit_rows(sums).T
    if mean_offset:
        distance = np.sqrt(np.clip(2.0 - 2.0 * centroid, 0.0, None)) + mean_offset
        centroid = 1.0 - distance**2 / 2.0
    if aggregation == "mean":
        return centroid
    owner = np.concatenate([[p] * len(t) for p, t in enumerate(templates)])
    sims = query_vectors @ vectors[np.concatenate(templates)].T
    best = np.full((len(query_vectors), len(templates)), -np.inf)
    np.maximum.at(best.T, owner, sims.T)
    return np.maximum(best, centroid)


def default_mean_offset() -> float | None:
    """The default embedder's stated gallery.mean_offset: what a device runs with (None: it states none)."""
    stated = stated_gallery(ModelStore(None).spec(None, "embedder").raw)
    return stated.mean_offset if stated is not None else None


def person_scores(
    system: System, queries: np.ndarray, templates: list[list[int]], aggregation: str, mean_offset: float = 0.0
) -> np.ndarray:
    """(queries, persons) similarity: best template, an `aggregate` of them, or per-member best then weighted sum."""
    if aggregation != "nearest":
        return aggregate(system, system.queries()[queries], templates, aggregation, mean_offset)
    owner = np.concatenate([[p] * len(t) for p, t in enumerate(templates)])
    flat = np.concatenate(templates)
    if system.score_fusion:
        parts = list(zip(system.members, system.query_members or system.members, strict=True))
        weights = system.weights
    else:
        parts, weights = [(system.fused(), system.queries())], (1.0,)
    total = np.zeros((len(queries), len(templates)))
    for w, (vectors, query_vectors) in zip(weights, parts, strict=True):
        sims = similarity(system, query_vectors[queries], vectors[flat])
        best = np.full((len(queries), len(templates)), -np.inf)
        np.maximum.at(best.T, owner, sims.T)
        total += w * best
    return total


def dir_at(genuine_best: np.ndarray, genuine_ok: np.ndarray, stranger_best: np.ndarray, strangers: int, fpir: float):
    """DIR at the largest threshold accepting at most `fpir` of all strangers (accept: score > threshold)."""
    allowed = math.floor(fpir * strangers)
    ordered = np.sort(stranger_best)[::-1]
    threshold = float(ordered[allowed]) if len(ordered) > allowed else -math.inf
    return float((genuine_ok & (genuine_best > threshold)).mean()), threshold


def open_set(
    system: System,
    split: Split,
    index: dict[str, int],
    found: np.ndarray,
    size: int,
    seed: int,
    mode: str,
    aggregation: str,
    mean_offset: float = 0.0,
) -> float:
    scn = scenario(split, size, seed, mode)
    persons = [p for p in scn.enrolled if any(found[index[i]] for i in scn.enrolled[p])]
    templates = [[index[i] for i in scn.enrolled[p] if found[index[i]]] for p in persons]
    column = {p: k for k, p in enumerate(persons)}
    genuine = [(column.get(identity, -1), index[image]) for identity, image in scn.genuine]
    g_rows = np.array([i for _, i in genuine if found[i]], dtype=int)
    g_truth = np.array([c for c, i in genuine if found[i]], dtype=int)
    s_rows = np.array([index[i] for i in scn.strangers if found[index[i]]], dtype=int)
    g_scores = person_scores(system, g_rows, templates, aggregation, mean_offset)
    s_scores = person_scores(system, s_rows, templates, aggregation, mean_offset)
    ok = np.zeros(len(genuine), dtype=bool)
    best = np.full(len(genuine), -np.inf)
    where = np.array([k for k, (_, i) in enumerate(genuine) if found[i]], dtype=int)
    ok[where] = g_scores.argmax(1) == g_truth
    best[where] = g_scores.max(1)
    return dir_at(best, ok, s_scores.max(1), len(scn.strangers), FPIR)[0]


def tracks(
    system: System,
    split: Split,
    index: dict[str, int],
    found: np.ndarray,
    seed: int,
    mode: str,
    aggregation: str = "nearest",
    mean_offset: float = 0.0,
) -> tuple[float, float]:
    """(named enrolled tracks, similarity threshold) at stranger-track FPIR <= 0.5%, 200 enrolled; a track is
    3 probe photos of one person, and a person's templates score it as `aggregation` says."""
    scn = scenario(split, 200, seed, mode)
    vectors, query_vectors = system.fused(), system.queries()
    persons = list(scn.enrolled)
    templates = [[index[i] for i in scn.enrolled[p] if found[index[i]]] for p in persons]
    remaining: dict[str, list[str]] = {}
    for identity, image in scn.genuine:
        remaining.setdefault(identity, []).append(image)
    enrolled_tracks = [(p, images[k : k + 3]) for p, images in remaining.items() for k in range(0, len(images) - 2, 3)]
    strangers = [i for i in split.probes if i not in scn.enrolled]
    stranger_tracks = [split.probes[s][k : k + 3] for s in strangers for k in range(0, len(split.probes[s]) - 2, 3)]

    def means(track_list: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        have = np.array([any(found[index[i]] for i in t) for t in track_list])
        prepare = (lambda x: x) if system.euclidean else unit_rows
        rows = [
            prepare(query_vectors[[index[i] for i in t if found[index[i]]]]).mean(0)
            for t, h in zip(track_list, have, strict=True)
            if h
        ]
        return np.array(rows), have

    g_mean, g_have = means([images for _, images in enrolled_tracks])
    s_mean, _ = means(stranger_tracks)
    flat = [t for ts in templates for t in ts]
    owner = np.array([p for p, ts in enumerate(templates) for _ in ts])

    def best(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if aggregation != "nearest":
            per = aggregate(system, unit_rows(queries), templates, aggregation, mean_offset)
            return per.max(1), per.argmax(1)
        sims = similarity(system, queries if system.euclidean else unit_rows(queries), vectors[flat])
        per = np.full((len(queries), len(templates)), -np.inf)
        np.maximum.at(per.T, owner, sims.T)
        return per.max(1), per.argmax(1)

    g_best, g_arg = best(g_mean)
    truth = np.array([persons.index(p) for (p, _), h in zip(enrolled_tracks, g_have, strict=True) if h])
    ok = np.zeros(len(enrolled_tracks), dtype=bool)
    score = np.full(len(enrolled_tracks), -np.inf)
    ok[g_have], score[g_have] = g_arg == truth, g_best
    return dir_at(score, ok, best(s_mean)[0], len(stranger_tracks), TRACK_FPIR)


def pose(
    system: System, split: Split, index: dict[str, int], found: np.ndarray, yaw: np.ndarray
) -> tuple[float, float]:
    """(frontal DIR, turned DIR) at FPIR 1%: all identities enrolled on their most frontal image."""
    vectors, query_vectors = system.fused(), system.queries()
    enrolled, probes = [], []
    for identity in sorted(split.gallery):
        images = [index[i] for i in [split.gallery[identity], *split.probes.get(identity, [])] if found[index[i]]]
        if len(images) < 2:
            continue
        front = min(images, key=lambda i: abs(yaw[i]))
        enrolled.append(front)
        probes.extend((len(enrolled) - 1, i) for i in images if i != front)
    strangers = [index[i] for i in split.distractors]
    s_rows = [i for i in strangers if found[i]]
    s_best = similarity(system, query_vectors[s_rows], vectors[enrolled]).max(1)
    out = []
    for keep in (lambda y: abs(y) < FRONTAL_YAW, lambda y: abs(y) >= TURNED_YAW):
        chosen = [(p, i) for p, i in probes if keep(yaw[i])]
        sims = similarity(system, query_vectors[[i for _, i in chosen]], vectors[enrolled])
        ok = sims.argmax(1) == np.array([p for p, _ in chosen])
        out.append(dir_at(sims.max(1), ok, s_best, len(strangers), FPIR)[0])
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------ main


@dataclass(frozen=True)
class Context:
    pairs: list[Pair]
    split: Split
    index: dict[str, int]
    found: np.ndarray
    yaw: np.ndarray
    seeds: int


COLUMNS = ("LFW", "1557/1", "1557/3", "200/1", "200/3", "trk200/1", "trk200/3", "frontal", "turned")


def figures(system: System, ctx: Context, aggregation: str = "nearest", mean_offset: float = 0.0) -> dict[str, float]:
    def mean_over_seeds(size: int, mode: str) -> float:
        seeds = range(ctx.seeds) if size < len(ctx.split.gallery) else range(1)
        agg = aggregation if mode == "3 tpl" else "nearest"
        return float(
            np.mean([open_set(system, ctx.split, ctx.index, ctx.found, size, s, mode, agg, mean_offset) for s in seeds])
        )

    frontal, turned = pose(system, ctx.split, ctx.index, ctx.found, ctx.yaw)
    values = [
        lfw_accuracy(system, ctx.pairs, ctx.index, ctx.found) / 100,
        mean_over_seeds(1557, "1 tpl"),
        mean_over_seeds(1557, "3 tpl"),
        mean_over_seeds(200, "1 tpl"),
        mean_over_seeds(200, "3 tpl"),
        float(np.mean([tracks(system, ctx.split, ctx.index, ctx.found, s, "1 tpl")[0] for s in range(ctx.seeds)])),
        float(
            np.mean(
                [
                    tracks(system, ctx.split, ctx.index, ctx.found, s, "3 tpl", aggregation, mean_offset)[0]
                    for s in range(ctx.seeds)
                ]
            )
        ),
        frontal,
        turned,
    ]
    return {c: 100 * v for c, v in zip(COLUMNS, values, strict=True)}


def fit(system: System, ctx: Context, images: list[str], mean_offset: float | None) -> dict[str, Any]:
    """The manifest's figures for one system: the 1:1 threshold (1 - cosine, LFW 10-fold mean), and the
    gallery's threshold and margin chosen as bench_openset.py chooses them, through the real Matcher (L2
    between unit vectors: FPR <= 1% in every seed's 1- and 3-template gallery of 10, 50, 200 and 1,557 people,
    mean templates counting `mean_offset` further when it is not None), and the track threshold (the strictest
    over seeds keeping stranger tracks <= 0.5% at 200 enrolled). The distance thresholds are rounded down: a
    match needs distance < threshold, so rounding up could admit the stranger the fit stopped at."""
    vectors = system.fused()
    a = np.array([ctx.index[p.path_a] for p in ctx.pairs])
    b = np.array([ctx.index[p.path_b] for p in ctx.pairs])
    lfw = cross_validate(ctx.pairs, 1.0 - (vectors[a] * vectors[b]).sum(1))
    embeddings = {name: vectors[i].copy() if ctx.found[i] else None for i, name in enumerate(images)}
    settings = with_matching(GallerySettings(mean_offset=mean_offset))
    aggregation = "nearest" if mean_offset is None else "nearest_or_mean"
    outcomes = {}
    for size in SIZES:
        for seed in range(ctx.seeds) if size < len(ctx.split.gallery) else range(1):
            for mode in ("1 tpl", "3 tpl"):
                how = single_template(mode, aggregation)
                scn = scenario(ctx.split, size, seed, mode)
                single, _, _ = run_scenario(scn, embeddings, "cosine", how, settings)
                outcomes[(size, seed, mode, "cosine", how)] = (single, None)
    rules = [evaluate_rule(outcomes, "cosine", aggregation, float(m), SIZES) for m in CHOICE_MARGINS]
    chosen = max(rules, key=lambda r: r["objective"])
    track_sims = [
        tracks(system, ctx.split, ctx.index, ctx.found, s, m, single_template(m, aggregation), mean_offset or 0.0)[1]
        for s in range(ctx.seeds)
        for m in MODES
    ]
    track_threshold = math.sqrt(max(0.0, 2.0 - 2.0 * max(track_sims)))
    return {
        "threshold": round(lfw.mean_threshold, 4),
        "lfw_accuracy_pct": 100 * lfw.mean,
        "gallery": {
            "threshold": math.floor(chosen["threshold"] * 1e4) / 1e4,
            "margin": chosen["margin"],
            "track_threshold": math.floor(track_threshold * 1e4) / 1e4,
        },
        "gallery_rule": chosen,
    }


MODES = ("1 tpl", "3 tpl")


@dataclass(frozen=True)
class FlipChoice:
    """Which member vectors average the chip with its mirror image, on each side (dlib, MobileFace)."""

    label: str
    templates: tuple[bool, bool]
    queries: tuple[bool, bool]

    def query_invokes(self) -> tuple[int, int]:
        """Embedder invokes per face seen live (dlib, MobileFace): enrollment's cost is paid once."""
        return 1 + self.queries[0], 1 + self.queries[1]


FLIP_CHOICES = (
    FlipChoice("no flip", (False, False), (False, False)),
    FlipChoice("flip dlib only", (True, False), (True, False)),
    FlipChoice("flip MobileFace only", (False, True), (False, True)),
    FlipChoice("flip both (shipped)", (True, True), (True, True)),
    FlipChoice("flip on templates only (both members), queries not", (True, True), (False, False)),
    FlipChoice("flip on templates (both), queries MobileFace only", (True, True), (False, True)),
)


def flip_study(views: dict[str, np.ndarray], quant: str, weight: float, ctx: Context) -> dict[str, dict[str, float]]:
    """The figures of each FlipChoice at one dlib weight: what the mirrored chip buys per member and side."""
    dlib_id, mf_id = MEMBERS[quant]
    rows = {}
    for choice in FLIP_CHOICES:
        templates = [
            member_vectors(views[dlib_id], choice.templates[0]),
            member_vectors(views[mf_id], choice.templates[1]),
        ]
        queries = [member_vectors(views[dlib_id], choice.queries[0]), member_vectors(views[mf_id], choice.queries[1])]
        system = System(choice.label, templates, (weight, 1.0 - weight), query_members=queries)
        rows[choice.label] = figures(system, ctx)
        progress(f"{choice.label}: {rows[choice.label]}")
    return rows


def jitter_study(
    views: dict[str, np.ndarray], jittered: dict[str, np.ndarray], quant: str, weight: float, ctx: Context
) -> dict[str, dict[str, float]]:
    """The shipped flip system, then its templates made of the photo and each JITTER_GROUPS group (every chip and
    its mirror, unit mean); queries stay as shipped. On LFW the pair's first photo is the template."""
    ids = MEMBERS[quant]
    queries = [member_vectors(views[m], True) for m in ids]
    rows = {"shipped (flip)": figures(System("shipped", queries, (weight, 1.0 - weight)), ctx)}
    for label, group in JITTER_GROUPS.items():
        templates = []
        for m in ids:
            chips = np.concatenate([views[m][:, None], jittered[m][:, list(group)]], axis=1)
            templates.append(unit_rows(chips.reshape(len(chips), -1, chips.shape[-1]).mean(axis=1)))
        system = System(label, templates, (weight, 1.0 - weight), query_members=queries)
        rows[f"templates + {label}"] = figures(system, ctx)
        progress(f"{label}: {rows[f'templates + {label}']}")
    return rows


def objective(row: dict[str, float]) -> float:
    """What the issue rewards beyond LFW: open-set DIR at both sizes and the turned faces, equally."""
    return float(np.mean([row["1557/1"], row["1557/3"], row["200/3"], row["trk200/1"], row["turned"]]))


def figures_table(first: str, rows: dict[str, dict[str, float]]) -> str:
    """One line per row label: every column (LFW to two places) and the objective."""
    table = [
        [label, *(f"{row[c]:.2f}" if c == "LFW" else f"{row[c]:.1f}" for c in COLUMNS), f"{objective(row):.1f}"]
        for label, row in rows.items()
    ]
    return format_table([first, *COLUMNS, "objective"], table)


TARGETS = (
    ("LFW", 99.4, "LFW 10-fold >= 99.4%"),
    ("1557/1", 75.0, "DIR@FPIR1% >= 75% at 1,557 enrolled, 1 photo"),
    ("1557/3", 82.0, "DIR@FPIR1% >= 82% at 1,557 enrolled, 3 photos"),
    ("200/3", 88.0, "DIR@FPIR1% >= 88% at 200 enrolled, 3 photos"),
    ("trk200/1", 95.0, "tracks named >= 95% at stranger tracks <= 0.5%, 200 enrolled (1 photo)"),
    ("trk200/3", 95.0, "tracks named >= 95% at stranger tracks <= 0.5%, 200 enrolled (3 photos)"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: <repo>/../shared/data)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"subset seeds at 200 enrolled (default {SEEDS})")
    parser.add_argument("--library", action="store_true", help="face_recognition too (slow the first time)")
    parser.add_argument(
        "--quantization",
        choices=[*MEMBERS, "both"],
        default="both",
        help="which member pair: dlib int8 + MobileFace V2 mixed int8, int8 or float32 dlib + MobileFace V2 "
        "(both: those two), or dlib int8 + MobileFaceNet",
    )
    parser.add_argument("--weights", help="dlib weights to try, comma-separated (default 0.0, 0.1 .. 1.0)")
    parser.add_argument(
        "--carried-from",
        choices=list(MEMBERS),
        help="rows also with templates made by this member pair and queries by --quantization's: a gallery "
        "enrolled under a previous build, carried over (first --quantization, with the mirror)",
    )
    parser.add_argument("--fit", metavar="W", type=float, help="only fit the manifest figures at dlib weight W")
    parser.add_argument("--flip", action="store_true", help="with --fit: the mirrored chip too")
    parser.add_argument(
        "--mean-offset", type=float, help="with --fit: mean templates count too, this much further (default: not)"
    )
    parser.add_argument(
        "--flip-study",
        metavar="W",
        type=float,
        help="only the flip choices (per member; templates only) at dlib weight W, first --quantization",
    )
    parser.add_argument(
        "--aggregation-study",
        metavar="W",
        type=float,
        help="only the per-person aggregations (nearest, mean, mean score, nearest_or_mean) at dlib weight W, flip",
    )
    parser.add_argument(
        "--jitter-study",
        metavar="W",
        type=float,
        help="only the enrolled photo's jitters averaged into its template, at dlib weight W, first --quantization",
    )
    parser.add_argument("--out", type=Path, help="write every figure as JSON")
    args = parser.parse_args(argv)
    data = resolve_data_dir(args.data, ["pairs.tsv", "ident_split.tsv", "faces-lfw"])
    started = time.time()
    print(f"load average at start: {load_average()}")
    pairs = read_pairs(data / "pairs.tsv", None)
    split = read_split(data / "ident_split.tsv")
    images = sorted({*split.images(), *(p.path_a for p in pairs), *(p.path_b for p in pairs)})
    index = {name: i for i, name in enumerate(images)}
    store = ModelStore(None)
    faces = detect_all(store, images, data, args.cache_dir)
    quantizations = ["int8", "float32"] if args.quantization == "both" else [args.quantization]
    weights = WEIGHTS if not args.weights else tuple(float(w) for w in args.weights.split(","))
    carried = [args.carried_from] if args.carried_from else []
    views = {
        m: embed_member(store, m, faces, data, args.cache_dir) for q in [*quantizations, *carried] for m in MEMBERS[q]
    }
    ctx = Context(pairs, split, index, faces.found, yaw_proxy(faces.keypoints), args.seeds)
    turned = int(sum(abs(ctx.yaw[i]) >= TURNED_YAW for i in np.flatnonzero(faces.found)))
    print(f"images {len(images)}, no face {int((~faces.found).sum())}, turned (|yaw| >= {TURNED_YAW}) {turned}")

    if args.flip_study is not None:
        quant = quantizations[0]
        study = flip_study(views, quant, args.flip_study, ctx)
        print(f"\n=== {quant}, w_dlib={args.flip_study}: % as below; invokes per live face (dlib + MobileFace) ===")
        table = [
            [
                label,
                "+".join(map(str, next(c for c in FLIP_CHOICES if c.label == label).query_invokes())),
                *(f"{row[c]:.2f}" if c == "LFW" else f"{row[c]:.1f}" for c in COLUMNS),
                f"{objective(row):.1f}",
            ]
            for label, row in study.items()
        ]
        print(format_table(["system", "invokes", *COLUMNS, "objective"], table))
        print(f"load average at end: {load_average()}; {time.time() - started:.0f} s")
        if args.out:
            write_json(args.out, {"flip_study": study, "weight": args.flip_study, "quantization": quant})
        return 0
    if args.jitter_study is not None:
        quant = quantizations[0]
        jittered = {m: embed_jittered(manifest_member(store, m), faces, data, args.cache_dir) for m in MEMBERS[quant]}
        study = jitter_study(views, jittered, quant, args.jitter_study, ctx)
        print(f"\n=== {quant} flip, w_dlib={args.jitter_study}: templates averaged over jittered chips ===")
        print(figures_table("templates", study))
        print(f"load average at end: {load_average()}; {time.time() - started:.0f} s")
        if args.out:
            write_json(args.out, {"jitter_study": study, "weight": args.jitter_study, "jitters": JITTERS})
        return 0
    if args.aggregation_study is not None:
        quant, w = quantizations[0], args.aggregation_study
        dlib, mf = (member_vectors(views[m], True) for m in MEMBERS[quant])
        system = System(f"{quant} flip w_dlib={w:g}", [dlib, mf], (w, 1.0 - w))
        study = {}
        offset = default_mean_offset() or 0.0
        for aggregation, mean_offset in [(a, 0.0) for a in AGGREGATIONS] + [("nearest_or_mean", offset)]:
            label = f"{aggregation} + {mean_offset:g}" if mean_offset else aggregation
            study[label] = figures(system, ctx, aggregation, mean_offset)
            progress(f"{label}: {study[label]}")
        print(f"\n=== {system.name}: per-person aggregation of 3 templates (1-template columns do not change) ===")
        print(figures_table("aggregation", study))
        print(f"load average at end: {load_average()}; {time.time() - started:.0f} s")
        if args.out:
            write_json(args.out, {"aggregation_study": study, "weight": w, "quantization": quant})
        return 0
    if args.fit is not None:
        quant = quantizations[0]
        dlib, mf = (member_vectors(views[m], args.flip) for m in MEMBERS[quant])
        fitted = fit(System("fit", [dlib, mf], (args.fit, 1.0 - args.fit)), ctx, images, args.mean_offset)
        label = f"{quant}{' flip' if args.flip else ''} w_dlib={args.fit}, mean_offset {args.mean_offset}"
        print(f"{label}: {json.dumps(fitted, indent=1, default=str)}")
        return 0
    rows: dict[str, dict[str, float]] = {}
    for quant in quantizations:
        dlib_id, mf_id = MEMBERS[quant]
        for flip in (False, True):
            dlib, mf = member_vectors(views[dlib_id], flip), member_vectors(views[mf_id], flip)
            for w in weights:
                name = f"{quant}{' flip' if flip else ''} w_dlib={w:g}"
                rows[name] = figures(System(name, [dlib, mf], (w, 1.0 - w)), ctx)
                progress(f"{name}: {rows[name]}  ({time.time() - started:.0f} s)")
    for w in weights if args.carried_from else ():
        enrolled = [member_vectors(views[m], True) for m in MEMBERS[args.carried_from]]
        queried = [member_vectors(views[m], True) for m in MEMBERS[quantizations[0]]]
        name = f"{args.carried_from} templates, {quantizations[0]} queries, flip w_dlib={w:g}"
        rows[name] = figures(System(name, enrolled, (w, 1.0 - w), query_members=queried), ctx)
        progress(f"{name}: {rows[name]}  ({time.time() - started:.0f} s)")
    best = max((r for r in rows if r.startswith(f"{quantizations[0]} ")), key=lambda r: objective(rows[r]))
    quant, rest = best.split(" ", 1)
    flip = "flip" in rest
    w = float(best.rsplit("=", 1)[1])
    dlib, mf = (member_vectors(views[m], flip) for m in MEMBERS[quant])
    for label, system, aggregation in (
        ("mean template", System("", [dlib, mf], (w, 1 - w)), "mean"),
        ("score fusion", System("", [dlib, mf], (w, 1 - w), score_fusion=True), "nearest"),
    ):
        rows[f"{best}, {label}"] = figures(system, ctx, aggregation)
    if args.library:
        library = library_system(data_fingerprint(data))
        run = embed_images(library, images, data, args.cache_dir, False)
        raw = np.zeros((len(images), 128), dtype=np.float32)
        for name, vector in run.embeddings.items():
            if vector is not None:
                raw[index[name]] = vector
        found = np.array([run.embeddings[n] is not None for n in images])
        library_ctx = Context(pairs, split, index, found, ctx.yaw, args.seeds)
        rows["face_recognition (L2, its protocol)"] = figures(System("fr", [raw], (1.0,), euclidean=True), library_ctx)

    print(f"\n=== % (LFW: 10-fold accuracy; others: DIR at FPIR {100 * FPIR:g}%, tracks at {100 * TRACK_FPIR:g}%) ===")
    print(figures_table("system", rows))
    print(f"\nbest {quantizations[0]} system by the objective: {best}")
    for column, need, label in TARGETS:
        got = rows[best][column]
        print(f"{'PASS' if got >= need else 'FAIL'}  {label}: {got:.2f}")
    twin = best.replace("int8", "float32", 1)
    if twin != best and twin in rows:
        gap = rows[best]["LFW"] - rows[twin]["LFW"]
        print(f"{'PASS' if abs(gap) <= 0.3 else 'FAIL'}  int8 within 0.3 points of float32 on LFW: {gap:+.2f}")
    print(f"load average at end: {load_average()}; {time.time() - started:.0f} s")
    if args.out:
        write_json(args.out, {"rows": rows, "best": best, "columns": COLUMNS, "seeds": args.seeds})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy benchmark: faceagent's int8 and float32 pipelines against the face_recognition library, on LFW.

Run from the repository root, in the project venv (face_recognition installed with `pip install --no-deps
face_recognition`; its dlib comes from dlib-bin):

    .venv/bin/python scripts/bench_accuracy.py --out /tmp/bench_accuracy.json     # everything, ~13 min cold
    .venv/bin/python scripts/bench_accuracy.py --folds 2 --no-open-set            # a quick subset
    .venv/bin/python scripts/bench_accuracy.py --systems int8,float32             # skip the slow library
    .venv/bin/python scripts/bench_accuracy.py --systems fused,face_recognition   # the fused embedder

What it measures, for every system on the same images:
1. 1:1 verification, LFW View 2 protocol on `pairs.tsv` (10 folds): for each fold, the distance threshold
   that maximises accuracy on the other folds is applied to it; reported as mean ± std (ddof 1) of the
   fold accuracies, with the mean chosen threshold. A pair in which either image yields no face counts
   as wrong.
2. Open-set 1:N identification on `ident_split.tsv`: one gallery image enrolled per identity, every
   probe searched. Rank-1 identification rate (no threshold); at a threshold (the 10-fold mean, the
   model's default, and the one giving 1% distractor false positives) the detection-and-identification
   rate (DIR: nearest gallery identity correct and closer than the threshold) and the distractor
   false-positive rate (FPR: a never-enrolled person's nearest gallery entry closer than the threshold).
   Missed faces count against the system for probes; a missed distractor cannot match anyone.
   Unit-normalised int8 embeddings are evaluated as extra information (not a target).

The face used in each image is the most central one (`agent.vision.pipeline.most_central`); the library
uses its defaults (HOG `face_locations`, 5-point `face_encodings`, one jitter). Each unique image is
embedded once per system and cached in ~/.cache/faceagent-bench, keyed by the models' sha256 and manifest
entries, the agent's vision code and the runtime (ours) or the library versions; `--no-cache` recomputes.
The embeddings do not depend on `--threads` (checked bit-identical for 1 and 2); on a 2-core machine
that is busy with other work, `--threads 1` is many times faster.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import (
    LIBRARY_THRESHOLD,
    faces_from_library,
    format_table,
    import_face_recognition,
    json_digest,
    library_versions,
    load_average,
    load_pipeline,
    model_label,
    pipeline_description,
    progress,
    resolve_data_dir,
    verdict,
    write_json,
)

from agent.errors import ImageError
from agent.vision.embedder import distance
from agent.vision.image import load_image
from agent.vision.pipeline import most_central

# "fused": the default fused embedder (docs/recognition-v2.md), issue 12's target 99.4% for the default;
# "fused-int8": the default before it (MobileFace in full int8).
PIPELINE_EMBEDDERS = {
    "int8": "dlib-resnet29-int8",
    "float32": "dlib-resnet29-float32",
    "fused": "fused-dlib-mobileface-mixed",
    "fused-int8": "fused-dlib-mobileface-int8",
}
LIBRARY = "face_recognition"
STATED = ("threshold", "gallery")  # manifest keys an embedder fits, not what makes its vectors
ALL_SYSTEMS = (*PIPELINE_EMBEDDERS, LIBRARY)
NORMALISED = "int8 unit-norm"  # derived from the int8 embeddings, extra information only
CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "faceagent-bench"
TARGET_INT8_ACCURACY = 98.8  # percent
TARGET_FUSED_ACCURACY = 99.4  # percent, for the default pipeline once it is the fused one
TARGET_INT8_FLOAT32_GAP = 0.3  # points
FPR_TARGET = 0.01  # for "DIR at 1% FPR"


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Pair:
    fold: int
    same: bool
    path_a: str
    path_b: str


@dataclass(frozen=True)
class IdentRow:
    identity: str
    role: str  # gallery / probe / distractor
    path: str


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_pairs(path: Path, folds: int | None) -> list[Pair]:
    pairs = [Pair(int(r["fold"]), r["same"] == "1", r["path_a"], r["path_b"]) for r in read_tsv(path)]
    if folds is not None:
        kept = sorted({p.fold for p in pairs})[:folds]
        pairs = [p for p in pairs if p.fold in kept]
    return pairs


def read_ident(path: Path) -> list[IdentRow]:
    rows = [IdentRow(r["identity"], r["role"], r["path"]) for r in read_tsv(path)]
    roles = {r.role for r in rows}
    if not roles <= {"gallery", "probe", "distractor"}:
        sys.exit(f"error: {path}: unexpected roles {sorted(roles)}")
    return rows


def data_fingerprint(data: Path) -> str:
    """Identifies the image set: the hash of its MANIFEST.sha256 when present, else its path."""
    manifest = data / "MANIFEST.sha256"
    if manifest.is_file():
        return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "path:" + str(data)


# ------------------------------------------------------------------------------------------- systems

EmbedFn = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass
class System:
    """One thing that turns an image into an embedding of its most central face (or None)."""

    name: str
    label: str
    metric: str
    default_threshold: float
    default_threshold_source: str
    cache_key: dict[str, Any]
    embed: EmbedFn
    info: dict[str, Any] = field(default_factory=dict)


def pipeline_system(name: str, threads: int, data_key: str) -> System:
    pipeline = load_pipeline(PIPELINE_EMBEDDERS[name], threads)
    described = pipeline_description(pipeline)

    def embed(rgb: np.ndarray) -> np.ndarray | None:
        face = most_central(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
        return None if face is None else pipeline.embed_face(rgb, face).embedding

    key = {
        "system": "faceagent",
        "detector_sha256": pipeline.detector_spec.sha256,
        "embedder_sha256": pipeline.embedder_spec.sha256,
        # The manifest entries carry pre/post-processing settings (alignment template...); the figures an
        # embedder states decide no vector, so fitting them keeps the cache.
        "detector_entry": json_digest(pipeline.detector_spec.raw),
        "embedder_entry": json_digest({k: v for k, v in pipeline.embedder_spec.raw.items() if k not in STATED}),
        "refine": pipeline.detector.refine,
        "runtime": pipeline.runtime.describe(),
        "vision_code": described["vision_code_sha256"],
        "data": data_key,
        "format": CACHE_FORMAT,
    }
    label = f"faceagent {model_label(described['embedder'])}"
    return System(
        name=name,
        label=label,
        metric=pipeline.embedder.info.metric,
        default_threshold=pipeline.embedder.info.threshold,
        default_threshold_source="manifest",
        cache_key=key,
        embed=embed,
        info=described,
    )


def library_system(data_key: str) -> System:
    face_recognition = import_face_recognition()

    def embed(rgb: np.ndarray) -> np.ndarray | None:
        locations = face_recognition.face_locations(rgb)  # HOG, upsample once: the library's defaults
        faces = faces_from_library(locations)
        face = most_central(faces, rgb.shape[1], rgb.shape[0])
        if face is None:
            return None
        location = locations[next(i for i, f in enumerate(faces) if f is face)]
        (encoding,) = face_recognition.face_encodings(rgb, [location])
        return np.asarray(encoding, dtype=np.float32)

    versions = library_versions()
    key = {"system": LIBRARY, **versions, "detector": "hog/upsample1", "landmarks": "5pt", "jitters": 1}
    key |= {"data": data_key, "format": CACHE_FORMAT}
    return System(
        name=LIBRARY,
        label=", ".join(f"{dist} {version}" for dist, version in versions.items()),
        metric="euclidean",
        default_threshold=LIBRARY_THRESHOLD,
        default_threshold_source="library tolerance",
        cache_key=key,
        embed=embed,
        info={"versions": versions},
    )


# --------------------------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Embeddings by image path for one system configuration, in one .npz file (None = no face found)."""

    def __init__(self, directory: Path, system: str, key: dict[str, Any], load: bool = True) -> None:
        self.path = directory / f"{system}-{json_digest(key)[:16]}.npz"
        self.key = key
        self.entries: dict[str, np.ndarray | None] = {}
        if load and self.path.is_file():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                paths, found, vectors = stored["paths"], stored["found"], stored["vectors"]
        except (OSError, KeyError, ValueError) as exc:
            progress(f"warning: ignoring unreadable cache {path}: {exc}")
            return
        for name, ok, vector in zip(paths.tolist(), found.tolist(), vectors, strict=True):
            self.entries[name] = vector.copy() if ok else None

    def save(self) -> None:
        if not self.entries:
            return
        names = sorted(self.entries)
        dims = {len(v) for v in self.entries.values() if v is not None}
        width = dims.pop() if len(dims) == 1 else 0
        vectors = np.zeros((len(names), width), dtype=np.float32)
        found = np.zeros(len(names), dtype=bool)
        for i, name in enumerate(names):
            vector = self.entries[name]
            if vector is not None:
                vectors[i], found[i] = vector, True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, paths=np.array(names), found=found, vectors=vectors, key=json.dumps(self.key))
        partial.replace(self.path)


@dataclass
class EmbedRun:
    embeddings: dict[str, np.ndarray | None]
    computed: int
    cached: int
    unreadable: int
    seconds: float

    @property
    def misses(self) -> int:
        return sum(v is None for v in self.embeddings.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "images": len(self.embeddings),
            "misses": self.misses,
            "unreadable": self.unreadable,
            "computed": self.computed,
            "cached": self.cached,
            "wall_s": self.seconds,
            "ms_per_computed_image": 1000 * self.seconds / self.computed if self.computed else None,
        }


def embed_images(system: System, images: Sequence[str], data: Path, cache_dir: Path, fresh: bool) -> EmbedRun:
    """Embeddings of `images`, from the cache where present (unless `fresh`); new ones are added to it."""
    cache = EmbeddingCache(cache_dir, system.name, system.cache_key, load=not fresh)
    todo = [name for name in images if name not in cache.entries]
    start = time.perf_counter()
    unreadable: set[str] = set()  # not cached: a read error may be passing
    if todo:
        progress(f"[{system.name}] embedding {len(todo)} images ({len(images) - len(todo)} cached)")
    for done, name in enumerate(todo, 1):
        try:
            rgb = load_image(data / name)
        except ImageError as exc:
            progress(f"[{system.name}] warning: {exc}")
            unreadable.add(name)
            continue
        cache.entries[name] = system.embed(rgb)
        if done % 250 == 0 or done == len(todo):
            elapsed = time.perf_counter() - start
            rate = done / elapsed
            progress(f"[{system.name}] {done}/{len(todo)}  {rate:.1f} img/s  eta {(len(todo) - done) / rate:.0f} s")
        if done % 1000 == 0:
            cache.save()
    seconds = time.perf_counter() - start
    if todo:
        cache.save()
    return EmbedRun(
        embeddings={name: cache.entries.get(name) for name in images},
        computed=len(todo),
        cached=len(images) - len(todo),
        unreadable=len(unreadable),
        seconds=seconds,
    )


def unit_normalised(embeddings: dict[str, np.ndarray | None]) -> dict[str, np.ndarray | None]:
    return {k: None if v is None else v / max(float(np.linalg.norm(v)), 1e-12) for k, v in embeddings.items()}


# -------------------------------------------------------------------------------------- verification


def pair_distances(pairs: Sequence[Pair], embeddings: dict[str, np.ndarray | None], metric: str) -> np.ndarray:
    """Distance per pair under `metric`; NaN where a face was missed in either image."""
    out = np.full(len(pairs), np.nan)
    for i, pair in enumerate(pairs):
        a, b = embeddings[pair.path_a], embeddings[pair.path_b]
        if a is not None and b is not None:
            out[i] = distance(a, b, metric)
    return out


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold t (same person if distance < t) with the highest accuracy on these pairs.

    Among equally good cut points, the middle one is taken.
    """
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    n = len(d)
    if n == 0:
        return math.inf
    # Cut k: the first k pairs (smallest distances) are called "same".
    same_below = np.concatenate([[0], np.cumsum(s)])
    diff_below = np.concatenate([[0], np.cumsum(~s)])
    correct = same_below + (diff_below[-1] - diff_below)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = d[1:] > d[:-1]  # a cut between equal distances is not realisable
    candidates = np.flatnonzero(valid & (correct == correct[valid].max()))
    k = int(candidates[len(candidates) // 2])
    if k == 0:
        return float(d[0])
    if k == n:
        return float(np.nextafter(d[-1], math.inf))
    return float((d[k - 1] + d[k]) / 2)


@dataclass
class Verification:
    folds: list[int]
    accuracies: list[float]  # fraction correct per test fold, misses counted wrong
    thresholds: list[float]
    pairs: int
    pairs_with_miss: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    @property
    def mean_threshold(self) -> float:
        return float(np.mean(self.thresholds))

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy_mean_pct": 100 * self.mean,
            "accuracy_std_pct": 100 * self.std,
            "accuracy_sem_pct": 100 * self.std / math.sqrt(len(self.accuracies)),
            "mean_threshold": self.mean_threshold,
            "per_fold": [
                {"fold": f, "accuracy_pct": 100 * a, "threshold": t}
                for f, a, t in zip(self.folds, self.accuracies, self.thresholds, strict=True)
            ],
            "pairs": self.pairs,
            "pairs_with_miss": self.pairs_with_miss,
        }


def cross_validate(pairs: Sequence[Pair], distances: np.ndarray) -> Verification:
    folds = np.array([p.fold for p in pairs])
    same = np.array([p.same for p in pairs])
    found = ~np.isnan(distances)
    fold_ids = sorted(set(folds.tolist()))
    if len(fold_ids) < 2:
        sys.exit("error: cross-validation needs at least 2 folds (--folds 2 or more)")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        train, test = (folds != fold) & found, folds == fold
        threshold = best_threshold(distances[train], same[train])
        with np.errstate(invalid="ignore"):
            correct = found[test] & ((distances[test] < threshold) == same[test])
        accuracies.append(float(correct.mean()))
        thresholds.append(threshold)
    return Verification(fold_ids, accuracies, thresholds, len(pairs), int((~found).sum()))


# ------------------------------------------------------------------------------------------ open set


def pairwise(queries: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """All query-to-gallery distances, vectorised; matches `agent.vision.embedder.distance`."""
    if metric == "euclidean":
        squared = (queries**2).sum(1)[:, None] + (gallery**2).sum(1)[None, :] - 2.0 * queries @ gallery.T
        return np.sqrt(np.clip(squared, 0.0, None))
    if metric == "cosine":
        q = queries / (np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12)
        g = gallery / (np.linalg.norm(gallery, axis=1, keepdims=True) + 1e-12)
        return 1.0 - q @ g.T
    raise ValueError(f"unknown metric {metric!r}")


@dataclass
class Search:
    """Nearest gallery entry per query: distance (inf when the query had no face) and whether it is correct."""

    distance: np.ndarray
    correct: np.ndarray


def search(
    rows: Sequence[IdentRow],
    gallery_ids: list[str],
    gallery: np.ndarray,
    embeddings: dict[str, np.ndarray | None],
    metric: str,
) -> Search:
    dist = np.full(len(rows), math.inf)
    correct = np.zeros(len(rows), dtype=bool)
    have = [i for i, r in enumerate(rows) if embeddings[r.path] is not None]
    if have and len(gallery_ids):
        queries = np.stack([embeddings[rows[i].path] for i in have]).astype(np.float64)
        matrix = pairwise(queries, gallery, metric)
        nearest = matrix.argmin(axis=1)
        # Spot-check the vectorised distances against the agent's own function.
        j = int(nearest[0])
        reference = distance(queries[0].astype(np.float32), gallery[j].astype(np.float32), metric)
        if not math.isclose(reference, matrix[0, j], rel_tol=1e-4, abs_tol=1e-5):
            raise AssertionError(f"vectorised distance {matrix[0, j]} != agent distance {reference}")
        dist[have] = matrix[np.arange(len(have)), nearest]
        correct[have] = [gallery_ids[n] == rows[i].identity for i, n in zip(have, nearest, strict=True)]
    return Search(dist, correct)


@dataclass
class OpenSet:
    rank1: float
    at: dict[str, dict[str, float | None]]
    gallery_missed: int
    probes: int
    probes_missed: int
    distractors: int
    distractors_missed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rank1_pct": 100 * self.rank1,
            "at_threshold": self.at,
            "gallery_missed": self.gallery_missed,
            "probes": self.probes,
            "probes_missed": self.probes_missed,
            "distractors": self.distractors,
            "distractors_missed": self.distractors_missed,
        }


def open_set(
    rows: Sequence[IdentRow],
    embeddings: dict[str, np.ndarray | None],
    metric: str,
    thresholds: dict[str, float | None],
) -> OpenSet:
    gallery_rows = [r for r in rows if r.role == "gallery"]
    enrolled = [r for r in gallery_rows if embeddings[r.path] is not None]
    gallery = np.stack([embeddings[r.path] for r in enrolled]).astype(np.float64)
    ids = [r.identity for r in enrolled]
    probes = [r for r in rows if r.role == "probe"]
    distractors = [r for r in rows if r.role == "distractor"]
    found_probes = search(probes, ids, gallery, embeddings, metric)
    found_distractors = search(distractors, ids, gallery, embeddings, metric)

    # The threshold at which at most 1% of distractors match someone (strict "<", so ties stay out).
    ordered = np.sort(found_distractors.distance)
    thresholds = dict(thresholds)
    thresholds["fpr_1pct"] = float(ordered[int(FPR_TARGET * len(ordered))])

    at: dict[str, dict[str, float | None]] = {}
    for name, threshold in thresholds.items():
        if threshold is None:
            continue
        dir_rate = float((found_probes.correct & (found_probes.distance < threshold)).mean())
        fpr = float((found_distractors.distance < threshold).mean())
        at[name] = {"threshold": threshold if math.isfinite(threshold) else None, "dir_pct": 100 * dir_rate}
        at[name]["fpr_pct"] = 100 * fpr
    return OpenSet(
        rank1=float(found_probes.correct.mean()),
        at=at,
        gallery_missed=len(gallery_rows) - len(enrolled),
        probes=len(probes),
        probes_missed=int(np.isinf(found_probes.distance).sum()),
        distractors=len(distractors),
        distractors_missed=sum(embeddings[r.path] is None for r in distractors),
    )


# -------------------------------------------------------------------------------------------- report


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def thr(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def verification_table(results: dict[str, Verification]) -> str:
    rows = [
        [
            name,
            f"{100 * result.mean:.2f} ± {100 * result.std:.2f}",
            thr(result.mean_threshold),
            f"{min(result.accuracies) * 100:.2f}",
            f"{max(result.accuracies) * 100:.2f}",
            result.pairs_with_miss,
        ]
        for name, result in results.items()
    ]
    headers = ["system", "accuracy % (mean ± std)", "mean thr", "worst fold", "best fold", "pairs with miss"]
    return format_table(headers, rows)


def print_report(
    systems: dict[str, System],
    runs: dict[str, EmbedRun],
    verification: dict[str, Verification],
    common: dict[str, Verification],
    opensets: dict[str, OpenSet],
    meta: dict[str, Any],
) -> list[dict[str, Any]]:
    print("== faceagent accuracy benchmark ==")
    print(f"data: {meta['data']}")
    print(f"load average at start: {meta['load_average']}")
    for name, system in systems.items():
        if name in PIPELINE_EMBEDDERS:
            info = system.info
            print(
                f"{name}: runtime {info['runtime']}, interpreter threads {meta['threads']}; detector "
                f"{model_label(info['detector'])}; embedder {model_label(info['embedder'])}; metric {system.metric}; "
                f"manifest sha256 {info['manifest_sha256'][:12]}, agent/vision code sha256 "
                f"{info['vision_code_sha256'][:12]}"
            )
        else:
            print(f"{name}: {system.label}")
    print()
    rows = []
    for name, run in runs.items():
        per_image = f"{1000 * run.seconds / run.computed:.1f}" if run.computed else "-"
        rows.append(
            [
                name,
                len(run.embeddings),
                run.misses,
                run.unreadable,
                run.computed,
                run.cached,
                f"{run.seconds:.1f}",
                per_image,
            ]
        )
    print("Images (each unique image embedded once per system; a miss = no face found)")
    print(format_table(["system", "images", "misses", "unreadable", "computed", "cached", "wall s", "ms/image"], rows))

    if verification:
        some = next(iter(verification.values()))
        print()
        print(
            f"1:1 verification: LFW View 2, {len(some.folds)} folds, {some.pairs} pairs "
            "(threshold chosen on the other folds; a pair with a missed face counts wrong)"
        )
        print(verification_table(verification))
    if common:
        some = next(iter(common.values()))
        print()
        print(
            f"Extra: the same on the {some.pairs} pairs where every system found both faces "
            "(each system's thresholds re-chosen on this subset)"
        )
        print(verification_table(common))

    if opensets:
        print()
        some_set = next(iter(opensets.values()))
        print(
            f"Open-set 1:N: {some_set.probes} probes, {some_set.distractors} distractors, gallery "
            f"{len(meta['gallery_identities'])} identities (one image each)"
        )
        rows = []
        for name, result in opensets.items():
            row: list[object] = [name, pct(100 * result.rank1)]
            for key in ("ten_fold", "default", "fpr_1pct"):
                cell = result.at.get(key)
                if cell is None:
                    row += ["-", "-", "-"]
                else:
                    row += [thr(cell["threshold"]), pct(cell["dir_pct"]), pct(cell["fpr_pct"])]
            row.append(f"{result.gallery_missed}/{result.probes_missed}/{result.distractors_missed}")
            rows.append(row)
        print(
            format_table(
                [
                    "system",
                    "rank-1 %",
                    "10-fold thr",
                    "DIR %",
                    "FPR %",
                    "default thr",
                    "DIR %",
                    "FPR %",
                    "thr @1% FPR",
                    "DIR %",
                    "FPR %",
                    "missed g/p/d",
                ],
                rows,
            )
        )
        print(
            "(DIR: probe's nearest gallery identity correct and closer than the threshold; FPR: distractors "
            "whose nearest gallery entry is closer than the threshold; default thr: manifest / library "
            f"tolerance; '{NORMALISED}' is extra information with no default threshold)"
        )

    return print_targets(verification)


def print_targets(verification: dict[str, Verification]) -> list[dict[str, Any]]:
    int8, f32, lib = (verification.get(n) for n in ("int8", "float32", LIBRARY))
    print()
    if int8 and f32:
        print(f"gap int8 - float32: {100 * (int8.mean - f32.mean):+.2f} points")
    if int8 and lib:
        print(f"gap int8 - face_recognition: {100 * (int8.mean - lib.mean):+.2f} points")
    fused = verification.get("fused")
    targets = []

    def target(name: str, ok: bool | None, detail: str) -> None:
        targets.append({"target": name, "pass": ok, "detail": detail})
        print(verdict(ok, name, detail))

    target(
        f"int8 LFW accuracy >= {TARGET_INT8_ACCURACY}%",
        None if int8 is None else 100 * int8.mean >= TARGET_INT8_ACCURACY,
        "not run" if int8 is None else f"{100 * int8.mean:.2f}%",
    )
    gap = None if int8 is None or f32 is None else abs(100 * (int8.mean - f32.mean))
    target(
        f"|int8 - float32| <= {TARGET_INT8_FLOAT32_GAP} points",
        None if gap is None else gap <= TARGET_INT8_FLOAT32_GAP + 1e-9,
        "not run" if gap is None else f"{gap:.2f} points",
    )
    target(
        "int8 > face_recognition",
        None if int8 is None or lib is None else int8.mean > lib.mean,
        "not run" if int8 is None or lib is None else f"{100 * int8.mean:.2f}% vs {100 * lib.mean:.2f}%",
    )
    target(
        f"fused LFW accuracy >= {TARGET_FUSED_ACCURACY}% (issue 12)",
        None if fused is None else 100 * fused.mean >= TARGET_FUSED_ACCURACY,
        "not run" if fused is None else f"{100 * fused.mean:.2f}%",
    )
    return targets


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: <repo>/../shared/data)")
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)} (default: all)",
    )
    parser.add_argument("--folds", type=int, help="use only the first N folds of pairs.tsv (N >= 2)")
    parser.add_argument("--no-open-set", action="store_true", help="skip the 1:N identification part")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads for our pipeline (default 2)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=f"default {DEFAULT_CACHE_DIR}")
    parser.add_argument("--no-cache", action="store_true", help="recompute every embedding (the cache is rewritten)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(ALL_SYSTEMS))
    if unknown or not args.systems:
        parser.error(f"--systems: unknown {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    if args.folds is not None and args.folds < 2:
        parser.error("--folds must be at least 2 (each fold's threshold comes from the others)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    required = ["pairs.tsv"] + ([] if args.no_open_set else ["ident_split.tsv"])
    data = resolve_data_dir(args.data, required)
    started = time.perf_counter()
    meta: dict[str, Any] = {"data": str(data), "load_average": load_average(), "threads": args.threads}

    pairs = read_pairs(data / "pairs.tsv", args.folds)
    ident = [] if args.no_open_set else read_ident(data / "ident_split.tsv")
    images = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs} | {r.path for r in ident})
    meta |= {"pairs": len(pairs), "images": len(images), "ident_rows": len(ident)}
    meta["gallery_identities"] = sorted({r.identity for r in ident if r.role == "gallery"})
    progress(f"{len(pairs)} pairs, {len(ident)} 1:N rows, {len(images)} unique images")

    data_key = data_fingerprint(data)
    systems: dict[str, System] = {}
    runs: dict[str, EmbedRun] = {}
    embeddings: dict[str, dict[str, np.ndarray | None]] = {}
    for name in [s for s in ALL_SYSTEMS if s in args.systems]:
        system = (
            pipeline_system(name, args.threads, data_key) if name in PIPELINE_EMBEDDERS else library_system(data_key)
        )
        systems[name] = system
        runs[name] = embed_images(system, images, data, args.cache_dir, fresh=args.no_cache)
        embeddings[name] = runs[name].embeddings
    metrics = {name: s.metric for name, s in systems.items()}
    if "int8" in embeddings:
        embeddings[NORMALISED] = unit_normalised(embeddings["int8"])
        metrics[NORMALISED] = "euclidean"

    verification = {
        name: cross_validate(pairs, pair_distances(pairs, emb, metrics[name])) for name, emb in embeddings.items()
    }
    # Misses count as wrong above; this shows how the systems compare where none of them missed.
    both_found = [
        p for p in pairs if all(e[p.path_a] is not None and e[p.path_b] is not None for e in embeddings.values())
    ]
    common: dict[str, Verification] = {}
    if len(both_found) < len(pairs):
        common = {
            name: cross_validate(both_found, pair_distances(both_found, emb, metrics[name]))
            for name, emb in embeddings.items()
        }
    opensets: dict[str, OpenSet] = {}
    if ident:
        for name, emb in embeddings.items():
            default = systems[name].default_threshold if name in systems else None
            thresholds = {"ten_fold": verification[name].mean_threshold, "default": default}
            opensets[name] = open_set(ident, emb, metrics[name], thresholds)

    targets = print_report(systems, runs, verification, common, opensets, meta)
    total = time.perf_counter() - started
    print(f"\ntotal wall time: {total:.1f} s")

    if args.out:
        payload = {
            "meta": meta | {"total_wall_s": total, "gallery_identities": len(meta["gallery_identities"])},
            "systems": {
                name: {
                    "label": systems[name].label if name in systems else "int8 embeddings, unit-normalised",
                    "metric": metrics[name],
                    "info": systems[name].info if name in systems else {},
                    "default_threshold": systems[name].default_threshold if name in systems else None,
                    "default_threshold_source": systems[name].default_threshold_source if name in systems else None,
                    "images": runs[name].to_json() if name in runs else None,
                    "verification": verification[name].to_json(),
                    "verification_pairs_all_found": common[name].to_json() if name in common else None,
                    "open_set": opensets[name].to_json() if name in opensets else None,
                }
                for name in embeddings
            },
            "targets": targets,
        }
        write_json(args.out, payload)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

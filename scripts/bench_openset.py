"""Open-set 1:N benchmark through the real `Matcher`: the evidence for the gallery's metric, threshold and margin.

Run from the repository root, in the project venv (the first run embeds 7,697 LFW images, a few minutes;
later runs read the cache):

    nohup .venv/bin/python scripts/bench_openset.py --out /tmp/bench_openset.json > /tmp/bench_openset.log 2>&1 &

Data: `ident_split.tsv` (shared/data/PROVENANCE.md): 1,557 gallery identities with one `gallery` image and
1+ `probe` images each, and 2,723 single-image `distractor` identities. Gallery sizes 50, 200 and all 1,557
identities, plus 10 (a household: margins protect least when there are few rivals); the subsets are nested
prefixes of the sorted identities shuffled with a fixed seed (seed 0 in the per-margin tables, seeds
0..N-1 for the choice and the defaults). Probes of enrolled identities are genuine; probes of non-enrolled
gallery identities plus every distractor are strangers.

Gallery modes: "1 tpl" enrolls the gallery image; "3 tpl" also enrolls up to 2 of the identity's probe images
(lowest-numbered) and removes them from the probes; "1 tpl/3p" is "1 tpl" on the probes left by "3 tpl",
so the two compare on the same probes. Rules: metric euclidean (raw) or cosine (unit-normalised, L2
between unit vectors), per-person score from the nearest template or from the nearer of it and the mean
template plus the embedder's mean_offset (the Matcher's own; "3 tpl" galleries only), and a margin
(second-best person at least this much further away). "Mean of 2 probes" (1 tpl only) searches the mean
embedding of two probe images of one person, for both genuine people and non-enrolled gallery identities
(distractors have one image): a hint for multi-frame decisions, which the tracker owns.

Figures: DIR = detection-and-identification rate, genuine probes whose best person is right AND accepted,
over all genuine probes (a probe without a detected face is a miss); FPR = strangers accepted as anyone,
over all strangers (one without a face cannot match). "DIR@1%" is the DIR at the largest threshold that
keeps FPR <= 1%, per margin. The choice tables give, per rule and margin, the largest threshold that keeps
FPR <= 1% in every seed's 1- and 3-template gallery at 200 (the issue's constraint), at 10, 50 and 200, or
at every size (1,557 too: the issue's 1,557 targets are at FPR <= 1% as well), and what that (threshold,
margin) gives at every size. The defaults in use are evaluated last (the manifest's default embedder's stated
figures, else the built-in ones), and the Matcher's own `accepted` flags are cross-checked against the
computed rates.

Embeddings: the most central face of each image (`most_central`), from `FacePipeline(threads=1)`, cached in
~/.cache/faceagent-bench keyed by a hash of the detector and embedder manifest entries (alignment template
included); a change to the vision code that the manifest does not show needs `--no-cache`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import GallerySettings, matching, with_matching
from agent.errors import ImageError
from agent.gallery.matcher import Matcher
from agent.vision.embedder import stated_gallery
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "faceagent-bench"
SIZES = (10, 50, 200, 1557)  # 10: a household, beyond the three sizes
CHOICE_MARGINS = np.round(np.arange(0.0, 0.1501, 0.005), 3)
MARGINS = (0.0, 0.02, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15)
METRICS = ("euclidean", "cosine")
# How a person's templates score a face: their nearest alone, or the nearer of it and their mean template plus the
# settings' mean_offset (the embedder's stated one; 0 when it states none).
AGGREGATIONS = ("nearest", "nearest_or_mean")
MODES = ("1 tpl", "3 tpl", "1 tpl/3p")
TARGET_FPR = 0.01
CHOICE_SIZE = 200
CONSTRAINT_SIZES = (10, 50, 200)
CACHE_FORMAT = 1
STATED_FIGURES = ("threshold", "gallery", "fitted")  # manifest keys an embedder fits, not what makes its vectors


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Split:
    gallery: dict[str, str]  # identity -> its gallery image
    probes: dict[str, list[str]]  # identity -> its probe images, sorted
    distractors: list[str]

    def images(self) -> list[str]:
        return sorted([*self.gallery.values(), *(p for ps in self.probes.values() for p in ps), *self.distractors])


def read_split(path: Path) -> Split:
    gallery: dict[str, str] = {}
    probes: dict[str, list[str]] = {}
    distractors: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            identity, role, image = row["identity"], row["role"], row["path"]
            if role == "gallery":
                gallery[identity] = image
            elif role == "probe":
                probes.setdefault(identity, []).append(image)
            elif role == "distractor":
                distractors.append(image)
            else:
                raise SystemExit(f"error: {path}: unknown role {role!r}")
    return Split(gallery, {k: sorted(v) for k, v in probes.items()}, sorted(distractors))


# ------------------------------------------------------------------------------------------ embeddings


def cache_key() -> dict[str, Any]:
    """What decides an embedding: the detector (and refiner) and embedder manifest entries, face choice. The
    figures an embedder states (`threshold`, `gallery`) decide no vector: fitting them keeps the cache."""
    store = ModelStore(None)
    detector = store.spec(None, "detector")
    embedder = store.spec(None, "embedder")
    refiner_id = detector.raw.get("refine_with")
    refiner = store.specs[refiner_id].raw if refiner_id and refiner_id != detector.id else None
    return {
        "detector": detector.raw,
        "refiner": refiner,
        "embedder": {key: value for key, value in embedder.raw.items() if key not in STATED_FIGURES},
        "refine": True,
        "face": "most_central",
        "format": CACHE_FORMAT,
    }


def embed_all(images: Sequence[str], data: Path, cache_dir: Path, fresh: bool) -> tuple[dict, dict[str, Any]]:
    """Embedding (or None: no face / unreadable) for every image, computing only what the cache lacks."""
    key = cache_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"openset-{key['embedder']['id']}-{digest}.npz"
    entries: dict[str, np.ndarray | None] = {}
    if path.is_file() and not fresh:
        with np.load(path, allow_pickle=False) as stored:
            for name, found, vector in zip(stored["paths"].tolist(), stored["found"], stored["vectors"], strict=True):
                entries[name] = vector.copy() if found else None
    todo = [name for name in images if name not in entries]
    start = time.perf_counter()
    if todo:
        progress(f"embedding {len(todo)} images ({len(images) - len(todo)} cached) -> {path}")
        pipeline = FacePipeline(PipelineOptions(threads=1))
        for done, name in enumerate(todo, 1):
            try:
                rgb = load_image(data / name)
            except ImageError as exc:
                progress(f"warning: {exc}")
                entries[name] = None
                continue
            face = most_central(pipeline.detect(rgb), rgb.shape[1], rgb.shape[0])
            entries[name] = None if face is None else pipeline.embed_face(rgb, face).embedding.astype(np.float32)
            if done % 500 == 0 or done == len(todo):
                rate = done / (time.perf_counter() - start)
                progress(f"  {done}/{len(todo)}  {rate:.1f} img/s  eta {(len(todo) - done) / rate:.0f} s")
            if done % 1000 == 0 or done == len(todo):
                _save_cache(path, entries, key)
    seconds = time.perf_counter() - start
    info = {
        "cache_file": str(path),
        "images": len(images),
        "computed": len(todo),
        "no_face": sum(entries[name] is None for name in images),
        "embed_seconds": seconds,
        "ms_per_computed_image": 1000 * seconds / len(todo) if todo else None,
        "detector": key["detector"]["id"],
        "embedder": key["embedder"]["id"],
        "embedder_sha256": key["embedder"]["sha256"],
    }
    return {name: entries[name] for name in images}, info


def _save_cache(path: Path, entries: dict[str, np.ndarray | None], key: dict[str, Any]) -> None:
    names = sorted(entries)
    width = next((len(v) for v in entries.values() if v is not None), 0)
    vectors = np.zeros((len(names), width), dtype=np.float32)
    found = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        if entries[name] is not None:
            vectors[i], found[i] = entries[name], True
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, paths=np.array(names), found=found, vectors=vectors, key=json.dumps(key))
    partial.replace(path)


# ------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    size: int
    seed: int
    mode: str
    enrolled: dict[str, list[str]]  # identity -> its template images
    genuine: list[tuple[str, str]]  # (identity, image)
    strangers: list[str]
    genuine_pairs: list[tuple[str, str, str]]  # (identity, image, image): two probes of one enrolled person
    stranger_pairs: list[tuple[str, str]]  # two probes of one non-enrolled person


def scenario(split: Split, size: int, seed: int, mode: str) -> Scenario:
    order = sorted(split.gallery)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    chosen, others = order[:size], order[size:]
    enrolled: dict[str, list[str]] = {}
    genuine: list[tuple[str, str]] = []
    for identity in chosen:
        probes = split.probes.get(identity, [])
        extra = probes[:2] if mode != "1 tpl" else []
        enrolled[identity] = [split.gallery[identity], *extra] if mode == "3 tpl" else [split.gallery[identity]]
        genuine.extend((identity, p) for p in probes if p not in extra)
    strangers = [p for identity in others for p in split.probes.get(identity, [])] + split.distractors
    genuine_pairs: list[tuple[str, str, str]] = []
    stranger_pairs: list[tuple[str, str]] = []
    if mode == "1 tpl":
        for identity in chosen:
            probes = split.probes.get(identity, [])
            genuine_pairs.extend((identity, a, b) for a, b in zip(probes[0::2], probes[1::2], strict=False))
        for identity in others:
            probes = split.probes.get(identity, [])
            stranger_pairs.extend(zip(probes[0::2], probes[1::2], strict=False))
    return Scenario(size, seed, mode, enrolled, genuine, strangers, genuine_pairs, stranger_pairs)


# ------------------------------------------------------------------------------------------- searching


@dataclass(frozen=True)
class Outcome:
    """Per-probe search results, independent of threshold and margin."""

    genuine_correct: np.ndarray  # best person is the right one (False when no face)
    genuine_distance: np.ndarray  # inf when no face
    genuine_margin: np.ndarray
    stranger_distance: np.ndarray  # only strangers with a face
    stranger_margin: np.ndarray
    strangers_total: int
    accepted_genuine: np.ndarray  # the Matcher's own `accepted` at the settings it was built with
    accepted_strangers: np.ndarray


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def build_matcher(
    scn: Scenario, embeddings: dict, metric: str, aggregation: str, settings: GallerySettings
) -> tuple[Matcher, int]:
    """A Matcher holding the scenario's gallery, through `load` as the service does; and its template count."""
    rows = []
    template_id = 0
    for identity, images in scn.enrolled.items():
        vectors = [embeddings[i] for i in images if embeddings[i] is not None]
        if not vectors:
            continue
        for vector in vectors:
            template_id += 1
            rows.append((template_id, identity, identity, vector))
    matcher = Matcher(
        metric=metric,
        threshold=settings.threshold,
        margin=settings.margin,
        mean_offset=None if aggregation == "nearest" else settings.mean_offset or 0.0,
    )
    matcher.load(rows)
    return matcher, len(rows)


def search(matcher: Matcher, queries: list[tuple[str, np.ndarray | None]], strangers: list[np.ndarray | None]):
    present = [(identity, v) for identity, v in queries if v is not None]
    g_correct = np.zeros(len(queries), dtype=bool)
    g_dist = np.full(len(queries), np.inf)
    g_margin = np.zeros(len(queries))
    g_acc = np.zeros(len(queries), dtype=bool)
    if present:
        where = np.array([i for i, (_, v) in enumerate(queries) if v is not None])
        matches = matcher.search_many(np.stack([v for _, v in present]))
        g_correct[where] = [m.person_id == identity for m, (identity, _) in zip(matches, present, strict=True)]
        g_dist[where] = [m.distance for m in matches]
        g_margin[where] = [m.margin for m in matches]
        g_acc[where] = [m.accepted for m in matches]
    faces = [v for v in strangers if v is not None]
    s_matches = matcher.search_many(np.stack(faces)) if faces else []
    return Outcome(
        g_correct,
        g_dist,
        g_margin,
        np.array([m.distance for m in s_matches]),
        np.array([m.margin for m in s_matches]),
        len(strangers),
        g_acc,
        np.array([m.accepted for m in s_matches], dtype=bool),
    )


def mean_query(vectors: Sequence[np.ndarray | None], metric: str) -> np.ndarray | None:
    if any(v is None for v in vectors):
        return None
    prepared = [unit(v) for v in vectors] if metric == "cosine" else list(vectors)
    return np.mean(prepared, axis=0).astype(np.float32)


def run_scenario(scn: Scenario, embeddings: dict, metric: str, aggregation: str, settings: GallerySettings):
    matcher, templates = build_matcher(scn, embeddings, metric, aggregation, settings)
    single = search(
        matcher, [(identity, embeddings[p]) for identity, p in scn.genuine], [embeddings[p] for p in scn.strangers]
    )
    pairs = None
    if scn.genuine_pairs and scn.stranger_pairs:
        pairs = search(
            matcher,
            [(identity, mean_query([embeddings[a], embeddings[b]], metric)) for identity, a, b in scn.genuine_pairs],
            [mean_query([embeddings[a], embeddings[b]], metric) for a, b in scn.stranger_pairs],
        )
    return single, pairs, templates


# --------------------------------------------------------------------------------------------- figures


def rates(o: Outcome, threshold: float, margin: float) -> tuple[float, float]:
    """(DIR, FPR) when a match needs distance < threshold and margin >= margin."""
    identified = o.genuine_correct & (o.genuine_distance < threshold) & (o.genuine_margin >= margin)
    false_pos = (o.stranger_distance < threshold) & (o.stranger_margin >= margin)
    return float(identified.mean()), float(false_pos.sum() / max(o.strangers_total, 1))


def threshold_at_fpr(o: Outcome, margin: float, fpr: float = TARGET_FPR) -> float:
    """The largest threshold (accept distance < t) with at most fpr of strangers accepted at this margin."""
    passing = np.sort(o.stranger_distance[o.stranger_margin >= margin])
    allowed = math.floor(fpr * o.strangers_total)
    return float(passing[allowed]) if len(passing) > allowed else math.inf


def dir_at_fpr(o: Outcome, margin: float) -> tuple[float, float]:
    threshold = threshold_at_fpr(o, margin)
    return rates(o, threshold, margin)[0], threshold


def default_aggregation(settings: GallerySettings) -> str:
    """How the defaults under test score a person: with mean templates when a mean_offset is in force."""
    return "nearest" if settings.mean_offset is None else "nearest_or_mean"


def single_template(mode: str, aggregation: str) -> str:
    """The aggregation a mode's galleries are searched with: only "3 tpl" has people with several templates, and
    with one template each every aggregation gives the same matches (so only "nearest" is run)."""
    return aggregation if mode == "3 tpl" else "nearest"


def evaluate_rule(
    outcomes: dict, metric: str, aggregation: str, margin: float, constraint_sizes: Sequence[int]
) -> dict[str, Any]:
    """The largest threshold keeping FPR <= 1% in every constraint gallery, and what it gives at every size."""

    def keys(size: int, mode: str) -> list[tuple]:
        agg = single_template(mode, aggregation)
        return [k for k in outcomes if k[0] == size and k[2] == mode and k[3] == metric and k[4] == agg]

    constraint = [k for size in constraint_sizes for mode in ("1 tpl", "3 tpl") for k in keys(size, mode)]
    threshold = min(threshold_at_fpr(outcomes[k][0], margin) for k in constraint)
    by_size = {}
    for size in SIZES:
        one = [rates(outcomes[k][0], threshold, margin) for k in keys(size, "1 tpl")]
        three = [rates(outcomes[k][0], threshold, margin) for k in keys(size, "3 tpl")]
        by_size[str(size)] = {
            "dir_1tpl": float(np.mean([d for d, _ in one])),
            "dir_3tpl": float(np.mean([d for d, _ in three])),
            "max_fpr": max(f for _, f in one + three),
        }
    chosen = by_size[str(CHOICE_SIZE)]
    return {
        "metric": metric,
        "aggregation": aggregation,
        "margin": margin,
        "threshold": threshold,
        "constraint_sizes": list(constraint_sizes),
        "objective": (chosen["dir_1tpl"] + chosen["dir_3tpl"]) / 2,
        "by_size": by_size,
    }


# ------------------------------------------------------------------------------------------------ main


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def finite(value: Any) -> Any:
    """JSON-safe copy: inf (no threshold needed) and NaN become null, NumPy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-cache", action="store_true", help="recompute every embedding")
    parser.add_argument("--seeds", type=int, default=5, help="subset seeds for sizes < all (default 5)")
    parser.add_argument("--out", type=Path, help="write every figure as JSON")
    args = parser.parse_args(argv)
    split_path = args.data / "ident_split.tsv"
    if not split_path.is_file():
        raise SystemExit(f"error: {split_path} not found; pass --data DIR (the shared/data folder)")
    embedder = ModelStore(None).spec(None, "embedder")  # the defaults under test: the figures it states, if any
    settings = with_matching(GallerySettings(), matching(GallerySettings(), stated_gallery(embedder.raw), embedder.id))
    started = time.time()
    split = read_split(split_path)
    embeddings, embed_info = embed_all(split.images(), args.data, args.cache_dir, args.no_cache)
    print(
        f"images {embed_info['images']}, no face {embed_info['no_face']}, computed {embed_info['computed']}"
        f" ({embed_info['ms_per_computed_image'] or 0:.1f} ms each, 1 thread), embedder {embed_info['embedder']}"
    )
    print(
        f"defaults under test (GallerySettings): metric {settings.metric}, threshold {settings.threshold}, "
        f"margin {settings.margin}, mean_offset {settings.mean_offset}"
    )

    results: list[dict[str, Any]] = []
    outcomes: dict[tuple, tuple[Outcome, Outcome | None]] = {}
    check_failures = 0
    for size in SIZES:
        seeds = range(args.seeds) if size < len(split.gallery) else range(1)
        for seed in seeds:
            for mode in MODES:
                scn = scenario(split, size, seed, mode)
                for metric in METRICS:
                    for aggregation in AGGREGATIONS if mode == "3 tpl" else ("nearest",):
                        single, pairs, templates = run_scenario(scn, embeddings, metric, aggregation, settings)
                        outcomes[(size, seed, mode, metric, aggregation)] = (single, pairs)
                        entry: dict[str, Any] = {
                            "size": size,
                            "seed": seed,
                            "mode": mode,
                            "metric": metric,
                            "aggregation": aggregation,
                            "templates": templates,
                            "genuine": len(scn.genuine),
                            "strangers": len(scn.strangers),
                            "rank1": float(single.genuine_correct.mean()),
                            "by_margin": {},
                        }
                        for margin in MARGINS:
                            dir1, thr = dir_at_fpr(single, margin)
                            entry["by_margin"][str(margin)] = {"dir_at_1pct": dir1, "threshold_at_1pct": thr}
                        if metric == settings.metric:
                            dir_d, fpr_d = rates(single, settings.threshold, settings.margin)
                            entry["defaults"] = {"dir": dir_d, "fpr": fpr_d}
                            own_dir = float((single.accepted_genuine & single.genuine_correct).mean())
                            own_fpr = float(single.accepted_strangers.sum() / single.strangers_total)
                            if abs(own_dir - dir_d) > 1e-12 or abs(own_fpr - fpr_d) > 1e-12:
                                check_failures += 1
                            if pairs is not None:
                                dir_p, fpr_p = rates(pairs, settings.threshold, settings.margin)
                                entry["pairs"] = {
                                    "genuine": len(pairs.genuine_correct),
                                    "strangers": pairs.strangers_total,
                                    "dir_at_1pct_margin0": dir_at_fpr(pairs, 0.0)[0],
                                    "defaults": {"dir": dir_p, "fpr": fpr_p},
                                }
                        results.append(entry)
        progress(f"size {size} done ({time.time() - started:.0f} s)")

    # Tables: seed 0, DIR@1% per margin (threshold at margin 0 alongside).
    for size in SIZES:
        rows = []
        first = next(r for r in results if r["size"] == size and r["seed"] == 0)
        print(
            f"\n=== {size} enrolled identities (seed 0): genuine probes {first['genuine']} (1 tpl), "
            f"strangers {first['strangers']}.  DIR % at stranger FPR <= 1%, by margin ==="
        )
        for r in results:
            if r["size"] != size or r["seed"] != 0:
                continue
            by = r["by_margin"]
            rows.append(
                [
                    r["mode"],
                    r["metric"],
                    r["aggregation"],
                    r["genuine"],
                    pct(r["rank1"]),
                    f"{by['0.0']['threshold_at_1pct']:.3f}",
                    *(pct(by[str(m)]["dir_at_1pct"]) for m in MARGINS),
                ]
            )
        headers = ["gallery", "metric", "per person", "genuine", "rank1", "thr@1%,m0", *(f"m={m:g}" for m in MARGINS)]
        print(format_table(headers, rows))

    # The choice: per rule (metric, per-person score, margin on a fine grid) the threshold is the largest that
    # keeps FPR <= 1% in every seed's 1- and 3-template gallery of the constraint sizes; rules are ranked by
    # the mean of the 1- and 3-template DIR at CHOICE_SIZE. The issue asks for 200 only; a margin protects
    # less in small galleries (fewer rivals), so the defaults are chosen with 10 and 50 in the constraint too.
    choices: dict[str, list[dict[str, Any]]] = {}
    rules = (("200 only", (CHOICE_SIZE,)), ("10, 50 and 200", CONSTRAINT_SIZES), ("every size", SIZES))
    for label, constraint_sizes in rules:
        ranked = sorted(
            (
                evaluate_rule(outcomes, metric, aggregation, float(margin), constraint_sizes)
                for metric in METRICS
                for aggregation in AGGREGATIONS
                for margin in CHOICE_MARGINS
            ),
            key=lambda c: -c["objective"],
        )
        choices[label] = ranked
        print(
            f"\n=== choice, FPR <= 1% at {label} enrolled: threshold = the largest keeping it in every seed"
            f" (0..{args.seeds - 1}) and 1/3-template gallery;"
            " DIR % mean over seeds, FPR % max; top 3 margins per rule ==="
        )
        shown: dict[tuple[str, str], int] = {}
        rows = []
        for c in ranked:
            rule = (c["metric"], c["aggregation"])
            shown[rule] = shown.get(rule, 0) + 1
            if shown[rule] > 3:
                continue
            by = c["by_size"]
            rows.append(
                [
                    c["metric"],
                    c["aggregation"],
                    f"{c['margin']:g}",
                    f"{c['threshold']:.3f}",
                    *(
                        f"{pct(by[str(n)]['dir_1tpl'])}/{pct(by[str(n)]['dir_3tpl'])}/{pct(by[str(n)]['max_fpr'])}"
                        for n in SIZES
                    ),
                ]
            )
        headers = ["metric", "per person", "margin", "threshold", *(f"{n}: DIR1/DIR3/FPR" for n in SIZES)]
        print(format_table(headers, rows))

    # The defaults at every size: seed 0, and the range over seeds.
    print(
        f"\n=== defaults: metric {settings.metric}, threshold {settings.threshold}, margin {settings.margin},"
        f" mean_offset {settings.mean_offset}: DIR % / stranger FPR % (seed 0; [min-max over seeds]) ==="
    )
    rows = []
    for size in SIZES:
        for mode in MODES:
            subset = [
                r
                for r in results
                if r["size"] == size and r["mode"] == mode and r["metric"] == settings.metric
                if r["aggregation"] == single_template(mode, default_aggregation(settings))
            ]
            first = subset[0]
            dirs = [r["defaults"]["dir"] for r in subset]
            fprs = [r["defaults"]["fpr"] for r in subset]
            rows.append(
                [
                    str(size),
                    mode,
                    "",
                    first["genuine"],
                    first["strangers"],
                    pct(first["defaults"]["dir"]),
                    f"[{pct(min(dirs))}-{pct(max(dirs))}]",
                    pct(first["defaults"]["fpr"]),
                    f"[{pct(min(fprs))}-{pct(max(fprs))}]",
                ]
            )
            if "pairs" in first:
                p = first["pairs"]
                rows.append(
                    [
                        str(size),
                        "1 tpl, mean of 2 probes",
                        "",
                        p["genuine"],
                        p["strangers"],
                        pct(p["defaults"]["dir"]),
                        "",
                        pct(p["defaults"]["fpr"]),
                        "",
                    ]
                )
    print(format_table(["size", "gallery", "", "genuine", "strangers", "DIR", "seeds", "FPR", "seeds"], rows))

    def defaults_fpr_ok(sizes: Sequence[int]) -> bool:
        return all(
            r["defaults"]["fpr"] <= TARGET_FPR
            for r in results
            if r["size"] in sizes and r["metric"] == settings.metric
            if r["mode"] in ("1 tpl", "3 tpl")
            and r["aggregation"] == single_template(r["mode"], default_aggregation(settings))
        )

    verdict_ok = defaults_fpr_ok((CHOICE_SIZE,))
    small_ok = defaults_fpr_ok([n for n in SIZES if n != CHOICE_SIZE])
    print(
        f"\n{'PASS' if verdict_ok else 'FAIL'}  stranger FPR <= 1% at {CHOICE_SIZE} enrolled with the defaults"
        f" (1 and 3 templates, seeds 0..{args.seeds - 1})"
    )
    print(
        f"{'PASS' if small_ok else 'FAIL'}  stranger FPR <= 1% at "
        f"{', '.join(str(n) for n in SIZES if n != CHOICE_SIZE)} enrolled too"
    )
    print(
        f"{'PASS' if check_failures == 0 else 'FAIL'}  Matcher.accepted agrees with the computed rates"
        f" ({check_failures} disagreements)"
    )
    one, five, _ = os.getloadavg()
    print(f"load average {one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} CPUs; {time.time() - started:.0f} s")
    if args.out:
        payload = {
            "embedding": embed_info,
            "defaults": {
                "metric": settings.metric,
                "threshold": settings.threshold,
                "margin": settings.margin,
                "mean_offset": settings.mean_offset,
            },
            "results": results,
            "choice": choices,
            "defaults_pass": {"size_200": verdict_ok, "sizes_10_50": small_ok},
            "load_average": [one, five],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite(payload), indent=1) + "\n", encoding="utf-8")
    return 0 if verdict_ok and check_failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

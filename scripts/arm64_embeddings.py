"""Embeddings of a fixed set of real faces, written on one architecture and compared with another's.

`scripts/arm64_check.sh` runs this on the x86-64 host and inside the arm64 Bookworm chroot:

    python scripts/arm64_embeddings.py select --data ../shared/data --same 10 --different 10 --out pairs.tsv
    python scripts/arm64_embeddings.py mobileface-chips --data ../shared/data --pairs pairs.tsv --out mf_chips.npz
    python scripts/arm64_embeddings.py embed --data ../shared/data --pairs pairs.tsv --out x86.json \
        [--runtime tflite-runtime] [--mobileface-chips mf_chips.npz]
    python scripts/arm64_embeddings.py cli-compare --faceagent .venv/bin/faceagent --data ../shared/data \
        --pairs pairs.tsv --out x86_compare.jsonl [--jobs 2]
    python scripts/arm64_embeddings.py cli-gallery --faceagent .venv/bin/faceagent --data ../shared/data \
        --pairs pairs.tsv --db /tmp/x86.db --out x86_gallery.json
    python scripts/arm64_embeddings.py compare x86.json arm64.json --tolerance 0.999 \
        [--cli x86_compare.jsonl arm64_compare.jsonl] [--gallery x86_gallery.json arm64_gallery.json] [--mobileface]

`select` picks LFW pairs spread evenly over ../shared/data/pairs.tsv (no randomness, so both sides
and every run see the same faces). `embed` runs the installed agent's own pipeline (detect, the most
central face, align, embed) on every distinct image of those pairs and records, per face, the
embedding and hashes of the decoded pixels and the aligned chip (to tell where two machines part
ways), and the decisions built on the embeddings: same/different for each pair at the embedder's
threshold, and a leave-one-out 1:N match (the nearest other face's person, or nobody beyond the
threshold). `cli-compare` and `cli-gallery` record the decisions of the agent's own commands
(`faceagent compare`; `faceagent enroll` + `identify --db`, i.e. the gallery matcher). `compare` fails
(exit 1) when a face's embeddings differ by cosine < tolerance, a face is found on one side only, or
a decision differs, except a borderline one: the two sides' distances for it at most --decision-band
apart (it sat on the threshold; such decisions are listed, never silent; --decision-band 0: none).
Issue 12's MobileFace V2 int8-against-float32 figure: `mobileface-chips` makes MobileFace's chips of the
same faces once, `embed --mobileface-chips` runs both builds on them, `compare --mobileface` prints each
side's min / 5th percentile / median cosine and fails when they differ by more than 1 - tolerance or the
float32 embeddings by cosine < tolerance; the issue's 0.995 target is a line of its own, never a failure.
It needs only the standard library, so any Python can run it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Issue 12's int8-against-float32 figure for MobileFace V2 (`mobileface-chips`, `embed --mobileface-chips`,
# `compare --mobileface`): the default's int8 member (the mixed build) and float32, and the target for
# the lowest cosine, printed beside the figures as a target line (a figure, never a failure).
MOBILEFACE_INT8 = "mobileface-v2-int8-mixed"
MOBILEFACE_FLOAT32 = "mobileface-v2-float32"
MOBILEFACE_TARGET = 0.995

# --------------------------------------------------------------------------- select


def select_pairs(data: Path, n_same: int, n_different: int) -> list[tuple[bool, str, str]]:
    """`n_same` same and `n_different` different pairs, evenly spread over pairs.tsv (all folds)."""
    with open(data / "pairs.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    chosen: list[tuple[bool, str, str]] = []
    for want_same, count in ((True, n_same), (False, n_different)):
        pool = [r for r in rows if (r["same"] == "1") == want_same]
        if count > len(pool):
            raise SystemExit(f"pairs.tsv has only {len(pool)} {'same' if want_same else 'different'} pairs")
        # The middle of each of `count` equal slices: LFW's folds are alphabetical, so this spreads the names.
        picks = [pool[(2 * i + 1) * len(pool) // (2 * count)] for i in range(count)]
        chosen += [(want_same, r["path_a"], r["path_b"]) for r in picks]
    return chosen


def read_pairs(path: Path) -> list[tuple[bool, str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            same, a, b = line.split("\t")
            pairs.append((same == "1", a, b))
    return pairs


def write_pairs(pairs: list[tuple[bool, str, str]], out: Path) -> None:
    lines = ["# same\tpath_a\tpath_b (relative to the shared data folder)"]
    lines += [f"{int(same)}\t{a}\t{b}" for same, a, b in pairs]
    out.write_text("\n".join(lines) + "\n")


def person_of(image: str) -> str:
    return Path(image).parent.name


# --------------------------------------------------------------------------- embed


def embed(
    data: Path,
    pairs: list[tuple[bool, str, str]],
    threads: int,
    label: str | None,
    runtime: str | None = None,
    mobileface_chips: Path | None = None,
) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from agent import __version__
    from agent.vision.embedder import distance
    from agent.vision.image import load_image
    from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central

    started = time.perf_counter()
    pipeline = FacePipeline(PipelineOptions(threads=threads, runtime=runtime))
    load_seconds = time.perf_counter() - started
    info = pipeline.embedder.info
    images = sorted({p for _, a, b in pairs for p in (a, b)})
    faces: dict[str, dict[str, Any]] = {}
    vectors: dict[str, Any] = {}
    for image in images:
        t0 = time.perf_counter()
        frame = load_image(data / image)
        record: dict[str, Any] = {
            "person": person_of(image),
            "pixels_sha256": hashlib.sha256(frame.tobytes()).hexdigest(),
        }
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        if face is None:
            record["found"] = False
        else:
            result = pipeline.embed_face(Image.fromarray(frame), face)
            vectors[image] = result.embedding
            box = face.to_json()["box"]
            record.update(
                found=True,
                box=box,
                score=face.to_json()["score"],
                chip_sha256=hashlib.sha256(np.ascontiguousarray(result.chip).tobytes()).hexdigest(),
                embedding=[float(x) for x in result.embedding],
            )
        record["seconds"] = round(time.perf_counter() - t0, 4)
        faces[image] = record

    pair_records = []
    for same, a, b in pairs:
        entry: dict[str, Any] = {"a": a, "b": b, "truth_same": same}
        if a in vectors and b in vectors:
            d = distance(vectors[a], vectors[b], info.metric)
            entry.update(distance=d, same=d < info.threshold)
        pair_records.append(entry)

    # Leave-one-out 1:N: each face against all the others as a gallery.
    # (When agent/gallery/matcher.py lands, its decision for the same gallery belongs here too.)
    matches = {}
    for image, vector in vectors.items():
        best_d, best = math.inf, None
        for other, other_vector in vectors.items():
            if other != image:
                d = distance(vector, other_vector, info.metric)
                if d < best_d:
                    best_d, best = d, other
        matched = person_of(best) if best is not None and best_d < info.threshold else None
        matches[image] = {"matched": matched, "nearest": best, "distance": best_d}

    result: dict[str, Any] = {
        "machine": platform.machine(),
        "label": label or platform.machine(),
        "python": platform.python_version(),
        "faceagent": __version__,
        "runtime": pipeline.runtime.describe(),
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "detector": {"id": pipeline.detector_spec.id, "sha256": pipeline.detector_spec.sha256},
        "embedder": {"id": info.model_id, "sha256": info.sha256, "metric": info.metric, "threshold": info.threshold},
        "model_load_seconds": round(load_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "faces": faces,
        "pairs": pair_records,
        "matches": matches,
    }
    if mobileface_chips is not None:
        result["mobileface"] = mobileface_embeddings(pipeline, mobileface_chips, threads)
    return result


# --------------------------------------------------------------------------- MobileFace int8 against float32


def make_mobileface_chips(
    data: Path, pairs: list[tuple[bool, str, str]], out: Path, runtime: str | None = None
) -> list[str]:
    """MobileFace V2's chips of the pairs' faces, made once, on the reference side, and run by every side: the
    figure then compares the two builds' arithmetic on the very same pixels (from the same decoded pixels, each
    architecture's float arithmetic, detection to alignment, makes only some chips bit-identical). Made as the agent
    makes them: the pipeline's detection, the most central face, the Aligner on MobileFace's manifest template.
    Returns the images with a face, in the chips' order."""
    import numpy as np
    from PIL import Image

    from agent.vision.aligner import Aligner
    from agent.vision.image import load_image
    from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central

    pipeline = FacePipeline(PipelineOptions(runtime=runtime))
    aligner = Aligner.from_spec(pipeline.store.spec(MOBILEFACE_INT8, "embedder").raw["alignment"])
    images, chips = [], []
    for image in sorted({p for _, a, b in pairs for p in (a, b)}):
        frame = load_image(data / image)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        if face is not None:
            images.append(image)
            chips.append(aligner.align(Image.fromarray(frame), face.keypoints))
    with open(out, "wb") as handle:  # a handle: np.savez would add .npz to a name without it
        np.savez(handle, images=np.array(images), chips=np.array(chips, dtype=np.uint8))
    return images


def mobileface_embeddings(pipeline: Any, chips_file: Path, threads: int) -> dict[str, Any]:
    """MobileFace V2 int8 and float32 on each chip of `make_mobileface_chips`, loaded by the pipeline's runtime from
    its verified store, on `threads` threads like the pipeline: 2 halve the step's time under qemu at low load, and
    1 and 2 give the same vectors (bit-identical on x86-64 and on the A72, except tflite-runtime's float32 on the
    A72: within rounding, cosine 1.0000000000), so the figure is the one thread count's as much as the other's."""
    import numpy as np

    from agent.vision.embedder import Embedder
    from agent.vision.runtime import TfliteModel

    started = time.perf_counter()
    with np.load(chips_file) as saved:
        images, chips = [str(image) for image in saved["images"]], saved["chips"]
    specs = [pipeline.store.spec(model_id, "embedder") for model_id in (MOBILEFACE_INT8, MOBILEFACE_FLOAT32)]
    int8, float32 = (
        Embedder(TfliteModel(pipeline.runtime.load(pipeline.store.read_verified(spec), threads)), spec.raw)
        for spec in specs
    )
    faces = {
        image: {
            "chip_sha256": hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest(),
            "int8": [float(x) for x in int8.embed(chip)],
            "float32": [float(x) for x in float32.embed(chip)],
        }
        for image, chip in zip(images, chips, strict=True)
    }
    return {
        "models": {spec.id: spec.sha256 for spec in specs},
        "seconds": round(time.perf_counter() - started, 3),
        "faces": faces,
    }


# --------------------------------------------------------------------------- cli-compare


def cli_compare(faceagent: str, data: Path, pairs: list[tuple[bool, str, str]], jobs: int = 1) -> list[dict[str, Any]]:
    """`faceagent compare --json` on every pair, as a user runs it: one process per pair, `jobs` of them at a
    time (each mostly starts Python on one core: under qemu-user that start is most of its time)."""

    def one(pair: tuple[bool, str, str]) -> dict[str, Any]:
        _, a, b = pair
        t0 = time.perf_counter()
        run = subprocess.run(
            [faceagent, "compare", "--json", str(data / a), str(data / b)], capture_output=True, text=True, timeout=900
        )
        entry: dict[str, Any] = {"a": a, "b": b, "exit": run.returncode, "seconds": round(time.perf_counter() - t0, 2)}
        if run.returncode == 0:
            entry.update(json.loads(run.stdout))
        else:
            entry["stderr"] = run.stderr.strip()
        return entry

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, pairs))  # in the pairs' order, whatever order they finish in


def cli_gallery(faceagent: str, data: Path, pairs: list[tuple[bool, str, str]], db: Path) -> dict[str, Any]:
    """1:N through the agent's own gallery: `faceagent enroll` the first photo of each same pair's person,
    then one `faceagent identify --db --json` over their second photos (should match) and every photo of
    the different pairs (strangers: should match nobody)."""
    enrolled = []
    for same, a, _ in pairs:
        if not same:
            continue
        name = person_of(a).replace("_", " ")
        run = subprocess.run(
            [faceagent, "enroll", "--db", str(db), "--name", name, "--consent-ref", "arm64-check", str(data / a)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        enrolled.append({"person": name, "image": a, "exit": run.returncode, "stderr": run.stderr.strip()})
    probes = [b for same, _, b in pairs if same] + [p for same, a, b in pairs if not same for p in (a, b)]
    run = subprocess.run(
        [faceagent, "identify", "--db", str(db), "--json", *(str(data / p) for p in probes)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    decisions = []
    for line in run.stdout.splitlines():
        face = json.loads(line)
        match = face.get("match")
        image = str(Path(face["image"]).relative_to(data))
        decisions.append(
            {
                "image": image,
                "face": face["face"],
                "truth": person_of(image).replace("_", " "),
                "matched": match.get("name") if isinstance(match, dict) else None,
                "distance": match.get("distance") if isinstance(match, dict) else None,
                "margin": match.get("margin") if isinstance(match, dict) else None,
            }
        )
    # The matcher's threshold and margin in force (an unset [gallery] figure is the embedder's stated one), to tell
    # a borderline decision from a real difference.
    check = subprocess.run([faceagent, "config", "check", "--json"], capture_output=True, text=True, timeout=900)
    settings = json.loads(check.stdout).get("matching", {}) if check.returncode == 0 else {}
    return {
        "enrolled": enrolled,
        "identify_exit": run.returncode,
        "identify_stderr": run.stderr.strip(),
        "decisions": decisions,
        "threshold": settings.get("threshold"),
        "margin": settings.get("margin"),
    }


# --------------------------------------------------------------------------- compare


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + 1e-30)


def read_cli(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[(entry["a"], entry["b"])] = entry
    return out


class Verdicts:
    """Figures and failures. A decision that differs between the two sides fails, unless the two sides'
    distances for it are at most `band` apart: then it sat on the threshold and the difference is the
    embedder arithmetic the cosines already measure (listed as borderline, never silent)."""

    def __init__(self, a_name: str, b_name: str, band: float) -> None:
        self.a_name, self.b_name, self.band = a_name, b_name, band
        self.figures: list[str] = []
        self.failures: list[str] = []
        self.borderline: list[str] = []

    def flip(self, what: str, ref_text: str, other_text: str, shift: float | None, how: str = "distances") -> None:
        line = f"{what}: {ref_text} on {self.a_name} but {other_text} on {self.b_name}"
        detail = "" if shift is None else f" ({how} {shift:.4f}"
        if shift is not None and shift <= self.band:
            self.borderline.append(f"{line}{detail} <= band {self.band})")
        else:
            self.failures.append(f"{line}{detail} > band {self.band})" if detail else line)


def compare(
    ref: dict[str, Any],
    other: dict[str, Any],
    tolerance: float,
    cli: tuple[Path, Path] | None,
    gallery: tuple[Path, Path] | None = None,
    band: float = 0.025,
    mobileface: bool = False,
) -> tuple[list[str], list[str], list[str]]:
    """Returns (figures, borderline decisions, failures); all human-readable lines."""
    a_name, b_name = ref.get("label", ref["machine"]), other.get("label", other["machine"])
    v = Verdicts(a_name, b_name, band)
    for side, name in ((ref, a_name), (other, b_name)):
        v.figures.append(
            f"{name}: {side['runtime']}, numpy {side['numpy']}, Pillow {side['pillow']}, "
            f"{len(side['faces'])} faces in {side['total_seconds']} s"
        )
    for key in ("detector", "embedder"):
        if ref[key] != other[key]:
            v.failures.append(f"the two sides used different {key}s: {ref[key]} vs {other[key]}")
    if set(ref["faces"]) != set(other["faces"]):
        v.failures.append("the two sides embedded different sets of faces (different pairs files?)")

    cosines: list[tuple[float, str]] = []
    same_pixels = same_chips = 0
    for image, r in sorted(ref["faces"].items()):
        o = other["faces"].get(image)
        if o is None:
            continue
        same_pixels += r["pixels_sha256"] == o["pixels_sha256"]
        if r["found"] != o["found"]:
            v.failures.append(f"{image}: face found on {a_name if r['found'] else b_name} only")
            continue
        if not r["found"]:
            continue
        same_chips += r["chip_sha256"] == o["chip_sha256"]
        cosines.append((cosine(r["embedding"], o["embedding"]), image))
    cosines.sort()
    below = [(c, image) for c, image in cosines if c < tolerance]
    if cosines:
        worst_c, worst_image = cosines[0]
        median = cosines[len(cosines) // 2][0]
        v.figures.append(
            f"embeddings: {len(cosines)} faces, worst cosine {worst_c:.6f} ({worst_image}), "
            f"median {median:.6f}, tolerance {tolerance}"
        )
        v.figures.append(
            f"decoded pixels identical for {same_pixels}/{len(ref['faces'])} images, "
            f"aligned chips identical for {same_chips}/{len(cosines)} faces"
        )
    else:
        v.failures.append("no face was embedded on both sides")
    if tolerance > 1.0:
        v.failures.append(f"tolerance {tolerance} is above 1: no cosine can meet it")
    for c, image in below[:10]:
        v.failures.append(f"{image}: cosine {c:.6f} < tolerance {tolerance}")
    if len(below) > 10:
        v.failures.append(f"... and {len(below) - 10} more faces below tolerance {tolerance}")

    # Pair decisions from the embeddings.
    threshold = ref["embedder"]["threshold"]
    flips = 0
    max_delta = 0.0
    margin = math.inf
    correct = [0, 0]
    counted = 0
    ref_pairs = {(p["a"], p["b"]): p for p in ref["pairs"]}
    for p in other["pairs"]:
        r = ref_pairs.get((p["a"], p["b"]))
        if r is None or "same" not in r or "same" not in p:
            continue
        counted += 1
        delta = abs(r["distance"] - p["distance"])
        max_delta = max(max_delta, delta)
        margin = min(margin, abs(r["distance"] - threshold))
        correct[0] += r["same"] == r["truth_same"]
        correct[1] += p["same"] == p["truth_same"]
        if r["same"] != p["same"]:
            flips += 1
            v.flip(
                f"pair {p['a']} / {p['b']}",
                f"{'same' if r['same'] else 'different'} ({r['distance']:.4f})",
                f"{'same' if p['same'] else 'different'} ({p['distance']:.4f})",
                delta,
                "distances apart by",
            )
    v.figures.append(
        f"pair decisions (same/different at {threshold}): {counted} compared, {flips} differ; "
        f"max |distance difference| {max_delta:.5f}; closest pair to the threshold {margin:.4f} away; "
        f"correct vs LFW truth {correct[0]}/{counted} ({a_name}), {correct[1]}/{counted} ({b_name})"
    )

    # 1:N (leave-one-out) matched person.
    flips = 0
    for image, r in sorted(ref["matches"].items()):
        o = other["matches"].get(image)
        if o is not None and r["matched"] != o["matched"]:
            flips += 1
            shift = abs(r["distance"] - o["distance"])
            v.flip(f"1:N {image}", r["matched"] or "nobody", o["matched"] or "nobody", shift, "distances apart by")
    v.figures.append(
        f"1:N matched-person decisions (leave-one-out over the set): {len(ref['matches'])} compared, {flips} differ"
    )

    # The CLI's own `faceagent compare --json` verdicts.
    if cli is not None:
        ref_cli, other_cli = read_cli(cli[0]), read_cli(cli[1])
        flips = 0
        max_delta = 0.0
        for key, r in ref_cli.items():
            o = other_cli.get(key)
            if o is None:
                v.failures.append(f"faceagent compare {key[0]} {key[1]}: no result on {b_name}")
                continue
            if r.get("exit") != o.get("exit"):
                exits = f"exit {r.get('exit')} on {a_name}, {o.get('exit')} on {b_name}"
                v.failures.append(f"faceagent compare {key[0]} {key[1]}: {exits}")
                continue
            if "same" in r:
                delta = abs(r["distance"] - o["distance"])
                max_delta = max(max_delta, delta)
                if r["same"] != o["same"]:
                    flips += 1
                    v.flip(
                        f"faceagent compare {key[0]} {key[1]}",
                        f"same={r['same']} ({r['distance']})",
                        f"same={o['same']} ({o['distance']})",
                        delta,
                        "distances apart by",
                    )
        v.figures.append(
            f"`faceagent compare --json` decisions: {len(ref_cli)} compared, {flips} differ; "
            f"max |distance difference| {max_delta:.4f}"
        )
    if gallery is not None:
        compare_gallery(json.loads(gallery[0].read_text()), json.loads(gallery[1].read_text()), v)
    if mobileface:
        compare_mobileface(ref, other, tolerance, v)
    v.figures.append(f"borderline decisions (differ, but sat on the threshold): {len(v.borderline)}")
    return v.figures, v.borderline, v.failures


def compare_gallery(ref: dict[str, Any], other: dict[str, Any], v: Verdicts) -> None:
    for side, name in ((ref, v.a_name), (other, v.b_name)):
        for e in side["enrolled"]:
            if e["exit"] != 0:
                v.failures.append(f"faceagent enroll {e['image']} exited {e['exit']} on {name}: {e['stderr']}")
        if side["identify_exit"] not in (0, 2):  # 2: an image without a face, which the decisions then show
            v.failures.append(
                f"faceagent identify --db exited {side['identify_exit']} on {name}: {side['identify_stderr']}"
            )
    ref_d = {(d["image"], d["face"]): d for d in ref["decisions"]}
    other_d = {(d["image"], d["face"]): d for d in other["decisions"]}
    for key in sorted(set(ref_d) ^ set(other_d)):
        side = v.a_name if key in ref_d else v.b_name
        v.failures.append(f"faceagent identify {key[0]}: face {key[1]} found on {side} only")
    threshold, margin = ref.get("threshold"), ref.get("margin")
    flips = 0
    for key in sorted(set(ref_d) & set(other_d)):
        r, o = ref_d[key], other_d[key]
        if r["matched"] == o["matched"]:
            continue
        flips += 1
        shift = None  # two different people, or no settings to judge by: never borderline
        if not (r["matched"] and o["matched"]) and threshold is not None and margin is not None:
            # "unknown" reports no distance: the matched side's slack (below the threshold, or of its margin
            # over the required one) is how far the two sides' distances are at most apart.
            hit = r if r["matched"] else o
            hit_margin = math.inf if hit["margin"] is None else hit["margin"]
            shift = min(threshold - hit["distance"], hit_margin - margin)
        v.flip(
            f"faceagent identify --db {key[0]} face {key[1]}",
            f"{r['matched'] or 'unknown'} ({r['distance']})",
            f"{o['matched'] or 'unknown'} ({o['distance']})",
            shift,
            "matched side inside its threshold/margin by",
        )
    enrolled = {e["person"] for e in ref["enrolled"]}
    correct = [
        sum((d["matched"] == d["truth"]) if d["truth"] in enrolled else d["matched"] is None for d in side)
        for side in (ref["decisions"], other["decisions"])
    ]
    v.figures.append(
        f"1:N matched-person decisions via `faceagent enroll` + `identify --db` ({len(enrolled)} enrolled, "
        f"strangers included; threshold {threshold}, margin {margin}): {len(set(ref_d) & set(other_d))} compared, "
        f"{flips} differ; right person or 'unknown' for a stranger: {correct[0]}/{len(ref_d)} ({v.a_name}), "
        f"{correct[1]}/{len(other_d)} ({v.b_name})"
    )


def low_figures(values: list[float]) -> tuple[float, float, float]:
    """(min, 5th percentile, median): the lowest, the low tail, the typical case (the percentile interpolated as
    numpy's default interpolates it)."""
    ordered = sorted(values)
    p5 = statistics.quantiles(ordered, n=20, method="inclusive")[0] if len(ordered) > 1 else ordered[0]
    return ordered[0], p5, statistics.median(ordered)


def compare_mobileface(ref: dict[str, Any], other: dict[str, Any], tolerance: float, v: Verdicts) -> None:
    """Issue 12's MobileFace int8-against-float32 figure on both sides, from the same chips. Equal means: each of
    min / 5th percentile / median at most 1 - tolerance apart (the margin one face's embeddings get), and the float32
    embeddings, the figure's reference, at cosine >= tolerance. The int8 embeddings themselves are listed, not
    judged: the int8 kernels round differently per architecture about as much as int8 differs from float32 (the
    fused default's MobileFace member is judged inside the fused vector above). The issue's target is a line of
    its own, never a failure: x86-64 misses it too."""
    sides = [(side.get("mobileface"), side.get("label", side["machine"])) for side in (ref, other)]
    missing = [name for measured, name in sides if measured is None]
    if missing:
        v.failures.append(f"no MobileFace int8/float32 embeddings from {', '.join(missing)} (embed --mobileface-chips)")
        return
    (r, a_name), (o, b_name) = sides
    if r["models"] != o["models"]:
        v.failures.append(f"the two sides ran different MobileFace builds: {r['models']} vs {o['models']}")
    chips = {image: face["chip_sha256"] for image, face in r["faces"].items()}
    if chips != {image: face["chip_sha256"] for image, face in o["faces"].items()}:
        v.failures.append("the two sides ran MobileFace on different chips (not the same mobileface-chips file)")
        return
    if not chips:
        v.failures.append("no MobileFace chip to compare on")
        return
    images = sorted(chips)
    figures = [
        low_figures([cosine(side["faces"][i]["int8"], side["faces"][i]["float32"]) for i in images]) for side in (r, o)
    ]
    allowed = 1.0 - tolerance
    differences = [abs(x - y) for x, y in zip(*figures, strict=True)]
    text = ["{:.6f} / {:.6f} / {:.6f}".format(*side) for side in figures]
    v.figures.append(
        f"MobileFace V2 int8 vs float32 on the same {len(images)} chips (cosine min / 5th pct / median): "
        f"{text[0]} ({a_name}), {text[1]} ({b_name}); largest difference {max(differences):.6f}, "
        f"allowed 1 - tolerance = {allowed:.6f}"
    )
    for what, x, y, d in zip(("min", "5th percentile", "median"), *figures, differences, strict=True):
        if d > allowed:
            v.failures.append(
                f"MobileFace int8 vs float32 {what}: {x:.6f} on {a_name} but {y:.6f} on {b_name} "
                f"({d:.6f} apart > 1 - tolerance {allowed:.6f})"
            )
    across = {
        build: sorted((cosine(r["faces"][i][build], o["faces"][i][build]), i) for i in images)
        for build in ("float32", "int8")
    }
    v.figures.append(
        f"MobileFace V2 embeddings, {a_name} vs {b_name}: float32 worst cosine {across['float32'][0][0]:.7f} "
        f"(judged at tolerance {tolerance}); int8 worst {across['int8'][0][0]:.6f}, median "
        f"{statistics.median(c for c, _ in across['int8']):.6f} (listed: the kernels' rounding)"
    )
    for c, image in [(c, i) for c, i in across["float32"] if c < tolerance][:10]:
        v.failures.append(f"{image}: MobileFace float32 cosine {c:.6f} < tolerance {tolerance}")
    verdict = "met" if min(side[0] for side in figures) >= MOBILEFACE_TARGET else "not met"
    v.figures.append(
        f"target (issue 12): int8 vs float32 >= {MOBILEFACE_TARGET} on every face: lowest {figures[0][0]:.6f} "
        f"({a_name}), {figures[1][0]:.6f} ({b_name}): {verdict} (a target line, not a check)"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sel = commands.add_parser("select", help="write the fixed pairs file")
    sel.add_argument("--data", type=Path, required=True)
    sel.add_argument("--same", type=int, default=10)
    sel.add_argument("--different", type=int, default=10)
    sel.add_argument("--out", type=Path, required=True)
    emb = commands.add_parser("embed", help="embed every face of the pairs file with the installed agent")
    emb.add_argument("--data", type=Path, required=True)
    emb.add_argument("--pairs", type=Path, required=True)
    emb.add_argument("--threads", type=int, default=2)
    emb.add_argument("--label", help="name of this side in reports (default: the machine, e.g. aarch64)")
    emb.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], help="force a TFLite runtime")
    emb.add_argument(
        "--mobileface-chips", type=Path, help="also MobileFace V2 int8 and float32 on these chips (mobileface-chips)"
    )
    emb.add_argument("--out", type=Path, required=True)
    mfc = commands.add_parser("mobileface-chips", help="MobileFace V2's chips of the pairs' faces, for every side")
    mfc.add_argument("--data", type=Path, required=True)
    mfc.add_argument("--pairs", type=Path, required=True)
    mfc.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime"], help="force a TFLite runtime")
    mfc.add_argument("--out", type=Path, required=True, help="the chips file to write (.npz)")
    cli = commands.add_parser("cli-compare", help="run `faceagent compare --json` on every pair")
    cli.add_argument("--faceagent", required=True, help="path of the faceagent command")
    cli.add_argument("--data", type=Path, required=True)
    cli.add_argument("--pairs", type=Path, required=True)
    cli.add_argument("--out", type=Path, required=True)
    cli.add_argument("--jobs", type=int, default=1, help="pairs compared at a time, one process each (default 1)")
    gal = commands.add_parser("cli-gallery", help="faceagent enroll + identify --db on the pairs' people")
    gal.add_argument("--faceagent", required=True, help="path of the faceagent command")
    gal.add_argument("--data", type=Path, required=True)
    gal.add_argument("--pairs", type=Path, required=True)
    gal.add_argument("--db", type=Path, required=True, help="gallery file to create (must not exist)")
    gal.add_argument("--out", type=Path, required=True)
    cmp_ = commands.add_parser("compare", help="compare two embed outputs; exit 1 on any difference")
    cmp_.add_argument("reference", type=Path)
    cmp_.add_argument("other", type=Path)
    cmp_.add_argument("--tolerance", type=float, default=0.999, help="lowest allowed cosine (default 0.999)")
    cmp_.add_argument(
        "--decision-band",
        type=float,
        default=0.025,
        help="a differing decision is borderline (reported, not failed) when the two sides' distances for it "
        "are at most this far apart (default 0.025; 0 = every differing decision fails)",
    )
    cmp_.add_argument(
        "--cli",
        type=Path,
        nargs=2,
        metavar=("REF_JSONL", "OTHER_JSONL"),
        help="`faceagent compare --json` results of both sides",
    )
    cmp_.add_argument(
        "--gallery", type=Path, nargs=2, metavar=("REF_JSON", "OTHER_JSON"), help="cli-gallery results of both sides"
    )
    cmp_.add_argument(
        "--mobileface",
        action="store_true",
        help="also compare MobileFace V2's int8-vs-float32 figures (both sides embedded with --mobileface-chips)",
    )
    args = parser.parse_args(argv)

    if args.command == "select":
        write_pairs(select_pairs(args.data, args.same, args.different), args.out)
        return 0
    if args.command == "embed":
        result = embed(args.data, read_pairs(args.pairs), args.threads, args.label, args.runtime, args.mobileface_chips)
        args.out.write_text(json.dumps(result, indent=1))
        found = sum(f["found"] for f in result["faces"].values())
        print(
            f"{result['label']}: embedded {found}/{len(result['faces'])} faces in {result['total_seconds']} s "
            f"({result['runtime']}) -> {args.out}"
        )
        if "mobileface" in result:
            mobileface = result["mobileface"]
            print(
                f"{result['label']}: MobileFace V2 int8 and float32 on {len(mobileface['faces'])} chips "
                f"in {mobileface['seconds']} s"
            )
        return 0
    if args.command == "mobileface-chips":
        images = make_mobileface_chips(args.data, read_pairs(args.pairs), args.out, args.runtime)
        print(f"{platform.machine()}: MobileFace V2 chips of {len(images)} faces -> {args.out}")
        return 0
    if args.command == "cli-compare":
        started = time.perf_counter()
        results = cli_compare(args.faceagent, args.data, read_pairs(args.pairs), args.jobs)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in results))
        failed = [r for r in results if r["exit"] != 0]
        seconds = sum(r["seconds"] for r in results)
        print(
            f"{platform.machine()}: faceagent compare on {len(results)} pairs, {seconds:.1f} s of processes, "
            f"{args.jobs} at a time: {time.perf_counter() - started:.1f} s -> {args.out}"
        )
        for r in failed:
            print(f"faceagent compare {r['a']} {r['b']} exited {r['exit']}: {r['stderr']}", file=sys.stderr)
        return 1 if failed else 0
    if args.command == "cli-gallery":
        if args.db.exists():
            raise SystemExit(f"{args.db} exists: the gallery check starts from an empty gallery")
        started = time.perf_counter()
        result = cli_gallery(args.faceagent, args.data, read_pairs(args.pairs), args.db)
        args.out.write_text(json.dumps(result, indent=1))
        ok = sum(e["exit"] == 0 for e in result["enrolled"])
        print(
            f"{platform.machine()}: enrolled {ok}/{len(result['enrolled'])} people, identified "
            f"{len(result['decisions'])} faces in {time.perf_counter() - started:.1f} s -> {args.out}"
        )
        return 0
    figures, borderline, failures = compare(
        json.loads(args.reference.read_text()),
        json.loads(args.other.read_text()),
        args.tolerance,
        tuple(args.cli) if args.cli else None,
        tuple(args.gallery) if args.gallery else None,
        args.decision_band,
        args.mobileface,
    )
    for line in figures:
        print(f"  {line}")
    for line in borderline:
        print(f"  borderline: {line}")
    if failures:
        print(f"PARITY FAILED ({len(failures)} problem{'s' if len(failures) > 1 else ''}):", file=sys.stderr)
        for line in failures:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print("  parity: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

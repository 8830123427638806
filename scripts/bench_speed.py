"""Speed benchmark: faceagent's pipeline against the face_recognition library on the Hamilton clip frames.

Run from the repository root, in the project venv (face_recognition installed with `pip install --no-deps
face_recognition`; its dlib comes from dlib-bin):

    .venv/bin/python scripts/bench_speed.py --out /tmp/bench_speed.json        # every side, 1 pass
    .venv/bin/python scripts/bench_speed.py --repeat 3 --threads 1
    .venv/bin/python scripts/bench_speed.py --runtime tflite-runtime            # ours under one runtime only
    .venv/bin/python scripts/bench_speed.py --only ours                         # one side, in this process
    .venv/bin/python scripts/bench_speed.py --live --embedder fused-dlib-mobileface-mixed   # the service's loop

What it measures, on every frame of shared/data/sequence/hamilton_clip/frames/*.jpg (640x360), after
a few warm-up frames, for `--repeat` passes:
- ours (the default detector and embedder of the model manifest), under every installed TFLite runtime
  (ai-edge-litert, tflite-runtime; or `--runtime`), each its own side, per frame: decode (`load_image`),
  detect (split into the interpreter's `invoke()` time, from the model's InvokeClock, and our pre/post-
  processing), align and embed (invoke vs the rest) for every face found; total per frame, frames/s,
  mean / p50 / p95.
- face_recognition: decode the same way, then HOG `face_locations` and `face_encodings` for all faces.
- The speed ratio (our fps / library fps, decode included on both sides; target >= 15x) and our
  overhead: everything except the two models' invoke() time and the decode, as a percentage of the
  invoke time (target <= 25%).
- Peak RSS (ru_maxrss) and CPU time of each side: each side runs in its own subprocess (this script
  re-invoked with `--only`), one after the other.
`--live` runs the agent's own loop (`AgentService` on the clip, a gallery of `--templates`) and prints the mean,
p50 and p95 of its per-frame compute, then both sides above on the same frames, and two ratios of
face_recognition's mean per-frame cost (decode excluded): over the live loop's, which is not the same work (the
loop embeds a face only until its track is decided; the library embeds every face of every frame), and over our
pipeline doing the library's work.
The two sides may find different numbers of faces; both counts are printed. Timings on a machine
shared with other work are noisy: the load average at the start is printed with them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import (
    format_table,
    import_face_recognition,
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
from PIL import Image

from agent.vision.image import load_image
from agent.vision.runtime import BACKENDS, installed_runtimes

FRAMES = Path("sequence/hamilton_clip/frames")
SIDES = ("ours", "face_recognition")
TARGET_SPEEDUP = 15.0  # issue 12: >= 15x face_recognition's frame rate at 2 threads (aim for 20x)
TARGET_OVERHEAD_PCT = 25.0

OUR_STAGES = ("decode", "detect_invoke", "detect_other", "align", "embed_invoke", "embed_other")
LIBRARY_STAGES = ("decode", "locate", "encode")


def frame_paths(data: Path) -> list[Path]:
    frames = sorted((data / FRAMES).glob("*.jpg"))
    if not frames:
        sys.exit(f"error: no frames in {data / FRAMES}; pass --data DIR (the shared data folder)")
    return frames


def percentiles(values: np.ndarray) -> dict[str, float]:
    return {
        "mean_ms": 1000 * float(values.mean()),
        "p50_ms": 1000 * float(np.percentile(values, 50)),
        "p95_ms": 1000 * float(np.percentile(values, 95)),
    }


# -------------------------------------------------------------------------------------------- our side


def run_ours(
    frames: Sequence[Path], threads: int, warmup: int, repeat: int, runtime: str | None, embedder: str | None = None
) -> dict[str, Any]:
    """Time each stage of our pipeline on every frame: the same calls `FacePipeline.analyse` makes."""
    pipeline = load_pipeline(embedder, threads, runtime=runtime)
    # The second detection pass may run another model (a manifest's `refine_with`): count both clocks.
    detector_models = {id(m): m for m in (pipeline.detector.model, pipeline.detector.refiner.model)}.values()
    embedder_clock = pipeline.embedder.model.clock
    clock = time.perf_counter

    def detector_seconds() -> float:
        return sum(m.clock.seconds for m in detector_models)

    def one_frame(path: Path) -> tuple[list[float], list[np.ndarray]]:
        t0 = clock()
        rgb = load_image(path)
        t1 = clock()
        d_inv = detector_seconds()
        image = Image.fromarray(rgb)  # analyse() converts once per frame; counted as detection pre-processing
        faces = pipeline.detector.detect(image)
        t2 = clock()
        d_inv = detector_seconds() - d_inv
        align = e_inv = 0.0  # align: everything in embedding but the invokes (embed_other stays 0)
        embeddings = []
        for face in faces:
            # Align and embed as one call: a fused embedder aligns once per member (its invokes on one clock).
            a0 = clock()
            before = embedder_clock.seconds
            embeddings.append(pipeline.embedder.embed_face(image, face.keypoints)[1])
            a2 = clock()
            invoked = embedder_clock.seconds - before
            e_inv += invoked
            align += (a2 - a0) - invoked
        return [t1 - t0, d_inv, (t2 - t1) - d_inv, align, e_inv, 0.0], embeddings

    for path in frames[:warmup]:
        # The stage-by-stage calls above must do what analyse() does, or the figures time something else.
        _, embeddings = one_frame(path)
        reference = [f.embedding for f in pipeline.analyse(load_image(path))]
        if len(reference) != len(embeddings) or not all(map(np.array_equal, reference, embeddings)):
            sys.exit("error: the timed stages no longer match FacePipeline.analyse(); update bench_speed.py")
    rows, faces = [], []
    cpu0, wall0 = time.process_time(), clock()
    for _ in range(repeat):
        for path in frames:
            stages, embeddings = one_frame(path)
            rows.append(stages)
            faces.append(len(embeddings))
    cpu, wall = time.process_time() - cpu0, clock() - wall0
    times = np.array(rows)  # frames x stages, seconds
    face_counts = np.array(faces)
    total = times.sum(axis=1)
    no_decode = total - times[:, 0]
    invoke = times[:, 1] + times[:, 4]
    faces_total = int(face_counts.sum())
    return {
        "side": "ours",
        "setup": pipeline_description(pipeline) | {"threads": threads},
        "frames": len(rows),
        "faces": faces_total,
        "frames_with_faces": int((face_counts > 0).sum()),
        "stages_ms_per_frame": {s: 1000 * float(times[:, i].mean()) for i, s in enumerate(OUR_STAGES)},
        "stages_ms_per_face": {
            s: 1000 * float(times[:, OUR_STAGES.index(s)].sum() / faces_total) if faces_total else None
            for s in ("align", "embed_invoke", "embed_other")
        },
        "total": percentiles(total),
        "total_without_decode": percentiles(no_decode),
        "fps": len(rows) / float(total.sum()),
        "fps_without_decode": len(rows) / float(no_decode.sum()),
        "invoke_s": float(invoke.sum()),
        "overhead_s": float((no_decode - invoke).sum()),
        "overhead_pct_of_invoke": 100 * float((no_decode - invoke).sum() / invoke.sum()),
        "cpu_s": cpu,
        "wall_s": wall,
    }


# ---------------------------------------------------------------------------------------- library side


def run_library(frames: Sequence[Path], warmup: int, repeat: int) -> dict[str, Any]:
    face_recognition = import_face_recognition()
    clock = time.perf_counter

    def one_frame(path: Path) -> tuple[list[float], int]:
        t0 = clock()
        rgb = load_image(path)
        t1 = clock()
        locations = face_recognition.face_locations(rgb)  # HOG, upsample once: the library's defaults
        t2 = clock()
        face_recognition.face_encodings(rgb, locations)
        t3 = clock()
        return [t1 - t0, t2 - t1, t3 - t2], len(locations)

    for path in frames[:warmup]:
        one_frame(path)
    rows, faces = [], []
    cpu0, wall0 = time.process_time(), clock()
    for _ in range(repeat):
        for i, path in enumerate(frames, 1):
            stages, count = one_frame(path)
            rows.append(stages)
            faces.append(count)
            if i % 50 == 0:
                progress(f"[face_recognition] {i}/{len(frames)} frames")
    cpu, wall = time.process_time() - cpu0, clock() - wall0
    times = np.array(rows)
    face_counts = np.array(faces)
    total = times.sum(axis=1)
    no_decode = total - times[:, 0]
    faces_total = int(face_counts.sum())
    return {
        "side": "face_recognition",
        "setup": {"versions": library_versions(), "detector": "HOG, upsample 1", "landmarks": "5-point"},
        "frames": len(rows),
        "faces": faces_total,
        "frames_with_faces": int((face_counts > 0).sum()),
        "stages_ms_per_frame": {s: 1000 * float(times[:, i].mean()) for i, s in enumerate(LIBRARY_STAGES)},
        "stages_ms_per_face": {"encode": 1000 * float(times[:, 2].sum() / faces_total) if faces_total else None},
        "total": percentiles(total),
        "total_without_decode": percentiles(no_decode),
        "fps": len(rows) / float(total.sum()),
        "fps_without_decode": len(rows) / float(no_decode.sum()),
        "cpu_s": cpu,
        "wall_s": wall,
    }


# ---------------------------------------------------------------------------------------------- report


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_side(result: dict[str, Any]) -> None:
    side = result["side"]
    setup = result["setup"]
    if side == "ours":
        print(
            f"ours: runtime {setup['runtime']}, interpreter threads {setup['threads']}; detector "
            f"{model_label(setup['detector'])}; embedder {model_label(setup['embedder'])}; manifest sha256 "
            f"{setup['manifest_sha256'][:12]}, agent/vision code sha256 {setup['vision_code_sha256'][:12]}"
        )
    else:
        versions = ", ".join(f"{k} {v}" for k, v in setup["versions"].items())
        print(
            f"face_recognition: {versions}; {setup['detector']}, {setup['landmarks']} landmarks "
            "(dlib sets no thread count)"
        )
    print(
        f"  {result['frames']} frames timed, {result['faces']} faces found "
        f"({result['frames_with_faces']} frames with >= 1 face); peak RSS {result['max_rss_mb']:.0f} MB; "
        f"CPU {result['cpu_s']:.1f} s in {result['wall_s']:.1f} s wall ({result['cpu_s'] / result['wall_s']:.2f} "
        "cores busy on average)"
    )
    print(f"  load average before {result['load_average_before']}; after {result['load_average_after']}")
    per_face = result["stages_ms_per_face"]
    rows = [[stage, ms(value), ms(per_face.get(stage))] for stage, value in result["stages_ms_per_frame"].items()]
    rows.append(["total", ms(result["total"]["mean_ms"]), ""])
    print(format_table(["stage", "ms/frame (mean)", "ms/face (mean)"], rows))
    total, bare = result["total"], result["total_without_decode"]
    print(
        f"  per frame: mean {total['mean_ms']:.2f} ms, p50 {total['p50_ms']:.2f}, p95 {total['p95_ms']:.2f}; "
        f"{result['fps']:.1f} frames/s"
    )
    print(
        f"  without decode: mean {bare['mean_ms']:.2f} ms, p50 {bare['p50_ms']:.2f}, p95 {bare['p95_ms']:.2f}; "
        f"{result['fps_without_decode']:.1f} frames/s"
    )
    if side == "ours":
        print(
            f"  models' invoke() {result['invoke_s']:.2f} s, everything else but decode {result['overhead_s']:.2f} s "
            f"= {result['overhead_pct_of_invoke']:.1f}% of invoke"
        )


def print_comparison(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of our runtimes against the library (speed ratio) and against its own invoke time (overhead)."""
    library = results.get("face_recognition")
    ours_sides = [r for r in results.values() if r["side"] == "ours"]
    targets = []

    def target(name: str, ok: bool | None, detail: str) -> None:
        targets.append({"target": name, "pass": ok, "detail": detail})
        print(verdict(ok, name, detail))

    print()
    if not ours_sides:
        target(f"speed ratio >= {TARGET_SPEEDUP:.0f}x", None, "our side not run")
    for ours in ours_sides:
        runtime = ours["setup"]["runtime"]
        if library:
            ratio = ours["fps"] / library["fps"]
            print(
                f"speed ratio ours ({runtime}) / face_recognition: {ratio:.1f}x with decode "
                f"({ours['fps']:.1f} vs {library['fps']:.2f} frames/s), "
                f"{ours['fps_without_decode'] / library['fps_without_decode']:.1f}x without; faces found: ours "
                f"{ours['faces']}, face_recognition {library['faces']} in {ours['frames']} / {library['frames']} frames"
            )
            target(f"speed ratio >= {TARGET_SPEEDUP:.0f}x ({runtime})", ratio >= TARGET_SPEEDUP, f"{ratio:.1f}x")
        else:
            target(f"speed ratio >= {TARGET_SPEEDUP:.0f}x ({runtime})", None, "face_recognition not run")
        overhead = ours["overhead_pct_of_invoke"]
        target(
            f"overhead <= {TARGET_OVERHEAD_PCT:.0f}% of invoke time ({runtime})",
            overhead <= TARGET_OVERHEAD_PCT,
            f"{overhead:.1f}%",
        )
    return targets


def print_live_ratios(live: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """face_recognition's per-frame cost over the live loop's, and over our pipeline doing the library's work.

    Decode is left out of all three: the live loop's clock starts at a decoded frame (the source decodes)."""
    library = peers["face_recognition"]["total_without_decode"]["mean_ms"]
    every_frame = peers["ours"]["total_without_decode"]["mean_ms"]
    loop = live["latency_ms"]["total"]["mean"]
    ratios = {"live_loop": library / loop, "every_frame": library / every_frame}
    print()
    print(
        f"face_recognition per frame (HOG, landmarks and an encoding of every face, decode excluded): mean "
        f"{library:.2f} ms; our live loop's per-frame compute: mean {loop:.2f} ms; our pipeline embedding every "
        f"face of every frame: mean {every_frame:.2f} ms"
    )
    print(
        f"ratio against the live loop: {ratios['live_loop']:.1f}x. Not the same work: the live loop detects on "
        f"every frame but embeds a face only until its track is decided ({live['embeddings']} embeddings for "
        f"{live['faces']} faces here), while face_recognition embeds every face of every frame."
    )
    print(
        f"ratio for the same work (our pipeline also embedding every face of every frame): {ratios['every_frame']:.1f}x"
    )
    return ratios


# ------------------------------------------------------------------------------------------------ main


def run_side(side: str, args: argparse.Namespace, frames: Sequence[Path], runtime: str | None) -> dict[str, Any]:
    load_before = load_average()
    if side == "ours":
        result = run_ours(frames, args.threads, args.warmup, args.repeat, runtime, args.embedder)
    else:
        result = run_library(frames, args.warmup, args.repeat)
    result["load_average_before"], result["load_average_after"] = load_before, load_average()
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def run_in_subprocess(side: str, args: argparse.Namespace, data: Path, runtime: str | None) -> dict[str, Any]:
    """Run one side in a fresh interpreter so its peak RSS is its own; its table goes to our stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{side}.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--only",
            side,
            "--data",
            str(data),
            "--threads",
            str(args.threads),
            "--warmup",
            str(args.warmup),
            "--repeat",
            str(args.repeat),
            "--out",
            str(out),
            *(["--runtime", runtime] if runtime else []),
            *(["--embedder", args.embedder] if args.embedder else []),
        ]
        sys.stdout.flush()
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            sys.exit(f"error: the {side} side failed (exit {completed.returncode})")
        return json.loads(out.read_text(encoding="utf-8"))["sides"][side]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="shared data folder (default: <repo>/../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads for our pipeline (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over all frames (default 1)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames run first (default 5)")
    parser.add_argument("--only", choices=SIDES, help="run one side in this process (no subprocess)")
    parser.add_argument(
        "--runtime",
        action="append",
        choices=[b.name for b in BACKENDS],
        help="TFLite runtime(s) for our side (repeatable; default: every installed one, each its own side)",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--embedder", help="manifest id of the embedder (default: the manifest's default)")
    parser.add_argument("--live", action="store_true", help="the whole live loop on the clip (faceagent run)")
    parser.add_argument("--templates", type=int, default=10_000, help="gallery size for --live (default 10,000)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeat and --threads must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = resolve_data_dir(args.data, [str(FRAMES)])
    if args.live:
        from _bench_live import print_live, run_live  # the agent's service: only for --live

        runtime = args.runtime[0] if args.runtime else None
        load_before = load_average()
        result = run_live(data, args.threads, args.templates, args.embedder, runtime)
        result["load_average_before"], result["load_average_after"] = load_before, load_average()
        ok = print_live(result)
        print(f"  load average before {load_before}; after {result['load_average_after']}")
        peers = {}
        for side in SIDES:  # the same frames, each side in its own subprocess, in this run
            print()
            progress(f"running the {side} side in a subprocess (the peers of the live loop)")
            peers[side] = run_in_subprocess(side, args, data, runtime if side == "ours" else None)
        ratios = print_live_ratios(result, peers)
        if args.out:
            write_json(args.out, {"live": result, "peers": peers, "ratios": ratios, "load_average": load_average()})
        return 0 if ok else 1
    frames = frame_paths(data)
    meta = {
        "frames_dir": str(data / FRAMES),
        "frames": len(frames),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "threads": args.threads,
        "load_average": load_average(),
    }
    runtimes = args.runtime or [r.name for r in installed_runtimes()]
    if args.only:
        results = {args.only: run_side(args.only, args, frames, runtimes[0] if args.only == "ours" else None)}
        print_side(results[args.only])
        targets: list[dict[str, Any]] = []
    else:
        print("== faceagent speed benchmark ==")
        print(
            f"{len(frames)} frames from {meta['frames_dir']}, {args.warmup} warm-up, {args.repeat} pass(es); "
            f"load average at start: {meta['load_average']}"
        )
        results = {}
        for side, runtime in [*(("ours", r) for r in runtimes), ("face_recognition", None)]:
            print()
            label = f"{side} ({runtime})" if runtime else side
            progress(f"running the {label} side in a subprocess")
            results[label] = run_in_subprocess(side, args, data, runtime)
        targets = print_comparison(results)
    if args.out:
        write_json(args.out, {"meta": meta, "sides": results, "targets": targets})
        progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

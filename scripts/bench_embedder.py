"""Per-face invoke time of embedders from the model manifest, at 1 and 2 threads, under each TFLite runtime.

Loads each model through the model store (sha256 checked) with every installed runtime (or `--runtime`)
and times `invoke()` alone on chips of the model's input size (random pixels: the time does not depend on
them), the runtimes one after the other for each model and thread count, so they share the machine's load.
Timings on a shared machine are noisy: the load average is printed with each line.

    .venv/bin/python scripts/bench_embedder.py mobileface-v2-int8-mixed mobileface-v2-float32 dlib-resnet29-int8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.vision.modelstore import ModelStore
from agent.vision.runtime import BACKENDS, TfliteModel, installed_runtimes, select_runtime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="embedder ids from the manifest")
    ap.add_argument("--runs", type=int, default=200, help="timed invokes per model and thread count")
    ap.add_argument("--models-dir", type=Path, help="models folder (default: the shipped one)")
    ap.add_argument("--runtime", action="append", choices=[b.name for b in BACKENDS], help="(repeatable)")
    args = ap.parse_args()
    store = ModelStore(args.models_dir)
    runtimes = [select_runtime(name) for name in args.runtime] if args.runtime else installed_runtimes()
    print("runtimes: " + ", ".join(r.describe() for r in runtimes))
    rng = np.random.default_rng(0)
    for model_id in args.models:
        spec = store.spec(model_id, "embedder")
        content = store.read_verified(spec)
        for threads, runtime in ((t, r) for t in (1, 2) for r in runtimes):
            model = TfliteModel(runtime.load(content, threads))
            chip = rng.integers(0, 256, model.input_shape).astype(np.float32)
            for _ in range(10):
                model.run(chip)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model.run(chip)
                times.append((time.perf_counter() - t0) * 1000)
            print(
                f"{model_id:24s} {spec.bytes:>10,} B  {runtime.describe():22s} threads {threads}: "
                f"median {statistics.median(times):.2f} ms, mean {statistics.fmean(times):.2f} ms ({args.runs} runs); "
                f"load {os.getloadavg()[0]:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-face invoke time of embedders from the model manifest, at 1 and 2 interpreter threads.

Loads each model through the model store (sha256 checked) with the project's runtime and times
`invoke()` alone on chips of the model's input size (random pixels: the time does not depend on them).
Timings on a shared machine are noisy: the load average is printed with them.

    .venv/bin/python scripts/bench_embedder.py mobileface-v2-int8 mobileface-v2-float32 dlib-resnet29-int8
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
from agent.vision.runtime import TfliteModel, select_runtime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="embedder ids from the manifest")
    ap.add_argument("--runs", type=int, default=200, help="timed invokes per model and thread count")
    ap.add_argument("--models-dir", type=Path, help="models folder (default: the shipped one)")
    args = ap.parse_args()
    store, runtime = ModelStore(args.models_dir), select_runtime()
    print(f"runtime {runtime.describe()}; load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    for model_id in args.models:
        spec = store.spec(model_id, "embedder")
        content = store.read_verified(spec)
        for threads in (1, 2):
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
                f"{model_id:24s} {spec.bytes:>10,} B  threads {threads}: "
                f"median {statistics.median(times):.2f} ms, mean {statistics.fmean(times):.2f} ms ({args.runs} runs)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

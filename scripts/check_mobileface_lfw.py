"""LFW 10-fold verification of the shipped MobileFace models, to compare with PROVENANCE.md's 98.40.

A check that the MXNet files were read right (the parity test's ONNX reference shares this script's
reading of the format), and what int8 costs in decisions. Chips as the build makes them (BlazeFace with
refinement, the agent's Aligner on the manifest template); cosine distance; per fold, the threshold that
is best on the other nine folds; a pair with a missed face counts as wrong. Prints the figures.

    .venv/bin/python scripts/check_mobileface_lfw.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import build_models as bm  # noqa: E402
from bench_accuracy import best_threshold  # noqa: E402

from agent.vision.modelstore import ModelStore  # noqa: E402
from agent.vision.runtime import TfliteModel, select_runtime  # noqa: E402


def main() -> int:
    data = bm.DEFAULT_DATA
    with open(data / "pairs.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    images = sorted({data / r[k] for r in rows for k in ("path_a", "path_b")})
    chips, used = bm.mobileface_chips(images, bm.DEFAULT_OUT)
    index = {p: i for i, p in enumerate(used)}
    print(f"{len(used)} of {len(images)} images with a face")
    store, runtime = ModelStore(), select_runtime()
    folds = np.array([int(r["fold"]) for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    for model_id in ("mobileface-v2-float32", "mobileface-v2-int8"):
        model = TfliteModel(runtime.load(store.read_verified(store.spec(model_id, "embedder")), 1))
        emb = np.array([next(iter(model.run(c[None].astype(np.float32)).values()))[0] for c in chips], np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        dist = np.array(
            [
                1.0 - float(emb[index[a]] @ emb[index[b]]) if a in index and b in index else np.inf
                for a, b in ((data / r["path_a"], data / r["path_b"]) for r in rows)
            ]
        )
        accs, ths = [], []
        for f in sorted(set(folds)):
            train = (folds != f) & np.isfinite(dist)
            t = best_threshold(dist[train], same[train])
            test = folds == f
            accs.append(float(np.mean((dist[test] < t) == same[test])))
            ths.append(t)
        print(
            f"{model_id}: LFW 10-fold {100 * np.mean(accs):.2f} +- {100 * np.std(accs, ddof=1):.2f} %, "
            f"mean cosine-distance threshold {np.mean(ths):.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

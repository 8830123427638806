#!/usr/bin/env python3
"""MobileFace V2 int8 variants for issue 12's parity target (int8 against float32, cosine >= 0.995).

Tries the data-free quantization remedies of Nagel et al. 2019 on the graph `build_models.py` builds,
rescaling the MXNet parameters before conversion so the float32 model computes the same function:

* **Cross-layer equalization of the residual streams** (exact): every channel of a stage's residual
  stream (the projection outputs and the adds between them) is scaled by s_c so all channels span the
  same range; the stream is linear, so the projections' BatchNorm gamma/beta take s_c and every consumer's
  input-channel weights take 1/s_c.
* **Cross-layer equalization through ReLU6** (expand -> depthwise, depthwise -> project): exact only while
  the clip at 6 stays out of reach, so channels are scaled up to `--relu-target` (3: twice their
  calibration maximum stays below 6; the unscaled activations here never pass 1.6).
* **Bias correction**: each layer's expected output shift from rounding its int8 weights (symmetric, per
  output channel, as TFLite quantizes them), E[(Wq - W) x] over the float model's inputs to that layer on
  the calibration chips, taken off its bias. Only the int8 model gets it; float32 is converted unchanged.
* **Activation ranges** (`--ranges`, `--headroom`): the converter's calibrated min/max per tensor, edited
  before quantization: narrowed to the range with the least squared int8 error on the calibration chips
  (`mse`), or widened for headroom.
* **Late layers in float** (`--float-from N`): the ops on maps of N x N or smaller and the embedding head
  stay float32 (the quantizer's denylist); the rest is int8.

Two steps, as `build_models.py` splits its venvs::

    /work/buildenv/bin/python scripts/mobileface_int8_variants.py build NAME [options]   # TensorFlow
    .venv/bin/python scripts/mobileface_int8_variants.py measure NAME...                 # both runtimes

`build` writes NAME_float32.tflite and NAME_int8.tflite into --work (the calibration, parity and
selection chips are made in the runtime venv first, as build_models does); `measure` prints, per runtime,
float32 against the ONNX reference of the unchanged graph and the int8 model against its own float32
(min / 5th pct / median on the 154 parity chips, or with --chips selection on 770 other photos' chips,
to choose settings on without fitting the parity figure), then ms per chip at 2 threads under
ai-edge-litert for each variant and the shipped int8 model, interleaved in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_models as bm

DEFAULT_WORK = bm.DEFAULT_WORK / "mobileface-variants"
RUNTIMES = ("tflite-runtime", "ai-edge-litert")
# Chips to choose a variant's settings on, disjoint from calibration and parity: picking by the parity
# chips' minimum would fit the figure being reported.
SELECTION_STRIDE, SELECTION_OFFSET = 10, 3


def chips_file(work: Path, stride: int) -> Path:
    return work / f"calib_stride{stride}.npy"


def make_chips(work: Path, stride: int) -> None:
    """Runtime venv: calibration chips (every stride-th LFW photo) and the parity chips, as .npy files."""
    images = bm.lfw_images(bm.DEFAULT_DATA)
    calib, parity = bm.select(images, stride, 0), bm.mobileface_sets(bm.DEFAULT_DATA)[1]
    if set(calib) & set(parity):
        raise bm.BuildError(f"calibration stride {stride} overlaps the parity images")
    work.mkdir(parents=True, exist_ok=True)
    np.save(chips_file(work, stride), bm.mobileface_chips(calib, bm.DEFAULT_OUT)[0])
    np.save(work / "parity.npy", bm.mobileface_chips(parity, bm.DEFAULT_OUT)[0])
    selection = bm.select(images, SELECTION_STRIDE, SELECTION_OFFSET)
    if set(selection) & (set(parity) | set(bm.select(images, bm.MF_CALIB_STRIDE, bm.MF_CALIB_OFFSET))):
        raise bm.BuildError("the selection images overlap the parity or calibration images")
    np.save(work / "selection.npy", bm.mobileface_chips(selection, bm.DEFAULT_OUT)[0])


def build(args: argparse.Namespace) -> None:
    if not chips_file(args.work, args.calib_stride).exists():
        cmd = [str(args.runtime_python), __file__, "chips", "--work", str(args.work)]
        subprocess.run([*cmd, "--calib-stride", str(args.calib_stride)], check=True)
    calib = np.load(chips_file(args.work, args.calib_stride))
    original = bm.load_mobileface()
    g = bm.equalize(original, calib, args.streams, args.relu_pairs, args.relu_target)
    parity = np.load(args.work / "parity.npy")
    head = g.head
    same = bm.cosines(bm.activations(g, parity, [head])[head], bm.activations(original, parity, [head])[head])
    bm.log(f"{args.name}: float graph against the unchanged graph (ONNX): min cosine {same.min():.7f}")
    tf = bm.import_tensorflow()
    (args.work / f"{args.name}_float32.tflite").write_bytes(bm.convert(tf, bm.mobileface_tf_function(tf, g), None))
    quantized = bm.bias_corrected(g, calib, args.float_from) if args.bias_correction else g
    shapes = bm.stream_shapes(g)
    widen = {shapes[k]: args.headroom for k in args.headroom_streams}
    float_shapes = bm.late_shapes(g, args.float_from) if args.float_from else set()
    if args.headroom_last_stage:
        widen |= {shape: args.headroom for shape in bm.late_shapes(g)}
    int8 = bm.convert_edited(
        tf, bm.mobileface_tf_function(tf, quantized), calib, widen, args.ranges, args.clip_floor, float_shapes
    )
    (args.work / f"{args.name}_int8.tflite").write_bytes(int8)
    bm.log(f"{args.name}: {len(calib)} calibration chips, int8 sha256 {hashlib.sha256(int8).hexdigest()}")


def interpreter(runtime: str, path: Path) -> Any:
    if runtime == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=2)
    it.allocate_tensors()
    return it


def embed(it: Any, chips: np.ndarray) -> np.ndarray:
    src, dst = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for chip in chips:
        it.set_tensor(src, chip[None])
        it.invoke()
        out.append(it.get_tensor(dst)[0].copy())
    return np.array(out, dtype=np.float64)


def measure(args: argparse.Namespace) -> None:
    import onnxruntime

    parity = np.load(args.work / f"{args.chips}.npy").astype(np.float32)
    sess = onnxruntime.InferenceSession(bm.mobileface_onnx(bm.load_mobileface()), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"data": c[None].transpose(0, 3, 1, 2)})[0] for c in parity])
    for name in args.names:
        for runtime in RUNTIMES:
            f32 = embed(interpreter(runtime, args.work / f"{name}_float32.tflite"), parity)
            int8 = embed(interpreter(runtime, args.work / f"{name}_int8.tflite"), parity)
            exact, cos = bm.cosines(f32, ref), bm.cosines(int8, f32)
            print(
                f"{name:22s} {runtime:15s} float32 vs ONNX min {exact.min():.6f} | int8 vs float32 "
                f"min {cos.min():.5f} p5 {np.percentile(cos, 5):.5f} median {np.median(cos):.5f}",
                flush=True,
            )
    models = {"shipped": bm.DEFAULT_OUT / bm.MF_INT8_FILE} | {n: args.work / f"{n}_int8.tflite" for n in args.names}
    its = {k: interpreter("ai-edge-litert", p) for k, p in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for k, it in its.items():
            t0 = time.perf_counter()
            embed(it, parity)
            times[k].append((time.perf_counter() - t0) * 1000 / len(parity))
    for k, v in times.items():
        print(f"{k:22s} ai-edge-litert, 2 threads: median {np.median(v):.2f} ms per chip over {args.rounds} rounds")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["build", "measure", "chips"])
    ap.add_argument("names", nargs="*", help="build: one variant name; measure: the variants to compare")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"chips and models (default: {DEFAULT_WORK})")
    ap.add_argument("--streams", choices=["none", "absmax", "sqrt", "pct99.9"], default="absmax")
    ap.add_argument("--relu-pairs", choices=["none", "expand", "project", "all"], default="none")
    ap.add_argument("--relu-target", type=float, default=3.0)
    ap.add_argument("--bias-correction", action="store_true")
    ap.add_argument(
        "--ranges", choices=["minmax", "mse", "mse-relu", "mse-early"], default="minmax", help="activation ranges"
    )
    ap.add_argument("--clip-floor", type=float, default=0.3, help="--ranges mse: never narrower than this factor")
    ap.add_argument("--headroom", type=float, default=1.0, help="widen the chosen streams' calibrated ranges")
    ap.add_argument("--headroom-last-stage", action="store_true", help="--headroom widens the whole last stage too")
    ap.add_argument(
        "--float-from", type=int, default=0, help="keep ops on maps this size or smaller, and the head, float"
    )
    ap.add_argument(
        "--headroom-streams", type=int, nargs="+", default=[3], help="which streams (0-3) --headroom widens"
    )
    ap.add_argument("--calib-stride", type=int, default=bm.MF_CALIB_STRIDE, help="every Nth LFW photo calibrates")
    ap.add_argument("--runtime-python", type=Path, default=bm.DEFAULT_RUNTIME_PY)
    ap.add_argument("--rounds", type=int, default=7, help="measure: timing rounds per model")
    ap.add_argument("--chips", choices=["parity", "selection"], default="parity", help="measure: on which chips")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work = args.work.resolve()
    if args.step == "chips":
        make_chips(args.work, args.calib_stride)
    elif args.step == "build":
        if len(args.names) != 1:
            raise SystemExit("build takes one variant name")
        args.name = args.names[0]
        build(args)
    else:
        measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

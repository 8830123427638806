"""scripts/mobilefacenet.py's TF.js graph-model reader: weights sliced in manifest order, PReLU patterns found.

The reader needs no TensorFlow; these graphs are written by the tests in TF.js's own format (GraphDef as JSON,
weights concatenated little-endian in the manifest's order)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.mobilefacenet import MobileFaceNetError, evaluation_order, prelu_slope, read_tfjs_graph


def write_model(folder: Path, nodes: list[dict], tensors: dict[str, np.ndarray], extra: bytes = b"") -> Path:
    manifest = [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in tensors.items()]
    blob = b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in tensors.values()) + extra
    (folder / "model.bin").write_bytes(blob)
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": ["model.bin"], "weights": manifest}],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def const(name: str) -> dict:
    return {"name": name, "op": "Const", "attr": {}}


shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=1, max_size=5)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=shapes, seed=st.integers(0, 2**16))
def test_weights_are_sliced_in_manifest_order(tmp_path: Path, shapes: list[list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = {
        f"w{k}": (rng.normal(size=s).astype(np.float32) if k % 2 == 0 else rng.integers(-9, 9, s).astype(np.int32))
        for k, s in enumerate(shapes)
    }
    graph = read_tfjs_graph(write_model(tmp_path, [const(n) for n in tensors], tensors))
    for name, expected in tensors.items():
        np.testing.assert_array_equal(graph.weights[name], expected)
        assert graph.weights[name].dtype == expected.dtype


def test_bytes_left_over_after_the_manifest_are_refused(tmp_path: Path) -> None:
    tensors = {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(MobileFaceNetError, match="left over"):
        read_tfjs_graph(write_model(tmp_path, [const("w")], tensors, extra=b"\0\0\0\0"))


def prelu_graph(folder: Path) -> Path:
    """img_inputs -> conv -> PReLU as MobileFaceNet_TF writes it: relu(x) + c * (x - |x|)."""
    nodes = [
        {"name": "img_inputs", "op": "Placeholder", "attr": {}},
        const("k"),
        const("b"),
        const("c"),
        {"name": "conv", "op": "_FusedConv2D", "input": ["img_inputs", "k", "b"], "attr": {}},
        {"name": "relu", "op": "Relu", "input": ["conv"]},
        {"name": "abs", "op": "Abs", "input": ["conv"]},
        {"name": "sub", "op": "Sub", "input": ["conv", "abs"]},
        {"name": "mul", "op": "Mul", "input": ["sub", "c"]},
        {"name": "prelu", "op": "Add", "input": ["relu", "mul"]},
        {"name": "out", "op": "Squeeze", "input": ["prelu"], "attr": {}},
    ]
    tensors = {
        "k": np.ones((1, 1, 3, 2), np.float32),
        "b": np.zeros(2, np.float32),
        "c": np.array([0.125, 0.25], np.float32),
    }
    return write_model(folder, nodes, tensors)


def test_a_prelu_pattern_gives_its_input_and_twice_the_constant(tmp_path: Path) -> None:
    graph = read_tfjs_graph(prelu_graph(tmp_path))
    found = prelu_slope(graph, graph.nodes["prelu"])
    assert found is not None
    source, slope = found
    assert source == "conv"
    np.testing.assert_array_equal(slope, [0.25, 0.5])


def test_evaluation_order_skips_the_pattern_and_puts_inputs_first(tmp_path: Path) -> None:
    graph = read_tfjs_graph(prelu_graph(tmp_path))
    assert evaluation_order(graph, "out") == ["conv", "prelu", "out"]

"""scripts/mobileface_int8_bm.py: the int8 remedies keep MobileFace's float function (docs/recognition-v2.md
section 1). Real chips from the project's detector and aligner; the reference is the ONNX graph (onnxruntime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.support.data import SHARED_DATA
from tests.support.scripts import load_script

MF_SOURCE = SHARED_DATA.parent / "models" / "mobileface_v2"


bm = load_script("build_models")


@pytest.fixture(scope="module")
def chips(shared_data: Path, models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """30 calibration chips and 30 parity chips (disjoint photos)."""
    if not (MF_SOURCE / bm.MF_PARAMS).is_file():
        pytest.skip(f"MobileFace MXNet files not found at {MF_SOURCE}")
    pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) runs the reference graph")
    calib, parity = bm.mobileface_sets(shared_data)
    return bm.mobileface_chips(calib[:30], models_dir)[0], bm.mobileface_chips(parity[:30], models_dir)[0]


def _embeddings(g: Any, x: np.ndarray) -> np.ndarray:
    head = g.head
    return bm.activations(g, x, [head])[head]


def test_stream_equalization_keeps_the_float_function(chips: tuple[np.ndarray, np.ndarray]) -> None:
    calib, parity = chips
    original = bm.load_mobileface(MF_SOURCE)
    equalized = bm.equalize(original, calib, "absmax", "none", 3.0)
    cos = bm.cosines(_embeddings(equalized, parity), _embeddings(original, parity))
    assert cos.min() >= 0.9999


def test_stream_equalization_gives_every_channel_the_same_range(chips: tuple[np.ndarray, np.ndarray]) -> None:
    calib, _ = chips
    equalized = bm.equalize(bm.load_mobileface(MF_SOURCE), calib, "absmax", "none", 3.0)
    stream = bm.streams(equalized)[0]
    acts = bm.activations(equalized, calib, stream.tensors)
    peak = np.max([np.abs(acts[t]).max(axis=(0, 2, 3)) for t in stream.tensors], axis=0)
    np.testing.assert_allclose(peak, peak.max(), rtol=1e-4)


def test_relu6_clip_within_reach_changes_the_float_function(chips: tuple[np.ndarray, np.ndarray]) -> None:
    # ReLU6 is not PReLU: scaling a channel up to 6 brings the clip to its calibration maximum.
    calib, parity = chips
    original = bm.load_mobileface(MF_SOURCE)
    clipped = bm.equalize(original, calib, "none", "expand", 6.0)
    assert bm.cosines(_embeddings(clipped, parity), _embeddings(original, parity)).min() < 0.9999


def test_bias_correction_changes_only_the_betas(chips: tuple[np.ndarray, np.ndarray]) -> None:
    calib, _ = chips
    original = bm.load_mobileface(MF_SOURCE)
    corrected = bm.bias_corrected(original, calib)
    changed = {k for k in original.params if not np.array_equal(original.params[k], corrected.params[k])}
    assert changed
    assert all(k.endswith("_beta") for k in changed)


@settings(max_examples=50, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 5), st.just(3), st.just(3)),
        elements=st.floats(-10, 10, allow_nan=False),
    )
)
def test_weight_rounding_is_within_half_a_step_per_output_channel(w: np.ndarray) -> None:
    q = bm.quantize_weights(w)
    step = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127
    err = np.abs(q - w).reshape(w.shape[0], -1).max(axis=1)
    assert np.all(err <= step / 2 + 1e-12)
    np.testing.assert_array_equal(bm.quantize_weights(q), q)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.integers(8, 200), elements=st.floats(0, 1000, allow_nan=False)),
    st.floats(-5, -0.01),
    st.floats(0.01, 5),
    st.sampled_from([0.3, 0.5, 0.8, 1.0]),
)
def test_mse_range_factor_stays_between_the_floor_and_the_calibrated_range(
    hist: np.ndarray, lo: float, hi: float, floor: float
) -> None:
    assert floor <= bm.mse_factor(hist, lo, hi, floor) <= 1.0


def test_mse_range_narrows_a_long_tailed_tensor_and_keeps_a_bounded_one() -> None:
    # A Laplace-like tensor (most values near zero, a few far out) gains from clipping its tail; values
    # piled at the ends of the range (a saturating ReLU6) lose from any clipping.
    edges = np.linspace(-8.0, 8.0, 2049)
    x = (edges[:-1] + edges[1:]) / 2
    tailed = np.exp(-np.abs(x) / 0.5) * 1e6
    ends = np.zeros(2048)
    ends[[0, -1]] = 1e6
    assert bm.mse_factor(tailed, -8.0, 8.0, 0.3) < 0.9
    assert bm.mse_factor(ends, -8.0, 8.0, 0.3) == 1.0


def test_late_shapes_are_the_small_maps_and_the_head() -> None:
    if not (MF_SOURCE / bm.MF_PARAMS).is_file():
        pytest.skip(f"MobileFace MXNet files not found at {MF_SOURCE}")
    g = bm.load_mobileface(MF_SOURCE)
    late = bm.late_shapes(g, 7)
    assert {(1, 7, 7, 64), (1, 4, 4, 128), (1, 256)} <= late
    assert not any(len(s) == 4 and s[1] > 7 for s in late)


def test_bias_correction_leaves_the_layers_kept_in_float(chips: tuple[np.ndarray, np.ndarray]) -> None:
    calib, _ = chips
    original = bm.load_mobileface(MF_SOURCE)
    corrected = bm.bias_corrected(original, calib, 7)
    changed = {k for k in original.params if not np.array_equal(original.params[k], corrected.params[k])}
    late = {
        g_name
        for i, n in enumerate(original.nodes)
        if n.op == "BatchNorm" and original.shapes[i][-1] <= 7
        for g_name in (original.nodes[n.inputs[2]].name,)
    }
    assert changed
    assert not changed & late
    assert "fc5_bn_beta" not in changed

"""MobileFace V2, shipped as TFLite: loaded through the model store and checked on real face chips.

The reference is an independent implementation of the same MXNet graph (an ONNX graph, BatchNorm
unfolded, NCHW, run by onnxruntime); the chips come from the project's detector and aligner on the
template the manifest gives, from photos the int8 calibration did not use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import ModelError
from agent.vision.aligner import Aligner
from agent.vision.embedder import Embedder
from agent.vision.modelstore import ModelStore
from agent.vision.runtime import TfliteModel, installed_runtimes, select_runtime
from tests.support.data import SHARED_DATA
from tests.support.scripts import load_script

MF_SOURCE = SHARED_DATA.parent / "models" / "mobileface_v2"


bm = load_script("build_models")


def _need_source() -> Path:
    if not (MF_SOURCE / bm.MF_PARAMS).is_file():
        pytest.skip(f"MobileFace MXNet files not found at {MF_SOURCE}")
    return MF_SOURCE


def _load(store: ModelStore, model_id: str, runtime: str | None = None) -> TfliteModel:
    spec = store.spec(model_id, "embedder")
    return TfliteModel(select_runtime(runtime).load(store.read_verified(spec), 1))


def _embed(model: TfliteModel, chips: np.ndarray) -> np.ndarray:
    return np.array([next(iter(model.run(c[None].astype(np.float32)).values()))[0] for c in chips], np.float64)


@pytest.fixture(scope="module")
def parity_chips(shared_data: Path, models_dir: Path) -> np.ndarray:
    _need_source()
    _, paths = bm.mobileface_sets(shared_data)
    chips, used = bm.mobileface_chips(paths, models_dir)
    assert len(used) >= bm.MIN_PARITY_FACES
    return chips


@pytest.fixture(scope="module")
def onnx_reference(parity_chips: np.ndarray) -> np.ndarray:
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) runs the reference graph")
    pytest.importorskip("onnx", reason="onnx (test extra) builds the reference graph")
    graph = bm.mobileface_onnx(bm.load_mobileface(_need_source()))
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    x = parity_chips.astype(np.float32).transpose(0, 3, 1, 2)
    return np.concatenate([session.run(None, {"data": c[None]})[0] for c in x]).astype(np.float64)


def test_params_names_and_shapes_match_the_symbol() -> None:
    graph = bm.load_mobileface(_need_source())
    assert len(graph.params) == 191
    assert graph.shapes[graph.head] == (1, 256)
    assert graph.params["conv1_weight"].shape == (32, 3, 3, 3)


def test_truncated_params_file_is_refused_clearly(tmp_path: Path) -> None:
    cut = tmp_path / "cut.params"
    cut.write_bytes((_need_source() / bm.MF_PARAMS).read_bytes()[:100_000])
    with pytest.raises(bm.BuildError, match="truncated"):
        bm.read_mxnet_params(cut)


@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
def test_float32_matches_the_onnx_reference_on_real_chips(
    models_dir: Path, parity_chips: np.ndarray, onnx_reference: np.ndarray
) -> None:
    got = _embed(_load(ModelStore(models_dir), "mobileface-v2-float32"), parity_chips)
    cos = bm.cosines(got, onnx_reference)
    print(f"mobileface float32 vs ONNX: {len(cos)} faces, cosine min {cos.min():.6f} median {np.median(cos):.6f}")
    assert cos.min() >= 0.9999


def _runtime_names() -> list[str]:
    return [runtime.name for runtime in installed_runtimes()] or ["none installed"]


@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
@pytest.mark.parametrize("runtime", _runtime_names())
@pytest.mark.parametrize("model_id", ["mobileface-v2-int8-mixed", "mobileface-v2-int8"])
def test_int8_matches_float32_on_real_chips(
    model_id: str, runtime: str, models_dir: Path, parity_chips: np.ndarray
) -> None:
    """Issue 12 asks 0.995 at the worst chip: the mixed build (the default's member) meets it under both
    runtimes; the full int8 build keeps the 0.99 it shipped with (build_models.MF_MIN_COS_INT8)."""
    if runtime == "none installed":
        pytest.skip("no TFLite runtime installed")
    store = ModelStore(models_dir)
    f32 = _embed(_load(store, "mobileface-v2-float32", runtime), parity_chips)
    i8 = _embed(_load(store, model_id, runtime), parity_chips)
    cos = bm.cosines(i8, f32)
    print(
        f"{model_id} vs float32 ({runtime}): {len(cos)} faces, cosine min {cos.min():.6f} median {np.median(cos):.6f}"
    )
    assert cos.min() >= bm.MF_MIN_COS_INT8[model_id]


def test_manifest_describes_mobileface_as_an_embedder_of_its_own(models_dir: Path) -> None:
    store = ModelStore(models_dir)
    spec: dict[str, Any] = store.spec("mobileface-v2-int8", "embedder").raw
    assert (spec["metric"], spec["input"]["shape"], spec["output"]["shape"]) == ("cosine", [1, 112, 112, 3], [1, 256])
    aligner = Aligner.from_spec(spec["alignment"])
    assert (aligner.chip_size, aligner.keypoint_indices) == (112, (0, 1, 3))


def test_embedder_without_a_measured_threshold_is_refused(models_dir: Path) -> None:
    store = ModelStore(models_dir)
    spec = store.spec("mobileface-v2-int8", "embedder")
    with pytest.raises(ModelError, match="no measured threshold"):
        Embedder(_load(store, spec.id), spec.raw | {"threshold": None})

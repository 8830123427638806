"""The int8 embedder reproduces dlib's descriptor on the same chip; every built model works on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.vision.embedder import distance
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from tests.support.compare import cosine

dlib = pytest.importorskip("dlib", reason="dlib (pip install dlib-bin) is the reference for the parity test")
face_recognition_models = pytest.importorskip("face_recognition_models")

PARITY_FACES = 48


@pytest.fixture(scope="session")
def dlib_encoder():
    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


@pytest.fixture(scope="session")
def parity_chips(pipeline: FacePipeline, lfw_faces: list[Path]) -> list[np.ndarray]:
    """Chips aligned by our own pipeline from faces spread across LFW."""
    chips = []
    for path in lfw_faces[7 :: len(lfw_faces) // PARITY_FACES][:PARITY_FACES]:
        frame = load_image(path)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        assert face is not None, path
        chips.append(pipeline.aligner.align(Image.fromarray(frame), face.keypoints))
    return chips


@pytest.mark.parametrize(
    ("embedder_id", "min_cosine"), [("dlib-resnet29-int8", 0.998), ("dlib-resnet29-float32", 0.99999)]
)
@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
def test_embedder_matches_dlib_on_the_same_chip(
    models_dir: Path, parity_chips: list[np.ndarray], dlib_encoder, embedder_id: str, min_cosine: float
) -> None:
    ours = FacePipeline(PipelineOptions(models_dir=models_dir, embedder=embedder_id)).embedder
    cosines = [cosine(ours.embed(chip), np.array(dlib_encoder.compute_face_descriptor(chip))) for chip in parity_chips]
    print(f"{embedder_id}: {len(cosines)} faces, min cosine {min(cosines):.5f}, mean {np.mean(cosines):.5f}")
    assert len(cosines) >= 40
    assert min(cosines) >= min_cosine


def test_every_embedder_in_the_manifest_is_tested_here(models_dir: Path) -> None:
    embedders = {s.id for s in ModelStore(models_dir).specs.values() if s.role == "embedder"}
    # MobileFace's parity (against its ONNX reference, int8 against float32) is in test_mobileface.py.
    mobileface = {"mobileface-v2-int8", "mobileface-v2-int8-mixed", "mobileface-v2-float32"}
    # MobileFaceNet's (against the file it is rebuilt from) is in test_mobilefacenet.py.
    mobilefacenet = {"mobilefacenet-float32"}
    # The fused embedders (their members fused, their manifest checks) are in test_fusion.py.
    fused = {"fused-dlib-mobileface-mixed", "fused-dlib-mobileface-int8", "fused-dlib-mobilefacenet"}
    assert embedders == {"dlib-resnet29-int8", "dlib-resnet29-float32", *mobileface, *mobilefacenet, *fused}


@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
def test_every_detector_finds_real_faces(models_dir: Path, lfw_faces: list[Path]) -> None:
    store = ModelStore(models_dir)
    for spec in (s for s in store.specs.values() if s.role == "detector"):
        pipeline = FacePipeline(PipelineOptions(models_dir=models_dir, detector=spec.id))
        found = sum(bool(pipeline.detect(load_image(p))) for p in lfw_faces[:: len(lfw_faces) // 40])
        assert found >= 39, spec.id


@pytest.mark.slow  # over the real photo set: a model's accuracy or parity, not a unit
def test_same_person_is_closer_than_different_people(pipeline: FacePipeline, lfw_pairs) -> None:
    same = [p for p in lfw_pairs if p[1]][:20]
    different = [p for p in lfw_pairs if not p[1]][:20]

    def pair_distance(a: Path, b: Path) -> float:
        embeddings = []
        for path in (a, b):
            frame = load_image(path)
            face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
            embeddings.append(pipeline.embed_face(frame, face).embedding)
        return distance(*embeddings, pipeline.embedder.info.metric)  # the 1:1 threshold's own units

    threshold = pipeline.embedder.info.threshold
    same_ok = sum(pair_distance(a, b) < threshold for _, _, a, b in same)
    different_ok = sum(pair_distance(a, b) >= threshold for _, _, a, b in different)
    assert same_ok >= 18 and different_ok >= 18


def test_embeddings_are_finite_and_deterministic(pipeline: FacePipeline, sample_frame: np.ndarray) -> None:
    (face,) = pipeline.detect(sample_frame)
    first = pipeline.embed_face(sample_frame, face).embedding
    second = pipeline.embed_face(sample_frame, face).embedding
    assert first.shape == (pipeline.embedder.info.dimensions,) and np.isfinite(first).all()
    assert np.array_equal(first, second)


def test_wrong_chip_size_is_refused(pipeline: FacePipeline) -> None:
    with pytest.raises(ValueError, match="chip shape"):
        pipeline.embedder.embed(np.zeros((112, 112, 3), np.uint8))

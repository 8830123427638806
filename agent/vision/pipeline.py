"""Frames to faces to embeddings: the detector, aligner and embedder wired from the model store.

The CLI, the live loop and the MQTT commands all go through this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agent.vision.aligner import Aligner
from agent.vision.detector import BlazeFaceDetector, Face
from agent.vision.embedder import Embedder
from agent.vision.image import as_rgb_frame
from agent.vision.modelstore import ModelStore
from agent.vision.runtime import Runtime, TfliteModel, select_runtime


@dataclass(frozen=True)
class PipelineOptions:
    models_dir: Path | None = None
    detector: str | None = None  # manifest id; None = the manifest's default
    embedder: str | None = None
    runtime: str | None = None  # "ai-edge-litert" / "tflite-runtime"; None = first available
    threads: int = 2
    refine: bool = True


@dataclass(frozen=True)
class FaceEmbedding:
    face: Face
    chip: np.ndarray
    embedding: np.ndarray


class FacePipeline:
    """Detect, align and embed faces in RGB frames."""

    def __init__(self, options: PipelineOptions = PipelineOptions()) -> None:
        self.runtime: Runtime = select_runtime(options.runtime)
        self.store = ModelStore(options.models_dir)
        detector_spec = self.store.spec(options.detector, "detector")
        embedder_spec = self.store.spec(options.embedder, "embedder")
        self.detector_spec, self.embedder_spec = detector_spec, embedder_spec
        refiner = None
        refiner_id = detector_spec.raw.get("refine_with", detector_spec.id)
        if options.refine and refiner_id != detector_spec.id:
            refiner_spec = self.store.spec(refiner_id, "detector")
            refiner = BlazeFaceDetector(self._load(refiner_id, options.threads), refiner_spec.raw)
        detector_model = self._load(detector_spec.id, options.threads)
        self.detector = BlazeFaceDetector(detector_model, detector_spec.raw, options.refine, refiner)
        self.aligner = Aligner.from_spec(embedder_spec.raw["alignment"])
        self.embedder = Embedder(self._load(embedder_spec.id, options.threads), embedder_spec.raw)

    def _load(self, model_id: str, threads: int) -> TfliteModel:
        spec = self.store.specs[model_id]
        return TfliteModel(self.runtime.load(self.store.read_verified(spec), threads))

    def detect(self, frame: np.ndarray) -> list[Face]:
        return self.detector.detect(as_rgb_frame(frame))

    def embed_face(self, frame: np.ndarray | Image.Image, face: Face) -> FaceEmbedding:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(as_rgb_frame(frame))
        chip = self.aligner.align(image, face.keypoints)
        return FaceEmbedding(face, chip, self.embedder.embed(chip))

    def analyse(self, frame: np.ndarray) -> list[FaceEmbedding]:
        """Every face in the frame with its embedding, best detection first."""
        rgb = as_rgb_frame(frame)
        image = Image.fromarray(rgb)
        return [self.embed_face(image, face) for face in self.detector.detect(image)]


def most_central(faces: list[Face], width: int, height: int) -> Face | None:
    """The face a person most likely meant: nearest the image centre, larger faces winning ties."""
    if not faces:
        return None
    return min(faces, key=lambda f: np.hypot(f.centre[0] - width / 2, f.centre[1] - height / 2) / max(f.width, 1.0))

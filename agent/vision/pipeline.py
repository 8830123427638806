"""Frames to faces to embeddings: the detector, aligner and embedder wired from the model store.

The CLI, the live loop and the MQTT commands all go through this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agent.vision.detector import BlazeFaceDetector, Face
from agent.vision.embedder import FaceEmbedder
from agent.vision.fusion import open_embedder
from agent.vision.image import as_rgb_frame
from agent.vision.modelstore import ModelStore
from agent.vision.runtime import InvokeClock, Runtime, TfliteModel, select_runtime


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
        self.embedder: FaceEmbedder = open_embedder(
            self.store, embedder_spec, lambda spec, clock: self._load(spec.id, options.threads, clock)
        )
        # The chip that is quality-checked and kept (a fused embedder's first member's).
        self.aligner = self.embedder.aligner

    def _load(self, model_id: str, threads: int, clock: InvokeClock | None = None) -> TfliteModel:
        content = self.store.read_verified(self.store.specs[model_id])
        return TfliteModel(self.runtime.load(content, threads), clock or InvokeClock())

    def detect(self, frame: np.ndarray) -> list[Face]:
        return self.detector.detect(as_rgb_frame(frame))

    def embed_face(self, frame: np.ndarray | Image.Image, face: Face) -> FaceEmbedding:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(as_rgb_frame(frame))
        chip, vector = self.embedder.embed_face(image, face.keypoints)
        return FaceEmbedding(face, chip, vector)

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

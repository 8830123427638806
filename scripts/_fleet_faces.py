"""The fleet simulator's faces: what the real pipeline found in a fixed set of photos, computed once.

A simulated device has no camera and runs no model: enrollment decodes each photo it is sent, as a device
does, and looks the decoded frame up in a `FaceCache` built by the real `FacePipeline` from photos in
../shared/data (kept in a cache folder outside the repository, keyed by the photos, the models and the
vision code). `CachedPipeline` is enrollment's `FaceFinder` over that cache; a photo it does not hold shows
no face. `Cast` names the photos a simulation uses: the people every device starts with, their later
sightings, strangers, and the person operators enroll and erase everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import GalleryFigures, Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import ENROLL_SIDE, Enroller, EnrollmentError
from agent.vision.detector import Face
from agent.vision.embedder import EmbedderInfo
from agent.vision.image import load_image
from agent.vision.pipeline import FaceEmbedding, FacePipeline, PipelineOptions

CACHE_FORMAT = 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "faceagent" / "fleet-sim"
# The person every broadcast benchmark enrolls and erases (photos the command tests use too), and a probe of theirs.
BROADCAST_PHOTOS = tuple(f"faces-lfw/Colin_Powell/Colin_Powell_{n}.jpg" for n in ("0040", "0133", "0170"))
BROADCAST_PROBE = "faces-lfw/Colin_Powell/Colin_Powell_0234.jpg"

log = logging.getLogger("fleet")


def decode_photo(data: bytes) -> np.ndarray:
    """A photo decoded exactly as enrollment decodes it, so the cache and the device agree on the frame."""
    return load_image(data, max_side=ENROLL_SIDE)


def frame_digest(frame: np.ndarray) -> str:
    return hashlib.sha256(repr((frame.shape, frame.dtype.str)).encode() + frame.tobytes()).hexdigest()


@dataclass(frozen=True)
class CachedFace:
    face: Face
    chip: np.ndarray
    embedding: np.ndarray


@dataclass(frozen=True)
class FaceCache:
    """Every face the real pipeline found in each photo, by the digest of the decoded photo."""

    info: EmbedderInfo
    detector_id: str
    frames: dict[str, list[CachedFace]]  # frame digest -> faces, best detection first
    photos: dict[str, str]  # photo path (relative to the data folder) -> frame digest

    def faces_of(self, photo: str) -> list[CachedFace]:
        return self.frames[self.photos[photo]]

    def save(self, path: Path) -> None:
        entries = [(digest, face) for digest, faces in self.frames.items() for face in faces]
        meta = {
            "format": CACHE_FORMAT,
            "info": asdict(self.info),
            "detector_id": self.detector_id,
            "photos": self.photos,
            "digests": sorted(self.frames),
            "owners": [digest for digest, _ in entries],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(
            partial,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            boxes=np.array([face.face.box for _, face in entries], dtype=np.float64).reshape(-1, 4),
            scores=np.array([face.face.score for _, face in entries], dtype=np.float64),
            keypoints=np.array([face.face.keypoints for _, face in entries]),
            chips=np.array([face.chip for _, face in entries]),
            embeddings=np.array([face.embedding for _, face in entries]),
        )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> FaceCache:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta["format"] != CACHE_FORMAT:
                raise ValueError(f"{path}: cache format {meta['format']}, expected {CACHE_FORMAT}")
            frames: dict[str, list[CachedFace]] = {digest: [] for digest in meta["digests"]}
            for index, digest in enumerate(meta["owners"]):
                face = Face(tuple(data["boxes"][index]), float(data["scores"][index]), data["keypoints"][index])
                frames[digest].append(CachedFace(face, data["chips"][index], data["embeddings"][index]))
        info = dict(meta["info"])
        info["gallery"] = GalleryFigures(**info["gallery"]) if info.get("gallery") else None  # asdict made it a dict
        return cls(EmbedderInfo(**info), meta["detector_id"], frames, meta["photos"])


def build_cache(data: Path, photos: Sequence[str], pipeline: FacePipeline) -> FaceCache:
    """Run the real pipeline once over `photos`, as enrollment would (decode, detect, align, embed)."""
    frames: dict[str, list[CachedFace]] = {}
    digests: dict[str, str] = {}
    for photo in photos:
        frame = decode_photo((data / photo).read_bytes())
        digest = digests[photo] = frame_digest(frame)
        image = Image.fromarray(frame)
        found = []
        for face in pipeline.detect(frame):
            embedded = pipeline.embed_face(image, face)
            found.append(CachedFace(face, embedded.chip, embedded.embedding))
        frames[digest] = found
    return FaceCache(pipeline.embedder.info, pipeline.detector_spec.id, frames, digests)


def cache_key(data: Path, photos: Sequence[str], options: PipelineOptions) -> str:
    """Names what the cached embeddings depend on: the photos' bytes, the models, the vision code."""
    from agent.vision.modelstore import ModelStore

    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(photos), str(options)]).encode())
    for photo in photos:
        digest.update(hashlib.sha256((data / photo).read_bytes()).digest())
    models = ModelStore(options.models_dir).directory
    for source in [models / "manifest.json", *sorted((REPO / "agent" / "vision").glob("*.py"))]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:24]


def cached_faces(data: Path, photos: Sequence[str], cache_dir: Path = DEFAULT_CACHE_DIR) -> tuple[FaceCache, Path]:
    """The cache for `photos`, built with the real pipeline on first use (a few seconds), then read."""
    options = PipelineOptions()
    path = cache_dir / f"faces-{cache_key(data, photos, options)}.npz"
    if not path.exists():
        log.info("computing embeddings of %d photos with the real pipeline into %s", len(photos), path)
        build_cache(data, photos, FacePipeline(options)).save(path)
    return FaceCache.load(path), path


class CachedPipeline:
    """Enrollment's `FaceFinder` over a `FaceCache`: a decoded photo's faces as the real pipeline found them.

    One per enrollment (it remembers the faces of the last photo detected, for `embed_face`)."""

    def __init__(self, cache: FaceCache) -> None:
        self.cache = cache
        self.embedder = _CachedEmbedder(cache.info)
        self._found: list[CachedFace] = []

    def detect(self, frame: np.ndarray) -> list[Face]:
        found = self.cache.frames.get(frame_digest(frame))
        if found is None:
            log.warning("a photo outside the simulator's face cache: taken as showing no face")
        self._found = found or []
        return [entry.face for entry in self._found]

    def embed_face(self, frame: np.ndarray | Image.Image, face: Face) -> FaceEmbedding:
        entry = next(entry for entry in self._found if entry.face is face)
        return FaceEmbedding(face, entry.chip, entry.embedding)


@dataclass(frozen=True)
class _CachedEmbedder:
    info: EmbedderInfo


# ------------------------------------------------------------------------------------------- cast


@dataclass(frozen=True)
class Cast:
    """The photos a simulation uses: people every device starts with, their later sightings, strangers."""

    enrolled: dict[str, str]  # name -> the photo each device was enrolled from
    sightings: dict[str, list[str]]  # name -> photos of them the simulated camera shows
    strangers: list[str]  # photos of people enrolled nowhere
    broadcast: tuple[str, ...] = BROADCAST_PHOTOS  # whom the operator enrolls on every device
    broadcast_probe: str = BROADCAST_PROBE

    @classmethod
    def from_split(cls, data: Path, people: int, strangers: int) -> Cast:
        """The first `people` LFW identities with a gallery photo and two probes, and `strangers`
        single-photo identities (ident_split.tsv), never the broadcast person."""
        rows = [line.split("\t") for line in (data / "ident_split.tsv").read_text().splitlines()[1:]]
        gallery: dict[str, str] = {}
        probes: dict[str, list[str]] = {}
        distractors: list[str] = []
        broadcast_person = Path(BROADCAST_PHOTOS[0]).parent.name
        for identity, role, path in rows:
            if identity == broadcast_person:
                continue
            if role == "gallery":
                gallery[identity] = path
            elif role == "probe":
                probes.setdefault(identity, []).append(path)
            elif role == "distractor":
                distractors.append(path)
        chosen = [name for name in gallery if len(probes.get(name, [])) >= 2][:people]
        return cls(
            {name: gallery[name] for name in chosen},
            {name: probes[name][:2] for name in chosen},
            distractors[:strangers],
        )

    @property
    def photos(self) -> list[str]:
        sightings = [photo for photos in self.sightings.values() for photo in photos]
        return [*self.enrolled.values(), *sightings, *self.strangers, *self.broadcast, self.broadcast_probe]

    def visits(self, cache: FaceCache) -> list[list[CachedFace]]:
        """What the camera shows, one visit (a track's faces) at a time: each enrolled person, then a stranger."""
        known = [[cache.faces_of(photo)[0] for photo in photos] for photos in self.sightings.values()]
        unknown = [[cache.faces_of(photo)[0]] for photo in self.strangers if cache.faces_of(photo)]
        visits = [visit for pair in zip(known, unknown, strict=False) for visit in pair]
        return [*visits, *known[len(unknown) :], *unknown[len(known) :], [cache.faces_of(self.broadcast_probe)[0]]]


def seed_gallery(path: Path, data: Path, cast: Cast, cache: FaceCache, settings: Settings) -> int:
    """The gallery every device is flashed with: each enrolled person of `cast`, through the real enrollment.
    Returns how many were enrolled (a photo the quality gate refuses is left out)."""
    enrolled = 0
    with GalleryStore.open(path) as store:
        matcher = Matcher.for_gallery(settings.gallery)
        enroller = Enroller(CachedPipeline(cache), store, matcher, settings)
        for name, photo in cast.enrolled.items():
            try:
                enroller.enroll([(Path(photo).name, (data / photo).read_bytes())], actor="fleet-sim", name=name)
                enrolled += 1
            except EnrollmentError as exc:
                log.info("seed gallery: %s left out: %s", name, exc)
    return enrolled

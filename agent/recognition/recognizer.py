"""The live loop's core: a frame in, zero or more events out.

frame -> detect -> track -> (only tracks that need it) align + embed -> decide from several
embeddings -> event -> outbox. Detection runs on every frame; the embedder, the expensive part, runs
on a track when it appears and then only every few frames until the track's one decision is made.

A track is named as soon as the mean of `decision_embeddings` embeddings matches someone, but it is
declared unknown only when it can gather no more (`max_embeddings_per_track`) or ends. More views
pull a known face's mean towards its template while a stranger's stays put: on the Hamilton clip
Miranda's track mean goes 0.34 -> 0.30 -> 0.26 (cosine) at 3, 5 and 10 embeddings, while the
strangers' stay at 0.42-0.50; deciding "unknown" at 3 would leave him on the edge of the 0.35 threshold.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from agent.config import Settings
from agent.identity import Match
from agent.recognition.events import EventEmitter
from agent.recognition.quality import view_score
from agent.sources.base import HiRes
from agent.storage import StorageHealth
from agent.tracking.decision import decide, same_person
from agent.tracking.tracker import Track, Tracker
from agent.vision.detector import Face
from agent.vision.embedder import EmbedderInfo
from agent.vision.image import as_rgb_frame
from agent.vision.pipeline import FaceEmbedding
from agent.wire import FaceEvent

if TYPE_CHECKING:
    from agent.gallery.matcher import Matcher
    from agent.gallery.store import GalleryStore
    from agent.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)


class SceneCutDetector:
    """Notices a cut to another shot (or a camera knocked round) from two consecutive frames.

    Boxes alone cannot tell: in the Hamilton clip the cut from Lin-Manuel Miranda to the audience puts
    Barack Obama's face where Miranda's was (IoU 0.43), and the track would carry on across two people.
    On a cut every track is closed instead. Signal: the mean absolute difference of 32x18 grey
    thumbnails, 0-255. On the clip, frames within a shot (pans included) differ by at most 13 and the
    three cuts by 26-30.
    """

    def __init__(self, threshold: float = 20.0, size: tuple[int, int] = (32, 18)) -> None:
        self.threshold = threshold
        self.size = size
        self._previous: np.ndarray | None = None

    def is_cut(self, image: Image.Image) -> bool:
        thumbnail = np.asarray(image.resize(self.size, Image.Resampling.BOX).convert("L"), dtype=np.int16)
        previous, self._previous = self._previous, thumbnail
        return previous is not None and float(np.abs(thumbnail - previous).mean()) >= self.threshold


@dataclass
class RecognizerStats:
    """Running counts, for status reports and benchmarks."""

    frames: int = 0
    faces: int = 0  # detections, i.e. what embedding every face of every frame would have cost
    embeddings: int = 0  # what was computed
    decisions: int = 0
    recognized: int = 0  # decisions naming a person
    cuts: int = 0
    hires_crops: int = 0  # embeddings cut from the high-resolution stream
    restarted: int = 0  # named tracks judged again because their person left the gallery


@dataclass(frozen=True)
class FrameResult:
    """What one frame gave: its events (already in the outbox), the faces detected, and where the time went."""

    events: list[FaceEvent]
    faces: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # total, detect_invoke, embed_invoke


@dataclass(frozen=True)
class TrackView:
    """One tracked face of a frame as a `ViewObserver` sees it: its track, its decision so far (None: undecided)
    and the view embedded this frame (with its aligned chip)."""

    track_id: int
    face: Face
    decision: Match | None
    embedded: FaceEmbedding


class ViewObserver(Protocol):
    """Sees every tracked face of a frame, freshly embedded, while it `wants_views` (live enrollment): decided
    tracks are then refined and embedded like new ones, which costs an embedding per face and frame."""

    def wants_views(self) -> bool: ...

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None: ...


class Recognizer:
    """Turns one camera's frames into identity events; not thread-safe (one per camera loop).

    Settings and models change in place between two frames (`update`, `use_pipeline`): open tracks and the
    cooldowns survive a threshold change, so nobody is announced twice for it.
    """

    def __init__(
        self,
        pipeline: FacePipeline,
        matcher: Matcher,
        store: GalleryStore,
        settings: Settings,
        camera_id: str,
        *,
        on_decision: Callable[[Track, Match], None] | None = None,
        on_event: Callable[[Track, Match, FaceEvent], None] | None = None,
        storage: StorageHealth | None = None,
        views: ViewObserver | None = None,
    ) -> None:
        """`on_decision` sees every decision, including those a cooldown keeps from becoming events;
        `on_event` each decision that became an event (in the outbox), with it: what an operator can refer to.
        `storage` counts the events a full file system could not take (the loop runs on); the service
        passes the one its status reports, else the recognizer keeps its own. `views` is shown every tracked
        face while it asks (live enrollment)."""
        self.pipeline = pipeline
        self.matcher = matcher
        self.settings = settings
        self.storage = storage or StorageHealth(store.path.parent)
        self.tracker = Tracker(settings.tracking)
        self.events = EventEmitter(
            settings.events,
            store,
            camera_id=camera_id,
            model_id=pipeline.embedder.info.model_id,
            storage=self.storage,
        )
        self.cuts = SceneCutDetector()
        self.stats = RecognizerStats()
        self.on_decision = on_decision
        self.views = views
        self.on_event = on_event
        self._hires: HiRes | None = None
        self._watched = False  # `views` wants this frame's faces
        self._made: dict[int, FaceEmbedding] = {}  # id(face) -> its view embedded this frame

    def update(self, settings: Settings) -> None:
        """New [gallery], [quality], [tracking] and [events] values from the next frame on; tracks, cooldowns
        and counts carry on. (The matcher's own threshold and margin are its owner's to set.)"""
        self.settings = settings
        self.tracker.settings = settings.tracking
        self.events.settings = settings.events
        self.events.camera_id = settings.events.camera_id

    def use_pipeline(self, pipeline: FacePipeline) -> None:
        """Other models from the next frame on. Embeddings of two models do not compare, so every open track
        must be decided first (`flush`) and the matcher hold the new model's templates."""
        self.pipeline = pipeline
        self.events.model_id = pipeline.embedder.info.model_id

    def process(self, frame: np.ndarray, timestamp: datetime, hires: HiRes | None = None) -> FrameResult:
        """One frame's events (already in the outbox), faces and stage timings. `timestamp` must be
        timezone-aware.

        `hires` (picamera2's main stream) is where small faces are cut from when they are embedded:
        detection runs on the small frame, recognition gets the sharp pixels.
        """
        _require_aware(timestamp)
        started = time.monotonic()
        detector, embedder = self.pipeline.detector.model.clock, self.pipeline.embedder.model.clock
        detect_before, embed_before = detector.seconds, embedder.seconds
        events, faces = self._frame(frame, timestamp, hires)
        timings = {
            "total": 1000 * (time.monotonic() - started),
            "detect_invoke": 1000 * (detector.seconds - detect_before),
            "embed_invoke": 1000 * (embedder.seconds - embed_before),
        }
        return FrameResult(events, faces, timings)

    def _frame(self, frame: np.ndarray, timestamp: datetime, hires: HiRes | None) -> tuple[list[FaceEvent], int]:
        """The frame's events and how many faces it showed."""
        self._hires = hires
        self._watched = self.views is not None and self.views.wants_views()
        self._made = {}
        self.stats.frames += 1
        image = Image.fromarray(as_rgb_frame(frame))
        events: list[FaceEvent] = []
        if self.cuts.is_cut(image):
            self.stats.cuts += 1
            events += self._close(self.tracker.close_all(), timestamp)
        faces = self._detect(image)
        self.stats.faces += len(faces)
        index = self.stats.frames
        embedded: dict[int, np.ndarray] = {}  # id(face) -> embedding made this frame, so none is made twice

        def confirm(track: Track, face: Face) -> bool:
            if not track.embeddings:
                return True
            embedded[id(face)] = embedding = self._embed(image, face)
            return same_person(track.embeddings, embedding, self.matcher)

        seen = self.tracker.update(faces, index, timestamp, confirm)
        for track in seen:
            if _names_someone_gone(track, self.matcher):
                track.start_over()
                self.stats.restarted += 1
            if track.decision is None:
                events += self._gather(track, image, index, embedded.get(id(track.face)), timestamp)
        if self.views is not None and self._watched:
            views = [TrackView(t.id, t.face, t.decision, self._view(image, t.face)) for t in seen]
            self.views.observe(views, self.pipeline.embedder.info)
        events += self._close(self.tracker.pop_closed(), timestamp)
        return events, len(faces)

    def _detect(self, image: Image.Image) -> list[Face]:
        """The frame's faces, best first. The detector's second pass (sharper keypoints for the embedder, and
        a check against false positives) runs on new faces and undecided tracks only: a decided track
        wants no embedding, so it is followed on its first-pass box. Refining every face made the steady cost
        of 10 decided faces 4.5x that of one (`scripts/bench_crowd.py`); now it stays about one first pass."""
        detector = self.pipeline.detector
        found = detector.first_pass(image)
        tracks = self.tracker.overlapping(found)
        decided = [t is not None and t.decision is not None and not self._watched for t in tracks]
        followed = [f for f, d in zip(found, decided, strict=True) if d]
        fresh = [f for f, d in zip(found, decided, strict=True) if not d]
        return sorted(followed + detector.second_pass(image, fresh), key=lambda f: -f.score)

    def flush(self, timestamp: datetime) -> list[FaceEvent]:
        """Decide every open track (end of stream, shutdown); the next frame starts afresh."""
        _require_aware(timestamp)
        return self._close(self.tracker.close_all(), timestamp)

    def _gather(
        self, track: Track, image: Image.Image, index: int, embedding: np.ndarray | None, timestamp: datetime
    ) -> list[FaceEvent]:
        """One more view of an undecided track: embed it if the policy asks, then decide if the evidence allows."""
        tracking = self.settings.tracking
        score = view_score(track.face, self.settings.quality)
        track.observe(score)
        if embedding is None and track.wants_embedding(index, score, tracking):
            embedding = self._embed(image, track.face)
        if embedding is None or not track.takes_embeddings(tracking):
            return []
        track.add_embedding(embedding, score, index)
        if not track.can_be_named(tracking):
            return []
        match = self._decide(track)
        if match.accepted or not track.takes_embeddings(tracking):
            return self._settle(track, match, timestamp)
        return []

    def _decide(self, track: Track) -> Match:
        return decide(track.embeddings, self.matcher)  # under the matcher's track threshold

    def _embed(self, image: Image.Image, face: Face) -> np.ndarray:
        return self._view(image, face).embedding

    def _view(self, image: Image.Image, face: Face) -> FaceEmbedding:
        """`face` aligned and embedded, once per frame: a second ask (a `ViewObserver`'s) gets the same view."""
        made = self._made.get(id(face))
        if made is not None:
            return made
        self.stats.embeddings += 1
        hires = self._hires
        view = None
        if hires is not None and min(hires.scale) > 1 and face.width < self.pipeline.aligner.chip_size:
            crop, keypoints = _hires_view(hires, face)
            if crop.size:
                self.stats.hires_crops += 1
                view = self.pipeline.embed_face(Image.fromarray(crop), replace(face, keypoints=keypoints))
        view = view or self.pipeline.embed_face(image, face)
        if self._watched:
            self._made[id(face)] = view
        return view

    def _close(self, tracks: list[Track], timestamp: datetime) -> list[FaceEvent]:
        """A track that ends undecided decides on what it has, however little."""
        events: list[FaceEvent] = []
        for track in tracks:
            if track.decision is None and track.embeddings:
                events += self._settle(track, self._decide(track), timestamp)
        return events

    def _settle(self, track: Track, match: Match, timestamp: datetime) -> list[FaceEvent]:
        """Make `match` the track's one decision, and its event unless a cooldown holds it back."""
        track.decision = match
        self.stats.decisions += 1
        self.stats.recognized += match.accepted
        log.debug(
            "track %d: %s after %d embeddings (distance %.3f)",
            track.id,
            "recognized" if match.accepted else "unknown",
            len(track.embeddings),
            match.distance,
        )
        if self.on_decision is not None:
            self.on_decision(track, match)
        event = self.events.emit(track, match, timestamp)
        if event is None:
            return []
        if self.on_event is not None:
            self.on_event(track, match, event)
        return [event]


def _names_someone_gone(track: Track, matcher: Matcher) -> bool:
    """A track named as someone the matcher no longer holds (erased, or every template removed, by any process):
    its name must not outlive the erasure, and the face must be free to be named anew (re-enrolled, or the
    person it really was)."""
    decision = track.decision
    return decision is not None and decision.person_id is not None and not matcher.holds(decision.person_id)


def _require_aware(timestamp: datetime) -> None:
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("frame timestamps must be timezone-aware (e.g. datetime.now(UTC))")


def _hires_view(hires: HiRes, face: Face) -> tuple[np.ndarray, np.ndarray]:
    """The face and a face-sized margin around it from the high-resolution stream, with the keypoints
    moved into the crop's pixels (the chip's template reaches beyond the detector's box)."""
    x0, y0, x1, y1 = face.box
    margin = max(x1 - x0, y1 - y0)
    box = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    origin = np.array([max(0, math.floor(box[0] * hires.scale[0])), max(0, math.floor(box[1] * hires.scale[1]))])
    return hires.crop(box), hires.to_hires(face.keypoints) - origin

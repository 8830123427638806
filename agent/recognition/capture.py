"""Live enrollment: an armed capture window keeps good, diverse views of the one face in front of the camera.

The frame loop feeds the window every tracked face of every frame while it is armed (`CaptureWindow` is the
recognizer's `ViewObserver` then, so even a decided track is embedded on each frame). A view is kept when it
passes the enrollment quality gate (`assess`: size, detector score, sharpness of the aligned chip, yaw, roll)
and adds something: its pose (yaw and pitch from the keypoints) differs from every view held by `POSE_STEP`
and its embedding is no near-duplicate (`gallery.duplicate_distance`) of any, as the enroller would drop it.
A view that adds nothing but is better than the held view nearest in pose replaces it. The window refuses:
two faces in view (for `CROWDED_FRAMES` frames in a row, so one false detection does not end it), a face that
already matches another enrolled person (the track's own decision, and the views' mean at the end), the views
of two people (a new track that does not match the views held starts the collection again), and the end of
the window with fewer than `views` views. Nothing leaves the window but the result: views (chips included)
stay in memory until they are stored as templates (`enroll_capture`, on the gallery thread) or dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from agent.config import Matching, Settings, matching
from agent.errors import FaceagentError
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GalleryWrites
from agent.identity import Consent
from agent.recognition.enrollment import Candidate, Enroller, EnrollmentError
from agent.recognition.quality import QualityReport, assess, pose
from agent.recognition.recognizer import TrackView
from agent.tracking.decision import mean_embedding
from agent.vision.detector import KEYPOINT_NAMES
from agent.vision.embedder import EmbedderInfo

POSE_STEP = 0.05  # yaw or pitch units (eye distance, eye-mouth distance): a held view must differ by this much
CROWDED_FRAMES = 2  # two faces in view this many frames in a row refuse the capture
MAX_VIEWS = 10  # at most gallery.max_templates_per_person (default 10) are stored anyway
_EYES = (KEYPOINT_NAMES.index("right_eye"), KEYPOINT_NAMES.index("left_eye"))
_NOSE, _MOUTH = KEYPOINT_NAMES.index("nose_tip"), KEYPOINT_NAMES.index("mouth_centre")

TWO_FACES = "two faces in view: enrollment from the camera needs exactly one person in front of it"
CONFLICT = "conflict: this face already matches another enrolled person"
MODELS_CHANGED = "the models changed during the capture: start it again"


class CaptureStatus(StrEnum):
    """As a model update's job reports it: IN_PROGRESS (collecting, then storing), then one of the others."""

    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


@dataclass(frozen=True)
class CaptureRequest:
    """Who the views are of, and how many views in how long."""

    actor: str
    consent: Consent
    name: str | None = None  # a new person ...
    person_id: str | None = None  # ... or more views of one enrolled
    external_ref: str | None = None
    views: int = 5
    seconds: float = 20.0


@dataclass(frozen=True)
class HeldView:
    """A view kept: what enrollment takes (`candidate`), and what the window compares views by."""

    track_id: int
    candidate: Candidate
    quality: QualityReport
    pose: tuple[float, float]  # yaw, pitch
    unit: np.ndarray  # the embedding as the matcher's metric compares it


def head_pose(keypoints: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) proxies from the keypoints: yaw as `quality.pose` measures it; pitch as the nose's height
    between the eye line and the mouth, across the eye line (about 0.5 frontal, lower looking up)."""
    yaw = pose(keypoints)[0]
    eyes = (keypoints[_EYES[0]] + keypoints[_EYES[1]]) / 2
    across = keypoints[_MOUTH] - eyes
    length = float(np.dot(across, across))
    pitch = float(np.dot(keypoints[_NOSE] - eyes, across)) / length if length > 1e-12 else math.inf
    return yaw, pitch


class CaptureWindow:
    """One armed capture; fed by the frame loop (`observe`), read and cancelled by the command thread, ended by
    the gallery thread (`settle`). Thread-safe. `on_end(window)` runs once, outside the lock, when collection
    ends: with `views_ready` True it must store the views and `settle` the window."""

    def __init__(
        self,
        capture_id: str,
        request: CaptureRequest,
        settings: Settings,
        *,
        metric: str,
        on_end: Callable[[CaptureWindow], None] = lambda window: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= request.views <= MAX_VIEWS:
            raise ValueError(f"views must be 1 to {MAX_VIEWS}, got {request.views}")
        self.capture_id, self.request, self.settings, self.metric = capture_id, request, settings, metric
        self.on_end, self.clock = on_end, clock
        self.deadline = clock() + request.seconds
        self.status = CaptureStatus.IN_PROGRESS
        self.views_ready = False  # collection done, the views wait to be stored
        self.reason: str | None = None  # why it FAILED
        self.result: dict[str, Any] = {}  # what SUCCEEDED stored
        self.model: EmbedderInfo | None = None  # the embedder of the views held
        self.refusals: Counter[str] = Counter()  # why views were not kept, by kind
        self._held: list[HeldView] = []
        self._crowded = 0
        self._taken = 0  # views that passed the gate: numbers each view's label
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ the frame loop's side

    def wants_views(self) -> bool:
        return self.status is CaptureStatus.IN_PROGRESS and not self.views_ready

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None:
        """One frame's tracked faces, each freshly embedded."""
        with self._lock:
            ended = self._observe(views, model)
        if ended:
            self.on_end(self)

    def _observe(self, views: list[TrackView], model: EmbedderInfo) -> bool:
        if not self.wants_views():
            return False
        if self.clock() >= self.deadline:
            return self._fail(self._too_few())
        present = [v for v in views if v.face.width >= self.settings.quality.min_face_px] or views[:1]
        self._crowded = self._crowded + 1 if len(present) > 1 else 0
        if self._crowded >= CROWDED_FRAMES:
            return self._fail(TWO_FACES)
        if len(present) != 1:
            return False
        view = present[0]
        decision = view.decision
        if decision is not None and decision.accepted and decision.person_id != self.request.person_id:
            return self._fail(CONFLICT)
        if self.model is not None and self.model != model:
            return self._fail(MODELS_CHANGED)
        self.model = model
        self._consider(view)
        if len(self._held) >= self.request.views:
            self.views_ready = True
            return True
        return False

    def _consider(self, view: TrackView) -> None:
        face, chip, embedding = view.face, view.embedded.chip, view.embedded.embedding
        quality = assess(face, chip, self.settings.quality)
        if not quality.ok:
            self.refusals[quality.reasons[0].split(":")[0]] += 1
            return
        unit = _unit(embedding, self.metric)
        if self._held and view.track_id != self._held[-1].track_id and not self._same_person(unit):
            self._held = []  # someone else now stands there: start again with them
            self.refusals["another person"] += 1
        self._taken += 1
        label = f"view {self._taken} (track {view.track_id})"
        candidate = Candidate(label, embedding, quality.view_score, quality.as_dict(), chip=chip)
        held = HeldView(view.track_id, candidate, quality, head_pose(face.keypoints), unit)
        nearest = min(self._held, key=lambda h: _pose_distance(h.pose, held.pose), default=None)
        others = self._held
        if nearest is not None and _pose_distance(nearest.pose, held.pose) < POSE_STEP:
            if quality.view_score <= nearest.quality.view_score:
                self.refusals["no new pose"] += 1
                return
            others = [h for h in self._held if h is not nearest]  # a better view of that pose ...
            if any(_pose_distance(h.pose, held.pose) < POSE_STEP for h in others):  # ... near no other
                self.refusals["no new pose"] += 1
                return
        if any(float(np.linalg.norm(h.unit - unit)) < self._figures().duplicate_distance for h in others):
            self.refusals["near-duplicate"] += 1
            return
        self._held = [*others, held]

    def _same_person(self, unit: np.ndarray) -> bool:
        mean = _unit(mean_embedding([h.unit for h in self._held], self.metric), self.metric)
        return float(np.linalg.norm(mean - unit)) < self._figures().threshold

    def _figures(self) -> Matching:
        """The gallery's figures for the embedder the views come from (its stated ones where unset)."""
        stated = (self.model.gallery, self.model.model_id) if self.model is not None else (None, "")
        return matching(self.settings.gallery, *stated)

    def _too_few(self) -> str:
        wanted, seconds = self.request.views, self.request.seconds
        message = f"too few views: {len(self._held)} of {wanted} good, distinct views in {seconds:g} s"
        if self.refusals:
            common = ", ".join(f"{kind} ({count})" for kind, count in self.refusals.most_common(3))
            message += f"; views refused as: {common}"
        return message + " (one person, close to the camera, in good light, turning the head a little)"

    def _fail(self, reason: str) -> bool:
        self.status, self.reason, self._held = CaptureStatus.FAILED, reason, []
        return True

    # ------------------------------------------------------------------------ the other threads' side

    def expire(self) -> bool:
        """End the window if its time is up (no frame came to notice); True if this call ended it."""
        with self._lock:
            ended = self.wants_views() and self.clock() >= self.deadline and self._fail(self._too_few())
        if ended:
            self.on_end(self)
        return ended

    def cancel(self) -> bool:
        """Stop collecting and drop the views; False when the window has ended or its views are being stored."""
        with self._lock:
            if not self.wants_views():
                return False
            self.status, self.reason, self._held = CaptureStatus.CANCELED, "cancelled", []
        self.on_end(self)
        return True

    def take_views(self) -> list[HeldView]:
        """The views to store (once `views_ready`); the window keeps them no longer."""
        with self._lock:
            views, self._held = self._held, []
        return views

    def settle(self, status: CaptureStatus, *, reason: str | None = None, result: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.status, self.reason, self.result, self._held = status, reason, result or {}, []

    def report(self) -> dict[str, Any]:
        """The reply's data: the status, the count so far, and the outcome."""
        with self._lock:
            report: dict[str, Any] = {"capture_id": self.capture_id, "status": str(self.status)}
            report |= {"views": self.request.views if self.views_ready else len(self._held)}
            report |= {"views_needed": self.request.views}
            if self.status is CaptureStatus.IN_PROGRESS:
                step = "storing" if self.views_ready else "collecting"
                left = max(0.0, self.deadline - self.clock())
                return report | {"step": step, "seconds_left": round(left, 1)}
            if self.reason is not None:
                report["reason"] = self.reason
            return report | self.result


def enroll_capture(window: CaptureWindow, enroller: Enroller, writes: GalleryWrites) -> None:
    """Store a window's views as templates (`source` camera, through `writes`, so the live matcher follows) and
    settle it; every window's outcome is audited (`person.enroll_camera`). On the thread that owns
    `enroller.store`."""
    request, model = window.request, window.model
    if not window.views_ready or model is None:
        _audit(window, enroller.store, request.person_id)
        return
    views = [held.candidate for held in window.take_views()]
    try:
        if model != enroller.pipeline.embedder.info:  # a model update went live while the views waited
            raise EnrollmentError(MODELS_CHANGED)
        if _matches_someone_else(views, enroller, request.person_id):
            raise EnrollmentError(CONFLICT)
        with writes.writing(enroller.store) as changed:
            result = enroller.enroll_candidates(
                views,
                actor=request.actor,
                name=request.name,
                person_id=request.person_id,
                external_ref=request.external_ref,
                consent=request.consent,
                source="camera",
            )
            changed.add(result.person.id)
    except Exception as exc:  # a full disk too: the window must not stay "storing" and block the next one
        reason = str(exc) if isinstance(exc, EnrollmentError | FaceagentError) else "the views could not be stored"
        window.settle(CaptureStatus.FAILED, reason=reason)
        _audit(window, enroller.store, request.person_id)
        if not isinstance(exc, EnrollmentError):
            raise
        return
    person = {"id": result.person.id, "name": result.person.name}
    window.settle(
        CaptureStatus.SUCCEEDED,
        result={"person": person, "created": result.created, "templates_added": result.templates_added},
    )
    _audit(window, enroller.store, result.person.id, templates_added=result.templates_added)


def _audit(window: CaptureWindow, store: GalleryStore, person_id: str | None, **more: int) -> None:
    details = {"capture_id": window.capture_id, "status": str(window.status), "reason": window.reason, **more}
    details |= {"consent_reference": window.request.consent.reference}
    store.audit(window.request.actor, "person.enroll_camera", person_id, details)


def _matches_someone_else(views: Sequence[Candidate], enroller: Enroller, person_id: str | None) -> bool:
    """The views' mean is closer than `gallery.conflict_distance` to another enrolled person."""
    matcher = enroller.matcher
    match = matcher.search(mean_embedding([v.embedding for v in views], matcher.metric))
    limit = enroller.figures().conflict_distance
    return match.person_id not in (None, person_id) and match.distance < limit


def _unit(embedding: np.ndarray, metric: str) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32)
    if metric == "cosine":
        return vector / max(float(np.linalg.norm(vector)), 1e-12)
    return vector


def _pose_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))

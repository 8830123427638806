"""Faces across frames: which detection in this frame is which person from the last ones.

Tracking is what makes recognition affordable and trustworthy: a face is embedded when it appears and
then only now and then, and its identity is decided from several embeddings of the same track rather
than from whichever single frame came out worst.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from agent.config import TrackingSettings
from agent.identity import Match
from agent.vision.detector import Face


@dataclass(eq=False, slots=True)
class Track:
    """One face followed over frames. Times are the frame timestamps handed in, not the wall clock."""

    id: int
    face: Face  # the latest detection
    first_frame: int
    last_frame: int
    first_seen: datetime
    last_seen: datetime
    frames: int = 1  # detections matched to this track
    embeddings: list[np.ndarray] = field(default_factory=list)
    # Per embedding, the detection it was made from and its view score: what a correction of the track's
    # decision (agent/recognition/feedback.py) gates and ranks its views by.
    view_faces: list[Face] = field(default_factory=list)
    view_scores: list[float] = field(default_factory=list)
    best_quality: float = 0.0  # best view score seen while undecided
    embedded_quality: float = 0.0  # best view score among the frames that were embedded
    last_embed_frame: int | None = None
    decision: Match | None = None  # one decision per track; None until made

    def observe(self, view_score: float) -> None:
        self.best_quality = max(self.best_quality, view_score)

    def takes_embeddings(self, settings: TrackingSettings) -> bool:
        """Undecided and below the per-track cap."""
        return self.decision is None and len(self.embeddings) < settings.max_embeddings_per_track

    def wants_embedding(self, frame_index: int, view_score: float, settings: TrackingSettings) -> bool:
        """Embed on appearance, then every `embed_every_frames`, or sooner for a clearly better view.

        A decided track wants nothing more: its identity is settled and another embedding would be
        spent for nothing.
        """
        if not self.takes_embeddings(settings):
            return False
        if self.last_embed_frame is None:
            return True
        if frame_index - self.last_embed_frame >= settings.embed_every_frames:
            return True
        better = self.embedded_quality * settings.better_view_gain
        return better > 0.0 and view_score >= better

    def add_embedding(self, embedding: np.ndarray, view_score: float, frame_index: int) -> None:
        """One more embedding, of the track's current detection (`face`)."""
        self.embeddings.append(embedding)
        self.view_faces.append(self.face)
        self.view_scores.append(view_score)
        self.embedded_quality = max(self.embedded_quality, view_score)
        self.last_embed_frame = frame_index

    def start_over(self) -> None:
        """Forget the decision and the evidence behind it: the face is judged again from its next frames, as
        a new track would be (its person was erased while it was in view)."""
        self.decision = None
        self.embeddings.clear()
        self.view_faces.clear()
        self.view_scores.clear()
        self.best_quality = self.embedded_quality = 0.0
        self.last_embed_frame = None

    def can_be_named(self, settings: TrackingSettings) -> bool:
        """Undecided with enough evidence to name someone: `decision_embeddings` (or the cap, if lower)."""
        needed = max(1, min(settings.decision_embeddings, settings.max_embeddings_per_track))
        return self.decision is None and len(self.embeddings) >= needed


Confirm = Callable[[Track, Face], bool]


class Tracker:
    """Greedy IoU association with a centre-distance fallback; tracks close after `max_age_frames` unseen.

    Greedy (best overlap first) rather than optimal assignment: with the few faces a door camera
    sees, the two agree, and greedy is a dozen lines with no solver. The fallback catches motion
    too fast for boxes to overlap (low frame rates, a quick turn): an unmatched face whose centre is
    within `centre_gate` track sizes of an unmatched track, at a similar size, continues it.

    Geometry alone cannot tell fast motion from a neighbour: in a crowd, when one face is missed for
    a frame, the face beside it is a track size away. So `update` takes an optional `confirm(track,
    face)` that judges fallback pairs by appearance (the recognizer compares embeddings); IoU pairs
    are trusted without it. On the Hamilton clip all four fallback pairs were such neighbours.
    """

    def __init__(self, settings: TrackingSettings, *, centre_gate: float = 1.5, max_size_ratio: float = 2.0) -> None:
        self.settings = settings
        self.centre_gate = centre_gate
        self.max_size_ratio = max_size_ratio
        self.active: list[Track] = []
        self.started = 0  # tracks ever opened; also the last id handed out (ids start at 1)
        self._closed: list[Track] = []
        self._last_frame: int | None = None

    def update(
        self, faces: list[Face], frame_index: int, timestamp: datetime, confirm: Confirm | None = None
    ) -> list[Track]:
        """Assign this frame's faces to tracks; returns each face's track, in the order of `faces`.

        `frame_index` must increase from call to call. Tracks unseen for `max_age_frames` are closed
        and wait in `pop_closed()`. `confirm` vets centre-distance pairs (see the class).
        """
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame index {frame_index} does not follow {self._last_frame}")
        self._last_frame = frame_index
        assigned = self._associate(faces, confirm)
        seen: list[Track] = []
        for face, track in zip(faces, assigned, strict=True):
            if track is None:
                self.started += 1
                track = Track(self.started, face, frame_index, frame_index, timestamp, timestamp)
                self.active.append(track)
            else:
                track.face, track.last_frame, track.last_seen = face, frame_index, timestamp
                track.frames += 1
            seen.append(track)
        max_age = max(1, self.settings.max_age_frames)
        if any(frame_index - t.last_frame >= max_age for t in self.active):
            self._closed.extend(t for t in self.active if frame_index - t.last_frame >= max_age)
            self.active = [t for t in self.active if frame_index - t.last_frame < max_age]
        return seen

    def pop_closed(self) -> list[Track]:
        """Tracks closed since the last call, oldest first."""
        closed, self._closed = self._closed, []
        return closed

    def close_all(self) -> list[Track]:
        """Close every track (end of stream, or a cut to another scene); returns them with any pending closed."""
        closed = self.pop_closed() + self.active
        self.active = []
        return closed

    def overlapping(self, faces: list[Face]) -> list[Track | None]:
        """Each face's track by overlap alone, the pairs `update` makes first; changes nothing.
        Lets a caller treat faces of known tracks differently before the frame is tracked."""
        return self._overlap_pairs(faces)[0]

    def _overlap_pairs(self, faces: list[Face]) -> tuple[list[Track | None], np.ndarray]:
        assigned: list[Track | None] = [None] * len(faces)
        taken = np.zeros(len(self.active), dtype=bool)
        if not faces or not self.active:
            return assigned, taken
        track_boxes = np.array([t.face.box for t in self.active], dtype=np.float64)
        face_boxes = np.array([f.box for f in faces], dtype=np.float64)
        overlap = iou_matrix(track_boxes, face_boxes)
        # Boxes that do not overlap at all are never an IoU match, whatever the threshold says.
        self._greedy(-overlap, -max(self.settings.iou_threshold, 1e-9), assigned, taken, faces, None)
        return assigned, taken

    def _associate(self, faces: list[Face], confirm: Confirm | None) -> list[Track | None]:
        assigned, taken = self._overlap_pairs(faces)
        if not faces or not self.active or taken.all() or all(a is not None for a in assigned):
            return assigned
        track_boxes = np.array([t.face.box for t in self.active], dtype=np.float64)
        face_boxes = np.array([f.box for f in faces], dtype=np.float64)
        self._greedy(self._centre_cost(track_boxes, face_boxes), self.centre_gate, assigned, taken, faces, confirm)
        return assigned

    def _greedy(
        self,
        cost: np.ndarray,
        limit: float,
        assigned: list[Track | None],
        taken: np.ndarray,
        faces: list[Face],
        confirm: Confirm | None,
    ) -> None:
        """Pair tracks (rows) and faces (columns) cheapest first, while cost <= limit and both are free."""
        rows, cols = np.nonzero(cost <= limit)
        for k in np.argsort(cost[rows, cols], kind="stable"):
            row, col = int(rows[k]), int(cols[k])
            if taken[row] or assigned[col] is not None:
                continue
            if confirm is None or confirm(self.active[row], faces[col]):
                taken[row] = True
                assigned[col] = self.active[row]

    def _centre_cost(self, track_boxes: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """Centre distance in track sizes; inf where the sizes differ by more than `max_size_ratio`."""
        track_size = np.maximum(track_boxes[:, 2:] - track_boxes[:, :2], 1e-6).max(axis=1)
        face_size = np.maximum(face_boxes[:, 2:] - face_boxes[:, :2], 1e-6).max(axis=1)
        track_centre = (track_boxes[:, :2] + track_boxes[:, 2:]) / 2
        face_centre = (face_boxes[:, :2] + face_boxes[:, 2:]) / 2
        distance = np.linalg.norm(track_centre[:, None, :] - face_centre[None, :, :], axis=2) / track_size[:, None]
        ratio = face_size[None, :] / track_size[:, None]
        distance[(ratio > self.max_size_ratio) | (ratio < 1 / self.max_size_ratio)] = np.inf
        return distance


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (n, 4) with every box in `b` (m, 4), as (n, m)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)

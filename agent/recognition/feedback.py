"""The feedback window: what a decided track leaves behind, in memory only, so its decision can be corrected.

An operator who saw an event ("Ada at the door", or an unknown face) can answer it by its event id for
`feedback.window_minutes` (default 15): `wrong_person` (a negative for the person named), `is_person` (the
track's best views become templates of a person) or `enroll_from_event` (a new person from an unknown
track). For that each event's track is kept here: the mean embedding its decision searched, its best
`BEST_VIEWS` views (embedding, detection figures, view score) and what was decided. Nothing of it is ever
written to disk or sent anywhere; it expires with the window, goes with the oldest once `max_entries` are
held, and goes at once when the person it names (or was corrected to) is erased.

No image or chip is kept, so the quality gate a view gets is the photo gate without sharpness (size,
detector score, yaw, roll; the detector score stands in for blur, as it does for the live loop's view
score), computed when the track is decided.

Memory: per track the mean and 3 views as float16 (1 KB at 128-d) and their figures. Traced with tracemalloc
(tests/test_feedback.py), 100 decided tracks a minute for 15 minutes (1,500 entries) hold at most the bound
stated there and in docs/learning.md; `max_entries` caps it whatever the rate.

Thread-safe: the frame loop fills it and the command worker reads it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.config import FeedbackSettings, QualitySettings
from agent.identity import Match
from agent.recognition.quality import assess
from agent.tracking.decision import mean_embedding
from agent.tracking.tracker import Track
from agent.wire import FaceEvent

BEST_VIEWS = 3  # views kept per track: what `is_person` can add (gallery.max_templates_per_person caps it)


@dataclass(frozen=True)
class View:
    """One embedded view of a track: its embedding, view score, the photo gate's figures and verdict."""

    embedding: np.ndarray
    score: float
    quality: dict[str, float]
    refusal: str | None  # why the photo gate would refuse it (None: it passes)


@dataclass(slots=True)
class DecidedTrack:
    """One entry: a decided track that became the event `event_id`. Compact, since up to `max_entries` are
    held: the embeddings as float16 (the int8 embedder's outputs lose nothing that matters: distances move by
    about 1e-4), the views' figures as one small array."""

    event_id: str
    camera_id: str
    model_id: str
    person_id: str | None  # who the decision named; None: unknown
    decided_at: float  # the window's clock (monotonic seconds)
    vectors: np.ndarray  # float16 (1 + views, dim): row 0 the mean the decision searched, then the best views
    view_scores: tuple[float, ...]
    view_figures: np.ndarray  # float32 (views, 4): face_px, score, yaw, roll_degrees
    refusals: tuple[str | None, ...]
    corrected_to: tuple[str, ...] = ()  # people a correction added this track's views to
    wrong: bool = False  # `wrong_person` was applied: the person named was not this face

    @property
    def mean(self) -> np.ndarray:
        return self.vectors[0].astype(np.float32)

    @property
    def views(self) -> tuple[View, ...]:
        """The best views, best first."""
        return tuple(
            View(vector.astype(np.float32), score, dict(zip(_FIGURES, map(float, figures), strict=True)), refusal)
            for vector, score, figures, refusal in zip(
                self.vectors[1:], self.view_scores, self.view_figures, self.refusals, strict=True
            )
        )

    def concerns(self, person_id: str) -> bool:
        return self.person_id == person_id or person_id in self.corrected_to


_FIGURES = ("face_px", "score", "yaw", "roll_degrees")


class FeedbackWindow:
    """Decided tracks by event id, for `window_minutes`; at most `max_entries`, oldest dropped first."""

    def __init__(self, settings: FeedbackSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._entries: OrderedDict[str, DecidedTrack] = OrderedDict()  # oldest first
        # People erased within the window: a track decided just before an erasure, recorded just after it,
        # must not bring their face back into memory.
        self._erased: dict[str, float] = {}
        self._lock = threading.Lock()
        self.dropped = 0  # entries pushed out by max_entries before they expired

    @property
    def enabled(self) -> bool:
        return self.settings.window_minutes > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(
        self, track: Track, match: Match, event: FaceEvent, *, metric: str, quality: QualitySettings
    ) -> DecidedTrack | None:
        """Keep what `event`'s track can be corrected with; None (nothing kept) when the window is off."""
        if not self.enabled or not track.embeddings:
            return None
        named = match.person_id if match.accepted else None
        ranked = sorted(range(len(track.embeddings)), key=lambda i: -track.view_scores[i])[:BEST_VIEWS]
        reports = [assess(track.view_faces[i], None, quality) for i in ranked]
        mean = mean_embedding(track.embeddings, metric)
        entry = DecidedTrack(
            event_id=event["event_id"],
            camera_id=event["camera_id"],
            model_id=event["model_id"],
            person_id=named,
            decided_at=self.clock(),
            vectors=np.stack([mean, *(track.embeddings[i] for i in ranked)]).astype(np.float16),
            view_scores=tuple(float(track.view_scores[i]) for i in ranked),
            view_figures=np.array([[r.face_px, r.score, r.yaw, r.roll_degrees] for r in reports], dtype=np.float32),
            refusals=tuple("; ".join(r.reasons) or None for r in reports),
        )
        with self._lock:
            self._expire()
            if named is not None and named in self._erased:
                return None
            self._entries[entry.event_id] = entry
            while len(self._entries) > self.settings.max_entries:
                self._entries.popitem(last=False)
                self.dropped += 1
        return entry

    def get(self, event_id: str) -> DecidedTrack | None:
        """The entry of `event_id`; None when there is none (never decided here, expired, dropped or erased)."""
        with self._lock:
            self._expire()
            return self._entries.get(event_id)

    def mark_wrong(self, event_id: str) -> None:
        """`wrong_person` was applied to the track: it may now be enrolled as someone new, not corrected twice."""
        with self._lock:
            entry = self._entries.get(event_id)
            if entry is not None:
                entry.wrong = True

    def corrected(self, event_id: str, person_id: str) -> None:
        """The track's views now belong to `person_id` too: erasing that person must drop the entry."""
        with self._lock:
            entry = self._entries.get(event_id)
            if entry is not None and person_id not in entry.corrected_to:
                entry.corrected_to = (*entry.corrected_to, person_id)

    def forget_person(self, person_id: str) -> int:
        """Erasure: drop every entry that names the person or was corrected to them; how many went."""
        with self._lock:
            self._erased[person_id] = self.clock()
            gone = [event_id for event_id, entry in self._entries.items() if entry.concerns(person_id)]
            for event_id in gone:
                del self._entries[event_id]
            return len(gone)

    def forget_absent(self, people: set[str]) -> int:
        """After another process changed the gallery: `forget_person` everyone the entries concern who is no
        longer in `people` (the live matcher's, once it followed the change); how many entries went."""
        with self._lock:
            concerned = {p for entry in self._entries.values() for p in {entry.person_id, *entry.corrected_to}}
        return sum(self.forget_person(p) for p in concerned - people if p is not None)

    def _expire(self) -> None:
        """Under the lock: drop entries older than the window (all of them when it is off)."""
        horizon = self.clock() - 60.0 * self.settings.window_minutes
        self._erased = {person_id: at for person_id, at in self._erased.items() if at > horizon}
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if self.enabled and oldest.decided_at > horizon:
                return
            self._entries.popitem(last=False)

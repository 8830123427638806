"""Templates that keep up, wired: a recognized track's event goes from the frame loop to the gallery thread, where
the adaptation policy (`agent/recognition/adaptation.py`) decides and an adaptive template is stored.

The frame loop only copies the track's embeddings and queues a job (`offer`): the policy reads the whole
person against everyone else, and the write waits on SQLite, neither of which may hold up a frame. On the
gallery thread, the one writer of the live matcher, the template is written through `GallerySync.writing`,
so the matcher holds it before the next job, with `source="adaptive"` and the event's id: `wrong_person` on
that event deletes it (`GalleryStore.delete_event_templates`). The oldest adaptive templates it replaces go
in the same transaction, and the write is audited as the automatic action "template.adapt" by "adaptation".

Only decisions that became events are offered: a track a cooldown silenced has no event id, so nobody could
correct it. A track already corrected with `wrong_person` when its job runs is skipped, and so is one decided
by an embedder the gallery thread no longer matches against (a model update in between). A correction that
lands while the job runs is caught inside the write transaction, by the negative it stored for the event.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from agent.config import Settings
from agent.gallery.store import ADAPTIVE
from agent.identity import Match
from agent.recognition.adaptation import AdaptiveTemplate, RecognizedTrack, consider
from agent.recognition.feedback import FeedbackWindow
from agent.recognition.quality import assess
from agent.service.gallerythread import GalleryParts
from agent.service.jobs import JobQueue
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from agent.wire import FaceEvent

log = logging.getLogger(__name__)

MAX_PENDING = 16  # offers queued for the gallery thread at most; more are dropped (it is busy: a reload, say)
ACTOR = "adaptation"  # who the audit log says made the template: the agent itself, not an operator
CORRECTED = "corrected by wrong_person"  # a refusal of the job itself: its event was corrected meanwhile


class Adapter:
    """`offer` is for the frame loop; the rest runs on the gallery thread."""

    def __init__(
        self,
        gallery: JobQueue[GalleryParts],
        get_settings: Callable[[], Settings],
        feedback: FeedbackWindow | None = None,
    ) -> None:
        """`gallery`: the gallery thread's jobs; `feedback`: the window `wrong_person` marks corrected tracks in."""
        self.gallery = gallery
        self.get_settings = get_settings
        self.feedback = feedback
        self.added = 0
        self.refused: Counter[str] = Counter()  # by the policy's reason
        self.dropped = 0  # offers the full queue turned away
        self._pending = 0
        self._lock = threading.Lock()

    def offer(self, track: Track, match: Match, event: FaceEvent, model_sha256: str) -> None:
        """From the frame loop, for a decision that became `event`: queue it for the gallery thread, never wait."""
        if not self.get_settings().gallery.adapt or not match.accepted:
            return
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                return
            self._pending += 1
        recognized = RecognizedTrack(match, tuple(track.embeddings), tuple(track.view_scores), event["event_id"])
        faces, model_id = tuple(track.view_faces), event["model_id"]
        self.gallery.submit(lambda parts: self._adapt(parts, recognized, faces, model_id, model_sha256))

    def _adapt(
        self,
        parts: GalleryParts,
        track: RecognizedTrack,
        faces: tuple[Face, ...],
        model_id: str,
        model_sha256: str,
    ) -> AdaptiveTemplate | None:
        """On the gallery thread: the policy's verdict on the track, stored if it is a template."""
        with self._lock:
            self._pending -= 1
        settings = self.get_settings()
        if not settings.gallery.adapt or model_id != parts.sync.model_id or self._corrected(track.event_id):
            return None
        person_id = track.match.person_id
        if person_id is None:  # offered only when accepted, which always names someone
            return None
        store = parts.store
        outcome = consider(track, parts.sync.matcher, store.adaptive_templates(person_id, model_id), settings.gallery)
        if not isinstance(outcome, AdaptiveTemplate):
            self.refused[outcome.reason] += 1
            log.debug("track of event %s adds no template: %s", track.event_id, outcome.reason)
            return None
        quality = assess(faces[outcome.view], None, settings.quality).as_dict()
        with parts.sync.writing(store) as changed, store.transaction():
            if store.get_person(person_id) is None:
                return None  # erased since the matcher was read
            # wrong_person commits its negative in a transaction too, so it lands before this one (seen here) or
            # after it (and deletes the template by its event id): never between this check and the insert.
            if outcome.event_id is not None and store.wrong_person_on(outcome.event_id, person_id):
                self.refused[CORRECTED] += 1
                return None
            template_id = store.add_template(
                person_id,
                outcome.embedding,
                model_id=model_id,
                model_sha256=model_sha256,
                quality=quality,
                source=ADAPTIVE,
                event_id=outcome.event_id,
            )
            # After the insert: SQLite would give the new row the id of a deleted last one, and a gallery that
            # changed would keep its fingerprint (count and last id) for other processes.
            replaced = store.delete_templates(person_id, outcome.replaces)
            details = {"event_id": outcome.event_id, "template_id": template_id, "replaced": replaced}
            store.audit(ACTOR, "template.adapt", person_id, details)
            changed.add(person_id)
        self.added += 1
        log.info("adaptive template %d for %s from event %s", template_id, person_id, outcome.event_id)
        return outcome

    def _corrected(self, event_id: str | None) -> bool:
        """The event was answered with `wrong_person` before its job ran."""
        if self.feedback is None or event_id is None:
            return False
        entry = self.feedback.get(event_id)
        return entry is not None and entry.wrong

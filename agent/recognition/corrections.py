"""Corrections by event id: an operator answers a decision while its track is in the feedback window.

- `wrong_person`: the event named P, but that face was not P. The track's mean embedding (what the decision
  searched) becomes a negative of P (a probe closer to it than to P's own templates is not named P), and
  templates made from that track for P (adaptive ones) are taken back.
- `is_person`: the track was P (missed, or named someone else): its best views become templates of P.
- `enroll_from_event`: the unknown track (or one corrected by `wrong_person`) becomes a new person.

The views go through the enrollment's own checks (`Enroller.enroll_candidates`): the quality gate (decided
when the track was), the conflict check against other people, the mismatch check against P's templates,
near-duplicates and the per-person cap; `force` overrides conflict and mismatch as it does for photos. Every
write is made inside `gallery.writing(store)`, so the live matcher follows it before the reply, and audited.
The MQTT commands and any other front door call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Settings
from agent.errors import FaceagentError
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GalleryWrites
from agent.identity import Consent
from agent.recognition.enrollment import Candidate, Enroller, EnrollmentResult
from agent.recognition.feedback import DecidedTrack, FeedbackWindow


class CorrectionError(FaceagentError):
    """A correction that cannot apply; `kind` says why: "not_found" (no such event or person) or "conflict"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WrongPerson:
    event_id: str
    person_id: str
    negative_id: int
    templates_deleted: int


@dataclass
class Corrections:
    """The three corrections, on one thread's store (the command worker's)."""

    window: FeedbackWindow
    store: GalleryStore
    gallery: GalleryWrites
    enroller: Enroller  # on `store`, with the embedder the device runs now
    settings: Settings

    def wrong_person(self, event_id: str, *, actor: str) -> WrongPerson:
        entry = self._entry(event_id)
        if entry.person_id is None:
            raise CorrectionError(
                "conflict",
                f"event {event_id} named nobody (an unknown face): wrong_person corrects a recognition; "
                "use is_person or enroll_from_event for this one",
            )
        if entry.wrong:
            raise CorrectionError("conflict", f"event {event_id} was corrected with wrong_person already")
        person_id = entry.person_id
        self._person(person_id)
        feedback = self.settings.feedback
        with self.gallery.writing(self.store) as changed, self.store.transaction():
            negative_id = self.store.add_negative(
                person_id,
                entry.mean,
                model_id=entry.model_id,
                event_id=event_id,
                ttl_days=feedback.negative_days,
                cap=feedback.negatives_per_person,
            )
            deleted = sum(self.store.delete_event_templates(event_id, person_id=person_id).values())
            details = {"event_id": event_id, "negative_id": negative_id, "templates_deleted": deleted}
            self.store.audit(actor, "person.wrong_person", person_id, details)
            changed.add(person_id)
        self.window.mark_wrong(event_id)
        return WrongPerson(event_id, person_id, negative_id, deleted)

    def is_person(self, event_id: str, person_id: str, *, actor: str, force: bool = False) -> EnrollmentResult:
        entry = self._entry(event_id)
        self._person(person_id)
        result = self._enroll(entry, actor, force, person_id=person_id)
        self.window.corrected(event_id, person_id)
        return result

    def enroll_from_event(
        self,
        event_id: str,
        *,
        name: str,
        consent: Consent,
        actor: str,
        external_ref: str | None = None,
        force: bool = False,
    ) -> EnrollmentResult:
        entry = self._entry(event_id)
        if entry.person_id is not None and not entry.wrong:
            raise CorrectionError(
                "conflict",
                f"event {event_id} recognized an enrolled person: use is_person to add the views to someone, "
                "or wrong_person first if it was not them",
            )
        result = self._enroll(entry, actor, force, name=name, consent=consent, external_ref=external_ref)
        self.window.corrected(event_id, result.person.id)
        return result

    # ------------------------------------------------------------------------------------------ parts

    def _entry(self, event_id: str) -> DecidedTrack:
        if not self.window.enabled:
            raise CorrectionError("conflict", "corrections are off on this device (feedback.window_minutes = 0)")
        entry = self.window.get(event_id)
        if entry is None:
            minutes = self.settings.feedback.window_minutes
            raise CorrectionError(
                "not_found",
                f"no decided track with event id {event_id} on this device: unknown, or older than "
                f"feedback.window_minutes ({minutes:g}), or its person was erased",
            )
        model_id = self.enroller.pipeline.embedder.info.model_id
        if entry.model_id != model_id:
            raise CorrectionError(
                "conflict", f"event {event_id} was decided by embedder {entry.model_id}; the device runs {model_id}"
            )
        return entry

    def _person(self, person_id: str) -> None:
        if self.store.get_person(person_id) is None:
            raise CorrectionError("not_found", f"no person with id {person_id} on this device")

    def _enroll(
        self,
        entry: DecidedTrack,
        actor: str,
        force: bool,
        *,
        name: str | None = None,
        person_id: str | None = None,
        consent: Consent | None = None,
        external_ref: str | None = None,
    ) -> EnrollmentResult:
        """The track's best views through the enrollment's checks, as templates of `person_id` or a new person."""
        candidates = [
            Candidate(f"view {i + 1}", view.embedding, view.score, view.quality, view.refusal)
            for i, view in enumerate(entry.views)
        ]
        with self.gallery.writing(self.store) as changed:
            result = self.enroller.enroll_candidates(
                candidates,
                actor=actor,
                force=force,
                source="event",
                event_id=entry.event_id,
                name=name,
                person_id=person_id,
                consent=consent,
                external_ref=external_ref,
            )
            changed.add(result.person.id)
        return result

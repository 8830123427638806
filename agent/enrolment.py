"""Enrolment: photos of one person become templates, or are refused with the reason.

The CLI (`faceagent enroll`) and the MQTT `enroll` command both call `Enroller.enroll`, so the
quality gate, the conflict check and the audit record are the same whichever door a photo comes in
by. Photos are never stored: only embeddings (and, when `gallery.keep_chips` is on, the aligned
chip, so templates can be rebuilt after a model change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import Settings
from agent.errors import FaceagentError, ImageError
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Consent, Person
from agent.quality import QualityReport, assess
from agent.vision.detector import Face
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline

Photo = tuple[str, Path | bytes]  # (label for messages, file path or encoded image bytes)
# Photos are shrunk to this longest side while decoded (a JPEG in the DCT). The detector sees the whole
# photo letterboxed to 128/192 px and finds faces of ~10% of the longest side or more (measured: an LFW
# face of 15% found, of 10% not, with the default models): at 2048 px such a face is 200+ px, above
# quality.min_face_px (60) and the 150 px chip the embedder sees, so the chip is still a reduction. Bigger
# photos only cost memory (a 12 MP photo: 48 MB in Pillow, and the pipeline copies a frame twice); photos
# up to 2048 px (all of LFW) decode exactly as before.
ENROL_SIDE = 2048


class EnrolmentError(FaceagentError):
    """No photo could be enrolled; the message lists each photo's reason."""


@dataclass(frozen=True)
class PhotoOutcome:
    label: str
    accepted: bool
    reason: str | None = None
    template_id: int | None = None
    quality: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrolmentResult:
    person: Person
    created: bool
    photos: list[PhotoOutcome]

    @property
    def templates_added(self) -> int:
        return sum(p.accepted for p in self.photos)


@dataclass(frozen=True)
class _Candidate:
    label: str
    face: Face
    chip: np.ndarray
    embedding: np.ndarray
    quality: QualityReport


class Enroller:
    """Runs the quality gate, conflict and duplicate checks, then stores templates in one transaction."""

    def __init__(self, pipeline: FacePipeline, store: GalleryStore, matcher: Matcher, settings: Settings) -> None:
        self.pipeline = pipeline
        self.store = store
        self.matcher = matcher
        self.settings = settings

    def enroll(
        self,
        photos: Sequence[Photo],
        *,
        actor: str,
        name: str | None = None,
        person_id: str | None = None,
        external_ref: str | None = None,
        consent: Consent | None = None,
        force: bool = False,
    ) -> EnrolmentResult:
        """Enrol a new person (`name`) or add templates to an existing one (`person_id`).

        All-or-nothing: the person and every accepted template are written in one transaction; if no
        photo passes, nothing is written and `EnrolmentError` says why for each photo.
        """
        if (name is None) == (person_id is None):
            raise EnrolmentError("give either a name (new person) or a person id (more photos of someone enrolled)")
        existing = self.store.get_person(person_id) if person_id else None
        if person_id and existing is None:
            raise EnrolmentError(f"no person with id {person_id!r}")
        if not photos:
            raise EnrolmentError("no photos given")
        outcomes: dict[str, PhotoOutcome] = {}
        candidates = []
        for label, source in photos:
            candidate = self._candidate(label, source)
            if isinstance(candidate, PhotoOutcome):
                outcomes[label] = candidate
            else:
                candidates.append(candidate)
        accepted = self._select(candidates, person_id, force, outcomes)
        if not accepted:
            reasons = "; ".join(f"{o.label}: {o.reason}" for o in outcomes.values())
            raise EnrolmentError(f"nothing enrolled: {reasons}")
        person, template_ids = self._store(accepted, existing, name, external_ref, consent, actor, force, outcomes)
        for candidate, template_id in zip(accepted, template_ids, strict=True):
            self.matcher.add(template_id, person.id, person.name, candidate.embedding)
            outcomes[candidate.label] = PhotoOutcome(
                candidate.label, True, None, template_id, candidate.quality.as_dict()
            )
        ordered = [outcomes[label] for label, _ in photos if label in outcomes]
        return EnrolmentResult(person, existing is None, ordered)

    def _candidate(self, label: str, source: Path | bytes) -> _Candidate | PhotoOutcome:
        try:
            frame = load_image(source, max_side=ENROL_SIDE)
        except ImageError as exc:
            return PhotoOutcome(label, False, f"unreadable: {exc}")
        faces = self.pipeline.detect(frame)
        if not faces:
            return PhotoOutcome(label, False, "no face found")
        # Tiny background faces do not make a photo ambiguous; two faces of usable size do.
        big_enough = [f for f in faces if f.width >= self.settings.quality.min_face_px]
        if len(big_enough) > 1:
            return PhotoOutcome(label, False, f"{len(big_enough)} faces: a photo must show exactly one person")
        face = big_enough[0] if big_enough else faces[0]
        image = Image.fromarray(frame)
        embedded = self.pipeline.embed_face(image, face)
        quality = assess(face, embedded.chip, self.settings.quality)
        if not quality.ok:
            return PhotoOutcome(label, False, "; ".join(quality.reasons), quality=quality.as_dict())
        return _Candidate(label, face, embedded.chip, embedded.embedding, quality)

    def _select(
        self, candidates: list[_Candidate], person_id: str | None, force: bool, outcomes: dict[str, PhotoOutcome]
    ) -> list[_Candidate]:
        """Refuse conflicts with other people, skip near-duplicates, respect the per-person cap."""
        gallery = self.settings.gallery
        model_id = self.pipeline.embedder.info.model_id
        own = Matcher(metric=self.matcher.metric, threshold=self.matcher.threshold, margin=0.0)
        if person_id:
            own.load(row for row in self.store.iter_templates(model_id) if row[1] == person_id)
        room = gallery.max_templates_per_person - len(own)
        accepted: list[_Candidate] = []
        # Best views first, so the cap keeps the best photos.
        for candidate in sorted(candidates, key=lambda c: -c.quality.view_score):
            quality = candidate.quality.as_dict()
            rival = self.matcher.search(candidate.embedding)
            if not force and rival.person_id not in (None, person_id) and rival.distance < gallery.conflict_distance:
                reason = (
                    f"conflict: this face matches {rival.name} ({rival.person_id}) at distance {rival.distance:.3f}; "
                    "use force to enrol anyway"
                )
                outcomes[candidate.label] = PhotoOutcome(candidate.label, False, reason, quality=quality)
            elif len(own) and own.search(candidate.embedding).distance < gallery.duplicate_distance:
                outcomes[candidate.label] = PhotoOutcome(
                    candidate.label, False, "near-duplicate of a template already held", quality=quality
                )
            elif len(accepted) >= room:
                reason = f"template limit reached ({gallery.max_templates_per_person} per person)"
                outcomes[candidate.label] = PhotoOutcome(candidate.label, False, reason, quality=quality)
            else:
                own.add(-1 - len(accepted), person_id or "new", "", candidate.embedding)
                accepted.append(candidate)
        return accepted

    def _store(
        self,
        accepted: list[_Candidate],
        existing: Person | None,
        name: str | None,
        external_ref: str | None,
        consent: Consent | None,
        actor: str,
        force: bool,
        outcomes: dict[str, PhotoOutcome],
    ) -> tuple[Person, list[int]]:
        info = self.pipeline.embedder.info
        keep_chips = self.settings.gallery.keep_chips
        with self.store.transaction():
            person = existing or self.store.add_person(name or "", external_ref=external_ref, consent=consent)
            template_ids = [
                self.store.add_template(
                    person.id,
                    candidate.embedding,
                    model_id=info.model_id,
                    model_sha256=info.sha256,
                    quality=candidate.quality.as_dict(),
                    chip=candidate.chip.tobytes() if keep_chips else None,
                )
                for candidate in accepted
            ]
            details = {"templates_added": len(template_ids), "photos_refused": len(outcomes), "forced": force}
            self.store.audit(actor, "person.enroll", person.id, details)
        return person, template_ids

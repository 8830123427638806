"""Enrollment: photos of one person become templates, or are refused with the reason.

The CLI (`faceagent enroll`) and the MQTT `enroll` command both call `Enroller.enroll`, so the
quality gate, the conflict check and the audit record are the same whichever door a photo comes in
by. Photos are never stored: only embeddings (and, when `gallery.keep_chips` is on, the aligned
chip, so templates can be rebuilt after a model change).

A refusal must not identify anyone: told "this face is Ada at 0.27", whoever may enroll could run 1:N
identification of any photo and optimise against the score. So reasons name nobody and give no distance
unless the caller asks (`reveal_matches`: the local CLI, whose user can read the gallery file anyway).
Photos added to an existing person must match that person's templates of the current embedder (nearest
under `gallery.conflict_distance`, the distance that already decides "this face is that person" for the
conflict check), so nobody may add their own face to someone else's identity without `force`. The conflict
and duplicate distances are in the embedder's space: each one set in [gallery] wins, else the embedder's
manifest entry states it, else dlib's built-in one (`Enroller.figures`). Against one enrolled photo of each of
40 LFW people (`scripts/measure_enroll_guard.py`): dlib at 0.35 let in 79 of 103 genuine photos and none of 40
other people's or of 40 look-alikes (the nearest other face in the set), at 0.40 97 genuine but 8 look-alikes;
the fused embedder at its 0.5626 let in 92 genuine and no look-alike, at 0.643 97 but 7 look-alikes. A refused
genuine photo costs a better photo or `force`; a wrong one costs an identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from agent.config import Matching, Settings, matching
from agent.errors import FaceagentError, ImageError
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Consent, Person
from agent.recognition.quality import assess
from agent.vision.detector import Face
from agent.vision.embedder import EmbedderInfo
from agent.vision.image import load_image
from agent.vision.pipeline import FaceEmbedding

Photo = tuple[str, Path | bytes]  # (label for messages, file path or encoded image bytes)
# Photos are shrunk to this longest side while decoded (a JPEG in the DCT). The detector sees the whole
# photo letterboxed to 128/192 px and finds faces of ~10% of the longest side or more (measured: an LFW
# face of 15% found, of 10% not, with the default models): at 2048 px such a face is 200+ px, above
# quality.min_face_px (60) and the 150 px chip the embedder sees, so the chip is still a reduction. Bigger
# photos only cost memory (a 12 MP photo: 48 MB in Pillow, and the pipeline copies a frame twice); photos
# up to 2048 px (all of LFW) decode exactly as before.
ENROLL_SIDE = 2048


class EmbeddingModel(Protocol):
    @property
    def info(self) -> EmbedderInfo: ...


class FaceFinder(Protocol):
    """What enrollment asks of the vision pipeline: `FacePipeline` on a device; the fleet simulator's
    embeddings, computed once by `FacePipeline` and looked up by frame (scripts/_fleet.py)."""

    @property
    def embedder(self) -> EmbeddingModel: ...

    def detect(self, frame: np.ndarray) -> list[Face]: ...

    def embed_face(self, frame: np.ndarray | Image.Image, face: Face) -> FaceEmbedding: ...


class EnrollmentError(FaceagentError):
    """No photo could be enrolled; the message lists each photo's reason."""


@dataclass(frozen=True)
class PhotoOutcome:
    label: str
    accepted: bool
    reason: str | None = None
    template_id: int | None = None
    quality: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrollmentResult:
    person: Person
    created: bool
    photos: list[PhotoOutcome]

    @property
    def templates_added(self) -> int:
        return sum(p.accepted for p in self.photos)


@dataclass(frozen=True)
class Candidate:
    """A face that may become a template: from a photo, or a view the device embedded itself (a decided
    track's, `agent/recognition/feedback.py`); `refusal` is the quality gate's verdict (None: passed)."""

    label: str
    embedding: np.ndarray
    view_score: float
    quality: dict[str, float]
    refusal: str | None = None
    chip: np.ndarray | None = None


class Enroller:
    """Runs the quality gate, conflict and duplicate checks, then stores templates in one transaction."""

    def __init__(
        self,
        pipeline: FaceFinder,
        store: GalleryStore,
        matcher: Matcher,
        settings: Settings,
        *,
        add_to_matcher: bool = True,
    ) -> None:
        """`matcher` is searched for conflicts and, with `add_to_matcher`, holds the new templates at once;
        the service passes False: its live matcher follows the gallery file through its one writer."""
        self.pipeline = pipeline
        self.store = store
        self.matcher = matcher
        self.settings = settings
        self.add_to_matcher = add_to_matcher

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
        reveal_matches: bool = False,
    ) -> EnrollmentResult:
        """Enroll a new person (`name`) or add templates to an existing one (`person_id`).

        All-or-nothing: the person and every accepted template are written in one transaction; if no
        photo passes, nothing is written and `EnrollmentError` says why for each photo. `force` accepts photos
        that match someone else or do not match `person_id`; `reveal_matches` lets reasons name the person
        matched and give distances (never over MQTT).
        """
        if not photos:
            raise EnrollmentError("no photos given")
        return self.enroll_candidates(
            [self._candidate(label, source) for label, source in photos],
            actor=actor,
            name=name,
            person_id=person_id,
            external_ref=external_ref,
            consent=consent,
            force=force,
            reveal_matches=reveal_matches,
        )

    def enroll_candidates(
        self,
        candidates: Sequence[Candidate | PhotoOutcome],
        *,
        actor: str,
        name: str | None = None,
        person_id: str | None = None,
        external_ref: str | None = None,
        consent: Consent | None = None,
        force: bool = False,
        reveal_matches: bool = False,
        source: str = "photo",
        event_id: str | None = None,
    ) -> EnrollmentResult:
        """`enroll` for faces embedded already (`PhotoOutcome`: one refused before embedding), stored with
        `source` and `event_id` (`GalleryStore.add_template`): the same gate, checks and audit."""
        if (name is None) == (person_id is None):
            raise EnrollmentError("give either a name (new person) or a person id (more photos of someone enrolled)")
        existing = self.store.get_person(person_id) if person_id else None
        if person_id and existing is None:
            raise EnrollmentError(f"no person with id {person_id!r}")
        if not candidates:
            raise EnrollmentError("no faces given")
        outcomes = {c.label: c for c in candidates if isinstance(c, PhotoOutcome)}
        gated = []
        for candidate in candidates:
            if isinstance(candidate, Candidate) and candidate.refusal:
                outcomes[candidate.label] = PhotoOutcome(
                    candidate.label, False, candidate.refusal, None, candidate.quality
                )
            elif isinstance(candidate, Candidate):
                gated.append(candidate)
        accepted, overridden = self._select(gated, person_id, force, reveal_matches, outcomes)
        if not accepted:
            reasons = "; ".join(f"{o.label}: {o.reason}" for o in outcomes.values())
            raise EnrollmentError(f"nothing enrolled: {reasons}")
        audit: dict[str, bool | int | str] = (
            {"forced": force} | overridden | ({"event_id": event_id} if event_id else {})
        )
        stored = _Stored(existing, name, external_ref, consent, actor, audit, source, event_id)
        person, template_ids = self._store(accepted, stored, outcomes)
        for candidate, template_id in zip(accepted, template_ids, strict=True):
            if self.add_to_matcher:
                self.matcher.add(template_id, person.id, person.name, candidate.embedding)
            outcomes[candidate.label] = PhotoOutcome(candidate.label, True, None, template_id, candidate.quality)
        ordered = [outcomes[c.label] for c in candidates if c.label in outcomes]
        return EnrollmentResult(person, existing is None, ordered)

    def figures(self) -> Matching:
        """The gallery's figures for this pipeline's embedder: its conflict and duplicate distances are in that
        embedder's space (set in [gallery], else its manifest entry's, else dlib's built-in ones)."""
        info = self.pipeline.embedder.info
        return matching(self.settings.gallery, info.gallery, info.model_id)

    def _candidate(self, label: str, source: Path | bytes) -> Candidate | PhotoOutcome:
        try:
            frame = load_image(source, max_side=ENROLL_SIDE)
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
        refusal = "; ".join(quality.reasons) or None
        return Candidate(label, embedded.embedding, quality.view_score, quality.as_dict(), refusal, embedded.chip)

    def _select(
        self,
        candidates: list[Candidate],
        person_id: str | None,
        force: bool,
        reveal: bool,
        outcomes: dict[str, PhotoOutcome],
    ) -> tuple[list[Candidate], dict[str, int]]:
        """Refuse conflicts with other people and faces that are not `person_id`'s, skip near-duplicates,
        respect the per-person cap; also how many refusals `force` overrode (for the audit)."""
        gallery, figures = self.settings.gallery, self.figures()
        model_id = self.pipeline.embedder.info.model_id
        rows = [row for row in self.store.iter_templates(model_id) if row[1] == person_id] if person_id else []
        own = Matcher(metric=self.matcher.metric, threshold=self.matcher.threshold, margin=0.0)
        own.load(rows)
        held = Matcher(metric=self.matcher.metric, threshold=self.matcher.threshold, margin=0.0)
        held.load(rows)  # what the person had before this request: photos accepted now vouch for nothing
        room = gallery.max_templates_per_person - len(own)
        accepted: list[Candidate] = []
        overridden = {"conflicts_overridden": 0, "mismatches_overridden": 0}
        # Best views first, so the cap keeps the best photos.
        for candidate in sorted(candidates, key=lambda c: -c.view_score):
            quality = candidate.quality
            conflict, mismatch = self._not_theirs(candidate.embedding, person_id, held, reveal)
            if (conflict or mismatch) and not force:
                reason = (
                    f"{conflict}; use force to enroll anyway" if conflict else f"{mismatch}; use force to add it anyway"
                )
                outcomes[candidate.label] = PhotoOutcome(candidate.label, False, reason, quality=quality)
            elif len(own) and own.search(candidate.embedding).distance < figures.duplicate_distance:
                outcomes[candidate.label] = PhotoOutcome(
                    candidate.label, False, "near-duplicate of a template already held", quality=quality
                )
            elif len(accepted) >= room:
                reason = f"template limit reached ({gallery.max_templates_per_person} per person)"
                outcomes[candidate.label] = PhotoOutcome(candidate.label, False, reason, quality=quality)
            else:
                own.add(-1 - len(accepted), person_id or "new", "", candidate.embedding)
                accepted.append(candidate)
                overridden["conflicts_overridden"] += conflict is not None
                overridden["mismatches_overridden"] += mismatch is not None
        return accepted, overridden

    def _not_theirs(
        self, embedding: np.ndarray, person_id: str | None, held: Matcher, reveal: bool
    ) -> tuple[str | None, str | None]:
        """Why the face is someone else's (closer than `conflict_distance` to another person) and why it is not
        `person_id`'s (no template of theirs that close); None where it is not. Named only when `reveal`."""
        limit = self.figures().conflict_distance
        conflict = mismatch = None
        rival = self.matcher.search(embedding, templates_only=True)  # a photo against photos, as the figure was fitted
        if rival.person_id not in (None, person_id) and rival.distance < limit:
            conflict = "conflict: this face already matches another enrolled person"
            if reveal:
                conflict = (
                    f"conflict: this face matches {rival.name} ({rival.person_id}) at distance {rival.distance:.3f}"
                )
        nearest, cutoff, figure = 0.0, limit, f"gallery.conflict_distance {limit:g}"  # no template of theirs: exempt
        if len(held):
            nearest = held.search(embedding).distance
        elif person_id is not None and (old := self.matcher.old_distance(embedding, person_id)) is not None:
            nearest, cutoff, model_id = old  # known only by an older model's templates: vetted on those
            figure = f"{model_id}'s threshold {cutoff:g}"
        if nearest >= cutoff:
            mismatch = "not the same person: this face does not match the person's enrolled photos"
            if reveal:
                mismatch += f" (nearest at distance {nearest:.3f}, {figure})"
        return conflict, mismatch

    def _store(
        self, accepted: list[Candidate], stored: _Stored, outcomes: dict[str, PhotoOutcome]
    ) -> tuple[Person, list[int]]:
        info = self.pipeline.embedder.info
        keep_chips = self.settings.gallery.keep_chips
        with self.store.transaction():
            person = stored.existing or self.store.add_person(
                stored.name or "", external_ref=stored.external_ref, consent=stored.consent
            )
            template_ids = [
                self.store.add_template(
                    person.id,
                    candidate.embedding,
                    model_id=info.model_id,
                    model_sha256=info.sha256,
                    quality=candidate.quality,
                    chip=candidate.chip.tobytes() if keep_chips and candidate.chip is not None else None,
                    source=stored.source,
                    event_id=stored.event_id,
                )
                for candidate in accepted
            ]
            details = {"templates_added": len(template_ids), "photos_refused": len(outcomes)} | stored.audit
            self.store.audit(stored.actor, "person.enroll", person.id, details)
        return person, template_ids


@dataclass(frozen=True)
class _Stored:
    """Who the accepted faces go to, and what the templates and the audit record say."""

    existing: Person | None
    name: str | None
    external_ref: str | None
    consent: Consent | None
    actor: str
    audit: dict[str, bool | int | str]
    source: str
    event_id: str | None

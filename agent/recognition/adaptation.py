"""Templates that keep up (`gallery.adapt`, opt-in): which view of a recognized track becomes a template.

People change (glasses, a beard, a haircut, years) and their enrollment photos do not, so recognition
erodes. A track recognized with a wide margin says who it is with little doubt, and a view of it that differs
from the person's templates is what the gallery lacks: it becomes an *adaptive* template of that person.

Each rule guards against one way this goes wrong:
- only an accepted decision whose margin is at least `adapt_margin`: a close call is not evidence;
- a view at least `adapt_min_distance` from every template of the person, about as far as the track
  threshold (a view the templates already accept adds weight, not reach, yet still widens the region a
  stranger is named in; only views the gallery nearly missed are worth that) and closer than
  `adapt_max_distance` to one of their enrolled (not adaptive) templates: a view unlike all of them may be
  someone else, and adaptive templates cannot lead a chain of views away from who was enrolled;
- the drift guard: the view at least `adapt_guard_distance` from every other person's templates and nearer
  the person than anyone else, and the person's centroid (the mean of their templates, as searched) no
  nearer to the closest other person after the update than before. A wrong template makes the next wrong
  decision likelier, and the person's templates would walk towards someone else one update at a time;
- at most `adapt_templates` adaptive templates per person, the oldest replaced first: the gallery follows
  how the person looks now, and enrollment templates are never replaced;
- never from a corrected track: the template keeps its event id, and a correction of that event
  (`wrong_person`) deletes it.

Pure: the policy reads the matcher and decides; the gallery thread writes what it decides. Its defaults
and the figures behind them: docs/learning.md, "Adaptation" (scripts/bench_adapt.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config import GallerySettings, Matching
from agent.gallery.matcher import Matcher
from agent.identity import Match

NOT_RECOGNIZED = "not recognized"
NARROW_MARGIN = "margin too narrow"
NOT_HELD = "person not in the gallery"
NO_VIEWS = "no views"
NO_DIVERSITY = "adds no diversity"
TOO_FAR = "too far from the person"
NEAR_OTHER = "near another person"
DRIFT = "moves towards another person"


@dataclass(frozen=True)
class RecognizedTrack:
    """What the policy reads of one decided track: its decision, embeddings and their view scores."""

    match: Match
    embeddings: Sequence[np.ndarray]
    view_scores: Sequence[float]
    event_id: str | None = None  # the decision's event: a correction of it deletes the template made from it

    def __post_init__(self) -> None:
        if len(self.embeddings) != len(self.view_scores):
            raise ValueError(f"{len(self.embeddings)} embeddings but {len(self.view_scores)} view scores")


@dataclass(frozen=True)
class AdaptiveTemplate:
    """Add `embedding` as an adaptive template of `person_id`, deleting `replaces` (its oldest adaptive
    templates beyond the cap) in the same write."""

    person_id: str
    embedding: np.ndarray = field(repr=False)
    event_id: str | None
    replaces: tuple[int, ...]
    view: int  # which of the track's embeddings it is


@dataclass(frozen=True)
class Refusal:
    """Why the track adds no template: one of this module's reason constants."""

    reason: str


def consider(
    track: RecognizedTrack, matcher: Matcher, adaptive: Sequence[int], settings: GallerySettings
) -> AdaptiveTemplate | Refusal:
    """The view of `track` to add to its person (best view score first), or why none.

    `adaptive`: the person's adaptive template ids, oldest first (the store knows which templates are
    adaptive; the matcher only holds them). Whether `gallery.adapt` is on is the caller's to check."""
    match = track.match
    if not match.accepted or match.person_id is None:
        return Refusal(NOT_RECOGNIZED)
    figures = matcher.figures_for(settings)  # the distances in the space of the matcher's templates
    if not match.margin >= figures.adapt_margin:
        return Refusal(NARROW_MARGIN)
    if not track.embeddings:
        return Refusal(NO_VIEWS)
    person_id = match.person_id
    own_ids, own = matcher.templates_of(person_id)
    if not len(own_ids):
        return Refusal(NOT_HELD)
    order = sorted(range(len(track.embeddings)), key=lambda i: -track.view_scores[i])
    views = np.stack([np.asarray(track.embeddings[i], dtype=np.float32) for i in order])
    prepared = _as_searched(views, matcher.metric)
    distances = np.linalg.norm(prepared[:, None, :] - own[None, :, :], axis=2)
    own_distance = distances.min(axis=1)
    anchors = ~np.isin(own_ids, np.asarray(adaptive, dtype=np.int64))
    anchor_distance = distances[:, anchors].min(axis=1) if anchors.any() else own_distance
    other_distance = matcher.nearest_other(views, person_id)
    surplus = max(0, len(adaptive) - settings.adapt_templates + 1)
    replaces = tuple(int(template_id) for template_id in adaptive[:surplus])
    kept = own[~np.isin(own_ids, replaces)]
    centroid_before = _nearest_other_of_centroid(own, matcher, person_id)
    refusals: list[str] = []
    for row, (mine, anchor, theirs) in enumerate(zip(own_distance, anchor_distance, other_distance, strict=True)):
        reason = _view_refusal(float(mine), float(anchor), float(theirs), figures)
        if reason is None and _drifts(np.vstack([kept, prepared[row]]), centroid_before, matcher, person_id, figures):
            reason = DRIFT
        if reason is None:
            return AdaptiveTemplate(person_id, views[row], track.event_id, replaces, order[row])
        refusals.append(reason)
    return Refusal(refusals[0])


def _view_refusal(own: float, anchor: float, other: float, figures: Matching) -> str | None:
    """Why one view is refused: `own` from the person's nearest template, `anchor` from their nearest enrolled
    (not adaptive) one, `other` from anyone else's nearest."""
    if own < figures.adapt_min_distance:
        return NO_DIVERSITY
    if not anchor < figures.adapt_max_distance:
        return TOO_FAR
    if figures.adapt_guard_distance > 0 and (other < figures.adapt_guard_distance or other <= own):
        return NEAR_OTHER
    return None


def _drifts(templates: np.ndarray, before: float, matcher: Matcher, person_id: str, figures: Matching) -> bool:
    """Whether the person's centroid with `templates` would sit nearer another person than it does now.
    Off with the rest of the drift guard (`adapt_guard_distance` 0)."""
    if figures.adapt_guard_distance <= 0 or not math.isfinite(before):
        return False
    return _nearest_other_of_centroid(templates, matcher, person_id) < before


def _nearest_other_of_centroid(templates: np.ndarray, matcher: Matcher, person_id: str) -> float:
    return float(matcher.nearest_other(templates.mean(axis=0, keepdims=True), person_id)[0])


def _as_searched(views: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the matcher compares them: unit length for cosine."""
    if metric != "cosine":
        return views
    return views / np.maximum(np.linalg.norm(views, axis=1, keepdims=True), 1e-12)

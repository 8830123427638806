"""In-memory 1:N matching: every template of the loaded embedder in one float32 matrix.

The live loop searches on every decision while MQTT commands enroll and erase people, so the matrix is
built once from the store (`load`) and then changed in place under a lock: a few people at a time
(`replace_people` after a write; `add`, `remove_person`, `rename`), or whole when another process changed
the file (`load` swaps in a matrix it built outside the lock) or the embedder changed (a matcher built
aside, then `take`n in one step). A search is one matrix-vector product over precomputed squared norms
(||a - b||² = ||a||² + ||b||² - 2a·b); the best person is the owner of the nearest template, and the
second-best PERSON is the nearest template once the best person's rows are masked out, which gives the
per-person minimum without reducing over every person: with 100,000 templates of 20,000 people it took
0.07 ms against 0.26 ms for np.minimum.at and 0.47-0.62 ms for np.minimum.reduceat over person-sorted
rows, beside about 2 ms for the product itself (`scripts/bench_gallery.py`).

Mean templates (`mean_offset`, a figure each embedder may state; agent/gallery/means.py): a person's distance is
the nearer of their nearest template and their mean template (unit length for cosine: the direction of the mean
of their unit templates) plus the offset; None searches templates alone. The mean lets a person's few photos vote
together, but it also sits nearer to strangers (likely because face vectors share a common direction, which
averaging keeps while it cancels what is personal), so under the one threshold that must also hold for people
with a single photo, the mean alone lost: the offset lets it count only where it is clearly nearer
(`scripts/bench_fusion.py --fit`; docs/recognition-v2.md, section 2). With one template a person's mean is that
template, so the offset leaves them as they were. The enrollment guard and adaptation (`templates_of`,
`nearest_other`, `search(templates_only=True)`) look at templates: they ask about one photo.

Negatives (`agent/gallery/negatives.py`, corrections by event id): a probe closer to one of the best person's
negatives than to that person's nearest template is not named; only the best candidate's are looked at.

Old templates under a new embedder (`Fallback`): a fused embedder contains the model a gallery was enrolled with
(its first member), so people with no template of the fused model are still searched, on the member's own part of
the query (`FusedEmbedder.member_vector`) against their old templates, under that model's stated figures. Templates
of another fused model with the same first member (the default and an option) begin with that member's part, so
those serve too, cut to it: a device switched between them keeps naming everyone until they are rebuilt. A name
needs both sides to agree: a person only the old templates know is named when the new templates name nobody, and
nobody is named when each side names someone else. Re-enrolling a person (or rebuilding from kept chips) gives them
templates of the new model, and from then on only those count for them.

Metrics: "euclidean" is the raw L2 distance between embeddings (dlib's own scale, threshold about 0.6);
"cosine" unit-normalises templates when they are added and queries when they are searched, and returns
the L2 distance between the unit vectors, sqrt(2 - 2·cos), in [0, 2] (monotonic in cosine similarity).
Thresholds and margins are in the units of the distance returned.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from agent.config import GalleryFigures, GallerySettings, Matching, matching
from agent.errors import FaceagentError
from agent.gallery.means import MeanTemplates
from agent.gallery.negatives import NegativeSet
from agent.identity import Match
from agent.vision.embedder import FaceEmbedder
from agent.vision.fusion import FusedEmbedder

log = logging.getLogger(__name__)

METRICS = ("euclidean", "cosine")
# Queries are searched in blocks so a batch of k probes against n templates needs at most this many
# float32 scores at once (16 MB), whatever k is.
_BLOCK_SCORES = 4_000_000
_MIN_CAPACITY = 64


class MatcherError(FaceagentError, ValueError):
    """An embedding the matcher cannot hold or compare: wrong dimension, not finite, zero for cosine."""


@dataclass(frozen=True)
class Fallback:
    """Templates of the model a gallery was enrolled with, searched for people without templates of the loaded
    (fused) embedder: `project` takes the loaded embedder's vector to that model's; `matcher` holds every
    template of `model_ids` (everyone's, so its margins see everyone), `cut` to `model_id`'s part, under that
    model's figures."""

    model_id: str
    project: Callable[[np.ndarray], np.ndarray]
    matcher: Matcher
    model_ids: tuple[str, ...]  # whose stored templates are read: `model_id`'s, then kin fused models'

    def cut(self, vector: np.ndarray) -> np.ndarray:
        """A stored row as this model's vector: a kin fused model's template begins with it."""
        return vector[: self.matcher.dimensions] if self.matcher.dimensions is not None else vector


class Matcher:
    """Best person, distance and margin to the second-best person for an embedding; thread-safe."""

    @classmethod
    def for_gallery(cls, gallery: GallerySettings, embedder: FaceEmbedder | None = None) -> Matcher:
        """An empty matcher under the [gallery] metric, with the figures `matching` resolves: each one set in
        [gallery], else the one `embedder` (the templates' model) states, else the built-in one."""
        stated = (embedder.info.gallery, embedder.info.model_id) if embedder is not None else (None, "")
        figures = matching(gallery, *stated)
        matcher = cls(
            metric=gallery.metric,
            threshold=figures.threshold,
            margin=figures.margin,
            track_threshold=figures.track_threshold,
            mean_offset=figures.mean_offset,
            dimensions=embedder.info.dimensions if embedder is not None else None,
        )
        matcher.matching, matcher._stated = figures, stated
        if isinstance(embedder, FusedEmbedder) and gallery.metric == "cosine":
            old = embedder.first_member  # the member's stated figures: the settings' are in the fused model's units
            figures = matching(GallerySettings(metric="cosine"), old.gallery, old.model_id)
            held = cls(
                metric="cosine",
                threshold=figures.threshold,
                margin=figures.margin,
                track_threshold=figures.track_threshold,
                mean_offset=figures.mean_offset,
                dimensions=old.dimensions,
            )
            held.matching = figures
            project = _projection(embedder, old.model_id)
            matcher.fallback = Fallback(old.model_id, project, held, embedder.old_models)
        return matcher

    def __init__(
        self,
        *,
        metric: str,
        threshold: float,
        margin: float,
        track_threshold: float | None = None,
        mean_offset: float | None = None,
        dimensions: int | None = None,
    ) -> None:
        """`track_threshold`: what a track's mean embedding must be within (`tracking.decide`); None: `threshold`.
        `mean_offset`: None, templates alone score a person; else the mean template too, this much further
        (module docstring). `dimensions`: the model's output size; a stored row of another size (a damaged or
        foreign file) is left out with a warning, not loaded to fail every search; None: the first row's size."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
        if mean_offset is not None and not (math.isfinite(mean_offset) and mean_offset >= 0):
            raise ValueError(f"mean_offset must be None or a number >= 0, got {mean_offset!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {threshold!r}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a number >= 0, got {margin!r}")
        track = threshold if track_threshold is None else track_threshold
        if not (math.isfinite(track) and track >= 0):
            raise ValueError(f"track_threshold must be a number >= 0, got {track_threshold!r}")
        self.metric = metric
        self.mean_offset = None if mean_offset is None else float(mean_offset)
        self.dimensions = dimensions
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.track_threshold = float(track)
        self.matching = Matching.given(self.threshold, self.margin, self.track_threshold)
        self._stated: tuple[GalleryFigures | None, str] = (None, "")  # the embedder's figures (`retune` keeps them)
        self.fallback: Fallback | None = None  # old templates for people without any of this model (`for_gallery`)
        self._lock = threading.Lock()
        self._version = 0  # bumped by every change; `load(..., if_version=)` swaps only over the state it read
        self._negatives = NegativeSet()  # kept apart from the rows: a person's negatives outlive a matrix reset
        self._reset(None, 0)

    def sibling(self, embedder: FaceEmbedder) -> Matcher:
        """An empty matcher for another embedder's templates: the figures set in [gallery] kept, the others
        that embedder's stated ones (else built-in), so a model update brings its own figures."""
        figures = self.matching
        settings = {key: getattr(figures, key) for key, source in figures.sources.items() if source == "setting"}
        return Matcher.for_gallery(GallerySettings(metric=self.metric, **settings), embedder)

    def figures_for(self, gallery: GallerySettings) -> Matching:
        """Every figure of [gallery] as it applies to this matcher's templates: set, else their embedder's stated
        one, else built-in (the guard's and adaptation's distances are in the templates' space too)."""
        return matching(gallery, *self._stated)

    def retune(self, gallery: GallerySettings) -> None:
        """New [gallery] settings (set_config): the figures resolved again over the same embedder's."""
        figures = self.figures_for(gallery)
        with self._lock:
            self.threshold, self.margin = figures.threshold, figures.margin
            self.track_threshold, self.matching = figures.track_threshold, figures
            if self.mean_offset is not None and figures.mean_offset is not None:  # none kept from the start: none now
                self.mean_offset = figures.mean_offset

    # ----------------------------------------------------------------------------------------- state

    def _reset(self, dim: int | None, capacity: int) -> None:
        width = dim or 0
        self._dim = dim
        self._count = 0
        self._vectors = np.empty((capacity, width), dtype=np.float32)
        self._sqnorms = np.empty(capacity, dtype=np.float32)
        self._owners = np.empty(capacity, dtype=np.int32)  # row -> index into _person_ids/_names
        self._template_ids = np.empty(capacity, dtype=np.int64)
        self._known_templates: set[int] = set()
        self._person_ids: list[str] = []
        self._names: list[str] = []
        self._person_index: dict[str, int] = {}
        # Person index -> their mean template as searched (kept only with a `mean_offset`, from the first template on).
        self._mean_rows: MeanTemplates | None = None

    def __len__(self) -> int:
        return self._count

    @property
    def person_count(self) -> int:
        return len(self._person_ids)

    def holds(self, person_id: str) -> bool:
        """Whether `person_id` has a template here now, the fallback's included (cheap: no copy of the people
        held): a person named through old templates is still held."""
        with self._lock:
            if person_id in self._person_index:
                return True
        return self.fallback is not None and self.fallback.matcher.holds(person_id)

    def person_ids(self) -> set[str]:
        """The people held (those with at least one template, the fallback's included)."""
        with self._lock:
            held = set(self._person_ids)
        return held | self.fallback.matcher.person_ids() if self.fallback is not None else held

    def own_person_ids(self) -> set[str]:
        """The people with templates of the loaded embedder: those the fallback no longer speaks for."""
        with self._lock:
            return set(self._person_ids)

    @property
    def negative_count(self) -> int:
        return len(self._negatives)

    @property
    def version(self) -> int:
        """Changes with every load, add, removal and rename."""
        return self._version

    @property
    def dim(self) -> int | None:
        """Embedding dimension, fixed by the first template held (None while empty after construction)."""
        return self._dim

    # -------------------------------------------------------------------------------------- mutation

    def load(
        self,
        rows: Iterable[tuple[int, str, str, np.ndarray]],
        *,
        negatives: Iterable[tuple[int, str, np.ndarray]] = (),
        if_version: int | None = None,
    ) -> bool:
        """Replace everything with `rows` (as `GalleryStore.iter_templates` yields them) and `negatives` (as
        `GalleryStore.negatives` does); True when swapped.

        The new matrix is built outside the lock and swapped in, so searches meanwhile see the old
        gallery or the new one, never a half-loaded one. With `if_version` (the `version` read before the
        rows were), nothing is swapped if the matcher changed meanwhile: a background reload must not undo
        an erasure a command applied while the rows were being read (they may predate it).
        """
        rows, negatives = self._usable(rows, negatives)
        template_ids: list[int] = []
        owners: list[int] = []
        vectors: list[np.ndarray] = []
        person_ids: list[str] = []
        names: list[str] = []
        person_index: dict[str, int] = {}
        dim: int | None = None
        for template_id, person_id, name, embedding in rows:
            vector = np.asarray(embedding)
            if dim is None:
                dim = _check_shape(vector, None, template_id)
            elif vector.shape != (dim,):
                _check_shape(vector, dim, template_id)
            index = person_index.get(person_id)
            if index is None:
                index = person_index[person_id] = len(person_ids)
                person_ids.append(person_id)
                names.append(name)
            else:
                names[index] = name
            template_ids.append(int(template_id))
            owners.append(index)
            vectors.append(vector)
        if len(set(template_ids)) != len(template_ids):
            raise MatcherError("the gallery rows repeat a template id")
        count = len(vectors)
        matrix = np.stack(vectors).astype(np.float32, copy=False) if count else np.empty((0, dim or 0), np.float32)
        bad = ~np.isfinite(matrix).all(axis=1)
        if bad.any():
            raise MatcherError(f"template {template_ids[int(bad.argmax())]} has a non-finite embedding")
        matrix = self._prepare_rows(matrix, template_ids)
        capacity = max(_MIN_CAPACITY, count)
        stored = np.empty((capacity, matrix.shape[1]), dtype=np.float32)
        stored[:count] = matrix
        sqnorms = np.empty(capacity, dtype=np.float32)
        sqnorms[:count] = np.einsum("ij,ij->i", matrix, matrix)
        owner_rows = np.empty(capacity, dtype=np.int32)
        owner_rows[:count] = owners
        template_rows = np.empty(capacity, dtype=np.int64)
        template_rows[:count] = template_ids
        negative_set = NegativeSet()
        negative_rows = self._prepare_negatives(negatives, dim)
        negative_set.replace({person_id for _, person_id, _ in negative_rows}, negative_rows)
        mean_rows = None
        if self.mean_offset is not None and count:
            mean_rows = MeanTemplates.of(matrix, owner_rows[:count], len(person_ids), cosine=self.metric == "cosine")
        with self._lock:
            if if_version is not None and if_version != self._version:
                return False
            self._version += 1
            self._negatives = negative_set
            self._dim, self._count = dim, count
            self._vectors, self._sqnorms, self._owners, self._template_ids = stored, sqnorms, owner_rows, template_rows
            self._known_templates = set(template_ids)
            self._person_ids, self._names, self._person_index = person_ids, names, person_index
            self._mean_rows = mean_rows
        return True

    def _usable(
        self, rows: Iterable[tuple[int, str, str, np.ndarray]], negatives: Iterable[tuple[int, str, np.ndarray]]
    ) -> tuple[list[tuple[int, str, str, np.ndarray]], list[tuple[int, str, np.ndarray]]]:
        """Stored rows and negatives without those of another size than the model's `dimensions`: the model
        never made them, and one held would make every search fail (they are logged, not loaded)."""
        rows, negatives = list(rows), list(negatives)
        if self.dimensions is None:
            return rows, negatives
        good_rows = [row for row in rows if np.shape(row[3]) == (self.dimensions,)]
        good_negatives = [row for row in negatives if np.shape(row[2]) == (self.dimensions,)]
        if len(good_rows) < len(rows) or len(good_negatives) < len(negatives):
            bad = sorted({row[1] for row in rows if np.shape(row[3]) != (self.dimensions,)})
            log.warning(
                "left out %d templates and %d negatives that are not %d values long, as the model's are "
                "(damaged gallery rows; re-enroll %s)",
                len(rows) - len(good_rows),
                len(negatives) - len(good_negatives),
                self.dimensions,
                ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "") if bad else "no one",
            )
        return good_rows, good_negatives

    def add(self, template_id: int, person_id: str, name: str, embedding: np.ndarray) -> None:
        """Hold one more template; amortised O(1) (capacity doubles when full)."""
        with self._lock:
            _check_shape(np.asarray(embedding), self._dim, template_id)
            vector = np.asarray(embedding, dtype=np.float32)
            if not np.isfinite(vector).all():
                raise MatcherError(f"template {template_id} has a non-finite embedding")
            if int(template_id) in self._known_templates:
                raise MatcherError(f"template {template_id} is already held")
            vector = self._prepare_rows(vector[None, :], [int(template_id)])[0]
            self._version += 1
            self._append(int(template_id), person_id, name, vector)
            if self._mean_rows is not None:
                self._mean_rows.add(self._person_index[person_id], vector)

    def _append(self, template_id: int, person_id: str, name: str, vector: np.ndarray) -> None:
        """Under the lock: one more row, checked and prepared (`_prepare_rows`) by the caller, who then updates
        the person's mean template (`MeanTemplates.add` or `_recompute_means`); room is made for it here."""
        if self._dim is None:
            self._reset(len(vector), _MIN_CAPACITY)
            if self.mean_offset is not None:
                self._mean_rows = MeanTemplates(cosine=self.metric == "cosine", dim=len(vector))
        if self._count == len(self._vectors):
            self._grow(2 * len(self._vectors))
        index = self._person_index.get(person_id)
        if index is None:
            index = self._person_index[person_id] = len(self._person_ids)
            self._person_ids.append(person_id)
            self._names.append(name)
            if self._mean_rows is not None:
                self._mean_rows.reserve(len(self._person_ids))
        else:
            self._names[index] = name
        row = self._count
        self._vectors[row] = vector
        self._sqnorms[row] = float(vector @ vector)
        self._owners[row] = index
        self._template_ids[row] = template_id
        self._known_templates.add(template_id)
        self._count = row + 1

    def remove_person(self, person_id: str) -> None:
        """Drop every template of the person and compact the rows; unknown people are a no-op.

        A person with no template of the loaded model is simply not here, so erasure must not fail on it.
        Their negatives go too.
        """
        with self._lock:
            self._version += 1  # even when not held: a reload in flight may have read the person before the erasure
            self._drop({person_id})
            self._negatives.drop({person_id})
        if self.fallback is not None:
            self.fallback.matcher.remove_person(person_id)

    def replace_people(
        self,
        person_ids: Iterable[str],
        rows: Iterable[tuple[int, str, str, np.ndarray]],
        negatives: Iterable[tuple[int, str, np.ndarray]] = (),
    ) -> None:
        """Hold exactly `rows` (as `GalleryStore.person_templates` yields them) and `negatives` for each of
        `person_ids`: what a write to those people left in the gallery, applied in one step (no rows: they
        were erased). Every row is checked before anything changes, so a bad one leaves the matcher as it was."""
        wanted = set(person_ids)
        rows, negatives = self._usable(rows, negatives)
        if strangers := {person_id for _, person_id, _ in negatives} - wanted:
            raise MatcherError(f"negatives of {len(strangers)} people who were not asked for")
        ids = [int(template_id) for template_id, *_ in rows]
        if len(set(ids)) != len(ids):
            raise MatcherError("the rows repeat a template id")
        if strangers := {person_id for _, person_id, _, _ in rows} - wanted:
            raise MatcherError(f"rows of {len(strangers)} people who were not asked for")
        with self._lock:
            vectors = [np.asarray(row[3], dtype=np.float32) for row in rows]
            dim = self._dim
            for template_id, vector in zip(ids, vectors, strict=True):
                dim = _check_shape(vector, dim, template_id)
            matrix = np.stack(vectors) if vectors else np.empty((0, dim or 0), np.float32)
            if not np.isfinite(matrix).all():
                raise MatcherError(f"template {ids[int((~np.isfinite(matrix).all(axis=1)).argmax())]} is not finite")
            matrix = self._prepare_rows(matrix, ids)
            count = self._count
            theirs = np.isin(self._owners[:count], [self._person_index[p] for p in wanted if p in self._person_index])
            taken = (self._known_templates - set(self._template_ids[:count][theirs].tolist())) & set(ids)
            if taken:
                raise MatcherError(f"template {min(taken)} is already held by someone else")
            negative_rows = self._prepare_negatives(negatives, dim)
            others = self._negatives.ids() - self._negatives.ids(wanted)
            if clash := others & {negative_id for negative_id, _, _ in negative_rows}:
                raise MatcherError(f"negative {min(clash)} is already held by someone else")
            self._version += 1
            self._drop(wanted)
            for template_id, (_, person_id, name, _), vector in zip(ids, rows, matrix, strict=True):
                self._append(template_id, person_id, name, vector)
            self._recompute_means({self._person_index[p] for p in wanted if p in self._person_index})
            self._negatives.replace(wanted, negative_rows)

    def add_negative(self, negative_id: int, person_id: str, embedding: np.ndarray) -> None:
        """Hold one more negative of `person_id` (as `GalleryStore.add_negative` stored it)."""
        with self._lock:
            (row,) = self._prepare_negatives([(negative_id, person_id, embedding)], self._dim)
            if int(negative_id) in self._negatives.ids():
                raise MatcherError(f"negative {negative_id} is already held")
            self._version += 1
            self._negatives.add(*row)

    def take(self, other: Matcher) -> None:
        """Hold what `other` holds, by reference and in one step: a matrix built aside (off the frame loop)
        goes live at once. `other` must not be used afterwards."""
        if other is self:
            return
        if other.metric != self.metric:
            raise MatcherError(f"cannot take a {other.metric} matcher into a {self.metric} one")
        with other._lock, self._lock:
            self._version += 1
            self.threshold, self.margin, self.track_threshold = other.threshold, other.margin, other.track_threshold
            self.matching, self._stated = other.matching, other._stated  # another embedder's figures come with it
            self.mean_offset, self.dimensions = other.mean_offset, other.dimensions
            self._mean_rows = other._mean_rows
            self.fallback = other.fallback
            self._dim, self._count = other._dim, other._count
            self._vectors, self._sqnorms, self._owners = other._vectors, other._sqnorms, other._owners
            self._template_ids, self._known_templates = other._template_ids, other._known_templates
            self._person_ids, self._names, self._person_index = other._person_ids, other._names, other._person_index
            self._negatives = other._negatives

    def _drop(self, person_ids: set[str]) -> None:
        """Under the lock: every row of these people out, in one compaction."""
        indices = [self._person_index[p] for p in person_ids if p in self._person_index]
        if not indices:
            return
        count = self._count
        gone = np.zeros(len(self._person_ids), dtype=bool)
        gone[indices] = True
        keep = ~gone[self._owners[:count]]
        kept = int(keep.sum())
        self._known_templates.difference_update(self._template_ids[:count][~keep].tolist())
        for array in (self._vectors, self._sqnorms, self._owners, self._template_ids):
            array[:kept] = array[:count][keep]
        renumber = np.cumsum(~gone) - 1  # old person index -> its index among those kept
        self._owners[:kept] = renumber[self._owners[:kept]]
        if self._mean_rows is not None:
            self._mean_rows.compact(~gone)
        self._person_ids = [p for p, dropped in zip(self._person_ids, gone, strict=True) if not dropped]
        self._names = [n for n, dropped in zip(self._names, gone, strict=True) if not dropped]
        self._person_index = {person_id: i for i, person_id in enumerate(self._person_ids)}
        self._count = kept
        if kept == 0:
            self._reset(None, 0)

    def _recompute_means(self, indices: set[int]) -> None:
        """Under the lock: the mean templates of these people (indices) recomputed from their rows."""
        if self._mean_rows is None or not indices:
            return
        wanted = np.array(sorted(indices), dtype=np.int32)
        count = self._count
        theirs = np.isin(self._owners[:count], wanted)
        self._mean_rows.recompute(wanted, self._vectors[:count][theirs], self._owners[:count][theirs])

    def rename(self, person_id: str, name: str) -> None:
        """New display name for later matches; unknown people are a no-op (no template of this model)."""
        with self._lock:
            self._version += 1
            index = self._person_index.get(person_id)
            if index is not None:
                self._names[index] = name
        if self.fallback is not None:
            self.fallback.matcher.rename(person_id, name)

    def _grow(self, capacity: int) -> None:
        count = self._count
        vectors = np.empty((capacity, self._vectors.shape[1]), dtype=np.float32)
        vectors[:count] = self._vectors[:count]
        self._vectors = vectors
        for attribute in ("_sqnorms", "_owners", "_template_ids"):
            old = getattr(self, attribute)
            new = np.empty(capacity, dtype=old.dtype)
            new[:count] = old[:count]
            setattr(self, attribute, new)

    def _prepare_rows(self, matrix: np.ndarray, template_ids: list[int], what: str = "template") -> np.ndarray:
        """Rows as stored: unchanged for euclidean, unit length for cosine."""
        if self.metric != "cosine" or len(matrix) == 0:
            return matrix
        norms = np.linalg.norm(matrix, axis=1)
        if not (norms > 0).all():
            raise MatcherError(f"{what} {template_ids[int((norms <= 0).argmax())]} is all zeros (cosine metric)")
        return (matrix / norms[:, None]).astype(np.float32, copy=False)

    def _prepare_negatives(
        self, rows: Iterable[tuple[int, str, np.ndarray]], dim: int | None
    ) -> list[tuple[int, str, np.ndarray]]:
        """Negatives checked (dimension `dim`, finite, ids not repeated) and prepared as template rows are."""
        rows = list(rows)
        ids = [int(negative_id) for negative_id, _, _ in rows]
        if len(set(ids)) != len(ids):
            raise MatcherError("the negatives repeat an id")
        vectors = [np.asarray(vector, dtype=np.float32) for _, _, vector in rows]
        for negative_id, vector in zip(ids, vectors, strict=True):
            if vector.ndim != 1 or (dim is not None and vector.shape[0] != dim) or not np.isfinite(vector).all():
                raise MatcherError(f"negative {negative_id}: expected a finite embedding of {dim} values")
        if not vectors:
            return []
        matrix = self._prepare_rows(np.stack(vectors), ids, "negative")
        return [(negative_id, row[1], vector) for negative_id, row, vector in zip(ids, rows, matrix, strict=True)]

    # ---------------------------------------------------------------------------------------- search

    def search(self, embedding: np.ndarray, *, track: bool = False, templates_only: bool = False) -> Match:
        """The best person for one embedding; an empty gallery gives an unknown match at distance inf.
        `track`: the embedding is a track's mean, accepted only within the track threshold too. `templates_only`:
        the nearest template decides, mean templates aside (the enrollment guard asks about one photo)."""
        query = np.asarray(embedding)
        if query.ndim != 1:
            raise MatcherError(f"expected one embedding of shape (dim,), got shape {query.shape}")
        return self.search_many(query[None, :], track=track, templates_only=templates_only)[0]

    def search_many(self, embeddings: np.ndarray, *, track: bool = False, templates_only: bool = False) -> list[Match]:
        """`search` for each row of a (k, dim) array, with matrix-matrix products in blocks; with a fallback, people
        only the old model's templates know are searched there too (see the module docstring)."""
        queries = self._prepare_queries(embeddings)
        matches = self._search_own(queries, track, templates_only)
        fallback = self.fallback
        if fallback is None or not len(fallback.matcher) or not len(queries):
            return matches
        projected = np.stack([fallback.project(query) for query in queries])
        old = fallback.matcher.search_many(projected, track=track, templates_only=templates_only)
        own = self.own_person_ids()
        return [_agree(new, by_old, own) for new, by_old in zip(matches, old, strict=True)]

    def _search_own(self, queries: np.ndarray, track: bool, templates_only: bool) -> list[Match]:
        with self._lock:
            self._check_query_width(queries)
            if self._count == 0:
                return [Match(None, None, math.inf, math.inf, False) for _ in range(len(queries))]
            limit = min(self.threshold, self.track_threshold) if track else self.threshold
            means = self.mean_offset is not None and not templates_only
            block = max(1, _BLOCK_SCORES // (self._count + len(self._person_ids)))
            matches: list[Match] = []
            for start in range(0, len(queries), block):
                matches.extend(self._search_block(queries[start : start + block], limit, means))
            return matches

    def _prepare_queries(self, embeddings: np.ndarray) -> np.ndarray:
        """A (k, dim) float32 array as searched (unit rows for cosine), or MatcherError saying what is wrong."""
        queries = np.asarray(embeddings)
        if queries.ndim != 2:
            raise MatcherError(f"expected embeddings of shape (k, dim), got shape {queries.shape}")
        queries = queries.astype(np.float32, copy=False)
        if not np.isfinite(queries).all():
            raise MatcherError("a query embedding is not finite")
        if self.metric == "cosine" and len(queries):
            norms = np.linalg.norm(queries, axis=1)
            if not (norms > 0).all():
                raise MatcherError("a query embedding is all zeros (cosine metric)")
            queries = queries / norms[:, None]
        return queries

    def _check_query_width(self, queries: np.ndarray) -> None:
        """Under the lock: queries must have the held templates' dimension."""
        if self._dim is not None and queries.shape[1] != self._dim:
            raise MatcherError(f"embedding has {queries.shape[1]} values, the gallery holds {self._dim}-d templates")

    # ------------------------------------------------------------------------ one person and the others

    def templates_of(self, person_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(template ids, rows as searched: unit length for cosine) of one person, copies; empty if not held.

        With `nearest_other`, what the adaptation policy weighs: how a new template would sit among the
        person's own and against everyone else's."""
        with self._lock:
            index = self._person_index.get(person_id)
            if index is None:
                return np.empty(0, dtype=np.int64), np.empty((0, self._dim or 0), dtype=np.float32)
            rows = self._owners[: self._count] == index
            return self._template_ids[: self._count][rows].copy(), self._vectors[: self._count][rows].copy()

    def old_distance(self, embedding: np.ndarray, person_id: str) -> tuple[float, float, str] | None:
        """How far a face of the loaded embedder is from `person_id`'s templates in the fallback (the old model's
        units), the old model's threshold and id; None when there is no fallback or it holds none of theirs.
        Enrollment asks it to vet a photo added to someone known only by their old templates."""
        fallback = self.fallback
        if fallback is None:
            return None
        _, rows = fallback.matcher.templates_of(person_id)
        if not len(rows):
            return None
        query = fallback.matcher._prepare_queries(fallback.project(np.asarray(embedding))[None, :])[0]
        return float(np.linalg.norm(rows - query, axis=1).min()), fallback.matcher.threshold, fallback.model_id

    def nearest_other(self, embeddings: np.ndarray, person_id: str) -> np.ndarray:
        """For each row of a (k, dim) array, the distance to the nearest template of anyone but `person_id`
        (inf when nobody else is held), in the metric's units."""
        queries = self._prepare_queries(embeddings)
        with self._lock:
            self._check_query_width(queries)
            index = self._person_index.get(person_id, -1)
            others = self._owners[: self._count] != index
            vectors = self._vectors[: self._count][others]
            if not len(vectors) or not len(queries):
                return np.full(len(queries), np.inf)
            sqnorms = self._sqnorms[: self._count][others]
            nearest = (sqnorms[None, :] - 2.0 * (queries @ vectors.T)).argmin(axis=1)
            return np.linalg.norm(vectors[nearest] - queries, axis=1).astype(np.float64)

    def _parts(self, means: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, float]]:
        """Under the lock: what is searched, as (rows, their squared norms, their owners, what is added to their
        distance): the templates, then with `means` the mean templates (owners None: row i is person i's)."""
        count, people = self._count, len(self._person_ids)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, float]] = [
            (self._vectors[:count], self._sqnorms[:count], self._owners[:count], 0.0)
        ]
        if means and self._mean_rows is not None:
            rows = self._mean_rows
            parts.append((rows.vectors[:people], rows.sqnorms[:people], None, self.mean_offset or 0.0))
        return parts

    def _search_block(self, queries: np.ndarray, limit: float, means: bool) -> list[Match]:
        """Each part ranks its rows by ||r||² - 2 r·q (the squared distance less ||q||²); the nearest row of each
        part, at its exact distance plus the part's offset, gives the best person; the same once that person's
        rows are masked out gives the second-best, and so the margin."""
        parts = self._parts(means)
        rows = np.arange(len(queries))
        scores = []
        for vectors, sqnorms, _, _ in parts:
            part = queries @ vectors.T
            part *= -2.0
            part += sqnorms
            scores.append(part)

        def nearest() -> tuple[np.ndarray, np.ndarray]:
            """(distance, owner) of the nearest row over every part, per query."""
            distance = np.full(len(queries), np.inf)
            owner = np.zeros(len(queries), dtype=np.int64)
            for (vectors, _, owners, offset), part in zip(parts, scores, strict=True):
                column = part.argmin(axis=1)
                candidate = np.linalg.norm(vectors[column] - queries, axis=1) + offset
                candidate[~np.isfinite(part[rows, column])] = np.inf  # every row of this part masked out
                better = candidate < distance
                distance[better] = candidate[better]
                owner[better] = (column if owners is None else owners[column])[better]
            return distance, owner

        distance, best_owner = nearest()
        if len(self._person_ids) > 1:
            for (_, _, owners, _), part in zip(parts, scores, strict=True):
                if owners is None:
                    part[rows, best_owner] = np.inf
                else:
                    part[owners[None, :] == best_owner[:, None]] = np.inf
            second, _ = nearest()
            # Exact distances for the two rows; a near-tie can make the difference a hair below zero.
            margin = np.maximum(second - distance, 0.0)
        else:
            margin = np.full(len(queries), np.inf)
        matches = []
        negatives = self._negatives
        for i in rows:
            owner, dist, gap = int(best_owner[i]), float(distance[i]), float(margin[i])
            person_id = self._person_ids[owner]
            accepted = dist < limit and gap >= self.margin
            if accepted and negatives and negatives.nearest(person_id, queries[i]) < dist:
                accepted = False  # closer to a face the operator said is not this person than to their own
            matches.append(Match(person_id, self._names[owner], dist, gap, accepted))
        return matches


def _agree(new: Match, old: Match, own: set[str]) -> Match:
    """One verdict from the loaded model's templates (`new`) and the old model's (`old`): the old one counts only
    for a person with no template of the loaded model, and only when the new one names nobody else."""
    if not old.accepted or old.person_id in own:
        return new
    if new.accepted:  # each side names someone else: nobody is named
        return dataclasses.replace(new, accepted=False)
    return old


def _projection(embedder: FusedEmbedder, model_id: str) -> Callable[[np.ndarray], np.ndarray]:
    return lambda vector: embedder.member_vector(vector, model_id)


def _check_shape(vector: np.ndarray, dim: int | None, template_id: int) -> int:
    """The vector's dimension, or a MatcherError if it is not 1-D or not `dim` long."""
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise MatcherError(f"template {template_id}: expected a 1-D embedding, got shape {vector.shape}")
    if dim is not None and vector.shape[0] != dim:
        raise MatcherError(f"template {template_id}: embedding has {vector.shape[0]} values, the gallery holds {dim}")
    return int(vector.shape[0])

"""Each person's mean template, kept beside the matcher's templates (`Matcher`, `mean_offset`).

Row i is person i's (the matcher's person index), as searched: unit length for cosine (the direction of the mean of
their unit templates), the plain mean for euclidean. A person's count and the plain mean's norm are kept too, so one
more template updates their mean in O(dim) instead of re-reading their rows among all the others (an add at 100,000
templates); a rewrite of their templates recomputes it from the rows. Not thread-safe: the matcher's lock guards it.
"""

from __future__ import annotations

import numpy as np

_MIN_CAPACITY = 64


class MeanTemplates:
    """Mean templates by person index, grown by doubling and compacted with the matcher's people."""

    def __init__(self, *, cosine: bool, dim: int) -> None:
        self.cosine = cosine
        self.dim = dim
        self.vectors = np.empty((0, dim), dtype=np.float32)  # as searched
        self.sqnorms = np.empty(0, dtype=np.float32)
        self._counts = np.empty(0, dtype=np.int64)  # templates averaged
        self._scales = np.empty(0, dtype=np.float64)  # the plain mean's norm for cosine (what unit length divided)

    @classmethod
    def of(cls, rows: np.ndarray, owners: np.ndarray, people: int, *, cosine: bool) -> MeanTemplates:
        """Every person's mean from all their rows (`owners`: person index 0..people-1 of each row)."""
        means = cls(cosine=cosine, dim=rows.shape[1])
        means.reserve(people)
        means.recompute(np.arange(people), rows, owners)
        return means

    def reserve(self, people: int) -> None:
        """Room for `people` rows; new rows are set by `recompute` or `add` before anything searches them."""
        if len(self.vectors) >= people:
            return
        capacity = max(people, 2 * len(self.vectors), _MIN_CAPACITY)
        for name in ("vectors", "sqnorms", "_counts", "_scales"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def recompute(self, people: np.ndarray, rows: np.ndarray, owners: np.ndarray) -> None:
        """The means of `people` (person indices, sorted) from `rows`, all their templates (each owned by one
        of them, as `owners` says). A round adds each person's k-th row at once: no person twice in a round, so
        the fancy-indexed += is exact, and no copy of all the rows is made."""
        slot = np.searchsorted(people, owners)
        order = np.argsort(slot, kind="stable")
        starts = np.searchsorted(slot[order], np.arange(len(people)))
        place = np.empty(len(slot), dtype=np.int64)  # each row's place among its person's rows
        place[order] = np.arange(len(slot)) - starts[slot[order]]
        sums = np.zeros((len(people), self.dim), dtype=np.float32)
        for k in range(int(place.max()) + 1 if len(place) else 0):
            chosen = np.flatnonzero(place == k)
            sums[slot[chosen]] += rows[chosen]
        counts = np.bincount(slot, minlength=len(people))
        self._set(people, sums.astype(np.float64) / np.maximum(counts, 1)[:, None], counts)

    def add(self, person: int, vector: np.ndarray) -> None:
        """One more template (as searched) of `person`, whose rows so far are the mean's (none: a new person)."""
        count = int(self._counts[person])
        total = self.vectors[person].astype(np.float64) * self._scales[person] * count + vector
        self._set(np.array([person]), (total / (count + 1))[None, :], np.array([count + 1]))

    def compact(self, keep: np.ndarray) -> None:
        """Drop the people whose entry in `keep` (one per person held) is False; the others move up in order."""
        kept = int(keep.sum())
        for name in ("vectors", "sqnorms", "_counts", "_scales"):
            array = getattr(self, name)
            array[:kept] = array[: len(keep)][keep]
            array[kept : len(keep)] = 0  # free rows read as "no template yet" by the next person's `add`

    def _set(self, people: np.ndarray, means: np.ndarray, counts: np.ndarray) -> None:
        """Plain means (float64) of these people, stored as searched; a cosine mean that cancels out stays zero,
        which is a unit away from every query: nothing is drawn to it."""
        scales = np.linalg.norm(means, axis=1) if self.cosine else np.ones(len(means))
        searched = np.divide(means, scales[:, None], out=np.zeros_like(means), where=scales[:, None] > 0)
        self.vectors[people] = searched
        self.sqnorms[people] = np.einsum("ij,ij->i", searched, searched)
        self._counts[people] = counts
        self._scales[people] = scales

"""Negatives in memory: per person, embeddings of faces that were wrongly named as them (`wrong_person`).

The rule (issue 13): a probe closer to one of P's negatives than to P's nearest own template is not named
P. Only the best candidate of a search is checked, so a search pays for negatives only when it is about to
name someone who has any: a dictionary lookup, then a product with that person's few rows (the store caps
them per person, `feedback.negatives_per_person`). Not locked: the Matcher that holds it guards it with its
own lock, and swaps a whole set in (`load`, `take`) as it does its template matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


class NegativeSet:
    """Person id -> (negative ids, rows as the matcher stores them); rows are prepared by the caller."""

    def __init__(self) -> None:
        self._by_person: dict[str, tuple[list[int], np.ndarray]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def people(self) -> set[str]:
        return set(self._by_person)

    def ids(self, person_ids: Iterable[str] | None = None) -> set[int]:
        """The negative ids held (of these people only, if given)."""
        people = self._by_person if person_ids is None else [p for p in person_ids if p in self._by_person]
        return {negative_id for person_id in people for negative_id in self._by_person[person_id][0]}

    def replace(self, person_ids: Iterable[str], rows: Iterable[tuple[int, str, np.ndarray]]) -> None:
        """Hold exactly `rows` (negative id, person id, prepared vector) for each of `person_ids`."""
        self.drop(person_ids)
        grouped: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for negative_id, person_id, vector in rows:
            ids, vectors = grouped.setdefault(person_id, ([], []))
            ids.append(int(negative_id))
            vectors.append(vector)
        for person_id, (ids, vectors) in grouped.items():
            self._by_person[person_id] = (ids, np.stack(vectors).astype(np.float32, copy=False))
            self._count += len(ids)

    def add(self, negative_id: int, person_id: str, vector: np.ndarray) -> None:
        ids, matrix = self._by_person.get(person_id, ([], np.empty((0, len(vector)), np.float32)))
        self._by_person[person_id] = ([*ids, int(negative_id)], np.vstack([matrix, vector[None, :]]))
        self._count += 1

    def drop(self, person_ids: Iterable[str]) -> None:
        for person_id in person_ids:
            held = self._by_person.pop(person_id, None)
            if held is not None:
                self._count -= len(held[0])

    def nearest(self, person_id: str, query: np.ndarray) -> float:
        """Distance from `query` (prepared as the rows are) to the person's nearest negative; inf without any."""
        held = self._by_person.get(person_id)
        if held is None:
            return math.inf
        return float(np.sqrt(np.min(np.einsum("ij,ij->i", held[1] - query, held[1] - query))))

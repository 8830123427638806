"""The one writer of the live matcher: it follows every change to the gallery file, whoever made it.

Negatives (corrections) travel with their person's templates: read, replaced and dropped with them.

- A write of this process (a command enrolls, renames, erases, or a model update rebuilds templates) is
  recorded around the write (`recorded`) and handed over as a `GalleryWrite`: `apply` refreshes just the
  people it changed, a few rows read by index, whatever the gallery's size.
- Another process (`faceagent person delete` on the command line) writes to the same SQLite file. Erasure
  must take effect at once, not at the next restart, so `maybe_sync` asks a cheap question every
  `interval_seconds` (one aggregate over indexes) and, when the answer changed in a way no recorded write
  explains, drops the people erased meanwhile at once and then rebuilds the matcher (about a second at
  100,000 templates: never on the frame loop). The new matrix is built from one read snapshot, aside, and
  swapped in only if the matcher did not change while it was read (`Matcher.load(if_version=)`); otherwise
  it is read again, so a reload can never bring back a person just erased.
- A new embedder (`switch_model`): its templates are read and its matrix built aside, then handed to
  `go_live`, which swaps it in together with the new models.

A matcher with a fallback (`Matcher.fallback`: the old model's templates under a fused embedder, and kin fused
models' cut to that model's part) has those templates and negatives read, refreshed and reloaded beside its own,
from the same snapshots.

A recorded write explains the fingerprint it left when the gallery was, just before it, what the matcher
already held, and no other connection committed while it ran (SQLite's `data_version`); anything else
leaves the fingerprint unexplained, and the next look rebuilds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.gallery.matcher import Fallback, Matcher
from agent.gallery.store import Fingerprint, GalleryStore
from agent.vision.embedder import FaceEmbedder

log = logging.getLogger(__name__)

UNLOADED: Fingerprint = (-1, -1, -1, "", -1, -1, -1)  # no gallery's: the matcher holds nothing read yet


@dataclass(frozen=True)
class GalleryWrite:
    """The people one write of this process changed, and the gallery's fingerprint just before and after it."""

    people: frozenset[str]
    before: Fingerprint
    after: Fingerprint | None  # None: another connection committed meanwhile, so the change is not all ours


class GalleryWrites(Protocol):
    """Where a gallery write is announced, so the live matcher follows it before the writer goes on."""

    def writing(self, store: GalleryStore) -> AbstractContextManager[set[str]]:
        """Around a write through `store`: add the ids of the people changed to the set it yields."""
        ...


@contextmanager
def recorded(store: GalleryStore, done: Callable[[GalleryWrite], None]) -> Iterator[set[str]]:
    """Record the write made inside (through `store`) and pass it to `done` once it has succeeded; a write
    that raised changed nothing (each store write is one transaction) or is caught by the next look."""
    people: set[str] = set()
    version = store.data_version()
    before = store.fingerprint()
    yield people
    after = store.fingerprint()
    done(GalleryWrite(frozenset(people), before, after if store.data_version() == version else None))


class GallerySync:
    """Owned by one thread, with that thread's own store (SQLite connections stay on their thread)."""

    def __init__(
        self,
        store: GalleryStore,
        matcher: Matcher,
        model_id: str,
        *,
        interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        seen: Fingerprint | None = None,
    ) -> None:
        """`seen`: the fingerprint read with the rows the matcher holds (default: the gallery's now)."""
        self.store = store
        self.matcher = matcher
        self.model_id = model_id  # whose templates the matcher holds; changed only by `switch_model`
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._due = clock() + interval_seconds
        self._seen = seen if seen is not None else self.store.fingerprint()
        self.reloads = 0
        self.retries = 0
        self.refreshes = 0

    def writing(self, store: GalleryStore) -> AbstractContextManager[set[str]]:
        """`GalleryWrites` applied at once, on the writer's thread and through its connection (where no thread
        of its own owns the matcher: the CLI's tools, tests)."""
        return recorded(store, lambda write: self.apply(write, store))

    def apply(self, write: GalleryWrite, store: GalleryStore | None = None) -> None:
        """Refresh the people a write of this process changed, reading through `store` (default: the sync's
        own); their rows are read now, so a later change to them (by anyone) is taken too."""
        if write.people:
            reader = store or self.store
            fallback = self.matcher.fallback
            with reader.snapshot():
                rows = reader.person_templates(self.model_id, write.people)
                negatives = reader.negatives(self.model_id, write.people)
                if fallback is not None:
                    old_rows, old_negatives = read_old(reader, fallback, write.people)
            self.matcher.replace_people(write.people, rows, negatives)
            if fallback is not None:
                fallback.matcher.replace_people(write.people, old_rows, old_negatives)
            self.refreshes += 1
        if write.after is not None and write.before == self._seen:
            self._seen = write.after  # the change is all ours, and now in the matcher: nothing to reload

    def maybe_sync(self) -> bool:
        """Reload the matcher if the gallery changed since the last look in a way no write explained; True
        when it did."""
        now = self.clock()
        if now < self._due:
            return False
        self._due = now + self.interval_seconds
        if self.store.fingerprint() == self._seen:
            return False
        self.drop_erased()
        if not self.reload():
            self._due = now  # a command changed the matcher while the rows were read: read again at once
            return False
        log.info("gallery changed on disk: matcher reloaded (%d templates)", len(self.matcher))
        return True

    def drop_erased(self) -> int:
        """Erasure first: people held but gone from the file leave the matcher now, before the full reload
        (a second or more at 100,000 templates). The matcher is read before the file, so a person a command
        has just enrolled (file first, then matcher) is never taken for erased."""
        held = self.matcher.person_ids()
        erased = held - self.store.person_ids()
        for person_id in erased:
            self.matcher.remove_person(person_id)
        if erased:
            log.info("gallery changed on disk: %d erased people left the matcher", len(erased))
        return len(erased)

    def reload(self) -> bool:
        """Load every template of the model from one snapshot; False (nothing swapped) when the matcher
        changed meanwhile, so the rows may predate a command's change."""
        version = self.matcher.version  # before the rows: a patch after it fails the swap
        fallback = self.matcher.fallback
        old_version = fallback.matcher.version if fallback is not None else 0
        with self.store.snapshot():
            current, rows, negatives = self._read(self.model_id)
            old_rows, old_negatives = read_old(self.store, fallback) if fallback is not None else ([], [])
        swapped = fallback is None or fallback.matcher.load(old_rows, negatives=old_negatives, if_version=old_version)
        swapped = swapped and self.matcher.load(rows, negatives=negatives, if_version=version)
        if not swapped:
            self.retries += 1
            return False
        self._seen = current
        self.reloads += 1
        return True

    def switch_model(
        self, model_id: str, go_live: Callable[[Matcher], None], embedder: FaceEmbedder | None = None
    ) -> None:
        """Build the matcher of `model_id`'s templates aside and hand it to `go_live`, which makes it live
        (with the models that made it) or raises: nothing here changes unless it returns. `embedder` (the
        model's): the new matcher takes its stated figures where [gallery] sets none; None: today's figures."""
        if embedder is not None:
            matcher = self.matcher.sibling(embedder)
        else:
            matcher = Matcher(
                metric=self.matcher.metric,
                threshold=self.matcher.threshold,
                margin=self.matcher.margin,
                track_threshold=self.matcher.track_threshold,
                mean_offset=self.matcher.mean_offset,
            )
        current = load_gallery(matcher, self.store, model_id)
        go_live(matcher)
        self.model_id, self._seen = model_id, current
        log.info("matcher switched to %s: %d templates", model_id, len(self.matcher))

    def _read(
        self, model_id: str
    ) -> tuple[Fingerprint, list[tuple[int, str, str, np.ndarray]], list[tuple[int, str, np.ndarray]]]:
        """The fingerprint, templates and negatives of `model_id`, from one snapshot."""
        return _read(self.store, model_id)


def _read(
    store: GalleryStore, model_id: str
) -> tuple[Fingerprint, list[tuple[int, str, str, np.ndarray]], list[tuple[int, str, np.ndarray]]]:
    with store.snapshot():  # held only while reading: an erasure's WAL checkpoint waits for readers
        return store.fingerprint(), list(store.iter_templates(model_id)), store.negatives(model_id)


def load_gallery(matcher: Matcher, store: GalleryStore, model_id: str) -> Fingerprint:
    """Fill `matcher` with every template and negative of `model_id` and, when it has a fallback, of the fallback's
    model, all from one snapshot; the fingerprint read with them."""
    fallback = matcher.fallback
    with store.snapshot():
        current, rows, negatives = _read(store, model_id)
        if fallback is not None:
            old_rows, old_negatives = read_old(store, fallback)
    if fallback is not None:
        fallback.matcher.load(old_rows, negatives=old_negatives)
    matcher.load(rows, negatives=negatives)
    return current


def read_old(
    store: GalleryStore, fallback: Fallback, people: frozenset[str] | None = None
) -> tuple[list[tuple[int, str, str, np.ndarray]], list[tuple[int, str, np.ndarray]]]:
    """The templates and negatives a fallback holds (of `people` only, if given), each cut to its model's part;
    called inside the caller's snapshot. Ids are the tables' own, so rows of several models never collide."""
    rows: list[tuple[int, str, str, np.ndarray]] = []
    negatives: list[tuple[int, str, np.ndarray]] = []
    for model_id in fallback.model_ids:
        found = store.iter_templates(model_id) if people is None else store.person_templates(model_id, people)
        rows += [(ident, person, name, fallback.cut(vector)) for ident, person, name, vector in found]
        negatives += [
            (ident, person, fallback.cut(vector)) for ident, person, vector in store.negatives(model_id, people)
        ]
    return rows, negatives

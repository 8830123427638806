"""Keep the in-memory matcher in step with changes other processes make to the gallery file.

`faceagent person delete` on the command line writes to the same SQLite file the running service
matches from. Erasure must take effect at once, not at the next restart, so a background thread (never
the frame loop: a reload of 100,000 templates takes about a second) asks this cheap question every
`interval_seconds` (one aggregate over indexes) and, when the answer changes, drops the people erased
meanwhile at once and then rebuilds the matcher. The new matrix is built from one read snapshot and
swapped in only if no command patched the matcher while it was read (`Matcher.load(if_version=)`);
otherwise it is read again, so a reload can never bring back a person a command has just erased.
Changes made through the service's own commands are already in the matcher; the reload after them is
redundant but harmless, and off the frame loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore

log = logging.getLogger(__name__)

Fingerprint = tuple[int, int, int, str, int]
UNLOADED: Fingerprint = (-1, -1, -1, "", -1)  # no gallery's: the matcher holds nothing read yet


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
        self.model_id = model_id  # set by the frame loop on a model switch, before its own matcher.load
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._due = clock() + interval_seconds
        self._seen = seen if seen is not None else self.store.fingerprint()
        self.reloads = 0
        self.retries = 0

    def maybe_sync(self) -> bool:
        """Reload the matcher if the gallery changed since the last look; True when it did."""
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
        version = self.matcher.version  # before the model id and the rows: a switch or patch after it fails the swap
        model_id = self.model_id
        with self.store.snapshot():  # held only while reading: an erasure's WAL checkpoint waits for readers
            current = self.store.fingerprint()
            rows = list(self.store.iter_templates(model_id))
        swapped = self.matcher.load(rows, if_version=version)
        if not swapped:
            self.retries += 1
            return False
        self._seen = current
        self.reloads += 1
        return True

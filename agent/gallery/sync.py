"""Keep the in-memory matcher in step with changes other processes make to the gallery file.

`faceagent person delete` on the command line writes to the same SQLite file the running service
matches from. Erasure must take effect at once, not at the next restart, so the frame loop asks this
cheap question every few seconds (one indexed aggregate query) and reloads the matcher when the answer
changes. Changes made through the service's own commands are already in the matcher; a reload after
them is redundant but harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore

log = logging.getLogger(__name__)


class GallerySync:
    def __init__(
        self,
        store: GalleryStore,
        matcher: Matcher,
        model_id: str,
        *,
        interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.matcher = matcher
        self.model_id = model_id
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._due = clock() + interval_seconds
        self._seen = self.store.fingerprint()
        self.reloads = 0

    def maybe_sync(self) -> bool:
        """Reload the matcher if the gallery changed since the last look; True when it did."""
        now = self.clock()
        if now < self._due:
            return False
        self._due = now + self.interval_seconds
        current = self.store.fingerprint()
        if current == self._seen:
            return False
        self._seen = current
        self.matcher.load(self.store.iter_templates(self.model_id))
        self.reloads += 1
        log.info("gallery changed on disk: matcher reloaded (%d templates)", len(self.matcher))
        return True

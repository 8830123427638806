"""Retention: events and audit records older than their limit, and negatives past their time to live, are
deleted on a schedule.

Whatever loop writes events owns one `RetentionKeeper` and calls `maybe_purge()` as it goes, so data
never outlives its limit by more than one purge interval, with no separate timer thread to manage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.config import RetentionSettings
from agent.gallery.store import GalleryStore
from agent.storage import StorageFullError, StorageHealth

log = logging.getLogger(__name__)


class RetentionKeeper:
    """With a `storage` health object, a purge the full file system refuses is reported there and tried
    again at the next interval (the rollback left everything as it was); without one, it raises."""

    def __init__(
        self,
        store: GalleryStore,
        settings: RetentionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        storage: StorageHealth | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.wall_clock = wall_clock
        self.last_purge: float | None = None
        self.purged = {"events": 0, "audit": 0, "negatives": 0}

    def maybe_purge(self) -> dict[str, int] | None:
        """Purge if the interval has passed (and at the first call); the counts, or None if not due (or refused)."""
        now = self.clock()
        if self.last_purge is not None and now - self.last_purge < self.settings.purge_interval_seconds:
            return None
        self.last_purge = now
        try:
            counts = self.store.purge_expired(
                events_days=self.settings.events_days, audit_days=self.settings.audit_days, now=self.wall_clock()
            )
        except StorageFullError as exc:
            if self.storage is None:
                raise
            self.storage.write_failed(exc)
            return None
        if self.storage is not None and any(counts.values()):  # a purge with nothing to delete writes nothing
            self.storage.write_succeeded()
        for key, value in counts.items():
            self.purged[key] += value
        if any(counts.values()):
            log.info(
                "retention: purged %d events, %d audit records and %d expired negatives",
                counts["events"],
                counts["audit"],
                counts["negatives"],
            )
        return counts

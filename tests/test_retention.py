"""Retention runs on its own schedule from whatever loop writes events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.config import RetentionSettings
from agent.gallery.retention import RetentionKeeper
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_iso

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def add_event(store: GalleryStore, age: timedelta) -> None:
    store.add_event(
        "face_unknown", {"schema": 1}, event_id=new_event_id(), person_id=None, created_at=utc_iso(NOW - age)
    )


def test_purges_at_first_call_then_once_per_interval(tmp_path: Path) -> None:
    ticks = iter([0.0, 10.0, 3601.0])
    with GalleryStore.open(tmp_path / "g.db") as store:
        keeper = RetentionKeeper(
            store, RetentionSettings(events_days=30, purge_interval_seconds=3600), clock=lambda: next(ticks),
            wall_clock=lambda: NOW,
        )  # fmt: skip
        add_event(store, timedelta(days=31))
        add_event(store, timedelta(days=1))
        assert keeper.maybe_purge() == {"events": 1, "audit": 0, "negatives": 0}
        add_event(store, timedelta(days=40))
        assert keeper.maybe_purge() is None  # 10 s later: not due
        assert keeper.maybe_purge() == {"events": 1, "audit": 0, "negatives": 0}
        assert len(store.pending_events()) == 1 and keeper.purged["events"] == 2

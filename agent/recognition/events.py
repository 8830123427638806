"""Events: one per identity decision, written to the SQLite outbox, with cooldowns against floods.

A person standing in front of the camera is tracked, lost, and tracked again many times a minute;
each new track decides again. The cooldowns (per person, and one for all unknowns, per camera) turn
that into one event per visit. Times are the frames' timestamps, so a replay gives the same events.

Payloads never carry an embedding or an image: an event says who was seen where and when, nothing
from which a face could be rebuilt. Unknown faces carry no distance or margin either, since those
describe how close a stranger came to a named person.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from agent.config import EventSettings
from agent.identity import Match, new_event_id, utc_iso
from agent.storage import StorageFullError, StorageHealth
from agent.tracking.tracker import Track
from agent.wire import FACE_RECOGNIZED as RECOGNIZED  # the names this module has always exported
from agent.wire import FACE_UNKNOWN as UNKNOWN
from agent.wire import PERSON_ERASED as ERASED  # queued by GalleryStore.delete_person: the id, never the name
from agent.wire import SCHEMA, FaceEvent, FaceRecognized, FaceUnknown, Sighting

if TYPE_CHECKING:
    from agent.gallery.store import GalleryStore

__all__ = ["ERASED", "RECOGNIZED", "UNKNOWN", "Cooldown", "EventEmitter", "build_event"]


def build_event(
    track: Track, match: Match, *, camera_id: str, model_id: str, at: datetime, include_names: bool = True
) -> FaceEvent:
    """The payload for a decided track: `face_recognized` if `match.accepted`, else `face_unknown`.

    Without `include_names` a recognition carries the `person_id` only: the name never leaves the device."""
    event_id = new_event_id()
    sighting: Sighting = {
        "track_id": track.id,
        "first_seen": utc_iso(track.first_seen),
        "last_seen": utc_iso(track.last_seen),
        "frames": track.frames,
        "camera_id": camera_id,
        "model_id": model_id,
        "at": utc_iso(at),
    }
    if not match.accepted or match.person_id is None or match.name is None:  # accepted: always a gallery person
        unknown: FaceUnknown = {"schema": SCHEMA, "event_id": event_id, "type": UNKNOWN, **sighting}
        return unknown
    recognized: FaceRecognized = {
        "schema": SCHEMA,
        "event_id": event_id,
        "type": RECOGNIZED,
        "person_id": match.person_id,
        "name": match.name,
        "distance": round(match.distance, 4),
        # Infinite when only one person is enrolled: JSON has no infinity, so null.
        "margin": round(match.margin, 4) if math.isfinite(match.margin) else None,
        **sighting,
    }
    if not include_names:
        del recognized["name"]
    return recognized


class Cooldown:
    """When each key last produced an event, and whether enough time has passed since."""

    def __init__(self, max_keys: int = 1024) -> None:
        self.max_keys = max_keys
        self._last: dict[str | None, datetime] = {}

    def __len__(self) -> int:
        return len(self._last)

    def ready(self, key: str | None, at: datetime, seconds: float) -> bool:
        """True if `key` has not fired within `seconds` before `at`. A clock that went backwards
        (a camera re-synchronised, a replay restarted) counts as elapsed rather than silencing forever."""
        last = self._last.get(key)
        if last is None:
            return True
        elapsed = (at - last).total_seconds()
        return elapsed < 0 or elapsed >= seconds

    def mark(self, key: str | None, at: datetime, longest: float) -> None:
        """Record that `key` fired at `at`; entries older than `longest` seconds are dropped when many pile up."""
        self._last[key] = at
        if len(self._last) > self.max_keys:
            horizon = at - timedelta(seconds=longest)
            self._last = {k: t for k, t in self._last.items() if t > horizon}


class EventEmitter:
    """Decisions of one camera in, cooled-down events out, each in the outbox before it is returned.

    With a `storage` health object, an event the file system has no room for is dropped and counted
    there (the frame loop runs on); without one, the StorageFullError reaches the caller.
    """

    def __init__(
        self,
        settings: EventSettings,
        store: GalleryStore,
        *,
        camera_id: str,
        model_id: str,
        storage: StorageHealth | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.camera_id = camera_id
        self.model_id = model_id
        self.storage = storage
        self.cooldown = Cooldown()
        self.emitted: Counter[str] = Counter()  # by event type
        self.suppressed = 0  # decisions silenced by a cooldown

    def emit(self, track: Track, match: Match, at: datetime) -> FaceEvent | None:
        """The event for this decision, already stored; None if a cooldown or the settings silence it, or
        if it was dropped for lack of space (the cooldown is then left as it was: the next one may go)."""
        if match.accepted:
            key, seconds = match.person_id, self.settings.cooldown_seconds
        elif self.settings.unknown_events:
            key, seconds = None, self.settings.unknown_cooldown_seconds
        else:
            return None
        if not self.cooldown.ready(key, at, seconds):
            self.suppressed += 1
            return None
        event = build_event(
            track,
            match,
            camera_id=self.camera_id,
            model_id=self.model_id,
            at=at,
            include_names=self.settings.include_names,
        )
        person_id = event["person_id"] if event["type"] == RECOGNIZED else None
        try:
            self.store.add_event(
                event["type"], event, event_id=event["event_id"], person_id=person_id, created_at=event["at"]
            )
        except StorageFullError as exc:
            if self.storage is None:
                raise
            self.storage.write_failed(exc, dropped_events=1)
            return None
        if self.storage is not None:
            self.storage.write_succeeded()
        # Only now: an event the outbox refused must not silence the next one.
        longest = max(self.settings.cooldown_seconds, self.settings.unknown_cooldown_seconds)
        self.cooldown.mark(key, at, longest)
        self.emitted[event["type"]] += 1
        return event

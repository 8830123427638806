"""What the frame loop tells the world besides the outbox rows: presence, the last person recognized,
Home Assistant's event entity, and the events themselves to a local listener (`--print-events`).

Owned by the frame loop (its gallery connection reads the last person); paho's thread only re-sends the
last presence on a reconnect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.config import Settings
from agent.errors import FaceagentError
from agent.gallery.store import GalleryStore
from agent.link.homeassistant import HomeAssistantDiscovery, LastPersonTopic
from agent.link.mqtt import MqttLink
from agent.link.outbox import OutboxPublisher
from agent.link.telemetry import Telemetry
from agent.wire import FACE_RECOGNIZED, FaceEvent, Presence

log = logging.getLogger(__name__)


class FramePublisher:
    def __init__(
        self,
        settings: Settings,
        store: GalleryStore,
        telemetry: Telemetry,
        *,
        link: MqttLink | None = None,
        outbox: OutboxPublisher | None = None,
        discovery: HomeAssistantDiscovery | None = None,
        last_person: LastPersonTopic | None = None,
        on_event: Callable[[FaceEvent], None] | None = None,
    ) -> None:
        self.store, self.telemetry, self.link, self.outbox = store, telemetry, link, outbox
        self.discovery, self.last_person, self.on_event = discovery, last_person, on_event
        self.include_names = settings.events.include_names
        self.absent_after = settings.tracking.max_age_frames
        self.events_written = 0
        self._present: bool | None = None  # None: not published yet, so the first frame publishes either way
        self._presence: Presence | None = None  # the last presence document, re-sent on every connect
        self._empty_frames = 1 << 30  # start "absent"

    def use_settings(self, settings: Settings) -> None:
        self.include_names = settings.events.include_names
        self.absent_after = settings.tracking.max_age_frames

    def emitted(self, events: list[FaceEvent]) -> None:
        """Events the recognizer has just put in the outbox: counted, announced, sent."""
        if not events:
            return
        self.events_written += len(events)
        if any(event["type"] == FACE_RECOGNIZED for event in events):
            self.refresh_last_person()
        if self.discovery is not None:
            self.discovery.publish_events(events, include_names=self.include_names)
        if self.outbox is not None:
            self.outbox.notify()
        if self.on_event is not None:
            for event in events:
                self.on_event(event)

    def presence(self, faces: int) -> None:
        """Publish "face present" when it changes; absence only after a track's worth of empty frames,
        so one missed detection does not flap the Home Assistant sensor."""
        self._empty_frames = 0 if faces else self._empty_frames + 1
        present = faces > 0 or self._empty_frames < self.absent_after
        if self.link is not None and present != self._present:
            self._present = present
            self._presence = self.telemetry.presence(faces)
            self.link.publish_presence(self._presence)

    def resend_presence(self) -> None:
        """On paho's thread after a (re)connect: a presence published while disconnected is sent now."""
        if (presence := self._presence) is not None and self.link is not None:
            self.link.publish_presence(presence)

    def nobody_watched(self) -> None:
        """At stop: presence is never left "on"."""
        if self.link is not None:
            self._presence = self.telemetry.presence(0)
            self.link.publish_presence(self._presence)

    def refresh_last_person(self) -> None:
        """The Home Assistant sensor after a recognition, a rename or an erasure; a gallery that cannot be read
        now leaves it as it is until the next change (logged)."""
        if self.last_person is None:
            return
        try:
            self.last_person.refresh(self.store, include_names=self.include_names)
        except FaceagentError as exc:
            log.warning("last_person not updated: %s", exc)

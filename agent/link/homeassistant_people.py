"""Home Assistant, optional: "<name> seen in the last N minutes", one binary sensor per enrolled person.

Off unless `homeassistant.person_presence_minutes` is above 0. Each recognition of a person publishes
`{"seen": true}` retained on `<base>/seen/<person id>`; Home Assistant's own `off_delay` switches the sensor off
N minutes after the last one, so it goes off on time even when the agent is gone (`expire_after` would make it
unavailable instead, and restores a stale `on` across a Home Assistant restart). The agent also overwrites the
retained state with `{"seen": false}` when the minutes are up, so a Home Assistant that restarts later is not
told `on`, and at every connect, so an `on` left by a crash does not outlive it.

A person's sensor is announced when they are enrolled (the gallery thread sees the gallery change) or first
recognized, renamed with them, and removed when they are erased: an empty retained config (Home Assistant
deletes the entity) and an empty retained state. Names obey `events.include_names`: without them the sensor
is named by the person's id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from agent.gallery.store import Fingerprint, GalleryStore
from agent.link.mqtt import MqttLink
from agent.link.topics import safe_segment
from agent.wire import FACE_RECOGNIZED, SCHEMA, DiscoveryCommon, FaceEvent, PersonSeen, PersonSeenDiscovery, encode

SEEN_TEMPLATE = "{{ 'ON' if value_json.seen else 'OFF' }}"
LOOK_SECONDS = 2.0  # how often the gallery is asked (one aggregate) whether people came, went or were renamed


def person_label(person_id: str, name: str | None, *, include_names: bool) -> str:
    """How a person is named in Home Assistant: by name where names may leave the device, else by id."""
    return name if include_names and name else person_id


class PersonSensors:
    """The per-person sensors of one device.

    Threads: `seen` runs on the frame loop and `keep` on the gallery thread, both under one lock. Paho's thread
    (a connect, Home Assistant's birth message) only asks for a re-send, which the next `keep` makes: a publish
    made under the lock may wait for paho's callback lock, so paho's thread must never wait for this one.
    `_labels`, `_held` and `_removals` are replaced whole, never changed in place, so `topics()` may read them
    from any thread.
    """

    def __init__(
        self,
        link: MqttLink,
        discovery_prefix: str,
        common: DiscoveryCommon,
        minutes: int,
        *,
        recorded: Iterable[str] = (),
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`common`: what every entity of the device shares (availability, QoS, device). `recorded`: the topics
        an earlier run announced; this device's per-person ones are kept until the first look at the gallery
        says whether their person is still enrolled. `on_change`: the set of topics changed (rewrite the record)."""
        self.link = link
        self.common = common
        self.minutes = minutes
        self.on_change = on_change
        self.clock = clock
        self._config_head = f"{discovery_prefix}/binary_sensor/{link.topics.device}/seen_"
        self._state_head = f"{link.topics.base}/seen/"
        self._labels: dict[str, str] = {}  # person id -> the label announced
        self._on_until: dict[str, float] = {}  # person id -> when (clock) its sensor goes off
        self._erased: set[str] = set()  # removed: a recognition still in flight must not bring one back
        self._removals: list[str] = []  # retained topics to empty, kept until the link is connected
        self._held = frozenset(topic for topic in recorded if self._is_own(topic))
        self._listed = False
        self._fingerprint: Fingerprint | None = None
        self._include_names: bool | None = None
        self._next_look = 0.0
        self._resend = threading.Event()
        self._lock = threading.Lock()

    def config_topic(self, person_id: str) -> str:
        return f"{self._config_head}{safe_segment(person_id)}/config"

    def state_topic(self, person_id: str) -> str:
        return f"{self._state_head}{safe_segment(person_id)}"

    def topics(self) -> list[str]:
        """Every retained topic these sensors may hold on the broker now, for the discovery's record."""
        return sorted(self._topics_of(self._labels) | self._held | set(self._removals))

    def resend(self) -> None:
        """From paho's thread after a connect: every sensor is published again by the next `keep`."""
        self._resend.set()

    def document(self, person_id: str, label: str) -> PersonSeenDiscovery:
        """The discovery document of one person's sensor. Its `object_id` fixes the entity id to the person's id:
        one made from the name would outlive an erasure in Home Assistant's registry of deleted entities."""
        minutes = f"{self.minutes} minute{'s' if self.minutes != 1 else ''}"
        return {
            **self.common,
            "name": f"{label} seen in the last {minutes}",
            "unique_id": f"faceagent_{self.link.topics.device}_seen_{safe_segment(person_id)}",
            "object_id": f"faceagent_seen_{safe_segment(person_id)}",
            "device_class": "occupancy",
            "state_topic": self.state_topic(person_id),
            "value_template": SEEN_TEMPLATE,
            "payload_on": "ON",
            "payload_off": "OFF",
            "off_delay": self.minutes * 60,
        }

    def keep(self, store: GalleryStore, *, include_names: bool) -> None:
        """The gallery thread's turn: follow the gallery (read outside the lock, as it may take a while), switch
        off the sensors whose minutes are up, send what a connect asked for and empty what was removed."""
        announced = self._labels  # read first: a person a recognition adds meanwhile is not taken for erased
        listing = self._look(store, include_names)
        now = self.clock()
        with self._lock:
            new: list[str] = []
            renamed: list[str] = []
            if listing is not None:
                new, renamed = self._follow(listing, announced, include_names=include_names)
            changed = bool(new)  # the erased move from announced to removals: the record changes when those go
            expired = [person_id for person_id, until in self._on_until.items() if until <= now]
            for person_id in expired:
                del self._on_until[person_id]
            if self.link.connected and self._resend.is_set():  # everyone, once
                self._resend.clear()
                new, renamed, expired = list(self._labels), [], []
            for person_id in new + renamed:
                self._publish_config(person_id, self._labels[person_id])
            for person_id in new + expired:
                self._publish_state(person_id)
            if self.link.connected and self._removals:
                for topic in self._removals:
                    self.link.publish_raw(topic, b"", retain=True)
                self._removals, changed = [], True
        if changed:
            self.on_change()

    def seen(self, events: Sequence[FaceEvent], *, include_names: bool) -> None:
        """From the frame loop: each recognized person's sensor on for the next N minutes, announced first if
        this is their first recognition since they were enrolled."""
        added = False
        with self._lock:
            for event in events:
                if event["type"] != FACE_RECOGNIZED or event["person_id"] in self._erased:
                    continue
                person_id = event["person_id"]
                if person_id not in self._labels:
                    label = person_label(person_id, event.get("name"), include_names=include_names)
                    self._labels = {**self._labels, person_id: label}
                    self._publish_config(person_id, label)
                    added = True
                self._on_until[person_id] = self.clock() + self.minutes * 60
                self._publish_state(person_id)
        if added:
            self.on_change()

    def _look(self, store: GalleryStore, include_names: bool) -> dict[str, str] | None:
        """Everyone enrolled (id -> name) when the gallery or the naming changed since the last look, else None.
        The fingerprint is read before the people, so a change made while they are read is seen next time."""
        now = self.clock()
        if include_names == self._include_names and now < self._next_look:
            return None
        self._next_look = now + LOOK_SECONDS
        fingerprint = store.fingerprint()
        if fingerprint == self._fingerprint and include_names == self._include_names:
            return None
        listing = {person.id: person.name for person in store.list_people()}
        self._fingerprint, self._include_names = fingerprint, include_names
        return listing

    def _follow(
        self, listing: dict[str, str], announced: dict[str, str], *, include_names: bool
    ) -> tuple[list[str], list[str]]:
        """Take in the gallery's people: the erased are queued for removal (config first, then state); returns
        who is new and who was renamed, to be announced."""
        gone = [person_id for person_id in announced if person_id not in listing]
        for person_id in gone:
            self._erased.add(person_id)
            self._on_until.pop(person_id, None)
            self._removals = [*self._removals, self.config_topic(person_id), self.state_topic(person_id)]
        labels = {person_id: label for person_id, label in self._labels.items() if person_id not in gone}
        if any(person_id not in announced and person_id not in listing for person_id in labels):
            self._fingerprint = None  # recognized during this look and not in it: erased or new? look again
        new: list[str] = []
        renamed: list[str] = []
        for person_id, name in listing.items():
            label = person_label(person_id, name, include_names=include_names)
            if labels.get(person_id) != label:
                (renamed if person_id in labels else new).append(person_id)
                labels[person_id] = label
        self._labels = labels
        if not self._listed:  # what an earlier run announced for people no longer enrolled goes now
            self._listed = True
            stale = self._held - self._topics_of(labels)
            self._removals = self._removals + sorted(stale, key=lambda topic: not topic.endswith("/config"))
            self._held = frozenset()
        return new, renamed

    def _publish_config(self, person_id: str, label: str) -> None:
        self.link.publish_raw(self.config_topic(person_id), encode(self.document(person_id, label)), retain=True)

    def _publish_state(self, person_id: str) -> None:
        """The sensor's retained state as the agent knows it: on within its minutes, else off."""
        document: PersonSeen = {"schema": SCHEMA, "seen": person_id in self._on_until}
        self.link.publish_raw(self.state_topic(person_id), encode(document), retain=True)

    def _topics_of(self, labels: Iterable[str]) -> set[str]:
        return {topic for person_id in labels for topic in (self.config_topic(person_id), self.state_topic(person_id))}

    def _is_own(self, topic: str) -> bool:
        own_config = topic.startswith(self._config_head) and topic.endswith("/config")
        return own_config or topic.startswith(self._state_head)

"""Home Assistant MQTT discovery (opt-in): the device shows up with three entities and no YAML.

- "Last recognized person": a sensor on the retained `<base>/last_person` (the name, or the id when
  `events.include_names` is false; id, camera and time as attributes). The agent owns that topic: it is
  rewritten on each recognition, and to "none" as soon as the person shown is erased (from the CLI or over
  MQTT), so Home Assistant never keeps showing an erased name. A rename shows the new name. Only the id is
  stored (the gallery's `meta` table) and the rest is read back from the gallery, so a restart shows the same.
- "Face present": a binary sensor on the retained `<base>/presence`, published on the first frame and as
  absent on a clean stop, so it is never left `on` with nobody in view.
- "Face seen": an event entity on `<base>/face_event` (not retained), one message per recognition or unknown
  face, so every visit can fire an automation, the same person twice included.
- Optionally (`person_presence_minutes` > 0) "<name> seen in the last N minutes": a binary sensor per enrolled
  person (agent/link/homeassistant_people.py), removed when they are erased.
All are available while the retained status says `online`, so the last will greys them out. Discovery
documents are retained, re-sent on every connect (a broker without persistence forgets them) and whenever
Home Assistant announces `online` on `<discovery_prefix>/status` (it restarted and may have lost them).

The topics announced are recorded in the state directory, so that a later start with discovery disabled, or
under another device id or prefix, publishes empty retained configs for them: Home Assistant then removes
the old entities instead of keeping an orphaned device (and the old retained last_person is cleared too).
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from agent.config import HomeAssistantSettings
from agent.files import write_atomically
from agent.gallery.store import GalleryStore
from agent.link.homeassistant_people import PersonSensors
from agent.link.mqtt import MqttLink
from agent.wire import (
    FACE_RECOGNIZED,
    FACE_UNKNOWN,
    OFFLINE,
    ONLINE,
    SCHEMA,
    BinarySensorDiscovery,
    Discovery,
    DiscoveryCommon,
    EventEntityDiscovery,
    FaceEvent,
    HomeAssistantFaceEvent,
    LastPerson,
    SensorDiscovery,
    encode,
)

log = logging.getLogger(__name__)

NOBODY = "none"  # the sensor's state when nobody is shown (nobody recognized yet, or the person was erased)
RECORD_NAME = "homeassistant.json"  # in the state directory: the topics last announced, to remove them later
PI_MODEL = Path("/proc/device-tree/model")
RECORD_FORMAT = 1  # the record's own format, a file of this device's: not a wire document
# The agent's event type -> the entity's event_type.
EVENT_TYPES: dict[str, Literal["recognized", "unknown"]] = {FACE_RECOGNIZED: "recognized", FACE_UNKNOWN: "unknown"}

_ATTRIBUTES = (
    "{{ {'person_id': value_json.person_id, 'camera_id': value_json.camera_id, 'at': value_json.at} | tojson }}"
)


def hardware_model(path: Path = PI_MODEL) -> str:
    """The Raspberry Pi's model as its firmware names it (e.g. "Raspberry Pi 5 Model B Rev 1.0"), else the OS and
    architecture: Home Assistant's `model` should say what the hardware is, not repeat the manufacturer."""
    try:
        model = path.read_bytes()[:200].decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        model = ""
    return model if model.isprintable() and model else f"{platform.system()} {platform.machine()}"


class HomeAssistantDiscovery:
    """Announces one device to Home Assistant through the agent's link, and removes what an earlier run announced."""

    def __init__(
        self,
        link: MqttLink,
        settings: HomeAssistantSettings,
        *,
        version: str,
        camera_id: str = "cam0",
        state_dir: Path | None = None,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.settings = settings
        self.version = version
        self.camera_id = camera_id
        self.record = state_dir / RECORD_NAME if state_dir is not None else None
        self.model = model or hardware_model()
        self._record_lock = threading.Lock()
        self.people: PersonSensors | None = None
        if settings.enabled and settings.person_presence_minutes > 0:
            self.people = PersonSensors(
                link,
                settings.discovery_prefix,
                self._common(),
                settings.person_presence_minutes,
                recorded=self._recorded() or [],
                on_change=self._write_record,
                clock=clock,
            )
        self._stale = self._stale_topics()

    def attach(self) -> None:
        """Remove stale discovery, then announce on every connect and on Home Assistant's birth message."""
        if self._stale or (not self.settings.enabled and self._recorded() is not None):
            self.link.add_connect_hook(self._remove_stale)
        if not self.settings.enabled:
            return
        self.link.add_subscription(f"{self.settings.discovery_prefix}/status", self._on_birth)
        self.link.add_connect_hook(self.announce)

    def announce(self) -> None:
        """On paho's thread: the device's entities now; each person's, by `keep_people` on the gallery thread."""
        for topic, document in self.messages():
            self.link.publish_raw(topic, encode(document), retain=True)
        if self.people is not None:
            self.people.resend()
        self._write_record()

    def keep_people(self, store: GalleryStore, *, include_names: bool) -> None:
        """From the gallery thread, every turn: the per-person sensors follow enrollments, renames and erasures,
        and switch off when their minutes are up. Nothing to do (and no query) when they are off."""
        if self.people is not None:
            self.people.keep(store, include_names=include_names)

    def owned_topics(self) -> list[str]:
        """Every retained topic that exists only for Home Assistant: removed with the discovery."""
        people = self.people.topics() if self.people is not None else []
        return [topic for topic, _ in self.messages()] + [self.link.topics.last_person] + people

    def _common(self) -> DiscoveryCommon:
        """What every entity's discovery document shares: availability, QoS, the device and the origin."""
        return {
            "availability_topic": self.link.topics.status,
            "availability_template": "{{ value_json.state }}",
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": 1,
            "device": {
                "identifiers": [f"faceagent_{self.link.topics.device}"],
                "name": self.settings.device_name or f"faceagent {self.camera_id}",
                "manufacturer": "faceagent",
                "model": self.model,
                "sw_version": self.version,
                "suggested_area": self.settings.area or self.camera_id,
            },
            "origin": {"name": "faceagent", "sw_version": self.version},
        }

    def messages(self) -> list[tuple[str, Discovery]]:
        """(config topic, discovery document) for each of the device's own entities."""
        topics = self.link.topics
        node = topics.device
        common = self._common()
        last_person: SensorDiscovery = {
            **common,
            "name": "Last recognized person",
            "unique_id": f"faceagent_{node}_last_person",
            "icon": "mdi:face-recognition",
            "state_topic": topics.last_person,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.last_person,
            "json_attributes_template": _ATTRIBUTES,
        }
        face_present: BinarySensorDiscovery = {
            **common,
            "name": "Face present",
            "unique_id": f"faceagent_{node}_face_present",
            "device_class": "occupancy",
            "state_topic": topics.presence,
            "value_template": "{{ 'ON' if value_json.present else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        face_seen: EventEntityDiscovery = {
            **common,
            "name": "Face seen",
            "unique_id": f"faceagent_{node}_face_seen",
            "icon": "mdi:face-recognition",
            "state_topic": topics.face_event,
            "event_types": sorted(EVENT_TYPES.values()),
        }
        prefix = self.settings.discovery_prefix
        return [
            (f"{prefix}/sensor/{node}/last_person/config", last_person),
            (f"{prefix}/binary_sensor/{node}/face_present/config", face_present),
            (f"{prefix}/event/{node}/face_seen/config", face_seen),
        ]

    def publish_events(self, events: Sequence[FaceEvent], *, include_names: bool) -> None:
        """One `face_event` message per recognition or unknown face, and each recognized person's sensor on;
        nothing when discovery is off."""
        if not self.settings.enabled:
            return
        for event in events:
            document = face_event_document(event, include_names=include_names)
            if document is not None:
                self.link.publish_raw(self.link.topics.face_event, encode(document))
        if self.people is not None:
            self.people.seen(events, include_names=include_names)

    def _on_birth(self, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            self.announce()

    # ------------------------------------------------------------------------------ removal

    def _recorded(self) -> list[str] | None:
        """The topics a run announced last, or None when none was recorded (or the record is unreadable)."""
        if self.record is None:
            return None
        try:
            topics = json.loads(self.record.read_text(encoding="utf-8"))["topics"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
            return None
        return topics

    def _stale_topics(self) -> list[str]:
        recorded = self._recorded() or []
        current = set(self.owned_topics()) if self.settings.enabled else set()
        return [topic for topic in recorded if topic not in current]

    def _remove_stale(self) -> None:
        """Empty retained messages: Home Assistant deletes the entities (and the device once it has none)."""
        for topic in self._stale:
            self.link.publish_raw(topic, b"", retain=True)
        if self._stale:
            log.info("Home Assistant: removed %d retained topic(s) of an earlier announcement", len(self._stale))
        self._stale = []
        if not self.settings.enabled and self.record is not None:
            self.record.unlink(missing_ok=True)

    def _write_record(self) -> None:
        """From any thread (paho's on connect, the others when a person's sensor comes or goes)."""
        if self.record is None:
            return
        with self._record_lock:
            topics = self.owned_topics()
            if self._recorded() == topics:
                return
            text = json.dumps({"schema": RECORD_FORMAT, "device": self.link.topics.device, "topics": topics}, indent=1)
            try:
                write_atomically(self.record, (text + "\n").encode("utf-8"))
            except OSError as exc:
                log.warning("Home Assistant: %s not written (%s): a later removal may miss them", self.record, exc)


def face_event_document(event: Mapping[str, Any], *, include_names: bool) -> HomeAssistantFaceEvent | None:
    """What the event entity receives for an agent event: who (recognitions only), where, when. Never a distance;
    no name when `include_names` is false. None for event types the entity does not show."""
    event_type = EVENT_TYPES.get(event.get("type", ""))
    if event_type is None:
        return None
    document: HomeAssistantFaceEvent = {
        "event_type": event_type,
        "person_id": event.get("person_id"),
        "name": event.get("name", ""),
        "camera_id": event.get("camera_id"),
        "at": event.get("at"),
        "event_id": event.get("event_id"),
    }
    if event_type == "unknown":
        del document["person_id"]
    if event_type == "unknown" or not include_names or event.get("name") is None:
        del document["name"]
    return document


def last_person_document(shown: Mapping[str, Any] | None, *, include_names: bool) -> LastPerson:
    """The retained `last_person` payload for `GalleryStore.last_person()`; `state` is what the sensor shows."""
    if shown is None:
        document: LastPerson = {
            "schema": SCHEMA,
            "state": NOBODY,
            "person_id": None,
            "name": None,
            "camera_id": None,
            "at": None,
        }
    else:
        document = {
            "schema": SCHEMA,
            "state": shown["name"] if include_names else shown["person_id"],
            "person_id": shown["person_id"],
            "name": shown["name"],
            "camera_id": shown.get("camera_id"),
            "at": shown.get("at"),
        }
    if not include_names:
        del document["name"]
    return document


class LastPersonTopic:
    """Keeps the retained `<base>/last_person` equal to what the gallery says, on every connect too.

    `refresh` runs on the frame loop, after a recognition and (as a job) after a change on disk, with its own store:
    a lock makes each read-and-publish whole, so an older read never lands last. The
    connect hook runs on paho's thread and re-sends the latest document without the lock: it checks afterwards
    that the document did not change meanwhile, so the last message on the broker is always the newest.
    """

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self._document: LastPerson | None = None
        self._refreshing = threading.Lock()

    def attach(self) -> None:
        self.link.add_connect_hook(self._resend)

    def refresh(self, store: GalleryStore, *, include_names: bool) -> bool:
        """Publish what the gallery says now if it differs from the last document; True when it did."""
        with self._refreshing:
            document = last_person_document(store.last_person(), include_names=include_names)
            if document == self._document:
                return False
            self._document = document
            self._resend()
            return True

    def _resend(self) -> None:
        while (document := self._document) is not None:
            self.link.publish_raw(self.link.topics.last_person, encode(document), retain=True)
            if self._document is document:
                return

"""Home Assistant MQTT discovery (opt-in): the device shows up with two entities and no YAML.

- "Last recognised person": a sensor on the retained `<base>/last_person` (the name, or the id when
  `events.include_names` is false; id, camera and time as attributes). The agent owns that topic: it is
  rewritten on each recognition, and to "none" as soon as the person shown is erased (from the CLI or over
  MQTT), so Home Assistant never keeps showing an erased name. A rename shows the new name. Only the id is
  stored (the gallery's `meta` table) and the rest is read back from the gallery, so a restart shows the same.
- "Face present": a binary sensor on `<base>/presence`.
Both are available while the retained status says `online`, so the last will greys them out. Discovery
documents are retained, re-sent on every connect (a broker without persistence forgets them) and whenever
Home Assistant announces `online` on `<discovery_prefix>/status` (it restarted and may have lost them).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from agent.config import HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.link.mqtt import MqttLink

NOBODY = "none"  # the sensor's state when nobody is shown (nobody recognised yet, or the person was erased)

_ATTRIBUTES = (
    "{{ {'person_id': value_json.person_id, 'camera_id': value_json.camera_id, 'at': value_json.at} | tojson }}"
)


class HomeAssistantDiscovery:
    """Announces one device to Home Assistant through the agent's link."""

    def __init__(self, link: MqttLink, settings: HomeAssistantSettings, *, version: str) -> None:
        self.link = link
        self.settings = settings
        self.version = version

    def attach(self) -> None:
        """Announce on every connect and on Home Assistant's birth message; nothing when disabled."""
        if not self.settings.enabled:
            return
        self.link.add_subscription(f"{self.settings.discovery_prefix}/status", self._on_birth)
        self.link.add_connect_hook(self.announce)

    def announce(self) -> None:
        for topic, document in self.messages():
            self.link.publish_raw(topic, json.dumps(document, separators=(",", ":")).encode(), retain=True)

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        """(config topic, discovery document) for each entity."""
        topics = self.link.topics
        node = topics.device
        common = {
            "availability_topic": topics.status,
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"faceagent_{node}"],
                "name": f"faceagent {node}",
                "manufacturer": "faceagent",
                "model": "faceagent",
                "sw_version": self.version,
            },
            "origin": {"name": "faceagent", "sw_version": self.version},
        }
        last_person = {
            **common,
            "name": "Last recognised person",
            "unique_id": f"faceagent_{node}_last_person",
            "icon": "mdi:face-recognition",
            "state_topic": topics.last_person,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.last_person,
            "json_attributes_template": _ATTRIBUTES,
        }
        face_present = {
            **common,
            "name": "Face present",
            "unique_id": f"faceagent_{node}_face_present",
            "device_class": "occupancy",
            "state_topic": topics.presence,
            "value_template": "{{ 'ON' if value_json.present else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        }
        prefix = self.settings.discovery_prefix
        return [
            (f"{prefix}/sensor/{node}/last_person/config", last_person),
            (f"{prefix}/binary_sensor/{node}/face_present/config", face_present),
        ]

    def _on_birth(self, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            self.announce()


def last_person_document(shown: dict[str, Any] | None, *, include_names: bool) -> dict[str, Any]:
    """The retained `last_person` payload for `GalleryStore.last_person()`; `state` is what the sensor shows."""
    if shown is None:
        document: dict[str, Any] = {"schema": 1, "state": NOBODY, "person_id": None, "name": None}
        document |= {"camera_id": None, "at": None}
    else:
        state = shown["name"] if include_names else shown["person_id"]
        document = {"schema": 1, "state": state, "person_id": shown["person_id"], "name": shown["name"]}
        document |= {"camera_id": shown.get("camera_id"), "at": shown.get("at")}
    if not include_names:
        del document["name"]
    return document


class LastPersonTopic:
    """Keeps the retained `<base>/last_person` equal to what the gallery says, on every connect too.

    `refresh` runs on the frame loop after a recognition and on the gallery thread after a change on disk,
    each with its own store: a lock makes each read-and-publish whole, so an older read never lands last. The
    connect hook runs on paho's thread and re-sends the latest document without the lock: it checks afterwards
    that the document did not change meanwhile, so the last message on the broker is always the newest.
    """

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self._document: dict[str, Any] | None = None
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
            payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
            self.link.publish_raw(self.link.topics.last_person, payload, retain=True)
            if self._document is document:
                return

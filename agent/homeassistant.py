"""Home Assistant MQTT discovery (opt-in): the device shows up with two entities and no YAML.

- "Last recognised person": a sensor on `<base>/events/face_recognized` (the name; id, camera and time as
  attributes).
- "Face present": a binary sensor on `<base>/presence`.
Both are available while the retained status says `online`, so the last will greys them out. Discovery
documents are retained, re-sent on every connect (a broker without persistence forgets them) and whenever
Home Assistant announces `online` on `<discovery_prefix>/status` (it restarted and may have lost them).
"""

from __future__ import annotations

import json
from typing import Any

from agent.config import HomeAssistantSettings
from agent.events import RECOGNIZED
from agent.link.mqtt import MqttLink

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
            "state_topic": topics.event(RECOGNIZED),
            "value_template": "{{ value_json.name }}",
            "json_attributes_topic": topics.event(RECOGNIZED),
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

"""Every discovery payload the agent publishes, checked by Home Assistant's own code (homeassistant 2024.3.3):
the discovery topic pattern and platforms, the origin schema, each MQTT platform's schemas, and every
template rendered by Home Assistant's template engine against the payloads the agent really published,
all captured from a real Mosquitto.

Home Assistant pins paho-mqtt 1.6.1 and the agent needs paho-mqtt 2, so this runs from its own venv (the
`ha-check` extra, installed with HA's package_constraints.txt less that pin; README, Home Assistant):

    .venv-ha/bin/python -m pytest tests/test_homeassistant_schemas.py -q

Everywhere else it is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "homeassistant",
    reason="homeassistant not installed: the Home Assistant schema check runs from .venv-ha (README, Home Assistant)",
)

from homeassistant.components.mqtt import binary_sensor, discovery, event, sensor
from homeassistant.components.mqtt.models import MqttValueTemplate
from homeassistant.core import HomeAssistant
from homeassistant.util.json import json_loads_object

from agent.config import HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.link.homeassistant import HomeAssistantDiscovery, LastPersonTopic
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.telemetry import Telemetry
from agent.recognition.events import RECOGNIZED, UNKNOWN
from tests.support.broker import Broker, Received

DEVICE = "door-1"
PLATFORMS = {"sensor": sensor, "binary_sensor": binary_sensor, "event": event}
SETTINGS = HomeAssistantSettings(enabled=True, device_name="Front door", area="Hallway", person_presence_minutes=10)


@dataclass
class Traffic:
    """What the agent published for Home Assistant in one short run, by topic."""

    messages: list[Received]
    ada: str

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic and m.payload]

    def configs(self) -> dict[str, dict[str, Any]]:
        return {m.topic: m.json() for m in self.messages if m.topic.endswith("/config") and m.payload}

    def config(self, object_id: str) -> dict[str, Any]:
        (document,) = [d for topic, d in self.configs().items() if topic.endswith(f"/{object_id}/config")]
        return document


def capture(tmp_path: Path, broker: Broker, observe, *, include_names: bool) -> Traffic:
    """A device with every entity on: Ada enrolled and recognized, an unknown face, a face in view and gone,
    then a clean stop."""
    db = tmp_path / "gallery.db"
    with GalleryStore.open(db) as store:
        ada = store.add_person("Ada").id
        at = utc_now()
        recognized = {"schema": 1, "type": RECOGNIZED, "person_id": ada, "name": "Ada", "camera_id": "door", "at": at}
        store.add_event(RECOGNIZED, recognized, event_id=new_event_id(), person_id=ada, created_at=at)
    watcher = observe(broker, ["homeassistant/#", f"faceagent/{DEVICE}/#"])
    telemetry = Telemetry(DEVICE, "1.2.3", {"detector": "d", "embedder": "e"})
    link = MqttLink(BrokerSettings(url=broker.url), DEVICE, lambda request: None, will=telemetry.offline("lost"))
    discovery_ = HomeAssistantDiscovery(link, SETTINGS, version="1.2.3", camera_id="door", model="Raspberry Pi 5")
    discovery_.attach()
    last_person = LastPersonTopic(link)
    last_person.attach()
    link.start()
    assert link.wait_connected(5)
    with GalleryStore.open(db) as store:
        last_person.refresh(store, include_names=include_names)
        discovery_.keep_people(store, include_names=include_names)
        link.publish_presence(telemetry.presence(1))
        events = [visit(RECOGNIZED, person_id=ada, name="Ada"), visit(UNKNOWN)]
        discovery_.publish_events(events, include_names=include_names)
        link.publish_presence(telemetry.presence(0))
    assert watcher.wait_for(lambda m: sum(x.topic.endswith("/face_event") for x in m) == 2, 5)
    link.stop(telemetry.offline("stopped"), timeout=2)
    assert watcher.wait_for(lambda m: any(b'"offline"' in x.payload for x in m), 5)
    return Traffic(list(watcher.messages), ada)


def visit(event_type: str, **fields: Any) -> dict[str, Any]:
    event_ = {"schema": 1, "event_id": new_event_id(), "type": event_type, "track_id": 7, "frames": 12}
    return event_ | {"camera_id": "door", "model_id": "m", "at": utc_now(), "distance": 0.4} | fields


@pytest.fixture(params=[True, False], ids=["names", "ids-only"])
def traffic(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, observe) -> Traffic:
    return capture(tmp_path, broker, observe, include_names=request.param)


class HomeAssistantCore:
    """A real (not started) HomeAssistant instance on this thread: schemas validate and templates render as they
    do in Home Assistant (newer releases refuse to validate templates without one)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.folder = tempfile.TemporaryDirectory()
        self.hass = self.loop.run_until_complete(self._hass())

    async def _hass(self) -> HomeAssistant:
        return HomeAssistant(self.folder.name)

    def render(self, template: Any, payload: bytes) -> str:
        """`template` as validated by the platform schema (a Template), on a payload as HA decodes it."""

        async def run() -> str:
            renderer = MqttValueTemplate(template)  # 2024.3 sets the template's hass from an argument, later ones not
            template.hass = self.hass
            return str(renderer.async_render_with_possible_json_value(payload.decode()))

        return self.loop.run_until_complete(run())

    def validated(self, topic: str, document: dict[str, Any]) -> dict[str, Any]:
        """The config as Home Assistant's discovery sets the entity up from it (`topic`'s platform)."""
        return PLATFORMS[topic.split("/")[1]].DISCOVERY_SCHEMA({**document, "platform": "mqtt"})

    def close(self) -> None:
        self.loop.run_until_complete(self.hass.async_stop(force=True))
        self.loop.close()
        self.folder.cleanup()


@pytest.fixture
def core() -> Iterator[HomeAssistantCore]:
    home_assistant = HomeAssistantCore()
    yield home_assistant
    home_assistant.close()


# --------------------------------------------------------------------------------------------------- schemas


def test_every_entity_is_announced(traffic: Traffic) -> None:
    objects = sorted(topic.split("/")[3] for topic in traffic.configs())
    assert objects == sorted(["last_person", "face_present", "face_seen", f"seen_{traffic.ada}"])


def test_discovery_topics_are_ones_home_assistant_accepts(traffic: Traffic) -> None:
    for topic in traffic.configs():
        prefix, trimmed = topic.split("/", 1)
        match = discovery.TOPIC_MATCHER.match(trimmed)
        assert prefix == "homeassistant" and match is not None, topic
        assert match.group("component") in discovery.SUPPORTED_COMPONENTS and match.group("node_id") == DEVICE


@pytest.mark.parametrize("object_id", ["last_person", "face_present", "face_seen", "person"])
def test_each_config_passes_its_platform_schema_whole(
    traffic: Traffic, object_id: str, core: HomeAssistantCore
) -> None:
    """PLATFORM_SCHEMA_MODERN refuses unknown keys (DISCOVERY_SCHEMA would drop them silently): every key the
    agent sends means something to Home Assistant."""
    object_id = f"seen_{traffic.ada}" if object_id == "person" else object_id
    (topic,) = [t for t in traffic.configs() if t.endswith(f"/{object_id}/config")]
    document = traffic.configs()[topic]
    PLATFORMS[topic.split("/")[1]].PLATFORM_SCHEMA_MODERN(document)
    kept = core.validated(topic, document)
    assert set(document) <= set(kept)
    discovery.MQTT_ORIGIN_INFO_SCHEMA(document["origin"])


def test_home_assistant_warns_about_nothing_it_validates(
    traffic: Traffic, core: HomeAssistantCore, caplog: pytest.LogCaptureFixture
) -> None:
    """Deprecated options and schema misuse are logged as warnings, not refused: none may appear."""
    with caplog.at_level(logging.WARNING):
        for topic, document in traffic.configs().items():
            core.validated(topic, document)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("homeassistant")]


def test_the_per_person_sensor_is_switched_off_by_home_assistant(traffic: Traffic, core: HomeAssistantCore) -> None:
    (topic,) = [t for t in traffic.configs() if f"/seen_{traffic.ada}/" in t]
    config = core.validated(topic, traffic.configs()[topic])
    assert config["off_delay"] == 10 * 60 and "expire_after" not in config


def test_unique_ids_are_unique(traffic: Traffic) -> None:
    ids = [document["unique_id"] for document in traffic.configs().values()]
    assert len(set(ids)) == len(ids) == 4


# ------------------------------------------------------------------------------------------------- templates


def test_availability_follows_the_status_topic(traffic: Traffic, core: HomeAssistantCore) -> None:
    config = core.validated("x/sensor", traffic.config("last_person"))
    statuses = traffic.on(config["availability_topic"])
    rendered = [core.render(config["availability_template"], m.payload) for m in statuses]
    assert rendered[0] == config["payload_available"] and rendered[-1] == config["payload_not_available"]


def test_last_person_renders_the_person_and_the_attributes(traffic: Traffic, core: HomeAssistantCore) -> None:
    config = core.validated("x/sensor", traffic.config("last_person"))
    (message,) = traffic.on(config["state_topic"])
    state = core.render(config["value_template"], message.payload)
    attributes = json.loads(core.render(config["json_attributes_template"], message.payload))
    assert state in ("Ada", traffic.ada)
    assert attributes["person_id"] == traffic.ada and attributes["camera_id"] == "door"


def test_face_present_renders_on_then_off(traffic: Traffic, core: HomeAssistantCore) -> None:
    config = core.validated("x/binary_sensor", traffic.config("face_present"))
    rendered = [core.render(config["value_template"], m.payload) for m in traffic.on(config["state_topic"])]
    assert rendered == [config["payload_on"], config["payload_off"]]


def test_the_person_sensor_renders_off_then_on(traffic: Traffic, core: HomeAssistantCore) -> None:
    config = core.validated("x/binary_sensor", traffic.config(f"seen_{traffic.ada}"))
    rendered = [core.render(config["value_template"], m.payload) for m in traffic.on(config["state_topic"])]
    assert rendered == [config["payload_off"], config["payload_on"]]


def test_face_events_are_events_home_assistant_fires(traffic: Traffic, core: HomeAssistantCore) -> None:
    """As the MQTT event entity reads them: a JSON object whose `event_type` is one the config declares."""
    config = core.validated("x/event", traffic.config("face_seen"))
    fired = []
    for message in traffic.on(config["state_topic"]):
        assert not message.retain  # Home Assistant ignores a retained event
        attributes = json_loads_object(message.payload)
        event_type = attributes.pop("event_type")
        assert event_type in config["event_types"]
        fired.append((event_type, attributes.get("person_id")))
    assert fired == [("recognized", traffic.ada), ("unknown", None)]

"""Home Assistant discovery through a real Mosquitto: retained configs, availability, re-announcement."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from agent.config import HomeAssistantSettings
from agent.homeassistant import HomeAssistantDiscovery
from agent.link.mqtt import BrokerSettings, MqttLink
from tests.broker import Broker, Observer

DEVICE = "dev1"
SENSOR = f"homeassistant/sensor/{DEVICE}/last_person/config"
BINARY = f"homeassistant/binary_sensor/{DEVICE}/face_present/config"
LAST_PERSON = f"faceagent/{DEVICE}/last_person"
FAST = {"keepalive": 5, "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5}


@pytest.fixture
def announce() -> Iterator[Callable[..., MqttLink]]:
    """Start a link with discovery attached; stopped afterwards."""
    links: list[MqttLink] = []

    def start(broker: Broker, settings: HomeAssistantSettings) -> MqttLink:
        link = MqttLink(BrokerSettings(url=broker.url, **FAST), DEVICE, lambda request: None)
        HomeAssistantDiscovery(link, settings, version="1.2.3").attach()
        links.append(link)
        link.start()
        assert link.wait_connected(5)
        return link

    yield start
    for link in links:
        link.stop({"schema": 1, "state": "offline"}, timeout=0.5)


def configs(observer: Observer) -> list[str]:
    return [m.topic for m in observer.messages if m.topic.endswith("/config")]


def test_discovery_configs_are_retained(broker: Broker, announce, observe) -> None:
    announce(broker, HomeAssistantSettings(enabled=True))
    late = observe(broker, ["homeassistant/+/+/+/config"])
    assert late.wait_for(lambda m: sorted(configs(late)) == [BINARY, SENSOR], 5)
    assert all(m.retain for m in late.messages)


def test_entities_are_available_only_while_the_status_is_online(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 2, 5)
    for message in watcher.messages:
        document = message.json()
        assert document["availability_topic"] == f"faceagent/{DEVICE}/status"
        assert (document["payload_available"], document["payload_not_available"]) == ("online", "offline")
        assert document["device"]["identifiers"] == [f"faceagent_{DEVICE}"]


def test_sensors_read_the_last_person_and_presence_topics(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 2, 5)
    by_topic = {m.topic: m.json() for m in watcher.messages}
    assert by_topic[SENSOR]["state_topic"] == by_topic[SENSOR]["json_attributes_topic"] == LAST_PERSON
    assert by_topic[SENSOR]["value_template"] == "{{ value_json.state }}"
    assert by_topic[BINARY]["state_topic"] == f"faceagent/{DEVICE}/presence"
    assert len({by_topic[SENSOR]["unique_id"], by_topic[BINARY]["unique_id"]}) == 2


def test_discovery_is_announced_again_when_home_assistant_comes_online(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/+/+/+/config"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 2, 5)
    observe(broker, []).publish("homeassistant/status", b"online")
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 4, 5)


def test_home_assistant_going_offline_announces_nothing(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/+/+/+/config"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 2, 5)
    observe(broker, []).publish("homeassistant/status", b"offline")
    assert not watcher.wait_for(lambda m: len(configs(watcher)) > 2, 0.5)


def test_discovery_is_opt_in(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings())
    observe(broker, []).publish("homeassistant/status", b"online")
    assert not watcher.wait_for(lambda m: len(configs(watcher)) > 0, 0.5)


def test_discovery_prefix_is_configurable(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["ha/#"])
    announce(broker, HomeAssistantSettings(enabled=True, discovery_prefix="ha"))
    expected = sorted(topic.replace("homeassistant/", "ha/", 1) for topic in (SENSOR, BINARY))
    assert watcher.wait_for(lambda m: sorted(configs(watcher)) == expected, 5)

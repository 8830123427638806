"""Home Assistant discovery through a real Mosquitto: retained configs, availability, re-announcement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import HomeAssistantSettings
from agent.events import RECOGNIZED
from agent.gallery.store import GalleryStore
from agent.homeassistant import HomeAssistantDiscovery, LastPersonTopic
from agent.identity import new_event_id, utc_now
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


# ------------------------------------------------------------------------- last_person, kept by the agent


def recognise(db: Path, name: str, camera: str = "door") -> str:
    """`name` enrolled (no templates needed) and recognised once, as the frame loop writes it."""
    with GalleryStore.open(db) as store:
        person = store.add_person(name)
        at = utc_now()
        payload = {"schema": 1, "type": RECOGNIZED, "person_id": person.id, "name": name, "camera_id": camera, "at": at}
        store.add_event(RECOGNIZED, payload, event_id=new_event_id(), person_id=person.id, created_at=at)
    return person.id


def show(link: MqttLink, db: Path, *, include_names: bool = True) -> LastPersonTopic:
    """What the service does: attach the topic and publish what the gallery says."""
    topic = LastPersonTopic(link)
    topic.attach()
    with GalleryStore.open(db) as store:
        topic.refresh(store, include_names=include_names)
    return topic


def retained(broker: Broker, observe) -> dict:
    """The retained last_person document, as a Home Assistant that starts now receives it."""
    late = observe(broker, [LAST_PERSON])
    assert late.wait_for(lambda m: bool(m), 5), "no retained last_person"
    (message,) = late.messages
    assert message.retain
    return message.json()


def test_last_person_shows_the_recognised_person_retained(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognise(db, "Ada")
    show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    document = retained(broker, observe)
    assert document | {"at": None} == {
        "schema": 1, "state": "Ada", "person_id": ada, "name": "Ada", "camera_id": "door", "at": None
    }  # fmt: skip
    assert document["at"].endswith("Z")


def test_erasing_the_person_shown_clears_the_retained_state(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognise(db, "Ada")
    topic = show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    with GalleryStore.open(db) as cli:  # `faceagent person delete`, another connection
        cli.delete_person(ada, actor="cli:test")
    with GalleryStore.open(db) as store:
        assert topic.refresh(store, include_names=True)
    late = observe(broker, [LAST_PERSON])
    assert late.wait_for(lambda m: bool(m), 5)
    assert late.messages[0].json() == {
        "schema": 1, "state": "none", "person_id": None, "name": None, "camera_id": None, "at": None
    }  # fmt: skip
    assert b"Ada" not in late.messages[0].payload and ada.encode() not in late.messages[0].payload


def test_erasing_someone_else_keeps_the_state(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    bob = recognise(db, "Bob")
    recognise(db, "Ada")
    topic = show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    with GalleryStore.open(db) as store:
        store.delete_person(bob, actor="cli:test")
        assert not topic.refresh(store, include_names=True)
    assert retained(broker, observe)["state"] == "Ada"


def test_a_rename_shows_the_new_name(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognise(db, "Ada")
    topic = show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    with GalleryStore.open(db) as store:
        store.update_person(ada, name="Ada Lovelace", actor="cli:test")
        assert topic.refresh(store, include_names=True)
    assert retained(broker, observe)["state"] == "Ada Lovelace"


def test_an_erasure_while_the_agent_was_down_is_shown_after_its_restart(
    tmp_path: Path, broker: Broker, announce, observe
) -> None:
    db = tmp_path / "gallery.db"
    ada = recognise(db, "Ada")
    first = announce(broker, HomeAssistantSettings(enabled=True))
    show(first, db)
    first.stop({"schema": 1, "state": "offline"}, timeout=0.5)
    with GalleryStore.open(db) as cli:
        cli.delete_person(ada, actor="cli:test")
    show(announce(broker, HomeAssistantSettings(enabled=True)), db)  # the restarted agent
    assert retained(broker, observe)["state"] == "none"


def test_a_restarted_agent_shows_the_last_person_again_from_the_gallery(
    tmp_path: Path, start_broker, announce, observe
) -> None:
    """A broker without persistence forgets retained messages: the agent's state is in the gallery."""
    db = tmp_path / "gallery.db"
    broker = start_broker()
    recognise(db, "Ada", camera="hall")
    first = announce(broker, HomeAssistantSettings(enabled=True))
    show(first, db)
    first.stop({"schema": 1, "state": "offline"}, timeout=0.5)
    broker.stop()
    broker.start()
    show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    document = retained(broker, observe)
    assert (document["state"], document["camera_id"]) == ("Ada", "hall")


def test_the_state_is_sent_again_when_the_link_reconnects(tmp_path: Path, start_broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    broker = start_broker()
    recognise(db, "Ada")
    link = announce(broker, HomeAssistantSettings(enabled=True))
    show(link, db)
    broker.stop()  # no persistence: the retained message is gone
    broker.start()
    assert link.wait_connected(10)
    assert retained(broker, observe)["state"] == "Ada"


def test_without_names_the_sensor_shows_the_id(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognise(db, "Ada")
    show(announce(broker, HomeAssistantSettings(enabled=True)), db, include_names=False)
    late = observe(broker, [LAST_PERSON])
    assert late.wait_for(lambda m: bool(m), 5)
    document = late.messages[0].json()
    assert document["state"] == ada and document["person_id"] == ada and "name" not in document
    assert b"Ada" not in late.messages[0].payload

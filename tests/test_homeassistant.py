"""Home Assistant discovery through a real Mosquitto: retained configs, availability, re-announcement."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.link.homeassistant import RECORD_NAME, HomeAssistantDiscovery, LastPersonTopic, hardware_model
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.recognition.events import RECOGNIZED, UNKNOWN
from tests.support.broker import FAST_LINK, Broker, Observer

DEVICE = "dev1"
SENSOR = f"homeassistant/sensor/{DEVICE}/last_person/config"
BINARY = f"homeassistant/binary_sensor/{DEVICE}/face_present/config"
EVENT = f"homeassistant/event/{DEVICE}/face_seen/config"
LAST_PERSON = f"faceagent/{DEVICE}/last_person"
FACE_EVENT = f"faceagent/{DEVICE}/face_event"


@pytest.fixture
def announce() -> Iterator[Callable[..., MqttLink]]:
    """Start a link with discovery attached; stopped afterwards."""
    links: list[MqttLink] = []

    def start(broker: Broker, settings: HomeAssistantSettings, device: str = DEVICE, **options) -> MqttLink:
        link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), device, lambda request: None)
        HomeAssistantDiscovery(link, settings, version="1.2.3", **options).attach()
        links.append(link)
        link.start()
        assert link.wait_connected(5)
        return link

    yield start
    for link in links:
        link.stop({"schema": 1, "state": "offline"}, timeout=0.5)


def configs(observer: Observer) -> list[str]:
    return [m.topic for m in observer.messages if m.topic.endswith("/config") and m.payload]


def documents(broker: Broker, observe, settings: HomeAssistantSettings, announce, **options) -> dict[str, dict]:
    """The discovery documents by config topic, as Home Assistant receives them."""
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, settings, **options)
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 3, 5)
    return {m.topic: m.json() for m in watcher.messages}


def test_discovery_configs_are_retained(broker: Broker, announce, observe) -> None:
    announce(broker, HomeAssistantSettings(enabled=True))
    late = observe(broker, ["homeassistant/+/+/+/config"])
    assert late.wait_for(lambda m: sorted(configs(late)) == sorted([BINARY, EVENT, SENSOR]), 5)
    assert all(m.retain for m in late.messages)


def test_entities_are_available_only_while_the_status_is_online(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 3, 5)
    for message in watcher.messages:
        document = message.json()
        assert document["availability_topic"] == f"faceagent/{DEVICE}/status"
        assert (document["payload_available"], document["payload_not_available"]) == ("online", "offline")
        assert document["device"]["identifiers"] == [f"faceagent_{DEVICE}"]


def test_sensors_read_the_last_person_and_presence_topics(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 3, 5)
    by_topic = {m.topic: m.json() for m in watcher.messages}
    assert by_topic[SENSOR]["state_topic"] == by_topic[SENSOR]["json_attributes_topic"] == LAST_PERSON
    assert by_topic[SENSOR]["value_template"] == "{{ value_json.state }}"
    assert by_topic[BINARY]["state_topic"] == f"faceagent/{DEVICE}/presence"
    assert len({by_topic[SENSOR]["unique_id"], by_topic[BINARY]["unique_id"]}) == 2


def test_discovery_is_announced_again_when_home_assistant_comes_online(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/+/+/+/config"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 3, 5)
    observe(broker, []).publish("homeassistant/status", b"online")
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 6, 5)


def test_home_assistant_going_offline_announces_nothing(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/+/+/+/config"])
    announce(broker, HomeAssistantSettings(enabled=True))
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 3, 5)
    observe(broker, []).publish("homeassistant/status", b"offline")
    assert not watcher.wait_for(lambda m: len(configs(watcher)) > 3, 0.5)


def test_discovery_is_opt_in(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings())
    observe(broker, []).publish("homeassistant/status", b"online")
    assert not watcher.wait_for(lambda m: len(configs(watcher)) > 0, 0.5)


def test_discovery_prefix_is_configurable(broker: Broker, announce, observe) -> None:
    watcher = observe(broker, ["ha/#"])
    announce(broker, HomeAssistantSettings(enabled=True, discovery_prefix="ha"))
    expected = sorted(topic.replace("homeassistant/", "ha/", 1) for topic in (SENSOR, BINARY, EVENT))
    assert watcher.wait_for(lambda m: sorted(configs(watcher)) == expected, 5)


# ------------------------------------------------------------------------- last_person, kept by the agent


def recognize(db: Path, name: str, camera: str = "door") -> str:
    """`name` enrolled (no templates needed) and recognized once, as the frame loop writes it."""
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
    """The retained last_person document, as a Home Assistant that starts now receives it. A first observer
    waits until the broker has the message (the publish may still be in flight, and then it would arrive
    live, without the retain flag); only then does the late one subscribe."""
    primer = observe(broker, [LAST_PERSON])
    assert primer.wait_for(lambda m: bool(m), 5), "no last_person published"
    late = observe(broker, [LAST_PERSON])
    assert late.wait_for(lambda m: bool(m), 5), "no retained last_person"
    (message,) = late.messages
    assert message.retain
    return message.json()


def test_last_person_shows_the_recognized_person_retained(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognize(db, "Ada")
    show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    document = retained(broker, observe)
    assert document | {"at": None} == {
        "schema": 1, "state": "Ada", "person_id": ada, "name": "Ada", "camera_id": "door", "at": None
    }  # fmt: skip
    assert document["at"].endswith("Z")


def test_erasing_the_person_shown_clears_the_retained_state(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognize(db, "Ada")
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
    bob = recognize(db, "Bob")
    recognize(db, "Ada")
    topic = show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    with GalleryStore.open(db) as store:
        store.delete_person(bob, actor="cli:test")
        assert not topic.refresh(store, include_names=True)
    assert retained(broker, observe)["state"] == "Ada"


def test_a_rename_shows_the_new_name(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognize(db, "Ada")
    topic = show(announce(broker, HomeAssistantSettings(enabled=True)), db)
    with GalleryStore.open(db) as store:
        store.update_person(ada, name="Ada Lovelace", actor="cli:test")
        assert topic.refresh(store, include_names=True)
    assert retained(broker, observe)["state"] == "Ada Lovelace"


def test_an_erasure_while_the_agent_was_down_is_shown_after_its_restart(
    tmp_path: Path, broker: Broker, announce, observe
) -> None:
    db = tmp_path / "gallery.db"
    ada = recognize(db, "Ada")
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
    recognize(db, "Ada", camera="hall")
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
    recognize(db, "Ada")
    link = announce(broker, HomeAssistantSettings(enabled=True))
    show(link, db)
    broker.stop()  # no persistence: the retained message is gone
    broker.start()
    assert link.wait_connected(10)
    assert retained(broker, observe)["state"] == "Ada"


def test_without_names_the_sensor_shows_the_id(tmp_path: Path, broker: Broker, announce, observe) -> None:
    db = tmp_path / "gallery.db"
    ada = recognize(db, "Ada")
    show(announce(broker, HomeAssistantSettings(enabled=True)), db, include_names=False)
    late = observe(broker, [LAST_PERSON])
    assert late.wait_for(lambda m: bool(m), 5)
    document = late.messages[0].json()
    assert document["state"] == ada and document["person_id"] == ada and "name" not in document
    assert b"Ada" not in late.messages[0].payload


# ------------------------------------------------------------------------- the device page: names, model, QoS


def test_every_entity_asks_home_assistant_to_subscribe_at_qos_1(broker: Broker, announce, observe) -> None:
    by_topic = documents(broker, observe, HomeAssistantSettings(enabled=True), announce)
    assert {topic: document["qos"] for topic, document in by_topic.items()} == {SENSOR: 1, BINARY: 1, EVENT: 1}


def test_the_device_is_named_and_placed_from_the_settings(broker: Broker, announce, observe) -> None:
    settings = HomeAssistantSettings(enabled=True, device_name="Front door", area="Hallway")
    by_topic = documents(broker, observe, settings, announce, camera_id="door")
    device = by_topic[SENSOR]["device"]
    assert (device["name"], device["suggested_area"]) == ("Front door", "Hallway")


def test_without_settings_the_camera_id_names_and_places_the_device(broker: Broker, announce, observe) -> None:
    """Not the device id: Home Assistant makes entity ids from the device name, and a hash reads badly there."""
    by_topic = documents(broker, observe, HomeAssistantSettings(enabled=True), announce, camera_id="porch")
    device = by_topic[BINARY]["device"]
    assert (device["name"], device["suggested_area"]) == ("faceagent porch", "porch")
    assert DEVICE not in device["name"]


def test_the_model_is_the_hardware_not_the_manufacturer(tmp_path: Path, broker: Broker, announce, observe) -> None:
    tree_model = tmp_path / "model"
    tree_model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")  # as the firmware writes it: NUL-terminated
    model = hardware_model(tree_model)
    by_topic = documents(broker, observe, HomeAssistantSettings(enabled=True), announce, model=model)
    assert by_topic[EVENT]["device"]["model"] == "Raspberry Pi 5 Model B Rev 1.0"


def test_off_a_pi_the_model_names_the_system_and_architecture(tmp_path: Path) -> None:
    assert hardware_model(tmp_path / "absent") == f"{platform.system()} {platform.machine()}"


# ------------------------------------------------------------------------- the event entity: every visit


def visit(event_type: str, **fields) -> dict:
    """An event as the recognizer emits it."""
    event = {"schema": 1, "event_id": new_event_id(), "type": event_type, "track_id": 7, "frames": 12}
    event |= {"first_seen": utc_now(), "last_seen": utc_now(), "camera_id": "door", "model_id": "m", "at": utc_now()}
    return event | fields


def event_entity(
    broker: Broker,
    observe,
    announce,
    settings: HomeAssistantSettings,
    events: list[dict],
    *,
    include_names: bool = True,
) -> list:
    """What the event entity's state topic receives when the agent emits `events`."""  # fmt: skip
    watcher = observe(broker, [FACE_EVENT])
    link = announce(broker, settings)
    discovery = HomeAssistantDiscovery(link, settings, version="1.2.3")
    discovery.publish_events(events, include_names=include_names)
    watcher.wait_for(lambda m: len(m) >= len(events), 5)
    return watcher.messages


def test_the_event_entity_reads_the_face_event_topic(broker: Broker, announce, observe) -> None:
    document = documents(broker, observe, HomeAssistantSettings(enabled=True), announce)[EVENT]
    assert document["state_topic"] == FACE_EVENT
    assert document["event_types"] == ["recognized", "unknown"]


def test_every_recognition_fires_an_event_with_person_camera_and_time(broker: Broker, announce, observe) -> None:
    """The same person twice: two events, so a `to: "Ada"` style automation fires on each visit."""
    ada = visit(RECOGNIZED, person_id="p1", name="Ada", distance=0.41, margin=0.2)
    again = visit(RECOGNIZED, person_id="p1", name="Ada", distance=0.38, margin=0.2)
    received = event_entity(broker, observe, announce, HomeAssistantSettings(enabled=True), [ada, again])
    assert [m.json() for m in received] == [
        {"event_type": "recognized", "person_id": "p1", "name": "Ada", "camera_id": "door", "at": e["at"],
         "event_id": e["event_id"]} for e in (ada, again)
    ]  # fmt: skip
    assert not any(m.retain for m in received)


def test_an_unknown_face_fires_an_event_without_identity_or_distance(broker: Broker, announce, observe) -> None:
    (received,) = event_entity(broker, observe, announce, HomeAssistantSettings(enabled=True), [visit(UNKNOWN)])
    document = received.json()
    assert document["event_type"] == "unknown" and document["camera_id"] == "door"
    assert not {"person_id", "name", "distance", "margin"} & set(document)


def test_without_names_the_event_carries_the_id_only(broker: Broker, announce, observe) -> None:
    ada = visit(RECOGNIZED, person_id="p1", name="Ada", distance=0.41, margin=0.2)
    settings = HomeAssistantSettings(enabled=True)
    (received,) = event_entity(broker, observe, announce, settings, [ada], include_names=False)
    assert received.json()["person_id"] == "p1" and b"Ada" not in received.payload


def test_no_event_reaches_home_assistant_while_discovery_is_off(broker: Broker, announce, observe) -> None:
    ada = visit(RECOGNIZED, person_id="p1", name="Ada", distance=0.41, margin=0.2)
    assert event_entity(broker, observe, announce, HomeAssistantSettings(), [ada]) == []


# ------------------------------------------------------------------------- removal: no orphaned device


def removed(observer: Observer) -> set[str]:
    """Topics emptied with a retained-delete (empty payload): Home Assistant removes those entities."""
    return {m.topic for m in observer.messages if not m.payload}


def retained_configs(broker: Broker, observe) -> list[str]:
    late = observe(broker, ["homeassistant/#"])
    late.wait_for(lambda m: False, 0.5)
    return sorted(configs(late))


def test_disabling_discovery_removes_the_device(tmp_path: Path, broker: Broker, announce, observe) -> None:
    first = announce(broker, HomeAssistantSettings(enabled=True), state_dir=tmp_path)
    assert len(retained_configs(broker, observe)) == 3
    first.stop({"schema": 1, "state": "offline"}, timeout=0.5)
    watcher = observe(broker, ["homeassistant/#", LAST_PERSON])
    announce(broker, HomeAssistantSettings(enabled=False), state_dir=tmp_path)
    assert watcher.wait_for(lambda m: removed(watcher) == {SENSOR, BINARY, EVENT, LAST_PERSON}, 5)
    assert retained_configs(broker, observe) == []


def test_a_removal_is_done_once(tmp_path: Path, broker: Broker, announce, observe) -> None:
    announce(broker, HomeAssistantSettings(enabled=True), state_dir=tmp_path).stop({"state": "offline"}, timeout=0.5)
    announce(broker, HomeAssistantSettings(), state_dir=tmp_path).stop({"state": "offline"}, timeout=0.5)
    assert not (tmp_path / RECORD_NAME).exists()
    watcher = observe(broker, ["homeassistant/#", LAST_PERSON])
    announce(broker, HomeAssistantSettings(), state_dir=tmp_path)
    assert not watcher.wait_for(lambda m: bool(m), 0.5)


def test_a_device_id_change_removes_the_old_device(tmp_path: Path, broker: Broker, announce, observe) -> None:
    announce(broker, HomeAssistantSettings(enabled=True), state_dir=tmp_path).stop({"state": "offline"}, timeout=0.5)
    watcher = observe(broker, ["homeassistant/#", "faceagent/+/last_person"])
    announce(broker, HomeAssistantSettings(enabled=True), "dev2", state_dir=tmp_path)
    assert watcher.wait_for(lambda m: removed(watcher) == {SENSOR, BINARY, EVENT, LAST_PERSON}, 5)
    renamed = sorted(topic.replace(DEVICE, "dev2") for topic in (SENSOR, BINARY, EVENT))
    assert watcher.wait_for(lambda m: sorted(t for t in configs(watcher) if "/dev2/" in t) == renamed, 5)
    assert retained_configs(broker, observe) == renamed


def test_a_restart_under_the_same_id_removes_nothing(tmp_path: Path, broker: Broker, announce, observe) -> None:
    announce(broker, HomeAssistantSettings(enabled=True), state_dir=tmp_path).stop({"state": "offline"}, timeout=0.5)
    watcher = observe(broker, ["homeassistant/#"])
    announce(broker, HomeAssistantSettings(enabled=True), state_dir=tmp_path)
    assert watcher.wait_for(lambda m: len(configs(watcher)) == 6, 5)  # the 3 retained, then the 3 announced
    assert not watcher.wait_for(lambda m: bool(removed(watcher)), 0.5)

"""Home Assistant's per-person "seen in the last N minutes" sensors, through a real Mosquitto and a real gallery."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.link.homeassistant import HomeAssistantDiscovery
from agent.link.homeassistant_people import LOOK_SECONDS
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.recognition.events import RECOGNIZED, UNKNOWN
from tests.support.broker import FAST_LINK, Broker, Observer

DEVICE = "dev1"
ON = HomeAssistantSettings(enabled=True, person_presence_minutes=10)
EVERYTHING = ["homeassistant/#", f"faceagent/{DEVICE}/#"]
SETTLED = "test/settled"


def config_topic(person_id: str) -> str:
    return f"homeassistant/binary_sensor/{DEVICE}/seen_{person_id}/config"


def state_topic(person_id: str) -> str:
    return f"faceagent/{DEVICE}/seen/{person_id}"


def sensor_topics(person_id: str) -> set[str]:
    return {config_topic(person_id), state_topic(person_id)}


def per_person(topic: str) -> bool:
    return "/seen_" in topic or "/seen/" in topic


@dataclass
class Clock:
    """The sensors' monotonic clock, moved by the test instead of waited for."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Device:
    """What the service wires together: the link, the discovery on it, and the gallery thread's store."""

    link: MqttLink
    discovery: HomeAssistantDiscovery
    store: GalleryStore
    clock: Clock

    def keep(self, *, include_names: bool = True) -> None:
        """One gallery-thread turn, after the gallery is due to be looked at again."""
        self.clock.now += LOOK_SECONDS
        self.discovery.keep_people(self.store, include_names=include_names)

    def recognize(self, person_id: str, name: str, *, include_names: bool = True) -> None:
        self.discovery.publish_events([visit(RECOGNIZED, person_id=person_id, name=name)], include_names=include_names)

    def keep_until(self, observer: Observer, predicate: Callable[[list], bool], timeout: float = 10) -> bool:
        """Gallery-thread turns until `observer` sees what `predicate` asks: a connect or Home Assistant's birth
        message reaches the link on paho's thread, and the next turn acts on it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keep()
            if observer.wait_for(predicate, 0.25):
                return True
        return False

    def stop(self) -> None:
        if self.link.connected:
            self.link.stop({"schema": 1, "state": "offline"}, timeout=0.5)


class Devices:
    """Devices started over one gallery file, and what the broker then holds for a newcomer."""

    def __init__(self, gallery: Path, observe: Callable[..., Observer]) -> None:
        self.gallery = gallery
        self.observe = observe
        self.started: list[Device] = []

    def start(self, broker: Broker, settings: HomeAssistantSettings = ON, *, state_dir: Path | None = None) -> Device:
        link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), DEVICE, lambda request: None)
        clock = Clock()
        discovery = HomeAssistantDiscovery(link, settings, version="1.2.3", state_dir=state_dir, clock=clock)
        discovery.attach()
        link.start()
        assert link.wait_connected(5)
        device = Device(link, discovery, GalleryStore.open(self.gallery), clock)
        self.started.append(device)
        return device

    def retained(self, broker: Broker, topics: list[str]) -> dict[str, bytes]:
        """What a Home Assistant that starts now receives on `topics`: retained messages only, after the broker
        has everything the running devices published (a marker each sends last has come through)."""
        for device in self.started:
            if device.link.connected:
                marker = self.observe(broker, [SETTLED])
                device.link.publish_raw(SETTLED, b"1")
                assert marker.wait_for(lambda m: bool(m), 5), "the device's messages did not reach the broker"
        late = self.observe(broker, topics)
        late.wait_for(lambda m: False, 0.5)
        return {m.topic: m.payload for m in late.messages if m.retain}

    def stop(self) -> None:
        for device in self.started:
            device.stop()
            device.store.close()


@pytest.fixture
def devices(tmp_path: Path, observe) -> Iterator[Devices]:
    started = Devices(tmp_path / "gallery.db", observe)
    yield started
    started.stop()


def enroll(tmp_path: Path, name: str) -> str:
    """A person enrolled by another process (the CLI), as the gallery thread finds them."""
    with GalleryStore.open(tmp_path / "gallery.db") as cli:
        return cli.add_person(name).id


def visit(event_type: str, **fields) -> dict:
    event = {"schema": 1, "event_id": new_event_id(), "type": event_type, "track_id": 7, "frames": 12}
    return event | {"camera_id": "door", "model_id": "m", "at": utc_now(), "distance": 0.4} | fields


def removed(observer: Observer) -> set[str]:
    return {m.topic for m in observer.messages if not m.payload}


def latest(observer: Observer, topic: str) -> dict:
    assert observer.wait_for(lambda m: any(x.topic == topic for x in m), 5), f"nothing on {topic}"
    return observer.on(topic)[-1].json()


def names(observer: Observer, person_id: str) -> list[str]:
    """The names the person's sensor was announced with, in order."""
    return [m.json()["name"] for m in observer.on(config_topic(person_id)) if m.payload]


# ------------------------------------------------------------------------------------------------ announced


def test_off_by_default(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    watcher = observe(broker, EVERYTHING)
    device = devices.start(broker, HomeAssistantSettings(enabled=True))
    device.keep()
    device.recognize(ada, "Ada")
    assert watcher.wait_for(lambda m: any(x.topic.endswith("/face_event") for x in m), 5)  # the traffic flowed
    assert not watcher.wait_for(lambda m: any(per_person(x.topic) for x in m), 0.5)


def test_an_enrolled_person_gets_a_sensor_that_starts_off(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    devices.start(broker).keep()
    held = devices.retained(broker, EVERYTHING)
    config = json.loads(held[config_topic(ada)])
    assert (config["name"], config["off_delay"], config["state_topic"]) == (
        "Ada seen in the last 10 minutes", 600, state_topic(ada)
    )  # fmt: skip
    assert config["unique_id"] == f"faceagent_{DEVICE}_seen_{ada}"
    assert held[state_topic(ada)] == b'{"schema":1,"seen":false}'


def test_the_entity_id_is_made_from_the_id_not_the_name(tmp_path: Path, broker: Broker, devices, observe) -> None:
    """Home Assistant keeps a deleted entity's id in its registry: a name in it would outlive the erasure."""
    ada = enroll(tmp_path, "Ada")
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    devices.start(broker).keep()
    assert latest(watcher, config_topic(ada))["object_id"] == f"faceagent_seen_{ada}"


def test_a_person_enrolled_while_running_gets_a_sensor(tmp_path: Path, broker: Broker, devices, observe) -> None:
    device = devices.start(broker)
    device.keep()
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    ada = enroll(tmp_path, "Ada")
    device.keep()
    assert latest(watcher, config_topic(ada))["name"] == "Ada seen in the last 10 minutes"


def test_one_minute_is_singular(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    devices.start(broker, HomeAssistantSettings(enabled=True, person_presence_minutes=1)).keep()
    document = latest(watcher, config_topic(ada))
    assert (document["name"], document["off_delay"]) == ("Ada seen in the last 1 minute", 60)


def test_a_first_recognition_announces_the_sensor(tmp_path: Path, broker: Broker, devices, observe) -> None:
    """Enrolled a moment ago: the frame loop recognizes them before the gallery thread has looked."""
    watcher = observe(broker, EVERYTHING)
    devices.start(broker).recognize("p_new", "Ada")
    assert latest(watcher, config_topic("p_new"))["name"] == "Ada seen in the last 10 minutes"
    assert latest(watcher, state_topic("p_new"))["seen"] is True


# -------------------------------------------------------------------------------------------------- on, off


def test_every_recognition_turns_the_sensor_on(tmp_path: Path, broker: Broker, devices, observe) -> None:
    """Home Assistant restarts `off_delay` on each message: a second visit keeps the sensor on longer."""
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    watcher = observe(broker, [state_topic(ada)])
    device.recognize(ada, "Ada")
    device.recognize(ada, "Ada")
    assert watcher.wait_for(lambda m: [x.json()["seen"] for x in m] == [False, True, True], 5)  # retained, 2 visits
    assert devices.retained(broker, [state_topic(ada)]) == {state_topic(ada): b'{"schema":1,"seen":true}'}


def test_an_unknown_face_turns_no_sensor_on(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    watcher = observe(broker, [f"faceagent/{DEVICE}/#"])
    device.discovery.publish_events([visit(UNKNOWN)], include_names=True)
    assert watcher.wait_for(lambda m: any(x.topic.endswith("/face_event") for x in m), 5)
    assert [m.json()["seen"] for m in watcher.on(state_topic(ada))] == [False]  # the retained one only


def test_the_agent_turns_the_sensor_off_when_the_minutes_are_up(
    tmp_path: Path, broker: Broker, devices, observe
) -> None:
    """Home Assistant's `off_delay` does it there; the agent does it on the broker, for a later subscriber."""
    ada = enroll(tmp_path, "Ada")
    watcher = observe(broker, [state_topic(ada)])
    device = devices.start(broker)
    device.keep()
    device.recognize(ada, "Ada")
    assert watcher.wait_for(lambda m: [x.json()["seen"] for x in m] == [False, True], 5)
    device.clock.now += 600 - LOOK_SECONDS - 1
    device.keep()
    assert not watcher.wait_for(lambda m: len(m) > 2, 0.5)
    device.keep()
    assert watcher.wait_for(lambda m: [x.json()["seen"] for x in m] == [False, True, False], 5)
    assert devices.retained(broker, [state_topic(ada)]) == {state_topic(ada): b'{"schema":1,"seen":false}'}


def test_a_reconnect_sends_every_sensor_again(tmp_path: Path, start_broker, devices, observe) -> None:
    """A broker without persistence forgets the retained configs and states."""
    broker = start_broker()
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    before = observe(broker, [state_topic(ada)])
    device.keep()
    device.recognize(ada, "Ada")
    assert before.wait_for(lambda m: [x.json()["seen"] for x in m] == [False, True], 5)  # all sent before the loss
    broker.stop()
    broker.start()
    after = observe(broker, EVERYTHING)
    assert device.keep_until(after, lambda m: sensor_topics(ada) <= {x.topic for x in m})
    held = devices.retained(broker, EVERYTHING)
    assert held[state_topic(ada)] == b'{"schema":1,"seen":true}' and config_topic(ada) in held


def test_home_assistant_coming_online_gets_every_sensor_again(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    assert watcher.wait_for(lambda m: len(watcher.on(config_topic(ada))) == 1, 5)  # the retained one
    observe(broker, []).publish("homeassistant/status", b"online")
    assert device.keep_until(watcher, lambda m: len(watcher.on(config_topic(ada))) == 2)


# ------------------------------------------------------------------------------------------- names, erasure


def test_a_rename_renames_the_sensor(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    device.store.update_person(ada, name="Ada Lovelace", actor="cli:test")
    device.keep()
    assert watcher.wait_for(lambda m: names(watcher, ada)[-1:] == ["Ada Lovelace seen in the last 10 minutes"], 5)


def test_without_names_the_sensor_is_named_by_id(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    watcher = observe(broker, EVERYTHING)
    device = devices.start(broker)
    device.keep(include_names=False)
    device.recognize(ada, "Ada", include_names=False)
    assert latest(watcher, config_topic(ada))["name"] == f"{ada} seen in the last 10 minutes"
    assert watcher.wait_for(lambda m: len(watcher.on(state_topic(ada))) == 2, 5)
    assert not [m.topic for m in watcher.messages if b"Ada" in m.payload]


def test_turning_names_off_renames_every_sensor_at_once(tmp_path: Path, broker: Broker, devices, observe) -> None:
    """`events.include_names` can change over MQTT (set_config): the names must leave Home Assistant too."""
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep(include_names=True)
    watcher = observe(broker, ["homeassistant/binary_sensor/#"])
    device.discovery.keep_people(device.store, include_names=False)  # no wait for the next look
    assert watcher.wait_for(lambda m: names(watcher, ada)[-1:] == [f"{ada} seen in the last 10 minutes"], 5)
    assert b"Ada" not in devices.retained(broker, ["homeassistant/binary_sensor/#"])[config_topic(ada)]


def test_erasing_a_person_removes_their_sensor(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    device.recognize(ada, "Ada")
    watcher = observe(broker, EVERYTHING)
    with GalleryStore.open(tmp_path / "gallery.db") as cli:
        cli.delete_person(ada, actor="cli:test")
    device.keep()
    assert watcher.wait_for(lambda m: removed(watcher) == sensor_topics(ada), 5)
    assert next(m.topic for m in watcher.messages if not m.payload) == config_topic(ada)  # the entity goes first
    assert not sensor_topics(ada) & set(devices.retained(broker, EVERYTHING))


def test_a_recognition_in_flight_does_not_bring_an_erased_sensor_back(
    tmp_path: Path, broker: Broker, devices, observe
) -> None:
    ada = enroll(tmp_path, "Ada")
    device = devices.start(broker)
    device.keep()
    with GalleryStore.open(tmp_path / "gallery.db") as cli:
        cli.delete_person(ada, actor="cli:test")
    device.keep()
    watcher = observe(broker, [config_topic(ada), state_topic(ada), f"faceagent/{DEVICE}/face_event"])
    device.recognize(ada, "Ada")  # matched from the matcher a moment before it dropped her
    assert watcher.wait_for(lambda m: any(x.topic.endswith("/face_event") for x in m), 5)
    assert not watcher.wait_for(lambda m: any(per_person(x.topic) and x.payload for x in m), 0.5)


def test_erasing_a_person_leaves_the_others(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada, bob = enroll(tmp_path, "Ada"), enroll(tmp_path, "Bob")
    device = devices.start(broker)
    device.keep()
    with GalleryStore.open(tmp_path / "gallery.db") as cli:
        cli.delete_person(ada, actor="cli:test")
    device.keep()
    held = devices.retained(broker, EVERYTHING)
    assert sensor_topics(bob) <= set(held) and not sensor_topics(ada) & set(held)


# ------------------------------------------------------------------------------------ removal at a later start


def announced_then(
    state_dir: Path, broker: Broker, devices: Devices, settings: HomeAssistantSettings, observe
) -> Observer:
    """A run with the sensors on for everyone enrolled, stopped; then one with `settings`: what it published."""
    first = devices.start(broker, ON, state_dir=state_dir)
    first.keep()
    first.stop()
    watcher = observe(broker, EVERYTHING)
    devices.start(broker, settings, state_dir=state_dir).keep()
    return watcher


def test_switching_the_option_off_removes_every_person_sensor(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada, bob = enroll(tmp_path, "Ada"), enroll(tmp_path, "Bob")
    watcher = announced_then(tmp_path, broker, devices, HomeAssistantSettings(enabled=True), observe)
    assert watcher.wait_for(lambda m: removed(watcher) == sensor_topics(ada) | sensor_topics(bob), 5)
    assert not [topic for topic in devices.retained(broker, EVERYTHING) if per_person(topic)]


def test_disabling_discovery_removes_the_person_sensors_too(tmp_path: Path, broker: Broker, devices, observe) -> None:
    ada = enroll(tmp_path, "Ada")
    watcher = announced_then(tmp_path, broker, devices, HomeAssistantSettings(), observe)
    assert watcher.wait_for(lambda m: sensor_topics(ada) <= removed(watcher), 5)
    assert not [topic for topic in devices.retained(broker, EVERYTHING) if per_person(topic)]


def test_a_person_erased_while_the_agent_was_down_loses_the_sensor_at_the_next_start(
    tmp_path: Path, broker: Broker, devices, observe
) -> None:
    ada, bob = enroll(tmp_path, "Ada"), enroll(tmp_path, "Bob")
    first = devices.start(broker, ON, state_dir=tmp_path)
    first.keep()
    first.stop()
    with GalleryStore.open(tmp_path / "gallery.db") as cli:
        cli.delete_person(bob, actor="cli:test")
    watcher = observe(broker, EVERYTHING)
    devices.start(broker, ON, state_dir=tmp_path).keep()
    assert watcher.wait_for(lambda m: removed(watcher) == sensor_topics(bob), 5)
    assert sensor_topics(ada) <= set(devices.retained(broker, EVERYTHING))


def test_a_restart_with_the_same_people_removes_nothing(tmp_path: Path, broker: Broker, devices, observe) -> None:
    enroll(tmp_path, "Ada")
    watcher = announced_then(tmp_path, broker, devices, ON, observe)
    assert watcher.wait_for(lambda m: sum(per_person(x.topic) for x in m) >= 4, 5)  # 2 retained, 2 announced
    assert not watcher.wait_for(lambda m: bool(removed(watcher)), 0.5)

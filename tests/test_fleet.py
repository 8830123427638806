"""The fleet simulator (scripts/fleet_sim.py) on a real Mosquitto: devices wired from the agent's own link,
dispatcher, signing and gallery, commanded by the real `faceagent ctl`; and the operator's client in a fleet
that keeps publishing while it waits for replies."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.main import main
from agent.link.client import BrokerSettings
from agent.link.mqtt import CommandRequest, MqttLink
from agent.link.operator import Operator
from scripts._fleet import BROADCAST_PHOTOS, Fleet, fleet_options
from tests.broker import Broker, Observer
from tests.command_fixtures import OPERATOR_PUBLIC

FAST = {"keepalive": 5, "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5}
PERSON = "Colin Powell"


@pytest.fixture
def start_fleet(broker: Broker, tmp_path: Path, shared_data: Path) -> Iterator[Callable[..., Fleet]]:
    """Factory: `start_fleet(50)`, devices trusting the test operator's key; faces and embeddings computed by the
    real pipeline on first use and cached outside the repository."""
    fleets: list[Fleet] = []

    def start(count: int, *, processes: int = 2, event_seconds: float = 0.0) -> Fleet:
        state = tmp_path / f"fleet{len(fleets)}"
        options = fleet_options(broker.url, state, shared_data, OPERATOR_PUBLIC, event_seconds=event_seconds)
        fleet = Fleet(count, options, processes=processes, connect_timeout=60)
        fleets.append(fleet)
        fleet.start()
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


def enroll_everywhere(
    capsys: pytest.CaptureFixture[str], broker: Broker, key: Path, shared_data: Path
) -> dict[str, Any]:
    """The broadcast person enrolled on every online device with `ctl enroll --all`: device -> reply."""
    photos = [str(shared_data / photo) for photo in BROADCAST_PHOTOS]
    return ctl_json(capsys, broker, key, "enroll", "--all", "--name", PERSON, *photos)


def ctl_json(capsys: pytest.CaptureFixture[str], broker: Broker, key: Path, *args: str) -> dict[str, Any]:
    """`faceagent ctl ... --json` in this process: device -> its reply (None when silent)."""
    capsys.readouterr()
    main(["ctl", *args, "--json", "--mqtt", broker.url, "--sign-key", str(key), "--timeout", "120"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return {line["device"]: line["reply"] for line in lines}


@pytest.mark.slow
def test_broadcast_enroll_then_erase_is_answered_by_every_device_of_fifty(
    start_fleet: Callable[..., Fleet],
    broker: Broker,
    shared_data: Path,
    operator_key_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = start_fleet(50)

    enrolled = enroll_everywhere(capsys, broker, operator_key_file, shared_data)
    assert sorted(enrolled) == fleet.ids
    for device, reply in enrolled.items():
        assert reply is not None, f"{device} did not answer the enrollment"
        assert reply["status"] == "ok", (device, reply)
        assert reply["data"]["created"] and reply["data"]["templates_added"] == len(BROADCAST_PHOTOS), (device, reply)
    person_ids = {device: reply["data"]["person"]["id"] for device, reply in enrolled.items()}
    assert len(set(person_ids.values())) == len(fleet.ids)  # each device made its own person

    erased = ctl_json(capsys, broker, operator_key_file, "delete", "--all", "--name", PERSON)
    assert sorted(erased) == fleet.ids
    for device, reply in erased.items():
        assert reply is not None, f"{device} did not answer the erasure"
        assert reply["status"] == "ok", (device, reply)
        assert reply["data"]["person_id"] == person_ids[device]
        assert reply["data"]["deleted"]["templates"] == len(BROADCAST_PHOTOS), (device, reply)


@pytest.mark.slow
def test_a_simulated_camera_recognizes_a_person_once_the_operator_enrolled_them(
    start_fleet: Callable[..., Fleet],
    broker: Broker,
    shared_data: Path,
    operator_key_file: Path,
    capsys: pytest.CaptureFixture[str],
    observe: Callable[..., Observer],
) -> None:
    fleet = start_fleet(2, processes=1, event_seconds=0.05)
    events = observe(broker, ["faceagent/+/events/#"])
    enrolled = enroll_everywhere(capsys, broker, operator_key_file, shared_data)
    wanted = {device: reply["data"]["person"]["id"] for device, reply in enrolled.items()}
    assert sorted(wanted) == fleet.ids

    def recognized(messages: list[Any]) -> set[str]:
        return {
            m.topic.split("/")[1]
            for m in messages
            if m.topic.endswith("/face_recognized") and m.json().get("person_id") == wanted[m.topic.split("/")[1]]
        }

    assert events.wait_for(lambda messages: recognized(messages) == set(fleet.ids), timeout=60)


def test_statuses_published_while_an_operator_waits_for_replies_are_not_taken_for_replies(
    broker: Broker, observe: Callable[..., Observer]
) -> None:
    """A fleet publishes statuses all the time; a call must keep waiting for replies through them."""
    settings = BrokerSettings(url=broker.url, **FAST)
    link: MqttLink

    def answer(request: CommandRequest) -> None:  # as a device whose status is due just as a command arrives
        link.publish_status({"schema": 1, "state": "online", "device": "dev1"})
        reply = {"schema": 1, "request_id": json.loads(request.payload)["request_id"], "status": "ok", "data": {}}
        link.reply(request, json.dumps(reply).encode())

    link = MqttLink(settings, "dev1", answer)
    link.start()
    try:
        assert link.wait_connected(10)
        with Operator(settings, timeout=10) as operator:
            assert "dev1" in operator.statuses()
            replies = operator.call(["dev1"], "ping", {})
        assert replies["dev1"] is not None and replies["dev1"]["status"] == "ok"
    finally:
        link.stop({"schema": 1, "state": "offline", "device": "dev1"}, timeout=1.0)

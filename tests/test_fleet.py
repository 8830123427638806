"""The fleet simulator (scripts/fleet_sim.py) on a real Mosquitto: devices wired from the agent's own link,
dispatcher, signing and gallery, commanded by the real `faceagent ctl`; and the operator's client in a fleet
that keeps publishing while it waits for replies."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli.console.backfill import HistoryBackfill
from agent.cli.console.fleet import FleetState, Watcher
from agent.cli.console.remote import Remote
from agent.cli.main import main
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.link.client import BrokerSettings
from agent.link.mqtt import CommandRequest, MqttLink
from agent.link.operator import FLEET_PROBE_SECONDS, Operator
from agent.wire import FLEET, Command
from scripts._fleet import Fleet, fleet_options
from scripts._fleet_faces import BROADCAST_PHOTOS
from tests.support.broker import Broker, Certs, Observer, free_port
from tests.support.commands import OPERATOR_PUBLIC
from tests.support.data import REPO

FAST = {"keepalive": 5, "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5}
PERSON = "Colin Powell"


@pytest.fixture
def start_fleet(broker: Broker, tmp_path: Path, shared_data: Path) -> Iterator[Callable[..., Fleet]]:
    """Factory: `start_fleet(50)`, devices trusting the test operator's key; faces and embeddings computed by the
    real pipeline on first use and cached outside the repository."""
    fleets: list[Fleet] = []

    def start(count: int, *, processes: int = 2, event_seconds: float = 0.0, history_seconds: float = 0.0) -> Fleet:
        state = tmp_path / f"fleet{len(fleets)}"
        options = fleet_options(
            broker.url,
            state,
            shared_data,
            OPERATOR_PUBLIC,
            event_seconds=event_seconds,
            history_seconds=history_seconds,
        )
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
    return ctl_json(capsys, broker.url, "enroll", "--all", "--name", PERSON, *photos, key=key)[1]


def ctl_json(
    capsys: pytest.CaptureFixture[str], url: str, *args: str, key: Path | None = None
) -> tuple[int, dict[str, Any]]:
    """`faceagent ctl ... --json` in this process: its exit status, and device -> its reply (None when silent)."""
    capsys.readouterr()
    signing = ["--sign-key", str(key)] if key else []
    status = main(["ctl", *args, "--json", "--mqtt", url, *signing, "--timeout", "120"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return status, {line["device"]: line["reply"] for line in lines}


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

    erased = ctl_json(capsys, broker.url, "delete", "--all", "--name", PERSON, key=operator_key_file)[1]
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


@pytest.mark.slow
def test_a_simulated_device_started_an_hour_ago_answers_get_telemetry_with_that_hour(
    start_fleet: Callable[..., Fleet], broker: Broker
) -> None:
    """Through the real dispatcher and TelemetryHistory: one document per telemetry interval (60 s) of the hour,
    oldest first, each once."""
    fleet = start_fleet(1, processes=1, history_seconds=3600)
    with Operator(BrokerSettings(url=broker.url), timeout=30) as operator:
        reply = operator.call(fleet.ids, Command.GET_TELEMETRY, {})[fleet.ids[0]]
    assert reply is not None and reply["status"] == "ok", reply
    page = reply["data"]
    kept = [datetime.fromisoformat(point["at"]) for point in page["points"]]
    assert kept == sorted(set(kept)) and 59 <= len(kept) <= 61
    assert datetime.fromisoformat(page["at"]) - kept[0] >= timedelta(minutes=59)
    assert {point["device"] for point in page["points"]} == set(fleet.ids)


@pytest.mark.slow
def test_a_console_started_after_the_simulated_fleet_plots_each_devices_hour(
    start_fleet: Callable[..., Fleet], broker: Broker
) -> None:
    """The console's own watcher and backfill (as bench_console.py runs them on 500 devices) on two devices."""
    fleet = start_fleet(2, processes=1, history_seconds=3600)
    state = FleetState()
    watcher = Watcher(BrokerSettings(url=broker.url), state)
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while sorted(state.online()) != fleet.ids and time.monotonic() < deadline:
            time.sleep(0.1)
        remote = Remote(BrokerSettings(url=broker.url), timeout=30, sign_key=None)
        added = HistoryBackfill(state, lambda devices: remote.call(devices, Command.GET_TELEMETRY, {})).run_once()
    finally:
        watcher.stop()
    assert sorted(added) == fleet.ids and min(added.values()) >= 59
    for device, series in state.series(fleet.ids).items():
        assert series["t"][0] <= state.clock() - 3540, device  # plotted from about an hour before the console


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


# ------------------------------------------------------------------------------- the example ACL

ACL = REPO / "examples" / "mosquitto" / "faceagent.acl"
USERS = {"dev-a": "pass-a", "operator": "pass-op", "homeassistant": "pass-ha"}


def login(name: str) -> dict[str, str]:
    return {"username": name, "password": USERS[name]}


def test_with_the_example_acl_a_device_takes_a_request_published_for_every_device(
    start_broker: Callable[..., Broker], observe: Callable[..., Observer]
) -> None:
    broker = start_broker(passwords=USERS, acl_file=ACL)
    operator = observe(broker, ["faceagent/dev-a/#"], **login("operator"))
    link: MqttLink
    link = MqttLink(
        BrokerSettings(url=broker.url, **FAST, **login("dev-a")), "dev-a", lambda r: link.reply(r, b'{"status":"ok"}')
    )
    link.start()
    try:
        assert link.wait_connected(5)
        operator.publish(f"faceagent/{FLEET}/cmd/ping", b'{"request_id":"1","to":"*"}')
        assert operator.wait_for(lambda m: any(x.topic == "faceagent/dev-a/cmd/ping/reply" for x in m), 5)
        statuses = [m.json() for m in operator.messages if m.topic == "faceagent/dev-a/status"]
        assert statuses[-1]["fleet_commands"] is True
    finally:
        link.stop({"schema": 1, "state": "offline", "device": "dev-a"}, timeout=0.5)


def test_with_the_example_acl_home_assistant_cannot_read_requests_for_every_device(
    start_broker: Callable[..., Broker], observe: Callable[..., Observer]
) -> None:
    broker = start_broker(passwords=USERS, acl_file=ACL)
    home_assistant = observe(broker, [f"faceagent/{FLEET}/cmd/+", "faceagent/#"], **login("homeassistant"))
    device = observe(broker, [f"faceagent/{FLEET}/cmd/+"], **login("dev-a"))
    operator = observe(broker, [], **login("operator"))
    operator.publish(f"faceagent/{FLEET}/cmd/enroll", b'{"request_id":"1","to":"*"}')
    assert device.wait_for(lambda m: len(m) == 1, 5)  # delivered to a device ...
    assert not home_assistant.wait_for(lambda m: len(m) > 0, 0.3)  # ... never to Home Assistant


class AnsweringDevice:
    """A device's link that answers every command ok (with the request's id), on a test broker; a ping only
    after `ping_delay` seconds (a busy device)."""

    def __init__(self, broker: Broker, device: str, ping_delay: float = 0.0, **login: str) -> None:
        self.ping_delay = ping_delay
        self.link = MqttLink(BrokerSettings(url=broker.url, **FAST, **login), device, self.answer)
        self.link.start()

    def answer(self, request: CommandRequest) -> None:
        request_id = json.loads(request.payload)["request_id"]
        reply = json.dumps({"schema": 1, "request_id": request_id, "status": "ok"}).encode()
        delay = self.ping_delay if request.name == "ping" else 0.0
        threading.Timer(delay, self.link.reply, (request, reply)).start()

    def stop(self) -> None:
        self.link.stop({"schema": 1, "state": "offline", "device": self.link.topics.device}, timeout=0.5)


@pytest.fixture
def answering_device() -> Iterator[Callable[..., AnsweringDevice]]:
    devices: list[AnsweringDevice] = []

    def start(broker: Broker, device: str, ping_delay: float = 0.0, **login: str) -> AnsweringDevice:
        devices.append(AnsweringDevice(broker, device, ping_delay, **login))
        assert devices[-1].link.wait_connected(5)
        return devices[-1]

    yield start
    for device in devices:
        device.stop()


def test_ctl_all_sends_its_own_copy_to_a_device_the_broker_keeps_from_requests_for_every_device(
    start_broker: Callable[..., Broker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    answering_device: Callable[..., AnsweringDevice],
) -> None:
    """An ACL written before fleet-wide requests: Mosquitto grants the subscription and delivers nothing."""
    older = tmp_path / "older.acl"
    older.write_text(ACL.read_text().replace("pattern read  faceagent/*/cmd/+\n", ""))
    broker = start_broker(passwords=USERS, acl_file=older)
    answering_device(broker, "dev-a", **login("dev-a"))
    url = f"mqtt://operator:{USERS['operator']}@127.0.0.1:{broker.port}"
    status, replies = ctl_json(capsys, url, "delete", "--all", "--name", PERSON)
    assert status == 0 and list(replies) == ["dev-a"]


def test_devices_slow_to_answer_the_fleet_ping_share_the_request_while_answers_keep_coming(
    broker: Broker,
    observe: Callable[..., Observer],
    capsys: pytest.CaptureFixture[str],
    answering_device: Callable[..., AnsweringDevice],
) -> None:
    """A busy fleet answers its ping over longer than any fixed wait: each answer extends it (by
    FLEET_PROBE_SECONDS of quiet), so the last device still gets the shared copy, not a copy of its own."""
    requests = observe(broker, ["faceagent/+/cmd/delete_person"])
    for index, device in enumerate(("dev1", "dev2", "dev3")):
        answering_device(broker, device, ping_delay=index * 0.6 * FLEET_PROBE_SECONDS)
    status, replies = ctl_json(capsys, broker.url, "delete", "--all", "--name", PERSON)
    assert status == 0 and sorted(replies) == ["dev1", "dev2", "dev3"]
    assert requests.wait_for(lambda m: len(m) >= 1, 5)
    assert not requests.wait_for(lambda m: len(m) > 1, 0.3)
    assert requests.messages[0].topic == f"faceagent/{FLEET}/cmd/delete_person"


def test_ctl_all_publishes_one_request_for_every_device_that_listens_for_it(
    broker: Broker,
    observe: Callable[..., Observer],
    capsys: pytest.CaptureFixture[str],
    answering_device: Callable[..., AnsweringDevice],
) -> None:
    requests = observe(broker, ["faceagent/+/cmd/delete_person"])
    for device in ("dev1", "dev2", "dev3"):
        answering_device(broker, device)
    status, replies = ctl_json(capsys, broker.url, "delete", "--all", "--name", PERSON)
    assert status == 0 and sorted(replies) == ["dev1", "dev2", "dev3"]
    assert requests.wait_for(lambda m: len(m) >= 1, 5)
    assert not requests.wait_for(lambda m: len(m) > 1, 0.3)  # no copy of its own for any device
    assert requests.messages[0].topic == f"faceagent/{FLEET}/cmd/delete_person"


@pytest.mark.slow
def test_the_console_enrolls_on_every_online_device_with_one_request(
    broker: Broker,
    observe: Callable[..., Observer],
    answering_device: Callable[..., AnsweringDevice],
    shared_data: Path,
) -> None:
    from tests.support.console import start_console
    from tests.test_console import browser_like, csrf_of, fetch

    requests = observe(broker, ["faceagent/+/cmd/enroll"])
    for device in ("dev1", "dev2"):
        answering_device(broker, device)
    console = start_console(broker)
    try:
        opener = browser_like()
        fleet: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len([d for d in fleet if d["online"]]) < 2 and time.monotonic() < deadline:
            fleet = json.loads(fetch(opener, console.url + "/api/fleet")[2])["devices"]
            time.sleep(0.1)
        _, _, page = fetch(opener, console.url + "/")
        photo = base64.b64encode((shared_data / BROADCAST_PHOTOS[0]).read_bytes()).decode()
        body = {
            "devices": ["dev1", "dev2"],
            "name": PERSON,
            "images": [{"data": photo}],
            "consent": {"reference": "c1"},
        }
        headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf_of(page), "Origin": console.url}
        post = urllib.request.Request(
            console.url + "/api/people/enroll", data=json.dumps(body).encode(), headers=headers
        )
        status, _, text = fetch(opener, post)
        assert status == 200, text
        outcomes = json.loads(text)["devices"]
        assert sorted(outcomes) == ["dev1", "dev2"] and all(o["ok"] for o in outcomes.values()), text
        assert requests.wait_for(lambda m: len(m) >= 1, 5)
        assert not requests.wait_for(lambda m: len(m) > 1, 0.3)  # no copy of its own for either device
        assert requests.messages[0].topic == f"faceagent/{FLEET}/cmd/enroll"
    finally:
        console.stop()


# ------------------------------------------------------------------------ the example event consumer


def event(event_id: str) -> bytes:
    return json.dumps({"schema": 1, "event_id": event_id, "type": "face_unknown", "track_id": 1}).encode()


def test_the_example_consumer_passes_each_event_on_once_whatever_the_repeats(
    broker: Broker, observe: Callable[..., Observer]
) -> None:
    from examples.events_consumer import EventConsumer

    got: list[str] = []
    consumer = EventConsumer(broker.url, "test-consumer", lambda device, kind, e: got.append(e["event_id"]))
    consumer.start()
    try:
        assert consumer.subscribed.wait(5)
        device = observe(broker, [])
        for event_id in ("e1", "e1", "e2", "e1"):
            device.publish("faceagent/dev1/events/face_unknown", event(event_id))
        deadline = time.monotonic() + 5
        while consumer.received < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (got, consumer.duplicates) == (["e1", "e2"], 2)
    finally:
        consumer.stop()


def test_the_example_consumer_gets_what_was_sent_while_it_was_away_and_the_broker_restarted(
    start_broker: Callable[..., Broker], observe: Callable[..., Observer]
) -> None:
    from examples.events_consumer import EventConsumer

    broker = start_broker(persistence=True)
    got: list[str] = []
    consumer = EventConsumer(broker.url, "test-consumer", lambda device, kind, e: got.append(e["event_id"]))
    consumer.start()
    assert consumer.subscribed.wait(5)
    consumer.stop()
    device = observe(broker, [])
    device.publish("faceagent/dev1/events/face_unknown", event("while-away"))
    device.close()
    broker.stop()  # Mosquitto saves the consumer's session and its queued event ...
    broker.start()  # ... and loads them again
    consumer = EventConsumer(broker.url, "test-consumer", lambda device, kind, e: got.append(e["event_id"]))
    consumer.start()
    try:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == ["while-away"]
    finally:
        consumer.stop()


def test_the_operator_finds_the_devices_while_a_large_fleet_keeps_publishing_statuses(
    broker: Broker, observe: Callable[..., Observer]
) -> None:
    """500 devices at one status a minute publish one every 0.12 s: finding them must not wait for a quiet
    moment that never comes (it waited for --timeout)."""
    device = observe(broker, [])
    busy = threading.Event()

    def publish_status() -> None:
        device.client.publish("faceagent/dev1/status", b'{"state": "online"}', qos=1, retain=True).wait_for_publish(5)

    def publish_statuses() -> None:  # until the operator has its answer, or for at most as long as it would wait
        deadline = time.monotonic() + 20
        while not busy.is_set() and time.monotonic() < deadline:
            publish_status()
            time.sleep(0.05)

    publish_status()
    publisher = threading.Thread(target=publish_statuses)
    publisher.start()
    try:
        with Operator(BrokerSettings(url=broker.url, **FAST), timeout=30) as operator:
            found = operator.statuses()
            still_publishing = publisher.is_alive()
    finally:
        busy.set()
        publisher.join()
    assert "dev1" in found and still_publishing


# ------------------------------------------------------------------- a site bridged to a central broker

BRIDGE = REPO / "examples" / "mosquitto" / "bridge-site.conf"
CENTRAL_USERS = {"site-a": "pass-site", "operator": "pass-op"}


@dataclass
class Sites:
    central: Broker
    site: Broker
    certs: Certs

    def operator_settings(self) -> BrokerSettings:
        return BrokerSettings(
            url=f"mqtts://127.0.0.1:{self.central.port}",
            ca_file=self.certs.ca,
            username="operator",
            password=CENTRAL_USERS["operator"],
            **FAST,
        )


@pytest.fixture
def sites(start_broker: Callable[..., Broker], certs: Certs, tmp_path: Path) -> Iterator[Sites]:
    """A central broker (TLS, passwords, persistence) and a site broker bridged to it by the example's file,
    with only the address, the CA, the password and the retry delays made local."""
    central = start_broker(
        tls=(certs.ca, certs.server_cert, certs.server_key), passwords=CENTRAL_USERS, persistence=True
    )
    bridge = BRIDGE.read_text()
    for old, new in [
        ("central.example.lan:8883", f"127.0.0.1:{central.port}"),
        ("/etc/mosquitto/certs/central-ca.crt", str(certs.ca)),
        ("change-me", CENTRAL_USERS["site-a"]),
        ("restart_timeout 2 60", "restart_timeout 1 2"),
    ]:
        assert old in bridge
        bridge = bridge.replace(old, new)
    port, folder = free_port(), tmp_path / "site"
    local = f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {folder}/\n"
    site = Broker(folder, port=port, config_text=local + bridge).start()
    yield Sites(central, site, certs)
    site.kill()


def bridge_up(observer: Observer) -> Callable[[list[Any]], bool]:
    def up(messages: list[Any]) -> bool:
        states = [m.payload for m in messages if m.topic == "faceagent-sites/site-a/bridge"]
        return bool(states) and states[-1] == b"1"

    return up


def test_events_of_a_device_at_a_site_reach_the_central_consumer_once_the_uplink_is_back(
    sites: Sites, observe: Callable[..., Observer], link_outbox: Callable[..., tuple[Any, Any]], tmp_path: Path
) -> None:
    central = observe(
        sites.central,
        ["faceagent/+/events/#", "faceagent-sites/+/bridge"],
        client_id="central-sink",
        persistent=True,
        ca=sites.certs.ca,
        username="operator",
        password=CENTRAL_USERS["operator"],
    )
    assert central.wait_for(bridge_up(central), 15)
    store_path = tmp_path / "dev1.db"
    link, outbox = link_outbox(sites.site.url, store_path)
    assert link.wait_connected(5)
    sites.central.stop()  # the uplink is down
    with GalleryStore.open(store_path) as store:
        sent = [new_event_id() for _ in range(5)]
        for event_id in sent:
            payload = {"schema": 1, "type": "face_unknown", "track_id": 1}
            store.add_event("face_unknown", payload, event_id=event_id, person_id=None, created_at=utc_now())
    outbox.notify()
    deadline = time.monotonic() + 10
    while (outbox.stats.depth or outbox.stats.inflight) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox.stats.depth == 0  # the site broker took them all: the device holds nothing any more
    sites.central.start()  # the uplink is back
    assert central.wait_for(lambda m: len([x for x in m if "/events/" in x.topic]) >= len(sent), 30)
    assert [m.json()["event_id"] for m in central.messages if "/events/" in m.topic] == sent


def test_a_request_for_every_device_from_the_central_broker_is_answered_by_a_device_at_a_site(
    sites: Sites, answering_device: Callable[..., AnsweringDevice], observe: Callable[..., Observer]
) -> None:
    watcher = observe(
        sites.central,
        ["faceagent-sites/+/bridge", "faceagent/+/status"],
        ca=sites.certs.ca,
        username="operator",
        password=CENTRAL_USERS["operator"],
    )
    answering_device(sites.site, "dev1")
    assert watcher.wait_for(lambda m: any(x.topic == "faceagent/dev1/status" for x in m), 15)  # statuses go up
    with Operator(sites.operator_settings(), timeout=15) as operator:
        status = operator.statuses()["dev1"]
        replies = operator.call(["dev1"], "delete_person", {"name": PERSON}, fleet={"dev1"})
    assert status["fleet_commands"] is True
    assert replies["dev1"] is not None and replies["dev1"]["status"] == "ok"

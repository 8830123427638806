"""Store-and-forward against a real Mosquitto: order, acknowledgement, outages, SIGKILL, the bound."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.outbox import OutboxPublisher
from tests.support.broker import FAST_LINK, Broker, Observer, Received, free_port

DEVICE = "dev1"
EVENTS = f"faceagent/{DEVICE}/events/#"


def store_events(path: Path, count: int, start: int = 0) -> list[str]:
    ids = []
    with GalleryStore.open(path) as store:
        for n in range(start, start + count):
            ids.append(add_one(store, n))
    return ids


def add_one(store: GalleryStore, n: int) -> str:
    event_id = new_event_id()
    store.add_event("face_unknown", {"schema": 1, "type": "face_unknown", "n": n}, event_id=event_id,
                    person_id=None, created_at=utc_now())  # fmt: skip
    return event_id


class Producer(threading.Thread):
    """Writes `count` events at a steady rate through its own store, as the frame loop would."""

    def __init__(self, path: Path, count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.path, self.count, self.interval = path, count, interval
        self.ids: list[str] = []

    def run(self) -> None:
        with GalleryStore.open(self.path) as store:
            for n in range(self.count):
                self.ids.append(add_one(store, n))
                time.sleep(self.interval)


def first_seen(messages: list[Received]) -> list[str]:
    """Event ids in order of first arrival: what a consumer that drops duplicates by id sees."""
    seen: dict[str, None] = {}
    for message in messages:
        seen.setdefault(message.json()["event_id"], None)
    return list(seen)


def pending_ids(path: Path) -> list[str]:
    with GalleryStore.open(path) as store:
        return [row["id"] for row in store.pending_events(limit=100000)]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.db"
    GalleryStore.open(path).close()
    return path


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_arrive_in_order_with_their_ids(
    protocol: str, broker: Broker, store_path: Path, link_outbox, observe
) -> None:
    ids = store_events(store_path, 60)
    collector = observe(broker, [EVENTS], protocol=protocol)
    link_outbox(broker.url, store_path, protocol=protocol)
    assert collector.wait_for(lambda m: len(first_seen(m)) == 60, 10)
    assert first_seen(collector.messages) == ids
    assert {m.topic for m in collector.messages} == {f"faceagent/{DEVICE}/events/face_unknown"}


def test_acknowledged_events_leave_the_outbox(broker: Broker, store_path: Path, link_outbox, observe) -> None:
    store_events(store_path, 25)
    _, outbox = link_outbox(broker.url, store_path)
    deadline = time.monotonic() + 10
    while pending_ids(store_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending_ids(store_path) == []
    assert outbox.stats.published == 25


def test_events_wait_in_the_outbox_while_no_broker_acknowledges(start_broker, store_path: Path, link_outbox) -> None:
    ids = store_events(store_path, 10)
    port = free_port()
    _, outbox = link_outbox(f"mqtt://127.0.0.1:{port}", store_path)
    time.sleep(0.5)
    assert pending_ids(store_path) == ids and outbox.stats.depth == 10
    start_broker(port=port)
    deadline = time.monotonic() + 10
    while pending_ids(store_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending_ids(store_path) == []


@pytest.mark.slow  # the broker stopped and restarted mid-stream
def test_broker_outage_loses_nothing_and_keeps_order(start_broker, store_path: Path, link_outbox, observe) -> None:
    broker = start_broker(persistence=True)  # the consumer's queued messages survive the restart
    collector = observe(broker, [EVENTS], client_id="collector", persistent=True)
    link_outbox(broker.url, store_path)
    producer = Producer(store_path, count=300, interval=0.01)
    producer.start()
    time.sleep(0.8)
    broker.stop()
    stopped_at = len(producer.ids)
    time.sleep(1.2)
    restarted_at = len(producer.ids)
    broker.start()
    producer.join()
    assert 0 < stopped_at < restarted_at < 300, "events must be produced during the outage"
    assert collector.wait_for(lambda m: len(first_seen(m)) >= 300, 20), f"{len(first_seen(collector.messages))}/300"
    assert first_seen(collector.messages) == producer.ids
    duplicates = len(collector.messages) - 300
    print(f"\noutage: produced 300 ({restarted_at - stopped_at} while the broker was down), "
          f"delivered {len(collector.messages)}, duplicates {duplicates}")  # fmt: skip


@pytest.mark.slow  # the link in a process of its own, SIGKILLed and restarted
def test_agent_killed_and_restarted_loses_nothing(broker: Broker, store_path: Path, observe, spawn_link) -> None:
    collector: Observer = observe(broker, [EVENTS])
    producer = Producer(store_path, count=300, interval=0.01)
    first = spawn_link(broker.url, DEVICE, store_path)
    assert first.wait_connected()
    producer.start()
    time.sleep(0.6)
    broker.pause()  # no PUBACKs for a while: the agent's latest events are in flight when it dies
    time.sleep(0.3)
    first.kill()  # SIGKILL: whatever paho held in memory is gone
    broker.resume()
    killed_at = len(producer.ids)
    delivered_at_kill = len(first_seen(collector.messages))
    time.sleep(0.3)
    second = spawn_link(broker.url, DEVICE, store_path)
    assert second.wait_connected()
    producer.join()
    assert killed_at < 300, "the agent must be killed while events are still being produced"
    assert collector.wait_for(lambda m: len(first_seen(m)) >= 300, 20), f"{len(first_seen(collector.messages))}/300"
    assert first_seen(collector.messages) == producer.ids
    print(f"\nSIGKILL: produced 300 ({killed_at} before the kill, {delivered_at_kill} delivered by then), "
          f"delivered {len(collector.messages)}, duplicates {len(collector.messages) - 300}")  # fmt: skip


def test_full_outbox_drops_the_oldest_and_counts_them(store_path: Path, link_outbox) -> None:
    ids = store_events(store_path, 30)
    _, outbox = link_outbox(f"mqtt://127.0.0.1:{free_port()}", store_path, max_events=20)
    deadline = time.monotonic() + 5
    while outbox.stats.dropped < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert outbox.stats.dropped == 10
    assert pending_ids(store_path) == ids[10:]


def test_dropping_events_is_logged(caplog: pytest.LogCaptureFixture, store_path: Path, link_outbox) -> None:
    store_events(store_path, 5)
    with caplog.at_level(logging.WARNING, logger="agent.link.outbox"):
        _, outbox = link_outbox(f"mqtt://127.0.0.1:{free_port()}", store_path, max_events=2)
        deadline = time.monotonic() + 5
        while outbox.stats.dropped < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert any("dropped the 3 oldest unsent events" in r.getMessage() for r in caplog.records)


def test_stop_flushes_what_is_pending(broker: Broker, store_path: Path, observe) -> None:
    collector = observe(broker, [EVENTS])
    link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), DEVICE, lambda request: None)
    outbox = OutboxPublisher(store_path, link, max_events=1000, poll_seconds=5.0)
    link.start()
    assert link.wait_connected(5)
    outbox.start()
    ids = store_events(store_path, 40)
    outbox.stop(flush_timeout=5)
    link.stop({"schema": 1, "state": "offline"})
    assert pending_ids(store_path) == []
    assert collector.wait_for(lambda m: first_seen(m) == ids, 5)


def test_a_broken_gallery_does_not_end_the_outbox(tmp_path: Path, broker: Broker, link_outbox) -> None:
    path = tmp_path / "later" / "gallery.db"  # its folder does not exist yet: opening fails
    _, outbox = link_outbox(broker.url, path)
    time.sleep(0.3)
    path.parent.mkdir()
    store_events(path, 3)
    deadline = time.monotonic() + 5
    while outbox.stats.published < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox.stats.published == 3

"""A full state file system: one health object that every writer reports to, and writers that run on.

Every failure here is real: a SQLite gallery (or a settings file) on a 1 MiB tmpfs filled to the last
byte. Needs root to mount it; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.config import EventSettings, RetentionSettings
from agent.gallery.retention import RetentionKeeper
from agent.gallery.store import GalleryStore
from agent.identity import Match, new_event_id, utc_iso
from agent.link.telemetry import GallerySummary, Telemetry
from agent.recognition.events import EventEmitter
from agent.storage import StorageFullError, StorageHealth, StorageState, is_disk_full
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from agent.vision.pipeline import FacePipeline
from tests.support.broker import Broker, wait_until
from tests.support.commands import Device, image_arg, make_device
from tests.support.data import POWELL, powell
from tests.support.tmpfs import fill, small_tmpfs

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DEVICE = "dev1"
HELD = 120  # events in the outbox when the disk fills: more than the 50 the outbox keeps in flight


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "state", "1m") as folder:
        yield folder


@pytest.fixture
def store(state: Path) -> Iterator[GalleryStore]:
    with GalleryStore.open(state / "gallery.db") as opened:
        yield opened


def add_event(store: GalleryStore, at: datetime = T0) -> str:
    event_id = new_event_id()
    store.add_event("face_unknown", {"schema": 1, "type": "face_unknown"}, event_id=event_id, person_id=None,
                    created_at=utc_iso(at))  # fmt: skip
    return event_id


def add_events(store: GalleryStore, count: int) -> list[str]:
    """In one transaction: each commit of its own would add a few pages to the -wal file."""
    with store.transaction():
        return [add_event(store) for _ in range(count)]


def pending(store: GalleryStore) -> list[str]:
    return [row["id"] for row in store.pending_events(limit=10_000)]


def refused_write(store: GalleryStore) -> StorageFullError:
    """The error a real write gets from the full file system."""
    with pytest.raises(StorageFullError) as caught:
        add_event(store)
    return caught.value


def track(track_id: int) -> Track:
    face = Face(box=(0.0, 0.0, 80.0, 80.0), score=0.9, keypoints=np.zeros((6, 2)))
    return Track(track_id, face, 1, 12, T0, T0 + timedelta(seconds=0.4), frames=12)


# ------------------------------------------------------------------------------- telling it apart


def test_a_full_file_system_is_a_storage_full_error_naming_the_gallery(store: GalleryStore, state: Path) -> None:
    fill(state)
    error = refused_write(store)
    assert str(store.path) in str(error) and "no space left" in str(error)
    assert is_disk_full(error)


def test_enospc_from_a_plain_file_write_counts_as_a_full_disk(state: Path) -> None:
    fill(state)
    with pytest.raises(OSError) as caught, open(state / "more", "wb") as handle:
        handle.write(b"\0" * 65536)
        handle.flush()
    assert is_disk_full(caught.value)


def test_other_sqlite_failures_are_not_a_full_disk(store: GalleryStore) -> None:
    with pytest.raises(sqlite3.OperationalError) as caught:
        store.db.execute("SELECT * FROM no_such_table")
    assert not is_disk_full(caught.value)


# ------------------------------------------------------------------------------- the health object


def test_health_starts_ok_with_the_free_space_of_its_directory(state: Path) -> None:
    report = StorageHealth(state).report()
    assert (report.state, report.dropped_events, report.last_error) == (StorageState.OK, 0, None)
    assert 0 < report.free_bytes <= 1024 * 1024


def test_a_refused_write_makes_the_state_full_and_counts_the_dropped_event(store: GalleryStore, state: Path) -> None:
    health = StorageHealth(state)
    before = health.report().since
    fill(state)
    health.write_failed(refused_write(store), dropped_events=1)
    report = health.report()
    assert (report.state, report.free_bytes, report.dropped_events) == (StorageState.FULL, 0, 1)
    assert "database or disk is full" in report.last_error and report.since >= before


def test_the_condition_is_logged_once_on_entering_and_once_on_leaving(
    store: GalleryStore, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = StorageHealth(state)
    filler = fill(state)
    caplog.set_level(logging.INFO, logger="agent.storage")
    for _ in range(20):
        health.write_failed(refused_write(store), dropped_events=1)
    filler.unlink()
    for _ in range(5):
        health.write_succeeded()
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.storage"]
    assert len(messages) == 2, messages
    assert "full" in messages[0] and "20 events were dropped" in messages[1]


def test_a_write_that_succeeds_ends_the_condition(store: GalleryStore, state: Path) -> None:
    health = StorageHealth(state)
    filler = fill(state)
    health.write_failed(refused_write(store), dropped_events=1)
    filler.unlink()
    add_event(store)
    health.write_succeeded()
    report = health.report()
    assert (report.state, report.dropped_events) == (StorageState.OK, 1)  # the count is since start
    assert health.transitions == 2


def test_polling_ends_the_condition_once_space_has_returned_even_with_nothing_written(
    store: GalleryStore, state: Path
) -> None:
    clock = FakeClock()
    health = StorageHealth(state, clock=clock)
    filler = fill(state)
    health.write_failed(refused_write(store))
    clock.now += 2
    health.poll()
    assert health.full  # still no room
    filler.unlink()
    clock.now += 2
    health.poll()
    assert not health.full


def test_polling_waits_a_second_after_the_last_refused_write(store: GalleryStore, state: Path) -> None:
    """Room by statvfs yet writes refused (a quota, say) must not make the state flap at every frame."""
    clock = FakeClock()
    health = StorageHealth(state, clock=clock)
    filler = fill(state)
    health.write_failed(refused_write(store))
    filler.unlink()
    clock.now += 0.5
    health.poll()
    assert health.full
    clock.now += 0.6
    health.poll()
    assert not health.full


# ------------------------------------------------------------------------------- the writers


def test_an_event_the_full_disk_refuses_is_dropped_counted_and_old_events_stay(
    store: GalleryStore, state: Path
) -> None:
    old = [add_event(store) for _ in range(3)]
    health = StorageHealth(state)
    events = EventEmitter(EventSettings(), store, camera_id="door", model_id="m1", storage=health)
    fill(state)
    assert events.emit(track(1), Match(None, None, 0.7, 0.0, False), T0) is None
    assert health.dropped_events == 1 and health.full
    assert pending(store) == old and sum(events.emitted.values()) == 0
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_dropped_event_does_not_start_the_cooldown(store: GalleryStore, state: Path) -> None:
    person = store.add_person("Ada")
    ada = Match(person.id, "Ada", 0.3, 0.2, True)
    health = StorageHealth(state)
    events = EventEmitter(EventSettings(cooldown_seconds=60), store, camera_id="door", model_id="m1", storage=health)
    filler = fill(state)
    assert events.emit(track(1), ada, T0) is None
    filler.unlink()
    assert events.emit(track(2), ada, T0 + timedelta(seconds=1)) is not None  # within 60 s: the first never went
    assert not health.full


def test_a_purge_the_full_disk_refuses_is_reported_and_tried_again_later(store: GalleryStore, state: Path) -> None:
    add_event(store, at=T0 - timedelta(days=400))
    clock = FakeClock()
    health = StorageHealth(state)
    keeper = RetentionKeeper(store, RetentionSettings(), clock=clock, wall_clock=lambda: T0, storage=health)
    filler = fill(state)
    assert keeper.maybe_purge() is None and health.full
    filler.unlink()
    clock.now += RetentionSettings().purge_interval_seconds
    assert keeper.maybe_purge() == {"events": 1, "audit": 0, "negatives": 0}
    assert not health.full


# ------------------------------------------------------------------------------- the outbox


def test_the_outbox_publishes_what_it_holds_while_the_disk_is_full(
    store: GalleryStore, state: Path, broker: Broker, observe, link_outbox
) -> None:
    """Deletes after PUBACK need room in the -wal file: refused, they wait in memory, nothing is sent twice.
    More events than one batch in flight (50), so publishing must go on after the first refused delete."""
    held = add_events(store, HELD)
    collector = observe(broker, [f"faceagent/{DEVICE}/events/#"])
    fill(state)
    health = StorageHealth(state)
    _, outbox = link_outbox(broker.url, store.path, max_events=1000, storage=health)
    assert collector.wait_for(lambda m: len(m) >= HELD, 10)
    assert wait_until(lambda: health.full)
    time.sleep(0.5)  # a few more cycles: nothing is published again
    assert [m.json()["event_id"] for m in collector.messages] == held
    assert pending(store) == held and outbox.stats.depth == 0 and outbox.stats.published == 0


def test_acknowledged_events_leave_the_outbox_once_space_returns(
    store: GalleryStore, state: Path, broker: Broker, observe, link_outbox
) -> None:
    held = add_events(store, HELD)
    collector = observe(broker, [f"faceagent/{DEVICE}/events/#"])
    filler = fill(state)
    health = StorageHealth(state)
    _, outbox = link_outbox(broker.url, store.path, max_events=1000, storage=health)
    assert collector.wait_for(lambda m: len(m) >= HELD, 10) and wait_until(lambda: health.full)
    filler.unlink()
    outbox.notify()
    assert wait_until(lambda: not pending(store))
    assert outbox.stats.published == HELD and not health.full
    assert [m.json()["event_id"] for m in collector.messages] == held


# ------------------------------------------------------------------------------- status, telemetry


def test_status_and_telemetry_carry_the_storage_section(store: GalleryStore, state: Path) -> None:
    health = StorageHealth(state)
    fill(state)
    health.write_failed(refused_write(store), dropped_events=3)
    documents = Telemetry("dev1", "1.2.3", {}, thermal_root=state / "none")
    report = health.report()
    expected = {
        "state": "full",
        "since": report.since,
        "free_bytes": 0,
        "dropped_events": 3,
        "last_error": report.last_error,
    }
    assert documents.status(GallerySummary(0, 0, "0"), report)["storage"] == expected
    assert documents.telemetry(None, None, report)["storage"] == expected
    assert json.loads(json.dumps(expected)) == expected


# ------------------------------------------------------------------------------- commands


@pytest.fixture
def device(state: Path, pipeline: FacePipeline) -> Device:
    made = make_device(state, pipeline)
    made.services.storage = StorageHealth(state)
    assert made.call("ping")["status"] == "ok"  # opens the command thread's store (and its -shm) while there is room
    return made


def enroll_powell(device: Device, shared_data: Path, request_id: str) -> dict:
    images = [image_arg(powell(shared_data, POWELL[0]), POWELL[0])]
    return device.call("enroll", {"name": "Colin Powell", "images": images}, request_id=request_id)


def test_enrolling_on_a_full_disk_answers_storage_full(device: Device, state: Path, shared_data: Path) -> None:
    fill(state)
    reply = enroll_powell(device, shared_data, "e1")
    assert reply["error"]["code"] == "storage_full", reply
    assert "no space left" in reply["error"]["message"]
    assert device.services.storage is not None and device.services.storage.full
    assert device.call("ping")["status"] == "ok"


def test_a_storage_full_answer_is_not_remembered_so_a_retry_runs(
    device: Device, state: Path, shared_data: Path
) -> None:
    filler = fill(state)
    assert enroll_powell(device, shared_data, "e1")["error"]["code"] == "storage_full"
    filler.unlink()
    assert enroll_powell(device, shared_data, "e1")["status"] == "ok"


def test_changing_settings_on_a_full_disk_answers_storage_full(device: Device, state: Path) -> None:
    before = device.settings_path.read_bytes()
    fill(state)
    reply = device.call("set_config", {"values": {"gallery.threshold": 0.3}})
    assert reply["error"]["code"] == "storage_full", reply
    assert device.settings_path.read_bytes() == before

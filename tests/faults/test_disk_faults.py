"""The state directory's file system fills up (a 2 MiB tmpfs): the agent keeps running, old events stay intact,
status and telemetry report the condition with a counter of dropped events, and new events flow again when
space returns, without a restart. Needs root (mount); skipped with a message otherwise."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_process import ctl_call, start_agent, stop_agent
from tests.support.faults import (
    DEVICE,
    EVENT_TOPICS,
    STATUS,
    delivered,
    enroll,
    integrity,
    outbox,
    write_config,
)  # fmt: skip
from tests.support.tmpfs import fill, small_tmpfs

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off

TELEMETRY = f"faceagent/{DEVICE}/telemetry"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "state", "2m") as state:
        yield state


def storage(messages: list, topic: str) -> list[dict[str, Any]]:
    """The `storage` section of every status or telemetry document among `messages`, in arrival order."""
    documents = [json.loads(m.payload) for m in messages if m.topic == topic]
    return [d["storage"] for d in documents if "storage" in d]  # the `offline` will has none


def running_agent(tmp_path, state, broker, observe, shared_data, frames):
    config = write_config(tmp_path, broker)
    db = state / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, [*EVENT_TOPICS, STATUS, TELEMETRY], client_id="disk-observer", persistent=True)
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    assert observer.wait_for(lambda _: len(delivered(observer)) >= 3, timeout=90), "no events before the fill"
    return db, observer, agent


def test_full_disk_keeps_running_and_recovers(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        filler = fill(small_fs)
        assert os.statvfs(small_fs).f_bavail == 0
        time.sleep(6)  # events keep coming from the camera and cannot be written
        assert agent.poll() is None, "agent died on a full disk:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        answer = ctl_call(broker.url, DEVICE, "ping")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert integrity(db) == "ok"
        dropped = max((s["dropped_events"] for s in storage(observer.messages, TELEMETRY)), default=0)
        filler.unlink()
        returned = time.monotonic()
        after = len(set(delivered(observer)))
        assert observer.wait_for(lambda _: len(set(delivered(observer))) > after, timeout=60), (
            "no new event after space returned:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        )
        first_new = time.monotonic() - returned
        assert observer.wait_for(lambda _: len(set(delivered(observer))) >= after + 3, timeout=60), (
            "no new events after space returned:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        )
    finally:
        code = stop_agent(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert integrity(db) == "ok"
    ids = delivered(observer)
    print(f"\ndropped while full (6 s)={dropped} first new event {first_new:.1f} s after space returned "
          f"delivered={len(ids)} unique={len(set(ids))}")  # fmt: skip


def test_full_disk_leaves_old_events_intact_and_a_restart_delivers_them(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    """SQLite stays intact, a stop on the full disk is clean, and once space returns a restarted agent delivers
    every event the outbox held (acknowledged ones whose delete the full disk refused arrive again), then new
    ones."""
    db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        filler = fill(small_fs)
        time.sleep(6)
        held = {i for _, i in outbox(db)}
        assert integrity(db) == "ok"
    finally:
        code = stop_agent(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert integrity(db) == "ok"
    filler.unlink()
    config = tmp_path / "faceagent.toml"
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    try:
        after = len(set(delivered(observer)))
        assert observer.wait_for(lambda _: len(set(delivered(observer))) >= after + 3, timeout=60), (
            "no new events after space returned:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        )
        assert observer.wait_for(lambda _: held <= set(delivered(observer)), timeout=30), held - set(
            delivered(observer)
        )
    finally:
        assert stop_agent(agent) == 0
    assert integrity(db) == "ok"
    ids = delivered(observer)
    print(f"\nheld on the full disk={len(held)} delivered={len(ids)} unique={len(set(ids))}")


def test_full_disk_is_reported_in_status_and_telemetry_until_space_returns(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    _db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        filler = fill(small_fs)
        filled, seen = time.monotonic(), len(observer.messages)

        def full_with_drops(topic: str):
            return lambda m: any(s["state"] == "full" and s["dropped_events"] >= 1 for s in storage(m[seen:], topic))

        assert observer.wait_for(full_with_drops(STATUS), timeout=30), storage(observer.messages[seen:], STATUS)[-2:]
        reported = time.monotonic() - filled
        assert observer.wait_for(full_with_drops(TELEMETRY), timeout=10), storage(observer.messages, TELEMETRY)[-2:]
        (full,) = storage(observer.messages[seen:], STATUS)[-1:]
        assert full["free_bytes"] < 64 * 1024 and "full" in full["last_error"], full
        filler.unlink()
        returned, seen = time.monotonic(), len(observer.messages)
        assert observer.wait_for(lambda m: any(s["state"] == "ok" for s in storage(m[seen:], STATUS)), timeout=10), (
            storage(observer.messages[seen:], STATUS)[-2:]
        )
        cleared = time.monotonic() - returned
        (ok,) = [s for s in storage(observer.messages[seen:], STATUS) if s["state"] == "ok"][:1]
        assert ok["dropped_events"] >= full["dropped_events"] and ok["free_bytes"] > 1024 * 1024, ok
        assert agent.poll() is None
    finally:
        stop_agent(agent)
    log = (tmp_path / "agent.log").read_text()
    assert log.count("state file system full") == 1 and log.count("state file system writable again") == 1, log
    print(f"\nreported full {reported:.1f} s after the fill; ok again {cleared:.1f} s after space returned; "
          f"dropped while full={ok['dropped_events']}")  # fmt: skip

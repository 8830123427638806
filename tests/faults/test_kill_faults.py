"""The agent SIGKILLed at random moments while it writes events and publishes its outbox, then restarted.

Enrollment and erasure kills are covered by tests/test_crash_safety.py; these cover `faceagent run`.
After every kill: `PRAGMA integrity_check` is ok, and every event SQLite held at the kill (read after it, so
exactly what was committed) is eventually delivered, once after de-duplication by event_id, to a persistent
QoS 1 observer.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.support.agent_process import start_agent, stop_agent
from tests.support.faults import (
    EVENT_TOPICS,
    delivered,
    enroll,
    first_seen_order,
    integrity_rw,
    outbox,
    write_config,
)  # fmt: skip

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off

KILLS_PER_CASE = 25  # two cases: at least 50 kills in the suite


def watch(db: Path, held: dict[str, int], seconds: float, until=None) -> None:
    """Record every event seen in SQLite for `seconds` (or until `until()`), polling the outbox."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        held.update({i: s for s, i in outbox(db)})
        if until is not None and until():
            return
        time.sleep(0.03)


def kill_cycles(tmp_path: Path, config: Path, db: Path, frames: Path, seed: int, progress):
    rng = random.Random(seed)
    held: dict[str, int] = {}
    kills = 0
    for cycle in range(KILLS_PER_CASE):
        before = progress()
        agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
        try:
            if cycle % 5 == 0:  # now and then wait for a write, so that some kills land mid-stream for sure
                watch(db, held, 20, until=lambda b=before: progress() > b)
            watch(db, held, rng.uniform(0.3, 1.8))
        finally:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            kills += 1
        assert integrity_rw(db) == "ok", f"integrity check failed after kill {kills}"
        held.update({i: s for s, i in outbox(db)})
    return held, kills


def finish(tmp_path: Path, config: Path, db: Path, frames: Path, observer, held: dict[str, int]) -> None:
    already = len(delivered(observer))
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    try:
        # a fresh event proves this run is up (and its SIGTERM handler installed) before the clean stop
        assert observer.wait_for(lambda _: len(delivered(observer)) > already, timeout=60), "no new event"
        assert observer.wait_for(lambda _: set(held) <= set(delivered(observer)), timeout=90), sorted(
            set(held) - set(delivered(observer))
        )
    finally:
        assert stop_agent(agent) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    ids = delivered(observer)
    unique = first_seen_order(ids)
    assert len(set(unique)) == len(unique)
    ordered = [i for i in unique if i in held]
    assert ordered == sorted(ordered, key=held.__getitem__), "events arrived out of outbox order"
    return ids, unique


def test_kills_while_publishing(tmp_path: Path, start_broker, observe, shared_data: Path, frames: Path) -> None:
    broker = start_broker(persistence=True)
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, EVENT_TOPICS, client_id="kill-observer", persistent=True)
    written = lambda: len(delivered(observer))  # noqa: E731
    held, kills = kill_cycles(tmp_path, config, db, frames, seed=6, progress=written)
    assert held or delivered(observer), "no event was written at all"
    ids, unique = finish(tmp_path, config, db, frames, observer, held)
    print(
        f"\nkills={kills} restarts={kills + 1} held-at-kills={len(held)} delivered={len(ids)} "
        f"unique={len(unique)} duplicates={len(ids) - len(unique)}"
    )


def test_kills_while_writing_with_the_broker_away(
    tmp_path: Path, start_broker, observe, shared_data: Path, frames: Path
) -> None:
    """The broker is down: every kill lands while events pile up in the outbox; then it all drains."""
    broker = start_broker(persistence=True)
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, EVENT_TOPICS, client_id="kill-observer-2", persistent=True)
    observer.close()
    broker.stop()
    held, kills = kill_cycles(tmp_path, config, db, frames, seed=7, progress=lambda: len(outbox(db)))
    assert len(held) >= 3, f"only {len(held)} events were written across {kills} kills"
    broker.start()
    observer = observe(broker, EVENT_TOPICS, client_id="kill-observer-2", persistent=True)
    ids, unique = finish(tmp_path, config, db, frames, observer, held)
    print(
        f"\nkills={kills} restarts={kills + 1} held-at-kills={len(held)} delivered={len(ids)} "
        f"unique={len(unique)} duplicates={len(ids) - len(unique)}"
    )

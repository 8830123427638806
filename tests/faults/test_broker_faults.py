"""Broker faults against the real agent: killed and restarted mid-stream, and unreachable at start-up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.agent_process import start_agent, stop_agent
from tests.support.faults import (
    EVENT_TOPICS,
    delivered,
    enroll,
    first_seen_order,
    integrity,
    outbox,
    write_config,
)  # fmt: skip

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off

RESTARTS = 5


def outbox_ids(db: Path) -> list[str]:
    return [i for _, i in outbox(db)]


def test_broker_killed_and_restarted_during_a_stream_loses_nothing(
    tmp_path: Path, start_broker, observe, shared_data: Path, frames: Path
) -> None:
    """Nothing the broker has not acknowledged is ever lost, whichever way the broker goes down.

    The agent's promise ends at PUBACK: an event leaves SQLite only once the broker has acknowledged it.
    Mosquitto acknowledges before it writes anything to disk (it saves on shutdown and every
    `autosave_interval`), so a SIGKILLed broker can lose what it had acknowledged but not yet forwarded to the
    subscriber. Those events, and only those, are excused on SIGKILL cycles: they had left the outbox before the
    kill and the observer had not received them when the broker died. On SIGTERM cycles nothing is excused.
    """
    broker = start_broker(persistence=True)
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, EVENT_TOPICS, client_id="fault-observer", persistent=True)
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    held: dict[str, int] = {}  # every event id seen in SQLite, with its seq
    lost_by_broker: set[str] = set()  # acknowledged by a broker that was then SIGKILLed before forwarding them
    snapshots: list[tuple] = []  # for the failure message
    try:
        assert observer.wait_for(lambda _: len(delivered(observer)) >= 3, timeout=90), "no events at all"
        for cycle in range(RESTARTS):
            before = len(delivered(observer))
            held.update({i: s for s, i in outbox(db)})
            # SIGKILL on odd cycles (nothing saved), SIGTERM on even ones (the broker saves its sessions)
            killed = cycle % 2 == 1
            if killed:
                # Freeze the broker first: no PUBACK and no delivery can happen any more, so once the agent has
                # settled the PUBACKs it already had, what SQLite still holds was never acknowledged.
                broker.pause()
                time.sleep(1.0)
                received = set(delivered(observer))
                unacknowledged = {i: s for s, i in outbox(db)}
                lost_by_broker |= set(held) - set(unacknowledged) - received
                held.update(unacknowledged)
                broker.kill()
            else:
                broker.stop()
            time.sleep(1.0)  # the agent keeps writing events while the broker is away
            held.update({i: s for s, i in outbox(db)})
            snapshots.append((cycle, "kill" if killed else "term", sorted(held)[-3:], len(delivered(observer))))
            assert agent.poll() is None, f"agent died while the broker was down (cycle {cycle})"
            broker.start()
            assert observer.wait_for(lambda _, b=before: len(delivered(observer)) > b + 2, timeout=30), cycle
        # The observer may have been fed from the broker's saved queue while the agent is still in its
        # reconnect backoff: wait until the agent has caught up (its outbox drained) before stopping it.
        deadline = time.monotonic() + 60
        while (pending := outbox(db)) and time.monotonic() < deadline:
            held.update({i: s for s, i in pending})
            time.sleep(0.1)
    finally:
        code = stop_agent(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    unsent = {i: s for s, i in outbox(db)}
    held.update(unsent)
    if unsent:  # events written at the stop while the link was down stay in SQLite: the next start sends them
        agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
        try:
            observer.wait_for(lambda _: set(unsent) <= set(delivered(observer)), timeout=60)
        finally:
            assert stop_agent(agent) == 0, (tmp_path / "agent.log").read_text()[-3000:]
    must_arrive = set(held) - lost_by_broker
    if not observer.wait_for(lambda _: must_arrive <= set(delivered(observer)), timeout=30):
        missing = must_arrive - set(delivered(observer))
        raise AssertionError(
            f"still in SQLite: {sorted(missing & set(outbox_ids(db)))}; "
            f"gone from SQLite, never delivered: {sorted(missing - set(outbox_ids(db)))}; "
            f"cycles: {snapshots}"
        )
    ids = delivered(observer)
    unique = first_seen_order(ids)
    in_held = [i for i in unique if i in held]
    assert in_held == sorted(in_held, key=held.__getitem__), "events arrived out of outbox order"
    assert integrity(db) == "ok"
    print(
        f"\nbroker restarts={RESTARTS} delivered={len(ids)} unique={len(unique)} duplicates={len(ids) - len(unique)}"
        f" seen-in-sqlite={len(held)} acknowledged-then-lost-by-a-SIGKILLed-broker="
        f"{len(lost_by_broker - set(ids))} (of {len(lost_by_broker)} at risk) left-for-the-next-start={len(unsent)}"
    )


def test_broker_unreachable_at_start_up(tmp_path: Path, start_broker, observe, shared_data: Path, frames: Path) -> None:
    broker = start_broker(persistence=True)
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    observer = observe(broker, EVENT_TOPICS, client_id="late-observer", persistent=True)
    observer.close()  # its session (and subscription) stays on the broker, which saves it on SIGTERM
    broker.stop()
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 90  # the agent starts with no broker at all, and runs on
        while len(outbox(db)) < 3 and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.5)
        time.sleep(2)
        assert agent.poll() is None, "agent gave up without a broker:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        held = {i: s for s, i in outbox(db)}
        assert len(held) >= 3, "no events written while the broker was unreachable"
        broker.start()
        observer = observe(broker, EVENT_TOPICS, client_id="late-observer", persistent=True)
        assert observer.wait_for(lambda _: set(held) <= set(delivered(observer)), timeout=60), sorted(
            set(held) - set(delivered(observer))
        )
        held.update({i: s for s, i in outbox(db)})
    finally:
        code = stop_agent(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert observer.wait_for(lambda _: set(held) <= set(delivered(observer)), timeout=30)
    unique = [i for i in first_seen_order(delivered(observer)) if i in held]
    assert unique == sorted(unique, key=held.__getitem__), "events arrived out of outbox order"
    assert integrity(db) == "ok"
    print(f"\nwritten while the broker was unreachable={len(held)} delivered={len(delivered(observer))}")

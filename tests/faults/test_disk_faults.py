"""The state directory's file system fills up (a 2 MiB tmpfs): the agent keeps running, old events stay intact,
and new events flow again when space returns. Needs root (mount); skipped with a message otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (
    DEVICE,
    EVENT_TOPICS,
    agent_env,
    delivered,
    enrol,
    integrity,
    outbox,
    start_agent,
    stop,
    write_config,
)  # fmt: skip


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)], capture_output=True,
                             text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    # the last partial blocks too
    try:
        with open(filler, "ab") as handle:
            while True:
                handle.write(b"\0" * 512)
                handle.flush()
    except OSError:
        pass
    return filler


def ping(broker_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "ctl", "call", "--mqtt", broker_url, "--timeout", "10", "--json",
         DEVICE, "ping"],
        capture_output=True, text=True, timeout=60, env=agent_env(),
    )  # fmt: skip


def running_agent(tmp_path, state, broker, observe, shared_data, frames):
    config = write_config(tmp_path, broker)
    db = state / "gallery.db"
    enrol(shared_data, db, config)
    observer = observe(broker, [*EVENT_TOPICS, f"faceagent/{DEVICE}/status", f"faceagent/{DEVICE}/telemetry"],
                       client_id="disk-observer", persistent=True)  # fmt: skip
    agent = start_agent(config, db, frames, log=tmp_path / "agent.log")
    assert observer.wait_for(lambda _: len(delivered(observer)) >= 3, timeout=90), "no events before the fill"
    return db, observer, agent


@pytest.mark.xfail(
    strict=True,
    reason="agent exits with code 2 when the state file system fills: stderr 'faceagent: gallery <db>: database "
    "or disk is full' (after the outbox logged 'database or disk is full; retrying every second')",
)
def test_full_disk_keeps_running_and_recovers(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        filler = fill(small_fs)
        assert os.statvfs(small_fs).f_bavail == 0
        time.sleep(6)  # events keep coming from the camera and cannot be written
        assert agent.poll() is None, "agent died on a full disk:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        answer = ping(broker.url)
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert integrity(db) == "ok"
        filler.unlink()
        after = len(set(delivered(observer)))
        assert observer.wait_for(lambda _: len(set(delivered(observer))) >= after + 3, timeout=60), (
            "no new events after space returned:\n" + (tmp_path / "agent.log").read_text()[-3000:]
        )
    finally:
        code = stop(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert integrity(db) == "ok"
    ids = delivered(observer)
    print(f"\ndelivered={len(ids)} unique={len(set(ids))}")


def test_full_disk_leaves_old_events_intact_and_a_restart_delivers_them(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    """What holds today: whatever the agent does on a full disk, SQLite stays intact, and once space returns a
    restarted agent delivers every event the outbox held, then new ones."""
    db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        filler = fill(small_fs)
        time.sleep(6)
        held = {i for _, i in outbox(db)}
        assert integrity(db) == "ok"
    finally:
        stop(agent)
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
        assert stop(agent) == 0
    assert integrity(db) == "ok"
    ids = delivered(observer)
    print(f"\nheld on the full disk={len(held)} delivered={len(ids)} unique={len(set(ids))}")


@pytest.mark.xfail(
    strict=True,
    reason="the agent does not report a full state file system: no disk/storage field in status or telemetry, "
    "and no counter of events dropped because they could not be written (issue 6, point 1)",
)
def test_full_disk_is_reported_in_status_with_a_dropped_counter(
    tmp_path: Path, small_fs: Path, broker, observe, shared_data: Path, frames: Path
) -> None:
    _db, observer, agent = running_agent(tmp_path, small_fs, broker, observe, shared_data, frames)
    try:
        fill(small_fs)
        seen = len(observer.messages)

        def reported(messages) -> bool:
            for m in messages[seen:]:
                if m.topic.endswith(("/status", "/telemetry")):
                    text = m.payload.decode(errors="replace").lower()
                    if any(w in text for w in ("disk", "storage", "no space", "full")) and "drop" in text:
                        return True
            return False

        assert observer.wait_for(reported, timeout=8), [
            json.loads(m.payload) for m in observer.messages[seen:] if m.topic.endswith(("/status", "/telemetry"))
        ][-2:]
    finally:
        stop(agent)

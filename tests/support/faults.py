"""The fault suite's device (tests/faults): its config, its enrolled performer, and what a reader finds after a
kill: the events SQLite holds, the file's integrity, and what a persistent observer was delivered."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.support.agent_process import agent_config, enroll_cli
from tests.support.broker import Broker, Observer
from tests.support.data import CLIP_ENROLL

DEVICE = "fault-1"
EVENT_TOPICS = [f"faceagent/{DEVICE}/events/face_recognized", f"faceagent/{DEVICE}/events/face_unknown"]
STATUS = f"faceagent/{DEVICE}/status"


def write_config(folder: Path, broker: Broker, *, fps: float = 30, loop: bool = True, extra: str = "") -> Path:
    """The fault device's settings: no cooldowns, so every decision is an event to account for."""
    return agent_config(
        folder, broker, DEVICE, fps=fps, loop=loop, events="cooldown_seconds = 0\nunknown_cooldown_seconds = 0\n",
        extra=extra,
    )  # fmt: skip


def enroll(shared_data: Path, db: Path, config: Path) -> None:
    """The clip's performer, whom the agent then recognizes on stage."""
    enroll_cli(config, db, "Lin-Manuel Miranda", shared_data / CLIP_ENROLL)


def online(messages: list) -> bool:
    """The agent announced itself: built, its SIGTERM handled, subscribed to its commands from then on."""
    return any(m.topic == STATUS and m.payload and m.json().get("state") == "online" for m in messages)


def outbox(db: Path) -> list[tuple[int, str]]:
    """(seq, id) of every event SQLite holds (the unsent outbox), read the way a reader after a crash would."""
    if not db.exists():
        return []
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                return [(int(s), str(i)) for s, i in conn.execute("SELECT seq, id FROM events ORDER BY seq")]
        except sqlite3.OperationalError:
            time.sleep(0.05)
    raise AssertionError(f"could not read {db}")


def integrity(db: Path) -> str:
    """PRAGMA integrity_check, read-only: the file as it lies on disk."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def integrity_rw(db: Path) -> str:
    """PRAGMA integrity_check as the next process to open the file would see it: WAL recovery included."""
    with sqlite3.connect(db, timeout=10) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def delivered(observer: Observer) -> list[str]:
    """event_id of every event message, in arrival order, duplicates included."""
    return [json.loads(m.payload)["event_id"] for m in list(observer.messages) if m.topic in EVENT_TOPICS]


def first_seen_order(ids: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)

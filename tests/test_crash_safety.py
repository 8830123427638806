"""Process-level safety of the gallery file: SIGKILL at random moments, and two writers at once.

The writer script runs in a child process; for each round it forks a fresh writer (so dozens of kills take
seconds, not dozens of interpreter start-ups), the test SIGKILLs that writer after a random delay, and the
script reports how it died. Every operation the writers perform is one transaction, so afterwards each
one must be wholly there or wholly absent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from tests.support.data import REPO

pytestmark = pytest.mark.slow  # crash safety: writer processes SIGKILLed at random moments

PER_PERSON = 4  # templates per enrollment in the writer script
ROUNDS = 40

WRITER = f"""
import mmap, os, random, sys, traceback
from pathlib import Path

import numpy as np

from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now


def enroll(store, vectors):
    with store.transaction():
        person = store.add_person("crash test", actor="crash-test")
        for _ in range({PER_PERSON}):
            embedding = vectors.normal(size=128).astype(np.float32)
            store.add_template(person.id, embedding, model_id="m", model_sha256="s", quality={{"q": 1.0}})
        store.add_event("enrolled", {{}}, event_id=new_event_id(), person_id=person.id, created_at=utc_now())


def batch(store, person_id):
    batch_id = new_event_id()
    with store.transaction():
        for index in range(3):
            payload = {{"batch": batch_id, "index": index}}
            store.add_event("batch", payload, event_id=new_event_id(), person_id=None, created_at=utc_now())
        payload = {{"batch": batch_id}}
        store.add_event("face_recognized", payload, event_id=new_event_id(), person_id=person_id, created_at=utc_now())


def work(path, seed, busy):
    rng, vectors = random.Random(seed), np.random.default_rng(seed)
    busy[0] = 1  # opening (and maybe migrating) counts as an operation
    store = GalleryStore.open(path)
    while True:
        busy[0] = 0
        people = [row[0] for row in store.db.execute("SELECT id FROM people")]
        roll = rng.random()
        busy[0] = 1
        if roll < 0.5 or len(people) < 3:
            enroll(store, vectors)
        elif roll < 0.75:
            store.delete_person(rng.choice(people), actor="crash-test")
        else:
            batch(store, rng.choice(people))


path = Path(sys.argv[1])
busy = mmap.mmap(-1, 1)  # shared with the forked writer: 1 while it is inside an operation
for line in sys.stdin:
    busy[0] = 0
    pid = os.fork()
    if pid == 0:
        try:
            work(path, int(line), busy)
        except BaseException:
            traceback.print_exc()
        os._exit(1)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], busy[0], flush=True)
"""

CONCURRENT = """
import sys
from pathlib import Path

import numpy as np

from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_now

store = GalleryStore.open(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
for index in range(int(sys.argv[2])):
    if index % 2:
        with store.transaction():
            person = store.add_person(f"writer {sys.argv[3]} #{index}", actor="cli:test")
            store.add_template(person.id, np.ones(128, np.float32), model_id="m", model_sha256="s", quality={})
    else:
        store.add_event("face_unknown", {}, event_id=new_event_id(), person_id=None, created_at=utc_now())
"""


def _python(script: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen([sys.executable, str(script), *args], text=True, env=env, **pipes)


def _kill_writers(db_path: Path, script: Path, rounds: int, seed: int) -> tuple[int, int]:
    """SIGKILL `rounds` forked writers at random moments; returns (kills, kills inside an operation)."""
    rng = random.Random(seed)
    forker = _python(script, str(db_path))
    statuses = []
    try:
        for round_ in range(rounds):
            forker.stdin.write(f"{round_}\n")
            forker.stdin.flush()
            pid = int(forker.stdout.readline())
            time.sleep(rng.uniform(0.002, 0.08))
            os.kill(pid, signal.SIGKILL)
            status, busy = map(int, forker.stdout.readline().split())
            statuses.append((status, busy))
    finally:
        _, stderr = forker.communicate(timeout=30)
    killed = [busy for status, busy in statuses if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL]
    assert len(killed) == rounds, f"a writer died on its own: {stderr}"
    return len(killed), sum(killed)


def test_sigkill_at_random_moments_leaves_every_operation_all_or_none(tmp_path: Path) -> None:
    db_path, script = tmp_path / "gallery.db", tmp_path / "writer.py"
    script.write_text(WRITER)
    started = time.monotonic()
    kills, mid_operation = _kill_writers(db_path, script, ROUNDS, seed=20240501)
    print(f"\n{kills} SIGKILLs ({mid_operation} inside an operation) in {time.monotonic() - started:.1f} s")
    assert mid_operation >= ROUNDS // 2
    with GalleryStore.open(db_path) as store:  # recovers the WAL a killed writer left behind
        sql = store.db.execute
        assert sql("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert sql("PRAGMA foreign_key_check").fetchall() == []
        people = {row[0] for row in sql("SELECT id FROM people")}
        templates = dict(sql("SELECT person_id, COUNT(*) FROM templates GROUP BY person_id").fetchall())
        enrolled = dict(sql("SELECT person_id, COUNT(*) FROM events WHERE type = 'enrolled' GROUP BY 1").fetchall())
        batches = sql(
            "SELECT COUNT(*) FROM events WHERE type = 'batch' GROUP BY json_extract(payload, '$.batch')"
        ).fetchall()
        audit = [(r["action"], r["target"], r["details"]) for r in store.audit_log(limit=100_000)]
        notices = {row[0] for row in sql("SELECT json_extract(payload, '$.person_id') FROM events WHERE type = ?",
                                         ["person_erased"])}  # fmt: skip
    added = {target for action, target, _ in audit if action == "person.add"}
    deletes = [(target, details) for action, target, details in audit if action == "person.delete"]
    deleted = {target for target, _ in deletes}
    assert len(added) >= 20 and len(deletes) >= 5, "the writers hardly ran: the test proves nothing"
    assert people == added - deleted  # every committed enrollment is here unless its erasure committed too
    assert all(templates.get(p) == PER_PERSON and enrolled.get(p) == 1 for p in people)
    assert set(templates) == people and set(enrolled) == people  # erased people left nothing behind
    assert all(details["templates"] == PER_PERSON and details["events"] >= 1 for _, details in deletes)
    assert notices == deleted  # every committed erasure queued its person_erased event, and no other did
    assert {count for (count,) in batches} <= {3}


def test_two_writer_processes_never_see_database_is_locked(tmp_path: Path) -> None:
    db_path, script = tmp_path / "gallery.db", tmp_path / "concurrent.py"
    script.write_text(CONCURRENT)
    GalleryStore.open(db_path).close()
    writers = [_python(script, str(db_path), "200", name) for name in ("cli", "service")]
    assert [w.stdout.readline().strip() for w in writers] == ["ready", "ready"]
    for writer in writers:  # release both at once
        writer.stdin.write("go\n")
        writer.stdin.flush()
    results = [writer.communicate(timeout=120) for writer in writers]
    assert [w.returncode for w in writers] == [0, 0], results
    assert all("locked" not in stderr for _, stderr in results)
    with GalleryStore.open(db_path) as store:
        stats = store.stats("m")
    assert (stats["people"], stats["templates"], stats["events_pending"]) == (200, {"m": 200}, 200)
    assert json.dumps(stats)  # plain data, ready for `gallery list --json` and status reports

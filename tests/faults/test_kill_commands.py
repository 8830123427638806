"""The agent SIGKILLed while it enrolls and erases people on MQTT commands, then restarted.

An operator keeps sending `enroll` (a real photo) and `delete_person` for what it enrolled, while the agent
is killed at random moments. What the agent acknowledged must hold after the kill: a person whose
enrollment was answered `ok` is there with templates (unless an erasure of them was sent since: answered or
not, it may have run), a person whose erasure was answered `ok` has no row, template or event left.
Whatever was not answered may have happened or not, but all or nothing: no person without templates, no
template without a person.
"""

from __future__ import annotations

import base64
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.agent_process import start_agent
from tests.support.broker import Observer
from tests.support.commands import operator_signed
from tests.support.data import CLIP
from tests.support.faults import DEVICE, STATUS, enroll, integrity_rw, online, write_config

pytestmark = pytest.mark.slow  # the fault suite: real agent processes, killed, starved and cut off

KILLS = 15  # with tests/faults/test_kill_faults.py's 50: 65 kills in the suite
PHOTO = f"{CLIP}/enroll/Alex_Lacamoire.png"
REPLY_SECONDS = 3.0


@dataclass
class Ledger:
    """What the agent answered `ok`, by person id, in order; and how many requests got no answer."""

    enrolled: set[str] = field(default_factory=set)
    erasing: set[str] = field(default_factory=set)  # an erasure was sent: it may have run, answered or not
    erased: set[str] = field(default_factory=set)
    unanswered: int = 0
    answered: int = 0


class Operator:
    """Sends enroll then delete_person for what it enrolled, one request at a time (each signed by the test
    operator key), until stopped."""

    def __init__(self, observer: Observer, photo: str, ledger: Ledger) -> None:
        self.observer, self.photo, self.ledger = observer, photo, ledger
        self.counter = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Operator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(REPLY_SECONDS + 5)

    def call(self, name: str, args: dict) -> dict | None:
        self.counter += 1
        request_id = f"op-{time.monotonic_ns()}-{self.counter}"
        seen = len(self.observer.messages)
        payload = operator_signed(DEVICE, name, {"request_id": request_id, "args": args})
        self.observer.publish(f"faceagent/{DEVICE}/cmd/{name}", payload)

        def answer(messages) -> dict | None:
            for message in messages[seen:]:
                if message.topic == STATUS:
                    continue
                document = message.json()
                if document.get("request_id") == request_id:
                    return document
            return None

        if self.observer.wait_for(lambda m: answer(m) is not None, REPLY_SECONDS):
            self.ledger.answered += 1
            return answer(list(self.observer.messages))
        self.ledger.unanswered += 1
        return None

    def _run(self) -> None:
        while not self.stopping.is_set():
            reply = self.call("enroll", {"name": "Guest", "images": [{"data": self.photo}], "force": True})
            if not reply or reply.get("status") != "ok":
                continue
            person = reply["data"]["person"]["id"]
            self.ledger.enrolled.add(person)
            self.ledger.erasing.add(person)
            reply = self.call("delete_person", {"person_id": person})
            if reply and reply.get("status") == "ok":
                self.ledger.erased.add(person)


def gallery(db: Path) -> tuple[set[str], dict[str, int], set[str]]:
    """(people, templates per person id, person ids named by events) as the next process would see them."""
    with sqlite3.connect(db, timeout=10) as conn:
        people = {row[0] for row in conn.execute("SELECT id FROM people")}
        templates = dict(conn.execute("SELECT person_id, COUNT(*) FROM templates GROUP BY person_id").fetchall())
        named = {row[0] for row in conn.execute("SELECT person_id FROM events WHERE person_id IS NOT NULL")}
    return people, templates, named


def test_kills_during_enrollment_and_erasure_keep_what_was_acknowledged(
    tmp_path: Path, start_broker, observe, shared_data: Path, frames: Path
) -> None:
    broker = start_broker()
    config = write_config(tmp_path, broker)
    db = tmp_path / "gallery.db"
    enroll(shared_data, db, config)
    photo = base64.b64encode((shared_data / PHOTO).read_bytes()).decode()
    observer = observe(broker, [f"faceagent/{DEVICE}/cmd/+/reply", STATUS], client_id="kill-operator")
    ledger = Ledger()
    rng = random.Random(6)
    log = tmp_path / "agent.log"
    for kill in range(KILLS):
        seen = len(observer.messages)
        agent = start_agent(config, db, frames, log=log)
        assert observer.wait_for(lambda m, n=seen: online(m[n:]), 60), log.read_text()[-3000:]
        with Operator(observer, photo, ledger):
            time.sleep(rng.uniform(0.2, 2.0))
            assert agent.poll() is None, log.read_text()[-3000:]
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
        assert integrity_rw(db) == "ok", f"integrity check failed after kill {kill + 1}"
        people, templates, named = gallery(db)
        assert set(templates) <= people, f"templates of no person after kill {kill + 1}"
        assert all(templates.get(p, 0) > 0 for p in people), f"a person without templates after kill {kill + 1}"
        kept = ledger.enrolled - ledger.erasing
        assert kept <= people, f"acknowledged enrollments lost after kill {kill + 1}: {sorted(kept - people)}"
        assert not (ledger.erased & (people | named)), f"acknowledged erasures undone after kill {kill + 1}"
    assert ledger.enrolled and ledger.erased, "no enrollment or erasure was ever answered"
    print(
        f"\nkills={KILLS} answered={ledger.answered} unanswered (in flight at a kill, or before the agent"
        f" listened)={ledger.unanswered} enrolled ok={len(ledger.enrolled)} erased ok={len(ledger.erased)}"
    )

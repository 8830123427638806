"""Authority by default, end to end: a real `faceagent run` with no command key configured (a fresh device),
a real Mosquitto, and an anonymous client on the broker. What it may ask is answered; everything that would
change the device or reveal who is enrolled is refused `unauthorized` and changes nothing."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import start_agent
from tests.support.broker import Broker, Observer
from tests.support.data import CLIP, CLIP_ENROLL, CLIP_FRAMES

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "fresh-1"
STATUS = f"faceagent/{DEVICE}/status"


@dataclass
class Fresh:
    """The running agent, its files, and an anonymous client subscribed to everything the device says."""

    agent: subprocess.Popen[str]
    config: Path
    db: Path
    log: Path
    client: Observer
    person: str
    started: int  # status documents seen when the agent was up

    def ask(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = f"anon-{name}-{time.monotonic_ns()}"
        payload = json.dumps({"request_id": request_id, "origin": "operator", "args": args or {}}).encode()
        topic = f"faceagent/{DEVICE}/cmd/{name}"
        self.client.publish(topic, payload)

        def reply(messages: list) -> dict | None:
            found = [m.json() for m in messages if m.topic == f"{topic}/reply"]
            return next((d for d in found if d.get("request_id") == request_id), None)

        assert self.client.wait_for(lambda m: reply(m) is not None, 20), self.log.read_text()[-3000:]
        answer = reply(list(self.client.messages))
        assert answer is not None
        return answer

    def people(self) -> tuple[int, ...]:
        with GalleryStore.open(self.db) as store:
            return store.fingerprint()[:3]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline, shared_data: Path) -> Iterator[Fresh]:
    folder = tmp_path_factory.mktemp("fresh")
    broker = Broker(folder / "broker").start()
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 5\n[camera]\nfps = 10\nloop = true\n'
    )
    db = folder / "gallery.db"
    settings = Settings()
    with GalleryStore.open(db) as store:
        photo = shared_data / CLIP_ENROLL
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery), settings)
        person = enroller.enroll([(photo.name, photo)], actor="test", name="Lin-Manuel Miranda").person.id
    client = Observer(broker, [f"faceagent/{DEVICE}/#"])  # anonymous: no key, no credentials
    log = folder / "agent.log"
    agent = start_agent(config, db, shared_data / CLIP_FRAMES, log=log)
    try:
        online = client.wait_for(lambda m: any(x.topic == STATUS and x.json().get("state") == "online" for x in m), 90)
        assert online, log.read_text()[-3000:]
        yield Fresh(agent, config, db, log, client, person, len(client.on(STATUS)))
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(60)
        client.close()
        broker.kill()


@pytest.mark.parametrize("name", ["ping", "get_status"])
def test_an_anonymous_client_gets_answers_to_what_reveals_no_one(fresh: Fresh, name: str) -> None:
    assert fresh.ask(name)["status"] == "ok"


def test_an_anonymous_client_cannot_list_people(fresh: Fresh) -> None:
    reply = fresh.ask("list_people")
    assert reply["status"] == "error" and reply["error"]["code"] == "unauthorized" and "data" not in reply
    assert "Lin-Manuel" not in json.dumps(reply)


def test_an_anonymous_client_cannot_enroll(fresh: Fresh, shared_data: Path) -> None:
    photo = base64.b64encode((shared_data / CLIP / "enroll" / "Alex_Lacamoire.png").read_bytes()).decode()
    before = fresh.people()
    reply = fresh.ask("enroll", {"name": "Intruder", "images": [{"data": photo}]})
    assert reply["error"]["code"] == "unauthorized" and fresh.people() == before


def test_an_anonymous_client_cannot_erase_a_person(fresh: Fresh) -> None:
    before = fresh.people()
    assert fresh.ask("delete_person", {"person_id": fresh.person})["error"]["code"] == "unauthorized"
    assert fresh.people() == before


def test_an_anonymous_client_cannot_change_a_setting(fresh: Fresh) -> None:
    before = fresh.config.read_bytes()
    assert fresh.ask("set_config", {"values": {"gallery.threshold": 3.9}})["error"]["code"] == "unauthorized"
    assert fresh.config.read_bytes() == before


def test_an_anonymous_client_cannot_purge_events(fresh: Fresh) -> None:
    assert fresh.ask("purge_events", {"older_than_days": 0})["error"]["code"] == "unauthorized"
    with GalleryStore.open(fresh.db) as store:
        ran = [r for r in store.audit_log(1000) if r["action"] == "command.purge_events"]
    assert [r["details"]["code"] for r in ran] == ["unauthorized"]


def test_an_anonymous_client_cannot_restart_the_device(fresh: Fresh) -> None:
    assert fresh.ask("restart")["error"]["code"] == "unauthorized"
    time.sleep(1.0)  # a restart would stop the agent at its next frame
    assert fresh.agent.poll() is None
    assert all(m.json().get("state") != "offline" for m in fresh.client.on(STATUS)[fresh.started :])


def test_a_fresh_device_shows_it_has_no_keys_in_its_status(fresh: Fresh) -> None:
    status = fresh.ask("get_status")["data"]
    assert status["commands"] == {"authority": "no_keys", "command_keys": [], "release_keys": []}


def test_a_fresh_device_warns_once_at_start_how_to_add_a_key(fresh: Fresh) -> None:
    warnings = [line for line in fresh.log.read_text().splitlines() if "no command key configured" in line]
    assert len(warnings) == 1 and "faceagent ctl keygen" in warnings[0] and "public_keys" in warnings[0]

"""A stage for end-to-end tests: a real `faceagent run` replaying the Hamilton clip's frames over a real Mosquitto,
Lin-Manuel Miranda enrolled from his photo, every decision an event (no cooldowns), a client that sees the
device's events and status, and the test operator's key for signed `faceagent ctl` calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.recognition.enrollment import Enroller
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import agent_config, start_agent, stop_agent
from tests.support.broker import Broker, Observer
from tests.support.commands import write_operator_key
from tests.support.data import CLIP_ENROLL, CLIP_FRAMES


@dataclass
class Stage:
    """The running agent, its gallery, the operator's key, and a client that sees the device's events."""

    device: str
    broker: Broker
    db: Path
    log: Path
    key: Path
    events: Observer
    miranda: str

    def gallery(self, sql: str, *params: Any) -> list[tuple]:
        with GalleryStore.open(self.db) as store:
            return [tuple(row) for row in store.db.execute(sql, params)]


@contextmanager
def miranda_on_stage(
    folder: Path, pipeline: FacePipeline, shared_data: Path, device: str, *, extra: str = ""
) -> Iterator[Stage]:
    """The stage, once the device said it is online; `extra`: whole sections of its configuration."""
    broker = Broker(folder / "broker").start()
    events = "cooldown_seconds = 0\nunknown_cooldown_seconds = 0\n"
    config = agent_config(folder, broker, device, fps=15, events=events, extra=extra)
    db = folder / "gallery.db"
    settings = Settings()
    with GalleryStore.open(db) as store:
        photo = shared_data / CLIP_ENROLL
        enroller = Enroller(pipeline, store, Matcher.for_gallery(settings.gallery), settings)
        miranda = enroller.enroll([(photo.name, photo)], actor="test", name="Lin-Manuel Miranda").person.id
    status = f"faceagent/{device}/status"
    observer = Observer(broker, [f"faceagent/{device}/events/#", status])
    log = folder / "agent.log"
    agent = start_agent(config, db, shared_data / CLIP_FRAMES, log=log)
    try:
        online = observer.wait_for(
            lambda m: any(x.topic == status and x.json().get("state") == "online" for x in m), 90
        )
        assert online, log.read_text()[-3000:]
        yield Stage(device, broker, db, log, write_operator_key(folder), observer, miranda)
    finally:
        stop_agent(agent, timeout=60)
        observer.close()
        broker.kill()

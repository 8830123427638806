"""The frame loop never waits on the gallery: status, sync and retention run on the service's gallery thread.

The service runs in this process (its frame loop on a thread of the test) on a real gallery file, a real
Mosquitto where a broker is needed, and real frames from ../shared/data or an empty folder (a camera that
delivers nothing).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import agent.service.status
from agent.config import load_settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import new_event_id, utc_iso
from agent.service.app import AgentService, RunOptions
from agent.vision.modelstore import default_models_dir
from tests.support.broker import Broker
from tests.support.data import CLIP_FRAMES, DEFAULT_DIMENSIONS, DEFAULT_EMBEDDER_ID

FRAME_LOOP = "test-frame-loop"
DEVICE = "gallery-thread-1"


def start(tmp_path: Path, toml: str, source: Path, db: Path) -> tuple[AgentService, threading.Thread]:
    config = tmp_path / "faceagent.toml"
    config.write_text(toml)
    return on_a_thread(lambda: AgentService(load_settings(config), RunOptions(source=f"folder:{source}", db=db)))


def on_a_thread(build: Callable[[], AgentService]) -> tuple[AgentService, threading.Thread]:
    """The service built and run on a thread of the test, as `faceagent run` builds and runs it on its main
    thread (the thread that builds it runs its frame loop)."""
    built: queue.Queue[AgentService | Exception] = queue.Queue()

    def main() -> None:
        try:
            service = build()
        except Exception as exc:
            built.put(exc)
            raise
        built.put(service)
        service.run()

    loop = threading.Thread(target=main, name=FRAME_LOOP)
    loop.start()
    service = built.get(timeout=120)
    if isinstance(service, Exception):
        raise service
    return service, loop


@pytest.fixture
def running() -> Iterator[Callable[[Path, str, Path, Path], AgentService]]:
    started: list[tuple[AgentService, threading.Thread]] = []

    def run(tmp_path: Path, toml: str, source: Path, db: Path) -> AgentService:
        started.append(start(tmp_path, toml, source, db))
        return started[-1][0]

    yield run
    for service, loop in started:
        service.stop()
        loop.join(timeout=60)


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def enroll_synthetic(store: GalleryStore, name: str, seed: int) -> str:
    person = store.add_person(name)
    vector = np.random.default_rng(seed).standard_normal(DEFAULT_DIMENSIONS).astype(np.float32)
    store.add_template(person.id, vector, model_id=DEFAULT_EMBEDDER_ID, model_sha256="0" * 64, quality={})
    return person.id


@pytest.mark.slow
def test_a_slow_gallery_summary_runs_off_the_frame_loop_and_does_not_stall_frames(
    tmp_path: Path, broker: Broker, observe, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every status summary sleeps 5 s (a gallery the size of a city); frames must keep coming meanwhile."""
    calls: list[str] = []
    windows: list[tuple[float, float]] = []
    summarise = agent.service.status.gallery_summary

    def slow_summary(store: GalleryStore):
        calls.append(threading.current_thread().name)
        began = time.monotonic()
        time.sleep(5.0)
        windows.append((began, time.monotonic()))
        return summarise(store)

    monkeypatch.setattr(agent.service.status, "gallery_summary", slow_summary)
    observer = observe(broker, [f"faceagent/{DEVICE}/status"])
    toml = (
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\ntelemetry_interval_seconds = 1\n'
        "[camera]\nfps = 10\nloop = true\n"
    )
    service, loop = start(tmp_path, toml, shared_data / CLIP_FRAMES, tmp_path / "gallery.db")
    try:
        assert wait_for(lambda: len(service.clock.stamps) >= 2, timeout=60)
        assert observer.wait_for(lambda _: any(m.json().get("gallery") for m in observer.messages), timeout=30)
        assert wait_for(lambda: len(windows) >= 2, timeout=30)  # one more status, built while frames go on
        stamps, measured = list(service.clock.stamps), list(windows[1:2])
    finally:
        service.stop()
        loop.join(timeout=60)
    assert calls and FRAME_LOOP not in calls, calls
    assert observer.messages[0].json()["gallery"] is None  # the first status does not wait for the summary
    during = [sum(began < stamp < ended for stamp in stamps) for began, ended in measured]
    assert min(during) >= 2, f"frames completed during each 5 s summary: {during}"


def test_retention_purges_while_the_camera_delivers_no_frames(tmp_path: Path, running) -> None:
    db = tmp_path / "gallery.db"
    old = utc_iso(datetime.now(UTC) - timedelta(days=10))
    with GalleryStore.open(db) as store:
        store.add_event("face_unknown", {"x": 1}, event_id=new_event_id(), person_id=None, created_at=old)
    empty = tmp_path / "no-frames"
    empty.mkdir()
    service = running(tmp_path, "[retention]\nevents_days = 1\npurge_interval_seconds = 1\n", empty, db)

    def events_left() -> int:
        with GalleryStore.open(db) as store:
            return store.stats("m")["events_pending"]

    assert wait_for(lambda: events_left() == 0, timeout=30)
    assert service.recognizer.stats.frames == 0


def test_an_erasure_by_another_process_is_reloaded_on_the_gallery_thread(
    tmp_path: Path, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    load = Matcher.load

    def recorded(self: Matcher, *args, **kwargs) -> bool:
        loads.append(threading.current_thread().name)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(Matcher, "load", recorded)
    db = tmp_path / "gallery.db"
    with GalleryStore.open(db) as store:
        ada = enroll_synthetic(store, "Ada", 1)
        enroll_synthetic(store, "Bob", 2)
    empty = tmp_path / "no-frames"
    empty.mkdir()
    service = running(tmp_path, "", empty, db)
    assert wait_for(lambda: hasattr(service, "matcher") and service.matcher.person_count == 2, timeout=60)
    with GalleryStore.open(db) as cli:
        cli.delete_person(ada, actor="cli:test")
    erased = time.monotonic()
    assert wait_for(lambda: service.matcher.person_count == 1, timeout=10)
    assert time.monotonic() - erased < 4.0  # the sync interval is 2 s
    per_read = 1 + (service.matcher.fallback is not None)  # a fused embedder's matcher also loads the old model's
    assert loads == ["faceagent-gallery"] * 2 * per_read  # the first load too


@pytest.mark.slow
def test_ready_comes_before_a_slow_first_load_and_no_frame_is_decided_before_it(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY must not wait on a query that grows with the gallery; a half-loaded gallery must not decide."""
    import socket

    from agent.service.sdnotify import Notifier

    loaded_at: list[float] = []
    iter_templates = GalleryStore.iter_templates

    def slow_rows(self: GalleryStore, model_id: str):
        time.sleep(4.0)  # a gallery the size of a city
        yield from iter_templates(self, model_id)
        loaded_at.append(time.monotonic())

    monkeypatch.setattr(GalleryStore, "iter_templates", slow_rows)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(60)
    config = tmp_path / "faceagent.toml"
    config.write_text("[camera]\nfps = 10\nloop = true\n")
    source = f"folder:{shared_data / CLIP_FRAMES}"
    service, loop = on_a_thread(
        lambda: AgentService(
            load_settings(config),
            RunOptions(source=source, db=tmp_path / "gallery.db"),
            notifier=Notifier(str(tmp_path / "notify.sock")),
        )
    )
    try:
        while b"READY=1" not in listener.recv(4096).splitlines():
            pass
        assert not service.gallery_loaded.is_set() and service.recognizer.stats.frames == 0
        assert service.gallery_loaded.wait(timeout=60)
        assert wait_for(lambda: service.recognizer.stats.frames > 0, timeout=60)
    finally:
        service.stop()
        loop.join(timeout=60)
        listener.close()
    assert loaded_at


def test_a_model_swap_builds_its_matcher_on_the_gallery_thread(
    tmp_path: Path, running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new models' matcher grows with the gallery: it is built aside, never on the frame loop, and the
    frame loop only takes it whole, between two frames."""
    loads: list[str] = []
    takes: list[str] = []
    load, take = Matcher.load, Matcher.take

    def recorded_load(self: Matcher, *args, **kwargs) -> bool:
        loads.append(threading.current_thread().name)
        return load(self, *args, **kwargs)

    def recorded_take(self: Matcher, other: Matcher) -> None:
        takes.append(threading.current_thread().name)
        take(self, other)

    monkeypatch.setattr(Matcher, "load", recorded_load)
    monkeypatch.setattr(Matcher, "take", recorded_take)
    db = tmp_path / "gallery.db"
    with GalleryStore.open(db) as store:
        enroll_synthetic(store, "Ada", 1)
        enroll_synthetic(store, "Bob", 2)
    empty = tmp_path / "no-frames"
    empty.mkdir()
    service = running(tmp_path, "", empty, db)
    assert service.gallery_loaded.wait(timeout=60)
    swap = threading.Thread(target=service.switch_models, args=(default_models_dir(),), name="faceagent-commands")
    swap.start()
    swap.join(timeout=120)
    assert not swap.is_alive() and service.matcher.person_count == 2
    per_read = 1 + (service.matcher.fallback is not None)  # a fused embedder's matcher also loads the old model's
    assert loads == ["faceagent-gallery"] * 2 * per_read  # the first load, then the new models' matcher
    assert takes == [FRAME_LOOP]

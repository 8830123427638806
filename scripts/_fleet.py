"""The fleet simulator's parts: many devices in one process, each wired from the agent's own pieces.

A simulated device is what `faceagent run` builds (agent/service/app.py) less the camera and the models: its
own state folder and SQLite gallery, `MqttLink` with its last will, `OutboxPublisher`, `CommandDispatcher`
with the real handlers, `CommandSecurity` with the stored replay cache, `Telemetry` documents kept in its
`TelemetryHistory` for `get_telemetry` as the agent keeps them, and one command thread. With
`FleetOptions.history_seconds` a device starts as if it had already run that long: its history holds the
documents it would have kept, so a console started now has an hour to fetch from every device. Enrollment
and recognition do real work (the photo is decoded, the quality gate, conflict and duplicate checks run
against the device's own gallery, templates are written, events are decided by the `Matcher` and written to
the outbox) but faces, chips and embeddings come from `FaceCache` (scripts/_fleet_faces.py): what the real
`FacePipeline` found in a fixed set of photos from ../shared/data, computed once and kept outside the
repository.

`Fleet` runs N devices in a few worker processes (`scripts/fleet_sim.py worker`), so the GIL of one process
does not make a fleet look slower than its broker.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from agent import __version__
from agent.commands.dispatcher import CommandDispatcher
from agent.commands.handlers import CommandServices
from agent.commands.signing import CommandSecurity, KeyRoles, StoredReplayCache
from agent.config import Settings, load_settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import UNLOADED, GallerySync
from agent.identity import utc_iso
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink, client_id_for, packet_limit
from agent.link.outbox import OutboxPublisher
from agent.link.telemetry import FrameFigures, StageLatency, Telemetry, gallery_summary
from agent.recognition.enrollment import Enroller
from agent.recognition.events import EventEmitter
from agent.storage import StorageHealth
from agent.tracking.decision import decide
from agent.tracking.tracker import Track
from agent.wire import OnlineStatus, TelemetryDocument
from scripts._fleet_faces import (
    DEFAULT_CACHE_DIR,
    REPO,
    CachedFace,
    CachedPipeline,
    Cast,
    FaceCache,
    cached_faces,
    seed_gallery,
)

log = logging.getLogger("fleet")

COMMAND_QUEUE = 64  # as the agent: commands waiting for a device's command thread
DEVICE_PREFIX = "sim"
READY_LINE = "fleet-ready"
REPORT_LINE = "fleet-device"


def device_ids(count: int, first: int = 0) -> list[str]:
    return [f"{DEVICE_PREFIX}{index:04d}" for index in range(first, first + count)]


# ------------------------------------------------------------------------------------------ device


@dataclass(frozen=True)
class FleetOptions:
    """What every simulated device shares; JSON on a worker's command line."""

    url: str
    state: Path  # one folder per device under it
    data: Path  # ../shared/data
    cache: Path  # the FaceCache file
    public_key: str  # the operator's command key (base64), trusted by every device
    prefix: str = "faceagent"
    protocol: str = "5"
    telemetry_seconds: float = 60.0
    event_seconds: float = 0.0  # one event per device this often; 0: none
    # Commands running at once in one worker process. A simulated device's CPU is this machine's, so running
    # more at once only costs memory and starves the network threads: 125 devices decoding three 1600 px photos
    # each at the same moment held 3 GB per worker and missed their keepalives.
    concurrency: int = 2
    people: int = 20
    strangers: int = 20
    # Each device starts as if it had run this long: its telemetry history holds one document per
    # `telemetry_seconds` of it (the agent keeps an hour), for a console started after the devices. 0: none.
    history_seconds: float = 0.0

    @property
    def seed(self) -> Path:
        """The gallery file each device starts from (made once per state folder by `prepare`)."""
        return self.state / "seed-gallery.db"

    def to_json(self) -> str:
        return json.dumps(
            {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}
        )

    @classmethod
    def from_json(cls, text: str) -> FleetOptions:
        values = json.loads(text)
        for key in ("state", "data", "cache"):
            values[key] = Path(values[key])
        return cls(**values)


def fleet_options(
    url: str,
    state: Path,
    data: Path,
    public_key: str,
    *,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    extra_photos: Sequence[Path] = (),
    **tuning: Any,
) -> FleetOptions:
    """Options for a fleet on `url` kept under `state`, its face cache built first if need be (with
    `extra_photos` too: photos the operator will send beside the cast's)."""
    people, strangers = tuning.get("people", FleetOptions.people), tuning.get("strangers", FleetOptions.strangers)
    photos = [*Cast.from_split(data, people, strangers).photos, *map(str, extra_photos)]
    _, cache = cached_faces(data, photos, cache_dir)
    return FleetOptions(url=url, state=state, data=data, cache=cache, public_key=public_key, **tuning)


def device_settings(device_id: str, folder: Path, options: FleetOptions) -> Settings:
    """The defaults a flashed device runs with, pointed at its own gallery, the broker and the operator's key.
    Events have no cooldown: the simulated camera paces them."""
    defaults = load_settings(None)
    return replace(
        defaults,
        gallery=replace(defaults.gallery, path=folder / "gallery.db"),
        mqtt=replace(
            defaults.mqtt, url=options.url, device_id=device_id, prefix=options.prefix, protocol=options.protocol
        ),
        commands=replace(defaults.commands, public_keys=(options.public_key,)),
        events=replace(defaults.events, cooldown_seconds=0.0, unknown_cooldown_seconds=0.0),
    )


class Chore(Enum):
    """Work a device's command thread does besides commands (it owns that thread's gallery connection)."""

    STATUS = "status"
    EVENT = "event"


Job = CommandRequest | Chore | None


@dataclass
class DeviceClock:
    """A simulated device's monotonic clock, `behind` seconds in the past while the device replays the time it
    ran before the simulator started (`SimDevice.backdate`)."""

    behind: float = 0.0

    def __call__(self) -> float:
        return time.monotonic() - self.behind


class SimDevice:
    """One simulated device: the agent's link, outbox, dispatcher and gallery; a command thread of its own."""

    def __init__(
        self,
        device_id: str,
        options: FleetOptions,
        cache: FaceCache,
        visits: list[list[CachedFace]],
        running: threading.Semaphore,
    ) -> None:
        self.running = running  # the worker's turns at running a command (FleetOptions.concurrency)
        self.device_id = device_id
        self.folder = options.state / device_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = device_settings(device_id, self.folder, options)
        self.gallery = Path(self.settings.gallery.path)
        if not self.gallery.exists():
            shutil.copyfile(options.seed, self.gallery)
        self.cache, self.visits, self._next_visit = cache, visits, int(device_id[len(DEVICE_PREFIX) :] or 0)
        keys = KeyRoles.from_settings(self.settings)
        self.replays = StoredReplayCache(self.gallery)
        self.security = CommandSecurity(self.settings.commands, device_id, keys.commands, self.replays)
        self.storage = StorageHealth(self.folder)
        # The figures of the embedder the cache was made with (its stated ones where the settings leave them unset).
        self.matcher = Matcher.for_gallery(self.settings.gallery, CachedPipeline(cache).embedder)
        with GalleryStore.open(self.gallery) as store:
            self.matcher.load(store.iter_templates(cache.info.model_id))
        self.clock = DeviceClock(behind=options.history_seconds)  # started that long ago: the uptime says so
        self.telemetry = Telemetry(
            device_id, __version__, {"detector": cache.detector_id, "embedder": cache.info.model_id}, clock=self.clock
        )
        mqtt = self.settings.mqtt
        limit = packet_limit(self.settings.commands.max_payload_bytes)
        broker = BrokerSettings.from_settings(mqtt, url=mqtt.url, max_packet_bytes=limit)
        will = self.telemetry.offline("connection lost")
        client_id = client_id_for(device_id, self.folder)
        self.link = MqttLink(broker, device_id, self._enqueue, will=will, client_id=client_id)
        self.outbox = OutboxPublisher(self.gallery, self.link, max_events=mqtt.max_outbox_events, storage=self.storage)
        services = CommandServices(
            settings_path=None,  # the built-in defaults stand for the device's local file
            get_settings=lambda: self.settings,
            apply_settings=self._apply_settings,
            open_store=lambda: GalleryStore.open(self.gallery),
            gallery=self,
            enroller_factory=lambda store: Enroller(
                CachedPipeline(cache), store, self.matcher, self.settings, add_to_matcher=False
            ),
            status=self._status_document,
            request_restart=lambda: log.info("%s: restart asked for (a simulated device runs on)", device_id),
            storage=self.storage,
            telemetry_history=self.telemetry.history.page,  # get_telemetry, as agent/service/app.py wires it
        )
        self.dispatcher = CommandDispatcher(services, self.security)
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._store: GalleryStore | None = None  # the command thread's connection for status and events
        self._emitter: EventEmitter | None = None
        self._match_ms: list[float] = []
        self.dropped_jobs = 0
        self.events_written = 0  # events this run put in the outbox
        self._thread = threading.Thread(target=self._serve, name=f"{device_id}-commands", daemon=True)
        self.backdate(options.history_seconds, options.telemetry_seconds)

    def backdate(self, seconds: float, interval: float) -> int:
        """The telemetry the device would have kept had it run `seconds` before now, one document every
        `interval`: each made by its `Telemetry` and added to its `TelemetryHistory` with the history's clock and
        the document's `at` set back that far (the figures are today's: an idle simulated device's). How many the
        history kept."""
        now, kept = datetime.now(UTC), 0
        steps = int(seconds // interval) if interval > 0 else 0
        for step in range(steps, 0, -1):
            self.clock.behind = step * interval
            document = self._telemetry_document()
            document["at"] = utc_iso(now - timedelta(seconds=step * interval))
            kept += self.telemetry.history.add(document)
        self.clock.behind = 0.0
        return kept

    def start(self) -> None:
        with GalleryStore.open(self.gallery) as store:
            self.link.publish_status(self._status_from(store))  # held by the link, re-sent on every connect
        self._thread.start()
        self.outbox.start()
        self.link.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        self.outbox.stop(flush_timeout=2.0)
        self.link.stop(self.telemetry.offline("stopped"))

    def ask(self, chore: Chore) -> None:
        """From the fleet's clock: a status to publish or an event to make, on the command thread."""
        self._offer(chore)

    def publish_telemetry(self) -> None:
        """Kept in the telemetry history as it is published, as the agent's frame loop does
        (agent/service/status.py)."""
        document = self._telemetry_document()
        self.telemetry.history.add(document)
        self.link.publish_telemetry(document)

    def _telemetry_document(self) -> TelemetryDocument:
        samples, self._match_ms = self._match_ms, []
        frames = FrameFigures(fps=0.0, latency_ms={"match": StageLatency.of(samples)}, dropped_frames=0)
        return self.telemetry.telemetry(frames, self.outbox.stats, self.storage.report())

    # ------------------------------------------------------------------------------- command thread

    def _enqueue(self, request: CommandRequest) -> None:
        """On paho's thread: never block it (the agent drops a command beyond its queue the same way)."""
        self._offer(request)

    def _offer(self, job: CommandRequest | Chore) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.dropped_jobs += 1
            log.warning("%s: queue full, %s dropped", self.device_id, job)

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._run(job)
                except Exception:
                    log.exception("%s: %s failed", self.device_id, job)
        finally:
            self.dispatcher.close()
            self.replays.close()
            if self._store is not None:
                self._store.close()

    def _run(self, job: CommandRequest | Chore) -> None:
        if isinstance(job, CommandRequest):
            with self.running:
                reply = self.dispatcher.handle(job.name, job.payload, now=job.received_at)
            if reply is not None:
                self.link.reply(job, reply)
        elif job is Chore.STATUS:
            self.link.publish_status(self._status_from(self._own_store()))
        else:
            self._emit_event()

    def _own_store(self) -> GalleryStore:
        if self._store is None:
            self._store = GalleryStore.open(self.gallery)
        return self._store

    def _emit_event(self) -> None:
        """One visit of the simulated camera: the track's embeddings decided by the matcher, the event written to
        the outbox (as the recognizer does after its tracker)."""
        if self._emitter is None:
            events = self.settings.events
            model_id = self.cache.info.model_id
            self._emitter = EventEmitter(
                events, self._own_store(), camera_id=events.camera_id, model_id=model_id, storage=self.storage
            )
        visit = self.visits[self._next_visit % len(self.visits)]
        self._next_visit += 1
        now = datetime.now(UTC)
        started = time.perf_counter()
        track = Track(self._next_visit, visit[0].face, 0, len(visit), now, now, frames=len(visit))
        track.embeddings = [face.embedding for face in visit]
        match = decide(track.embeddings, self.matcher)
        self._match_ms.append(1000 * (time.perf_counter() - started))
        if self._emitter.emit(track, match, now) is not None:
            self.events_written += 1
            self.outbox.notify()

    def writing(self, store: GalleryStore) -> AbstractContextManager[set[str]]:
        """`GalleryWrites`: the command thread is also the one writer of this device's matcher, so each
        command's write is followed at once, through the command's own connection."""
        sync = GallerySync(store, self.matcher, self.cache.info.model_id, seen=UNLOADED)
        return sync.writing(store)

    def _apply_settings(self, settings: Settings) -> None:
        self.matcher.retune(settings.gallery)
        self.settings = settings
        self._emitter = None  # made again with the new event settings

    def _status_document(self) -> OnlineStatus:
        return self._status_from(self._own_store())

    def _status_from(self, store: GalleryStore) -> OnlineStatus:
        with store.snapshot():
            summary = gallery_summary(store)
            stale = store.count_needing_reenrollment(self.cache.info.model_id)
        document = self.telemetry.status(summary, self.storage.report(), needing_reenrollment=stale)
        document["camera"] = None
        document["runtime"] = "fleet simulator (embeddings computed once by the real pipeline)"
        document["warnings"] = []
        document["commands"] = self.security.describe() | {"release_keys": []}
        return document


# ------------------------------------------------------------------------------------------ worker


@dataclass
class Clock:
    """Telemetry, status and events of every device of a worker, spread evenly over each interval."""

    devices: list[SimDevice]
    options: FleetOptions
    quiet: threading.Event = field(default_factory=threading.Event)  # set: the cameras see nobody any more
    _due: list[tuple[float, int, str]] = field(default_factory=list)  # a heap: (when, device index, what)

    def run(self, stop: threading.Event) -> None:
        now = time.monotonic()
        count = max(len(self.devices), 1)
        for index in range(len(self.devices)):
            offset = index / count
            heapq.heappush(self._due, (now + offset * self.options.telemetry_seconds, index, "telemetry"))
            if self.options.event_seconds > 0:
                heapq.heappush(self._due, (now + offset * self.options.event_seconds, index, "event"))
        while not stop.is_set():
            when, index, what = self._due[0]
            if stop.wait(max(0.0, when - time.monotonic())):
                return
            device = self.devices[index]
            if what == "telemetry":
                device.publish_telemetry()
                device.ask(Chore.STATUS)  # retained: uptime and gallery stay current, as the agent's do
                interval = self.options.telemetry_seconds
            else:
                if not self.quiet.is_set():
                    device.ask(Chore.EVENT)
                interval = self.options.event_seconds
            heapq.heapreplace(self._due, (when + interval, index, what))


def serve_devices(
    ids: Sequence[str], options: FleetOptions, stop: threading.Event, quiet: threading.Event, connect_timeout: float
) -> int:
    """Run `ids` until `stop` (events until `quiet`); prints READY_LINE once every one is connected and, at the
    end, a REPORT_LINE per device: the events it wrote and those its outbox still holds. Returns an exit status."""
    cache = FaceCache.load(options.cache)
    cast = Cast.from_split(options.data, options.people, options.strangers)
    visits = cast.visits(cache)
    running = threading.BoundedSemaphore(options.concurrency)
    devices = [SimDevice(device_id, options, cache, visits, running) for device_id in ids]
    for device in devices:
        device.start()
    deadline = time.monotonic() + connect_timeout
    late = [d.device_id for d in devices if not d.link.wait_connected(max(0.0, deadline - time.monotonic()))]
    if late:
        print(f"not connected within {connect_timeout:g} s: {', '.join(late[:10])}", file=sys.stderr, flush=True)
    else:
        print(f"{READY_LINE} {len(devices)}", flush=True)
    clock = threading.Thread(target=Clock(devices, options, quiet).run, args=(stop,), name="fleet-clock", daemon=True)
    clock.start()
    stop.wait()
    clock.join(timeout=5)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(SimDevice.stop, devices))
    for device in devices:
        report = {"device": device.device_id, "events": device.events_written, "unsent": device.outbox.stats.depth}
        print(f"{REPORT_LINE} {json.dumps(report)}", flush=True)
    dropped = sum(device.dropped_jobs for device in devices)
    if dropped:
        print(f"{dropped} commands or chores dropped on full queues", file=sys.stderr, flush=True)
    return 1 if late else 0


# ------------------------------------------------------------------------------------------ launcher


def prepare(options: FleetOptions, settings: Settings | None = None) -> int:
    """The seed gallery (once per state folder): the cast enrolled through the real enrollment."""
    if options.seed.exists():
        return -1
    options.seed.parent.mkdir(parents=True, exist_ok=True)
    cast = Cast.from_split(options.data, options.people, options.strangers)
    settings = settings or load_settings(None)
    partial = options.seed.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    enrolled = seed_gallery(partial, options.data, cast, FaceCache.load(options.cache), settings)
    partial.replace(options.seed)
    return enrolled


class Fleet:
    """N simulated devices in `processes` worker processes, started together and stopped together."""

    def __init__(
        self, count: int, options: FleetOptions, *, processes: int = 2, connect_timeout: float = 120.0
    ) -> None:
        self.ids = device_ids(count)
        self.options = options
        self.processes = max(1, min(processes, count))
        self.connect_timeout = connect_timeout
        self.workers: list[subprocess.Popen[str]] = []
        self.reports: dict[str, dict[str, Any]] = {}  # device -> its last words (events written, unsent)

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:  # Ctrl-C while the workers connect: none of them is left running
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        prepare(self.options)
        script = Path(__file__).resolve().parent / "fleet_sim.py"
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for share in _shares(self.ids, self.processes):
            command = [sys.executable, str(script), "worker", "--options", self.options.to_json(), *share]
            command += ["--connect-timeout", str(self.connect_timeout)]
            self.workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment))
        for worker in self.workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line.startswith(READY_LINE):
                self.stop()
                raise RuntimeError(f"a fleet worker did not start (exit {worker.poll()}): {line.strip()}")

    def quiet(self) -> None:
        """The cameras see nobody from now on: no more events (the outboxes go on sending what they hold)."""
        for worker in self.workers:
            worker.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                out, _ = worker.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                worker.kill()
                out, _ = worker.communicate(timeout=10)
            for line in out.splitlines():
                if line.startswith(REPORT_LINE + " "):
                    report = json.loads(line[len(REPORT_LINE) + 1 :])
                    self.reports[report["device"]] = report
        self.workers = []

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]


def _shares(ids: list[str], processes: int) -> Iterator[list[str]]:
    size = -(-len(ids) // processes)
    for start in range(0, len(ids), size):
        yield ids[start : start + size]

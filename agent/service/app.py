"""The live agent: camera → detect → track → embed → match → events → outbox → MQTT.

Threads, and what each owns (nothing is shared but the thread-safe `Matcher`):
- main: the frame loop. Owns the pipeline, the recognizer and its gallery connection; writes events,
  pings systemd's watchdog, publishes telemetry and asks for status when due. It never waits on the
  network, and never on a query that grows with the gallery.
- gallery: with its own connection, everything that reads the whole gallery: the matcher's first load
  (the agent is READY before it, and makes no decision until it is done: a partial gallery would call
  enrolled people unknown), the status document (counts, digest, people needing re-enrollment), the
  matcher reload after another process changed the file (`GallerySync`, built here and swapped in), and
  retention every `retention.purge_interval_seconds` whether frames arrive or not.
- camera: `LatestFrame` reads the source and keeps only the newest frame (a slow loop drops, never queues).
- paho: the MQTT network loop (`MqttLink`); it only hands commands and PUBACKs over.
- outbox: publishes stored events in order and deletes each on its PUBACK (its own connection).
- commands: runs one command at a time with its own gallery connection and, for enrollment, its own
  pipeline (TFLite interpreters are not thread-safe), so a slow enrollment never stalls frames.

All three writers report a full state file system to one `StorageHealth`, which status and telemetry
show; the agent runs on without the writes (see agent/storage.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import __version__
from agent.commands.dispatcher import CommandDispatcher
from agent.commands.handlers import CommandServices
from agent.commands.signing import CommandSecurity, KeyRoles, StoredReplayCache
from agent.config import Settings
from agent.errors import FaceagentError, ModelError
from agent.gallery.matcher import Matcher
from agent.gallery.retention import RetentionKeeper
from agent.gallery.store import GalleryStore
from agent.gallery.sync import UNLOADED, GallerySync
from agent.link.homeassistant import HomeAssistantDiscovery, LastPersonTopic
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink, client_id_for, packet_limit
from agent.link.outbox import OutboxPublisher
from agent.link.telemetry import FrameFigures, StageLatency, Telemetry, gallery_summary
from agent.link.topics import resolve_device_id
from agent.modelupdate.install import installed_models_dir, state_models_dir
from agent.modelupdate.update import ModelUpdater
from agent.recognition.enrollment import Enroller
from agent.recognition.events import RECOGNIZED
from agent.recognition.recognizer import Recognizer
from agent.service.provisioning import read_status as read_provisioning
from agent.service.sdnotify import Notifier
from agent.sources.factory import open_latest
from agent.sources.latest import LatestFrame, SourceState
from agent.storage import StorageHealth
from agent.vision.pipeline import FacePipeline, PipelineOptions
from agent.wire import FaceEvent, OnlineStatus, Presence, TelemetryDocument

log = logging.getLogger(__name__)

EXIT_RESTART = 75  # EX_TEMPFAIL: `run` returns it after `restart`; cmd_run then re-executes the agent in place
# At most one MQTT `restart` per this many seconds: a stream of them is refused, never a restart loop. The time of
# the last one survives the re-exec in RESTARTED_AT_ENV (CLOCK_MONOTONIC, the same clock for every process).
RESTART_MIN_INTERVAL_SECONDS = 60.0
RESTARTED_AT_ENV = "FACEAGENT_RESTARTED_AT"
LATENCY_WINDOW = 300  # frames
MODEL_SWAP_SECONDS = 60.0  # how long a model update waits for the frame loop to take the new models
GALLERY_TICK_SECONDS = 0.25  # the gallery thread's longest sleep: status asked for is published within it
COMMAND_QUEUE = 64  # commands waiting for the command thread ...
COMMAND_QUEUE_PAYLOADS = 2  # ... holding at most this many largest payloads' worth of bytes (64 x 16 MiB was 1 GiB)


@dataclass(frozen=True)
class RunOptions:
    """Command-line overrides of the settings, and how the run ends."""

    source: str | None = None  # camera.source
    mqtt_url: str | None = None  # mqtt.url (and credentials)
    db: Path | None = None  # gallery.path
    settings_path: Path | None = None  # the local settings file (set_config persists beside the gallery)
    remote_problem: str | None = None  # why the remote settings overlay was ignored at load
    lossless: bool = False  # replay every frame of a file or folder (demo, tests); never for a camera
    on_event: Callable[[FaceEvent], None] | None = None  # e.g. print JSON lines


def pipeline_options(settings: Settings) -> PipelineOptions:
    models = settings.models
    return PipelineOptions(
        models_dir=models.dir,
        detector=models.detector,
        embedder=models.embedder,
        runtime=models.runtime,
        threads=models.threads,
    )


class FrameClock:
    """fps and per-stage latency over the last frames, for telemetry and systemd STATUS."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[float]] = {}
        self.stamps: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, **stages_ms: float) -> None:
        self.stamps.append(time.monotonic())
        for stage, value in stages_ms.items():
            self.samples.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(value)

    @property
    def fps(self) -> float:
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / max(self.stamps[-1] - self.stamps[0], 1e-9)

    def figures(self, dropped: int) -> FrameFigures:
        latency = {stage: StageLatency.of(list(values)) for stage, values in self.samples.items()}
        return FrameFigures(fps=self.fps, latency_ms=latency, dropped_frames=dropped)


class AgentService:
    """One camera's live loop plus the broker link; `run()` returns the process exit code."""

    def __init__(self, settings: Settings, options: RunOptions | None = None, notifier: Notifier | None = None) -> None:
        self.options = options or RunOptions()
        self.settings = self.with_overrides(settings)
        self.notifier = notifier or Notifier.from_environ()
        self.device_id = resolve_device_id(self.settings.mqtt.device_id)
        self._stop = threading.Event()
        self._exit_code = 0
        self._last_restart = _restarted_at()  # the last `restart` accepted, by this process or before its re-exec
        self._pending_settings: Settings | None = None
        self._pending_models: tuple[Path, Future[None]] | None = None
        self._commands: queue.Queue[CommandRequest | None] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._queued_bytes = 0  # payload bytes in self._commands
        self._queue_lock = threading.Lock()
        self.clock = FrameClock()
        self.storage = StorageHealth(Path(self.settings.gallery.path).parent)
        self._storage_reported = 0  # storage.transitions last published in status
        self.events_written = 0
        self._present: bool | None = None  # None: not published yet, so the first frame publishes either way
        self._presence: Presence | None = None  # the last presence document, re-sent on every connect
        self._empty_frames = 1 << 30  # start "absent"
        self._status_wanted = threading.Event()  # the frame loop asks, the gallery thread builds and publishes
        self._gallery_wake = threading.Event()
        self.gallery_thread: threading.Thread | None = None
        self.gallery_loaded = threading.Event()  # the matcher holds the whole gallery: frames may be decided
        self._gallery_failure: BaseException | None = None
        self._status_stores = threading.local()  # get_status's connection, one per thread that asks
        self.last_person: LastPersonTopic | None = None  # Home Assistant's sensor state, when discovery is on
        self.discovery: HomeAssistantDiscovery | None = None

    def with_overrides(self, settings: Settings) -> Settings:
        """`settings` with the command line's overrides and the models a model update installed: applied at
        start and again to any new settings, so a set_config never drops them."""
        options = self.options
        camera = replace(settings.camera, source=options.source or settings.camera.source)
        gallery = replace(settings.gallery, path=options.db or settings.gallery.path)
        mqtt = replace(settings.mqtt, url=options.mqtt_url or settings.mqtt.url)
        models = replace(settings.models, dir=installed_models_dir(gallery.path) or settings.models.dir)
        return replace(settings, camera=camera, gallery=gallery, mqtt=mqtt, models=models)

    # ----------------------------------------------------------------------------------- control

    def stop(self, exit_code: int = 0) -> None:
        """Thread- and signal-safe: the frame loop finishes its frame, then shuts everything down."""
        self._exit_code = exit_code or self._exit_code
        self._stop.set()
        self._gallery_wake.set()

    def install_signal_handlers(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: self.stop())

    # -------------------------------------------------------------------------------------- run

    def run(self) -> int:
        settings = self.settings
        self.keys = KeyRoles.from_settings(settings)  # a bad key stops the start, not the command thread later
        self.replays = StoredReplayCache(settings.gallery.path)  # a restart must not reopen the replay window
        self.security = CommandSecurity(settings.commands, self.device_id, self.keys.commands, self.replays)
        self.security.announce()
        self.pipeline = FacePipeline(pipeline_options(settings))
        log.info("TFLite runtime: %s", self.pipeline.runtime.describe())
        self.store = GalleryStore.open(settings.gallery.path)
        model_id = self.pipeline.embedder.info.model_id
        self.matcher = Matcher.for_gallery(settings.gallery)  # filled by the gallery thread
        self.recognizer = self._new_recognizer(settings)
        # Sees CLI erasures within its interval; runs on the gallery thread, which gives it its own connection.
        self.gallery_sync = GallerySync(self.store, self.matcher, model_id, seen=UNLOADED)
        models = {"detector": self.pipeline.detector_spec.id, "embedder": model_id}
        self.telemetry = Telemetry(self.device_id, __version__, models)
        self.warnings = self._warnings()
        self.link, self.outbox = self._start_link()
        camera = open_latest(settings.camera, lossless=self.options.lossless, config_path=self.options.settings_path)
        self.source: LatestFrame = camera.start()
        worker = threading.Thread(target=self._serve_commands, name="faceagent-commands", daemon=True)
        worker.start()
        self.gallery_thread = threading.Thread(target=self._keep_gallery, name="faceagent-gallery", daemon=True)
        self.gallery_thread.start()
        if self.options.lossless:  # a replay decides every frame, so it waits for the gallery instead
            while not self.gallery_loaded.wait(0.1) and not self._stop.is_set():
                pass
        try:
            self._frame_loop()
        finally:
            self._shutdown(worker)
        if self._gallery_failure is not None:
            raise self._gallery_failure
        return self._exit_code

    def _warnings(self) -> list[str]:
        """Settings that weaken the device, logged once at start and kept in the status document."""
        warnings = []
        if self.settings.mqtt.tls_insecure:
            warnings.append("mqtt.tls_insecure is true: the broker's certificate host name is not checked")
        if self.options.remote_problem:
            warnings.append(f"remote settings ignored: {self.options.remote_problem}")
        for warning in warnings:
            log.warning("%s", warning)
        return warnings

    def _new_recognizer(self, settings: Settings) -> Recognizer:
        return Recognizer(
            self.pipeline, self.matcher, self.store, settings, settings.events.camera_id, storage=self.storage
        )

    def _start_link(self) -> tuple[MqttLink | None, OutboxPublisher | None]:
        mqtt = self.settings.mqtt
        if not mqtt.url:
            log.warning("no broker configured (mqtt.url / --mqtt): events stay in the outbox of %s", self.store.path)
            return None, None
        limit = packet_limit(self.settings.commands.max_payload_bytes)  # the broker drops larger messages for us
        broker = BrokerSettings.from_settings(mqtt, url=mqtt.url, max_packet_bytes=limit)  # credentials in the URL win
        client_id = client_id_for(self.device_id, Path(self.settings.gallery.path).parent)
        will = self.telemetry.offline("connection lost")
        link = MqttLink(broker, self.device_id, self._enqueue_command, will=will, client_id=client_id)
        link.publish_status(self._status_from(None))  # held by the link and re-sent on every connect
        link.add_connect_hook(self._resend_presence)
        self.discovery = HomeAssistantDiscovery(
            link,
            self.settings.homeassistant,
            version=__version__,
            camera_id=self.settings.events.camera_id,
            state_dir=Path(self.settings.gallery.path).parent,
        )
        self.discovery.attach()  # also removes what an earlier run announced, when disabled or renamed since
        if self.settings.homeassistant.enabled:
            self.last_person = LastPersonTopic(link)
            self.last_person.attach()
            self._refresh_last_person()
        outbox = OutboxPublisher(
            self.settings.gallery.path, link, max_events=mqtt.max_outbox_events, storage=self.storage
        )
        link.start()
        outbox.start()
        return link, outbox

    def _frame_loop(self) -> None:
        ready = False
        next_telemetry = time.monotonic() + self.settings.mqtt.telemetry_interval_seconds
        detector_clock = self.pipeline.detector.model.clock
        embedder_clock = self.pipeline.embedder.model.clock
        while not self._stop.is_set():
            if self._pending_settings is not None:
                self._apply_pending_settings()
            if self._pending_models is not None:
                self._apply_pending_models()
                detector_clock = self.pipeline.detector.model.clock
                embedder_clock = self.pipeline.embedder.model.clock
            frame = self.source.get(timeout=1.0)
            if frame is not None and not self.gallery_loaded.is_set():
                if not ready:  # up and serving; decisions wait for the whole gallery (see the module docstring)
                    self.notifier.ready("frames flowing; loading the gallery")
                    ready = True
                    self._request_status()  # the first status went out without the gallery summary
                self.notifier.heartbeat("loading the gallery")
            elif frame is None:
                if self.source.ended:
                    log.info("source %s ended", self.source.source.description)
                    break
                camera = self.source.status()
                if not ready and camera.state in (
                    SourceState.RECONNECTING,
                    SourceState.FAILED,
                    SourceState.NOT_CONFIGURED,
                ):
                    # Up and serving commands without a camera: READY, or systemd would restart us in a loop.
                    unset = camera.state == SourceState.NOT_CONFIGURED  # its message starts "camera not configured"
                    self.notifier.ready(camera.last_error if unset else f"camera {camera.state}: {camera.last_error}")
                    ready = True
                    self._request_status()  # the first status went out without the gallery summary
                self.notifier.heartbeat(_waiting_status(camera.state) if camera.errors else None)
            else:
                detect_before, embed_before = detector_clock.seconds, embedder_clock.seconds
                faces_before = self.recognizer.stats.faces
                started = time.monotonic()
                events = self.recognizer.process(frame.image, frame.timestamp, frame.hires)
                self.clock.record(
                    total=1000 * (time.monotonic() - started),
                    detect_invoke=1000 * (detector_clock.seconds - detect_before),
                    embed_invoke=1000 * (embedder_clock.seconds - embed_before),
                )
                self._emitted(events)
                self._report_presence(self.recognizer.stats.faces - faces_before)
                if not ready:
                    self.notifier.ready(f"frames flowing from {self.source.source.description}")
                    ready = True
                    self._request_status()  # the first status went out without the gallery summary
                self.notifier.frame_done(self.clock.fps)
            self.storage.poll()
            if self.link is not None and time.monotonic() >= next_telemetry:
                next_telemetry = time.monotonic() + self.settings.mqtt.telemetry_interval_seconds
                self.link.publish_telemetry(self._telemetry_document())
                self._request_status()  # retained: uptime, camera, gallery stay current
            elif self.link is not None and self.storage.transitions != self._storage_reported:
                self._request_status()  # the disk filled up or has room again: say so now

    def _request_status(self) -> None:
        """From the frame loop: the gallery thread builds the status document and publishes it."""
        self._storage_reported = self.storage.transitions
        self._status_wanted.set()
        self._gallery_wake.set()

    # ---------------------------------------------------------------------------------- gallery

    def _keep_gallery(self) -> None:
        """The gallery thread: first load, status, matcher sync and retention, on its own connection.

        A failure (the file locked by the CLI for longer than the busy timeout, say) is logged and tried
        again at the next turn, and the frame loop never waits on it; only a first load that fails stops
        the agent, with that error, as it did when the load ran before READY."""
        store: GalleryStore | None = None
        retention: RetentionKeeper | None = None
        warned = False
        while not self._stop.is_set():
            try:
                if store is None:
                    store = GalleryStore.open(self.settings.gallery.path)
                    self.gallery_sync.store = store  # SQLite connections stay on the thread that made them
                    retention = RetentionKeeper(store, self.settings.retention, storage=self.storage)
                if not self.gallery_loaded.is_set() and not self._first_load():
                    continue  # a command changed the matcher while it was read: read again
                if self._status_wanted.is_set():
                    self._status_wanted.clear()
                    if self.link is not None:
                        self.link.publish_status(self._status_from(store))
                if not warned:
                    warned = True
                    model_id = self.gallery_sync.model_id
                    stale = store.count_needing_reenrollment(model_id)
                    if stale:
                        log.warning("%d enrolled people have no %s template and need re-enrollment", stale, model_id)
                if self.gallery_sync.maybe_sync():  # an erasure or a rename, from the CLI or a command
                    self._refresh_last_person(store)
                    if self.outbox is not None:
                        self.outbox.notify()  # an erasure queued its person_erased event: send it now
                assert retention is not None
                retention.settings = self.settings.retention  # set_config may have changed it
                retention.maybe_purge()
                if self.discovery is not None:  # Home Assistant's per-person sensors follow the gallery
                    self.discovery.keep_people(store, include_names=self.settings.events.include_names)
            except Exception as exc:
                if not self.gallery_loaded.is_set():  # as before this thread: the agent does not run without it
                    log.error("could not load the gallery: %s", exc)
                    self._gallery_failure = exc
                    self.stop(1)
                    break
                log.exception("gallery thread: this turn failed; the next one tries again")
            self._gallery_wake.wait(GALLERY_TICK_SECONDS)
            self._gallery_wake.clear()
        if store is not None:
            store.close()

    def _first_load(self) -> bool:
        started = time.monotonic()
        if not self.gallery_sync.reload():
            return False
        self.gallery_loaded.set()
        log.info("gallery loaded: %d templates in %.2f s", len(self.matcher), time.monotonic() - started)
        return True

    def _report_presence(self, faces: int) -> None:
        """Publish "face present" when it changes; absence only after a track's worth of empty frames,
        so one missed detection does not flap the Home Assistant sensor."""
        self._empty_frames = 0 if faces else self._empty_frames + 1
        present = faces > 0 or self._empty_frames < self.settings.tracking.max_age_frames
        if self.link is not None and present != self._present:
            self._present = present
            self._presence = self.telemetry.presence(faces)
            self.link.publish_presence(self._presence)

    def _resend_presence(self) -> None:
        """On paho's thread after a (re)connect: a presence published while disconnected is sent now."""
        if (presence := self._presence) is not None and self.link is not None:
            self.link.publish_presence(presence)

    def _refresh_last_person(self, store: GalleryStore | None = None) -> None:
        """From the frame loop (its own store) or the gallery thread (`store`, that thread's connection). A gallery
        that cannot be read now leaves the sensor as it is until the next change (logged)."""
        if self.last_person is None:
            return
        try:
            self.last_person.refresh(store or self.store, include_names=self.settings.events.include_names)
        except FaceagentError as exc:
            log.warning("last_person not updated: %s", exc)

    def _emitted(self, events: list[FaceEvent]) -> None:
        if not events:
            return
        self.events_written += len(events)
        if any(event["type"] == RECOGNIZED for event in events):
            self._refresh_last_person()
        if self.discovery is not None:
            self.discovery.publish_events(events, include_names=self.settings.events.include_names)
        if self.outbox is not None:
            self.outbox.notify()
        if self.options.on_event is not None:
            for event in events:
                self.options.on_event(event)

    def _restart_wait(self) -> float:
        """Seconds until `restart` may run again; 0 accepts it now, and the next one waits a full interval."""
        now = time.monotonic()
        if self._last_restart is not None and (wait := self._last_restart + RESTART_MIN_INTERVAL_SECONDS - now) > 0:
            return wait
        self._last_restart = now
        os.environ[RESTARTED_AT_ENV] = repr(now)  # inherited by the re-executed agent
        return 0.0

    def _shutdown(self, worker: threading.Thread) -> None:
        if self._exit_code == EXIT_RESTART:
            self.notifier.reloading("restarting in place (MQTT restart)")  # not STOPPING: the unit stays active
        else:
            self.notifier.stopping("stopping")
        self.source.stop()
        self._emitted(self.recognizer.flush(datetime.now(UTC)))
        if self._pending_models is not None:
            self._pending_models[1].cancel()  # a model update waiting for the frame loop fails now
        self._commands.put(None)
        worker.join(timeout=10)
        self._gallery_wake.set()
        if self.gallery_thread is not None:
            self.gallery_thread.join(timeout=10)
        if self.outbox is not None:
            self.notifier.extend_timeout(15.0)
            self.outbox.stop(flush_timeout=5.0)
        if self.link is not None:
            self._presence = self.telemetry.presence(0)  # nobody is watched any more: never left "on"
            self.link.publish_presence(self._presence)
            self.link.stop(self.telemetry.offline("stopped"))
        self.store.close()
        self.notifier.close()

    # -------------------------------------------------------------------------------- commands

    def _enqueue_command(self, request: CommandRequest) -> None:
        """On paho's thread: never block it; a flood beyond the queue's count or bytes is refused with a log line."""
        size = len(request.payload)
        budget = COMMAND_QUEUE_PAYLOADS * self.settings.commands.max_payload_bytes
        with self._queue_lock:
            if self._queued_bytes + size > budget:
                log.warning(
                    "command queue holds %d bytes: dropped %s (%d bytes, over the %d byte budget)",
                    self._queued_bytes,
                    request.name[:64],
                    size,
                    budget,
                )
                return
            try:
                self._commands.put_nowait(request)
            except queue.Full:
                log.warning("command queue full: dropped %s", request.name[:64])
                return
            self._queued_bytes += size

    def _next_command(self) -> CommandRequest | None:
        request = self._commands.get()
        if request is not None:
            with self._queue_lock:
                self._queued_bytes -= len(request.payload)
        return request

    def _serve_commands(self) -> None:
        services = CommandServices(
            settings_path=self.options.settings_path,
            get_settings=lambda: self._pending_settings or self.settings,  # a set_config is seen at once
            apply_settings=self._schedule_settings,
            open_store=lambda: GalleryStore.open(self.settings.gallery.path),
            matcher=self.matcher,
            enroller_factory=self._enroller,
            status=self._status_document,  # on the command thread, which opens its own connection
            request_restart=lambda: self.stop(EXIT_RESTART),
            restart_wait=self._restart_wait,
            storage=self.storage,
        )
        services.model_updates = ModelUpdater(
            state_models_dir(self.settings.gallery.path),
            get_settings=lambda: self.settings,
            keys=self.keys.releases,
            apply=self._schedule_models,
            matcher=self.matcher,
        )
        dispatcher = CommandDispatcher(services, self.security)
        try:
            while (request := self._next_command()) is not None:
                reply = dispatcher.handle(request.name, request.payload, now=request.received_at)
                if reply is not None and self.link is not None:
                    self.link.reply(request, reply)
                del request, reply
                _return_freed_memory()  # a small payload may have decoded large photos: trim after every command
        finally:
            dispatcher.close()
            self.replays.close()
            if (status_store := getattr(self._status_stores, "store", None)) is not None:
                status_store.close()

    def _enroller(self, store: GalleryStore) -> Enroller:
        """The command thread's own pipeline, made on the first enrollment (it costs memory)."""
        if not hasattr(self, "_command_pipeline"):
            self._command_pipeline = FacePipeline(pipeline_options(self.settings))
        return Enroller(self._command_pipeline, store, self.matcher, self.settings)

    def _schedule_settings(self, settings: Settings) -> None:
        """From the command thread: the frame loop applies new settings between two frames."""
        settings = self.with_overrides(settings)
        self.matcher.threshold = settings.gallery.threshold
        self.matcher.margin = settings.gallery.margin
        self._pending_settings = settings

    def _apply_pending_settings(self) -> None:
        settings, self._pending_settings = self._pending_settings, None
        if settings is None:
            return
        self.settings = settings
        self.recognizer.flush(datetime.now(UTC))
        self.recognizer = self._new_recognizer(settings)
        self._refresh_last_person()  # events.include_names may have changed
        log.info("settings applied")

    def _schedule_models(self, models_dir: Path) -> None:
        """From the command thread: the frame loop switches to the manifest in `models_dir` between two
        frames. Returns once it has; raises what stopped it (the old pipeline then runs on)."""
        future: Future[None] = Future()
        self._pending_models = (models_dir, future)
        try:
            future.result(timeout=MODEL_SWAP_SECONDS)
        except TimeoutError:
            if not future.cancel():  # taken meanwhile: wait for the outcome
                future.result()
                return
            self._pending_models = None
            raise ModelError(f"the frame loop did not take the new models within {MODEL_SWAP_SECONDS:g} s") from None

    def _apply_pending_models(self) -> None:
        pending, self._pending_models = self._pending_models, None
        if pending is None or not pending[1].set_running_or_notify_cancel():
            return
        models_dir, future = pending
        try:
            settings = replace(self.settings, models=replace(self.settings.models, dir=models_dir))
            pipeline = FacePipeline(pipeline_options(settings))
        except Exception as exc:
            log.exception("could not switch to the models in %s; the previous ones run on", models_dir)
            future.set_exception(exc)
            return
        previous_model = self.gallery_sync.model_id
        # Before the load: a reload on the gallery thread that read the old model id then fails its swap.
        self.gallery_sync.model_id = pipeline.embedder.info.model_id
        try:
            self.matcher.load(self.store.iter_templates(pipeline.embedder.info.model_id))
        except Exception as exc:
            self.gallery_sync.model_id = previous_model
            log.exception("could not switch to the models in %s; the previous ones run on", models_dir)
            future.set_exception(exc)
            return
        self._emitted(self.recognizer.flush(datetime.now(UTC)))
        self.settings, self.pipeline = settings, pipeline
        self.recognizer = self._new_recognizer(settings)
        self.telemetry.models = {"detector": pipeline.detector_spec.id, "embedder": pipeline.embedder.info.model_id}
        self.__dict__.pop("_command_pipeline", None)  # the next enrollment builds one from the new models
        log.info("models switched to %s", self.telemetry.models)
        future.set_result(None)

    # ---------------------------------------------------------------------------------- status

    def _status_document(self) -> OnlineStatus:
        """For get_status, on the command thread, through a connection of its own, opened once (an open
        checks the whole file) and closed when that thread ends."""
        store: GalleryStore | None = getattr(self._status_stores, "store", None)
        if store is None:
            store = self._status_stores.store = GalleryStore.open(self.settings.gallery.path)
        return self._status_from(store)

    def _status_from(self, store: GalleryStore | None) -> OnlineStatus:
        """The status with the gallery summarised through `store` (None: without, for the first status at
        start-up). Never on the frame loop: the summary grows with the gallery."""
        if store is None:
            document = self.telemetry.status(None, self.storage.report())
        else:
            with store.snapshot():
                summary = gallery_summary(store)
                stale = store.count_needing_reenrollment(self.gallery_sync.model_id)
            document = self.telemetry.status(summary, self.storage.report(), needing_reenrollment=stale)
        source: LatestFrame | None = getattr(self, "source", None)  # the link may connect before the camera starts
        document["camera"] = source.status().to_json() if source else None
        document["runtime"] = self.pipeline.runtime.describe()
        document["provisioning"] = read_provisioning(Path(self.settings.gallery.path).parent)
        document["warnings"] = list(getattr(self, "warnings", []))
        document["commands"] = self.security.describe() | {"release_keys": sorted(self.keys.releases)}
        return document

    def _telemetry_document(self) -> TelemetryDocument:
        figures = self.clock.figures(self.source.status().dropped)
        return self.telemetry.telemetry(figures, self.outbox.stats if self.outbox else None, self.storage.report())


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _load_libc()


def _return_freed_memory() -> None:
    """glibc keeps what a large command freed (its photos, their decodes) in its heaps, so RSS would only
    ever grow by the largest command seen; malloc_trim gives it back. Elsewhere (musl): nothing to do."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _waiting_status(state: SourceState) -> str:
    if state == SourceState.NOT_CONFIGURED:
        return "camera not configured: set [camera] source, then restart the agent"
    return f"camera {state}, reopening"


def _restarted_at() -> float | None:
    try:
        value = float(os.environ.get(RESTARTED_AT_ENV, ""))
    except ValueError:
        return None
    return value if 0 <= value <= time.monotonic() else None


def reexec() -> int:
    """Replace this process with a fresh agent, same PID and arguments: systemd sees a reload (RELOADING=1 sent
    at shutdown, READY=1 from the new agent), not a new start, so `restart` never counts against the start
    limit. Returns EXIT_RESTART only if the exec failed, and the unit's RestartForceExitStatus= restarts it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError as exc:
        print(f"faceagent: could not restart in place ({exc}); exiting {EXIT_RESTART} for systemd", file=sys.stderr)
    return EXIT_RESTART


def print_event(event: FaceEvent) -> None:
    print(json.dumps(event), flush=True)

"""The live agent: camera → detect → track → embed → match → events → outbox → MQTT.

`AgentService` is the composition root: it builds every part before anything starts, `run` starts the
threads and runs the frame loop on the calling thread (build the service on that thread: the frame loop's
SQLite connection is made there). Threads, and what each owns:
- main: the frame loop (`FrameLoop`): the pipeline, the recognizer and its gallery connection, presence,
  systemd's READY and watchdog, telemetry. Settings, model swaps and refreshes reach it as jobs, run
  between two frames. It never waits on the network, nor on a query that grows with the gallery.
- gallery (`GalleryThread`): its own connection; the first load, status, retention, and the only writer
  of the live matcher (a command's write refreshes its people; another process's write, or a new embedder,
  builds a matrix aside that is swapped in whole).
- commands (`CommandWorker`): one command at a time, its own connections, and for enrollment its own
  pipeline (TFLite interpreters are not thread-safe); it waits on the gallery thread, never the reverse.
- camera: `LatestFrame` reads the source and keeps only the newest frame (a slow loop drops, never queues).
- paho: the MQTT network loop (`MqttLink`); it only hands commands and PUBACKs over.
- outbox: publishes stored events in order and deletes each on its PUBACK (its own connection).

All writers report a full state file system to one `StorageHealth`, which status and telemetry show; the
agent runs on without the writes (see agent/storage.py). systemd: READY from the frame loop once frames
flow or the camera is known to be missing, a watchdog ping per frame, and `restart` re-executes the agent in
place (RELOADING, then READY from the new one), at most once a minute.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from agent import __version__
from agent.commands.dispatcher import CommandDispatcher
from agent.commands.handlers import CommandServices
from agent.commands.signing import CommandSecurity, KeyRoles, StoredReplayCache
from agent.config import Settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.link.homeassistant import HomeAssistantDiscovery, LastPersonTopic
from agent.link.mqtt import BrokerSettings, MqttLink, client_id_for, packet_limit
from agent.link.outbox import OutboxPublisher
from agent.link.telemetry import Telemetry
from agent.link.topics import resolve_device_id
from agent.modelupdate.install import carry_templates, installed_models_dir, state_models_dir
from agent.modelupdate.update import ModelUpdater
from agent.recognition.capture import CaptureWindow, enroll_capture
from agent.recognition.enrollment import Enroller
from agent.recognition.feedback import FeedbackWindow
from agent.recognition.recognizer import Recognizer
from agent.service.adapter import Adapter
from agent.service.commandworker import CommandQueue, CommandWorker, OnFirstUse
from agent.service.frameloop import FrameLoop
from agent.service.gallerythread import GalleryParts, GalleryThread
from agent.service.jobs import outcome
from agent.service.livecapture import LiveEnrollment
from agent.service.publisher import FramePublisher
from agent.service.restart import EXIT_RESTART, RestartLimit
from agent.service.sdnotify import Notifier
from agent.service.status import FrameClock, StatusReport
from agent.sources.factory import open_latest
from agent.storage import StorageHealth
from agent.tracking.tracker import Track
from agent.vision.pipeline import FacePipeline, PipelineOptions
from agent.wire import FaceEvent

log = logging.getLogger(__name__)

MODEL_SWAP_SECONDS = 60.0  # how long a model update waits for the frame loop to take the new models
JOIN_SECONDS = 10.0
CARRY_ACTOR = "faceagent"  # the audit log's actor for templates carried over at start: the agent, not an operator
FRAME_SECTIONS = frozenset({"gallery", "quality", "tracking", "events"})  # settings the frame loop consumes


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


def changed_sections(old: Settings, new: Settings) -> frozenset[str]:
    """The [sections] whose values differ: only their consumers are told (as Frigate's config updater does)."""
    before, after = asdict(old), asdict(new)
    return frozenset(section for section, values in after.items() if before[section] != values)


class AgentService:
    """One camera's live loop plus the broker link; `run()` returns the process exit code."""

    def __init__(self, settings: Settings, options: RunOptions | None = None, notifier: Notifier | None = None) -> None:
        """Builds every part and starts none: a bad setting or key stops the agent here, before READY."""
        self.options = options or RunOptions()
        settings = self.settings = self.with_overrides(settings)  # the running settings (set_config replaces them)
        self.notifier = notifier or Notifier.from_environ()
        self.device_id = resolve_device_id(settings.mqtt.device_id)
        self._stop = threading.Event()
        self._exit_code = 0
        self._failure: BaseException | None = None  # what stopped the gallery thread's first load
        self._builder = threading.get_ident()  # runs the frame loop: its SQLite connection is made here
        self.storage = StorageHealth(Path(settings.gallery.path).parent)
        keys = KeyRoles.from_settings(settings)
        self.replays = StoredReplayCache(settings.gallery.path)  # a restart must not reopen the replay window
        security = CommandSecurity(settings.commands, self.device_id, keys.commands, self.replays)
        security.announce()
        pipeline = FacePipeline(pipeline_options(settings))
        log.info("TFLite runtime: %s", pipeline.runtime.describe())
        self.store = GalleryStore.open(settings.gallery.path)  # the frame loop's: this thread's
        self.matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)  # filled by the gallery thread
        self.live_enrollment = LiveEnrollment(lambda: self.settings, lambda: self.source.status(), self._store_capture)
        self.feedback = FeedbackWindow(settings.feedback)  # decided tracks by event id, in memory only
        self.recognizer = Recognizer(
            pipeline,
            self.matcher,
            self.store,
            settings,
            settings.events.camera_id,
            on_event=self._remember_decision,
            storage=self.storage,
            views=self.live_enrollment,
        )
        self.source = open_latest(
            settings.camera, lossless=self.options.lossless, config_path=self.options.settings_path
        )
        self.status = self._status_report(pipeline, security, keys)
        self.commands = CommandQueue(settings.commands.max_payload_bytes)
        self.link = self._link()
        self.outbox = self._outbox()
        self.publisher = self._publisher()
        self.gallery = GalleryThread(
            settings.gallery.path,
            self.matcher,
            pipeline.embedder.info.model_id,
            settings.retention,
            storage=self.storage,
            status=self.status,
            link=self.link,
            stop=self._stop,
            on_synced=self._gallery_synced,
            on_failure=self._gallery_failed,
            each_turn=self._follow_people,
            before_load=lambda store: carry_templates(store, pipeline.store, pipeline.embedder_spec, CARRY_ACTOR),
        )
        self.adapter = Adapter(self.gallery.jobs, lambda: self.settings, self.feedback)  # gallery.adapt
        self.frames = FrameLoop(
            settings,
            self.source,
            self.recognizer,
            self.matcher,
            self.publisher,
            notifier=self.notifier,
            status=self.status,
            storage=self.storage,
            link=self.link,
            outbox=self.outbox,
            request_status=self.gallery.request_status,
            gallery_loaded=self.gallery.loaded,
        )
        self.command_pipeline = OnFirstUse(lambda: FacePipeline(pipeline_options(self.settings)))
        self.restarts = RestartLimit()
        self.worker = self._command_worker(keys, security)

    def with_overrides(self, settings: Settings) -> Settings:
        """`settings` with the command line's overrides and the models a model update installed: applied at
        start and again to any new settings, so a set_config never drops them."""
        options = self.options
        camera = replace(settings.camera, source=options.source or settings.camera.source)
        gallery = replace(settings.gallery, path=options.db or settings.gallery.path)
        mqtt = replace(settings.mqtt, url=options.mqtt_url or settings.mqtt.url)
        models = replace(settings.models, dir=installed_models_dir(gallery.path) or settings.models.dir)
        return replace(settings, camera=camera, gallery=gallery, mqtt=mqtt, models=models)

    # ---------------------------------------------------------------------------------------- build

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

    def _status_report(self, pipeline: FacePipeline, security: CommandSecurity, keys: KeyRoles) -> StatusReport:
        models = {"detector": pipeline.detector_spec.id, "embedder": pipeline.embedder.info.model_id}
        return StatusReport(
            Telemetry(self.device_id, __version__, models),
            self.storage,
            self.source,
            security,
            tuple(keys.releases),
            pipeline.runtime.describe(),
            Path(self.settings.gallery.path).parent,
            tuple(self._warnings()),
            lambda: self.matcher.matching,
        )

    def _link(self) -> MqttLink | None:
        settings = self.settings
        mqtt = settings.mqtt
        if not mqtt.url:
            log.warning("no broker configured (mqtt.url / --mqtt): events stay in the outbox of %s", self.store.path)
            return None
        limit = packet_limit(settings.commands.max_payload_bytes)  # the broker drops larger messages for us
        broker = BrokerSettings.from_settings(mqtt, url=mqtt.url, max_packet_bytes=limit)  # credentials in the URL win
        client_id = client_id_for(self.device_id, Path(settings.gallery.path).parent)
        will = self.status.telemetry.offline("connection lost")
        link = MqttLink(broker, self.device_id, self.commands.offer, will=will, client_id=client_id)
        link.publish_status(self.status.status(None))  # held by the link and re-sent on every connect
        return link

    def _outbox(self) -> OutboxPublisher | None:
        if self.link is None:
            return None
        settings = self.settings
        return OutboxPublisher(
            settings.gallery.path, self.link, max_events=settings.mqtt.max_outbox_events, storage=self.storage
        )

    def _publisher(self) -> FramePublisher:
        """Presence, Home Assistant (discovery also removes what an earlier run announced, when disabled or
        renamed since) and the local event listener."""
        settings, link = self.settings, self.link
        discovery, last_person = None, None
        if link is not None:
            discovery = HomeAssistantDiscovery(
                link,
                settings.homeassistant,
                version=__version__,
                camera_id=settings.events.camera_id,
                state_dir=Path(settings.gallery.path).parent,
            )
            discovery.attach()
            if settings.homeassistant.enabled:
                last_person = LastPersonTopic(link)
                last_person.attach()
        publisher = FramePublisher(
            settings,
            self.store,
            self.status.telemetry,
            link=link,
            outbox=self.outbox,
            discovery=discovery,
            last_person=last_person,
            on_event=self.options.on_event,
        )
        if link is not None:
            link.add_connect_hook(publisher.resend_presence)
            publisher.refresh_last_person()
        return publisher

    def _command_worker(self, keys: KeyRoles, security: CommandSecurity) -> CommandWorker:
        def open_store() -> GalleryStore:
            return GalleryStore.open(self.settings.gallery.path)

        services = CommandServices(
            settings_path=self.options.settings_path,
            get_settings=lambda: self.settings,  # a set_config is seen at once
            apply_settings=self.apply_settings,
            open_store=open_store,
            gallery=self.gallery,
            enroller_factory=self._enroller,
            status=lambda: self.worker.status_document(),
            request_restart=lambda: self.stop(EXIT_RESTART),
            restart_wait=self.restarts.wait,
            storage=self.storage,
            feedback=self.feedback,
            matching=lambda: self.matcher.matching,
            model_updates=ModelUpdater(
                state_models_dir(self.settings.gallery.path),
                get_settings=lambda: self.settings,
                keys=keys.releases,
                apply=self.switch_models,
                gallery=self.gallery,
            ),
            camera=self.live_enrollment,
            telemetry_history=self.status.telemetry.history.page,
        )
        dispatcher = CommandDispatcher(services, security)
        return CommandWorker(self.commands, dispatcher, self.replays, self.status, open_store, self.link)

    # -------------------------------------------------------------------------------------- control

    def stop(self, exit_code: int = 0) -> None:
        """Thread- and signal-safe: the frame loop finishes its frame, then shuts everything down."""
        self._exit_code = exit_code or self._exit_code
        self._stop.set()
        self.gallery.jobs.wake()

    def install_signal_handlers(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: self.stop())

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> int:
        if threading.get_ident() != self._builder:
            raise RuntimeError("AgentService.run() must run on the thread that built the service (its frame loop)")
        if self.link is not None:
            self.link.start()
        if self.outbox is not None:
            self.outbox.start()
        self.source.start()
        threads = [
            threading.Thread(target=self.worker.run, name="faceagent-commands", daemon=True),
            threading.Thread(target=self.gallery.run, name="faceagent-gallery", daemon=True),
        ]
        for thread in threads:
            thread.start()
        if self.options.lossless:  # a replay decides every frame, so it waits for the gallery instead
            while not self.gallery.loaded.wait(0.1) and not self._stop.is_set():
                pass
        try:
            self.frames.run(self._stop)
        finally:
            self._shutdown(*threads)
        if self._failure is not None:
            raise self._failure
        return self._exit_code

    def _shutdown(self, worker: threading.Thread, gallery: threading.Thread) -> None:
        if self._exit_code == EXIT_RESTART:
            self.notifier.reloading("restarting in place (MQTT restart)")  # not STOPPING: the unit stays active
        else:
            self.notifier.stopping("stopping")
        self.source.stop()
        self.frames.finish()  # a model update waiting for the frame loop fails now
        self.commands.close()
        worker.join(timeout=JOIN_SECONDS)
        self._stop.set()  # the frame loop may have ended with its source, not by stop()
        self.gallery.jobs.wake()
        gallery.join(timeout=JOIN_SECONDS)
        if self.outbox is not None:
            self.notifier.extend_timeout(15.0)
            self.outbox.stop(flush_timeout=5.0)
        if self.link is not None:
            self.publisher.nobody_watched()
            self.link.stop(self.status.telemetry.offline("stopped"))
        self.store.close()
        self.notifier.close()

    # ------------------------------------------------------------------------ from the other threads

    def apply_settings(self, settings: Settings) -> None:
        """From the command thread (set_config): the new settings are the running ones at once, and each
        changed section reaches its consumers (the frame loop's between two frames, retention's on the
        gallery thread); the recognizer keeps its open tracks and cooldowns."""
        settings = self.with_overrides(settings)
        sections = changed_sections(self.settings, settings)
        self.settings = settings
        if sections & FRAME_SECTIONS:
            self.frames.jobs.submit(lambda loop: loop.use_settings(settings, sections))
        if "retention" in sections:
            self.gallery.use_retention(settings.retention)

    def switch_models(self, models_dir: Path) -> None:
        """From the command thread (model_update): the new pipeline is built here and its embedder's matcher
        on the gallery thread, then both go live between two frames. Returns once they have; raises what
        stopped it (the old models then run on)."""
        settings = replace(self.settings, models=replace(self.settings.models, dir=models_dir))
        pipeline = FacePipeline(pipeline_options(settings))

        def go_live(matcher: Matcher) -> None:  # on the gallery thread, which waits for the frame loop
            job = self.frames.jobs.submit(lambda loop: loop.use_models(settings.models, pipeline, matcher))
            outcome(job, MODEL_SWAP_SECONDS, "the frame loop did not take the new models")

        self.gallery.switch_model(pipeline.embedder, go_live)
        self.settings = settings
        self.command_pipeline.reset()  # the next enrollment builds one from the new models

    def _enroller(self, store: GalleryStore) -> Enroller:
        """On the command thread; the live matcher learns the new templates from the gallery thread."""
        return Enroller(self.command_pipeline.get(), store, self.matcher, self.settings, add_to_matcher=False)

    def _store_capture(self, window: CaptureWindow) -> None:
        """From whichever thread ended the capture: its views are stored (or its refusal audited) on the gallery
        thread, by the live matcher's one writer; nobody waits for it here."""

        def store(parts: GalleryParts) -> None:
            enroller = Enroller(
                self.recognizer.pipeline, parts.store, self.matcher, self.settings, add_to_matcher=False
            )
            enroll_capture(window, enroller, parts.sync)

        self.gallery.jobs.submit(store)

    def _follow_people(self, store: GalleryStore) -> None:
        """On the gallery thread, every turn: Home Assistant's per-person sensors follow the gallery."""
        if self.publisher.discovery is not None:
            self.publisher.discovery.keep_people(store, include_names=self.settings.events.include_names)

    def _remember_decision(self, track: Track, match: Match, event: FaceEvent) -> None:
        """On the frame loop: the event's track goes into the feedback window, for corrections by event id, and
        (with gallery.adapt) to the gallery thread, which may make an adaptive template of it."""
        self.feedback.record(track, match, event, metric=self.matcher.metric, quality=self.settings.quality)
        self.adapter.offer(track, match, event, self.recognizer.pipeline.embedder_spec.sha256)

    def _gallery_synced(self) -> None:
        """On the gallery thread, after another process changed the gallery."""
        self.feedback.forget_absent(self.matcher.person_ids())  # erased from the CLI: their tracks go too
        self.frames.jobs.submit(FrameLoop.refresh_last_person)  # the person shown may be renamed or erased
        if self.outbox is not None:
            self.outbox.notify()  # an erasure queued its person_erased event: send it now

    def _gallery_failed(self, exc: BaseException) -> None:
        self._failure = exc
        self.stop(1)

    # ------------------------------------------------------------------- for the demo and benchmarks

    @property
    def clock(self) -> FrameClock:
        return self.frames.clock

    @property
    def events_written(self) -> int:
        return self.publisher.events_written

    @property
    def gallery_loaded(self) -> threading.Event:
        return self.gallery.loaded


def print_event(event: FaceEvent) -> None:
    print(json.dumps(event), flush=True)

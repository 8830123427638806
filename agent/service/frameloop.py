"""The frame loop: a frame in, the recognizer's result out, systemd and the broker told; jobs between frames.

It never waits on the network, nor on a query that grows with the gallery. Everything else that must
happen on this thread (new settings, new models, a refresh after the gallery changed) arrives as a job
(`jobs`) and runs between two frames, so a frame is always decided with one set of settings and models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from agent.config import ModelSettings, Settings
from agent.gallery.matcher import Matcher
from agent.link.mqtt import MqttLink
from agent.link.outbox import OutboxPublisher
from agent.recognition.recognizer import Recognizer
from agent.service.jobs import JobQueue
from agent.service.publisher import FramePublisher
from agent.service.sdnotify import Notifier
from agent.service.status import FrameClock, StatusReport
from agent.sources.latest import LatestFrame, SourceState
from agent.storage import StorageHealth
from agent.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

FRAME_WAIT_SECONDS = 1.0  # the longest wait for a frame: jobs and systemd pings go on without a camera


class FrameLoop:
    """Owns the recognizer (and so the pipeline and the frame loop's gallery connection) and the publisher."""

    def __init__(
        self,
        settings: Settings,
        source: LatestFrame,
        recognizer: Recognizer,
        matcher: Matcher,
        publisher: FramePublisher,
        *,
        notifier: Notifier,
        status: StatusReport,
        storage: StorageHealth,
        link: MqttLink | None,
        outbox: OutboxPublisher | None,
        request_status: Callable[[], None],
        gallery_loaded: threading.Event,
    ) -> None:
        self.settings, self.source, self.recognizer, self.matcher = settings, source, recognizer, matcher
        self.publisher, self.notifier, self.status, self.storage = publisher, notifier, status, storage
        self.link, self.outbox = link, outbox
        self.request_status = request_status
        self.gallery_loaded = gallery_loaded  # set by the gallery thread: frames may be decided
        self.jobs: JobQueue[FrameLoop] = JobQueue("the frame loop")
        self.clock = FrameClock()
        self._ready = False
        self._storage_reported = 0  # storage.transitions last published in status

    # ----------------------------------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        next_telemetry = time.monotonic() + self.settings.mqtt.telemetry_interval_seconds
        while not stop.is_set():
            self.jobs.run_pending(self)
            frame = self.source.get(timeout=FRAME_WAIT_SECONDS)
            if frame is not None and not self.gallery_loaded.is_set():
                # Up and serving; no decision before the whole gallery: a partial one calls enrolled people unknown.
                self._report_ready("frames flowing; loading the gallery")
                self.notifier.heartbeat("loading the gallery")
            elif frame is None:
                if self.source.ended:
                    log.info("source %s ended", self.source.source.description)
                    break
                self._no_frame()
            else:
                result = self.recognizer.process(frame.image, frame.timestamp, frame.hires)
                self.clock.record(result.timings_ms)
                self.publisher.emitted(result.events)
                self.publisher.presence(result.faces)
                self._report_ready(f"frames flowing from {self.source.source.description}")
                self.notifier.frame_done(self.clock.fps)
            self.storage.poll()
            if self.link is not None and time.monotonic() >= next_telemetry:
                next_telemetry = time.monotonic() + self.settings.mqtt.telemetry_interval_seconds
                self.link.publish_telemetry(
                    self.status.telemetry_document(self.clock, self.outbox.stats if self.outbox else None)
                )
                self._want_status()  # retained: uptime, camera, gallery stay current
            elif self.link is not None and self.storage.transitions != self._storage_reported:
                self._want_status()  # the disk filled up or has room again: say so now

    def _no_frame(self) -> None:
        camera = self.source.status()
        if camera.state in (SourceState.RECONNECTING, SourceState.FAILED, SourceState.NOT_CONFIGURED):
            # Up and serving commands without a camera: READY, or systemd would restart us in a loop.
            unset = camera.state == SourceState.NOT_CONFIGURED  # its message starts "camera not configured"
            self._report_ready(camera.last_error if unset else f"camera {camera.state}: {camera.last_error}")
        self.notifier.heartbeat(_waiting_status(camera.state) if camera.errors else None)

    def _report_ready(self, status: str | None) -> None:
        """READY once: the first status went out without the gallery summary, so ask for one now."""
        if not self._ready:
            self.notifier.ready(status)
            self._ready = True
            self._want_status()

    def _want_status(self) -> None:
        self._storage_reported = self.storage.transitions
        self.request_status()

    # ------------------------------------------------------------------------------ jobs (between frames)

    def use_settings(self, settings: Settings, sections: frozenset[str]) -> None:
        """The changed sections to their consumers; the recognizer keeps its tracks and cooldowns."""
        if "gallery" in sections:
            self.matcher.retune(settings.gallery)
        self.recognizer.update(settings)
        self.publisher.use_settings(settings)
        if "events" in sections:
            self.publisher.refresh_last_person()  # events.include_names may have changed
        self.settings = settings
        log.info("settings applied: %s", ", ".join(sorted(sections)))

    def use_models(self, models: ModelSettings, pipeline: FacePipeline, matcher: Matcher) -> None:
        """Another pipeline, and the matcher of its embedder's templates (built off this thread): open tracks
        are decided with the old models first, then both go live together."""
        self.publisher.emitted(self.recognizer.flush(datetime.now(UTC)))
        self.matcher.take(matcher)
        self.recognizer.use_pipeline(pipeline)
        self.settings = replace(self.settings, models=models)
        self.status.telemetry.models = {
            "detector": pipeline.detector_spec.id,
            "embedder": pipeline.embedder.info.model_id,
        }
        log.info("models switched to %s", self.status.telemetry.models)

    def refresh_last_person(self) -> None:
        """After another process renamed or erased someone."""
        self.publisher.refresh_last_person()

    def finish(self) -> None:
        """At stop: no job runs any more (one waited for fails now), and open tracks are decided."""
        self.jobs.close()
        self.publisher.emitted(self.recognizer.flush(datetime.now(UTC)))


def _waiting_status(state: SourceState) -> str:
    if state == SourceState.NOT_CONFIGURED:
        return "camera not configured: set [camera] source, then restart the agent"
    return f"camera {state}, reopening"

"""Always the newest frame: a reader thread owns the source, the consumer takes whatever is newest.

A pipeline slower than the camera must not fall behind it: a queue would grow stale (or unbounded), so
one slot holds the newest frame and a frame replaced before anyone took it is counted as dropped. The
reader also owns failure: a camera that errors or disappears is closed and reopened with exponential
backoff, its state kept for status, and nothing is ever raised into the consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent.sources.base import Frame, FrameSource, SourceError, SourceNotConfigured, SourceUnavailable, utc_now

log = logging.getLogger(__name__)


class SourceState(StrEnum):
    STARTING = "starting"  # not opened yet
    OK = "ok"  # frames are flowing
    RECONNECTING = "reconnecting"  # the last open or read failed; retrying with backoff
    FAILED = "failed"  # cannot work as configured (SourceUnavailable); not retried, see last_error
    NOT_CONFIGURED = "not configured"  # no camera.source and no Pi camera found; last_error says what to do
    ENDED = "ended"  # a file or folder reached its end
    STOPPED = "stopped"


@dataclass(frozen=True)
class SourceStatus:
    """A snapshot for status reports and telemetry."""

    source: str
    state: SourceState
    frames: int  # read from the source since start
    delivered: int  # taken by the consumer
    dropped: int  # replaced by a newer frame before the consumer took them
    errors: int  # failed opens and reads
    reconnects: int  # successful reopenings after a failure
    last_error: str | None
    last_error_at: datetime | None
    last_frame_at: datetime | None
    fps: float  # frames read per second, smoothed

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "state": str(self.state),
            "frames": self.frames,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "last_frame_at": self.last_frame_at.isoformat() if self.last_frame_at else None,
            "fps": round(self.fps, 2),
        }


@dataclass(frozen=True)
class Backoff:
    """Waits first, 2*first, 4*first ... seconds, never more than `maximum`."""

    first: float = 0.5
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.first * 2.0 ** min(failures, 32))


class LatestFrame:
    """Reads `source` on a thread; `get` returns the newest frame not yet taken.

    `lossless` makes the reader wait for the consumer instead of dropping: for replaying a file where every
    frame matters (benchmarks, end-to-end tests), never for a live camera.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        reconnect_max_seconds: float = 30.0,
        reconnect_first_seconds: float = 0.5,
        lossless: bool = False,
        stop_timeout_seconds: float = 10.0,
    ) -> None:
        self.source = source
        self.backoff = Backoff(min(reconnect_first_seconds, reconnect_max_seconds), reconnect_max_seconds)
        self.lossless = lossless
        self.stop_timeout_seconds = stop_timeout_seconds
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: Frame | None = None
        self._state = SourceState.STARTING
        self._frames = self._delivered = self._dropped = self._errors = self._reconnects = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_frame_at: datetime | None = None
        self._last_read = 0.0
        self._interval = 0.0  # smoothed seconds between reads

    # ----------------------------------------------------------------------------- consumer side

    def start(self) -> LatestFrame:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="faceagent-camera", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> LatestFrame:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken, waiting up to `timeout` seconds for one (None: forever).

        None when nothing came in time, or at once when the source has ended or been stopped (`ended`).
        A failed source yields nothing, but still waits out the timeout, so a loop around `get` never spins.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None or self._finished(), timeout)
            frame, self._pending = self._pending, None
            if frame is not None:
                self._delivered += 1
                self._cond.notify_all()  # a lossless reader waits for the slot to empty
            return frame

    @property
    def ended(self) -> bool:
        """True once a finite source has delivered its last frame, or after `stop`."""
        with self._cond:
            return self._finished() and self._pending is None

    def _finished(self) -> bool:
        return self._state in (SourceState.ENDED, SourceState.STOPPED)

    def status(self) -> SourceStatus:
        with self._cond:
            return SourceStatus(
                self.source.description,
                self._state,
                self._frames,
                self._delivered,
                self._dropped,
                self._errors,
                self._reconnects,
                self._last_error,
                self._last_error_at,
                self._last_frame_at,
                1.0 / self._interval if self._interval > 0 else 0.0,
            )

    def stop(self) -> None:
        """Stop reading and close the source; waits for a read in progress (bounded by the source's timeout)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.stop_timeout_seconds)
            if thread.is_alive():
                log.warning(
                    "%s: still blocked in a read after %.0f s", self.source.description, self.stop_timeout_seconds
                )
        with self._cond:
            self._state = SourceState.STOPPED
            self._pending = None
            self._cond.notify_all()

    # ----------------------------------------------------------------------------- reader thread

    def _run(self) -> None:
        failures = 0
        is_open = False
        try:
            while not self._stopping.is_set():
                try:
                    if not is_open:
                        self.source.open()
                        is_open = True
                        if failures:
                            self._note_reconnect(failures)
                    frame = self.source.read()
                except SourceUnavailable as exc:
                    self._set_failed(exc)
                    return
                except Exception as exc:  # any failure, even a bug in a source, means: close, wait, retry
                    self._note_error(exc, failures)  # first: status must not say "ok" while a close hangs
                    self.source.close()
                    is_open = False
                    self._stopping.wait(self.backoff.delay(failures))
                    failures += 1
                    continue
                if frame is None:
                    self._set_state(SourceState.ENDED)
                    log.info("%s: end of stream after %d frames", self.source.description, self._frames)
                    return
                failures = 0
                self._publish(frame)
        finally:
            self.source.close()

    def _publish(self, frame: Frame) -> None:
        now = time.monotonic()
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._pending is None or self._stopping.is_set())
            if self._stopping.is_set():  # stop() has cleared the slot and set the final state
                return
            if self._pending is not None:
                self._dropped += 1
            self._pending = replace(frame, index=self._frames)
            self._frames += 1
            self._last_frame_at = frame.timestamp
            if self._last_read:
                gap = now - self._last_read
                self._interval = gap if not self._interval else 0.9 * self._interval + 0.1 * gap
            self._last_read = now
            if self._state is not SourceState.OK:
                self._state = SourceState.OK
            self._cond.notify_all()

    def _note_error(self, exc: Exception, failures: int) -> None:
        delay = self.backoff.delay(failures)
        message = str(exc) or type(exc).__name__
        with self._cond:
            self._errors += 1
            self._last_error, self._last_error_at = message, utc_now()
            if not self._stopping.is_set():
                self._state = SourceState.RECONNECTING
        expected = isinstance(exc, SourceError)
        log.warning("%s; retrying in %.1f s", self._named(message), delay, exc_info=not expected)

    def _named(self, message: str) -> str:
        """The message with the source's name in front, once: source errors mostly carry it already."""
        name = self.source.description
        return message if message.startswith(name) else f"{name}: {message}"

    def _note_reconnect(self, failures: int) -> None:
        with self._cond:
            self._reconnects += 1
        # a warning, as the failures were: at the default level the log would otherwise never say it came back
        log.warning("%s: reopened after %d failed attempts", self.source.description, failures)

    def _set_failed(self, exc: SourceUnavailable) -> None:
        with self._cond:
            self._errors += 1
            self._last_error, self._last_error_at = str(exc), utc_now()
            if not self._stopping.is_set():
                not_configured = isinstance(exc, SourceNotConfigured)
                self._state = SourceState.NOT_CONFIGURED if not_configured else SourceState.FAILED
            self._cond.notify_all()
        log.error("%s", self._named(str(exc)))

    def _set_state(self, state: SourceState) -> None:
        with self._cond:
            if not self._stopping.is_set():
                self._state = state
            self._cond.notify_all()

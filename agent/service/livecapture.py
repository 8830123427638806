"""Live enrollment on the running agent: one capture window at a time, across the threads that touch it.

The command thread arms a window (`start`), reports on it and cancels it; the frame loop feeds it (this object is
the recognizer's `ViewObserver`: while a window collects, every tracked face is embedded on every frame); when
collection ends, `store_views` hands the window to the gallery thread, which stores its views through the live
matcher's one writer (or only audits a refusal). Nobody has to poll for the views to be stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agent.commands.schema import CommandError, ErrorCode
from agent.config import Settings
from agent.identity import new_ulid
from agent.recognition.capture import CaptureRequest, CaptureStatus, CaptureWindow
from agent.recognition.recognizer import TrackView
from agent.sources.latest import SourceState, SourceStatus
from agent.vision.embedder import EmbedderInfo

NO_CAMERA = (SourceState.NOT_CONFIGURED, SourceState.FAILED, SourceState.ENDED, SourceState.STOPPED)


class LiveEnrollment:
    """The device's current (or last) capture window; thread-safe."""

    def __init__(
        self,
        get_settings: Callable[[], Settings],
        camera: Callable[[], SourceStatus],
        store_views: Callable[[CaptureWindow], None],
    ) -> None:
        """`store_views(window)` runs when a window stops collecting, on the thread that ended it: it must only
        hand the window over (to the gallery thread), never wait."""
        self.get_settings, self.camera, self.store_views = get_settings, camera, store_views
        self._window: CaptureWindow | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ the frame loop's side

    def wants_views(self) -> bool:
        window = self._window
        return window is not None and window.wants_views()

    def observe(self, views: list[TrackView], model: EmbedderInfo) -> None:
        window = self._window
        if window is not None:
            window.observe(views, model)

    # ------------------------------------------------------------------------ the command thread's side

    def start(self, request: CaptureRequest) -> dict[str, Any]:
        """Arm a window; refused while one collects or stores, or when there is no working camera."""
        camera = self.camera()
        if camera.state in NO_CAMERA:
            problem = f": {camera.last_error}" if camera.last_error else ""
            raise CommandError(ErrorCode.CONFLICT, f"no camera to enroll from (camera {camera.state}{problem})")
        settings = self.get_settings()
        with self._lock:
            current = self._window
            if current is not None:
                current.expire()
            if current is not None and current.status is CaptureStatus.IN_PROGRESS:
                report = current.report()
                busy = f"capture {current.capture_id}, {report['step']}, {report['views']} of {report['views_needed']}"
                message = f"a camera enrollment is in progress ({busy} views): wait for it or cancel it"
                raise CommandError(ErrorCode.CONFLICT, message)
            window = CaptureWindow(
                f"c_{new_ulid().lower()}", request, settings, metric=settings.gallery.metric, on_end=self.store_views
            )
            self._window = window
        return window.report()

    def status(self, capture_id: str) -> dict[str, Any]:
        window = self._find(capture_id)
        window.expire()
        return window.report()

    def cancel(self, capture_id: str) -> dict[str, Any]:
        """Cancel a window that still collects; a window that has ended (or stores its views) says how it is."""
        window = self._find(capture_id)
        window.cancel()
        return window.report()

    def _find(self, capture_id: str) -> CaptureWindow:
        window = self._window
        if window is None or window.capture_id != capture_id:
            message = f"no camera enrollment {capture_id} on this device (only the latest is kept)"
            raise CommandError(ErrorCode.NOT_FOUND, message)
        return window

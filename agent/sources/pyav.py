"""USB/V4L2 cameras, RTSP streams and video files, decoded by FFmpeg through PyAV.

PyAV (`av`) comes with picamera2 on a Pi anyway and bundles FFmpeg in its wheels elsewhere, so one
dependency covers every camera that is not a Pi ribbon camera. FFmpeg converts each decoded frame to
RGB in C (`to_ndarray("rgb24")`), the only per-frame allocation here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from agent.sources.base import Frame, Pacer, SourceError, SourceUnavailable, utc_now

Kind = Literal["v4l2", "rtsp", "file"]


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, fit for logs and status."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


class PyavSource:
    """One FFmpeg input: `kind` says how to open it and whether its end is an end or a failure.

    v4l2: `url` is the device (/dev/video0); `size` and `fps` are asked of the driver, which may adjust them.
    rtsp: over TCP (UDP loses packets, and with them whole frames, on busy Wi-Fi); `timeout_seconds` bounds
    both the connection and each read, so a dead camera is an error within seconds, not a hang.
    file: replayed at `fps` (0: as fast as it decodes); at the end it starts again when `loop`, else ends.
    """

    def __init__(
        self,
        url: str,
        kind: Kind,
        *,
        size: tuple[int, int] | None = None,
        fps: float = 0.0,
        loop: bool = False,
        timeout_seconds: float = 10.0,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.url, self.kind, self.size, self.fps, self.loop = url, kind, size, fps, loop
        self.timeout_seconds = timeout_seconds
        self.options = dict(options or {})
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._pacer = Pacer(fps if kind == "file" else 0.0)
        self._index = 0

    @property
    def description(self) -> str:
        return f"{self.kind}:{redact_url(self.url)}"

    def _open_arguments(self) -> dict[str, Any]:
        options: dict[str, str] = {}
        arguments: dict[str, Any] = {"timeout": self.timeout_seconds}
        if self.kind == "v4l2":
            arguments["format"] = "v4l2"
            if self.size:
                options["video_size"] = f"{self.size[0]}x{self.size[1]}"
            if self.fps > 0:
                options["framerate"] = f"{self.fps:g}"
        elif self.kind == "rtsp":
            options["rtsp_transport"] = "tcp"
        return arguments | {"options": options | self.options}

    def open(self) -> None:
        self._open_container()
        self._index = 0
        self._pacer.reset()

    def _open_container(self) -> None:
        try:
            import av  # here, not at the top: commands that never open a camera do not pay for FFmpeg's load
        except ImportError as exc:
            raise SourceUnavailable(f"PyAV is not installed: `pip install av` ({exc})") from exc
        self.close()
        try:
            self._container = av.open(self.url, **self._open_arguments())
            if not self._container.streams.video:
                raise SourceError(f"{self.description}: has no video stream")
            self._frames = self._container.decode(self._container.streams.video[0])
        except SourceError:
            self.close()
            raise
        except Exception as exc:  # av.FFmpegError subclasses OSError, ValueError ... per FFmpeg error code
            self.close()
            raise SourceError(f"{self.description}: cannot open: {self._say(exc)}") from exc

    def read(self) -> Frame | None:
        if self._frames is None:
            raise SourceError(f"{self.description}: read before open")
        decoded = self._next_decoded()
        if decoded is None and self.kind == "file" and self.loop:
            self._open_container()
            decoded = self._next_decoded()
        if decoded is None:
            if self.kind == "file":
                return None
            raise SourceError(f"{self.description}: the stream ended")
        try:
            image = decoded.to_ndarray(format="rgb24")
        except Exception as exc:
            raise SourceError(f"{self.description}: frame conversion failed: {self._say(exc)}") from exc
        self._pacer.wait()
        index, self._index = self._index, self._index + 1
        return Frame(image, utc_now(), index)

    def _next_decoded(self) -> Any | None:
        assert self._frames is not None
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except Exception as exc:  # a timeout, a reset connection, an unplugged camera, a corrupt file
            raise SourceError(f"{self.description}: read failed: {self._say(exc)}") from exc

    def _say(self, exc: Exception) -> str:
        """FFmpeg's message, which quotes the URL, without the URL's password."""
        return (str(exc) or type(exc).__name__).replace(self.url, redact_url(self.url))

    def close(self) -> None:
        container, self._container, self._frames = self._container, None, None
        if container is not None:
            with contextlib.suppress(Exception):  # closing a broken stream may fail too; nothing is left to release
                container.close()

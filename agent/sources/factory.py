"""From the `[camera]` settings to a source: one URI-like string names the kind and the target."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from agent.config import CameraSettings
from agent.sources.base import Frame, FrameSource, SourceError, SourceNotConfigured
from agent.sources.folder import FolderSource
from agent.sources.latest import LatestFrame
from agent.sources.picamera import PicameraSource
from agent.sources.pyav import PyavSource, redact_url

log = logging.getLogger(__name__)

SourceKind = Literal["picamera2", "v4l2", "rtsp", "file", "folder"]
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm"})
FORMS = (
    '"picamera2" or "picamera2:N" (Pi camera N), "v4l2:/dev/video0" (USB camera), "rtsp://host/path", '
    '"file:PATH" or a path ending .mp4/.mkv/.avi/.mov/.webm (video file), "folder:PATH" or a directory (images)'
)


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    target: str  # camera number, device, URL or path


def parse_source(text: str) -> SourceSpec:
    """What `[camera] source` names; SourceError lists the accepted forms."""
    spec = text.strip()
    if not spec:
        raise SourceError(f"no camera configured: set [camera] source to {FORMS}")
    lower = spec.lower()
    if lower == "picamera2":
        return SourceSpec("picamera2", "0")
    if lower.startswith("picamera2:"):
        number = spec.partition(":")[2]
        if not number.isdigit():
            raise SourceError(f'camera source "{spec}": the camera number after "picamera2:" must be 0, 1, ...')
        return SourceSpec("picamera2", number)
    if lower.startswith(("rtsp://", "rtsps://")):
        return SourceSpec("rtsp", spec)
    for kind in ("v4l2", "file", "folder"):
        if lower.startswith(f"{kind}:"):
            target = spec[len(kind) + 1 :]
            if not target:
                raise SourceError(f'camera source "{spec}": nothing after "{kind}:"')
            return SourceSpec(kind, target)
    if spec.startswith("/dev/video"):
        return SourceSpec("v4l2", spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return SourceSpec("file", spec)
    if path.is_dir():
        return SourceSpec("folder", spec)
    raise SourceError(f'camera source "{redact_url(spec)}" is none of: {FORMS}')


def parse_size(text: str, key: str = "size") -> tuple[int, int]:
    """ "1280x720" -> (1280, 720)."""
    match = re.fullmatch(r"\s*([1-9][0-9]*)\s*[xX]\s*([1-9][0-9]*)\s*", text)
    if match is None:
        raise SourceError(f'[camera] {key} "{text}" must be WIDTHxHEIGHT in pixels, e.g. "1280x720"')
    return int(match[1]), int(match[2])


class NotConfiguredSource:
    """Stands in for the camera on a fresh install: opening it says how to configure one, and the agent runs on
    without frames (status, commands, READY and watchdog pings) instead of exiting into a restart loop."""

    description = "camera"

    def __init__(self, config_path: Path | None = None) -> None:
        self._config = str(config_path) if config_path else "the configuration file"

    def open(self) -> None:
        raise SourceNotConfigured(
            f"camera not configured and no Pi camera found: set [camera] source in {self._config} to one of "
            f"{FORMS}; then restart the agent (sudo systemctl restart faceagent)"
        )

    def read(self) -> Frame | None:
        raise SourceNotConfigured("camera not configured")

    def close(self) -> None:
        pass


def detect_pi_camera() -> bool:
    """Whether picamera2 is installed and sees a camera: a Pi with its camera needs no [camera] source."""
    if importlib.util.find_spec("picamera2") is None:
        return False
    try:
        return bool(importlib.import_module("picamera2").Picamera2.global_camera_info())
    except Exception as exc:  # a broken libcamera must not stop the agent: it then runs as not configured
        log.warning("picamera2 is installed but could not list cameras: %s", exc)
        return False


def open_source(camera: CameraSettings, config_path: Path | None = None) -> FrameSource:
    """The source `camera.source` names, built but not opened (LatestFrame opens it, and reopens it).

    No source configured: the Pi camera when picamera2 sees one, else a source that reports "not configured".
    Raises SourceError when the string names no source, before any device is touched.
    """
    if not (camera.source or "").strip():
        if not detect_pi_camera():
            return NotConfiguredSource(config_path)
        log.info("no [camera] source configured: using the Pi camera that picamera2 found")
        camera = replace(camera, source="picamera2")
    spec = parse_source(camera.source or "")
    size = parse_size(camera.size)
    if spec.kind == "picamera2":
        lores = parse_size(camera.lores_size, "lores_size")
        return PicameraSource(int(spec.target), size=size, lores_size=lores, fps=camera.fps)
    if spec.kind == "v4l2":
        return PyavSource(spec.target, "v4l2", size=size, fps=camera.fps)
    if spec.kind == "rtsp":
        return PyavSource(spec.target, "rtsp")
    path = Path(spec.target).expanduser()
    if spec.kind == "file":
        return PyavSource(str(path), "file", fps=camera.fps, loop=camera.loop)
    return FolderSource(path, fps=camera.fps, loop=camera.loop)


def open_latest(camera: CameraSettings, *, lossless: bool = False, config_path: Path | None = None) -> LatestFrame:
    """`open_source` behind the newest-frame reader, with the configured reconnect ceiling (not started)."""
    source = open_source(camera, config_path)
    return LatestFrame(source, reconnect_max_seconds=camera.reconnect_max_seconds, lossless=lossless)

"""The one small interface every camera adapter speaks, and the frame it hands out.

A source is opened, read until it ends or fails, and closed; it may be opened again after a close,
which is how `LatestFrame` reconnects a camera that went away.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from PIL import Image

from agent.errors import FaceagentError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in continuous pixels (pixel i spans [i, i+1))


class SourceError(FaceagentError):
    """A frame source could not be opened or read; retrying later may help (a camera unplugged, a stream down)."""


class SourceUnavailable(SourceError):
    """A source that cannot work on this machine as configured: retrying will not help, the message says what will."""


class SourceNotConfigured(SourceUnavailable):
    """No camera is configured (a fresh install): the agent still runs, reports it and says how to set one."""


@dataclass(frozen=True, slots=True)
class HiRes:
    """The same exposure at a higher resolution, for sharper face crops than the detection frame gives.

    The pixels stay in the camera's channel order until something is cut out of them: converting a whole
    1280x720 frame on every frame would cost more than the crops a tracker asks for every few frames.
    """

    pixels: np.ndarray  # HxWx3 uint8, RGB, or BGR when `bgr`
    scale: tuple[float, float]  # hires pixels per detection-frame pixel, (x, y)
    bgr: bool = False

    def to_hires(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) x, y detection-frame points (keypoints, say) in hires pixels."""
        return np.asarray(points, dtype=np.float64) * np.asarray(self.scale)

    def crop(self, box: Box) -> np.ndarray:
        """RGB pixels of `box`, given in detection-frame coordinates, clipped to the image (possibly empty)."""
        sx, sy = self.scale
        height, width = self.pixels.shape[:2]
        x0, y0 = max(0, math.floor(box[0] * sx)), max(0, math.floor(box[1] * sy))
        x1, y1 = min(width, math.ceil(box[2] * sx)), min(height, math.ceil(box[3] * sy))
        region = self.pixels[y0 : max(y0, y1), x0 : max(x0, x1)]
        return bgr_to_rgb(region) if self.bgr else np.ascontiguousarray(region)

    def rgb(self) -> np.ndarray:
        """The whole image as RGB (a full conversion: prefer `crop`)."""
        return bgr_to_rgb(self.pixels) if self.bgr else self.pixels


@dataclass(frozen=True, slots=True)
class Frame:
    """One picture from a source: what detection runs on, when it was taken, and its place in the stream."""

    image: np.ndarray  # HxWx3 RGB uint8; `Face` boxes from the detector are in these pixels
    timestamp: datetime  # aware UTC, when the frame was read from the device or file
    index: int  # counts from 0; through LatestFrame a gap in the numbers means frames were dropped
    hires: HiRes | None = None  # picamera2's main stream, when configured

    def crop(self, box: Box) -> np.ndarray:
        """The sharpest RGB crop of `box` (frame coordinates) the source can give: hires when there is one."""
        if self.hires is not None:
            return self.hires.crop(box)
        return HiRes(self.image, (1.0, 1.0)).crop(box)


class FrameSource(Protocol):
    """A camera, stream, video file or image folder (picamera2, PyAV and folder implementations)."""

    @property
    def description(self) -> str:
        """What the source is, for logs and status; never contains a password."""
        ...

    def open(self) -> None:
        """Acquire the device or file; raises SourceError. Called again after `close` to reconnect."""
        ...

    def read(self) -> Frame | None:
        """The next frame, blocking at most a few seconds; None only at the end of a file or folder.

        A live source never ends: a camera or stream that stops raises SourceError instead.
        """
        ...

    def close(self) -> None:
        """Release the device; safe to call twice or after a failed open, never raises."""
        ...


def bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """A contiguous RGB copy of HxWx3 BGR pixels.

    Pillow's C unpacker swaps a whole contiguous frame about 4x faster than numpy's reversed-stride copy;
    a crop (not contiguous) is cheapest with a fancy index, which copies once.
    """
    if pixels.flags.c_contiguous and pixels.size:
        height, width = pixels.shape[:2]
        return np.asarray(Image.frombuffer("RGB", (width, height), pixels, "raw", "BGR", 0, 1))
    return pixels[:, :, [2, 1, 0]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Pacer:
    """Spaces replayed frames 1/fps apart, as a camera would deliver them; fps 0 means as fast as possible.

    A late frame is not followed by a burst: the schedule restarts from now instead of catching up.
    """

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self._due = 0.0

    def reset(self) -> None:
        self._due = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        start = max(self._due, now)
        if start > now:
            time.sleep(start - now)
        self._due = start + self.interval

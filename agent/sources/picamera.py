"""The Raspberry Pi camera through picamera2: detect on the small `lores` stream, crop faces from `main`.

Both streams come from one request, so a box found on lores maps onto the very same exposure in main.
Lores is YUV420 (the only lores format a Pi 4 ISP offers) and small, so converting it to RGB here is
cheap; main is requested as picamera2's "RGB888", which numpy sees in B, G, R order, and is only
converted where a crop is cut (`HiRes`). picamera2 is imported when the camera is opened: it exists
only on Raspberry Pi OS, from apt, and nothing else in the agent needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from agent.sources.base import Frame, HiRes, SourceError, SourceUnavailable, bgr_to_rgb, utc_now

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "picamera2 is not importable here: on Raspberry Pi OS run `sudo apt install python3-picamera2`, and create "
    "the venv with `python3 -m venv --system-site-packages` so it sees the system package"
)


@dataclass(frozen=True)
class YuvMatrix:
    """Y'CbCr to R'G'B' for one colour space: rgb = gain * (Y - black) + chroma terms (U, V centred on 128)."""

    name: str
    black: float
    gain: float
    r_v: float
    g_u: float
    g_v: float
    b_u: float

    @classmethod
    def from_encoding(cls, name: str, kr: float, kb: float, limited: bool) -> YuvMatrix:
        """The inverse of Y = kr R + (1 - kr - kb) G + kb B, for full (0-255) or limited (16-235) range."""
        luma, chroma = (255 / 219, 255 / 224) if limited else (1.0, 1.0)
        kg = 1.0 - kr - kb
        r_v, b_u = 2 * (1 - kr) * chroma, 2 * (1 - kb) * chroma
        g_u, g_v = -2 * kb * (1 - kb) / kg * chroma, -2 * kr * (1 - kr) / kg * chroma
        return cls(name, 16.0 if limited else 0.0, luma, r_v, g_u, g_v, b_u)


_ENCODINGS = {"rec601": (0.299, 0.114), "rec709": (0.2126, 0.0722), "rec2020": (0.2627, 0.0593)}
# libcamera's preset colour spaces: (Y'CbCr encoding, limited range)
_PRESETS = {
    "sycc": ("rec601", False),
    "smpte170m": ("rec601", True),
    "rec709": ("rec709", True),
    "rec2020": ("rec2020", True),
}
SYCC = YuvMatrix.from_encoding("sYCC", *_ENCODINGS["rec601"], limited=False)  # full-range BT.601, as JPEG


def matrix_for(colour_space: object) -> YuvMatrix:
    """The matrix for the libcamera ColorSpace the camera was configured with.

    picamera2 picks the colour space itself and versions differ (sYCC for an RGB main stream in some,
    Rec709 at 1280x720 and up in others), so it is read back from the camera rather than assumed.
    libcamera spells presets by name ("sYCC", "Rec709", "Smpte170m") and others as
    "primaries/transfer/encoding/range"; anything unrecognized is taken as sYCC.
    """
    text = str(colour_space).lower()
    parts = re.search(r"(\w+)/(\w+)/(\w+)/(full|limited)", text)
    if parts is not None and parts[3] in _ENCODINGS:
        encoding, limited = parts[3], parts[4] == "limited"
    else:
        preset = next((name for name in _PRESETS if name in text), "sycc")
        encoding, limited = _PRESETS[preset]
    name = f"{encoding}-{'limited' if limited else 'full'}"
    return YuvMatrix.from_encoding(name, *_ENCODINGS[encoding], limited=limited)


def yuv420_to_rgb(planes: np.ndarray, width: int, height: int, matrix: YuvMatrix = SYCC) -> np.ndarray:
    """picamera2's YUV420 array, shape (height * 3 / 2, stride), as an HxWx3 RGB uint8 image.

    The Y plane is `height` rows of `stride` bytes, then U and V are each height/2 rows of stride/2
    bytes (two chroma rows per array row); padding past `width` is ignored. Chroma is applied to each
    2x2 block by broadcasting, so nothing is upsampled or copied more than once.
    """
    stride = planes.shape[1]
    if width % 2 or height % 2 or stride < width or planes.shape[0] * 2 < height * 3:
        raise SourceError(f"YUV420 buffer of shape {planes.shape} does not hold a {width}x{height} image")
    flat = planes.reshape(-1)
    luma, chroma = height * stride, (height // 2) * (stride // 2)
    y = flat[:luma].reshape(height, stride)[:, :width]
    u = flat[luma : luma + chroma].reshape(height // 2, stride // 2)[:, : width // 2].astype(np.float32) - 128.0
    v = flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, stride // 2)[:, : width // 2]
    v = v.astype(np.float32) - 128.0
    base = y.astype(np.float32)
    if matrix.black or matrix.gain != 1.0:
        base -= matrix.black
        base *= matrix.gain
    base += 0.5  # round, not truncate, on the cast below
    blocks = base.reshape(height // 2, 2, width // 2, 2)
    out = np.empty((height // 2, 2, width // 2, 2, 3), np.uint8)
    channel = np.empty_like(blocks)
    for index, term in enumerate((matrix.r_v * v, matrix.g_u * u + matrix.g_v * v, matrix.b_u * u)):
        np.add(blocks, term[:, None, :, None], out=channel)
        np.clip(channel, 0.0, 255.0, out=channel)
        out[..., index] = channel
    return out.reshape(height, width, 3)


def _import_picamera2() -> ModuleType:
    try:
        return importlib.import_module("picamera2")
    except ImportError as exc:
        raise SourceUnavailable(f"{INSTALL_HINT} ({exc})") from exc


class PicameraSource:
    """A Raspberry Pi camera (CSI) via picamera2; `lores_size` None detects on the main stream itself."""

    def __init__(
        self,
        camera: int = 0,
        *,
        size: tuple[int, int] = (1280, 720),
        lores_size: tuple[int, int] | None = (640, 360),
        fps: float = 15.0,
        hires: bool = True,
        timeout_seconds: float = 5.0,
    ) -> None:
        for name, dims in (("size", size), ("lores_size", lores_size)):
            if dims is not None and (dims[0] < 2 or dims[1] < 2 or dims[0] % 2 or dims[1] % 2):
                raise SourceUnavailable(f"picamera2 {name} {dims[0]}x{dims[1]}: width and height must be even")
        if lores_size is not None and (lores_size[0] > size[0] or lores_size[1] > size[1]):
            raise SourceUnavailable(
                f"picamera2 lores_size {lores_size[0]}x{lores_size[1]} must not exceed size {size[0]}x{size[1]}"
            )
        self.camera, self.size, self.lores_size, self.fps = camera, size, lores_size, fps
        self.hires, self.timeout_seconds = hires and lores_size is not None, timeout_seconds
        self._picam: Any = None
        self._lores: tuple[int, int] | None = None  # as configured by the camera, which may align sizes
        self._scale = (1.0, 1.0)
        self._matrix = SYCC
        self._index = 0

    @property
    def description(self) -> str:
        return f"picamera2:{self.camera}"

    def open(self) -> None:
        module = _import_picamera2()
        try:
            self._picam = self._construct(module)
            lores = None if self.lores_size is None else {"size": self.lores_size, "format": "YUV420"}
            controls = {"FrameRate": float(self.fps)} if self.fps > 0 else {}
            config = self._picam.create_video_configuration(
                main={"size": self.size, "format": "RGB888"}, lores=lores, controls=controls
            )
            self._picam.configure(config)
            self._read_back_configuration()
            self._picam.start()
        except SourceError:
            self.close()
            raise
        except Exception as exc:  # picamera2/libcamera raise RuntimeError, IndexError (no camera), OSError ...
            self.close()
            raise SourceError(f"{self.description}: cannot start the camera: {exc}") from exc
        self._index = 0

    def _construct(self, module: ModuleType) -> Any:
        try:
            return module.Picamera2(self.camera)
        except IndexError as exc:  # picamera2 indexes libcamera's camera list
            raise SourceError(
                f"{self.description}: no camera number {self.camera} (is the ribbon cable seated, and does "
                "`rpicam-hello --list-cameras` list it?)"
            ) from exc

    def _read_back_configuration(self) -> None:
        actual = self._picam.camera_configuration()
        main_w, main_h = actual["main"]["size"]
        if self.lores_size is None:
            self._lores = None
            return
        lores_w, lores_h = actual["lores"]["size"]
        self._lores = (int(lores_w), int(lores_h))
        self._scale = (main_w / lores_w, main_h / lores_h)
        self._matrix = matrix_for(actual.get("colour_space"))
        sizes = f"main {main_w}x{main_h}, lores {lores_w}x{lores_h} {self._matrix.name}"
        log.info("%s: %s, %s fps", self.description, sizes, self.fps or "default")

    def read(self) -> Frame:
        if self._picam is None:
            raise SourceError(f"{self.description}: read before open")
        try:
            request = self._picam.capture_request(wait=self.timeout_seconds)
        except TimeoutError as exc:  # picamera2 raises it bare when `wait` runs out
            raise SourceError(f"{self.description}: no frame within {self.timeout_seconds:g} s") from exc
        except Exception as exc:  # RuntimeError and others when the camera went away
            raise SourceError(f"{self.description}: capture failed: {str(exc) or type(exc).__name__}") from exc
        try:
            lores = request.make_array("lores") if self._lores is not None else None
            main = request.make_array("main") if lores is None or self.hires else None
        except Exception as exc:
            raise SourceError(f"{self.description}: unreadable frame: {exc}") from exc
        finally:
            request.release()  # buffers go back to the camera at once; make_array copied them
        index, self._index = self._index, self._index + 1
        if lores is None or self._lores is None:
            assert main is not None  # no lores stream: the main one was read
            return Frame(bgr_to_rgb(main), utc_now(), index)
        image = yuv420_to_rgb(lores, self._lores[0], self._lores[1], self._matrix)
        hires = HiRes(main, self._scale, bgr=True) if main is not None else None
        return Frame(image, utc_now(), index, hires)

    def close(self) -> None:
        """Stop and release the camera, also one that stopped delivering (a loose or pulled ribbon cable).

        A capture that timed out leaves its job queued in picamera2, and `Picamera2.stop()` runs as a job behind
        it and waits without a timeout: on a camera that delivers nothing, for ever (picamera2 issue #1065), so
        the reader thread hung here and the camera was never reopened. So the queue is cancelled first
        (`cancel_all_and_flush`, in picamera2 since mid-2024 for exactly this), and `close()` alone stops the
        camera: it ends the event loop first, then stops without queueing.
        """
        picam, self._picam = self._picam, None
        if picam is None:
            return
        for step in (getattr(picam, "cancel_all_and_flush", None), picam.close):
            if step is not None:
                with contextlib.suppress(Exception):
                    step()

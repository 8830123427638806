"""A stand-in for picamera2 where there is no Pi camera: the project's one fake, at the hardware boundary.

Import it as `tests.support.fakes.picamera2` in-process, or put `tests/support/fakes` first on PYTHONPATH so that
`import picamera2` in an agent subprocess finds it. It serves real images the way picamera2 does, so everything above
it runs for real: `lores` as a YUV420 array of shape (height * 3 / 2, stride) with 64-byte aligned rows, `main`
as "RGB888" (B, G, R in memory), both from one request, at the configured FrameRate, in the colour space
picamera2 reports. The scene is live: frame n of the clip is shown at n / fps seconds after the first camera
was made, whether anyone reads it or not, so a camera that was away for a while comes back later in the clip.

Environment, read when a camera is constructed:
  FAKE_PICAMERA2_FRAMES      a folder of images (name order), one image, or a video file; looped
  FAKE_PICAMERA2_UNPLUGGED   a path: while that file exists the camera behaves as with a pulled ribbon cable
  FAKE_PICAMERA2_CAMERAS     how many cameras libcamera lists (default 1)
  FAKE_PICAMERA2_COLOUR_SPACE   what `camera_configuration()` reports (sYCC, SMPTE170M, Rec709)

An unplugged camera fails the way the real stack does:
- `Picamera2(n)` raises IndexError("list index out of range"): picamera2 indexes `global_camera_info()`,
  which is empty when libcamera finds no camera (picamera2.py `__init__`; picamera2 issues #866, #1009, #1081).
- a started camera stops delivering: libcamera logs "Camera frontend has timed out!" (pipeline_base.cpp) and
  no request completes, so `capture_request(wait=s)` raises the bare `concurrent.futures.TimeoutError` of
  `Job.get_result(timeout)` after s seconds (picamera2 job.py, `dispatch_functions`); with no `wait` it blocks
  for ever (picamera2 issue #1295). That camera stays dead after the cable is back, until it is started again.
- the timed-out capture job stays queued (Job.get_result times out, nothing cancels it), so a later `stop()`,
  which runs as a job behind it while the NullPreview event loop runs, blocks for ever (picamera2 issue #1065)
  unless `cancel_all_and_flush()` cleared the queue first; `close()` stops the event loop before the camera and
  does not wait on the queue.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

_NEVER = threading.Event()  # what a deadlocked picamera2 waits for
FRAMES_ENV = "FAKE_PICAMERA2_FRAMES"
UNPLUGGED_ENV = "FAKE_PICAMERA2_UNPLUGGED"
COLOUR_SPACE_ENV = "FAKE_PICAMERA2_COLOUR_SPACE"
CAMERAS_ENV = "FAKE_PICAMERA2_CAMERAS"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
DEFAULT_FPS = 30.0  # what the sensor runs at when no FrameRate is asked for
# each camera libcamera lists, as on a Pi with Camera Modules 3 (a CM4 has a second port)
CAMERA_INFO = {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@{port}/imx708@1a"}
# what libcamera logs when the sensor stops delivering (Pi 4 / vc4 pipeline, libcamera 0.4)
FRONTEND_TIMEOUT_LOG = (
    ("WARN", "V4L2 v4l2_videodevice.cpp:2150", "/dev/video0[17:cap]: Dequeue timer of 1000000.00us has expired!"),
    ("ERROR", "RPI pipeline_base.cpp:1367", "Camera frontend has timed out!"),
    ("ERROR", "RPI pipeline_base.cpp:1368", "Please check that your camera sensor connector is attached securely."),
    ("ERROR", "RPI pipeline_base.cpp:1369", "Alternatively, try another cable and/or sensor."),
)
# Kr, Kb and range of the colour spaces the fake can report (ITU-R BT.601 / BT.709).
ENCODINGS = {"sYCC": (0.299, 0.114, False), "SMPTE170M": (0.299, 0.114, True), "Rec709": (0.2126, 0.0722, True)}


def encode_yuv420(rgb: np.ndarray, stride: int, colour_space: str) -> np.ndarray:
    """RGB -> picamera2's YUV420 layout: Y rows, then U and V at half size, two chroma rows per array row."""
    kr, kb, limited = ENCODINGS[colour_space]
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = kr * r + (1 - kr - kb) * g + kb * b
    pb, pr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    if limited:
        y, pb, pr = 16 + y * 219 / 255, pb * 224 / 255, pr * 224 / 255
    height, width = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = np.zeros(height * 3 // 2 * stride, np.uint8)
    planes[: height * stride].reshape(height, stride)[:, :width] = np.clip(np.round(y), 0, 255)
    chroma = (height // 2) * (stride // 2)
    for n, plane in enumerate((half(pb), half(pr))):
        start = height * stride + n * chroma
        target = planes[start : start + chroma].reshape(height // 2, stride // 2)
        target[:, : width // 2] = np.clip(np.round(plane + 128), 0, 255)
    return planes.reshape(height * 3 // 2, stride)


def resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(tuple(size), Image.BILINEAR))


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class _Video:
    """Frame n of a video, decoded forward from the last one asked for (and from the start when n went back)."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0  # count is known once the end has been seen
        self._container: Any = None
        self._frames: Any = None
        self._position = 0

    def __call__(self, n: int) -> np.ndarray:
        import av  # the agent's own dependency; only needed for a video

        if self.count:
            n %= self.count
        if self._frames is None or n < self._position:
            if self._container is not None:
                self._container.close()
            self._container = av.open(str(self.path))
            self._frames, self._position = self._container.decode(video=0), 0
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                self.count, self._frames = self._position, None
                return self(n)
            self._position += 1
            if self._position > n:
                return frame.to_ndarray(format="rgb24")


def frames_from(spec: str) -> Callable[[int], np.ndarray]:
    """Frame n (looped) of a folder of images, one image, or a video file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"{FRAMES_ENV}: no images in {path}")
        return lambda n: _load(paths[n % len(paths)])
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = _load(path)
        return lambda n: image
    return _Video(path)


def unplugged() -> bool:
    control = os.environ.get(UNPLUGGED_ENV)
    return bool(control) and os.path.exists(control)


def _libcamera_log(level: str, where: str, message: str) -> None:
    """A line as libcamera writes it to stderr (and so to the journal)."""
    elapsed = time.monotonic()
    stamp = f"{int(elapsed // 3600)}:{int(elapsed // 60 % 60):02d}:{elapsed % 60:012.9f}"
    sys.stderr.write(f"[{stamp}] [{threading.get_native_id()}] {level:>5} {where} {message}\n")
    sys.stderr.flush()


class FakeRequest:
    def __init__(self, camera: Picamera2, arrays: dict[str, np.ndarray]) -> None:
        self.camera, self.arrays = camera, arrays

    def make_array(self, name: str) -> np.ndarray:
        return self.arrays[name].copy()

    def release(self) -> None:
        self.camera.outstanding -= 1


class Picamera2:
    """Enough of picamera2.Picamera2 for a video configuration with main and lores streams."""

    frames: ClassVar[Sequence[np.ndarray] | Callable[[int], np.ndarray] | None] = None  # None: FAKE_PICAMERA2_FRAMES
    colour_space: ClassVar[str | None] = None  # what picamera2 picked (versions differ); None: from the environment
    instances: ClassVar[list[Picamera2]] = []
    epoch: ClassVar[float | None] = None  # when the scene started: the clip runs in real time from here

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        count = 0 if unplugged() else int(os.environ.get(CAMERAS_ENV, "1"))
        return [CAMERA_INFO | {"Id": CAMERA_INFO["Id"].format(port=1 - n), "Num": n} for n in range(count)]

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = self.global_camera_info()[camera_num]["Num"]  # IndexError as picamera2 when none
        if Picamera2.frames is None:
            Picamera2.frames = frames_from(os.environ[FRAMES_ENV])
        if Picamera2.epoch is None:
            Picamera2.epoch = time.monotonic()
        self.calls: list[str] = []
        self.requested: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self.outstanding = 0
        self.served = 0
        self.fail_next = 0  # capture_request raises TimeoutError this many times
        self.wedged = False  # the frontend timed out: nothing completes until started again
        self.started = False
        self.event_loop = False  # start() runs a NullPreview thread, which executes picamera2's jobs
        self.pending = 0  # capture jobs a timed-out capture_request left queued: picamera2 does not cancel them
        self._interval = 1.0 / DEFAULT_FPS
        self._due = 0.0
        Picamera2.instances.append(self)

    def create_video_configuration(self, main: dict, lores: dict | None = None, controls: dict | None = None) -> dict:
        self.requested = {"main": main, "lores": lores, "controls": controls}
        return {"main": dict(main), "lores": dict(lores) if lores else None, "controls": controls or {}}

    def configure(self, config: dict) -> None:
        self.calls.append("configure")
        for name in ("main", "lores"):
            if config[name] is not None:
                width = config[name]["size"][0]
                bytes_per_pixel = 3 if name == "main" else 1
                config[name]["stride"] = -(-width * bytes_per_pixel // 64) * 64
        colour_space = self.colour_space or os.environ.get(COLOUR_SPACE_ENV, "sYCC")
        self.config = config | {"colour_space": colour_space}
        rate = float(config["controls"].get("FrameRate") or DEFAULT_FPS)
        self._interval = 1.0 / rate

    def camera_configuration(self) -> dict:
        assert self.config is not None
        return self.config

    def start(self) -> None:
        self.calls.append("start")
        self.started = self.event_loop = True
        self.wedged = False

    def capture_request(self, wait: float | None = None) -> FakeRequest:
        assert self.config is not None and self.started
        if self.fail_next:  # a frame late beyond `wait`, with the camera still running
            self.fail_next -= 1
            self.pending += 1
            raise concurrent.futures.TimeoutError  # Job.get_result's: no message
        if not self.wedged and unplugged():
            self.wedged = True
            for line in FRONTEND_TIMEOUT_LOG:
                _libcamera_log(*line)
        if self.wedged:
            self.pending += 1
            threading.Event().wait(wait)  # no request ever completes
            raise concurrent.futures.TimeoutError
        self._complete_pending()
        rgb = self._next_frame()
        self.served += 1
        self.outstanding += 1
        arrays = {"main": resized(rgb, self.config["main"]["size"])[:, :, ::-1]}  # RGB888 is B, G, R in memory
        if self.config["lores"] is not None:
            lores = self.config["lores"]
            arrays["lores"] = encode_yuv420(resized(rgb, lores["size"]), lores["stride"], self.config["colour_space"])
        return FakeRequest(self, arrays)

    def _next_frame(self) -> np.ndarray:
        """The scene at the next frame time: the sensor runs at its own rate, a slow reader misses frames."""
        now = time.monotonic()
        due = max(self._due, now)
        if due > now:
            time.sleep(due - now)
        self._due = due + self._interval
        assert Picamera2.epoch is not None
        n = int((due - Picamera2.epoch) / self._interval)
        frames = Picamera2.frames  # through the class: a function stored there is not a method
        if callable(frames):
            return frames(n)
        assert frames is not None
        return frames[n % len(frames)]

    def _complete_pending(self) -> None:
        """Stale capture jobs go first, each taking a request nobody will release (as in picamera2)."""
        while self.pending:
            self.pending -= 1
            self._next_frame()
            self.served += 1
            self.outstanding += 1

    def cancel_all_and_flush(self) -> None:
        """picamera2 >= 0.3.19: cancel the queued jobs, "after an operation has unexpectedly timed out (for
        example, the camera cable has become dislodged) so that the camera can be closed"."""
        self.calls.append("cancel_all_and_flush")
        self.pending = 0

    def stop(self) -> None:
        """With the event loop running, picamera2 queues the stop as a job behind any stale capture job and
        waits for it without a timeout: on a camera that delivers nothing, for ever (picamera2 issue #1065)."""
        self.calls.append("stop")
        if self.started and self.event_loop and self.pending:
            if self.wedged:
                _NEVER.wait()
            self._complete_pending()
        self.started = False

    def close(self) -> None:
        """picamera2's close stops the preview (the event loop) first, then stops the camera directly."""
        self.calls.append("close")
        self.event_loop = self.started = False


FakePicamera2 = Picamera2
__all__ = ["CAMERA_INFO", "FakePicamera2", "FakeRequest", "Picamera2", "encode_yuv420", "frames_from", "resized"]

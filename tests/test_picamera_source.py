"""The picamera2 source against a fake `Picamera2`: the one fake in the project, as there is no camera here.

The fake serves real frames of the Hamilton clip the way picamera2 does: `lores` as a YUV420 array of shape
(height * 3 / 2, stride) with 64-byte aligned rows, `main` as "RGB888", which numpy sees as B, G, R, both
from one request, in the colour space picamera2 reports. So the YUV -> RGB and BGR -> RGB conversions and the
lores -> main box mapping run for real; only libcamera is pretended.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from agent.sources import LatestFrame, SourceError, SourceState, SourceUnavailable
from agent.sources.picamera import PicameraSource
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline

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
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


class FakeRequest:
    def __init__(self, camera: FakePicamera2, arrays: dict[str, np.ndarray]) -> None:
        self.camera, self.arrays = camera, arrays

    def make_array(self, name: str) -> np.ndarray:
        return self.arrays[name].copy()

    def release(self) -> None:
        self.camera.outstanding -= 1


class FakePicamera2:
    """Enough of picamera2.Picamera2 for a video configuration with main and lores streams."""

    frames: ClassVar[list[np.ndarray]] = []  # RGB frames served in turn
    colour_space: ClassVar[str] = "sYCC"  # what picamera2 picked; versions differ
    instances: ClassVar[list[FakePicamera2]] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.calls: list[str] = []
        self.requested: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self.outstanding = 0
        self.served = 0
        self.fail_next = 0  # capture_request raises TimeoutError this many times
        FakePicamera2.instances.append(self)

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
        self.config = config | {"colour_space": self.colour_space}

    def camera_configuration(self) -> dict:
        assert self.config is not None
        return self.config

    def start(self) -> None:
        self.calls.append("start")

    def capture_request(self, wait: float | None = None) -> FakeRequest:
        assert self.config is not None and "start" in self.calls
        if self.fail_next:
            self.fail_next -= 1
            raise TimeoutError  # as concurrent.futures raises it: no message
        rgb = self.frames[self.served % len(self.frames)]
        self.served += 1
        self.outstanding += 1
        arrays = {"main": resized(rgb, self.config["main"]["size"])[:, :, ::-1]}  # RGB888 is B, G, R in memory
        if self.config["lores"] is not None:
            lores = self.config["lores"]
            arrays["lores"] = encode_yuv420(resized(rgb, lores["size"]), lores["stride"], self.colour_space)
        return FakeRequest(self, arrays)

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture(scope="module")
def miranda(shared_data: Path) -> np.ndarray:
    """Frame 100 of the clip: Lin-Manuel Miranda, face on."""
    return load_image(shared_data / "sequence" / "hamilton_clip" / "frames" / "frame_0100.jpg")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, miranda: np.ndarray) -> type[FakePicamera2]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    monkeypatch.setattr(FakePicamera2, "frames", [miranda])
    monkeypatch.setattr(FakePicamera2, "instances", [])
    return FakePicamera2


def read_one(source: PicameraSource):
    source.open()
    try:
        return source.read()
    finally:
        source.close()


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_the_camera_is_asked_for_the_configured_streams_and_rate(fake: type[FakePicamera2]) -> None:
    read_one(PicameraSource(1, size=(1280, 720), lores_size=(640, 360), fps=12.5))
    camera = fake.instances[0]
    assert camera.camera_num == 1
    assert camera.requested == {
        "main": {"size": (1280, 720), "format": "RGB888"},
        "lores": {"size": (640, 360), "format": "YUV420"},
        "controls": {"FrameRate": 12.5},
    }


def test_lores_yuv420_becomes_the_rgb_detection_frame(fake: type[FakePicamera2], miranda: np.ndarray) -> None:
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(640, 360)))
    assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
    assert mean_abs(frame.image, miranda) < 0.5  # 4:2:0 chroma and rounding cost a little
    assert mean_abs(frame.image[:, :, ::-1], miranda) > 5.0


def test_a_limited_range_rec709_lores_is_converted_with_its_own_matrix(
    fake: type[FakePicamera2], miranda: np.ndarray
) -> None:
    fake.colour_space = "Rec709"  # what newer picamera2 picks for 1280x720 and up
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(640, 360)))
    assert mean_abs(frame.image, miranda) < 0.6  # sYCC's matrix would be 12 off, BT.601 limited range 0.8


def test_padding_at_the_end_of_lores_rows_is_ignored(fake: type[FakePicamera2], miranda: np.ndarray) -> None:
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(416, 234)))  # rows padded to 448 bytes
    assert fake.instances[0].config["lores"]["stride"] == 448
    assert frame.image.shape == (234, 416, 3)
    assert mean_abs(frame.image, resized(miranda, (416, 234))) < 1.0


def test_a_lores_box_crops_the_same_place_from_main_in_rgb(fake: type[FakePicamera2], miranda: np.ndarray) -> None:
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(320, 180)))
    assert frame.hires is not None and frame.hires.scale == (4.0, 4.0)
    crop = frame.crop((100.0, 20.25, 180.5, 120.0))
    assert np.array_equal(crop, resized(miranda, (1280, 720))[81:480, 400:722])


def test_a_lores_of_another_shape_maps_each_axis_by_its_own_scale(
    fake: type[FakePicamera2], miranda: np.ndarray
) -> None:
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(320, 240)))  # the ISP squeezes, not crops
    assert frame.hires is not None and frame.hires.scale == (4.0, 3.0)
    assert np.array_equal(frame.crop((100.0, 20.0, 180.0, 120.0)), resized(miranda, (1280, 720))[60:360, 400:720])


def test_a_face_found_on_lores_is_where_main_shows_it(fake: type[FakePicamera2], pipeline: FacePipeline) -> None:
    frame = read_one(PicameraSource(size=(1280, 720), lores_size=(640, 360)))
    assert frame.hires is not None
    (lores_face,) = pipeline.detect(frame.image)
    (main_face,) = pipeline.detect(frame.hires.rgb())
    mapped = frame.hires.to_hires(np.reshape(lores_face.box, (2, 2))).reshape(-1)
    assert np.abs(mapped - np.asarray(main_face.box)).max() < 0.05 * main_face.width
    assert np.abs(frame.hires.to_hires(lores_face.keypoints) - main_face.keypoints).max() < 0.05 * main_face.width


def test_without_lores_the_main_stream_is_the_rgb_frame(fake: type[FakePicamera2], miranda: np.ndarray) -> None:
    frame = read_one(PicameraSource(size=(640, 360), lores_size=None))
    assert fake.instances[0].requested["lores"] is None
    assert frame.hires is None
    assert np.array_equal(frame.image, resized(miranda, (640, 360)))


def test_every_request_goes_back_to_the_camera(fake: type[FakePicamera2]) -> None:
    source = PicameraSource(size=(640, 360), lores_size=(320, 180))
    source.open()
    frames = [source.read() for _ in range(5)]
    source.close()
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert fake.instances[0].outstanding == 0


def test_close_stops_and_closes_the_camera(fake: type[FakePicamera2]) -> None:
    read_one(PicameraSource(size=(640, 360), lores_size=(320, 180)))
    assert fake.instances[0].calls == ["configure", "start", "stop", "close"]


def test_a_capture_timeout_is_a_source_error(fake: type[FakePicamera2]) -> None:
    source = PicameraSource(size=(640, 360), lores_size=(320, 180))
    source.open()
    fake.instances[0].fail_next = 1
    with pytest.raises(SourceError, match="no frame within 5 s"):
        source.read()


def test_a_camera_that_stops_delivering_is_reopened(fake: type[FakePicamera2]) -> None:
    source = PicameraSource(size=(640, 360), lores_size=(320, 180))
    with LatestFrame(source, reconnect_first_seconds=0.01) as reader:
        assert reader.get(timeout=5.0) is not None
        fake.instances[0].fail_next = 1
        deadline = time.monotonic() + 10.0
        while reader.status().reconnects == 0 and time.monotonic() < deadline:
            reader.get(timeout=0.05)
        assert reader.get(timeout=5.0) is not None
        status = reader.status()
    assert (status.state, status.last_error) == (SourceState.OK, "picamera2:0: no frame within 5 s")
    assert fake.instances[0].calls[-2:] == ["stop", "close"] and len(fake.instances) == 2


def test_a_missing_camera_number_says_how_to_check(fake: type[FakePicamera2], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_camera(camera_num: int) -> None:
        raise IndexError("list index out of range")  # what picamera2 raises for a camera libcamera does not list

    monkeypatch.setattr(sys.modules["picamera2"], "Picamera2", no_such_camera)
    with pytest.raises(SourceError, match=r"no camera number 1 .*rpicam-hello --list-cameras"):
        PicameraSource(1).open()


def test_lores_larger_than_main_is_refused_before_the_camera_is_touched(fake: type[FakePicamera2]) -> None:
    with pytest.raises(SourceUnavailable, match="must not exceed size 640x360"):
        PicameraSource(size=(640, 360), lores_size=(1280, 720))
    assert fake.instances == []


def test_without_picamera2_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # as on a machine without the apt package
    with pytest.raises(SourceUnavailable) as caught:
        PicameraSource().open()
    assert "sudo apt install python3-picamera2" in str(caught.value)
    assert "--system-site-packages" in str(caught.value)


def test_without_picamera2_the_reader_reports_failed_and_does_not_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with LatestFrame(PicameraSource(), reconnect_first_seconds=0.01) as reader:
        assert reader.get(timeout=0.2) is None
        status = reader.status()
    assert status.state is SourceState.FAILED and status.errors == 1
    assert "python3-picamera2" in (status.last_error or "")

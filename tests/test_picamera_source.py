"""The picamera2 source against the fake `Picamera2` of tests/support/fakes: the one fake in the project, as there is no
camera here.

The fake serves real frames of the Hamilton clip the way picamera2 does: `lores` as a YUV420 array of shape
(height * 3 / 2, stride) with 64-byte aligned rows, `main` as "RGB888", which numpy sees as B, G, R, both
from one request, in the colour space picamera2 reports. So the YUV -> RGB and BGR -> RGB conversions and the
lores -> main box mapping run for real; only libcamera is pretended, including an unplugged camera.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tests.support.fakes.picamera2 as fake_picamera2
from agent.sources import LatestFrame, SourceError, SourceState, SourceUnavailable
from agent.sources.picamera import PicameraSource
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.compare import mean_abs
from tests.support.fakes.picamera2 import FakePicamera2, resized


@pytest.fixture(scope="module")
def miranda(shared_data: Path) -> np.ndarray:
    """Frame 100 of the clip: Lin-Manuel Miranda, face on."""
    return load_image(shared_data / "sequence" / "hamilton_clip" / "frames" / "frame_0100.jpg")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, miranda: np.ndarray, tmp_path: Path) -> type[FakePicamera2]:
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)
    monkeypatch.setenv(fake_picamera2.UNPLUGGED_ENV, str(tmp_path / "unplugged"))
    monkeypatch.setattr(FakePicamera2, "frames", [miranda])
    monkeypatch.setattr(FakePicamera2, "colour_space", "sYCC")
    monkeypatch.setattr(FakePicamera2, "instances", [])
    return FakePicamera2


def read_one(source: PicameraSource):
    source.open()
    try:
        return source.read()
    finally:
        source.close()


def test_the_camera_is_asked_for_the_configured_streams_and_rate(
    fake: type[FakePicamera2], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fake_picamera2.CAMERAS_ENV, "2")
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


def test_close_cancels_queued_jobs_then_closes_the_camera(fake: type[FakePicamera2]) -> None:
    read_one(PicameraSource(size=(640, 360), lores_size=(320, 180)))
    camera = fake.instances[0]
    assert camera.calls == ["configure", "start", "cancel_all_and_flush", "close"]
    assert not camera.started and camera.outstanding == 0


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
    assert fake.instances[0].calls[-2:] == ["cancel_all_and_flush", "close"] and len(fake.instances) == 2
    assert fake.instances[0].outstanding == 0  # the timed-out capture did not keep a buffer


def test_a_missing_camera_number_says_how_to_check(fake: type[FakePicamera2]) -> None:
    with pytest.raises(SourceError, match=r"no camera number 1 .*rpicam-hello --list-cameras"):
        PicameraSource(1).open()  # libcamera lists one camera: picamera2 raises IndexError


def test_an_unplugged_camera_is_reopened_once_it_is_back(fake: type[FakePicamera2], tmp_path: Path) -> None:
    """The ribbon cable pulled while running: reads time out, opens find no camera, and the cable put back
    brings frames again through a new camera object, all without raising into the consumer. Before close()
    cancelled picamera2's queued capture job, closing the dead camera hung for ever and it never came back."""
    source = PicameraSource(size=(640, 360), lores_size=(320, 180), timeout_seconds=0.2)
    control = tmp_path / "unplugged"
    with LatestFrame(source, reconnect_first_seconds=0.01, reconnect_max_seconds=0.05) as reader:
        assert reader.get(timeout=5.0) is not None
        control.touch()
        deadline = time.monotonic() + 10.0
        while reader.status().errors < 3 and time.monotonic() < deadline:
            reader.get(timeout=0.05)
        down = reader.status()
        control.unlink()
        assert reader.get(timeout=5.0) is not None
        up = reader.status()
    assert down.state is SourceState.RECONNECTING and down.errors >= 3
    assert "no camera number 0" in (down.last_error or "")
    assert fake.instances[0].wedged and fake.instances[0].calls[-2:] == ["cancel_all_and_flush", "close"]
    assert up.state is SourceState.OK and up.reconnects == 1 and len(fake.instances) == 2


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

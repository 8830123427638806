"""Frame sources on real media: the Hamilton clip's frames folder and its mp4, and the newest-frame reader.

Failure injection wraps a real FolderSource in `Flaky`, which raises where told: the only way to make a
camera fail on cue on a machine without one.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import CameraSettings, settings_from_dict
from agent.errors import ConfigError
from agent.sources import (
    Frame,
    LatestFrame,
    SourceError,
    SourceState,
    SourceUnavailable,
    open_source,
    parse_source,
)
from agent.sources.base import SourceNotConfigured
from agent.sources.factory import NotConfiguredSource
from agent.sources.folder import FolderSource
from agent.sources.picamera import PicameraSource
from agent.sources.pyav import PyavSource
from agent.vision.image import load_image
from tests.support.compare import mean_abs
from tests.support.fakes import picamera2 as fake_picamera2

CLIP_FRAMES = 275


@pytest.fixture(scope="session")
def clip_dir(shared_data: Path) -> Path:
    return shared_data / "sequence" / "hamilton_clip"


@pytest.fixture(scope="session")
def clip_frames(clip_dir: Path) -> Path:
    return clip_dir / "frames"


@pytest.fixture(scope="session")
def clip_mp4(clip_dir: Path) -> Path:
    return clip_dir / "short_hamilton_clip.mp4"


@pytest.fixture
def few_frames(tmp_path: Path, clip_frames: Path) -> Path:
    """Frames 1, 100 and 200 of the clip, in a folder of their own."""
    folder = tmp_path / "few"
    folder.mkdir()
    for number in (1, 100, 200):
        shutil.copy(clip_frames / f"frame_{number:04d}.jpg", folder)
    return folder


def read_all(source: FolderSource | PyavSource, limit: int = 10_000) -> list[Frame]:
    frames: list[Frame] = []
    source.open()
    try:
        while len(frames) < limit and (frame := source.read()) is not None:
            frames.append(frame)
    finally:
        source.close()
    return frames


# ------------------------------------------------------------------------------------ folder


def test_folder_replays_every_image_in_name_order(clip_frames: Path) -> None:
    frames = read_all(FolderSource(clip_frames))
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    for index in (0, 99, 274):
        assert np.array_equal(frames[index].image, load_image(clip_frames / f"frame_{index + 1:04d}.jpg"))


def test_folder_frames_carry_utc_timestamps_in_order(few_frames: Path) -> None:
    frames = read_all(FolderSource(few_frames))
    assert all(f.timestamp.utcoffset() is not None and f.timestamp.utcoffset().total_seconds() == 0 for f in frames)
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)


def test_folder_loops_when_asked(few_frames: Path) -> None:
    frames = read_all(FolderSource(few_frames, loop=True), limit=7)
    first = load_image(few_frames / "frame_0001.jpg")
    assert [f.index for f in frames] == list(range(7))
    assert [np.array_equal(f.image, first) for f in frames] == [True, False, False, True, False, False, True]


def test_folder_replays_at_the_configured_rate(few_frames: Path) -> None:
    started = time.monotonic()
    read_all(FolderSource(few_frames, fps=20))
    assert time.monotonic() - started >= 0.095  # three frames 50 ms apart: the first at once, two waits


def test_folder_skips_an_unreadable_image(few_frames: Path) -> None:
    (few_frames / "frame_0050.jpg").write_bytes(b"not a jpeg")
    source = FolderSource(few_frames)
    assert len(read_all(source)) == 3
    assert source.skipped == 1


def test_an_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images"):
        FolderSource(tmp_path).open()


# ------------------------------------------------------------------------------------ PyAV


def test_the_mp4_decodes_to_all_its_640x360_frames(clip_mp4: Path) -> None:
    frames = read_all(PyavSource(str(clip_mp4), "file"))
    assert len(frames) == CLIP_FRAMES
    assert {f.image.shape for f in frames} == {(360, 640, 3)}
    assert frames[0].image.dtype == np.uint8


def test_decoded_frames_are_rgb_like_the_jpeg_frames(clip_mp4: Path, clip_frames: Path) -> None:
    frame = read_all(PyavSource(str(clip_mp4), "file"), limit=100)[99].image
    jpeg = load_image(clip_frames / "frame_0100.jpg")  # decoded by OpenCV, saved at JPEG q90
    assert mean_abs(frame, jpeg) < 2.0
    assert mean_abs(frame[:, :, ::-1], jpeg) > 5.0


def test_a_looping_file_starts_again_at_its_first_frame(clip_mp4: Path) -> None:
    frames = read_all(PyavSource(str(clip_mp4), "file", loop=True), limit=CLIP_FRAMES + 2)
    assert np.array_equal(frames[CLIP_FRAMES].image, frames[0].image)
    assert frames[CLIP_FRAMES].index == CLIP_FRAMES


def test_a_missing_video_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="No such file"):
        PyavSource(str(tmp_path / "absent.mp4"), "file").open()


def test_a_missing_usb_camera_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="/dev/video97"):
        PyavSource("/dev/video97", "v4l2", size=(640, 480), fps=15).open()


def test_a_silent_rtsp_server_times_out_without_showing_the_password() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        port = server.getsockname()[1]
        source = PyavSource(f"rtsp://cam:s3cret@127.0.0.1:{port}/live", "rtsp", timeout_seconds=1.0)
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            source.open()
    assert time.monotonic() - started < 5.0
    assert "s3cret" not in str(caught.value) and "s3cret" not in source.description


# ------------------------------------------------------------------------------------ newest frame


class Flaky:
    """A real FolderSource that fails where told: `read_failures` reads in a row after `fail_after` good frames,
    and `open_failures` opens (the first ones) before that."""

    def __init__(self, inner: FolderSource, *, fail_after: int = 0, read_failures: int = 0, open_failures: int = 0):
        self.inner, self.fail_after = inner, fail_after
        self.read_failures, self.open_failures = read_failures, open_failures
        self.error: Exception = SourceError("camera unplugged")
        self.opens: list[float] = []
        self.closes = 0
        self.good = 0

    @property
    def description(self) -> str:
        return f"flaky {self.inner.description}"

    def open(self) -> None:
        self.opens.append(time.monotonic())
        if self.open_failures:
            self.open_failures -= 1
            raise self.error
        self.inner.open()

    def read(self) -> Frame | None:
        if self.good >= self.fail_after and self.read_failures:
            self.read_failures -= 1
            raise self.error
        frame = self.inner.read()
        self.good += 1
        return frame

    def close(self) -> None:
        self.closes += 1
        self.inner.close()


def drain(reader: LatestFrame, pause: float = 0.0, timeout: float = 10.0) -> list[Frame]:
    """Every frame a consumer taking `pause` seconds per frame gets, until the source ends."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while not reader.ended and time.monotonic() < deadline:
        frame = reader.get(timeout=0.5)
        if frame is not None:
            frames.append(frame)
            time.sleep(pause)
    return frames


def test_a_slow_consumer_gets_only_newer_frames_and_drops_are_counted(clip_frames: Path) -> None:
    with LatestFrame(FolderSource(clip_frames, fps=200)) as reader:
        frames = drain(reader, pause=0.03)
        status = reader.status()
    indexes = [f.index for f in frames]
    assert indexes == sorted(set(indexes)) and indexes[-1] == CLIP_FRAMES - 1
    assert len(frames) < CLIP_FRAMES / 2
    assert status.frames == CLIP_FRAMES and status.delivered == len(frames)
    assert status.dropped == CLIP_FRAMES - len(frames)


def test_a_lossless_reader_waits_for_the_consumer(few_frames: Path) -> None:
    with LatestFrame(FolderSource(few_frames, loop=False), lossless=True) as reader:
        frames = drain(reader, pause=0.05)
        assert reader.status().dropped == 0
    assert [f.index for f in frames] == [0, 1, 2]


def test_the_end_of_a_file_is_signalled_after_its_last_frame(few_frames: Path) -> None:
    with LatestFrame(FolderSource(few_frames), lossless=True) as reader:
        frames = [reader.get(timeout=5.0) for _ in range(3)]
        assert all(f is not None for f in frames)
        while reader.status().state is not SourceState.ENDED:
            time.sleep(0.01)
        assert reader.ended
        assert reader.get(timeout=5.0) is None


def test_a_failing_source_is_reopened_and_frames_keep_coming(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames, loop=True), fail_after=2, read_failures=3)
    with LatestFrame(flaky, reconnect_first_seconds=0.01, lossless=True) as reader:
        frames = [reader.get(timeout=5.0) for _ in range(6)]
        status = reader.status()
    assert all(f is not None for f in frames)
    assert status.state is SourceState.OK
    assert (status.errors, status.reconnects, status.last_error) == (3, 3, "camera unplugged")
    assert len(flaky.opens) == 4


def test_an_unexpected_exception_is_retried_like_a_camera_error(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames, loop=True), fail_after=1, read_failures=1)
    flaky.error = ZeroDivisionError("a bug in a driver")
    with LatestFrame(flaky, reconnect_first_seconds=0.01, lossless=True) as reader:
        frames = [reader.get(timeout=5.0) for _ in range(3)]
        assert reader.status().last_error == "a bug in a driver"
    assert all(f is not None for f in frames)


def test_reconnect_waits_grow_exponentially_up_to_the_cap(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames), open_failures=6)
    with LatestFrame(flaky, reconnect_first_seconds=0.02, reconnect_max_seconds=0.08) as reader:
        assert reader.get(timeout=10.0) is not None
    gaps = np.diff(flaky.opens)
    assert len(gaps) == 6
    for gap, expected in zip(gaps, (0.02, 0.04, 0.08, 0.08, 0.08, 0.08), strict=True):
        assert expected * 0.9 <= gap < expected + 0.5


def test_status_says_reconnecting_while_the_camera_is_down(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames, loop=True), open_failures=1_000_000)
    with LatestFrame(flaky, reconnect_first_seconds=0.01, reconnect_max_seconds=0.02) as reader:
        assert reader.get(timeout=0.3) is None
        status, ended = reader.status(), reader.ended
        flaky.open_failures = 0
        assert reader.get(timeout=5.0) is not None
        recovered = reader.status()
    assert (status.state, status.last_error) == (SourceState.RECONNECTING, "camera unplugged")
    assert status.errors >= 3 and not ended
    assert (recovered.state, recovered.reconnects) == (SourceState.OK, 1)


def test_an_unavailable_source_fails_once_and_is_not_retried(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames), open_failures=1)
    flaky.error = SourceUnavailable("install the camera stack")
    with LatestFrame(flaky, reconnect_first_seconds=0.01) as reader:
        assert reader.get(timeout=0.3) is None
        status = reader.status()
    assert (status.state, status.last_error, len(flaky.opens)) == (SourceState.FAILED, "install the camera stack", 1)


def test_stop_closes_the_source_and_ends_the_reader(few_frames: Path) -> None:
    flaky = Flaky(FolderSource(few_frames, loop=True, fps=50))
    reader = LatestFrame(flaky).start()
    assert reader.get(timeout=5.0) is not None
    reader.stop()
    assert reader.ended and reader.get(timeout=5.0) is None
    assert flaky.closes >= 1 and reader.status().state is SourceState.STOPPED


def test_status_serialises_to_json(few_frames: Path) -> None:
    with LatestFrame(FolderSource(few_frames, fps=100, loop=True)) as reader:
        reader.get(timeout=5.0)
        reader.get(timeout=5.0)
        status = reader.status().to_json()
    assert status["state"] == "ok" and status["source"] == f"folder:{few_frames}"
    assert status["fps"] > 0 and isinstance(status["last_frame_at"], str)


# ------------------------------------------------------------------------------------ crops


def test_a_crop_without_hires_cuts_the_detection_frame(few_frames: Path) -> None:
    frame = read_all(FolderSource(few_frames), limit=1)[0]
    assert np.array_equal(frame.crop((10.2, 20.0, 50.0, 60.7)), frame.image[20:61, 10:50])


# ------------------------------------------------------------------------------------ factory and settings


@pytest.mark.parametrize(
    ("text", "kind", "target"),
    [
        ("picamera2", "picamera2", "0"),
        ("picamera2:1", "picamera2", "1"),
        ("v4l2:/dev/video0", "v4l2", "/dev/video0"),
        ("/dev/video2", "v4l2", "/dev/video2"),
        ("rtsp://user:pw@10.0.0.9:554/stream1", "rtsp", "rtsp://user:pw@10.0.0.9:554/stream1"),
        ("file:/media/door.mkv", "file", "/media/door.mkv"),
        ("clips/door.MP4", "file", "clips/door.MP4"),
        ("folder:/data/frames", "folder", "/data/frames"),
    ],
)
def test_a_source_string_names_its_kind(text: str, kind: str, target: str) -> None:
    assert (parse_source(text).kind, parse_source(text).target) == (kind, target)


def test_a_directory_path_is_a_folder_source(tmp_path: Path) -> None:
    assert parse_source(str(tmp_path)).kind == "folder"


def test_no_source_and_no_pi_camera_is_reported_as_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed
    source = open_source(CameraSettings(), Path("/etc/faceagent/faceagent.toml"))
    with pytest.raises(SourceNotConfigured, match=r"set \[camera\] source in /etc/faceagent/faceagent.toml"):
        source.open()
    latest = LatestFrame(source).start()
    try:
        assert latest.get(timeout=2.0) is None
        assert latest.status().state == SourceState.NOT_CONFIGURED
    finally:
        latest.stop()


def test_no_source_on_a_pi_with_a_camera_means_the_pi_camera(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2)
    monkeypatch.setenv(fake_picamera2.UNPLUGGED_ENV, str(tmp_path / "unplugged"))
    monkeypatch.setenv(fake_picamera2.CAMERAS_ENV, "1")
    assert isinstance(open_source(CameraSettings()), PicameraSource)
    monkeypatch.setenv(fake_picamera2.CAMERAS_ENV, "0")  # picamera2 installed, no camera attached
    assert isinstance(open_source(CameraSettings()), NotConfiguredSource)


def test_an_empty_source_string_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match=r"no camera configured: set \[camera\] source"):
        parse_source("")


def test_an_unknown_source_lists_the_accepted_forms() -> None:
    with pytest.raises(SourceError, match=r"is none of:.*picamera2.*v4l2.*rtsp.*file.*folder"):
        parse_source("webcam please")


def test_open_source_builds_the_named_source_from_the_settings(clip_frames: Path) -> None:
    folder = open_source(CameraSettings(source=str(clip_frames), fps=5.0, loop=True))
    camera = open_source(CameraSettings(source="picamera2:1", size="1920x1080", lores_size="480x270", fps=10.0))
    assert isinstance(folder, FolderSource) and (folder.fps, folder.loop) == (5.0, True)
    assert isinstance(camera, PicameraSource)
    assert (camera.camera, camera.size, camera.lores_size, camera.fps) == (1, (1920, 1080), (480, 270), 10.0)


def test_the_camera_section_loads_from_toml() -> None:
    settings = settings_from_dict({"camera": {"source": "v4l2:/dev/video0", "size": "640x480", "loop": True}})
    assert settings.camera == CameraSettings(source="v4l2:/dev/video0", size="640x480", loop=True)


def test_an_odd_camera_size_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match=r"camera\.size: must be WIDTHxHEIGHT"):
        settings_from_dict({"camera": {"size": "1281x720"}})


def test_a_thread_is_not_left_behind(few_frames: Path) -> None:
    before = threading.active_count()
    with LatestFrame(FolderSource(few_frames)) as reader:
        drain(reader)
    assert threading.active_count() == before

"""Images in: every common format becomes RGB uint8; anything unusable is a clear ImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.errors import ImageError
from agent.vision.image import as_rgb_frame, load_image


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_common_mode_becomes_rgb(mode: str) -> None:
    source = Image.new("RGB", (31, 17), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    frame = load_image(_encode(source, fmt))
    assert frame.shape == (17, 31, 3)
    assert frame.dtype == np.uint8


def test_transparent_pixels_become_black() -> None:
    source = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert load_image(_encode(source)).max() == 0


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue()).shape == (40, 20, 3)


def test_corrupt_bytes_are_refused() -> None:
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"\x89PNG\r\n\x1a\n but then garbage")


def test_truncated_jpeg_is_refused(sample_frame: np.ndarray) -> None:
    data = _encode(Image.fromarray(sample_frame), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "absent.jpg")


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match=str(path)):
        load_image(path)


def test_oversized_image_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(data, max_pixels=1_000_000)


def test_decompression_bomb_is_refused() -> None:
    # 20000 x 20000 mostly-empty PNG: tiny file, 400 MP when decoded.
    data = _encode(Image.new("1", (20000, 20000)))
    assert len(data) < 200_000
    with pytest.raises(ImageError):
        load_image(data)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((10, 10, 2), np.uint8), ((10, 10, 3), np.float32), ((0, 5, 3), np.uint8), ((5,), np.uint8)],
)
def test_unusable_frames_are_refused(shape: tuple[int, ...], dtype: type) -> None:
    with pytest.raises(ImageError):
        as_rgb_frame(np.zeros(shape, dtype=dtype))


@given(
    height=st.integers(1, 64),
    width=st.integers(1, 64),
    channels=st.sampled_from([None, 1, 3, 4]),
)
def test_frames_of_any_size_and_channel_count_become_rgb(height: int, width: int, channels: int | None) -> None:
    shape = (height, width) if channels is None else (height, width, channels)
    frame = as_rgb_frame(np.full(shape, 7, dtype=np.uint8))
    assert frame.shape == (height, width, 3)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_anything_but_image_error(data: bytes) -> None:
    try:
        frame = load_image(data)
    except ImageError:
        return
    assert frame.ndim == 3 and frame.shape[2] == 3

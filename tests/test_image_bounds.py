"""Images are decoded within a memory budget: shrunk while decoded, refused when they cannot be."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageOps

from agent.commands.signing import CommandSecurity, public_key_text, sign_request
from agent.config import CommandSettings
from agent.errors import ImageError
from agent.recognition.enrollment import ENROLL_SIDE
from agent.vision.image import MAX_PIXELS, MAX_SIDE, load_image
from agent.vision.pipeline import FacePipeline
from scripts._hostile import flat_jpeg, flat_png
from tests.support.commands import NOW, make_device


def test_a_7000_pixel_square_png_is_refused_before_decoding() -> None:
    data = flat_png(7000, 7000, "RGBA")
    assert len(data) < 250_000
    with pytest.raises(ImageError, match=f"7000x7000, over the {MAX_PIXELS} pixel limit"):
        load_image(data)


def test_a_7000_pixel_square_jpeg_is_decoded_reduced() -> None:
    data = flat_jpeg(7000, 7000)
    for side in (MAX_SIDE, ENROLL_SIDE):
        height, width, _ = load_image(data, max_side=side).shape
        assert width == height and 7000 // 8 <= width <= side and width * height <= MAX_PIXELS


def test_a_large_progressive_jpeg_is_refused() -> None:
    with pytest.raises(ImageError, match="progressive JPEG"):
        load_image(flat_jpeg(4000, 3000, progressive=True))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_a_png_under_the_limit_is_shrunk_before_its_mode_is_converted(mode: str) -> None:
    frame = load_image(flat_png(3000, 2400, mode, 16 if mode == "L" else 8), max_side=1000)
    assert frame.shape == (800, 1000, 3) and frame.dtype == np.uint8


def test_photos_up_to_the_enrollment_side_decode_exactly_as_a_full_decode(lfw_faces: list[Path]) -> None:
    for path in lfw_faces[::200]:
        with Image.open(path) as image:
            full = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        assert np.array_equal(load_image(path, max_side=ENROLL_SIDE), full), path


def test_an_enroll_command_with_a_7000_pixel_png_is_refused_with_the_reason(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    key = Ed25519PrivateKey.generate()
    commands = CommandSettings(public_keys=(public_key_text(key),))
    device = make_device(
        tmp_path, pipeline, commands=commands, security=CommandSecurity.from_settings(commands, "dev1")
    )
    images = [{"data": base64.b64encode(flat_png(7000, 7000, "RGBA")).decode()}]
    request = {"request_id": "big", "origin": "ops", "args": {"name": "Nobody", "images": images}}
    reply = device.send("enroll", json.dumps(sign_request(key, "dev1", "enroll", request, now=NOW)).encode())
    assert reply["status"] == "error" and reply["error"]["code"] == "bad_request"
    assert f"over the {MAX_PIXELS} pixel limit" in reply["error"]["message"]

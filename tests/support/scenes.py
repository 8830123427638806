"""Frames composed from the real photos in ../shared/data, as scripts/bench_crowd.py composes a crowd: LFW faces
(the middle 130x130 of a 250x250 deep-funneled photo, scaled to 120x120) pasted on a landscape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.data import POWELL, bush, powell

BACKGROUND = "negatives/places365_mountains.jpg"
FRAME_SIZE = (640, 480)


def two_faces(shared_data: Path, shift: int = 0) -> np.ndarray:
    """Colin Powell and George W. Bush side by side, both moved `shift` pixels to the right (a scene that drifts)."""
    canvas = Image.open(shared_data / BACKGROUND).convert("RGB").resize(FRAME_SIZE)
    for photo, (x, y) in ((powell(shared_data, POWELL[0]), (110, 180)), (bush(shared_data), (410, 180))):
        face = Image.open(photo).convert("RGB").crop((60, 60, 190, 190)).resize((120, 120))
        canvas.paste(face, (x + shift, y))
    return np.asarray(canvas)

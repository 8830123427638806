"""Where the test data is: the repository's samples, and the real face photos in ../shared/data.

The shared folder sits beside the checkout (FACEAGENT_SHARED_DATA names another); a test that needs it is
skipped with a message saying where it was looked for, through the `shared_data` fixture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.config import GallerySettings, matching
from agent.vision.embedder import stated_gallery
from agent.vision.modelstore import ModelStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "hamilton_frame_0100.jpg"  # one frame of the clip, with the performer's face
SAMPLE_CLIP = REPO / "samples" / "hamilton_clip.mp4"
FAKES = REPO / "tests" / "support" / "fakes"  # first on PYTHONPATH, `import picamera2` finds the fake
SHARED_DATA = Path(os.environ.get("FACEAGENT_SHARED_DATA", REPO.parent / "shared" / "data"))

EMBEDDER_ID = "dlib-resnet29-int8"  # dlib int8, the embedder tests that need dlib's figures open by name
_DEFAULT = ModelStore(None).spec(None, "embedder")
DEFAULT_EMBEDDER_ID = _DEFAULT.id  # the manifest's default embedder: what a device runs with nothing set
DEFAULT_DIMENSIONS = int(_DEFAULT.raw["output"]["shape"][-1])  # its vector's length
# The matching threshold a device uses with nothing set: the default embedder's stated one, else the built-in.
DEFAULT_THRESHOLD = matching(GallerySettings(), stated_gallery(_DEFAULT.raw), _DEFAULT.id).threshold

# Relative to the shared data folder.
CLIP = "sequence/hamilton_clip"
CLIP_FRAMES = f"{CLIP}/frames"  # 275 frames of a stage performance
CLIP_ENROLL = f"{CLIP}/enroll/Lin-Manuel_Miranda.png"  # the performer, for enrolling him
BRICK = "negatives/skimage_brick.png"  # no face in it

POWELL = ["0040", "0133", "0170"]  # frontal photos of Colin Powell, enough to enroll him
POWELL_PROBE = "0234"  # another one, not enrolled


def copy_clip_frames(shared_data: Path, folder: Path, count: int) -> Path:
    """`folder` with the clip's first `count` frames: a short scene of the agent's own."""
    folder.mkdir()
    for frame in sorted((shared_data / CLIP_FRAMES).iterdir())[:count]:
        shutil.copy(frame, folder / frame.name)
    return folder


def need_shared() -> Path:
    """The shared data folder, or a skip that says where it was looked for."""
    if not (SHARED_DATA / "pairs.tsv").is_file():
        pytest.skip(f"shared face data not found at {SHARED_DATA} (set FACEAGENT_SHARED_DATA to its folder)")
    return SHARED_DATA


def powell(shared_data: Path, number: str) -> Path:
    return shared_data / "faces-lfw" / "Colin_Powell" / f"Colin_Powell_{number}.jpg"


def bush(shared_data: Path) -> Path:
    """One photo of George W. Bush: a real face that is nobody enrolled."""
    return sorted((shared_data / "faces-lfw" / "George_W_Bush").glob("*.jpg"))[0]

"""Shared fixtures: the real models, the real pipeline, and the real face photos in ../shared/data."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from agent.vision.image import load_image
from agent.vision.modelstore import default_models_dir
from agent.vision.pipeline import FacePipeline, PipelineOptions

pytest_plugins = ["tests.broker"]  # a real Mosquitto, certificates, observers

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FACEAGENT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need_shared() -> Path:
    if not (SHARED_DATA / "pairs.tsv").is_file():
        pytest.skip(f"shared face data not found at {SHARED_DATA} (set FACEAGENT_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need_shared()


@pytest.fixture(scope="session")
def lfw_pairs(shared_data: Path) -> list[tuple[int, bool, Path, Path]]:
    with open(shared_data / "pairs.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(int(r["fold"]), r["same"] == "1", shared_data / r["path_a"], shared_data / r["path_b"]) for r in rows]


@pytest.fixture(scope="session")
def lfw_faces(lfw_pairs: list[tuple[int, bool, Path, Path]]) -> list[Path]:
    """Every distinct LFW image the official pairs use, in a stable order."""
    return sorted({p for _, _, a, b in lfw_pairs for p in (a, b)})


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return default_models_dir()


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineOptions())


@pytest.fixture
def models_copy(tmp_path: Path, models_dir: Path) -> Path:
    """A private copy of the models directory that a test may tamper with."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


@pytest.fixture(scope="session")
def sample_frame():
    return load_image(REPO / "samples" / "hamilton_frame_0100.jpg")


@pytest.fixture(scope="session")
def operator_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test operator's command key as a PEM file, for `ctl --sign-key` (devices made by the fixtures trust it)."""
    from tests.command_fixtures import write_operator_key

    return write_operator_key(tmp_path_factory.mktemp("operator"))

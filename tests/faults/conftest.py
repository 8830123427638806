"""Fault-suite fixtures; the helpers are in tests/support/faults.py and tests/support/agent_process.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import CLIP_FRAMES


@pytest.fixture(scope="session")
def frames(shared_data: Path) -> Path:
    return shared_data / CLIP_FRAMES

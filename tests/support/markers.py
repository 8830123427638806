"""Collection rules on markers: what keeps `pytest -m "not slow"` a fast loop."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest


def require_marker(items: Iterable[pytest.Item], folder: Path, marker: str) -> None:
    """Stop the run (a usage error, before any test runs) when a test under `folder` lacks `marker`."""
    missing = [i.nodeid for i in items if i.path.is_relative_to(folder) and i.get_closest_marker(marker) is None]
    if missing:
        listed = "\n  ".join(missing)
        raise pytest.UsageError(f"every test under {folder} must be marked {marker!r}; these are not:\n  {listed}")

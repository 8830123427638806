"""Small comparisons several test modules make: of images, of embeddings, of files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images (0: identical; a few units: the same scene re-encoded)."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def file_sha256(path: Path) -> str:
    """The file's bytes, as a digest: for "left untouched" checks."""
    return hashlib.sha256(path.read_bytes()).hexdigest()

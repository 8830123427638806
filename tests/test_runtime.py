"""The TFLite runtime is chosen once and reported."""

from __future__ import annotations

import pytest

from agent.errors import ModelError
from agent.vision.runtime import select_runtime


def test_a_runtime_is_selected_and_described() -> None:
    runtime = select_runtime()
    assert runtime.name in ("ai-edge-litert", "tflite-runtime")
    assert runtime.version in runtime.describe()


def test_tflite_runtime_can_be_forced() -> None:
    assert select_runtime("tflite-runtime").name == "tflite-runtime"


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown TFLite runtime"):
        select_runtime("onnxruntime")


def test_garbage_model_bytes_give_a_model_error() -> None:
    with pytest.raises(ModelError, match="could not load"):
        select_runtime().load(b"definitely not a flatbuffer", num_threads=1)

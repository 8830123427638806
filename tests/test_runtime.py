"""The TFLite runtime is chosen once and reported: ai-edge-litert first, tflite-runtime as the fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from agent.errors import ModelError
from agent.vision.runtime import BACKENDS, installed_runtimes, select_runtime


def _select_with_blocked(*modules: str) -> subprocess.CompletedProcess[str]:
    """`select_runtime()` in a fresh interpreter where `modules` cannot be imported (as if not installed)."""
    code = textwrap.dedent(f"""
        import sys
        for name in {list(modules)!r}:
            sys.modules[name] = None  # the import system's own "not found" marker
        from agent.errors import ModelError
        from agent.vision.runtime import select_runtime
        try:
            print(select_runtime().name)
        except ModelError as exc:
            print("ModelError:", exc)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)


def _installed(name: str) -> None:
    if name not in [r.name for r in installed_runtimes()]:
        extra = next(b.extra for b in BACKENDS if b.name == name)
        pytest.skip(f"{name} is not installed here: pip install 'faceagent[{extra}]'")


def test_a_runtime_is_selected_and_described() -> None:
    runtime = select_runtime()
    assert runtime.name in ("ai-edge-litert", "tflite-runtime")
    assert runtime.version in runtime.describe()


def test_the_first_installed_runtime_in_order_of_preference_is_the_default() -> None:
    assert select_runtime().name == installed_runtimes()[0].name


def test_ai_edge_litert_is_preferred_where_it_is_installed() -> None:
    _installed("ai-edge-litert")
    assert select_runtime().name == "ai-edge-litert"


def test_tflite_runtime_is_the_fallback_when_litert_cannot_be_imported() -> None:
    _installed("tflite-runtime")
    assert _select_with_blocked("ai_edge_litert").stdout.strip() == "tflite-runtime"


def test_without_any_runtime_the_error_says_how_to_install_one() -> None:
    out = _select_with_blocked("ai_edge_litert", "tflite_runtime").stdout
    assert out.startswith("ModelError: no TFLite runtime can be loaded")
    for backend in BACKENDS:
        assert f"pip install 'faceagent[{backend.extra}]'" in out


@pytest.mark.parametrize("name", [b.name for b in BACKENDS])
def test_each_installed_runtime_can_be_forced(name: str) -> None:
    _installed(name)
    assert select_runtime(name).name == name


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown TFLite runtime"):
        select_runtime("onnxruntime")


@pytest.mark.parametrize("name", [b.name for b in BACKENDS])
def test_garbage_model_bytes_give_a_model_error(name: str) -> None:
    _installed(name)
    with pytest.raises(ModelError, match="could not load"):
        select_runtime(name).load(b"definitely not a flatbuffer", num_threads=1)

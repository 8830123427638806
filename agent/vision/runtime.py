"""TFLite runtimes: ai-edge-litert when installed, else tflite-runtime, behind one small interface.

Both expose the same `Interpreter` class; only the import differs. The choice is made once, at
start-up, and reported (`Runtime.describe()`), so a fleet operator can see which one a device runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.errors import ModelError

# (distribution name, module holding `Interpreter`), in order of preference.
_BACKENDS: tuple[tuple[str, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
)


class Interpreter(Protocol):
    """The part of the TFLite interpreter API the agent uses (both runtimes provide it)."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None: ...
    def get_tensor(self, tensor_index: int) -> np.ndarray: ...
    def invoke(self) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """A loaded TFLite runtime: its name, version and interpreter class."""

    name: str
    version: str
    interpreter_class: Any

    def describe(self) -> str:
        return f"{self.name} {self.version}"

    def load(self, model_content: bytes, num_threads: int) -> Interpreter:
        with _native_stderr() as native_log:
            try:
                interpreter = self.interpreter_class(model_content=model_content, num_threads=num_threads)
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                detail = " ".join(line for line in native_log() if not line.startswith("INFO:"))
                raise ModelError(f"{self.describe()} could not load the model: {exc} {detail}".strip()) from exc
        return interpreter


@contextlib.contextmanager
def _native_stderr() -> Iterator[Callable[[], list[str]]]:
    """Capture what the C++ runtime writes to fd 2 while a model loads.

    The runtime announces "INFO: Created TensorFlow Lite XNNPACK delegate" on every load, which
    would break one-line CLI errors and clutter the journal. On failure the caller puts the
    captured lines into its error; on success anything but that notice is passed through.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: _read_lines(sink)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        passed_through = [line for line in _read_lines(sink) if not line.startswith("INFO: Created TensorFlow Lite")]
    if passed_through:
        print("\n".join(passed_through), file=sys.stderr)


def _read_lines(sink: Any) -> list[str]:
    sink.flush()
    sink.seek(0)
    return sink.read().decode(errors="replace").splitlines()


def select_runtime(preferred: str | None = None) -> Runtime:
    """Import the first available runtime (or exactly `preferred`, a distribution name)."""
    candidates = [b for b in _BACKENDS if preferred in (None, b[0])]
    if not candidates:
        names = ", ".join(name for name, _ in _BACKENDS)
        raise ModelError(f"unknown TFLite runtime {preferred!r}; choose one of: {names}")
    failures = []
    for dist, module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            failures.append(f"{dist}: {exc}")
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return Runtime(dist, version, module.Interpreter)
    raise ModelError(
        "no TFLite runtime is installed: pip install 'tflite-runtime' 'numpy<2' "
        "(or: pip install 'faceagent[litert]'); tried " + "; ".join(failures)
    )


@dataclass
class InvokeClock:
    """Time spent inside `invoke()`, so benchmarks can split model cost from our own overhead."""

    seconds: float = 0.0
    calls: int = 0


@dataclass
class TfliteModel:
    """One interpreter with a single input tensor, built once and reused for every call."""

    interpreter: Interpreter
    clock: InvokeClock = field(default_factory=InvokeClock)

    def __post_init__(self) -> None:
        (self.input_detail,) = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        self.input_shape = tuple(int(n) for n in self.input_detail["shape"])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Invoke on one input; returns outputs by tensor name (copies, safe to keep)."""
        self.interpreter.set_tensor(self.input_detail["index"], batch)
        start = time.perf_counter()
        self.interpreter.invoke()
        self.clock.seconds += time.perf_counter() - start
        self.clock.calls += 1
        return {d["name"]: self.interpreter.get_tensor(d["index"]) for d in self.output_details}

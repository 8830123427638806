"""TFLite runtimes: ai-edge-litert when installed, else tflite-runtime, behind one small interface.

Both expose the same `Interpreter` class; only the import differs. The choice is made once, at
start-up, and reported (`Runtime.describe()`), so a fleet operator can see which one a device runs.
ai-edge-litert comes first: its XNNPACK delegate runs fully int8 models, which tflite-runtime 2.14's
does not, so the int8 embedder's invoke is about 7x faster (scripts/bench_embedder.py). The two give
the same decisions (tests/test_runtime_parity.py); tflite-runtime stays for machines litert's wheels
do not reach, and can be forced with `models.runtime`.
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


@dataclass(frozen=True)
class Backend:
    """A runtime we know: its distribution, the module holding `Interpreter`, and the extra that installs it."""

    name: str
    module: str
    extra: str
    numpy_below: int | None = None  # the NumPy major version it was built against is below this


BACKENDS: tuple[Backend, ...] = (  # in order of preference
    Backend("ai-edge-litert", "ai_edge_litert.interpreter", "litert"),
    # Built against NumPy 1.x: under 2.x it imports, then fails on the first interpreter.
    Backend("tflite-runtime", "tflite_runtime.interpreter", "tflite", numpy_below=2),
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
    candidates = [b for b in BACKENDS if preferred in (None, b.name)]
    if not candidates:
        names = ", ".join(b.name for b in BACKENDS)
        raise ModelError(f"unknown TFLite runtime {preferred!r}; choose one of: {names}")
    failures = []
    numpy_major = int(np.__version__.split(".")[0])
    for backend in candidates:
        if backend.numpy_below is not None and numpy_major >= backend.numpy_below:
            failures.append(f"{backend.name}: needs NumPy < {backend.numpy_below}, this is {np.__version__}")
            continue
        try:
            module = importlib.import_module(backend.module)
        except ImportError as exc:
            failures.append(f"{backend.name}: {exc}")
            continue
        try:
            version = importlib.metadata.version(backend.name)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return Runtime(backend.name, version, module.Interpreter)
    install = " or ".join(f"pip install 'faceagent[{b.extra}]'" for b in candidates)
    what = f"the TFLite runtime {preferred} cannot" if preferred else "no TFLite runtime can"
    raise ModelError(f"{what} be loaded ({'; '.join(failures)}); install: {install}")


def installed_runtimes() -> list[Runtime]:
    """Every runtime that imports here, in order of preference (tests and benchmarks run each)."""
    runtimes = []
    for backend in BACKENDS:
        try:
            runtimes.append(select_runtime(backend.name))
        except ModelError:
            continue
    return runtimes


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

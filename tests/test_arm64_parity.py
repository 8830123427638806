"""What must hold on every architecture the agent ships to: the subset `scripts/arm64_check.sh` runs
inside the arm64 Bookworm chroot (`pytest -m arm64`), and the normal suite runs on x86-64.

Each test is self-contained on one machine (no reference files from another one): the runtime and its
NumPy, every shipped model loading and running in this interpreter, int8 arithmetic agreeing with the
float32 model, determinism, clear verdicts on real pairs, and the agent importing without the Pi's
camera stack. The cross-architecture comparison (x86 vs arm64 embeddings of the same faces) is done by
the script itself, with `scripts/arm64_embeddings.py`.

Only pytest and hypothesis are needed (dlib has no place here: it is the x86 reference elsewhere).
"""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.vision.embedder import distance
from agent.vision.fusion import is_fused
from agent.vision.image import load_image
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions, most_central
from agent.vision.runtime import TfliteModel, select_runtime
from tests.support.compare import cosine

pytestmark = [pytest.mark.arm64, pytest.mark.slow]  # the arm64 parity check (run on arm64 by scripts/arm64_check.sh)

# Chosen from the arm64 check's fixed pairs for their wide margins at the 0.6 threshold (x86: 0.37, 0.93).
FUSED_ID = "fused-dlib-mobileface-mixed"
SAME_PAIR = ("faces-lfw/LeBron_James/LeBron_James_0001.jpg", "faces-lfw/LeBron_James/LeBron_James_0004.jpg")
DIFFERENT_PAIR = ("faces-lfw/George_Foreman/George_Foreman_0002.jpg", "faces-lfw/Ralph_Goodale/Ralph_Goodale_0001.jpg")


def test_runtime_and_numpy_fit_together() -> None:
    runtime = select_runtime()
    print(f"{platform.machine()}: {runtime.describe()}, numpy {np.__version__}")
    if runtime.name == "tflite-runtime":
        # tflite-runtime 2.14 is built against NumPy 1.x: with 2.x it imports, then fails on first use.
        assert int(np.__version__.split(".")[0]) == 1


def test_every_shipped_model_loads_and_runs_here(models_dir: Path) -> None:
    store = ModelStore(models_dir)
    runtime = select_runtime()
    for spec in store.verify_all():
        if is_fused(spec):  # a definition file naming its members, each loaded here on its own
            continue
        model = TfliteModel(runtime.load(store.read_verified(spec), 2))
        detail = model.input_detail
        grey = np.full(model.input_shape, 0.25, dtype=detail["dtype"])
        outputs = model.run(grey)
        assert outputs, spec.id
        for name, value in outputs.items():
            assert np.all(np.isfinite(value)), f"{spec.id}: output {name} is not finite on {platform.machine()}"


def test_the_fused_embedder_runs_here(sample_frame) -> None:
    """Its members on their own alignments, the mirrored chips, the weighted concatenation: a unit vector."""
    fused = FacePipeline(PipelineOptions(embedder=FUSED_ID))
    (face,) = fused.detect(sample_frame)
    vector = fused.embed_face(sample_frame, face).embedding
    assert vector.shape == (384,) and np.all(np.isfinite(vector))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4


@pytest.fixture(scope="module")
def dlib() -> FacePipeline:
    """dlib int8 by name: the figures below (its float32 twin, its euclidean threshold 0.6) are dlib's."""
    return FacePipeline(PipelineOptions(embedder="dlib-resnet29-int8", threads=1))


def test_int8_embedder_agrees_with_float32_on_this_architecture(dlib: FacePipeline, sample_frame) -> None:
    """int8 kernels differ per CPU (x86 SSE/AVX vs ARM NEON/dotprod): their result must still match float32."""
    pipeline = dlib
    float32 = FacePipeline(PipelineOptions(embedder="dlib-resnet29-float32"))
    (face,) = pipeline.detect(sample_frame)
    int8_vector = pipeline.embed_face(sample_frame, face).embedding
    float_vector = float32.embed_face(sample_frame, face).embedding
    # Measured on x86-64: cosine 0.99939, distance 0.051 (the threshold is 0.6).
    assert cosine(int8_vector, float_vector) > 0.998
    assert distance(int8_vector, float_vector) < 0.1


def test_pipeline_is_deterministic_here(pipeline: FacePipeline, sample_frame) -> None:
    first = pipeline.analyse(sample_frame)
    second = pipeline.analyse(sample_frame)
    assert len(first) == len(second) == 1
    np.testing.assert_array_equal(first[0].chip, second[0].chip)
    np.testing.assert_array_equal(first[0].embedding, second[0].embedding)
    right_eye, left_eye = first[0].face.keypoints[0], first[0].face.keypoints[1]
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left


def test_real_pairs_get_clear_verdicts(dlib: FacePipeline, shared_data: Path) -> None:
    pipeline = dlib
    threshold = pipeline.embedder.info.threshold

    def embedding(relative: str) -> np.ndarray:
        frame = load_image(shared_data / relative)
        face = most_central(pipeline.detect(frame), frame.shape[1], frame.shape[0])
        assert face is not None, relative
        return pipeline.embed_face(frame, face).embedding

    same = distance(*map(embedding, SAME_PAIR))
    different = distance(*map(embedding, DIFFERENT_PAIR))
    assert same < threshold - 0.1, same
    assert different > threshold + 0.1, different


def test_agent_imports_without_the_camera_stack() -> None:
    """picamera2 and libcamera come from the Raspberry Pi OS archive, never from PyPI or Debian.

    The agent must import (and the CLI must work) where they are absent: picamera2 is imported only when
    a Pi camera is opened (the next test checks that error message). The operator's console is an extra
    (`[console]`): its web side is imported only where that extra is installed, its subcommand always.
    """
    code = textwrap.dedent(
        """
        import importlib, importlib.abc, importlib.util, pkgutil, sys
        import agent

        class NoCamera(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("picamera2", "libcamera"):
                    raise ImportError(f"No module named {name!r} (blocked: not on this machine)")
                return None

        sys.meta_path.insert(0, NoCamera())
        names = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.") if not m.name.endswith("__main__")]
        if importlib.util.find_spec("starlette") is None:  # the console's web side is the [console] extra
            names = [name for name in names if not name.startswith("agent.cli.console.")]
        importlib.import_module("agent.cli.main")  # the entry point first, as `faceagent` imports them
        for name in names:
            importlib.import_module(name)
        print(len(names))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 5


def test_without_picamera2_the_camera_source_says_how_to_install_it() -> None:
    """The lazy import's own message, where picamera2 is really absent (the arm64 chroot, any x86 machine)."""
    picamera = pytest.importorskip("agent.sources.picamera", reason="no Pi camera source in this version")
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here (a Raspberry Pi): nothing to check")
    from agent.sources import SourceUnavailable

    with pytest.raises(SourceUnavailable) as caught:
        picamera.PicameraSource().open()
    assert "sudo apt install python3-picamera2" in str(caught.value)

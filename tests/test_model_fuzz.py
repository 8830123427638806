"""The shipped .tflite files with hostile bytes: flipped, truncated, extended, overwritten, zeroed, inserted.

Two ways in. Under the manifest's sha256 (a file damaged or swapped on disk), every mutation is refused by its
hash before any byte reaches the runtime. Under a manifest made for the mutated bytes (a release signed by a
trusted key that is nonetheless broken), the model-update path stages it, verifies size, hash and signature
(all good), and checks it in a child process on the built-in test faces: a mutation that breaks the model is a
FAILED job at `load` (the runtime refused it, or crashed on it, in the child) or `check` (wrong answers), the
models in use run on, and the test process is never touched. A mutation that leaves a working model (a weight
nudged) may pass the same check, as it should.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.cli.main import main
from agent.errors import ModelError
from agent.modelupdate.install import installed_models_dir
from agent.vision.modelstore import ModelStore, default_models_dir
from tests.support.commands import data
from tests.support.model_updates import make_updates

pytestmark = pytest.mark.slow  # fuzzing: mutated models, 20 checked in child processes, counted by its last test

HASHED = 150  # mutations refused by the manifest's sha256
SIGNED = 20  # mutations shipped as signed updates, each checked in a child process (about 1 s each)
MODELS = {  # manifest id -> (role, file)
    "blazeface-short": ("detector", "face_detection_short_range.tflite"),
    "dlib-resnet29-int8": ("embedder", "dlib_resnet29_int8.tflite"),
}

tried: Counter[str] = Counter()


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    return {model_id: (default_models_dir() / file).read_bytes() for model_id, (_, file) in MODELS.items()}


# ------------------------------------------------------------------------------------ mutations


@dataclass(frozen=True)
class Mutation:
    kind: str
    at: int
    size: int
    seed: int

    def apply(self, content: bytes) -> bytes:
        """The mutated bytes; offsets are taken modulo the length, so one mutation fits every model."""
        n = len(content)
        at = self.at % n
        noise = np.random.default_rng(self.seed).integers(0, 256, self.size, dtype=np.uint8).tobytes()
        if self.kind == "flip":  # a few bytes XORed with a non-zero mask
            out = bytearray(content)
            for index, mask in enumerate(noise[:8]):
                position = (at + index * 7919) % n
                out[position] ^= mask or 0x5A
            return bytes(out)
        if self.kind == "truncate":
            return content[: at or 1]
        if self.kind == "extend":
            return content + noise
        if self.kind == "overwrite":
            return content[:at] + noise + content[at + self.size :]
        if self.kind == "zero":
            return content[:at] + bytes(self.size) + content[at + self.size :]
        return content[:at] + noise + content[at:]  # insert


# Offsets near the start (the flatbuffer's root table and vtables), anywhere, and near the end (buffers, metadata).
offsets = st.integers(0, 4095) | st.integers(0, 2**24) | st.integers(-4096, -1)
mutations = st.builds(
    Mutation,
    kind=st.sampled_from(["flip", "truncate", "extend", "overwrite", "zero", "insert"]),
    at=offsets,
    size=st.integers(1, 4096) | st.integers(4096, 262144),
    seed=st.integers(0, 2**32 - 1),
)


def mutate(content: bytes, mutation: Mutation) -> bytes:
    mutated = mutation.apply(content)
    assume(mutated != content)  # zeroing bytes that are zero already changes nothing
    return mutated


# ------------------------------------------------------------------------------------ under the manifest's hash


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped manifest and the two models mutated here (the others are not read)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "manifest.json").write_bytes((default_models_dir() / "manifest.json").read_bytes())
    return folder


@given(model_id=st.sampled_from(sorted(MODELS)), mutation=mutations)
@settings(max_examples=HASHED, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_mutated_model_is_refused_by_its_manifest_hash(
    models_folder: Path, originals: dict[str, bytes], model_id: str, mutation: Mutation
) -> None:
    _, file = MODELS[model_id]
    (models_folder / file).write_bytes(mutate(originals[model_id], mutation))
    store = ModelStore(models_folder)
    spec = store.specs[model_id]
    with pytest.raises(ModelError) as refused:
        store.read_verified(spec)
    assert str(models_folder / file) in str(refused.value) and f"expected sha256 {spec.sha256}" in str(refused.value)
    tried["refused by hash"] += 1


# ------------------------------------------------------------------------------------ signed, and broken


@given(model_id=st.sampled_from(sorted(MODELS)), mutation=mutations)
@settings(
    max_examples=SIGNED,
    deadline=None,
    derandomize=True,  # the same cases every run: each is a child process, and CI time is counted
    suppress_health_check=list(HealthCheck),
)
def test_a_signed_but_broken_model_fails_its_check_and_the_models_in_use_run_on(
    originals: dict[str, bytes], model_id: str, mutation: Mutation
) -> None:
    role, file = MODELS[model_id]
    content = mutate(originals[model_id], mutation)
    with tempfile.TemporaryDirectory() as folder:
        updates = make_updates(Path(folder))
        outcome = updates.send("job-1", content, model_id=model_id, role=role, file=file, version="2")
        if outcome["status"] == "SUCCEEDED":  # the mutation left a model that gets the test faces right
            figures = outcome["check"]
            assert figures["same_max"] < figures["threshold"] <= figures["other_min"], outcome
            tried["passed its check"] += 1
            return
        assert outcome["status"] == "FAILED" and outcome["step"] in ("load", "check"), outcome
        assert outcome["reason"] and "\n" not in outcome["reason"], outcome
        assert installed_models_dir(updates.device.store_path) is None and updates.live.swaps == 0
        assert data(updates.device.call("ping"))["pong"] is True
    tried[f"failed at {outcome['step']}"] += 1


# ------------------------------------------------------------------------------------ the manifest itself


@pytest.fixture
def manifest(models_copy: Path) -> Iterator[dict]:
    document = json.loads((models_copy / "manifest.json").read_text())
    yield document
    (models_copy / "manifest.json").write_text(json.dumps(document))


BROKEN_ENTRIES = [
    ("bytes", "abc"),
    ("bytes", None),
    ("file", 5),
    ("file", "a\x00b"),
]


@pytest.mark.parametrize("key, value", BROKEN_ENTRIES, ids=[f"{k}={v!r}" for k, v in BROKEN_ENTRIES])
def test_a_manifest_entry_of_the_wrong_type_is_refused_as_a_model_error(
    models_copy: Path, capsys: pytest.CaptureFixture[str], key: str, value: object
) -> None:
    document = json.loads((models_copy / "manifest.json").read_text())
    document["models"][0][key] = value
    (models_copy / "manifest.json").write_text(json.dumps(document))
    assert main(["models", "verify", "--models", str(models_copy)]) == 2
    assert capsys.readouterr().err.startswith("faceagent: ")


def test_the_fuzzing_tried_enough_models() -> None:
    signed = sum(count for name, count in tried.items() if name != "refused by hash")
    assert tried["refused by hash"] >= HASHED and signed >= SIGNED, f"only {dict(tried)}: run the whole module"
    print(f"\nmodel mutations: {dict(tried)}")

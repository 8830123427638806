"""Model releases only move forward: an older or equal signed release is refused at `verify`, across restarts.

Signed `model_update` commands through the real dispatcher, the real `ModelUpdater` and the real model check
(tests/support/model_updates.py), with the shipped int8 embedder as the release's bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.modelupdate.install import PREVIOUS_MANIFEST, installed_models_dir, state_models_dir
from agent.modelupdate.update import RELEASE_FLOOR, release_version
from agent.vision.modelstore import MANIFEST_NAME, ModelStore, default_models_dir
from agent.vision.pipeline import FacePipeline
from tests.support.commands import data, device_trusting, error
from tests.support.model_updates import Live, Updates, signed_release, updater

DEVICE = "dev1"


@dataclass
class SignedUpdates(Updates):
    """Every phase signed by the operator key, as state-changing commands must be."""

    def call(self, phase: str, **args: Any) -> dict:
        return self.device.call_as(self.key, "model_update", {"phase": phase, **args})

    def release(self, job_id: str, content: bytes, release: dict[str, Any]) -> dict:
        """A whole job for an already signed release (as a replay sends it); the commit's reply data."""
        assert data(self.call("begin", job_id=job_id, **release))["status"] == "IN_PROGRESS"
        assert all(reply["status"] == "ok" for reply in self.chunks(job_id, content))
        return data(self.call("commit", job_id=job_id))

    def restart(self) -> None:
        """What a restarted service builds: a new updater on the same state directory."""
        self.device.services.model_updates = updater(self.key, self.live)

    def installed(self) -> dict[str, Any]:
        return ModelStore(installed_models_dir(self.device.store_path)).spec(None, "embedder").raw


@pytest.fixture
def updates(tmp_path: Path, pipeline: FacePipeline) -> SignedUpdates:
    key = Ed25519PrivateKey.generate()
    device = device_trusting(tmp_path, pipeline, key, DEVICE)
    live = Live(device, pipeline)
    device.services.model_updates = updater(key, live)
    return SignedUpdates(device, live, key, live.embedding(), default_models_dir())


def refused_as_rollback(outcome: dict, floor: str) -> bool:
    return outcome["status"] == "FAILED" and outcome["step"] == "verify" and f"not above {floor}" in outcome["reason"]


@pytest.mark.slow  # a real child process checks the candidate model
def test_an_older_signed_release_replayed_under_a_new_job_id_is_refused(updates: SignedUpdates, int8: bytes) -> None:
    old = signed_release(updates.key, int8, version="2")
    assert updates.release("job-1", int8, old)["status"] == "SUCCEEDED"
    assert updates.release("job-2", int8, signed_release(updates.key, int8, version="3"))["status"] == "SUCCEEDED"
    assert refused_as_rollback(updates.release("job-3", int8, old), "3")
    assert updates.installed()["version"] == "3" and updates.installed()["installed"]["job_id"] == "job-2"
    assert updates.live.swaps == 2


@pytest.mark.slow  # a real child process checks the candidate model
def test_an_equal_version_is_refused(updates: SignedUpdates, int8: bytes) -> None:
    assert updates.release("job-1", int8, signed_release(updates.key, int8, version="2"))["status"] == "SUCCEEDED"
    again = signed_release(updates.key, int8, version="2", entry={"threshold": 0.5})  # another release, the same number
    assert refused_as_rollback(updates.release("job-2", int8, again), "2")
    assert updates.installed()["installed"]["job_id"] == "job-1" and updates.live.swaps == 1


def test_a_release_not_above_the_shipped_models_is_refused(updates: SignedUpdates, int8: bytes) -> None:
    assert refused_as_rollback(updates.release("job-1", int8, signed_release(updates.key, int8, version="1")), "1")
    assert installed_models_dir(updates.device.store_path) is None and updates.live.swaps == 0


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_restart_does_not_reset_the_floor(updates: SignedUpdates, int8: bytes) -> None:
    old = signed_release(updates.key, int8, version="2")
    assert updates.release("job-1", int8, signed_release(updates.key, int8, version="3"))["status"] == "SUCCEEDED"
    updates.restart()
    assert refused_as_rollback(updates.release("job-2", int8, old), "3")
    assert updates.installed()["version"] == "3"


@pytest.mark.slow  # a real child process checks the candidate model
def test_the_floor_outlives_the_installed_manifest(updates: SignedUpdates, int8: bytes) -> None:
    """With the installed manifests gone the agent falls back to the shipped models; the floor stays."""
    assert updates.release("job-1", int8, signed_release(updates.key, int8, version="3"))["status"] == "SUCCEEDED"
    models_dir = state_models_dir(updates.device.store_path)
    (models_dir / MANIFEST_NAME).unlink()
    (models_dir / PREVIOUS_MANIFEST).unlink()
    settings = updates.device.current[0]
    updates.device.current[0] = replace(settings, models=replace(settings.models, dir=None))
    updates.restart()
    assert json.loads((models_dir / RELEASE_FLOOR).read_text()) == {"embedder": "3"}
    assert refused_as_rollback(updates.release("job-2", int8, signed_release(updates.key, int8, version="2")), "3")


def test_a_damaged_floor_refuses_every_release(updates: SignedUpdates, int8: bytes) -> None:
    """Read as "no floor", a damaged file would let any old release back in."""
    models_dir = state_models_dir(updates.device.store_path)
    models_dir.mkdir(parents=True)
    (models_dir / RELEASE_FLOOR).write_text('{"embedder": "3"')
    outcome = updates.release("job-1", int8, signed_release(updates.key, int8, version="9"))
    assert outcome["status"] == "FAILED" and outcome["step"] == "verify" and "unreadable" in outcome["reason"]
    assert updates.live.swaps == 0


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_failed_install_does_not_raise_the_floor(updates: SignedUpdates, int8: bytes) -> None:
    release = signed_release(updates.key, int8, version="3")
    updates.live.broken = True
    assert updates.release("job-1", int8, release)["step"] == "swap"
    updates.live.broken = False
    assert updates.release("job-2", int8, release)["status"] == "SUCCEEDED"


def test_a_version_that_is_not_dotted_numbers_is_refused_at_begin(updates: SignedUpdates, int8: bytes) -> None:
    reply = updates.call("begin", job_id="job-1", **signed_release(updates.key, int8, version="2025.06.1-beta"))
    assert error(reply) == "bad_request" and "args.version" in reply["error"]["message"]


@pytest.mark.parametrize(
    "lower, higher", [("2", "10"), ("2026.9", "2026.11"), ("2026.11", "2026.11.1"), ("1", "2025.06.1")]
)
def test_versions_compare_as_numbers(lower: str, higher: str) -> None:
    assert release_version(lower) < release_version(higher)


def test_trailing_zeros_do_not_make_a_new_version() -> None:
    assert release_version("2026.11") == release_version("2026.11.0") == release_version("2026.011.00")


def test_ctl_refuses_a_version_it_cannot_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    arguments = ["--mqtt", "mqtt://127.0.0.1:1", "--device", "d", "--model-id", "m", "--role", "embedder"]
    with pytest.raises(SystemExit) as usage:
        main(["ctl", "model-update", *arguments, "--model-version", "v2", str(model)])
    assert usage.value.code == 2
    assert "is not a release version" in capsys.readouterr().err

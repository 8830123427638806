"""Model updates through the dispatcher: each way a job can end, and the models in use after it.

The device is the command side as the service wires it plus a `ModelUpdater` whose `apply` does at once what
the service's gallery thread and frame loop do (the new embedder's matcher built aside, then taken whole;
tests/support/model_updates.py). Every check of a candidate runs the real child process on the real test faces.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.commands.schema import MODEL_CHUNK_BYTES
from agent.commands.signing import public_key_text
from agent.config import load_settings
from agent.gallery.store import GalleryStore
from agent.modelupdate.install import PREVIOUS_MANIFEST, installed_models_dir, state_models_dir
from agent.modelupdate.update import MAX_MODEL_BYTES
from agent.vision.modelstore import MANIFEST_NAME, ModelStore
from agent.vision.pipeline import FacePipeline, PipelineOptions
from agent.vision.runtime import select_runtime
from tests.support.agent_process import enroll_cli, faceagent, start_agent
from tests.support.broker import Broker
from tests.support.commands import OPERATOR_TOML, data, error, write_private_key
from tests.support.data import EMBEDDER_ID as INT8
from tests.support.data import SAMPLE, SAMPLE_CLIP
from tests.support.model_updates import CHUNK, Updates, dlib_models, make_updates, signed_release

# ------------------------------------------------------------------------------------ model files


@pytest.fixture(scope="session")
def scrambled(int8: bytes) -> bytes:
    """The int8 model with each convolution's weights shuffled: it loads, and gives finite, input-dependent,
    meaningless embeddings (every face 0.06-0.20 from every other)."""
    interpreter = select_runtime().load(int8, 1)
    content, rng = bytearray(int8), np.random.default_rng(7)
    for detail in interpreter.get_tensor_details():
        if not detail["name"].startswith("Conv2D") or detail["dtype"] != np.int8:
            continue
        weights = interpreter.get_tensor(detail["index"]).tobytes()
        start = int8.find(weights)
        assert start > 0 and int8.count(weights) == 1
        content[start : start + len(weights)] = rng.permutation(np.frombuffer(weights, np.int8)).tobytes()
    return bytes(content)


@pytest.fixture(scope="session")
def mangled(int8: bytes) -> bytes:
    """Random bytes over the middle of the model, padding constants included: the runtime dies on it
    (a segfault with tflite-runtime 2.14) or refuses it."""
    content = bytearray(int8)
    content[1_000_000:4_500_000] = np.random.default_rng(0).integers(0, 256, 3_500_000, dtype=np.uint8).tobytes()
    return bytes(content)


@pytest.fixture
def updates(tmp_path: Path) -> Updates:
    return make_updates(tmp_path)


# ------------------------------------------------------------------------------------ good updates


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_new_version_of_the_model_in_use_goes_live(updates: Updates, int8: bytes) -> None:
    person = updates.enroll()
    outcome = updates.send("job-1", int8, version="2025.06.1")
    assert outcome["status"] == "SUCCEEDED" and outcome["embedder_changed"] is False
    assert outcome["previous"] == {"model_id": INT8, "sha256": hashlib.sha256(int8).hexdigest()}
    entry = ModelStore(installed_models_dir(updates.device.store_path)).spec(None, "embedder").raw
    assert entry["version"] == "2025.06.1" and entry["installed"]["job_id"] == "job-1"
    assert updates.live.swaps == 1 and updates.live.recognizes(person)
    assert outcome["people_needing_reenrollment"] == 0


@pytest.mark.slow  # a real child process checks the candidate model
def test_an_installed_model_is_a_new_file_beside_the_models_it_replaces(updates: Updates, int8: bytes) -> None:
    updates.send("job-1", int8)
    models_dir = state_models_dir(updates.device.store_path)
    manifest = json.loads((models_dir / MANIFEST_NAME).read_text())
    entry = next(e for e in manifest["models"] if e["id"] == INT8)
    assert entry["file"] == f"dlib_resnet29_int8.{hashlib.sha256(int8).hexdigest()[:12]}.tflite"
    assert (models_dir / "dlib_resnet29_int8.tflite").is_file()  # the previous file stays for a rollback
    assert ModelStore(models_dir).verify_all() and not (models_dir / ".staging" / "job-1").exists()


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_second_update_keeps_the_manifest_it_replaces(updates: Updates, int8: bytes) -> None:
    updates.send("job-1", int8, version="2")
    updates.send("job-2", int8, version="3")
    models_dir = state_models_dir(updates.device.store_path)
    previous = json.loads((models_dir / PREVIOUS_MANIFEST).read_text())
    assert next(e for e in previous["models"] if e["id"] == INT8)["version"] == "2"


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_new_embedder_id_leaves_enrolled_people_to_re_enroll(updates: Updates, int8: bytes) -> None:
    person = updates.enroll()
    outcome = updates.send("job-1", int8, model_id="dlib-resnet29-int8-b")
    assert outcome["status"] == "SUCCEEDED" and outcome["embedder_changed"] is True
    assert outcome["people_needing_reenrollment"] == 1 and outcome["templates_rebuilt"] == 0
    listing = data(updates.device.call("list_people"))
    assert listing["model_id"] == "dlib-resnet29-int8-b" and listing["people"][0]["needs_reenrollment"] is True
    assert len(updates.device.matcher) == 0 and not updates.live.recognizes(person)


@pytest.mark.slow  # a real child process checks the candidate model
def test_the_commit_reply_sends_the_renamed_count_under_both_spellings(updates: Updates, int8: bytes) -> None:
    updates.enroll()
    outcome = updates.send("job-1", int8, model_id="dlib-resnet29-int8-b")
    assert outcome["people_needing_reenrollment"] == outcome["people_needing_reenrolment"] == 1


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_new_embedder_id_rebuilds_templates_from_kept_chips(tmp_path: Path, int8: bytes) -> None:
    updates = make_updates(tmp_path, keep_chips=True)
    person = updates.enroll()
    outcome = updates.send("job-1", int8, model_id="dlib-resnet29-int8-b")
    assert outcome["templates_rebuilt"] == 1 and outcome["people_needing_reenrollment"] == 0
    assert updates.live.recognizes(person)
    with GalleryStore.open(updates.device.store_path) as store:
        assert store.template_counts()[person] == {INT8: 1, "dlib-resnet29-int8-b": 1}


# ------------------------------------------------------------------------------------ failures


def test_a_wrong_hash_fails_at_commit(updates: Updates, int8: bytes) -> None:
    other = bytearray(int8)
    other[-1] ^= 1
    assert updates.begin("job-1", int8)["status"] == "ok"
    updates.chunks("job-1", bytes(other))
    outcome = data(updates.call("commit", job_id="job-1"))
    assert outcome["status"] == "FAILED" and outcome["step"] == "verify" and "sha256" in outcome["reason"]
    updates.assert_old_model_runs()


def test_a_signature_by_an_unknown_key_is_refused_at_begin(updates: Updates, int8: bytes) -> None:
    reply = updates.begin("job-1", int8, key=Ed25519PrivateKey.generate())
    assert error(reply) == "unauthorized" and "does not verify" in reply["error"]["message"]
    assert error(updates.chunk("job-1", 0, int8[:CHUNK])) == "not_found"
    updates.assert_old_model_runs()


@pytest.mark.parametrize("field, value", [("version", "3"), ("entry", {"threshold": 0.9}), ("size", 1)])
def test_metadata_changed_after_signing_is_refused(updates: Updates, int8: bytes, field: str, value: Any) -> None:
    release = signed_release(updates.key, int8) | {field: value}
    assert error(updates.call("begin", job_id="job-1", **release)) == "unauthorized"


def test_an_unsigned_model_is_refused_even_where_commands_need_no_signature(updates: Updates, int8: bytes) -> None:
    release = {k: v for k, v in signed_release(updates.key, int8).items() if k != "signature"}
    reply = updates.call("begin", job_id="job-1", **release)
    assert error(reply) == "unauthorized" and "must be signed" in reply["error"]["message"]


def test_a_device_without_release_keys_takes_no_model(updates: Updates, int8: bytes) -> None:
    updates.device.services.model_updates.keys = {}
    assert error(updates.begin("job-1", int8)) == "unauthorized"


def test_a_truncated_transfer_fails_at_commit(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    updates.chunks("job-1", int8, last=3)
    outcome = data(updates.call("commit", job_id="job-1"))
    assert outcome["status"] == "FAILED" and outcome["step"] == "verify" and "truncated" in outcome["reason"]
    assert outcome["bytes_received"] == 3 * CHUNK
    updates.assert_old_model_runs()


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_model_that_loads_but_gives_nonsense_fails_the_test_faces(updates: Updates, scrambled: bytes) -> None:
    person = updates.enroll()
    outcome = updates.send("job-1", scrambled, version="2")
    assert outcome["status"] == "FAILED" and outcome["step"] == "check"
    assert "different people are only" in outcome["reason"]
    updates.assert_old_model_runs()
    assert updates.live.recognizes(person)


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_model_that_kills_the_runtime_fails_without_harming_the_agent(updates: Updates, mangled: bytes) -> None:
    outcome = updates.send("job-1", mangled)
    assert outcome["status"] == "FAILED" and outcome["step"] == "load", outcome
    updates.assert_old_model_runs()


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_model_that_does_not_match_its_manifest_entry_fails_its_check(updates: Updates, int8: bytes) -> None:
    output = {"shape": [1, 512], "dtype": "float32"}  # another space: its threshold is restated, or refused at begin
    outcome = updates.send("job-1", int8, entry={"output": output, "threshold": 0.6})
    assert outcome["status"] == "FAILED" and outcome["step"] == "check" and "shape" in outcome["reason"]
    updates.assert_old_model_runs()


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_failed_swap_puts_the_previous_manifest_back(updates: Updates, int8: bytes) -> None:
    updates.live.broken = True
    outcome = updates.send("job-1", int8)
    assert outcome["status"] == "FAILED" and outcome["step"] == "swap" and "previous models run on" in outcome["reason"]
    updates.live.broken = False
    updates.assert_old_model_runs()


def test_an_oversize_model_is_refused_at_begin(updates: Updates, int8: bytes) -> None:
    assert error(updates.begin("job-1", int8, size=MAX_MODEL_BYTES + 1)) == "too_large"


def test_an_oversize_chunk_is_refused_before_decoding(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    assert error(updates.chunk("job-1", 0, bytes(MODEL_CHUNK_BYTES + 1))) == "too_large"


# ------------------------------------------------------------------------------------ the transfer


def test_a_chunk_after_a_gap_is_refused_and_the_job_goes_on(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    updates.chunks("job-1", int8, last=1)
    reply = updates.chunks("job-1", int8, first=2, last=3)[0]
    assert error(reply) == "bad_request" and "the next chunk is 1" in reply["error"]["message"]
    status = data(updates.call("status", job_id="job-1"))
    assert status["status"] == "IN_PROGRESS" and status["bytes_received"] == CHUNK and status["next_index"] == 1


def test_a_repeated_chunk_is_acknowledged_without_being_written_twice(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    first, again = updates.chunks("job-1", int8, last=1)[0], updates.chunks("job-1", int8, last=1)[0]
    assert data(again)["duplicate"] is True and data(again)["bytes_received"] == data(first)["bytes_received"]


def test_a_chunk_repeated_with_other_bytes_is_a_conflict(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    updates.chunks("job-1", int8, last=1)
    assert error(updates.chunk("job-1", 0, int8[1 : CHUNK + 1])) == "conflict"


def test_a_chunk_past_the_declared_size_is_refused(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8[:100])
    assert error(updates.chunk("job-1", 0, int8[:101])) == "bad_request"


def test_abort_ends_the_job_and_empties_the_staging_area(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    updates.chunks("job-1", int8, last=2)
    assert data(updates.call("abort", job_id="job-1"))["status"] == "CANCELED"
    assert error(updates.call("commit", job_id="job-1")) == "conflict"
    updates.assert_old_model_runs()


def test_a_second_job_waits_for_the_first(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    reply = updates.begin("job-2", int8)
    assert error(reply) == "conflict" and "job-1 is in progress" in reply["error"]["message"]


def test_a_repeated_begin_resumes_the_job(updates: Updates, int8: bytes) -> None:
    updates.begin("job-1", int8)
    updates.chunks("job-1", int8, last=2)
    assert data(updates.begin("job-1", int8))["next_index"] == 2


def test_an_update_of_another_embedder_than_the_one_pinned_is_refused(updates: Updates, int8: bytes) -> None:
    settings = updates.device.current[0]
    updates.device.current[0] = replace(settings, models=replace(settings.models, embedder=INT8))
    reply = updates.begin("job-1", int8, model_id="dlib-resnet29-int8-b")
    assert error(reply) == "conflict" and "models.embedder pins" in reply["error"]["message"]


def test_a_phase_must_be_named(updates: Updates) -> None:
    assert error(updates.call("rollback", job_id="job-1")) == "bad_request"


@pytest.mark.slow  # a real child process checks the candidate model
def test_every_phase_is_audited_without_model_bytes(updates: Updates, int8: bytes) -> None:
    updates.send("job-1", int8)
    records = [r for r in updates.device.audit() if r["action"] == "command.model_update"]
    phases = [r["details"]["phase"] for r in reversed(records)]
    assert phases == ["begin"] + ["chunk"] * len(range(0, len(int8), CHUNK)) + ["commit"]
    assert records[0]["details"]["job_status"] == "SUCCEEDED" and records[0]["details"]["job_id"] == "job-1"
    assert max(len(json.dumps(r["details"])) for r in records) < 600


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_restarted_service_loads_the_installed_models(updates: Updates, int8: bytes) -> None:
    updates.send("job-1", int8, model_id="dlib-resnet29-int8-b")
    from agent.service.app import AgentService

    service = AgentService(load_settings(updates.device.settings_path))  # as `faceagent run` starts
    assert service.settings.models.dir == state_models_dir(updates.device.store_path)
    assert FacePipeline(PipelineOptions(models_dir=service.settings.models.dir)).embedder.info.model_id.endswith("-b")


def test_ctl_refuses_to_send_an_unsigned_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    arguments = ["--mqtt", "mqtt://127.0.0.1:1", "--device", "d", "--model-id", "m", "--role", "embedder"]
    assert main(["ctl", "model-update", *arguments, "--model-version", "1", str(model)]) == 2
    assert "must be signed" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ end to end


DEVICE = "stage-1"


def _ctl_update(
    broker: Broker, key_file: Path, model: Path, model_id: str, version: str, sign_key: Path
) -> subprocess.CompletedProcess[str]:
    return faceagent(
        "ctl", "model-update", "--mqtt", broker.url, "--device", DEVICE, "--timeout", "60",
        "--model-key", str(key_file), "--model-id", model_id, "--role", "embedder",
        "--model-version", version, "--sign-key", str(sign_key), str(model), timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_faceagent_run_takes_a_good_update_and_survives_a_bad_one(
    tmp_path: Path, broker: Broker, observe, int8: bytes, scrambled: bytes, operator_key_file: Path
) -> None:
    """Signed twice: each command by the operator's command key, the release by a release key."""
    key = Ed25519PrivateKey.generate()
    key_file = write_private_key(key, tmp_path / "release.pem")
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n{OPERATOR_TOML}'
        f'[models]\ndir = "{dlib_models(tmp_path / "shipped-models")}"\nrelease_keys = ["{public_key_text(key)}"]\n'
        "[gallery]\nkeep_chips = true\n[events]\ncooldown_seconds = 0\n[camera]\nfps = 15\nloop = true\n"
    )
    db = tmp_path / "state" / "gallery.db"
    db.parent.mkdir()
    enroll_cli(config, db, "Miranda", SAMPLE)
    (tmp_path / "good.tflite").write_bytes(int8)
    (tmp_path / "bad.tflite").write_bytes(scrambled)
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = start_agent(config, db, SAMPLE_CLIP, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def recognized_by(model_id: str, after: int = 0) -> bool:
        events = observer.on(f"faceagent/{DEVICE}/events/face_recognized")[after:]
        return any(event.json()["model_id"] == model_id for event in events)

    try:
        assert observer.wait_for(lambda _: recognized_by(INT8), timeout=120)
        by_command_key = _ctl_update(
            broker, operator_key_file, tmp_path / "good.tflite", "dlib-resnet29-int8-b", "2", operator_key_file
        )
        assert by_command_key.returncode == 1 and "any release key" in by_command_key.stderr, by_command_key.stderr
        good = _ctl_update(broker, key_file, tmp_path / "good.tflite", "dlib-resnet29-int8-b", "2", operator_key_file)
        assert good.returncode == 0, good.stdout + good.stderr
        assert "SUCCEEDED" in good.stdout and "1 templates rebuilt" in good.stdout
        assert observer.wait_for(lambda _: recognized_by("dlib-resnet29-int8-b"), timeout=120)
        bad = _ctl_update(broker, key_file, tmp_path / "bad.tflite", "dlib-resnet29-int8-b", "3", operator_key_file)
        assert bad.returncode == 1 and "FAILED at check" in bad.stdout, bad.stdout + bad.stderr
        seen = len(observer.on(f"faceagent/{DEVICE}/events/face_recognized"))
        assert observer.wait_for(lambda _: recognized_by("dlib-resnet29-int8-b", seen), timeout=120)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    statuses = [m.json() for m in observer.on(f"faceagent/{DEVICE}/status")]
    assert statuses[-1]["state"] == "offline"
    assert not list((db.parent / "models" / ".staging").glob("*"))

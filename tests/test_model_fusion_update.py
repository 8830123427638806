"""Model updates around the fused embedder: a field device (dlib alone) moved to it over two signed releases
(MobileFace on standby, then the fused definition), and what a fused device refuses or takes.

The devices are the command side as the service wires it with a real `ModelUpdater` (tests/support/model_updates.py);
every candidate is checked by the real child process on the real test faces, and people are enrolled from and
probed with real photos (../shared/data).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.cli.releases import read_bundle
from agent.commands.signing import public_key_text
from agent.config import load_settings
from agent.gallery.store import GalleryStore
from agent.modelupdate.install import (
    PREVIOUS_MANIFEST,
    RELEASE_FLOOR,
    ModelsFolder,
    installed_models_dir,
    state_models_dir,
)
from agent.vision.fusion import definition_bytes, parse_members
from agent.vision.image import load_image
from agent.vision.modelstore import MANIFEST_NAME, ModelSpec, ModelStore, default_models_dir
from agent.vision.pipeline import FacePipeline, PipelineOptions
from tests.support.agent_process import enroll_cli, faceagent, start_agent
from tests.support.broker import Broker
from tests.support.commands import OPERATOR_TOML, data, error, image_arg, write_private_key
from tests.support.data import EMBEDDER_ID, POWELL, POWELL_PROBE, SAMPLE, SAMPLE_CLIP, bush, powell
from tests.support.model_updates import (
    FUSED_ID,
    MOBILEFACE_ID,
    Shipped,
    Updates,
    field_models,
    from_manifest,
    fused_models,
    fusion_releases,
    make_updates,
    shipped_models,
)

PREVIOUS_ID = "fused-dlib-mobileface-int8"  # the default before the mixed MobileFace build


@pytest.fixture
def field(tmp_path: Path) -> Updates:
    """A device as in the field today: dlib int8 alone, no MobileFace, no fused entry."""
    return make_updates(tmp_path, models=field_models)


@pytest.fixture
def fused(tmp_path: Path) -> Updates:
    """A device running the fused embedder."""
    return make_updates(tmp_path, models=fused_models)


def send(updates: Updates, job_id: str, release: Shipped) -> dict:
    return updates.send(job_id, release.content, **release.meta)


def begin(updates: Updates, job_id: str, release: Shipped) -> dict:
    return updates.begin(job_id, release.content, **release.meta)


def enroll_powell(updates: Updates, shared_data: Path) -> str:
    images = [image_arg(powell(shared_data, number)) for number in POWELL]
    return data(updates.device.call("enroll", {"name": "Colin Powell", "images": images}))["person"]["id"]


def named(updates: Updates, photo: Path) -> str | None:
    """Who the live pipeline and matcher name in `photo`."""
    faces = updates.live.pipeline.analyse(load_image(photo))
    return updates.device.matcher.search(faces[0].embedding).person_id


def installed(updates: Updates) -> dict:
    return json.loads((state_models_dir(updates.device.store_path) / MANIFEST_NAME).read_text())


def fused_release_of(members: list[dict], version: str = "3", **entry: object) -> Shipped:
    """The shipped fused release with other members (its definition made for them, so only the device can tell)."""
    shipped = from_manifest(FUSED_ID, version)
    stated = shipped.meta["entry"] | {"members": members} | entry
    spec = ModelSpec(FUSED_ID, "embedder", "f.json", "0" * 64, 0, stated)
    content = definition_bytes(parse_members(spec), stated["flip"])
    return Shipped(content, shipped.meta | {"entry": stated})


# ------------------------------------------------------------------------------------ the move to fusion


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_standby_release_is_installed_without_becoming_the_default(field: Updates, shared_data: Path) -> None:
    person = enroll_powell(field, shared_data)
    outcome = send(field, "job-1", fusion_releases()[0])
    assert outcome["status"] == "SUCCEEDED" and outcome["standby"] is True and outcome["embedder_changed"] is False
    manifest = installed(field)
    assert manifest["defaults"]["embedder"] == EMBEDDER_ID and MOBILEFACE_ID in {e["id"] for e in manifest["models"]}
    assert field.live.pipeline.embedder.info.model_id == EMBEDDER_ID
    assert named(field, powell(shared_data, POWELL_PROBE)) == person


@pytest.mark.slow  # real child processes check both candidates
def test_a_standby_release_on_a_device_running_from_its_state_directory_swaps_nothing(
    field: Updates, int8: bytes
) -> None:
    assert field.send("job-1", int8, version="2")["status"] == "SUCCEEDED"  # the models now run from the state
    outcome = send(field, "job-2", from_manifest(MOBILEFACE_ID, "3", standby=True))
    assert outcome["status"] == "SUCCEEDED" and field.live.swaps == 1
    assert MOBILEFACE_ID in {entry["id"] for entry in installed(field)["models"]}


@pytest.mark.slow  # real child processes check both candidates
def test_a_field_device_moved_to_fusion_in_two_releases_names_people_enrolled_under_dlib(
    field: Updates, shared_data: Path
) -> None:
    person = enroll_powell(field, shared_data)
    standby, fusion = fusion_releases()
    assert send(field, "job-1", standby)["status"] == "SUCCEEDED"
    outcome = send(field, "job-2", fusion)
    assert outcome["status"] == "SUCCEEDED" and outcome["embedder_changed"] is True, outcome
    assert field.live.pipeline.embedder.info.model_id == FUSED_ID
    assert named(field, powell(shared_data, POWELL_PROBE)) == person  # on the dlib part of the fused query
    assert named(field, bush(shared_data)) is None
    listing = data(field.device.call("list_people"))
    assert listing["model_id"] == FUSED_ID and listing["people"][0]["needs_reenrollment"] is True


@pytest.mark.slow  # real child processes check both candidates
def test_a_restarted_service_loads_the_fused_embedder_the_releases_installed(field: Updates) -> None:
    for job_id, release in zip(("job-1", "job-2"), fusion_releases(), strict=True):
        assert send(field, job_id, release)["status"] == "SUCCEEDED"
    from agent.service.app import AgentService

    service = AgentService(load_settings(field.device.settings_path))  # as `faceagent run` starts
    pipeline = FacePipeline(PipelineOptions(models_dir=service.settings.models.dir))
    assert pipeline.embedder.info.model_id == FUSED_ID


@pytest.mark.slow  # real child processes check both candidates
def test_kept_chips_rebuild_fused_templates_when_the_fused_release_goes_live(tmp_path: Path, shared_data: Path) -> None:
    updates = make_updates(tmp_path, keep_chips=True, models=field_models)
    person = enroll_powell(updates, shared_data)
    standby, fusion = fusion_releases()
    send(updates, "job-1", standby)
    outcome = send(updates, "job-2", fusion)
    assert outcome["templates_rebuilt"] == 3 and outcome["people_needing_reenrollment"] == 0, outcome
    with GalleryStore.open(updates.device.store_path) as store:
        assert store.template_counts()[person] == {EMBEDDER_ID: 3, FUSED_ID: 3}
    assert named(updates, powell(shared_data, POWELL_PROBE)) == person


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_device_on_the_previous_default_moved_to_the_default_carries_its_templates_over(
    tmp_path: Path, shared_data: Path
) -> None:
    """No chips kept, yet nobody to re-enroll: the default takes the previous default's templates as they are."""
    updates = make_updates(tmp_path, models=lambda folder: shipped_models(folder, PREVIOUS_ID))
    person = enroll_powell(updates, shared_data)
    outcome = send(updates, "job-1", from_manifest(FUSED_ID, "3"))
    assert outcome["status"] == "SUCCEEDED" and outcome["embedder_changed"] is True, outcome
    assert (outcome["people_carried_over"], outcome["templates_rebuilt"], outcome["people_needing_reenrollment"]) == (
        1,
        0,
        0,
    )
    with GalleryStore.open(updates.device.store_path) as store:
        assert store.template_counts()[person] == {PREVIOUS_ID: 3, FUSED_ID: 3}
    assert updates.live.pipeline.embedder.info.model_id == FUSED_ID
    probe, stranger = (
        updates.live.pipeline.analyse(load_image(p))[0].embedding
        for p in (powell(shared_data, POWELL_PROBE), bush(shared_data))
    )
    match = updates.device.matcher.search(probe)
    assert match.accepted and match.person_id == person
    assert not updates.device.matcher.search(stranger).accepted
    listing = data(updates.device.call("list_people"))
    assert listing["people"][0]["needs_reenrollment"] is False


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_fused_release_the_live_agent_cannot_switch_to_leaves_the_standby_manifest(
    field: Updates, shared_data: Path
) -> None:
    person = enroll_powell(field, shared_data)
    standby, fusion = fusion_releases()
    send(field, "job-1", standby)
    before = installed(field)
    field.live.broken = True
    outcome = send(field, "job-2", fusion)
    assert outcome["status"] == "FAILED" and outcome["step"] == "swap", outcome
    assert installed(field) == before and field.live.pipeline.embedder.info.model_id == EMBEDDER_ID
    field.live.broken = False
    assert named(field, powell(shared_data, POWELL_PROBE)) == person


@pytest.mark.slow  # real child processes check both candidates
def test_a_fused_release_that_fails_the_test_faces_leaves_the_standby_manifest(field: Updates) -> None:
    standby, fusion = fusion_releases()
    send(field, "job-1", standby)
    before = installed(field)
    wrong = Shipped(fusion.content, fusion.meta | {"entry": fusion.meta["entry"] | {"threshold": 0.01}})
    outcome = send(field, "job-2", wrong)
    assert outcome["status"] == "FAILED" and outcome["step"] == "check", outcome
    assert "the same person is" in outcome["reason"]
    assert installed(field) == before and field.live.pipeline.embedder.info.model_id == EMBEDDER_ID
    assert field.live.swaps == 1 and not list(state_models_dir(field.device.store_path).glob("fused_*"))


def test_tidying_removes_definitions_no_manifest_names_and_keeps_the_bookkeeping(tmp_path: Path) -> None:
    folder = ModelsFolder(tmp_path)
    names = ["kept.json", "stale.json", "stale.tflite", MANIFEST_NAME, PREVIOUS_MANIFEST, RELEASE_FLOOR]
    for name in names:
        (tmp_path / name).write_text("{}")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"models": [{"file": "kept.json"}]}))
    folder.tidy()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {"stale.json", "stale.tflite"})


# ------------------------------------------------------------------------------------ refused at begin


def test_a_fused_release_with_a_member_missing_is_refused_before_any_byte(field: Updates) -> None:
    reply = begin(field, "job-1", fusion_releases()[1])
    assert error(reply) == "conflict" and f"member {MOBILEFACE_ID} is not installed" in reply["error"]["message"]
    field.assert_old_model_runs()


def test_a_fused_release_fitted_on_another_build_of_a_member_is_refused(tmp_path: Path) -> None:
    updates = make_updates(tmp_path)  # MobileFace is installed (the shipped models), the fusion names another build
    members = [{"id": EMBEDDER_ID, "sha256": ModelStore().specs[EMBEDDER_ID].sha256, "weight": 0.8}]
    members.append({"id": MOBILEFACE_ID, "sha256": "ab" * 32, "weight": 0.2})
    reply = begin(updates, "job-1", fused_release_of(members))
    assert error(reply) == "conflict" and "the fusion was fitted on abab" in reply["error"]["message"]
    updates.assert_old_model_runs()


def test_a_fused_release_whose_file_is_not_its_definition_is_refused(tmp_path: Path) -> None:
    updates = make_updates(tmp_path)
    release = fusion_releases()[1]
    reply = begin(updates, "job-1", Shipped(release.content.replace(b"0.8", b"0.7"), release.meta))
    assert error(reply) == "conflict" and "is not the definition" in reply["error"]["message"]


def test_a_new_build_of_a_member_of_the_fused_embedder_in_use_is_refused(fused: Updates, int8: bytes) -> None:
    reply = fused.begin("job-1", int8 + b"\0", version="2")
    assert error(reply) == "conflict" and f"member of {FUSED_ID}, the embedder in use" in reply["error"]["message"]


def test_a_new_version_of_a_member_with_the_same_bytes_is_taken(fused: Updates, int8: bytes) -> None:
    assert data(fused.begin("job-1", int8, version="2"))["status"] == "IN_PROGRESS"


def test_a_standby_release_of_the_model_in_use_is_refused(field: Updates, int8: bytes) -> None:
    reply = field.begin("job-1", int8, standby=True)
    assert error(reply) == "conflict" and "cannot wait on standby" in reply["error"]["message"]


def test_a_new_model_in_another_space_without_its_own_threshold_is_refused(field: Updates, int8: bytes) -> None:
    reply = field.begin("job-1", int8, model_id="dlib-cosine", entry={"metric": "cosine"})
    assert error(reply) == "conflict" and "changes metric from dlib-resnet29-int8" in reply["error"]["message"]


# ------------------------------------------------------------------------------------ a fused device


@pytest.mark.slow  # a real child process checks the candidate model
def test_a_plain_release_under_a_new_id_on_a_fused_device_takes_its_first_members_entry(
    fused: Updates, int8: bytes
) -> None:
    outcome = fused.send("job-1", int8, model_id="dlib-resnet29-int8-b")
    assert outcome["status"] == "SUCCEEDED" and outcome["previous"]["model_id"] == FUSED_ID, outcome
    entry = ModelStore(installed_models_dir(fused.device.store_path)).spec(None, "embedder").raw
    dlib = ModelStore(default_models_dir()).specs[EMBEDDER_ID].raw
    assert "members" not in entry and "flip" not in entry
    assert [entry[k] for k in ("alignment", "metric", "threshold", "gallery")] == [
        dlib[k] for k in ("alignment", "metric", "threshold", "gallery")
    ]
    assert fused.live.pipeline.embedder.info.model_id == "dlib-resnet29-int8-b"


def test_the_shipped_fused_release_is_the_definition_its_entry_names() -> None:
    release = fusion_releases()[1]
    assert hashlib.sha256(release.content).hexdigest() == ModelStore().specs[FUSED_ID].sha256


# ------------------------------------------------------------------------------------ the publisher

SHIPPED_MANIFEST = default_models_dir() / MANIFEST_NAME


def release_files(folder: Path) -> dict[str, Path]:
    """Copies of MobileFace int8 and the fused definition, where a publisher signs them."""
    folder.mkdir()
    store = ModelStore()
    return {i: Path(shutil.copy(default_models_dir() / store.specs[i].file, folder)) for i in (MOBILEFACE_ID, FUSED_ID)}


def ctl_release(model: Path, model_id: str, version: str, key_file: Path, *extra: str) -> list[str]:
    """`ctl model-release` arguments: the entry taken from the shipped manifest."""
    return [
        "ctl", "model-release", str(model), "--model-id", model_id, "--role", "embedder", "--model-version", version,
        "--entry-from", str(SHIPPED_MANIFEST), "--model-key", str(key_file), *extra,
    ]  # fmt: skip


def test_ctl_signs_a_standby_release_and_a_fused_release_from_the_shipped_manifest(tmp_path: Path) -> None:
    key_file = write_private_key(Ed25519PrivateKey.generate(), tmp_path / "release.pem")
    files = release_files(tmp_path / "out")
    assert main(ctl_release(files[MOBILEFACE_ID], MOBILEFACE_ID, "2", key_file, "--standby")) == 0
    assert main(ctl_release(files[FUSED_ID], FUSED_ID, "3", key_file)) == 0
    standby = read_bundle(tmp_path / "out" / "mobileface_v2_int8_mixed.release.json")
    fusion = read_bundle(tmp_path / "out" / "fused_dlib_mobileface_mixed.release.json")
    assert standby.meta["standby"] is True and "standby" not in fusion.meta
    assert standby.meta["entry"] == fusion_releases()[0].meta["entry"]
    assert fusion.meta["entry"]["members"] == ModelStore().specs[FUSED_ID].raw["members"]


def test_ctl_refuses_a_definition_that_is_not_the_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = write_private_key(Ed25519PrivateKey.generate(), tmp_path / "release.pem")
    fused = release_files(tmp_path / "out")[FUSED_ID]
    fused.write_bytes(fused.read_bytes().replace(b"0.8", b"0.7").replace(b"0.2", b"0.3"))
    assert main(ctl_release(fused, FUSED_ID, "3", key_file)) != 0
    assert f"{FUSED_ID} is sha256" in capsys.readouterr().err
    assert not (tmp_path / "out" / "fused_dlib_mobileface_mixed.release.json").exists()


# ------------------------------------------------------------------------------------ end to end

DEVICE = "stage-2"


@pytest.mark.slow
def test_faceagent_run_moves_to_the_fused_embedder_over_mqtt_and_names_who_was_enrolled_under_dlib(
    tmp_path: Path, broker: Broker, observe, operator_key_file: Path
) -> None:
    """A field device (dlib alone) running the clip; the operator ships MobileFace on standby, then the fused
    definition, each with `ctl model-update --entry-from`; the performer, enrolled under dlib with no chip kept,
    is named by the fused embedder (on its dlib part) and the status shows the fused embedder."""
    key = Ed25519PrivateKey.generate()
    key_file = write_private_key(key, tmp_path / "release.pem")
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n{OPERATOR_TOML}'
        f'[models]\ndir = "{field_models(tmp_path / "field-models")}"\nrelease_keys = ["{public_key_text(key)}"]\n'
        "[events]\ncooldown_seconds = 0\n[camera]\nfps = 15\nloop = true\n"
    )
    db = tmp_path / "state" / "gallery.db"
    db.parent.mkdir()
    enroll_cli(config, db, "Miranda", SAMPLE)
    files = release_files(tmp_path / "releases")
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = start_agent(config, db, SAMPLE_CLIP, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def recognized_by(model_id: str) -> bool:
        events = observer.on(f"faceagent/{DEVICE}/events/face_recognized")
        return any(event.json()["model_id"] == model_id and event.json()["name"] == "Miranda" for event in events)

    def update(model_id: str, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
        arguments = ctl_release(files[model_id], model_id, version, key_file, *extra)[2:]
        return faceagent(
            "ctl", "model-update", "--mqtt", broker.url, "--device", DEVICE, "--timeout", "60",
            "--sign-key", str(operator_key_file), *arguments, timeout=600,
        )  # fmt: skip

    try:
        assert observer.wait_for(lambda _: recognized_by(EMBEDDER_ID), timeout=120)
        standby = update(MOBILEFACE_ID, "2", "--standby")
        assert standby.returncode == 0 and "installed on standby" in standby.stdout, standby.stdout + standby.stderr
        fusion = update(FUSED_ID, "3")
        assert fusion.returncode == 0 and "1 people need re-enrollment" in fusion.stdout, fusion.stdout + fusion.stderr
        assert observer.wait_for(lambda _: recognized_by(FUSED_ID), timeout=120)
        status = faceagent("ctl", "status", DEVICE, "--mqtt", broker.url, "--json")
        document = json.loads(status.stdout)["reply"]["data"]
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    assert document["models"]["embedder"] == FUSED_ID, document
    assert document["gallery"]["people_needing_reenrollment"] == 1
    listing = json.loads(faceagent("gallery", "list", "--json", "--db", str(db), config=config).stdout)
    assert listing["model_id"] == FUSED_ID and listing["people"][0]["needs_reenrollment"] is True, listing

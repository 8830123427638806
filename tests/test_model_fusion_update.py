"""Model updates around the fused embedder: a field device (dlib alone) moved to it over two signed releases
(MobileFace on standby, then the fused definition), and what a fused device refuses or takes.

The devices are the command side as the service wires it with a real `ModelUpdater` (tests/support/model_updates.py);
every candidate is checked by the real child process on the real test faces, and people are enrolled from and
probed with real photos (../shared/data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.gallery.store import GalleryStore
from agent.modelupdate.install import installed_models_dir, state_models_dir
from agent.vision.fusion import definition_bytes, parse_members
from agent.vision.image import load_image
from agent.vision.modelstore import MANIFEST_NAME, ModelSpec, ModelStore, default_models_dir
from tests.support.commands import data, error, image_arg
from tests.support.data import EMBEDDER_ID, POWELL, POWELL_PROBE, bush, powell
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
)


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

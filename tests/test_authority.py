"""Authority by default: who may run which command, how a device without keys behaves, key roles, and
whom the audit names. On the real dispatcher, a real gallery and the real pipeline; `ctl keygen` in-process."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.commands.schema import Access, CommandSchema, command_schemas
from agent.commands.signing import (
    CommandSecurity,
    KeyRoles,
    key_id,
    load_private_key,
    public_key_text,
    sign_request,
)
from agent.config import CommandSettings, ModelSettings, Settings, settings_from_dict
from agent.errors import ConfigError
from agent.gallery.store import GalleryStore
from agent.modelupdate.install import state_models_dir
from agent.modelupdate.update import ModelUpdater, sign_model
from agent.vision.pipeline import FacePipeline
from tests.support.commands import (
    NOW,
    OPERATOR_KEY,
    OPERATOR_PUBLIC,
    Device,
    error,
    image_arg,
    make_device,
    operator_commands,
)
from tests.support.data import POWELL, powell

OPEN = {"ping", "get_status", "get_config", "get_telemetry"}


def keyless(tmp_path: Path, pipeline: FacePipeline, **commands: Any) -> Device:
    return make_device(tmp_path, pipeline, commands=CommandSettings(**commands))


# ------------------------------------------------------------------------------------ classification


def test_only_ping_get_status_and_get_config_run_unsigned() -> None:
    schemas = command_schemas(CommandSettings())
    assert {name for name, schema in schemas.items() if schema.access is Access.OPEN} == OPEN


def test_a_command_schema_must_declare_its_access() -> None:
    with pytest.raises(TypeError):
        CommandSchema()  # type: ignore[call-arg]


# ------------------------------------------------------------------------------------ unsigned, refused


@pytest.fixture
def populated(tmp_path: Path, pipeline: FacePipeline, shared_data: Path) -> tuple[Device, str]:
    """A device with the test operator's key, one person (enrolled by a signed command) and one old event."""
    device = make_device(tmp_path, pipeline)
    reply = device.call("enroll", {"name": "Colin Powell", "images": [image_arg(powell(shared_data, POWELL[0]))]})
    person = reply["data"]["person"]["id"]
    with GalleryStore.open(device.store_path) as store:
        store.add_event("face_unknown", {}, event_id="old", person_id=None, created_at="2020-01-01T00:00:00.000Z")
    return device, person


def snapshot(device: Device) -> tuple[Any, ...]:
    """Everything a refused command must leave as it was."""
    with GalleryStore.open(device.store_path) as store:
        state = store.fingerprint(), [e["id"] for e in store.pending_events()]
    return state, device.settings_path.read_bytes(), device.current[0], device.restarts, len(device.matcher)


def refused_requests(person: str, shared_data: Path) -> dict[str, dict[str, Any]]:
    begin = {"phase": "begin", "job_id": "j1", "model_id": "m1", "role": "embedder", "file": "m.tflite"}
    begin |= {"version": "1", "sha256": "0" * 64, "size": 1, "entry": {}}
    return {
        "enroll": {"name": "Ada", "images": [image_arg(powell(shared_data, POWELL[1]))]},
        "list_people": {},
        "update_person": {"person_id": person, "name": "Someone Else"},
        "delete_person": {"person_id": person},
        "set_config": {"values": {"gallery.threshold": 0.2}},
        "purge_events": {"older_than_days": 0},
        "restart": {},
        "model_update": begin,
        "get_audit": {},
        "wrong_person": {"event_id": "0" * 26},
        "is_person": {"event_id": "0" * 26, "person_id": person},
        "enroll_from_event": {"event_id": "0" * 26, "name": "Ada", "consent": {"reference": "c1"}},
    }


@pytest.mark.parametrize("name", sorted(set(command_schemas(CommandSettings())) - OPEN))
def test_an_unsigned_command_that_needs_a_key_is_refused_and_changes_nothing(
    populated: tuple[Device, str], shared_data: Path, name: str
) -> None:
    device, person = populated
    before = snapshot(device)
    reply = device.call(name, refused_requests(person, shared_data)[name], signed=False)
    assert error(reply) == "unauthorized" and "data" not in reply
    assert snapshot(device) == before


@pytest.mark.parametrize("name", sorted(OPEN))
def test_open_commands_run_unsigned_on_a_device_without_keys(tmp_path: Path, pipeline: FacePipeline, name: str) -> None:
    assert keyless(tmp_path, pipeline).call(name, signed=False)["status"] == "ok"


def test_a_device_without_keys_says_how_to_add_one(tmp_path: Path, pipeline: FacePipeline) -> None:
    reply = keyless(tmp_path, pipeline).call("restart", signed=False)
    assert error(reply) == "unauthorized"
    assert "faceagent ctl keygen" in reply["error"]["message"] and "public_keys" in reply["error"]["message"]


def test_a_device_without_keys_refuses_a_signed_command_too(tmp_path: Path, pipeline: FacePipeline) -> None:
    device = keyless(tmp_path, pipeline)
    assert error(device.call("restart")) == "unauthorized" and device.restarts == []


# ------------------------------------------------------------------------------------ allow_unsigned


def test_allow_unsigned_runs_a_state_changing_command_unsigned(tmp_path: Path, pipeline: FacePipeline) -> None:
    device = keyless(tmp_path, pipeline, allow_unsigned=True)
    assert device.call("restart", signed=False)["status"] == "ok" and device.restarts == [1]


def test_an_unsigned_command_is_audited_as_mqtt_unsigned_with_its_claim_kept_aside(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    device = keyless(tmp_path, pipeline, allow_unsigned=True)
    device.call("restart", signed=False, origin="key:ffffffffffffffff")
    (row,) = [r for r in device.audit() if r["action"] == "command.restart"]
    assert row["actor"] == "mqtt:unsigned" and row["details"]["claimed_origin"] == "key:ffffffffffffffff"


def test_a_refused_command_is_not_audited_under_its_claimed_origin(populated: tuple[Device, str]) -> None:
    device, _ = populated
    device.call("restart", signed=False, origin="admin")
    (row,) = [r for r in device.audit() if r["action"] == "command.restart"]
    assert row["actor"] == "mqtt:unverified" and row["details"]["claimed_origin"] == "admin"


def test_signing_required_with_allow_unsigned_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"commands\.allow_unsigned"):
        settings_from_dict({"commands": {"signing_required": True, "allow_unsigned": True}})


def test_signing_required_alone_still_loads() -> None:
    assert settings_from_dict({"commands": {"signing_required": True}}).commands.signing_required


# ------------------------------------------------------------------------------------ what the device says


@pytest.mark.parametrize(
    "commands, authority",
    [
        (CommandSettings(), "no_keys"),
        (CommandSettings(public_keys=(OPERATOR_PUBLIC,)), "signed"),
        (CommandSettings(public_keys=(OPERATOR_PUBLIC,), allow_unsigned=True), "unsigned_allowed"),
    ],
)
def test_the_status_names_the_authority(commands: CommandSettings, authority: str) -> None:
    assert CommandSecurity.from_settings(commands, "dev1").describe()["authority"] == authority


def test_the_status_names_the_command_keys_by_id() -> None:
    described = CommandSecurity.from_settings(operator_commands(), "dev1").describe()
    assert described["command_keys"] == [key_id(OPERATOR_KEY.public_key())]


def test_a_device_without_keys_warns_once_at_start_how_to_add_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        CommandSecurity.from_settings(CommandSettings(), "dev1").announce()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "faceagent ctl keygen" in record.getMessage()


def test_allow_unsigned_is_warned_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        CommandSecurity.from_settings(operator_commands(allow_unsigned=True), "dev1").announce()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "allow_unsigned" in record.getMessage()


def test_a_device_with_a_key_and_no_unsigned_commands_starts_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        CommandSecurity.from_settings(operator_commands(), "dev1").announce()
    assert caplog.records == []


# ------------------------------------------------------------------------------------ key roles

RELEASE_KEY = Ed25519PrivateKey.generate()


def roles_device(tmp_path: Path, pipeline: FacePipeline) -> Device:
    """Wired as the service wires it: commands verify against command keys, model updates against release keys."""
    settings = Settings(
        commands=operator_commands(), models=ModelSettings(release_keys=(public_key_text(RELEASE_KEY),))
    )
    roles = KeyRoles.from_settings(settings)
    device = make_device(tmp_path, pipeline, security=CommandSecurity(settings.commands, "dev1", roles.commands))
    device.services.model_updates = ModelUpdater(
        state_models_dir(device.store_path),
        get_settings=lambda: device.current[0],
        keys=roles.releases,
        apply=lambda models_dir: None,
        gallery=device.gallery,
    )
    return device


def release(key: Ed25519PrivateKey) -> dict[str, Any]:
    # A new id: a new build of dlib, a member of the fused default, would be refused for that reason instead.
    meta = {"model_id": "dlib-resnet29-int8-b", "role": "embedder", "file": "m.tflite", "version": "2"}
    meta |= {"sha256": "0" * 64, "size": 1024, "entry": {}}
    return {"phase": "begin", "job_id": "j1", **meta, "signature": sign_model(key, meta)}


def test_a_model_signed_by_a_release_key_is_taken(tmp_path: Path, pipeline: FacePipeline) -> None:
    reply = roles_device(tmp_path, pipeline).call("model_update", release(RELEASE_KEY))
    assert reply["status"] == "ok" and reply["data"]["status"] == "IN_PROGRESS"


def test_a_model_signed_by_a_command_key_is_refused(tmp_path: Path, pipeline: FacePipeline) -> None:
    reply = roles_device(tmp_path, pipeline).call("model_update", release(OPERATOR_KEY))
    assert error(reply) == "unauthorized" and "release key" in reply["error"]["message"]


def test_a_command_signed_by_a_release_key_is_refused(tmp_path: Path, pipeline: FacePipeline) -> None:
    device = roles_device(tmp_path, pipeline)
    by_release = sign_request(RELEASE_KEY, "dev1", "restart", {"request_id": "r1"}, now=NOW)
    assert error(device.send("restart", json.dumps(by_release).encode())) == "unauthorized"
    assert device.restarts == []


def test_one_key_in_both_roles_is_a_config_error() -> None:
    settings = Settings(commands=operator_commands(), models=ModelSettings(release_keys=(OPERATOR_PUBLIC,)))
    with pytest.raises(ConfigError, match="one role"):
        KeyRoles.from_settings(settings)


@pytest.mark.parametrize(
    "role, section, setting", [("command", "commands", "public_keys"), ("release", "models", "release_keys")]
)
def test_keygen_prints_the_toml_that_makes_a_device_trust_the_key_in_its_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, section: str, setting: str
) -> None:
    key_file = tmp_path / f"{role}.pem"
    assert main(["ctl", "keygen", "--role", role, str(key_file)]) == 0
    printed = capsys.readouterr().out.splitlines()
    toml = tomllib.loads("\n".join(printed[printed.index(f"[{section}]") :]))
    roles = KeyRoles.from_settings(settings_from_dict(toml))
    trusted = roles.commands if role == "command" else roles.releases
    assert list(trusted) == [key_id(load_private_key(key_file).public_key())] and toml[section][setting]

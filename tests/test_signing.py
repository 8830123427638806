"""Signed commands: what runs, what is refused (and audited), and how keys are read."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signing import (
    CommandSecurity,
    ReplayCache,
    StoredReplayCache,
    canonical_request,
    key_id,
    load_private_key,
    load_public_keys,
    public_key_text,
    sign_request,
)
from agent.config import CommandSettings
from agent.errors import ConfigError
from agent.vision.pipeline import FacePipeline
from agent.wire import FLEET
from tests.support.commands import NOW, Device, make_device, write_private_key

DEVICE = "dev1"
WINDOW = 120.0


def secured(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey, *, unsigned: bool = False) -> Device:
    commands = CommandSettings(
        allow_unsigned=unsigned, public_keys=(public_key_text(key),), timestamp_window_seconds=WINDOW
    )
    return make_device(tmp_path, pipeline, commands=commands, security=CommandSecurity.from_settings(commands, DEVICE))


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey) -> Device:
    return secured(tmp_path, pipeline, key)


def signed(
    key: Ed25519PrivateKey,
    name: str,
    request_id: str = "r1",
    *,
    at: datetime = NOW,
    device: str = DEVICE,
    **args: object,
) -> bytes:
    request = {"request_id": request_id, "origin": "ops", "args": args}
    return json.dumps(sign_request(key, device, name, request, now=at)).encode()


def code(reply: dict) -> str:
    assert reply["status"] == "error", reply
    return reply["error"]["code"]


def test_a_signed_command_runs_and_names_its_key_in_the_audit(device: Device, key: Ed25519PrivateKey) -> None:
    assert device.send("restart", signed(key, "restart"))["status"] == "ok"
    (row,) = [r for r in device.audit() if r["action"] == "command.restart"]
    assert row["actor"] == f"key:{key_id(key.public_key())}" and row["details"]["signed_by"] == key_id(key.public_key())


def test_an_unsigned_command_is_refused_and_audited(device: Device) -> None:
    assert code(device.call("restart", signed=False)) == "unauthorized"
    assert device.restarts == []
    assert [r["details"]["code"] for r in device.audit() if r["action"] == "command.restart"] == ["unauthorized"]


def test_a_tampered_command_is_refused(device: Device, key: Ed25519PrivateKey) -> None:
    request = json.loads(signed(key, "purge_events", older_than_days=30))
    request["args"]["older_than_days"] = 0
    assert code(device.send("purge_events", json.dumps(request).encode())) == "unauthorized"


def test_a_command_signed_by_another_key_is_refused(device: Device) -> None:
    assert code(device.send("restart", signed(Ed25519PrivateKey.generate(), "restart"))) == "unauthorized"


def test_a_command_signed_for_another_device_is_refused(device: Device, key: Ed25519PrivateKey) -> None:
    assert code(device.send("restart", signed(key, "restart", device="dev2"))) == "unauthorized"


def test_a_command_moved_to_another_command_topic_is_refused(device: Device, key: Ed25519PrivateKey) -> None:
    assert code(device.send("restart", signed(key, "ping"))) == "unauthorized"


def test_a_garbled_signature_is_refused(device: Device, key: Ed25519PrivateKey) -> None:
    request = json.loads(signed(key, "ping")) | {"signature": "%%%"}
    assert code(device.send("ping", json.dumps(request).encode())) == "unauthorized"


def test_an_old_command_is_stale(device: Device, key: Ed25519PrivateKey) -> None:
    old = signed(key, "restart", at=NOW - timedelta(seconds=WINDOW + 1))
    assert code(device.send("restart", old)) == "stale" and device.restarts == []


def test_a_command_from_the_future_is_stale(device: Device, key: Ed25519PrivateKey) -> None:
    assert code(device.send("restart", signed(key, "restart", at=NOW + timedelta(seconds=WINDOW + 1)))) == "stale"


def test_a_replayed_command_is_refused_and_not_run_again(device: Device, key: Ed25519PrivateKey) -> None:
    payload = signed(key, "restart")
    device.send("restart", payload)
    assert code(device.send("restart", payload, now=NOW + timedelta(seconds=5))) == "replayed"
    assert device.restarts == [1]
    assert "replayed" in [r["details"].get("code") for r in device.audit()]


def test_a_re_signed_retry_gets_the_first_answer(device: Device, key: Ed25519PrivateKey) -> None:
    first = device.send("restart", signed(key, "restart", "retry"))
    later = NOW + timedelta(seconds=5)
    assert device.send("restart", signed(key, "restart", "retry", at=later), now=later) == first
    assert device.restarts == [1]


def test_unsigned_commands_run_when_explicitly_allowed(
    tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey
) -> None:
    device = secured(tmp_path, pipeline, key, unsigned=True)
    assert device.call("restart", signed=False)["status"] == "ok" and device.restarts == [1]


def test_a_bad_signature_is_refused_even_when_unsigned_commands_are_allowed(
    tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey
) -> None:
    device = secured(tmp_path, pipeline, key, unsigned=True)
    assert code(device.send("ping", signed(Ed25519PrivateKey.generate(), "ping"))) == "unauthorized"


def test_signing_required_with_allow_unsigned_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allow_unsigned"):
        CommandSecurity.from_settings(CommandSettings(signing_required=True, allow_unsigned=True), DEVICE)


def test_the_canonical_form_ignores_key_order_and_the_signature() -> None:
    a = canonical_request(DEVICE, "ping", {"request_id": "1", "args": {}, "signature": "x"})
    assert a == canonical_request(DEVICE, "ping", {"args": {}, "request_id": "1"})


def test_public_keys_load_from_base64_and_pem_files(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pem = tmp_path / "ops.pem"
    pem.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    other = Ed25519PrivateKey.generate()
    keys = load_public_keys((str(pem), public_key_text(other)))
    assert set(keys) == {key_id(key.public_key()), key_id(other.public_key())}


@pytest.mark.parametrize("entry", ["relative/ops.pem", "/nonexistent/ops.pem", "c2hvcnQ="])
def test_an_unusable_public_key_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"commands\.public_keys\[0\]"):
        load_public_keys((entry,))


def test_a_private_key_loads_from_pem(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = write_private_key(key, tmp_path / "ops.key")
    assert key_id(load_private_key(path).public_key()) == key_id(key.public_key())


def test_a_file_that_is_no_private_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ops.key"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_the_replay_cache_forgets_what_would_be_stale_anyway() -> None:
    cache = ReplayCache()
    assert cache.add("a", NOW + timedelta(seconds=10), NOW)
    assert not cache.add("a", NOW + timedelta(seconds=10), NOW + timedelta(seconds=5))
    assert cache.add("a", NOW + timedelta(seconds=30), NOW + timedelta(seconds=11))


def test_the_replay_cache_is_bounded() -> None:
    cache = ReplayCache(max_entries=2)
    for name in "abc":
        cache.add(name, NOW + timedelta(hours=1), NOW)
    assert len(cache._seen) == 2


def test_the_signature_is_base64_of_64_bytes(key: Ed25519PrivateKey) -> None:
    request = sign_request(key, DEVICE, "ping", {"request_id": "1"}, now=NOW)
    assert len(base64.b64decode(request["signature"])) == 64 and request["sent_at"] == "2025-06-01T12:00:00.000Z"


def test_a_replay_after_a_restart_is_refused(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey) -> None:
    commands = CommandSettings(
        signing_required=True, public_keys=(public_key_text(key),), timestamp_window_seconds=WINDOW
    )

    def boot() -> Device:
        replays = StoredReplayCache(tmp_path / "gallery.db")
        security = CommandSecurity.from_settings(commands, DEVICE, replays)
        return make_device(tmp_path, pipeline, commands=commands, security=security)

    payload = signed(key, "restart")
    before = boot()
    assert before.send("restart", payload)["status"] == "ok"
    before.dispatcher.close()
    after = boot()
    assert code(after.send("restart", payload, now=NOW + timedelta(seconds=5))) == "replayed"
    assert after.restarts == []


def test_the_stored_replay_cache_falls_back_to_memory_when_the_gallery_cannot_be_written(tmp_path: Path) -> None:
    replays = StoredReplayCache(tmp_path / "no-such-folder" / "gallery.db")
    expires = NOW + timedelta(seconds=WINDOW)
    assert replays.add("k", expires, NOW)
    assert not replays.add("k", expires, NOW + timedelta(seconds=1))


# ------------------------------------------------------------------------- requests for every device


def fleet_signed(key: Ed25519PrivateKey, name: str, *, sign_for: str = FLEET, to: str | None = FLEET) -> bytes:
    request: dict[str, object] = {"request_id": "f1", "origin": "ops", "args": {}}
    if to is not None:
        request["to"] = to
    return json.dumps(sign_request(key, sign_for, name, request, now=NOW)).encode()


def test_a_request_signed_for_every_device_runs_on_any_and_is_audited_as_such(
    device: Device, key: Ed25519PrivateKey
) -> None:
    assert device.send("restart", fleet_signed(key, "restart"))["status"] == "ok"
    assert device.audit()[0]["details"]["to"] == FLEET


def test_a_request_signed_for_one_device_cannot_pass_as_one_for_every_device(
    device: Device, key: Ed25519PrivateKey
) -> None:
    assert code(device.send("restart", fleet_signed(key, "restart", sign_for="dev2"))) == "unauthorized"


def test_a_request_signed_for_every_device_cannot_pass_as_one_for_this_device(
    device: Device, key: Ed25519PrivateKey
) -> None:
    assert code(device.send("restart", fleet_signed(key, "restart", to=None))) == "unauthorized"


def test_a_request_for_every_device_is_refused_when_replayed(device: Device, key: Ed25519PrivateKey) -> None:
    copy = fleet_signed(key, "restart")
    assert device.send("restart", copy)["status"] == "ok"
    assert code(device.send("restart", copy)) == "replayed"


def test_only_every_device_may_be_named_as_the_audience(device: Device, key: Ed25519PrivateKey) -> None:
    assert code(device.send("restart", fleet_signed(key, "restart", sign_for="dev1", to="dev1"))) == "bad_request"

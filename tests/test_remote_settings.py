"""Remote settings on an installed device: set_config writes an overlay in the state directory, laid over the
read-only local file at load time; applying settings keeps the command line's overrides and installed models;
the audit log keeps a floor that no remote command can lower."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main as cli_main
from agent.commands.signing import public_key_text, sign_request
from agent.config import (
    AUDIT_DAYS_MINIMUM,
    load_layered,
    load_settings,
    read_remote,
    remote_settings_path,
)
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import start_agent
from tests.support.broker import Broker, Observer
from tests.support.commands import NOW, Device, device_trusting
from tests.support.data import DEFAULT_THRESHOLD, copy_clip_frames

DEVICE = "dev1"


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey) -> Device:
    return device_trusting(tmp_path, pipeline, key, DEVICE)


def signed_call(device: Device, key: Ed25519PrivateKey, name: str, *, at: datetime = NOW, **args: object) -> dict:
    return device.call_as(key, name, args, now=at)


def local_file(device: Device, text: str) -> None:
    """Add to the device's local settings file and run with it, as a restart would."""
    device.settings_path.write_text(device.settings_path.read_text() + text)
    device.current[0] = dataclasses.replace(load_settings(device.settings_path), commands=device.current[0].commands)


def overlay(device: Device) -> Path:
    return remote_settings_path(device.store_path)


# ------------------------------------------------------------------------------------ loading


def test_the_overlay_is_laid_over_the_local_file(tmp_path: Path) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[gallery]\npath = "{tmp_path / "g.db"}"\n[events]\ncooldown_seconds = 30\n')
    remote_settings_path(tmp_path / "g.db").write_text("[events]\ncooldown_seconds = 5\n")
    layered = load_layered(config)
    assert (layered.settings.events.cooldown_seconds, layered.local.events.cooldown_seconds) == (5.0, 30.0)
    assert layered.remote == {"events.cooldown_seconds": 5} and layered.problem is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[events\ncooldown_seconds = 5\n", "not valid TOML"),
        ('[mqtt]\nurl = "mqtt://elsewhere"\n', "mqtt.url: not a remotely settable key"),
        ("[events]\ncooldown_seconds = -1\n", "events.cooldown_seconds"),
        ("[retention]\naudit_days = 0\n", "retention.audit_days: may not be set remotely below 365"),
    ],
    ids=["corrupt", "not-settable", "out-of-range", "below-audit-floor"],
)
def test_a_bad_overlay_is_reported_and_ignored(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[gallery]\npath = "{tmp_path / "g.db"}"\n[events]\ncooldown_seconds = 30\n')
    remote_settings_path(tmp_path / "g.db").write_text(text + "[quality]\nmin_score = 0.5\n")
    layered = load_layered(config)
    assert layered.settings == layered.local and layered.remote == {}
    assert problem in (layered.problem or "")


def test_config_check_marks_the_keys_from_the_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text("[events]\ncooldown_seconds = 30\n")
    remote_settings_path(tmp_path / "g.db").write_text("[events]\ncooldown_seconds = 5\n")
    assert cli_main(["--db", str(tmp_path / "g.db"), "config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "cooldown_seconds = 5.0  # remote (local: 30.0)" in out
    assert "unknown_cooldown_seconds = 10.0\n" in out  # a local key is not marked


# ------------------------------------------------------------------------------------ set_config


def test_set_config_persists_in_a_private_overlay_not_in_the_local_file(device: Device, key: Ed25519PrivateKey) -> None:
    before = device.settings_path.read_bytes()
    reply = signed_call(device, key, "set_config", values={"gallery.threshold": 0.3})
    assert reply["status"] == "ok", reply
    assert device.settings_path.read_bytes() == before
    assert overlay(device).stat().st_mode & 0o777 == 0o600
    assert read_remote(overlay(device)) == {"gallery.threshold": 0.3}
    assert load_layered(device.settings_path).settings.gallery.threshold == 0.3


def test_set_config_keeps_earlier_remote_changes(device: Device, key: Ed25519PrivateKey) -> None:
    signed_call(device, key, "set_config", values={"gallery.threshold": 0.3})
    signed_call(device, key, "set_config", values={"events.cooldown_seconds": 5})
    assert read_remote(overlay(device)) == {"gallery.threshold": 0.3, "events.cooldown_seconds": 5.0}


def test_set_config_keeps_what_the_running_settings_override(device: Device, key: Ed25519PrivateKey) -> None:
    running = device.current[0]
    camera = dataclasses.replace(running.camera, source="folder:/srv/frames")  # `run --source`
    models = dataclasses.replace(running.models, dir=device.store_path.parent / "models")  # a model update
    device.current[0] = dataclasses.replace(running, camera=camera, models=models)
    assert signed_call(device, key, "set_config", values={"gallery.threshold": 0.3})["status"] == "ok"
    now = device.current[0]
    assert (now.camera.source, now.models.dir, now.gallery.threshold) == (camera.source, models.dir, 0.3)


def test_a_settings_change_is_audited_with_old_and_new_values(device: Device, key: Ed25519PrivateKey) -> None:
    signed_call(device, key, "set_config", values={"gallery.threshold": 0.3})
    (row,) = [r for r in device.audit() if r["action"] == "command.set_config"]
    assert (
        row["details"]["gallery.threshold.old"] == DEFAULT_THRESHOLD and row["details"]["gallery.threshold.new"] == 0.3
    )


# ------------------------------------------------------------------------------------ audit floor


def test_set_config_cannot_lower_audit_retention_below_the_minimum(device: Device, key: Ed25519PrivateKey) -> None:
    local_file(device, f"[retention]\naudit_days = {AUDIT_DAYS_MINIMUM / 2}\n")  # even when the local file is lower
    reply = signed_call(device, key, "set_config", values={"retention.audit_days": 0})
    assert reply["status"] == "error" and reply["error"]["code"] == "bad_request"
    assert "retention.audit_days" in reply["error"]["message"] and not overlay(device).exists()


def test_set_config_cannot_lower_audit_retention_below_the_local_value(device: Device, key: Ed25519PrivateKey) -> None:
    local_file(device, "[retention]\naudit_days = 500\n")
    reply = signed_call(device, key, "set_config", values={"retention.audit_days": 400})
    assert reply["status"] == "error" and reply["error"]["code"] == "bad_request"
    assert device.current[0].retention.audit_days == 500


def test_set_config_may_raise_audit_retention(device: Device, key: Ed25519PrivateKey) -> None:
    assert signed_call(device, key, "set_config", values={"retention.audit_days": 400})["status"] == "ok"
    assert device.current[0].retention.audit_days == 400


def test_purge_events_keeps_audit_records_younger_than_the_floor(device: Device, key: Ed25519PrivateKey) -> None:
    signed_call(device, key, "ping")  # an audit record, written now
    running = device.current[0]
    retention = dataclasses.replace(running.retention, audit_days=0.0)  # however the running value got there
    device.current[0] = dataclasses.replace(running, retention=retention)
    later = datetime.now(UTC) + timedelta(days=30)
    reply = signed_call(device, key, "purge_events", at=later, older_than_days=0)
    assert reply["status"] == "ok" and reply["data"]["purged"]["audit"] == 0
    assert [r for r in device.audit() if r["action"] == "command.ping"]


# ------------------------------------------------------------------------------------ the running agent


@pytest.fixture
def agent(
    tmp_path: Path, broker: Broker, shared_data: Path, models_dir: Path, key: Ed25519PrivateKey
) -> Iterator[tuple[Path, Path, Path]]:
    """`faceagent run --db --source --mqtt` with models installed by an update, its local file read-only
    to it in spirit (it must not change), signing required."""
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    shutil.copytree(models_dir, state / "models")  # what a model update leaves: the state dir's manifest wins
    config = etc / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1"\ndevice_id = "{DEVICE}"\n[camera]\nfps = 2\nloop = true\n'
        f'[commands]\nsigning_required = true\npublic_keys = ["{public_key_text(key)}"]\n'
    )
    source = copy_clip_frames(shared_data, tmp_path / "frames", 3)
    process = start_agent(config, state / "gallery.db", source, "--mqtt", broker.url, stderr=subprocess.PIPE)
    yield config, state, source
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)


def ask(operator: Observer, key: Ed25519PrivateKey, name: str, request_id: str, **args: object) -> dict:
    request = sign_request(key, DEVICE, name, {"request_id": request_id, "args": args}, now=datetime.now(UTC))
    operator.publish(f"faceagent/{DEVICE}/cmd/{name}", json.dumps(request).encode())
    topic = f"faceagent/{DEVICE}/cmd/{name}/reply"
    assert operator.wait_for(lambda _: any(m.json()["request_id"] == request_id for m in operator.on(topic)), 60)
    return next(m.json() for m in operator.on(topic) if m.json()["request_id"] == request_id)


@pytest.mark.slow
def test_the_running_agent_keeps_its_overrides_and_models_after_set_config(
    agent: tuple[Path, Path, Path], broker: Broker, observe, key: Ed25519PrivateKey
) -> None:
    config, state, source = agent
    before = config.read_bytes()
    operator = observe(broker, [f"faceagent/{DEVICE}/cmd/+/reply", f"faceagent/{DEVICE}/status"])
    assert operator.wait_for(lambda ms: any(m.json().get("state") == "online" for m in ms), 120)
    assert ask(operator, key, "set_config", "set-1", values={"gallery.threshold": 0.3})["status"] == "ok"
    settings = ask(operator, key, "get_config", "get-1")["data"]["settings"]
    assert settings["gallery"]["threshold"] == 0.3
    assert (settings["gallery"]["path"], settings["camera"]["source"], settings["mqtt"]["url"]) == (
        str(state / "gallery.db"),
        str(source),
        broker.url,
    )
    assert settings["models"]["dir"] == str(state / "models")
    assert config.read_bytes() == before and (state / "settings.remote.toml").stat().st_mode & 0o777 == 0o600

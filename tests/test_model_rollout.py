"""Model releases as an operator ships them: `faceagent ctl model-release` signs a bundle where the release key
is kept, `faceagent ctl model-update BUNDLE` ships it with only a command key; with `--all`, each phase (begin,
every chunk, commit) crosses the broker once for the fleet. Devices are the real link, dispatcher and
`ModelUpdater` (tests/support/model_updates.py) on a real Mosquitto; every candidate is checked by the real
child process on the real test faces."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.main import main
from agent.cli.releases import ReleaseError, read_bundle
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.wire import FLEET
from tests.support.broker import FAST_LINK, Broker, Observer
from tests.support.commands import Device, serve_link, write_private_key
from tests.support.model_updates import Live, dlib_device, updater

NEW_ID = "dlib-resnet29-int8-b"
RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"faceagent rollout test release key").digest())


@dataclass
class Updatable:
    """A device on the broker that takes model updates signed by RELEASE_KEY."""

    live: Live
    link: MqttLink
    inbox: queue.Queue[CommandRequest | None]
    worker: threading.Thread

    def stop(self) -> None:
        self.inbox.put(None)
        self.worker.join(60)
        self.link.stop({"schema": 1, "state": "offline", "device": self.link.topics.device}, timeout=1.0)


@pytest.fixture
def start_device(broker: Broker, tmp_path: Path) -> Iterator[Callable[[str], Updatable]]:
    started: list[Updatable] = []
    lock = threading.Lock()  # the devices run in this process: one command (and TFLite call) at a time

    def start(device_id: str) -> Updatable:
        (tmp_path / device_id).mkdir()
        inbox: queue.Queue[CommandRequest | None] = queue.Queue()
        link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), device_id, inbox.put)
        lives: list[Live] = []

        def make() -> Device:
            lives.append(dlib_device(tmp_path / device_id, device_id))  # the release ships dlib's file
            device = lives[0].device
            device.services.model_updates = updater(RELEASE_KEY, lives[0])
            return device

        _, worker = serve_link(link, inbox, make, lock)
        started.append(Updatable(lives[0], link, inbox, worker))
        return started[-1]

    yield start
    for device in started:
        device.stop()


def release(folder: Path, int8: bytes) -> Path:
    """The int8 embedder released under a new id by `faceagent ctl model-release`; the bundle's path."""
    model = folder / "dlib_resnet29_int8_b.tflite"
    model.write_bytes(int8)
    key = write_private_key(RELEASE_KEY, folder / "release.pem")
    meta = ["--model-id", NEW_ID, "--role", "embedder", "--model-version", "2", "--model-key", str(key)]
    assert main(["ctl", "model-release", str(model), *meta]) == 0
    return folder / "dlib_resnet29_int8_b.release.json"


def ship(capsys: pytest.CaptureFixture[str], broker: Broker, bundle: Path, key: Path, *where: str) -> tuple[int, str]:
    """`faceagent ctl model-update BUNDLE` with the command key only: (exit status, stdout)."""
    capsys.readouterr()
    status = main(["ctl", "model-update", str(bundle), *where, "--mqtt", broker.url, "--sign-key", str(key)])
    return status, capsys.readouterr().out


@pytest.mark.slow  # the real child process checks the candidate on every device
def test_a_bundle_is_shipped_without_the_release_key_and_goes_live(
    broker, start_device, tmp_path, int8, capsys, operator_key_file
) -> None:
    device = start_device("dev1")
    bundle = release(tmp_path, int8)
    (tmp_path / "release.pem").unlink()  # the release key stays with its publisher
    status, out = ship(capsys, broker, bundle, operator_key_file, "--device", "dev1")
    assert status == 0 and f"dev1: SUCCEEDED: {NEW_ID} version 2" in out, out
    assert device.live.swaps == 1 and device.live.pipeline.embedder.info.model_id == NEW_ID


@pytest.mark.slow  # the real child process checks the candidate on every device
def test_ctl_model_update_all_sends_each_phase_once_for_the_whole_fleet(
    broker, start_device, tmp_path, int8, capsys, operator_key_file, observe
) -> None:
    requests: Observer = observe(broker, ["faceagent/+/cmd/model_update"])
    devices = [start_device(name) for name in ("dev1", "dev2", "dev3")]
    status, out = ship(capsys, broker, release(tmp_path, int8), operator_key_file, "--all")
    assert status == 0 and all(f"{name}: SUCCEEDED" in out for name in ("dev1", "dev2", "dev3")), out
    assert all(device.live.swaps == 1 for device in devices)
    phases = [json.loads(m.payload)["args"]["phase"] for m in requests.messages]
    chunks = len(range(0, len(int8), 256 * 1024))
    assert phases == ["begin"] + ["chunk"] * chunks + ["commit"]  # once each, not once per device
    assert {m.topic for m in requests.messages} == {f"faceagent/{FLEET}/cmd/model_update"}


def test_a_bundle_whose_model_was_changed_is_refused_before_anything_is_sent(tmp_path: Path, int8: bytes) -> None:
    bundle = release(tmp_path, int8)
    (tmp_path / "dlib_resnet29_int8_b.tflite").write_bytes(int8[:-1] + b"\0")
    with pytest.raises(ReleaseError, match="is not the model this release signs"):
        read_bundle(bundle)


def test_a_model_without_a_release_key_or_a_bundle_is_refused(tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    assert main(["ctl", "model-release", str(model), "--model-id", "m", "--role", "embedder"]) == 2
    err = capsys.readouterr().err
    assert "give --model-key, --model-version" in err and "release bundle" in err

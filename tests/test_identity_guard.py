"""`enroll` over MQTT is no identification oracle and hijacks no identity: signed requests through the real
dispatcher, the real pipeline and real LFW photos, and once through `faceagent run` on a real Mosquitto."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signing import key_id, public_key_text
from agent.gallery.store import GalleryStore
from agent.vision.pipeline import FacePipeline
from tests.support.agent_process import enroll_cli, faceagent, start_agent
from tests.support.broker import Broker
from tests.support.commands import Device, device_trusting, image_arg, write_private_key
from tests.support.data import CLIP_FRAMES, DEFAULT_EMBEDDER_ID, POWELL, POWELL_PROBE, bush, powell

DEVICE = "dev1"
DISTANCE = re.compile(r"\d\.\d")  # a score to optimise against


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey) -> Device:
    return device_trusting(tmp_path, pipeline, key, DEVICE)


def enroll(device: Device, key: Ed25519PrivateKey, **args: Any) -> dict:
    return device.call_as(key, "enroll", args)


def enroll_powell(device: Device, key: Ed25519PrivateKey, shared_data: Path) -> str:
    reply = enroll(device, key, name="Colin Powell", images=[image_arg(powell(shared_data, n), n) for n in POWELL])
    assert reply["status"] == "ok", reply
    return reply["data"]["person"]["id"]


def test_a_photo_matching_another_person_is_answered_without_name_id_or_distance(
    device: Device, key: Ed25519PrivateKey, shared_data: Path
) -> None:
    powell_id = enroll_powell(device, key, shared_data)
    reply = enroll(device, key, name="Someone", images=[image_arg(powell(shared_data, POWELL_PROBE), "probe")])
    assert reply["status"] == "error" and reply["error"]["code"] == "bad_request"
    text = json.dumps(reply)
    assert "conflict: this face already matches another enrolled person" in text
    assert "Powell" not in text and powell_id not in text and not DISTANCE.search(text)


def test_another_persons_photo_is_refused_for_an_enrolled_person_naming_nobody(
    device: Device, key: Ed25519PrivateKey, shared_data: Path
) -> None:
    powell_id = enroll_powell(device, key, shared_data)
    images = [image_arg(powell(shared_data, POWELL_PROBE), "genuine"), image_arg(bush(shared_data), "other")]
    reply = enroll(device, key, person_id=powell_id, images=images)
    assert reply["status"] == "ok", reply
    outcomes = {photo["label"]: photo for photo in reply["data"]["photos"]}
    assert outcomes["genuine"]["accepted"] and not outcomes["other"]["accepted"]
    reason = outcomes["other"]["reason"]
    assert reason.startswith("not the same person") and "Powell" not in reason and not DISTANCE.search(reason)
    with GalleryStore.open(device.store_path) as store:
        assert store.count_templates(powell_id, DEFAULT_EMBEDDER_ID) == len(POWELL) + 1


def test_another_persons_photo_is_added_with_force_and_audited(
    device: Device, key: Ed25519PrivateKey, shared_data: Path
) -> None:
    powell_id = enroll_powell(device, key, shared_data)
    reply = enroll(device, key, person_id=powell_id, images=[image_arg(bush(shared_data), "other")], force=True)
    assert reply["status"] == "ok" and reply["data"]["templates_added"] == 1, reply
    (record,) = [r for r in device.audit() if r["action"] == "person.enroll" and r["details"]["forced"]]
    assert record["actor"] == f"key:{key_id(key.public_key())}" and record["target"] == powell_id
    assert record["details"]["mismatches_overridden"] == 1


@pytest.mark.slow  # the faceagent command as a real process
def test_the_local_cli_names_the_match(tmp_path: Path, shared_data: Path) -> None:
    """`faceagent enroll` reads the gallery file itself, so naming whom a photo matches reveals nothing new."""
    db = tmp_path / "gallery.db"
    powell_id = enroll_cli(None, db, "Colin Powell", powell(shared_data, POWELL[0]))
    again = faceagent("enroll", "--db", str(db), "--name", "Someone", str(powell(shared_data, POWELL_PROBE)))
    assert again.returncode == 2 and f"matches Colin Powell ({powell_id}) at distance 0." in again.stderr


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_faceagent_run_answers_a_conflicting_enroll_without_naming_anyone(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = write_private_key(key, tmp_path / "ops.pem")
    config = tmp_path / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n'
        f'[commands]\nsigning_required = true\npublic_keys = ["{public_key_text(key)}"]\n'
        "[camera]\nfps = 5\nloop = true\n"
    )
    db = tmp_path / "gallery.db"
    powell_id = enroll_cli(config, db, "Colin Powell", *(powell(shared_data, n) for n in POWELL))
    probe = tmp_path / "probe.jpg"  # ctl labels a photo with its file name
    probe.write_bytes(powell(shared_data, POWELL_PROBE).read_bytes())
    observer = observe(broker, [f"faceagent/{DEVICE}/#"])
    agent = start_agent(config, db, shared_data / CLIP_FRAMES, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        online = f"faceagent/{DEVICE}/status"
        assert observer.wait_for(lambda _: any(m.json()["state"] == "online" for m in observer.on(online)), 60)
        ctl = faceagent(
            "ctl", "enroll", "--mqtt", broker.url, "--timeout", "60", "--sign-key", str(key_file),
            "--device", DEVICE, "--name", "Someone", str(probe), config=config,
        )  # fmt: skip
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    (reply,) = [m for m in observer.messages if m.topic.endswith("/cmd/enroll/reply")]
    message = reply.json()["error"]["message"]
    assert "conflict: this face already matches another enrolled person" in message, message
    for leak in ("Powell", powell_id):
        assert leak not in reply.payload.decode() and leak not in ctl.stdout + ctl.stderr
    assert not DISTANCE.search(message)

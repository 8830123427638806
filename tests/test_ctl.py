"""`faceagent ctl` end to end: the operator's CLI, a real Mosquitto, devices running the real link and
dispatcher (each in its own folder with its own gallery)."""

from __future__ import annotations

import base64
import functools
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.commands.signing import CommandSecurity, load_private_key, public_key_text
from agent.config import CommandSettings, load_layered
from agent.gallery.store import GalleryStore
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.broker import FAST_LINK, Broker, free_port
from tests.support.commands import Device, make_device, operator_commands, serve_link
from tests.support.data import DEFAULT_THRESHOLD, POWELL, POWELL_PROBE, powell


@dataclass
class Running:
    """A device on the broker: MqttLink in, the dispatcher on a worker thread, replies out."""

    device: Device
    link: MqttLink
    worker: threading.Thread
    inbox: queue.Queue[CommandRequest | None]

    def stop(self) -> None:
        self.inbox.put(None)
        self.worker.join(10)
        self.link.stop({"schema": 1, "state": "offline", "device": self.link.topics.device}, timeout=1.0)


@pytest.fixture
def run_device(broker: Broker, tmp_path: Path, pipeline: FacePipeline) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []
    # The devices share this process's one pipeline, and a TFLite interpreter serves one thread at a time.
    pipeline_lock = threading.Lock()

    def start(device_id: str, *, protocol: str = "5", commands: CommandSettings | None = None) -> Running:
        commands = commands or operator_commands()
        (tmp_path / device_id).mkdir()
        security = CommandSecurity.from_settings(commands, device_id)
        inbox: queue.Queue[CommandRequest | None] = queue.Queue()
        link = MqttLink(BrokerSettings(url=broker.url, protocol=protocol, **FAST_LINK), device_id, inbox.put)
        make = functools.partial(make_device, tmp_path / device_id, pipeline, commands=commands, security=security)
        device, worker = serve_link(link, inbox, make, pipeline_lock)
        running.append(Running(device, link, worker, inbox))
        return running[-1]

    yield start
    for item in running:
        item.stop()


def ctl(capsys: pytest.CaptureFixture[str], broker: Broker, *args: str, key: Path | None = None) -> tuple[int, str]:
    """Run `faceagent ctl ...` in this process, signed with `key` if given; (exit status, stdout + stderr)."""
    signing = ["--sign-key", str(key)] if key else []
    status = main(["ctl", *args, "--mqtt", broker.url, "--timeout", "20", *signing])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def recognized(pipeline: FacePipeline, running: Running, shared_data: Path) -> str | None:
    probe = load_image(powell(shared_data, POWELL_PROBE))
    match = running.device.matcher.search(pipeline.embed_face(probe, pipeline.detect(probe)[0]).embedding)
    return match.name if match.accepted else None


def test_devices_are_listed_from_their_retained_status(broker, run_device, capsys) -> None:
    run_device("dev1")
    run_device("dev2")
    status, out = ctl(capsys, broker, "devices", "--json")
    assert status == 0
    assert {json.loads(line)["device"]: json.loads(line)["status"]["state"] for line in out.splitlines()} == {
        "dev1": "online",
        "dev2": "online",
    }


def test_status_asks_the_device(broker, run_device, capsys) -> None:
    run_device("dev1")
    status, out = ctl(capsys, broker, "status", "dev1", "--json")
    assert status == 0 and json.loads(out)["reply"]["data"]["state"] == "online"


def test_enroll_on_two_devices_then_both_recognize_him(
    broker, run_device, capsys, shared_data, pipeline, operator_key_file
) -> None:
    devices = [run_device("dev1"), run_device("dev2", protocol="3.1.1")]
    photos = [str(powell(shared_data, n)) for n in POWELL]
    status, out = ctl(
        capsys,
        broker,
        "enroll",
        *photos,
        "--name",
        "Colin Powell",
        "--device",
        "dev1",
        "--device",
        "dev2",
        key=operator_key_file,
    )
    assert status == 0, out
    assert out.count("enrolled Colin Powell") == 2
    assert [recognized(pipeline, d, shared_data) for d in devices] == ["Colin Powell", "Colin Powell"]


def test_delete_by_name_reaches_every_online_device(
    broker, run_device, capsys, shared_data, pipeline, operator_key_file
) -> None:
    devices = [run_device("dev1"), run_device("dev2")]
    photo = str(powell(shared_data, POWELL[0]))
    ctl(capsys, broker, "enroll", photo, "--name", "Colin Powell", "--all", key=operator_key_file)
    status, out = ctl(capsys, broker, "delete", "--name", "Colin Powell", key=operator_key_file)
    assert status == 0, out
    assert out.count("deleted p_") == 2
    assert [len(d.device.matcher) for d in devices] == [0, 0]


def test_an_offline_device_is_reported_not_skipped_silently(
    broker, run_device, capsys, observe, operator_key_file
) -> None:
    run_device("dev1")
    watcher = observe(broker, ["faceagent/dev2/status"])
    dev2 = run_device("dev2")
    assert watcher.wait_for(lambda messages: any(m.json()["state"] == "online" for m in messages), 5)
    dev2.stop()
    assert watcher.wait_for(lambda messages: messages[-1].json()["state"] == "offline", 5)
    status, out = ctl(capsys, broker, "delete", "--name", "Nobody", key=operator_key_file)
    assert status == 1 and "dev2: offline, skipped" in out


def test_config_set_is_persisted_on_the_device(broker, run_device, capsys, operator_key_file) -> None:
    running = run_device("dev1")
    status, out = ctl(
        capsys, broker, "config", "set", "gallery.threshold=0.3", "--device", "dev1", key=operator_key_file
    )
    assert status == 0 and "gallery.threshold = 0.3" in out
    assert load_layered(running.device.settings_path).settings.gallery.threshold == 0.3


def test_config_get_prints_the_settings(broker, run_device, capsys) -> None:
    run_device("dev1")
    status, out = ctl(capsys, broker, "config", "get", "dev1")
    assert status == 0 and f"gallery.threshold = {DEFAULT_THRESHOLD:g}" in out


def test_audit_prints_a_page_of_the_device_log_and_how_to_ask_for_older(
    broker, run_device, capsys, operator_key_file
) -> None:
    running = run_device("dev1")
    with GalleryStore.open(running.device.store_path) as store:
        for number in range(3):
            store.audit("cli:ops", "person.update", f"p_000{number}", {"fields": "name"})
    status, out = ctl(capsys, broker, "audit", "dev1", "--limit", "2", key=operator_key_file)
    assert status == 0 and "dev1: 2 audit records, newest first (older records: --before 2)" in out, out
    status, out = ctl(capsys, broker, "audit", "dev1", "--before", "2", key=operator_key_file)
    lines = out.splitlines()
    assert status == 0 and "(no older records)" in lines[0] and "cli:ops  person.update  p_0000" in lines[1], out


def test_a_refused_command_exits_1_with_the_reason(broker, run_device, capsys, operator_key_file) -> None:
    run_device("dev1")
    status, out = ctl(capsys, broker, "call", "dev1", "delete_person", '{"person_id": "p_0123"}', key=operator_key_file)
    assert status == 1 and "error (not_found)" in out


def test_a_silent_device_is_named_after_the_timeout(broker, capsys) -> None:
    status = main(["ctl", "call", "ghost", "ping", "--mqtt", broker.url, "--timeout", "0.5"])
    assert status == 1 and "ghost: no reply within 0.5 s" in capsys.readouterr().out


def test_events_are_tailed_live(broker, run_device, capsys) -> None:
    running = run_device("dev1")

    def publish_soon() -> None:
        threading.Event().wait(1.0)
        running.link.publish_event("face_recognized", b'{"event_id":"e1","name":"Ada","at":"2025-06-01T12:00:00Z"}')

    threading.Thread(target=publish_soon, daemon=True).start()
    status, out = ctl(capsys, broker, "events", "--count", "1", "--seconds", "10")
    assert status == 0 and out.split() == ["2025-06-01T12:00:00Z", "dev1", "face_recognized", "Ada", "e1"]


def test_a_key_made_by_keygen_signs_commands_the_device_runs(broker, run_device, capsys, tmp_path) -> None:
    key_file = tmp_path / "ops.key"
    assert main(["ctl", "keygen", str(key_file)]) == 0
    public = public_key_text(load_private_key(key_file))
    capsys.readouterr()
    run_device("dev1", commands=CommandSettings(public_keys=(public,)))
    status, out = ctl(capsys, broker, "call", "dev1", "restart", key=key_file)
    assert status == 0, out


def test_an_unsigned_state_changing_command_is_refused(broker, run_device, capsys) -> None:
    running = run_device("dev1")
    status, out = ctl(capsys, broker, "call", "dev1", "restart")
    assert status == 1 and "error (unauthorized)" in out and running.device.restarts == []


def test_a_command_signed_by_an_unknown_key_is_refused(broker, run_device, capsys, tmp_path) -> None:
    stranger = tmp_path / "stranger.key"
    assert main(["ctl", "keygen", str(stranger)]) == 0
    run_device("dev1")
    status, out = ctl(capsys, broker, "call", "dev1", "ping", key=stranger)
    assert status == 1 and "error (unauthorized)" in out


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path, capsys) -> None:
    key_file = tmp_path / "ops.key"
    assert main(["ctl", "keygen", str(key_file)]) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert public_key_text(load_private_key(key_file)) in capsys.readouterr().out


def test_keygen_keeps_an_existing_key(tmp_path: Path, capsys) -> None:
    key_file = tmp_path / "ops.key"
    key_file.write_text("precious")
    assert main(["ctl", "keygen", str(key_file)]) == 2
    assert key_file.read_text() == "precious"


def test_an_unreachable_broker_is_a_clear_error(capsys) -> None:
    status = main(["ctl", "devices", "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "2"])
    assert status == 2 and "cannot reach the broker" in capsys.readouterr().err


def test_no_broker_configured_is_a_clear_error(tmp_path: Path, capsys) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    assert main(["--config", str(config), "ctl", "devices"]) == 2
    assert "no broker" in capsys.readouterr().err


def test_replies_carry_no_image_bytes(broker, run_device, capsys, shared_data, observe, operator_key_file) -> None:
    run_device("dev1")
    watcher = observe(broker, ["faceagent/dev1/cmd/+/reply", "faceagent/dev1/status", "faceagent/dev1/events/#"])
    photo = powell(shared_data, POWELL[0])
    ctl(capsys, broker, "enroll", str(photo), "--name", "Colin Powell", "--device", "dev1", key=operator_key_file)
    assert watcher.wait_for(lambda messages: any("/reply" in m.topic for m in messages), 10)
    raw = photo.read_bytes()[1000:1064]
    encoded = base64.b64encode(photo.read_bytes())[1000:1064]
    assert not [m.topic for m in watcher.messages if raw in m.payload or encoded in m.payload]


def test_people_pages_through_a_gallery_larger_than_one_reply(broker, run_device, capsys, operator_key_file) -> None:
    """A device answers list_people a page at a time (PEOPLE_PAGE by default); ctl asks for every page."""
    from agent.commands.schema import PEOPLE_PAGE
    from agent.gallery.store import GalleryStore

    running = run_device("dev1")
    with GalleryStore.open(running.device.store_path) as store, store.transaction():
        ids = [store.add_person(f"P{i}").id for i in range(PEOPLE_PAGE + 3)]
    first = running.device.call("list_people")["data"]
    assert (len(first["people"]), first["total"], first["offset"]) == (PEOPLE_PAGE, PEOPLE_PAGE + 3, 0)
    status, out = ctl(capsys, broker, "people", "dev1", "--json", key=operator_key_file)
    assert status == 0, out[-500:]
    assert [p["id"] for p in json.loads(out)["reply"]["data"]["people"]] == ids

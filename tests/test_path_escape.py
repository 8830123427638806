"""Names and ids from outside never reach a file outside the state directory, nor another device's topics.

Every place where a value from a command, the command line, a settings or provisioning file or a model
manifest becomes a file name or an MQTT topic level gets the same hostile values: parent references, absolute
paths, Windows separators, NUL, percent-encoded and Unicode look-alike dots, very long names, MQTT wildcards
and '/'. Each is refused, or kept as plain data; the folders around the state directory are listed before
and after, so a file written (or removed) through an escape fails the test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.cli.main import main
from agent.config import load_settings
from agent.errors import ConfigError, ModelError
from agent.gallery.store import GalleryStore
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.topics import Topics, default_device_id
from agent.modelupdate.install import state_models_dir
from agent.service.provisioning import FILE_NAME, Outcome, provision
from agent.vision.modelstore import ModelStore
from agent.vision.pipeline import FacePipeline
from tests.support.broker import Broker, Observer
from tests.support.commands import Device, data, error, make_device
from tests.support.data import SAMPLE
from tests.support.model_updates import Updates, make_updates

ABSOLUTE = "/tmp/faceagent-escape"
HOSTILE = [
    "..",
    ".",
    "../escape",
    "../../escape",
    ABSOLUTE,
    "..\\escape",
    "a\x00b",
    "%2e%2e",
    "%2e%2e/escape",
    "\uff0e\uff0e/escape",  # fullwidth full stops
    "\u2024\u2024",  # one dot leaders
    "e" * 300,
    "+",
    "#",
    "a/b",
    "a/+/#",
]
IDS = [repr(value)[:24] for value in HOSTILE]


def tree(root: Path) -> list[str]:
    """Every file and folder under `root` (the state directory's surroundings), sorted; the gallery and its
    -wal and -shm files are left out (every command writes an audit record)."""
    paths = (path for path in root.rglob("*") if not path.name.startswith("gallery.db"))
    return sorted(str(path.relative_to(root)) for path in paths)


@pytest.fixture
def no_absolute_escape() -> Iterator[None]:
    assert not Path(ABSOLUTE).exists()
    yield
    assert not Path(ABSOLUTE).exists()


# ------------------------------------------------------------------------------------ model updates


@pytest.fixture(scope="module")
def updating(tmp_path_factory: pytest.TempPathFactory) -> tuple[Updates, Path]:
    """A device whose state directory is <root>/state: anything written beside it is an escape. Shared:
    a refused request changes nothing, which is what each test checks."""
    root = tmp_path_factory.mktemp("updates")
    (root / "state").mkdir()
    return make_updates(root / "state"), root


@pytest.fixture
def updates(updating: tuple[Updates, Path]) -> Updates:
    return updating[0]


@pytest.fixture
def root(updating: tuple[Updates, Path]) -> Path:
    return updating[1]


@pytest.mark.parametrize("job_id", HOSTILE, ids=IDS)
def test_a_job_id_never_names_a_folder_outside_the_staging_area(
    updates: Updates, root: Path, job_id: str, no_absolute_escape: None
) -> None:
    before = tree(root)
    assert error(updates.begin(job_id, b"TFL3 model bytes")) == "bad_request"
    for phase in ("commit", "abort", "status"):
        assert error(updates.call(phase, job_id=job_id)) in {"bad_request", "not_found"}
    assert tree(root) == before


def test_a_job_id_of_three_dots_is_an_ordinary_folder_name(updates: Updates, root: Path) -> None:
    before = tree(root)
    assert data(updates.begin("...", b"TFL3 model bytes"))["status"] == "IN_PROGRESS"
    staging = state_models_dir(updates.device.store_path) / ".staging"
    assert [path.name for path in staging.iterdir()] == ["..."]
    assert data(updates.call("abort", job_id="..."))["status"] == "CANCELED"
    assert not list(staging.iterdir()) and set(before) <= set(tree(root))


@pytest.mark.parametrize("name", [value + ".tflite" for value in HOSTILE] + [".hidden.tflite"], ids=[*IDS, "hidden"])
def test_a_model_file_name_cannot_leave_the_models_folder(
    updates: Updates, root: Path, name: str, no_absolute_escape: None
) -> None:
    before = tree(root)
    reply = updates.begin("job-1", b"TFL3 model bytes", file=name)
    assert error(reply) == "bad_request" and "args.file" in reply["error"]["message"]
    assert tree(root) == before


def test_a_manifest_entry_cannot_rename_the_installed_file(updates: Updates, root: Path) -> None:
    before = tree(root)
    reply = updates.begin("job-1", b"TFL3 model bytes", entry={"file": "../escape.tflite"})
    assert error(reply) == "bad_request" and "'file' is set by the update itself" in reply["error"]["message"]
    assert tree(root) == before


@pytest.mark.parametrize("value", [v for v in HOSTILE if v not in ("..", ".", "+")], ids=lambda v: repr(v)[:24])
def test_a_hostile_model_id_or_version_is_refused(updates: Updates, value: str) -> None:
    assert error(updates.begin("job-1", b"TFL3", model_id=value)) == "bad_request"
    assert error(updates.begin("job-1", b"TFL3", version=value)) == "bad_request"


@pytest.mark.parametrize("name", ["../escape", "../../etc/passwd", ABSOLUTE, "a/b", "..", ""])
def test_a_manifest_file_name_is_never_read_outside_the_models_folder(models_copy: Path, name: str) -> None:
    manifest_path = models_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][0]["file"] = name
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError):
        store = ModelStore(models_copy)
        store.read_verified(store.specs[manifest["models"][0]["id"]])


# ------------------------------------------------------------------------------------ gallery names and ids


@pytest.fixture(scope="module")
def enrolling(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline) -> tuple[Device, Path]:
    root = tmp_path_factory.mktemp("names")
    (root / "state").mkdir()
    return make_device(root / "state", pipeline), root


NAMES = [
    "..",
    "../../escape",
    ABSOLUTE,
    "..\\escape",
    "%2e%2e/escape",
    "\uff0e\uff0e/escape",
    "a/+/#",
    "a\x00b",
    "e" * 300,
]


@pytest.mark.parametrize("name", NAMES, ids=lambda v: repr(v)[:24])
def test_an_enrollment_name_is_data_never_a_path(
    enrolling: tuple[Device, Path], name: str, no_absolute_escape: None
) -> None:
    device, root = enrolling
    before = tree(root)
    photo = {"data": base64.b64encode(SAMPLE.read_bytes()).decode()}
    reply = device.call("enroll", {"name": name, "images": [photo], "force": True})
    if reply["status"] == "ok":
        assert reply["data"]["person"]["name"] == name
    else:
        assert error(reply) == "bad_request"  # NUL (not one line of text), or over 200 characters
    assert tree(root) == before


@pytest.mark.parametrize("person_id", HOSTILE, ids=IDS)
def test_a_hostile_person_id_is_refused(enrolling: tuple[Device, Path], person_id: str) -> None:
    device, _ = enrolling
    assert error(device.call("delete_person", {"person_id": person_id})) == "bad_request"
    assert error(device.call("update_person", {"person_id": person_id, "name": "x"})) == "bad_request"


def test_a_cli_enrollment_name_is_data_never_a_path(tmp_path: Path, no_absolute_escape: None) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = state / "faceagent.toml"
    config.write_text(f'[gallery]\npath = "{state / "gallery.db"}"\n')
    assert main(["--config", str(config), "enroll", "--name", "../../escape", str(SAMPLE)]) == 0
    assert tree(tmp_path) == ["state", "state/faceagent.toml"]


@pytest.mark.parametrize("person_id", [v for v in HOSTILE if "\x00" not in v], ids=lambda v: repr(v)[:24])
def test_a_cli_person_id_is_data_never_a_path(
    tmp_path: Path, person_id: str, capsys: pytest.CaptureFixture[str], no_absolute_escape: None
) -> None:
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[gallery]\npath = "{tmp_path / "gallery.db"}"\n')
    GalleryStore.open(tmp_path / "gallery.db").close()
    before = tree(tmp_path)
    assert main(["--config", str(config), "person", "delete", person_id]) == 2
    assert main(["--config", str(config), "person", "update", person_id, "--name", "x"]) == 2
    assert tree(tmp_path) == before
    assert all(line.startswith("faceagent: ") for line in capsys.readouterr().err.splitlines())


# ------------------------------------------------------------------------------------ topics


@pytest.mark.parametrize("key", ["mqtt.device_id", "events.camera_id"])
@pytest.mark.parametrize("value", HOSTILE[2:], ids=IDS[2:])  # "." and "..": plain data in a camera id
def test_an_id_used_in_topics_must_be_one_safe_level(tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "faceagent.toml"
    path.write_text(f"[{section}]\n{name} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=rf"{key}: must be 1-64 letters"):
        load_settings(path)


@pytest.mark.parametrize("key", ["mqtt.prefix", "homeassistant.discovery_prefix"])
@pytest.mark.parametrize("value", ["+", "#", "a/#", "a/+/b", "/a", "a/", "a//b", "a\x00b", "\uff0e"])
def test_a_topic_prefix_holds_no_wildcard_or_empty_level(tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "faceagent.toml"
    path.write_text(f"[{section}]\n{name} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=rf"{key}: must be 1-100"):
        load_settings(path)


@pytest.mark.parametrize("hostname", HOSTILE, ids=IDS)
def test_a_hostname_standing_in_for_the_device_id_becomes_one_safe_level(tmp_path: Path, hostname: str) -> None:
    device = default_device_id(tmp_path / "no-machine-id", hostname=hostname)
    topics = Topics("faceagent", device)
    assert topics.status.count("/") == 2 and not set("+#\x00") & set(device) and 0 < len(device) <= 64


@pytest.mark.parametrize("event_type", HOSTILE, ids=IDS)
def test_an_event_type_becomes_one_safe_level_under_events(event_type: str) -> None:
    topic = Topics("faceagent", "dev-a").event(event_type)
    level = topic.removeprefix("faceagent/dev-a/events/")
    assert level and "/" not in level and not set("+#\x00") & set(level)


@pytest.mark.parametrize("name", ["../reply", "a/b", "ping/reply", "+/x", "/"])
def test_a_command_topic_with_more_levels_is_no_command(name: str) -> None:
    assert Topics("faceagent", "dev-a").command_name(f"faceagent/dev-a/cmd/{name}") is None


def test_a_remote_setting_cannot_put_a_wildcard_into_the_camera_id(enrolling: tuple[Device, Path]) -> None:
    device, _ = enrolling
    before = device.settings_path.read_bytes()
    reply = device.call("set_config", {"values": {"events.camera_id": "door/#"}})
    assert error(reply) == "bad_request" and device.settings_path.read_bytes() == before


@pytest.fixture(scope="module")
def quiet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the ctl tests: what they check is that nothing reaches it."""
    broker = Broker(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.kill()


@pytest.mark.parametrize("device_id", ["+", "#", "a/b", "dev-b/cmd/restart", "..", "a" * 65, "\uff44ev"])
def test_ctl_refuses_a_device_id_that_is_not_one_topic_level(
    quiet_broker: Broker, observe: Callable[..., Observer], capsys: pytest.CaptureFixture[str], device_id: str
) -> None:
    watcher = observe(quiet_broker, ["#"])
    common = ["--mqtt", quiet_broker.url, "--timeout", "0.2"]
    calls = [
        ["ctl", "call", *common, device_id, "ping"],
        ["ctl", "delete", *common, "--device", device_id, "--name", "A"],
    ]
    if device_id != "+":  # `events --device +`: every device
        calls.append(["ctl", "events", *common, "--device", device_id, "--seconds", "0.2"])
    for argv in calls:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert capsys.readouterr().err.count("is not a device id") == len(calls)
    assert not watcher.wait_for(lambda messages: len(messages) > 0, 0.1)


def test_ctl_refuses_a_command_name_that_is_not_one_topic_level(
    quiet_broker: Broker, observe: Callable[..., Observer], capsys: pytest.CaptureFixture[str]
) -> None:
    watcher = observe(quiet_broker, ["#"])
    for name in ["#", "+", "ping/reply", "../restart", "Ping", "x" * 40]:
        with pytest.raises(SystemExit) as exited:
            main(["ctl", "call", "--mqtt", quiet_broker.url, "--timeout", "0.2", "dev-a", name])
        assert exited.value.code == 2
    assert capsys.readouterr().err.count("is not a command name") == 6
    assert not watcher.wait_for(lambda messages: len(messages) > 0, 0.1)


def test_a_reply_never_goes_to_another_devices_topics(broker: Broker, observe: Callable[..., Observer]) -> None:
    watcher = observe(broker, ["#"])
    link = MqttLink(
        BrokerSettings(url=broker.url, keepalive=5, reconnect_min_seconds=0.1),
        "dev-a",
        on_command=lambda request: link.reply(request, b'{"status":"error"}'),
    )
    link.start()
    try:
        assert link.wait_connected(5)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = "faceagent/dev-b/events/face_recognized"
        watcher.publish("faceagent/dev-a/cmd/ping", b'{"request_id":"1"}', properties=properties)
        assert watcher.wait_for(lambda m: any("/reply" in x.topic or "dev-b" in x.topic for x in m), 5)
    finally:
        link.stop({"schema": 1, "state": "offline"}, timeout=0.5)
    assert not [m.topic for m in watcher.messages if m.topic.startswith("faceagent/dev-b/")]


# ------------------------------------------------------------------------------------ provisioning


@pytest.mark.parametrize("name", [*HOSTILE, FILE_NAME], ids=[*IDS, "config"])
def test_a_provisioned_file_name_cannot_leave_the_configuration_folder(
    tmp_path: Path, name: str, no_absolute_escape: None
) -> None:
    boot, etc, state = tmp_path / "boot", tmp_path / "etc", tmp_path / "state"
    boot.mkdir()
    etc.mkdir()
    (etc / FILE_NAME).write_text('[events]\ncamera_id = "old"\n')
    text = f"[provisioning.files]\n{json.dumps(name)} = " + json.dumps("-----BEGIN CERTIFICATE-----\n") + "\n"
    (boot / FILE_NAME).write_text(text)
    outside = [path for path in tree(tmp_path) if not path.startswith(("boot", "state"))]
    result = provision(boot, etc, state)
    assert result.outcome is Outcome.REJECTED and "a file name of A-Z" in (result.reason or "")
    assert [path for path in tree(tmp_path) if not path.startswith(("boot", "state"))] == outside

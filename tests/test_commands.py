"""Commands through the dispatcher: the reply contract, validation, each command, duplicates, audit."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from agent.commands.dispatcher import DEDUPE_SECONDS
from agent.commands.schema import MODEL_CHUNK_BYTES
from agent.config import load_layered, load_settings, read_remote, remote_settings_path
from agent.gallery.store import GalleryStore
from agent.vision.image import load_image
from agent.vision.pipeline import FacePipeline
from tests.support.commands import NOW, OPERATOR_KEY_ID, Device, error, image_arg, make_device, operator_commands
from tests.support.data import DEFAULT_EMBEDDER_ID, POWELL, POWELL_PROBE, powell

NOW_ISO = "2025-06-01T12:00:00.000Z"


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline) -> Device:
    return make_device(tmp_path, pipeline)


def enroll_powell(device: Device, shared_data: Path, *numbers: str, **envelope: object) -> dict:
    images = [image_arg(powell(shared_data, n), n) for n in numbers or POWELL[:1]]
    return device.call("enroll", {"name": "Colin Powell", "images": images}, **envelope)


# ------------------------------------------------------------------------------ the reply contract


def test_ping_answers_ok_under_the_request_id(device: Device) -> None:
    reply = device.call("ping", request_id="abc-1")
    assert reply == {"schema": 1, "request_id": "abc-1", "status": "ok", "data": {"pong": True, "at": NOW_ISO}}


def test_an_error_reply_has_a_code_and_a_message(device: Device) -> None:
    reply = device.call("ping", {"extra": 1})
    assert set(reply) == {"schema", "request_id", "status", "error"}
    assert set(reply["error"]) == {"code", "message"} and reply["error"]["code"] == "bad_request"


def test_an_unknown_command_is_named_as_such(device: Device) -> None:
    reply = device.call("format_disk", request_id="r-x")
    assert error(reply) == "unknown_command" and reply["request_id"] == "r-x"


def test_an_unknown_argument_is_refused_by_name(device: Device) -> None:
    reply = device.call("delete_person", {"person_id": "p_01", "cascade": True})
    assert error(reply) == "bad_request" and '"cascade"' in reply["error"]["message"]


def test_an_unknown_envelope_field_is_refused(device: Device) -> None:
    assert error(device.call("ping", priority="high")) == "bad_request"


def test_a_request_without_an_id_is_answered_with_a_null_id(device: Device) -> None:
    reply = device.send("ping", b'{"args": {}}')
    assert error(reply) == "bad_request" and reply["request_id"] is None


def test_a_wrong_type_is_refused(device: Device) -> None:
    assert error(device.call("purge_events", {"older_than_days": "7"})) == "bad_request"


def test_an_oversize_payload_is_refused_before_it_is_decoded(device: Device) -> None:
    reply = device.send("ping", b"\xff" * (64 * 1024 + 1))  # not even UTF-8: decoding would say bad_request
    assert error(reply) == "too_large"


@pytest.mark.parametrize("name", ["ping", "delete_person", "set_config", "no_such_command"])
def test_an_oversize_payload_that_is_not_json_is_too_large_not_bad_json(device: Device, name: str) -> None:
    reply = device.send(name, b'{"request_id": "r1", "args": ' + b"[" * (64 * 1024))  # UTF-8; JSON would fail
    assert error(reply) == "too_large" and "over this command's 65536" in reply["error"]["message"]


@pytest.mark.parametrize("name", ["enroll", "model_update"])
def test_a_large_command_over_commands_max_payload_bytes_is_too_large_before_decoding(
    tmp_path: Path, pipeline: FacePipeline, name: str
) -> None:
    device = make_device(tmp_path, pipeline, commands=operator_commands(max_payload_bytes=8192))
    assert error(device.send(name, b'{"request_id": "r1", "args": ' + b"[" * 8192)) == "too_large"


def test_enroll_photos_each_within_the_limit_but_over_the_payload_together_are_too_large(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    limits = operator_commands(max_payload_bytes=64 * 1024, max_image_bytes=32 * 1024)
    device = make_device(tmp_path, pipeline, commands=limits)
    photo = {"data": base64.b64encode(b"\xff\xd8\xff" + bytes(24 * 1024)).decode()}
    reply = device.call("enroll", {"name": "X", "images": [photo] * 3})
    assert error(reply) == "too_large" and "payload is" in reply["error"]["message"]


def test_an_enroll_photo_over_its_limit_is_too_large_before_its_base64_is_decoded(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    device = make_device(tmp_path, pipeline, commands=operator_commands(max_image_bytes=4096))
    reply = device.call("enroll", {"name": "X", "images": [{"data": "!" * 8192}]})  # not base64 either
    assert error(reply) == "too_large"


def test_a_model_chunk_over_its_limit_is_too_large_before_its_base64_is_decoded(device: Device) -> None:
    data = "!" * (4 * MODEL_CHUNK_BYTES // 3 + 8)  # not base64 either
    reply = device.call("model_update", {"phase": "chunk", "job_id": "j1", "index": 0, "data": data})
    assert error(reply) == "too_large"


def test_enroll_may_be_larger_than_other_commands(device: Device) -> None:
    padding = base64.b64encode(b"\xff\xd8\xff" + bytes(100_000)).decode()
    reply = device.call("enroll", {"name": "X", "images": [{"data": padding}]})
    assert error(reply) == "bad_request" and "unreadable" in reply["error"]["message"]


def test_non_utf8_is_refused(device: Device) -> None:
    assert error(device.send("ping", b'{"request_id": "\xc3\x28"}')) == "bad_request"


def test_deep_nesting_is_refused(device: Device) -> None:
    assert error(device.send("ping", b'{"request_id": "a", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}")) == (
        "bad_request"
    )


def test_a_repeated_key_is_refused(device: Device) -> None:
    assert error(device.send("ping", b'{"request_id": "a", "request_id": "b"}')) == "bad_request"


def test_nan_is_refused(device: Device) -> None:
    assert error(device.send("purge_events", b'{"request_id": "a", "args": {"older_than_days": NaN}}')) == (
        "bad_request"
    )


def test_a_json_array_is_refused(device: Device) -> None:
    assert error(device.send("ping", b"[1, 2]")) == "bad_request"


# ------------------------------------------------------------------------------ enroll


def test_enroll_adds_a_person_the_matcher_then_recognizes(
    device: Device, shared_data: Path, pipeline: FacePipeline
) -> None:
    reply = enroll_powell(device, shared_data, *POWELL)
    assert reply["status"] == "ok" and reply["data"]["templates_added"] == 3
    probe = load_image(powell(shared_data, POWELL_PROBE))
    match = device.matcher.search(pipeline.embed_face(probe, pipeline.detect(probe)[0]).embedding)
    assert match.accepted and match.person_id == reply["data"]["person"]["id"]


def test_enroll_never_echoes_the_image(device: Device, shared_data: Path) -> None:
    image = image_arg(powell(shared_data, POWELL[0]))
    reply = device.dispatcher.handle(
        "enroll", json.dumps({"request_id": "e", "args": {"name": "C", "images": [image]}}).encode(), now=NOW
    )
    assert reply is not None and image["data"][:64].encode() not in reply


def test_a_corrupt_image_is_refused_with_the_reason(device: Device, shared_data: Path) -> None:
    truncated = powell(shared_data, POWELL[0]).read_bytes()[:3000]
    reply = device.call("enroll", {"name": "C", "images": [{"data": base64.b64encode(truncated).decode()}]})
    assert error(reply) == "bad_request" and "unreadable" in reply["error"]["message"]


def test_an_image_that_is_not_jpeg_or_png_is_refused(device: Device) -> None:
    gif = base64.b64encode(b"GIF89a" + bytes(100)).decode()
    reply = device.call("enroll", {"name": "C", "images": [{"data": gif}]})
    assert error(reply) == "bad_request" and "JPEG or PNG" in reply["error"]["message"]


def test_bad_base64_is_refused(device: Device) -> None:
    assert error(device.call("enroll", {"name": "C", "images": [{"data": "not base64!"}]})) == "bad_request"


def test_too_many_images_are_too_large(tmp_path: Path, pipeline: FacePipeline, shared_data: Path) -> None:
    device = make_device(tmp_path, pipeline, commands=operator_commands(max_images=2))
    images = [image_arg(powell(shared_data, n)) for n in POWELL]
    assert error(device.call("enroll", {"name": "C", "images": images})) == "too_large"


def test_an_image_over_the_byte_limit_is_too_large(tmp_path: Path, pipeline: FacePipeline, shared_data: Path) -> None:
    device = make_device(tmp_path, pipeline, commands=operator_commands(max_image_bytes=4096))
    reply = device.call("enroll", {"name": "C", "images": [image_arg(powell(shared_data, POWELL[0]))]})
    assert error(reply) == "too_large"


def test_more_photos_of_an_unknown_person_is_not_found(device: Device, shared_data: Path) -> None:
    images = [image_arg(powell(shared_data, POWELL[0]))]
    assert error(device.call("enroll", {"person_id": "p_0123", "images": images})) == "not_found"


def test_enroll_is_audited_under_its_signing_key_not_the_claimed_origin(device: Device, shared_data: Path) -> None:
    enroll_powell(device, shared_data, origin="ops@laptop")
    actor = f"key:{OPERATOR_KEY_ID}"
    assert {(actor, "person.enroll"), (actor, "command.enroll")} <= {(r["actor"], r["action"]) for r in device.audit()}
    (command,) = [row for row in device.audit() if row["action"] == "command.enroll"]
    assert command["details"]["claimed_origin"] == "ops@laptop"


# ------------------------------------------------------------------------------ duplicates


def test_a_repeated_request_id_gets_the_first_answer_without_running_twice(device: Device, shared_data: Path) -> None:
    first = enroll_powell(device, shared_data, request_id="once")
    again = enroll_powell(device, shared_data, request_id="once")
    assert again == first
    with GalleryStore.open(device.store_path) as store:
        assert len(store.list_people()) == 1


def test_a_request_id_reused_for_another_request_is_a_conflict(device: Device) -> None:
    device.call("purge_events", {"older_than_days": 30}, request_id="same")
    assert error(device.call("purge_events", {"older_than_days": 1}, request_id="same")) == "conflict"


def test_the_answer_cache_is_bounded_in_size(tmp_path: Path, pipeline: FacePipeline) -> None:
    device = make_device(tmp_path, pipeline, commands=operator_commands(dedupe_entries=2))
    for request_id in ("a", "b", "c"):
        device.call("restart", request_id=request_id)
    device.call("restart", request_id="a")  # forgotten: runs again
    assert len(device.restarts) == 4 and len(device.dispatcher.replies) == 2


def test_the_answer_cache_forgets_old_answers(device: Device) -> None:
    device.call("restart", request_id="old")
    device.call("restart", request_id="old", now=NOW + timedelta(seconds=DEDUPE_SECONDS + 1))
    assert len(device.restarts) == 2


def test_an_internal_failure_is_not_remembered(device: Device) -> None:
    healthy = device.services.status
    device.services.status = lambda: 1 / 0  # type: ignore[assignment]
    assert error(device.call("get_status", request_id="s")) == "internal"
    device.services.status = healthy
    assert device.call("get_status", request_id="s")["status"] == "ok"


# ------------------------------------------------------------------------------ people


def test_delete_person_erases_from_the_store_and_the_matcher(device: Device, shared_data: Path) -> None:
    person_id = enroll_powell(device, shared_data)["data"]["person"]["id"]
    reply = device.call("delete_person", {"person_id": person_id})
    assert reply["status"] == "ok" and reply["data"]["deleted"]["templates"] == 1
    assert len(device.matcher) == 0
    with GalleryStore.open(device.store_path) as store:
        assert store.get_person(person_id) is None


def test_delete_person_by_name(device: Device, shared_data: Path) -> None:
    enroll_powell(device, shared_data)
    assert device.call("delete_person", {"name": "Colin Powell"})["status"] == "ok"


def test_delete_by_a_shared_name_is_a_conflict(device: Device) -> None:
    with GalleryStore.open(device.store_path) as store:
        store.add_person("Sam")
        store.add_person("Sam")
    assert error(device.call("delete_person", {"name": "Sam"})) == "conflict"


def test_delete_of_an_unknown_person_is_not_found(device: Device) -> None:
    assert error(device.call("delete_person", {"person_id": "p_0123"})) == "not_found"


def test_update_person_renames_in_the_matcher(device: Device, shared_data: Path, pipeline: FacePipeline) -> None:
    person_id = enroll_powell(device, shared_data)["data"]["person"]["id"]
    assert device.call("update_person", {"person_id": person_id, "name": "General Powell"})["status"] == "ok"
    probe = load_image(powell(shared_data, POWELL_PROBE))
    match = device.matcher.search(pipeline.embed_face(probe, pipeline.detect(probe)[0]).embedding)
    assert match.name == "General Powell"


def test_list_people_has_no_embeddings(device: Device, shared_data: Path) -> None:
    enroll_powell(device, shared_data)
    person = device.call("list_people")["data"]["people"][0]
    assert person["name"] == "Colin Powell" and person["templates"] == {DEFAULT_EMBEDDER_ID: 1}
    assert "embedding" not in json.dumps(person)


# ------------------------------------------------------------------------------ settings


def test_get_config_hides_the_broker_password(device: Device) -> None:
    device.current[0] = load_settings(_write(device.settings_path, '[mqtt]\npassword = "hunter2"\n'))
    reply = device.call("get_config")
    assert "hunter2" not in json.dumps(reply) and reply["data"]["settings"]["mqtt"]["password"] != "hunter2"


def test_get_config_hides_a_password_in_the_broker_url(device: Device) -> None:
    device.current[0] = load_settings(_write(device.settings_path, '[mqtt]\nurl = "mqtts://dev:hunter2@broker"\n'))
    assert "hunter2" not in json.dumps(device.call("get_config"))


def _write(path: Path, text: str) -> Path:
    path.write_text(path.read_text() + text)
    return path


def test_set_config_persists_and_applies(device: Device) -> None:
    reply = device.call("set_config", {"values": {"gallery.threshold": 0.3, "events.cooldown_seconds": 5}})
    assert reply["data"]["changed"] == {"events.cooldown_seconds": 5.0, "gallery.threshold": 0.3}
    on_disk = load_layered(device.settings_path).settings  # the local file with the remote overlay
    assert on_disk.gallery.threshold == 0.3 and on_disk.events.cooldown_seconds == 5.0
    applied = dataclasses.replace(
        device.current[0], commands=on_disk.commands
    )  # the fixture's keys are not in the file
    assert applied == on_disk and device.matcher.threshold == 0.3


def test_set_config_writes_a_private_overlay_and_leaves_no_temporary(device: Device) -> None:
    before = device.settings_path.read_bytes()
    device.call("set_config", {"values": {"retention.events_days": 7}})
    assert remote_settings_path(device.store_path).stat().st_mode & 0o777 == 0o600
    assert device.settings_path.read_bytes() == before  # the local file stays the operator's
    assert not [name for name in os.listdir(device.settings_path.parent) if name.endswith(".tmp")]


@pytest.mark.parametrize(
    "key", ["gallery.path", "models.dir", "gallery.metric", "gallery.keep_chips", "commands.signing_required"]
)
def test_set_config_refuses_keys_outside_the_remote_subset(device: Device, key: str) -> None:
    before = device.settings_path.read_bytes()
    assert error(device.call("set_config", {"values": {key: "x"}})) == "bad_request"
    assert device.settings_path.read_bytes() == before


def test_set_config_refuses_an_out_of_range_value_and_writes_nothing(device: Device) -> None:
    before = device.settings_path.read_bytes()
    reply = device.call("set_config", {"values": {"gallery.threshold": 9}})
    assert error(reply) == "bad_request" and "gallery.threshold" in reply["error"]["message"]
    assert device.settings_path.read_bytes() == before


def test_set_config_without_a_settings_file_persists_in_the_overlay(device: Device) -> None:
    device.services.settings_path = None
    assert device.call("set_config", {"values": {"gallery.threshold": 0.3}})["status"] == "ok"
    assert read_remote(remote_settings_path(device.store_path)) == {"gallery.threshold": 0.3}


def test_set_config_output_is_a_valid_settings_file(device: Device) -> None:
    device.call("set_config", {"values": {"tracking.max_age_frames": 20}})
    assert tomllib.loads(remote_settings_path(device.store_path).read_text())["tracking"]["max_age_frames"] == 20


# ------------------------------------------------------------------------------ the rest


def test_purge_events_deletes_old_events(device: Device) -> None:
    with GalleryStore.open(device.store_path) as store:
        store.add_event("face_unknown", {}, event_id="e1", person_id=None, created_at="2025-01-01T00:00:00Z")
    reply = device.call("purge_events", {"older_than_days": 30})
    assert reply["data"]["purged"]["events"] == 1


def test_restart_is_requested_once_the_reply_is_built(device: Device) -> None:
    reply = device.call("restart", request_id="re")
    assert reply["data"] == {"restarting": True} and device.restarts == [1]
    device.call("restart", request_id="re")
    assert device.restarts == [1]


def test_a_refused_command_is_audited(device: Device) -> None:
    device.call("ping", {"bogus": 1}, request_id="bad-1")
    (row,) = [r for r in device.audit() if r["action"] == "command.ping"]
    assert row["actor"] == "mqtt:unverified" and row["details"]["code"] == "bad_request"


def test_a_crashing_handler_is_an_internal_error_and_ping_still_answers(device: Device) -> None:
    device.services.status = lambda: {"fps": float("nan")}  # not JSON: encoding the reply fails
    assert error(device.call("get_status")) == "internal"
    assert device.call("ping")["status"] == "ok"


def test_a_broken_gallery_still_gets_a_reply(device: Device) -> None:
    device.services.open_store = lambda: GalleryStore.open(device.store_path.parent / "missing" / "g.db")  # type: ignore[assignment]
    reply = device.call("list_people")
    assert error(reply) == "internal" and "missing" in reply["error"]["message"]
    assert device.call("ping")["status"] == "ok"

"""get_audit: the device's own audit log over MQTT, signed, paged newest first, naming person ids only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.schema import MAX_AUDIT_PAGE
from agent.gallery.store import GalleryStore
from agent.vision.pipeline import FacePipeline
from tests.support.commands import OPERATOR_KEY_ID, Device, data, error, image_arg, make_device
from tests.support.data import POWELL, powell


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline) -> Device:
    return make_device(tmp_path, pipeline)


def local_actions(device: Device, count: int) -> None:
    """Records a device's own CLI leaves (`faceagent person ...` on the device itself)."""
    with GalleryStore.open(device.store_path) as store:
        for number in range(count):
            store.audit("cli:ops", "person.update", f"p_{number:04d}", {"fields": "name"})


@pytest.mark.parametrize("limit", [1, 4, 7, 25])
def test_pages_walk_the_whole_log_newest_first_without_gaps_or_repeats(device: Device, limit: int) -> None:
    local_actions(device, 23)
    pages = [data(device.call("get_audit", {"limit": limit}))]
    while pages[-1]["next_before"] is not None:
        pages.append(data(device.call("get_audit", {"limit": limit, "before": pages[-1]["next_before"]})))
    seqs = [record["seq"] for page in pages for record in page["records"]]
    assert all(len(page["records"]) <= limit for page in pages)
    assert seqs == list(range(seqs[0], 0, -1))  # every record up to the first page's newest, once, in order


def test_the_log_holds_local_actions_and_commands_with_who_ran_them(device: Device) -> None:
    local_actions(device, 1)
    device.call("ping", signed=False)
    newest, older = data(device.call("get_audit", {"limit": 2}))["records"]
    assert (newest["action"], newest["actor"], newest["details"]["status"]) == ("command.ping", "mqtt:unsigned", "ok")
    assert (older["action"], older["actor"], older["target"]) == ("person.update", "cli:ops", "p_0000")


def test_reading_the_log_is_itself_recorded_with_the_key_that_signed_it(device: Device) -> None:
    device.call("get_audit", {"limit": 3})
    newest = data(device.call("get_audit", {"limit": 1}))["records"][0]
    assert newest["action"] == "command.get_audit" and newest["actor"] == f"key:{OPERATOR_KEY_ID}"
    assert newest["details"]["records"] == 0  # the first read found an empty log


def test_the_log_names_the_person_id_never_the_name(device: Device, shared_data: Path) -> None:
    enrolled = device.call("enroll", {"name": "Colin Powell", "images": [image_arg(powell(shared_data, POWELL[0]))]})
    person = data(enrolled)["person"]["id"]
    page = data(device.call("get_audit", {}))
    assert person in {record["target"] for record in page["records"]}
    assert "Powell" not in json.dumps(page)


def test_an_empty_log_has_no_older_page(device: Device) -> None:
    assert data(device.call("get_audit", {"before": 1})) == {"records": [], "next_before": None}


@pytest.mark.parametrize("args", [{"limit": 0}, {"limit": MAX_AUDIT_PAGE + 1}, {"before": 0}, {"before": "7"}])
def test_a_page_out_of_bounds_is_refused_naming_the_field(device: Device, args: dict) -> None:
    reply = device.call("get_audit", args)
    assert error(reply) == "bad_request" and f"args.{next(iter(args))}" in reply["error"]["message"]

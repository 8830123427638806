"""The wire module: every document the device shapes has the keys and value types its TypedDict declares,
renamed keys travel under both spellings, and the names and the schema version are spelled in one place."""

from __future__ import annotations

import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import numpy as np
import pytest

from agent import wire
from agent.commands.handlers import HANDLERS
from agent.commands.schema import command_schemas
from agent.config import CommandSettings, HomeAssistantSettings
from agent.gallery.store import GalleryStore
from agent.identity import Match
from agent.link.homeassistant import HomeAssistantDiscovery, face_event_document, last_person_document
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.outbox import OutboxStats
from agent.link.telemetry import FrameFigures, GallerySummary, StageLatency, Telemetry
from agent.recognition.events import build_event
from agent.storage import StorageHealth
from agent.tracking.tracker import Track
from agent.vision.detector import Face
from agent.vision.pipeline import FacePipeline
from tests.support.commands import Device, make_device
from tests.support.data import REPO

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ADA = Match("p_ada", "Ada", 0.31234567, 0.1, True)
STRANGER = Match("p_ada", "Ada", 0.7, 0.01, False)
MODELS = {"detector": "blazeface-short", "embedder": "dlib-resnet29-int8"}


def violations(value: Any, hint: Any, where: str = "document") -> list[str]:
    """Where `value` differs from the type `hint` (a TypedDict, a union, a literal, a container or a scalar)."""
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not an object"]
        fields = get_type_hints(hint)
        found = [f"{where}.{key}: missing" for key in sorted(hint.__required_keys__ - value.keys())]
        found += [f"{where}.{key}: not in {hint.__name__}" for key in sorted(value.keys() - fields.keys())]
        for key in sorted(value.keys() & fields.keys()):
            found += violations(value[key], fields[key], f"{where}.{key}")
        return found
    origin, arguments = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if any(not violations(value, option, where) for option in arguments):
            return []
        return [f"{where}: {value!r} is none of {hint}"]
    if origin is Literal:
        return [] if value in arguments else [f"{where}: {value!r} is not one of {arguments}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [problem for i, item in enumerate(value) for problem in violations(item, arguments[0], f"{where}[{i}]")]
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        return [problem for k, item in value.items() for problem in violations(item, arguments[1], f"{where}.{k}")]
    if hint is Any:
        return []
    if hint is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if hint in (int, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if number and (hint is float or isinstance(value, int)) else [f"{where}: {value!r} is not {hint}"]
    return [] if isinstance(value, hint) else [f"{where}: {value!r} is not {hint.__name__}"]


def through_json(document: Any) -> Any:
    """What a consumer decodes: the document as the device encodes it."""
    return json.loads(wire.encode(document))


# ------------------------------------------------------------------------------------ names


def test_every_command_name_has_a_schema_and_a_handler() -> None:
    assert set(wire.Command) == set(command_schemas(CommandSettings())) == set(HANDLERS)


def test_no_module_spells_out_a_schema_version() -> None:
    """Every document takes `wire.SCHEMA`, so a schema 2 is one change in one place."""
    literal = re.compile(r"""["']schema["']\s*:\s*\d""")
    spelled = [
        str(path.relative_to(REPO)) for path in (REPO / "agent").rglob("*.py") if literal.search(path.read_text())
    ]
    assert spelled == []


def test_the_device_never_encodes_nan_or_infinity() -> None:
    with pytest.raises(ValueError):
        wire.encode({"fps": math.nan})


# ------------------------------------------------------------------------------------ events


def track() -> Track:
    face = Face(box=(0.0, 0.0, 80.0, 80.0), score=0.9, keypoints=np.zeros((6, 2)))
    return Track(7, face, 1, 12, T0, T0 + timedelta(seconds=0.4), frames=12)


@pytest.mark.parametrize(
    ("match", "include_names", "shape"),
    [(ADA, True, wire.FaceRecognized), (ADA, False, wire.FaceRecognized), (STRANGER, True, wire.FaceUnknown)],
)
def test_face_events_have_their_declared_shape(match: Match, include_names: bool, shape: type) -> None:
    event = build_event(track(), match, camera_id="door", model_id="m", at=T0, include_names=include_names)
    assert violations(through_json(event), shape) == []
    assert ("name" in event) is (include_names and match.accepted)


def test_an_erasure_notice_has_its_declared_shape(tmp_path: Path) -> None:
    with GalleryStore.open(tmp_path / "gallery.db") as store:
        person = store.add_person("Ada")
        store.delete_person(person.id, actor="test")
        (row,) = store.pending_events()
    assert row["type"] == wire.PERSON_ERASED and violations(row["payload"], wire.PersonErased) == []


# ---------------------------------------------------------------------------- status, telemetry


@pytest.fixture
def documents(tmp_path: Path) -> Telemetry:
    return Telemetry("dev1", "1.2.3", MODELS, thermal_root=tmp_path / "no-thermal")


def test_status_documents_have_their_declared_shape(documents: Telemetry, tmp_path: Path) -> None:
    storage = StorageHealth(tmp_path).report()
    summary = GallerySummary(people=3, templates=9, digest="abc")
    for status in (
        documents.status(None),
        documents.status(summary, storage),
        documents.status(summary, storage, needing_reenrollment=2),
    ):
        assert violations(through_json(status), wire.OnlineStatus) == []
    assert violations(through_json(documents.offline("stopped")), wire.OfflineStatus) == []
    assert violations(through_json(wire.link_status(wire.OFFLINE, "dev1")), wire.LinkStatus) == []


def test_telemetry_and_presence_have_their_declared_shape(documents: Telemetry, tmp_path: Path) -> None:
    frames = FrameFigures(14.8, {"total": StageLatency.of([18.0, 25.0]), "detect": StageLatency.of([])}, 3)
    full = documents.telemetry(frames, OutboxStats(1, 0, 5, 0), StorageHealth(tmp_path).report())
    for telemetry in (documents.telemetry(None, None), full):
        assert violations(through_json(telemetry), wire.TelemetryDocument) == []
    assert list(through_json(full)) == [  # the order the README shows
        "schema", "device", "at", "uptime_s", "fps", "latency_ms", "dropped_frames", "outbox", "storage",
        "cpu_temp_c", "memory",
    ]  # fmt: skip
    assert violations(through_json(documents.presence(2)), wire.Presence) == []


def test_the_status_gallery_section_sends_the_renamed_count_under_both_spellings(documents: Telemetry) -> None:
    status = documents.status(GallerySummary(3, 9, "abc"), needing_reenrollment=2)
    assert status["gallery"] == {
        "people": 3,
        "templates": 9,
        "digest": "abc",
        "people_needing_reenrollment": 2,
        "people_needing_reenrolment": 2,
    }


# ------------------------------------------------------------------------------------ replies


@pytest.fixture
def device(tmp_path: Path, pipeline: FacePipeline) -> Device:
    return make_device(tmp_path, pipeline)


def test_replies_have_their_declared_shape(device: Device) -> None:
    assert violations(device.call("ping"), wire.OkReply) == []
    assert violations(device.call("ping", {"extra": 1}), wire.ErrorReply) == []
    assert violations(device.call("format_disk"), wire.ErrorReply) == []


def test_a_list_people_page_has_its_declared_shape(device: Device) -> None:
    with GalleryStore.open(device.store_path) as store:
        store.add_person("Ada", external_ref="hr-1")
    reply = device.call("list_people")
    assert violations(reply, wire.OkReply) == [] and violations(reply["data"], wire.PeoplePage) == []


@pytest.mark.parametrize("include_names", [True, False])
def test_list_people_sends_the_renamed_keys_under_both_spellings(device: Device, include_names: bool) -> None:
    settings = device.current[0]
    device.current[0] = replace(settings, events=replace(settings.events, include_names=include_names))
    with GalleryStore.open(device.store_path) as store:
        store.add_person("Ada")  # no template of the loaded embedder: needs re-enrollment
    page = device.call("list_people")["data"]
    assert page["people_needing_reenrollment"] == page["people_needing_reenrolment"] == 1
    (row,) = page["people"]
    assert row["needs_reenrollment"] is row["needs_reenrolment"] is True
    assert ("name" in row) is include_names
    for new, old in wire.DEPRECATED_ALIASES.items():
        for document in (page, row):
            assert (new in document) is (old in document)


# ------------------------------------------------------------------------------ Home Assistant


def test_home_assistant_documents_have_their_declared_shape() -> None:
    shown = {"person_id": "p_ada", "name": "Ada", "camera_id": "door", "at": "2026-11-26T12:00:00.000Z"}
    for who, include_names in [(None, True), (shown, True), (shown, False)]:
        assert violations(through_json(last_person_document(who, include_names=include_names)), wire.LastPerson) == []
    recognized = build_event(track(), ADA, camera_id="door", model_id="m", at=T0) | {"event_id": "e1"}
    unknown = build_event(track(), STRANGER, camera_id="door", model_id="m", at=T0)
    for event, include_names in [(recognized, True), (recognized, False), (unknown, True)]:
        document = face_event_document(event, include_names=include_names)
        assert violations(through_json(document), wire.HomeAssistantFaceEvent) == []
    assert face_event_document({"type": wire.PERSON_ERASED}, include_names=True) is None


def test_discovery_configs_have_their_declared_shape() -> None:
    link = MqttLink(BrokerSettings(url="mqtt://127.0.0.1:1"), "dev1", lambda request: None)  # never started
    discovery = HomeAssistantDiscovery(link, HomeAssistantSettings(enabled=True), version="1.2.3", model="Pi 5")
    shapes = {
        "sensor": wire.SensorDiscovery,
        "binary_sensor": wire.BinarySensorDiscovery,
        "event": wire.EventEntityDiscovery,
    }
    for topic, document in discovery.messages():
        assert violations(through_json(document), shapes[topic.split("/")[1]]) == [], topic

"""Thousands of malformed commands: each gets an error reply with a stable code, none an internal error,
and the dispatcher answers `ping` after every one of them.

Every strategy builds a request that is wrong by construction (a valid request plus one mutation), so
"an error reply" is the exact expectation, not a weaker "some reply".
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from agent.commands.schema import (
    SMALL_PAYLOAD_BYTES,
    Blob,
    Document,
    EnrollModes,
    Flag,
    Image,
    Items,
    Number,
    Phases,
    Record,
    Rule,
    SettingValues,
    Text,
    Timestamp,
    command_schemas,
)
from agent.config import CommandSettings
from agent.vision.pipeline import FacePipeline
from tests.support.commands import NOW, Device, make_device

pytestmark = pytest.mark.slow  # fuzzing: thousands of malformed commands

# Not about authority: unsigned payloads reach every handler, as the fuzzing needs.
LIMITS = CommandSettings(allow_unsigned=True, max_image_bytes=64 * 1024, max_images=3, max_payload_bytes=512 * 1024)
SCHEMAS = command_schemas(LIMITS)
REFUSALS = {"bad_request", "unknown_command", "too_large", "not_found", "conflict"}


def examples(count: int) -> settings:
    return settings(
        max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


TOTAL = 5000


def _noise(fmt: str) -> bytes:
    """A small image with no face in it: if a mutation leaves it decodable, enrollment still refuses it."""
    pixels = np.random.default_rng(7).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG, PNG = _noise("JPEG"), _noise("PNG")
B64_JPEG = base64.b64encode(JPEG).decode()
VALID_ARGS: dict[str, dict[str, Any]] = {
    "ping": {},
    "get_status": {},
    "list_people": {},
    "get_config": {},
    "get_telemetry": {"since": "2026-12-06T11:00:00.000Z"},
    "restart": {},
    "enroll": {"name": "X", "images": [{"data": B64_JPEG}]},
    "delete_person": {"person_id": "p_0123"},
    "update_person": {"person_id": "p_0123", "name": "Y"},
    "set_config": {"values": {"gallery.threshold": 0.3}},
    "purge_events": {"older_than_days": 30},
    "get_audit": {"limit": 10, "before": 5},
    "wrong_person": {"event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA"},
    "is_person": {"event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "person_id": "p_0123"},
    "enroll_from_event": {"event_id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "name": "Z", "consent": {"reference": "f-1"}},
    "model_update": {
        "phase": "begin",
        "job_id": "j1",
        "model_id": "m1",
        "role": "embedder",
        "file": "m.tflite",
        "version": "1",
        "sha256": "0" * 64,
        "size": 1,
        "entry": {},
    },
}


def _record(name: str) -> Record:
    """The Record that checks the command's valid arguments (for model_update, its phase's; for enroll, the
    photos')."""
    rule = SCHEMAS[name].args
    if isinstance(rule, EnrollModes):
        return rule.photos
    return rule.records[VALID_ARGS[name]["phase"]] if isinstance(rule, Phases) else rule


@dataclass
class Fuzz:
    device: Device
    tried: int = 0
    request: int = 0

    def check(self, name: str, payload: bytes) -> None:
        """One malformed payload: an error reply with a refusal code, then ping still answers."""
        self.tried += 1
        reply = self.device.dispatcher.handle(name, payload, now=NOW)
        if reply is not None:
            document = json.loads(reply)
            assert document["schema"] == 1 and document["status"] == "error", document
            assert document["error"]["code"] in REFUSALS, document
        self.request += 1
        ping = json.dumps({"request_id": f"ping-{self.request}"}).encode()
        assert json.loads(self.device.dispatcher.handle("ping", ping, now=NOW) or b"{}")["status"] == "ok"

    def request_id(self) -> str:
        self.request += 1
        return f"fuzz-{self.request}"


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline) -> Iterator[Fuzz]:
    """On tmpfs where there is one: every payload is audited, and 10,000 fsyncs on a disk take a minute."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("fuzz")
    state = Fuzz(make_device(folder, pipeline, commands=LIMITS))
    yield state
    state.device.dispatcher.close()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{state.tried} malformed command payloads tried")


# ------------------------------------------------------------------------------------ strategies

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(sorted(SCHEMAS))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


bad_images = st.one_of(
    st.text(max_size=300),  # mostly not base64
    st.binary(max_size=300).map(_b64),  # base64, not an image
    st.binary(max_size=300).map(lambda b: _b64(b"\xff\xd8\xff" + b)),  # a JPEG header and then garbage
    st.binary(max_size=300).map(lambda b: _b64(b"\x89PNG\r\n\x1a\n" + b)),
    st.sampled_from([JPEG, PNG]).flatmap(lambda img: st.integers(0, len(img) - 1).map(lambda n: _b64(img[:n]))),
    st.sampled_from([JPEG, PNG]).flatmap(  # corrupt: a run of bytes overwritten
        lambda img: st.tuples(st.integers(0, len(img) - 1), st.binary(min_size=1, max_size=64)).map(
            lambda cut: _b64(img[: cut[0]] + cut[1] + img[cut[0] + len(cut[1]) :])
        )
    ),
    st.just(_b64(JPEG * 40)),  # over max_image_bytes
)


def wrong(rule: Rule) -> st.SearchStrategy[Any]:
    """A value `rule` must refuse."""
    not_str = st.none() | st.booleans() | st.integers() | st.lists(scalars, max_size=2)
    if isinstance(rule, Text):
        too_long = st.integers(rule.max_length + 1, 4 * rule.max_length).map(lambda n: "a" * n)
        control = st.text(min_size=1, max_size=10).map(lambda t: t + "\n")
        return not_str | too_long | control | (st.just("") if not rule.allow_empty else not_str)
    if isinstance(rule, Number):
        out = st.floats(rule.high + 1, 1e300) | st.floats(-1e300, rule.low - 1)
        return st.text() | st.booleans() | st.none() | st.lists(scalars, max_size=2) | out
    if isinstance(rule, Flag):
        return st.integers() | st.text() | st.none()
    if isinstance(rule, Image):
        return bad_images
    if isinstance(rule, Items):
        over = st.lists(st.just({"data": B64_JPEG}), min_size=rule.max_items + 1, max_size=rule.max_items + 3)
        return st.text() | st.integers() | st.dictionaries(st.text(max_size=4), scalars, max_size=2) | over
    if isinstance(rule, Record):
        return st.text() | st.integers() | st.lists(scalars, max_size=2)
    if isinstance(rule, SettingValues):
        bad_key = st.text(max_size=20).filter(lambda k: "." not in k).map(lambda k: {k: 1})
        nested = st.just({"gallery.threshold": {"x": 1}})
        return (
            st.just({}) | bad_key | nested | st.just({"gallery.path": "/tmp/x"}) | st.just({"gallery.threshold": "a"})
        )
    if isinstance(rule, Timestamp):
        return st.text(max_size=30) | st.integers() | st.just("2025-01-01T00:00:00")
    if isinstance(rule, Blob):
        return st.integers() | st.none() | st.just("not base64!") | st.just("A" * (4 * rule.max_bytes // 3 + 8))
    if isinstance(rule, Document):
        return st.text() | st.integers() | st.lists(scalars, max_size=2)
    raise AssertionError(f"no wrong values for {rule!r}")


@st.composite
def mutated_args(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A command with valid arguments and then exactly one thing wrong with them."""
    name = draw(names)
    args = json.loads(json.dumps(VALID_ARGS[name]))
    record = _record(name)
    kinds = ["unknown"] + (["wrong"] if record.fields else []) + (["missing"] if record.required else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown":
        args[draw(st.text(max_size=12).filter(lambda k: k not in record.fields))] = draw(json_values)
    elif kind == "wrong":
        field = draw(st.sampled_from(sorted(record.fields)))
        rule = record.fields[field]
        if isinstance(rule, Items):  # reach inside: one bad image among good ones
            value = draw(wrong(rule) | bad_images.map(lambda data: [{"data": data}]))
        elif isinstance(rule, Record) and field == "consent":
            value = draw(wrong(rule) | st.just({"given_by": "x"}))
        else:
            value = draw(wrong(rule))
        args[field] = value
        if field in record.exactly_one:  # both names given is wrong too, whatever the value
            args.update({other: "p_0123" for other in record.exactly_one if other != field})
    else:
        del args[draw(st.sampled_from(sorted(record.required)))]
    return name, args


# ------------------------------------------------------------------------------------ properties


@given(name=names | st.text(max_size=40), payload=st.binary(max_size=2000))
@examples(700)
def test_random_bytes(fuzz: Fuzz, name: str, payload: bytes) -> None:
    fuzz.check(name, payload)


@given(name=names, value=json_values.filter(lambda v: not isinstance(v, dict)))
@examples(400)
def test_json_that_is_not_an_object(fuzz: Fuzz, name: str, value: Any) -> None:
    fuzz.check(name, json.dumps(value).encode())


@given(name=names, data=st.data())
@examples(700)
def test_a_bad_envelope(fuzz: Fuzz, name: str, data: st.DataObject) -> None:
    document: dict[str, Any] = {"request_id": fuzz.request_id(), "args": VALID_ARGS[name]}
    kind = data.draw(st.sampled_from(["unknown", "request_id", "schema", "origin", "sent_at", "args", "missing"]))
    if kind == "unknown":
        extra = data.draw(st.text(max_size=12).filter(lambda k: k not in {"request_id", "args"}))
        allowed = {"schema", "origin", "sent_at", "signature"}
        document[extra if extra not in allowed else extra + "_"] = data.draw(json_values)
    elif kind == "missing":
        del document["request_id"]
    elif kind == "args":
        document["args"] = data.draw(st.text() | st.integers() | st.lists(scalars, max_size=3))
    else:
        rule = {"request_id": Text(64), "schema": Number(1, 1), "origin": Text(64), "sent_at": Timestamp()}[kind]
        document[kind] = data.draw(wrong(rule) | (st.just("has space") if kind != "schema" else st.just(2)))
    fuzz.check(name, json.dumps(document).encode())


@given(command=mutated_args())
@examples(1600)
def test_bad_arguments(fuzz: Fuzz, command: tuple[str, dict[str, Any]]) -> None:
    name, args = command
    fuzz.check(name, json.dumps({"request_id": fuzz.request_id(), "args": args}).encode())


@given(name=names, depth=st.integers(1, 3000), bracket=st.sampled_from(["[", '{"a":']))
@examples(350)
def test_deep_nesting(fuzz: Fuzz, name: str, depth: int, bracket: str) -> None:
    close = "]" if bracket == "[" else "}"
    nested = bracket * depth + ("1" if bracket != "[" else "") + close * depth
    fuzz.check(name, f'{{"request_id": "{fuzz.request_id()}", "args": {nested}}}'.encode())


@given(name=names, size=st.integers(SMALL_PAYLOAD_BYTES - 100, 2 * SMALL_PAYLOAD_BYTES))
@examples(300)
def test_huge_strings(fuzz: Fuzz, name: str, size: int) -> None:
    field = next(iter(_record(name).fields), "padding")
    fuzz.check(name, json.dumps({"request_id": fuzz.request_id(), "args": {field: "x" * size}}).encode())


@given(name=st.text(max_size=60).filter(lambda n: n not in SCHEMAS))
@examples(300)
def test_unknown_commands(fuzz: Fuzz, name: str) -> None:
    fuzz.check(name, json.dumps({"request_id": fuzz.request_id()}).encode())


@given(name=names, junk=st.binary(min_size=1, max_size=20).map(lambda b: b"\xff" + b))
@examples(300)
def test_non_utf8(fuzz: Fuzz, name: str, junk: bytes) -> None:
    fuzz.check(name, b'{"request_id": "' + junk + b'", "args": {}}')


@given(images=st.lists(bad_images.map(lambda data: {"data": data}), min_size=1, max_size=3))
@examples(400)
def test_bad_images(fuzz: Fuzz, images: list[dict[str, str]]) -> None:
    request = {"request_id": fuzz.request_id(), "args": {"name": "Nobody", "images": images}}
    fuzz.check("enroll", json.dumps(request).encode())


def test_the_fuzzing_tried_enough_payloads(fuzz: Fuzz) -> None:
    assert fuzz.tried >= TOTAL, f"only {fuzz.tried} payloads: run the whole module"

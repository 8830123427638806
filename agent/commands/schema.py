"""Command requests: size, encoding, shape and types checked before anything runs.

A small hand-written validator rather than jsonschema or pydantic: no new dependency on the device,
and the checks run in the order that keeps a hostile payload cheap (bytes counted before decoding,
base64 length before decoding it, tokens and nesting counted by a linear pre-scan before `json` builds
anything). Messages name the field but never
echo its value, so an image, a name or a key cannot come back in a reply or a log line.

A request is `{"request_id", "schema"?, "origin"?, "to"?, "sent_at"?, "signature"?, "args"?}`; `args` holds
the command's own fields (`command_schemas`); `to` is "*" for a request meant for every device (signed so).

Every command also declares its `Access` here, beside its arguments, so a new command cannot be added
without saying who may run it: `OPEN` for what changes nothing and reveals no personal data (anyone on the
broker may ask), `SIGNED` for the rest (an operator command key must sign it; see agent/commands/signing.py).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from agent.config import CommandSettings
from agent.wire import FLEET, SCHEMA, Command, ErrorCode


class Access(StrEnum):
    """Who may run a command."""

    OPEN = "open"  # unsigned is fine: changes nothing, reveals no personal data (names, consent, photos)
    SIGNED = "signed"  # needs a signature by a command key, unless commands.allow_unsigned


class CommandError(Exception):
    """An expected refusal: becomes an error reply with a stable code and a one-line message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ORIGIN = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
AUDIENCE = re.compile(re.escape(FLEET))
COMMAND_NAME = re.compile(r"[a-z][a-z_]{0,31}")
SETTING_KEY = re.compile(r"[a-z_]{1,32}\.[a-z_]{1,64}")
SMALL_PAYLOAD_BYTES = 64 * 1024  # every command but enroll and model_update
MODEL_CHUNK_BYTES = 1024 * 1024  # one model_update chunk, decoded
MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MODEL_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,92}\.(?:tflite|json)")  # .json: a fused definition
SHA256 = re.compile(r"[0-9a-f]{64}")
EVENT_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")  # a ULID (agent/identity.py new_event_id)
VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")  # a model release: agent/modelupdate/update.py
MAX_DEPTH = 6
# list_people replies a page of people (several MB for 20,000 at once): the default page holds every person
# of a gallery of this size, so small galleries get the reply they always got.
PEOPLE_PAGE = 1000
MAX_PEOPLE_PAGE = 5000
# get_audit's page: a record is a few hundred bytes, so the largest page stays well inside a reply.
AUDIT_PAGE = 100
MAX_AUDIT_PAGE = 1000
MAX_CAPTURE_VIEWS = 10  # views one camera enrollment may ask for (agent/recognition/capture.py MAX_VIEWS)
# Strings, brackets, commas and colons in one payload. An enroll request has a few dozen (≤ 10 images of two
# fields), a model chunk a dozen, a 50-setting set_config ~150: 4096 leaves room and bounds the objects
# `json` can build to 4096 whatever the payload (nested `{}` / `[]` in 16 MiB were ~850 MB and 15 s).
MAX_TOKENS = 4096
_TEXT = 200  # the gallery's limit for names and references
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def _bad(where: str, what: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> CommandError:
    return CommandError(code, f"{where}: {what}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class Rule(Protocol):
    def check(self, value: Any, where: str) -> Any: ...


@dataclass(frozen=True)
class Text:
    max_length: int = _TEXT
    pattern: re.Pattern[str] | None = None
    meaning: str = ""
    allow_empty: bool = False  # "" clears an optional reference

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise _bad(where, f"must be a string, got {_kind(value)}")
        if len(value) > self.max_length:
            raise _bad(where, f"must be at most {self.max_length} characters, got {len(value)}")
        if not value.strip() and not (self.allow_empty and value == ""):
            raise _bad(where, "must not be empty")
        if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise _bad(where, "must be one line of printable text")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _bad(where, f"must be {self.meaning}")
        return value


@dataclass(frozen=True)
class Number:
    low: float
    high: float
    integer: bool = False

    def check(self, value: Any, where: str) -> float | int:
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.integer else int | float):
            raise _bad(where, f"must be {kind}, got {_kind(value)}")
        if not self.low <= value <= self.high:
            raise _bad(where, f"must be {kind} between {self.low:g} and {self.high:g}")
        return value


@dataclass(frozen=True)
class Flag:
    def check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise _bad(where, f"must be true or false, got {_kind(value)}")
        return value


@dataclass(frozen=True)
class Scalar:
    """A setting's new value; its type and range are the settings loader's to judge."""

    def check(self, value: Any, where: str) -> str | int | float | bool:
        if isinstance(value, str):
            return Text(allow_empty=True).check(value, where)
        if not isinstance(value, int | float | bool):
            raise _bad(where, f"must be a string, number or boolean, got {_kind(value)}")
        return value


@dataclass(frozen=True)
class Timestamp:
    def check(self, value: Any, where: str) -> str:
        Text(40).check(value, where)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise _bad(where, "must be an ISO-8601 time with its zone, e.g. 2025-01-31T12:00:00.000Z")
        return value


@dataclass(frozen=True)
class Image:
    """A base64 JPEG or PNG, returned decoded; its pixels are the enroller's to judge."""

    max_bytes: int

    def check(self, value: Any, where: str) -> bytes:
        data = Blob(self.max_bytes, noun="image ").check(value, where)
        if not data.startswith((_JPEG, _PNG)):
            raise _bad(where, "must be a JPEG or PNG image")
        return data


@dataclass(frozen=True)
class Blob:
    """Base64 bytes of any kind (a model chunk), returned decoded; size judged before decoding."""

    max_bytes: int
    noun: str = ""  # what the size messages call it ("image "), if anything

    def check(self, value: Any, where: str) -> bytes:
        if not isinstance(value, str):
            raise _bad(where, f"must be a base64 string, got {_kind(value)}")
        if len(value) > 4 * (self.max_bytes // 3 + 1):
            over = f"over the {self.max_bytes} byte limit"
            raise _bad(where, f"{self.noun}is {over}" if self.noun else over, ErrorCode.TOO_LARGE)
        try:
            data = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _bad(where, "is not valid base64 (one line, no breaks: base64 -w0)") from None
        if len(data) > self.max_bytes:
            message = f"{self.noun}is {len(data)} bytes, over the {self.max_bytes} byte limit"
            raise _bad(where, message, ErrorCode.TOO_LARGE)
        return data


@dataclass(frozen=True)
class Document:
    """Any JSON object (a manifest entry), bounded by the decoder's depth limit and its key count here;
    its meaning is checked by whoever uses it."""

    max_keys: int = 64

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(where, f"must be an object, got {_kind(value)}")
        if len(value) > self.max_keys:
            raise _bad(where, f"must hold at most {self.max_keys} fields, got {len(value)}")
        return value


@dataclass(frozen=True)
class Items:
    of: Rule
    max_items: int
    min_items: int = 0
    too_many: ErrorCode = ErrorCode.BAD_REQUEST

    def check(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise _bad(where, f"must be an array, got {_kind(value)}")
        if len(value) > self.max_items:
            raise _bad(where, f"at most {self.max_items} items, got {len(value)}", self.too_many)
        if len(value) < self.min_items:
            raise _bad(where, f"needs at least {self.min_items} item(s)")
        return [self.of.check(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _field_name(key: str) -> str:
    """A key as it may appear in a message: quoted, escaped, shortened."""
    return json.dumps(key[:40])


@dataclass(frozen=True)
class Record:
    fields: dict[str, Rule]
    required: frozenset[str] = frozenset()
    exactly_one: tuple[str, ...] = ()
    at_least_one: tuple[str, ...] = ()

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(where, f"must be an object, got {_kind(value)}")
        unknown = [key for key in value if key not in self.fields]
        if unknown:
            known = ", ".join(self.fields) or "none"
            raise _bad(where, f"unknown field {_field_name(unknown[0])} (known: {known})")
        missing = sorted(self.required - value.keys())
        if missing:
            raise _bad(where, f"missing field {missing[0]!r}")
        if self.exactly_one and sum(key in value for key in self.exactly_one) != 1:
            raise _bad(where, f"give exactly one of {', '.join(self.exactly_one)}")
        if self.at_least_one and not any(key in value for key in self.at_least_one):
            raise _bad(where, f"give at least one of {', '.join(self.at_least_one)}")
        return {key: self.fields[key].check(item, f"{where}.{key}") for key, item in value.items()}


@dataclass(frozen=True)
class Phases:
    """An object whose `phase` field picks the Record that checks it (model_update's begin, chunk ...)."""

    records: dict[str, Record]

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(where, f"must be an object, got {_kind(value)}")
        phase = value.get("phase")
        if not isinstance(phase, str) or phase not in self.records:
            raise _bad(f"{where}.phase", f"must be one of {', '.join(self.records)}")
        return self.records[phase].check(value, where)


@dataclass(frozen=True)
class EnrollModes:
    """enroll's three shapes: photos (`images`), a capture armed on the device's camera (`from_camera` with
    `seconds` and `views`), and a look at (or the cancel of) that capture (`from_camera` with `capture_id`)."""

    photos: Record
    camera: Record
    capture: Record

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict) or "from_camera" not in value:
            return self.photos.check(value, where)
        given = value["from_camera"]
        return (self.capture if isinstance(given, dict) and "capture_id" in given else self.camera).check(value, where)


@dataclass(frozen=True)
class SettingValues:
    """`{"section.key": value}`: key shapes and value kinds here, which keys may change in the handler."""

    max_entries: int = 50

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad(where, f"must be an object, got {_kind(value)}")
        if not 0 < len(value) <= self.max_entries:
            raise _bad(where, f"must hold 1 to {self.max_entries} settings, got {len(value)}")
        for key in value:
            if not SETTING_KEY.fullmatch(key):
                raise _bad(where, f"{_field_name(key)} is not a setting name like gallery.threshold")
        return {key: Scalar().check(item, f"{where}.{key}") for key, item in value.items()}


@dataclass(frozen=True)
class Request:
    request_id: str
    origin: str | None
    args: dict[str, Any]  # validated; enroll images decoded to bytes
    document: dict[str, Any]  # as received: what a signature and the duplicate check cover


@dataclass(frozen=True)
class CommandSchema:
    access: Access  # no default: each command says who may run it
    args: Rule = field(default_factory=lambda: Record({}))
    max_bytes: int = SMALL_PAYLOAD_BYTES

    def check(self, document: dict[str, Any]) -> Request:
        envelope = Record(
            {
                "request_id": Text(64, REQUEST_ID, "1-64 of A-Z a-z 0-9 _ . : -"),
                "schema": Number(SCHEMA, SCHEMA, integer=True),
                "origin": Text(64, ORIGIN, "1-64 of A-Z a-z 0-9 _ . : @ -"),
                "to": Text(len(FLEET), AUDIENCE, f"{FLEET!r} (every device) or left out (this device)"),
                "sent_at": Timestamp(),
                "signature": Text(128),
                "args": self.args,
            },
            required=frozenset({"request_id"}),
        )
        checked = envelope.check(document, "request")
        return Request(checked["request_id"], checked.get("origin"), checked.get("args", {}), document)


def command_schemas(limits: CommandSettings) -> dict[str, CommandSchema]:
    """Every command's arguments, under the device's configured limits."""
    text, ref = Text(), Text(allow_empty=True)
    person_id = Text(64, re.compile(r"p_[0-9a-z]{1,40}"), "a person id like p_01j...")
    image = Record({"data": Image(limits.max_image_bytes), "label": Text(100)}, required=frozenset({"data"}))
    consent = Record({"reference": text, "given_by": text, "purpose": text}, required=frozenset({"reference"}))
    enroll = Record(
        {
            "name": text,
            "person_id": person_id,
            "external_ref": text,
            "consent": consent,
            "force": Flag(),
            "images": Items(image, limits.max_images, 1, ErrorCode.TOO_LARGE),
        },
        required=frozenset({"images"}),
        exactly_one=("name", "person_id"),
    )
    camera = Record(
        {
            "name": text,
            "person_id": person_id,
            "external_ref": text,
            "consent": consent,
            "from_camera": Record({"seconds": Number(3, 120), "views": Number(1, MAX_CAPTURE_VIEWS, integer=True)}),
        },
        required=frozenset({"consent", "from_camera"}),
        exactly_one=("name", "person_id"),
    )
    capture_id = Text(64, REQUEST_ID, "a capture id from the reply that armed it")
    capture = Record({"capture_id": capture_id, "cancel": Flag()}, required=frozenset({"capture_id"}))
    enroll_modes = EnrollModes(enroll, camera, Record({"from_camera": capture}, required=frozenset({"from_camera"})))
    who = Record({"person_id": person_id, "name": text}, exactly_one=("person_id", "name"))
    update = Record(
        {"person_id": person_id, "name": text, "external_ref": ref},
        required=frozenset({"person_id"}),
        at_least_one=("name", "external_ref"),
    )
    settings = Record({"values": SettingValues()}, required=frozenset({"values"}))
    event_id = Text(26, EVENT_ID, "an event id: the 26-character event_id of a face event")
    corrections = {
        Command.WRONG_PERSON: Record({"event_id": event_id}, required=frozenset({"event_id"})),
        Command.IS_PERSON: Record(
            {"event_id": event_id, "person_id": person_id, "force": Flag()},
            required=frozenset({"event_id", "person_id"}),
        ),
        Command.ENROLL_FROM_EVENT: Record(
            {"event_id": event_id, "name": text, "external_ref": text, "consent": consent, "force": Flag()},
            required=frozenset({"event_id", "name", "consent"}),
        ),
    }
    return {
        Command.PING: CommandSchema(Access.OPEN),
        Command.GET_STATUS: CommandSchema(Access.OPEN),  # counts, health, versions: no names
        Command.GET_CONFIG: CommandSchema(Access.OPEN),  # secrets redacted
        Command.GET_TELEMETRY: CommandSchema(Access.OPEN, Record({"since": Timestamp()})),  # figures, as published
        Command.LIST_PEOPLE: CommandSchema(  # names, references and consent records
            Access.SIGNED,
            Record({"offset": Number(0, 10_000_000, integer=True), "limit": Number(1, MAX_PEOPLE_PAGE, integer=True)}),
        ),
        Command.ENROLL: CommandSchema(Access.SIGNED, enroll_modes, limits.max_payload_bytes),
        Command.DELETE_PERSON: CommandSchema(Access.SIGNED, who),
        Command.UPDATE_PERSON: CommandSchema(Access.SIGNED, update),
        Command.SET_CONFIG: CommandSchema(Access.SIGNED, settings),
        Command.PURGE_EVENTS: CommandSchema(Access.SIGNED, Record({"older_than_days": Number(0, 36500)})),
        Command.RESTART: CommandSchema(Access.SIGNED),
        Command.MODEL_UPDATE: CommandSchema(Access.SIGNED, _model_update(), limits.max_payload_bytes),
        Command.GET_AUDIT: CommandSchema(  # who acted on which person id, and when
            Access.SIGNED,
            Record({"limit": Number(1, MAX_AUDIT_PAGE, integer=True), "before": Number(1, 2**63 - 1, integer=True)}),
        ),
        **{name: CommandSchema(Access.SIGNED, args) for name, args in corrections.items()},  # they write templates
    }


def _model_update() -> Phases:
    """begin (signed metadata), chunk (bytes in order), commit, abort, status: see agent/modelupdate/update.py."""
    job: dict[str, Rule] = {"phase": Text(16), "job_id": Text(64, REQUEST_ID, "1-64 of A-Z a-z 0-9 _ . : -")}
    begin: dict[str, Rule] = job | {
        "model_id": Text(64, MODEL_ID, "1-64 of a-z 0-9 . _ -, starting with a letter or digit"),
        "role": Text(16, re.compile("detector|embedder"), "detector or embedder"),
        "file": Text(100, MODEL_FILE, "a bare file name ending in .tflite (a model) or .json (a fused definition)"),
        "version": Text(64, VERSION, "1-4 dotted whole numbers, e.g. 2026.11.1"),
        "sha256": Text(64, SHA256, "64 lowercase hex digits"),
        "size": Number(1, 2**40, integer=True),
        "signature": Text(128),
        "entry": Document(),
        "standby": Flag(),  # signed: install beside the models in use, not as the role's default
    }
    chunk: dict[str, Rule] = job | {"index": Number(0, 1_000_000, integer=True), "data": Blob(MODEL_CHUNK_BYTES)}
    required = frozenset(job)
    return Phases(
        {
            "begin": Record(begin, required | {"model_id", "role", "file", "version", "sha256", "size"}),
            "chunk": Record(chunk, required | {"index", "data"}),
            "commit": Record(job, required),
            "abort": Record(job, required),
            "status": Record(job, frozenset({"phase"})),
        }
    )


# ------------------------------------------------------------------------------------ decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise CommandError(ErrorCode.BAD_REQUEST, "payload repeats a key in one object")
    return document


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise CommandError(ErrorCode.BAD_REQUEST, "payload holds a number too large for a float")
    return value


def _refuse_constant(text: str) -> Any:
    raise CommandError(ErrorCode.BAD_REQUEST, f"payload holds {text}, which is not JSON")


_decode: Callable[[str], Any] = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_float=_finite, parse_constant=_refuse_constant
).decode


def decode_payload(payload: bytes, limit: int) -> dict[str, Any]:
    """The request document: refused when over `limit` bytes (before decoding), not UTF-8 JSON, too
    deeply nested or made of too many tokens (before `json` builds anything), or not an object."""
    if len(payload) > limit:
        raise CommandError(ErrorCode.TOO_LARGE, f"payload is {len(payload)} bytes, over this command's {limit}")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(ErrorCode.BAD_REQUEST, "payload is not UTF-8 text") from None
    prescan(text)
    try:
        document = _decode(text)
    except RecursionError:
        raise CommandError(ErrorCode.BAD_REQUEST, f"payload nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise CommandError(ErrorCode.BAD_REQUEST, f"payload is not JSON: {exc.msg} at offset {exc.pos}") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise CommandError(ErrorCode.BAD_REQUEST, f"payload is not usable JSON: {str(exc)[:80]}") from None
    if not isinstance(document, dict):
        raise CommandError(ErrorCode.BAD_REQUEST, f"payload must be a JSON object, got {_kind(document)}")
    return document


# A whole string (its closing quote optional, so an unterminated one is found in one pass, never rescanned
# from every later quote), or one structural character. Numbers and literals need no token of their own:
# each value follows a `[`, `:` or `,`, each key a `{` or `,`.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*("?)|[\[{]|[\]}]|[,:]', re.DOTALL)
_OPEN, _CLOSE = frozenset("[{"), frozenset("]}")


def prescan(text: str, max_tokens: int = MAX_TOKENS, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a payload of more than `max_tokens` tokens or nested deeper than `max_depth`, in one linear
    pass that stops at the first excess: `json` then builds at most `max_tokens` values (keys and containers
    included) at most `max_depth` deep. Not a validator: what passes may still be refused by `json`."""
    depth = 0
    for count, match in enumerate(_TOKEN.finditer(text), 1):
        if count > max_tokens:
            raise CommandError(ErrorCode.BAD_REQUEST, f"payload holds more than {max_tokens} JSON tokens")
        token = match[0]
        if token in _OPEN:
            depth += 1
            if depth > max_depth:
                raise CommandError(ErrorCode.BAD_REQUEST, f"payload nests deeper than {max_depth} levels")
        elif token in _CLOSE:
            depth -= 1
            if depth < 0:
                raise CommandError(ErrorCode.BAD_REQUEST, f"payload is not JSON: unbalanced {token} at {match.start()}")
        elif token[0] == '"' and not match[1]:
            message = f"payload is not JSON: unterminated string at offset {match.start()}"
            raise CommandError(ErrorCode.BAD_REQUEST, message)


def loose_request_id(document: Any) -> str | None:
    """The request id when it looks valid, so even a refused request is answered under its id."""
    value = document.get("request_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) and REQUEST_ID.fullmatch(value) else None

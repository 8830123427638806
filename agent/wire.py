"""The wire: every name and document the device and its operators exchange over MQTT, in one place.

What crosses the broker is a contract with code this repository does not own (Home Assistant, an operator's
scripts, a fleet's event consumers), so its vocabulary lives here once: the schema version every document
carries, the event types, the command names and error codes, the protocol versions, and a `TypedDict` per
document, so the type checker holds each place that shapes one to its shape. Kernel level on purpose: the
gallery (erasure notices) and recognition (events) shape documents too and must not import the link.

A renamed key keeps its old spelling on the wire, beside the new one with the same value, until the next
schema version (`DEPRECATED_ALIASES`): a consumer written against the old key keeps working.
"""

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Literal, NotRequired, TypedDict

SCHEMA: Final = 1  # in every document; raised only for a change a consumer of schema 1 cannot read

# ------------------------------------------------------------------------------------ names

# Event types: the last level of `<prefix>/<device>/events/<type>` and the `type` of the payload.
FACE_RECOGNIZED: Final = "face_recognized"
FACE_UNKNOWN: Final = "face_unknown"
PERSON_ERASED: Final = "person_erased"  # the id of an erased person, never the name: consumers forget them
EVENT_TYPES: Final = (FACE_RECOGNIZED, FACE_UNKNOWN, PERSON_ERASED)

# MQTT protocol versions (`mqtt.protocol`).
MQTT_5: Final = "5"
MQTT_3_1_1: Final = "3.1.1"
PROTOCOLS: Final = (MQTT_5, MQTT_3_1_1)

# A request for every device: published once on `<prefix>/*/cmd/<name>` (a level no device id can take) and
# signed for this audience in place of a device id (agent/commands/signing.py); each device answers on its own
# reply topic. A device that listens there says so in its status (`fleet_commands`).
FLEET: Final = "*"

# The retained status document's `state`; Home Assistant's availability reads it.
ONLINE: Final = "online"
OFFLINE: Final = "offline"


class Command(StrEnum):
    """Every command a device answers: the last level of `<prefix>/<device>/cmd/<name>`."""

    PING = "ping"
    GET_STATUS = "get_status"
    GET_CONFIG = "get_config"
    LIST_PEOPLE = "list_people"
    ENROLL = "enroll"
    DELETE_PERSON = "delete_person"
    UPDATE_PERSON = "update_person"
    SET_CONFIG = "set_config"
    PURGE_EVENTS = "purge_events"
    RESTART = "restart"
    MODEL_UPDATE = "model_update"
    GET_AUDIT = "get_audit"
    GET_TELEMETRY = "get_telemetry"  # the last hour of telemetry, thinned (agent/link/telemetry.py)
    WRONG_PERSON = "wrong_person"  # corrections by event id (agent/recognition/corrections.py)
    IS_PERSON = "is_person"
    ENROLL_FROM_EVENT = "enroll_from_event"


class ErrorCode(StrEnum):
    """`error.code` of a refused command: stable, so an operator's script can act on it."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    STALE = "stale"
    REPLAYED = "replayed"
    STORAGE_FULL = "storage_full"  # the device's disk is full: nothing was written; retry later
    RATE_LIMITED = "rate_limited"  # too soon after the last one (restart): the message says when to retry
    INTERNAL = "internal"


# New spelling -> the old one, sent beside it with the same value until schema 2 (enrolment -> enrollment).
DEPRECATED_ALIASES: Final[Mapping[str, str]] = {
    "people_needing_reenrollment": "people_needing_reenrolment",
    "needs_reenrollment": "needs_reenrolment",
}


def encode(document: Mapping[str, Any]) -> bytes:
    """A document as the device publishes it: compact UTF-8 JSON; NaN and infinity refused (JSON has neither)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# ------------------------------------------------------------------------------ re-enrollment


class ReenrollmentCount(TypedDict):
    people_needing_reenrollment: int  # people the loaded embedder cannot recognize: no template of its model
    people_needing_reenrolment: int  # deprecated alias (DEPRECATED_ALIASES)


class ReenrollmentFlag(TypedDict):
    needs_reenrollment: bool
    needs_reenrolment: bool  # deprecated alias (DEPRECATED_ALIASES)


def reenrollment_count(count: int) -> ReenrollmentCount:
    """Both spellings of the count, for the status's gallery section and the list_people and model_update replies."""
    return {"people_needing_reenrollment": count, "people_needing_reenrolment": count}


def reenrollment_flag(needed: bool) -> ReenrollmentFlag:
    """Both spellings of one list_people row's flag."""
    return {"needs_reenrollment": needed, "needs_reenrolment": needed}


# ------------------------------------------------------------------------------------ events
# `<base>/events/<type>`, QoS 1, from the outbox; `event_id` lets a consumer drop a QoS 1 duplicate.


class Sighting(TypedDict):
    """Where and when a face event's track was seen."""

    track_id: int
    first_seen: str
    last_seen: str
    frames: int
    camera_id: str
    model_id: str  # the embedder that decided
    at: str


class FaceRecognized(Sighting):
    schema: int
    event_id: str
    type: Literal["face_recognized"]
    person_id: str
    name: NotRequired[str]  # absent without `events.include_names`: the name never leaves the device
    distance: float
    margin: float | None  # null when only one person is enrolled (an infinite margin)


class FaceUnknown(Sighting):
    """No distance or margin: they describe how close a stranger came to a named person."""

    schema: int
    event_id: str
    type: Literal["face_unknown"]


class PersonErased(TypedDict):
    schema: int
    event_id: str
    type: Literal["person_erased"]
    person_id: str
    at: str


FaceEvent = FaceRecognized | FaceUnknown  # what the frame loop emits
Event = FaceRecognized | FaceUnknown | PersonErased  # what the outbox publishes


# ---------------------------------------------------------------------------- status documents
# `<base>/status`, retained; the broker publishes the last will (offline) when the connection dies.


class GallerySection(TypedDict):
    people: int
    templates: int
    digest: str  # changes whenever a person is added, renamed or erased, or a model's template count changes
    people_needing_reenrollment: NotRequired[int]
    people_needing_reenrolment: NotRequired[int]  # deprecated alias (DEPRECATED_ALIASES)
    adaptive_templates: NotRequired[int]  # of `templates`, those adaptation made (gallery.adapt), every model's
    # gallery.threshold, .margin, .track_threshold in use: {value, source: "setting" | "embedder <id>" | "built-in"}
    matching: NotRequired[dict[str, dict[str, Any]]]


class StorageSection(TypedDict):
    state: str  # "ok" | "full"
    since: str
    free_bytes: int | None
    dropped_events: int  # events not written for lack of space, since start
    last_error: str | None


class OnlineStatus(TypedDict):
    schema: int
    device: str
    at: str
    state: Literal["online"]
    version: str
    models: dict[str, str]  # role -> model id
    gallery: GallerySection | None  # null until summarised, off the frame loop, after a start
    started_at: str
    uptime_s: int
    fleet_commands: NotRequired[bool]  # set by the link: it takes requests published once for the whole fleet
    storage: NotRequired[StorageSection]
    # Added by the service: the camera, the inference runtime, the provisioning outcome, settings that weaken
    # the device, and how commands are authorised.
    camera: NotRequired[dict[str, Any] | None]
    runtime: NotRequired[str]
    provisioning: NotRequired[dict[str, Any] | None]
    warnings: NotRequired[list[str]]
    commands: NotRequired[dict[str, Any]]


class OfflineStatus(TypedDict):
    schema: int
    device: str
    at: str
    state: Literal["offline"]
    reason: str  # "stopped" from a clean stop, "connection lost" as the last will
    version: str
    started_at: str


class LinkStatus(TypedDict):
    """What the link alone knows, published until the service hands it a full status."""

    schema: int
    state: Literal["online", "offline"]
    device: str
    fleet_commands: NotRequired[bool]


Status = OnlineStatus | OfflineStatus | LinkStatus


def link_status(state: Literal["online", "offline"], device: str) -> LinkStatus:
    return {"schema": SCHEMA, "state": state, "device": device}


# --------------------------------------------------------------------------------- telemetry
# `<base>/telemetry`, QoS 0, every `mqtt.telemetry_interval_seconds`.


class LatencyFigures(TypedDict):
    p50: float | None  # null: not measured in this window
    p95: float | None


class OutboxSection(TypedDict):
    depth: int
    inflight: int
    published: int
    dropped_events: int


class MemorySection(TypedDict):
    rss_mb: float


class FrameSection(TypedDict, total=False):
    """Present once the frame loop has measured a window."""

    fps: float | None
    latency_ms: dict[str, LatencyFigures]  # per stage: detect, embed, total ...
    dropped_frames: int


class HealthSection(TypedDict, total=False):
    """The event outbox and the state file system, where the agent has them."""

    outbox: OutboxSection
    storage: StorageSection


class TelemetryDocument(FrameSection, HealthSection):
    schema: int
    device: str
    at: str
    uptime_s: int
    cpu_temp_c: float | None  # null where there is no thermal zone
    memory: MemorySection


class TelemetryHistoryPage(TypedDict):
    """get_telemetry's data: the telemetry documents of the last `history_seconds` as published, oldest first,
    at most one per `spacing_seconds`; `at` is the device's clock now (a reader can correct for its skew)."""

    at: str
    history_seconds: float
    spacing_seconds: float
    points: list[TelemetryDocument]


class Presence(TypedDict):
    """`<base>/presence`, retained: whether a face is in view now."""

    schema: int
    device: str
    at: str
    present: bool
    faces: int


# ------------------------------------------------------------------------------------ commands
# `<base>/cmd/<name>` in; the reply on `<base>/cmd/<name>/reply` (or an MQTT 5 response topic below it).


class RequestDocument(TypedDict):
    """What an operator sends; `sent_at` and `signature` are added when the request is signed."""

    schema: NotRequired[int]
    request_id: str
    origin: NotRequired[str]
    to: NotRequired[str]  # FLEET: signed for every device, not for the one it reached
    sent_at: NotRequired[str]
    signature: NotRequired[str]
    args: NotRequired[dict[str, Any]]


class ErrorDetail(TypedDict):
    code: str  # an ErrorCode
    message: str  # one line; never echoes a field's value


class OkReply(TypedDict):
    schema: int
    request_id: str | None
    status: Literal["ok"]
    data: Mapping[str, Any]  # the command's own document


class ErrorReply(TypedDict):
    schema: int
    request_id: str | None  # null when the request had no usable id
    status: Literal["error"]
    error: ErrorDetail


Reply = OkReply | ErrorReply


def ok_document(request_id: str | None, data: Mapping[str, Any]) -> OkReply:
    return {"schema": SCHEMA, "request_id": request_id, "status": "ok", "data": data}


def error_document(request_id: str | None, code: ErrorCode, message: str) -> ErrorReply:
    return {
        "schema": SCHEMA,
        "request_id": request_id,
        "status": "error",
        "error": {"code": str(code), "message": message},
    }


class ConsentRecord(TypedDict):
    given_by: str
    given_at: str
    reference: str | None
    purpose: str | None


class PersonRow(TypedDict):
    """One person of a list_people page."""

    id: str
    name: NotRequired[str]  # absent without `events.include_names`
    external_ref: str | None
    consent: ConsentRecord | None
    created_at: str
    updated_at: str
    templates: dict[str, int]  # model id -> templates
    adaptive_templates: dict[str, int]  # model id -> those of them adaptation made (gallery.adapt)
    needs_reenrollment: bool
    needs_reenrolment: bool  # deprecated alias (DEPRECATED_ALIASES)


class PeoplePage(TypedDict):
    """list_people's data: a page of people in enrollment order; `total` counts everyone."""

    model_id: str  # the loaded embedder
    people: list[PersonRow]
    people_needing_reenrollment: int
    people_needing_reenrolment: int  # deprecated alias (DEPRECATED_ALIASES)
    total: int
    offset: int


class AuditRecord(TypedDict):
    """One record of the device's audit log: who (`actor`: `key:<id>`, `cli:<user>` ...) did what to whom."""

    seq: int  # grows with every record: a page's last `seq` is the next page's `before`
    at: str
    actor: str
    action: str  # e.g. person.enroll, command.set_config, retention.purge
    target: str | None  # a person id, never a name
    details: dict[str, str | int | float | bool | None]  # scalars only: no image or embedding can slip in


class AuditPage(TypedDict):
    """get_audit's data: records newest first; `next_before` asks for the older page (null: none older)."""

    records: list[AuditRecord]
    next_before: int | None


# ------------------------------------------------------------------------------- Home Assistant


class LastPerson(TypedDict):
    """`<base>/last_person`, retained: the "Last recognized person" sensor; `state` is what it shows."""

    schema: int
    state: str  # the name, or the id without `events.include_names`, or "none"
    person_id: str | None
    name: NotRequired[str | None]  # absent without `events.include_names`
    camera_id: str | None
    at: str | None


class HomeAssistantFaceEvent(TypedDict):
    """`<base>/face_event`: one message per recognition or unknown face, for the "Face seen" event entity."""

    event_type: Literal["recognized", "unknown"]
    person_id: NotRequired[str | None]  # recognitions only
    name: NotRequired[str]  # recognitions only, with `events.include_names`
    camera_id: str | None
    at: str | None
    event_id: str | None


class DiscoveryDevice(TypedDict):
    identifiers: list[str]
    name: str
    manufacturer: str
    model: str
    sw_version: str
    suggested_area: str


class DiscoveryOrigin(TypedDict):
    name: str
    sw_version: str


class DiscoveryCommon(TypedDict):
    """What every entity of the device shares: available while the retained status says online."""

    availability_topic: str
    availability_template: str
    payload_available: str
    payload_not_available: str
    qos: int
    device: DiscoveryDevice
    origin: DiscoveryOrigin


class SensorDiscovery(DiscoveryCommon):
    name: str
    unique_id: str
    icon: str
    state_topic: str
    value_template: str
    json_attributes_topic: str
    json_attributes_template: str


class BinarySensorDiscovery(DiscoveryCommon):
    name: str
    unique_id: str
    device_class: str
    state_topic: str
    value_template: str
    payload_on: str
    payload_off: str


class PersonSeenDiscovery(BinarySensorDiscovery):
    """One person's optional "seen in the last N minutes" sensor: Home Assistant switches it off itself."""

    object_id: str
    off_delay: int


class PersonSeen(TypedDict):
    """The retained state of one person's sensor (`<base>/seen/<person_id>`)."""

    schema: int
    seen: bool


class EventEntityDiscovery(DiscoveryCommon):
    name: str
    unique_id: str
    icon: str
    state_topic: str
    event_types: list[str]


Discovery = SensorDiscovery | BinarySensorDiscovery | EventEntityDiscovery

"""What the console knows about the fleet, from what the devices publish: retained status, telemetry, events
and command replies. One paho client (the `Watcher`) feeds one `FleetState`; pages read snapshots of it.

Telemetry is not retained, so the charts hold what arrived since the console started, for at most the last
hour, thinned to one point per `history_seconds / max_points` (an hour of a 1 s interval is 3600 documents
per device; 360 points draw the same line), and before that what the device itself kept of the hour
(`get_telemetry`, merged once by `merge_history`), so a console started a minute ago still plots the hour.
Everything kept is bounded: points per device, events, replies.
Nothing here holds a photo or an embedding; an event is kept as the device published it, which never has one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as paho

from agent.config import parse_broker_url
from agent.link.client import connect_options, make_client, new_client_id
from agent.link.mqtt import BrokerSettings

log = logging.getLogger(__name__)

HISTORY_SECONDS = 3600.0
MAX_POINTS = 360
MAX_EVENTS = 2000
MAX_REPLIES = 200  # per device
MAX_DOCUMENT_BYTES = 1024 * 1024  # a status or telemetry document is a few KB; a bigger one is not a device's

SERIES = ("fps", "latency_p50_ms", "latency_p95_ms", "cpu_temp_c", "outbox_depth", "dropped_frames")


def utc_text(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def telemetry_point(document: dict[str, Any]) -> dict[str, float | None]:
    """The plotted figures of one telemetry document (None where the device did not measure one)."""
    total = _object(_object(document.get("latency_ms")).get("total"))
    return {
        "fps": _number(document.get("fps")),
        "latency_p50_ms": _number(total.get("p50")),
        "latency_p95_ms": _number(total.get("p95")),
        "cpu_temp_c": _number(document.get("cpu_temp_c")),
        "outbox_depth": _number(_object(document.get("outbox")).get("depth")),
        "dropped_frames": _number(document.get("dropped_frames")),
    }


def attention(status: dict[str, Any] | None) -> list[str]:
    """What an operator should look at on this device, from its retained status, in plain words."""
    if status is None:
        return ["no status published yet"]
    notes: list[str] = []
    if status.get("state") != "online":
        notes.append(f"offline ({status.get('reason') or 'no reason given'})")
    notes += [str(warning) for warning in status.get("warnings") or [] if isinstance(warning, str)]
    camera = _object(status.get("camera"))
    if camera and camera.get("state") != "ok":
        notes.append(f"camera {camera.get('state')}: {camera.get('last_error') or 'no frames'}")
    storage = _object(status.get("storage"))
    if storage.get("state") == "full":
        notes.append(f"storage full since {storage.get('since')}: {storage.get('dropped_events', 0)} events not kept")
    stale = _object(status.get("gallery")).get("people_needing_reenrollment")
    if isinstance(stale, int) and stale > 0:
        notes.append(f"{stale} people need re-enrollment for {_object(status.get('models')).get('embedder')}")
    commands = _object(status.get("commands"))
    if commands.get("authority") == "unsigned_allowed":
        notes.append("commands.allow_unsigned is true: anyone on the broker may command this device")
    elif commands.get("authority") == "no_keys":
        notes.append("no command key configured: the console cannot manage this device")
    return notes


class Sample(NamedTuple):
    """One plotted point: when (the console's clock), the device's own `at` (what tells a repeat) and figures,
    in `SERIES` order: a tuple, not a dict, since 500 devices' hour is 60,000 of them or more (about 340 bytes
    each against 520 with a dict: 19 MB against 30 MB)."""

    at: float
    device_at: str | None
    figures: tuple[float | None, ...]


def sample_figures(document: dict[str, Any]) -> tuple[float | None, ...]:
    """`telemetry_point` as a `Sample` keeps it."""
    point = telemetry_point(document)
    return tuple(point[name] for name in SERIES)


def _moment(text: Any) -> float | None:
    """Seconds since the epoch of an ISO-8601 time with its zone; None for anything else."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


@dataclass
class DeviceRecord:
    device: str
    status: dict[str, Any] | None = None
    last_seen: float | None = None  # the console's clock: when anything last came from the device
    telemetry: dict[str, Any] | None = None  # the newest document, kept or not in the history
    history: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))
    replies: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_REPLIES))
    model_update: dict[str, Any] | None = None  # the newest model_update reply's data, from any operator


@dataclass(frozen=True)
class FleetEvent:
    """One event as a device published it, with where it came from."""

    seq: int
    device: str
    type: str
    payload: dict[str, Any]

    def person(self) -> str:
        return str(self.payload.get("name") or self.payload.get("person_id") or "")

    def matches(self, device: str, person: str, kind: str) -> bool:
        if device and self.device != device:
            return False
        if kind and self.type != kind:
            return False
        if person:
            wanted = person.casefold()
            return wanted in self.person().casefold() or wanted == str(self.payload.get("person_id", "")).casefold()
        return True

    def to_json(self) -> dict[str, Any]:
        """What a page shows: who, where, when; not the match distance or margin."""
        shown = {key: self.payload.get(key) for key in ("event_id", "at", "person_id", "name", "camera_id", "frames")}
        return {"seq": self.seq, "device": self.device, "type": self.type, **shown}


Listener = Callable[[FleetEvent], None]


class FleetState:
    """Thread-safe: the watcher's thread writes, the web server's threads read snapshots."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        history_seconds: float = HISTORY_SECONDS,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.clock = clock
        self.history_seconds = history_seconds
        self.spacing = history_seconds / max_points
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceRecord] = {}
        self._events: deque[FleetEvent] = deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._listeners: list[Listener] = []
        self.connected = False

    def _record(self, device: str) -> DeviceRecord:
        record = self._devices.get(device)
        if record is None:
            record = self._devices[device] = DeviceRecord(device)
        record.last_seen = self.clock()
        return record

    def on_status(self, device: str, document: dict[str, Any] | None) -> None:
        """A retained status; None (an empty retained message) forgets the device."""
        with self._lock:
            if document is None:
                self._devices.pop(device, None)
            else:
                self._record(device).status = document

    def on_telemetry(self, device: str, document: dict[str, Any]) -> None:
        now = self.clock()
        with self._lock:
            record = self._record(device)
            record.telemetry = document
            while record.history and record.history[0].at < now - self.history_seconds:
                record.history.popleft()
            at = document.get("at")
            device_at = at if isinstance(at, str) else None
            newest = record.history[-1] if record.history else None
            repeat = newest is not None and device_at is not None and device_at == newest.device_at  # merged already
            if newest is None or (now - newest.at >= self.spacing and not repeat):
                record.history.append(Sample(now, device_at, sample_figures(document)))

    def merge_history(self, device: str, page: dict[str, Any]) -> int:
        """A device's own kept telemetry (`get_telemetry`'s data) put before what this console received itself:
        only points older than the console's first, within the hour, each once (by the device's `at`), thinned
        to the console's spacing. Their times move by the device clock's offset from the console's (the reply's
        `at` against now), so a device with a wrong clock still plots in place. How many points were added."""
        now = self.clock()
        device_now = _moment(page.get("at"))
        offset = now - device_now if device_now is not None else 0.0
        points = page.get("points")
        with self._lock:
            record = self._devices.get(device)
            if record is None or not isinstance(points, list):
                return 0
            seen = {sample.device_at for sample in record.history}
            first = record.history[0].at if record.history else now
            found: list[Sample] = []
            for point in points:
                at = _moment(point.get("at")) if isinstance(point, dict) else None
                if at is not None and point["at"] not in seen and now - self.history_seconds <= at + offset < first:
                    found.append(Sample(at + offset, point["at"], sample_figures(point)))
            older: list[Sample] = []
            for sample in sorted(found, key=lambda sample: sample.at):
                if not older or sample.at - older[-1].at >= self.spacing:
                    older.append(sample)
            record.history = deque(older + list(record.history), maxlen=record.history.maxlen)
            return len(older)

    def on_event(self, device: str, kind: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._record(device)
            self._seq += 1
            event = FleetEvent(self._seq, device, kind, payload)
            self._events.append(event)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def on_reply(self, device: str, command: str, document: dict[str, Any]) -> None:
        """Any operator's command reply: its outcome for the device's log (never its data), and the
        model-update job's progress."""
        error = _object(document.get("error"))
        entry = {
            "at": utc_text(self.clock()),
            "command": command,
            "request_id": document.get("request_id"),
            "status": document.get("status"),
            "code": error.get("code"),
            "message": error.get("message"),
        }
        with self._lock:
            record = self._record(device)
            record.replies.appendleft(entry)
            if command == "model_update" and isinstance(document.get("data"), dict):
                record.model_update = document["data"]

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` (on the watcher's thread) for every new event; returns what stops it."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def events(self, device: str = "", person: str = "", kind: str = "", limit: int = 200) -> list[FleetEvent]:
        with self._lock:
            found = [event for event in self._events if event.matches(device, person, kind)]
        return found[-limit:]

    def device_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def online(self) -> list[str]:
        with self._lock:
            return sorted(d for d, r in self._devices.items() if r.status and r.status.get("state") == "online")

    def taking_fleet_requests(self) -> set[str]:
        """Online devices whose status says they take requests published once for the whole fleet."""
        with self._lock:
            return {
                d
                for d, r in self._devices.items()
                if r.status and r.status.get("state") == "online" and r.status.get("fleet_commands") is True
            }

    def device(self, device: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._devices.get(device)
            return None if record is None else self._view(record, series=True, log=True)

    def fleet(self, *, series: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            return [self._view(self._devices[d], series=series, log=False) for d in sorted(self._devices)]

    def series(self, devices: list[str]) -> dict[str, dict[str, list[float | None]]]:
        """The plotted history of each named device that is known."""
        with self._lock:
            records = [self._devices[d] for d in devices if d in self._devices]
            return {record.device: self._view(record, series=True, log=False)["series"] for record in records}

    def _view(self, record: DeviceRecord, *, series: bool, log: bool) -> dict[str, Any]:
        status = record.status or {}
        view: dict[str, Any] = {
            "device": record.device,
            "online": status.get("state") == "online",
            "last_seen": utc_text(record.last_seen) if record.last_seen else None,
            "status": record.status,
            "attention": attention(record.status),
            "telemetry": record.telemetry,
            "model_update": record.model_update,
        }
        if series:
            view["series"] = {"t": [round(sample.at, 1) for sample in record.history]} | {
                name: [sample.figures[column] for sample in record.history] for column, name in enumerate(SERIES)
            }
        if log:
            view["replies"] = list(record.replies)
        return view


class Watcher:
    """The console's one long-lived subscription: status, telemetry, events and replies of every device."""

    def __init__(self, broker: BrokerSettings, state: FleetState) -> None:
        self.broker, self.state = broker, state
        self.prefix = broker.prefix
        self._address = parse_broker_url(broker.url or "")
        self._client = make_client(broker, self._address, new_client_id("faceagent-console"))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        address = self._address
        self._client.connect_async(address["host"], address["port"], keepalive=30, **connect_options(self.broker))
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("the broker refused the console: %s", reason)
            return
        self.state.connected = True
        # Status and events at QoS 1: the broker queues them for a console busy with a burst (a few hundred
        # retained statuses arrive at once). Telemetry and replies at QoS 0: a lost point or log line is
        # harmless, and they never crowd the broker's per-client queue (mosquitto: 1000) out of statuses.
        topics = (("+/status", 1), ("+/events/+", 1), ("+/telemetry", 0), ("+/cmd/+/reply", 0))
        client.subscribe([(f"{self.prefix}/{topic}", qos) for topic, qos in topics])

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.state.connected = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self.handle(message.topic, bytes(message.payload))
        except Exception:  # a malformed message must not stop the paho thread
            log.exception("message on %s not understood", message.topic[:200])

    def handle(self, topic: str, payload: bytes) -> None:
        """One message, by its topic: `<prefix>/<device>/status|telemetry|events/<type>|cmd/<name>/reply`."""
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            return
        parts = topic[len(head) :].split("/")
        device = parts[0]
        if parts[1:] == ["status"] and not payload:
            self.state.on_status(device, None)
            return
        document = _document(payload)
        if document is None:
            return
        if parts[1:] == ["status"]:
            self.state.on_status(device, document)
        elif parts[1:] == ["telemetry"]:
            self.state.on_telemetry(device, document)
        elif len(parts) == 3 and parts[1] == "events":
            self.state.on_event(device, parts[2], document)
        elif len(parts) == 4 and parts[1] == "cmd" and parts[3] == "reply":
            self.state.on_reply(device, parts[2], document)


def _document(payload: bytes) -> dict[str, Any] | None:
    if len(payload) > MAX_DOCUMENT_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None

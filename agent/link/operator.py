"""The operator's broker connection: find devices, send commands, collect replies, follow events.

Not the device's side: `faceagent ctl` uses it, and so can any other operator's tool (a web console, a fleet
simulator). One paho client per session, made by the same factory and under the same TLS policy as the
device's (`agent.link.client`). Retained status documents name the devices; a command goes to
`<prefix>/<device>/cmd/<name>` with one request id for the whole fleet, so the audit records of one
operation match across devices, and replies are matched by that id on the reply topic (MQTT 5 also
names it as the response topic, with the id as correlation data). Devices that take fleet-wide requests
(status `fleet_commands`) can instead share one copy, published once on `<prefix>/*/cmd/<name>` and signed
for every device: the operator then sends, and the broker receives, a request's photos once, not once per
device. Each device still answers on its own reply topic. Signing is the caller's: a `RequestSigner`
(`agent.commands.signing.request_signer`) adds `sent_at` and the signature to each request.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import parse_broker_url
from agent.errors import FaceagentError
from agent.identity import new_ulid
from agent.link.client import BrokerSettings, connect_options, make_client, new_client_id
from agent.link.topics import Topics
from agent.wire import FLEET, SCHEMA, Command, RequestDocument, encode

CLIENT_OWNER = "faceagent-ctl"  # the client id's readable part: a broker's log tells operators from devices
_QUIET_SECONDS = 0.3  # retained messages arrive together right after SUBACK: no more for this long, all came
# The devices that say they take fleet-wide requests answer a fleet-wide ping; once none has answered for this
# long, those still silent get the request addressed to them alone (an answer that comes later only costs a
# duplicate, which the device answers from its reply cache without running the request again). A quiet spell
# rather than a deadline: 500 busy devices' answers may take longer than any fixed wait to all arrive, and a
# device cut off by its ACL never answers.
FLEET_PROBE_SECONDS = 3.0


class OperatorError(FaceagentError):
    """The operator's side cannot proceed: no broker, a refused connection, a request JSON cannot carry."""


# Signs one request (device id, command name, request): the request with `sent_at` and `signature` added.
RequestSigner = Callable[[str, str, Mapping[str, Any]], Mapping[str, Any]]


def operator_origin() -> str:
    """Who the devices' audit records name (`mqtt:<user>@<host>`); vouched for only when signed."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", f"{user}@{socket.gethostname()}")[:64]


class Operator:
    """One broker connection for one operator's session: subscribe, publish requests, collect replies."""

    def __init__(self, broker: BrokerSettings, *, timeout: float, signer: RequestSigner | None = None) -> None:
        if not broker.url:
            raise OperatorError("no broker: give --mqtt mqtt://host[:port] (or set mqtt.url in the settings file)")
        self.broker, self.timeout, self.signer = broker, timeout, signer
        self.origin = operator_origin()
        self._address = parse_broker_url(broker.url)
        self._inbox: queue.Queue[_Message] = queue.Queue()
        self._acks: set[int] = set()
        self._event = threading.Condition()
        self._connected: str | None = None
        self.client_id = new_client_id(CLIENT_OWNER)
        self._client = make_client(broker, self._address, self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda client, userdata, mid, *rest: self._acked(mid)
        self._client.on_message = lambda client, userdata, msg: self._inbox.put(
            _Message(msg.topic, bytes(msg.payload), bool(msg.retain))
        )

    def __enter__(self) -> Operator:
        host, port = self._address["host"], self._address["port"]
        try:
            self._client.connect(host, port, keepalive=self.broker.keepalive, **connect_options(self.broker))
        except (OSError, ValueError) as exc:
            raise OperatorError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
        self._client.loop_start()
        with self._event:
            self._event.wait_for(lambda: self._connected is not None, self.timeout)
        if self._connected != "ok":
            self.__exit__()
            raise OperatorError(f"the broker at {host}:{port} refused the connection: {self._connected or 'no answer'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._event:
            self._connected = "ok" if not reason.is_failure else str(reason)
            self._event.notify_all()

    def _acked(self, mid: int) -> None:
        with self._event:
            self._acks.add(mid)
            self._event.notify_all()

    def _subscribe(self, topics: list[str]) -> None:
        _, mid = self._client.subscribe([(topic, 1) for topic in topics])
        with self._event:
            if not self._event.wait_for(lambda: mid in self._acks, self.timeout):
                raise OperatorError("the broker did not confirm the subscription")

    def _messages(self, deadline: float, settle: float | None = None) -> Iterator[_Message]:
        """Messages until `deadline`; with `settle`, only until no retained message came for `settle` seconds.
        Live messages do not hold it open: a large fleet publishes statuses all the time (500 devices at one a
        minute is one every 0.12 s), so waiting for quiet would wait for the deadline."""
        settled = time.monotonic() + settle if settle else deadline
        while (left := min(deadline, settled) - time.monotonic()) > 0:
            try:
                message = self._inbox.get(timeout=left)
            except queue.Empty:
                return
            if settle and message.retained:
                settled = time.monotonic() + settle
            yield message

    def statuses(self, device: str = "+") -> dict[str, dict]:
        """Device id -> its retained status document. The subscription ends with the answer: devices go on
        publishing statuses, and a call that follows must not wade through them."""
        topic = Topics(self.broker.prefix, device).status
        self._subscribe([topic])
        found: dict[str, dict] = {}
        for received, payload, _ in self._messages(time.monotonic() + self.timeout, _QUIET_SECONDS):
            parts = received.split("/")
            if received.endswith("/status") and payload:
                found[parts[-2]] = _json_or_text(payload)
        self._client.unsubscribe(topic)
        return found

    def call(
        self, devices: list[str], name: str, args: dict[str, Any], *, fleet: Collection[str] = ()
    ) -> dict[str, dict | None]:
        """Send `name` to every device; device -> its reply document, None when it stayed silent.

        `fleet`: those of `devices` whose status says they take requests published once for the whole fleet. A
        fleet-wide ping first confirms which of them do (an ACL may keep such requests from a device); those
        share one copy of the request, every other device gets its own. The shared copy reaches every device
        listening, listed or not: give `fleet` only when `devices` are all the online devices (`ctl --all`).
        Only the listed devices are waited for."""
        if not devices:
            return {}  # paho refuses an empty subscription
        return self.exchange(devices, name, args, self.fleet_listeners([d for d in devices if d in fleet]))

    def fleet_listeners(self, claimed: Collection[str]) -> set[str]:
        """Of `claimed` (devices whose status says `fleet_commands`), those a fleet-wide ping reaches: they can
        share one copy of a request. A caller sending many requests to one fleet (a model's chunks) asks once."""
        if not claimed:
            return set()
        probe = self.exchange(list(claimed), Command.PING, {}, set(claimed), quiet=FLEET_PROBE_SECONDS)
        return {device for device, reply in probe.items() if reply is not None}

    def exchange(
        self, devices: list[str], name: str, args: dict[str, Any], shared: set[str], quiet: float | None = None
    ) -> dict[str, dict | None]:
        """One request id: one fleet-wide copy if any device is `shared` (see `fleet_listeners`; the copy
        reaches every device listening on the fleet topic, listed or not), one copy for each other device; the
        replies of `devices` until all have answered or `self.timeout` has passed (with `quiet`: or no reply
        has come for `quiet` seconds)."""
        if not devices:
            return {}  # paho refuses an empty subscription
        request_id = new_ulid()
        replies: dict[str, dict | None] = dict.fromkeys(devices)
        waiting = len(replies)
        self._subscribe([Topics(self.broker.prefix, d).reply(name) for d in devices])
        if shared:
            self._send(FLEET, name, args, request_id)
        for device in devices:
            if device not in shared:
                self._send(device, name, args, request_id)
        last = time.monotonic()  # when this request was sent, then when its latest reply came
        deadline = last + self.timeout
        while waiting:
            left = (min(deadline, last + quiet) if quiet else deadline) - time.monotonic()
            if left <= 0:
                break
            try:
                topic, payload, _ = self._inbox.get(timeout=left)
            except queue.Empty:
                break
            replier = self._replying_device(topic, name)
            if replier is None or replier not in replies or replies[replier] is not None:
                continue  # another subscription's message (a status, an event), or a repeat
            document = _json_or_text(payload)
            if document.get("request_id") == request_id:
                replies[replier] = document
                waiting -= 1
                last = time.monotonic()
        return replies

    def _replying_device(self, topic: str, name: str) -> str | None:
        """The device in `<prefix>/<device>/cmd/<name>/reply`, or None for any other topic."""
        head, tail = f"{self.broker.prefix}/", f"/cmd/{name}/reply"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        device = topic[len(head) : -len(tail)]
        return None if "/" in device else device

    def _send(self, device: str, name: str, args: dict[str, Any], request_id: str) -> None:
        """One request to `device`, or to every device when `device` is FLEET (signed for them all)."""
        topics = Topics(self.broker.prefix, device)
        request: RequestDocument = {"schema": SCHEMA, "request_id": request_id, "origin": self.origin, "args": args}
        if device == FLEET:
            request["to"] = FLEET
        signed = request if self.signer is None else self.signer(device, name, request)
        try:
            payload = encode(signed)
        except ValueError as exc:  # NaN or infinity: JSON has neither, and no device could read them
            raise OperatorError(f"{name}: the arguments are not JSON a device can read: {exc}") from None
        properties = None
        if self.broker.v5:
            properties = Properties(PacketTypes.PUBLISH)
            if device != FLEET:  # each device answers a fleet-wide request on its own reply topic
                properties.ResponseTopic = topics.reply(name)
            properties.CorrelationData = request_id.encode()
        self._client.publish(topics.command(name), payload, qos=1, properties=properties)

    def events(self, device: str, event_type: str, seconds: float | None) -> Iterator[ReceivedEvent]:
        """Events as they arrive, for `seconds` (None: until the caller stops); `device` and `event_type`
        may be "+" (and the type "#") for all."""
        self._subscribe([Topics(self.broker.prefix, device).event_filter(event_type)])
        deadline = time.monotonic() + (seconds if seconds is not None else 10 * 365 * 86400)
        for topic, payload, _ in self._messages(deadline):
            parts = topic.split("/")
            yield ReceivedEvent(device=parts[-3], event_type=parts[-1], document=_json_or_text(payload))


class _Message(NamedTuple):
    topic: str
    payload: bytes
    retained: bool  # sent from the broker's store at subscription, not published since


@dataclass(frozen=True)
class ReceivedEvent:
    device: str
    event_type: str
    document: dict[str, Any]  # as the device sent it (`agent.wire.Event`), or {"text": ...} when not JSON


def _json_or_text(payload: bytes) -> dict:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # a thousand nested brackets make json's decoder recurse out
        return {"text": payload.decode("utf-8", "replace")[:200]}
    return document if isinstance(document, dict) else {"value": document}

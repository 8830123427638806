"""The operator's broker connection for `faceagent ctl`: find devices, send commands, collect replies.

One paho client per `ctl` run. Retained status documents name the devices; a command goes to
`<prefix>/<device>/cmd/<name>` with one request id for the whole fleet, so the audit records of one
operation match across devices, and replies are matched by that id on the reply topic (MQTT 5 also
names it as the response topic, with the id as correlation data).
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
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import parse_broker_url
from agent.errors import FaceagentError
from agent.identity import new_ulid
from agent.link.mqtt import BrokerSettings
from agent.link.topics import Topics
from agent.wire import SCHEMA

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_QUIET_SECONDS = 0.3  # retained messages arrive together right after SUBACK


class CtlError(FaceagentError):
    """The operator's side cannot proceed: no broker, refused connection, unusable input."""


def operator_origin() -> str:
    """Who the devices' audit records name (`mqtt:<user>@<host>`); vouched for only when signed."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid{os.getuid()}"
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", f"{user}@{socket.gethostname()}")[:64]


class Operator:
    """One broker connection for one `ctl` run: subscribe, publish requests, collect replies."""

    def __init__(self, broker: BrokerSettings, *, timeout: float, sign_key: Ed25519PrivateKey | None = None) -> None:
        if not broker.url:
            raise CtlError("no broker: give --mqtt mqtt://host[:port] (or set mqtt.url in the settings file)")
        self.broker, self.timeout, self.sign_key = broker, timeout, sign_key
        self.origin = operator_origin()
        self._address = parse_broker_url(broker.url)
        self._v5 = broker.protocol == "5"
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: set[int] = set()
        self._event = threading.Condition()
        self._connected: str | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"faceagent-ctl-{new_ulid().lower()[-12:]}",
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
        )
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if self._address["tls"]:
            ca, cert, key = (str(p) if p else None for p in (broker.ca_file, broker.cert_file, broker.key_file))
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
            self._client.tls_insecure_set(broker.tls_insecure)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda client, userdata, mid, *rest: self._acked(mid)
        self._client.on_message = lambda client, userdata, msg: self._inbox.put((msg.topic, bytes(msg.payload)))

    def __enter__(self) -> Operator:
        host, port = self._address["host"], self._address["port"]
        try:
            self._client.connect(host, port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise CtlError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
        self._client.loop_start()
        with self._event:
            self._event.wait_for(lambda: self._connected is not None, self.timeout)
        if self._connected != "ok":
            self.__exit__()
            raise CtlError(f"the broker at {host}:{port} refused the connection: {self._connected or 'no answer'}")
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
                raise CtlError("the broker did not confirm the subscription")

    def _messages(self, deadline: float, quiet: float | None = None) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) until `deadline`, or until nothing came for `quiet` seconds."""
        while (left := deadline - time.monotonic()) > 0:
            try:
                yield self._inbox.get(timeout=min(left, quiet) if quiet else left)
            except queue.Empty:
                if quiet:
                    return

    def statuses(self, device: str = "+") -> dict[str, dict]:
        """Device id -> its retained status document."""
        self._subscribe([Topics(self.broker.prefix, device).status])
        found: dict[str, dict] = {}
        for topic, payload in self._messages(time.monotonic() + self.timeout, _QUIET_SECONDS):
            parts = topic.split("/")
            if topic.endswith("/status") and payload:
                found[parts[-2]] = _json_or_text(payload)
        return found

    def call(self, devices: list[str], name: str, args: dict[str, Any]) -> dict[str, dict | None]:
        """Send `name` to every device; device -> its reply document, None when it stayed silent."""
        if not devices:
            return {}  # paho refuses an empty subscription
        request_id = new_ulid()
        replies: dict[str, dict | None] = dict.fromkeys(devices)
        self._subscribe([Topics(self.broker.prefix, d).reply(name) for d in devices])
        for device in devices:
            self._send(device, name, args, request_id)
        for topic, payload in self._messages(time.monotonic() + self.timeout):
            device = topic.split("/")[-4]
            document = _json_or_text(payload)
            if device in replies and replies[device] is None and document.get("request_id") == request_id:
                replies[device] = document
            if all(reply is not None for reply in replies.values()):
                break
        return replies

    def _send(self, device: str, name: str, args: dict[str, Any], request_id: str) -> None:
        topics = Topics(self.broker.prefix, device)
        request: dict[str, Any] = {"schema": SCHEMA, "request_id": request_id, "origin": self.origin, "args": args}
        if self.sign_key is not None:
            from agent.commands.signing import sign_request

            request = sign_request(self.sign_key, device, name, request, now=datetime.now(UTC))
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = topics.reply(name)
            properties.CorrelationData = request_id.encode()
        payload = json.dumps(request, separators=(",", ":")).encode()
        self._client.publish(f"{topics.base}/cmd/{name}", payload, qos=1, properties=properties)

    def tail(self, device: str, event_type: str, count: int | None, seconds: float | None, as_json: bool) -> int:
        """Print events as they arrive until `count` of them or `seconds` have passed (or Ctrl-C)."""
        self._subscribe([f"{Topics(self.broker.prefix, device).base}/events/{event_type}"])
        deadline = time.monotonic() + (seconds if seconds is not None else 10 * 365 * 86400)
        for shown, (topic, payload) in enumerate(self._messages(deadline), start=1):
            parts = topic.split("/")
            event = _json_or_text(payload)
            if as_json:
                print(json.dumps({"device": parts[-3], "type": parts[-1], "event": event}), flush=True)
            else:
                summary = event.get("name") or event.get("person_id") or ""
                print(f"{event.get('at', '?')}  {parts[-3]}  {parts[-1]}  {summary}".rstrip(), flush=True)
            if count is not None and shown >= count:
                break
        return 0


def _json_or_text(payload: bytes) -> dict:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # a thousand nested brackets make json's decoder recurse out
        return {"text": payload.decode("utf-8", "replace")[:200]}
    return document if isinstance(document, dict) else {"value": document}

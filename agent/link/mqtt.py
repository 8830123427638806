"""The broker link: one paho-mqtt client that reconnects forever and never raises into the agent.

paho runs its network loop on its own thread; every callback here is short (set a flag, hand a command
to the caller, publish a few small documents) because a slow callback stalls keepalives and acks. The
broker announces the device offline through the last will (a retained status document) when the
connection dies; a clean `stop()` publishes that document itself. State changes are logged once, never
per reconnect attempt, so a broker that is away for a day does not fill the journal.
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import BrokerAddress, MqttSettings, parse_broker_url
from agent.errors import ConfigError
from agent.files import write_atomically
from agent.identity import utc_now
from agent.link.topics import Topics
from agent.wire import MQTT_5, OFFLINE, ONLINE, Presence, Status, TelemetryDocument, encode, link_status

__all__ = ["BrokerSettings", "CommandRequest", "MqttLink", "packet_limit", "parse_broker_url"]

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho holds QoS 1 messages for both
PACKET_HEADROOM = 64 * 1024  # fixed header, topic and properties (response topic, correlation data) around a payload


def packet_limit(max_payload_bytes: int) -> int:
    """The largest MQTT packet worth receiving: the largest payload a command may have, plus its envelope."""
    return max_payload_bytes + PACKET_HEADROOM


CLIENT_ID_NAME = "mqtt-client-id"  # in the state directory


def client_id_for(device_id: str, state_dir: Path) -> str:
    """The device id plus a random suffix made once and kept in `state_dir` (0600).

    The device id is public (it is in every topic), and a broker drops a session when another client
    connects with its id: with the bare device id, any client allowed to connect could knock the device
    off, again and again. The suffix stays the same across restarts on purpose: a new connection then
    takes over a session left half-open by a power cut, so the broker publishes the old last will
    ("offline") at once, before the new "online", instead of up to 1.5 keepalives after it. If the file
    cannot be written the suffix is made per process (sessions are clean, so nothing else depends on it).
    """
    path = state_dir / CLIENT_ID_NAME
    try:
        suffix = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        suffix = ""
    if re.fullmatch(r"[0-9a-f]{16}", suffix) is None:
        suffix = secrets.token_hex(8)
        try:
            write_atomically(path, (suffix + "\n").encode("ascii"), mode=0o600)
        except OSError as exc:
            log.warning("could not keep the MQTT client id in %s (%s): this run uses its own", path, exc.strerror)
    return f"{device_id}-{suffix}"


@dataclass(frozen=True)
class CommandRequest:
    """One command as it came off the wire; the dispatcher parses and validates the payload."""

    name: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    received_at: datetime


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the broker; built from the [mqtt] section and `--mqtt URL` by `from_settings`."""

    url: str | None
    prefix: str = "faceagent"
    device_id: str | None = None
    protocol: str = MQTT_5  # wire.PROTOCOLS
    keepalive: int = 30
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    tls_insecure: bool = False
    reconnect_min_seconds: float = 1.0  # backoff doubles from here ...
    reconnect_max_seconds: float = 60.0  # ... up to here, forever
    max_inflight: int = 20  # QoS 1 messages awaiting PUBACK: keep <= the broker's Receive Maximum
    # MQTT 5 Maximum Packet Size in CONNECT: the broker drops larger messages for this client, so they never
    # reach paho (which reads any packet up to 256 MB into memory). MQTT 3.1.1 has no such property: there
    # only the broker's own max_packet_size protects the device.
    max_packet_bytes: int | None = None

    @classmethod
    def from_settings(cls, mqtt: MqttSettings, url: str | None = None, **tuning: Any) -> BrokerSettings:
        """[mqtt] with a `--mqtt URL` laid over it: user and password in that URL win over the file's."""
        settings = cls(
            url=url or mqtt.url,
            prefix=mqtt.prefix,
            device_id=mqtt.device_id,
            protocol=mqtt.protocol,
            keepalive=mqtt.keepalive,
            ca_file=mqtt.ca_file,
            cert_file=mqtt.cert_file,
            key_file=mqtt.key_file,
            username=mqtt.username,
            password=mqtt.password,
            tls_insecure=mqtt.tls_insecure,
            **tuning,
        )
        if url:
            address = parse_broker_url(url)
            if address["username"] is not None:
                settings = replace(settings, username=address["username"], password=address["password"])
        return settings


class MqttLink:
    """The device's one connection: status with last will, events, telemetry, commands in, replies out."""

    def __init__(
        self,
        settings: BrokerSettings,
        device_id: str,
        on_command: Callable[[CommandRequest], None],
        *,
        will: Status | None = None,
        client_id: str | None = None,
    ) -> None:
        if not settings.url:
            raise ConfigError("mqtt.url is not set: give the broker as mqtt://host or mqtts://host (or --mqtt URL)")
        self.settings = settings
        self.topics = Topics(settings.prefix, device_id)
        self.on_command = on_command
        self.on_acked: Callable[[int], None] | None = None  # the outbox's hook: PUBACK (success) for a mid
        self._address: BrokerAddress = parse_broker_url(settings.url)
        self._v5 = settings.protocol == MQTT_5
        self._status: Status = link_status(ONLINE, device_id)
        self._connected = threading.Event()
        self._listening = threading.Event()  # the command subscription is acknowledged
        self._command_sub_mid: int | None = None
        self._epoch = 0
        self._state = "idle"
        self._refusal: str | None = None
        self._connect_hooks: list[Callable[[], None]] = []
        self._subscriptions: list[str] = []
        self.client_id = client_id or f"{device_id}-{secrets.token_hex(8)}"  # never the public device id
        self._client = self._make_client(self.client_id, will or link_status(OFFLINE, device_id))

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; an absent broker is retried with backoff, forever."""
        self._log_state("connecting", logging.INFO, "connecting to %s:%d", self._address["host"], self._address["port"])
        options: dict[str, Any] = {"clean_start": True} if self._v5 else {}
        if self._v5 and self.settings.max_packet_bytes:
            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = self.settings.max_packet_bytes
            options["properties"] = properties  # paho sends it again on every reconnect
        elif self.settings.max_packet_bytes:
            log.info("MQTT 3.1.1 cannot limit the size of incoming messages: set max_packet_size on the broker")
        self._client.connect_async(self._address["host"], self._address["port"], self.settings.keepalive, **options)
        self._client.loop_start()

    def stop(self, offline_status: Status, timeout: float = 2.0) -> None:
        """Publish `offline_status` (retained) if connected, then disconnect: the broker drops the will."""
        if self.connected:
            info = self._publish(self.topics.status, encode(offline_status), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            while info is not None and not _published(info) and self.connected and time.monotonic() < deadline:
                time.sleep(0.01)
        self._log_state("stopped", logging.INFO, "disconnected from the broker (stopped)")
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._listening.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connection_epoch(self) -> int:
        """Counts successful connects, so the outbox can tell messages sent before a reconnect."""
        return self._epoch

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and subscribed to commands, so a command sent from now on arrives."""
        return self._listening.wait(timeout)

    def add_connect_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` on paho's thread after every (re)connect; it must be quick."""
        self._connect_hooks.append(hook)

    def add_subscription(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe `topic` on every connect; `handler(payload)` runs on paho's thread and must be quick."""

        def deliver(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                handler(bytes(message.payload))
            except Exception:
                log.exception("handler for %s failed", topic)

        self._client.message_callback_add(topic, deliver)
        self._subscriptions.append(topic)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    # ------------------------------------------------------------------------------------- publishing

    def publish_event(self, event_type: str, payload: bytes) -> int | None:
        """QoS 1 on `<base>/events/<type>`; the mid to await in `on_acked`, or None when not sent."""
        if not self.connected:
            return None
        info = self._publish(self.topics.event(event_type), payload, qos=1)
        return info.mid if info is not None and info.rc in _QUEUED else None

    def publish_status(self, status: Status) -> None:
        """Retained; remembered and re-published (with a fresh `at`) on every reconnect."""
        self._status = status
        if self.connected:
            self._publish(self.topics.status, encode(status), qos=1, retain=True)

    def publish_telemetry(self, telemetry: TelemetryDocument) -> None:
        if self.connected:
            self._publish(self.topics.telemetry, encode(telemetry), qos=0)

    def publish_presence(self, presence: Presence) -> None:
        """Retained, so a consumer that starts later (Home Assistant) sees whether a face is in view."""
        if self.connected:
            self._publish(self.topics.presence, encode(presence), qos=1, retain=True)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """For integrations with their own topics (Home Assistant discovery)."""
        if self.connected:
            self._publish(topic, payload, qos=1, retain=retain)

    def reply(self, request: CommandRequest, payload: bytes) -> None:
        """To the MQTT 5 response topic with the request's correlation data, else `<base>/cmd/<name>/reply`.

        A response topic is honoured only at or below `<base>/cmd/<name>/reply`: a requester must not be able
        to make this device publish into another device's (or any other) topics, whatever the broker's ACL.
        """
        topic = self.topics.reply(request.name)
        properties = None
        if self._v5:
            wanted = request.response_topic
            if wanted is not None:
                if _valid_topic(wanted) and (wanted == topic or wanted.startswith(topic + "/")):
                    topic = wanted
                else:
                    log.warning(
                        "command %r: response topic outside %s/# refused; replying on %s", request.name, topic, topic
                    )
            if request.correlation_data is not None:
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = request.correlation_data
        self._publish(topic, payload, qos=1, properties=properties)

    def _publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False, properties: Properties | None = None
    ) -> paho.MQTTMessageInfo | None:
        try:
            return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except (ValueError, TypeError) as exc:
            log.warning("not published on %r: %s", topic[:120], exc)
            return None

    # ---------------------------------------------------------------------------------- paho callbacks

    def _make_client(self, client_id: str, will: Status) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else True,
        )
        client.suppress_exceptions = True  # a bug in a callback must not end the network thread
        client.on_log = _paho_log
        # paho types the delays as int; it sleeps on floats, and tests need sub-second backoff
        client.reconnect_delay_set(self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds)  # type: ignore[arg-type]
        client.max_inflight_messages_set(self.settings.max_inflight)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self.settings.password)
        if self._address["tls"]:
            self._configure_tls(client)
        elif any((self.settings.ca_file, self.settings.cert_file, self.settings.key_file)):
            raise ConfigError("mqtt.ca_file/cert_file/key_file are set but the broker URL is mqtt://: use mqtts://")
        client.will_set(self.topics.status, encode(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def _configure_tls(self, client: paho.Client) -> None:
        s = self.settings
        try:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt TLS files (ca_file, cert_file, key_file) unusable: {exc}") from exc
        client.tls_insecure_set(s.tls_insecure)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._log_state("refused", logging.ERROR, "the broker refused the connection: %s", reason)
            return
        self._log_state("connected", logging.INFO, "connected to %s:%d", self._address["host"], self._address["port"])
        self._epoch += 1
        self._connected.set()
        self._command_sub_mid = client.subscribe(self.topics.commands, qos=1)[1]
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        status = {**self._status, "at": utc_now()} if self._status["state"] == ONLINE else self._status
        self._publish(self.topics.status, encode(status), qos=1, retain=True)
        for hook in self._connect_hooks:
            try:
                hook()
            except Exception:
                log.exception("connect hook %r failed", hook)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._log_state(
            "unreachable",
            logging.WARNING,
            "broker %s:%d unreachable (or TLS handshake failed); retrying with backoff up to %gs",
            self._address["host"],
            self._address["port"],
            self.settings.reconnect_max_seconds,
        )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._listening.clear()
        if was_connected and self._state != "stopped":
            self._log_state("lost", logging.WARNING, "lost the broker connection (%s); reconnecting", reason)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Properties
    ) -> None:
        if mid != self._command_sub_mid:
            return
        if any(reason.is_failure for reason in reasons):
            log.error("the broker refused the command subscription %s: %s", self.topics.commands, reasons[0])
        else:
            self._listening.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        name = self.topics.command_name(message.topic)
        if name is None:
            return
        if message.retain:
            log.warning("retained command %r ignored: commands are never replayed from the broker's store", name)
            return
        properties = getattr(message, "properties", None)
        response_topic = getattr(properties, "ResponseTopic", None) if self._v5 else None
        correlation = getattr(properties, "CorrelationData", None) if self._v5 else None
        request = CommandRequest(
            name=name,
            payload=bytes(message.payload),
            response_topic=response_topic,
            correlation_data=bytes(correlation) if correlation is not None else None,
            received_at=datetime.now(UTC),
        )
        try:
            self.on_command(request)
        except Exception:
            log.exception("command %r could not be handed over", name)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        if reason.is_failure:
            refusal = str(reason)
            if refusal != self._refusal:
                log.warning("the broker refused a publish: %s (kept for retry)", refusal)
                self._refusal = refusal
            return
        self._refusal = None
        hook = self.on_acked
        if hook is not None:
            try:
                hook(mid)
            except Exception:
                log.exception("ack hook failed")

    def _log_state(self, state: str, level: int, message: str, *args: object) -> None:
        if state != self._state:
            self._state = state
            log.log(level, message, *args)


def _paho_log(client: paho.Client, userdata: Any, level: int, text: str) -> None:
    """paho's own chatter (every failed retry) at DEBUG; an exception it caught in a callback is an error."""
    log.log(logging.ERROR if text.startswith("Caught exception") else logging.DEBUG, "paho: %s", text)


def _valid_topic(topic: str) -> bool:
    """A topic a client may publish on: non-empty, no wildcards, no NUL, at most 65535 UTF-8 bytes."""
    return bool(topic) and not any(c in topic for c in "+#\x00") and len(topic.encode("utf-8", "replace")) <= 65535


def _published(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False

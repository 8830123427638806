"""The broker link: one paho-mqtt client that reconnects forever and never raises into the agent.

paho runs its network loop on its own thread; every callback here is short (set a flag, hand a command
to the caller, publish a few small documents) because a slow callback stalls keepalives and acks. The
broker announces the device offline through the last will (a retained status document) when the
connection dies; a clean `stop()` publishes that document itself. State changes are logged once, never
per reconnect attempt, so a broker that is away for a day does not fill the journal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import BrokerAddress, parse_broker_url
from agent.errors import ConfigError
from agent.identity import utc_now
from agent.link.client import (
    CLIENT_ID_NAME,
    BrokerSettings,
    client_id_for,
    connect_options,
    make_client,
    new_client_id,
    packet_limit,
)
from agent.link.topics import Topics
from agent.wire import OFFLINE, ONLINE, Presence, Status, TelemetryDocument, encode, link_status

# BrokerSettings, client_id_for and packet_limit live in agent.link.client (the one client factory); they are
# named here too because the device's link is where callers have always found them.
__all__ = [
    "CLIENT_ID_NAME",
    "BrokerSettings",
    "CommandRequest",
    "MqttLink",
    "client_id_for",
    "packet_limit",
    "parse_broker_url",
]

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho holds QoS 1 messages for both


@dataclass(frozen=True)
class CommandRequest:
    """One command as it came off the wire; the dispatcher parses and validates the payload."""

    name: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    received_at: datetime


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
        self._v5 = settings.v5
        self._status: Status = link_status(ONLINE, device_id)
        self._connected = threading.Event()
        self._listening = threading.Event()  # the command subscription is acknowledged
        self._command_sub_mid: int | None = None
        self._epoch = 0
        self._state = "idle"
        self._refusal: str | None = None
        self._connect_hooks: list[Callable[[], None]] = []
        self._subscriptions: list[str] = []
        self.client_id = client_id or new_client_id(device_id)  # never the public device id alone
        self._client = self._make_client(self.client_id, will or link_status(OFFLINE, device_id))

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; an absent broker is retried with backoff, forever."""
        self._log_state("connecting", logging.INFO, "connecting to %s:%d", self._address["host"], self._address["port"])
        options = connect_options(self.settings)
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
        """Retained; remembered and re-published (with a fresh `at`) on every reconnect. An online status says
        the device listens for requests published once for the whole fleet (`fleet_commands`)."""
        self._status = status
        if self.connected:
            self._publish(self.topics.status, encode(_listening(status)), qos=1, retain=True)

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
        client = make_client(self.settings, self._address, client_id)
        client.will_set(self.topics.status, encode(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

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
        commands = [(self.topics.commands, 1), (self.topics.fleet_commands, 1)]
        self._command_sub_mid = client.subscribe(commands)[1]
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        status = {**self._status, "at": utc_now()} if self._status["state"] == ONLINE else self._status
        self._publish(self.topics.status, encode(_listening(cast(Status, status))), qos=1, retain=True)
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
        if mid != self._command_sub_mid or not reasons:
            return
        if reasons[0].is_failure:
            log.error("the broker refused the command subscription %s: %s", self.topics.commands, reasons[0])
        else:
            self._listening.set()
        if len(reasons) > 1 and reasons[1].is_failure:  # Mosquitto grants it and then delivers nothing instead
            log.warning(
                "the broker refused %s (its ACL?): operators' --all sends this device a copy of its own",
                self.topics.fleet_commands,
            )

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


def _listening(status: Status) -> Status:
    """An online status says this device subscribes to fleet-wide requests; an operator confirms it with a
    fleet-wide ping before relying on it (an ACL may keep them from the device)."""
    return cast(Status, {**status, "fleet_commands": True}) if status["state"] == ONLINE else status


def _valid_topic(topic: str) -> bool:
    """A topic a client may publish on: non-empty, no wildcards, no NUL, at most 65535 UTF-8 bytes."""
    return bool(topic) and not any(c in topic for c in "+#\x00") and len(topic.encode("utf-8", "replace")) <= 65535


def _published(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False

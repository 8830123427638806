"""How a client reaches the broker: one paho client factory, for the device and for the operator's tools.

One policy, whoever connects:
- TLS (an `mqtts://` URL) verifies the broker's certificate against `ca_file` (else the system's CAs) and its
  host name, and presents `cert_file`/`key_file` when the broker asks for a client certificate; TLS files
  with a plain `mqtt://` URL are refused rather than silently unused. `tls_insecure` drops the host name
  check only, and the client says so in the log each time it is made (never in production).
- MQTT 5 or 3.1.1 as `protocol` says, a clean session either way; MQTT 5 also announces a Maximum Packet
  Size when one is set, so the broker drops larger messages before paho reads them into memory.
- A client id is its owner's name plus a random suffix, never a public id alone: a broker drops a session
  when another client connects with the same id, so a bare device id would let anyone knock it off.
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerAddress, MqttSettings, parse_broker_url
from agent.errors import ConfigError
from agent.files import write_atomically
from agent.wire import MQTT_5

__all__ = [
    "PACKET_HEADROOM",
    "BrokerSettings",
    "client_id_for",
    "connect_options",
    "make_client",
    "new_client_id",
    "packet_limit",
]

log = logging.getLogger(__name__)
PACKET_HEADROOM = 64 * 1024  # fixed header, topic and properties (response topic, correlation data) around a payload
CLIENT_ID_NAME = "mqtt-client-id"  # in the state directory
_SUFFIX = re.compile(r"[0-9a-f]{16}")


def packet_limit(max_payload_bytes: int) -> int:
    """The largest MQTT packet worth receiving: the largest payload a command may have, plus its envelope."""
    return max_payload_bytes + PACKET_HEADROOM


def new_client_id(owner: str) -> str:
    """`owner` plus a random suffix, made afresh: for a client whose sessions need not outlive it."""
    return f"{owner}-{_new_suffix()}"


def _new_suffix() -> str:
    return secrets.token_hex(8)  # 16 hex digits, as _SUFFIX expects


def client_id_for(device_id: str, state_dir: Path) -> str:
    """The device id plus a random suffix made once and kept in `state_dir` (0600).

    The suffix stays the same across restarts on purpose: a new connection then takes over a session left
    half-open by a power cut, so the broker publishes the old last will ("offline") at once, before the new
    "online", instead of up to 1.5 keepalives after it. If the file cannot be written the suffix is made per
    process (sessions are clean, so nothing else depends on it).
    """
    path = state_dir / CLIENT_ID_NAME
    try:
        suffix = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        suffix = ""
    if _SUFFIX.fullmatch(suffix) is None:
        suffix = _new_suffix()
        try:
            write_atomically(path, (suffix + "\n").encode("ascii"), mode=0o600)
        except OSError as exc:
            log.warning("could not keep the MQTT client id in %s (%s): this run uses its own", path, exc.strerror)
    return f"{device_id}-{suffix}"


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
    # only the broker's own max_packet_size protects the client.
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

    @property
    def v5(self) -> bool:
        return self.protocol == MQTT_5


def make_client(settings: BrokerSettings, address: BrokerAddress, client_id: str) -> paho.Client:
    """A paho client for `address` under the one policy above; the caller adds its callbacks (and will)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if settings.v5 else paho.MQTTv311,
        clean_session=None if settings.v5 else True,  # MQTT 5 asks for a clean start in `connect_options`
    )
    client.suppress_exceptions = True  # a bug in a callback must not end the network thread
    client.on_log = _paho_log
    # paho types the delays as int; it sleeps on floats, and tests need sub-second backoff
    client.reconnect_delay_set(settings.reconnect_min_seconds, settings.reconnect_max_seconds)  # type: ignore[arg-type]
    client.max_inflight_messages_set(settings.max_inflight)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if address["tls"]:
        _configure_tls(client, settings, address)
    elif any((settings.ca_file, settings.cert_file, settings.key_file)):
        raise ConfigError("mqtt.ca_file/cert_file/key_file are set but the broker URL is mqtt://: use mqtts://")
    return client


def connect_options(settings: BrokerSettings) -> dict[str, Any]:
    """Keyword arguments for paho's `connect`/`connect_async`: a clean start and the packet limit (MQTT 5)."""
    if not settings.v5:
        if settings.max_packet_bytes:
            log.info("MQTT 3.1.1 cannot limit the size of incoming messages: set max_packet_size on the broker")
        return {}
    options: dict[str, Any] = {"clean_start": True}
    if settings.max_packet_bytes:
        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = settings.max_packet_bytes
        options["properties"] = properties  # paho sends it again on every reconnect
    return options


def _configure_tls(client: paho.Client, settings: BrokerSettings, address: BrokerAddress) -> None:
    try:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"mqtt TLS files (ca_file, cert_file, key_file) unusable: {exc}") from exc
    client.tls_insecure_set(settings.tls_insecure)
    if settings.tls_insecure:
        log.warning(
            "TLS to %s:%d does not check the broker's host name (mqtt.tls_insecure): never in production",
            address["host"],
            address["port"],
        )


def _paho_log(client: paho.Client, userdata: Any, level: int, text: str) -> None:
    """paho's own chatter (every failed retry) at DEBUG; an exception it caught in a callback is an error."""
    log.log(logging.ERROR if text.startswith("Caught exception") else logging.DEBUG, "paho: %s", text)

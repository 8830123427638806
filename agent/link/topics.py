"""Topic names and the device id: one place that knows how `<prefix>/<device>/...` is spelled.

The device id defaults to a value derived from /etc/machine-id rather than the id itself: systemd asks
that the machine id never leave the machine, so it is hashed with an application key first (the idea of
`sd_id128_get_machine_app_specific`). Without a machine id the hostname stands in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from agent.wire import FLEET

MACHINE_ID = Path("/etc/machine-id")
_APP_KEY = b"faceagent.device-id.v1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_ID = 64


def default_device_id(machine_id_file: Path = MACHINE_ID, hostname: str | None = None) -> str:
    """A stable id for this machine: 16 hex digits from the machine id, else the sanitised hostname."""
    try:
        machine_id = machine_id_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine_id = ""
    if machine_id:
        return hmac.new(machine_id.encode(), _APP_KEY, hashlib.sha256).hexdigest()[:16]
    return safe_segment(hostname if hostname is not None else socket.gethostname()) or "faceagent"


def resolve_device_id(configured: str | None) -> str:
    """The configured id (validated by the config loader) or the derived default."""
    return configured if configured else default_device_id()


def safe_segment(text: str) -> str:
    """`text` as one topic level that is also a valid Home Assistant node id: A-Z a-z 0-9 _ -."""
    return _UNSAFE.sub("_", text).strip("_")[:_MAX_ID]


@dataclass(frozen=True)
class Topics:
    """Every topic one device publishes on or listens to."""

    prefix: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def presence(self) -> str:
        return f"{self.base}/presence"

    @property
    def last_person(self) -> str:
        """Retained: who was recognized last, cleared when that person is erased (Home Assistant's sensor)."""
        return f"{self.base}/last_person"

    @property
    def face_event(self) -> str:
        """Not retained: one message per recognition or unknown face, for Home Assistant's event entity."""
        return f"{self.base}/face_event"

    @property
    def commands(self) -> str:
        """The subscription filter for every command addressed to this device."""
        return f"{self.base}/cmd/+"

    @property
    def fleet_commands(self) -> str:
        """The subscription filter for commands published once for every device (`agent.wire.FLEET`)."""
        return f"{self.prefix}/{FLEET}/cmd/+"

    def event(self, event_type: str) -> str:
        return f"{self.base}/events/{safe_segment(event_type) or 'event'}"

    def event_filter(self, event_type: str) -> str:
        """The subscription to one type's events (`event_type` "+" or "#": every type)."""
        return f"{self.base}/events/{event_type}"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def reply(self, command: str) -> str:
        return f"{self.base}/cmd/{command}/reply"

    def command_name(self, topic: str) -> str | None:
        """The command in `<base>/cmd/<name>` or `<prefix>/*/cmd/<name>`, or None for any other topic."""
        for head in (f"{self.base}/cmd/", f"{self.prefix}/{FLEET}/cmd/"):
            if topic.startswith(head):
                name = topic[len(head) :]
                return None if "/" in name else name
        return None

"""A fleet's event consumer that survives broker restarts and drops duplicates by `event_id`.

Devices publish events with QoS 1 from a durable outbox: an event is deleted on the device only once the
broker acknowledged it, so a lost connection or a restarted broker re-sends it rather than losing it, and
a consumer may see the same event twice. Each event carries its `event_id` (a ULID, unique per event):
remember the recent ones and drop a repeat. The consumer's own session is persistent (MQTT 5 session expiry,
QoS 1), so a broker with persistence keeps its events while it is away and across a broker restart.

    python examples/events_consumer.py --mqtt mqtt://broker.example.lan:1883 --client-id warehouse-sink

Needs only paho-mqtt (pip install paho-mqtt); prints one JSON line per new event.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_SECONDS = 24 * 3600  # how long the broker keeps our queued events while we are away
REMEMBERED = 100_000  # event ids kept for the duplicate check: a repeat comes soon after its original


class EventConsumer:
    """Every event of every device once: `on_event(device, event_type, event)` for each new `event_id`."""

    def __init__(
        self,
        url: str,
        client_id: str,
        on_event: Callable[[str, str, dict[str, Any]], None],
        *,
        prefix: str = "faceagent",
        remembered: int = REMEMBERED,
    ) -> None:
        address = urlsplit(url)
        self.host, self.port = address.hostname or "localhost", address.port or 1883
        self.on_event = on_event
        self.topic = f"{prefix}/+/events/#"
        self.remembered = remembered
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.received = self.duplicates = 0
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if address.username:
            self.client.username_pw_set(address.username, address.password)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_SECONDS
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=properties)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)  # again on every connect: harmless when the session kept it

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.received += 1
        try:
            event = json.loads(message.payload)
            event_id = str(event["event_id"])
        except (ValueError, KeyError, TypeError):
            return  # not an event document: nothing to do with it
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen[event_id] = None
        if len(self.seen) > self.remembered:
            self.seen.popitem(last=False)
        parts = message.topic.split("/")
        self.on_event(parts[-3], parts[-1], event)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt", default="mqtt://localhost:1883", help="the broker: mqtt://[user:password@]host")
    parser.add_argument("--client-id", required=True, help="the same id every run, so the broker keeps our session")
    parser.add_argument("--prefix", default="faceagent")
    args = parser.parse_args()

    def show(device: str, event_type: str, event: dict[str, Any]) -> None:
        print(json.dumps({"device": device, "type": event_type, "event": event}), flush=True)

    consumer = EventConsumer(args.mqtt, args.client_id, show, prefix=args.prefix)
    consumer.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        consumer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A device that is only an MQTT client: it answers commands with whatever a test makes up (hostile replies, or
none at all), so `faceagent ctl` can be shown what no real agent sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import HOST, Broker


class Responder:
    """A device on the broker that answers every command with the document `answer(request)` gives (None: no
    answer at all)."""

    def __init__(self, broker: Broker) -> None:
        self.answer: Callable[[dict[str, Any]], bytes | None] = lambda request: b"{}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect(HOST, broker.port)
        self.client.loop_start()
        self.client.subscribe("faceagent/+/cmd/+", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            request = {}
        answer = self.answer(request if isinstance(request, dict) else {})
        if answer is not None:
            client.publish(f"{message.topic}/reply", answer, qos=1)

    def retain(self, device: str, payload: bytes) -> None:
        self.client.publish(f"faceagent/{device}/status", payload, qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

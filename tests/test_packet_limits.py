"""Oversized MQTT messages never reach the agent, and the command queue is bounded in bytes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.config import CommandSettings, Settings
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink, packet_limit
from agent.link.operator import Operator
from agent.service.commandworker import COMMAND_QUEUE_PAYLOADS, CommandQueue
from tests.support.broker import FAST_LINK, HOST, Broker, free_port
from tests.support.data import REPO

DEVICE = "dev1"
MIB = 1024 * 1024


def _received_after(broker: Broker, observe, protocol: str, payloads: list[bytes]) -> list[bytes]:
    """What a link limited to 1 MiB + headroom receives of `payloads` (sent in order, then a small marker)."""
    received: list[bytes] = []
    settings = BrokerSettings(url=broker.url, protocol=protocol, max_packet_bytes=packet_limit(MIB), **FAST_LINK)
    link = MqttLink(settings, DEVICE, lambda request: received.append(request.payload))
    link.start()
    try:
        assert link.wait_connected(10)
        for payload in [*payloads, b"marker"]:
            sender = observe(broker, [])  # one each: a broker may disconnect whoever sends an oversized packet
            try:
                sender.publish(f"faceagent/{DEVICE}/cmd/enroll", payload)
            except RuntimeError:  # "not currently connected": the broker refused the packet
                assert len(payload) > MIB
        deadline = time.monotonic() + 10
        while b"marker" not in received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"marker" in received, "the link stopped receiving"
    finally:
        link.stop({"schema": 1, "state": "offline"}, timeout=0.5)
    return received


def test_mqtt5_a_message_over_the_packet_limit_is_not_delivered(broker: Broker, observe) -> None:
    received = _received_after(broker, observe, "5", [b"x" * (2 * MIB), b"y" * MIB])
    assert [len(p) for p in received] == [MIB, len(b"marker")]


def test_mqtt311_relies_on_the_brokers_max_packet_size(start_broker: Callable[..., Broker], observe) -> None:
    port = free_port()
    limit = packet_limit(MIB)
    config = f"listener {port} {HOST}\nallow_anonymous true\npersistence false\nmax_packet_size {limit}"
    broker = start_broker(port=port, config_text=config)
    received = _received_after(broker, observe, "3.1.1", [b"x" * (2 * MIB), b"y" * MIB])
    assert [len(p) for p in received] == [MIB, len(b"marker")]


def test_the_operators_client_announces_the_same_packet_limit(broker: Broker, observe) -> None:
    """The client factory's policy holds for the operator's tools too: a device's oversized document never
    reaches an operator that set a limit, the others still do."""
    sender = observe(broker, [])
    for device, size in [("dev-big", 2 * MIB), ("dev-small", MIB)]:
        status = b'{"state":"online","pad":"' + b"x" * size + b'"}'
        sender.client.publish(f"faceagent/{device}/status", status, qos=1, retain=True).wait_for_publish(5)
    limited = BrokerSettings(url=broker.url, max_packet_bytes=packet_limit(MIB))
    with Operator(limited, timeout=2) as operator:
        assert sorted(operator.statuses()) == ["dev-small"]
    with Operator(BrokerSettings(url=broker.url), timeout=2) as operator:
        assert sorted(operator.statuses()) == ["dev-big", "dev-small"]


def test_the_example_broker_config_limits_packets_to_what_the_agent_accepts() -> None:
    text = (REPO / "examples" / "mosquitto" / "mosquitto.conf").read_text()
    (value,) = re.findall(r"^max_packet_size (\d+)$", text, re.MULTILINE)
    assert int(value) == packet_limit(CommandSettings().max_payload_bytes)


def _request(size: int) -> CommandRequest:
    return CommandRequest("enroll", b"x" * size, None, None, datetime.now(UTC))


def _queued_after(count: int, size: int) -> list[int]:
    """Payload sizes the service queued of `count` commands of `size` bytes arriving at once."""
    commands = CommandQueue(Settings().commands.max_payload_bytes)  # as the service builds it
    for _ in range(count):
        commands.offer(_request(size))
    queued = [commands.take() for _ in range(commands.qsize())]
    assert commands.queued_bytes == 0
    return [len(request.payload) for request in queued if request is not None]


def test_a_flood_of_largest_commands_queues_at_most_the_byte_budget() -> None:
    queued = _queued_after(64, 16 * MIB)
    assert 0 < sum(queued) <= COMMAND_QUEUE_PAYLOADS * Settings().commands.max_payload_bytes


def test_a_burst_of_small_commands_is_queued_whole() -> None:
    assert len(_queued_after(64, 64 * 1024)) == 64

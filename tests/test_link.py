"""MqttLink against a real Mosquitto: status and last will, commands in, replies out, reconnects."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttSettings, parse_broker_url
from agent.errors import ConfigError
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.link.topics import Topics, default_device_id
from tests.support.agent_process import LinkProcess
from tests.support.broker import FAST_LINK, Broker, Observer, free_port, wait_until

DEVICE = "dev1"
STATUS = f"faceagent/{DEVICE}/status"


@pytest.fixture
def make_link(start_link: Callable[..., MqttLink]) -> Callable[..., MqttLink]:
    """Started links of DEVICE (stopped afterwards); `on_command` defaults to an echo reply."""

    def make(url: str, *, protocol: str = "5", on_command: Callable[[CommandRequest], None] | None = None) -> MqttLink:
        started: list[MqttLink] = []

        def echo(request: CommandRequest) -> None:
            started[0].reply(request, b'{"echo":' + request.payload + b"}")

        started.append(start_link(DEVICE, on_command or echo, url=url, protocol=protocol))
        return started[0]

    return make


def states(observer: Observer) -> list[str]:
    return [m.json()["state"] for m in observer.on(STATUS)]


# --------------------------------------------------------------------------------------- status


def test_status_online_is_retained(broker: Broker, make_link: Callable[..., MqttLink], observe) -> None:
    link = make_link(broker.url)
    assert link.wait_connected(5)
    first = observe(broker, [STATUS])
    assert first.wait_for(lambda _: states(first) == ["online"], 5)
    late = observe(broker, [STATUS])  # connects afterwards: gets the retained copy
    assert late.wait_for(lambda _: any(m.retain for m in late.on(STATUS)), 5)
    assert late.on(STATUS)[0].json()["state"] == "online"


def test_killed_agent_leaves_retained_offline_will(broker: Broker, observe, spawn_link) -> None:
    agent: LinkProcess = spawn_link(broker.url, DEVICE)
    assert agent.wait_connected()
    watcher = observe(broker, [STATUS])
    assert watcher.wait_for(lambda _: states(watcher) == ["online"], 5)
    agent.kill()  # SIGKILL: no DISCONNECT, the broker sees the socket die
    assert watcher.wait_for(lambda _: states(watcher)[-1:] == ["offline"], 5)
    late = observe(broker, [STATUS])
    assert late.wait_for(lambda _: [(m.retain, m.json()["state"]) for m in late.on(STATUS)] == [(True, "offline")], 5)


def test_clean_stop_publishes_offline_itself(broker: Broker, observe) -> None:
    link = MqttLink(BrokerSettings(url=broker.url, **FAST_LINK), DEVICE, lambda r: None)
    link.start()
    assert link.wait_connected(5)
    watcher = observe(broker, [STATUS])
    link.stop({"schema": 1, "state": "offline", "reason": "stopped"})
    assert watcher.wait_for(lambda _: states(watcher)[-1:] == ["offline"], 5)
    assert watcher.on(STATUS)[-1].json()["reason"] == "stopped"


def test_status_is_republished_on_reconnect(tmp_path: Path, start_broker, make_link, observe) -> None:
    broker = start_broker()  # persistence off: the restarted broker has forgotten the retained status
    link = make_link(broker.url)
    link.publish_status({"schema": 1, "state": "online", "version": "9.9"})
    assert link.wait_connected(5)
    broker.stop()
    broker.start()
    late = observe(broker, [STATUS])
    assert late.wait_for(lambda _: any(m.json().get("version") == "9.9" for m in late.on(STATUS)), 10)


# ------------------------------------------------------------------------------------- connection


def test_absent_broker_at_start_is_retried_until_it_appears(start_broker, make_link) -> None:
    port = free_port()
    link = make_link(f"mqtt://127.0.0.1:{port}")
    assert not link.wait_connected(0.5)
    start_broker(port=port)
    assert link.wait_connected(5)


def test_unreachable_broker_is_logged_once(caplog: pytest.LogCaptureFixture, make_link) -> None:
    with caplog.at_level(logging.INFO, logger="agent.link"):
        link = make_link(f"mqtt://127.0.0.1:{free_port()}")
        assert not link.wait_connected(1.5)  # several retries at 0.1-0.5 s
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1


def test_lost_connection_is_logged_once_and_recovers(caplog, start_broker, make_link) -> None:
    broker = start_broker()
    link = make_link(broker.url)
    assert link.wait_connected(5)
    with caplog.at_level(logging.INFO, logger="agent.link"):
        broker.stop()
        assert wait_until(lambda: not link.connected, 5)
        time.sleep(0.5)  # a few failed reconnects
        broker.start()
        assert link.wait_connected(5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost the broker" in m for m in messages) == 1
    assert sum("unreachable" in m for m in messages) <= 1
    assert sum("connected to" in m for m in messages) == 1


# --------------------------------------------------------------------------------------- commands


def test_mqtt5_reply_goes_to_response_topic_with_correlation_data(broker: Broker, make_link, observe) -> None:
    make_link(broker.url).wait_connected(5)
    requester = observe(broker, [f"faceagent/{DEVICE}/cmd/ping/reply/abc"])
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = f"faceagent/{DEVICE}/cmd/ping/reply/abc"
    properties.CorrelationData = b"\x00corr-1"
    requester.publish(f"faceagent/{DEVICE}/cmd/ping", b'{"request_id":"r1"}', properties=properties)
    assert requester.wait_for(lambda m: len(m) == 1, 5)
    reply = requester.messages[0]
    assert (reply.payload, reply.correlation_data) == (b'{"echo":{"request_id":"r1"}}', b"\x00corr-1")


def test_mqtt5_response_topic_outside_the_reply_topic_is_refused(broker: Broker, make_link, observe) -> None:
    make_link(broker.url).wait_connected(5)
    requester = observe(broker, ["ctl/replies/abc", f"faceagent/{DEVICE}/cmd/ping/reply"])
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "ctl/replies/abc"
    requester.publish(f"faceagent/{DEVICE}/cmd/ping", b'{"request_id":"r1"}', properties=properties)
    assert requester.wait_for(lambda m: len(m) == 1, 5)
    assert requester.messages[0].topic == f"faceagent/{DEVICE}/cmd/ping/reply"


def test_mqtt311_reply_goes_to_the_reply_topic(broker: Broker, make_link, observe) -> None:
    make_link(broker.url, protocol="3.1.1").wait_connected(5)
    requester = observe(broker, [f"faceagent/{DEVICE}/cmd/ping/reply"], protocol="3.1.1")
    requester.publish(f"faceagent/{DEVICE}/cmd/ping", b'{"request_id":"r2"}')
    assert requester.wait_for(lambda m: len(m) == 1, 5)
    assert requester.messages[0].payload == b'{"echo":{"request_id":"r2"}}'


def test_mqtt5_request_without_response_topic_replies_on_the_reply_topic(broker, make_link, observe) -> None:
    make_link(broker.url).wait_connected(5)
    requester = observe(broker, [f"faceagent/{DEVICE}/cmd/+/reply"])
    requester.publish(f"faceagent/{DEVICE}/cmd/get_status", b'{"request_id":"r3"}')
    assert requester.wait_for(lambda m: len(m) == 1, 5)
    assert requester.messages[0].topic == f"faceagent/{DEVICE}/cmd/get_status/reply"


def test_command_request_carries_name_payload_and_time(broker: Broker, make_link, observe) -> None:
    received: list[CommandRequest] = []
    make_link(broker.url, on_command=received.append).wait_connected(5)
    operator = observe(broker, [])
    operator.publish(f"faceagent/{DEVICE}/cmd/list_people", b'{"request_id":"r4"}')
    assert operator.wait_for(lambda _: len(received) == 1, 5)
    request = received[0]
    assert (request.name, request.payload, request.response_topic) == ("list_people", b'{"request_id":"r4"}', None)
    assert request.received_at.tzinfo is not None


def test_retained_command_is_not_run(broker: Broker, make_link, observe) -> None:
    operator = observe(broker, [])
    operator.client.publish(f"faceagent/{DEVICE}/cmd/restart", b"{}", qos=1, retain=True).wait_for_publish(5)
    received: list[CommandRequest] = []
    link = make_link(broker.url, on_command=received.append)
    assert link.wait_connected(5)
    operator.publish(f"faceagent/{DEVICE}/cmd/ping", b"{}")
    assert operator.wait_for(lambda _: len(received) >= 1, 5)
    assert [r.name for r in received] == ["ping"]


def test_a_failing_command_handler_does_not_stop_the_link(broker: Broker, make_link, observe) -> None:
    calls: list[str] = []

    def explode(request: CommandRequest) -> None:
        calls.append(request.name)
        raise RuntimeError("boom")

    link = make_link(broker.url, on_command=explode)
    assert link.wait_connected(5)
    operator = observe(broker, [])
    operator.publish(f"faceagent/{DEVICE}/cmd/a", b"{}")
    operator.publish(f"faceagent/{DEVICE}/cmd/b", b"{}")
    assert operator.wait_for(lambda _: calls == ["a", "b"], 5)
    assert link.connected


def test_commands_still_arrive_after_a_broker_restart(start_broker, make_link, observe) -> None:
    broker = start_broker()
    received: list[CommandRequest] = []
    link = make_link(broker.url, on_command=received.append)
    assert link.wait_connected(5)
    broker.stop()
    broker.start()
    assert link.wait_connected(5)
    operator = observe(broker, [])
    assert operator.wait_for(lambda _: link.connected, 5)
    operator.publish(f"faceagent/{DEVICE}/cmd/ping", b"{}")
    assert operator.wait_for(lambda _: [r.name for r in received] == ["ping"], 5)


# ------------------------------------------------------------------------------------ settings, ids


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.lan", (False, "broker.lan", 1883, None, None)),
        ("mqtts://broker.lan", (True, "broker.lan", 8883, None, None)),
        ("mqtts://dev%2F1:p%40ss@10.0.0.2:9000", (True, "10.0.0.2", 9000, "dev/1", "p@ss")),
        ("mqtt://[::1]:1884/", (False, "::1", 1884, None, None)),
    ],
)
def test_broker_urls_parse(url: str, expected: tuple) -> None:
    address = parse_broker_url(url)
    assert (address["tls"], address["host"], address["port"], address["username"], address["password"]) == expected


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://h:99999", "mqtt://h:0", "mqtt://h/path", "h:1883"])
def test_bad_broker_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="broker URL"):
        parse_broker_url(url)


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_broker_url("http://user:secret@host")
    assert "secret" not in str(caught.value)


def test_url_credentials_override_the_config_file() -> None:
    mqtt = MqttSettings(url="mqtt://a", username="file-user", password="file-pass", protocol="3.1.1")
    settings = BrokerSettings.from_settings(mqtt, "mqtts://cli-user:cli-pass@b:8884")
    assert (settings.url, settings.username, settings.password) == (
        "mqtts://cli-user:cli-pass@b:8884",
        "cli-user",
        "cli-pass",
    )
    assert settings.protocol == "3.1.1"


def test_tls_files_with_a_plain_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mqtts://"):
        MqttLink(BrokerSettings(url="mqtt://h", ca_file=tmp_path / "ca.crt"), DEVICE, lambda r: None)


def test_device_id_is_derived_from_machine_id_without_revealing_it(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    derived = default_device_id(machine_id)
    assert derived == default_device_id(machine_id) and len(derived) == 16
    assert derived not in machine_id.read_text()


def test_device_id_falls_back_to_a_topic_safe_hostname(tmp_path: Path) -> None:
    assert default_device_id(tmp_path / "absent", hostname="door.cam+1/#") == "door_cam_1"


def test_event_topics_cannot_be_widened_by_the_event_type() -> None:
    assert Topics("faceagent", "d").event("x/+/#") == "faceagent/d/events/x"

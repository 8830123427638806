"""Authority on the wire: TLS with test-made certificates, passwords, and the example per-device ACL."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.cli.main import main
from agent.config import load_settings
from agent.errors import ConfigError
from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.link.operator import CLIENT_OWNER, Operator, OperatorError
from tests.support.broker import FAST_LINK, Broker, Certs, Observer, free_port, leaf_certificate
from tests.support.data import REPO

EXAMPLE = REPO / "examples" / "mosquitto"
ACL = EXAMPLE / "faceagent.acl"
USERS = {"dev-a": "pass-a", "dev-b": "pass-b", "operator": "pass-op"}


@pytest.fixture
def make_link(start_link: Callable[..., MqttLink]) -> Callable[..., MqttLink]:
    """Started links (stopped afterwards), of device dev-a unless `device` says otherwise."""

    def make(device: str = "dev-a", on_command: Callable[[CommandRequest], None] | None = None, **settings) -> MqttLink:
        return start_link(device, on_command, **settings)

    return make


@pytest.fixture
def acl_broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker(passwords=USERS, acl_file=ACL)


def user(name: str) -> dict[str, str]:
    return {"username": name, "password": USERS[name]}


# -------------------------------------------------------------------------------------------- TLS


def tls_broker(start_broker: Callable[..., Broker], certs: Certs, *, other_ca: bool = False, **options) -> Broker:
    files = (certs.other_ca, certs.other_server_cert, certs.other_server_key) if other_ca else None
    return start_broker(tls=files or (certs.ca, certs.server_cert, certs.server_key), **options)


def test_tls_connects_to_a_broker_signed_by_the_configured_ca(start_broker, certs: Certs, make_link, observe) -> None:
    broker = tls_broker(start_broker, certs)
    assert make_link(url=broker.url, ca_file=certs.ca).wait_connected(5)
    watcher = observe(broker, ["faceagent/dev-a/status"], ca=certs.ca)
    assert watcher.wait_for(lambda m: [x.json()["state"] for x in m] == ["online"], 5)


def test_tls_refuses_a_broker_certified_by_another_ca(start_broker, certs: Certs, make_link, observe) -> None:
    broker = tls_broker(start_broker, certs, other_ca=True)
    watcher = observe(broker, ["faceagent/#"], ca=certs.other_ca)
    link = make_link(url=broker.url, ca_file=certs.ca)  # trusts only the first CA
    assert not link.wait_connected(1.5)
    assert watcher.messages == []


def test_client_certificate_is_presented_when_the_broker_requires_one(start_broker, certs: Certs, make_link) -> None:
    broker = tls_broker(start_broker, certs, require_certificate=True)
    link = make_link(url=broker.url, ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)
    assert link.wait_connected(5)


def test_no_client_certificate_is_refused_when_the_broker_requires_one(start_broker, certs: Certs, make_link) -> None:
    broker = tls_broker(start_broker, certs, require_certificate=True)
    assert not make_link(url=broker.url, ca_file=certs.ca).wait_connected(1.5)


def test_a_tls_listener_refuses_a_plain_connection(start_broker, certs: Certs, make_link, observe) -> None:
    broker = tls_broker(start_broker, certs)
    watcher = observe(broker, ["faceagent/#"], ca=certs.ca)
    link = make_link(url=f"mqtt://127.0.0.1:{broker.port}")  # the TLS listener, spoken to in clear
    assert not link.wait_connected(1.5)
    assert watcher.messages == []  # not even the device's status got through


# ---------------------------------------------------------- one client factory: the device and the operator
# The device's link and the operator's client (ctl, a console) are made by agent.link.client under one policy.

CLIENTS = ["device", "operator"]


@pytest.fixture
def connects(make_link) -> Callable[..., bool]:
    """Whether a client of `kind` connects within `wait` seconds with these BrokerSettings fields."""

    def connects(kind: str, wait: float, **settings) -> bool:
        if kind == "device":
            return make_link(**settings).wait_connected(wait)
        try:
            with Operator(BrokerSettings(**FAST_LINK, **settings), timeout=wait):
                return True
        except OperatorError:
            return False

    return connects


@pytest.fixture(scope="module")
def misnamed(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA, server certificate, key): signed by the test CA, but for a host that is not 127.0.0.1."""
    folder = tmp_path_factory.mktemp("misnamed")
    for name in ("ca.crt", "ca.key"):
        shutil.copy(certs.ca.parent / name, folder / name)
    leaf_certificate(folder, "ca", "misnamed", "serverAuth", "DNS:broker.elsewhere.invalid")
    return certs.ca, folder / "misnamed.crt", folder / "misnamed.key"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_device_and_operator_connect_to_a_broker_signed_by_the_configured_ca(
    start_broker, certs: Certs, connects, kind: str, protocol: str
) -> None:
    broker = tls_broker(start_broker, certs)
    assert connects(kind, 5, url=broker.url, ca_file=certs.ca, protocol=protocol)


REFUSALS = {"another-ca": {"other_ca": True}, "no-client-certificate": {"require_certificate": True}}


@pytest.mark.parametrize("broker_options", REFUSALS.values(), ids=REFUSALS.keys())
@pytest.mark.parametrize("kind", CLIENTS)
def test_device_and_operator_are_refused_alike(start_broker, certs: Certs, connects, kind: str, broker_options) -> None:
    """A broker certified by a CA they do not trust; a broker that wants a client certificate they do not have."""
    broker = tls_broker(start_broker, certs, **broker_options)
    assert not connects(kind, 1.5, url=broker.url, ca_file=certs.ca)


@pytest.mark.parametrize("kind", CLIENTS)
def test_device_and_operator_present_their_client_certificate(start_broker, certs: Certs, connects, kind: str) -> None:
    broker = tls_broker(start_broker, certs, require_certificate=True)
    assert connects(kind, 5, url=broker.url, ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)


@pytest.mark.parametrize("kind", CLIENTS)
def test_device_and_operator_refuse_a_certificate_for_another_host(
    start_broker, misnamed: tuple[Path, Path, Path], connects, kind: str
) -> None:
    broker = start_broker(tls=misnamed)
    assert not connects(kind, 1.5, url=broker.url, ca_file=misnamed[0])


@pytest.mark.parametrize("kind", CLIENTS)
def test_tls_insecure_skips_only_the_host_name_check_and_says_so(
    caplog, start_broker, misnamed: tuple[Path, Path, Path], connects, kind: str
) -> None:
    broker = start_broker(tls=misnamed)
    with caplog.at_level(logging.WARNING, logger="agent.link"):
        assert connects(kind, 5, url=broker.url, ca_file=misnamed[0], tls_insecure=True)
    warned = [r.getMessage() for r in caplog.records if "does not check the broker's host name" in r.getMessage()]
    assert warned == [f"TLS to 127.0.0.1:{broker.port} does not check the broker's host name (mqtt.tls_insecure): "
                      "never in production"]  # fmt: skip


def test_tls_insecure_still_checks_the_certificate_authority(start_broker, certs: Certs, connects) -> None:
    broker = tls_broker(start_broker, certs, other_ca=True)
    assert not connects("operator", 1.5, url=broker.url, ca_file=certs.ca, tls_insecure=True)


@pytest.mark.parametrize("kind", CLIENTS)
def test_device_and_operator_refuse_tls_files_with_a_plain_url(broker: Broker, certs: Certs, connects, kind) -> None:
    with pytest.raises(ConfigError, match="the broker URL is mqtt://: use mqtts://"):
        connects(kind, 1.5, url=broker.url, ca_file=certs.ca)


def test_operator_client_ids_name_their_owner_and_never_repeat(broker: Broker) -> None:
    settings = BrokerSettings(url=broker.url)
    first, second = Operator(settings, timeout=1).client_id, Operator(settings, timeout=1).client_id
    assert first.startswith(f"{CLIENT_OWNER}-") and len(first) == len(CLIENT_OWNER) + 17 and first != second


def test_ctl_reaches_a_device_over_tls_with_the_settings_files_ca(
    start_broker, certs: Certs, make_link, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = tls_broker(start_broker, certs)
    assert make_link(url=broker.url, ca_file=certs.ca).wait_connected(5)
    config = tmp_path / "faceagent.toml"
    config.write_text(f'[mqtt]\nurl = "{broker.url}"\nca_file = "{certs.ca}"\nrequire_tls = true\n')
    assert main(["--config", str(config), "ctl", "devices", "--timeout", "5"]) == 0
    assert capsys.readouterr().out.startswith("dev-a  online  ")


# ------------------------------------------------------------------------------------- require_tls


def settings_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "faceagent.toml"
    path.write_text(f'[mqtt]\nurl = "{url}"\nrequire_tls = true\n')
    return path


def test_require_tls_refuses_a_plain_broker_url_when_the_settings_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.url: must be an mqtts:// URL while mqtt\.require_tls") as refused:
        load_settings(settings_file(tmp_path, "mqtt://dev-a:pass-a@broker.lan"))
    assert "pass-a" not in str(refused.value)


def test_require_tls_takes_a_tls_broker_url(tmp_path: Path) -> None:
    assert load_settings(settings_file(tmp_path, "mqtts://broker.lan")).mqtt.require_tls is True


@pytest.mark.parametrize("command", [["run"], ["demo"], ["ctl", "devices"]])
def test_require_tls_refuses_a_plain_url_given_with_mqtt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = settings_file(tmp_path, "mqtts://broker.lan")
    assert main(["--config", str(config), *command, "--mqtt", "mqtt://127.0.0.1:1883"]) == 2
    assert capsys.readouterr().err == (
        "faceagent: --mqtt: must be an mqtts:// URL while mqtt.require_tls is true, got 'mqtt://127.0.0.1:1883'\n"
    )


# ------------------------------------------------------------------------------------- passwords


def test_username_and_password_connect(acl_broker: Broker, make_link) -> None:
    assert make_link(url=acl_broker.url, **user("dev-a")).wait_connected(5)


def test_wrong_password_is_refused_and_logged_once(caplog, acl_broker: Broker, make_link) -> None:
    with caplog.at_level(logging.ERROR, logger="agent.link"):
        link = make_link(url=acl_broker.url, username="dev-a", password="wrong")
        assert not link.wait_connected(1.5)  # several refused attempts
    assert sum("refused the connection" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------- ACL


def test_device_cannot_receive_another_devices_commands(acl_broker: Broker, observe) -> None:
    intruder = observe(acl_broker, ["faceagent/dev-b/cmd/+"], **user("dev-a"))
    owner = observe(acl_broker, ["faceagent/dev-b/cmd/+"], **user("dev-b"))
    operator = observe(acl_broker, [], **user("operator"))
    operator.publish("faceagent/dev-b/cmd/ping", b'{"request_id":"x"}')
    assert owner.wait_for(lambda m: len(m) == 1, 5)  # delivered to dev-b ...
    assert not intruder.wait_for(lambda m: len(m) > 0, 0.3)  # ... never to dev-a


def test_device_cannot_publish_on_another_devices_topics(acl_broker: Broker, observe) -> None:
    operator = observe(acl_broker, ["faceagent/#"], **user("operator"))
    intruder = observe(acl_broker, [], **user("dev-a"))
    intruder.publish("faceagent/dev-b/status", b'{"state":"offline"}')
    intruder.publish("faceagent/dev-b/events/face_recognized", b"{}")
    intruder.publish("faceagent/dev-b/cmd/restart", b"{}")
    intruder.publish("faceagent/dev-a/events/face_unknown", b"{}")  # its own: arrives, after the others would
    assert operator.wait_for(lambda m: len(m) >= 1, 5)
    assert [m.topic for m in operator.messages] == ["faceagent/dev-a/events/face_unknown"]


def test_device_link_works_within_its_own_topics(acl_broker: Broker, make_link, observe) -> None:
    operator = observe(acl_broker, ["faceagent/dev-a/#"], **user("operator"))
    link = make_link(url=acl_broker.url, on_command=lambda r: link.reply(r, b'{"status":"ok"}'), **user("dev-a"))
    assert link.wait_connected(5)
    operator.publish("faceagent/dev-a/cmd/ping", b'{"request_id":"1"}')
    assert operator.wait_for(lambda m: any(x.topic == "faceagent/dev-a/cmd/ping/reply" for x in m), 5)
    assert any(m.topic == "faceagent/dev-a/status" and m.json()["state"] == "online" for m in operator.messages)


def test_mqtt5_response_topic_below_the_command_passes_the_acl(acl_broker: Broker, make_link, observe) -> None:
    requester = observe(acl_broker, ["faceagent/dev-a/cmd/ping/reply/op1"], **user("operator"))
    link = make_link(url=acl_broker.url, on_command=lambda r: link.reply(r, b'{"status":"ok"}'), **user("dev-a"))
    assert link.wait_connected(5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "faceagent/dev-a/cmd/ping/reply/op1"
    properties.CorrelationData = b"c1"
    requester.publish("faceagent/dev-a/cmd/ping", b'{"request_id":"1"}', properties=properties)
    assert requester.wait_for(lambda m: [x.correlation_data for x in m] == [b"c1"], 5)


def test_the_example_broker_config_serves_a_device_over_tls(tmp_path: Path, certs: Certs, make_link, observe) -> None:
    port = free_port()
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    for name, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), name, password], check=True)
    text = (EXAMPLE / "mosquitto.conf").read_text()
    for old, new in [
        ("listener 8883", f"listener {port} 127.0.0.1"),
        ("/etc/mosquitto/certs/ca.crt", str(certs.ca)),
        ("/etc/mosquitto/certs/server.crt", str(certs.server_cert)),
        ("/etc/mosquitto/certs/server.key", str(certs.server_key)),
        ("/etc/mosquitto/passwd", str(passwd)),
        ("/etc/mosquitto/faceagent.acl", str(ACL)),
        ("/var/lib/mosquitto/", f"{tmp_path}/"),
    ]:
        assert old in text
        text = text.replace(old, new)
    broker = Broker(
        tmp_path / "example", port=port, tls=(certs.ca, certs.server_cert, certs.server_key), config_text=text
    )
    broker.start()
    try:
        operator = observe(broker, ["faceagent/#"], ca=certs.ca, **user("operator"))
        assert make_link(url=broker.url, ca_file=certs.ca, **user("dev-a")).wait_connected(5)
        assert operator.wait_for(lambda m: any(x.topic == "faceagent/dev-a/status" for x in m), 5)
    finally:
        broker.kill()


def test_a_device_cannot_connect_as_another_device(
    acl_broker: Broker, make_link, observe: Callable[..., Observer]
) -> None:
    operator = observe(acl_broker, ["faceagent/#"], **user("operator"))
    link = make_link(device="dev-b", url=acl_broker.url, **user("dev-a"))  # dev-a's password, dev-b's topics
    assert link.wait_connected(5)
    time.sleep(0.3)  # the link's status publish (another connection) is through by now ...
    operator.publish("faceagent/dev-a/events/probe", b"{}")  # ... and this marker comes after it
    assert operator.wait_for(lambda m: any(x.topic == "faceagent/dev-a/events/probe" for x in m), 5)
    assert not any(m.topic.startswith("faceagent/dev-b/") for m in operator.messages)

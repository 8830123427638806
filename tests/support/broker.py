"""A real Mosquitto on a free 127.0.0.1 port, test-made TLS certificates, and observers (the fixtures that
start and stop them are in tests/conftest.py).

Each broker gets its own folder with a generated config,
log and (optionally) persistence, password file and ACL; it can be stopped, killed and started again on
the same port. Certificates come from `openssl` once per session: a CA with a server and a client
certificate, and a second, unrelated CA with its own server certificate (for refusal tests).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
# Link settings that make a test wait less for a (re)connection: for BrokerSettings(url=..., **FAST_LINK).
FAST_LINK = {"keepalive": 5, "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5}


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found is None:
        message = "mosquitto not installed (apt-get install mosquitto)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# Ports for brokers and servers come from below Linux's ephemeral range (32768-60999 by default), where every
# outgoing connection's own port is drawn from, and each pytest-xdist worker has a band of its own: a port a
# test holds on to while nothing listens there (a broker stopped and started again, an address that must
# refuse) can then become neither the other worker's broker nor a client's source port meanwhile.
PORTS_BELOW_EPHEMERAL = range(20000, 32000)


def free_port() -> int:
    """A port nothing on 127.0.0.1 holds now, from this worker's band (the whole range outside xdist)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = len(PORTS_BELOW_EPHEMERAL) // workers
    band = PORTS_BELOW_EPHEMERAL[worker * width : (worker + 1) * width]
    for port in random.SystemRandom().sample(band, min(len(band), 500)):  # not the seeded `random` hypothesis drives
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {HOST} in {band.start}-{band.stop - 1}")


# ------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_server_cert: Path
    other_server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ca_certificate(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def leaf_certificate(folder: Path, ca: str, name: str, usage: str, san: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


def make_certs(folder: Path) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder.mkdir(parents=True, exist_ok=True)
    local = "IP:127.0.0.1,DNS:localhost"
    ca_certificate(folder, "ca")
    leaf_certificate(folder, "ca", "server", "serverAuth", local)
    leaf_certificate(folder, "ca", "client", "clientAuth", "DNS:client")
    ca_certificate(folder, "other-ca")
    leaf_certificate(folder, "other-ca", "other-server", "serverAuth", local)
    f = folder
    return Certs(
        f / "ca.crt", f / "server.crt", f / "server.key", f / "client.crt", f / "client.key",
        f / "other-ca.crt", f / "other-server.crt", f / "other-server.key",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ broker


@dataclass
class Broker:
    """One mosquitto process; `stop`/`kill` then `start` again keeps the port (and, if on, the persistence)."""

    folder: Path
    port: int = field(default_factory=free_port)
    persistence: bool = False
    tls: tuple[Path, Path, Path] | None = None  # (ca, server cert, server key)
    require_certificate: bool = False
    passwords: dict[str, str] | None = None  # user -> password; anonymous clients are refused
    acl_file: Path | None = None
    config_text: str | None = None  # a complete config instead of the generated one (logging is added)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "mosquitto.conf"
        self.log = self.folder / "mosquitto.log"
        if self.config_text is None:
            self.config.write_text(self._config_text())
        else:
            self.config.write_text("\n".join([self.config_text, *self.common_lines()]) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    def _config_text(self) -> str:
        lines = [f"listener {self.port} {HOST}", *self.common_lines()]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/", "autosave_interval 3600"]
        else:
            lines.append("persistence false")
        if self.tls:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            lines.append(f"require_certificate {'true' if self.require_certificate else 'false'}")
        if self.passwords is not None:
            password_file = self.folder / "passwords"
            password_file.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True)
            password_file.chmod(0o600)
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return "\n".join(lines) + "\n"

    def common_lines(self) -> list[str]:
        """Logging to the broker's folder, and staying root when run as root (else it cannot read the folder)."""
        lines = [f"log_dest file {self.log}", "log_type all", "set_tcp_nodelay true"]
        return [*lines, "user root"] if os.geteuid() == 0 else lines

    def start(self, timeout: float = 10.0) -> Broker:
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log_text()[-2000:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM: mosquitto closes connections and saves its persistence file."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged (messages pile up in flight)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.send_signal(signal.SIGCONT)  # a paused broker is killed all the same
            self.process.wait(10)
        self.process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ----------------------------------------------------------------------------------------- observer


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """A test client: subscribes, records every message, and waits for conditions on them."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        protocol: str = "5",
        client_id: str = "",
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca: Path | None = None,
        wait: bool = True,
    ) -> None:
        v5 = protocol == "5"
        self.topics = topics
        self.messages: list[Received] = []
        self.granted: list[int] = []
        self._condition = threading.Condition()
        self._ready = threading.Event()  # subscribed, or connected when there is nothing to subscribe
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        options: dict[str, Any] = {}
        if v5:
            options["clean_start"] = not persistent
            if persistent:
                options["properties"] = Properties(PacketTypes.CONNECT)
                options["properties"].SessionExpiryInterval = 3600
        self.client.connect_async(HOST, broker.port, keepalive=5, **options)
        self.client.loop_start()
        if wait:
            assert self._ready.wait(10), "observer did not connect and subscribe"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            return
        if self.topics:
            client.subscribe([(topic, 1) for topic in self.topics])
        else:
            self._ready.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.granted = [int(reason.value) for reason in reasons]
        self._ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        correlation = getattr(getattr(message, "properties", None), "CorrelationData", None)
        received = Received(message.topic, bytes(message.payload), bool(message.retain), correlation)
        with self._condition:
            self.messages.append(received)
            self._condition.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._condition:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.05))  # predicates may look at state beyond the messages
            return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, properties: Properties | None = None) -> None:
        self.client.publish(topic, payload, qos=qos, properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False): for state beyond messages."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

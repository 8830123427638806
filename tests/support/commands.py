"""A device's command side as the service wires it, on a real gallery file and the real pipeline; and the
test operator's command key, which every device the fixtures make (dispatcher or agent process) trusts and
every fixture client signs with, as an operator's `ctl --sign-key` does."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.dispatcher import CommandDispatcher
from agent.commands.handlers import CommandServices
from agent.commands.signing import CommandSecurity, key_id, public_key_text, sign_request
from agent.config import CommandSettings, Settings, load_settings
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.gallery.sync import GallerySync
from agent.link.mqtt import CommandRequest, MqttLink
from agent.recognition.enrollment import Enroller
from agent.vision.pipeline import FacePipeline

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# Fixed, so a test and the agent processes it starts agree on it without passing it around; a test key only.
OPERATOR_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"faceagent test operator command key").digest())
OPERATOR_PUBLIC = public_key_text(OPERATOR_KEY)
OPERATOR_KEY_ID = key_id(OPERATOR_KEY.public_key())
OPERATOR_TOML = f'[commands]\npublic_keys = ["{OPERATOR_PUBLIC}"]\n'  # for a test's faceagent.toml


def operator_commands(**limits: Any) -> CommandSettings:
    """Command settings that trust the test operator key."""
    return CommandSettings(public_keys=(OPERATOR_PUBLIC,), **limits)


def device_trusting(tmp_path: Path, pipeline: FacePipeline, key: Ed25519PrivateKey, device_id: str = "dev1") -> Device:
    """A device whose only command key is `key`, for a test that signs with a key of its own."""
    return make_device(
        tmp_path, pipeline, commands=CommandSettings(public_keys=(public_key_text(key),)), device_id=device_id
    )


def write_operator_key(folder: Path) -> Path:
    """The test operator's private key as a PEM file (mode 0600), for `ctl --sign-key`."""
    path = folder / "operator.pem"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_private_key(OPERATOR_KEY, path)
    return path


def write_private_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """`key` as an unencrypted PKCS#8 PEM file of mode 0600 (as `ctl keygen` writes one): for `--sign-key`,
    `--model-key` and anything else that loads a private key from a file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return path


def operator_signed(device_id: str, name: str, request: dict[str, Any], now: datetime | None = None) -> bytes:
    """`request` signed by the test operator for `name` on `device_id`, as the wire carries it."""
    return signed_by(OPERATOR_KEY, device_id, name, request, now or datetime.now(UTC))


def signed_by(key: Ed25519PrivateKey, device_id: str, name: str, request: dict[str, Any], now: datetime) -> bytes:
    """`request` signed by `key` for `name` on `device_id`, as the wire carries it."""
    return json.dumps(sign_request(key, device_id, name, request, now=now)).encode()


def data(reply: dict) -> dict:
    """The data of an `ok` reply (and the reply itself in the failure message when it is not)."""
    assert reply["status"] == "ok", reply
    return reply["data"]


def error(reply: dict) -> str:
    """The code of an `error` reply (and the reply itself in the failure message when it is not)."""
    assert reply["status"] == "error", reply
    return reply["error"]["code"]


def image_arg(path: Path, label: str | None = None) -> dict[str, str]:
    encoded = {"data": base64.b64encode(path.read_bytes()).decode()}
    return encoded | ({"label": label} if label else {})


@dataclass
class Device:
    dispatcher: CommandDispatcher
    services: CommandServices
    settings_path: Path
    store_path: Path
    current: list[Settings]
    matcher: Matcher  # the live matcher: `gallery` follows every write the commands make
    gallery: GallerySync
    device_id: str = "dev1"
    restarts: list[int] = field(default_factory=list)
    counter: int = 0

    def call(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        now: datetime = NOW,
        signed: bool = True,
        **envelope: Any,
    ) -> dict:
        """Send one request (a fresh request id unless given), signed by the test operator unless `signed` is
        False, and decode the reply. Each is signed afresh (its own sent_at), as ctl signs each send."""
        self.counter += 1
        request = {"request_id": f"r{self.counter}", **envelope}
        if args is not None:
            request["args"] = args
        if not signed:
            return self.send(name, json.dumps(request).encode(), now=now)
        sent_at = now - timedelta(milliseconds=self.counter)
        return self.send(name, operator_signed(self.device_id, name, request, sent_at), now=now)

    def call_as(self, key: Ed25519PrivateKey, name: str, args: dict[str, Any], *, now: datetime = NOW) -> dict:
        """Send `name` with `args` from origin "ops", signed by `key` (the test's own, which the device was made
        to trust with `device_trusting`) at exactly `now`, and decode the reply."""
        self.counter += 1
        request = {"request_id": f"r{self.counter}", "origin": "ops", "args": args}
        return self.send(name, signed_by(key, self.device_id, name, request, now), now=now)

    def send(self, name: str, payload: bytes, *, now: datetime = NOW) -> dict:
        reply = self.dispatcher.handle(name, payload, now=now)
        assert reply is not None
        return json.loads(reply)

    def audit(self) -> list[dict]:
        with GalleryStore.open(self.store_path) as store:
            return store.audit_log(1000)


def make_device(
    tmp_path: Path,
    pipeline: FacePipeline,
    *,
    commands: CommandSettings | None = None,
    security: CommandSecurity | None = None,
    device_id: str = "dev1",
) -> Device:
    commands = commands or operator_commands()
    settings_path = tmp_path / "faceagent.toml"
    store_path = tmp_path / "gallery.db"
    settings_path.write_text(f'[gallery]\npath = "{store_path}"\n')
    settings = dataclasses.replace(load_settings(settings_path), commands=commands)
    current = [settings]
    GalleryStore.open(store_path).close()
    matcher = Matcher.for_gallery(settings.gallery, pipeline.embedder)
    sync = GallerySync(GalleryStore.open(store_path), matcher, pipeline.embedder.info.model_id)
    restarts: list[int] = []

    def apply(new: Settings) -> None:
        current[0] = new
        matcher.retune(new.gallery)

    services = CommandServices(
        settings_path=settings_path,
        get_settings=lambda: current[0],
        apply_settings=apply,
        open_store=lambda: GalleryStore.open(store_path),
        gallery=sync,
        enroller_factory=lambda store: Enroller(pipeline, store, matcher, current[0], add_to_matcher=False),
        status=lambda: {"state": "online", "gallery": {"people": len(matcher)}},
        request_restart=lambda: restarts.append(1),
        matching=lambda: matcher.matching,
    )
    security = security or CommandSecurity.from_settings(commands, device_id)
    dispatcher = CommandDispatcher(services, security)
    return Device(dispatcher, services, settings_path, store_path, current, matcher, sync, device_id, restarts)


def serve_link(
    link: MqttLink, inbox: queue.Queue[CommandRequest | None], make: Callable[[], Device], lock: threading.Lock
) -> tuple[Device, threading.Thread]:
    """A device on the broker as the agent runs one: the device is made on its command thread (its gallery
    connection is that thread's), each request from `link` goes through its dispatcher (one at a time across
    the devices that share `lock`'s pipeline) and the reply back, until `inbox` gives None. The link is
    connected when this returns."""
    made: queue.Queue[Device] = queue.Queue()

    def serve() -> None:
        device = make()
        made.put(device)
        while (request := inbox.get()) is not None:
            with lock:
                reply = device.dispatcher.handle(request.name, request.payload, now=request.received_at)
            if reply is not None:
                link.reply(request, reply)
        device.dispatcher.close()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    device = made.get(timeout=60)
    link.start()
    assert link.wait_connected(5)
    return device, worker

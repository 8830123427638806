"""A device's command side as the service wires it, on a real gallery file and the real pipeline."""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.commands.dispatcher import CommandDispatcher
from agent.commands.handlers import CommandServices
from agent.commands.signing import CommandSecurity
from agent.config import CommandSettings, Settings, load_settings
from agent.enrolment import Enroller
from agent.gallery.matcher import Matcher
from agent.gallery.store import GalleryStore
from agent.vision.pipeline import FacePipeline

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
POWELL = ["0040", "0133", "0170"]
POWELL_PROBE = "0234"


def powell(shared_data: Path, number: str) -> Path:
    return shared_data / "faces-lfw" / "Colin_Powell" / f"Colin_Powell_{number}.jpg"


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
    restarts: list[int] = field(default_factory=list)
    counter: int = 0

    def call(self, name: str, args: dict[str, Any] | None = None, *, now: datetime = NOW, **envelope: Any) -> dict:
        """Send one request (a fresh request id unless given) and decode the reply."""
        self.counter += 1
        request = {"request_id": f"r{self.counter}", **envelope}
        if args is not None:
            request["args"] = args
        return self.send(name, json.dumps(request).encode(), now=now)

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
    commands = commands or CommandSettings()
    settings_path = tmp_path / "faceagent.toml"
    store_path = tmp_path / "gallery.db"
    settings_path.write_text(f'[gallery]\npath = "{store_path}"\n')
    settings = dataclasses.replace(load_settings(settings_path), commands=commands)
    current = [settings]
    GalleryStore.open(store_path).close()
    gallery = settings.gallery
    matcher = Matcher(metric=gallery.metric, threshold=gallery.threshold, margin=gallery.margin)
    restarts: list[int] = []

    def apply(new: Settings) -> None:
        current[0] = new
        matcher.threshold, matcher.margin = new.gallery.threshold, new.gallery.margin

    services = CommandServices(
        settings_path=settings_path,
        get_settings=lambda: current[0],
        apply_settings=apply,
        open_store=lambda: GalleryStore.open(store_path),
        matcher=matcher,
        enroller_factory=lambda store: Enroller(pipeline, store, matcher, current[0]),
        status=lambda: {"state": "online", "gallery": {"people": len(matcher)}},
        request_restart=lambda: restarts.append(1),
    )
    security = security or CommandSecurity(commands, device_id, {})
    return Device(CommandDispatcher(services, security), services, settings_path, store_path, current, restarts)

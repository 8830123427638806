"""`faceagent run` against hostile payloads over a real Mosquitto: each is refused or never delivered, and the
agent goes on answering and publishing telemetry. Memory figures: scripts/bench_hostile.py."""

from __future__ import annotations

import base64
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands.signing import public_key_text
from agent.vision.image import MAX_PIXELS
from scripts._hostile import flat_png, nested_json
from tests.support.agent_process import start_agent
from tests.support.broker import Broker, Observer
from tests.support.commands import signed_by
from tests.support.data import CLIP_FRAMES

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "hostile-1"
BASE = f"faceagent/{DEVICE}"
MIB = 1024 * 1024
LIMIT = 2 * MIB  # commands.max_payload_bytes here: the oversized message is 3 MiB


@dataclass
class Agent:
    observer: Observer
    key: Ed25519PrivateKey
    process: subprocess.Popen[str]

    def signed(self, name: str, request_id: str, args: dict | None = None) -> bytes:
        request = {"request_id": request_id, "origin": "test", "args": args or {}}
        return signed_by(self.key, DEVICE, name, request, datetime.now(UTC))

    def replies(self, name: str) -> list[dict]:
        return [m.json() for m in self.observer.on(f"{BASE}/cmd/{name}/reply")]

    def answered(self, name: str, request_id: str, timeout: float = 60.0) -> dict:
        found = self.observer.wait_for(
            lambda _: any(r["request_id"] == request_id for r in self.replies(name)), timeout
        )
        assert found, f"no reply to {name} {request_id}"
        return next(r for r in self.replies(name) if r["request_id"] == request_id)

    def telemetry_count(self) -> int:
        return len(self.observer.on(f"{BASE}/telemetry"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Agent]:
    folder = tmp_path_factory.mktemp("hostile")
    broker = Broker(folder / "broker").start()  # no max_packet_size: the agent's own limit is under test
    key = Ed25519PrivateKey.generate()
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 5\ntelemetry_interval_seconds = 1\n'
        "[camera]\nfps = 10\nloop = true\n"
        f'[commands]\nsigning_required = true\npublic_keys = ["{public_key_text(key)}"]\nmax_payload_bytes = {LIMIT}\n'
    )
    observer = Observer(broker, [f"{BASE}/#"])
    frames = shared_data / CLIP_FRAMES
    process = start_agent(config, folder / "gallery.db", f"folder:{frames}", stderr=subprocess.PIPE)
    running = Agent(observer, key, process)
    try:
        assert observer.wait_for(lambda _: running.telemetry_count() > 0, timeout=90), "the agent did not start"
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        observer.close()
        broker.kill()


def _still_running(agent: Agent, request_id: str) -> None:
    """Answers a ping, and the frame loop publishes telemetry."""
    before = agent.telemetry_count()
    agent.observer.publish(f"{BASE}/cmd/ping", agent.signed("ping", request_id))
    assert agent.answered("ping", request_id)["status"] == "ok"
    assert agent.observer.wait_for(lambda _: agent.telemetry_count() >= before + 2, timeout=30)
    assert agent.process.poll() is None


def test_an_oversized_mqtt_message_is_never_delivered(agent: Agent) -> None:
    agent.observer.publish(f"{BASE}/cmd/ping", b'{"request_id": "huge", "pad": "' + b"x" * (3 * MIB) + b'"}')
    _still_running(agent, "after-huge")
    assert not any(r["request_id"] == "huge" for r in agent.replies("ping"))  # too_large had it arrived


def test_nested_json_at_the_size_limit_is_refused(agent: Agent) -> None:
    agent.observer.publish(f"{BASE}/cmd/enroll", nested_json(LIMIT - 1024))
    assert agent.observer.wait_for(lambda _: bool(agent.replies("enroll")), timeout=60)
    refusal = next(r for r in agent.replies("enroll") if r["request_id"] is None)
    assert refusal["error"]["code"] == "bad_request" and "nests deeper" in refusal["error"]["message"]
    _still_running(agent, "after-nested")


def test_a_7000_pixel_png_in_enroll_is_refused_with_the_reason(agent: Agent) -> None:
    images = [{"data": base64.b64encode(flat_png(7000, 7000)).decode()}]
    agent.observer.publish(f"{BASE}/cmd/enroll", agent.signed("enroll", "png-7000", {"name": "X", "images": images}))
    reply = agent.answered("enroll", "png-7000")
    assert reply["error"]["code"] == "bad_request" and f"over the {MAX_PIXELS} pixel limit" in reply["error"]["message"]
    _still_running(agent, "after-png")

"""`get_telemetry` on `faceagent run` itself: a real process on the bundled clip and a real Mosquitto, asked
unsigned by `faceagent ctl call` as any operator would: it answers the documents it published."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.agent_process import agent_config, ctl_call, start_agent
from tests.support.broker import Broker
from tests.support.data import CLIP_FRAMES

pytestmark = pytest.mark.slow  # `faceagent run` as a real process

DEVICE = "history-1"


def test_the_running_agent_answers_the_telemetry_it_published(
    tmp_path: Path, broker: Broker, observe, shared_data: Path
) -> None:
    config = agent_config(tmp_path, broker, DEVICE, fps=15)  # telemetry every second: one kept per 30 s
    observer = observe(broker, [f"faceagent/{DEVICE}/telemetry"])
    agent = start_agent(config, tmp_path / "gallery.db", shared_data / CLIP_FRAMES, stderr=subprocess.PIPE)
    try:
        assert observer.wait_for(lambda _: len(observer.messages) >= 3, timeout=90)
        reply = json.loads(ctl_call(broker.url, DEVICE, "get_telemetry", wait=30).stdout)["reply"]
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    published = [message.json() for message in observer.messages]
    points = reply["data"]["points"]
    assert reply["status"] == "ok" and points[0] == published[0]  # the first of its 30 s slot, as published
    assert len(points) < len(published) and all(point in published for point in points)

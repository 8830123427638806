"""`faceagent` as its users start it: the CLI as a process, `faceagent run` on a folder of frames, a clip or the
fake camera, `faceagent ctl` against a device, and the MQTT link alone in a process that can be SIGKILLed.

Every process gets `agent_env()`: the checkout under test first on PYTHONPATH, whatever is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from tests.support.broker import Broker
from tests.support.commands import OPERATOR_TOML
from tests.support.data import FAKES, REPO

AGENT = [sys.executable, "-m", "agent"]
ENROLLED = re.compile(r"\((p_[^)]+)\): \d+ new templates")  # `faceagent enroll`'s last line, on stderr


def agent_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def fake_camera_env(frames: Path, unplugged: Path) -> dict[str, str]:
    """agent_env with the fake picamera2 first on the path, serving `frames`, unplugged while `unplugged` exists."""
    return agent_env() | {
        "PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}",
        "FAKE_PICAMERA2_FRAMES": str(frames),
        "FAKE_PICAMERA2_UNPLUGGED": str(unplugged),
    }


def faceagent(
    *args: str, config: Path | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end (`input` on its stdin); `config` isolates the run from a real
    /etc/faceagent/faceagent.toml."""
    prefix = ["--config", str(config)] if config else []
    command = [*AGENT, *prefix, *args]
    return subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, env=agent_env())


def enroll_cli(config: Path | None, db: Path, name: str, *photos: Path) -> str:
    """`faceagent enroll` of `photos` as `name`, which must succeed; the person's id."""
    result = faceagent("enroll", "--db", str(db), "--name", name, *map(str, photos), config=config)
    assert result.returncode == 0, result.stderr
    found = ENROLLED.search(result.stderr)
    assert found, result.stderr
    return found.group(1)


def agent_config(
    folder: Path, broker: Broker, device: str, *, fps: float = 30, loop: bool = True, events: str = "", extra: str = ""
) -> Path:
    """faceagent.toml for `faceagent run` against `broker`: telemetry every second, camera "stage", trusting
    the test operator's command key; `events` adds lines to [events], `extra` whole sections."""
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{device}"\nkeepalive = 5\ntelemetry_interval_seconds = 1\n'
        f"[camera]\nfps = {fps}\nloop = {'true' if loop else 'false'}\n"
        f'[events]\ncamera_id = "stage"\n{events}' + OPERATOR_TOML + extra
    )
    return config


def start_agent(
    config: Path,
    db: Path,
    source: Path | str,
    *extra: str,
    stdout: int | IO[str] = subprocess.DEVNULL,
    stderr: int | IO[str] = subprocess.DEVNULL,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`faceagent run` on `source` (a folder, a clip, "picamera2"), in the background; `log` appends its stderr."""
    command = [*AGENT, "--config", str(config), "--db", str(db), "run", "--source", str(source), *extra]
    if log is not None:
        with open(log, "a") as handle:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(command, stdout=stdout, stderr=handle, text=True, env=env or agent_env())
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env or agent_env())


def stop_agent(process: subprocess.Popen[str], *, timeout: float = 30) -> int:
    """SIGTERM, as systemd stops it; SIGKILL if it is still there after `timeout` seconds. The exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def ctl_call(
    broker_url: str, device: str, command: str, *, sign_key: Path | None = None, wait: float = 10
) -> subprocess.CompletedProcess[str]:
    """`faceagent ctl call --json` of one command to `device`, as an operator would run it."""
    signing = ["--sign-key", str(sign_key)] if sign_key else []
    return faceagent(
        "ctl", "call", "--mqtt", broker_url, "--timeout", str(wait), *signing, "--json", device, command,
        timeout=wait + 50,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ the link alone

_LINK = """
import signal, sys, threading
from pathlib import Path
from agent.link.mqtt import BrokerSettings, MqttLink
from agent.link.outbox import OutboxPublisher

url, device, store = sys.argv[1:4]
settings = BrokerSettings(url=url, keepalive=5, reconnect_min_seconds=0.1, reconnect_max_seconds=0.5)
link = MqttLink(settings, device, on_command=lambda request: None)
if store != "-":
    OutboxPublisher(Path(store), link, max_events=1_000_000, poll_seconds=0.05).start()
link.start()
if link.wait_connected(10):
    print("connected", flush=True)
threading.Event().wait()
"""


class LinkProcess:
    """A separate Python process running MqttLink (and, with a store, the OutboxPublisher): SIGKILL-able."""

    def __init__(self, url: str, device: str, store: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LINK, url, device, str(store) if store else "-"],
            stdout=subprocess.PIPE,
            env=agent_env(),
        )

    def wait_connected(self, timeout: float = 20.0) -> bool:
        assert self.process.stdout is not None
        ready = threading.Event()

        def read() -> None:
            if self.process.stdout is not None and self.process.stdout.readline().strip() == b"connected":
                ready.set()

        threading.Thread(target=read, daemon=True).start()
        return ready.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

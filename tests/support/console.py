"""`faceagent console` as an operator runs it: the process on a free port, and the password file it is given."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.agent_process import AGENT, agent_env, faceagent
from tests.support.broker import HOST, Broker, free_port

PASSWORD = "correct horse battery staple"  # the test operator's console password


@dataclass
class ConsoleProcess:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
        _, stderr = self.process.communicate(timeout=20)
        return stderr


def start_console(broker: Broker, *options: str, listen_host: str = HOST) -> ConsoleProcess:
    """`faceagent console` as an operator runs it, on a free port; returns once it answers."""
    port = free_port()
    command = [*AGENT, "console", "--mqtt", broker.url, "--listen", f"{listen_host}:{port}", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=agent_env())
    console = ConsoleProcess(process, f"http://{HOST}:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the console exited: {console.stop()}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return console
        except OSError:
            time.sleep(0.1)
    console.stop()
    raise AssertionError("the console did not listen within 30 s")


def make_password_file(folder: Path) -> Path:
    """The hash line of PASSWORD, made as an operator makes it."""
    path = folder / "console.password"
    result = faceagent("console", "--hash-password", input=PASSWORD + "\n", timeout=60)
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout)
    return path

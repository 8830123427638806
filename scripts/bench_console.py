"""How fast the console's fleet page is ready with many devices on the broker, and what fetching every device's
kept hour of telemetry (`get_telemetry`) costs a console started after them.

Simulated devices: the fleet simulator (scripts/_fleet.py, docs/fleet.md), each device wired from the agent's
own link, dispatcher and `Telemetry` with its `TelemetryHistory`, started as if it had run `--history-seconds`
already (its history full: one document per 30 s telemetry interval) on a real Mosquitto. Then, for each size:

- console A, started after the devices: from when it lists every device online until its charts hold every
  device's hour (its backfill done; the bench polls /api/series only for devices not seen done yet), and the
  console's resident memory at those two moments; then the fleet page loaded in a real headless Chromium
  `--loads` times ("after the backfill"). "Ready" is when the page says how many devices it shows and the first
  device's charts are drawn.
- console B, started the same way: the page loaded `--loads` times as soon as it lists every device, while its
  backfill runs ("during the backfill").

The peer, measured in the same run: `faceagent ctl devices` listing the same retained statuses.

    python scripts/bench_console.py [--devices 500] [--small 10] [--loads 5] [--history-seconds 3600]

Needs ../shared/data (the simulator's photos), Mosquitto and Debian's chromium and chromium-driver
(scripts/test.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.commands.signing import public_key_text
from scripts._bench_service import start_mosquitto
from scripts._fleet import DEVICE_PREFIX, Fleet, fleet_options
from scripts._fleet_faces import REPO

SHARED_DATA = Path(os.environ.get("FACEAGENT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEVICES_PER_PROCESS = 125  # as bench_fleet.py: 4 worker processes for 500 devices
TELEMETRY_SECONDS = 30.0  # the agent's history keeps one document per 30 s: a full hour is 120 points

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def chromium(profile: Path):  # -> selenium.webdriver.Chrome (selenium is a test dependency)
    """Debian's chromium, headless, with a fresh profile and nothing that reaches beyond this machine."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def get_json(url: str) -> tuple[dict, int, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(body), len(body), time.perf_counter() - started


def wait_until(condition, timeout: float, what: str, pause: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(pause)
    raise SystemExit(f"error: timed out waiting for {what}")


def page_ready_seconds(driver, url: str, devices: int) -> float:
    """From navigation to the device count shown and the first card's charts drawn."""
    from selenium.webdriver.common.by import By

    def ready() -> bool:
        count = driver.find_elements(By.ID, "fleet-count")
        charts = driver.find_elements(By.CSS_SELECTOR, "article .chart")
        drawn = bool(charts) and int(charts[0].get_attribute("data-points") or 0) > 0
        return bool(count) and count[0].text.startswith(f"{devices} devices") and drawn

    started = time.perf_counter()
    driver.get(url)
    wait_until(ready, 60, f"the fleet page with {devices} devices")
    return time.perf_counter() - started


def ctl_devices_seconds(port: int, devices: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "ctl", "devices", "--mqtt", f"mqtt://127.0.0.1:{port}", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    listed = len(result.stdout.splitlines())
    if listed != devices:
        raise SystemExit(f"error: ctl devices listed {listed} devices, expected {devices}")
    return elapsed


@dataclass
class ConsoleRun:
    """One `faceagent console` process on the benchmark's broker, started after the devices."""

    port: int
    process: subprocess.Popen[bytes] = field(init=False)
    url: str = field(init=False)
    started: float = field(init=False)  # time.time(), the console's clock

    def __post_init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            web = probe.getsockname()[1]
        self.started = time.time()
        command = [sys.executable, "-m", "agent", "console", "--mqtt", f"mqtt://127.0.0.1:{self.port}"]
        command += ["--listen", f"127.0.0.1:{web}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{web}"
        wait_until(lambda: _answers(self.url), 30, "the console")

    def online(self) -> int:
        return sum(1 for device in get_json(self.url + "/api/fleet")[0]["devices"] if device["online"])

    def memory_mb(self) -> tuple[float, float]:
        """Resident now and at its peak (VmRSS, VmHWM)."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def wait_backfilled(self, devices: list[str], history_seconds: float, timeout: float) -> None:
        """Until every device's chart starts at least half `history_seconds` before this console did (what it
        received itself starts after); a device seen done is not asked for again."""
        waiting = list(devices)

        def done() -> bool:
            for start in range(0, len(waiting), 100):
                query = "&".join(f"device={device}" for device in waiting[start : start + 100])
                series = get_json(f"{self.url}/api/series?{query}")[0]["series"]
                finished = {d for d, s in series.items() if s["t"] and s["t"][0] < self.started - history_seconds / 2}
                waiting[start : start + 100] = [d for d in waiting[start : start + 100] if d not in finished]
            return not waiting

        wait_until(done, timeout, "every device's hour on the console", pause=0.25)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


@dataclass
class SizeFigures:
    devices: int
    backfill_seconds: float
    memory_seen_mb: float  # when the console listed every device online
    memory_filled_mb: float  # when every device's hour was plotted
    memory_peak_mb: float
    points: int  # the first device's plotted points after the backfill
    loads_after: list[float]
    loads_during: list[float]
    api_seconds: float
    api_bytes: int
    ctl_seconds: float


def measure(size: int, port: int, driver: Any, args: argparse.Namespace) -> SizeFigures:
    """Console A (the backfill alone, then the page), console B (the page during the backfill)."""
    devices = [f"{DEVICE_PREFIX}{index:04d}" for index in range(size)]
    console = ConsoleRun(port)
    try:
        wait_until(lambda: console.online() == size, 120, f"{size} devices online", pause=0.25)
        seen = time.perf_counter()
        memory_seen, _ = console.memory_mb()
        console.wait_backfilled(devices, args.history_seconds, 300)
        backfill_seconds = time.perf_counter() - seen
        memory_filled, memory_peak = console.memory_mb()
        points = len(get_json(f"{console.url}/api/series?device={devices[0]}")[0]["series"][devices[0]]["t"])
        _, api_bytes, api_seconds = get_json(console.url + "/api/fleet")
        loads_after = sorted(page_ready_seconds(driver, console.url + "/", size) for _ in range(args.loads))
    finally:
        console.stop()
    console = ConsoleRun(port)
    try:
        wait_until(lambda: console.online() == size, 120, f"{size} devices online", pause=0.25)
        loads_during = sorted(page_ready_seconds(driver, console.url + "/", size) for _ in range(args.loads))
    finally:
        console.stop()
    ctl = ctl_devices_seconds(port, size)
    return SizeFigures(
        size,
        backfill_seconds,
        memory_seen,
        memory_filled,
        memory_peak,
        points,
        loads_after,
        loads_during,
        api_seconds,
        api_bytes,
        ctl,
    )


def report(rows: list[SizeFigures], loads: int) -> None:
    print(f"page ready: {loads} loads per size and console (a new console's first load is a cold browser cache)")
    print(
        f"{'devices':>8} {'backfill s':>11} {'console MB seen':>16} {'MB filled':>10} {'MB peak':>8} {'points':>7}"
        f" {'ready after med':>16} {'max':>5} {'ready during med':>17} {'max':>5} {'/api/fleet ms':>14}"
        f" {'KB':>5} {'ctl devices s':>14}"
    )
    for row in rows:
        after, during = row.loads_after, row.loads_during
        print(
            f"{row.devices:>8} {row.backfill_seconds:>11.2f} {row.memory_seen_mb:>16.1f} {row.memory_filled_mb:>10.1f}"
            f" {row.memory_peak_mb:>8.1f} {row.points:>7} {after[len(after) // 2]:>16.2f} {after[-1]:>5.2f}"
            f" {during[len(during) // 2]:>17.2f} {during[-1]:>5.2f} {row.api_seconds * 1000:>14.1f}"
            f" {row.api_bytes / 1024:>5.0f} {row.ctl_seconds:>14.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--small", type=int, default=10, help="the smaller fleet measured first")
    parser.add_argument("--loads", type=int, default=5, help="page loads per fleet size and console")
    parser.add_argument("--history-seconds", type=float, default=3600.0, help="how long each device has run")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared face photos")
    args = parser.parse_args()
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit("error: install Debian's chromium and chromium-driver (scripts/test.sh does)")
    if not args.data.is_dir():
        raise SystemExit(f"error: the simulator's photos are not at {args.data} (FACEAGENT_SHARED_DATA)")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(tempfile.mkdtemp(prefix="bench-console-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    broker, port = start_mosquitto(folder)
    driver = None
    try:
        options = fleet_options(
            f"mqtt://127.0.0.1:{port}",
            folder / "fleet",
            args.data,
            public_key_text(Ed25519PrivateKey.generate()),  # the console's get_telemetry is open: nothing signed
            telemetry_seconds=TELEMETRY_SECONDS,
            history_seconds=args.history_seconds,
        )
        driver = chromium(folder / "profile")
        rows = []
        for size in (args.small, args.devices):
            processes = -(-size // DEVICES_PER_PROCESS)
            with Fleet(size, options, processes=processes, connect_timeout=600):
                rows.append(measure(size, port, driver, args))
            print(f"measured {size} devices", file=sys.stderr, flush=True)
        report(rows, args.loads)
    finally:
        if driver is not None:
            driver.quit()
        broker.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _answers(url: str) -> bool:
    try:
        return bool(get_json(url + "/api/fleet")[0]["connected"])
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast the console's fleet page is ready with many devices on the broker.

Simulated devices: one paho client publishes, for each of N device ids, a retained status document of the
shape `faceagent run` publishes (version, models, gallery with digest, camera, storage, warnings, command
authority) and three telemetry documents (fps, latency p50/p95, CPU temperature, outbox, dropped frames),
on a real Mosquitto, after a real `faceagent console` has subscribed. A real headless Chromium then loads the
fleet page; "ready" is when the page says how many devices it shows and the first device's charts are drawn.
The peer, measured in the same run: `faceagent ctl devices` listing the same retained statuses.

    python scripts/bench_console.py [--devices 500] [--small 10] [--loads 5]

Needs Mosquitto and Debian's chromium and chromium-driver (scripts/test.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._bench_service import start_mosquitto

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


def status_document(device: str, index: int) -> dict:
    return {
        "schema": 1,
        "device": device,
        "at": "2026-01-01T00:00:00.000Z",
        "state": "online" if index % 50 else "offline",
        "version": "0.1.0",
        "models": {"detector": "blazeface-short", "embedder": "dlib-resnet29-int8"},
        "gallery": {
            "people": 40 + index % 7,
            "templates": 120,
            "digest": f"{index:016x}",
            "people_needing_reenrollment": 0,
        },
        "started_at": "2026-01-01T00:00:00.000Z",
        "uptime_s": 3600 + index,
        "storage": {"state": "ok", "since": None, "free_bytes": 20 * 2**30, "dropped_events": 0, "last_error": None},
        "camera": {"source": "picamera2", "state": "ok", "frames": 100000, "dropped": 12, "errors": 0, "fps": 15.0},
        "runtime": "ai-edge-litert 2.3 (XNNPACK)",
        "warnings": []
        if index % 25
        else ["mqtt.tls_insecure is true: the broker's certificate host name is not checked"],
        "commands": {"authority": "signed", "command_keys": ["abcd1234"], "release_keys": []},
    }


def telemetry_document(device: str, step: int) -> dict:
    return {
        "schema": 1,
        "device": device,
        "uptime_s": 3600 + step,
        "fps": 14.0 + step % 3,
        "latency_ms": {"detect": {"p50": 20.0, "p95": 31.0}, "total": {"p50": 48.0 + step, "p95": 75.0 + step}},
        "dropped_frames": 12 + step,
        "outbox": {"depth": step, "inflight": 0, "published": 1000, "dropped_events": 0},
        "cpu_temp_c": 55.0 + step,
        "memory": {"rss_mb": 180.0},
    }


def publish(port: int, devices: list[str], first: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-console-devices")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [
        client.publish(f"faceagent/{device}/status", json.dumps(status_document(device, first + offset)), 1, True)
        for offset, device in enumerate(devices)
    ]
    for step in range(3):  # as devices report: every device once, then again
        infos += [
            client.publish(f"faceagent/{device}/telemetry", json.dumps(telemetry_document(device, step)), qos=1)
            for device in devices
        ]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def get_json(url: str) -> tuple[dict, int, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(body), len(body), time.perf_counter() - started


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--small", type=int, default=10, help="the smaller fleet measured first")
    parser.add_argument("--loads", type=int, default=5, help="page loads per fleet size")
    args = parser.parse_args()
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit("error: install Debian's chromium and chromium-driver (scripts/test.sh does)")
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    broker, port = start_mosquitto(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web = probe.getsockname()[1]
    console = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "console",
            "--mqtt",
            f"mqtt://127.0.0.1:{port}",
            "--listen",
            f"127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{web}"
    driver = None
    try:
        wait_until(lambda: _answers(url), 30, "the console")
        driver = chromium(folder / "profile")
        names = [f"sim-{i:04d}" for i in range(args.devices)]
        rows = []
        for size in (args.small, args.devices):
            already = args.small if rows else 0  # the small fleet is already on the broker
            publish(port, names[already:size], already)
            wait_until(lambda size=size: len(get_json(url + "/api/fleet")[0]["devices"]) == size, 60, f"{size} devices")
            _, body_bytes, api_seconds = get_json(url + "/api/fleet")
            loads = sorted(page_ready_seconds(driver, url + "/", size) for _ in range(args.loads))
            rows.append((size, loads, api_seconds, body_bytes, ctl_devices_seconds(port, size)))
        print(f"page ready: {args.loads} loads per size (the first load of the run is a cold browser cache)")
        header = f"{'devices':>8} {'ready median s':>15} {'ready max s':>12} {'/api/fleet ms':>14} {'KB':>6}"
        print(header + f" {'ctl devices s':>14}")
        for size, loads, api_seconds, body_bytes, ctl in rows:
            median = loads[len(loads) // 2]
            print(
                f"{size:>8} {median:>15.2f} {loads[-1]:>12.2f} {api_seconds * 1000:>14.1f} "
                f"{body_bytes / 1024:>6.0f} {ctl:>14.2f}"
            )
    finally:
        if driver is not None:
            driver.quit()
        console.terminate()
        console.wait(20)
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

"""Hostile payloads against the real agent: peak RSS per case, and whether the frame loop kept running.

Runs `faceagent run` on the Hamilton clip's frames (a looping folder source) with a real Mosquitto on
127.0.0.1 and an operator key configured and required, so signed payloads reach the handlers. Each case
sends the worst payload of its kind it can build, then a signed ping (again every 5 s) until one is
answered. Per case it prints: what was sent, how many, the agent's peak RSS during the case (VmHWM,
reset through /proc/PID/clear_refs before each case, so no case inherits another's peak), whether
telemetry (published by the frame loop once a second) kept coming with no gap over 3.5 s and fps > 0,
and PASS/FAIL against the RSS budget.

    .venv/bin/python scripts/bench_hostile.py                      # every case
    .venv/bin/python scripts/bench_hostile.py --cases png_7000 nested_json
    .venv/bin/python scripts/bench_hostile.py --agent-root /tmp/old  # another checkout's agent (before/after)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from PIL import Image  # noqa: E402

from agent.commands.signing import public_key_text, sign_request  # noqa: E402
from agent.config import CommandSettings  # noqa: E402
from scripts._bench_common import resolve_data_dir  # noqa: E402
from scripts._hostile import flat_jpeg, flat_png, nested_json, token_json  # noqa: E402
from tests.support.broker import HOST, Broker  # noqa: E402

DEVICE = "hostile-1"
BASE = f"faceagent/{DEVICE}"
FRAMES = Path("sequence/hamilton_clip/frames")
BUDGET_MB = 250.0
MAX_GAP_S = 5.0  # telemetry comes every second; on a loaded 2-core host a frame may take a while
MIN_CASE_S = 5.0
LIMIT = CommandSettings().max_payload_bytes
MIB = 1024 * 1024


@dataclass
class Probe:
    """The operator's connection: publishes requests, records replies and telemetry."""

    broker: Broker
    key: Ed25519PrivateKey
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    telemetry: list[tuple[float, float]] = field(default_factory=list)  # (agent's clock when sent, fps)
    counter: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{BASE}/telemetry", 0), (f"{BASE}/cmd/+/reply", 1)])
        self.client.connect(HOST, self.broker.port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            if message.topic.endswith("/telemetry"):
                document = json.loads(message.payload)
                at = datetime.fromisoformat(document["at"]).timestamp()
                self.telemetry.append((at, float(document.get("fps") or 0.0)))
            else:
                try:
                    reply = json.loads(message.payload)
                except ValueError:
                    return
                if isinstance(reply, dict) and reply.get("request_id"):
                    self.replies[reply["request_id"]] = reply
            self.lock.notify_all()

    def request(self, name: str, args: dict[str, Any] | None = None) -> tuple[str, bytes]:
        """A signed request with a fresh id."""
        self.counter += 1
        request_id = f"{name}-{self.counter}"
        document = {"request_id": request_id, "origin": "bench", "args": args or {}}
        signed = sign_request(self.key, DEVICE, name, document, now=datetime.now(UTC))
        return request_id, json.dumps(signed).encode()

    def publish(self, name: str, payload: bytes) -> None:
        try:
            self.client.publish(f"{BASE}/cmd/{name}", payload, qos=1).wait_for_publish(120)
        except (RuntimeError, ValueError) as exc:  # the broker may drop us for an oversized packet
            print(f"  (publish on {name}: {exc})", flush=True)

    def ping_until_answered(self, timeout: float) -> float | None:
        """Seconds until a ping is answered (a new ping every 5 s), or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            request_id, payload = self.request("ping")
            self.publish("ping", payload)
            with self.lock:
                if self.lock.wait_for(lambda rid=request_id: rid in self.replies, 5.0):
                    return time.monotonic() - started
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------ cases


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fill(image: bytes, most: int = 10) -> list[dict[str, str]]:
    """As many copies of `image` as one enroll request holds under the payload limit (at most `most`)."""
    count = max(1, min(most, (LIMIT - 4096) // (len(_b64(image)) + 32), CommandSettings().max_images))
    return [{"data": _b64(image), "label": f"photo {i}"} for i in range(count)]


def _noise_jpeg(max_bytes: int) -> bytes:
    """Random pixels as the largest square JPEG under `max_bytes` (no face: enrollment runs the detector and
    refuses it)."""
    side = int((max_bytes / 1.2) ** 0.5)
    while True:
        pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
        side = int(side * 0.95)


Sender = Callable[[Probe], int]
LFW_PHOTO = Path("faces-lfw/Colin_Powell/Colin_Powell_0040.jpg")
DATA: list[Path] = []  # the shared data folder, once known


def _enroll_images(images: list[dict[str, str]]) -> Sender:
    def send(probe: Probe) -> int:
        probe.publish("enroll", probe.request("enroll", {"name": "Hostile", "images": images})[1])
        return 1

    return send


def _lfw_enroll() -> Sender:
    return _enroll_images([{"data": _b64((DATA[0] / LFW_PHOTO).read_bytes())}])


def _raw(name: str, payload: bytes, times: int = 1) -> Sender:
    def send(probe: Probe) -> int:
        for _ in range(times):
            probe.publish(name, payload)
        return times

    return send


def _flood(count: int) -> Sender:
    """`count` valid enroll requests at the payload limit, all published before the first is answered."""
    image = _noise_jpeg(min(CommandSettings().max_image_bytes, LIMIT))
    images = _fill(image)

    def send(probe: Probe) -> int:
        for _ in range(count):
            probe.client.publish(
                f"{BASE}/cmd/enroll", probe.request("enroll", {"name": "Flood", "images": images})[1], 1
            )
        return count

    return send


def _burst(count: int) -> Sender:
    def send(probe: Probe) -> int:
        for i in range(count):
            name = ("ping", "list_people", "get_status")[i % 3]
            probe.client.publish(f"{BASE}/cmd/{name}", probe.request(name)[1], qos=1)
        return count

    return send


def cases() -> dict[str, tuple[str, Callable[[], Sender]]]:
    """name -> (what is sent, a factory building the payloads when the case runs)."""
    return {
        "idle": ("nothing (baseline)", lambda: lambda probe: 0),
        "enroll_photo": ("enroll: one LFW photo (the command thread's pipeline is made)", _lfw_enroll),
        "png_7000": ("enroll: a 7000x7000 RGBA PNG", lambda: _enroll_images(_fill(flat_png(7000, 7000), most=1))),
        "png_4k_x10": (
            "enroll: 10 PNGs of 3840x2160 RGBA (at the pixel cap)",
            lambda: _enroll_images(_fill(flat_png(3840, 2160))),
        ),
        "jpeg_7000": (
            "enroll: a 7000x7000 RGB JPEG",
            lambda: _enroll_images(_fill(flat_jpeg(7000, 7000, mode="RGB"), most=1)),
        ),
        "jpeg_80mp_xN": (
            "enroll: 8944x8944 JPEGs (at the JPEG pixel cap), as many as fit",
            lambda: _enroll_images(_fill(flat_jpeg(8944, 8944))),
        ),
        "progressive_4k_xN": (
            "enroll: 3840x2160 4:4:4 progressive JPEGs (at the cap), as many as fit",
            lambda: _enroll_images(_fill(flat_jpeg(3840, 2160, progressive=True, mode="RGB"))),
        ),
        "nested_json": (f"enroll: {LIMIT / MIB:g} MiB of nested [", lambda: _raw("enroll", nested_json(LIMIT))),
        "token_json": (f"model_update: {LIMIT / MIB:g} MiB of {{}},", lambda: _raw("model_update", token_json(LIMIT))),
        "oversized_mqtt": ("ping: one 200 MB message", lambda: _raw("ping", b"x" * (200 * 1024 * 1024))),
        "max_size_flood": (f"enroll: 20 valid requests of {LIMIT / MIB:g} MiB at once", lambda: _flood(20)),
        "burst": ("300 signed ping/list_people/get_status at once", lambda: _burst(300)),
    }


# ------------------------------------------------------------------------------------------ agent


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """VmRSS every 20 ms, in case VmHWM cannot be reset (then the sampled maximum is reported)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stopped = pid, 0, False

    def run(self) -> None:
        while not self.stopped:
            try:
                self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.02)


def start_agent(folder: Path, broker: Broker, key: Ed25519PrivateKey, data: Path, root: Path) -> subprocess.Popen:
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 10\ntelemetry_interval_seconds = 1\n'
        "[camera]\nfps = 10\nloop = true\n"
        f'[commands]\nsigning_required = true\npublic_keys = ["{public_key_text(key)}"]\n'
    )
    command = [sys.executable, "-m", "agent", "--config", str(config), "--db", str(folder / "gallery.db"), "run"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    log = open(folder / "agent.log", "w")  # noqa: SIM115 - open for the agent's lifetime
    return subprocess.Popen(
        [*command, "--source", f"folder:{data / FRAMES}"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def run_case(name: str, label: str, sender: Sender, probe: Probe, pid: int, timeout: float) -> dict[str, Any]:
    """Gaps are judged on the agent's own clock (telemetry's `at`): a broker busy with a large message
    delays delivery, which says nothing about the frame loop."""
    start_mb = _status_kb(pid, "VmRSS") / 1024
    reset = _reset_peak(pid)
    sampler = Sampler(pid)
    sampler.start()
    started = time.time()
    sent = sender(probe)
    answered = probe.ping_until_answered(timeout)
    time.sleep(max(0.0, started + MIN_CASE_S - time.time()))  # long enough to see telemetry come
    ended = time.time()
    with probe.lock:  # wait for the telemetry sent up to the end of the case
        probe.lock.wait_for(lambda: any(t >= ended + 1.0 for t, _ in probe.telemetry), 30.0)
    sampler.stopped = True
    sampler.join()
    peak_mb = (_status_kb(pid, "VmHWM") if reset else sampler.peak_kb) / 1024
    with probe.lock:
        stamps = [t for t, _ in probe.telemetry if started - 1.5 <= t <= ended]
        fps = [f for t, f in probe.telemetry if started <= t <= ended]
    gaps = np.diff([started, *stamps, ended]) if stamps else [ended - started]
    loop_ok = bool(stamps) and bool(max(gaps) <= MAX_GAP_S) and min(fps or [0.0]) > 0
    ok = answered is not None and loop_ok and peak_mb < BUDGET_MB
    return {
        "case": name,
        "sent": label,
        "count": sent,
        "start_rss_mb": round(start_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "frame_loop_ok": loop_ok,
        "max_telemetry_gap_s": round(float(max(gaps)), 2),
        "ping_answered_after_s": None if answered is None else round(answered, 1),
        "seconds": round(ended - started, 1),
        "pass": ok,
    }


def main() -> int:
    global LIMIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--cases", nargs="+", choices=list(cases()), help="run only these cases")
    parser.add_argument("--agent-root", type=Path, default=REPO_ROOT, help="checkout whose agent runs")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a case may take to answer ping")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--payload-limit", type=int, default=LIMIT, help="the agent's commands.max_payload_bytes (an older default)"
    )
    args = parser.parse_args()
    LIMIT = args.payload_limit
    data = resolve_data_dir(args.data, [str(FRAMES), str(LFW_PHOTO)])
    DATA.append(data)
    chosen = {name: case for name, case in cases().items() if not args.cases or name in args.cases}
    print(f"payloads up to {LIMIT} bytes (commands.max_payload_bytes)")
    results = []
    with tempfile.TemporaryDirectory(prefix="faceagent-hostile-") as scratch:
        folder = Path(scratch)
        broker = Broker(folder / "broker").start()  # no max_packet_size: the agent must protect itself
        key = Ed25519PrivateKey.generate()
        agent = start_agent(folder, broker, key, data, args.agent_root.resolve())
        probe = Probe(broker, key)
        try:
            if probe.ping_until_answered(120) is None:
                print((folder / "agent.log").read_text()[-3000:])
                return 2
            time.sleep(3.0)
            print(f"agent {args.agent_root} pid {agent.pid}: started, peak RSS so far "
                  f"{_status_kb(agent.pid, 'VmHWM') / 1024:.0f} MB", flush=True)  # fmt: skip
            print(f"{'case':20} {'count':>5} {'RSS before':>10} {'peak RSS':>9} {'frame loop':>10} {'ping after':>10}  "
                  "verdict  sent")  # fmt: skip
            for name, (label, build) in chosen.items():
                if agent.poll() is not None:
                    print(f"{name:20} agent exited with {agent.returncode}: FAIL")
                    results.append({"case": name, "sent": label, "pass": False, "exit": agent.returncode})
                    break
                result = run_case(name, label, build(), probe, agent.pid, args.timeout)
                results.append(result)
                answered = result["ping_answered_after_s"]
                print(
                    f"{name:20} {result['count']:5} {result['start_rss_mb']:8.0f}MB {result['peak_rss_mb']:7.0f}MB "
                    f"{'ok' if result['frame_loop_ok'] else 'STALLED':>10} "
                    f"{'never' if answered is None else f'{answered:.1f} s':>10}  "
                    f"{'PASS' if result['pass'] else 'FAIL'}     {label}",
                    flush=True,
                )
        finally:
            probe.close()
            agent.terminate()
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
            broker.stop()
            log_tail = (folder / "agent.log").read_text(errors="replace").splitlines()
        refusals = [line for line in log_tail if "refused" in line or "dropped" in line or "queue" in line]
        print(f"agent log: {len(refusals)} refusal/drop lines; last: {refusals[-1][:160] if refusals else '-'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    passed = all(r["pass"] for r in results)
    print(f"{'PASS' if passed else 'FAIL'}: {sum(r['pass'] for r in results)}/{len(results)} cases under "
          f"{BUDGET_MB:.0f} MB with the frame loop running")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Model roll-out over MQTT: one copy of each phase per device against one for the fleet (`ctl model-update --all`).

    python scripts/bench_model_rollout.py --devices 10 100 [--model models/dlib_resnet29_int8.tflite] [--json out.json]

For each fleet size and shape, on a fresh Mosquitto: N devices in a child process (the agent's own `MqttLink`
each, listening on the fleet-wide topic as `faceagent run` does) that decode every request and base64-decode
every chunk, then answer as a device's model_update job does (IN_PROGRESS with the bytes received, SUCCEEDED at
commit) without installing anything: the model's check and swap cost a device the same whichever way the bytes
came, so only the transport is measured here. The operator is `agent.cli.releases.roll_out`, exactly as `ctl
model-update` runs it, signing every request. Figures: time until every device answered the commit, the
broker's CPU seconds (from /proc), the operator's CPU seconds and peak memory, and the bytes the operator
published (the sum of its requests' payloads).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.releases import Release, roll_out
from agent.commands.signing import request_signer
from agent.link.client import BrokerSettings
from agent.link.mqtt import CommandRequest, MqttLink
from agent.link.operator import Operator
from scripts._bench_common import format_table, load_average, write_json
from scripts._bench_service import start_mosquitto

REPO = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 256 * 1024  # ctl model-update's default


def serve(url: str, count: int) -> None:
    """The child: `count` devices answering model_update phases and pings until stdin closes."""

    def device(device_id: str) -> MqttLink:
        received = [0]

        def answer(request: CommandRequest) -> None:
            document = json.loads(request.payload)
            args = document.get("args", {})
            data: dict = {"pong": True}
            if request.name == "model_update":
                if args["phase"] == "begin":
                    received[0] = 0
                if args["phase"] == "chunk":
                    received[0] += len(base64.b64decode(args["data"]))
                status = "SUCCEEDED" if args["phase"] == "commit" else "IN_PROGRESS"
                data = {"status": status, "bytes_received": received[0]}
            reply = {"schema": 1, "request_id": document["request_id"], "status": "ok", "data": data}
            link.reply(request, json.dumps(reply).encode())

        link = MqttLink(BrokerSettings(url=url), device_id, answer)
        return link

    links = [device(f"sim-{number:04d}") for number in range(count)]
    for link in links:
        link.start()
    for link in links:
        link.wait_connected(60)
    print("ready", flush=True)
    sys.stdin.read()
    for link in links:
        link.stop({"schema": 1, "state": "offline", "device": link.topics.device}, timeout=0.5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CountingOperator(Operator):
    """The operator, counting the payload bytes it publishes."""

    published = 0

    def _send(self, device: str, name: str, args: dict, request_id: str) -> None:
        encoded = len(json.dumps({"args": args}))  # the request around it adds ~250 bytes of envelope
        self.published += encoded
        super()._send(device, name, args, request_id)


def measure(count: int, fleet_wide: bool, release: Release, folder: Path) -> dict:
    broker, port = start_mosquitto(folder)
    url = f"mqtt://127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(count), "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        devices = [f"sim-{number:04d}" for number in range(count)]
        signer = request_signer(Ed25519PrivateKey.generate())
        operator = CountingOperator(BrokerSettings(url=url), timeout=120, signer=signer)
        broker_cpu, own_cpu = cpu_seconds(broker.pid), time.process_time()
        started = time.perf_counter()
        with operator:
            fleet = set(devices) if fleet_wide else set()
            outcome = roll_out(operator, devices, release, job_id="bench", chunk_bytes=CHUNK_BYTES, fleet=fleet)
        seconds = time.perf_counter() - started
        return {
            "devices": count,
            "shape": "one copy for the fleet" if fleet_wide else "one copy per device",
            "seconds": round(seconds, 2),
            "succeeded": len(outcome.succeeded()),
            "dropped": len(outcome.dropped),
            "broker_cpu_s": round(cpu_seconds(broker.pid) - broker_cpu, 2),
            "operator_cpu_s": round(time.process_time() - own_cpu, 2),
            "operator_published_mb": round(operator.published / 1e6, 1),
        }
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
        broker.terminate()
        broker.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "dlib_resnet29_int8.tflite")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.serve)
        return 0
    content = args.model.read_bytes()
    meta = {"model_id": "bench-model", "role": "embedder", "version": "2"}
    release = Release.signed(content, Ed25519PrivateKey.generate(), file=args.model.name, **meta)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as scratch:
        for count in args.devices:
            for fleet_wide in (False, True):
                rows.append(measure(count, fleet_wide, release, Path(scratch)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    headers = ["devices", "shape", "all committed (s)", "ok", "dropped", "broker CPU s", "ctl CPU s", "ctl sent MB"]
    table = [[r["devices"], r["shape"], r["seconds"], r["succeeded"], r["dropped"], r["broker_cpu_s"],
              r["operator_cpu_s"], r["operator_published_mb"]] for r in rows]  # fmt: skip
    print(format_table(headers, table))
    print(f"model {args.model.name}: {len(content)} bytes in {CHUNK_BYTES // 1024} KiB chunks; operator peak RSS "
          f"{peak:.0f} MB; load average {load_average()}")  # fmt: skip
    if args.json:
        write_json(args.json, {"model_bytes": len(content), "runs": rows, "load_average": load_average()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

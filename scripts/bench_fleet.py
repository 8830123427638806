"""Broadcast at fleet scale: `faceagent ctl enroll --all` then `ctl delete --all` on 10, 100 and 500 simulated
devices (scripts/fleet_sim.py: the agent's own link, dispatcher, signing and gallery per device) on a fresh
real Mosquitto per size.

Per size and operation, measured:
- answered: seconds from starting `faceagent ctl` to the last device's reply on the broker (an observer
  subscribed to every reply topic notes each one's arrival), and ctl's own wall time;
- lost: devices whose reply ctl did not get, or got wrong (target 0);
- broker: Mosquitto's CPU seconds over the operation and its peak resident memory (sampled from /proc every
  20 ms), and its resident memory at rest with the fleet connected;
- operator: the ctl process's peak resident memory (getrusage of the child);
- the simulator's CPU seconds, which on this machine competes with the broker and ctl for the same 2 cores.
The peer, measured in the same run: the same command addressed to one device (`--device sim0000`).

    python scripts/bench_fleet.py [--sizes 10,100,500] [--json results.json] [--plot docs/fleet-broadcast.png]

Needs Mosquitto and ../shared/data. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.commands.signing import public_key_text
from scripts._bench_common import format_table, load_average, progress, write_json
from scripts._bench_service import start_mosquitto
from scripts._fleet import BROADCAST_PHOTOS, DEFAULT_CACHE_DIR, Fleet, fleet_options
from scripts.fleet_sim import SHARED_DATA, scratch_folder

# `faceagent ...` in a process that reports its own peak resident memory (VmHWM of its address space) on
# stderr as it ends: getrusage of a child would count the benchmark's memory it was forked from.
FACEAGENT_REPORTING_PEAK = """
import re, sys
from pathlib import Path
from agent.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    peak = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())
    print(f"peak-rss-kb {peak.group(1)}", file=sys.stderr)
sys.exit(code)
"""
PERSON = "Colin Powell"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB


@dataclass
class PeakSampler:
    """A process's resident memory every `interval` seconds on a thread; the peak seen."""

    pid: int
    interval: float = 0.02
    peak_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def running(self) -> Iterator[PeakSampler]:
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def _sample(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            if self._stop.wait(self.interval):
                return


# ------------------------------------------------------------------------------------------ replies


class ReplyClock:
    """Every reply on the broker for one command, with the moment it arrived (time.monotonic)."""

    def __init__(self, port: int, command: str) -> None:
        self.arrivals: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-replies-{command}")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"faceagent/+/cmd/{command}/reply", qos=1)
        self.client.on_subscribe = lambda *args: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise SystemExit("error: the reply observer did not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        device = message.topic.split("/")[1]
        with self._lock:
            self.arrivals.setdefault(device, (time.monotonic(), json.loads(message.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------------------- figures


@dataclass
class Operation:
    devices: int
    command: str
    targets: str  # "all" or the one device
    ctl_seconds: float
    answered_seconds: float | None  # ctl start to the last reply on the broker
    replies_ok: int
    lost: int
    broker_cpu_s: float
    broker_peak_mb: float
    broker_rest_mb: float
    operator_peak_mb: float
    simulator_cpu_s: float
    problems: list[str]


def check_reply(command: str, reply: dict[str, Any] | None) -> str | None:
    """What is wrong with one device's reply, or None."""
    if reply is None:
        return "no reply"
    if reply.get("status") != "ok":
        return f"refused: {reply.get('error')}"
    data = reply.get("data") or {}
    if command == "enroll" and not (data.get("created") and data.get("templates_added") == len(BROADCAST_PHOTOS)):
        return f"enrolled wrongly: {data}"
    if command == "delete_person" and (data.get("deleted") or {}).get("templates") != len(BROADCAST_PHOTOS):
        return f"erased wrongly: {data}"
    return None


def ctl_measured(arguments: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, exit status, peak RSS in KiB, stdout) of one `faceagent ctl` run."""
    started = time.monotonic()
    command = [sys.executable, "-c", FACEAGENT_REPORTING_PEAK, "ctl", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    if not peak:
        raise SystemExit(f"error: ctl ended without its memory figure:\n{done.stderr[-2000:]}")
    if done.returncode == 2:  # a local problem: nothing was measured
        raise SystemExit(f"error: ctl {' '.join(arguments[:2])} failed:\n{done.stderr[-2000:]}")
    return wall, done.returncode, int(peak[-1]), done.stdout


def operate(
    fleet: Fleet, broker: subprocess.Popen[bytes], port: int, key: Path, command: str, targets: list[str] | None
) -> Operation:
    url = f"mqtt://127.0.0.1:{port}"
    common = ["--mqtt", url, "--sign-key", str(key), "--json", "--timeout", "300"]
    chosen = ["--all"] if targets is None else [arg for device in targets for arg in ("--device", device)]
    if command == "enroll":
        photos = [str(fleet.options.data / photo) for photo in BROADCAST_PHOTOS]
        arguments = ["enroll", *chosen, *common, "--name", PERSON, *photos]
    else:
        arguments = ["delete", *chosen, *common, "--name", PERSON]
    expected = fleet.ids if targets is None else targets
    wire = "delete_person" if command == "delete" else command
    clock = ReplyClock(port, wire)
    rest_kb = rss_kb(broker.pid)
    broker_cpu, sim_cpu = cpu_seconds(broker.pid), sum(cpu_seconds(pid) for pid in fleet.pids)
    started = time.monotonic()
    with PeakSampler(broker.pid).running() as sampler:
        wall, _, operator_kb, out = ctl_measured(arguments)
        deadline = time.monotonic() + 10  # replies ctl saw have reached the observer too, or soon will
        while len(clock.arrivals) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
    broker_cpu = cpu_seconds(broker.pid) - broker_cpu
    sim_cpu = sum(cpu_seconds(pid) for pid in fleet.pids) - sim_cpu
    clock.close()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    replies = {line["device"]: line["reply"] for line in lines}
    problems = [f"{d}: {p}" for d in expected if (p := check_reply(wire, replies.get(d))) is not None]
    arrivals = [clock.arrivals[d][0] for d in expected if d in clock.arrivals]
    answered = max(arrivals) - started if len(arrivals) == len(expected) else None
    return Operation(
        devices=len(fleet.ids),
        command=command,
        targets="all" if targets is None else ",".join(targets),
        ctl_seconds=round(wall, 3),
        answered_seconds=round(answered, 3) if answered is not None else None,
        replies_ok=len(expected) - len(problems),
        lost=len(problems),
        broker_cpu_s=round(broker_cpu, 2),
        broker_peak_mb=round(sampler.peak_kb / 1024, 1),
        broker_rest_mb=round(rest_kb / 1024, 1),
        operator_peak_mb=round(operator_kb / 1024, 1),
        simulator_cpu_s=round(sim_cpu, 2),
        problems=problems[:10],
    )


def measure_size(size: int, args: argparse.Namespace, key: Path, public_key: str) -> list[Operation]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{size}-"))
    state = scratch_folder()
    broker, port = start_mosquitto(folder)
    operations: list[Operation] = []
    try:
        url = f"mqtt://127.0.0.1:{port}"
        tuning = {"cache_dir": args.cache_dir, "telemetry_seconds": args.telemetry_seconds}
        options = fleet_options(url, state, args.data, public_key, **tuning)
        processes = args.processes or max(2, math.ceil(size / 125))
        progress(f"{size} devices in {processes} processes: starting")
        started = time.monotonic()
        with Fleet(size, options, processes=processes, connect_timeout=300) as fleet:
            progress(f"{size} devices connected in {time.monotonic() - started:.1f} s")
            for targets in ([fleet.ids[0]], None):  # the peer (one device), then the whole fleet
                for command in ("enroll", "delete"):
                    operation = operate(fleet, broker, port, key, command, targets)
                    progress(f"  {command} {operation.targets[:20]}: {json.dumps(asdict(operation))}")
                    operations.append(operation)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return operations


def plot(operations: list[Operation], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fleet_ops = [op for op in operations if op.targets == "all"]
    figures = [
        ("answered_seconds", "last reply after ctl start (s)"),
        ("broker_cpu_s", "broker CPU over the operation (s)"),
        ("broker_peak_mb", "broker peak RSS (MB)"),
        ("operator_peak_mb", "ctl peak RSS (MB)"),
    ]
    fig, axes = plt.subplots(1, len(figures), figsize=(4 * len(figures), 3.4))
    for axis, (name, label) in zip(axes, figures, strict=True):
        for command, marker in (("enroll", "o-"), ("delete", "s--")):
            points = [(op.devices, getattr(op, name)) for op in fleet_ops if op.command == command]
            points = [(x, y) for x, y in points if y is not None]
            axis.plot([x for x, _ in points], [y for _, y in points], marker, label=command)
        axis.set_xscale("log")
        axis.set_xlabel("devices")
        axis.set_title(label, fontsize=9)
        axis.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500", help="fleet sizes, comma separated")
    parser.add_argument("--processes", type=int, default=0, help="simulator processes (default: one per 125 devices)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--telemetry-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="draw the growth curves into this PNG (needs matplotlib)")
    args = parser.parse_args()
    if not (args.data / "ident_split.tsv").is_file():
        raise SystemExit(f"error: shared face data not found at {args.data}")
    operator = Ed25519PrivateKey.generate()
    keys = Path(tempfile.mkdtemp(prefix="bench-fleet-key-"))
    key = keys / "operator.pem"
    key.write_bytes(
        operator.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    load_before = load_average()
    operations: list[Operation] = []
    try:
        for size in (int(text) for text in args.sizes.split(",")):
            operations += measure_size(size, args, key, public_key_text(operator))
    finally:
        shutil.rmtree(keys, ignore_errors=True)
    load_after = load_average()
    headers = ["devices", "command", "to", "answered s", "ctl s", "lost", "broker CPU s", "broker peak MB"]
    headers += ["broker rest MB", "ctl peak MB", "sim CPU s"]
    rows = [
        [
            op.devices,
            op.command,
            "all" if op.targets == "all" else "one",
            op.answered_seconds if op.answered_seconds is not None else "-",
            op.ctl_seconds,
            op.lost,
            op.broker_cpu_s,
            op.broker_peak_mb,
            op.broker_rest_mb,
            op.operator_peak_mb,
            op.simulator_cpu_s,
        ]
        for op in operations
    ]
    print(format_table(headers, rows))
    print(f"load average before: {load_before}; after: {load_after}")
    for op in operations:
        for problem in op.problems:
            print(f"LOST  {op.devices} devices, {op.command}: {problem}")
    if args.json:
        write_json(args.json, {"operations": [asdict(op) for op in operations], "load": [load_before, load_after]})
    if args.plot and not plot(operations, args.plot):
        print("matplotlib not installed: no plot drawn")
    return 1 if any(op.lost for op in operations) else 0


if __name__ == "__main__":
    sys.exit(main())

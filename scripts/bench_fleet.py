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
- the simulator's CPU seconds, which on this machine competes with the broker and ctl for the same 2 cores,
  and the cores the fleet keeps busy at rest (measured before the operations).
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
from scripts._fleet import Fleet, fleet_options
from scripts._fleet_faces import BROADCAST_PHOTOS, DEFAULT_CACHE_DIR
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
    shape: str  # SHAPES
    photos: str  # "lfw" (250 px) or "large" (upscaled)
    request_bytes: int  # the photos' base64 in one request
    ctl_seconds: float
    answered_seconds: float | None  # ctl start to the last reply on the broker
    replies_ok: int
    lost: int
    broker_cpu_s: float
    broker_peak_mb: float
    broker_rest_mb: float
    operator_peak_mb: float
    simulator_cpu_s: float
    simulator_idle_cores: float  # the fleet's own CPU at rest (cores busy), measured before the operations
    problems: list[str]


# How ctl addresses the devices: one device (the peer), every device by name (one signed copy each, as every
# `--all` did before fleet-wide requests), or `--all` (one copy published for the whole fleet).
SHAPES = ("one", "each", "fleet")


@dataclass(frozen=True)
class PhotoSet:
    label: str
    paths: list[Path]

    @property
    def base64_bytes(self) -> int:
        return sum(4 * -(-path.stat().st_size // 3) for path in self.paths)


def check_reply(command: str, reply: dict[str, Any] | None, photos: int) -> str | None:
    """What is wrong with one device's reply, or None."""
    if reply is None:
        return "no reply"
    if reply.get("status") != "ok":
        return f"refused: {reply.get('error')}"
    data = reply.get("data") or {}
    if command == "enroll" and not (data.get("created") and data.get("templates_added") == photos):
        return f"enrolled wrongly: {data}"
    if command == "delete_person" and (data.get("deleted") or {}).get("templates") != photos:
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


@dataclass
class Bench:
    """One fleet on one broker: each operation run through `faceagent ctl` and measured."""

    fleet: Fleet
    broker: subprocess.Popen[bytes]
    port: int
    key: Path
    idle_cores: float = 0.0

    def measure_idle(self, seconds: float) -> float:
        """How many cores the simulated fleet keeps busy doing nothing (outbox polls, keepalives, telemetry)."""
        before, started = sum(cpu_seconds(pid) for pid in self.fleet.pids), time.monotonic()
        time.sleep(seconds)
        self.idle_cores = (sum(cpu_seconds(pid) for pid in self.fleet.pids) - before) / (time.monotonic() - started)
        return self.idle_cores

    def operate(self, command: str, shape: str, photos: PhotoSet) -> Operation:
        expected = self.fleet.ids[:1] if shape == "one" else self.fleet.ids
        chosen = ["--all"] if shape == "fleet" else [arg for device in expected for arg in ("--device", device)]
        common = ["--mqtt", f"mqtt://127.0.0.1:{self.port}", "--sign-key", str(self.key), "--json"]
        common += ["--timeout", "600"]
        if command == "enroll":
            arguments = ["enroll", *chosen, *common, "--name", PERSON, *map(str, photos.paths)]
        else:
            arguments = ["delete", *chosen, *common, "--name", PERSON]
        wire = "delete_person" if command == "delete" else command
        clock = ReplyClock(self.port, wire)
        pids = self.fleet.pids
        rest_kb = rss_kb(self.broker.pid)
        broker_cpu, sim_cpu = cpu_seconds(self.broker.pid), sum(cpu_seconds(pid) for pid in pids)
        started = time.monotonic()
        with PeakSampler(self.broker.pid).running() as sampler:
            wall, _, operator_kb, out = ctl_measured(arguments)
            deadline = time.monotonic() + 10  # replies ctl saw have reached the observer too, or soon will
            while len(clock.arrivals) < len(expected) and time.monotonic() < deadline:
                time.sleep(0.05)
        broker_cpu = cpu_seconds(self.broker.pid) - broker_cpu
        sim_cpu = sum(cpu_seconds(pid) for pid in pids) - sim_cpu
        clock.close()
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        replies = {line["device"]: line["reply"] for line in lines}
        checked = {device: check_reply(wire, replies.get(device), len(photos.paths)) for device in expected}
        problems = [f"{device}: {problem}" for device, problem in checked.items() if problem is not None]
        arrivals = [clock.arrivals[device][0] for device in expected if device in clock.arrivals]
        answered = max(arrivals) - started if len(arrivals) == len(expected) else None
        return Operation(
            devices=len(self.fleet.ids),
            command=command,
            shape=shape,
            photos=photos.label,
            request_bytes=photos.base64_bytes,
            ctl_seconds=round(wall, 3),
            answered_seconds=round(answered, 3) if answered is not None else None,
            replies_ok=len(expected) - len(problems),
            lost=len(problems),
            broker_cpu_s=round(broker_cpu, 2),
            broker_peak_mb=round(sampler.peak_kb / 1024, 1),
            broker_rest_mb=round(rest_kb / 1024, 1),
            operator_peak_mb=round(operator_kb / 1024, 1),
            simulator_cpu_s=round(sim_cpu, 2),
            simulator_idle_cores=round(self.idle_cores, 2),
            problems=problems[:10],
        )


def large_photos(data: Path, side: int, folder: Path) -> PhotoSet:
    """The broadcast photos upscaled to `side` pixels (JPEG quality 95), the size of a phone's photo of a face:
    made once beside the face cache, never in the repository."""
    from PIL import Image as PILImage

    paths = []
    for photo in BROADCAST_PHOTOS:
        target = folder / f"large-{side}" / Path(photo).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with PILImage.open(data / photo) as image:
                image.convert("RGB").resize((side, side), PILImage.Resampling.LANCZOS).save(target, quality=95)
        paths.append(target)
    return PhotoSet(f"large-{side}", paths)


def measure_size(size: int, args: argparse.Namespace, key: Path, public_key: str) -> list[Operation]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{size}-"))
    state = scratch_folder()
    broker, port = start_mosquitto(folder)
    lfw = PhotoSet("lfw", [args.data / photo for photo in BROADCAST_PHOTOS])
    photo_sets = [lfw] + ([large_photos(args.data, args.large_side, args.cache_dir)] if args.large_side else [])
    operations: list[Operation] = []
    try:
        url = f"mqtt://127.0.0.1:{port}"
        extra = [path for photos in photo_sets[1:] for path in photos.paths]
        tuning = {"cache_dir": args.cache_dir, "telemetry_seconds": args.telemetry_seconds}
        options = fleet_options(url, state, args.data, public_key, extra_photos=extra, **tuning)
        processes = args.processes or max(2, math.ceil(size / 125))
        progress(f"{size} devices in {processes} processes: starting")
        started = time.monotonic()
        with Fleet(size, options, processes=processes, connect_timeout=600) as fleet:
            progress(f"{size} devices connected in {time.monotonic() - started:.1f} s")
            bench = Bench(fleet, broker, port, key)
            progress(f"the fleet at rest keeps {bench.measure_idle(args.idle_seconds):.2f} cores busy")
            for photos in photo_sets:
                for shape in args.shapes.split(","):
                    for command in ("enroll", "delete"):
                        operation = bench.operate(command, shape, photos)
                        progress(f"  {json.dumps(asdict(operation))}")
                        operations.append(operation)
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return operations


def plot(operations: list[Operation], path: Path) -> bool:
    """Each figure against the fleet size, per command, shape and photo set; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figures = [
        ("answered_seconds", "last reply, from ctl start (s)"),
        ("broker_cpu_s", "broker CPU over the operation (s)"),
        ("broker_peak_mb", "broker peak RSS (MB)"),
        ("operator_peak_mb", "ctl peak RSS (MB)"),
    ]
    lines = sorted({(op.command, op.shape, op.photos) for op in operations if op.shape != "one"})
    fig, axes = plt.subplots(1, len(figures), figsize=(4.2 * len(figures), 3.6))
    for axis, (name, label) in zip(axes, figures, strict=True):
        for command, shape, photos in lines:
            chosen = [op for op in operations if (op.command, op.shape, op.photos) == (command, shape, photos)]
            points = sorted((op.devices, getattr(op, name)) for op in chosen if getattr(op, name) is not None)
            style = ("-" if shape == "fleet" else "--") + ("o" if command == "enroll" else "s")
            axis.plot([x for x, _ in points], [y for _, y in points], style, label=f"{command} {shape} {photos}")
        axis.set_xlabel("devices (linear: a straight line is linear growth)")
        axis.set_xticks([10, 100, 250, 500])
        axis.set_title(label, fontsize=9)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500", help="fleet sizes, comma separated")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"how ctl addresses devices: {', '.join(SHAPES)}")
    parser.add_argument("--large-side", type=int, default=0, help="also enroll these photos upscaled to N px")
    parser.add_argument("--processes", type=int, default=0, help="simulator processes (default: one per 125 devices)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--telemetry-seconds", type=float, default=60.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="how long the fleet's rest is measured")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="draw the growth curves into this PNG (needs matplotlib)")
    parser.add_argument("--from-json", type=Path, help="measure nothing: show (and plot) the figures of a --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        operations = [Operation(**op) for op in saved["operations"]]
        return report(operations, *saved["load"], plot_to=args.plot)
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
    if args.json:
        write_json(args.json, {"operations": [asdict(op) for op in operations], "load": [load_before, load_after]})
    return report(operations, load_before, load_after, plot_to=args.plot)


def report(operations: list[Operation], load_before: str, load_after: str, *, plot_to: Path | None) -> int:
    """The table, the load, every lost reply, the plot; exit status 1 if any reply was lost."""
    headers = ["devices", "command", "shape", "photos", "KB/request", "answered s", "ctl s", "lost"]
    headers += ["broker CPU s", "broker peak MB", "broker rest MB", "ctl peak MB", "sim CPU s", "sim idle cores"]
    rows = [
        [
            op.devices,
            op.command,
            op.shape,
            op.photos,
            op.request_bytes // 1024 if op.command == "enroll" else 0,
            op.answered_seconds if op.answered_seconds is not None else "-",
            op.ctl_seconds,
            op.lost,
            op.broker_cpu_s,
            op.broker_peak_mb,
            op.broker_rest_mb,
            op.operator_peak_mb,
            op.simulator_cpu_s,
            op.simulator_idle_cores,
        ]
        for op in operations
    ]
    print(format_table(headers, rows))
    print(f"load average before: {load_before}; after: {load_after}")
    for op in operations:
        for problem in op.problems:
            print(f"LOST  {op.devices} devices, {op.command} {op.shape} {op.photos}: {problem}")
    if plot_to and not plot(operations, plot_to):
        print("matplotlib not installed: no plot drawn")
    return 1 if any(op.lost for op in operations) else 0


if __name__ == "__main__":
    sys.exit(main())

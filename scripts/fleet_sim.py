"""Run a simulated fleet: N devices on a real broker, each the agent's own link, outbox, command dispatcher
(real handlers, signed commands), SQLite gallery, status and telemetry, in a few processes.

    python scripts/fleet_sim.py --devices 100 --mqtt mqtt://127.0.0.1:1883 --operator-key operator.pem

The devices are `sim0000`, `sim0001`, ...; each trusts the public half of `--operator-key` (make one with
`faceagent ctl keygen operator.pem`), so the operator's tools work on them as on real devices:

    faceagent ctl enroll --all --mqtt mqtt://127.0.0.1:1883 --sign-key operator.pem --name "Colin Powell" \\
        ../shared/data/faces-lfw/Colin_Powell/Colin_Powell_{0040,0133,0170}.jpg

Faces, chips and embeddings come from the real pipeline, run once over the photos the simulation uses and
cached (default ~/.cache/faceagent/fleet-sim); a photo outside that set shows no face. Every device starts
from the same gallery of `--people` LFW identities; with `--event-seconds S` each device's camera sees
someone every S seconds (an enrolled person or a stranger, decided by the device's matcher) and the event
goes through its outbox. Each device keeps its telemetry for `get_telemetry` as the agent does; with
`--history-seconds 3600` it starts as if it had run that hour already (its history full), so a console
started now plots the hour before it. State lives under `--state` (default: a fresh folder in /dev/shm,
removed at the end).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.commands.signing import load_private_key, public_key_text
from scripts._fleet import Fleet, FleetOptions, fleet_options, serve_devices
from scripts._fleet_faces import DEFAULT_CACHE_DIR, REPO

SHARED_DATA = Path(os.environ.get("FACEAGENT_SHARED_DATA", REPO.parent / "shared" / "data"))


def scratch_folder() -> Path:
    """Simulated devices' state in memory when possible: each real device has its own disk, and 500 devices'
    fsyncs on this machine's one disk would measure that disk, not the fleet."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="faceagent-fleet-", dir=base))


def run(args: argparse.Namespace) -> int:
    state = args.state or scratch_folder()
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        options = fleet_options(
            args.mqtt,
            state,
            args.data,
            public_key_text(load_private_key(args.operator_key)),
            cache_dir=args.cache_dir,
            telemetry_seconds=args.telemetry_seconds,
            event_seconds=args.event_seconds,
            concurrency=args.concurrency,
            people=args.people,
            strangers=args.strangers,
            history_seconds=args.history_seconds,
        )
        with Fleet(args.devices, options, processes=args.processes) as fleet:
            print(f"{len(fleet.ids)} devices online ({fleet.ids[0]} .. {fleet.ids[-1]}); Ctrl-C stops them", flush=True)
            stop.wait()
    finally:
        if args.state is None:
            shutil.rmtree(state, ignore_errors=True)
    return 0


def worker(args: argparse.Namespace) -> int:
    """One worker process: SIGTERM stops its devices, SIGUSR1 stops their events."""
    stop, quiet = threading.Event(), threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: quiet.set())
    return serve_devices(args.ids, FleetOptions.from_json(args.options), stop, quiet, args.connect_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command")
    hidden = sub.add_parser("worker", help="internal: one worker process of a fleet")
    hidden.add_argument("--options", required=True)
    hidden.add_argument("--connect-timeout", type=float, default=120.0)
    hidden.add_argument("ids", nargs="+")
    hidden.set_defaults(handler=worker)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="the broker (mqtt://host:port)")
    parser.add_argument("--operator-key", type=Path, help="the operator's Ed25519 private key (PEM): devices trust it")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--state", type=Path, help="where devices keep their state (default: a fresh folder)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared face photos")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where computed embeddings are kept")
    parser.add_argument("--people", type=int, default=20, help="people every device starts with")
    parser.add_argument("--strangers", type=int, default=20, help="strangers the cameras see")
    parser.add_argument("--telemetry-seconds", type=float, default=60.0)
    parser.add_argument(
        "--history-seconds",
        type=float,
        default=0.0,
        help="each device starts as if it had run this long (0: just started)",
    )
    parser.add_argument("--event-seconds", type=float, default=0.0, help="one event per device this often (0: none)")
    parser.add_argument("--concurrency", type=int, default=2, help="commands running at once per worker process")
    parser.set_defaults(handler=run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.handler is run and args.operator_key is None:
        parser.error("--operator-key is required (make one with `faceagent ctl keygen operator.pem`)")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

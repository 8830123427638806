"""Soak test: the live agent on looped footage, with MQTT commands and broker restarts mixed in.

Runs the real `faceagent run` (replayed hamilton_clip frames, `loop = true`, 15 fps, 5 s event cooldown,
Lin-Manuel Miranda enrolled) against a real Mosquitto started here on a free 127.0.0.1 port. Meanwhile it
sends commands (ping, get_status, list_people every few seconds; enroll + delete_person of a second
person every minute; all signed by the test operator key, which the agent's config trusts), restarts the
broker every `--restart-every` seconds, and samples the agent's RSS, open files, threads and outbox depth
every 5 s.

PASS when: RSS growth after warm-up (first 20% of the run, at least 60 s) is under 5% (median of the last
10% of samples against the median right after warm-up); open files and threads do not keep growing; every
event the agent printed reached a persistent-session QoS 1 subscriber (by event_id) or is still queued in
the outbox at the end; every command got a reply.

Run from the repository root (needs mosquitto and ../shared/data):

    .venv/bin/python scripts/soak.py --minutes 30 --out soak.json          # the published figure
    .venv/bin/python scripts/soak.py --minutes 6 --restart-every 60        # a quick check

Exit code 0 on PASS, 1 on FAIL. Everything started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.support.broker import HOST, Broker, Observer  # noqa: E402
from tests.support.commands import OPERATOR_TOML, operator_signed  # noqa: E402

DEVICE = "soak-1"
CLIP = REPO.parent / "shared/data/sequence/hamilton_clip"
MAIN_PERSON = ("Lin-Manuel Miranda", CLIP / "enroll/Lin-Manuel_Miranda.png")
SECOND_PERSON = ("Alex Lacamoire", CLIP / "enroll/Alex_Lacamoire.png")
SAMPLE_SECONDS = 5.0
COMMAND_SECONDS = 4.0
RESEND_SECONDS = 15.0
QUIET_AROUND_RESTART = 8.0  # no new commands this close to a planned restart or after one


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    threads: int
    outbox: int | None


@dataclass
class Command:
    name: str
    args: dict[str, Any]
    request_id: str
    sent_at: float
    sends: int = 1
    reply: dict[str, Any] | None = None


@dataclass
class State:
    printed: dict[str, dict[str, Any]] = field(default_factory=dict)
    printed_lock: threading.Lock = field(default_factory=threading.Lock)
    stderr_tail: list[str] = field(default_factory=list)


def read_proc(pid: int) -> tuple[int, int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(values["VmRSS"].split()[0])
    threads = int(values["Threads"].strip())
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def outbox_depth(db: Path) -> int | None:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return None


def outbox_ids(db: Path) -> set[str]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as connection:
            return {row[0] for row in connection.execute("SELECT id FROM events")}
    except sqlite3.Error:
        return set()


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_config(folder: Path, broker: Broker) -> Path:
    config = folder / "faceagent.toml"
    config.write_text(
        f'[mqtt]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\nkeepalive = 5\ntelemetry_interval_seconds = 5\n'
        "[camera]\nfps = 15\nloop = true\n"
        '[events]\ncamera_id = "soak"\ncooldown_seconds = 5\n' + OPERATOR_TOML  # the commander signs as the operator
    )
    return config


def enroll(config: Path, db: Path) -> None:
    name, image = MAIN_PERSON
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "enroll", "--db", str(db), "--name", name, str(image)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"enrollment failed: {result.stderr[-2000:]}")


class Commander:
    """Publishes commands with paho (QoS 1) and matches the replies the observer records by request_id."""

    def __init__(self, broker: Broker, observer: Observer) -> None:
        self.observer = observer
        self.commands: dict[str, Command] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-commander", protocol=paho.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect_async(HOST, broker.port, keepalive=5)
        self.client.loop_start()
        self.seen = 0

    def send(self, name: str, args: dict[str, Any] | None = None) -> Command:
        command = Command(name, args or {}, f"soak-{uuid.uuid4().hex[:16]}", time.monotonic())
        self.commands[command.request_id] = command
        self._publish(command)
        return command

    def _publish(self, command: Command) -> None:
        """Signed afresh at each send, as ctl does: a resend passes the replay check and gets the first answer."""
        payload = operator_signed(DEVICE, command.name, {"request_id": command.request_id, "args": command.args})
        self.client.publish(f"faceagent/{DEVICE}/cmd/{command.name}", payload, qos=1)

    def collect(self) -> None:
        messages = self.observer.messages[self.seen :]
        self.seen += len(messages)
        for message in messages:
            if "/cmd/" in message.topic and message.topic.endswith("/reply"):
                try:
                    document = message.json()
                except ValueError:
                    continue
                command = self.commands.get(str(document.get("request_id")))
                if command is not None and command.reply is None:
                    command.reply = document

    def resend_unanswered(self, now: float) -> None:
        """Same request_id again: the agent answers a repeat from its reply cache (a restart may drop one)."""
        for command in self.commands.values():
            if command.reply is None and now - command.sent_at > RESEND_SECONDS:
                command.sent_at, command.sends = now, command.sends + 1
                self._publish(command)

    def pending(self) -> list[Command]:
        return [c for c in self.commands.values() if c.reply is None]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_stdout(process: subprocess.Popen[str], state: State) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event_id" in event:
            with state.printed_lock:
                state.printed[str(event["event_id"])] = event


def read_stderr(process: subprocess.Popen[str], state: State) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        state.stderr_tail = [*state.stderr_tail[-49:], line.rstrip()]


def delivered_events(observer: Observer) -> tuple[set[str], int]:
    ids: list[str] = []
    for message in list(observer.messages):
        if f"faceagent/{DEVICE}/events/" in message.topic:
            try:
                ids.append(str(message.json()["event_id"]))
            except (ValueError, KeyError, TypeError):
                continue
    return set(ids), len(ids) - len(set(ids))


def telemetry_fps(observer: Observer) -> list[float]:
    values = []
    for message in observer.on(f"faceagent/{DEVICE}/telemetry"):
        try:
            values.append(float(message.json()["fps"]))
        except (ValueError, KeyError, TypeError):
            continue
    return values


def soak(args: argparse.Namespace, folder: Path, cleanup: list[Any]) -> dict[str, Any]:
    duration = args.minutes * 60.0
    broker = Broker(folder / "broker", persistence=True)
    broker.start()
    cleanup.append(broker.kill)
    config = write_config(folder, broker)
    db = folder / "gallery.db"
    print(f"[soak] broker on {broker.url}; enrolling {MAIN_PERSON[0]} ...", flush=True)
    enroll(config, db)

    observer = Observer(broker, [f"faceagent/{DEVICE}/#"], client_id="soak-subscriber", persistent=True)
    cleanup.append(observer.close)
    commander = Commander(broker, observer)
    cleanup.append(commander.close)

    state = State()
    command = [sys.executable, "-m", "agent", "--config", str(config), "--db", str(db), "run",
               "--source", str(CLIP / "frames"), "--print-events"]  # fmt: skip
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    def stop_agent() -> None:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)

    cleanup.append(stop_agent)
    threading.Thread(target=read_stdout, args=(agent, state), daemon=True).start()
    threading.Thread(target=read_stderr, args=(agent, state), daemon=True).start()
    print(f"[soak] agent pid {agent.pid}; running {args.minutes:g} min, broker restart every "
          f"{args.restart_every:g} s", flush=True)  # fmt: skip

    second_image = base64.b64encode(SECOND_PERSON[1].read_bytes()).decode()
    samples: list[Sample] = []
    restarts = 0
    start = time.monotonic()
    next_sample = start
    next_command = start + 10.0
    next_enroll = start + 30.0
    next_restart = start + args.restart_every
    last_restart = start
    enroll_pending: Command | None = None
    rotation = ["ping", "get_status", "list_people"]
    turn = 0
    failure: str | None = None

    while (now := time.monotonic()) - start < duration:
        if agent.poll() is not None:
            failure = f"agent exited with {agent.returncode}"
            break
        if now >= next_sample:
            next_sample += SAMPLE_SECONDS
            try:
                rss, fds, threads = read_proc(agent.pid)
            except (OSError, KeyError, ValueError):
                continue
            samples.append(Sample(now - start, rss, fds, threads, outbox_depth(db)))
            last = samples[-1]
            if len(samples) % 6 == 1:
                print(f"[soak] t={last.t:6.0f}s rss={last.rss_kb / 1024:.1f}MiB fds={last.fds} threads={last.threads}"
                      f" outbox={last.outbox} printed={len(state.printed)}"
                      f" delivered={len(delivered_events(observer)[0])}", flush=True)  # fmt: skip
        if now >= next_restart and now - start < duration - 20:
            broker.stop()
            time.sleep(1.0)
            broker.start()
            restarts += 1
            last_restart = time.monotonic()
            next_restart = last_restart + args.restart_every
            print(f"[soak] broker restart #{restarts}", flush=True)
            continue
        quiet = now - last_restart < QUIET_AROUND_RESTART or next_restart - now < QUIET_AROUND_RESTART
        commander.collect()
        if not quiet:
            commander.resend_unanswered(now)
            if enroll_pending is not None and enroll_pending.reply is not None:
                data = enroll_pending.reply.get("data") or {}
                person_id = data.get("person_id") if isinstance(data, dict) else None
                who = {"person_id": person_id} if isinstance(person_id, str) else {"name": SECOND_PERSON[0]}
                commander.send("delete_person", who)
                enroll_pending = None
            elif now >= next_enroll and enroll_pending is None:
                second_request = {"name": SECOND_PERSON[0], "images": [{"data": second_image}]}
                enroll_pending = commander.send("enroll", second_request)
                next_enroll = now + 60.0
            elif now >= next_command:
                commander.send(rotation[turn % len(rotation)])
                turn += 1
                next_command = now + COMMAND_SECONDS
        time.sleep(0.2)

    # Drain: let the outbox empty and outstanding replies arrive while the agent still runs.
    print("[soak] draining ...", flush=True)
    drain_deadline = time.monotonic() + args.drain
    with state.printed_lock:
        cutoff_ids = set(state.printed)
    if enroll_pending is not None:
        enroll_pending = None  # its delete is sent below once answered
    while time.monotonic() < drain_deadline and agent.poll() is None:
        commander.collect()
        commander.resend_unanswered(time.monotonic())
        if not (cutoff_ids - delivered_events(observer)[0]) and not commander.pending():
            break
        time.sleep(0.5)
    stop_agent()
    grace = time.monotonic() + 10
    while time.monotonic() < grace:
        commander.collect()
        with state.printed_lock:
            printed = set(state.printed)
        if not (printed - delivered_events(observer)[0]):
            break
        time.sleep(0.5)
    commander.collect()
    with state.printed_lock:
        printed = set(state.printed)
    delivered, duplicates = delivered_events(observer)
    left_in_outbox = outbox_ids(db)
    erased_people = {
        str(c.args.get("person_id") or "") for c in commander.commands.values() if c.name == "delete_person"
    } | {
        str(((c.reply or {}).get("data") or {}).get("person_id"))
        for c in commander.commands.values()
        if c.name == "enroll" and isinstance((c.reply or {}).get("data"), dict)
    }
    with state.printed_lock:
        erased = {i for i, e in state.printed.items() if e.get("person_id") in erased_people} - delivered
    lost = printed - delivered - left_in_outbox - erased
    elapsed = time.monotonic() - start

    warm = max(0.2 * duration, 60.0)
    tail_from = duration * 0.9
    after_warm = [s for s in samples if warm <= s.t < warm + max(0.1 * duration, 30.0)]
    tail = [s for s in samples if s.t >= tail_from] or samples[-3:]
    rss_start = median([s.rss_kb for s in after_warm])
    rss_end = median([s.rss_kb for s in tail])
    growth = 100.0 * (rss_end - rss_start) / rss_start if after_warm and tail else float("nan")
    fds_start, fds_end = median([s.fds for s in after_warm]), median([s.fds for s in tail])
    thr_start, thr_end = median([s.threads for s in after_warm]), median([s.threads for s in tail])
    fps_values = telemetry_fps(observer)
    commands = list(commander.commands.values())

    checks = {
        "agent_ran_full_duration": failure is None,
        "rss_growth_under_5pct": growth == growth and growth < 5.0,
        "fds_bounded": fds_end == fds_end and fds_end <= fds_start + max(10.0, 0.25 * fds_start),
        "threads_bounded": thr_end == thr_end and thr_end <= thr_start + max(5.0, 0.25 * thr_start),
        "no_event_lost": not lost and bool(printed),
        "events_printed_before_drain_delivered": not (cutoff_ids - delivered),
        "every_command_answered": all(c.reply is not None for c in commands) and bool(commands),
    }
    by_name: dict[str, list[int]] = {}
    for c in commands:
        counts = by_name.setdefault(c.name, [0, 0, 0])
        counts[0] += 1
        counts[1] += c.reply is not None
        counts[2] += c.reply is not None and c.reply.get("status") == "ok"
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "failure": failure,
        "duration_seconds": round(elapsed, 1),
        "planned_seconds": duration,
        "fps_median": round(median(fps_values), 2) if fps_values else None,
        "events": {
            "printed": len(printed),
            "delivered": len(delivered & printed),
            "duplicates": duplicates,
            "left_in_outbox": len(left_in_outbox),
            "erased_with_person": len(erased),
            "lost": sorted(lost),
        },
        "commands": {
            "sent": len(commands),
            "answered": sum(c.reply is not None for c in commands),
            "ok": sum(bool(c.reply and c.reply.get("status") == "ok") for c in commands),
            "resends": sum(c.sends - 1 for c in commands),
            "by_name": {k: {"sent": v[0], "answered": v[1], "ok": v[2]} for k, v in by_name.items()},
            "unanswered": [c.request_id + ":" + c.name for c in commands if c.reply is None],
        },
        "broker_restarts": restarts,
        "warmup_seconds": warm,
        "rss_kb": {
            "after_warmup": rss_start,
            "end": rss_end,
            "growth_pct": round(growth, 2),
            "max": max((s.rss_kb for s in samples), default=0),
        },
        "fds": {"after_warmup": fds_start, "end": fds_end, "max": max((s.fds for s in samples), default=0)},
        "threads": {"after_warmup": thr_start, "end": thr_end, "max": max((s.threads for s in samples), default=0)},
        "outbox_max": max((s.outbox or 0 for s in samples), default=0),
        "samples": [s.__dict__ for s in samples],
        "agent_stderr_tail": state.stderr_tail[-20:],
    }


def summary(report: dict[str, Any]) -> str:
    e, c = report["events"], report["commands"]
    r, f, t = report["rss_kb"], report["fds"], report["threads"]
    lines = [
        "================ faceagent soak ================",
        f"duration        {report['duration_seconds']:.0f} s (planned {report['planned_seconds']:.0f} s,"
        f" warm-up {report['warmup_seconds']:.0f} s)",
        f"frames/s        {report['fps_median']} (median of telemetry)",
        f"events          printed {e['printed']}, delivered {e['delivered']}, duplicates {e['duplicates']},"
        f" left in outbox {e['left_in_outbox']}, erased {e['erased_with_person']}, lost {len(e['lost'])}",
        f"commands        sent {c['sent']}, answered {c['answered']} (ok {c['ok']}), resends {c['resends']}",
        f"broker restarts {report['broker_restarts']}",
        f"RSS             {r['after_warmup'] / 1024:.1f} MiB -> {r['end'] / 1024:.1f} MiB"
        f" ({r['growth_pct']:+.2f}%), max {r['max'] / 1024:.1f} MiB",
        f"open files      {f['after_warmup']:g} -> {f['end']:g} (max {f['max']})",
        f"threads         {t['after_warmup']:g} -> {t['end']:g} (max {t['max']})",
        f"outbox depth    max {report['outbox_max']}",
    ]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name}" for name, ok in report["checks"].items()]
    if report["failure"]:
        lines.append(f"failure: {report['failure']}")
    lines.append(f"RESULT          {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--restart-every", type=float, default=120.0, help="broker restart period, seconds")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds allowed for delivery at the end")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    for needed in (MAIN_PERSON[1], SECOND_PERSON[1], CLIP / "frames"):
        if not needed.exists():
            parser.error(f"missing {needed}")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started with SIGINT ignored (a background job)
    folder = Path(tempfile.mkdtemp(prefix="faceagent-soak-"))
    cleanup: list[Any] = []
    try:
        report = soak(args, folder, cleanup)
    except KeyboardInterrupt:
        print("[soak] interrupted", file=sys.stderr)
        return 130
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:
                print(f"[soak] cleanup: {exc}", file=sys.stderr)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(folder)], check=False)
        else:
            print(f"[soak] kept {folder}", file=sys.stderr)
    print(summary(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

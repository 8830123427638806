"""Builds the console from its options and serves it with uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from agent.cli.console.app import Console, build_app
from agent.cli.console.auth import PasswordHash, Sessions, is_loopback
from agent.cli.console.backfill import HistoryBackfill
from agent.cli.console.fleet import FleetState, Watcher, utc_text
from agent.cli.console.remote import Remote
from agent.cli.console.rollouts import Rollouts
from agent.cli.releases import Progress, Release, RollOut
from agent.commands.signing import load_private_key
from agent.config import find_config, load_settings, require_tls
from agent.link.mqtt import BrokerSettings
from agent.link.operator import OperatorError
from agent.wire import Command

log = logging.getLogger(__name__)

CHUNK_KIB = 256  # as `ctl model-update`'s default


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """On loopback the Host header must name this console (DNS rebinding guard); elsewhere the password
    guards it and the name the operator's browser uses cannot be known here."""
    if not is_loopback(host):
        return None
    names = {host if ":" not in host else f"[{host}]", "localhost", "127.0.0.1", "[::1]"}
    return frozenset({f"{name}:{port}" for name in names} | (names if port in (80, 443) else set()))


def serve(args: argparse.Namespace) -> int:
    settings = load_settings(find_config(getattr(args, "config", None)))
    require_tls(settings.mqtt, args.mqtt)
    broker = BrokerSettings.from_settings(settings.mqtt, args.mqtt)
    if not broker.url:
        raise OperatorError("no broker: give --mqtt mqtt://host[:port] (or set mqtt.url in the settings file)")
    sign_key = load_private_key(args.sign_key) if args.sign_key is not None else None
    password = PasswordHash.read(args.password_file) if args.password_file is not None else None
    host, port = args.listen
    state = FleetState()
    remote = Remote(broker, timeout=args.timeout, sign_key=sign_key)
    chunk_bytes = CHUNK_KIB * 1024

    def runner(devices: list[str], release: Release, job_id: str, fleet: set[str], progress: Progress) -> RollOut:
        return remote.roll_out(devices, release, job_id, fleet, progress, chunk_bytes=chunk_bytes)

    console = Console(
        state=state,
        remote=remote,
        sessions=Sessions(password),
        limits=settings.commands,
        allowed_hosts=allowed_hosts(host, port),
        rollouts=Rollouts(runner, lambda: utc_text(state.clock()), chunk_bytes),
        releases=args.releases,
        secure_cookie=args.tls_cert is not None,
    )
    watcher = Watcher(broker, state)
    watcher.start()
    backfill = HistoryBackfill(state, lambda devices: remote.call(devices, Command.GET_TELEMETRY, {}))
    backfill.start()
    scheme = "https" if args.tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"faceagent console on {scheme}://{shown}:{port}/ for the broker {broker.url}", file=sys.stderr, flush=True)
    if sign_key is None:
        print("faceagent: no --sign-key: devices that require signed commands will refuse changes", file=sys.stderr)
    config = uvicorn.Config(
        build_app(console),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # request lines would name people (rename targets) and client addresses
        server_header=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        backfill.stop()
        watcher.stop()
    return 0

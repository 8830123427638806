"""The device's long-running commands: `run` (the live agent), `demo` and `provision`."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.demo import run_demo
from agent.config import find_config, load_layered, load_settings, require_tls
from agent.service import provisioning
from agent.service.app import AgentService, RunOptions, print_event
from agent.service.restart import EXIT_RESTART, reexec


def add_live_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="the live agent: camera -> recognition -> events -> MQTT")
    run.add_argument("--source", help="override camera.source (picamera2, v4l2:/dev/video0, rtsp://..., FILE, DIR)")
    run.add_argument("--mqtt", metavar="URL", help="override mqtt.url: mqtt[s]://[user:password@]host[:port]")
    run.add_argument("--print-events", action="store_true", help="also print each event as a JSON line")
    run.add_argument("--replay-all", action="store_true", help="process every frame of a file or folder")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="the live loop on the bundled clip (no camera or broker needed)")
    demo.add_argument("--mqtt", metavar="URL", help="also publish to this broker")
    demo.add_argument("--keep", type=Path, help="keep the demo gallery (with its outbox) in this folder")
    demo.set_defaults(handler=cmd_demo)

    provision = commands.add_parser("provision", help="apply a faceagent.toml dropped on the boot partition")
    provisioning.configure_parser(provision)
    provision.set_defaults(handler=provisioning.run)


def cmd_run(args: argparse.Namespace) -> int:
    path = find_config(args.config)
    layered = load_layered(path, db=args.db)  # the local file, with remote set_config changes laid over it
    settings = layered.settings
    require_tls(settings.mqtt, args.mqtt)
    options = RunOptions(
        source=args.source,
        mqtt_url=args.mqtt,
        db=args.db,
        settings_path=path,
        remote_problem=layered.problem,
        lossless=args.replay_all,
        on_event=print_event if args.print_events else None,
    )
    service = AgentService(settings, options)
    service.install_signal_handlers()
    code = service.run()
    return reexec() if code == EXIT_RESTART else code


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load_settings(find_config(args.config))
    require_tls(settings.mqtt, args.mqtt)
    return run_demo(settings, mqtt_url=args.mqtt, keep=args.keep)

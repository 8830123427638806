"""`faceagent console`: the operator's web page for the whole fleet, over the MQTT the devices already serve.

Only its command-line wiring lives here, so `faceagent` starts without the console's extra installed; the
web application (`app`, `server`) is imported when the console runs. Nothing but `agent.cli.main` imports
this package.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from agent.cli.console.auth import hash_password, is_loopback
from agent.errors import FaceagentError

DEFAULT_LISTEN = "127.0.0.1:8080"


class ConsoleError(FaceagentError):
    """The console cannot start: a missing extra, a bind that needs a password, an unreadable file."""


def listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, port


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 600 seconds, got {text[:40]}")
    return value


def add_console_commands(commands: argparse._SubParsersAction) -> None:
    """`faceagent console`, wired into the CLI's parser."""
    console = commands.add_parser(
        "console", help="the operator's web console: fleet, events, people, devices (pip install 'faceagent[console]')"
    )
    console.add_argument("--mqtt", metavar="URL", help="broker: mqtt[s]://[user:password@]host[:port] (or mqtt.url)")
    console.add_argument(
        "--listen",
        type=listen_address,
        default=listen_address(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"where the page is served (default {DEFAULT_LISTEN}; off loopback needs --password-file)",
    )
    console.add_argument("--sign-key", type=Path, help="sign commands with this Ed25519 private key, as ctl --sign-key")
    console.add_argument(
        "--releases", type=Path, help="a folder of model release bundles (ctl model-release) to install from the pages"
    )
    console.add_argument("--password-file", type=Path, help="the hash line made by --hash-password")
    console.add_argument("--hash-password", action="store_true", help="read a password, print its hash line, exit")
    console.add_argument("--timeout", type=_timeout, default=15.0, help="seconds to wait for replies (default 15)")
    console.add_argument("--tls-cert", type=Path, help="serve https with this certificate (PEM)")
    console.add_argument("--tls-key", type=Path, help="... and this private key (PEM)")
    console.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    console.set_defaults(handler=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    if args.hash_password:
        password = getpass.getpass("console password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            raise ConsoleError("no password given: type one, or pipe it in as the first line of standard input")
        print(hash_password(password))
        return 0
    host, _ = args.listen
    if not is_loopback(host) and args.password_file is None:
        raise ConsoleError(
            f"--listen {host} is not a loopback address: give --password-file (a line made by "
            "`faceagent console --hash-password`), or listen on 127.0.0.1 and reach it through an SSH tunnel"
        )
    if args.releases is not None:
        try:
            folder = args.releases.is_dir()
        except OSError as exc:  # a name too long for the file system, a path it refuses
            raise ConsoleError(f"--releases {args.releases}: {exc.strerror or exc}") from exc
        if not folder:
            raise ConsoleError(
                f"--releases {args.releases}: not a folder (of bundles made by faceagent ctl model-release)"
            )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConsoleError("give both --tls-cert and --tls-key, or neither")
    try:
        from agent.cli.console.server import serve
    except ImportError as exc:
        raise ConsoleError(
            f"faceagent console needs its extra: pip install 'faceagent[console]' (missing {exc.name})"
        ) from None
    return serve(args)

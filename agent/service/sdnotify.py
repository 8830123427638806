"""The systemd notify protocol (sd_notify(3)) in the standard library, so the device needs no libsystemd binding.

systemd gives a `Type=notify` service `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); every
message is one datagram of `KEY=VALUE` lines. Without that variable every call is a no-op, so the same agent
runs under systemd, in a terminal and in tests.

The watchdog is fed only by the frame loop (`frame_done`, or `heartbeat` while it waits for a camera), never by
a timer thread: a thread would go on pinging while the loop is stuck, which is exactly what `WatchdogSec=` is
there to catch. A loop that stops calling stops the pings, and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 1.0  # systemd reads promptly; a stuck manager must not stall the frame loop for long


def socket_address(value: str | None) -> str | None:
    """`$NOTIFY_SOCKET` as an AF_UNIX address, or None when unset or of a kind this module does not speak."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: systemd notifications disabled", value)
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd asked for, or None when there is none or it is meant for another process."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends READY, WATCHDOG, STATUS and STOPPING to systemd; a no-op when `address` is None.

    Pings go out at half the watchdog timeout, and only when the loop calls `frame_done` or `heartbeat`;
    fps STATUS lines at most every `status_interval` seconds. Not thread-safe: the frame loop owns it.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_timeout: float | None = None,
        status_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._address = address
        self._ping_every = watchdog_timeout / 2 if watchdog_timeout else None
        self._status_every = status_interval
        self._clock = clock
        self._socket: socket.socket | None = None
        self._last_ping = -float("inf")
        self._last_status = -float("inf")
        self._failed = False

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        status_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> Notifier:
        """The notifier systemd's environment describes (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`)."""
        env = os.environ if environ is None else environ
        return cls(
            socket_address(env.get("NOTIFY_SOCKET")),
            watchdog_timeout=watchdog_seconds(env, os.getpid()),
            status_interval=status_interval,
            clock=clock,
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def ping_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec=), or None without a watchdog."""
        return self._ping_every if self.enabled else None

    def ready(self, status: str | None = None) -> None:
        """Start-up is complete (call it once frames flow); systemd's watchdog timer starts now."""
        lines = ["READY=1"] + ([f"STATUS={status}"] if status else [])
        if self._ping_every is not None:
            lines.append("WATCHDOG=1")
            self._last_ping = self._clock()
        self.send(*lines)

    def frame_done(self, fps: float | None = None) -> None:
        """One pass of the frame loop finished: ping the watchdog when due, and report fps now and then."""
        if self._address is None:
            return
        now = self._clock()
        ping = self._ping_due(now)
        status = fps is not None and now - self._last_status >= self._status_every
        if not (ping or status):
            return
        lines = ["WATCHDOG=1"] if ping else []
        if status:
            self._last_status = now
            lines.append(f"STATUS=running, {fps:.1f} fps")
        self.send(*lines)

    def heartbeat(self, status: str | None = None) -> None:
        """The loop is alive but has no frame to show (e.g. reopening the camera): ping, and say why now and then."""
        if self._address is None:
            return
        now = self._clock()
        ping = self._ping_due(now)
        report = status is not None and now - self._last_status >= self._status_every
        if report:
            self._last_status = now
        lines = (["WATCHDOG=1"] if ping else []) + ([f"STATUS={status}"] if report else [])
        if lines:
            self.send(*lines)

    def status(self, text: str) -> None:
        """A STATUS line sent at once (state changes, not per-frame figures)."""
        self._last_status = self._clock()
        self.send(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more time during a slow start or stop (EXTEND_TIMEOUT_USEC), e.g. while flushing the outbox."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def reloading(self, status: str | None = None) -> None:
        """An in-place restart has begun: the unit stays active ("reloading") until the next READY=1, so it
        never counts as a start against StartLimitBurst=. MONOTONIC_USEC is what systemd >= 253 asks for."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has begun: systemd stops expecting pings and waits up to TimeoutStopSec= for the exit."""
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; False (logged once) when it could not be sent. Never raises."""
        if self._address is None or not lines:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(SEND_TIMEOUT_SECONDS)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                log.warning("could not notify systemd at %r: %s", self._address.replace("\0", "@"), exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _ping_due(self, now: float) -> bool:
        if self._ping_every is None or now - self._last_ping < self._ping_every:
            return False
        self._last_ping = now
        return True

"""`restart` over MQTT: the agent re-executes itself in place, at most once a minute.

systemd sees a reload (RELOADING=1 sent at shutdown, READY=1 from the new agent), not a new start, so a
`restart` never counts against the unit's start limit, and a stream of them is refused, never a loop.
"""

from __future__ import annotations

import logging
import os
import sys
import time

EXIT_RESTART = 75  # EX_TEMPFAIL: `run` returns it after `restart`; cmd_run then re-executes the agent in place
# At most one MQTT `restart` per this many seconds. The time of the last one survives the re-exec in
# RESTARTED_AT_ENV (CLOCK_MONOTONIC, the same clock for every process).
RESTART_MIN_INTERVAL_SECONDS = 60.0
RESTARTED_AT_ENV = "FACEAGENT_RESTARTED_AT"


class RestartLimit:
    """At most one `restart` per RESTART_MIN_INTERVAL_SECONDS, across the re-exec."""

    def __init__(self) -> None:
        self.last = _restarted_at()  # the last `restart` accepted, by this process or before its re-exec

    def wait(self) -> float:
        """Seconds until `restart` may run again; 0 accepts it now, and the next one waits a full interval."""
        now = time.monotonic()
        if self.last is not None and (wait := self.last + RESTART_MIN_INTERVAL_SECONDS - now) > 0:
            return wait
        self.last = now
        os.environ[RESTARTED_AT_ENV] = repr(now)  # inherited by the re-executed agent
        return 0.0


def _restarted_at() -> float | None:
    try:
        value = float(os.environ.get(RESTARTED_AT_ENV, ""))
    except ValueError:
        return None
    return value if 0 <= value <= time.monotonic() else None


def reexec() -> int:
    """Replace this process with a fresh agent, same PID and arguments. Returns EXIT_RESTART only if the exec
    failed, and the unit's RestartForceExitStatus= restarts it."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError as exc:
        print(f"faceagent: could not restart in place ({exc}); exiting {EXIT_RESTART} for systemd", file=sys.stderr)
    return EXIT_RESTART

"""The hour before the console started: each device that comes online is asked once for the telemetry it kept
(`get_telemetry`, open like get_status), and its answer goes into the plotted history (`FleetState.merge_history`).

A device that does not know the command (an agent older than it: `unknown_command`) is not asked again and
plots from the console's start, as before; one that did not answer (it went away) is asked again at most
`tries` times. Devices are asked together, `batch` at a time, each batch over one broker connection, with a
`pause` between batches, so the fleet page opened meanwhile keeps up (scripts/bench_console.py, 500 simulated
devices on this machine's 2 shared cores: page ready in 1.75 s median and 3.14 s at worst of 5 loads during
the backfill without the pause, 1.59 and 1.76 s with it, the backfill taking 12.2 s instead of 8.8 s). Devices
are asked in the order the page lists them, so the first batch is the cards in view.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from agent.cli.console.fleet import FleetState
from agent.cli.console.remote import Outcome
from agent.wire import ErrorCode

log = logging.getLogger(__name__)

BATCH = 50  # devices per request: 50 replies of up to 128 KiB each arrive at once at most
TRIES = 3
POLL_SECONDS = 1.0
PAUSE_SECONDS = 0.5  # between batches: the page and the broker keep up while 500 devices answer

Fetch = Callable[[list[str]], dict[str, Outcome]]  # the devices' outcomes of one get_telemetry


class HistoryBackfill:
    """Asks every online device not yet asked; `run_once` is one round, `start` runs rounds on a thread."""

    def __init__(
        self, state: FleetState, fetch: Fetch, *, batch: int = BATCH, tries: int = TRIES, pause: float = PAUSE_SECONDS
    ) -> None:
        self.state, self.fetch, self.batch, self.tries, self.pause = state, fetch, batch, tries, pause
        self._done: set[str] = set()
        self._failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="history-backfill", daemon=True)

    def run_once(self) -> dict[str, int]:
        """One round: the points each answering device added to its history."""
        wanted = [d for d in self.state.online() if d not in self._done and self._failures[d] < self.tries]
        added: dict[str, int] = {}
        for start in range(0, len(wanted), self.batch):
            if start and self._stop.wait(self.pause):
                break
            devices = wanted[start : start + self.batch]
            try:
                outcomes = self.fetch(devices)
            except Exception as exc:  # the broker went away: these devices count a try each
                log.warning("asking %d devices for their telemetry history failed: %s", len(devices), exc)
                outcomes = {device: Outcome(False, {}, str(exc), "failed") for device in devices}
            for device, outcome in outcomes.items():
                if outcome.ok:
                    added[device] = self.state.merge_history(device, outcome.data)
                    self._done.add(device)
                elif outcome.code == ErrorCode.UNKNOWN_COMMAND:
                    log.info("%s does not keep telemetry history (an older agent): plotted from now on", device)
                    self._done.add(device)
                else:
                    self._failures[device] += 1
        return added

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        """A round at once, then every POLL_SECONDS: an operator opening the page with the console wants the hour
        in the first seconds (the page asks every second for a chart still empty)."""
        while True:
            self.run_once()
            if self._stop.wait(POLL_SECONDS):
                return

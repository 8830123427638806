"""Model updates started from the console: each a `roll_out` (as `faceagent ctl model-update` sends it) on a
worker thread, its progress kept per device from the devices' own replies, for the pages to poll.

Releases are picked from the folder given with `--releases`: bundles made by `faceagent ctl model-release`
where the release key is kept. The console holds only a command key: it ships what was signed elsewhere.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cli.releases import Progress, Release, ReleaseError, RollOut, bundle_meta, bundles
from agent.identity import new_ulid

MAX_JOBS = 20  # finished jobs kept for the pages


def releases_in(folder: Path | None) -> list[dict[str, Any]]:
    """The bundles the operator may pick: name and what they release, or why one cannot be used."""
    if folder is None:
        return []
    listed = []
    for name, path in bundles(folder).items():
        try:
            meta, _ = bundle_meta(path)
        except ReleaseError as exc:
            listed.append({"name": name, "problem": str(exc)})
            continue
        keys = ("model_id", "role", "version", "size")
        listed.append({"name": name} | {key: meta[key] for key in keys})
    return listed


@dataclass
class Job:
    """One model update from the console: a release on some devices, and how far each has come."""

    job_id: str
    release: str  # the bundle's file name
    described: str
    devices: list[str]
    chunks: int  # chunk phases in the job
    started_at: str
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> its latest progress
    finished: bool = False
    problem: str | None = None  # the roll-out itself failed (a broker problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "release": self.release,
            "described": self.described,
            "devices": self.devices,
            "chunks": self.chunks,
            "started_at": self.started_at,
            "finished": self.finished,
            "problem": self.problem,
            "progress": {device: dict(view) for device, view in self.progress.items()},
        }


# Runs a release on devices: (devices, release, job id, the fleet-wide listeners, progress) -> the outcome.
Runner = Callable[[list[str], Release, str, set[str], Progress], RollOut]


class Rollouts:
    """The console's model-update jobs; one at a time per device (a device runs one job at a time)."""

    def __init__(self, runner: Runner, clock: Callable[[], str], chunk_bytes: int) -> None:
        self.runner, self.clock, self.chunk_bytes = runner, clock, chunk_bytes
        self._jobs: deque[Job] = deque(maxlen=MAX_JOBS)
        self._lock = threading.Lock()

    def start(self, name: str, release: Release, devices: list[str], fleet: set[str]) -> Job:
        """A job of `release` on `devices` on its own thread; refused while one of them has a job running."""
        with self._lock:
            busy = sorted({d for job in self._jobs if not job.finished for d in job.devices} & set(devices))
            if busy:
                raise ReleaseError(f"a model update is still running on {', '.join(busy)}: wait for it to end")
            chunks = len(range(0, len(release.content), self.chunk_bytes))
            job = Job(new_ulid(), name, release.describe(), list(devices), chunks, self.clock())
            for device in devices:
                job.progress[device] = {"status": "WAITING", "phase": None, "chunks_done": 0}
            self._jobs.appendleft(job)
        threading.Thread(
            target=self._run, args=(job, release, fleet), name=f"rollout-{job.job_id}", daemon=True
        ).start()
        return job

    def _run(self, job: Job, release: Release, fleet: set[str]) -> None:
        try:
            outcome = self.runner(job.devices, release, job.job_id, fleet, lambda d, a, r: self._seen(job, d, a, r))
        except Exception as exc:  # the broker went away: say so on the page rather than spin forever
            with self._lock:
                job.problem, job.finished = f"the roll-out stopped: {exc}", True
            return
        with self._lock:
            for device, reason in outcome.dropped.items():
                job.progress[device] |= {"status": "DROPPED", "message": reason}
            job.finished = True

    def _seen(self, job: Job, device: str, arguments: Mapping[str, Any], reply: dict | None) -> None:
        """One device's reply to one phase: its job's status and bytes as the device reports them."""
        data = reply.get("data") if isinstance(reply, dict) else None
        found = data if isinstance(data, dict) else {}
        error = reply.get("error") if isinstance(reply, dict) else None
        with self._lock:
            view = job.progress.setdefault(device, {"chunks_done": 0})
            view["phase"] = arguments["phase"]
            acknowledged = int(arguments["index"]) + 1 if arguments["phase"] == "chunk" else 0
            if found.get("status") == "IN_PROGRESS" and acknowledged > view.get("chunks_done", 0):  # not a repeat
                view["chunks_done"] = acknowledged
                view.setdefault("acknowledged", []).append(found.get("bytes_received"))  # a few hundred at most
            view["status"] = str(found.get("status") or ("SILENT" if reply is None else "REFUSED"))
            for key in ("bytes_received", "bytes_total", "model_id", "version", "step", "reason"):
                if key in found:
                    view[key] = found[key]
            view["message"] = error.get("message") if isinstance(error, dict) else found.get("reason")

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.to_json() for job in self._jobs]

    def latest_for(self, device: str) -> dict[str, Any] | None:
        with self._lock:
            return next((job.to_json() for job in self._jobs if device in job.devices), None)

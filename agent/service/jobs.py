"""Jobs for one thread: a callable and a `Future`, queued by any thread and run by the owner between its steps.

The frame loop runs its jobs between two frames (as picamera2 runs its camera jobs), so a settings change, a
model swap or a sync result never lands in the middle of a frame; the gallery thread runs its own between two
turns, so the live matcher has one writer. A job is a function of the owner's parts (`run_pending(parts)`):
what it touches is plainly the owner's. Whoever submits decides whether to wait for the outcome.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any, Generic, TypeVar

from agent.errors import FaceagentError

log = logging.getLogger(__name__)
T = TypeVar("T")
P = TypeVar("P")  # what the owner thread hands each job: its own parts


class JobsClosed(FaceagentError):
    """The owner thread has stopped: the job will never run."""


class JobQueue(Generic[P]):
    """Thread-safe; `run_pending` and `wait` belong to the owner thread."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # for messages: "the frame loop", "the gallery thread"
        self._jobs: deque[tuple[Callable[[P], Any], Future[Any]]] = deque()
        self._arrived = threading.Condition()
        self._closed = False

    def submit(self, job: Callable[[P], T]) -> Future[T]:
        """Queue `job`; its future holds what it returns or raises (cancelled if the owner stops first)."""
        future: Future[T] = Future()
        with self._arrived:
            if self._closed:
                future.set_exception(JobsClosed(f"{self.owner} has stopped"))
                return future
            self._jobs.append((job, future))
            self._arrived.notify_all()
        return future

    def run_pending(self, parts: P) -> int:
        """Run every job queued now, in order, on `parts`; returns how many ran. A job's exception goes to its
        future (and the log: nobody may be waiting for it)."""
        ran = 0
        while True:
            with self._arrived:
                if not self._jobs:
                    return ran
                job, future = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # its submitter gave up waiting
            try:
                future.set_result(job(parts))
            except Exception as exc:
                log.warning("a job on %s failed: %s", self.owner, exc)
                future.set_exception(exc)
            ran += 1

    def wait(self, timeout: float) -> None:
        """Sleep until a job arrives, the queue closes or `timeout` seconds pass."""
        with self._arrived:
            if not self._jobs and not self._closed:
                self._arrived.wait(timeout)

    def wake(self) -> None:
        """End the owner's `wait` now (it is asked to stop)."""
        with self._arrived:
            self._arrived.notify_all()

    def close(self) -> None:
        """The owner stops: queued jobs are cancelled and later ones fail at once."""
        with self._arrived:
            self._closed = True
            pending, self._jobs = list(self._jobs), deque()
            self._arrived.notify_all()
        for _, future in pending:
            future.cancel()


def outcome(future: Future[T], timeout: float, late: str) -> T:
    """The job's result, waited for at most `timeout` seconds unless it has started (it is then waited for to
    the end: its effect must be known). Raises what the job raised, `JobsClosed` if it was cancelled, and
    `FaceagentError("<late> within <timeout> s")` if it never started in time (it is then cancelled)."""
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        if not future.cancel():
            return future.result()
        raise FaceagentError(f"{late} within {timeout:g} s") from None
    except CancelledError:
        raise JobsClosed(f"{late}: its thread stopped first") from None

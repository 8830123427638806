"""Whether the state directory's file system takes writes: one place that every writer reports to.

A full disk must not stop the agent. SQLite rolls a failed transaction back, so the events already
stored stay intact; the writers carry on without what they could not write: the frame loop drops the
new event (and counts it), retention tries again at its next run, the outbox keeps publishing and
deletes what was acknowledged once it can, a command answers `storage_full`. `StorageHealth` gathers
those failures into one state for status and telemetry, logged once when the condition starts and
once when it ends, never per event.

The condition ends when a write succeeds again, or, when nothing is being written, when the file
system has `RECOVERY_FREE_BYTES` free (checked at most once a second by the frame loop).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.errors import GalleryError
from agent.identity import utc_now

log = logging.getLogger(__name__)

SQLITE_FULL = 13
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RECOVERY_FREE_BYTES = 256 * 1024  # a handful of SQLite pages plus slack: enough to say "space is back"
_ERROR_CHARS = 200


class StorageFullError(GalleryError):
    """A write found the file system (or the user's quota) full; the transaction was rolled back."""


def is_disk_full(exc: BaseException | None) -> bool:
    """SQLITE_FULL or ENOSPC/EDQUOT, also behind `raise ... from` wrappers such as GalleryError."""
    while exc is not None:
        if isinstance(exc, StorageFullError):
            return True
        if isinstance(exc, sqlite3.Error) and (
            (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_FULL or "database or disk is full" in str(exc)
        ):
            return True
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        exc = exc.__cause__
    return False


class StorageState(StrEnum):
    OK = "ok"
    FULL = "full"


@dataclass(frozen=True)
class StorageReport:
    """What status and telemetry show."""

    state: StorageState
    since: str  # UTC ISO-8601: when this state began (the agent's start for a first "ok")
    free_bytes: int | None  # for the service user (statvfs f_bavail); None when it cannot be read
    dropped_events: int  # events that could not be written for lack of space, since start
    last_error: str | None  # the latest write failure for lack of space, kept after recovery


class StorageHealth:
    """Shared by the frame loop, the outbox and the command thread; every method is thread-safe."""

    def __init__(
        self,
        directory: Path,
        *,
        recovery_free_bytes: int = RECOVERY_FREE_BYTES,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.recovery_free_bytes = recovery_free_bytes
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = StorageState.OK
        self._since = utc_now()
        self._dropped = 0
        self._dropped_before = 0  # `_dropped` when the current full episode began
        self._last_error: str | None = None
        self._last_failure = -float("inf")
        self._next_poll = -float("inf")
        self.transitions = 0  # bumped on every change of state: the service republishes status then

    @property
    def full(self) -> bool:
        return self._state is StorageState.FULL

    @property
    def dropped_events(self) -> int:
        return self._dropped

    def free_bytes(self) -> int | None:
        try:
            stats = os.statvfs(self.directory)
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize

    def write_failed(self, exc: BaseException, *, dropped_events: int = 0) -> None:
        """A write failed for lack of space; `dropped_events` is how many events it cost."""
        message = " ".join(str(exc).split())[:_ERROR_CHARS] or type(exc).__name__
        with self._lock:
            self._dropped += dropped_events
            self._last_error = message
            self._last_failure = self.clock()
            if self._state is StorageState.FULL:
                return
            self._enter(StorageState.FULL)
            self._dropped_before = self._dropped - dropped_events
        log.error(
            "state file system full (%s free in %s): %s; new events are dropped and counted until space returns",
            _size(self.free_bytes()),
            self.directory,
            message,
        )

    def write_succeeded(self) -> None:
        """A write went through: if the condition was on, it is over."""
        if self._state is StorageState.FULL:
            self._recover()

    def poll(self) -> None:
        """From the frame loop, every iteration: ends the condition when space has returned but nothing
        was written (nobody in view). At most one statvfs a second, and only while full."""
        if self._state is not StorageState.FULL:
            return
        now = self.clock()
        if now < self._next_poll or now - self._last_failure < self.poll_seconds:
            return
        self._next_poll = now + self.poll_seconds
        free = self.free_bytes()
        if free is not None and free >= self.recovery_free_bytes:
            self._recover()

    def report(self) -> StorageReport:
        free = self.free_bytes()
        with self._lock:
            return StorageReport(self._state, self._since, free, self._dropped, self._last_error)

    def _recover(self) -> None:
        with self._lock:
            if self._state is not StorageState.FULL:
                return
            self._enter(StorageState.OK)
            dropped = self._dropped - self._dropped_before
        log.warning(
            "state file system writable again (%s free in %s); %d events were dropped while it was full",
            _size(self.free_bytes()),
            self.directory,
            dropped,
        )

    def _enter(self, state: StorageState) -> None:
        self._state, self._since = state, utc_now()
        self.transitions += 1


def _size(free: int | None) -> str:
    return "unknown space" if free is None else f"{free / 1024:.0f} KiB"

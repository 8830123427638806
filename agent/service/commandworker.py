"""The command thread: one command at a time, off the frame loop, with its own gallery connections.

paho's thread only queues a request (`CommandQueue.offer`, never blocking it); this thread runs it through the
dispatcher and publishes the reply. Enrollment needs a pipeline of its own (TFLite interpreters are not
thread-safe), made on the first enrollment because it costs memory, and made again after a model swap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.commands.dispatcher import CommandDispatcher
from agent.commands.signing import StoredReplayCache
from agent.gallery.store import GalleryStore
from agent.link.mqtt import CommandRequest, MqttLink
from agent.service.status import StatusReport
from agent.wire import OnlineStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

COMMAND_QUEUE = 64  # commands waiting for the command thread ...
COMMAND_QUEUE_PAYLOADS = 2  # ... holding at most this many largest payloads' worth of bytes (64 x 16 MiB was 1 GiB)


class CommandQueue:
    """Requests waiting for the command thread, bounded by count and by bytes: a flood is refused, logged."""

    def __init__(self, max_payload_bytes: int, count: int = COMMAND_QUEUE) -> None:
        self.budget = COMMAND_QUEUE_PAYLOADS * max_payload_bytes
        self.queued_bytes = 0  # payload bytes waiting
        self._requests: queue.Queue[CommandRequest | None] = queue.Queue(maxsize=count)
        self._lock = threading.Lock()

    def offer(self, request: CommandRequest) -> None:
        """On paho's thread: never block it; a request beyond the count or the bytes is dropped with a log line."""
        size = len(request.payload)
        with self._lock:
            if self.queued_bytes + size > self.budget:
                log.warning(
                    "command queue holds %d bytes: dropped %s (%d bytes, over the %d byte budget)",
                    self.queued_bytes,
                    request.name[:64],
                    size,
                    self.budget,
                )
                return
            try:
                self._requests.put_nowait(request)
            except queue.Full:
                log.warning("command queue full: dropped %s", request.name[:64])
                return
            self.queued_bytes += size

    def take(self) -> CommandRequest | None:
        """The next request, waiting for one; None once `close` was called."""
        request = self._requests.get()
        if request is not None:
            with self._lock:
                self.queued_bytes -= len(request.payload)
        return request

    def qsize(self) -> int:
        return self._requests.qsize()

    def close(self) -> None:
        """The thread ends after the requests already queued."""
        self._requests.put(None)


class OnFirstUse(Generic[T]):
    """A part made the first time it is asked for, on the thread that asks; `reset` drops it (closed by
    `close`, if given), so the next use makes a fresh one."""

    def __init__(self, make: Callable[[], T], close: Callable[[T], None] | None = None) -> None:
        self._make, self._close = make, close
        self._part: T | None = None

    def get(self) -> T:
        if self._part is None:
            self._part = self._make()
        return self._part

    def reset(self) -> None:
        part, self._part = self._part, None
        if part is not None and self._close is not None:
            self._close(part)


class CommandWorker:
    """Everything the command thread owns; `run` is the thread."""

    def __init__(
        self,
        requests: CommandQueue,
        dispatcher: CommandDispatcher,
        replays: StoredReplayCache,
        status: StatusReport,
        open_store: Callable[[], GalleryStore],
        link: MqttLink | None,
    ) -> None:
        self.requests, self.dispatcher, self.replays, self.link = requests, dispatcher, replays, link
        self.status = status
        self._status_store = OnFirstUse(open_store, GalleryStore.close)  # an open checks the whole file: once
        self._trim = malloc_trim()

    def status_document(self) -> OnlineStatus:
        """For get_status, on this thread, through its own connection."""
        return self.status.status(self._status_store.get())

    def run(self) -> None:
        try:
            while (request := self.requests.take()) is not None:
                reply = self.dispatcher.handle(request.name, request.payload, now=request.received_at)
                if reply is not None and self.link is not None:
                    self.link.reply(request, reply)
                del request, reply
                if self._trim is not None:
                    self._trim(0)  # a small payload may have decoded large photos: trim after every command
        finally:
            self.dispatcher.close()
            self.replays.close()
            self._status_store.reset()


def malloc_trim() -> Callable[[int], int] | None:
    """glibc keeps what a large command freed (its photos, their decodes) in its heaps, so RSS would only
    ever grow by the largest command seen; `malloc_trim(0)` gives it back. None elsewhere (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
